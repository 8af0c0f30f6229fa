//! Issue 14, item 5: gRPC channels in the connection view, live. Two grpcio clients
//! (tests/services/grpc/echo.py) of one grpcio server on 127.0.0.1, watched by the real agent:
//! one reuses a single channel (one HTTP/2 connection) for all its calls, the other opens a new
//! channel per call and closes it after the call (the seed's 67,842 TIME_WAIT sockets).
//!
//! Each closed channel leaves one TIME_WAIT socket on the client side, toward the server. The
//! agent must name the channel-per-call client in a `buildup` line with about one call (one
//! stream) per connection, and must not name the channel-reusing client, whose calls all ran
//! as streams of one connection. Both clients call the same server, so a buildup that mixed
//! the two processes up would show about two calls per connection, or the wrong pid.
//! Run by `cargo xtask integration-test` (as root, one test at a time).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use traceid_tests::*;
// Used by the harness library (tests/src), not by name here.
use {libc as _, serde_json as _, thiserror as _};

/// Calls per client. grpcio makes a few hundred channels per second here: the churn takes
/// one or two seconds, well within one TIME_WAIT lifetime (60 s).
const CALLS: usize = 600;
/// The calls whose connection the agent must see at least: 95 % (a burst on a shared host
/// may cost a few events, which the agent then reports as lost).
const MOST_CALLS: usize = CALLS * 95 / 100;
/// `--tw-threshold`. Not every closed channel leaves a TIME_WAIT socket: grpcio often closes
/// a connection while the server's last frames are unread or still arriving, and the kernel
/// then ends it with a reset (20 to 50 % of them on this host). 600 channels leave 120 to
/// 300; the default threshold (1000) would take thousands of channels.
const THRESHOLD: u64 = 100;
/// A larger ring and small captures (gRPC heads are small): no connection event lost when
/// other work shares the host.
const AGENT_ARGS: &[&str] = &["--ring-mib", "64", "--capture-bytes", "1024"];

/// Runs an echo.py client making CALLS calls in `mode` (`calls`: one channel; `channels`: a
/// channel per call) to completion; returns its pid. Every call must succeed.
fn grpc_client(port: u16, mode: &str) -> u32 {
    let started = Instant::now();
    let child = Command::new(PYTHON)
        .arg(grpc_echo_py())
        .args(["client", &port.to_string(), mode, &CALLS.to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("grpc client");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "grpc client {mode} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.lines().filter(|l| l.ends_with(" OK")).count();
    assert_eq!(ok, CALLS, "grpc client {mode}: {stdout}");
    eprintln!(
        "grpc client {mode} (pid {pid}): {CALLS} calls in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    pid
}

/// A client's outbound gRPC calls the agent reported: the local endpoint each left from and
/// the stream it travelled on.
fn calls_of(lines: &[Value], pid: u32) -> Vec<(String, u64)> {
    requests(lines, |r| {
        r["pid"] == pid && r["direction"] == "outbound" && r["protocol"] == "grpc"
    })
    .iter()
    .map(|r| {
        let local = r["local"].as_str().unwrap_or_else(|| panic!("{r:#}"));
        let stream = r["stream_id"].as_u64().unwrap_or_else(|| panic!("{r:#}"));
        (local.to_string(), stream)
    })
    .collect()
}

#[test]
fn channel_per_call_client_is_named_by_buildup_and_channel_reuse_is_not() {
    if !can_run() {
        return;
    }
    let (_server, port) = grpc_echo_server();
    let remote = format!("127.0.0.1:{port}");
    let port_arg = port.to_string();
    let threshold = THRESHOLD.to_string();
    let mut args = vec!["--tw-threshold", &threshold, "--port", &port_arg];
    args.extend(AGENT_ARGS);
    let agent = Agent::watch(&args);
    // The reusing client first: its one TIME_WAIT socket is already there when the churn
    // makes the buildup, so attribution has two owners to choose from.
    let reusing = grpc_client(port, "calls");
    let per_call = grpc_client(port, "channels");
    let lines = agent.wait_for(Duration::from_secs(20), |l| {
        l.iter()
            .any(|v| v["event"] == "buildup" && v["remote"] == remote.as_str())
            && calls_of(l, per_call).len() >= MOST_CALLS
    });
    drop(lines);
    let lines = agent.stop();
    let buildups: Vec<&Value> = lines.iter().filter(|v| v["event"] == "buildup").collect();
    let lost: Vec<&Value> = lines.iter().filter(|v| v["event"] == "lost").collect();
    eprintln!("buildups: {buildups:#?}\nlost: {lost:?}");

    // The calls themselves were seen, on the connections the clients really used: the
    // reusing client's as streams 1, 3, 5... of one connection; the other's each on stream 1,
    // the first stream of a new connection. (Local ports do not count connections: with
    // tcp_tw_reuse a new connection may take the port of a TIME_WAIT socket a second old.)
    let reused = calls_of(&lines, reusing);
    let churned = calls_of(&lines, per_call);
    let reused_endpoints: BTreeSet<&str> = reused.iter().map(|c| c.0.as_str()).collect();
    let reused_streams: BTreeSet<u64> = reused.iter().map(|c| c.1).collect();
    let churned_first = churned.iter().filter(|c| c.1 == 1).count();
    eprintln!(
        "calls seen: reusing client {} on {} connection(s), {} streams; channel-per-call \
         client {}, {churned_first} of them on stream 1",
        reused.len(),
        reused_endpoints.len(),
        reused_streams.len(),
        churned.len()
    );
    assert!(
        reused.len() >= MOST_CALLS,
        "{} of {CALLS} calls seen",
        reused.len()
    );
    assert_eq!(
        reused_endpoints.len(),
        1,
        "one channel: {reused_endpoints:?}"
    );
    assert_eq!(reused_streams.len(), reused.len(), "a stream per call");
    assert!(
        churned.len() >= MOST_CALLS && churned_first == churned.len(),
        "a channel per call: {churned_first} of {} calls seen on stream 1 ({CALLS} made)",
        churned.len()
    );

    let toward_server: Vec<&&Value> = buildups
        .iter()
        .filter(|b| b["remote"] == remote.as_str())
        .collect();
    assert!(!toward_server.is_empty(), "no buildup toward {remote}");
    for b in &toward_server {
        eprintln!(
            "buildup: {} TIME_WAIT toward {remote} held by {} (pid {}), {} calls per connection",
            b["time_wait"], b["comm"], b["pid"], b["requests_per_connection"]
        );
        assert_eq!(b["pid"], per_call, "the channel-per-call client: {b}");
        assert_eq!(b["holder"], "client", "the client closes its channels: {b}");
        assert_eq!(b["threshold"], THRESHOLD, "{b}");
        assert!(b["time_wait"].as_u64().unwrap() >= THRESHOLD, "{b}");
        let ratio = b["requests_per_connection"].as_f64().unwrap();
        assert!(
            (0.9..=1.1).contains(&ratio),
            "one call (one stream) per connection: {b}"
        );
        assert!(b["connections_per_s"].as_f64().unwrap() > 0.0, "{b}");
    }
    assert!(
        buildups.iter().all(|b| b["pid"] != reusing),
        "the channel-reusing client must not be named: {buildups:#?}"
    );
}
