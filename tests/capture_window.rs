//! What the capture window hides is accounted for, live: real kernel programs, nginx and a
//! raw-socket Python server on 127.0.0.1.
//!
//! - 1,000 pipelined requests in one write (about 90 KiB, 8 KiB of it captured on the
//!   writer's side): every request, seen from either end, is reported or counted under the
//!   `requests_unseen` loss stage, and the bytes not inspected under `uninspected_bytes`.
//! - A 12 KiB head whose `traceparent` lies past the capture window: `truncated`, never
//!   `missing`.
//! - A response announcing an absurd chunk size (`ffffffffffffffff`): the next request on the
//!   same connection is still reported.
//!
//! Run by `cargo xtask integration-test`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use traceid_tests::*;
// The harness library's dependencies, not named by this test.
use {libc as _, serde_json as _, thiserror as _};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Reads from `s` until `n` responses (`HTTP/1.1 ` status lines) arrived or 20 s passed.
fn read_responses(s: &mut TcpStream, n: usize) -> usize {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    let count = |all: &[u8]| all.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    while count(&all) < n && std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => all.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
    }
    count(&all)
}

#[test]
fn pipelined_requests_past_the_capture_window_are_reported_or_counted() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let agent = Agent::watch(&["--port", &nginx.port.to_string()]);
    let mut one_write = Vec::new();
    for i in 0..1000 {
        one_write.extend_from_slice(
            format!(
                "GET /api/pipe{i} HTTP/1.1\r\nHost: pipe\r\ntraceparent: {TRACEPARENT}\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    s.write_all(&one_write).unwrap();
    assert_eq!(
        read_responses(&mut s, 1000),
        1000,
        "nginx answers all 1,000"
    );
    drop(s);
    let inbound = |l: &Value| l["direction"] == "inbound" && l["local"].as_str().is_some();
    let lines = agent.wait_for(Duration::from_secs(15), |l| {
        requests(l, inbound).len() >= 1000 && lost_at(l, "uninspected_bytes") > 0
    });
    drop(lines);
    // One more loss report (they come every second), then every line the agent printed.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = agent.stop();
    let pipe = |d: &'static str| {
        move |l: &Value| {
            l["direction"] == d
                && l["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/api/pipe"))
        }
    };
    // nginx reads the write in pieces: each captured whole, every request reported (or, were
    // responses to unseen requests to come, counted).
    let inbound_seen = requests(&lines, pipe("inbound")).len() as u64;
    assert!(
        inbound_seen + lost_at(&lines, "requests_unseen") >= 1000,
        "nginx's side: {inbound_seen} reported"
    );
    // This process wrote all 1,000 at once, 8 KiB of it captured: the rest is counted in
    // bytes, and in requests by the connection's mean request size.
    let outbound_seen = requests(&lines, pipe("outbound")).len() as u64;
    let estimate = lost_at(&lines, "requests_uninspected_estimate");
    assert!(outbound_seen < 1000, "{outbound_seen}");
    assert!(lost_at(&lines, "uninspected_bytes") > 80_000);
    assert!(
        (outbound_seen + estimate).abs_diff(1000) <= 100,
        "the writer's side: {outbound_seen} reported, {estimate} estimated unseen"
    );
    // The request the window cut in the middle of its head is not `missing`.
    for r in requests(&lines, |l| l["direction"].is_string()) {
        let findings = r["findings"].as_array().unwrap();
        assert!(!findings.iter().any(|f| f == "missing"), "{r}");
    }
}

#[test]
fn a_trace_header_past_the_capture_window_is_truncated_not_missing() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let agent = Agent::watch(&["--port", &nginx.port.to_string()]);
    // Twelve 1 KiB headers (nginx accepts lines up to 8 KiB), then the traceparent at ~12.4 KiB.
    let mut head = String::from("GET /api/long HTTP/1.1\r\nHost: long\r\n");
    for i in 0..12 {
        head.push_str(&format!("x-filler-{i:02}: {}\r\n", "f".repeat(1000)));
    }
    head.push_str(&format!("traceparent: {TRACEPARENT}\r\n\r\n"));
    assert!(head.find("traceparent").unwrap() > 12_000);
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_responses(&mut s, 1), 1);
    drop(s);
    let is_long = |l: &Value| l["path"] == "/api/long";
    let lines = agent.wait_for(Duration::from_secs(10), |l| requests(l, is_long).len() >= 2);
    drop(lines);
    let lines = agent.stop();
    let seen = requests(&lines, is_long);
    // This process wrote the head in one write of which 8 KiB were captured: truncated. nginx
    // reads it in pieces, each captured whole: it has the trace id. Neither is `missing`.
    let side = |d: &str| {
        seen.iter()
            .copied()
            .find(|r| r["direction"] == d)
            .unwrap_or_else(|| panic!("no {d} record: {seen:#?}"))
    };
    let findings = |r: &Value| -> Vec<String> {
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    let out = side("outbound");
    assert_eq!(findings(out), ["truncated"], "{out}");
    assert!(
        out["reason"].as_str().unwrap().contains("truncated"),
        "{out}"
    );
    for r in &seen {
        assert!(!findings(r).iter().any(|f| f == "missing"), "{r}");
        assert!(
            r["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
                || findings(r).iter().any(|f| f == "truncated"),
            "{r}"
        );
    }
}

/// Answers its first request with a chunked body announcing 2^64-1 bytes (then closes that
/// body's pretence and stays on the connection), and every later one normally.
const ABSURD_SERVER: &str = r#"
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(8)
while True:
    c, _ = srv.accept()
    n = 0
    buf = b""
    while True:
        data = c.recv(65536)
        if not data:
            break
        buf += data
        while b"\r\n\r\n" in buf:
            _, buf = buf.split(b"\r\n\r\n", 1)
            if n == 0:
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nxx")
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            n += 1
    c.close()
"#;

#[test]
fn an_absurd_chunk_size_does_not_blind_the_connection() {
    if !can_run() {
        return;
    }
    let Some((_server, port)) = python_server(ABSURD_SERVER) else {
        return;
    };
    let agent = Agent::watch(&["--port", &port.to_string()]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    for path in ["/first", "/second", "/third"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: absurd\r\n\r\n").as_bytes())
            .unwrap();
        // Each answer comes in one write; wait for it before the next request.
        let _ = s.read(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);
    let later = |l: &Value| {
        l["direction"] == "outbound" && (l["path"] == "/second" || l["path"] == "/third")
    };
    let lines = agent.wait_for(Duration::from_secs(10), |l| requests(l, later).len() >= 2);
    drop(lines);
    let lines = agent.stop();
    let after: Vec<&Value> = requests(&lines, later);
    assert!(
        after.iter().any(|r| r["path"] == "/second") && after.iter().any(|r| r["path"] == "/third"),
        "requests after the absurd chunk were not reported: {lines:#?}"
    );
    assert!(
        after
            .iter()
            .filter(|r| r["path"] == "/third")
            .all(|r| r["status"] == 200),
        "{after:#?}"
    );
}
