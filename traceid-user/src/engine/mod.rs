//! The pure engine: raw records in, request records and findings out.
//!
//! It holds no eBPF: `traceid replay` and the unit tests feed it exactly what the kernel
//! would. Per event it does a hash lookup and, for data, feeds the connection's HTTP parser;
//! everything it keeps is bounded (connections, requests in flight, head buffers).

pub mod link;
pub mod record;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::event::{self, Event, Role};
use crate::http::{self, Chunk, Flow, HttpConn, HttpEvent, RequestHead, ResponseHead};
use crate::tracectx::{self, Extraction, HeaderNames, TraceContext};

use link::{Inflight, Linker};
pub use record::{
    BuildupRecord, Confidence, Direction, Finding, InboundRef, LostRecord, Record, RequestRecord,
};

/// Which processes and ports to report (empty = all).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
}

impl Filter {
    fn admits(
        &self,
        pid: u32,
        comm: &str,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && (self.ports.is_empty()
                || [local, peer]
                    .iter()
                    .flatten()
                    .any(|a| self.ports.contains(&a.port())))
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub names: HeaderNames,
    pub limits: http::Limits,
    /// Connections followed at once; the least recently active are dropped beyond it.
    pub max_conns: usize,
    pub filter: Filter,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC in ns, to stamp records with wall-clock time.
    pub realtime_offset_ns: i128,
    /// Connection lifecycle and TIME_WAIT census (run next to the engine by the live loop).
    pub lifecycle: crate::lifecycle::LifecycleConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            names: HeaderNames::new(&[]),
            limits: http::Limits::default(),
            max_conns: 200_000,
            filter: Filter::default(),
            realtime_offset_ns: 0,
            lifecycle: crate::lifecycle::LifecycleConfig::default(),
        }
    }
}

/// Identity of a connection: fd reuse cannot mix two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub pid: u32,
    pub fd: i32,
    pub conn_ts_ns: u64,
}

impl ConnKey {
    /// The connection an event belongs to.
    pub fn of(h: &traceid_common::EventHeader) -> ConnKey {
        ConnKey {
            pid: h.pid,
            fd: h.fd,
            conn_ts_ns: h.conn_ts_ns,
        }
    }
}

struct Conn {
    role: Role,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    comm: String,
    /// None when the filter excludes this connection: its data is dropped unparsed.
    http: Option<HttpConn>,
    /// The plaintext stream of a TLS connection (from the OpenSSL probes), parsed apart from
    /// the ciphertext the syscalls see. Created on its first plaintext.
    tls_http: Option<HttpConn>,
    /// The filter admits this connection.
    admitted: bool,
    /// Records being emitted come from `tls_http`.
    emitting_tls: bool,
    last_ns: u64,
    /// Outbound requests' links, decided when each request started (by request number).
    links: Vec<(u64, Option<link::Link>)>,
}

/// Counters of everything the engine dropped or could not make sense of.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub events: u64,
    pub decode_errors: u64,
    pub conns_evicted: u64,
    pub anomalies: HashMap<&'static str, u64>,
    pub requests: u64,
}

pub struct Engine {
    cfg: EngineConfig,
    conns: HashMap<ConnKey, Conn>,
    linker: Linker,
    pub stats: EngineStats,
    http_events: Vec<HttpEvent>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            conns: HashMap::new(),
            linker: Linker::default(),
            stats: EngineStats::default(),
            http_events: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Connections currently followed.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Feeds one raw ring-buffer record.
    pub fn process(&mut self, raw: &[u8], out: &mut Vec<Record>) {
        self.stats.events += 1;
        match event::decode(raw) {
            Ok(ev) => self.process_event(&ev, out),
            Err(_) => self.stats.decode_errors += 1,
        }
    }

    pub fn process_event(&mut self, ev: &Event<'_>, out: &mut Vec<Record>) {
        let h = *ev.header();
        let key = ConnKey::of(&h);
        match ev {
            Event::ConnOpen(c) => {
                let (local, peer) = match event::endpoints(c) {
                    Some((l, p)) => (Some(l), Some(p)),
                    None => (None, None),
                };
                let comm = event::comm(&h);
                self.insert_conn(key, Role::from_raw(c.role), local, peer, comm, h.ts_ns, out);
            }
            Event::ConnClose(_) => {
                if let Some(mut conn) = self.conns.remove(&key) {
                    self.end_conn(key, &mut conn, Some(h.ts_ns), out);
                }
            }
            // TCP state changes feed the connection lifecycle (crate::lifecycle), not HTTP.
            Event::State(_) => {}
            Event::Data(d, payload) => {
                if !self.conns.contains_key(&key) {
                    // Its open was lost or happened before a replay started: follow it anyway.
                    let comm = event::comm(&h);
                    self.insert_conn(key, Role::from_raw(d.role), None, None, comm, h.ts_ns, out);
                }
                let Some(mut conn) = self.conns.remove(&key) else {
                    return;
                };
                conn.last_ns = h.ts_ns;
                let tls = traceid_common::source::is_tls(d.source);
                if tls && conn.admitted && conn.tls_http.is_none() {
                    conn.tls_http = Some(HttpConn::new(self.cfg.limits));
                }
                let parser_alive = if tls {
                    conn.tls_http.is_some()
                } else {
                    conn.http.is_some()
                };
                if parser_alive {
                    let egress = event::is_egress(d);
                    if conn.role == Role::Unknown {
                        conn.role = sniff_role(egress, payload);
                    }
                    let flow = match (conn.role, egress) {
                        (Role::Server, false) | (Role::Client, true) => Some(Flow::ClientToServer),
                        (Role::Server, true) | (Role::Client, false) => Some(Flow::ServerToClient),
                        (Role::Unknown, _) => None,
                    };
                    let parser = if tls {
                        conn.tls_http.as_mut()
                    } else {
                        conn.http.as_mut()
                    };
                    if let (Some(flow), Some(http)) = (flow, parser) {
                        let chunk = Chunk {
                            data: payload,
                            real_len: d.real_len,
                            ts_ns: h.ts_ns,
                            tid: h.tid,
                        };
                        let names = &self.cfg.names;
                        let keep = |n: &str| names.is_trace_header(n);
                        let mut evs = std::mem::take(&mut self.http_events);
                        http.on_data(flow, chunk, &keep, &mut evs);
                        if http.is_dead() {
                            if tls {
                                conn.tls_http = None;
                            } else {
                                conn.http = None;
                            }
                        }
                        conn.emitting_tls = tls;
                        self.handle_http(key, &mut conn, &mut evs, out);
                        self.http_events = evs;
                    }
                }
                self.conns.insert(key, conn);
            }
        }
    }

    /// Ends every connection (end of a replay or of a diagnosis): unanswered requests are
    /// reported without a response.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(mut conn) = self.conns.remove(&key) {
                self.end_conn(key, &mut conn, None, out);
            }
        }
    }

    /// Ends both parsers of a connection: at its close (`Some(ts)`), or flushing (`None`).
    fn end_conn(
        &mut self,
        key: ConnKey,
        conn: &mut Conn,
        close_ts: Option<u64>,
        out: &mut Vec<Record>,
    ) {
        for tls in [false, true] {
            let parser = if tls {
                conn.tls_http.take()
            } else {
                conn.http.take()
            };
            if let Some(mut http) = parser {
                let mut evs = std::mem::take(&mut self.http_events);
                match close_ts {
                    Some(ts) => http.on_close(ts, &mut evs),
                    None => http.flush(&mut evs),
                }
                conn.emitting_tls = tls;
                self.handle_http(key, conn, &mut evs, out);
                self.http_events = evs;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_conn(
        &mut self,
        key: ConnKey,
        role: Role,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        comm: String,
        ts_ns: u64,
        out: &mut Vec<Record>,
    ) {
        if self.conns.len() >= self.cfg.max_conns && !self.conns.contains_key(&key) {
            self.evict_idle(out);
        }
        let admitted = self.cfg.filter.admits(key.pid, &comm, local, peer);
        let http = admitted.then(|| HttpConn::new(self.cfg.limits));
        self.conns.insert(
            key,
            Conn {
                role,
                local,
                peer,
                comm,
                http,
                tls_http: None,
                admitted,
                emitting_tls: false,
                last_ns: ts_ns,
                links: Vec::new(),
            },
        );
    }

    /// Drops the least recently active tenth of the connections (closes never seen: killed
    /// processes, lost events).
    fn evict_idle(&mut self, out: &mut Vec<Record>) {
        let mut ages: Vec<(u64, ConnKey)> =
            self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        let n = (ages.len() / 10).max(1);
        ages.select_nth_unstable(n - 1);
        for (_, key) in ages.into_iter().take(n) {
            if let Some(mut conn) = self.conns.remove(&key) {
                self.end_conn(key, &mut conn, None, out);
                self.stats.conns_evicted += 1;
            }
        }
    }

    fn handle_http(
        &mut self,
        key: ConnKey,
        conn: &mut Conn,
        evs: &mut Vec<HttpEvent>,
        out: &mut Vec<Record>,
    ) {
        for ev in evs.drain(..) {
            match ev {
                HttpEvent::RequestStarted { seq, head } => match conn.role {
                    Role::Server => {
                        let ex = self.extract(&head.headers);
                        self.linker.start(
                            key.pid,
                            Inflight {
                                conn: (key.fd, key.conn_ts_ns),
                                seq,
                                head: Arc::clone(&head),
                                trace: ex.primary().cloned(),
                            },
                        );
                    }
                    _ => {
                        let ex = self.extract(&head.headers);
                        let l = self.linker.link(key.pid, head.tid, ex.primary());
                        if conn.links.len() >= self.cfg.limits.max_pending.max(1) {
                            conn.links.remove(0);
                        }
                        conn.links.push((seq, l));
                    }
                },
                HttpEvent::Exchange {
                    seq,
                    request,
                    response,
                } => {
                    let link = if conn.role == Role::Server {
                        self.linker.finish(key.pid, (key.fd, key.conn_ts_ns), seq);
                        if let Some(resp) = &response {
                            self.linker.observe_thread(key.pid, request.tid, resp.tid);
                        }
                        None
                    } else {
                        // A server's own calls say whether one thread carries them through.
                        if let Some(resp) = &response {
                            if self.linker.is_server(key.pid) {
                                self.linker.observe_thread(key.pid, request.tid, resp.tid);
                            }
                        }
                        conn.links
                            .iter()
                            .position(|(s, _)| *s == seq)
                            .and_then(|i| conn.links.remove(i).1)
                    };
                    let rec = self.request_record(key, conn, &request, response.as_ref(), link);
                    self.stats.requests += 1;
                    out.push(Record::Request(Box::new(rec)));
                }
                HttpEvent::Anomaly(a) => {
                    *self.stats.anomalies.entry(a.as_str()).or_default() += 1;
                }
            }
        }
    }

    fn extract(&self, headers: &[(String, String)]) -> Extraction {
        tracectx::extract(
            headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            &self.cfg.names,
        )
    }

    fn request_record(
        &self,
        key: ConnKey,
        conn: &Conn,
        req: &RequestHead,
        resp: Option<&ResponseHead>,
        link: Option<link::Link>,
    ) -> RequestRecord {
        let ex = self.extract(&req.headers);
        let primary = ex.primary();
        let direction = if conn.role == Role::Server {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let mut findings = Vec::new();
        let mut reasons = Vec::new();
        if primary.is_none() {
            findings.push(Finding::Missing);
        }
        if !ex.malformed.is_empty() {
            findings.push(Finding::Malformed);
            reasons.extend(ex.malformed.iter().map(|m| m.reason.clone()));
        }
        if let Some(r) = ex.inconsistent() {
            findings.push(Finding::Inconsistent);
            reasons.push(r);
        }
        if resp.is_some_and(|r| !r.headers.is_empty()) {
            // Responses keep only trace-context headers, so any kept header is one sent back.
            findings.push(Finding::Exposed);
        }
        let mut inbound = None;
        if direction == Direction::Outbound {
            match &link {
                None if self.linker.is_server(key.pid) => findings.push(Finding::Unlinked),
                None => {}
                Some(l) => {
                    let hop = hop_finding(l.inbound.trace.as_ref(), primary);
                    findings.extend(hop);
                    inbound = Some(InboundRef {
                        trace_id: l.inbound.trace.as_ref().map(|t| t.trace_id.clone()),
                        method: l.inbound.head.method.clone(),
                        path: l.inbound.head.path.clone(),
                        confidence: l.confidence,
                    });
                }
            }
        }
        let ts = record::rfc3339_ms(req.ts_ns as i128 + self.cfg.realtime_offset_ns);
        RequestRecord {
            event: "request",
            ts,
            direction,
            pid: key.pid,
            tid: req.tid,
            comm: conn.comm.clone(),
            local: conn.local.map(|a| a.to_string()),
            peer: conn.peer.map(|a| a.to_string()),
            tls: conn.emitting_tls,
            method: req.method.clone(),
            path: req.path.clone(),
            status: resp.map(|r| r.status),
            duration_ms: resp.map(|r| r.ts_ns.saturating_sub(req.ts_ns) as f64 / 1e6),
            trace_id: primary.map(|t| t.trace_id.clone()),
            trace_format: primary.map(|t| t.format),
            findings,
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            inbound,
            header: primary.map(|t| t.header.clone()),
            local_port: conn.local.map(|a| a.port()),
            ts_ns: req.ts_ns,
            conn: (key.pid, key.fd, key.conn_ts_ns),
        }
    }
}

/// What an outbound call does with the trace of the inbound request it serves.
pub fn hop_finding(
    inbound: Option<&TraceContext>,
    outbound: Option<&TraceContext>,
) -> Option<Finding> {
    match (inbound, outbound) {
        (Some(_), None) => Some(Finding::Dropped),
        (Some(i), Some(o)) => Some(match i.same_trace(o) {
            Some(true) => Finding::Propagated,
            // Different formats that cannot be compared (a request id in, W3C out) still
            // carry a different id than the one given.
            _ => Finding::Restarted,
        }),
        (None, Some(_)) => Some(Finding::Started),
        (None, None) => None,
    }
}

/// Decides the role of a connection found without one (seeded, or its open was lost) from its
/// first bytes: the side that sends a request line is the client.
fn sniff_role(egress: bool, payload: &[u8]) -> Role {
    let looks_request = payload
        .iter()
        .take(17)
        .position(|&b| b == b' ')
        .is_some_and(|sp| sp > 0 && payload[..sp].iter().all(u8::is_ascii_uppercase));
    let looks_response = payload.starts_with(b"HTTP/1.");
    match (looks_request, looks_response, egress) {
        (true, _, true) | (_, true, false) => Role::Client,
        (true, _, false) | (_, true, true) => Role::Server,
        _ => Role::Unknown,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support;
