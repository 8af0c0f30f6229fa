//! The `traceid` command.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

// Dependencies of the library, not used here by name; `unused_crate_dependencies` checks
// each target against the whole package's list.
use {
    aya as _, btf_rs as _, bytemuck as _, foldhash as _, gimli as _, httparse as _, iced_x86 as _,
    libc as _, memchr as _, miniz_oxide as _, netlink_packet_core as _,
    netlink_packet_sock_diag as _, netlink_sys as _, object as _, prometheus_client as _,
    serde as _, thiserror as _, tracing as _,
};
// The benchmarks' dev-dependency, unused by the unit tests.
#[cfg(test)]
use criterion as _;

use traceid::agent::{self, Notice, RunSummary};
use traceid::capture::CaptureConfig;
use traceid::engine::{EngineConfig, Filter};
use traceid::identity::{self, IdentityFilter, NodeFiles, Resolver};
use traceid::lifecycle::LifecycleConfig;
use traceid::metrics::{server as metrics_server, Metrics, MetricsConfig};
use traceid::pipeline::{Pipeline, PipelineConfig};
use traceid::record::{Finding, Record};
use traceid::report::{self, diagnose::Aggregator, LineSink};
use traceid::sched::CpuPolicy;
use traceid::tracectx::HeaderNames;
use traceid::{capture, check, recording};

/// Finds which service loses the trace id: watches every HTTP exchange on this host from the
/// kernel (eBPF), without touching any service, and reports requests without trace context,
/// malformed ids, and services that drop or replace the id they were given.
///
/// Needs root (or the capabilities `traceid check` lists).
#[derive(Parser)]
#[command(name = "traceid", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Preflight: kernel, BTF, capabilities, tracefs, TLS libraries, the running Go programs
    /// and what the Go probes locate in them. Exit 1 when the agent cannot run here.
    Check,
    /// Observe for a while, then print the diagnosis: per service the requests seen and the
    /// share with trace context, every finding with an example, the broken hops.
    Diagnose {
        /// How long to observe (e.g. 30s, 2m, 500ms). Ctrl-C ends early and still reports.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Print the diagnosis as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also write the raw events to FILE, as `traceid record` does: `traceid replay FILE
        /// --diagnose` then prints this same diagnosis.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// One line per observed request (and per loss) as it happens, until Ctrl-C.
    Watch {
        /// JSON lines (the documented contract) instead of human lines.
        #[arg(long)]
        json: bool,
        /// Stop after this long (default: run until Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        common: Common,
    },
    /// Write the raw captured events to FILE for `replay` (secret header values and query
    /// strings masked).
    Record {
        /// Output file.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// How long to record (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        common: Common,
    },
    /// Run a recording through the engine: the same findings the live run produced.
    Replay {
        /// A file written by `traceid record`.
        file: PathBuf,
        /// JSON lines instead of human lines.
        #[arg(long)]
        json: bool,
        /// Print the diagnosis instead of one line per request.
        #[arg(long)]
        diagnose: bool,
        #[command(flatten)]
        common: Common,
    },
    /// The long-running agent: Prometheus/OpenMetrics metrics on /metrics (exemplars carry
    /// trace ids) and /healthz; with --log-findings, findings as JSON lines on stdout.
    Run {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        common: Common,
    },
}

/// Knobs of `traceid run`.
#[derive(Args, Clone)]
struct RunArgs {
    /// Address of the metrics endpoint (/metrics, /healthz); 0.0.0.0:9464 to be scraped from
    /// other hosts.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    metrics_addr: String,
    /// Write requests with findings (all but `propagated`), `buildup` and `lost` events as
    /// JSON lines to stdout, for log stores.
    #[arg(long)]
    log_findings: bool,
    /// Most per-trace_id series kept in traceid_trace_requests_total (LRU; 0: none).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    trace_series_cap: usize,
    /// A per-trace_id series idle this long is dropped (e.g. 5m, 30s).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    trace_series_ttl: Duration,
    /// Distinct `comm` label values before `other`.
    #[arg(long, default_value_t = 100, value_name = "N")]
    comm_cap: usize,
    /// Distinct `namespace` label values before `other`.
    #[arg(long, default_value_t = 50, value_name = "N")]
    namespace_cap: usize,
    /// Distinct `workload` label values before `other`.
    #[arg(long, default_value_t = 200, value_name = "N")]
    workload_cap: usize,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

/// Filters and knobs shared by every command.
#[derive(Args, Clone)]
struct Common {
    /// Only report these processes (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Only report processes with this name (repeatable).
    #[arg(long)]
    comm: Vec<String>,
    /// Only report connections with this local or remote port (repeatable).
    #[arg(long)]
    port: Vec<u16>,
    /// Only report processes of pods in this Kubernetes namespace (repeatable).
    #[arg(long)]
    namespace: Vec<String>,
    /// Only report processes of this pod, by name (repeatable).
    #[arg(long)]
    pod: Vec<String>,
    /// Only report processes of this container, by name or id prefix (repeatable).
    #[arg(long)]
    container: Vec<String>,
    /// Where the host's files are mounted: the kubelet's /var/log/pods and /var/log/containers
    /// are read below it, for pod, namespace and container names. /proc is the agent's own.
    #[arg(long, default_value = "/", value_name = "DIR")]
    host_root: PathBuf,
    /// Extra request-id header names to read (repeatable), e.g. --header x-amzn-request-id.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Bytes copied from each read/write (1..=16384). Header blocks larger than this per
    /// syscall are reported as truncated.
    #[arg(long, default_value_t = traceid_common::DEFAULT_CAPTURE)]
    capture_bytes: u32,
    /// How the agent's drain loop is scheduled: `normal` (default) takes a fair share, so
    /// nothing is lost under load; `idle` runs it only on CPU time no other thread wants, so
    /// it delays the services it watches less, but a host saturated for long overflows its
    /// ring buffer (lifted to normal when starved for 200 ms; needs CAP_SYS_NICE, else
    /// normal); `batch` is the kernel's policy of that name.
    #[arg(long, default_value_t = CpuPolicy::Normal, value_name = "POLICY")]
    cpu_policy: CpuPolicy,
    /// Ring buffer size in MiB (power of two).
    #[arg(long, default_value_t = 16, hide = true)]
    ring_mib: u32,
    /// TIME_WAIT sockets toward one remote that make a `buildup` finding (when growing).
    /// Default: 1000 or 10 % of ip_local_port_range, whichever is lower.
    #[arg(long, value_name = "N")]
    tw_threshold: Option<u64>,
}

impl Common {
    fn pipeline_config(&self, realtime_offset_ns: i128) -> PipelineConfig {
        PipelineConfig {
            engine: EngineConfig {
                names: HeaderNames::new(&self.headers),
                filter: Filter {
                    pids: self.pid.clone(),
                    comms: self.comm.clone(),
                    ports: self.port.clone(),
                },
                realtime_offset_ns,
                ..EngineConfig::default()
            },
            lifecycle: LifecycleConfig {
                tw_threshold: self.tw_threshold,
                ..Default::default()
            },
            identity_filter: IdentityFilter {
                namespaces: self.namespace.clone(),
                pods: self.pod.clone(),
                containers: self.container.clone(),
            },
        }
    }

    /// Who each process is, read from this host's /proc and the files under --host-root.
    fn identities(&self) -> Resolver {
        Resolver::new(
            NodeFiles::new("/proc", &self.host_root),
            identity::DEFAULT_PROCESS_CAP,
        )
    }

    fn capture_config(&self) -> anyhow::Result<CaptureConfig> {
        if self.capture_bytes == 0 || self.capture_bytes as usize > traceid_common::MAX_CAPTURE {
            bail!(
                "--capture-bytes must be between 1 and {}",
                traceid_common::MAX_CAPTURE
            );
        }
        if !self.ring_mib.is_power_of_two() || self.ring_mib > 1024 {
            bail!("--ring-mib must be a power of two up to 1024");
        }
        Ok(CaptureConfig {
            capture_bytes: self.capture_bytes,
            ring_bytes: self.ring_mib * 1024 * 1024,
            seed: true,
        })
    }
}

/// "30s", "2m", "1h", "500ms", or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (s, 1000.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 30s, 2m, 500ms)"))?;
    if !(v.is_finite() && v >= 0.0 && v * mult_ms < 1e12) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(v * mult_ms / 1000.0))
}

fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the Ctrl-C handler")?;
    }
    Ok(stop)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACEID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("traceid: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => {
            let lines = check::run_checks();
            let mut fatal = false;
            for l in &lines {
                let status = if l.ok {
                    "ok"
                } else if l.required {
                    "MISSING"
                } else {
                    "missing"
                };
                println!("{:<8} {:<20} {}", status, l.name, l.detail);
                fatal |= l.required && !l.ok;
            }
            if fatal {
                println!("\ntraceid cannot run here: fix the MISSING lines above.");
                return Ok(ExitCode::FAILURE);
            }
            println!("\ntraceid can run here.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            json,
            duration,
            common,
        } => {
            preflight()?;
            let mut sink = LineSink::new(std::io::stdout().lock(), json);
            let mut write_err = None;
            live(&common, duration, None, &mut |r| {
                if write_err.is_none() {
                    if let Err(e) = sink.write(r) {
                        write_err = Some(e);
                    }
                }
            })?;
            match write_err {
                // A closed pipe (`| head`) is a normal way to stop watching.
                Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing to stdout")
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Diagnose {
            duration,
            json,
            record,
            common,
        } => {
            preflight()?;
            let mut agg = Aggregator::default();
            let summary = live(&common, Some(duration), record.as_deref(), &mut |r| {
                agg.add(r)
            })?;
            let mut d = agg.diagnosis(summary.span_s);
            d.time_wait = Some(summary.time_wait);
            print_diagnosis(&d, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record {
            output,
            duration,
            common,
        } => {
            preflight()?;
            let mut requests = 0u64;
            let summary = live(&common, duration, Some(&output), &mut |r| {
                if matches!(r, Record::Request(_)) {
                    requests += 1;
                }
            })?;
            eprintln!(
                "traceid: recorded {} events ({requests} HTTP requests) to {}",
                summary.records,
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            file,
            json,
            diagnose,
            common,
        } => {
            let f = open_recording(&file)?;
            let mut rd = recording::Reader::new(BufReader::new(f))
                .with_context(|| file.display().to_string())?;
            let unmasked = rd.redaction_missing();
            if !unmasked.is_empty() {
                eprintln!(
                    "traceid: {} was written by an older traceid (format version {}): {} were not masked in it",
                    file.display(),
                    rd.version,
                    match unmasked.split_last() {
                        Some((last, [])) => last.to_string(),
                        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                        None => String::new(),
                    }
                );
            }
            let mut pipeline = Pipeline::new(common.pipeline_config(rd.realtime_offset_ns));
            let mut agg = Aggregator::default();
            let mut lines = LineSink::new(std::io::stdout().lock(), json);
            let mut write_err = None;
            let mut sink = |r: &Record| {
                if diagnose {
                    agg.add(r);
                } else if write_err.is_none() {
                    if let Err(e) = lines.write(r) {
                        write_err = Some(e);
                    }
                }
            };
            let mut records = 0u64;
            while let Some(rec) = rd
                .next_record()
                .with_context(|| file.display().to_string())?
            {
                records += 1;
                pipeline.process(&rec, &mut sink);
            }
            if records == 0 {
                eprintln!(
                    "traceid: {}: no records (the recording holds only its header)",
                    file.display()
                );
            }
            pipeline.finish(&mut sink);
            if let Some(e) = write_err {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e).context("writing to stdout");
                }
            }
            let stats = pipeline.stats();
            if stats.decode_errors > 0 {
                eprintln!(
                    "traceid: {} records could not be decoded",
                    stats.decode_errors
                );
            }
            if diagnose {
                let mut d = agg.diagnosis(pipeline.span_s());
                d.time_wait = Some(pipeline.time_wait_report());
                print_diagnosis(&d, json)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { run, common } => run_agent(&run, &common),
    }
}

/// `traceid run`: the live loop feeding the metrics, served over HTTP.
fn run_agent(args: &RunArgs, common: &Common) -> anyhow::Result<ExitCode> {
    preflight()?;
    let capture_cfg = common.capture_config()?;
    let stop = stop_flag()?;
    let metrics = Arc::new(Metrics::new(&MetricsConfig {
        trace_series_cap: args.trace_series_cap,
        trace_series_ttl: args.trace_series_ttl,
        comm_cap: args.comm_cap,
        namespace_cap: args.namespace_cap,
        workload_cap: args.workload_cap,
        ..MetricsConfig::default()
    }));
    metrics.init_lost_stages(capture::stat_names().chain([
        "decode",
        "connections_evicted",
        "uninspected_bytes",
        "requests_uninspected_estimate",
        "requests_unseen",
    ]));
    let listener = metrics_server::bind(&args.metrics_addr)?;
    let addr = metrics_server::spawn(listener, Arc::clone(&metrics))
        .context("starting the metrics server thread")?;
    eprintln!("traceid: metrics on http://{addr}/metrics");
    let mut out = std::io::stdout().lock();
    let mut log = args.log_findings;
    let mut pipeline_cfg = common.pipeline_config(agent::realtime_offset_ns());
    // Connection lifecycle and TIME_WAIT census feed the traceid_tcp_* series.
    pipeline_cfg.lifecycle.observer = Some(traceid::lifecycle::Observer(metrics.clone()));
    agent::run_live(
        &capture_cfg,
        common.cpu_policy,
        pipeline_cfg,
        common.identities(),
        args.duration,
        stop,
        &mut print_notice,
        &mut |_| {},
        &mut |r| {
            metrics.observe(r);
            let worth_logging = match r {
                Record::Request(q) => q.findings.iter().any(|f| *f != Finding::Propagated),
                _ => true,
            };
            if log && worth_logging {
                if let Err(e) = writeln!(out, "{}", report::json_line(r)) {
                    eprintln!("traceid: stopped writing findings to stdout: {e}");
                    log = false;
                }
            }
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the live loop with the command's filters, printing notices on stderr, writing the raw
/// events to `record_to` when given.
fn live(
    common: &Common,
    duration: Option<Duration>,
    record_to: Option<&std::path::Path>,
    sink: &mut dyn FnMut(&Record),
) -> anyhow::Result<RunSummary> {
    let stop = stop_flag()?;
    let offset = agent::realtime_offset_ns();
    let capture_cfg = common.capture_config()?;
    let mut writer = match record_to {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Some(
                recording::Writer::new(BufWriter::new(file), offset)
                    .with_context(|| format!("writing {}", path.display()))?,
            )
        }
        None => None,
    };
    let mut write_err = None;
    let summary = agent::run_live(
        &capture_cfg,
        common.cpu_policy,
        common.pipeline_config(offset),
        common.identities(),
        duration,
        stop,
        &mut print_notice,
        &mut |raw| {
            if let (Some(w), None) = (&mut writer, &write_err) {
                if let Err(e) = w.write(raw) {
                    write_err = Some(e);
                }
            }
        },
        sink,
    )?;
    if let (Some(w), Some(path)) = (writer, record_to) {
        if let Some(e) = write_err {
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        w.finish()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

fn print_notice(n: Notice) {
    match n {
        Notice::TracefsMounted(at) => {
            eprintln!("traceid: tracefs was not mounted; mounted it at {at}")
        }
        Notice::Watching {
            tracepoints,
            seeded,
            tls_files,
            go_programs,
            duration,
        } => eprintln!(
            "traceid: watching: {tracepoints} tracepoints attached, {seeded} existing connections followed, TLS probes on {tls_files} OpenSSL files, Go probes on {go_programs} Go programs{}",
            match duration {
                Some(d) => format!(", for {:.0} s (Ctrl-C ends early)", d.as_secs_f64()),
                None => ", Ctrl-C to stop".to_string(),
            }
        ),
        Notice::CensusUnavailable(e) => eprintln!("traceid: TIME_WAIT census unavailable: {e}"),
        Notice::CpuPolicyUnavailable(e) => eprintln!("traceid: {e}"),
        Notice::IdentityNamesUnavailable(missing) => {
            for m in missing {
                eprintln!(
                    "traceid: no {} ({}: {}); see deploy/README.md, \"Identity\"",
                    m.gives,
                    m.path.display(),
                    m.error
                );
            }
        }
    }
}

fn print_diagnosis(d: &report::diagnose::Diagnosis, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, d).context("writing the diagnosis")?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report::diagnose::render(d))?;
    }
    Ok(())
}

/// Opens a recording for replay. Only a regular file is one: a directory would fail at the
/// first read, and a FIFO without a writer would block forever (so the open does not wait for
/// one, and the check refuses it).
fn open_recording(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let kind = file
        .metadata()
        .with_context(|| format!("reading the metadata of {}", path.display()))?
        .file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    bail!(
        "{} is {what}: replay reads a recording file written by `traceid record`",
        path.display()
    )
}

/// Fails early with the names of what is missing, instead of a loader error.
fn preflight() -> anyhow::Result<()> {
    let missing = check::missing_required(check::effective_caps());
    if !missing.is_empty() {
        bail!(
            "missing capabilities {}: run as root or grant them (see `traceid check`)",
            missing.join(", ")
        );
    }
    Ok(())
}
