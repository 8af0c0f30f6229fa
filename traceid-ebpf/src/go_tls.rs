//! TLS plaintext of Go programs: uprobes on `crypto/tls.(*Conn).Write` (entry) and
//! `crypto/tls.(*Conn).Read` (entry and each RET instruction).
//!
//! Go passes arguments and results in registers (ABIInternal, Go 1.17+): at entry the
//! receiver `c` is the first integer register and the buffer `b` (ptr, len, cap) the next
//! three; at a RET of `Read` the first integer register holds `n`. The current goroutine's
//! `g` is in a register reserved for it (R14 on amd64, X28 on arm64).
//!
//! Write is complete at entry: the plaintext is the argument. Read's plaintext exists only
//! when it returns, and returns are probed at each RET with plain uprobes (the agent decodes
//! the function to find them): a uretprobe rewrites the return address on the goroutine's
//! stack, which the Go runtime moves and walks, and crashes the program. Between entry and
//! return the goroutine can park in the netpoller and resume on another OS thread, so the
//! call in progress is keyed by goroutine (pid, goid), never by thread.
//!
//! The socket comes from the `*tls.Conn` itself (`tls.Conn.conn` → `*net.TCPConn` →
//! `*netFD` → `Sysfd`), with the offsets of the process's Go version from `GO_TLS_PROCS`,
//! written by the agent: a process it has not looked at yet is skipped. The ciphertext the
//! same goroutine moves through read/write syscalls is left to the syscall programs, whose
//! plain stream of the connection it is (the engine keeps it apart from this one and never
//! mistakes it for HTTP).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use traceid_common::{source, stat, GoTlsOffsets, DIR_EGRESS, DIR_INGRESS};

use crate::data::{emit, Ids};
use crate::maps::{count, current_ids};
use crate::sockets;

/// Offsets of the Go programs the agent instrumented, by pid. Written by the agent when it
/// looks at a process (at start-up, and after each exec).
#[map]
pub static GO_TLS_PROCS: LruHashMap<u32, GoTlsOffsets> = LruHashMap::with_max_entries(16_384, 0);

/// A goroutine: the key of a `Read` in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Goroutine {
    pub pid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// A `crypto/tls.(*Conn).Read` in progress: its receiver and its buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoRead {
    pub conn: u64,
    pub buf: u64,
}

/// `Read` calls in progress, by goroutine. LRU: a goroutine that dies inside Read (its
/// program exits) leaves an entry that ages out.
#[map]
pub static GO_TLS_READS: LruHashMap<Goroutine, GoRead> = LruHashMap::with_max_entries(16_384, 0);

/// The Go register ABI's integer registers the probes read, from the probe's saved user
/// registers.
#[derive(Clone, Copy)]
struct GoRegs {
    /// First integer argument / result (amd64 RAX, arm64 X0).
    arg0: u64,
    /// Second (RBX, X1).
    arg1: u64,
    /// Third (RCX, X2).
    arg2: u64,
    /// The current goroutine's `g` (R14, X28).
    g: u64,
}

#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn go_regs(ctx: &ProbeContext) -> GoRegs {
    // SAFETY: a uprobe's context is the `struct pt_regs` of the probed user thread, which the
    // verifier lets the program load from directly.
    let regs = unsafe { &*ctx.regs };
    GoRegs {
        arg0: regs.rax,
        arg1: regs.rbx,
        arg2: regs.rcx,
        g: regs.r14,
    }
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn go_regs(ctx: &ProbeContext) -> GoRegs {
    // arm64's context is `struct user_pt_regs`: `regs[31]` first, 8 bytes each.
    let regs = ctx.regs as *const u64;
    // SAFETY: loads of `regs[0]`, `regs[1]`, `regs[2]` and `regs[28]` from the probe's
    // context, all within `user_pt_regs`.
    unsafe {
        GoRegs {
            arg0: *regs,
            arg1: *regs.add(1),
            arg2: *regs.add(2),
            g: *regs.add(28),
        }
    }
}

/// A word of the probed process's memory; None when it cannot be read.
#[inline(always)]
fn user_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copies with fault handling: a bad address gives Err, never
    // a fault; any 8 bytes are a valid u64.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The socket fd under a `*tls.Conn`, or None when its `net.Conn` is not a `*net.TCPConn`
/// (when the process's itab for one is known) or a pointer cannot be read.
#[inline(always)]
fn conn_fd(off: &GoTlsOffsets, conn: u64) -> Option<i32> {
    let iface = conn + u64::from(off.tls_conn_conn);
    if off.tcp_conn_itab != 0 && user_u64(iface)? != off.tcp_conn_itab {
        return None;
    }
    let tcp_conn = user_u64(iface + 8)?;
    let netfd = user_u64(tcp_conn + u64::from(off.tcp_conn_fd))?;
    let sysfd = user_u64(netfd + u64::from(off.netfd_sysfd))?;
    // A Go int; an fd fits in 32 bits, anything else is not an fd.
    i32::try_from(sysfd as i64).ok().filter(|fd| *fd >= 0)
}

/// Reports `len` bytes of plaintext at `buf`, moved through the `*tls.Conn` `conn`.
#[inline(always)]
fn report(off: &GoTlsOffsets, pid: u32, tid: u32, conn: u64, buf: u64, len: u64, src: u8) {
    let Some(fd) = conn_fd(off, conn) else {
        count(stat::TLS_NO_FD);
        return;
    };
    // Not a socket the kernel follows in this process (a Unix socket, or an fd number read
    // through a connection type whose layout differs): nothing is reported.
    let Some(info) = sockets::lookup(pid, tid, fd) else {
        return;
    };
    let direction = if src == source::GO_TLS_READ {
        DIR_INGRESS
    } else {
        DIR_EGRESS
    };
    let ids = Ids {
        pid,
        tid,
        fd,
        conn_ts_ns: info.conn_ts_ns,
        direction,
        source: src,
        role: info.role,
        _pad: 0,
    };
    emit(&ids, buf, len, len);
}

/// The offsets of the current process, copied out; None for a process the agent has not
/// instrumented (yet).
#[inline(always)]
fn offsets(pid: u32) -> Option<GoTlsOffsets> {
    // SAFETY: copied out at once; map memory is RCU-protected.
    unsafe { GO_TLS_PROCS.get(pid).copied() }
}

/// `(*Conn).Write(c, b)` at entry: the plaintext is `b`.
#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    let Some((pid, tid)) = current_ids() else {
        return 0;
    };
    let Some(off) = offsets(pid) else {
        return 0;
    };
    let regs = go_regs(&ctx);
    let (conn, buf, len) = (regs.arg0, regs.arg1, regs.arg2);
    // A Go int: an empty or (never) negative length copies nothing.
    if (len as i64) > 0 {
        report(&off, pid, tid, conn, buf, len, source::GO_TLS_WRITE);
    }
    0
}

/// The current goroutine, from the `g` register and the process's `goid` offset.
#[inline(always)]
fn goroutine(off: &GoTlsOffsets, pid: u32, regs: &GoRegs) -> Option<Goroutine> {
    let goid = user_u64(regs.g + u64::from(off.g_goid))?;
    Some(Goroutine { pid, _pad: 0, goid })
}

/// `(*Conn).Read(c, b)` at entry: remembers the receiver and the buffer for the return.
#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    let Some((pid, _)) = current_ids() else {
        return 0;
    };
    let Some(off) = offsets(pid) else {
        return 0;
    };
    let regs = go_regs(&ctx);
    let Some(key) = goroutine(&off, pid, &regs) else {
        return 0;
    };
    let call = GoRead {
        conn: regs.arg0,
        buf: regs.arg1,
    };
    if GO_TLS_READS.insert(key, call, 0).is_err() {
        count(stat::ARGS_FULL);
    }
    0
}

/// A RET of `(*Conn).Read`: `n` bytes of plaintext are in the buffer saved at entry.
#[uprobe]
pub fn go_tls_read_return(ctx: ProbeContext) -> u32 {
    let Some((pid, tid)) = current_ids() else {
        return 0;
    };
    let Some(off) = offsets(pid) else {
        return 0;
    };
    let regs = go_regs(&ctx);
    let Some(key) = goroutine(&off, pid, &regs) else {
        return 0;
    };
    // SAFETY: copied out at once; map memory is RCU-protected.
    let Some(call) = (unsafe { GO_TLS_READS.get(key).copied() }) else {
        return 0;
    };
    let _ = GO_TLS_READS.remove(key);
    // `n` is a Go int: negative never, 0 on an error or an empty read.
    let n = regs.arg0 as i64;
    if n > 0 {
        report(
            &off,
            pid,
            tid,
            call.conn,
            call.buf,
            n as u64,
            source::GO_TLS_READ,
        );
    }
    0
}
