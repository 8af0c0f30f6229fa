//! Finding OpenSSL in running processes and attaching the TLS probes to it.
//!
//! Candidates: every `libssl.so*` a process maps, and executables that export `SSL_write`
//! themselves (OpenSSL linked statically). Files are reached through `/proc/<pid>/root` so
//! processes in containers are covered, and each file is attached once, keyed by
//! (device, inode). Processes started later are found through `sched_process_exec`: the agent
//! looks at a new process shortly after exec, once its loader has mapped its libraries.
//!
//! Probes are created through perf's uprobe PMU; where the kernel refuses that without
//! CAP_SYS_ADMIN (Linux 6.14 and stable kernels with the same fix), through tracefs instead
//! ([`super::tracefs_uprobe`]), which the DaemonSet's capabilities allow.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::{uprobe::UProbeScope, UProbe};
use aya::Ebpf;

use super::tracefs_uprobe::TracefsUprobes;

/// (program, symbol): entry and return probes for each OpenSSL call.
pub const PROBES: &[(&str, &str)] = &[
    ("ssl_read_enter", "SSL_read"),
    ("ssl_read_exit", "SSL_read"),
    ("ssl_write_enter", "SSL_write"),
    ("ssl_write_exit", "SSL_write"),
    ("ssl_read_ex_enter", "SSL_read_ex"),
    ("ssl_read_ex_exit", "SSL_read_ex"),
    ("ssl_write_ex_enter", "SSL_write_ex"),
    ("ssl_write_ex_exit", "SSL_write_ex"),
];

/// Executables larger than this are not searched for a static OpenSSL.
const MAX_EXE_BYTES: u64 = 512 * 1024 * 1024;
/// When to look at a process after its exec: at once for what the executable itself holds
/// (Go's crypto/tls, a static OpenSSL: a client may send its first request within
/// milliseconds); the loader maps libraries within milliseconds; a later look catches
/// libraries loaded with dlopen (Python's _ssl). A file already inspected costs a later look
/// a read of the process's maps, nothing more.
const EXEC_DELAYS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(2),
];
/// Pending looks kept at most (an exec storm cannot grow it without bound).
const MAX_PENDING: usize = 4096;

/// A library or executable the probes are attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    /// Path as the process sees it.
    pub path: String,
    /// First pid it was found in.
    pub pid: u32,
    /// Symbols attached.
    pub symbols: Vec<&'static str>,
}

#[derive(Default)]
pub struct TlsAttacher {
    loaded: bool,
    seen_files: HashSet<(u64, u64)>,
    seen_exes: HashSet<(u64, u64)>,
    pending: Vec<(Instant, u32)>,
    pub attached: Vec<TlsTarget>,
    /// Files whose attachment failed, with the reason (reported, never fatal).
    pub failed: HashMap<String, String>,
    /// Set once perf refused to create a uprobe: every later probe goes through tracefs.
    via_tracefs: Option<TracefsUprobes>,
    /// The Go probes (goroutine linking), attached to the Go programs the same looks find.
    pub go: super::go::GoAttacher,
    /// Go programs' crypto/tls probes, looked for in the same processes at the same moments.
    pub go_tls: super::go_tls::GoTlsAttacher,
}

impl TlsAttacher {
    /// Loads the probe programs into the kernel (once).
    pub fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        super::uprobes::load(ebpf, PROBES.iter().map(|p| p.0))?;
        self.loaded = true;
        Ok(())
    }

    /// Loads the Go probe programs into the kernel (once); see [`super::go`].
    pub fn load_go(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        self.go.load(ebpf)
    }

    /// Looks at every running process except `skip_pid`.
    pub fn scan_all(&mut self, ebpf: &mut Ebpf, skip_pid: u32) {
        let Ok(dir) = fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if pid != skip_pid {
                    self.scan_pid(ebpf, pid);
                }
            }
        }
    }

    /// Schedules looks at a process that just called execve.
    pub fn on_exec(&mut self, pid: u32) {
        if self.pending.len() + EXEC_DELAYS.len() > MAX_PENDING {
            return;
        }
        let now = Instant::now();
        for d in EXEC_DELAYS {
            self.pending.push((now + d, pid));
        }
    }

    /// Runs the looks that are due.
    pub fn tick(&mut self, ebpf: &mut Ebpf) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, p)| *p)
            .collect();
        self.pending.retain(|(t, _)| *t > now);
        for pid in due {
            self.scan_pid(ebpf, pid);
        }
    }

    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32) {
        // Capture first: a Go HTTPS client sends its first request soon after its exec.
        self.go_tls.scan_pid(ebpf, pid, &mut self.via_tracefs);
        self.go.scan_pid(ebpf, pid, &mut self.via_tracefs);
        if !self.loaded {
            return;
        }
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) {
            let libs: HashSet<&str> = maps
                .lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| is_libssl(p))
                .collect();
            for lib in libs {
                let host_path = root.join(lib.trim_start_matches('/'));
                self.attach_file(ebpf, pid, lib, &host_path);
            }
        }
        // Static OpenSSL: the executable exports the symbols itself.
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        if let Ok(meta) = fs::metadata(&exe) {
            let id = (meta.dev(), meta.ino());
            if self.seen_exes.insert(id) && meta.len() <= MAX_EXE_BYTES && exports_ssl_write(&exe) {
                let shown = fs::read_link(&exe)
                    .map_or_else(|_| exe.display().to_string(), |p| p.display().to_string());
                self.attach_file(ebpf, pid, &shown, &exe);
            }
        }
    }

    fn attach_file(&mut self, ebpf: &mut Ebpf, pid: u32, shown: &str, path: &Path) {
        let Ok(meta) = fs::metadata(path) else {
            return;
        };
        if !self.seen_files.insert((meta.dev(), meta.ino())) {
            return;
        }
        let mut symbols = Vec::new();
        let mut errors = Vec::new();
        // Symbol offsets in the file, read only when probes go through tracefs.
        let mut offsets: Option<HashMap<&'static str, u64>> = None;
        for (name, symbol) in PROBES {
            let Some(prog) = ebpf.program_mut(name) else {
                continue;
            };
            let prog: Result<&mut UProbe, _> = prog.try_into();
            let Ok(prog) = prog else { continue };
            let via_perf = match self.via_tracefs {
                Some(_) => None,
                None => Some(prog.attach(*symbol, path, UProbeScope::AllProcesses)),
            };
            let attached = match via_perf {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) if !permission_denied(&e) => Err(error_chain(&e)),
                refused => {
                    if let Some(Err(e)) = refused {
                        tracing::info!(
                            "perf refuses to create uprobes ({}): creating the TLS probes through tracefs",
                            error_chain(&e)
                        );
                    }
                    let tracefs = self
                        .via_tracefs
                        .get_or_insert_with(|| TracefsUprobes::new(tracefs_root()));
                    let offsets = offsets.get_or_insert_with(|| symbol_offsets(path));
                    match (offsets.get(symbol), prog.fd()) {
                        (Some(&offset), Ok(fd)) => tracefs
                            .attach(fd.as_fd(), name.ends_with("_exit"), path, offset)
                            .map_err(|e| e.to_string()),
                        (None, _) => Err("symbol not found".to_string()),
                        (_, Err(e)) => Err(error_chain(&e)),
                    }
                }
            };
            match attached {
                Ok(()) => {
                    if !symbols.contains(symbol) {
                        symbols.push(*symbol);
                    }
                }
                Err(e) => errors.push(format!("{symbol}: {e}")),
            }
        }
        if symbols.contains(&"SSL_read") && symbols.contains(&"SSL_write") {
            tracing::info!(
                "TLS probes attached to {shown} (pid {pid}): {}",
                symbols.join(", ")
            );
            self.attached.push(TlsTarget {
                path: shown.to_string(),
                pid,
                symbols,
            });
        } else {
            let reason = errors.join("; ");
            tracing::warn!(
                "TLS probes could not be attached to {shown} (pid {pid}): HTTPS through it is not seen: {reason}"
            );
            self.failed.insert(shown.to_string(), reason);
        }
    }
}

/// Where tracefs is: its own mount, or debugfs's tracing directory on older systems.
pub(super) fn tracefs_root() -> &'static Path {
    let own = Path::new(super::tracefs::TRACEFS);
    if own.join("uprobe_events").exists() {
        own
    } else {
        Path::new("/sys/kernel/debug/tracing")
    }
}

/// Whether an attach error comes from the kernel refusing a permission.
pub(super) fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// An error with its causes, `: `-separated.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// File offsets of the probed symbols defined in the ELF file at `path` (what a uprobe
/// definition names): the symbol's address, moved from its segment's address to the
/// segment's place in the file.
fn symbol_offsets(path: &Path) -> HashMap<&'static str, u64> {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let mut out = HashMap::new();
    let Ok(data) = elf_reader(path) else {
        return out;
    };
    let Ok(file) = object::File::parse(&data) else {
        return out;
    };
    for (_, symbol) in PROBES {
        let address = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(symbol))
            .map(|s| s.address());
        let Some(address) = address else { continue };
        let offset = file.segments().find_map(|seg| {
            let (file_start, file_len) = seg.file_range();
            (seg.address()..seg.address() + file_len)
                .contains(&address)
                .then(|| address - seg.address() + file_start)
        });
        if let Some(offset) = offset {
            out.insert(*symbol, offset);
        }
    }
    out
}

fn is_libssl(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// An ELF file read on demand: only the headers and symbol tables a lookup touches are read,
/// never the whole file (executables run to hundreds of MiB with debug info, and a whole-file
/// read at every exec kept the agent's heap at the size of the largest one).
fn elf_reader(path: &Path) -> std::io::Result<object::read::ReadCache<fs::File>> {
    Ok(object::read::ReadCache::new(fs::File::open(path)?))
}

/// True when the ELF file's dynamic or static symbol table defines `SSL_write`.
pub fn exports_ssl_write(path: &Path) -> bool {
    use object::{Object, ObjectSymbol};
    let Ok(data) = elf_reader(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&data) else {
        return false;
    };
    let found = file
        .dynamic_symbols()
        .chain(file.symbols())
        .any(|s| s.is_definition() && s.name() == Ok("SSL_write"));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_names() {
        assert!(is_libssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_libssl("/opt/app/libssl.so.1.1"));
        assert!(!is_libssl("/usr/lib/libssl3.so"));
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
    }

    #[test]
    fn finds_ssl_write_in_a_real_libssl_and_not_in_libc() {
        let lib = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
        let Some(lib) = lib else {
            assert!(std::env::var_os("CI").is_none(), "CI machines have libssl3");
            eprintln!("skipped: no libssl.so.3 here");
            return;
        };
        assert!(exports_ssl_write(lib));
        assert!(!exports_ssl_write(Path::new("/bin/true")));
        // Every probed symbol has a file offset inside the file.
        let offsets = symbol_offsets(lib);
        let len = fs::metadata(lib).unwrap().len();
        for (_, symbol) in PROBES {
            assert!(
                offsets.get(symbol).is_some_and(|&o| o > 0 && o < len),
                "{symbol}"
            );
        }
    }
}
