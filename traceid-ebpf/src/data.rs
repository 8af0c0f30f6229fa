//! Data hooks: the read and write families on known sockets.
//!
//! Exit only: the return value says how many bytes really moved, and the fd and buffer are
//! read from the syscall's saved registers (`regs`), so there is no entry program and no
//! argument table, and a call that was already blocked when the agent attached is seen too.
//! Failed calls (ret <= 0) and fds that are not known sockets are dropped first, before
//! anything is copied (files and pipes cost a register read and one lookup). Then the first
//! `CAPTURE_BYTES` bytes (per iovec for vectored calls) are copied and the real length is
//! reported, so userspace knows what it did not see; failed calls copy nothing: their buffers
//! hold stale bytes.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated as gen},
    macros::tracepoint,
    programs::TracePointContext,
};
use traceid_common::{kind, source, stat, DataEvent, MAX_CAPTURE, MAX_IOVECS};

use crate::maps::{capture_bytes, count, current_ids, fill_header, EVENTS, SCRATCH};
use crate::regs::SyscallArgs;
use crate::sockets;

/// Offset of `ret` in every sys_exit_* tracepoint record.
pub const SYSCALL_RET: usize = 16;

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

macro_rules! data_hook {
    ($exit:ident, $source:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $source);
            0
        }
    };
}

data_hook!(sys_exit_read, source::READ);
data_hook!(sys_exit_write, source::WRITE);
data_hook!(sys_exit_readv, source::READV);
data_hook!(sys_exit_writev, source::WRITEV);
data_hook!(sys_exit_recvfrom, source::RECVFROM);
data_hook!(sys_exit_sendto, source::SENDTO);
data_hook!(sys_exit_recvmsg, source::RECVMSG);
data_hook!(sys_exit_sendmsg, source::SENDMSG);
// sendfile(out_fd, in_fd, ...): the bytes come from a file, only their count is reported, so a
// response body sent with sendfile (nginx) keeps the HTTP framing in step.
data_hook!(sys_exit_sendfile64, source::SENDFILE);

#[inline(always)]
fn on_exit(ctx: &TracePointContext, src: u8) {
    let Some((pid, tid)) = current_ids() else {
        return;
    };
    // SAFETY: `ret` is at this offset in every sys_exit_* tracepoint.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.unwrap_or(-1);
    if ret <= 0 {
        return;
    }
    let args = SyscallArgs::current();
    let fd = args.arg0 as i32;
    let Some(info) = sockets::lookup(pid, tid, fd) else {
        return;
    };
    // Inside SSL_read/SSL_write: the bytes are ciphertext; the plaintext comes from the
    // TLS return probe, which learns the socket from this call.
    if crate::tls::note_syscall_fd(fd) {
        return;
    }
    let total = ret as u64;
    // A source without a known direction is a bug in this build: report nothing for it
    // rather than guess (a read reported as a write would corrupt the stream's framing).
    let Some(direction) = source::direction(src) else {
        return;
    };
    let ids = Ids {
        pid,
        tid,
        fd,
        conn_ts_ns: info.conn_ts_ns,
        direction,
        source: src,
        role: info.role,
    };
    let ptr = args.arg1;
    match src {
        source::SENDFILE => emit(&ids, 0, 0, total),
        source::READV | source::WRITEV => emit_iovecs(&ids, ptr, u64::from(MAX_IOVECS), total),
        source::RECVMSG | source::SENDMSG => {
            // SAFETY: bpf_probe_read_user copies from an address the process passed, with fault
            // handling: a bad or unmapped pointer gives Err (then 0), never a fault; the result
            // is a u64, valid for any bits.
            let iov: u64 =
                unsafe { bpf_probe_read_user((ptr + MSGHDR_IOV) as *const u64) }.unwrap_or(0);
            // SAFETY: as for `iov`, at the msghdr's `msg_iovlen`.
            let iovlen: u64 =
                unsafe { bpf_probe_read_user((ptr + MSGHDR_IOVLEN) as *const u64) }.unwrap_or(0);
            emit_iovecs(&ids, iov, iovlen, total)
        }
        _ => emit(&ids, ptr, total, total),
    }
}

pub struct Ids {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_ts_ns: u64,
    pub direction: u8,
    pub source: u8,
    pub role: u8,
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
    let size = core::mem::size_of::<DataEvent>() + (len as usize & (MAX_CAPTURE * 2 - 1));
    let size = if size > core::mem::size_of::<crate::maps::DataRecord>() {
        core::mem::size_of::<crate::maps::DataRecord>()
    } else {
        size
    };
    // SAFETY: `rec` is a live map value of DataRecord size and `size` never exceeds it.
    let bytes = unsafe { core::slice::from_raw_parts(rec as *const _ as *const u8, size) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        count(stat::RINGBUF_FULL);
    }
}

/// Ring-buffer flags for a data record: no wake-up per record (the agent polls every 100 ms
/// anyway; a wake-up per event cost about 3 µs per captured message), but a forced one once a
/// quarter of the ring is waiting, so a burst cannot fill it between polls.
#[inline(always)]
fn wakeup_flags() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_RING_SIZE: u64 = 1;
    if EVENTS.query(BPF_RB_AVAIL_DATA) > EVENTS.query(BPF_RB_RING_SIZE) / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
