//! One pipeline, one way: a live `traceid diagnose --record FILE` and `traceid replay FILE
//! --diagnose` of what it recorded print the same diagnosis, connection and TIME_WAIT sections
//! included. Real kernel programs, nginx and curl on 127.0.0.1, plus a client thread of this
//! process that churns connections (it closes first, so it holds their TIME_WAIT).
//!
//! Run by `cargo xtask integration-test`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use traceid_tests::*;
// The harness crate's dependency, not named by this test.
use {libc as _, thiserror as _};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Fresh connections the churning client makes (each one request, closed by the client).
const CHURN: usize = 60;

fn churn(port: u16) {
    std::thread::Builder::new()
        .name("replaychurn".into())
        .spawn(move || {
            for _ in 0..CHURN {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /api HTTP/1.1\r\nHost: replay\r\n\r\n")
                    .unwrap();
                assert_eq!(read_response(&mut s), 200);
            }
        })
        .unwrap()
        .join()
        .expect("churning client");
}

#[test]
fn replay_of_a_live_diagnosis_prints_the_same_diagnosis() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let port = nginx.port.to_string();
    let dir = std::env::temp_dir().join(format!("traceid-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.traceid");
    // The threshold sits below the churn so a buildup is found and must replay too.
    let filters = ["--port", port.as_str(), "--tw-threshold", "40"];
    let mut child = Command::new(traceid_bin())
        .args(["diagnose", "--duration", "8s", "--json", "--record"])
        .arg(&file)
        .args(filters)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning traceid diagnose");
    let stderr = collect_stderr(&mut child);
    let mut stdout = child.stdout.take().unwrap();
    wait_watching(&stderr);
    for i in 0..4 {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-o", "/dev/null"]);
        if i < 3 {
            curl.args(["-H", &format!("traceparent: {TRACEPARENT}")]);
        }
        assert!(curl
            .arg(format!("http://127.0.0.1:{port}/api"))
            .status()
            .unwrap()
            .success());
    }
    churn(nginx.port);
    let mut live = String::new();
    stdout.read_to_string(&mut live).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{}",
        stderr.lock().unwrap()
    );
    let live: Value = serde_json::from_str(&live).expect("live diagnosis JSON");

    let mut args = vec![file.to_str().unwrap(), "--diagnose", "--json"];
    args.extend(filters);
    let replayed: Value =
        serde_json::from_slice(&replay(&args).stdout).expect("replay diagnosis JSON");
    let _ = std::fs::remove_dir_all(&dir);

    // The diagnosis is about what this test did, so the comparison compares something.
    let nginx_svc = live["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["comm"] == "nginx" && g["port"] == nginx.port)
        .unwrap_or_else(|| panic!("no nginx service in {live:#}"));
    assert_eq!(nginx_svc["requests"].as_u64(), Some(4 + CHURN as u64));
    assert_eq!(nginx_svc["with_trace"], 3);
    let tw = &live["time_wait"];
    let churner = tw["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["comm"] == "replaychurn" && p["role"] == "client")
        .unwrap_or_else(|| panic!("the churning client is not in the connection section: {tw:#}"));
    assert!(
        churner["opened"].as_u64() >= Some(CHURN as u64),
        "{churner:#}"
    );
    assert!(
        churner["closed_local_first"].as_u64() >= Some(CHURN as u64),
        "{churner:#}"
    );
    assert!(tw["total"].as_u64() >= Some(CHURN as u64), "{tw:#}");

    assert_eq!(
        live, replayed,
        "replay differs from the live diagnosis\nlive: {live:#}\nreplay: {replayed:#}"
    );
}
