//! HTTPS made by Go's crypto/tls: a Go HTTPS server and a Go HTTPS client built here by
//! Debian's Go (GOPATH mode, std lib only, tests/services/go-tls), a self-signed certificate
//! made with openssl, on 127.0.0.1. Every request carries its own traceparent; the agent must
//! report each one on both sides, decoded from the plaintext the crypto/tls probes copy, over
//! HTTP/2 (negotiated by ALPN, Go's default) and HTTP/1.1, for programs running before the
//! agent and started after it, normal and stripped (`-ldflags=-s -w`). Each test prints the
//! share of Go HTTPS requests decoded.
//!
//! Run by `cargo xtask integration-test` (which installs golang-go); without `go` or
//! `openssl` the test says why it skips, and fails under CI=true.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use traceid_tests::*;
// The harness crate's dependencies, not named by this test.
use {serde_json as _, thiserror as _};

/// Requests per client run.
const REQUESTS: usize = 24;
/// Goroutines the client spreads them over (one shared http.Client).
const WORKERS: usize = 4;
/// The agent's log line that says from when a process's Go HTTPS is seen (at debug level).
const LOG_FILTER: &str = "warn,traceid::capture::go_tls=debug";

/// Waits until the agent has registered `pid` (`what`) with its Go TLS probes: the agent looks
/// at a new process at its exec, and reading a new Go executable takes it a moment (longer in
/// the debug build the tests run, on a busy host). Prints how long that took.
fn wait_registered(agent: &Agent, pid: u32, what: &str) {
    let started = Instant::now();
    let registered = agent.wait_for_log(
        Duration::from_secs(30),
        &format!("Go TLS probes: pid {pid} registered"),
    );
    assert!(
        registered,
        "the agent did not register the {what} (pid {pid}) with its Go TLS probes within 30 s"
    );
    eprintln!(
        "{what} (pid {pid}) registered by the agent {} ms after the test saw it running",
        started.elapsed().as_millis()
    );
}

/// The Go programs and the certificate, built in a directory of their own.
struct Built {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Built {
    /// Makes the certificate; None, with the reason said, when `go` or `openssl` is missing.
    fn new(name: &str) -> Option<Built> {
        if Command::new("go").arg("version").output().is_err() {
            skip("`go` is missing (Debian golang-go)");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("traceid-go-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match made {
            Ok(status) => assert!(status.success(), "openssl req failed"),
            Err(e) => {
                skip(&format!("`openssl` is missing: {e}"));
                return None;
            }
        }
        Some(Built { dir, cert, key })
    }

    /// Builds tests/services/go-tls/`program`.go with `flags`.
    fn go_build(&self, program: &str, flags: &[&str]) -> PathBuf {
        let out = self.dir.join(format!("go-tls-{program}"));
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("services/go-tls")
            .join(format!("{program}.go"));
        go_build(&source, &out, &self.dir.join("gopath"), flags);
        out
    }

    /// Starts the server on 127.0.0.1:`port` and waits until it listens.
    fn start_server(&self, binary: &Path, port: u16) -> Peer {
        let mut server = Peer::spawn(
            Command::new(binary)
                .arg(port.to_string())
                .arg(&self.cert)
                .arg(&self.key)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            libc::SIGTERM,
        )
        .expect("spawning the Go HTTPS server");
        server
            .wait_listening("Go HTTPS server", port, Duration::from_secs(20))
            .expect("Go HTTPS server listening");
        server
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A trace id per client run and request: `prefix` (24 hex digits) then the request number.
fn trace_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:08x}")
}

/// Runs the client: [`REQUESTS`] GETs to /0.. with their own traceparents over `proto`
/// ("h2" or "h1"), sent once `agent` has registered it; checks that every one got its 200 over
/// the protocol asked for. Returns the client's pid.
fn run_client(agent: &Agent, binary: &Path, port: u16, proto: &str, prefix: &str) -> u32 {
    let mut child = Command::new(binary)
        .arg(format!("https://127.0.0.1:{port}"))
        .args([&REQUESTS.to_string(), &WORKERS.to_string(), proto, prefix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the Go HTTPS client");
    let pid = child.id();
    wait_registered(agent, pid, "Go HTTPS client");
    // The start line; the client then sends its requests.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .expect("starting the Go HTTPS client");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Go HTTPS client failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected = if proto == "h2" {
        "HTTP/2.0"
    } else {
        "HTTP/1.1"
    };
    let answered = stdout
        .lines()
        .filter(|l| l.ends_with(&format!(" 200 {expected}")))
        .count();
    assert_eq!(answered, REQUESTS, "client output:\n{stdout}");
    pid
}

/// How many of one client run's requests the agent reported on one side: `direction` from
/// `pid`, over TLS with `protocol`, each with its method, path, status and trace id.
fn decoded(lines: &[Value], pid: u32, direction: &str, protocol: &str, prefix: &str) -> usize {
    (0..REQUESTS)
        .filter(|&i| {
            let path = format!("/{i}");
            let trace = trace_id(prefix, i);
            let seen = requests(lines, |r| {
                r["pid"] == pid && r["direction"] == direction && r["trace_id"] == trace.as_str()
            });
            seen.len() == 1 && {
                let r = seen[0];
                r["tls"] == true
                    && r["protocol"] == protocol
                    && r["method"] == "GET"
                    && r["path"] == path.as_str()
                    && r["status"] == 200
            }
        })
        .count()
}

/// One client run, seen by the agent from both sides.
struct Run<'a> {
    label: &'a str,
    client_pid: u32,
    protocol: &'a str,
    prefix: &'a str,
}

/// Waits until every request of `runs` is reported on both sides (at most 20 s), stops the
/// agent, prints the share decoded and asserts it is all of them, with nothing of the
/// ciphertext on `port` taken for plain HTTP.
fn assert_all_decoded(agent: Agent, server_pid: u32, port: u16, runs: &[Run]) {
    let complete = |lines: &[Value]| {
        runs.iter().all(|run| {
            decoded(lines, server_pid, "inbound", run.protocol, run.prefix) == REQUESTS
                && decoded(lines, run.client_pid, "outbound", run.protocol, run.prefix) == REQUESTS
        })
    };
    agent.wait_for(Duration::from_secs(20), complete);
    let lines = agent.stop();
    let mut all = true;
    for run in runs {
        let server = decoded(&lines, server_pid, "inbound", run.protocol, run.prefix);
        let client = decoded(&lines, run.client_pid, "outbound", run.protocol, run.prefix);
        eprintln!(
            "Go HTTPS requests decoded ({}): server {server}/{REQUESTS} ({:.0} %), client {client}/{REQUESTS} ({:.0} %)",
            run.label,
            100.0 * server as f64 / REQUESTS as f64,
            100.0 * client as f64 / REQUESTS as f64,
        );
        all &= server == REQUESTS && client == REQUESTS;
    }
    let on_port: Vec<&Value> = requests(&lines, |r| {
        r["local"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{port}")))
            || r["peer"]
                .as_str()
                .is_some_and(|a| a.ends_with(&format!(":{port}")))
    });
    assert!(
        all,
        "not every Go HTTPS request was decoded on both sides: {on_port:#?}"
    );
    // The ciphertext the syscall programs see on those connections is never taken for HTTP.
    let plain: Vec<&&Value> = on_port.iter().filter(|r| r["tls"] != true).collect();
    assert!(plain.is_empty(), "{plain:#?}");
}

#[test]
fn go_https_over_h2_and_http1_is_decoded_on_both_sides() {
    if !can_run() {
        return;
    }
    let Some(built) = Built::new("both") else {
        return;
    };
    let server_bin = built.go_build("server", &[]);
    let client_bin = built.go_build("client", &[]);
    // The server runs before the agent (found at start-up); the clients start after it
    // (found at their exec).
    let port = free_port();
    let mut server = built.start_server(&server_bin, port);
    let agent = Agent::watch_logging(&["--port", &port.to_string()], LOG_FILTER);
    let h2_prefix = "4bf92f3577b34da6a3ce9200";
    let h1_prefix = "4bf92f3577b34da6a3ce9100";
    let h2_client = run_client(&agent, &client_bin, port, "h2", h2_prefix);
    let h1_client = run_client(&agent, &client_bin, port, "h1", h1_prefix);
    assert_all_decoded(
        agent,
        server.id(),
        port,
        &[
            Run {
                label: "HTTP/2 by ALPN",
                client_pid: h2_client,
                protocol: "h2",
                prefix: h2_prefix,
            },
            Run {
                label: "HTTP/1.1",
                client_pid: h1_client,
                protocol: "http1",
                prefix: h1_prefix,
            },
        ],
    );
    server.stop();
}

#[test]
fn stripped_go_https_server_started_after_the_agent_is_decoded() {
    if !can_run() {
        return;
    }
    let Some(built) = Built::new("stripped") else {
        return;
    };
    let server_bin = built.go_build("server", &["-ldflags=-s -w"]);
    let client_bin = built.go_build("client", &["-ldflags=-s -w"]);
    let port = free_port();
    let agent = Agent::watch_logging(&["--port", &port.to_string()], LOG_FILTER);
    let mut server = built.start_server(&server_bin, port);
    wait_registered(&agent, server.id(), "stripped Go HTTPS server");
    let prefix = "4bf92f3577b34da6a3ce9300";
    let client = run_client(&agent, &client_bin, port, "h2", prefix);
    assert_all_decoded(
        agent,
        server.id(),
        port,
        &[Run {
            label: "stripped, started after the agent, HTTP/2",
            client_pid: client,
            protocol: "h2",
            prefix,
        }],
    );
    server.stop();
}
