//! `cargo xtask`: builds, runs and tests traceid, installing build prerequisites on first use.
//!
//! See `cargo xtask --help`. `.ci/run` calls `cargo xtask test`.

mod bench;
mod fuzz;
mod prereq;
mod tasks;
mod util;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test traceid",
    long_about = "Build, run and test traceid.\n\n\
        Missing build prerequisites (the nightly toolchain with rust-src, bpf-linker 0.13.0 \
        built against LLVM 22, and for the integration tests a few Debian packages) are \
        installed on first use, each announced by one line. Installing needs root: xtask uses \
        sudo when not run as root."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel programs (traceid-ebpf) for bpfel-unknown-none with nightly.
    ///
    /// Produces target/bpfel-unknown-none/release/traceid-ebpf, which the agent
    /// (traceid-user) embeds when it is built next. Installs the nightly toolchain, its
    /// rust-src component and bpf-linker 0.13.0 first when they are missing.
    BuildEbpf {
        /// Verbose cargo output, plus bpf-linker's debug log and the linked LLVM IR written
        /// next to the object (bpf-linker.log, traceid-ebpf-ir/{pre,post}-opt.ll): for when
        /// linking or the verifier fails. Rebuilds the kernel crate (and again on the next
        /// normal build).
        #[arg(long)]
        debug_output: bool,
    },
    /// Build the kernel programs, then the agent (target/{debug,release}/traceid).
    Build {
        /// Build the agent with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build everything, then run the agent as root with ARGS (via `sudo -E` when not root).
    ///
    /// The agent replaces this process, so Ctrl-C reaches it (it prints its report on
    /// SIGINT) and its exit code is the exit code. Example: `cargo xtask run -- diagnose`.
    Run {
        /// Build and run the release binary.
        #[arg(long)]
        release: bool,
        /// Arguments for `traceid` (e.g. `diagnose --duration 30s`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Everything CI checks, in order, stopping at the first failure.
    ///
    /// [1/6] cargo fmt --check (workspace, fuzz crate and kernel crate), [2/6] clippy -D
    /// warnings (workspace, all targets, and the kernel crate with nightly), [3/6] build-ebpf,
    /// [4/6] unit tests (workspace without traceid-tests, then a smoke run of the pipeline
    /// benchmark: `cargo test -p traceid-user --bench pipeline`), [5/6] fuzz, 10 s per
    /// target, [6/6] integration-test.
    Test,
    /// Run every fuzz target (fuzz/, cargo-fuzz with libFuzzer) for SECONDS each.
    ///
    /// Targets: HTTP/1 reassembly over arbitrarily split input, the trace-context parsers,
    /// the record file reader (with redaction), the raw event decoder and the whole
    /// pipeline, seeded with real captures (fuzz/seeds). Installs cargo-fuzz when missing.
    /// Fails at the first crash, naming the input; prints the executions per target.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Build the kernel programs and the agent, then run the integration tests as root.
    ///
    /// Installs the Debian packages the tests drive (nginx, curl, Flask, Go, ...) when
    /// missing, then runs `cargo test -p traceid-tests -- --test-threads=1 [ARGS]` with
    /// TRACEID_BIN set to the agent binary. When not root it builds as the current user
    /// and re-runs itself via `sudo -E`. CI=true is passed on: tests must then fail rather
    /// than skip when something they need is missing.
    IntegrationTest {
        /// Extra arguments for the test harness, e.g. a test-name filter.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Run the benchmarks (as root, loopback only, about 5–8 minutes) and write BENCHMARKS.md.
    ///
    /// Measures, side by side with and without the agent in alternating rounds: request
    /// overhead at saturation (nginx + wrk), agent CPU and RSS at a fixed rate, kernel cost per
    /// captured message (and on pipes and files), the userspace pipeline (criterion), and the
    /// agent's memory with 100,000 idle and after 1,000,000 short connections. Installs nginx
    /// and wrk when missing.
    Bench(bench::BenchArgs),
    /// Internal to `bench`: holds idle connections in a process of its own.
    #[command(hide = true)]
    BenchHelper(bench::HelperArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = prereq::ensure_cargo_bin_on_path().and_then(|()| match cli.task {
        Task::BuildEbpf { debug_output } => tasks::build_ebpf(debug_output),
        Task::Build { release } => tasks::build(release),
        Task::Run { release, args } => tasks::run_agent(release, &args),
        Task::Test => tasks::test(),
        Task::Fuzz { seconds } => fuzz::fuzz(seconds).map(drop),
        Task::IntegrationTest { args } => tasks::integration_test(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::BenchHelper(args) => bench::helper(&args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_arguments_through() {
        let cli = Cli::try_parse_from(["xtask", "run", "--release", "--", "diagnose", "--json"])
            .expect("parses");
        match cli.task {
            Task::Run { release, args } => {
                assert!(release);
                assert_eq!(args, ["diagnose", "--json"]);
            }
            _ => panic!("not run"),
        }
        let cli = Cli::try_parse_from(["xtask", "integration-test", "--", "tls", "--nocapture"])
            .expect("parses");
        match cli.task {
            Task::IntegrationTest { args } => assert_eq!(args, ["tls", "--nocapture"]),
            _ => panic!("not integration-test"),
        }
    }
}
