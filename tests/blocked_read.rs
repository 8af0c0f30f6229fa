//! A connection made before the agent started, whose server thread was already blocked in a
//! read when the kernel programs were attached: its first request must be reported (the data
//! programs read the call's arguments at its exit, so they need not have seen its entry).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use traceid_tests::*;
// The harness library's dependencies, not named by this test.
use {libc as _, serde_json as _, thiserror as _};

/// A thread-per-connection HTTP/1.1 (keep-alive) server answering 200 to every GET.
const SERVER: &str = r#"
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// Connects at once and says so, then sends one keep-alive request per path read from stdin.
const CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
conn.connect()
print("connected", flush=True)
for line in sys.stdin:
    conn.request("GET", line.strip(), headers={"traceparent": sys.argv[2]})
    response = conn.getresponse()
    response.read()
    print(response.status, flush=True)
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Syscalls a thread reading a socket sleeps in: read, recvfrom, recvmsg.
#[cfg(target_arch = "x86_64")]
const READ_SYSCALLS: [&str; 3] = ["0", "45", "47"];
#[cfg(target_arch = "aarch64")]
const READ_SYSCALLS: [&str; 3] = ["63", "207", "212"];

/// True when the server has exactly one thread besides its main one (the one serving the
/// client: the probe connection of `wait_port` is done) and it sleeps in a read-family
/// syscall (`/proc/TID/syscall` starts with its number while the thread is blocked in it).
fn one_thread_blocked_in_read(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let others: Vec<_> = tasks
        .flatten()
        .filter(|t| t.file_name().to_str() != Some(pid.to_string().as_str()))
        .collect();
    others.len() == 1
        && std::fs::read_to_string(others[0].path().join("syscall")).is_ok_and(|s| {
            s.split_whitespace()
                .next()
                .is_some_and(|nr| READ_SYSCALLS.contains(&nr))
        })
}

fn ask(stdin: &mut ChildStdin, stdout: &mut BufReader<ChildStdout>, path: &str) -> String {
    writeln!(stdin, "{path}").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn first_request_on_a_connection_blocked_before_the_agent_started_is_reported() {
    if !can_run() {
        return;
    }
    let Some((server, port)) = python_server(SERVER) else {
        return;
    };
    let mut client = Killed(
        Command::new(PYTHON)
            .args(["-c", CLIENT, &port.to_string(), TRACEPARENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 client"),
    );
    let mut stdin = client.0.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    // The thread serving the client sits in its read before the agent starts.
    let server_pid = server.id();
    for _ in 0..100 {
        if one_thread_blocked_in_read(server_pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        one_thread_blocked_in_read(server_pid),
        "the server thread of the connection is not blocked in a read"
    );

    let agent = Agent::watch(&[]);
    let paths = ["/first", "/second", "/third"];
    for p in paths {
        assert_eq!(ask(&mut stdin, &mut stdout, p), "200");
    }
    let inbound_paths = |l: &[Value]| -> Vec<String> {
        requests(l, |r| r["direction"] == "inbound" && r["pid"] == server_pid)
            .iter()
            .filter_map(|r| r["path"].as_str().map(str::to_string))
            .collect()
    };
    agent.wait_for(Duration::from_secs(10), |l| inbound_paths(l).len() >= 3);
    let lines = agent.stop();

    assert_eq!(
        inbound_paths(&lines),
        paths,
        "every request, the first included, on the server's pid: {lines:#?}"
    );
    for r in requests(&lines, |r| r["pid"] == server_pid) {
        assert_eq!(r["trace_id"], TRACE_ID);
        assert_eq!(r["status"], 200);
        assert_eq!(r["local"], format!("127.0.0.1:{port}"));
    }
    let client_pid = client.0.id();
    let outbound: Vec<_> = requests(&lines, |r| r["pid"] == client_pid);
    assert_eq!(
        outbound.len(),
        3,
        "the client's side of the pre-existing connection: {lines:#?}"
    );
    assert!(outbound.iter().all(|r| r["direction"] == "outbound"));
}
