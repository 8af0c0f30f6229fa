//! TCP state changes: `sock:inet_sock_set_state`.
//!
//! Only transitions out of ESTABLISHED are copied: they say which side closed first
//! (ESTABLISHED -> FIN_WAIT1: this socket's owner closed first and keeps the TIME_WAIT;
//! ESTABLISHED -> CLOSE_WAIT: the peer did; ESTABLISHED -> CLOSE: reset). The kernel never
//! reports the move into TIME_WAIT itself (the timewait mini-socket replaces the socket), so
//! userspace counts TIME_WAIT through sock_diag and attributes it with what it learns here.
//!
//! These run in softirq context as often as not: the current pid is not the owner, and the
//! agent's own pid is not filtered here (the event may land on the agent's CPU time). The
//! record carries the `struct sock *` (`skaddr`), which userspace matches with the `sock` of
//! the connection it registered at accept/connect.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use traceid_common::{kind, stat, tcp_state, StateEvent};

use crate::maps::{count, fill_header, EVENTS};

// Field offsets of events/sock/inet_sock_set_state/format (stable since 4.16).
const OFF_SKADDR: usize = 8;
const OFF_OLDSTATE: usize = 16;
const OFF_NEWSTATE: usize = 20;
const OFF_SPORT: usize = 24;
const OFF_DPORT: usize = 26;
const OFF_FAMILY: usize = 28;
const OFF_PROTOCOL: usize = 30;
const OFF_SADDR: usize = 32;
const OFF_DADDR: usize = 36;
const OFF_SADDR_V6: usize = 40;
const OFF_DADDR_V6: usize = 56;

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = on_state(&ctx);
    0
}

#[inline(always)]
fn on_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: every read_at below names a field of this tracepoint's record by its offset and
    // size in events/sock/inet_sock_set_state/format (here `__u16 protocol` at 30), so the
    // address stays inside the record the kernel passed; read_at copies it with
    // bpf_probe_read_kernel, which returns Err instead of faulting, into an integer or byte
    // array, valid for any bits.
    let protocol: u16 = unsafe { ctx.read_at(OFF_PROTOCOL) }?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: as for `protocol`: `int oldstate` at 16.
    let old: i32 = unsafe { ctx.read_at(OFF_OLDSTATE) }?;
    if old != tcp_state::ESTABLISHED as i32 {
        return Ok(());
    }
    // SAFETY: as for `protocol`: `int newstate` at 20.
    let new: i32 = unsafe { ctx.read_at(OFF_NEWSTATE) }?;
    let Some(mut entry) = EVENTS.reserve::<StateEvent>(0) else {
        count(stat::RINGBUF_FULL);
        return Ok(());
    };
    // SAFETY: the reservation is sized for a StateEvent; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let id = bpf_get_current_pid_tgid();
    fill_header(
        &mut ev.header,
        kind::STATE,
        (id >> 32) as u32,
        id as u32,
        -1,
        0,
    );
    ev.old_state = old as u8;
    ev.new_state = new as u8;
    ev.local_addr = [0; 16];
    ev.remote_addr = [0; 16];
    let read = |ev: &mut StateEvent| -> Result<(), i64> {
        // SAFETY: as for `protocol`: `const void *skaddr` at 8, read as its 8 address bytes.
        ev.skaddr = unsafe { ctx.read_at(OFF_SKADDR) }?;
        // SAFETY: as for `protocol`: `__u16 sport` at 24.
        ev.local_port = unsafe { ctx.read_at(OFF_SPORT) }?;
        // SAFETY: as for `protocol`: `__u16 dport` at 26.
        ev.remote_port = unsafe { ctx.read_at(OFF_DPORT) }?;
        // SAFETY: as for `protocol`: `__u16 family` at 28.
        ev.family = unsafe { ctx.read_at(OFF_FAMILY) }?;
        if ev.family == AF_INET {
            // SAFETY: as for `protocol`: `__u8 saddr[4]` at 32.
            let l: [u8; 4] = unsafe { ctx.read_at(OFF_SADDR) }?;
            // SAFETY: as for `protocol`: `__u8 daddr[4]` at 36.
            let r: [u8; 4] = unsafe { ctx.read_at(OFF_DADDR) }?;
            ev.local_addr[..4].copy_from_slice(&l);
            ev.remote_addr[..4].copy_from_slice(&r);
        } else {
            // SAFETY: as for `protocol`: `__u8 saddr_v6[16]` at 40.
            ev.local_addr = unsafe { ctx.read_at(OFF_SADDR_V6) }?;
            // SAFETY: as for `protocol`: `__u8 daddr_v6[16]` at 56.
            ev.remote_addr = unsafe { ctx.read_at(OFF_DADDR_V6) }?;
        }
        Ok(())
    };
    if read(ev).is_err() {
        entry.discard(0);
        return Ok(());
    }
    entry.submit(0);
    Ok(())
}
