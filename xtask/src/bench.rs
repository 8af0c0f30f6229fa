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

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    prereq,
    util::{self, cargo, probe, repo_root, run, step, target_dir},
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
    /// Requests per second of the fixed-rate run (agent CPU and RSS).
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

/// `cargo xtask bench-helper` (hidden): holds idle connections for the memory measurement in a
/// process of its own, since one process may not open more than its open-file limit (20,000
/// on these machines, and raising the hard limit needs CAP_SYS_RESOURCE).
#[derive(Args, Debug, Clone)]
pub struct HelperArgs {
    /// `listen` (accept `count` connections on a new port) or `connect` (open `count`
    /// connections to `addr`).
    mode: String,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    addr: Option<SocketAddr>,
}

/// Prints `port P` (listen), then `done N` once `count` connections are held (or as many as
/// could be), then holds them until stdin closes.
pub fn helper(h: &HelperArgs) -> Result<()> {
    let mut held = Vec::with_capacity(h.count as usize);
    let mut out = std::io::stdout();
    let mut err = String::new();
    match h.mode.as_str() {
        "listen" => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            writeln!(out, "port {}", l.local_addr()?.port())?;
            out.flush()?;
            while (held.len() as u64) < h.count {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(e) => {
                        err = e.to_string();
                        break;
                    }
                }
            }
        }
        "connect" => {
            let addr = h.addr.context("connect needs --addr")?;
            while (held.len() as u64) < h.count {
                match TcpStream::connect(addr) {
                    Ok(s) => held.push(s),
                    Err(e) => {
                        err = e.to_string();
                        break;
                    }
                }
            }
        }
        other => bail!("unknown mode {other}"),
    }
    writeln!(out, "done {} {err}", held.len())?;
    out.flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// A helper process and its stdout, line by line.
struct Helper {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Helper {
    fn spawn(args: &[String]) -> Result<Helper> {
        let exe = std::env::current_exe().context("finding xtask's own path")?;
        let mut child = Command::new(exe)
            .arg("bench-helper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a bench helper")?;
        let out = child.stdout.take().context("helper stdout")?;
        Ok(Helper {
            child,
            lines: BufReader::new(out).lines(),
        })
    }

    fn line(&mut self) -> Result<String> {
        self.lines
            .next()
            .context("a bench helper exited early")?
            .context("reading a bench helper")
    }

    /// `done N [error]`: how many connections it holds, and why it stopped short.
    fn done(&mut self) -> Result<(u64, String)> {
        let l = self.line()?;
        let rest = l
            .strip_prefix("done ")
            .context("unexpected helper output")?;
        let (n, err) = rest.split_once(' ').unwrap_or((rest, ""));
        Ok((n.parse()?, err.trim().to_owned()))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `total` idle loopback connections held by pairs of helper processes (at most 15,000
/// each); returns the helpers (dropping them closes everything) and how many are open.
fn open_idle(total: u64) -> Result<(Vec<Helper>, u64, String)> {
    const PER_HELPER: u64 = 15_000;
    let mut helpers = Vec::new();
    let mut opened = 0;
    let mut errors = String::new();
    let mut left = total;
    let mut pairs = Vec::new();
    while left > 0 {
        let n = left.min(PER_HELPER);
        left -= n;
        let mut server = Helper::spawn(&["listen".into(), "--count".into(), n.to_string()])?;
        let port: u16 = server
            .line()?
            .strip_prefix("port ")
            .context("unexpected helper output")?
            .parse()?;
        let client = Helper::spawn(&[
            "connect".into(),
            "--count".into(),
            n.to_string(),
            "--addr".into(),
            format!("127.0.0.1:{port}"),
        ])?;
        pairs.push((server, client));
    }
    for (mut server, mut client) in pairs {
        let (c, cerr) = client.done()?;
        if c < PER_HELPER.min(total) && !cerr.is_empty() {
            errors = cerr;
        }
        // The server side accepts what the client side opened.
        if c > 0 {
            let (sn, serr) = server.done()?;
            if sn < c && !serr.is_empty() {
                errors = serr;
            }
        }
        opened += c;
        helpers.push(server);
        helpers.push(client);
    }
    Ok((helpers, opened, errors))
}

// ---------------------------------------------------------------------------------------
// Statistics and formatting

/// Median and min–max of a few rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn fmt(&self, digits: usize, unit: &str) -> String {
        format!(
            "{:.d$}{unit} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

fn fmt_opt(s: Option<Spread>, digits: usize, unit: &str) -> String {
    s.map_or_else(|| "n/a".to_owned(), |s| s.fmt(digits, unit))
}

/// Paired ratios with/without, round by round.
fn ratios(with: &[f64], without: &[f64]) -> Vec<f64> {
    with.iter()
        .zip(without)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

fn diffs(with: &[f64], without: &[f64]) -> Vec<f64> {
    with.iter().zip(without).map(|(a, b)| a - b).collect()
}

/// One row of the results table.
struct Row {
    figure: String,
    result: String,
    goal: String,
    verdict: &'static str,
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

// ---------------------------------------------------------------------------------------
// Parsing tools' output

/// wrk's `Requests/sec:` and, with `--latency`, its 50% and 99% latencies (µs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub errors: u64,
}

fn parse_wrk_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * mult)
}

pub fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut have_rps = false;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().ok()?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = parse_wrk_duration_us(v)?;
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = parse_wrk_duration_us(v)?;
        } else if t.contains("requests in") {
            r.requests = t.split_whitespace().next()?.parse().ok()?;
        } else if t.starts_with("Non-2xx") || t.starts_with("Socket errors") {
            r.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    have_rps.then_some(r)
}

/// The first `"key": <number>` in a JSON text (the agent's report; top-level keys come first).
pub fn json_number(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `"lost": {...}` object of the agent's report, compacted (`{}` when nothing was lost).
pub fn json_lost(json: &str) -> String {
    let Some(at) = json.find("\"lost\"") else {
        return "?".to_owned();
    };
    let rest = &json[at..];
    match (rest.find('{'), rest.find('}')) {
        (Some(a), Some(b)) if a < b => rest[a..=b].split_whitespace().collect::<String>(),
        _ => "?".to_owned(),
    }
}

/// A criterion duration like `1.2345 ms` in seconds.
fn parse_criterion_time(num: &str, unit: &str) -> Option<f64> {
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "ps" => 1e-12,
        "ns" => 1e-9,
        "µs" | "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    Some(v * mult)
}

/// What the pipeline benchmark printed: stream size and criterion's time per pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineResult {
    pub messages: u64,
    pub bytes: u64,
    pub requests: u64,
    /// Seconds per pass: criterion's lower bound, estimate, upper bound.
    pub time: [f64; 3],
    pub stream_line: String,
}

pub fn parse_pipeline(out: &str) -> Option<PipelineResult> {
    let line = out.lines().find(|l| l.starts_with("pipeline stream:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let num_before = |what: &str| -> Option<u64> {
        let i = words.iter().position(|w| w.trim_end_matches(',') == what)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let messages = num_before("messages")?;
    let bytes = num_before("bytes")?;
    let requests = num_before("requests").unwrap_or(0);
    let tline = out
        .lines()
        .find(|l| l.contains("time:") && l.contains('['))?;
    let inner = &tline[tline.find('[')? + 1..tline.find(']')?];
    let t: Vec<&str> = inner.split_whitespace().collect();
    if t.len() != 6 {
        return None;
    }
    let time = [
        parse_criterion_time(t[0], t[1])?,
        parse_criterion_time(t[2], t[3])?,
        parse_criterion_time(t[4], t[5])?,
    ];
    Some(PipelineResult {
        messages,
        bytes,
        requests,
        time,
        stream_line: line.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------
// Processes: nginx, the agent, /proc

fn clk_tck() -> f64 {
    probe(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; comm may hold spaces).
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')' : field 3 (state) is f[0]; utime is field 14 → f[11], stime f[12].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&s, field).map(|kb| kb as f64 / 1024.0)
}

pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Pids of other `traceid` agents on this host (other engineers' runs, integration tests):
/// their programs trace our traffic too, so a round with one running is noisy.
fn other_agents(mine: Option<u32>) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != mine)
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "traceid")
        })
        .collect()
}

/// Waits (at most `max`) until no other agent runs; returns a note when it gave up.
fn wait_quiet(max: Duration) -> Option<String> {
    let deadline = Instant::now() + max;
    loop {
        let others = other_agents(None);
        if others.is_empty() {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "{} other traceid agent(s) running (pids {:?})",
                others.len(),
                others
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU of a set of processes over an interval, in millicores.
struct CpuMeter {
    pids: Vec<u32>,
    start: Instant,
    ticks: u64,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: Instant::now(),
            ticks: pids.iter().filter_map(|p| cpu_ticks(*p)).sum(),
        }
    }
    fn millicores(&self) -> f64 {
        let ticks: u64 = self.pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        let secs = self.start.elapsed().as_secs_f64();
        ticks.saturating_sub(self.ticks) as f64 / clk_tck() / secs * 1000.0
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 20 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// nginx on 127.0.0.1 with one worker answering every request with `200 ok`.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    fn start() -> Result<Nginx> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("traceid-bench-nginx-{port}"));
        fs::create_dir_all(dir.join("logs"))?;
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             keepalive_requests 1000000;\n keepalive_timeout 300s;\n\
             server {{\n  listen 127.0.0.1:{port} backlog=4096;\n  location / {{ return 200 \"ok\"; }}\n }}\n}}\n",
            d = dir.display()
        );
        fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nginx")?;
        let n = Nginx { child, port, dir };
        wait_port(port)?;
        if nproc() >= 2 {
            for pid in std::iter::once(n.child.id()).chain(n.worker_pids()) {
                pin_process(pid, "0");
            }
        }
        Ok(n)
    }

    fn worker_pids(&self) -> Vec<u32> {
        children_of(self.child.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let workers = self.worker_pids();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in workers {
            signal(p, "-KILL");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The agent (`traceid diagnose`) running until stopped.
struct Agent {
    child: Child,
    stderr: Arc<std::sync::Mutex<String>>,
}

/// What a stopped agent reported.
struct AgentReport {
    requests: u64,
    lost: String,
}

impl Agent {
    fn start(bin: &Path) -> Result<Agent> {
        let mut child = Command::new(bin)
            .args(["diagnose", "--json", "--duration", "1h"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().context("agent stderr")?;
        let log = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("traceid: watching") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut agent = Agent { child, stderr };
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(()) => {}
            Err(_) => {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
                bail!(
                    "the agent did not start watching within 90 s; its stderr:\n{}",
                    agent.stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            }
        }
        // The poll loop is running once the line is printed; let it drain the seeding burst.
        thread::sleep(Duration::from_millis(500));
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then the report it prints.
    fn stop(mut self) -> Result<AgentReport> {
        signal(self.pid(), "-INT");
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).ok();
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "the agent exited with {status}; its stderr:\n{}",
                self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
        Ok(AgentReport {
            requests: json_number(&out, "requests").unwrap_or(0.0) as u64,
            lost: json_lost(&out),
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load: wrk at saturation, a paced keep-alive generator, a ping-pong loop

fn run_wrk(port: u16, secs: u64) -> Result<WrkResult> {
    // wrk on CPU 1 and nginx on CPU 0 (see Nginx::start): the same placement every run.
    let mut cmd = if nproc() >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    let out = cmd
        .args(["-t1", "-c32", &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed ({}): {text}", out.status);
    }
    parse_wrk(&text).with_context(|| format!("could not read wrk's output:\n{text}"))
}

const REQUEST: &[u8] = b"GET /fixed HTTP/1.1\r\nHost: bench\r\nUser-Agent: traceid-bench\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";

/// Reads one response with a Content-Length body from `s` (keeps leftovers in `buf`).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            if buf.len() >= total {
                buf.drain(..total);
                return Ok(());
            }
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Keep-alive clients sending `rate` requests/s in total for `secs`, each on a fixed
/// schedule (a late request is sent at once, not skipped). Returns the achieved rate.
fn paced_load(port: u16, rate: u64, secs: f64, on_window: impl FnOnce()) -> Result<f64> {
    const CLIENTS: u64 = 16;
    let per_client = Duration::from_secs_f64(CLIENTS as f64 / rate as f64);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for i in 0..CLIENTS {
        let done = Arc::clone(&done);
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        handles.push(thread::spawn(move || -> Result<()> {
            let mut buf = Vec::new();
            let mut next = start + per_client.mul_f64(i as f64 / CLIENTS as f64);
            loop {
                let now = Instant::now();
                if next >= end {
                    return Ok(());
                }
                if next > now {
                    thread::sleep(next - now);
                }
                s.write_all(REQUEST)?;
                read_response(&mut s, &mut buf)?;
                done.fetch_add(1, Ordering::Relaxed);
                next += per_client;
            }
        }));
    }
    // The measurement window: from the schedule's start to its end.
    let now = Instant::now();
    if start > now {
        thread::sleep(start - now);
    }
    let before = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    on_window();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
    }
    let n = done.load(Ordering::Relaxed) - before;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// A 100-byte HTTP request and a 100-byte response, so the agent parses every exchange.
fn pingpong_messages() -> (Vec<u8>, Vec<u8>) {
    let pad = |prefix: &str, suffix: &str| {
        let mut s = prefix.to_owned();
        while s.len() + suffix.len() < 100 {
            s.push('x');
        }
        s.push_str(suffix);
        s.into_bytes()
    };
    let req = pad("GET /ping HTTP/1.1\r\nHost: b\r\nX-Pad: ", "\r\n\r\n");
    let body = "pong";
    let resp = pad(
        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Pad: ",
        &format!("\r\n\r\n{body}"),
    );
    (req, resp)
}

/// ns per socket operation (write or read) of a single-threaded loopback ping-pong: each round
/// trip is 4 captured messages (client write, server read, server write, client read).
fn socket_pingpong(n: u64) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let mut a = TcpStream::connect(l.local_addr()?)?;
    let (mut b, _) = l.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let (req, resp) = pingpong_messages();
    let mut buf = [0u8; 100];
    // Warm-up.
    for _ in 0..1000 {
        a.write_all(&req)?;
        b.read_exact(&mut buf)?;
        b.write_all(&resp)?;
        a.read_exact(&mut buf)?;
    }
    let t = Instant::now();
    for _ in 0..n {
        a.write_all(&req)?;
        b.read_exact(&mut buf)?;
        b.write_all(&resp)?;
        a.read_exact(&mut buf)?;
    }
    let ns = t.elapsed().as_nanos() as f64 / (4 * n) as f64;
    a.shutdown(Shutdown::Both).ok();
    Ok(ns)
}

/// ns per write or read on a pipe (100 bytes each).
fn pipe_pingpong(n: u64) -> Result<f64> {
    let (mut r, mut w) = std::io::pipe()?;
    let msg = [b'p'; 100];
    let mut buf = [0u8; 100];
    for _ in 0..1000 {
        w.write_all(&msg)?;
        r.read_exact(&mut buf)?;
    }
    let t = Instant::now();
    for _ in 0..n {
        w.write_all(&msg)?;
        r.read_exact(&mut buf)?;
    }
    Ok(t.elapsed().as_nanos() as f64 / (2 * n) as f64)
}

/// ns per write or read on a regular file (tmpfs when /dev/shm exists): write 100 bytes,
/// seek back, read them, seek back (the seeks are counted in, they are not traced).
fn file_pingpong(n: u64) -> Result<f64> {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("traceid-bench-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let msg = [b'f'; 100];
    let mut buf = [0u8; 100];
    let mut once = |f: &mut fs::File| -> std::io::Result<()> {
        f.write_all(&msg)?;
        f.seek(SeekFrom::Start(0))?;
        f.read_exact(&mut buf)?;
        f.seek(SeekFrom::Start(0))?;
        Ok(())
    };
    for _ in 0..1000 {
        once(&mut f)?;
    }
    let t = Instant::now();
    for _ in 0..n {
        once(&mut f)?;
    }
    let ns = t.elapsed().as_nanos() as f64 / (2 * n) as f64;
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(ns)
}

fn nproc() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `cpu` (taskset(1) on our own tid: std has no affinity call).
fn pin_this_thread(cpu: usize) -> bool {
    let Ok(link) = fs::read_link("/proc/thread-self") else {
        return false;
    };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else {
        return false;
    };
    probe(Command::new("taskset").args(["-pc", &cpu.to_string(), &tid])).is_some()
}

/// Pins every thread of `pid` to `cpus` (a taskset list like `1` or `0-1`).
fn pin_process(pid: u32, cpus: &str) -> bool {
    probe(Command::new("taskset").args(["-apc", cpus, &pid.to_string()])).is_some()
}

/// Each kernel-cost loop runs as this many blocks; the fastest block counts (other work on a
/// shared machine only ever adds time).
const BLOCKS: u64 = 5;

/// The fastest of [`BLOCKS`] runs of `f` over `n / BLOCKS` iterations each, in ns per op.
fn best_of(n: u64, f: fn(u64) -> Result<f64>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..BLOCKS {
        best = best.min(f((n / BLOCKS).max(1))?);
    }
    Ok(best)
}

/// ns per op of the kernel-cost loops.
struct KernelCost {
    socket: f64,
    pipe: f64,
    file: f64,
    /// The socket loop again with the agent stopped (SIGSTOP): the kernel programs still copy
    /// every message into the ring buffer, but nobody is woken up and nothing is parsed.
    socket_paused: Option<f64>,
    pinned: bool,
}

/// Round trips of the paused-agent loop: 4 records of 176 bytes each must fit in the 16 MiB
/// ring buffer (about 95,000 records) with the warm-ups (1000 per block), or the rest would be
/// dropped.
const PAUSED_PINGPONGS: u64 = 15_000;

/// The pipe, file and socket loops (ns per op), in a thread of their own pinned to CPU 0 when
/// there are two CPUs or more (the agent is then pinned to the others meanwhile), so that the
/// figure is the time spent in the syscalls, not time the agent's userspace took from the core.
/// Pipe and file go first, while the agent is idle.
fn kernel_cost(pingpongs: u64, agent: Option<u32>) -> Result<KernelCost> {
    let cpus = nproc();
    let pinned = cpus >= 2;
    if pinned {
        if let Some(pid) = agent {
            pin_process(pid, &format!("1-{}", cpus - 1));
        }
    }
    // Let the agent finish what the previous load left in the ring buffer.
    thread::sleep(Duration::from_secs(1));
    let r = thread::spawn(move || -> Result<KernelCost> {
        let ok = pinned && pin_this_thread(0);
        let pipe = best_of(pingpongs, pipe_pingpong)?;
        let file = best_of(pingpongs, file_pingpong)?;
        let socket = best_of(pingpongs, socket_pingpong)?;
        let socket_paused = match agent {
            Some(pid) => {
                thread::sleep(Duration::from_secs(1));
                signal(pid, "-STOP");
                let r = best_of(PAUSED_PINGPONGS.min(pingpongs), socket_pingpong);
                signal(pid, "-CONT");
                Some(r?)
            }
            None => None,
        };
        Ok(KernelCost {
            socket,
            pipe,
            file,
            socket_paused,
            pinned: ok,
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the ping-pong thread panicked"))?;
    if pinned {
        if let Some(pid) = agent {
            pin_process(pid, &format!("0-{}", cpus - 1));
        }
    }
    r
}

// ---------------------------------------------------------------------------------------
// One with/without phase

#[derive(Default, Clone)]
struct Phase {
    wrk: Vec<WrkResult>,
    /// Agent CPU during the wrk run (millicores), with the agent only.
    agent_mc_wrk: Vec<f64>,
    /// Fixed-rate run: achieved req/s, nginx worker millicores, agent millicores and RSS.
    fixed_rps: Vec<f64>,
    nginx_mc: Vec<f64>,
    agent_mc: Vec<f64>,
    agent_rss: Vec<f64>,
    sock_ns: Vec<f64>,
    /// Socket loop with the agent stopped (with-phases only).
    sock_paused_ns: Vec<f64>,
    pipe_ns: Vec<f64>,
    file_ns: Vec<f64>,
    /// Agent reports: requests seen, losses.
    seen: Vec<u64>,
    sent: Vec<u64>,
    lost: Vec<String>,
    /// Per phase: load average, and other agents seen.
    notes: Vec<String>,
    /// Whether the kernel-cost loops ran pinned to CPU 0 (the agent on the other CPUs).
    pinned: bool,
}

fn run_phase(
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
    let rps = paced_load(nginx.port, a.rate, fixed_secs, || {
        meters = Some((
            CpuMeter::start(&workers),
            apid.map(|pid| CpuMeter::start(&[pid])),
        ));
    })?;
    sent += (rps * fixed_secs) as u64;
    let (nm, am) = meters.context("fixed-rate window")?;
    let nginx_mc = nm.millicores();
    p.fixed_rps.push(rps);
    p.nginx_mc.push(nginx_mc);
    let mut line = format!("  {label}: fixed rate {rps:.0} req/s, nginx {nginx_mc:.0} millicores");
    if let (Some(am), Some(pid)) = (am, apid) {
        let mc = am.millicores();
        let rss = status_mib(pid, "VmRSS").unwrap_or(f64::NAN);
        p.agent_mc.push(mc);
        p.agent_rss.push(rss);
        let _ = write!(line, ", agent {mc:.0} millicores, RSS {rss:.1} MiB");
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

// ---------------------------------------------------------------------------------------
// (e) memory with many connections

struct MemoryResult {
    rss_idle_agent: f64,
    idle_opened: u64,
    idle_secs: f64,
    rss_idle_conns: f64,
    rss_after_idle_close: f64,
    short_done: u64,
    short_secs: f64,
    short_errors: u64,
    rss_short_max: f64,
    rss_after_short: f64,
    hwm: f64,
    requests_seen: u64,
    lost: String,
}

fn listeners(n: usize) -> Result<Vec<TcpListener>> {
    (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(anyhow::Error::from))
        .collect()
}

fn memory(bin: &Path, a: &BenchArgs) -> Result<MemoryResult> {
    const PORTS: usize = 8;
    if let Some(n) = wait_quiet(Duration::from_secs(30)) {
        step(format!("  waited 30 s for quiet, still {n}"));
    }
    let agent = Agent::start(bin)?;
    let apid = agent.pid();
    thread::sleep(Duration::from_secs(1));
    let rss_idle_agent = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    step(format!("  agent idle: RSS {rss_idle_agent:.1} MiB"));

    // Idle connections: both ends on loopback, held by helper processes (one process may not
    // hold more than its open-file limit), one listening port per pair of helpers so the
    // ephemeral port range (28,000 per destination) is not the limit either.
    let t = Instant::now();
    let (helpers, idle_opened, idle_err) = open_idle(a.idle_conns)?;
    let idle_secs = t.elapsed().as_secs_f64();
    if !idle_err.is_empty() {
        step(format!(
            "  stopped opening idle connections at {idle_opened}: {idle_err}"
        ));
    }
    // Let the agent take in every open event.
    thread::sleep(Duration::from_secs(3));
    let rss_idle_conns = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    step(format!(
        "  {idle_opened} idle connections (both ends traced) opened in {idle_secs:.1} s: agent RSS {rss_idle_conns:.1} MiB"
    ));
    drop(helpers);
    thread::sleep(Duration::from_secs(3));
    let rss_after_idle_close = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    step(format!(
        "  after closing them: agent RSS {rss_after_idle_close:.1} MiB"
    ));

    // Short connections: connect, one request, response, the server closes first (its
    // TIME_WAIT does not hold the client's ephemeral ports), then the client closes.
    let ls = listeners(PORTS)?;
    let addrs: Vec<SocketAddr> = ls
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = ls
        .into_iter()
        .map(|l| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                l.set_nonblocking(true).ok();
                let mut buf = [0u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            s.set_nonblocking(false).ok();
                            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                            let mut got = Vec::new();
                            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => got.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = s.write_all(resp);
                        }
                        Err(_) => thread::sleep(Duration::from_micros(200)),
                    }
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let deadline = t + Duration::from_secs(a.short_secs);
    const CLIENT_THREADS: usize = 4;
    let target = a.short_conns;
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|c| {
            let (done, errors, addrs) = (Arc::clone(&done), Arc::clone(&errors), addrs.clone());
            thread::spawn(move || {
                let req = b"GET /short HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
                let mut buf = Vec::new();
                let mut i = c;
                loop {
                    if done.load(Ordering::Relaxed) >= target || Instant::now() > deadline {
                        return;
                    }
                    let r = (|| -> Result<()> {
                        let mut s = TcpStream::connect(addrs[i % PORTS])?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(req)?;
                        buf.clear();
                        read_response(&mut s, &mut buf)?;
                        Ok(())
                    })();
                    match r {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += CLIENT_THREADS;
                }
            })
        })
        .collect();
    let mut rss_short_max: f64 = 0.0;
    let mut last_report = Instant::now();
    while clients.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(250));
        if let Some(r) = status_mib(apid, "VmRSS") {
            rss_short_max = rss_short_max.max(r);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            step(format!(
                "  short connections: {} in {:.0} s, agent RSS {:.1} MiB",
                done.load(Ordering::Relaxed),
                t.elapsed().as_secs_f64(),
                status_mib(apid, "VmRSS").unwrap_or(f64::NAN)
            ));
        }
    }
    for h in clients {
        let _ = h.join();
    }
    let short_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in servers {
        let _ = h.join();
    }
    thread::sleep(Duration::from_secs(3));
    let rss_after_short = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    let hwm = status_mib(apid, "VmHWM").unwrap_or(f64::NAN);
    let short_done = done.load(Ordering::Relaxed);
    let short_errors = errors.load(Ordering::Relaxed);
    step(format!(
        "  {short_done} short connections in {short_secs:.0} s ({short_errors} errors): agent RSS max {rss_short_max:.1} MiB, after {rss_after_short:.1} MiB, high-water {hwm:.1} MiB"
    ));
    let report = agent.stop()?;
    Ok(MemoryResult {
        rss_idle_agent,
        idle_opened,
        idle_secs,
        rss_idle_conns,
        rss_after_idle_close,
        short_done,
        short_secs,
        short_errors,
        rss_short_max,
        rss_after_short,
        hwm,
        requests_seen: report.requests,
        lost: report.lost,
    })
}

// ---------------------------------------------------------------------------------------
// The machine, the report

fn machine() -> Vec<(String, String)> {
    let kernel = probe(Command::new("uname").arg("-r")).unwrap_or_default();
    let nproc = probe(&mut Command::new("nproc")).unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_status_kb(&s, "MemTotal"))
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let date = probe(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tool = |cmd: &mut Command| {
        probe(cmd)
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned())
    };
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    let wrk = Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default();
    vec![
        ("date".into(), date.trim().to_owned()),
        ("kernel (uname -r)".into(), kernel.trim().to_owned()),
        ("CPUs (nproc)".into(), nproc.trim().to_owned()),
        ("CPU model".into(), cpu),
        ("memory".into(), mem),
        (
            "load average at start".into(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("rustc".into(), tool(Command::new("rustc").arg("-V"))),
        ("nginx".into(), nginx),
        ("wrk".into(), wrk),
    ]
}

fn short_pct(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
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
    let mut machine = machine();
    machine.push(("agent under test".into(), bin.display().to_string()));

    // (d) the pipeline, first: it compiles the benchmark and wants the cores to itself.
    let pipeline = if a.no_pipeline {
        None
    } else {
        step("[1/3] userspace pipeline (criterion: cargo bench -p traceid-user --bench pipeline)");
        let out = cargo(&repo_root())
            .args(["bench", "-p", "traceid-user", "--bench", "pipeline"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("running the pipeline benchmark")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            bail!("the pipeline benchmark failed ({})", out.status);
        }
        Some(
            parse_pipeline(&text)
                .context("could not read the pipeline benchmark's output (stream line, time)")?,
        )
    };

    // (a)(b)(c) rounds with and without the agent, alternating which goes first.
    step(format!(
        "[2/3] request overhead, fixed-rate cost, kernel cost per event: {} rounds with/without the agent",
        a.rounds
    ));
    let mut with = Phase::default();
    let mut without = Phase::default();
    let nginx = Nginx::start()?;
    // Warm nginx and the loopback path once.
    run_wrk(nginx.port, 1)?;
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
        Some(memory(&bin, a)?)
    };

    let md = report(
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

fn col<T: Copy>(v: &[WrkResult], f: impl Fn(&WrkResult) -> T) -> Vec<T> {
    v.iter().map(f).collect()
}

#[allow(clippy::too_many_arguments)]
fn report(
    a: &BenchArgs,
    machine: &[(String, String)],
    pipeline: Option<&PipelineResult>,
    with: &Phase,
    without: &Phase,
    mem: Option<&MemoryResult>,
    started: Instant,
) -> String {
    let mut rows = Vec::new();

    // (a)
    let rps_w = col(&with.wrk, |w| w.rps);
    let rps_wo = col(&without.wrk, |w| w.rps);
    let p50_w = col(&with.wrk, |w| w.p50_us);
    let p50_wo = col(&without.wrk, |w| w.p50_us);
    let p99_w = col(&with.wrk, |w| w.p99_us);
    let p99_wo = col(&without.wrk, |w| w.p99_us);
    let rps_ratio = Spread::of(&ratios(&rps_w, &rps_wo));
    let p50_ratio = Spread::of(&ratios(&p50_w, &p50_wo));
    let p99_ratio = Spread::of(&ratios(&p99_w, &p99_wo));
    rows.push(Row {
        figure: "Throughput at saturation, with/without agent (nginx, wrk -t1 -c32)".into(),
        result: format!(
            "{}× [{} → {} req/s]",
            fmt_opt(rps_ratio, 3, ""),
            fmt_opt(Spread::of(&rps_wo), 0, ""),
            fmt_opt(Spread::of(&rps_w), 0, "")
        ),
        goal: "≥ 0.99×".into(),
        verdict: verdict(rps_ratio.map(|s| s.median >= 0.99)),
    });
    rows.push(Row {
        figure: "p50 latency at saturation, with/without".into(),
        result: format!(
            "{}× [{} → {} µs]",
            fmt_opt(p50_ratio, 3, ""),
            fmt_opt(Spread::of(&p50_wo), 0, ""),
            fmt_opt(Spread::of(&p50_w), 0, "")
        ),
        goal: "(informational)".into(),
        verdict: "n/a",
    });
    rows.push(Row {
        figure: "p99 latency at saturation, with/without".into(),
        result: format!(
            "{}× [{} → {} µs]",
            fmt_opt(p99_ratio, 3, ""),
            fmt_opt(Spread::of(&p99_wo), 0, ""),
            fmt_opt(Spread::of(&p99_w), 0, "")
        ),
        goal: "≤ 1.05×".into(),
        verdict: verdict(p99_ratio.map(|s| s.median <= 1.05)),
    });
    // (b)
    let per10k: Vec<f64> = with
        .agent_mc
        .iter()
        .zip(&with.fixed_rps)
        .filter(|(_, r)| **r > 0.0)
        .map(|(mc, r)| mc * 10_000.0 / r)
        .collect();
    let per10k_s = Spread::of(&per10k);
    rows.push(Row {
        figure: format!(
            "Agent CPU at a fixed rate (target {} req/s; achieved {}), per 10,000 req/s",
            a.rate,
            fmt_opt(Spread::of(&with.fixed_rps), 0, "")
        ),
        result: format!(
            "{} [raw {}]",
            fmt_opt(per10k_s, 0, " millicores"),
            fmt_opt(Spread::of(&with.agent_mc), 0, " mc")
        ),
        goal: "≤ 50 millicores".into(),
        verdict: verdict(per10k_s.map(|s| s.median <= 50.0)),
    });
    let nginx_delta = Spread::of(&diffs(&with.nginx_mc, &without.nginx_mc));
    rows.push(Row {
        figure:
            "nginx worker CPU at that rate, with − without (kernel-side cost in the traced process)"
                .into(),
        result: format!(
            "{} [{} → {} mc]",
            fmt_opt(nginx_delta, 0, " millicores"),
            fmt_opt(Spread::of(&without.nginx_mc), 0, ""),
            fmt_opt(Spread::of(&with.nginx_mc), 0, "")
        ),
        goal: "(informational)".into(),
        verdict: "n/a",
    });
    let rss_s = Spread::of(&with.agent_rss);
    rows.push(Row {
        figure: "Agent RSS during the fixed-rate run".into(),
        result: fmt_opt(rss_s, 1, " MiB"),
        goal: "≤ 64 MiB".into(),
        verdict: verdict(rss_s.map(|s| s.max <= 64.0)),
    });
    rows.push(Row {
        figure: "Agent CPU during the saturation run (raw)".into(),
        result: fmt_opt(Spread::of(&with.agent_mc_wrk), 0, " millicores"),
        goal: "(informational)".into(),
        verdict: "n/a",
    });
    // (c)
    let sock_d = Spread::of(&diffs(&with.sock_ns, &without.sock_ns));
    rows.push(Row {
        figure:
            "Kernel cost per captured message (loopback TCP 100-byte write/read, added ns per op)"
                .into(),
        result: format!(
            "{} [{} → {} ns/op]",
            fmt_opt(sock_d, 0, " ns"),
            fmt_opt(Spread::of(&without.sock_ns), 0, ""),
            fmt_opt(Spread::of(&with.sock_ns), 0, "")
        ),
        goal: "≤ 300 ns".into(),
        verdict: verdict(sock_d.map(|s| s.median <= 300.0)),
    });
    let paused_d = Spread::of(&diffs(&with.sock_paused_ns, &without.sock_ns));
    rows.push(Row {
        figure: "… of which the kernel programs alone (same loop, agent stopped: copy + ring buffer, no wake-up, no parsing)".into(),
        result: format!(
            "{} [{} ns/op]",
            fmt_opt(paused_d, 0, " ns"),
            fmt_opt(Spread::of(&with.sock_paused_ns), 0, "")
        ),
        goal: "≤ 300 ns".into(),
        verdict: verdict(paused_d.map(|s| s.median <= 300.0)),
    });
    for (name, w, wo) in [
        ("pipe", &with.pipe_ns, &without.pipe_ns),
        ("file (tmpfs)", &with.file_ns, &without.file_ns),
    ] {
        let d = Spread::of(&diffs(w, wo));
        rows.push(Row {
            figure: format!(
                "Cost added to a {name} write/read (not a socket: filtered in the kernel)"
            ),
            result: format!(
                "{} [{} → {} ns/op]",
                fmt_opt(d, 0, " ns"),
                fmt_opt(Spread::of(wo), 0, ""),
                fmt_opt(Spread::of(w), 0, "")
            ),
            goal: "near zero (≤ 50 ns)".into(),
            verdict: verdict(d.map(|s| s.median <= 50.0)),
        });
    }
    // (d)
    if let Some(p) = pipeline {
        let [lo, est, hi] = p.time;
        let mps = p.messages as f64 / est;
        rows.push(Row {
            figure: "Userspace pipeline, one core (criterion; decode → reassembly → trace context → findings)".into(),
            result: format!(
                "{:.2} M messages/s ({:.2}–{:.2}), {:.0} MiB/s ({:.0}–{:.0})",
                mps / 1e6,
                p.messages as f64 / hi / 1e6,
                p.messages as f64 / lo / 1e6,
                p.bytes as f64 / est / 1048576.0,
                p.bytes as f64 / hi / 1048576.0,
                p.bytes as f64 / lo / 1048576.0
            ),
            goal: "≥ 1,000,000 messages/s".into(),
            verdict: verdict(Some(mps >= 1e6)),
        });
    }
    // (e)
    if let Some(m) = mem {
        rows.push(Row {
            figure: format!(
                "Agent RSS with {} idle connections open (both ends traced)",
                m.idle_opened
            ),
            result: format!(
                "{:.1} MiB (idle agent {:.1} MiB)",
                m.rss_idle_conns, m.rss_idle_agent
            ),
            goal: "≤ 64 MiB".into(),
            verdict: verdict(Some(m.rss_idle_conns <= 64.0)),
        });
        rows.push(Row {
            figure: format!(
                "Agent RSS after {} short connections ({:.0} s)",
                m.short_done, m.short_secs
            ),
            result: format!(
                "{:.1} MiB after, {:.1} MiB max during, high-water {:.1} MiB",
                m.rss_after_short, m.rss_short_max, m.hwm
            ),
            goal: "≤ 64 MiB".into(),
            verdict: verdict(Some(m.rss_after_short <= 64.0 && m.rss_short_max <= 64.0)),
        });
    }

    let mut md = String::new();
    let _ = writeln!(md, "# traceid benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (xtask/src/bench.rs); rerun it after each capability lands.\n\
         Loopback only; each cost is measured side by side in one run: {} rounds with and without \
         the agent, alternating which goes first. Figures are the median of the rounds with the \
         spread (min–max) in parentheses; ratios and differences are taken round by round \
         (each with-round against the without-round next to it).\n",
        a.rounds
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "- noise: a shared 2-core machine; other engineers' builds may have run during the \
         measurement. Treat small differences (a few %) as within noise; the spread says how much.\n"
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(md, "| figure | result: median (min–max) | goal | |");
    let _ = writeln!(md, "|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            r.figure, r.result, r.goal, r.verdict
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "## Evidence that the agent saw the traffic\n");
    for (i, ((seen, sent), lost)) in with.seen.iter().zip(&with.sent).zip(&with.lost).enumerate() {
        let _ = writeln!(
            md,
            "- round {}: agent reported {seen} requests; the bench sent ~{sent}, each seen at both \
             ends (client and server both run here), so ~{} are expected (more: other traffic \
             on the host); losses {lost}",
            i + 1,
            2 * sent
        );
    }
    if let Some(m) = mem {
        let _ = writeln!(
            md,
            "- memory run: agent reported {} requests for {} short connections (both ends); \
             {} connection errors; losses {}",
            m.requests_seen, m.short_done, m.short_errors, m.lost
        );
        let _ = writeln!(
            md,
            "- idle connections: {} opened in {:.1} s; agent RSS after closing them {:.1} MiB",
            m.idle_opened, m.idle_secs, m.rss_after_idle_close
        );
    }
    if let Some(p) = pipeline {
        let _ = writeln!(md, "- pipeline benchmark: `{}`", p.stream_line);
    }
    let _ = writeln!(md);
    let _ = write!(
        md,
        "## Method\n\n\
         - The agent under test is the release `traceid diagnose --json --duration 1h` (all \
         tracepoints attached, every request parsed and aggregated; stopped with SIGINT, its \
         report gives the requests it saw). A fresh agent is started for each with-round.\n\
         - Request overhead: nginx ({ng}) on 127.0.0.1, one worker, `return 200 \"ok\"`; \
         `wrk -t1 -c32 -d{secs}s --latency`; requests/s and the 50%/99% latencies wrk prints. \
         nginx is pinned to CPU 0 and wrk to CPU 1 (the same placement every run); the agent \
         is not pinned and takes its CPU from both.\n\
         - Fixed rate: {rate} req/s from 16 keep-alive Rust clients in the bench process, each on a \
         fixed schedule (a late request goes at once); a W3C traceparent on every request. \
         CPU = utime+stime from /proc/PID/stat over the {secs} s window, in millicores \
         (1000 = one core busy); normalised to 10,000 req/s by the achieved rate. RSS = VmRSS at \
         the end of the window. The nginx worker's CPU, with minus without, is the in-kernel \
         cost the eBPF programs add to the traced process.\n\
         - Kernel cost per event: one thread of the bench process, a loopback TCP connection \
         (TCP_NODELAY) with both ends in the thread: write 100 B, read 100 B, write 100 B back, \
         read it ({n} round trips in {blocks} blocks of {per_block}, each after 1000 warm-up \
         round trips; the fastest block counts, as other work on the machine only adds time; \
         each round trip is 4 captured messages; the messages \
         are a 100-byte HTTP request and response so the agent parses them). The loops run \
         in a thread pinned to CPU 0 and the agent is pinned to the other CPUs meanwhile \
         ({pin}), so the agent's userspace work does not take the core from the loop: ns per \
         op with minus without = the time the kernel programs add inside each syscall \
         (tracepoint entry/exit, socket lookup, copy into the ring buffer, wake-up). \
         With the agent, the socket loop runs once more ({paused} round trips) with the agent \
         stopped by SIGSTOP: the programs still copy every message into the ring buffer (it \
         holds them all) but no reader is woken and nothing is parsed, which isolates the \
         kernel programs' own cost. The same loop on a pipe and on \
         a tmpfs file (write, lseek, read, lseek; per traced op) shows the cost to fds that are \
         not sockets.\n\
         - Pipeline: criterion (`cargo bench -p traceid-user --bench pipeline`, one thread) \
         feeding a generated stream through `Engine::process`: keep-alive client→front→back \
         traffic seen from both ends, W3C/B3/X-Request-ID/missing/malformed context, \
         Content-Length, chunked and split bodies, connection churn, a few non-HTTP \
         connections. A message is one captured read or write; bytes are their payloads. \
         Spread = criterion's 95% confidence interval.\n\
         - Memory: {idle} idle loopback connections (both ends traced; held by pairs of helper processes of at most 15,000 connections each, one \
         listening port per pair, since a process may not open more than 20,000 fds here), agent VmRSS 3 s after; then up to \
         {short} short connections (connect, one request, the server answers and closes) from \
         4 client threads for at most {short_secs} s; VmRSS sampled every 250 ms, and 3 s \
         after; VmHWM is the agent's lifetime peak.\n\
         - Run time: {total}.\n",
        ng = machine
            .iter()
            .find(|(k, _)| k == "nginx")
            .map(|(_, v)| v.as_str())
            .unwrap_or(""),
        secs = a.secs,
        rate = a.rate,
        n = a.pingpongs,
        idle = a.idle_conns,
        short = a.short_conns,
        short_secs = a.short_secs,
        total = util::fmt_duration(started.elapsed()),
        paused = PAUSED_PINGPONGS.min(a.pingpongs),
        blocks = BLOCKS,
        per_block = (a.pingpongs / BLOCKS).max(1),
        pin = if with.pinned { "done in this run" } else { "not done in this run: one CPU, or taskset failed" },
    );
    let misses: Vec<&Row> = rows.iter().filter(|r| r.verdict == "MISSED").collect();
    let _ = writeln!(md, "\n## Closing note\n");
    let _ = writeln!(md, "Each target, its figure in this run, and its goal:\n");
    for r in rows.iter().filter(|r| r.verdict != "n/a") {
        let _ = writeln!(
            md,
            "- {}: **{}** — {} (goal {})",
            r.figure, r.verdict, r.result, r.goal
        );
    }
    let _ = writeln!(
        md,
        "\n{} of {} targets missed in this run.",
        misses.len(),
        rows.iter().filter(|r| r.verdict != "n/a").count()
    );
    let _ = writeln!(md, "\nRound-by-round figures (with / without):\n");
    for i in 0..with.wrk.len().min(without.wrk.len()) {
        let (w, wo) = (&with.wrk[i], &without.wrk[i]);
        let _ = writeln!(
            md,
            "- round {}: wrk {:.0} / {:.0} req/s ({}), p99 {:.0} / {:.0} µs; socket {:.0} (agent paused {:.0}) / {:.0} ns/op, \
             pipe {:.0} / {:.0}, file {:.0} / {:.0}; fixed rate agent {:.0} mc, RSS {:.1} MiB",
            i + 1,
            w.rps,
            wo.rps,
            short_pct(w.rps / wo.rps),
            w.p99_us,
            wo.p99_us,
            with.sock_ns.get(i).copied().unwrap_or(f64::NAN),
            with.sock_paused_ns.get(i).copied().unwrap_or(f64::NAN),
            without.sock_ns.get(i).copied().unwrap_or(f64::NAN),
            with.pipe_ns.get(i).copied().unwrap_or(f64::NAN),
            without.pipe_ns.get(i).copied().unwrap_or(f64::NAN),
            with.file_ns.get(i).copied().unwrap_or(f64::NAN),
            without.file_ns.get(i).copied().unwrap_or(f64::NAN),
            with.agent_mc.get(i).copied().unwrap_or(f64::NAN),
            with.agent_rss.get(i).copied().unwrap_or(f64::NAN),
        );
        let _ = writeln!(
            md,
            "  - conditions: with: {}; without: {}",
            with.notes.get(i).map_or("?", String::as_str),
            without.notes.get(i).map_or("?", String::as_str)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert_eq!(ratios(&[2.0, 3.0], &[1.0, 0.0]), vec![2.0]);
    }

    #[test]
    fn wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   612.34us  200.12us   8.00ms   90.00%\n\
  Latency Distribution\n     50%  580.00us\n     75%  650.00us\n     90%  800.00us\n     99%    1.20ms\n\
  250000 requests in 5.00s, 30.00MB read\nRequests/sec:  49999.80\nTransfer/sec:      6.00MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.rps, 49999.8);
        assert_eq!(r.p50_us, 580.0);
        assert!((r.p99_us - 1200.0).abs() < 1e-6);
        assert_eq!(r.requests, 250000);
        assert_eq!(r.errors, 0);
        assert!(parse_wrk("garbage").is_none());
        assert_eq!(parse_wrk_duration_us("1.50s"), Some(1.5e6));
    }

    #[test]
    fn agent_report() {
        let j = "{\n  \"duration_s\": 5.1,\n  \"requests\": 1234,\n  \"services\": [{\"requests\": 9}],\n  \"lost\": {\n    \"kernel_ringbuf_full\": 3\n  }\n}";
        assert_eq!(json_number(j, "requests"), Some(1234.0));
        assert_eq!(json_number(j, "duration_s"), Some(5.1));
        assert_eq!(json_lost(j), "{\"kernel_ringbuf_full\":3}");
        assert_eq!(json_lost("{\"lost\": {}}"), "{}");
    }

    #[test]
    fn criterion_output() {
        let out = "pipeline stream: 100000 messages, 50000000 bytes, 110000 records, 20000 requests (missing 5)\n\
Benchmarking pipeline/http1_mixed\npipeline/http1_mixed    time:   [45.120 ms 46.000 ms 47.500 ms]\n\
                        thrpt:  [2.1 Melem/s 2.17 Melem/s 2.2 Melem/s]\n";
        let p = parse_pipeline(out).unwrap();
        assert_eq!((p.messages, p.bytes, p.requests), (100000, 50000000, 20000));
        assert!((p.time[1] - 0.046).abs() < 1e-12);
        let us = "pipeline stream: 1 messages, 2 bytes, 3 records, 4 requests ()\nx time:   [1.0 µs 2.0 µs 3.0 µs]\n";
        assert_eq!(parse_pipeline(us).unwrap().time[1], 2e-6);
    }

    #[test]
    fn proc_fields() {
        let stat = "1234 (nginx: worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        let status = "Name:\ttraceid\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

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

    #[test]
    fn pingpong_messages_are_100_bytes() {
        let (req, resp) = pingpong_messages();
        assert_eq!(req.len(), 100);
        assert_eq!(resp.len(), 100);
        assert!(req.ends_with(b"\r\n\r\n"));
        assert!(resp.ends_with(b"\r\n\r\npong"));
    }
}
