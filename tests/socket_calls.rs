//! How the data hooks treat socket calls beyond plain reads and writes: bytes a process moves
//! with a call whose buffer the kernel side does not read (here `splice` from a pipe) are
//! counted and keep the stream's framing in step, and a peek (`recv(MSG_PEEK)`) is not a
//! second copy of the bytes the next read takes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use traceid_tests::*;
// The harness library's dependency, not named by this test.
use {serde_json as _, thiserror as _};

/// An HTTP/1.1 keep-alive server that peeks at the start of every request before reading it,
/// answering 200 to each.
const PEEKING_SERVER: &str = r#"
import socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = srv.accept()
    while True:
        if not conn.recv(4, socket.MSG_PEEK):
            break
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
        if not head:
            break
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    conn.close()
"#;

const SPLICED_TRACE: &str = "5911ced0000000000000000000000001";
const SENT_TRACE: &str = "5e470000000000000000000000000002";

fn head(path: &str, trace: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01\r\n\r\n")
}

/// Sends `bytes` on `s` through a pipe and splice(2): the socket sees them, the calling
/// process's buffer never holds them.
fn splice_to(s: &TcpStream, bytes: &[u8]) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills the two fds it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: writing our own bytes to the pipe we just made.
    let n = unsafe { libc::write(wr, bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize, "write to the pipe");
    let mut left = bytes.len();
    while left > 0 {
        // SAFETY: both fds are open and ours; null offsets mean "the fds' own positions".
        let n = unsafe {
            libc::splice(
                rd,
                std::ptr::null_mut(),
                s.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        };
        assert!(n > 0, "splice: {}", std::io::Error::last_os_error());
        left -= n as usize;
    }
    // SAFETY: closing the two fds made above, used by nothing else.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
}

fn read_ok(s: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"ok\n") {
        let n = s.read(&mut buf).expect("reading the response");
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn spliced_request_is_counted_and_peeks_are_not_requests() {
    if !can_run() {
        return;
    }
    let Some((server, port)) = python_server(PEEKING_SERVER) else {
        return;
    };
    let agent = Agent::watch(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    splice_to(&s, head("/spliced", SPLICED_TRACE).as_bytes());
    read_ok(&mut s);
    s.write_all(head("/sent", SENT_TRACE).as_bytes()).unwrap();
    read_ok(&mut s);

    let server_pid = server.id();
    let me = std::process::id();
    agent.wait_for(Duration::from_secs(10), |l| {
        requests(l, |r| r["pid"] == server_pid).len() >= 2
            && !requests(l, |r| r["pid"] == me).is_empty()
            && lost_at(l, "kernel_socket_other_call") > 0
    });
    // Whatever came late (a duplicate, say) would have shown by now.
    std::thread::sleep(Duration::from_millis(500));
    let lines = agent.stop();

    // The server read both requests whole, each once: its peeks are not requests.
    let inbound: Vec<(String, String)> = requests(&lines, |r| r["pid"] == server_pid)
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap_or("?").into(),
                r["trace_id"].as_str().unwrap_or("?").into(),
            )
        })
        .collect();
    assert_eq!(
        inbound,
        [
            ("/spliced".to_string(), SPLICED_TRACE.to_string()),
            ("/sent".into(), SENT_TRACE.into())
        ],
        "the server's requests: {lines:#?}"
    );
    assert_eq!(
        inbound.len(),
        2,
        "each request once, peeks not counted: {inbound:?}"
    );

    // The client's spliced head was never in its buffers: counted, not invented; the request
    // it wrote after it is read in step.
    assert!(
        lost_at(&lines, "kernel_socket_other_call") >= 1,
        "the splice is counted: {lines:#?}"
    );
    let outbound = requests(&lines, |r| r["pid"] == me);
    assert!(
        outbound.iter().all(|r| r["trace_id"] != SPLICED_TRACE),
        "nothing the client's buffers did not hold is reported: {outbound:#?}"
    );
    let sent: Vec<_> = outbound.iter().filter(|r| r["path"] == "/sent").collect();
    assert_eq!(sent.len(), 1, "the client's written request: {outbound:#?}");
    assert_eq!(sent[0]["trace_id"], SENT_TRACE);
    assert_eq!(sent[0]["status"], 200);
}
