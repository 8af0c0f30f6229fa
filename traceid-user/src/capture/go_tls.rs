//! Attaching the crypto/tls probes (`traceid-ebpf/src/go_tls.rs`) to Go programs.
//!
//! The OpenSSL attacher ([`super::tls`]) looks at every process at start-up and after each
//! exec; it hands each process to [`GoTlsAttacher::scan_pid`] too. A Go executable is
//! inspected once per file (device, inode): `crypto/tls.(*Conn).Write` and `Read` located
//! through the function table (stripped binaries too), `Read`'s RET instructions decoded
//! ([`crate::golang`]), and probes attached at those file offsets: `Write` and `Read` at
//! entry, plain uprobes on each RET of `Read` (never uretprobes: they crash Go programs).
//! Every process running an instrumented file gets its offsets in the kernel's
//! `GO_TLS_PROCS` table, from the executable's DWARF when it has it, else from its Go
//! version ([`offsets_for`]); the probes skip a process without an entry.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use aya::maps::HashMap as BpfHashMap;
use aya::Ebpf;
use traceid_common::GoTlsOffsets;

use super::tracefs_uprobe::TracefsUprobes;
use crate::golang::buildinfo::major_minor;
use crate::golang::dwarf::{DwarfError, StructLayouts};
use crate::golang::offsets::{prefer_dwarf, OffsetsSource};
use crate::golang::{self, GoBinary, Probe};

/// Probe programs: `Write` at entry, `Read` at entry and at each RET.
const WRITE_ENTER: &str = "go_tls_write_enter";
const READ_ENTER: &str = "go_tls_read_enter";
const READ_RETURN: &str = "go_tls_read_return";
const PROGRAMS: [&str; 3] = [WRITE_ENTER, READ_ENTER, READ_RETURN];

const WRITE_FUNCTION: &str = "crypto/tls.(*Conn).Write";
const READ_FUNCTION: &str = "crypto/tls.(*Conn).Read";

/// The kernel's table of per-process offsets.
const PROCS_MAP: &str = "GO_TLS_PROCS";

/// Executables remembered at most (as `golang::discover` inspects at most).
const MAX_FILES: usize = 4096;

/// Names of the `*net.TCPConn` implementation of `net.Conn` in the symbol table: Go 1.20
/// renamed the `go.` prefix of linker-made symbols to `go:`.
const TCP_CONN_ITAB_SYMBOLS: [&str; 2] = [
    "go:itab.*net.TCPConn,net.Conn",
    "go.itab.*net.TCPConn,net.Conn",
];

/// A Go executable the crypto/tls probes are attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTlsTarget {
    /// Path as the first process found running it sees it.
    pub path: String,
    pub pid: u32,
    pub go_version: String,
    /// RET instructions of `(*Conn).Read` probed.
    pub read_returns: usize,
}

/// Why a Go executable's TLS is not decoded.
#[derive(Debug, thiserror::Error)]
pub enum GoTlsError {
    #[error("{0}")]
    Inspect(#[from] golang::InspectError),
    #[error("cannot instrument: {0}")]
    Cannot(#[from] golang::CannotInstrument),
    #[error("{function}: {why}")]
    Function { function: &'static str, why: String },
    #[error("no offsets for {go_version}: not in the table of Go 1.17 to 1.26, and not in the DWARF: {dwarf}")]
    UnknownVersion {
        go_version: String,
        dwarf: DwarfError,
    },
    #[error("attaching {what}: {why}")]
    Attach { what: String, why: String },
}

/// Where the probes of one executable go, as file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sites {
    write_entry: u64,
    read_entry: u64,
    read_returns: Vec<u64>,
}

#[derive(Default)]
pub struct GoTlsAttacher {
    loaded: bool,
    /// Executables looked at, by (device, inode): their processes' offsets when the probes
    /// are attached to them, None when they are not Go or cannot be instrumented.
    files: HashMap<(u64, u64), Option<GoTlsOffsets>>,
    pub attached: Vec<GoTlsTarget>,
    /// Go executables whose TLS is not decoded, with why (reported, never fatal).
    pub failed: HashMap<String, String>,
}

impl GoTlsAttacher {
    /// Loads the probe programs into the kernel (once).
    pub fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        super::uprobes::load(ebpf, PROGRAMS)?;
        self.loaded = true;
        Ok(())
    }

    /// Looks at the executable of `pid`: attaches the probes to it the first time it is a Go
    /// program, and tells the kernel the process's offsets. `tracefs` is the OpenSSL
    /// attacher's: set once perf refused a uprobe, every probe then goes through tracefs.
    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32, tracefs: &mut Option<TracefsUprobes>) {
        if !self.loaded {
            return;
        }
        let exe = format!("/proc/{pid}/exe");
        let Ok(meta) = fs::metadata(&exe) else {
            return;
        };
        let id = (meta.dev(), meta.ino());
        if !self.files.contains_key(&id) && self.files.len() >= MAX_FILES {
            // Forget the files that are not instrumented (looked at again if run again);
            // the instrumented ones keep their probes, so they stay.
            self.files.retain(|_, offsets| offsets.is_some());
        }
        let offsets = match self.files.get(&id) {
            Some(known) => *known,
            None if self.files.len() >= MAX_FILES => None,
            None => {
                let offsets = self.instrument(ebpf, pid, Path::new(&exe), tracefs);
                self.files.insert(id, offsets);
                offsets
            }
        };
        let Some(map) = ebpf.map_mut(PROCS_MAP) else {
            return;
        };
        let Ok(mut procs) = BpfHashMap::<_, u32, GoTlsOffsets>::try_from(map) else {
            return;
        };
        // A pid that exec'd something else keeps no stale offsets.
        let result = match offsets {
            Some(offsets) => procs.insert(pid, offsets, 0),
            None => procs.remove(&pid),
        };
        match (offsets, result) {
            (Some(_), Err(e)) => tracing::warn!("Go TLS probes: pid {pid} not registered: {e}"),
            // The moment from which the process's HTTPS is seen (tests wait for it).
            (Some(_), Ok(())) => tracing::debug!("Go TLS probes: pid {pid} registered"),
            _ => {}
        }
    }

    /// Inspects a new executable and attaches the probes to it; its processes' offsets on
    /// success. Not Go: None, silently; Go but not instrumentable: None, reported.
    fn instrument(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        exe: &Path,
        tracefs: &mut Option<TracefsUprobes>,
    ) -> Option<GoTlsOffsets> {
        let binary = match GoBinary::open(exe) {
            Ok(binary) => binary,
            Err(e) if e.is_not_go() => return None,
            Err(e) => {
                self.fail(pid, exe, GoTlsError::Inspect(e));
                return None;
            }
        };
        let go_version = binary.build_info().go_version.clone();
        let prepared = offsets_for(&binary, exe)
            .and_then(|offsets| Ok((offsets, sites(&binary)?)))
            .and_then(|(offsets, sites)| {
                attach(ebpf, exe, &sites, tracefs)?;
                Ok((offsets, sites))
            });
        match prepared {
            Ok(((offsets, offsets_from), sites)) => {
                let path = shown_path(exe);
                tracing::info!(
                    "Go TLS probes attached to {path} (pid {pid}, {go_version}, offsets from its {offsets_from}): {} RET sites of {READ_FUNCTION}",
                    sites.read_returns.len()
                );
                self.attached.push(GoTlsTarget {
                    path,
                    pid,
                    go_version,
                    read_returns: sites.read_returns.len(),
                });
                Some(offsets)
            }
            Err(e) => {
                self.fail(pid, exe, e);
                None
            }
        }
    }

    fn fail(&mut self, pid: u32, exe: &Path, e: GoTlsError) {
        let path = shown_path(exe);
        tracing::warn!(
            "Go TLS probes not attached to {path} (pid {pid}): its HTTPS is not seen: {e}"
        );
        self.failed.insert(path, e.to_string());
    }
}

/// The executable's path as its process names it, else the `/proc` link.
fn shown_path(exe: &Path) -> String {
    fs::read_link(exe).map_or_else(|_| exe.display().to_string(), |p| p.display().to_string())
}

/// The file offsets of the probes in `binary`.
fn sites(binary: &GoBinary) -> Result<Sites, GoTlsError> {
    let plan = golang::plan(binary)?;
    let located = |function: &'static str| {
        let (_, sites) = plan
            .functions
            .iter()
            .find(|(name, _)| *name == function)
            .ok_or(GoTlsError::Function {
                function,
                why: "not probed".to_string(),
            })?;
        sites.as_ref().map_err(|e| GoTlsError::Function {
            function,
            why: e.to_string(),
        })
    };
    let write = located(WRITE_FUNCTION)?;
    let read = located(READ_FUNCTION)?;
    // Without its returns, Read's plaintext is never seen.
    if read.probe != Probe::EntryAndReturns || read.ret_offsets.is_empty() {
        return Err(GoTlsError::Function {
            function: READ_FUNCTION,
            why: "no RET site located".to_string(),
        });
    }
    Ok(Sites {
        write_entry: write.entry_offset,
        read_entry: read.entry_offset,
        read_returns: read.ret_offsets.clone(),
    })
}

/// `runtime.g.goid` by Go version: Go 1.23 added `g.syscallbp` before it, Go 1.25 removed
/// `gobuf.ret` (a word of `g.sched`, before it too).
fn goid_offset(go_version: &str) -> Option<u32> {
    match major_minor(go_version)? {
        (1, 17..=22) => Some(152),
        (1, 23..=24) => Some(160),
        (1, 25..=26) => Some(152),
        _ => None,
    }
}

/// The structures [`GoTlsOffsets`] are read from in the DWARF.
const DWARF_STRUCTS: &[&str] = &[
    "runtime.g",
    "crypto/tls.Conn",
    "net.TCPConn",
    "net.conn",
    "net.netFD",
    "internal/poll.FD",
];

/// The offsets from the DWARF of the executable at `exe` (its `*net.TCPConn` itab left 0):
/// every member's type is checked, so a layout where one of them became something else is
/// refused rather than read.
fn dwarf_offsets(exe: &Path) -> Result<GoTlsOffsets, DwarfError> {
    let layouts = StructLayouts::read(exe, DWARF_STRUCTS)?;
    Ok(GoTlsOffsets {
        g_goid: layouts.offset(&[("runtime.g", "goid", "int64")])?,
        tls_conn_conn: layouts.offset(&[("crypto/tls.Conn", "conn", "net.Conn")])?,
        tcp_conn_fd: layouts.offset(&[
            ("net.TCPConn", "conn", "net.conn"),
            ("net.conn", "fd", "*net.netFD"),
        ])?,
        netfd_sysfd: layouts.offset(&[
            ("net.netFD", "pfd", "internal/poll.FD"),
            ("internal/poll.FD", "Sysfd", "int"),
        ])?,
        tcp_conn_itab: 0,
    })
}

/// The offsets by Go version (the `*net.TCPConn` itab left 0): `tls.Conn.conn` is the
/// struct's first field, `*net.TCPConn`'s `*netFD` its first word, and `poll.FD.Sysfd`
/// follows the 16-byte `fdMutex` at the start of `netFD.pfd`: the same from Go 1.17 to 1.26
/// (checked on Debian's go1.19.8, docs/go.md); `goid` by [`goid_offset`].
fn table_offsets(go_version: &str) -> Option<GoTlsOffsets> {
    Some(GoTlsOffsets {
        g_goid: goid_offset(go_version)?,
        tls_conn_conn: 0,
        tcp_conn_fd: 0,
        netfd_sysfd: 16,
        tcp_conn_itab: 0,
    })
}

/// The offsets the probes read a process of `binary` with, and where they come from: its
/// DWARF when it has it, else its Go version ([`prefer_dwarf`]). The `*net.TCPConn` itab is
/// read from the symbol table of a fixed-address executable; a stripped or
/// position-independent one leaves it 0 (unchecked).
pub fn offsets_for(
    binary: &GoBinary,
    exe: &Path,
) -> Result<(GoTlsOffsets, OffsetsSource), GoTlsError> {
    let go_version = &binary.build_info().go_version;
    let (offsets, source) = prefer_dwarf(
        "Go crypto/tls",
        exe,
        dwarf_offsets(exe),
        table_offsets(go_version),
    )
    .map_err(|dwarf| GoTlsError::UnknownVersion {
        go_version: go_version.clone(),
        dwarf,
    })?;
    let with_itab = GoTlsOffsets {
        tcp_conn_itab: tcp_conn_itab(exe).unwrap_or(0),
        ..offsets
    };
    Ok((with_itab, source))
}

/// The address of the `*net.TCPConn` itab for `net.Conn`, when the executable is loaded at
/// the addresses it was linked at (not position-independent) and keeps its symbol table.
fn tcp_conn_itab(exe: &Path) -> Option<u64> {
    use object::{Object, ObjectKind, ObjectSymbol};
    let data = object::read::ReadCache::new(fs::File::open(exe).ok()?);
    let file = object::File::parse(&data).ok()?;
    if file.kind() != ObjectKind::Executable {
        return None;
    }
    let address = file
        .symbols()
        .find(|s| s.name().is_ok_and(|n| TCP_CONN_ITAB_SYMBOLS.contains(&n)))?
        .address();
    (address != 0).then_some(address)
}

/// Attaches the three programs at their sites in the file at `exe`.
fn attach(
    ebpf: &mut Ebpf,
    exe: &Path,
    sites: &Sites,
    tracefs: &mut Option<TracefsUprobes>,
) -> Result<(), GoTlsError> {
    let placements = [
        (WRITE_ENTER, sites.write_entry),
        (READ_ENTER, sites.read_entry),
    ]
    .into_iter()
    .chain(sites.read_returns.iter().map(|&at| (READ_RETURN, at)));
    for (name, offset) in placements {
        let failed = |why: String| GoTlsError::Attach {
            what: format!("{name} at {offset:#x}"),
            why,
        };
        super::uprobes::attach_at(ebpf, name, exe, offset, tracefs, "Go TLS probes")
            .map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    /// tests/services/go-tls/server.go built normally and stripped (`-ldflags=-s -w`); None
    /// after saying why when `go` is missing (a failure under CI=true).
    fn built() -> Option<(PathBuf, PathBuf)> {
        if !crate::golang::tests::go_present() {
            return None;
        }
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/services/go-tls/server.go");
        let dir = std::env::temp_dir().join(format!("traceid-go-tls-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let build =
            |out: &str, flags: &[&str]| crate::golang::tests::go_build(&dir, &source, out, flags);
        Some((
            build("server", &[]),
            build("server-stripped", &["-ldflags=-s -w"]),
        ))
    }

    /// The address `go tool nm` gives the `*net.TCPConn` itab of `binary`.
    fn nm_itab(binary: &Path) -> u64 {
        let out = Command::new("go")
            .args(["tool", "nm"])
            .arg(binary)
            .output()
            .unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        let line = listing
            .lines()
            .find(|l| {
                TCP_CONN_ITAB_SYMBOLS
                    .iter()
                    .any(|s| l.ends_with(&format!(" {s}")))
            })
            .expect("go tool nm lists the itab");
        u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
    }

    #[test]
    fn offsets_and_sites_of_real_normal_and_stripped_binaries() {
        let Some((normal, stripped)) = built() else {
            return;
        };
        let normal_binary = GoBinary::open(&normal).unwrap();
        let stripped_binary = GoBinary::open(&stripped).unwrap();
        let (with_symbols, source) = offsets_for(&normal_binary, &normal).unwrap();
        assert_eq!(source, OffsetsSource::Dwarf);
        assert_eq!(with_symbols.tcp_conn_itab, nm_itab(&normal));
        assert_ne!(with_symbols.tcp_conn_itab, 0);
        // Stripped: the same offsets, the itab unknown (unchecked).
        let (without, source) = offsets_for(&stripped_binary, &stripped).unwrap();
        assert_eq!(source, OffsetsSource::VersionTable);
        assert_eq!(
            without,
            GoTlsOffsets {
                tcp_conn_itab: 0,
                ..with_symbols
            }
        );
        // The unstripped binary's offsets are its DWARF's, the stripped one's the table's:
        // the same values where the table knows the version (a 1.19 toolchain here).
        let go_version = &normal_binary.build_info().go_version;
        let from_dwarf = dwarf_offsets(&normal).unwrap();
        assert_eq!(
            with_symbols,
            GoTlsOffsets {
                tcp_conn_itab: with_symbols.tcp_conn_itab,
                ..from_dwarf
            }
        );
        assert!(matches!(dwarf_offsets(&stripped), Err(DwarfError::Absent)));
        match table_offsets(go_version) {
            Some(table) => assert_eq!(from_dwarf, table),
            None => eprintln!("{go_version} is not in the table: DWARF read, not compared"),
        }
        // Both binaries have the same code: the same probe sites.
        let sites_normal = sites(&normal_binary).unwrap();
        assert!(!sites_normal.read_returns.is_empty());
        assert_ne!(sites_normal.write_entry, sites_normal.read_entry);
        assert_eq!(sites(&stripped_binary).unwrap(), sites_normal);
        let _ = fs::remove_dir_all(normal.parent().unwrap());
    }

    #[test]
    fn goid_offset_follows_the_runtime_g_layout_of_each_version() {
        assert_eq!(goid_offset("go1.17"), Some(152));
        assert_eq!(goid_offset("go1.19.8"), Some(152));
        assert_eq!(goid_offset("go1.22.12"), Some(152));
        assert_eq!(goid_offset("go1.23.0"), Some(160));
        assert_eq!(goid_offset("go1.24.4"), Some(160));
        assert_eq!(goid_offset("go1.25.1"), Some(152));
        assert_eq!(goid_offset("devel go1.26-abcdef Tue"), Some(152));
        // Unknown layouts are refused, never guessed.
        assert_eq!(goid_offset("go1.16.15"), None);
        assert_eq!(goid_offset("go1.27"), None);
        assert_eq!(goid_offset("go2.0"), None);
        assert_eq!(goid_offset("gccgo"), None);
    }
}
