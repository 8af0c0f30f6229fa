//! `cargo xtask bench`: what the agent costs a busy host, and how fast its pipeline is.
//!
//! Everything runs on loopback, in one go, bounded in time (about 5–8 minutes), and every cost
//! is measured side by side in the same run: rounds with and without the agent alternate
//! (with/without, then without/with, ...) so drift on a shared machine hits both sides alike.
//! Each figure is the median of the rounds with its spread (min–max). The table is printed
//! and written to BENCHMARKS.md with the machine it ran on.
//!
//! The agent is the release `traceid diagnose` (every tracepoint attached, every request
//! parsed and aggregated, the report printed at SIGINT); its report says how many requests it
//! saw, so a round where it saw nothing cannot pass for a cheap one.
//!
//! One module per family of figures: [`load`] (request overhead at saturation and cost at a
//! fixed rate), [`kernel_cost`] (per captured message, and on pipes and files), [`pipeline`]
//! (criterion), [`memory`] (idle and short connections); [`rounds`] runs them with and without
//! the agent, [`report`] writes BENCHMARKS.md.

mod agent;
mod helper;
mod histogram;
mod host;
mod kernel_cost;
mod load;
mod memory;
mod pipeline;
mod report;
mod rounds;
mod stats;

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

pub use helper::{helper, HelperArgs};
use rounds::{run_phase, Phase};

use crate::{
    prereq,
    util::{self, cargo, repo_root, run, step, target_dir},
};

/// Debian packages the benchmarks drive.
pub const BENCH_PACKAGES: &[&str] = &["nginx-light", "wrk"];

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// With/without rounds per measurement (the median and min–max of these are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per wrk run (request overhead at saturation).
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Requests per second of the fixed-rate run (latency, agent CPU and RSS).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Write+read round trips per kernel-cost measurement (each is 4 captured messages).
    #[arg(long, default_value_t = 100_000)]
    pingpongs: u64,
    /// Idle connections held open for the memory measurement.
    #[arg(long, default_value_t = 100_000)]
    idle_conns: u64,
    /// Short connections (connect, one request, close) for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    short_conns: u64,
    /// Stop the short-connection run after this many seconds and report how many it made.
    #[arg(long, default_value_t = 180)]
    short_secs: u64,
    /// Skip the criterion pipeline benchmark.
    #[arg(long)]
    no_pipeline: bool,
    /// Skip the with/without rounds (request overhead, fixed rate, kernel cost per event).
    #[arg(long)]
    no_rounds: bool,
    /// Skip the memory measurement (100k idle / 1M short connections).
    #[arg(long)]
    no_memory: bool,
    /// Measure this agent binary instead of building and measuring target/release/traceid
    /// (e.g. a candidate build, to compare a change side by side).
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Where to write the results (default: BENCHMARKS.md at the repository root).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// `bench`: prerequisites, builds, then every measurement; prints the table and writes
/// BENCHMARKS.md.
pub fn bench(a: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    if !util::is_root() {
        bail!(
            "bench loads the kernel programs and raises limits: run it as root \
             (e.g. `sudo -E cargo xtask bench`)"
        );
    }
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    prereq::ensure_debs(
        BENCH_PACKAGES,
        "nginx and wrk, the benchmarks' server and load",
    )
    .context("bench: prerequisites")?;
    let bin = match &a.agent {
        Some(bin) => {
            step(format!("measuring the agent {}", bin.display()));
            std::path::absolute(bin).with_context(|| format!("resolving {}", bin.display()))?
        }
        None => {
            prereq::ensure_build().context("bench: build prerequisites")?;
            crate::tasks::build_ebpf(false)?;
            step("building the agent (traceid-user, release)");
            run(cargo(&repo_root()).args(["build", "-p", "traceid-user", "--release"]))
                .context("bench: building the agent")?;
            target_dir().join("release").join("traceid")
        }
    };
    if !bin.is_file() {
        bail!("bench: the agent binary {} is missing", bin.display());
    }
    let mut machine = report::machine();
    machine.push(("agent under test".into(), bin.display().to_string()));

    // (d) the pipeline, first: it compiles the benchmark and wants the cores to itself.
    let pipeline = if a.no_pipeline {
        None
    } else {
        step("[1/3] userspace pipeline (criterion: cargo bench -p traceid-user --bench pipeline)");
        Some(pipeline::run()?)
    };

    // (a)(b)(c) rounds with and without the agent, alternating which goes first.
    step(format!(
        "[2/3] request overhead, fixed-rate cost, kernel cost per event: {} rounds with/without the agent",
        a.rounds
    ));
    let mut with = Phase::default();
    let mut without = Phase::default();
    let nginx = load::start_nginx()?;
    // Warm nginx and the loopback path once.
    load::run_wrk(nginx.port, 1)?;
    let rounds = if a.no_rounds { 0 } else { a.rounds };
    for round in 0..rounds {
        step(format!("round {}/{}", round + 1, a.rounds));
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for agent_on in order {
            if agent_on {
                run_phase(true, &bin, &nginx, a, &mut with)?;
            } else {
                run_phase(false, &bin, &nginx, a, &mut without)?;
            }
        }
    }
    drop(nginx);

    // (e) memory.
    let mem = if a.no_memory {
        None
    } else {
        step(format!(
            "[3/3] agent memory: {} idle connections, then {} short connections (at most {} s)",
            a.idle_conns, a.short_conns, a.short_secs
        ));
        Some(memory::memory(&bin, a)?)
    };

    let md = report::report(
        a,
        &machine,
        pipeline.as_ref(),
        &with,
        &without,
        mem.as_ref(),
        started,
    );
    println!("\n{md}");
    let path = a
        .output
        .clone()
        .unwrap_or_else(|| repo_root().join("BENCHMARKS.md"));
    fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    step(format!(
        "wrote {} ({} in all)",
        path.display(),
        util::fmt_duration(started.elapsed())
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_packages() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(["xtask", "bench", "--rounds", "1", "--no-memory"])
            .expect("parses");
        match cli.task {
            crate::Task::Bench(a) => {
                assert_eq!(a.rounds, 1);
                assert!(a.no_memory && !a.no_pipeline);
                assert_eq!(
                    (a.rate, a.idle_conns, a.short_conns),
                    (10_000, 100_000, 1_000_000)
                );
            }
            _ => panic!("not bench"),
        }
        assert!(BENCH_PACKAGES.contains(&"wrk") && BENCH_PACKAGES.contains(&"nginx-light"));
    }
}
