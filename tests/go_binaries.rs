//! `traceid check` on running Go servers built here by Debian's Go, normally and stripped
//! (`-ldflags=-s -w`): each is listed with its Go version, and each probed function with as
//! many RET sites as `go tool objdump` prints RET instructions.
//!
//! Run by `cargo xtask integration-test` (which installs golang-go); without `go` or the
//! agent binary the test says why it skips, and fails under CI=true.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use traceid_tests::*;
// The harness crate's dependencies, not named by this test.
use {serde_json as _, thiserror as _};

/// The functions `traceid check` reports, and whether their returns are probed.
const PROBED: &[(&str, bool)] = &[
    ("net/http.serverHandler.ServeHTTP", true),
    ("net/http.(*Transport).roundTrip", true),
    ("runtime.newproc1", true),
    ("net/http.(*conn).serve", false),
    ("net/http.(*persistConn).roundTrip", false),
    ("crypto/tls.(*Conn).Write", false),
    ("crypto/tls.(*Conn).Read", true),
];

fn go(args: &[&str]) -> Option<String> {
    let out = Command::new("go")
        .args(args)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    assert!(out.status.success(), "go {args:?} failed");
    Some(String::from_utf8(out.stdout).unwrap())
}

/// Builds tests/services/go-inspect/server.go into `dir` with `flags`.
fn build(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/go-inspect/server.go");
    go_build(&source, &out, &dir.join("gopath"), flags);
    out
}

/// How many RET instructions `go tool objdump` prints for `function` in `binary`.
fn objdump_ret_count(binary: &Path, function: &str) -> usize {
    let pattern: String = function
        .chars()
        .flat_map(|c| match c {
            '(' | ')' | '*' | '.' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let listing = go(&[
        "tool",
        "objdump",
        "-s",
        &format!("^{pattern}$"),
        binary.to_str().unwrap(),
    ])
    .unwrap();
    assert!(listing.starts_with("TEXT "), "objdump found no {function}");
    listing
        .lines()
        .filter(|l| {
            l.split('\t')
                .filter(|f| !f.is_empty())
                .nth(3)
                .is_some_and(|asm| asm.starts_with("RET"))
        })
        .count()
}

fn start_server(binary: &Path) -> (Peer, u16) {
    let port = free_port();
    let mut server = Peer::spawn(
        Command::new(binary)
            .arg(port.to_string())
            .stdout(Stdio::null()),
        libc::SIGTERM,
    )
    .expect("spawning the Go server");
    server
        .wait_listening("go server", port, Duration::from_secs(20))
        .expect("Go server listening");
    (server, port)
}

/// `traceid check`'s stdout, bounded to 20 s.
fn check(bin: &Path) -> String {
    let mut child = Command::new(bin)
        .arg("check")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning traceid check");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("traceid check still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn check_lists_running_go_servers_normal_and_stripped() {
    let bin = traceid_bin();
    if !bin.exists() {
        skip(&format!(
            "{} not built: run `cargo xtask integration-test`",
            bin.display()
        ));
        return;
    }
    let Some(version) = go(&["env", "GOVERSION"]) else {
        skip("`go` is missing (Debian golang-go)");
        return;
    };
    let version = version.trim();
    let dir = std::env::temp_dir().join(format!("traceid-go-binaries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let normal = build(&dir, "go-inspect-server", &[]);
    let stripped = build(&dir, "go-inspect-server-stripped", &["-ldflags=-s -w"]);
    let expected: String = PROBED
        .iter()
        .map(|&(name, returns)| {
            if returns {
                let n = objdump_ret_count(&normal, name);
                assert!(n > 0, "{name} has no RET");
                format!("{name} ({n} RET site{})", if n == 1 { "" } else { "s" })
            } else {
                format!("{name} (entry)")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");

    let (mut normal_server, _) = start_server(&normal);
    let (mut stripped_server, _) = start_server(&stripped);
    let report = check(&bin);
    normal_server.stop();
    stripped_server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{report}");

    for (path, pid) in [
        (&normal, normal_server.id()),
        (&stripped, stripped_server.id()),
    ] {
        let line = format!(
            "ok       go program           {} (pid {pid}, {version}, command-line-arguments): located {expected}",
            path.display()
        );
        assert!(
            report.lines().any(|l| l == line),
            "no line\n{line}\nin\n{report}"
        );
    }
    let summary = report
        .lines()
        .find(|l| l.starts_with("ok       go programs "))
        .expect("a go programs line");
    assert!(summary.contains("running,"), "{summary}");
}
