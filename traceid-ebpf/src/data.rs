//! Data hooks: every transfer on a known TCP socket.
//!
//! The socket layer's own tracepoints (`sock:sock_recv_length` and `sock:sock_send_length`,
//! Linux 6.3+) fire once for each recvmsg/sendmsg a socket serves, after the bytes moved, with
//! the `struct sock *` and the real length. Reads and writes of pipes, files, terminals and
//! every other fd never reach them, so those pay nothing (syscall exit tracepoints on
//! read/write ran for every fd of the host: 200–400 ns per call). Non-TCP sockets, failed
//! calls and peeks stop at the tracepoint's own fields; a known socket costs one lookup by
//! its `struct sock *` (see `sockets`). The fd and the buffer come from the syscall's saved
//! registers (`regs`), which also say which call it is: the bytes are laid out per call (flat,
//! an iovec array, a msghdr, or a file for sendfile). A call that was already blocked when
//! the agent attached is seen too, as it returns. Then the first `CAPTURE_BYTES` bytes (per
//! iovec for vectored calls) are copied and the real length is reported, so userspace knows
//! what it did not see.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated as gen},
    macros::tracepoint,
    programs::TracePointContext,
};
use traceid_common::{
    kind, source, stat, DataEvent, DIR_EGRESS, DIR_INGRESS, MAX_CAPTURE, MAX_IOVECS,
};

use crate::maps::{
    capture_bytes, count, current_ids, fill_header, DATA_TAIL, EVENTS, RING_CHECK_AT, SCRATCH,
    SOCKS, VECTORED,
};
use crate::regs::{nr, SyscallArgs};
use crate::sockets;

/// Offsets in the sock:sock_{recv,send}_length record (events/sock/*/format): `void *sk`,
/// `__u16 protocol`, `int ret` (bytes moved, or -errno), `int flags` (the MSG_* flags).
const TP_SK: usize = 8;
const TP_PROTOCOL: usize = 18;
const TP_RET: usize = 20;
const TP_FLAGS: usize = 24;

const IPPROTO_TCP: u16 = 6;
/// recv flags. A peek leaves the bytes queued (the read that takes them reports them); the
/// error queue holds no stream bytes; MSG_TRUNC on TCP discards the bytes without copying
/// them, so the buffer holds none of them.
const MSG_PEEK: i32 = 0x2;
const MSG_TRUNC: i32 = 0x20;
const MSG_ERRQUEUE: i32 = 0x2000;

/// `struct iovec` as user space lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Offsets in `struct user_msghdr` (x86_64 / aarch64 LP64).
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    on_transfer(&ctx, DIR_INGRESS);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    on_transfer(&ctx, DIR_EGRESS);
    0
}

#[inline(always)]
fn on_transfer(ctx: &TracePointContext, direction: u8) {
    // SAFETY: each read_at reads a field of the sock:sock_*_length record at its offset.
    let ret: i32 = unsafe { ctx.read_at(TP_RET) }.unwrap_or(-1);
    if ret <= 0 {
        return;
    }
    // SAFETY: as above.
    let protocol: u16 = unsafe { ctx.read_at(TP_PROTOCOL) }.unwrap_or(0);
    if protocol != IPPROTO_TCP {
        return;
    }
    let mut discarded = false;
    if direction == DIR_INGRESS {
        // SAFETY: as above.
        let flags: i32 = unsafe { ctx.read_at(TP_FLAGS) }.unwrap_or(0);
        if flags & (MSG_PEEK | MSG_ERRQUEUE) != 0 {
            return;
        }
        discarded = flags & MSG_TRUNC != 0;
    }
    let Some((pid, tid)) = current_ids() else {
        return;
    };
    // SAFETY: as above.
    let sk: u64 = unsafe { ctx.read_at(TP_SK) }.unwrap_or(0);
    let total = ret as u64;
    let call = SyscallArgs::current();
    let Some(src) = source_of(call.nr, direction) else {
        other_call(pid, tid, sk, direction, total);
        return;
    };
    let fd = call.arg0 as i32;
    let Some(info) = sockets::lookup_sk(pid, tid, fd, sk) else {
        return;
    };
    // Inside SSL_read/SSL_write: the bytes are ciphertext; the plaintext comes from the
    // TLS return probe, which learns the socket from this call.
    if crate::tls::note_syscall_fd(fd) {
        return;
    }
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
    let ptr = call.arg1;
    if discarded {
        emit(&ids, 0, 0, total);
        return;
    }
    let (iov, iovcnt) = match src {
        source::SENDFILE => {
            emit(&ids, 0, 0, total);
            return;
        }
        source::READV | source::WRITEV => (ptr, u64::from(MAX_IOVECS)),
        source::RECVMSG | source::SENDMSG => {
            // SAFETY: bpf_probe_read_user copies from an address the process passed, with fault
            // handling: a bad or unmapped pointer gives Err (then 0), never a fault; the result
            // is a u64, valid for any bits.
            let iov: u64 =
                unsafe { bpf_probe_read_user((ptr + MSGHDR_IOV) as *const u64) }.unwrap_or(0);
            // SAFETY: as for `iov`, at the msghdr's `msg_iovlen`.
            let iovlen: u64 =
                unsafe { bpf_probe_read_user((ptr + MSGHDR_IOVLEN) as *const u64) }.unwrap_or(0);
            (iov, iovlen)
        }
        _ => {
            emit(&ids, ptr, total, total);
            return;
        }
    };
    // The iovec walk runs in a program of its own: with it inlined here, this program's
    // verification passes the kernel's 1 M-instruction budget.
    if let Some(slot) = VECTORED.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, read by the continuation on this CPU right after.
        unsafe {
            *slot = Vectored {
                ids,
                iov,
                iovcnt,
                total,
            };
            DATA_TAIL.tail_call(ctx, 0);
        }
    }
    // Reached only when the continuation is not installed: the bytes are reported as not
    // captured, so the stream's framing stays honest.
    count(stat::READ_USER_FAILED);
    emit(&ids, 0, 0, total);
}

/// What the data hook hands its iovec continuation (`VECTORED`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Vectored {
    pub ids: Ids,
    /// User address of the `struct iovec` array, and its length.
    pub iov: u64,
    pub iovcnt: u64,
    /// Bytes the call moved.
    pub total: u64,
}

/// The data hooks' continuation for calls with an iovec array (readv, writev, recvmsg,
/// sendmsg), reached by tail call from `sock_*_length` (slot 0 of `DATA_TAIL`); never
/// attached itself.
#[tracepoint]
pub fn sock_data_iovecs(_ctx: TracePointContext) -> u32 {
    // Written by the hook that tail-called here, on this CPU; copied out at once.
    if let Some(v) = VECTORED.get(0).copied() {
        emit_iovecs(&v.ids, v.iov, v.iovcnt, v.total);
    }
    0
}

/// The source a syscall is when it moves bytes in `direction` through a buffer these hooks
/// know how to read; None for any other call.
#[inline(always)]
fn source_of(syscall: u64, direction: u8) -> Option<u8> {
    let src = match syscall {
        nr::READ => source::READ,
        nr::WRITE => source::WRITE,
        nr::READV => source::READV,
        nr::WRITEV => source::WRITEV,
        nr::RECVFROM => source::RECVFROM,
        nr::SENDTO => source::SENDTO,
        nr::RECVMSG => source::RECVMSG,
        nr::SENDMSG => source::SENDMSG,
        nr::SENDFILE => source::SENDFILE,
        _ => return None,
    };
    if source::direction(src) == Some(direction) {
        Some(src)
    } else {
        None
    }
}

/// Bytes moved on a socket by a call whose buffer these hooks do not read (sendmmsg,
/// recvmmsg, splice, io_uring...). On a known socket they are counted, and reported as a gap
/// when its owner moved them (its fd is then known), so the stream's framing stays honest.
#[inline(always)]
fn other_call(pid: u32, tid: u32, sk: u64, direction: u8, total: u64) {
    // SAFETY: copied out at once; map memory is RCU-protected.
    let Some(state) = (unsafe { SOCKS.get(sk) }).copied() else {
        return;
    };
    count(stat::OTHER_CALL);
    if state.owner_pid != pid {
        return;
    }
    let ids = Ids {
        pid,
        tid,
        fd: state.owner_fd,
        conn_ts_ns: state.conn_ts_ns,
        direction,
        source: if direction == DIR_INGRESS {
            source::READ
        } else {
            source::WRITE
        },
        role: state.role,
        _pad: 0,
    };
    emit(&ids, 0, 0, total);
}

/// Who moved the bytes of one transfer, and how. No implicit padding: it is copied whole into
/// a map (`VECTORED`), and the verifier refuses uninitialised stack bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ids {
    pub conn_ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub direction: u8,
    pub source: u8,
    pub role: u8,
    pub _pad: u8,
}

/// Reports `total` bytes spread over an iovec array, one record per iovec, so each record is
/// a contiguous piece of the stream. Bytes past the inspected iovecs become one gap record.
#[inline(always)]
fn emit_iovecs(ids: &Ids, iov: u64, iovcnt: u64, total: u64) {
    let mut left = total;
    let n = if iovcnt < u64::from(MAX_IOVECS) {
        iovcnt
    } else {
        u64::from(MAX_IOVECS)
    };
    for i in 0..MAX_IOVECS as u64 {
        if i >= n || left == 0 {
            break;
        }
        // SAFETY: reads of user memory fail cleanly.
        let Ok(v) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const IoVec) }) else {
            count(stat::READ_USER_FAILED);
            break;
        };
        let take = if v.len < left { v.len } else { left };
        if take == 0 {
            continue;
        }
        emit(ids, v.base, take, take);
        left -= take;
    }
    if left > 0 {
        emit(ids, 0, 0, left);
    }
}

/// Writes one data record: `real_len` bytes moved, the first `min(avail, CAPTURE_BYTES)` of
/// which are copied from `buf`.
#[inline(always)]
pub fn emit(ids: &Ids, buf: u64, avail: u64, real_len: u64) {
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let rec = unsafe { &mut *rec };
    let limit = capture_bytes() as u64;
    let mut len = if avail < limit { avail } else { limit };
    if len > MAX_CAPTURE as u64 {
        len = MAX_CAPTURE as u64;
    }
    if len > 0 {
        // SAFETY: the destination is the scratch payload and len <= its size; the helper
        // fails cleanly on a bad user pointer.
        let r = unsafe {
            gen::bpf_probe_read_user(
                rec.payload.as_mut_ptr() as *mut _,
                len as u32,
                buf as *const _,
            )
        };
        if r != 0 {
            count(stat::READ_USER_FAILED);
            len = 0;
        }
    }
    let ev: &mut DataEvent = &mut rec.event;
    fill_header(
        &mut ev.header,
        kind::DATA,
        ids.pid,
        ids.tid,
        ids.fd,
        ids.conn_ts_ns,
    );
    ev.direction = ids.direction;
    ev.source = ids.source;
    ev.role = ids.role;
    ev._pad0 = 0;
    ev.captured = len as u32;
    ev.real_len = real_len;
    let now = ev.header.ts_ns;
    let size = core::mem::size_of::<DataEvent>() + (len as usize & (MAX_CAPTURE * 2 - 1));
    let size = if size > core::mem::size_of::<crate::maps::DataRecord>() {
        core::mem::size_of::<crate::maps::DataRecord>()
    } else {
        size
    };
    // SAFETY: `rec` is a live map value of DataRecord size and `size` never exceeds it.
    let bytes = unsafe { core::slice::from_raw_parts(rec as *const _ as *const u8, size) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags(now)).is_err() {
        count(stat::RINGBUF_FULL);
    }
}

/// Ring-buffer flags for a data record written at `now` (CLOCK_MONOTONIC ns): no wake-up per
/// record (the agent polls every 100 ms anyway; a wake-up per event cost about 3 µs per
/// captured message), but a forced one while a quarter of the ring is waiting, so a burst
/// cannot fill it between polls. How full the ring is, is looked at once per millisecond per
/// CPU (it reads the position the agent writes, a cache line that moves between CPUs: once
/// per record it was a measurable part of the copy), so at most one forced wake-up per CPU
/// per millisecond. Each forced wake-up is an interrupt in the traced process; one per record,
/// while the agent lags, cost more than the copy itself.
#[inline(always)]
fn wakeup_flags(now: u64) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_RING_SIZE: u64 = 1;
    const CHECK_GAP_NS: u64 = 1_000_000;
    let Some(next) = RING_CHECK_AT.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not run concurrently.
    let next = unsafe { &mut *next };
    if now < *next {
        return BPF_RB_NO_WAKEUP;
    }
    *next = now + CHECK_GAP_NS;
    if EVENTS.query(BPF_RB_AVAIL_DATA) <= EVENTS.query(BPF_RB_RING_SIZE) / 4 {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    }
}
