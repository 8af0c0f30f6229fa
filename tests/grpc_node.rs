//! Issue 14: a Node `@grpc/grpc-js` client (tests/services/grpc-node: Node's own HTTP/2 stack
//! and HPACK encoder, not gRPC C-core's) calling the grpcio echo server
//! (tests/services/grpc/echo.py) with a traceparent in the metadata, watched by the real agent:
//! every call seen on both sides with its method, grpc status and trace id.
//! `cargo xtask integration-test` installs the npm packages (`npm ci`); without node, npm or
//! them the test says why it skips, and fails under CI=true.
//! Run by `cargo xtask integration-test` (as root, one test at a time).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use traceid_tests::*;
// Used by the harness library (tests/src), not by name here.
use {serde_json as _, thiserror as _};

const PYTHON: &str = "/usr/bin/python3";
const CALLS: u128 = 20;
/// client.js numbers its calls from here (echo.py's trace ids: 5eed... + call number).
const FIRST_CALL: u128 = 2000;

fn services() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("services")
}

fn trace_id(call: u128) -> String {
    format!(
        "{:032x}",
        0x5eed_0000_0000_0000_0000_0000_0000_0000u128 + call
    )
}

fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit_once(':')?.1.parse().ok()
}

/// Why the Node client cannot run here, if it cannot.
fn node_missing(client_dir: &Path) -> Option<String> {
    let runs = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !runs("node") {
        return Some("`node` is not installed (cargo xtask integration-test installs it)".into());
    }
    if !client_dir.join("node_modules/@grpc/grpc-js").is_dir() {
        return Some(format!(
            "@grpc/grpc-js is not installed in {} (cargo xtask integration-test runs npm ci)",
            client_dir.display()
        ));
    }
    None
}

#[test]
fn grpc_js_client_calls_seen_with_trace_id_on_both_sides() {
    if !can_run() {
        return;
    }
    let client_dir = services().join("grpc-node");
    if let Some(reason) = node_missing(&client_dir) {
        skip(&reason);
        return;
    }
    let port = free_port();
    let mut server = Peer::spawn(
        Command::new(PYTHON)
            .arg(services().join("grpc/echo.py"))
            .args(["server", &port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null()),
        libc::SIGTERM,
    )
    .expect("starting the grpcio echo server");
    server
        .wait_listening("grpc server", port, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let agent = Agent::watch(&[]);
    let client = Command::new("node")
        .arg("client.js")
        .args([port.to_string(), CALLS.to_string()])
        .current_dir(&client_dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node client.js");
    let client_pid = client.id();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "node client.js failed");
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let calls: Vec<u128> = (FIRST_CALL..FIRST_CALL + CALLS).collect();
    let want: Vec<String> = calls
        .iter()
        .map(|&c| format!("{} 0", trace_id(c)))
        .collect();
    assert_eq!(printed, want);

    let server_pid = server.id();
    let inbound = move |r: &Value| {
        r["pid"] == server_pid && r["direction"] == "inbound" && port_of(&r["local"]) == Some(port)
    };
    let outbound = move |r: &Value| r["pid"] == client_pid && r["direction"] == "outbound";
    let n = CALLS as usize;
    agent.wait_for(Duration::from_secs(15), |l| {
        requests(l, inbound).len() >= n && requests(l, outbound).len() >= n
    });
    let lines = agent.stop();
    // grpc-js writes each call's frames in a few iovecs, and grpcio reads them whole: both
    // sides know every request exactly. The response is read whole by the client; the
    // server's write of it is gRPC C-core's, of which the kernel inspects 16 iovecs
    // (tests/h2.rs): there each field is exact or unknown.
    for (side, records) in [
        ("server", requests(&lines, inbound)),
        ("client", requests(&lines, outbound)),
    ] {
        assert_eq!(records.len(), n, "{side}: {records:#?}");
        let mut seen: Vec<&str> = records
            .iter()
            .filter_map(|r| r["trace_id"].as_str())
            .collect();
        seen.sort_unstable();
        let sent: Vec<String> = calls.iter().map(|&c| trace_id(c)).collect();
        assert_eq!(seen, sent, "{side}: every call with its trace id");
        for r in records {
            let id = r["trace_id"].as_str().unwrap();
            assert_eq!(r["path"], format!("/demo.Echo/T{id}"), "{side}: {r:#}");
            assert_eq!(r["protocol"], "grpc", "{side}: {r:#}");
            assert_eq!(r["method"], "POST", "{side}: {r:#}");
            assert_eq!(r["headers_known"], "exact", "{side}: {r:#}");
            assert_eq!(r["trace_format"], "w3c", "{side}: {r:#}");
            if side == "client" {
                assert_eq!(
                    (&r["status"], &r["grpc_status"]),
                    (&200.into(), &0.into()),
                    "{r:#}"
                );
            } else {
                assert!(r["status"].is_null() || r["status"] == 200, "{r:#}");
                assert!(r["grpc_status"].is_null() || r["grpc_status"] == 0, "{r:#}");
            }
            assert!(r["stream_id"].as_u64().is_some_and(|s| s % 2 == 1), "{r:#}");
        }
    }
}
