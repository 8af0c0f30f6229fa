//! Attaching the Go probes (kernel side: traceid-ebpf `go.rs`) to Go programs, found as the
//! OpenSSL probes find their files: at start-up and at exec, through [`super::tls`].
//!
//! Each executable is inspected once, by (device, inode): its functions are located through
//! its function table ([`crate::golang::plan`]), and its struct offsets come from its DWARF
//! when it has it, else from the table of verified Go versions ([`crate::golang::offsets`]).
//! Every process that runs an instrumented executable gets its offsets in the kernel's
//! `GO_PROCS` table, by pid: the probes ignore a process without them.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::maps::HashMap as BpfHashMap;
use aya::Ebpf;
use traceid_common::GoOffsets;

use super::tracefs_uprobe::TracefsUprobes;
use crate::golang::{self, GoBinary};

/// (program, function, where): the Go probes. Programs at `Returns` are plain uprobes on each
/// RET instruction of the function.
const PROBES: &[(&str, &str, Site)] = &[
    ("go_http_serve", "net/http.(*conn).serve", Site::Entry),
    (
        "go_http_round_trip",
        "net/http.(*persistConn).roundTrip",
        Site::Entry,
    ),
    ("go_newproc_enter", "runtime.newproc1", Site::Entry),
    ("go_newproc_return", "runtime.newproc1", Site::Returns),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    Entry,
    Returns,
}

/// A Go executable the probes are attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTarget {
    /// Path as the first process found running it sees it.
    pub path: String,
    pub pid: u32,
    pub go_version: String,
}

#[derive(Default)]
pub struct GoAttacher {
    loaded: bool,
    /// Executables looked at, by (device, inode): the offsets of the instrumented ones.
    files: HashMap<(u64, u64), Option<GoOffsets>>,
    pub attached: Vec<GoTarget>,
}

impl GoAttacher {
    /// Loads the Go probe programs into the kernel (once).
    pub fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        super::uprobes::load(ebpf, PROBES.iter().map(|p| p.0))?;
        self.loaded = true;
        Ok(())
    }

    /// Looks at the executable of `pid`: attaches the probes to it the first time it is seen,
    /// and tells the kernel the offsets for this process (or forgets the pid when its
    /// executable is not an instrumentable Go program: the pid may have been reused).
    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32, tracefs: &mut Option<TracefsUprobes>) {
        if !self.loaded {
            return;
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(meta) = fs::metadata(&exe) else {
            return;
        };
        let id = (meta.dev(), meta.ino());
        let offsets = match self.files.get(&id) {
            Some(known) => *known,
            None => {
                let offsets = self.attach_file(ebpf, pid, &exe, tracefs);
                self.files.insert(id, offsets);
                offsets
            }
        };
        let Some(map) = ebpf.map_mut("GO_PROCS") else {
            return;
        };
        let Ok(mut table) = BpfHashMap::<_, u32, GoOffsets>::try_from(map) else {
            return;
        };
        match offsets {
            Some(offsets) => {
                let mut inserted = table.insert(pid, offsets, 0);
                if inserted.is_err() {
                    // Full of processes that have exited: forget those, then try again.
                    let dead: Vec<u32> = table
                        .keys()
                        .flatten()
                        .filter(|&p| !super::process_exists(p))
                        .collect();
                    for p in dead {
                        let _ = table.remove(&p);
                    }
                    inserted = table.insert(pid, offsets, 0);
                }
                match inserted {
                    // The moment from which the process's calls are linked (tests wait for it).
                    Ok(()) => tracing::debug!("Go probes: pid {pid} registered"),
                    Err(e) => {
                        tracing::warn!("Go probes: pid {pid} not instrumented: GO_PROCS: {e}")
                    }
                }
            }
            None => {
                let _ = table.remove(&pid);
            }
        }
    }

    /// Attaches the probes to the Go executable `exe` (the process's `/proc/<pid>/exe`);
    /// returns its offsets when it is instrumented, None when it is not Go or cannot be.
    fn attach_file(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        exe: &Path,
        tracefs: &mut Option<TracefsUprobes>,
    ) -> Option<GoOffsets> {
        let binary = GoBinary::open(exe).ok()?;
        let shown = fs::read_link(exe)
            .map_or_else(|_| exe.display().to_string(), |p| p.display().to_string());
        let go_version = binary.build_info().go_version.clone();
        let plan = match golang::plan(&binary) {
            Ok(plan) => plan,
            Err(e) => {
                self.refuse(Severity::Warn, shown, e.to_string());
                return None;
            }
        };
        // Every probe or none: a link needs the serving, the asking and the spawning side.
        let mut sites = Vec::new();
        for &(program, function, site) in PROBES {
            let Some(located) = plan.located().find(|s| s.function == function) else {
                // A Go program without an HTTP server or client (the go tool itself, most
                // command-line tools) has nothing to link: not a problem worth a warning.
                self.refuse(Severity::Info, shown, format!("{function} not located"));
                return None;
            };
            match site {
                Site::Entry => sites.push((program, located.entry_offset)),
                Site::Returns => sites.extend(located.ret_offsets.iter().map(|&o| (program, o))),
            }
        }
        // Read after the functions are located: reading the DWARF is most of the look, and
        // most Go programs (clients, tools) stop at a function not located.
        let (offsets, offsets_from) = match golang::offsets::for_binary(exe, &go_version) {
            Ok(found) => found,
            Err(e) => {
                self.refuse(Severity::Warn, shown, e.to_string());
                return None;
            }
        };
        for (program, offset) in sites {
            if let Err(e) =
                super::uprobes::attach_at(ebpf, program, exe, offset, tracefs, "Go probes")
            {
                self.refuse(
                    Severity::Warn,
                    shown,
                    format!("{program} at {offset:#x}: {e}"),
                );
                return None;
            }
        }
        tracing::info!(
            "Go probes attached to {shown} (pid {pid}, {go_version}, offsets from its {offsets_from})"
        );
        self.attached.push(GoTarget {
            path: shown,
            pid,
            go_version,
        });
        Some(offsets)
    }

    fn refuse(&self, severity: Severity, shown: String, reason: String) {
        match severity {
            Severity::Info => tracing::info!("Go probes not attached to {shown}: {reason}"),
            Severity::Warn => tracing::warn!(
                "Go probes not attached to {shown}: its calls are linked by the other rules: {reason}"
            ),
        }
    }
}

/// How loudly a Go program left without probes is reported.
enum Severity {
    /// Nothing to link in it.
    Info,
    /// Its calls could have been linked exactly.
    Warn,
}
