//! One pipeline, one way: raw records in, [`Record`]s out to a sink.
//!
//! Live runs ([`crate::agent`]) and `traceid replay` both feed every raw record to
//! [`Pipeline::process`], which decodes it once and hands the event to the engine (requests,
//! findings) and to the lifecycle (connections, TIME_WAIT), then passes every record they emit
//! to the caller's sink. What the live loop learns outside the ring buffer — a TIME_WAIT census,
//! losses the kernel counted, who a process is — enters as a record too ([`kind::CENSUS`],
//! [`kind::LOSS`], [`kind::IDENTITY`]), so a recording holds everything a live run reacted to
//! and its replay reports the same.
//!
//! The identity step sits between the producers and the sink: each request record gets the
//! identity announced for its process, and `--namespace/--pod/--container` keep or drop it.

use std::collections::HashMap;

use traceid_common::kind;

use crate::engine::{Engine, EngineConfig};
use crate::event::{self, Event};
use crate::identity::{wire, IdentityFilter, IdentityTable};
use crate::lifecycle::{census_record, Lifecycle, LifecycleConfig, TimeWaitReport};
use crate::record::{rfc3339_ms, LostRecord, Record};

#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    pub engine: EngineConfig,
    pub lifecycle: LifecycleConfig,
    /// Which containers, pods and namespaces are reported (empty: all).
    pub identity_filter: IdentityFilter,
}

/// What the pipeline itself counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Records processed.
    pub records: u64,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// Timestamps of the first and last record (CLOCK_MONOTONIC ns), 0 before any.
    pub first_ns: u64,
    pub last_ns: u64,
}

pub struct Pipeline {
    engine: Engine,
    lifecycle: Lifecycle,
    identities: IdentityTable,
    identity_filter: IdentityFilter,
    realtime_offset_ns: i128,
    stats: PipelineStats,
    /// Reused buffer of the records one input produced.
    out: Vec<Record>,
    /// The pipeline's own loss counters as last reported, to report only increases.
    reported: HashMap<&'static str, u64>,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Pipeline {
        Pipeline {
            realtime_offset_ns: cfg.engine.realtime_offset_ns,
            engine: Engine::new(cfg.engine),
            lifecycle: Lifecycle::new(cfg.lifecycle),
            identities: IdentityTable::default(),
            identity_filter: cfg.identity_filter,
            stats: PipelineStats::default(),
            out: Vec::new(),
            reported: HashMap::new(),
        }
    }

    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Feeds one raw record: a kernel event or an agent record (census, loss, identity).
    pub fn process(&mut self, raw: &[u8], sink: &mut dyn FnMut(&Record)) {
        self.stats.records += 1;
        // Identity records belong to no producer: the table is the pipeline's own.
        if let Some(h) = wire::peek_header(raw).filter(|h| h.kind == kind::IDENTITY) {
            self.note_time(h.ts_ns);
            if self.identities.apply(raw).is_err() {
                self.stats.decode_errors += 1;
            }
            return;
        }
        let ev = match event::decode(raw) {
            Ok(ev) => ev,
            Err(_) => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        let h = *ev.header();
        self.note_time(h.ts_ns);
        match ev {
            Event::Census(_, body) => match census_record::decode(body) {
                Ok(census_record::Decoded::Census(c, sys)) => self.lifecycle.on_census(
                    h.ts_ns,
                    c.sockets(),
                    c.truncated,
                    sys,
                    self.realtime_offset_ns,
                    &mut self.out,
                ),
                Ok(census_record::Decoded::Failed(e)) => self.lifecycle.on_census_error(e),
                Err(_) => self.stats.decode_errors += 1,
            },
            Event::Loss(_, body) => match decode_loss(body) {
                Some((stage, count)) => self.out.push(Record::Lost(LostRecord {
                    event: "lost",
                    ts: rfc3339_ms(h.ts_ns as i128 + self.realtime_offset_ns),
                    stage,
                    count,
                })),
                None => self.stats.decode_errors += 1,
            },
            _ => {
                self.lifecycle.on_event(&ev);
                self.engine.process_event(&ev, &mut self.out);
            }
        }
        self.emit(sink);
    }

    /// Reports what the pipeline itself lost since the last call (undecodable records,
    /// connections evicted from a full table), stamped `ts_ns`.
    pub fn report_losses(&mut self, ts_ns: u64, sink: &mut dyn FnMut(&Record)) {
        let e = &self.engine.stats;
        let counters = [
            ("decode", self.stats.decode_errors),
            ("connections_evicted", e.conns_evicted),
            // Bytes of streams no parser could read (cut by the capture window, or skipped
            // until the stream resynchronised)...
            ("uninspected_bytes", e.uninspected_bytes),
            // ...the requests they held, by the mean request size of their connection (an
            // estimate: the bytes were not seen)...
            ("requests_uninspected_estimate", e.requests_uninspected),
            // ...and the requests never seen as far as the answers tell: every response that
            // came without a request answered one.
            (
                "requests_unseen",
                e.anomalies
                    .get("response_without_request")
                    .copied()
                    .unwrap_or(0),
            ),
        ];
        for (stage, total) in counters {
            let seen = self.reported.entry(stage).or_default();
            let delta = total.saturating_sub(*seen);
            *seen = total;
            if delta > 0 {
                sink(&Record::Lost(LostRecord {
                    event: "lost",
                    ts: rfc3339_ms(ts_ns as i128 + self.realtime_offset_ns),
                    stage: stage.to_string(),
                    count: delta,
                }));
            }
        }
    }

    /// Ends the input: every connection still open is ended (unanswered requests reported
    /// without a response) and the pipeline's own losses are reported.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&Record)) {
        self.engine.finish(&mut self.out);
        self.emit(sink);
        self.report_losses(self.stats.last_ns, sink);
    }

    /// The connection lifecycle and TIME_WAIT section, as of the last record.
    pub fn time_wait_report(&self) -> TimeWaitReport {
        self.lifecycle.report(self.stats.last_ns)
    }

    /// Seconds between the first and the last record.
    pub fn span_s(&self) -> f64 {
        self.stats.last_ns.saturating_sub(self.stats.first_ns) as f64 / 1e9
    }

    fn note_time(&mut self, ts_ns: u64) {
        if self.stats.first_ns == 0 {
            self.stats.first_ns = ts_ns;
        }
        self.stats.last_ns = self.stats.last_ns.max(ts_ns);
    }

    /// Hands the producers' records to the sink, each request with its process's identity,
    /// unless the identity filter leaves it out.
    fn emit(&mut self, sink: &mut dyn FnMut(&Record)) {
        for mut r in self.out.drain(..) {
            self.lifecycle.on_record(&r);
            let pid = match &mut r {
                Record::Request(q) => {
                    q.identity = self.identities.get(q.pid).cloned();
                    Some(q.pid)
                }
                Record::Buildup(b) => b.pid,
                Record::Lost(_) => None,
            };
            if let Some(pid) = pid.filter(|_| !self.identity_filter.is_empty()) {
                let id = self.identities.get(pid).map(|a| a.as_ref());
                if !self.identity_filter.admits(id) {
                    continue;
                }
            }
            sink(&r);
        }
    }
}

/// Longest loss stage name a loss record carries.
const MAX_STAGE_LEN: usize = 64;

/// A [`kind::LOSS`] record: `count` events lost at `stage`, noticed at `ts_ns`.
/// Body: u64 count (native endian, like the kernel's records), then the stage name in UTF-8.
pub fn loss_record(ts_ns: u64, stage: &str, count: u64) -> Vec<u8> {
    let name = stage.as_bytes();
    let name = &name[..name.len().min(MAX_STAGE_LEN)];
    let mut raw = event::agent_header(kind::LOSS, ts_ns);
    raw.extend_from_slice(&count.to_ne_bytes());
    raw.extend_from_slice(name);
    raw
}

fn decode_loss(body: &[u8]) -> Option<(String, u64)> {
    let count = u64::from_ne_bytes(body.get(..8)?.try_into().ok()?);
    let name = body.get(8..)?;
    if name.is_empty() || name.len() > MAX_STAGE_LEN {
        return None;
    }
    let stage = std::str::from_utf8(name).ok()?;
    Some((stage.to_string(), count))
}

#[cfg(test)]
mod tests;
