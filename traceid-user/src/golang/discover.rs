//! Finding the Go programs that run on this host, as the OpenSSL probes find libssl
//! (`capture::tls`): every process's executable through `/proc/<pid>/exe`, which reaches the
//! file in whatever mount namespace (container) the process runs, each file looked at once
//! by (device, inode). The work is bounded (processes listed, files inspected), and what
//! goes wrong with one process is collected, never fatal.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::binary::{GoBinary, InspectError};

/// Processes listed at most.
const MAX_PROCESSES: usize = 100_000;
/// Distinct executables inspected at most.
const MAX_EXECUTABLES: usize = 4096;

/// A Go executable that a running process runs.
#[derive(Debug)]
pub struct RunningGo {
    /// The first process found running it.
    pub pid: u32,
    /// The executable's path as that process sees it (its mount namespace).
    pub path: String,
    /// A path to the same file from this process: `/proc/<pid>/root/<path>` when that is
    /// still the same file, else `/proc/<pid>/exe` (a deleted or replaced file).
    pub host_path: PathBuf,
    /// (device, inode) of the file.
    pub file_id: (u64, u64),
    pub binary: GoBinary,
}

/// What went wrong with one process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("pid {pid}: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid} ({path}): {source}")]
    Inspect {
        pid: u32,
        path: String,
        #[source]
        source: InspectError,
    },
}

/// The Go programs found, and the processes that could not be looked at.
#[derive(Debug, Default)]
pub struct Discovery {
    pub go: Vec<RunningGo>,
    pub errors: Vec<ProcessError>,
    /// Executables not inspected because [`MAX_EXECUTABLES`] was reached.
    pub skipped: usize,
}

/// Looks at every process under `proc` (`/proc`).
pub fn discover(proc: &Path) -> Discovery {
    let mut found = Discovery::default();
    let mut seen = HashSet::new();
    let Ok(dir) = fs::read_dir(proc) else {
        return found;
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .take(MAX_PROCESSES)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        match inspect_process(proc, pid, &mut seen, found.go.len() + found.errors.len()) {
            Ok(Looked::Go(running)) => found.go.push(*running),
            Ok(Looked::NotGo) => {}
            Ok(Looked::OverLimit) => found.skipped += 1,
            Err(e) => found.errors.push(e),
        }
    }
    found
}

enum Looked {
    Go(Box<RunningGo>),
    NotGo,
    OverLimit,
}

fn inspect_process(
    proc: &Path,
    pid: u32,
    seen: &mut HashSet<(u64, u64)>,
    inspected: usize,
) -> Result<Looked, ProcessError> {
    let exe = proc.join(pid.to_string()).join("exe");
    let proc_error = |source: io::Error| ProcessError::Proc { pid, source };
    // Kernel threads have no executable, and a process can exit while we look: neither is
    // worth reporting.
    let gone = |e: &io::Error| {
        e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
    };
    let meta = match fs::metadata(&exe) {
        Ok(meta) => meta,
        Err(e) if gone(&e) => return Ok(Looked::NotGo),
        Err(e) => return Err(proc_error(e)),
    };
    let file_id = (meta.dev(), meta.ino());
    if !seen.insert(file_id) {
        return Ok(Looked::NotGo);
    }
    if inspected >= MAX_EXECUTABLES {
        return Ok(Looked::OverLimit);
    }
    let path = match fs::read_link(&exe) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) if gone(&e) => return Ok(Looked::NotGo),
        Err(e) => return Err(proc_error(e)),
    };
    let binary = match GoBinary::open(&exe) {
        Ok(binary) => binary,
        Err(e) if e.is_not_go() => return Ok(Looked::NotGo),
        Err(InspectError::Io(e)) if gone(&e) => return Ok(Looked::NotGo),
        Err(source) => return Err(ProcessError::Inspect { pid, path, source }),
    };
    let in_root = proc
        .join(pid.to_string())
        .join("root")
        .join(path.trim_start_matches('/'));
    let host_path = match fs::metadata(&in_root) {
        Ok(m) if (m.dev(), m.ino()) == file_id => in_root,
        _ => exe,
    };
    Ok(Looked::Go(Box::new(RunningGo {
        pid,
        path,
        host_path,
        file_id,
        binary,
    })))
}
