//! Issue 14, item 1: HTTP/2 reached through the h2c upgrade (RFC 7540 section 3.2), live.
//! `curl --http2 http://...` sends its first request as HTTP/1.1 with `Upgrade: h2c`; a
//! server that accepts answers `101 Switching Protocols` and the response to that request
//! comes on HTTP/2 stream 1; curl's next request on the connection is stream 3. The agent
//! must follow the switch on both sides: each request reported once, as h2, on its own
//! stream, with its own traceparent. A server that ignores the upgrade (nginx without h2c)
//! keeps the connection HTTP/1.1, and so must the agent.
//!
//! The upgrading server is hypercorn (tests/services/h2c/app.py); nginx and nghttpd do not
//! upgrade (nginx answers in HTTP/1.1, nghttpd speaks HTTP/2 with prior knowledge only).
//! Run by `cargo xtask integration-test` (as root, one test at a time).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use traceid_tests::*;
// Used by the harness library (tests/src), not by name here.
use {serde_json as _, thiserror as _};

const WAIT: Duration = Duration::from_secs(15);
/// The second request's context: a different trace id, so that a stream mixed up with the
/// other one shows.
const TRACEPARENT_2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_ID_2: &str = "0af7651916cd43dd8448eb211c80319c";

fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit_once(':')?.1.parse().ok()
}

/// hypercorn serving tests/services/h2c/app.py on a free port of 127.0.0.1.
fn hypercorn() -> (Peer, u16) {
    let app = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("services/h2c/app.py");
    let port = free_port();
    let mut peer = Peer::spawn(
        Command::new(PYTHON)
            .arg(app)
            .arg(port.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null()),
        libc::SIGTERM,
    )
    .expect("starting hypercorn (cargo xtask integration-test installs python3-hypercorn)");
    peer.wait_listening("hypercorn", port, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    (peer, port)
}

/// `curl --http2` on one connection: GET `/api/one` with TRACEPARENT, then GET `/api/two`
/// with TRACEPARENT_2 (`--next` starts the second transfer; curl reuses the connection).
/// Returns curl's pid and its verbose trace (stderr).
fn curl_upgrade(port: u16) -> (u32, String) {
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let child = Command::new("curl")
        .args(["-sv", "-o", "/dev/null", "--http2", "-H"])
        .arg(format!("traceparent: {TRACEPARENT}"))
        .arg(url("/api/one"))
        .args(["--next", "-o", "/dev/null", "--http2", "-H"])
        .arg(format!("traceparent: {TRACEPARENT_2}"))
        .arg(url("/api/two"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let trace = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl failed: {trace}");
    (pid, trace)
}

/// The records of the two requests: the server's (inbound on `port`) and curl's.
fn both_sides(lines: &[Value], port: u16, curl_pid: u32) -> [Vec<&Value>; 2] {
    [
        requests(lines, move |r| {
            r["direction"] == "inbound" && port_of(&r["local"]) == Some(port)
        }),
        requests(lines, move |r| {
            r["pid"] == curl_pid && r["direction"] == "outbound"
        }),
    ]
}

/// The one record of `side` for `path`.
fn the_request<'a>(side: &[&'a Value], path: &str) -> &'a Value {
    let found: Vec<&&Value> = side.iter().filter(|r| r["path"] == path).collect();
    assert_eq!(found.len(), 1, "one record for {path}: {side:#?}");
    found[0]
}

#[test]
fn curl_upgrading_to_h2c_is_reported_as_h2_on_streams_1_and_3() {
    if !can_run() {
        return;
    }
    let (_server, port) = hypercorn();
    let agent = Agent::watch(&["--port", &port.to_string()]);
    let (curl_pid, trace) = curl_upgrade(port);
    // The premise: the server switched, and curl reused the upgraded connection.
    assert!(
        trace.contains("HTTP/1.1 101") && trace.contains("Re-using existing connection"),
        "no h2c upgrade on one connection: {trace}"
    );
    agent.wait_for(WAIT, |l| {
        both_sides(l, port, curl_pid).iter().all(|s| s.len() >= 2)
    });
    let lines = agent.stop();
    for side in both_sides(&lines, port, curl_pid) {
        assert_eq!(side.len(), 2, "{lines:#?}");
        for (stream, path, trace_id) in [(1, "/api/one", TRACE_ID), (3, "/api/two", TRACE_ID_2)] {
            let r = the_request(&side, path);
            assert_eq!(r["protocol"], "h2", "{r:#}");
            assert_eq!(r["stream_id"], stream, "{r:#}");
            assert_eq!(r["headers_known"], "exact", "{r:#}");
            assert_eq!(r["method"], "GET", "{r:#}");
            assert_eq!(r["path"], path, "{r:#}");
            assert_eq!(r["status"], 200, "{r:#}");
            assert_eq!(r["trace_id"], trace_id, "{r:#}");
            assert_eq!(r["trace_format"], "w3c", "{r:#}");
            assert_eq!(r["tls"], false, "{r:#}");
        }
        // One connection: both streams between the same two endpoints.
        assert_eq!(side[0]["local"], side[1]["local"], "{side:#?}");
        assert_eq!(side[0]["peer"], side[1]["peer"], "{side:#?}");
    }
}

#[test]
fn upgrade_ignored_by_the_server_stays_http1() {
    if !can_run() {
        return;
    }
    // nginx without h2c: it ignores `Upgrade: h2c` and answers in HTTP/1.1.
    let nginx = Nginx::start();
    let agent = Agent::watch(&["--port", &nginx.port.to_string()]);
    let (curl_pid, trace) = curl_upgrade(nginx.port);
    assert!(
        trace.contains("Upgrade: h2c") && !trace.contains(" 101"),
        "curl must offer the upgrade and nginx must not take it: {trace}"
    );
    agent.wait_for(WAIT, |l| {
        both_sides(l, nginx.port, curl_pid)
            .iter()
            .all(|s| s.len() >= 2)
    });
    let lines = agent.stop();
    for side in both_sides(&lines, nginx.port, curl_pid) {
        assert_eq!(side.len(), 2, "{lines:#?}");
        for (path, trace_id) in [("/api/one", TRACE_ID), ("/api/two", TRACE_ID_2)] {
            let r = the_request(&side, path);
            assert_eq!(r["protocol"], "http1", "{r:#}");
            assert!(r["stream_id"].is_null(), "{r:#}");
            assert_eq!(r["path"], path, "{r:#}");
            assert_eq!(r["status"], 200, "{r:#}");
            assert_eq!(r["trace_id"], trace_id, "{r:#}");
        }
    }
}

/// A cookie HPACK carries as it is (its Huffman code would be longer): what a recording of
/// the upgraded connection must not hold.
const COOKIE: &str = "c=~~~~SECRETH2CUPGRADE^^^^{}{}";
/// The cookie app.py sets on `/api/two` (over HTTP/2: stream 3).
const SET_COOKIE: &str = "c=~~~~SECRETH2CSET^^^^{}{}";

/// `value` Huffman-coded as HPACK codes it (RFC 7541 Appendix B), by Python's hpack: how the
/// server's HTTP/2 side sends it.
fn hpack_huffman(value: &str) -> Vec<u8> {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import sys\nfrom hpack.huffman import HuffmanEncoder\n\
             from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH\n\
             sys.stdout.write(HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)\
             .encode(sys.argv[1].encode()).hex())",
            value,
        ])
        .output()
        .expect("python3 with hpack (hypercorn's)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8(out.stdout).unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_recording_of_an_upgraded_connection_masks_its_http2_secrets_and_replays_both_streams() {
    if !can_run() {
        return;
    }
    let (_server, port) = hypercorn();
    let dir = std::env::temp_dir().join(format!("traceid-h2c-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("h2c.traceid");
    let mut child = Command::new(traceid_bin())
        .args(["diagnose", "--duration", "6s", "--json", "--record"])
        .arg(&file)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning traceid diagnose");
    let stderr = collect_stderr(&mut child);
    wait_watching(&stderr);
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let out = Command::new("curl")
        .args(["-sgv", "-o", "/dev/null", "--http2", "-H"])
        .arg(format!("traceparent: {TRACEPARENT}"))
        .args(["-H", &format!("Cookie: {COOKIE}")])
        .arg(url("/api/one"))
        .args(["--next", "-g", "-o", "/dev/null", "--http2", "-H"])
        .arg(format!("traceparent: {TRACEPARENT_2}"))
        .args(["-H", &format!("Cookie: {COOKIE}")])
        .arg(url("/api/two"))
        .output()
        .expect("curl");
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {trace}");
    assert!(
        trace.contains("HTTP/1.1 101") && trace.contains("Re-using existing connection"),
        "no h2c upgrade on one connection: {trace}"
    );
    assert!(
        child.wait().unwrap().success(),
        "{}",
        stderr.lock().unwrap()
    );
    let recording = std::fs::read(&file).unwrap();
    let replayed = replay(&[file.to_str().unwrap(), "--json"]);
    let _ = std::fs::remove_dir_all(&dir);

    let text = String::from_utf8_lossy(&recording);
    assert!(
        !text.contains("SECRETH2CUPGRADE"),
        "the cookie reached the file"
    );
    // The HTTP/1.1 request's cookie line and the HTTP/2 request's value, masked in place.
    let masked = "*".repeat(COOKIE.len());
    assert!(text.matches(&masked).count() >= 2, "{text:?}");
    // The server's Set-Cookie, Huffman-coded, is in neither side's records: each holds a
    // plain run of `*` as long as its code.
    let coded = hpack_huffman(SET_COOKIE);
    assert!(
        !contains_bytes(&recording, &coded),
        "the Set-Cookie reached the file"
    );
    assert!(
        text.matches(&"*".repeat(coded.len())).count() >= 2,
        "{text:?}"
    );
    let lines = json_lines(&replayed.stdout);
    for direction in ["inbound", "outbound"] {
        let side = requests(&lines, |r| {
            r["direction"] == direction && r["protocol"] == "h2"
        });
        for (stream, path, trace_id) in [(1, "/api/one", TRACE_ID), (3, "/api/two", TRACE_ID_2)] {
            let r = the_request(&side, path);
            assert_eq!(
                (&r["stream_id"], &r["trace_id"], &r["status"]),
                (
                    &Value::from(stream),
                    &Value::from(trace_id),
                    &Value::from(200)
                ),
                "{direction}: {r:#}"
            );
        }
    }
}
