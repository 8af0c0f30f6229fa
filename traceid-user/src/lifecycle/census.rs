//! TIME_WAIT census through netlink `sock_diag` (the interface `ss` uses).
//!
//! A client that never reuses connections leaves one TIME_WAIT socket per
//! connection on the side that closed first; a host was once seen with 67,842
//! of them. This module counts and lists them, IPv4 and IPv6, in the caller's
//! network namespace, with one `SOCK_DIAG_BY_FAMILY` dump per address family
//! filtered in the kernel by state (`idiag_states = 1 << TCP_TIME_WAIT`), so
//! only TIME_WAIT sockets cross into user space.
//!
//! Every dump is bounded: by the number of sockets the caller asks for
//! (`max`), by a receive timeout on the netlink socket and by an overall
//! deadline per dump.
//!
//! The module is self-contained (no `crate::` paths): it is compiled both as
//! `lifecycle::census` and, for tests, through a `#[path]` include.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    DecodeError, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_TIME_WAIT},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// Path of the ephemeral port range sysctl.
pub const PORT_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Path of the `net.ipv4.tcp_tw_reuse` sysctl.
pub const TW_REUSE_PATH: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";

/// How long one `recv` on the netlink socket may block before the dump is
/// abandoned (the kernel answers a dump immediately; a silent socket is a bug).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on the wall time of one family's dump, whatever its size.
/// Hundreds of thousands of TIME_WAIT sockets decode in well under a second.
const DUMP_DEADLINE: Duration = Duration::from_secs(30);
/// Receive buffer for one netlink datagram. The kernel sizes dump datagrams
/// after the largest buffer user space offered (capped at 32 KiB), so 64 KiB
/// always holds a whole datagram.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Kernel-side socket receive buffer requested for the netlink socket.
const SO_RCVBUF_LEN: usize = 1024 * 1024;

/// One TCP socket in TIME_WAIT, as seen from its own side: `local` is the
/// address of the side that closed first, `remote` its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeWaitSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Why a census or a sysctl read failed. Each variant names the operation
/// and carries the underlying io/errno (or decode) cause.
#[derive(thiserror::Error, Debug)]
pub enum CensusError {
    /// `socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG)` or `bind` failed.
    #[error("opening NETLINK_SOCK_DIAG socket ({op}): {source}")]
    Open {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A `setsockopt` on the fresh netlink socket failed.
    #[error("configuring NETLINK_SOCK_DIAG socket ({option}): {source}")]
    Configure {
        option: &'static str,
        #[source]
        source: io::Error,
    },
    /// Sending the dump request failed (or was short).
    #[error("sending {family} TIME_WAIT sock_diag dump request: {source}")]
    Send {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    /// `recv` on the netlink socket failed (including its receive timeout).
    #[error("receiving {family} TIME_WAIT sock_diag dump: {source}")]
    Receive {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel answered the dump with `NLMSG_ERROR` or a negative
    /// `NLMSG_DONE` code (errno in `source`).
    #[error("kernel rejected {family} TIME_WAIT sock_diag dump: {source}")]
    Kernel {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    /// A datagram or message could not be decoded.
    #[error("decoding {family} sock_diag message: {source}")]
    Decode {
        family: &'static str,
        #[source]
        source: DecodeError,
    },
    /// The dump did not reach `NLMSG_DONE` within the deadline.
    #[error("{family} TIME_WAIT sock_diag dump did not finish within {deadline:?}")]
    Deadline {
        family: &'static str,
        deadline: Duration,
    },
    /// Reading a sysctl file failed.
    #[error("reading {path}: {source}")]
    ReadSysctl {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// A sysctl file held something unexpected.
    #[error("parsing {path} (content {content:?}): {reason}")]
    ParseSysctl {
        path: &'static str,
        content: String,
        reason: String,
    },
}

/// Every TCP socket in TIME_WAIT in the caller's network namespace, IPv4
/// and IPv6, via one sock_diag dump per family filtered in the kernel by
/// state (states mask = 1 << TCP_TIME_WAIT).
/// Bounded: stops after `max` sockets and says so (truncated=true) — hosts
/// can have hundreds of thousands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// At most `max` sockets, IPv4 first, in kernel hash order.
    pub sockets: Vec<TimeWaitSocket>,
    /// True when at least one more TIME_WAIT socket existed beyond `max`
    /// (exactly `max` sockets on the host is not truncation).
    pub truncated: bool,
}

/// Census of TIME_WAIT sockets, IPv4 and IPv6, at most `max` of them.
/// Opens a netlink socket for this one call; use [`CensusSocket`] to reuse one.
pub fn time_wait_census(max: usize) -> Result<Census, CensusError> {
    CensusSocket::open()?.dump(max)
}

/// Number of TIME_WAIT sockets (IPv4 + IPv6) without building a list.
pub fn time_wait_count() -> Result<u64, CensusError> {
    CensusSocket::open()?.count()
}

/// Number of TIME_WAIT sockets per remote address (the peer that the closing
/// side was talking to). The reporting layer sorts this to name the churners.
pub fn count_by_remote(sockets: &[TimeWaitSocket]) -> HashMap<SocketAddr, u64> {
    let mut counts: HashMap<SocketAddr, u64> = HashMap::new();
    for s in sockets {
        *counts.entry(s.remote).or_insert(0) += 1;
    }
    counts
}

/// `/proc/sys/net/ipv4/ip_local_port_range` as `(low, high)`: the ephemeral
/// ports a client can use towards one destination, which TIME_WAIT holds.
pub fn local_port_range() -> Result<(u16, u16), CensusError> {
    let content = read_sysctl(PORT_RANGE_PATH)?;
    parse_port_range(&content)
}

/// `net.ipv4.tcp_tw_reuse`: 0 (off), 1 (on), 2 (loopback only, the default).
/// Returned as read; values above 2 are passed through for newer kernels.
pub fn tcp_tw_reuse() -> Result<u8, CensusError> {
    let content = read_sysctl(TW_REUSE_PATH)?;
    parse_tw_reuse(&content)
}

fn read_sysctl(path: &'static str) -> Result<String, CensusError> {
    std::fs::read_to_string(path).map_err(|source| CensusError::ReadSysctl { path, source })
}

fn parse_port_range(content: &str) -> Result<(u16, u16), CensusError> {
    let bad = |reason: String| CensusError::ParseSysctl {
        path: PORT_RANGE_PATH,
        content: content.to_owned(),
        reason,
    };
    let mut fields = content.split_whitespace();
    let (Some(low), Some(high), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad("expected two whitespace-separated ports".into()));
    };
    let low: u16 = low
        .parse()
        .map_err(|e| bad(format!("low port {low:?}: {e}")))?;
    let high: u16 = high
        .parse()
        .map_err(|e| bad(format!("high port {high:?}: {e}")))?;
    if low > high {
        return Err(bad(format!("low port {low} above high port {high}")));
    }
    Ok((low, high))
}

fn parse_tw_reuse(content: &str) -> Result<u8, CensusError> {
    let trimmed = content.trim();
    trimmed.parse::<u8>().map_err(|e| CensusError::ParseSysctl {
        path: TW_REUSE_PATH,
        content: content.to_owned(),
        reason: e.to_string(),
    })
}

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn socket_id(self) -> SocketId {
        match self {
            Family::V4 => SocketId::new_v4(),
            Family::V6 => SocketId::new_v6(),
        }
    }
}

/// A `NETLINK_SOCK_DIAG` socket that can run several censuses.
///
/// A dump stopped early (truncation) leaves the rest of the kernel's answer
/// queued; the socket is then dropped (which ends the dump in the kernel) and
/// a fresh one is opened lazily on the next call, so no stale message can
/// leak into a later census.
pub struct CensusSocket {
    socket: Option<Socket>,
    sequence: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for CensusSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CensusSocket")
            .field("fd", &self.socket.as_ref().map(|s| s.as_raw_fd()))
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl CensusSocket {
    /// Opens and configures the netlink socket.
    pub fn open() -> Result<Self, CensusError> {
        Ok(Self {
            socket: Some(open_socket()?),
            sequence: 0,
            buf: vec![0; RECV_BUF_LEN],
        })
    }

    /// TIME_WAIT sockets, IPv4 then IPv6, at most `max`; see [`Census`].
    pub fn dump(&mut self, max: usize) -> Result<Census, CensusError> {
        let mut sockets = Vec::with_capacity(max.min(4096));
        let truncated = self.dump_each(max, &mut |s| sockets.push(s))?;
        Ok(Census { sockets, truncated })
    }

    /// Hands TIME_WAIT sockets, IPv4 then IPv6, at most `max`, to `visit` as they come, so a
    /// caller that keeps them in its own form never holds a second list (a host can have
    /// hundreds of thousands). Returns whether the census was truncated (see [`Census`]).
    pub fn dump_each(
        &mut self,
        max: usize,
        visit: &mut dyn FnMut(TimeWaitSocket),
    ) -> Result<bool, CensusError> {
        let (mut n, mut truncated) = (0usize, false);
        for family in [Family::V4, Family::V6] {
            let complete = self.dump_family(family, &mut |s| {
                if n >= max {
                    truncated = true;
                    return ControlFlow::Break(());
                }
                n += 1;
                visit(s);
                ControlFlow::Continue(())
            })?;
            if !complete {
                break;
            }
        }
        Ok(truncated)
    }

    /// Number of TIME_WAIT sockets, IPv4 + IPv6, without building a list.
    pub fn count(&mut self) -> Result<u64, CensusError> {
        let mut n = 0u64;
        for family in [Family::V4, Family::V6] {
            self.dump_family(family, &mut |_| {
                n += 1;
                ControlFlow::Continue(())
            })?;
        }
        Ok(n)
    }

    fn socket(&mut self) -> Result<&Socket, CensusError> {
        if self.socket.is_none() {
            self.socket = Some(open_socket()?);
        }
        Ok(self.socket.as_ref().expect("socket just opened"))
    }

    /// Runs one family's dump, handing each TIME_WAIT socket to `visit`.
    /// Returns `Ok(true)` when the dump reached `NLMSG_DONE`, `Ok(false)`
    /// when `visit` stopped it early. On early stop or error the netlink
    /// socket is discarded so leftovers never reach the next dump.
    fn dump_family(
        &mut self,
        family: Family,
        visit: &mut dyn FnMut(TimeWaitSocket) -> ControlFlow<()>,
    ) -> Result<bool, CensusError> {
        let result = self.dump_family_inner(family, visit);
        if !matches!(result, Ok(true)) {
            self.socket = None;
        }
        result
    }

    fn dump_family_inner(
        &mut self,
        family: Family,
        visit: &mut dyn FnMut(TimeWaitSocket) -> ControlFlow<()>,
    ) -> Result<bool, CensusError> {
        let name = family.name();
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let request = build_request(family, sequence);

        let mut buf = std::mem::take(&mut self.buf);
        let outcome = (|| {
            let socket = self.socket()?;
            let sent = socket
                .send(&request, 0)
                .map_err(|source| CensusError::Send {
                    family: name,
                    source,
                })?;
            if sent != request.len() {
                return Err(CensusError::Send {
                    family: name,
                    source: io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short send: {sent} of {} bytes", request.len()),
                    ),
                });
            }

            let started = Instant::now();
            loop {
                if started.elapsed() > DUMP_DEADLINE {
                    return Err(CensusError::Deadline {
                        family: name,
                        deadline: DUMP_DEADLINE,
                    });
                }
                let len = match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(CensusError::Receive {
                            family: name,
                            source,
                        })
                    }
                };
                if len > buf.len() {
                    return Err(CensusError::Receive {
                        family: name,
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("netlink datagram of {len} bytes truncated to {}", buf.len()),
                        ),
                    });
                }
                if len == 0 {
                    return Err(CensusError::Receive {
                        family: name,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "empty netlink datagram",
                        ),
                    });
                }
                match walk_datagram(&buf[..len], family, sequence, visit)? {
                    Walk::More => {}
                    Walk::Done => return Ok(true),
                    Walk::Stopped => return Ok(false),
                }
            }
        })();
        self.buf = buf;
        outcome
    }
}

enum Walk {
    More,
    Done,
    Stopped,
}

/// Decodes the netlink messages of one datagram. The loop is bounded by the
/// datagram length: every message advances the offset by at least a header.
fn walk_datagram(
    datagram: &[u8],
    family: Family,
    sequence: u32,
    visit: &mut dyn FnMut(TimeWaitSocket) -> ControlFlow<()>,
) -> Result<Walk, CensusError> {
    let name = family.name();
    let decode = |source: DecodeError| CensusError::Decode {
        family: name,
        source,
    };
    let mut offset = 0usize;
    while offset < datagram.len() {
        let message =
            NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[offset..]).map_err(decode)?;
        let length = message.header.length as usize;
        // NLMSG_ALIGN: messages are padded to 4 bytes inside a datagram.
        let advance = (length + 3) & !3;
        if length < 16 {
            return Err(decode(DecodeError::from(format!(
                "netlink message length {length} below header size"
            ))));
        }
        offset = offset.saturating_add(advance);
        if message.header.sequence_number != sequence {
            // Stale answer to an earlier request: not ours.
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                if let Some(s) = to_time_wait(&response.header) {
                    if visit(s).is_break() {
                        return Ok(Walk::Stopped);
                    }
                }
            }
            NetlinkPayload::Done(done) => {
                if done.code < 0 {
                    return Err(CensusError::Kernel {
                        family: name,
                        source: io::Error::from_raw_os_error(-done.code),
                    });
                }
                return Ok(Walk::Done);
            }
            // An ACK (code 0) is not expected for a dump; a NACK is fatal.
            NetlinkPayload::Error(error) if error.raw_code() != 0 => {
                return Err(CensusError::Kernel {
                    family: name,
                    source: error.to_io(),
                });
            }
            NetlinkPayload::Overrun(_) => {
                return Err(CensusError::Receive {
                    family: name,
                    source: io::Error::new(io::ErrorKind::InvalidData, "netlink overrun"),
                });
            }
            NetlinkPayload::Error(_) | NetlinkPayload::Noop | NetlinkPayload::InnerMessage(_) => {}
            // `NetlinkPayload` is not marked non_exhaustive today, but be safe
            // if the crate grows a variant.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    Ok(Walk::More)
}

/// Converts a kernel answer into a [`TimeWaitSocket`]; `None` for anything
/// not in TIME_WAIT (the kernel filter already excludes those).
fn to_time_wait(header: &InetResponseHeader) -> Option<TimeWaitSocket> {
    if header.state != TCP_TIME_WAIT {
        return None;
    }
    let id = &header.socket_id;
    Some(TimeWaitSocket {
        local: socket_addr(id.source_address, id.source_port, id.interface_id),
        remote: socket_addr(id.destination_address, id.destination_port, id.interface_id),
    })
}

fn socket_addr(ip: IpAddr, port: u16, interface: u32) -> SocketAddr {
    match ip {
        // Link-local IPv6 addresses only mean something with their interface.
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, interface))
        }
        _ => SocketAddr::new(ip, port),
    }
}

fn build_request(family: Family, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: family.af(),
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // 1 << TCP_TIME_WAIT: the kernel skips every other state.
            states: StateFlags::TIME_WAIT,
            socket_id: family.socket_id(),
        })
        .into(),
    );
    message.finalize();
    let mut buf = vec![0u8; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

fn open_socket() -> Result<Socket, CensusError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|source| CensusError::Open {
        op: "socket",
        source,
    })?;
    socket
        .bind_auto()
        .map_err(|source| CensusError::Open { op: "bind", source })?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(|source| CensusError::Open {
            op: "connect",
            source,
        })?;
    // Best effort: a bigger kernel buffer only saves wake-ups.
    let _ = socket.set_rx_buf_sz(SO_RCVBUF_LEN);
    set_recv_timeout(&socket, RECV_TIMEOUT).map_err(|source| CensusError::Configure {
        option: "SO_RCVTIMEO",
        source,
    })?;
    Ok(socket)
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: the fd is a live socket owned by `socket`; `tv` is a valid
    // timeval whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
#[path = "census_tests.rs"]
mod tests;
