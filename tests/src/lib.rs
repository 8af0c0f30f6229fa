//! Harness for the integration tests: start the real agent (`traceid watch --json`), real
//! servers (nginx) and clients, collect the agent's JSON lines.
//!
//! Servers and services run as [`Peer`]s, each in a process group of its own, so that a test
//! leaves none of their processes behind (tests/harness.rs checks it). `cargo xtask bench`
//! uses the same [`Nginx`].
//!
//! Every test needs root (the agent loads kernel programs). Without root a test prints why
//! it skips — except under CI=true, where it fails: CI must run them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

mod nginx;
mod peer;

pub use nginx::{Nginx, NginxConfig};
pub use peer::{live_group_members, Peer};
pub use serde_json::Value;

/// Why the harness could not start a peer.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited with {status} before listening on 127.0.0.1:{port}")]
    Exited {
        what: &'static str,
        port: u16,
        status: ExitStatus,
    },
    #[error("nothing listens on 127.0.0.1:{port} after {timeout:?}")]
    NotListening { port: u16, timeout: Duration },
    #[error("nginx listens on 127.0.0.1:{port} but started no worker within {timeout:?}")]
    NoWorker { port: u16, timeout: Duration },
}

/// An error with its causes, `: `-separated (for a test's panic message).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The agent binary: `TRACEID_BIN` (set by `cargo xtask integration-test`) or target/debug.
pub fn traceid_bin() -> PathBuf {
    std::env::var_os("TRACEID_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/traceid")
        })
}

/// True when the test can run; prints the reason otherwise. Panics under CI=true.
pub fn can_run() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let bin = traceid_bin();
    let reason = if !root {
        Some("not root: the agent must load eBPF programs".to_string())
    } else if !bin.exists() {
        Some(format!(
            "{} not built: run `cargo xtask integration-test`",
            bin.display()
        ))
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) => {
            skip(&r);
            false
        }
    }
}

/// Says why a test cannot run here; under CI=true that is a failure, never a skip.
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Echoes a child agent's stderr with an `[agent]` prefix and keeps it for assertions.
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let stderr = Arc::new(Mutex::new(String::new()));
    let err = child.stderr.take().expect("stderr piped");
    let e2 = Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[agent] {line}");
            let mut s = e2.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    stderr
}

/// Waits until an agent's `stderr` (from [`collect_stderr`]) says it is watching, that is,
/// its programs are attached (at most 60 s: the debug build on a busy host takes seconds);
/// panics with what it printed otherwise.
pub fn wait_watching(stderr: &Mutex<String>) {
    assert!(
        wait_for_text(stderr, Duration::from_secs(60), "watching:"),
        "the agent did not start: {}",
        stderr.lock().unwrap()
    );
}

/// Waits until `stderr` (from [`collect_stderr`]) holds `needle` (at most `timeout`); whether
/// it does.
pub fn wait_for_text(stderr: &Mutex<String>, timeout: Duration, needle: &str) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if stderr.lock().unwrap().contains(needle) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` with `input` on its stdin and returns its output.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a checker");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Debian's Python, which the tests' small servers and clients run on.
pub const PYTHON: &str = "/usr/bin/python3";

/// Starts `python3 -c script PORT` on a free port as a [`Peer`] (its own process group, so
/// the children a forking server makes go with it) and waits until it listens on
/// 127.0.0.1. None, with the reason said, when python3 is missing (a failure under CI=true).
pub fn python_server(script: &str) -> Option<(Peer, u16)> {
    if !std::path::Path::new(PYTHON).exists() {
        skip(&format!("{PYTHON} missing"));
        return None;
    }
    let port = free_port();
    let mut server = Peer::spawn(
        Command::new(PYTHON).args(["-c", script, &port.to_string()]),
        libc::SIGTERM,
    )
    .expect("starting a python3 server");
    server
        .wait_listening("python3 server", port, Duration::from_secs(20))
        .expect("python3 server listening");
    Some((server, port))
}

/// tests/services/grpc/echo.py, the grpcio server and clients of the HTTP/2 tests.
pub fn grpc_echo_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("services/grpc/echo.py")
}

/// The grpcio echo server (`echo.py server PORT`) on a free port of 127.0.0.1, listening, and
/// that port.
pub fn grpc_echo_server() -> (Peer, u16) {
    let port = free_port();
    let mut peer = Peer::spawn(
        Command::new(PYTHON)
            .arg(grpc_echo_py())
            .args(["server", &port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null()),
        libc::SIGTERM,
    )
    .expect("starting the grpcio server (cargo xtask integration-test installs grpcio)");
    peer.wait_listening("grpc server", port, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    (peer, port)
}

/// Builds the Go program `source` (one .go file) into `out` with Debian's Go in GOPATH mode,
/// packages from `gopath` (`/usr/share/gocode` for Debian's Go libraries such as Gin), with
/// the extra `flags` (e.g. `-ldflags=-s -w`); the build cache is shared by the test runs.
pub fn go_build(
    source: &std::path::Path,
    out: &std::path::Path,
    gopath: &std::path::Path,
    flags: &[&str],
) {
    let status = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(source)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env(
            "GOCACHE",
            std::env::temp_dir().join("traceid-tests-gocache"),
        )
        .env("GOFLAGS", "")
        .status()
        .expect(
            "`go` must be installed (Debian golang-go; cargo xtask integration-test installs it)",
        );
    assert!(
        status.success(),
        "go build {} {flags:?} failed",
        source.display()
    );
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `traceid watch --json`.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts the agent and waits until its programs are attached.
    pub fn watch(extra: &[&str]) -> Agent {
        Agent::start(extra, None)
    }

    /// [`Agent::watch`] with the agent's log filter (`TRACEID_LOG`) set to `log`, for a test
    /// that waits for a moment only the log tells ([`Agent::wait_for_log`]).
    pub fn watch_logging(extra: &[&str], log: &str) -> Agent {
        Agent::start(extra, Some(log))
    }

    fn start(extra: &[&str], log: Option<&str>) -> Agent {
        let mut cmd = Command::new(traceid_bin());
        if let Some(log) = log {
            cmd.env("TRACEID_LOG", log);
        }
        let mut child = cmd
            .arg("watch")
            .arg("--json")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning traceid");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = collect_stderr(&mut child);
        let out = child.stdout.take().unwrap();
        let l2 = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("agent printed a non-JSON line {line:?}: {e}"));
                l2.lock().unwrap().push(v);
            }
        });
        let agent = Agent {
            child,
            lines,
            stderr,
        };
        wait_watching(&agent.stderr);
        agent
    }

    /// Waits until `pred` holds for the lines so far (at most `timeout`); returns the lines.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if pred(&lines) || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent's stderr holds `needle` (at most `timeout`); whether it does.
    pub fn wait_for_log(&self, timeout: Duration, needle: &str) -> bool {
        wait_for_text(&self.stderr, timeout, needle)
    }

    /// Stops the agent with Ctrl-C and returns every line it printed.
    pub fn stop(mut self) -> Vec<Value> {
        stop_child(&mut self.child, libc::SIGINT, &self.stderr);
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of the counts of the agent's `lost` lines at `stage`.
pub fn lost_at(lines: &[Value], stage: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l["event"] == "lost" && l["stage"] == stage)
        .filter_map(|l| l["count"].as_u64())
        .sum()
}

/// Sends `signal` to a child agent and waits (at most 15 s) for it to exit successfully;
/// then gives its output threads a moment to drain the pipes.
pub fn stop_child(child: &mut Child, signal: i32, stderr: &Mutex<String>) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(
                status.success(),
                "agent exited with {status}: {}",
                stderr.lock().unwrap()
            );
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("agent did not stop within 15 s of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// The Content-Length of an HTTP head (0 when absent or invalid).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// `traceid replay ARGS`, which must succeed.
pub fn replay(args: &[&str]) -> Output {
    let out = Command::new(traceid_bin())
        .arg("replay")
        .args(args)
        .output()
        .expect("running traceid replay");
    assert!(
        out.status.success(),
        "replay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Each line of `out` (what `watch --json` or `replay --json` printed) as JSON.
pub fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Request lines matching a predicate.
pub fn requests<'a>(lines: &'a [Value], pred: impl Fn(&Value) -> bool + 'a) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["event"] == "request")
        .filter(|v| pred(v))
        .collect()
}

/// Child pids of a process (all its threads' children).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns the status.
pub fn read_response(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head");
        buf.push(byte[0]);
        assert!(buf.len() < 65536);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let len = content_length(&head);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    status
}

/// Sends one request in the given pieces (one write each, a pause between).
pub fn send_in_pieces(s: &mut TcpStream, pieces: &[&[u8]]) {
    for p in pieces {
        s.write_all(p).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
}

pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Runs `traceid diagnose --duration D --json` while `traffic` runs; returns the diagnosis.
pub fn diagnose_during(duration_s: u32, traffic: impl FnOnce()) -> Value {
    let mut child = Command::new(traceid_bin())
        .args([
            "diagnose",
            "--duration",
            &format!("{duration_s}s"),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning traceid diagnose");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[diagnose] {line}");
            if line.contains("watching:") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("diagnose did not start: {}", stderr.join().unwrap());
    }
    let t0 = Instant::now();
    traffic();
    assert!(
        t0.elapsed() < Duration::from_secs(u64::from(duration_s)),
        "traffic outlasted the diagnosis"
    );
    let deadline = Instant::now() + Duration::from_secs(u64::from(duration_s) + 30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("diagnose did not end");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr.join().unwrap();
    assert!(out.status.success(), "diagnose failed: {err}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "diagnosis is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
