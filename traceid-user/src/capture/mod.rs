//! Loading the kernel programs and reading their ring buffer.
//!
//! `Capture::start` mounts tracefs when missing, reads kernel struct offsets from BTF, loads
//! the embedded object with the run-time settings (agent pid, capture size), attaches every
//! tracepoint, and tells the kernel (`SEEDED`, by inode number) which connections processes
//! already hold.
//! `Capture::poll` hands each raw record to the caller; decoding happens in `crate::event`.

pub mod btf;
pub mod go;
pub mod go_tls;
pub mod seed;
pub mod tls;
pub mod tracefs;
mod tracefs_uprobe;
mod uprobes;

use std::{
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use traceid_common::{stat, SockInfo, MAX_CAPTURE};

/// The kernel object built by `cargo xtask build-ebpf`, embedded at build time.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traceid-ebpf.o"));

/// Every tracepoint the agent attaches: (program, category, event).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_exit_accept", "syscalls", "sys_exit_accept"),
    ("sys_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_enter_close", "syscalls", "sys_enter_close"),
    ("sock_recv_length", "sock", "sock_recv_length"),
    ("sock_send_length", "sock", "sock_send_length"),
    ("tcp_destroy_sock", "tcp", "tcp_destroy_sock"),
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("sched_process_exec", "sched", "sched_process_exec"),
];

/// The data hooks' iovec continuation: loaded, put in `DATA_TAIL`, never attached.
const DATA_CONTINUATION: &str = "sock_data_iovecs";

/// Loads the tracepoint program `name` of the object into the kernel.
fn load_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut TracePoint, CaptureError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(CaptureError::MissingProgram(name))?
        .try_into()
        .map_err(|source| CaptureError::Program { name, source })?;
    prog.load()
        .map_err(|source| CaptureError::Program { name, source })?;
    Ok(prog)
}

/// Loads the tracepoint program `name` and puts it in slot `index` of the program array `map`,
/// for the attached programs to tail-call. The array stays in `ebpf`, which keeps the entry.
fn install_tail(
    ebpf: &mut Ebpf,
    map: &'static str,
    index: u32,
    name: &'static str,
) -> Result<(), CaptureError> {
    let fd = load_tracepoint(ebpf, name)?
        .fd()
        .map_err(|source| CaptureError::Program { name, source })?
        .try_clone()
        .map_err(|e| CaptureError::Map(map, e.to_string()))?;
    let mut table: ProgramArray<_> = ProgramArray::try_from(
        ebpf.map_mut(map)
            .ok_or(CaptureError::Map(map, "missing".into()))?,
    )
    .map_err(|e| CaptureError::Map(map, e.to_string()))?;
    table
        .set(index, &fd, 0)
        .map_err(|e| CaptureError::Map(map, e.to_string()))
}

#[derive(thiserror::Error, Debug)]
pub enum CaptureError {
    #[error(
        "this traceid was built without its kernel programs: run `cargo xtask build-ebpf` \
         (or `cargo xtask run`) and rebuild"
    )]
    NotBuilt,
    #[error("{0}")]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("{0} (the kernel programs find sockets through kernel struct offsets read from BTF)")]
    Btf(#[from] btf::BtfError),
    #[error("loading the kernel programs: {0} (is this root, or does it have CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN? `traceid check` tells)")]
    Load(#[source] aya::EbpfError),
    #[error("kernel program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("verifying/loading program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to tracepoint {category}:{event}: {source}")]
    Attach {
        category: &'static str,
        event: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "this kernel has no tracepoint {category}:{event}: traceid needs Linux 6.3 or newer \
         (the socket tracepoints carry the captured data; `traceid check` lists what is missing)"
    )]
    NoTracepoint {
        category: &'static str,
        event: &'static str,
    },
    #[error("map {0}: {1}")]
    Map(&'static str, String),
}

/// Run-time settings of the kernel side.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Bytes copied per read/write (clamped to 1..=MAX_CAPTURE).
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Seed the socket table from sockets that already exist.
    pub seed: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            capture_bytes: traceid_common::DEFAULT_CAPTURE,
            ring_bytes: 16 * 1024 * 1024,
            seed: true,
        }
    }
}

/// What start-up did, for the operator.
#[derive(Debug, Clone, Default)]
pub struct StartInfo {
    pub tracefs_mounted: bool,
    pub seeded: usize,
    pub attached: usize,
    /// Why the TLS probes could not be loaded (TLS traffic is then not decoded).
    pub tls_error: Option<String>,
}

/// The loaded programs and their ring buffer.
pub struct Capture {
    // Keeps programs attached and maps alive for as long as the capture lives.
    ebpf: Ebpf,
    /// OpenSSL files the TLS probes are attached to, and the pending looks at new processes.
    pub tls: tls::TlsAttacher,
    ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    /// Records describing the connections found at start-up (ConnOpen events), to be fed to
    /// the engine before anything from the ring buffer.
    seeded: Vec<Vec<u8>>,
    pub info: StartInfo,
}

impl Capture {
    pub fn start(cfg: &CaptureConfig) -> Result<Capture, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NotBuilt);
        }
        let mut info = StartInfo {
            tracefs_mounted: tracefs::ensure_mounted()?,
            ..StartInfo::default()
        };
        // The programs find sockets through these offsets: without them nothing is captured.
        let offsets = btf::kernel_offsets()?;
        let agent_pid = std::process::id();
        let capture_bytes = cfg.capture_bytes.clamp(1, MAX_CAPTURE as u32);
        let mut ebpf = EbpfLoader::new()
            .override_global("AGENT_PID", &agent_pid, true)
            .override_global("CAPTURE_BYTES", &capture_bytes, true)
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", cfg.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(CaptureError::Load)?;

        // The data hooks' continuation goes in before the hooks are attached: a tail call to
        // an empty slot would report their bytes as not captured.
        install_tail(&mut ebpf, "DATA_TAIL", 0, DATA_CONTINUATION)?;
        for &(name, category, event) in TRACEPOINTS {
            load_tracepoint(&mut ebpf, name)?
                .attach(category, event)
                .map_err(|source| {
                    if tracefs::has_event(category, event) {
                        CaptureError::Attach {
                            category,
                            event,
                            source,
                        }
                    } else {
                        CaptureError::NoTracepoint { category, event }
                    }
                })?;
            info.attached += 1;
        }

        // Seed after attaching, so no connection falls between the two. One accepted or
        // connected in between is registered by the kernel (which never looks at `SEEDED` for
        // a socket it knows) and also found here: the engine then gets a second CONN_OPEN for
        // its (pid, fd) under another conn_ts_ns, which no data ever names.
        let mut seeded = Vec::new();
        if cfg.seed {
            let conns = seed::existing_connections(agent_pid);
            let mut table: BpfHashMap<_, u64, SockInfo> = BpfHashMap::try_from(
                ebpf.map_mut("SEEDED")
                    .ok_or(CaptureError::Map("SEEDED", "missing".into()))?,
            )
            .map_err(|e| CaptureError::Map("SEEDED", e.to_string()))?;
            for c in conns {
                // A socket held by several processes (forked, dup'd) is one entry: the kernel
                // adopts it under its `struct sock *` when any of them uses it, and announces
                // the others as they do.
                let value = SockInfo {
                    conn_ts_ns: c.event.header.conn_ts_ns,
                    role: c.event.role,
                    _pad0: [0; 7],
                };
                if table.insert(c.inode, value, 0).is_ok() {
                    seeded.push(crate::event::pod_bytes(&c.event));
                }
            }
        }
        info.seeded = seeded.len();

        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(CaptureError::Map("EVENTS", "missing".into()))?,
        )
        .map_err(|e| CaptureError::Map("EVENTS", e.to_string()))?;
        let stats = PerCpuArray::try_from(
            ebpf.take_map("STATS")
                .ok_or(CaptureError::Map("STATS", "missing".into()))?,
        )
        .map_err(|e| CaptureError::Map("STATS", e.to_string()))?;
        let mut tls = tls::TlsAttacher::default();
        if let Err(e) = tls.load(&mut ebpf) {
            tracing::warn!("TLS probes unavailable: {e}");
            info.tls_error = Some(e);
        }
        if let Err(e) = tls.load_go(&mut ebpf) {
            tracing::warn!("Go probes unavailable (Go calls are linked by the other rules): {e}");
        }
        if let Err(e) = tls.go_tls.load(&mut ebpf) {
            tracing::warn!("Go TLS probes unavailable (Go HTTPS is not decoded): {e}");
        }
        tls.scan_all(&mut ebpf, agent_pid);
        Ok(Capture {
            ebpf,
            tls,
            ring,
            stats,
            seeded,
            info,
        })
    }

    /// Records of the connections found at start-up; empty after the first call.
    pub fn take_seeded(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.seeded)
    }

    /// Waits up to `timeout` for records, then hands every available record to `f`.
    /// Returns how many were handed over.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(&[u8])) -> std::io::Result<usize> {
        let mut n = self.drain(&mut f);
        if n > 0 {
            return Ok(n);
        }
        let mut pfd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        n += self.drain(&mut f);
        Ok(n)
    }

    fn drain(&mut self, f: &mut impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        // Bounded so a flood cannot starve the caller's clock checks.
        while n < 65_536 {
            let Some(item) = self.ring.next() else { break };
            f(&item);
            n += 1;
        }
        n
    }

    /// Kernel-side counters summed over CPUs, indexed by `traceid_common::stat`.
    pub fn kernel_stats(&self) -> [u64; stat::COUNT as usize] {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.stats.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

/// Names of the kernel counters, for metrics and reports.
pub fn stat_name(index: u32) -> Option<&'static str> {
    Some(match index {
        stat::RINGBUF_FULL => "kernel_ringbuf_full",
        stat::READ_USER_FAILED => "kernel_read_user_failed",
        stat::ARGS_FULL => "kernel_args_table_full",
        stat::SOCKS_FULL => "kernel_socket_table_full",
        stat::SOCK_READ_FAILED => "kernel_socket_read_failed",
        stat::TLS_NO_FD => "kernel_tls_socket_unknown",
        stat::GO_READ_FAILED => "kernel_go_read_failed",
        stat::OTHER_CALL => "kernel_socket_other_call",
        _ => return None,
    })
}

/// Names of every kernel counter.
pub fn stat_names() -> impl Iterator<Item = &'static str> {
    (0..stat::COUNT).filter_map(stat_name)
}

/// CLOCK_MONOTONIC now, in the kernel's `bpf_ktime_get_ns` time base.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether process `pid` exists. The kernel reports pids as the agent's /proc numbers them
/// (the agent runs in the host's pid namespace, as its start-up scan of /proc needs too).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// True when this binary carries its kernel programs.
pub fn object_built() -> bool {
    !EBPF_OBJECT.is_empty()
}

impl Capture {
    /// A process called execve: look for TLS libraries in it shortly.
    pub fn on_exec(&mut self, pid: u32) {
        self.tls.on_exec(pid);
    }

    /// Periodic work: attaches TLS probes to processes that exec'd recently.
    pub fn tick(&mut self) {
        self.tls.tick(&mut self.ebpf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_process_no_longer_exists() {
        assert!(process_exists(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_exists(pid));
    }
}
