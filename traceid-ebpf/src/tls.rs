//! TLS plaintext: uprobes on OpenSSL's SSL_read/SSL_write(_ex), and execve notifications.
//!
//! Entry saves the buffer per thread. The read/write syscall OpenSSL makes inside the call
//! names the socket (`data::on_enter` fills `fd` and learns SSL* -> fd, and skips capturing
//! the ciphertext). The return probe copies the plaintext: only the bytes the call reports
//! (a failed SSL_read, ret <= 0, leaves a stale buffer and copies nothing), with `*readbytes`
//! / `*written` for the `_ex` variants. A call served from OpenSSL's own buffer makes no
//! syscall: the socket then comes from the SSL* -> fd table.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use traceid_common::{kind, source, stat, EventHeader, DIR_EGRESS, DIR_INGRESS};

use crate::data::{emit, Ids};
use crate::maps::{count, current_ids, fill_header, EVENTS};
use crate::sockets;

/// A TLS call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The SSL* of the call.
    pub ssl: u64,
    /// Plaintext buffer.
    pub buf: u64,
    /// `_ex` variants: where OpenSSL stores the byte count; 0 otherwise.
    pub count_ptr: u64,
    /// Socket fd seen by a syscall inside the call, -1 until then.
    pub fd: i32,
    /// `source::SSL_*` of the call.
    pub source: u8,
    pub _pad: [u8; 3],
}

/// TLS calls in progress, by pid_tgid.
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16_384, 0);

/// SSL* -> socket fd, learned from syscalls made inside TLS calls.
#[map]
pub static SSL_FDS: LruHashMap<u64, i32> = LruHashMap::with_max_entries(65_536, 0);

#[inline(always)]
fn on_enter(ctx: &ProbeContext, src: u8, ex: bool) {
    if current_ids().is_none() {
        return;
    }
    let call = TlsCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        count_ptr: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        fd: -1,
        source: src,
        _pad: [0; 3],
    };
    if TLS_CALLS
        .insert(bpf_get_current_pid_tgid(), call, 0)
        .is_err()
    {
        count(stat::ARGS_FULL);
    }
}

#[inline(always)]
fn on_exit(ctx: &RetProbeContext, src: u8) {
    let Some((pid, tid)) = current_ids() else {
        return;
    };
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(call) = (unsafe { TLS_CALLS.get(key).copied() }) else {
        return;
    };
    let _ = TLS_CALLS.remove(key);
    if call.source != src {
        return;
    }
    // The OpenSSL calls return a C int: read 32 bits, or -1 would look like 4294967295.
    let ret: i32 = ctx.ret::<i32>();
    if ret <= 0 {
        return;
    }
    let n: u64 = if call.count_ptr != 0 {
        // SAFETY: reads of user memory fail cleanly.
        match unsafe { bpf_probe_read_user(call.count_ptr as *const u64) } {
            Ok(n) => n,
            Err(_) => return,
        }
    } else {
        ret as u64
    };
    if n == 0 {
        return;
    }
    let fd = if call.fd >= 0 {
        call.fd
    } else {
        // SAFETY: copied out at once.
        match unsafe { SSL_FDS.get(call.ssl).copied() } {
            Some(fd) => fd,
            None => {
                count(stat::TLS_NO_FD);
                return;
            }
        }
    };
    let Some(info) = sockets::lookup(pid, tid, fd) else {
        return;
    };
    let (direction, reported) = match src {
        source::SSL_READ | source::SSL_READ_EX => (DIR_INGRESS, source::SSL_READ),
        _ => (DIR_EGRESS, source::SSL_WRITE),
    };
    let ids = Ids {
        pid,
        tid,
        fd,
        conn_ts_ns: info.conn_ts_ns,
        direction,
        source: reported,
        role: info.role,
        _pad: 0,
    };
    emit(&ids, call.buf, n, n);
}

/// Called by the data hooks: a socket syscall made inside a TLS call. Returns true when the
/// syscall belongs to a TLS call (its ciphertext is then not captured).
#[inline(always)]
pub fn note_syscall_fd(fd: i32) -> bool {
    let key = bpf_get_current_pid_tgid();
    let Some(p) = TLS_CALLS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a live map value of this thread; only this thread writes it.
    let call = unsafe { &mut *p };
    call.fd = fd;
    let _ = SSL_FDS.insert(call.ssl, fd, 0);
    true
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    on_enter(&ctx, source::SSL_READ, false);
    0
}

#[uretprobe]
pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
    on_exit(&ctx, source::SSL_READ);
    0
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    on_enter(&ctx, source::SSL_WRITE, false);
    0
}

#[uretprobe]
pub fn ssl_write_exit(ctx: RetProbeContext) -> u32 {
    on_exit(&ctx, source::SSL_WRITE);
    0
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    on_enter(&ctx, source::SSL_READ_EX, true);
    0
}

#[uretprobe]
pub fn ssl_read_ex_exit(ctx: RetProbeContext) -> u32 {
    on_exit(&ctx, source::SSL_READ_EX);
    0
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    on_enter(&ctx, source::SSL_WRITE_EX, true);
    0
}

#[uretprobe]
pub fn ssl_write_ex_exit(ctx: RetProbeContext) -> u32 {
    on_exit(&ctx, source::SSL_WRITE_EX);
    0
}

/// A process replaced its image: the agent looks for TLS libraries it maps.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Some((pid, tid)) = current_ids() else {
        return 0;
    };
    if let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) {
        // SAFETY: the reservation is sized for an EventHeader; every field is written.
        let h = unsafe { &mut *entry.as_mut_ptr() };
        fill_header(h, kind::EXEC, pid, tid, -1, 0);
        entry.submit(0);
    } else {
        count(stat::RINGBUF_FULL);
    }
    0
}
