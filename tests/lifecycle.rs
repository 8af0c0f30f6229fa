//! Connection lifecycle and TIME_WAIT buildup, live: the real kernel programs, nginx on
//! loopback (127.0.0.1 and [::1]) and a client thread of this test process named `churner`.
//!
//! The churning client opens a fresh connection per request and closes it first after the
//! response (nginx keeps connections alive, so it never closes first): every connection
//! leaves one TIME_WAIT socket on the client side, toward nginx's address. The agent must
//! name this process (pid, comm `churner`) and nginx's address in a `buildup` line whose
//! TIME_WAIT count matches `ss` within 5 %. The same number of requests over one keep-alive
//! connection must show a high requests-per-connection figure and no buildup.
//!
//! Only loopback; every count is filtered by the nginx port this test owns (other tests and
//! processes leave TIME_WAIT sockets of their own). Run by `cargo xtask integration-test`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use traceid_tests::*;
// The harness library's dependency, not named by this test.
use thiserror as _;

/// Connections (churn) or requests (keep-alive) per test: at least 2,000.
const N: usize = 2050;
/// `--tw-threshold` given to the agent: crossing it happens within the last 50 connections of
/// the churn, so the count the buildup carries is within 2.5 % of the final count.
const THRESHOLD: u64 = 2000;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Headroom for the bursts of this test when other work shares the host: a larger ring and
/// small captures (only heads matter here), so no connection event is lost.
const AGENT_ARGS: &[&str] = &["--ring-mib", "64", "--capture-bytes", "1024"];
const REQUEST: &[u8] = b"GET /api HTTP/1.1\r\nHost: lifecycle\r\nUser-Agent: churner\r\n\r\n";

/// Reads one response (head + Content-Length body) from `s`, buffering; returns the status.
fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = content_length(&head);
            let total = end + 4 + len;
            if buf.len() >= total {
                let status = head[9..12].parse().expect("status code");
                buf.drain(..total);
                return status;
            }
        }
        let n = s.read(&mut chunk).expect("reading the response");
        assert!(n > 0, "server closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        assert!(buf.len() < 1 << 20, "response too large");
    }
}

/// Runs `n` requests to `addr` on a thread named `churner` (its comm in the kernel):
/// a fresh connection per request, closed by the client first, or one keep-alive connection.
fn churner(addr: SocketAddr, n: usize, keep_alive: bool) {
    std::thread::Builder::new()
        .name("churner".into())
        .spawn(move || {
            let connect = || {
                let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_nodelay(true).unwrap();
                s
            };
            let mut buf = Vec::new();
            if keep_alive {
                let mut s = connect();
                for _ in 0..n {
                    s.write_all(REQUEST).unwrap();
                    assert_eq!(read_one(&mut s, &mut buf), 200);
                }
                // The client closes first here too; one connection, one TIME_WAIT.
                drop(s);
            } else {
                for _ in 0..n {
                    let mut s = connect();
                    s.write_all(REQUEST).unwrap();
                    assert_eq!(read_one(&mut s, &mut buf), 200);
                    buf.clear();
                    drop(s);
                }
            }
        })
        .unwrap()
        .join()
        .expect("churner thread failed");
}

/// TIME_WAIT sockets toward `remote`, as `ss` counts them.
fn ss_time_wait(remote: SocketAddr) -> u64 {
    let out = Command::new("ss")
        .args(["-Htan", "state", "time-wait"])
        .output()
        .expect("ss must be installed (iproute2)");
    assert!(out.status.success(), "ss failed: {out:?}");
    let want = remote.to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(want.as_str()))
        .count() as u64
}

/// nginx listening on 127.0.0.1:port (harness) and on [::1]:port6.
fn nginx_v4_v6() -> (Nginx, u16) {
    let port6 = std::net::TcpListener::bind("[::1]:0")
        .expect("IPv6 loopback must be available")
        .local_addr()
        .unwrap()
        .port();
    let nginx = Nginx::start_with(&format!("  listen [::1]:{port6};"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("::1", port6)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx does not listen on [::1]:{port6}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (nginx, port6)
}

fn churn_reports_buildup(remote: SocketAddr) {
    // The readiness probes of nginx's start leave one or two; anything more is not ours.
    let before = ss_time_wait(remote);
    assert!(
        before < 10,
        "{before} TIME_WAIT toward {remote} left from elsewhere"
    );
    let agent = Agent::watch(&[&["--tw-threshold", &THRESHOLD.to_string()], AGENT_ARGS].concat());
    let started = Instant::now();
    churner(remote, N, false);
    let churn_s = started.elapsed().as_secs_f64();
    let want = remote.to_string();
    let lines = agent.wait_for(Duration::from_secs(20), |l| {
        l.iter()
            .any(|v| v["event"] == "buildup" && v["remote"] == want.as_str())
    });
    // "The same moment": the churn is over, so the count only changes when sockets expire
    // (60 s after they were made).
    let ss = ss_time_wait(remote);
    drop(lines);
    let lines = agent.stop();
    let buildups: Vec<&Value> = lines
        .iter()
        .filter(|v| v["event"] == "buildup" && v["remote"] == want.as_str())
        .collect();
    let seen = requests(&lines, |r| r["pid"] == std::process::id()).len();
    let lost: Vec<&Value> = lines.iter().filter(|v| v["event"] == "lost").collect();
    eprintln!(
        "churn of {N} connections took {churn_s:.1} s; ss: {ss}; requests seen from this \
         process: {seen}; lost: {lost:?}; buildups: {buildups:#?}"
    );
    assert!(!buildups.is_empty(), "no buildup toward {remote}");
    assert!(
        buildups.len() <= 1 + (churn_s / 10.0).ceil() as usize,
        "buildup more often than once per 10 s: {buildups:#?}"
    );
    let b = buildups[0];
    assert_eq!(
        b["pid"],
        std::process::id(),
        "buildup must name this process"
    );
    assert_eq!(b["comm"], "churner");
    assert_eq!(b["holder"], "client", "the churner closes first: {b}");
    assert_eq!(b["threshold"], THRESHOLD);
    let tw = b["time_wait"].as_u64().unwrap();
    assert!(tw >= THRESHOLD, "{b}");
    assert!(
        ss >= N as u64 && (tw as f64 - ss as f64).abs() <= 0.05 * ss as f64,
        "agent {tw} vs ss {ss} TIME_WAIT toward {remote}"
    );
    let rpc = b["requests_per_connection"].as_f64().unwrap();
    assert!(
        (0.9..=1.1).contains(&rpc),
        "a fresh connection per request: {b}"
    );
    assert!(b["connections_per_s"].as_f64().unwrap() > 0.0, "{b}");
    for key in [
        "ts",
        "remote",
        "holder",
        "time_wait",
        "threshold",
        "pid",
        "comm",
    ] {
        assert!(!b[key].is_null(), "{key} missing in {b}");
    }
}

#[test]
fn churning_client_ipv4_reports_buildup_matching_ss() {
    if !can_run() {
        return;
    }
    let (nginx, _) = nginx_v4_v6();
    churn_reports_buildup(SocketAddr::from(([127, 0, 0, 1], nginx.port)));
}

#[test]
fn churning_client_ipv6_reports_buildup_matching_ss() {
    if !can_run() {
        return;
    }
    let (_nginx, port6) = nginx_v4_v6();
    churn_reports_buildup(SocketAddr::new("::1".parse().unwrap(), port6));
}

/// `traceid diagnose --json` until SIGINT.
struct Diagnose {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Diagnose {
    fn start(extra: &[&str]) -> Diagnose {
        let mut child = Command::new(traceid_bin())
            .args(["diagnose", "--json", "--duration", "120s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning traceid");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let e2 = Arc::clone(&stderr);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                let mut s = e2.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        wait_watching(&stderr);
        Diagnose { child, stderr }
    }

    fn stop(mut self) -> Value {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}", self.stderr.lock().unwrap());
                break;
            }
            assert!(Instant::now() < deadline, "diagnose did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("diagnosis is not JSON ({e}): {out}"))
    }
}

impl Drop for Diagnose {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn keep_alive_client_shows_reuse_and_no_buildup() {
    if !can_run() {
        return;
    }
    let (nginx, port6) = nginx_v4_v6();
    let remote4 = SocketAddr::from(([127, 0, 0, 1], nginx.port));
    let remote6 = SocketAddr::new("::1".parse().unwrap(), port6);
    // Default threshold; one keep-alive connection per remote leaves one TIME_WAIT
    // (next to the one of nginx's readiness probe).
    let agent = Diagnose::start(AGENT_ARGS);
    churner(remote4, N, true);
    churner(remote6, N / 2, true);
    // Let a census run after the last close.
    std::thread::sleep(Duration::from_millis(2500));
    let ss4 = ss_time_wait(remote4);
    let d = agent.stop();
    let tw = &d["time_wait"];
    assert!(tw.is_object(), "no time_wait section: {d:#}");
    let me = std::process::id();
    for (remote, requests) in [(remote4, N), (remote6, N / 2)] {
        let want = remote.to_string();
        let peer = tw["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == me && p["endpoint"] == want.as_str() && p["role"] == "client")
            .unwrap_or_else(|| panic!("no peer entry for {want}: {tw:#}"));
        eprintln!("{want}: {peer}");
        assert_eq!(peer["comm"], "churner");
        assert_eq!(peer["opened"], 1, "{peer}");
        assert_eq!(peer["closed"], 1, "{peer}");
        // ESTABLISHED -> FIN_WAIT1 on the client's socket, seen through the socket pointer.
        assert_eq!(peer["closed_local_first"], 1, "{peer}");
        let rpc = peer["requests_per_connection"].as_f64().unwrap();
        assert!(
            rpc >= requests as f64 * 0.95,
            "{requests} requests on one connection: {peer}"
        );
        let buildups = tw["buildups"].as_array().unwrap();
        assert!(
            buildups.iter().all(|b| b["remote"] != want.as_str()),
            "keep-alive must not be a buildup: {buildups:#?}"
        );
        if let Some(r) = tw["remotes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["remote"] == want.as_str())
        {
            // The keep-alive connection plus nginx's readiness probe.
            assert!(r["time_wait"].as_u64().unwrap() <= 3, "{r}");
        }
    }
    assert!(ss4 <= 3, "ss: {ss4} TIME_WAIT toward {remote4}");
    // nginx's side: the peer (the client) closed first.
    let server = tw["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "server" && p["endpoint"] == remote4.to_string().as_str())
        .unwrap_or_else(|| panic!("no nginx entry: {tw:#}"));
    assert_eq!(server["comm"], "nginx");
    assert!(
        server["closed_peer_first"].as_u64().unwrap() >= 1,
        "{server}"
    );
    let text = Command::new(traceid_bin())
        .args(["diagnose", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("--tw-threshold"));
}

/// nginx closes every connection first (`keepalive_timeout 0`): its TIME_WAIT sockets point
/// to the clients' ephemeral ports, yet they are one service's, named by nginx's listening
/// endpoint with the server as their holder, never one group per client port.
#[test]
fn server_closing_first_is_named_by_its_listening_endpoint() {
    if !can_run() {
        return;
    }
    const CONNECTIONS: usize = 300;
    // Seen once in a full CI run: no buildup in the round (the census and the close events
    // raced; not reproduced in 3 reruns). A round without one is run again, at most three
    // times, with a fresh nginx; every round says why it was repeated.
    let mut attempt = 1;
    let (lines, want) = loop {
        let nginx = Nginx::start_with("  keepalive_timeout 0;");
        let service = SocketAddr::from(([127, 0, 0, 1], nginx.port));
        let port = nginx.port.to_string();
        let mut args = AGENT_ARGS.to_vec();
        args.extend(["--tw-threshold", "200", "--port", &port]);
        let agent = Agent::watch(&args);
        churner(service, CONNECTIONS, false);
        agent.wait_for(Duration::from_secs(30), |l| {
            l.iter().any(|v| v["event"] == "buildup")
        });
        let lines = agent.stop();
        if lines.iter().any(|v| v["event"] == "buildup") || attempt == 3 {
            break (lines, service.to_string());
        }
        eprintln!("server closing first: no buildup in attempt {attempt} of 3");
        attempt += 1;
    };
    let buildups: Vec<&Value> = lines.iter().filter(|v| v["event"] == "buildup").collect();
    assert!(!buildups.is_empty(), "no buildup: {lines:#?}");
    for b in &buildups {
        assert_eq!(b["remote"], want.as_str(), "{b}");
        assert_eq!(b["holder"], "server", "{b}");
        assert_eq!(b["comm"], "nginx", "{b}");
    }
}
