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
use crate::identity::{MissingSource, Resolver};
use crate::lifecycle::{census_record, LiveCensus, Sysctls, TimeWaitReport};
use crate::mem;
use crate::pipeline::{loss_record, Pipeline, PipelineConfig};
use crate::record::Record;
use crate::sched::{CpuGuard, CpuPolicy, GuardTiming};

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
    let mut last_trim = Instant::now();
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
        // Closed connections were freed as they closed; hand the memory back to the kernel
        // too, so RSS falls back after a burst.
        if last_trim.elapsed() >= Duration::from_secs(10) {
            last_trim = Instant::now();
            mem::release_free_memory();
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

    /// One TIME_WAIT census through sock_diag, fed as a record.
    fn census(&mut self) {
        let now = capture::monotonic_ns();
        let rec = match self.census.take(self.census_max) {
            Ok(c) => census_record::encode(now, &c, &Sysctls::read()),
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

/// The pid of an exec notification record (they steer TLS probing and are not events of
/// the pipeline, so they are neither processed nor recorded).
fn exec_pid(rec: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes([*rec.first()?, *rec.get(1)?]);
    if kind != traceid_common::kind::EXEC {
        return None;
    }
    Some(u32::from_ne_bytes(rec.get(4..8)?.try_into().ok()?))
}
