//! The live loop: capture -> engine -> the caller's sink, until told to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{self, Capture, CaptureConfig};
use crate::engine::record::rfc3339_ms;
use crate::engine::{Engine, EngineConfig, LostRecord, Record};
use crate::lifecycle::{Lifecycle, LiveCensus, Sysctls, TimeWaitReport};

/// CLOCK_REALTIME - CLOCK_MONOTONIC, ns.
pub fn realtime_offset_ns() -> i128 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    real - capture::monotonic_ns() as i128
}

/// Loss counters already reported, to report only increases.
#[derive(Default)]
struct LossTracker {
    seen: std::collections::HashMap<String, u64>,
}

impl LossTracker {
    fn delta(&mut self, stage: &str, total: u64) -> u64 {
        let prev = self.seen.entry(stage.to_string()).or_default();
        let d = total.saturating_sub(*prev);
        *prev = total;
        d
    }
}

/// What a finished live run saw, for the report footer.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub elapsed: Duration,
    pub events: u64,
    /// Connection lifecycle and the last TIME_WAIT census, for the diagnosis.
    pub time_wait: Option<TimeWaitReport>,
}

/// Runs the capture until `stop` is set or `duration` passes, handing every record (requests
/// and losses) to `sink`. Raw records also go to `raw` (for `record`).
pub fn run_live(
    capture_cfg: &CaptureConfig,
    engine_cfg: EngineConfig,
    duration: Option<Duration>,
    stop: Arc<AtomicBool>,
    mut raw: impl FnMut(&[u8]),
    mut sink: impl FnMut(&Record),
) -> anyhow::Result<RunSummary> {
    use anyhow::Context as _;
    let mut cap = Capture::start(capture_cfg).context("starting the kernel capture")?;
    if cap.info.tracefs_mounted {
        eprintln!(
            "traceid: tracefs was not mounted; mounted it at {}",
            capture::tracefs::TRACEFS
        );
    }
    if let Some(e) = &cap.info.btf_error {
        eprintln!("traceid: connection endpoints unavailable: {e}");
    }
    let mut lifecycle = Lifecycle::new(engine_cfg.lifecycle.clone());
    let mut live_census = LiveCensus::default();
    let realtime_offset = engine_cfg.realtime_offset_ns;
    let mut engine = Engine::new(engine_cfg);
    let mut out = Vec::new();
    for r in cap.take_seeded() {
        raw(&r);
        engine.process(&r, &mut out);
        lifecycle.on_raw(&r);
    }
    // A first census before anything else: the baseline TIME_WAIT growth is measured from.
    let mut last_census = Some(Instant::now());
    census_tick(&mut lifecycle, &mut live_census, realtime_offset, &mut out);
    eprintln!(
        "traceid: watching: {} tracepoints attached, {} existing connections followed, TLS probes on {} OpenSSL files{}",
        cap.info.attached,
        cap.info.seeded,
        cap.tls.attached.len(),
        match duration {
            Some(d) => format!(", for {:.0} s (Ctrl-C ends early)", d.as_secs_f64()),
            None => ", Ctrl-C to stop".to_string(),
        }
    );
    let start = Instant::now();
    let mut losses = LossTracker::default();
    let mut last_loss_check = Instant::now();
    let mut execs: Vec<u32> = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let polled = cap
            .poll(Duration::from_millis(100), |rec| {
                if let Some(pid) = exec_pid(rec) {
                    execs.push(pid);
                    return;
                }
                raw(rec);
                engine.process(rec, &mut out);
                lifecycle.on_raw(rec);
            })
            .context("reading the ring buffer")?;
        for pid in execs.drain(..) {
            cap.on_exec(pid);
        }
        cap.tick();
        for r in out.drain(..) {
            lifecycle.on_record(&r);
            sink(&r);
        }
        // The census is matched with the connections seen so far: take it when the ring
        // buffer is drained (a full drain is 65,536 records), at most 5 s late otherwise.
        let caught_up = polled < 65_536;
        if last_census
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(if caught_up { 1 } else { 5 }))
        {
            last_census = Some(Instant::now());
            census_tick(&mut lifecycle, &mut live_census, realtime_offset, &mut out);
            for r in out.drain(..) {
                sink(&r);
            }
        }
        if last_loss_check.elapsed() >= Duration::from_secs(1) {
            last_loss_check = Instant::now();
            report_losses(&cap, &engine, &mut losses, &mut sink);
        }
    }
    // Drain what the kernel already wrote, then end every connection.
    let _ = cap.poll(Duration::from_millis(0), |rec| {
        if exec_pid(rec).is_some() {
            return;
        }
        raw(rec);
        engine.process(rec, &mut out);
        lifecycle.on_raw(rec);
    });
    engine.finish(&mut out);
    for r in out.drain(..) {
        lifecycle.on_record(&r);
        sink(&r);
    }
    // A last census so the report shows the state at the end of the run.
    census_tick(&mut lifecycle, &mut live_census, realtime_offset, &mut out);
    for r in out.drain(..) {
        sink(&r);
    }
    report_losses(&cap, &engine, &mut losses, &mut sink);
    Ok(RunSummary {
        elapsed: start.elapsed(),
        events: engine.stats.events,
        time_wait: Some(lifecycle.report(capture::monotonic_ns())),
    })
}

/// One TIME_WAIT census through sock_diag, fed to the lifecycle (which may emit `buildup`).
fn census_tick(
    lifecycle: &mut Lifecycle,
    live: &mut LiveCensus,
    realtime_offset_ns: i128,
    out: &mut Vec<Record>,
) {
    let max = lifecycle.config().census_max;
    match live.take(max) {
        Ok(c) => lifecycle.on_census(
            capture::monotonic_ns(),
            &c,
            Sysctls::read(),
            realtime_offset_ns,
            out,
        ),
        Err(e) => lifecycle.on_census_error(e),
    }
}

fn report_losses(
    cap: &Capture,
    engine: &Engine,
    losses: &mut LossTracker,
    sink: &mut impl FnMut(&Record),
) {
    let ts = rfc3339_ms(realtime_offset_ns() + capture::monotonic_ns() as i128);
    let mut emit = |stage: &str, total: u64| {
        let d = losses.delta(stage, total);
        if d > 0 {
            sink(&Record::Lost(LostRecord {
                event: "lost",
                ts: ts.clone(),
                stage: stage.to_string(),
                count: d,
            }));
        }
    };
    let k = cap.kernel_stats();
    for (i, v) in k.iter().enumerate() {
        if let Some(name) = capture::stat_name(i as u32) {
            emit(name, *v);
        }
    }
    emit("decode", engine.stats.decode_errors);
    emit("connections_evicted", engine.stats.conns_evicted);
}

/// The pid of an exec notification record (they steer TLS probing and are not events of
/// the engine, so they are neither processed nor recorded).
fn exec_pid(rec: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes([*rec.first()?, *rec.get(1)?]);
    if kind != traceid_common::kind::EXEC {
        return None;
    }
    Some(u32::from_ne_bytes(rec.get(4..8)?.try_into().ok()?))
}
