//! The `traceid` binary's answers to odd inputs: `replay` of a directory, of a FIFO nobody
//! writes to, of a recording without records, of a recording from an older version, and
//! `check` run by an unprivileged user.
//!
//! Run by `cargo xtask integration-test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use traceid_tests::*;
// The harness crate's dependencies, not named by this test.
use {serde_json as _, thiserror as _};

/// The agent binary, or None after saying why the test skips.
fn bin() -> Option<PathBuf> {
    let bin = traceid_bin();
    if bin.exists() {
        return Some(bin);
    }
    skip(&format!(
        "{} not built: run `cargo xtask integration-test`",
        bin.display()
    ));
    None
}

/// A scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("traceid-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd` to its end, failing the test when it takes longer than 10 s.
fn run_bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning traceid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn replay(bin: &Path, file: &Path) -> (bool, String, String) {
    let out = run_bounded(Command::new(bin).arg("replay").arg(file));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A recording file header: magic, version, redaction flags, clock offset.
fn header(version: u32, flags: u32) -> Vec<u8> {
    let mut h = b"TRACEID\0".to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&0i64.to_le_bytes());
    h
}

#[test]
fn replay_of_a_directory_says_so_once() {
    let Some(bin) = bin() else { return };
    let dir = scratch("dir");
    let (ok, stdout, stderr) = replay(&bin, &dir);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "traceid: error: {} is a directory: replay reads a recording file written by `traceid record`\n",
            dir.display()
        )
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn replay_of_a_fifo_without_writer_does_not_wait_for_one() {
    let Some(bin) = bin() else { return };
    let dir = scratch("fifo");
    let fifo = dir.join("rec.traceid");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (ok, _, stderr) = replay(&bin, &fifo);
    assert!(!ok);
    assert!(stderr.contains("is a FIFO"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn replay_of_a_recording_without_records_says_so() {
    let Some(bin) = bin() else { return };
    let dir = scratch("empty");
    let file = dir.join("empty.traceid");
    std::fs::write(&file, header(2, 7)).unwrap();
    let (ok, stdout, stderr) = replay(&bin, &file);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "traceid: {}: no records (the recording holds only its header)\n",
            file.display()
        )
    );

    // A version 1 file still replays, with a warning about what its writer left unmasked;
    // so does a version 2 file written before HTTP/2 header blocks were masked.
    std::fs::write(&file, header(1, 0)).unwrap();
    let (ok, _, stderr) = replay(&bin, &file);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("written by an older traceid (format version 1): secret header values split across writes, query strings and secret header values and queries in HTTP/2 header blocks were not masked in it"),
        "{stderr}"
    );
    std::fs::write(&file, header(2, 3)).unwrap();
    let (ok, _, stderr) = replay(&bin, &file);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("written by an older traceid (format version 2): secret header values and queries in HTTP/2 header blocks were not masked in it"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_unprivileged_tells_unreadable_tracefs_from_unmounted() {
    let Some(bin) = bin() else { return };
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root: cannot switch to an unprivileged user");
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(at) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"tracefs")).then(|| f[1].to_string())
    }) else {
        skip("tracefs is not mounted here");
        return;
    };
    let out = run_bounded(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("check"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("tracefs"))
        .unwrap_or_else(|| panic!("no tracefs line: {stdout}"));
    assert!(
        line.contains(&format!("mounted at {at} but not readable by this user")),
        "{line}"
    );
    assert!(!out.status.success(), "unprivileged check must exit 1");
}
