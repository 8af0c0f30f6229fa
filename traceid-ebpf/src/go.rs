//! Go programs: which goroutine serves which server connection, which goroutine asks for a
//! request on which client connection, and which goroutine started which (issue 15,
//! docs/go.md). Userspace links an outbound call to the inbound request it serves with these.
//!
//! Plain uprobes at file offsets the agent found through the binary's function table, never
//! uretprobes (the Go runtime moves goroutine stacks and walks them: a replaced return address
//! crashes it). Go ≥ 1.17 passes arguments in registers (RAX, RBX, …) and keeps the current
//! `g` in R14. Struct offsets differ between Go versions: the agent writes them per process
//! into `GO_PROCS`, and a process without an entry is ignored.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
    EbpfContext,
};
use traceid_common::{kind, stat, GoCallEvent, GoOffsets, GoServeEvent, GoSpawnEvent};

use crate::maps::{count, current_ids, fill_header, EVENTS};
use crate::sockets;

/// Struct offsets of each instrumented Go process, by pid; written by the agent.
#[map]
pub static GO_PROCS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(16_384, 0);

/// `runtime.newproc1` calls in progress: the caller goroutine's id, by pid_tgid. The call runs
/// on the system stack, which is never preempted, so entry and RET are on the same thread.
#[map]
pub static GO_SPAWNING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Goroutines whose children are reported: those serving a server connection and their
/// descendants. Only their calls can serve an inbound request, and a busy Go program (the Go
/// compiler, a worker pool) starts goroutines by the million: reporting every one would flood
/// the ring buffer. LRU: the goroutines of connections long gone make room.
#[map]
pub static GO_TRACKED: LruHashMap<Goroutine, u8> = LruHashMap::with_max_entries(65_536, 0);

/// Key of `GO_TRACKED`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Goroutine {
    pub pid: u32,
    pub _pad: u32,
    pub goid: u64,
}

impl Goroutine {
    #[inline(always)]
    fn new(pid: u32, goid: u64) -> Goroutine {
        Goroutine { pid, _pad: 0, goid }
    }
}

/// Starts reporting the children of goroutine `goid` of `pid`.
#[inline(always)]
fn track(pid: u32, goid: u64) {
    if GO_TRACKED.insert(Goroutine::new(pid, goid), 1, 0).is_err() {
        count(stat::ARGS_FULL);
    }
}

const AF_INET: i64 = 2;
const AF_INET6: i64 = 10;
const SOCK_STREAM: i64 = 1;

/// The registers the Go register ABI uses here, from the probe's saved user registers.
#[derive(Clone, Copy)]
enum Reg {
    /// First argument or result.
    Rax,
    /// Second argument.
    Rbx,
    /// The current goroutine's `g`.
    R14,
}

#[inline(always)]
fn reg(ctx: &ProbeContext, r: Reg) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: a uprobe's context is the `struct pt_regs` of the probed task; the verifier
    // checks loads from it.
    unsafe {
        match r {
            Reg::Rax => (*regs).rax,
            Reg::Rbx => (*regs).rbx,
            Reg::R14 => (*regs).r14,
        }
    }
}

#[inline(always)]
fn read<T: Copy>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: a read of user memory, which fails cleanly.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The id of the goroutine whose `g` is at `g`.
#[inline(always)]
fn goid(g: u64, off: &GoOffsets) -> Option<u64> {
    read::<u64>(g.checked_add(off.g_goid as u64)?)
}

/// The socket fd of the `net.Conn` interface at `iface`, when it holds a `*net.TCPConn`
/// (checked through the netFD's family and socket type, not assumed).
#[inline(always)]
fn tcp_conn_fd(iface: u64, off: &GoOffsets) -> Option<i32> {
    let tcp_conn: u64 = read(iface.checked_add(8)?)?;
    let netfd: u64 = read(tcp_conn)?;
    let family: i64 = read(netfd.checked_add(off.netfd_family as u64)?)?;
    let sotype: i64 = read(netfd.checked_add(off.netfd_sotype as u64)?)?;
    if (family != AF_INET && family != AF_INET6) || sotype != SOCK_STREAM {
        return None;
    }
    let fd: i64 = read(netfd.checked_add(off.netfd_sysfd as u64)?)?;
    i32::try_from(fd).ok().filter(|fd| *fd >= 0)
}

/// The offsets of the current process, or None when it is not instrumented (or the agent).
#[inline(always)]
fn offsets() -> Option<(u32, u32, GoOffsets)> {
    let (pid, tid) = current_ids()?;
    // SAFETY: copied out at once.
    let off = unsafe { GO_PROCS.get(pid) }.copied()?;
    Some((pid, tid, off))
}

/// Emits a GO_SERVE or GO_CALL record: goroutine (R14) and the socket of the connection
/// interface at `conn_field` bytes into the struct in RAX.
#[inline(always)]
fn emit_conn_goroutine(ctx: &ProbeContext, kind: u16, conn_field: impl Fn(&GoOffsets) -> u32) {
    let Some((pid, tid, off)) = offsets() else {
        return;
    };
    let found = (|| {
        let id = goid(reg(ctx, Reg::R14), &off)?;
        let iface = reg(ctx, Reg::Rax).checked_add(conn_field(&off) as u64)?;
        let fd = tcp_conn_fd(iface, &off)?;
        let sock = sockets::lookup(pid, tid, fd)?;
        Some((id, fd, sock.conn_ts_ns))
    })();
    let Some((id, fd, conn_ts_ns)) = found else {
        count(stat::GO_READ_FAILED);
        return;
    };
    if kind == kind::GO_SERVE {
        track(pid, id);
    }
    // GoServeEvent and GoCallEvent have one layout: header, goid (asserted below).
    let Some(mut entry) = EVENTS.reserve::<GoCallEvent>(0) else {
        count(stat::RINGBUF_FULL);
        return;
    };
    // SAFETY: the reservation is sized for the event; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, kind, pid, tid, fd, conn_ts_ns);
    ev.goid = id;
    entry.submit(0);
}

const _: () = assert!(size_of::<GoServeEvent>() == size_of::<GoCallEvent>());

/// `net/http.(*conn).serve(c, ctx)` entry: RAX = c; the goroutine serves `c.rwc`.
#[uprobe]
pub fn go_http_serve(ctx: ProbeContext) -> u32 {
    emit_conn_goroutine(&ctx, kind::GO_SERVE, |o| o.http_conn_rwc);
    0
}

/// `net/http.(*persistConn).roundTrip(pc, req)` entry: RAX = pc; the request goes on `pc.conn`.
#[uprobe]
pub fn go_http_round_trip(ctx: ProbeContext) -> u32 {
    emit_conn_goroutine(&ctx, kind::GO_CALL, |o| o.persist_conn_conn);
    0
}

/// `runtime.newproc1(fn, callergp, callerpc)` entry: RBX = the `g` running the `go` statement.
#[uprobe]
pub fn go_newproc_enter(ctx: ProbeContext) -> u32 {
    let Some((pid, _, off)) = offsets() else {
        return 0;
    };
    match goid(reg(&ctx, Reg::Rbx), &off) {
        // SAFETY: only tested for presence.
        Some(parent) if unsafe { GO_TRACKED.get(Goroutine::new(pid, parent)) }.is_none() => {}
        Some(parent) => {
            if GO_SPAWNING
                .insert(bpf_get_current_pid_tgid(), parent, 0)
                .is_err()
            {
                count(stat::ARGS_FULL);
            }
        }
        None => count(stat::GO_READ_FAILED),
    }
    0
}

/// `runtime.newproc1` at each RET: RAX = the new goroutine's `g`.
#[uprobe]
pub fn go_newproc_return(ctx: ProbeContext) -> u32 {
    let Some((pid, tid, off)) = offsets() else {
        return 0;
    };
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(parent) = (unsafe { GO_SPAWNING.get(key) }).copied() else {
        return 0;
    };
    let _ = GO_SPAWNING.remove(key);
    let Some(child) = goid(reg(&ctx, Reg::Rax), &off) else {
        count(stat::GO_READ_FAILED);
        return 0;
    };
    track(pid, child);
    let Some(mut entry) = EVENTS.reserve::<GoSpawnEvent>(0) else {
        count(stat::RINGBUF_FULL);
        return 0;
    };
    // SAFETY: the reservation is sized for the event; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, kind::GO_SPAWN, pid, tid, -1, 0);
    ev.parent_goid = parent;
    ev.child_goid = child;
    entry.submit(0);
    0
}
