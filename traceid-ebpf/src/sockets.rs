//! Known TCP sockets, found from any process that reads or writes them.
//!
//! An fd is resolved to the kernel's socket by walking
//! `current->files->fdt->fd[fd]->private_data` with offsets the agent read from BTF; the
//! socket's back pointer to its file tells a socket from any other file (pipes, regular files
//! and the like stop there). Sockets are keyed by their `struct sock *`, so a connection
//! inherited across fork, dup'd or passed over a Unix socket is known in every process that
//! holds it. Each record still names the (pid, fd) that did the I/O: a holder other than the
//! socket's owner gets its own CONN_OPEN (with the socket's endpoints and `conn_ts_ns`) before
//! its first data, so userspace sees one connection per (pid, fd), as with any other socket.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel};
use traceid_common::{kind, stat, ConnEvent, CONN_HELD};

use crate::maps::{
    count, fill_header, offset, Holder, SockState, ANNOUNCED, EVENTS, SEEDED, SOCKS,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;

#[inline(always)]
fn read_at<T: Copy>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// A field of a kernel struct reached through BTF-typed pointers (from
/// `bpf_get_current_task_btf`): a plain load, which the verifier checks against the kernel's
/// types and turns into one that yields 0 on a fault; far cheaper than a helper call.
#[inline(always)]
fn btf_load<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: see above; volatile keeps it one load of exactly this field.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

/// The kernel objects behind an fd that is a socket.
#[derive(Clone, Copy)]
pub struct Socket {
    /// `struct socket *`
    pub socket: u64,
    /// `struct sock *`: the key of `SOCKS`.
    pub sk: u64,
}

/// Two fields of a kernel struct at `base`: one read when they are adjacent (as
/// `socket.{file, sk}` are), else two. The offsets are constants of the loaded program, so
/// the verifier keeps only one of the branches.
#[inline(always)]
fn read_pair<A: Copy>(base: u64, off_a: u32, off_b: u32) -> Option<(A, u64)> {
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Pair<A> {
        a: A,
        b: u64,
    }
    if core::mem::offset_of!(Pair<A>, b) as u32 == off_b.wrapping_sub(off_a) {
        let p: Pair<A> = read_at(base, off_a)?;
        Some((p.a, p.b))
    } else {
        Some((read_at(base, off_a)?, read_at(base, off_b)?))
    }
}

/// The socket behind `fd` of the current task; None for anything else (or unreadable).
#[inline(always)]
pub fn socket_of(fd: i32) -> Option<Socket> {
    if offset(|o| &o.valid) == 0 || fd < 0 {
        return None;
    }
    // SAFETY: helper without preconditions; its result is a BTF-typed pointer whose loads
    // the verifier checks against the kernel's types and makes fault-tolerant.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let files: *const u8 = btf_load(task, offset(|o| &o.task_files));
    let fdt: *const u8 = btf_load(files, offset(|o| &o.files_fdt));
    let max_fds: u32 = btf_load(fdt, offset(|o| &o.fdt_max_fds));
    let fd_array: u64 = btf_load(fdt, offset(|o| &o.fdt_fd));
    if fd as u32 >= max_fds {
        return None;
    }
    let file: u64 = read_at(fd_array, (fd as u32) * 8)?;
    let socket: u64 = read_at(file, offset(|o| &o.file_private_data))?;
    let (back, sk): (u64, u64) =
        read_pair(socket, offset(|o| &o.socket_file), offset(|o| &o.socket_sk))?;
    if back != file || file == 0 || sk == 0 {
        return None;
    }
    Some(Socket { socket, sk })
}

/// The known socket behind (pid, fd), looked up by what it is. A socket seeded at start-up
/// becomes known here on first use; a holder other than the owner is announced once.
#[inline(always)]
pub fn lookup(pid: u32, tid: u32, fd: i32) -> Option<SockState> {
    let s = socket_of(fd)?;
    // SAFETY: copied out at once; map memory is RCU-protected.
    let state = match unsafe { SOCKS.get(s.sk) } {
        Some(state) => *state,
        None => adopt_seeded(pid, fd, s)?,
    };
    Some(as_used_by(pid, tid, fd, s.sk, state))
}

/// The known socket `sk` (handed over by a socket tracepoint) as used by (pid, fd) of the
/// current task. A known socket costs one lookup; only an unknown one is walked to from the
/// fd, in case it was seeded at start-up.
#[inline(always)]
pub fn lookup_sk(pid: u32, tid: u32, fd: i32, sk: u64) -> Option<SockState> {
    // SAFETY: copied out at once; map memory is RCU-protected.
    let state = match unsafe { SOCKS.get(sk) } {
        Some(state) => *state,
        None => {
            let s = socket_of(fd)?;
            if s.sk != sk {
                return None;
            }
            adopt_seeded(pid, fd, s)?
        }
    };
    Some(as_used_by(pid, tid, fd, sk, state))
}

/// `state`, after announcing (pid, fd) when it is a holder other than the socket's owner.
#[inline(always)]
fn as_used_by(pid: u32, tid: u32, fd: i32, sk: u64, state: SockState) -> SockState {
    if state.owner_pid != pid || state.owner_fd != fd {
        announce_holder(pid, tid, fd, sk, &state);
    }
    state
}

/// A socket found at start-up (by inode number, which is all /proc tells) becomes known by its
/// `struct sock *`; the process using it is its owner (it has the seeded CONN_OPEN).
#[inline(always)]
fn adopt_seeded(pid: u32, fd: i32, s: Socket) -> Option<SockState> {
    let ino: u64 = read_at(s.socket, offset(|o| &o.socket_ino))?;
    // SAFETY: copied out at once.
    let seeded = unsafe { SEEDED.get(ino) }.copied()?;
    let state = SockState {
        conn_ts_ns: seeded.conn_ts_ns,
        owner_pid: pid,
        owner_fd: fd,
        role: seeded.role,
        _pad: [0; 7],
    };
    if SOCKS.insert(s.sk, state, 0).is_err() {
        count(stat::SOCKS_FULL);
    }
    let _ = SEEDED.remove(ino);
    Some(state)
}

/// Gives a holder that is not the owner its own CONN_OPEN, once.
#[inline(always)]
fn announce_holder(pid: u32, tid: u32, fd: i32, sk: u64, state: &SockState) {
    let holder = Holder { sk, pid, fd };
    // SAFETY: presence only.
    if unsafe { ANNOUNCED.get(holder) }.is_some() {
        return;
    }
    if announce(pid, tid, fd, sk, state, CONN_HELD) && ANNOUNCED.insert(holder, 1, 0).is_err() {
        count(stat::SOCKS_FULL);
    }
}

/// A socket that is no longer held by (pid, fd). Returns its state when it is known.
#[inline(always)]
pub fn release(pid: u32, fd: i32) -> Option<SockState> {
    let s = socket_of(fd)?;
    let p = SOCKS.get_ptr_mut(s.sk)?;
    // SAFETY: a live map value; a racing writer could only store the same kind of value.
    let state = unsafe { &mut *p };
    if state.owner_pid == pid && state.owner_fd == fd {
        state.owner_pid = 0;
    } else {
        let _ = ANNOUNCED.remove(Holder { sk: s.sk, pid, fd });
    }
    Some(*state)
}

/// Starts following the socket behind `fd` when it is a TCP/IP stream socket, with the
/// current (pid, fd) as its owner, and reports it.
#[inline(always)]
pub fn register(pid: u32, tid: u32, fd: i32, role: u8) {
    let Some(s) = socket_of(fd) else {
        return;
    };
    match is_tcp(s.sk) {
        Some(true) => {}
        // A UDP, Unix or raw socket: not ours to follow.
        Some(false) => return,
        None => {
            count(stat::SOCK_READ_FAILED);
            return;
        }
    }
    let state = SockState {
        // SAFETY: helper without preconditions.
        conn_ts_ns: unsafe { bpf_ktime_get_ns() },
        owner_pid: pid,
        owner_fd: fd,
        role,
        _pad: [0; 7],
    };
    if SOCKS.insert(s.sk, state, 0).is_err() {
        count(stat::SOCKS_FULL);
    }
    announce(pid, tid, fd, s.sk, &state, 0);
}

/// Forgets a socket TCP destroyed: no process holds it any more.
#[inline(always)]
pub fn forget(sk: u64) {
    let _ = SOCKS.remove(sk);
}

#[inline(always)]
fn is_tcp(sk: u64) -> Option<bool> {
    let family: u16 = read_at(sk, offset(|o| &o.skc_family))?;
    let protocol: u16 = read_at(sk, offset(|o| &o.sk_protocol))?;
    let sk_type: u16 = read_at(sk, offset(|o| &o.sk_type))?;
    Some(
        (family == AF_INET || family == AF_INET6)
            && protocol == IPPROTO_TCP
            && sk_type == SOCK_STREAM,
    )
}

/// Writes a CONN_OPEN for (pid, fd) with the socket's endpoints; `held` is `CONN_HELD` for a
/// holder other than the owner. False when the ring buffer is full (counted).
#[inline(always)]
fn announce(pid: u32, tid: u32, fd: i32, sk: u64, state: &SockState, held: u8) -> bool {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(stat::RINGBUF_FULL);
        return false;
    };
    // SAFETY: the reservation is sized for a ConnEvent; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut ev.header,
        kind::CONN_OPEN,
        pid,
        tid,
        fd,
        state.conn_ts_ns,
    );
    ev.role = state.role;
    ev.flags = held;
    ev.sock = sk;
    if read_endpoints(sk, ev).is_none() {
        count(stat::SOCK_READ_FAILED);
        ev.family = 0;
        ev.local_port = 0;
        ev.remote_port = 0;
        ev.local_addr = [0; 16];
        ev.remote_addr = [0; 16];
    }
    entry.submit(0);
    true
}

#[inline(always)]
fn read_endpoints(sk: u64, ev: &mut ConnEvent) -> Option<()> {
    let family: u16 = read_at(sk, offset(|o| &o.skc_family))?;
    ev.local_port = read_at(sk, offset(|o| &o.skc_num))?;
    let dport: u16 = read_at(sk, offset(|o| &o.skc_dport))?;
    ev.remote_port = u16::from_be(dport);
    ev.local_addr = [0; 16];
    ev.remote_addr = [0; 16];
    if family == AF_INET {
        let l: [u8; 4] = read_at(sk, offset(|o| &o.skc_rcv_saddr))?;
        let r: [u8; 4] = read_at(sk, offset(|o| &o.skc_daddr))?;
        ev.local_addr[..4].copy_from_slice(&l);
        ev.remote_addr[..4].copy_from_slice(&r);
    } else {
        ev.local_addr = read_at(sk, offset(|o| &o.skc_v6_rcv_saddr))?;
        ev.remote_addr = read_at(sk, offset(|o| &o.skc_v6_daddr))?;
    }
    ev.family = family;
    Some(())
}
