//! A fork-per-connection server: the parent accepts, a forked child reads the request and
//! answers. The kernel knows the socket by what it is, not by the process that accepted it, so
//! the request is reported on the child, which served it, with its trace id and endpoints.

use std::process::Command;
use std::time::Duration;

use traceid_tests::*;
// The harness library's dependencies, not named by this test.
use {libc as _, serde_json as _, thiserror as _};

/// `socketserver.ForkingMixIn` + `http.server.HTTPServer`; the body is the serving pid.
const SERVER: &str = r#"
import http.server, os, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ForkingMixIn, http.server.HTTPServer):
    pass
Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

#[test]
fn request_on_a_connection_accepted_by_the_parent_is_reported_on_the_forked_child() {
    if !can_run() {
        return;
    }
    let Some((server, port)) = python_server(SERVER) else {
        return;
    };
    let agent = Agent::watch(&[]);
    let out = Command::new("curl")
        .args(["-s", "-H", &format!("traceparent: {TRACEPARENT}")])
        .arg(format!("http://127.0.0.1:{port}/forked"))
        .output()
        .expect("curl must be installed");
    assert!(out.status.success(), "curl failed: {out:?}");
    let child_pid: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the server answers with the serving pid");
    let parent_pid = u64::from(server.id());
    assert_ne!(child_pid, parent_pid, "ForkingMixIn serves in a child");

    let inbound = |l: &[Value]| -> usize {
        requests(l, |r| r["direction"] == "inbound" && r["path"] == "/forked").len()
    };
    agent.wait_for(Duration::from_secs(10), |l| inbound(l) >= 1);
    let lines = agent.stop();

    let seen = requests(&lines, |r| {
        r["direction"] == "inbound" && r["path"] == "/forked"
    });
    assert_eq!(seen.len(), 1, "one inbound request: {lines:#?}");
    let r = seen[0];
    assert_eq!(r["pid"], child_pid, "on the child that served it: {r:#}");
    assert_eq!(r["comm"], "python3");
    assert_eq!(r["trace_id"], TRACE_ID);
    assert_eq!(r["trace_format"], "w3c");
    assert_eq!(r["status"], 200);
    // The child's connection is announced with the socket's endpoints.
    assert_eq!(r["local"], format!("127.0.0.1:{port}"));
    assert!(
        requests(&lines, |r| r["pid"] == parent_pid).is_empty(),
        "nothing on the parent, which only accepted: {lines:#?}"
    );
}
