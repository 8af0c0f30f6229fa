//! `fuzz`: every cargo-fuzz target of fuzz/ for a while, seeded with real captures
//! (fuzz/seeds/<target>/), each new input kept in target/fuzz-corpus/<target>/.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::prereq;
use crate::util::{self, cargo_nightly, display, repo_root, step, target_dir};

/// The targets, in the order they run (fuzz/Cargo.toml declares each as a `[[bin]]`).
pub const TARGETS: &[&str] = &[
    "http1_split",
    "tracectx",
    "recording_reader",
    "event_decode",
    "pipeline",
];

/// What one target's run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRun {
    pub target: &'static str,
    /// Inputs executed (libFuzzer's count).
    pub executions: u64,
}

/// `cargo +nightly fuzz` at the repository root, building under target/fuzz (sanitizer flags
/// differ from the workspace's: a target directory of its own keeps both builds cached).
fn cargo_fuzz() -> std::process::Command {
    let mut cmd = cargo_nightly(&repo_root());
    cmd.env("CARGO_TARGET_DIR", target_dir().join("fuzz"))
        .arg("fuzz");
    cmd
}

/// Runs every target for `seconds` seconds; fails at the first crash, naming the input that
/// caused it.
pub fn fuzz(seconds: u64) -> Result<Vec<TargetRun>> {
    prereq::ensure_cargo_fuzz()?;
    step("building the fuzz targets (cargo +nightly fuzz build, AddressSanitizer)");
    util::run(cargo_fuzz().arg("build")).context("fuzz: building the fuzz targets")?;
    let mut runs = Vec::new();
    for &target in TARGETS {
        let corpus = target_dir().join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("fuzz: creating {}", corpus.display()))?;
        let seeds = repo_root().join("fuzz").join("seeds").join(target);
        step(format!("fuzzing {target} for {seconds} s"));
        let mut cmd = cargo_fuzz();
        cmd.args(["run", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .stdin(Stdio::null());
        let started = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("fuzz: could not start {}", display(&cmd)))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            bail!(
                "fuzz: {target} crashed after {} ({}); the input is in the `Test unit written to` line above: \
                 reproduce with `cargo +nightly fuzz run {target} <that file>`",
                util::fmt_duration(started.elapsed()),
                out.status
            );
        }
        let executions = executed_units(&stderr).with_context(|| {
            format!("fuzz: {target} ran but libFuzzer printed no execution count")
        })?;
        step(format!("{target}: {executions} executions, 0 crashes"));
        runs.push(TargetRun { target, executions });
    }
    let summary: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {}", r.target, r.executions))
        .collect();
    step(format!(
        "fuzzing done, 0 crashes; executions per target: {}",
        summary.join(", ")
    ));
    Ok(runs)
}

/// libFuzzer's final count of executed inputs (`-print_final_stats=1`).
pub fn executed_units(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_count_from_libfuzzer_stats() {
        let stderr = "#1024\tpulse  cov: 10\nDone 5321 runs in 2 second(s)\n\
                      stat::number_of_executed_units: 5321\nstat::peak_rss_mb: 40\n";
        assert_eq!(executed_units(stderr), Some(5321));
        assert_eq!(executed_units("INFO: nothing\n"), None);
    }

    #[test]
    fn every_target_is_declared_in_the_fuzz_crate() {
        let manifest = std::fs::read_to_string(repo_root().join("fuzz/Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
            assert!(repo_root()
                .join(format!("fuzz/fuzz_targets/{target}.rs"))
                .is_file());
        }
    }
}
