//! Decoding ring-buffer records into typed events.
//!
//! Records come from the kernel (live) or from a recording file (replay); either way they are
//! untrusted bytes: every length is checked, nothing panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use traceid_common::{
    kind, ConnEvent, DataEvent, EventHeader, StateEvent, COMM_LEN, DIR_EGRESS, MAX_CAPTURE,
    ROLE_CLIENT, ROLE_SERVER,
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
}

impl Event<'_> {
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::Data(d, _) => &d.header,
            Event::ConnOpen(c) => &c.header,
            Event::ConnClose(h) => h,
            Event::State(s) => &s.header,
            Event::Census(h, _) | Event::Loss(h, _) => h,
        }
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("data record claims {claimed} payload bytes but carries {actual}")]
    BadLength { claimed: u32, actual: usize },
}

/// Reads a `#[repr(C)]` plain-old-data struct from the front of `buf`.
fn read_pod<T: Copy>(buf: &[u8]) -> Option<T> {
    if buf.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is one of the repr(C) integer-only event structs, valid for
    // every bit pattern; read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

pub fn decode(buf: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read_pod(buf).ok_or(DecodeError::Short(buf.len()))?;
    match header.kind {
        kind::DATA => {
            let ev: DataEvent = read_pod(buf).ok_or(DecodeError::Short(buf.len()))?;
            let start = std::mem::size_of::<DataEvent>();
            let n = ev.captured as usize;
            // The kernel may pad records; it never carries fewer bytes than it claims.
            let payload = buf
                .get(start..start.saturating_add(n))
                .filter(|_| n <= MAX_CAPTURE && u64::from(ev.captured) <= ev.real_len)
                .ok_or(DecodeError::BadLength {
                    claimed: ev.captured,
                    actual: buf.len().saturating_sub(start),
                })?;
            Ok(Event::Data(ev, payload))
        }
        kind::CONN_OPEN => {
            // Recordings made before `ConnEvent::sock` existed carry 8 bytes less: zero-fill.
            let size = std::mem::size_of::<ConnEvent>();
            let old = size - std::mem::size_of::<u64>();
            if buf.len() < old {
                return Err(DecodeError::Short(buf.len()));
            }
            let mut full = [0u8; std::mem::size_of::<ConnEvent>()];
            let n = buf.len().min(size);
            full[..n].copy_from_slice(&buf[..n]);
            Ok(Event::ConnOpen(
                read_pod(&full).ok_or(DecodeError::Short(buf.len()))?,
            ))
        }
        kind::STATE => Ok(Event::State(
            read_pod(buf).ok_or(DecodeError::Short(buf.len()))?,
        )),
        kind::CONN_CLOSE => Ok(Event::ConnClose(header)),
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

/// Encodes a struct as its raw bytes (for seeded records and tests).
pub fn pod_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) event struct with explicit padding fields, so all bytes are
    // initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// The process name in a header.
pub fn comm(h: &EventHeader) -> String {
    let end = h.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&h.comm[..end]).into_owned()
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
        _pad0: 0,
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
        // Truncated payload, truncated header, captured > real_len: errors, not panics.
        assert!(matches!(
            decode(&raw[..raw.len() - 1]),
            Err(DecodeError::BadLength { .. })
        ));
        assert_eq!(decode(&raw[..10]), Err(DecodeError::Short(10)));
        let mut lying = ev;
        lying.real_len = 2;
        let mut raw2 = pod_bytes(&lying);
        raw2.extend_from_slice(b"GET ");
        assert!(decode(&raw2).is_err());
        let mut unknown = pod_bytes(&header(99));
        unknown.push(0);
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn endpoints_v4_v6_and_mapped() {
        let mut c = ConnEvent {
            header: header(kind::CONN_OPEN),
            role: ROLE_SERVER,
            _pad0: 0,
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
        assert_eq!(decode(&raw[..raw.len() - 9]), Err(DecodeError::Short(87)));
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
}
