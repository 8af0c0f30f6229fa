//! Connection hooks: accept, accept4, connect, close, and TCP destroying a socket.
//!
//! A socket becomes known when accept returns it (server role) or connect succeeds or starts
//! (client role); `sockets` reads what it is and its endpoints from the kernel's structs.
//! Closing an fd reports the end of that (pid, fd)'s connection, but the socket stays known
//! until TCP destroys it: another process may still hold it.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use traceid_common::{kind, stat, EventHeader, ROLE_CLIENT, ROLE_SERVER};

use crate::maps::{count, current_ids, fill_header, EVENTS};
use crate::regs::SyscallArgs;
use crate::sockets;

/// Offset of `ret` in every sys_exit_* tracepoint record.
const SYSCALL_RET: usize = 16;
/// Offset of args[0] in a sys_enter_* tracepoint record.
const SYSCALL_ARG0: usize = 16;
/// Offset of `skaddr` in tcp:tcp_destroy_sock (stable since it was added in 4.15).
const DESTROY_SKADDR: usize = 8;

const EINPROGRESS: i64 = 115;

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    let Some((pid, tid)) = current_ids() else {
        return;
    };
    // SAFETY: `ret` is at this offset in every sys_exit_* tracepoint.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.unwrap_or(-1);
    if ret < 0 || ret > i32::MAX as i64 {
        return;
    }
    sockets::register(pid, tid, ret as i32, ROLE_SERVER);
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some((pid, tid)) = current_ids() else {
        return 0;
    };
    // SAFETY: `ret` is at this offset in every sys_exit_* tracepoint.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.unwrap_or(-1);
    // Non-blocking connects return EINPROGRESS: the socket is already bound and will carry
    // the request once writable, so it is followed from here.
    if ret != 0 && ret != -EINPROGRESS {
        return 0;
    }
    let args = SyscallArgs::current();
    sockets::register(pid, tid, args.arg0 as i32, ROLE_CLIENT);
    0
}

/// On entry: by the exit the fd no longer leads to the socket.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some((pid, tid)) = current_ids() else {
        return 0;
    };
    // SAFETY: args[0] of close is the fd.
    let fd: i64 = unsafe { ctx.read_at(SYSCALL_ARG0) }.unwrap_or(-1);
    let fd = fd as i32;
    let Some(state) = sockets::release(pid, fd) else {
        return 0;
    };
    if let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) {
        // SAFETY: the reservation is sized for an EventHeader; every field is written.
        let h = unsafe { &mut *entry.as_mut_ptr() };
        fill_header(h, kind::CONN_CLOSE, pid, tid, fd, state.conn_ts_ns);
        entry.submit(0);
    } else {
        count(stat::RINGBUF_FULL);
    }
    0
}

/// TCP frees a socket no process holds any more (often in softirq context: no pid filter).
#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    // SAFETY: `skaddr` is at this offset in the tracepoint's record.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(DESTROY_SKADDR) } {
        sockets::forget(sk);
    }
    0
}
