//! Secrets never leave the agent: real clients (curl in one write, a Python client in pieces
//! that split its `Authorization` and `Cookie` headers from their values and a cookie value in
//! two) send secrets and a query string to nginx on 127.0.0.1, and none of them is in the
//! bytes of `traceid record`'s file, nor in any output of `watch --json`, `diagnose --json`,
//! `run` (its findings log and `/metrics`), `replay --json` or `replay --diagnose --json`. The
//! same over HTTP/2, where the secrets are inside HPACK header blocks.
//!
//! Run by `cargo xtask integration-test`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use traceid_tests::*;
// The harness crate's dependency, not named by this test.
use {serde_json as _, thiserror as _};

/// Every secret the clients send, and both halves of the cookie value the Python client
/// splits inside: none may appear anywhere.
const SECRETS: &[&str] = &[
    "SECRETTOKEN",
    "SECRETCOOKIE456",
    "SECRETQUERY789",
    "SECRETSETCOOKIE321",
    "SPLITCOO",
    "KIEVALUE",
];

/// The Python client: one request in pieces, each its own write (a pause between), the
/// header names apart from their values and one value cut in two.
const PIECES_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for piece in [
    b"GET /login?password=SECRETQUERY789 HTTP/1.1\r\nHost: x\r\nAuthorization:",
    b" Bearer SECRETTOKEN\r\nCookie",
    b": a=SECRETCOOKIE456; b=SECRETCOOKIE456\r\nX-Note: n\r\nCookie: c=SPLITCOO",
    b"KIEVALUE\r\nConnection: close\r\n\r\n",
]:
    s.sendall(piece)
    time.sleep(0.05)
response = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    response += chunk
assert response.startswith(b"HTTP/1.1 200"), response
"#;

/// Each of `secrets` found in `text`, with how often.
fn secrets_in(secrets: &[&'static str], text: &[u8]) -> Vec<(&'static str, usize)> {
    let text = String::from_utf8_lossy(text);
    secrets
        .iter()
        .map(|s| (*s, text.matches(s).count()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Each output (named) that holds any of `secrets`, with what it holds.
fn leaks(secrets: &[&'static str], outputs: &[(&str, &[u8])]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|(what, bytes)| {
            let found = secrets_in(secrets, bytes);
            (!found.is_empty()).then(|| format!("{what}: {found:?}"))
        })
        .collect()
}

/// A `traceid` child with its stdout collected.
struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(traceid_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning traceid");
        let stderr = collect_stderr(&mut child);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().unwrap();
        let o2 = Arc::clone(&stdout);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o2.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        wait_watching(&stderr);
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the child's own end (its --duration) and returns its stdout.
    fn wait(mut self) -> Vec<u8> {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}", self.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(200));
        self.stdout.lock().unwrap().clone()
    }

    /// Stops the child with SIGINT and returns its stdout.
    fn stop(mut self) -> Vec<u8> {
        stop_child(&mut self.child, libc::SIGINT, &self.stderr);
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET over a plain socket; the whole response.
fn http_get(port: u16, path: &str, accept: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading /metrics");
    raw
}

#[test]
fn secrets_split_across_writes_reach_no_file_and_no_output() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start_with(
        "location /login { add_header Set-Cookie \"sid=SECRETSETCOOKIE321\"; return 200 \"ok\\n\"; }",
    );
    let port = nginx.port.to_string();
    let dir = std::env::temp_dir().join(format!("traceid-privacy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.traceid");
    let file_arg = file.to_str().unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("--metrics-addr=127.0.0.1:{metrics_port}");

    // Every live output at once, each agent filtered to nginx's port.
    let recorder = Running::spawn(&[
        "diagnose",
        "--duration",
        "12s",
        "--json",
        "--record",
        file_arg,
        "--port",
        &port,
    ]);
    let runner = Running::spawn(&["run", &metrics_addr, "--log-findings", "--port", &port]);
    let watcher = Agent::watch(&["--port", &port]);

    let curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Authorization: Bearer SECRETTOKEN"])
        .args(["-H", "Cookie: a=SECRETCOOKIE456"])
        .arg(format!(
            "http://127.0.0.1:{port}/login?password=SECRETQUERY789"
        ))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200");
    let python = Command::new("python3")
        .args(["-c", PIECES_CLIENT, &port])
        .output()
        .expect("python3");
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );

    // Both requests seen by nginx and by their clients.
    let watched = watcher.wait_for(Duration::from_secs(20), |l| {
        requests(l, |r| r["path"] == "/login").len() >= 4
    });
    assert!(
        requests(&watched, |r| r["path"] == "/login").len() >= 4,
        "{watched:?}"
    );
    let metrics_text = http_get(metrics_port, "/metrics", "text/plain");
    let metrics_open = http_get(metrics_port, "/metrics", "application/openmetrics-text");
    let watched = watcher.stop();
    let logged = runner.stop();
    let diagnosed = recorder.wait();

    let recording = std::fs::read(&file).unwrap();
    let replayed = replay(&[file_arg, "--json"]);
    let replay_diagnosis = replay(&[file_arg, "--diagnose", "--json"]);

    // The heads are in the file (only values are masked) and replay finds both requests.
    let text = String::from_utf8_lossy(&recording);
    assert!(text.contains("GET /login?") && text.contains("Authorization:"));
    let lines = json_lines(&replayed.stdout);
    assert!(
        requests(&lines, |r| r["path"] == "/login"
            && r["direction"] == "inbound")
        .len()
            >= 2,
        "{lines:?}"
    );

    let watched: Vec<u8> = watched
        .iter()
        .flat_map(|v| format!("{v}\n").into_bytes())
        .collect();
    let outputs: [(&str, &[u8]); 8] = [
        ("record file", &recording),
        ("watch --json", &watched),
        ("diagnose --json", &diagnosed),
        ("run --log-findings", &logged),
        ("/metrics (Prometheus text)", &metrics_text),
        ("/metrics (OpenMetrics)", &metrics_open),
        ("replay --json", &replayed.stdout),
        ("replay --diagnose --json", &replay_diagnosis.stdout),
    ];
    let leaks = leaks(SECRETS, &outputs);
    eprintln!("secrets found: {leaks:?}");
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// HTTP/2 secrets, in values HPACK sends as they are (their Huffman code would be longer, so
/// curl's nghttp2 does not use it): a line scanner never sees them, as HPACK has no lines.
const H2_TOKEN: &str = "Bearer ~~~~SECRETH2TOKEN^^^^{}{}";
const H2_COOKIE: &str = "c=~~~~SECRETH2COOKIE^^^^{}{}";
const H2_QUERY: &str = "p=~~~~SECRETH2QUERY^^^^";
const H2_SET_COOKIE: &str = "sid=~~~~SECRETH2SETCOOKIE^^^^{}{}";
const H2_SECRETS: [&str; 4] = [
    "SECRETH2TOKEN",
    "SECRETH2COOKIE",
    "SECRETH2QUERY",
    "SECRETH2SETCOOKIE",
];

#[test]
fn http2_secrets_reach_no_file_and_the_recording_replays_every_request() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start_h2c_with(&format!(
        "location /login {{ add_header Set-Cookie \"{H2_SET_COOKIE}\"; return 200 \"ok\\n\"; }}"
    ));
    let port = nginx.port.to_string();
    let dir = std::env::temp_dir().join(format!("traceid-privacy-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("h2.traceid");
    let file_arg = file.to_str().unwrap();
    let recorder = Running::spawn(&[
        "diagnose",
        "--duration",
        "8s",
        "--json",
        "--record",
        file_arg,
        "--port",
        &port,
    ]);
    let traces = [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ];
    for tp in traces {
        let curl = Command::new("curl")
            .args(["-sg", "--http2-prior-knowledge", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{http_version}"])
            .args(["-H", &format!("Authorization: {H2_TOKEN}")])
            .args(["-H", &format!("Cookie: {H2_COOKIE}")])
            .args(["-H", &format!("traceparent: {tp}")])
            .arg(format!("http://127.0.0.1:{port}/login?{H2_QUERY}"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&curl.stdout), "200 2");
    }
    let diagnosed = recorder.wait();
    let recording = std::fs::read(&file).unwrap();
    let replayed = replay(&[file_arg, "--json"]);
    let replay_diagnosis = replay(&[file_arg, "--diagnose", "--json"]);

    // Each value went as it is, and is in the file masked to its length; the path keeps
    // all but its query.
    for value in [H2_TOKEN, H2_COOKIE, H2_SET_COOKIE] {
        let masked = "*".repeat(value.len());
        assert!(
            contains_bytes(&recording, masked.as_bytes()),
            "{value} masked in place"
        );
    }
    assert!(contains_bytes(
        &recording,
        format!("/login?{}", "*".repeat(H2_QUERY.len())).as_bytes()
    ));
    // Replay reads every request at both ends, with its trace id.
    let lines = json_lines(&replayed.stdout);
    for direction in ["inbound", "outbound"] {
        let mut ids: Vec<&str> = requests(&lines, |r| {
            r["path"] == "/login" && r["direction"] == direction && r["protocol"] == "h2"
        })
        .iter()
        .filter_map(|r| r["trace_id"].as_str())
        .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [&traces[1][3..35], &traces[0][3..35]],
            "{direction}: {lines:?}"
        );
    }
    let outputs: [(&str, &[u8]); 4] = [
        ("record file", &recording),
        ("diagnose --json", &diagnosed),
        ("replay --json", &replayed.stdout),
        ("replay --diagnose --json", &replay_diagnosis.stdout),
    ];
    let leaks = leaks(&H2_SECRETS, &outputs);
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
