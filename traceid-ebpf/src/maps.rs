//! Maps, run-time settings and the small helpers every hook family uses.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use traceid_common::{
    stat, EventHeader, KernelOffsets, SockInfo, COMM_LEN, DEFAULT_CAPTURE, MAX_CAPTURE,
};

/// Every record for userspace. Sized at load time by the agent (`--ring-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Known TCP sockets, keyed by the kernel's `struct sock *`: a socket is found from every
/// process that holds it (inherited across fork, dup'd, passed over a Unix socket), each
/// read or write attributed to the process that makes it. Filled at accept/connect and from
/// `SEEDED`, emptied when TCP destroys the socket (`tcp:tcp_destroy_sock`: no process holds it
/// any more). LRU as a safety net: an entry whose destruction was missed cannot stay forever.
#[map]
pub static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(262_144, 0);

/// Connections that existed before the agent started, keyed by socket inode number (what
/// `/proc/PID/fd` shows), written by the agent at start-up. Moved into `SOCKS` on first use.
#[map]
pub static SEEDED: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65_536, 0);

/// (socket, pid, fd) that are not the socket's owner but have been announced to userspace with
/// a CONN_OPEN of their own (a forked child serving an inherited connection, a dup'd fd).
#[map]
pub static ANNOUNCED: LruHashMap<Holder, u8> = LruHashMap::with_max_entries(65_536, 0);

/// Scratch space for one data record: too large for the 512-byte eBPF stack.
#[map]
pub static SCRATCH: PerCpuArray<DataRecord> = PerCpuArray::with_max_entries(1, 0);

/// The data hooks' iovec continuation (`data::sock_data_iovecs`), installed by the agent before
/// the hooks are attached: a program of its own, so each verifies within the kernel's budget.
#[map]
pub static DATA_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What a data hook hands its continuation, per CPU.
#[map]
pub static VECTORED: PerCpuArray<crate::data::Vectored> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: CLOCK_MONOTONIC ns before which no data record looks at how full the ring buffer
/// is, nor forces a wake-up (see `data::wakeup_flags`).
#[map]
pub static RING_CHECK_AT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Loss and health counters, indexed by `traceid_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// The agent's own pid: never captured (it would feed on its own output).
#[no_mangle]
static AGENT_PID: u32 = 0;

/// Bytes copied per transfer (≤ MAX_CAPTURE), `--capture-bytes`.
#[no_mangle]
static CAPTURE_BYTES: u32 = DEFAULT_CAPTURE;

/// Kernel struct offsets read from BTF by the agent.
#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    sk_protocol: 0,
    sk_type: 0,
    valid: 0,
    socket_file: 0,
    socket_ino: 0,
};

/// A known socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockState {
    /// See `EventHeader::conn_ts_ns`: the same for every process that uses the socket.
    pub conn_ts_ns: u64,
    /// The (pid, fd) that registered the socket, whose CONN_OPEN userspace already has;
    /// pid 0 once that fd is closed.
    pub owner_pid: u32,
    pub owner_fd: i32,
    /// One of the `ROLE_*` constants.
    pub role: u8,
    pub _pad: [u8; 7],
}

/// Key of `ANNOUNCED`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Holder {
    pub sk: u64,
    pub pid: u32,
    pub fd: i32,
}

/// One data record as it goes to the ring buffer: header then payload.
#[repr(C)]
pub struct DataRecord {
    pub event: traceid_common::DataEvent,
    pub payload: [u8; MAX_CAPTURE],
}

#[inline(always)]
fn read_global<T: Copy>(v: &T) -> T {
    // SAFETY: a plain read of a static; volatile so the compiler does not fold the default
    // value in: the agent rewrites it before load.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn agent_pid() -> u32 {
    read_global(&AGENT_PID)
}

#[inline(always)]
pub fn capture_bytes() -> u32 {
    read_global(&CAPTURE_BYTES)
}

/// One kernel struct offset, e.g. `offset(|o| &o.task_files)`: only the field asked for is
/// loaded.
#[inline(always)]
pub fn offset(field: impl Fn(&KernelOffsets) -> &u32) -> u32 {
    read_global(field(&OFFSETS))
}

/// Adds one to a loss/health counter.
#[inline(always)]
pub fn count(stat_index: u32) {
    if let Some(p) = STATS.get_ptr_mut(stat_index) {
        // SAFETY: per-CPU slot, this program is its only writer while it runs.
        unsafe { *p += 1 };
    }
}

/// The current (pid, tid), or None for the agent itself.
#[inline(always)]
pub fn current_ids() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let pid = (id >> 32) as u32;
    if pid == agent_pid() {
        return None;
    }
    Some((pid, id as u32))
}

/// Fills an event header for the current task.
#[inline(always)]
pub fn fill_header(h: &mut EventHeader, kind: u16, pid: u32, tid: u32, fd: i32, conn_ts_ns: u64) {
    h.kind = kind;
    h._pad0 = 0;
    h.pid = pid;
    h.tid = tid;
    h.fd = fd;
    // SAFETY: helper without preconditions.
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    h.conn_ts_ns = conn_ts_ns;
    h.comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
}
