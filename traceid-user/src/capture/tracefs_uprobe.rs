//! Uprobes created through tracefs (`uprobe_events`) instead of perf's uprobe PMU.
//!
//! Since the fix for a privilege check in `perf_uprobe_event_init` (Linux 6.14, backported to
//! stable kernels), creating a uprobe through perf's `uprobe` PMU needs CAP_SYS_ADMIN again;
//! CAP_PERFMON no longer suffices. The older way needs less: writing a probe definition to
//! `uprobe_events` is gated by the file's permissions (root, and a writable tracefs), and
//! attaching a program to the resulting trace event takes CAP_PERFMON like any tracepoint.
//! The agent uses this way when perf refuses, so that TLS capture works with the DaemonSet's
//! capabilities.
//!
//! Probe events are named `traceid/p<agent pid>_<n>`, removed when the agent drops them and,
//! for agents that died without cleaning up (kill -9), by the next agent at start.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

/// The trace event group of the agent's probe events.
const GROUP: &str = "traceid";

/// `PERF_TYPE_TRACEPOINT` (`include/uapi/linux/perf_event.h`).
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_SAMPLE_RAW`.
const PERF_SAMPLE_RAW: u64 = 1 << 10;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `PERF_EVENT_IOC_SET_BPF`: `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `PERF_EVENT_IOC_ENABLE`: `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// Bytes of `struct perf_event_attr` passed: `PERF_ATTR_SIZE_VER5`, every field this module
/// sets and the rest zero.
const ATTR_SIZE: usize = 112;

/// Why a probe could not be created through tracefs.
#[derive(thiserror::Error, Debug)]
pub enum TracefsUprobeError {
    #[error("writing {path}: {source}")]
    Define {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the id of probe event {event}: {source}")]
    Id {
        event: String,
        source: std::io::Error,
    },
    #[error("perf_event_open of probe event {event}: {source}")]
    Open {
        event: String,
        source: std::io::Error,
    },
    #[error("attaching the program to probe event {event}: {source}")]
    Attach {
        event: String,
        source: std::io::Error,
    },
}

/// A probe event and the perf event that holds the program on it.
#[derive(Debug)]
struct Probe {
    event: String,
    /// Closing it detaches the program.
    _perf: OwnedFd,
}

/// The probes this agent created through tracefs; dropping it removes them.
#[derive(Debug)]
pub struct TracefsUprobes {
    tracefs: PathBuf,
    probes: Vec<Probe>,
    next: u64,
}

impl TracefsUprobes {
    /// Probes defined in `tracefs` (its root, e.g. `/sys/kernel/tracing`). Removes the probe
    /// events of agents that are no longer running.
    pub fn new(tracefs: &Path) -> TracefsUprobes {
        let probes = TracefsUprobes {
            tracefs: tracefs.to_path_buf(),
            probes: Vec::new(),
            next: 0,
        };
        probes.remove_stale();
        probes
    }

    fn events_file(&self) -> PathBuf {
        self.tracefs.join("uprobe_events")
    }

    /// Defines a probe (a return probe when `ret`) at `offset` in the file at `path` and
    /// attaches the program `prog` to it.
    pub fn attach(
        &mut self,
        prog: BorrowedFd<'_>,
        ret: bool,
        path: &Path,
        offset: u64,
    ) -> Result<(), TracefsUprobeError> {
        let name = format!("p{}_{}", std::process::id(), self.next);
        self.next += 1;
        let event = format!("{GROUP}/{name}");
        let definition = format!(
            "{}:{event} {}:{offset:#x}\n",
            if ret { 'r' } else { 'p' },
            path.display()
        );
        self.write_events(&definition)?;
        let id = fs::read_to_string(
            self.tracefs
                .join("events")
                .join(GROUP)
                .join(&name)
                .join("id"),
        )
        .and_then(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        let result = id
            .map_err(|source| TracefsUprobeError::Id {
                event: event.clone(),
                source,
            })
            .and_then(|id| open_and_attach(&event, id, prog));
        match result {
            Ok(perf) => {
                self.probes.push(Probe { event, _perf: perf });
                Ok(())
            }
            Err(e) => {
                let _ = self.write_events(&format!("-:{event}\n"));
                Err(e)
            }
        }
    }

    fn write_events(&self, line: &str) -> Result<(), TracefsUprobeError> {
        let path = self.events_file();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|source| TracefsUprobeError::Define { path, source })
    }

    /// Removes the probe events of agents that are gone (killed before they could).
    fn remove_stale(&self) {
        let Ok(defined) = fs::read_to_string(self.events_file()) else {
            return;
        };
        for event in stale_events(&defined, super::process_exists) {
            let _ = self.write_events(&format!("-:{event}\n"));
        }
    }
}

impl Drop for TracefsUprobes {
    fn drop(&mut self) {
        // The perf events first: a probe event in use cannot be removed.
        let events: Vec<String> = self.probes.drain(..).map(|p| p.event).collect();
        for event in events {
            if let Err(e) = self.write_events(&format!("-:{event}\n")) {
                tracing::warn!("removing TLS probe event {event}: {e}");
            }
        }
    }
}

/// Events of the agent's group in `uprobe_events` text whose agent pid is not `alive`.
fn stale_events(defined: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    defined
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|head| head.split_once(':').map(|(_, event)| event))
        .filter(|event| {
            event
                .strip_prefix(GROUP)
                .and_then(|rest| rest.strip_prefix("/p"))
                .and_then(|rest| rest.split_once('_'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .map(str::to_string)
        .collect()
}

/// Opens a perf event on trace event `id` and attaches `prog` to it.
fn open_and_attach(
    event: &str,
    id: u64,
    prog: BorrowedFd<'_>,
) -> Result<OwnedFd, TracefsUprobeError> {
    // struct perf_event_attr: type (u32) at 0, size (u32) at 4, config at 8, sample_period
    // at 16, sample_type at 24; everything else zero.
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
    attr[24..32].copy_from_slice(&PERF_SAMPLE_RAW.to_ne_bytes());
    // SAFETY: `attr` is a valid perf_event_attr of ATTR_SIZE bytes that outlives the call;
    // pid -1 with cpu 0 is a system-wide event (a program on a trace event runs on every CPU).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(TracefsUprobeError::Open {
            event: event.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: perf_event_open returned a new file descriptor that nothing else owns.
    let perf = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    for (request, arg) in [
        (PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()),
        (PERF_EVENT_IOC_ENABLE, 0),
    ] {
        // SAFETY: both fds are open for the duration of the call; these requests take an int.
        if unsafe { libc::ioctl(perf.as_raw_fd(), request, arg) } != 0 {
            return Err(TracefsUprobeError::Attach {
                event: event.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(perf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_of_dead_agents_are_stale() {
        let defined = "p:traceid/p100_0 /usr/lib/libssl.so.3:0x3a2f0\n\
                       r:traceid/p100_1 /usr/lib/libssl.so.3:0x3a2f0\n\
                       p:traceid/p200_0 /usr/lib/libssl.so.3:0x3a2f0\n\
                       p:uprobes/p100_0 /bin/bash:0x100\n\
                       p:traceid/other /bin/bash:0x100\n";
        assert_eq!(
            stale_events(defined, |pid| pid == 200),
            ["traceid/p100_0", "traceid/p100_1"]
        );
        assert!(stale_events("", |_| false).is_empty());
    }
}
