//! One with/without phase of a round: saturation, fixed rate and kernel cost, with the agent
//! started for it or not running.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context, Result};
use traceid_tests::Nginx;

use super::{
    agent::Agent,
    host::{loadavg, other_agents, status_mib, wait_quiet, CpuMeter},
    kernel_cost::{kernel_cost, BLOCKS, PAUSED_PINGPONGS},
    load::{paced_load, run_wrk, WrkResult},
    BenchArgs,
};
use crate::util::step;

/// The figures of every with-agent (or every without) phase, one entry per round.
#[derive(Default, Clone)]
pub struct Phase {
    pub wrk: Vec<WrkResult>,
    /// Agent CPU during the wrk run (millicores), with the agent only.
    pub agent_mc_wrk: Vec<f64>,
    /// Agent wake-ups per second during the wrk run and the fixed-rate run, with the agent only.
    pub agent_wakeups_wrk: Vec<f64>,
    pub agent_wakeups: Vec<f64>,
    /// Fixed-rate run: achieved req/s, nginx worker millicores, agent millicores and RSS.
    pub fixed_rps: Vec<f64>,
    /// Fixed-rate run: p50 and p99 latency (µs), each request timed from when it was due.
    pub fixed_p50_us: Vec<f64>,
    pub fixed_p99_us: Vec<f64>,
    pub nginx_mc: Vec<f64>,
    pub agent_mc: Vec<f64>,
    pub agent_rss: Vec<f64>,
    pub sock_ns: Vec<f64>,
    /// Socket loop with the agent stopped (with-phases only).
    pub sock_paused_ns: Vec<f64>,
    pub pipe_ns: Vec<f64>,
    pub file_ns: Vec<f64>,
    /// Agent reports: requests seen, losses.
    pub seen: Vec<u64>,
    pub sent: Vec<u64>,
    pub lost: Vec<String>,
    /// Per phase: load average, and other agents seen.
    pub notes: Vec<String>,
    /// Whether the kernel-cost loops ran pinned to CPU 0 (the agent on the other CPUs).
    pub pinned: bool,
}

/// Runs one phase and appends its figures to `p`.
pub fn run_phase(
    with_agent: bool,
    bin: &Path,
    nginx: &Nginx,
    a: &BenchArgs,
    p: &mut Phase,
) -> Result<()> {
    let label = if with_agent { "with agent" } else { "without" };
    let noisy = wait_quiet(Duration::from_secs(30));
    if let Some(n) = &noisy {
        step(format!("  {label}: waited 30 s for quiet, still {n}"));
    }
    let load = loadavg();
    let agent = if with_agent {
        Some(Agent::start(bin)?)
    } else {
        None
    };
    let apid = agent.as_ref().map(Agent::pid);
    let mut sent = 0u64;

    // (a) saturation.
    let meter = apid.map(|pid| CpuMeter::start(&[pid]));
    let w = run_wrk(nginx.port, a.secs)?;
    if let Some(m) = meter {
        p.agent_mc_wrk.push(m.millicores());
        p.agent_wakeups_wrk.push(m.wakeups_per_s());
    }
    sent += w.requests;
    step(format!(
        "  {label}: wrk {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
        w.rps, w.p50_us, w.p99_us
    ));
    p.wrk.push(w);

    // (b) fixed rate.
    let workers = nginx.worker_pids();
    let mut meters = None;
    let fixed_secs = a.secs as f64;
    let paced = paced_load(nginx.port, a.rate, fixed_secs, || {
        meters = Some((
            CpuMeter::start(&workers),
            apid.map(|pid| CpuMeter::start(&[pid])),
        ));
    })?;
    let rps = paced.rps;
    let (p50, p99) = (
        paced.latency.quantile_us(0.5),
        paced.latency.quantile_us(0.99),
    );
    sent += (rps * fixed_secs) as u64;
    let (nm, am) = meters.context("fixed-rate window")?;
    let nginx_mc = nm.millicores();
    p.fixed_rps.push(rps);
    p.fixed_p50_us.push(p50);
    p.fixed_p99_us.push(p99);
    p.nginx_mc.push(nginx_mc);
    let mut line = format!(
        "  {label}: fixed rate {rps:.0} req/s, p50 {p50:.0} µs, p99 {p99:.0} µs (of {} requests), \
         nginx {nginx_mc:.0} millicores",
        paced.latency.samples()
    );
    if let (Some(am), Some(pid)) = (am, apid) {
        let mc = am.millicores();
        let wakeups = am.wakeups_per_s();
        let rss = status_mib(pid, "VmRSS").unwrap_or(f64::NAN);
        p.agent_mc.push(mc);
        p.agent_wakeups.push(wakeups);
        p.agent_rss.push(rss);
        let _ = write!(
            line,
            ", agent {mc:.0} millicores, {wakeups:.0} wake-ups/s, RSS {rss:.1} MiB"
        );
    }
    step(line);

    // (c) kernel cost per event.
    let k = kernel_cost(a.pingpongs, apid)?;
    let (s, pi, f) = (k.socket, k.pipe, k.file);
    sent += a.pingpongs + BLOCKS * 1000;
    if k.socket_paused.is_some() {
        sent += PAUSED_PINGPONGS.min(a.pingpongs) + BLOCKS * 1000;
    }
    step(format!(
        "  {label}: ns per op: pipe {pi:.0}, file {f:.0}, socket {s:.0}{}{}",
        k.socket_paused
            .map(|x| format!(", socket with the agent paused {x:.0}"))
            .unwrap_or_default(),
        if k.pinned { " (pinned to CPU 0)" } else { "" }
    ));
    p.pinned = k.pinned;
    if let Some(x) = k.socket_paused {
        p.sock_paused_ns.push(x);
    }
    p.sock_ns.push(s);
    p.pipe_ns.push(pi);
    p.file_ns.push(f);

    let others = other_agents(apid);
    p.notes.push(format!(
        "load {load:.1}{}{}",
        noisy.map(|n| format!("; at start {n}")).unwrap_or_default(),
        if others.is_empty() {
            String::new()
        } else {
            format!("; at end {} other agent(s)", others.len())
        }
    ));
    if let Some(agent) = agent {
        let r = agent.stop()?;
        step(format!(
            "  {label}: the agent saw {} requests (sent ~{sent}, each seen at both ends), lost {}",
            r.requests, r.lost
        ));
        p.seen.push(r.requests);
        p.sent.push(sent);
        p.lost.push(r.lost);
    }
    Ok(())
}
