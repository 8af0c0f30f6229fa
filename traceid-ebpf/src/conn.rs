//! Connection hooks: accept, accept4, connect, close.
//!
//! A socket becomes known when accept returns it (server role) or connect succeeds or starts
//! (client role). Its endpoints are read from the kernel's `struct sock` by walking
//! `current->files->fdt->fd[fd]->private_data->sk` with offsets the agent found in BTF.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use traceid_common::{
    kind, stat, ConnEvent, EventHeader, SockInfo, SockKey, ROLE_CLIENT, ROLE_SERVER,
};

use crate::maps::{count, current_ids, fill_header, known_socket, offsets, EVENTS, SOCKS};
use crate::regs::SyscallArgs;

/// Offsets of a syscall tracepoint's fields (see `format` under tracefs events/syscalls).
const SYSCALL_ARG0: usize = 16;
const SYSCALL_RET: usize = 16;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;
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
    register(pid, tid, ret as i32, ROLE_SERVER);
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
    let Some(args) = SyscallArgs::current() else {
        count(stat::REGS_READ_FAILED);
        return 0;
    };
    register(pid, tid, args.arg0 as i32, ROLE_CLIENT);
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some((pid, tid)) = current_ids() else {
        return 0;
    };
    // SAFETY: args[0] of close is the fd.
    let fd: i64 = unsafe { ctx.read_at(SYSCALL_ARG0) }.unwrap_or(-1);
    let fd = fd as i32;
    let Some(info) = known_socket(pid, fd) else {
        return 0;
    };
    let _ = SOCKS.remove(SockKey { pid, fd });
    if let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) {
        // SAFETY: the reservation is sized for an EventHeader; every field is written.
        let h = unsafe { &mut *entry.as_mut_ptr() };
        fill_header(h, kind::CONN_CLOSE, pid, tid, fd, info.conn_ts_ns);
        entry.submit(0);
    } else {
        count(stat::RINGBUF_FULL);
    }
    0
}

/// Adds (pid, fd) to the known sockets when it is a TCP/IP socket, and reports it.
#[inline(always)]
fn register(pid: u32, tid: u32, fd: i32, role: u8) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(stat::RINGBUF_FULL);
        // Still follow the socket: its data is worth more than its endpoints.
        insert_sock(pid, fd, role);
        return;
    };
    // SAFETY: the reservation is sized for a ConnEvent; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.role = role;
    ev._pad0 = 0;
    ev.family = 0;
    ev.local_port = 0;
    ev.remote_port = 0;
    ev.local_addr = [0; 16];
    ev.remote_addr = [0; 16];
    ev.sock = 0;
    match read_endpoints(fd, ev) {
        Ok(true) => {}
        Ok(false) => {
            // A UDP, Unix or raw socket: not ours to follow.
            entry.discard(0);
            return;
        }
        Err(()) => count(stat::SOCK_READ_FAILED),
    }
    let conn_ts_ns = insert_sock(pid, fd, role);
    fill_header(&mut ev.header, kind::CONN_OPEN, pid, tid, fd, conn_ts_ns);
    entry.submit(0);
}

#[inline(always)]
fn insert_sock(pid: u32, fd: i32, role: u8) -> u64 {
    // SAFETY: helper without preconditions.
    let conn_ts_ns = unsafe { bpf_ktime_get_ns() };
    let info = SockInfo {
        conn_ts_ns,
        role,
        _pad0: [0; 7],
    };
    if SOCKS.insert(SockKey { pid, fd }, info, 0).is_err() {
        count(stat::SOCKS_FULL);
    }
    conn_ts_ns
}

#[inline(always)]
fn read_at<T: Copy>(base: u64, off: u32) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel tolerates any address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| ())
}

/// Reads the socket behind `fd` of the current task. Ok(false): not a TCP/IP stream socket.
#[inline(always)]
fn read_endpoints(fd: i32, ev: &mut ConnEvent) -> Result<bool, ()> {
    let o = offsets();
    if o.valid == 0 || fd < 0 {
        return Err(());
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_at(task, o.task_files)?;
    let fdt: u64 = read_at(files, o.files_fdt)?;
    let max_fds: u32 = read_at(fdt, o.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return Err(());
    }
    let fd_array: u64 = read_at(fdt, o.fdt_fd)?;
    let file: u64 = read_at(fd_array, (fd as u32) * 8)?;
    let socket: u64 = read_at(file, o.file_private_data)?;
    let sk: u64 = read_at(socket, o.socket_sk)?;
    let family: u16 = read_at(sk, o.skc_family)?;
    let protocol: u16 = read_at(sk, o.sk_protocol)?;
    let sk_type: u16 = read_at(sk, o.sk_type)?;
    if (family != AF_INET && family != AF_INET6)
        || protocol != IPPROTO_TCP
        || sk_type != SOCK_STREAM
    {
        return Ok(false);
    }
    ev.family = family;
    ev.sock = sk;
    ev.local_port = read_at(sk, o.skc_num)?;
    let dport: u16 = read_at(sk, o.skc_dport)?;
    ev.remote_port = u16::from_be(dport);
    if family == AF_INET {
        let l: [u8; 4] = read_at(sk, o.skc_rcv_saddr)?;
        let r: [u8; 4] = read_at(sk, o.skc_daddr)?;
        ev.local_addr[..4].copy_from_slice(&l);
        ev.remote_addr[..4].copy_from_slice(&r);
    } else {
        ev.local_addr = read_at(sk, o.skc_v6_rcv_saddr)?;
        ev.remote_addr = read_at(sk, o.skc_v6_daddr)?;
    }
    Ok(true)
}
