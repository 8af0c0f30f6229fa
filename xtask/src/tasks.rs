//! The subcommands.

use std::{
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{
    prereq,
    util::{self, cargo, cargo_nightly, display, repo_root, run, step, target_dir},
};

const EBPF_CRATE: &str = "traceid-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Set in the environment of the `sudo` re-run of integration-test, so it cannot loop.
const ELEVATED_ENV: &str = "XTASK_ELEVATED";

fn ebpf_dir() -> PathBuf {
    repo_root().join(EBPF_CRATE)
}

/// The kernel object build-ebpf produces (what traceid-user's build.rs embeds).
pub fn ebpf_object() -> PathBuf {
    target_dir()
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_CRATE)
}

fn agent_binary(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("traceid")
}

/// A TOML basic string (for `cargo --config`).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `build-ebpf`: prerequisites, then the kernel object.
pub fn build_ebpf(debug_output: bool) -> Result<()> {
    prereq::ensure_build().context("build-ebpf: build prerequisites")?;
    step(format!(
        "building kernel programs ({EBPF_CRATE}, {EBPF_TARGET})"
    ));
    let mut cmd = ebpf_cargo("build");
    let out_dir = target_dir().join(EBPF_TARGET).join("release");
    if debug_output {
        let log = out_dir.join("bpf-linker.log");
        let ir = out_dir.join(format!("{EBPF_CRATE}-ir"));
        // The log is appended to: start it afresh so it holds this build only.
        match std::fs::remove_file(&log) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("build-ebpf: removing the old {}", log.display()))
            }
        }
        let flags = [
            "-C".to_owned(),
            "link-arg=--log-level=debug".to_owned(),
            "-C".to_owned(),
            format!("link-arg=--log-file={}", log.display()),
            "-C".to_owned(),
            format!("link-arg=--dump-module={}", ir.display()),
        ];
        let list: Vec<String> = flags.iter().map(|f| toml_string(f)).collect();
        cmd.arg("-v").arg("--config").arg(format!(
            "target.{EBPF_TARGET}.rustflags=[{}]",
            list.join(", ")
        ));
        step(format!(
            "debug output: bpf-linker log {}, LLVM IR before/after optimisation in {}/",
            log.display(),
            ir.display()
        ));
    }
    run(&mut cmd).context("build-ebpf: building the kernel programs")?;
    let object = ebpf_object();
    let len = std::fs::metadata(&object)
        .with_context(|| {
            format!(
                "build-ebpf: the build succeeded but {} is missing",
                object.display()
            )
        })?
        .len();
    if len == 0 {
        bail!("build-ebpf: {} is empty", object.display());
    }
    step(format!("kernel object {} ({len} bytes)", object.display()));
    Ok(())
}

fn build_agent(release: bool) -> Result<()> {
    step(format!(
        "building the agent (traceid-user, {})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = cargo(&repo_root());
    cmd.args(["build", "-p", "traceid-user"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("build: building the agent (traceid-user)")
}

/// `build`: kernel programs, then the agent that embeds them.
pub fn build(release: bool) -> Result<()> {
    build_ebpf(false)?;
    build_agent(release)
}

fn require_sudo(why: &str) -> Result<()> {
    if !util::on_path("sudo") {
        bail!("{why} needs root, and `sudo` is not installed: run `cargo xtask` as root");
    }
    Ok(())
}

/// `run`: build, then replace this process with the agent (as root).
pub fn run_agent(release: bool, args: &[OsString]) -> Result<()> {
    build(release)?;
    let bin = agent_binary(release);
    if !bin.is_file() {
        bail!("run: the build succeeded but {} is missing", bin.display());
    }
    let mut cmd = if util::is_root() {
        Command::new(&bin)
    } else {
        require_sudo("running the agent (it loads eBPF programs)")?;
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(&bin);
        cmd
    };
    cmd.args(args);
    step(format!("running {}", display(&cmd)));
    // exec only returns on failure; on success the agent owns this pid, receives Ctrl-C
    // and its exit code is ours.
    let err = cmd.exec();
    Err(err).with_context(|| format!("run: could not start {}", display(&cmd)))
}

/// Runs the command capturing its output, then prints it; returns whether it succeeded and
/// its stdout.
fn run_echo(cmd: &mut Command) -> Result<(bool, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {}", display(cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        eprintln!("xtask: command {} failed: {}", display(cmd), out.status);
    }
    Ok((out.status.success(), stdout))
}

fn fmt_check() -> Result<()> {
    prereq::ensure_component(None, "rustfmt", "cargo fmt checks formatting")?;
    step("cargo fmt --check (workspace)");
    run(cargo(&repo_root()).args(["fmt", "--all", "--", "--check"]))
        .context("formatting of the workspace differs from rustfmt's (run `cargo fmt --all`)")?;
    step("cargo fmt --check (fuzz)");
    run(cargo(&repo_root()).args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))
        .context("formatting of fuzz/ differs from rustfmt's (run `cargo fmt --manifest-path fuzz/Cargo.toml`)")?;

    step(format!("cargo fmt --check ({EBPF_CRATE})"));
    let manifest = ebpf_dir().join("Cargo.toml");
    let fmt_args = |cmd: &mut Command| {
        cmd.arg("fmt")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--", "--check"]);
    };
    let mut stable = cargo(&repo_root());
    fmt_args(&mut stable);
    let (ok, stdout) = run_echo(&mut stable)?;
    if ok {
        return Ok(());
    }
    if stdout.contains("Diff in") {
        bail!(
            "formatting of {EBPF_CRATE} differs from rustfmt's (run `cargo fmt --manifest-path {EBPF_CRATE}/Cargo.toml`)"
        );
    }
    // Stable rustfmt failed without reporting a difference: try nightly's.
    step(format!(
        "stable rustfmt could not check {EBPF_CRATE}; retrying with cargo +nightly fmt"
    ));
    prereq::ensure_nightly()?;
    prereq::ensure_component(Some("nightly"), "rustfmt", "formats the kernel crate")?;
    let mut nightly = cargo_nightly(&repo_root());
    fmt_args(&mut nightly);
    run(&mut nightly).with_context(|| {
        format!(
            "formatting of {EBPF_CRATE} differs from rustfmt's (run `cargo +nightly fmt --manifest-path {EBPF_CRATE}/Cargo.toml`)"
        )
    })
}

fn clippy() -> Result<()> {
    prereq::ensure_component(None, "clippy", "cargo clippy lints the workspace")?;
    step("cargo clippy --workspace --all-targets -- -D warnings");
    run(cargo(&repo_root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems in the workspace")?;

    prereq::ensure_build()?;
    prereq::ensure_component(Some("nightly"), "clippy", "lints the kernel crate")?;
    step(format!(
        "cargo +nightly clippy ({EBPF_CRATE}, {EBPF_TARGET}) -- -D warnings"
    ));
    let mut cmd = ebpf_cargo("clippy");
    cmd.args(["--", "-D", "warnings"]);
    run(&mut cmd).with_context(|| format!("clippy found problems in {EBPF_CRATE}"))
}

fn unit_tests() -> Result<()> {
    prereq::ensure_debs(
        prereq::UNIT_TEST_PACKAGES,
        "Go and objcopy, to build and rewrite the programs the Go inspection tests read",
    )
    .context("unit tests: prerequisites")?;
    step("cargo test --workspace --exclude traceid-tests");
    run(cargo(&repo_root()).args(["test", "--workspace", "--exclude", "traceid-tests"]))
        .context("unit tests failed")?;
    // The benchmarks are not part of the tests (`cargo xtask bench` runs them), but the
    // pipeline benchmark must keep building and running: under `cargo test` criterion runs
    // each benchmark once, in the dev profile the unit tests already built.
    step("cargo test -p traceid-user --bench pipeline (smoke run of the pipeline benchmark)");
    run(cargo(&repo_root()).args(["test", "-p", "traceid-user", "--bench", "pipeline"]))
        .context("the pipeline benchmark no longer builds or runs")
}

/// Seconds each fuzz target runs in `test`: enough to exercise the seeds and their near
/// mutations on every run, short enough for CI.
const TEST_FUZZ_SECONDS: u64 = 10;

/// `test`: everything CI checks, stopping at the first failure.
pub fn test() -> Result<()> {
    type Step = (&'static str, fn() -> Result<()>);
    let steps: [Step; 6] = [
        ("formatting (cargo fmt --check)", fmt_check),
        ("clippy (-D warnings)", clippy),
        ("kernel programs (build-ebpf)", || build_ebpf(false)),
        ("unit tests", unit_tests),
        ("fuzzing (each target briefly)", || {
            crate::fuzz::fuzz(TEST_FUZZ_SECONDS).map(drop)
        }),
        ("integration tests (as root)", || integration_test(&[])),
    ];
    let n = steps.len();
    let start = Instant::now();
    let mut times = Vec::new();
    for (i, (name, f)) in steps.iter().enumerate() {
        eprintln!("xtask test: [{}/{n}] {name}", i + 1);
        let t = Instant::now();
        if let Err(err) = f() {
            eprintln!(
                "xtask test: FAILED at step [{}/{n}] {name} (after {}); {} of {n} steps passed",
                i + 1,
                util::fmt_duration(t.elapsed()),
                i
            );
            return Err(err.context(format!("test step [{}/{n}] {name} failed", i + 1)));
        }
        times.push(format!(
            "{} {}",
            short(name),
            util::fmt_duration(t.elapsed())
        ));
    }
    eprintln!(
        "xtask test: all {n} steps passed in {} ({})",
        util::fmt_duration(start.elapsed()),
        times.join(", ")
    );
    Ok(())
}

/// A step's name without its parenthesised detail.
fn short(name: &str) -> &str {
    name.split(" (").next().unwrap_or(name)
}

fn env_pair(key: &str, value: &OsStr) -> OsString {
    let mut kv = OsString::from(key);
    kv.push("=");
    kv.push(value);
    kv
}

/// `integration-test`: prerequisites, builds, then the integration tests as root.
pub fn integration_test(extra: &[OsString]) -> Result<()> {
    prereq::ensure_build().context("integration-test: build prerequisites")?;
    prereq::ensure_integration().context("integration-test: test prerequisites")?;
    build_ebpf(false)?;
    build_agent(false)?;
    let bin = agent_binary(false);
    if !bin.is_file() {
        bail!(
            "integration-test: the build succeeded but {} is missing",
            bin.display()
        );
    }
    let ci = std::env::var_os("CI");
    if ci.as_deref() == Some(OsStr::new("true")) {
        step("CI=true: integration tests fail instead of skipping when something is missing");
    }

    if !util::is_root() {
        if std::env::var_os(ELEVATED_ENV).is_some() {
            bail!("integration-test: re-ran via sudo but still not root");
        }
        require_sudo("integration-test (the tests load eBPF programs)")?;
        // Compile the tests as this user, so the root re-run only runs them and leaves no
        // root-owned build artefacts behind.
        step("building the integration tests (traceid-tests)");
        run(cargo(&repo_root()).args(["test", "-p", "traceid-tests", "--no-run"]))
            .context("integration-test: building the integration tests")?;
        step("the integration tests load kernel programs: re-running as root via sudo -E");
        let exe = std::env::current_exe().context("integration-test: finding xtask's own path")?;
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg("env");
        // sudo may reset these even with -E (secure_path, HOME): pass them explicitly so
        // root uses this user's toolchains and tools instead of installing its own.
        let path = std::env::var_os("PATH").unwrap_or_default();
        cmd.arg(env_pair("PATH", &path))
            .arg(env_pair("RUSTUP_HOME", util::rustup_home()?.as_os_str()))
            .arg(env_pair("CARGO_HOME", util::cargo_home()?.as_os_str()))
            .arg(env_pair(ELEVATED_ENV, OsStr::new("1")));
        if let Some(ci) = &ci {
            cmd.arg(env_pair("CI", ci));
        }
        cmd.arg(exe).arg("integration-test");
        if !extra.is_empty() {
            cmd.arg("--").args(extra);
        }
        return run(&mut cmd)
            .context("integration-test: the integration tests (run as root) failed");
    }

    step(format!(
        "running the integration tests as root (TRACEID_BIN={}, one test at a time)",
        bin.display()
    ));
    let mut cmd = cargo(&repo_root());
    cmd.args(["test", "-p", "traceid-tests", "--", "--test-threads=1"])
        .args(extra)
        .env("TRACEID_BIN", absolute(&bin)?);
    run(&mut cmd).context("integration-test: the integration tests failed")
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

/// `cargo +nightly SUBCOMMAND` for the kernel crate: its target, core built from source,
/// release profile, and the workspace's target directory (where the agent embeds it from).
fn ebpf_cargo(subcommand: &str) -> Command {
    let mut cmd = cargo_nightly(&ebpf_dir());
    cmd.args([
        subcommand,
        "--target",
        EBPF_TARGET,
        "-Z",
        "build-std=core",
        "--release",
    ])
    .arg("--target-dir")
    .arg(target_dir());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(
            toml_string("link-arg=--log-level=debug"),
            "\"link-arg=--log-level=debug\""
        );
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn paths() {
        assert!(ebpf_object().ends_with("target/bpfel-unknown-none/release/traceid-ebpf"));
        assert!(agent_binary(false).ends_with("target/debug/traceid"));
        assert!(agent_binary(true).ends_with("target/release/traceid"));
        assert!(repo_root().join("Cargo.toml").is_file());
    }

    #[test]
    fn step_names() {
        assert_eq!(short("clippy (-D warnings)"), "clippy");
        assert_eq!(short("unit tests"), "unit tests");
        assert_eq!(short("fuzzing (each target briefly)"), "fuzzing");
    }
}
