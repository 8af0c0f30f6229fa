//! Decoding ring-buffer records into typed events.
//!
//! Records come from the kernel (live) or from a recording file (replay); either way they are
//! untrusted bytes: every length is checked, nothing panics. The shared structs are
//! `bytemuck::Pod` (their derive proves them padding-free and valid for any bit pattern), so
//! reading them needs no `unsafe` here.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytemuck::{Pod, Zeroable};

use crate::record::ConnKey;

use traceid_common::{
    kind, ConnEvent, DataEvent, EventHeader, GoCallEvent, GoServeEvent, GoSpawnEvent, StateEvent,
    COMM_LEN, DIR_EGRESS, MAX_CAPTURE, ROLE_CLIENT, ROLE_SERVER,
};

/// One decoded record; `payload` borrows from the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    Data(DataEvent, &'a [u8]),
    ConnOpen(ConnEvent),
    ConnClose(EventHeader),
    /// A TCP socket left ESTABLISHED; its header's pid is not the owner (see [`StateEvent`]).
    State(StateEvent),
    /// Written by the agent: a TIME_WAIT census (body decoded by the lifecycle).
    Census(EventHeader, &'a [u8]),
    /// Written by the agent: losses the kernel counted (body decoded by the pipeline).
    Loss(EventHeader, &'a [u8]),
    /// A Go goroutine started serving a server connection.
    GoServe(GoServeEvent),
    /// A Go goroutine asked for a request on a client connection.
    GoCall(GoCallEvent),
    /// A Go goroutine started another.
    GoSpawn(GoSpawnEvent),
}

impl Event<'_> {
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::Data(d, _) => &d.header,
            Event::ConnOpen(c) => &c.header,
            Event::ConnClose(h) => h,
            Event::State(s) => &s.header,
            Event::Census(h, _) | Event::Loss(h, _) => h,
            Event::GoServe(e) => &e.header,
            Event::GoCall(e) => &e.header,
            Event::GoSpawn(e) => &e.header,
        }
    }
}

/// Why a record could not be decoded. Offsets are byte offsets into the record.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for {what} ({need} bytes from offset 0)")]
    Short {
        what: &'static str,
        need: usize,
        len: usize,
    },
    #[error("unknown record kind {0} (header field `kind` at offset 0)")]
    UnknownKind(u16),
    #[error(
        "data record claims {claimed} payload bytes from offset {DATA_PAYLOAD_OFFSET} but carries {carried}"
    )]
    PayloadTruncated { claimed: u32, carried: usize },
    #[error(
        "data record captured length {captured} (offset {CAPTURED_OFFSET}) exceeds the capture limit {MAX_CAPTURE}"
    )]
    CaptureTooLarge { captured: u32 },
    #[error(
        "data record captured length {captured} (offset {CAPTURED_OFFSET}) exceeds the bytes the syscall moved, {real_len} (offset {REAL_LEN_OFFSET})"
    )]
    CapturedExceedsReal { captured: u32, real_len: u64 },
}

/// Where a data record's payload starts: right after its fixed part.
const DATA_PAYLOAD_OFFSET: usize = size_of::<DataEvent>();
const CAPTURED_OFFSET: usize = offset_of!(DataEvent, captured);
const REAL_LEN_OFFSET: usize = offset_of!(DataEvent, real_len);

/// Reads a `T` from the front of `buf` (any alignment); `what` names it in the error.
fn read_front<T: Pod>(buf: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    buf.get(..need)
        .and_then(|bytes| bytemuck::try_pod_read_unaligned(bytes).ok())
        .ok_or(DecodeError::Short {
            what,
            need,
            len: buf.len(),
        })
}

/// Decodes one raw record, as the kernel wrote it or a recording kept it.
pub fn decode(buf: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read_front(buf, "an event header")?;
    match header.kind {
        kind::DATA => {
            let ev: DataEvent = read_front(buf, "a data event")?;
            if ev.captured as usize > MAX_CAPTURE {
                return Err(DecodeError::CaptureTooLarge {
                    captured: ev.captured,
                });
            }
            if u64::from(ev.captured) > ev.real_len {
                return Err(DecodeError::CapturedExceedsReal {
                    captured: ev.captured,
                    real_len: ev.real_len,
                });
            }
            // The kernel may pad records; it never carries fewer bytes than it claims.
            let payload = buf
                .get(DATA_PAYLOAD_OFFSET..DATA_PAYLOAD_OFFSET + ev.captured as usize)
                .ok_or(DecodeError::PayloadTruncated {
                    claimed: ev.captured,
                    carried: buf.len() - DATA_PAYLOAD_OFFSET,
                })?;
            Ok(Event::Data(ev, payload))
        }
        kind::CONN_OPEN => {
            // Recordings made before `ConnEvent::sock` existed carry 8 bytes less: `sock` is 0.
            const BEFORE_SOCK: usize = offset_of!(ConnEvent, sock);
            if buf.len() < BEFORE_SOCK {
                return Err(DecodeError::Short {
                    what: "a connection event",
                    need: BEFORE_SOCK,
                    len: buf.len(),
                });
            }
            let mut ev = ConnEvent::zeroed();
            let known = bytemuck::bytes_of_mut(&mut ev);
            let n = buf.len().min(known.len());
            known[..n].copy_from_slice(&buf[..n]);
            Ok(Event::ConnOpen(ev))
        }
        kind::STATE => Ok(Event::State(read_front(buf, "a state event")?)),
        kind::CONN_CLOSE => Ok(Event::ConnClose(header)),
        kind::GO_SERVE => Ok(Event::GoServe(read_front(buf, "a Go serve event")?)),
        kind::GO_CALL => Ok(Event::GoCall(read_front(buf, "a Go call event")?)),
        kind::GO_SPAWN => Ok(Event::GoSpawn(read_front(buf, "a Go spawn event")?)),
        kind::CENSUS | kind::LOSS => {
            let body = buf.get(std::mem::size_of::<EventHeader>()..).unwrap_or(&[]);
            Ok(if header.kind == kind::CENSUS {
                Event::Census(header, body)
            } else {
                Event::Loss(header, body)
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The header of a record the agent writes itself ([`kind::CENSUS`], [`kind::LOSS`]): no
/// process, no connection, stamped `ts_ns`. The body follows.
pub fn agent_header(kind: u16, ts_ns: u64) -> Vec<u8> {
    pod_bytes(&EventHeader {
        kind,
        _pad0: 0,
        pid: 0,
        tid: 0,
        fd: -1,
        ts_ns,
        conn_ts_ns: 0,
        comm: [0; COMM_LEN],
    })
}

/// A close record the agent writes for a connection whose process exited: an exiting (or
/// killed) process releases its sockets without close(2), so the kernel reports no close.
/// Stamped `ts_ns`, when the exit was noticed.
pub fn exit_close_record(key: ConnKey, ts_ns: u64) -> Vec<u8> {
    pod_bytes(&EventHeader {
        kind: kind::CONN_CLOSE,
        _pad0: 0,
        pid: key.pid,
        tid: key.pid,
        fd: key.fd,
        ts_ns,
        conn_ts_ns: key.conn_ts_ns,
        comm: [0; COMM_LEN],
    })
}

/// Encodes a struct as its raw bytes, as the kernel writes it (for seeded records and tests).
pub fn pod_bytes<T: Pod>(v: &T) -> Vec<u8> {
    bytemuck::bytes_of(v).to_vec()
}

/// The process name in a header.
pub fn comm(h: &EventHeader) -> String {
    comm_str(&h.comm).into_owned()
}

fn comm_str(raw: &[u8; COMM_LEN]) -> std::borrow::Cow<'_, str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&raw[..end])
}

/// Process names shared: every connection and request record of a process holds the same
/// one instead of a copy (a host runs few distinct names, and connections by the 100,000).
#[derive(Debug, Default)]
pub struct Comms {
    names: crate::mem::FastMap<[u8; COMM_LEN], std::sync::Arc<str>>,
}

impl Comms {
    /// Distinct names kept; beyond it the table starts over (names still in use live on).
    const MAX: usize = 4096;

    pub fn intern(&mut self, raw: &[u8; COMM_LEN]) -> std::sync::Arc<str> {
        if let Some(name) = self.names.get(raw) {
            return std::sync::Arc::clone(name);
        }
        if self.names.len() >= Self::MAX {
            self.names = crate::mem::FastMap::default();
        }
        let name: std::sync::Arc<str> = comm_str(raw).into();
        self.names.insert(*raw, std::sync::Arc::clone(&name));
        name
    }
}

/// Local and remote endpoints of a connection event; None when the kernel could not read them.
pub fn endpoints(c: &ConnEvent) -> Option<(SocketAddr, SocketAddr)> {
    let ip = |a: &[u8; 16]| -> Option<IpAddr> {
        match c.family {
            2 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            10 => {
                let v6 = Ipv6Addr::from(*a);
                // Dual-stack sockets show IPv4 peers as ::ffff:a.b.c.d; report them as IPv4.
                Some(
                    v6.to_ipv4_mapped()
                        .map(IpAddr::V4)
                        .unwrap_or(IpAddr::V6(v6)),
                )
            }
            _ => None,
        }
    };
    Some((
        SocketAddr::new(ip(&c.local_addr)?, c.local_port),
        SocketAddr::new(ip(&c.remote_addr)?, c.remote_port),
    ))
}

/// Local and remote endpoints of a state event; None for an unknown family.
pub fn state_endpoints(s: &StateEvent) -> Option<(SocketAddr, SocketAddr)> {
    let c = ConnEvent {
        header: s.header,
        role: 0,
        flags: 0,
        family: s.family,
        local_port: s.local_port,
        remote_port: s.remote_port,
        local_addr: s.local_addr,
        remote_addr: s.remote_addr,
        sock: s.skaddr,
    };
    endpoints(&c)
}

/// Socket role as the engine uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Client,
    Unknown,
}

impl Role {
    pub fn from_raw(r: u8) -> Role {
        match r {
            ROLE_SERVER => Role::Server,
            ROLE_CLIENT => Role::Client,
            _ => Role::Unknown,
        }
    }
}

/// True when the data left the process (write side).
pub fn is_egress(d: &DataEvent) -> bool {
    d.direction == DIR_EGRESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u16) -> EventHeader {
        EventHeader {
            kind,
            _pad0: 0,
            pid: 42,
            tid: 43,
            fd: 5,
            ts_ns: 1000,
            conn_ts_ns: 900,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn data_round_trip_and_bad_lengths() {
        let ev = DataEvent {
            header: header(kind::DATA),
            direction: DIR_EGRESS,
            source: 2,
            role: ROLE_CLIENT,
            _pad0: 0,
            captured: 4,
            real_len: 10,
        };
        let mut raw = pod_bytes(&ev);
        raw.extend_from_slice(b"GET ");
        match decode(&raw).unwrap() {
            Event::Data(d, p) => {
                assert_eq!(p, b"GET ");
                assert_eq!(d.real_len, 10);
                assert_eq!(comm(&d.header), "curl");
            }
            other => panic!("{other:?}"),
        }
        // A record that is longer than it claims (kernel padding) decodes the same.
        let mut padded = raw.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(decode(&padded), decode(&raw));
        // Any alignment: the same record one byte into a buffer.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&raw);
        assert_eq!(decode(&shifted[1..]), decode(&raw));

        // Truncated payload, truncated header, lying lengths: errors that say what, not panics.
        let err = decode(&raw[..raw.len() - 1]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::PayloadTruncated {
                claimed: 4,
                carried: 3
            }
        );
        assert_eq!(
            err.to_string(),
            "data record claims 4 payload bytes from offset 64 but carries 3"
        );
        assert_eq!(
            decode(&raw[..10]),
            Err(DecodeError::Short {
                what: "an event header",
                need: 48,
                len: 10
            })
        );
        assert_eq!(
            decode(&raw[..50]),
            Err(DecodeError::Short {
                what: "a data event",
                need: 64,
                len: 50
            })
        );
        let mut lying = ev;
        lying.real_len = 2;
        let mut raw2 = pod_bytes(&lying);
        raw2.extend_from_slice(b"GET ");
        let err = decode(&raw2).unwrap_err();
        assert_eq!(
            err,
            DecodeError::CapturedExceedsReal {
                captured: 4,
                real_len: 2
            }
        );
        assert!(err.to_string().contains("(offset 52)"), "{err}");
        let huge = DataEvent {
            captured: MAX_CAPTURE as u32 + 1,
            real_len: u64::MAX,
            ..ev
        };
        assert_eq!(
            decode(&pod_bytes(&huge)),
            Err(DecodeError::CaptureTooLarge {
                captured: MAX_CAPTURE as u32 + 1
            })
        );
        let mut unknown = pod_bytes(&header(99));
        unknown.push(0);
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn go_events_round_trip_and_short_ones_are_refused() {
        let serve = GoServeEvent {
            header: header(kind::GO_SERVE),
            goid: 17,
        };
        let call = GoCallEvent {
            header: header(kind::GO_CALL),
            goid: 18,
        };
        let spawn = GoSpawnEvent {
            header: EventHeader {
                fd: -1,
                conn_ts_ns: 0,
                ..header(kind::GO_SPAWN)
            },
            parent_goid: 17,
            child_goid: 19,
        };
        assert_eq!(decode(&pod_bytes(&serve)), Ok(Event::GoServe(serve)));
        assert_eq!(decode(&pod_bytes(&call)), Ok(Event::GoCall(call)));
        assert_eq!(decode(&pod_bytes(&spawn)), Ok(Event::GoSpawn(spawn)));
        let short = &pod_bytes(&spawn)[..60];
        assert_eq!(
            decode(short),
            Err(DecodeError::Short {
                what: "a Go spawn event",
                need: 64,
                len: 60
            })
        );
    }

    #[test]
    fn endpoints_v4_v6_and_mapped() {
        let mut c = ConnEvent {
            header: header(kind::CONN_OPEN),
            role: ROLE_SERVER,
            flags: 0,
            family: 2,
            local_port: 8080,
            remote_port: 50000,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            sock: 0xffff_8880_dead_b000,
        };
        // A record from before `sock` existed (8 bytes shorter) decodes with sock = 0.
        let raw = pod_bytes(&c);
        assert_eq!(decode(&raw), Ok(Event::ConnOpen(c)));
        match decode(&raw[..raw.len() - 8]).unwrap() {
            Event::ConnOpen(old) => assert_eq!(old, ConnEvent { sock: 0, ..c }),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode(&raw[..raw.len() - 9]),
            Err(DecodeError::Short {
                what: "a connection event",
                need: 88,
                len: 87
            })
        );
        c.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        c.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        let (l, r) = endpoints(&c).unwrap();
        assert_eq!(l.to_string(), "127.0.0.1:8080");
        assert_eq!(r.to_string(), "127.0.0.2:50000");
        c.family = 10;
        c.local_addr = Ipv6Addr::LOCALHOST.octets();
        c.remote_addr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let (l, r) = endpoints(&c).unwrap();
        assert_eq!(l.to_string(), "[::1]:8080");
        assert_eq!(r.to_string(), "10.1.2.3:50000");
        c.family = 0;
        assert_eq!(endpoints(&c), None);
    }

    #[test]
    fn state_event_decodes() {
        let mut s = StateEvent {
            header: EventHeader {
                fd: -1,
                conn_ts_ns: 0,
                ..header(kind::STATE)
            },
            skaddr: 0xffff_8880_0000_1000,
            old_state: traceid_common::tcp_state::ESTABLISHED,
            new_state: traceid_common::tcp_state::FIN_WAIT1,
            family: 10,
            local_port: 40000,
            remote_port: 8080,
            local_addr: Ipv6Addr::LOCALHOST.octets(),
            remote_addr: Ipv6Addr::LOCALHOST.octets(),
        };
        let raw = pod_bytes(&s);
        assert_eq!(decode(&raw), Ok(Event::State(s)));
        assert!(decode(&raw[..raw.len() - 1]).is_err());
        let (l, r) = state_endpoints(&s).unwrap();
        assert_eq!(
            (l.to_string(), r.to_string()),
            ("[::1]:40000".into(), "[::1]:8080".into())
        );
        s.family = 2;
        s.local_addr = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        s.remote_addr = s.local_addr;
        let (_, r) = state_endpoints(&s).unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn an_exit_close_record_closes_the_connection_it_names() {
        let key = ConnKey {
            pid: 42,
            fd: 7,
            conn_ts_ns: 900,
        };
        let raw = exit_close_record(key, 5000);
        let Ok(Event::ConnClose(h)) = decode(&raw) else {
            panic!("not a close: {:?}", decode(&raw));
        };
        assert_eq!(ConnKey::of(&h), key);
        assert_eq!(h.ts_ns, 5000);
    }
}
