//! Types shared by the kernel programs (`traceid-ebpf`) and the agent (`traceid-user`).
//!
//! Every record the kernel writes to the ring buffer starts with an [`EventHeader`] at offset 0
//! whose `kind` says what follows. Kind numbers are part of the recording format
//! (`traceid record`): they are never reused, only added.
//!
//! All structs are `#[repr(C)]` with explicit padding so both sides agree byte for byte. With
//! the `user` feature they derive [`bytemuck::Pod`], whose derive refuses to compile a struct
//! with implicit padding or a field that is not itself plain old data: the agent decodes
//! untrusted bytes into these types with no `unsafe` of its own.
#![no_std]

/// Kind numbers of ring-buffer records. Never reuse a retired number.
pub mod kind {
    /// [`super::DataEvent`] followed by `captured` bytes of payload.
    pub const DATA: u16 = 1;
    /// [`super::ConnEvent`]: a TCP connection became known (accept, connect, or seeded at start-up).
    pub const CONN_OPEN: u16 = 2;
    /// [`super::EventHeader`] alone: the process closed a known socket fd.
    pub const CONN_CLOSE: u16 = 3;
    /// [`super::StateEvent`]: a TCP socket left ESTABLISHED (`sock:inet_sock_set_state`).
    pub const STATE: u16 = 4;
    /// [`super::EventHeader`] alone: the process called execve (new libraries to probe for TLS).
    pub const EXEC: u16 = 5;
    /// Written by the agent, never by the kernel: a TIME_WAIT census taken through sock_diag,
    /// recorded so a replay sees what the live run saw (layout: traceid-user lifecycle).
    pub const CENSUS: u16 = 6;
    /// Written by the agent, never by the kernel: events the kernel side counted as lost
    /// (layout: traceid-user pipeline).
    pub const LOSS: u16 = 7;
    /// Written by the agent, never by the kernel: who a process is (container, pod,
    /// namespace, workload), announced before its first record (layout: traceid-user identity).
    pub const IDENTITY: u16 = 8;
    /// [`super::GoServeEvent`]: a Go `net/http` server goroutine started serving a connection.
    pub const GO_SERVE: u16 = 9;
    /// [`super::GoCallEvent`]: a goroutine asked a Go `net/http` client connection for a request.
    pub const GO_CALL: u16 = 10;
    /// [`super::GoSpawnEvent`]: a goroutine started another (`go` statement).
    pub const GO_SPAWN: u16 = 11;
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
}

/// `DataEvent::direction`: bytes the process received (read, recv*, readv).
pub const DIR_INGRESS: u8 = 0;
/// `DataEvent::direction`: bytes the process sent (write, send*, writev, sendfile).
pub const DIR_EGRESS: u8 = 1;

/// `ConnEvent::role` / `SockInfo::role`: role not known (seeded connection without a listener match).
pub const ROLE_UNKNOWN: u8 = 0;
/// The process accepted the connection: it is the server side.
pub const ROLE_SERVER: u8 = 1;
/// The process connected: it is the client side.
pub const ROLE_CLIENT: u8 = 2;

/// Value of [`ConnEvent`]'s reserved byte (`_pad0`, 0 otherwise) when the record announces a
/// new holder of a connection already reported, not a new connection: a process using a
/// socket it inherited across fork, dup'd or received over a Unix socket. The connection
/// opened once (count it once); the holder gets its own (pid, fd) for the requests it serves.
pub const CONN_HELD: u8 = 1;

/// `DataEvent::source`: which syscall produced the bytes (for diagnostics and benchmarks).
pub mod source {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READV: u8 = 3;
    pub const WRITEV: u8 = 4;
    pub const RECVFROM: u8 = 5;
    pub const SENDTO: u8 = 6;
    pub const RECVMSG: u8 = 7;
    pub const SENDMSG: u8 = 8;
    pub const SENDFILE: u8 = 9;
    /// Plaintext returned by OpenSSL's SSL_read / SSL_read_ex (uretprobe).
    pub const SSL_READ: u8 = 10;
    /// Plaintext passed to OpenSSL's SSL_write / SSL_write_ex (uretprobe).
    pub const SSL_WRITE: u8 = 11;
    /// `_ex` variants: the byte count comes from an out-parameter (internal to the kernel side).
    pub const SSL_READ_EX: u8 = 12;
    pub const SSL_WRITE_EX: u8 = 13;
    /// Plaintext returned by Go's `crypto/tls.(*Conn).Read` (uprobes on its RET instructions).
    pub const GO_TLS_READ: u8 = 14;
    /// Plaintext passed to Go's `crypto/tls.(*Conn).Write` (uprobe at its entry).
    pub const GO_TLS_WRITE: u8 = 15;

    /// True for plaintext captured inside a TLS library (OpenSSL or Go's crypto/tls).
    pub const fn is_tls(source: u8) -> bool {
        source >= SSL_READ && source <= GO_TLS_WRITE
    }

    /// The direction of the bytes a source moves ([`super::DIR_INGRESS`] or
    /// [`super::DIR_EGRESS`]); None for a number this build does not know, so a new source
    /// must be given its direction here before anything is reported for it.
    pub const fn direction(source: u8) -> Option<u8> {
        match source {
            READ | READV | RECVFROM | RECVMSG | SSL_READ | SSL_READ_EX | GO_TLS_READ => {
                Some(super::DIR_INGRESS)
            }
            WRITE | WRITEV | SENDTO | SENDMSG | SENDFILE | SSL_WRITE | SSL_WRITE_EX
            | GO_TLS_WRITE => Some(super::DIR_EGRESS),
            _ => None,
        }
    }
}

/// Largest payload the kernel copies from one syscall (or one iovec). A power of two so the
/// kernel can bound lengths with a mask the verifier understands.
pub const MAX_CAPTURE: usize = 16384;
/// Default bytes captured per syscall: large enough for real header blocks (servers accept
/// 8–16 KiB) without copying whole bodies.
pub const DEFAULT_CAPTURE: u32 = 8192;
/// iovecs inspected per vectored call; later ones are reported as an uncaptured gap.
pub const MAX_IOVECS: u32 = 16;

/// Length of a process name as the kernel keeps it (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Header at offset 0 of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u16,
    /// Reserved, zero.
    pub _pad0: u16,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// The socket's file descriptor in `pid`.
    pub fd: i32,
    /// When the event happened: `bpf_ktime_get_ns`, CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Identity of the connection: CLOCK_MONOTONIC ns at which the (pid, fd) was registered.
    /// (pid, fd, conn_ts_ns) never names two connections even when fds are reused.
    pub conn_ts_ns: u64,
    /// Process name, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// A chunk of a socket's byte stream. Followed in the record by `captured` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DataEvent {
    pub header: EventHeader,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// One of [`source`].
    pub source: u8,
    /// The socket's role as the kernel knows it (`ROLE_*`).
    pub role: u8,
    /// Reserved, zero.
    pub _pad0: u8,
    /// Payload bytes that follow this struct (≤ [`MAX_CAPTURE`]).
    pub captured: u32,
    /// Bytes the syscall really moved (≥ `captured`); the rest is a gap of unknown content.
    pub real_len: u64,
}

/// A TCP connection the kernel started to follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ConnEvent {
    pub header: EventHeader,
    /// [`ROLE_SERVER`], [`ROLE_CLIENT`] or [`ROLE_UNKNOWN`].
    pub role: u8,
    /// [`CONN_HELD`] when this (pid, fd) uses a connection another (pid, fd) opened; else 0.
    pub flags: u8,
    /// `AF_INET` (2) or `AF_INET6` (10); 0 when the kernel could not read the socket.
    pub family: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Local address: IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub local_addr: [u8; 16],
    /// Remote address, as `local_addr`.
    pub remote_addr: [u8; 16],
    /// The kernel's `struct sock *` of the connection (0 when unknown: seeded at start-up, or
    /// the socket could not be read). `StateEvent::skaddr` names the same socket, which is how
    /// state changes seen in softirq context (any pid) are attributed to their connection.
    /// Added after the first recordings: a record 8 bytes shorter decodes with `sock = 0`.
    pub sock: u64,
}

/// A TCP socket changed state (`sock:inet_sock_set_state`). Only transitions out of
/// ESTABLISHED are reported: ESTABLISHED -> FIN_WAIT1 (this side closed first: it keeps the
/// TIME_WAIT), ESTABLISHED -> CLOSE_WAIT (the peer closed first), ESTABLISHED -> CLOSE (reset).
/// These often run in softirq context: `header.pid`/`comm` are whoever was on the CPU, not the
/// owner; `header.fd` is -1 and `header.conn_ts_ns` 0. Attribute by `skaddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct StateEvent {
    pub header: EventHeader,
    /// The kernel's `struct sock *` (matches [`ConnEvent::sock`]).
    pub skaddr: u64,
    /// [`tcp_state`] before and after.
    pub old_state: u8,
    pub new_state: u8,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Local (source) port, host byte order.
    pub local_port: u16,
    /// Remote (destination) port, host byte order.
    pub remote_port: u16,
    /// As [`ConnEvent::local_addr`].
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A connection the agent found at start-up, as it tells the kernel: the value of the
/// kernel's `SEEDED` table, keyed by the socket's inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockInfo {
    /// See [`EventHeader::conn_ts_ns`].
    pub conn_ts_ns: u64,
    /// One of the `ROLE_*` constants.
    pub role: u8,
    /// Reserved, zero.
    pub _pad0: [u8; 7],
}

/// Key of the kernel's table of known sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockKey {
    /// Process id (tgid).
    pub pid: u32,
    /// File descriptor.
    pub fd: i32,
}

/// Field offsets into kernel structs, read from the running kernel's BTF by the agent and
/// written into the programs' read-only data before load (no CO-RE in Rust eBPF yet).
/// Used to read a socket's 4-tuple from `current->files->fdt->fd[fd]->private_data->sk`.
/// All values are byte offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct KernelOffsets {
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_family`
    pub skc_family: u32,
    /// `sock.__sk_common.skc_daddr`
    pub skc_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr`
    pub skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (network byte order)
    pub skc_dport: u32,
    /// `sock.__sk_common.skc_num` (host byte order)
    pub skc_num: u32,
    /// `sock.__sk_common.skc_v6_daddr`
    pub skc_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`
    pub skc_v6_rcv_saddr: u32,
    /// `sock.sk_protocol` (u16)
    pub sk_protocol: u32,
    /// `sock.sk_type` (u16)
    pub sk_type: u32,
    /// 1 when every field was found; the programs read no socket otherwise.
    pub valid: u32,
    /// `socket.file`: the socket's back pointer to its file, which tells a socket's
    /// `file.private_data` from any other file's.
    pub socket_file: u32,
    /// From a `struct socket *` to its inode number (`socket_alloc.vfs_inode` +
    /// `inode.i_ino`): the number `/proc/PID/fd` shows as `socket:[N]`.
    pub socket_ino: u32,
}

/// Where a Go program keeps what the crypto/tls probes read, per process (the kernel's
/// `GO_TLS_PROCS` table, keyed by pid), from the program's Go version: byte offsets and one
/// address. These move between Go versions, so the programs never hard-code them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoTlsOffsets {
    /// `runtime.g.goid`: the goroutine id, read through the register holding the current `g`.
    pub g_goid: u32,
    /// `crypto/tls.Conn.conn`: the `net.Conn` interface (itab word, then data word).
    pub tls_conn_conn: u32,
    /// `net.TCPConn` (`net.conn.fd`): the `*net.netFD`.
    pub tcp_conn_fd: u32,
    /// `net.netFD.pfd.Sysfd`: the socket's file descriptor (a Go `int`, 64 bits).
    pub netfd_sysfd: u32,
    /// Address of the `*net.TCPConn` implementation of `net.Conn` (its itab) in the
    /// process: a `tls.Conn` over anything else is skipped. 0 when not known (a stripped or
    /// position-independent binary): the fd read is then trusted only if it names a socket
    /// the kernel follows in that process.
    pub tcp_conn_itab: u64,
}

/// `net/http.(*conn).serve` began: goroutine `goid` reads and serves, one after the other,
/// every HTTP/1 request of the server connection `header.fd` (`header.conn_ts_ns` names it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoServeEvent {
    pub header: EventHeader,
    /// The serving goroutine's id (`runtime.g.goid`; never reused within a process).
    pub goid: u64,
}

/// `net/http.(*persistConn).roundTrip` began: goroutine `goid` asked for the next request
/// written on the client connection `header.fd` (net/http writes it from the connection's
/// own `writeLoop` goroutine, right after).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoCallEvent {
    pub header: EventHeader,
    /// The asking goroutine's id (`runtime.g.goid`).
    pub goid: u64,
}

/// `runtime.newproc1` returned: goroutine `parent_goid` started goroutine `child_goid`.
/// `header.fd` is -1 and `header.conn_ts_ns` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoSpawnEvent {
    pub header: EventHeader,
    /// The goroutine that ran the `go` statement.
    pub parent_goid: u64,
    /// The goroutine it started.
    pub child_goid: u64,
}

/// Byte offsets into a Go program's structs, for the Go probes: per process (the value of the
/// kernel's `GO_PROCS` table), written by the agent from the table of verified Go versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoOffsets {
    /// `runtime.g.goid` (int64).
    pub g_goid: u32,
    /// `net/http.conn.rwc` (a `net.Conn` interface: its data word follows at +8).
    pub http_conn_rwc: u32,
    /// `net/http.persistConn.conn` (a `net.Conn` interface).
    pub persist_conn_conn: u32,
    /// `net.netFD.pfd.Sysfd` (int): the socket's fd. A `*net.TCPConn` points at its
    /// `*net.netFD` from offset 0.
    pub netfd_sysfd: u32,
    /// `net.netFD.family` (int): checked to be AF_INET or AF_INET6, so that a connection that
    /// is not a `*net.TCPConn` (TLS, Unix socket) is never misread.
    pub netfd_family: u32,
    /// `net.netFD.sotype` (int): checked to be SOCK_STREAM.
    pub netfd_sotype: u32,
}

/// Indexes of the kernel's loss and health counters (a per-CPU array named `STATS`).
pub mod stat {
    /// A ring-buffer reservation failed: the event was dropped.
    pub const RINGBUF_FULL: u32 = 0;
    /// Copying user memory failed (the payload was reported as a gap).
    pub const READ_USER_FAILED: u32 = 1;
    /// The per-thread table of calls in progress (TLS calls) was full.
    pub const ARGS_FULL: u32 = 2;
    /// The known-socket table was full (LRU evicted an entry).
    pub const SOCKS_FULL: u32 = 3;
    /// Reading a socket's endpoints through the kernel structs failed.
    pub const SOCK_READ_FAILED: u32 = 4;
    /// A TLS read/write whose socket could not be determined (no syscall seen inside it yet).
    pub const TLS_NO_FD: u32 = 5;
    /// A Go probe could not read the goroutine or the connection's socket from the program's
    /// memory (or the socket was not a known TCP connection): that link evidence is lost.
    pub const GO_READ_FAILED: u32 = 6;
    /// Bytes moved on a known socket by a call whose buffer the data hooks do not read
    /// (sendmmsg, recvmmsg, splice, io_uring...): reported as an uncaptured gap when the
    /// socket's owner made the call, else not reported at all.
    pub const OTHER_CALL: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

/// aya's own `Pod` marker, for the types the agent puts in or reads from kernel maps.
#[cfg(feature = "user")]
mod pod {
    use super::{GoOffsets, GoTlsOffsets, KernelOffsets, SockInfo, SockKey};

    /// aya::Pod asks what bytemuck::Pod asks (`Copy`, any bit pattern valid, every byte
    /// initialised). This compiles only while each type is bytemuck::Pod, whose derive checked
    /// it: the unsafe impls below rest on that check, not on a comment.
    const _: () = {
        const fn is_bytemuck_pod<T: bytemuck::Pod>() {}
        is_bytemuck_pod::<SockInfo>();
        is_bytemuck_pod::<SockKey>();
        is_bytemuck_pod::<KernelOffsets>();
        is_bytemuck_pod::<GoTlsOffsets>();

        is_bytemuck_pod::<GoOffsets>();
    };

    // SAFETY: SockInfo is bytemuck::Pod (asserted above): repr(C), no padding, integer fields.
    unsafe impl aya::Pod for SockInfo {}
    // SAFETY: SockKey is bytemuck::Pod (asserted above): repr(C), no padding, integer fields.
    unsafe impl aya::Pod for SockKey {}
    // SAFETY: KernelOffsets is bytemuck::Pod (asserted above): repr(C), sixteen u32 fields.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: GoTlsOffsets is bytemuck::Pod (asserted above): repr(C), no padding, integers.
    unsafe impl aya::Pod for GoTlsOffsets {}

    // SAFETY: GoOffsets is bytemuck::Pod (asserted above): repr(C), six u32 fields.
    unsafe impl aya::Pod for GoOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    // The layout is the recording format: changing it breaks old recordings.
    #[test]
    fn layouts_are_stable() {
        assert_eq!(size_of::<EventHeader>(), 48);
        assert_eq!(offset_of!(EventHeader, comm), 32);
        assert_eq!(size_of::<DataEvent>(), 64);
        assert_eq!(offset_of!(DataEvent, real_len), 56);
        assert_eq!(size_of::<ConnEvent>(), 96);
        assert_eq!(offset_of!(ConnEvent, sock), 88);
        assert_eq!(size_of::<StateEvent>(), 96);
        assert_eq!(offset_of!(StateEvent, skaddr), 48);
        assert_eq!(offset_of!(StateEvent, local_addr), 64);
        assert_eq!(size_of::<SockInfo>(), 16);
        assert_eq!(size_of::<SockKey>(), 8);
        assert_eq!(size_of::<KernelOffsets>(), 72);
        assert_eq!(size_of::<GoTlsOffsets>(), 24);
        assert_eq!(size_of::<GoServeEvent>(), 56);
        assert_eq!(size_of::<GoCallEvent>(), 56);
        assert_eq!(size_of::<GoSpawnEvent>(), 64);
        assert_eq!(offset_of!(GoSpawnEvent, child_goid), 56);
        assert_eq!(size_of::<GoOffsets>(), 24);
        assert!(MAX_CAPTURE.is_power_of_two());
    }

    #[test]
    fn every_source_has_its_direction_and_unknown_ones_none() {
        use source::*;
        for s in [
            READ,
            READV,
            RECVFROM,
            RECVMSG,
            SSL_READ,
            SSL_READ_EX,
            GO_TLS_READ,
        ] {
            assert_eq!(direction(s), Some(DIR_INGRESS), "source {s}");
        }
        for s in [
            WRITE,
            WRITEV,
            SENDTO,
            SENDMSG,
            SENDFILE,
            SSL_WRITE,
            SSL_WRITE_EX,
            GO_TLS_WRITE,
        ] {
            assert_eq!(direction(s), Some(DIR_EGRESS), "source {s}");
        }
        // A source added later (a new read-side syscall) is not silently a write.
        for s in [0, 16, 17, 200, 255] {
            assert_eq!(direction(s), None, "source {s}");
        }
    }
}
