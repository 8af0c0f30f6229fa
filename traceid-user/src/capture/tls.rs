//! Finding OpenSSL in running processes and attaching the TLS probes to it.
//!
//! Candidates: every `libssl.so*` a process maps, and executables that export `SSL_write`
//! themselves (OpenSSL linked statically). Files are reached through `/proc/<pid>/root` so
//! processes in containers are covered, and each file is attached once, keyed by
//! (device, inode). Processes started later are found through `sched_process_exec`: the agent
//! looks at a new process shortly after exec, once its loader has mapped its libraries.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::{uprobe::UProbeScope, UProbe};
use aya::Ebpf;

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
/// When to look at a process after its exec: the loader maps libraries within milliseconds;
/// a later look catches libraries loaded with dlopen (Python's _ssl).
const EXEC_DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(2)];
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
}

impl TlsAttacher {
    /// Loads the probe programs into the kernel (once).
    pub fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        for (name, _) in PROBES {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} missing"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            prog.load().map_err(|e| format!("loading {name}: {e}"))?;
        }
        self.loaded = true;
        Ok(())
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
        for (name, symbol) in PROBES {
            let Some(prog) = ebpf.program_mut(name) else {
                continue;
            };
            let prog: Result<&mut UProbe, _> = prog.try_into();
            let Ok(prog) = prog else { continue };
            match prog.attach(*symbol, path, UProbeScope::AllProcesses) {
                Ok(_) => {
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
            self.failed.insert(shown.to_string(), errors.join("; "));
        }
    }
}

fn is_libssl(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// True when the ELF file's dynamic or static symbol table defines `SSL_write`.
pub fn exports_ssl_write(path: &Path) -> bool {
    use object::{Object, ObjectSymbol};
    let Ok(data) = fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
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
    }
}
