//! Live plaintext HTTP capture: the real kernel programs, nginx, curl and raw sockets on
//! 127.0.0.1. Run by `cargo xtask integration-test` (as root, one test at a time).

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use traceid_tests::*;
// Used by the harness library (tests/src), not by name here.
use {libc as _, thiserror as _};

fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit_once(':')?.1.parse().ok()
}

#[test]
fn nginx_and_curl_report_the_same_trace_id() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let agent = Agent::watch(&[]);
    let curl = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-H",
            &format!("traceparent: {TRACEPARENT}"),
        ])
        .arg(format!("http://127.0.0.1:{}/api?secret=1", nginx.port))
        .spawn()
        .expect("curl");
    let curl_pid = curl.id();
    let status = curl.wait_with_output().unwrap().status;
    assert!(status.success());
    let workers = nginx.worker_pids();
    agent.wait_for(Duration::from_secs(10), |l| {
        requests(l, |r| r["pid"] == curl_pid).len() == 1
            && requests(l, |r| {
                r["comm"] == "nginx" && port_of(&r["local"]) == Some(nginx.port)
            })
            .len()
                == 1
    });
    let lines = agent.stop();

    let inbound = requests(&lines, |r| {
        r["direction"] == "inbound" && port_of(&r["local"]) == Some(nginx.port)
    });
    assert_eq!(inbound.len(), 1, "inbound on nginx: {lines:#?}");
    let r = inbound[0];
    assert!(
        workers.contains(&(r["pid"].as_u64().unwrap() as u32)),
        "pid {} not an nginx worker {workers:?}",
        r["pid"]
    );
    assert_eq!(r["comm"], "nginx");
    assert_eq!(r["trace_id"], TRACE_ID);
    assert_eq!(r["trace_format"], "w3c");
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path"], "/api", "query string must be stripped");
    assert_eq!(r["status"], 200);
    assert_eq!(r["tls"], false);
    assert_eq!(r["findings"], serde_json::json!([]));

    let outbound = requests(&lines, |r| r["pid"] == curl_pid);
    assert_eq!(outbound.len(), 1, "outbound on curl: {lines:#?}");
    let o = outbound[0];
    assert_eq!(o["direction"], "outbound");
    assert_eq!(o["comm"], "curl");
    assert_eq!(o["trace_id"], TRACE_ID);
    assert_eq!(o["status"], 200);
    assert_eq!(port_of(&o["peer"]), Some(nginx.port));
    // Both ends of the one connection.
    assert_eq!(o["local"], r["peer"]);
    assert!(!serde_json::to_string(&lines).unwrap().contains("secret"));
}

#[test]
fn keep_alive_client_sending_100_requests_gives_100_requests() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let agent = Agent::watch(&[]);
    let me = std::process::id();
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let local = s.local_addr().unwrap().to_string();
    for i in 0..100 {
        let req = format!(
            "GET /api/{i} HTTP/1.1\r\nHost: x\r\nX-Request-ID: req-{i}\r\nUser-Agent: keepalive-test\r\n\r\n"
        );
        send_in_pieces(&mut s, &[req.as_bytes()]);
        assert_eq!(read_response(&mut s), 200);
    }
    agent.wait_for(Duration::from_secs(10), |l| {
        requests(l, |r| r["pid"] == me && r["local"] == local.as_str()).len() >= 100
            && requests(l, |r| r["comm"] == "nginx" && r["peer"] == local.as_str()).len() >= 100
    });
    drop(s);
    let lines = agent.stop();
    let inbound = requests(&lines, |r| {
        r["comm"] == "nginx" && r["peer"] == local.as_str()
    });
    let outbound = requests(&lines, |r| r["pid"] == me && r["local"] == local.as_str());
    assert_eq!(inbound.len(), 100);
    assert_eq!(outbound.len(), 100);
    for (i, r) in inbound.iter().enumerate() {
        assert_eq!(r["path"], format!("/api/{i}"));
        assert_eq!(r["trace_id"], format!("req-{i}"));
        assert_eq!(r["trace_format"], "request_id");
        assert_eq!(r["status"], 200);
    }
}

#[test]
fn request_headers_in_three_writes_give_one_request() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let agent = Agent::watch(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let local = s.local_addr().unwrap().to_string();
    let tp = format!("traceparent: {TRACEPARENT}\r\n");
    send_in_pieces(
        &mut s,
        &[
            b"GET /api/split HTTP/1.1\r\nHo",
            format!("st: x\r\n{}", &tp[..20]).as_bytes(),
            format!("{}\r\n", &tp[20..]).as_bytes(),
        ],
    );
    assert_eq!(read_response(&mut s), 200);
    agent.wait_for(Duration::from_secs(10), |l| {
        !requests(l, |r| r["comm"] == "nginx" && r["peer"] == local.as_str()).is_empty()
    });
    drop(s);
    let lines = agent.stop();
    let inbound = requests(&lines, |r| {
        r["comm"] == "nginx" && r["peer"] == local.as_str()
    });
    assert_eq!(inbound.len(), 1, "{lines:#?}");
    assert_eq!(inbound[0]["path"], "/api/split");
    assert_eq!(inbound[0]["trace_id"], TRACE_ID);
    assert_eq!(inbound[0]["status"], 200);
}

#[test]
fn connection_opened_before_the_agent_started_is_still_seen() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let me = std::process::id();
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let local = s.local_addr().unwrap().to_string();
    send_in_pieces(&mut s, &[b"GET /api/before HTTP/1.1\r\nHost: x\r\n\r\n"]);
    assert_eq!(read_response(&mut s), 200);

    let agent = Agent::watch(&[]);
    let req = format!("GET /api/after HTTP/1.1\r\nHost: x\r\ntraceparent: {TRACEPARENT}\r\n\r\n");
    send_in_pieces(&mut s, &[req.as_bytes()]);
    assert_eq!(read_response(&mut s), 200);
    agent.wait_for(Duration::from_secs(10), |l| {
        !requests(l, |r| r["comm"] == "nginx" && r["peer"] == local.as_str()).is_empty()
            && !requests(l, |r| r["pid"] == me && r["local"] == local.as_str()).is_empty()
    });
    drop(s);
    let lines = agent.stop();
    let inbound = requests(&lines, |r| {
        r["comm"] == "nginx" && r["peer"] == local.as_str()
    });
    assert_eq!(inbound.len(), 1, "{lines:#?}");
    assert_eq!(inbound[0]["path"], "/api/after");
    assert_eq!(inbound[0]["direction"], "inbound");
    assert_eq!(inbound[0]["trace_id"], TRACE_ID);
    let outbound = requests(&lines, |r| r["pid"] == me && r["local"] == local.as_str());
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0]["direction"], "outbound");
    assert_eq!(outbound[0]["status"], 200);
}

#[test]
fn diagnose_reports_per_service_share_and_formats() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let mut child = Command::new(traceid_bin())
        .args([
            "diagnose",
            "--duration",
            "8s",
            "--json",
            "--port",
            &nginx.port.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The 8 s start once the programs are attached, which the debug build on a busy host
    // can take seconds to do: the requests go out then.
    let stderr = collect_stderr(&mut child);
    wait_watching(&stderr);
    for i in 0..4 {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null"]);
        if i < 3 {
            cmd.args(["-H", &format!("traceparent: {TRACEPARENT}")]);
        }
        assert!(cmd
            .arg(format!("http://127.0.0.1:{}/api", nginx.port))
            .status()
            .unwrap()
            .success());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let d: Value = serde_json::from_slice(&out.stdout).expect("diagnosis JSON");
    let svc = d["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["comm"] == "nginx" && g["port"] == nginx.port)
        .unwrap_or_else(|| panic!("no nginx service in {d:#}"));
    assert_eq!(svc["requests"], 4);
    assert_eq!(svc["with_trace"], 3);
    assert_eq!(svc["formats"]["w3c"], 3);
    assert_eq!(svc["findings"]["missing"]["count"], 1);
}
