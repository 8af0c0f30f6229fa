//! The harness itself: every peer a test starts is gone when the test ends, with whatever it
//! forked. One `cargo xtask test` once left 14 nginx workers listening on 127.0.0.1 because
//! the harness SIGKILLed their master, and a worker whose master is gone carries on serving.
//! No agent and no root needed; the nginx test needs nginx (`cargo xtask integration-test`
//! installs it).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use traceid_tests::*;
// The harness library's dependency, not named by this test.
use {serde_json as _, thiserror as _};

/// The state letter of `pid` if it is still the process that started at `start` (clock ticks
/// since boot, field 22 of /proc/PID/stat), so a reused pid does not count.
fn state_of(pid: u32, start: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Field 3 (state) is fields[0], so field 22 (starttime) is fields[19].
    (fields.get(19)?.parse::<u64>().ok()? == start).then(|| fields[0].chars().next())?
}

/// A process as it was when recorded: pid and start time.
fn identity(pid: u32) -> (u32, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("process {pid} is not running: {e}"));
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    (pid, fields[19].parse().unwrap())
}

/// Waits (at most `timeout`) until `pred` holds; returns whether it did.
fn eventually(timeout: Duration, pred: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !pred() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn nginx_is_stopped_with_its_workers_and_its_port_is_free() {
    if Command::new("nginx").arg("-v").output().is_err() {
        skip("nginx is not installed (cargo xtask integration-test installs it)");
        return;
    }
    let nginx = Nginx::start();
    let (port, dir) = (nginx.port, nginx.dir.clone());
    let workers = nginx.worker_pids();
    assert!(!workers.is_empty(), "nginx started without a worker");
    let processes: Vec<(u32, u64)> = std::iter::once(nginx.pid())
        .chain(workers)
        .map(identity)
        .collect();
    // A keep-alive connection is open while nginx stops: a graceful stop would wait for it.
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .write_all(b"GET /api HTTP/1.1\r\nHost: harness\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut client), 200);

    let t = Instant::now();
    drop(nginx);
    let took = t.elapsed();

    for &(pid, start) in &processes {
        assert_eq!(
            state_of(pid, start),
            None,
            "nginx process {pid} survived its Nginx (all: {processes:?})"
        );
    }
    assert!(
        took < Duration::from_secs(5),
        "stopping nginx took {took:?}: it did not stop on SIGTERM"
    );
    let refused = TcpStream::connect(("127.0.0.1", port)).map(|_| ());
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused),
        "something still listens on 127.0.0.1:{port}"
    );
    // nginx closed the kept-alive connection rather than leaving it to a live worker.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = client.read_to_end(&mut rest);
    assert!(
        matches!(&closed, Ok(0))
            || matches!(&closed, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the kept-alive connection was not closed: {closed:?}, {rest:?}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn what_a_peer_forked_and_left_behind_is_killed_with_it() {
    // The shell exits on SIGTERM and orphans its two children: only their process group
    // still ties them to the peer.
    let mut peer = Peer::spawn(
        Command::new("sh").args(["-c", "sleep 300 & sleep 300 & wait"]),
        libc::SIGTERM,
    )
    .expect("sh");
    let group = peer.id();
    assert!(
        eventually(Duration::from_secs(10), || children_of(group).len() == 2),
        "sh did not start its two children: {:?}",
        children_of(group)
    );
    let processes: Vec<(u32, u64)> = std::iter::once(group)
        .chain(children_of(group))
        .map(identity)
        .collect();
    assert_eq!(peer.try_wait().unwrap(), None);

    peer.stop();

    for &(pid, start) in &processes {
        // An orphan's zombie is for init to reap; it runs nothing and holds nothing.
        let state = state_of(pid, start);
        assert!(
            matches!(state, None | Some('Z')),
            "process {pid} of the peer is still running ({state:?}; all: {processes:?})"
        );
    }
    assert_eq!(live_group_members(group as i32), Vec::<u32>::new());
}

#[test]
fn a_peer_is_stopped_when_the_thread_that_started_it_dies_first() {
    // As when the test process is killed or aborts: no Drop runs.
    let pid = std::thread::spawn(|| {
        let peer = Peer::spawn(Command::new("sleep").arg("300"), libc::SIGTERM).expect("sleep");
        let pid = peer.id();
        std::mem::forget(peer);
        pid
    })
    .join()
    .unwrap();
    let (pid, start) = identity(pid);
    let stopped = eventually(Duration::from_secs(5), || {
        matches!(state_of(pid, start), None | Some('Z'))
    });
    let mut status = 0;
    // SAFETY: reaping our own child, whose Child handle was forgotten.
    let reaped = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert!(
        stopped,
        "the peer {pid} outlived the thread that started it"
    );
    assert_eq!(reaped, pid as i32);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM,
        "the peer ended with wait status {status:#x}, not by SIGTERM"
    );
}
