//! The live loop: capture -> pipeline -> the caller's sink, until told to stop.
//!
//! Everything the loop learns reaches the pipeline as a raw record, and every raw record also
//! goes to the caller's `raw` callback (`traceid record`), so a recording replays exactly what
//! the live run saw: kernel events, TIME_WAIT censuses, the kernel's loss counters and who each
//! process is (its identity, announced before its first record).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{self, Capture, CaptureConfig, CaptureError};
use crate::event;
use crate::identity::{MissingSource, Resolver};
use crate::lifecycle::{census_record, LiveCensus, TimeWaitReport};
use crate::mem;
use crate::pipeline::{loss_record, Pipeline, PipelineConfig};
use crate::record::{ConnKey, Record};
use crate::sched::{CpuGuard, CpuPolicy, GuardTiming};

/// How often the live loop looks for connections of exited processes: soon enough that a
/// killed server's connections do not fill the table (and push live ones out) under churn.
/// A look is one hash lookup per connection followed, and one stat of /proc per process.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// CLOCK_REALTIME - CLOCK_MONOTONIC, ns.
pub fn realtime_offset_ns() -> i128 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    real - capture::monotonic_ns() as i128
}

/// What an operator should hear about while the agent starts and runs (the binary prints it).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// tracefs was not mounted; the agent mounted it here.
    TracefsMounted(&'static str),
    /// Capture is running.
    Watching {
        tracepoints: usize,
        seeded: usize,
        tls_files: usize,
        /// Go executables the Go probes are attached to.
        go_programs: usize,
        duration: Option<Duration>,
    },
    /// The TIME_WAIT census failed (said once; later failures are only in the report).
    CensusUnavailable(String),
    /// A process of a Kubernetes pod was seen and these name sources cannot be read (said
    /// once): its lines lack the names they would give.
    IdentityNamesUnavailable(Vec<MissingSource>),
    /// The CPU policy asked for could not be set; the loop runs at the one it had.
    CpuPolicyUnavailable(String),
}

#[derive(thiserror::Error, Debug)]
pub enum AgentError {
    #[error("starting the kernel capture: {0}")]
    Capture(#[from] CaptureError),
    #[error("reading the ring buffer: {0}")]
    Ring(std::io::Error),
}

/// What a finished live run saw, for the report.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    /// Seconds between the first and the last record (as a replay of the run computes it).
    pub span_s: f64,
    pub records: u64,
    /// Connection lifecycle and the last TIME_WAIT census, for the diagnosis.
    pub time_wait: TimeWaitReport,
}

/// Runs the capture until `stop` is set or `duration` passes, handing every record to `sink`
/// and every raw record to `raw` (for `record`); `identities` tells who each process is; the
/// loop runs under `cpu_policy` (crate::sched).
#[allow(clippy::too_many_arguments)]
pub fn run_live(
    capture_cfg: &CaptureConfig,
    cpu_policy: CpuPolicy,
    pipeline_cfg: PipelineConfig,
    identities: Resolver,
    duration: Option<Duration>,
    stop: Arc<AtomicBool>,
    notify: &mut dyn FnMut(Notice),
    raw: &mut dyn FnMut(&[u8]),
    sink: &mut dyn FnMut(&Record),
) -> Result<RunSummary, AgentError> {
    mem::return_large_blocks_at_once();
    let mut cap = Capture::start(capture_cfg)?;
    if cap.info.tracefs_mounted {
        notify(Notice::TracefsMounted(capture::tracefs::TRACEFS));
    }
    let census_max = pipeline_cfg.lifecycle.census_max;
    let mut live = Live {
        pipeline: Pipeline::new(pipeline_cfg),
        identities,
        announced: Vec::new(),
        census: LiveCensus::default(),
        census_warned: false,
        census_max,
        kernel_losses: HashMap::new(),
        raw,
        sink,
        notify,
    };
    for r in cap.take_seeded() {
        live.feed(&r);
    }
    // A first census before anything else: the baseline TIME_WAIT growth is measured from.
    live.census();
    // Start-up parsed the kernel's BTF and the TLS libraries' symbol tables (the peak of the
    // agent's life, over 100 MiB): give that memory back before settling in.
    mem::release_free_memory();
    (live.notify)(Notice::Watching {
        tracepoints: cap.info.attached,
        seeded: cap.info.seeded,
        tls_files: cap.tls.attached.len(),
        go_programs: cap.tls.go.attached.len(),
        duration,
    });
    // Set here, after start-up (loading, BTF, the seeding scan): only the drain loop yields.
    let mut cpu = CpuGuard::start(cpu_policy, GuardTiming::default()).unwrap_or_else(|e| {
        (live.notify)(Notice::CpuPolicyUnavailable(e.to_string()));
        CpuGuard::inactive()
    });
    let start = Instant::now();
    let mut last_census = Instant::now();
    let mut last_loss_check = Instant::now();
    let mut last_sweep = Instant::now();
    let mut execs: Vec<u32> = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let mut fed = 0u32;
        let polled = cap
            .poll(Duration::from_millis(100), |rec| {
                match exec_pid(rec) {
                    Some(pid) => execs.push(pid),
                    None => live.feed(rec),
                }
                fed += 1;
                if fed.is_multiple_of(4096) {
                    cpu.alive();
                }
            })
            .map_err(AgentError::Ring)?;
        for pid in execs.drain(..) {
            cap.on_exec(pid);
        }
        cap.tick();
        // The census is matched with the connections seen so far: take it when the ring
        // buffer is drained (a full drain is 65,536 records), at most 5 s late otherwise.
        let caught_up = polled < 65_536;
        cpu.beat(caught_up);
        if last_census.elapsed() >= Duration::from_secs(if caught_up { 1 } else { 5 }) {
            last_census = Instant::now();
            live.census();
        }
        if last_loss_check.elapsed() >= Duration::from_secs(1) {
            last_loss_check = Instant::now();
            live.losses(&cap);
        }
        // Closed connections were freed as they closed; those of processes that exited
        // without closing them are ended here, once the ring buffer is drained (nothing of
        // theirs is still queued). Each census then hands the freed memory back.
        if caught_up && last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            live.end_exited();
        }
    }
    // Drain what the kernel already wrote, then a last census so the report shows the state
    // at the end of the run, then end every connection.
    cap.poll(Duration::from_millis(0), |rec| {
        if exec_pid(rec).is_none() {
            live.feed(rec);
        }
    })
    .map_err(AgentError::Ring)?;
    live.census();
    live.losses(&cap);
    live.pipeline.finish(live.sink);
    Ok(RunSummary {
        span_s: live.pipeline.span_s(),
        records: live.pipeline.stats().records,
        time_wait: live.pipeline.time_wait_report(),
    })
}

/// The live loop's state between polls.
struct Live<'a> {
    pipeline: Pipeline,
    identities: Resolver,
    /// Reused buffer of the identity records to feed ahead of a record.
    announced: Vec<Vec<u8>>,
    census: LiveCensus,
    census_warned: bool,
    census_max: usize,
    /// Kernel loss counters as last recorded, to record only increases.
    kernel_losses: HashMap<&'static str, u64>,
    raw: &'a mut dyn FnMut(&[u8]),
    sink: &'a mut dyn FnMut(&Record),
    notify: &'a mut dyn FnMut(Notice),
}

impl Live<'_> {
    fn feed(&mut self, rec: &[u8]) {
        self.identities.before(rec, &mut self.announced);
        let mut announced = std::mem::take(&mut self.announced);
        for a in announced.drain(..) {
            (self.raw)(&a);
            self.pipeline.process(&a, self.sink);
        }
        self.announced = announced;
        if let Some(missing) = self.identities.take_unavailable() {
            (self.notify)(Notice::IdentityNamesUnavailable(missing));
        }
        (self.raw)(rec);
        self.pipeline.process(rec, self.sink);
    }

    /// Ends the connections of processes that have exited, as if each had been closed: an
    /// exiting or killed process releases its sockets without close(2), and they would stay
    /// in the tables until evicted. The close records go through [`Live::feed`], so a replay
    /// ends them at the same point. Their close time is when the exit was noticed (at most
    /// [`SWEEP_EVERY`] late); their TIME_WAIT is still attributed to the process.
    fn end_exited(&mut self) {
        let exited = exited_connections(&self.pipeline, capture::process_exists);
        if exited.is_empty() {
            return;
        }
        let now = capture::monotonic_ns();
        for key in exited {
            self.feed(&event::exit_close_record(key, now));
        }
    }

    /// One TIME_WAIT census through sock_diag, fed as a record.
    fn census(&mut self) {
        let now = capture::monotonic_ns();
        let rec = match self.census.take(self.census_max, now) {
            Ok(rec) => rec,
            Err(e) => {
                let e = e.to_string();
                if !self.census_warned {
                    self.census_warned = true;
                    (self.notify)(Notice::CensusUnavailable(e.clone()));
                }
                census_record::encode_failure(now, &e)
            }
        };
        self.feed(&rec);
        // Give freed memory back to the kernel, so RSS falls back after a burst; at once
        // after the census's own buffers, several MiB on a host with 100,000 TIME_WAIT
        // sockets.
        mem::release_free_memory();
    }

    /// The kernel's loss counters' increases, fed as records; then the pipeline's own.
    fn losses(&mut self, cap: &Capture) {
        let now = capture::monotonic_ns();
        for (i, total) in cap.kernel_stats().iter().enumerate() {
            let Some(stage) = capture::stat_name(i as u32) else {
                continue;
            };
            let seen = self.kernel_losses.entry(stage).or_default();
            let delta = total.saturating_sub(*seen);
            *seen = *total;
            if delta > 0 {
                self.feed(&loss_record(now, stage, delta));
            }
        }
        self.pipeline.report_losses(now, self.sink);
    }
}

/// The connections followed (by the engine, or open for the lifecycle) whose process `alive`
/// says is gone, in the order they were followed.
fn exited_connections(pipeline: &Pipeline, alive: impl Fn(u32) -> bool) -> Vec<ConnKey> {
    let mut verdicts: HashMap<u32, bool> = HashMap::new();
    let mut exited: Vec<ConnKey> = pipeline
        .engine()
        .connection_keys()
        .chain(pipeline.lifecycle().open_keys())
        .filter(|k| !*verdicts.entry(k.pid).or_insert_with(|| alive(k.pid)))
        .collect();
    exited.sort_unstable_by_key(|k| (k.conn_ts_ns, k.pid, k.fd));
    exited.dedup();
    exited
}

/// The pid of an exec notification record (they steer TLS probing and are not events of
/// the pipeline, so they are neither processed nor recorded).
fn exec_pid(rec: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes([*rec.first()?, *rec.get(1)?]);
    if kind != traceid_common::kind::EXEC {
        return None;
    }
    Some(u32::from_ne_bytes(rec.get(4..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::events::{get, Stream, C};
    use traceid_common::{ROLE_CLIENT, ROLE_SERVER};

    const ALIVE: u32 = 100;
    const GONE: u32 = 200;

    fn conn(pid: u32, fd: i32, role: u8) -> C {
        C {
            pid,
            fd,
            ts: u64::from(pid) * 10 + fd as u64,
            comm: "svc",
            role,
        }
    }

    #[test]
    fn connections_of_an_exited_process_are_ended_and_their_requests_reported() {
        let mut s = Stream::default();
        let kept = conn(ALIVE, 3, ROLE_CLIENT);
        let (gone_server, gone_client) = (conn(GONE, 4, ROLE_SERVER), conn(GONE, 5, ROLE_CLIENT));
        s.open(kept, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 8080);
        s.open(gone_server, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40001);
        s.open(gone_client, [127, 0, 0, 1], 40002, [127, 0, 0, 1], 9090);
        // A request the exited server read and never answered.
        s.data(gone_server, GONE, false, &get("/lost", &[]));
        let mut pipeline = Pipeline::new(PipelineConfig::default());
        let mut requests = Vec::new();
        let mut sink = |r: &Record| {
            if let Record::Request(q) = r {
                requests.push(q.path.to_string());
            }
        };
        for r in &s.records {
            pipeline.process(r, &mut sink);
        }
        assert_eq!(pipeline.engine().connections(), 3);

        let exited = exited_connections(&pipeline, |pid| pid == ALIVE);
        let key = |c: C| ConnKey {
            pid: c.pid,
            fd: c.fd,
            conn_ts_ns: c.ts,
        };
        assert_eq!(exited, vec![key(gone_server), key(gone_client)]);
        for k in exited {
            pipeline.process(&event::exit_close_record(k, 1_000_000), &mut sink);
        }

        assert_eq!(requests, vec!["/lost".to_string()]);
        assert_eq!(pipeline.engine().connections(), 1);
        assert_eq!(
            pipeline.lifecycle().open_keys().collect::<Vec<_>>(),
            vec![key(kept)]
        );
        // Kept for TIME_WAIT attribution, as after a close.
        assert_eq!(pipeline.lifecycle().recently_closed(), 2);
        assert!(exited_connections(&pipeline, |pid| pid == ALIVE).is_empty());
    }
}
