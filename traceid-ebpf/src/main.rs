//! traceid's kernel programs. They copy, tag and filter; they never parse.
//!
//! - `conn`: accept/accept4/connect/close and tcp_destroy_sock tracepoints maintain the table
//!   of known TCP sockets (`SOCKS`, keyed by the kernel socket: see `sockets`) and report
//!   connections opening and closing.
//! - `data`: the socket layer's `sock:sock_recv_length`/`sock_send_length` tracepoints copy
//!   the first bytes of every transfer on a known socket into the ring buffer (other fds never
//!   reach them); `regs` gives them the syscall and its arguments from the saved user
//!   registers (read/write/readv/writev/recvfrom/sendto/recvmsg/sendmsg/sendfile).
//! - `state`: `sock:inet_sock_set_state` reports TCP sockets leaving ESTABLISHED (who closed
//!   first), tagged with the `struct sock *` that `conn` reported at registration.
//!
//! - `go_tls`: uprobes on Go's crypto/tls `(*Conn).Write` and `(*Conn).Read` copy the
//!   plaintext of Go programs, keyed by goroutine.
//!
//! Everything is bounded: fixed-size maps (LRU where entries could pile up), at most
//! `MAX_IOVECS` iovecs per call, at most `MAX_CAPTURE` bytes per copy. Every loss is counted in
//! `STATS`.
#![no_std]
#![no_main]

mod conn;
mod data;
mod go;
mod go_tls;
mod maps;
mod regs;
mod sockets;
mod state;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program in which this is reachable, so no loaded program
    // can get here; `unreachable_unchecked` keeps the panic path out of the object.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
