//! A TIME_WAIT census as a record ([`traceid_common::kind::CENSUS`]), so the live loop feeds
//! it through the same pipeline as kernel events and `traceid record` keeps it for replay.
//!
//! Body after the [`traceid_common::EventHeader`], little-endian:
//! - u8 flags (bit 0: the census was truncated; bit 1: the census failed and the rest of the
//!   body is the error text, UTF-8, at most [`MAX_ERROR_LEN`] bytes);
//! - u8 `tcp_tw_reuse` (255: unknown); u8 1 when a port range follows, else 0; u8 reserved;
//! - u16 lowest and u16 highest ephemeral port; u32 number of sockets;
//! - per socket [`SOCKET_LEN`] bytes: local IPv6 address (IPv4 mapped), u16 local port, remote
//!   IPv6 address, u16 remote port.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use traceid_common::kind;

use super::census::{Census, TimeWaitSocket};
use super::Sysctls;
use crate::event;

const TRUNCATED: u8 = 1;
const FAILED: u8 = 2;
const FIXED_LEN: usize = 12;
/// Bytes per socket in the body.
pub const SOCKET_LEN: usize = 36;
/// Longest error text kept.
pub const MAX_ERROR_LEN: usize = 512;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CensusRecordError {
    #[error("census record body of {0} bytes is shorter than its fixed part")]
    Short(usize),
    #[error("census record claims {claimed} sockets but carries {actual} bytes of them")]
    BadLength { claimed: u32, actual: usize },
    #[error("census record error text is not UTF-8")]
    BadText,
}

/// What a census record says.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<'a> {
    Census(CensusView<'a>, Sysctls),
    /// The census could not be taken; the reason.
    Failed(String),
}

/// A census read in place from its record: the sockets are decoded as they are walked, so a
/// census of 130,000 sockets is never held a second time as a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CensusView<'a> {
    /// The sockets, [`SOCKET_LEN`] bytes each (the length is checked by [`decode`]).
    sockets: &'a [u8],
    /// As [`Census::truncated`].
    pub truncated: bool,
}

impl<'a> CensusView<'a> {
    /// Number of sockets.
    pub fn len(&self) -> usize {
        self.sockets.len() / SOCKET_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The sockets, in the census's order.
    pub fn sockets(&self) -> impl Iterator<Item = TimeWaitSocket> + Clone + 'a {
        self.sockets
            .chunks_exact(SOCKET_LEN)
            .map(|s| TimeWaitSocket {
                local: addr(&s[..18]),
                remote: addr(&s[18..]),
            })
    }

    /// The census as a list.
    pub fn to_census(&self) -> Census {
        Census {
            sockets: self.sockets().collect(),
            truncated: self.truncated,
        }
    }
}

/// Writes a census record as the census is taken, one socket at a time.
pub struct Encoder {
    raw: Vec<u8>,
    count: u32,
}

impl Encoder {
    /// A record of a census taken at `ts_ns` (CLOCK_MONOTONIC), empty so far, with room for
    /// `expected` sockets (growing by doubling would copy it, and hold both copies meanwhile).
    pub fn new(ts_ns: u64, expected: usize) -> Encoder {
        let mut raw = event::agent_header(kind::CENSUS, ts_ns);
        raw.reserve(FIXED_LEN + expected * SOCKET_LEN);
        // The fixed part, written by `finish` once the count is known.
        raw.extend_from_slice(&[0; FIXED_LEN]);
        Encoder { raw, count: 0 }
    }

    /// Sockets so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, s: &TimeWaitSocket) {
        for a in [s.local, s.remote] {
            self.raw.extend_from_slice(&v6(a.ip()).octets());
            self.raw.extend_from_slice(&a.port().to_le_bytes());
        }
        self.count += 1;
    }

    /// The record.
    pub fn finish(mut self, truncated: bool, sys: &Sysctls) -> Vec<u8> {
        let at = self.raw.len() - self.count as usize * SOCKET_LEN - FIXED_LEN;
        let fixed = &mut self.raw[at..at + FIXED_LEN];
        fixed[0] = if truncated { TRUNCATED } else { 0 };
        fixed[1] = sys.tcp_tw_reuse.unwrap_or(u8::MAX);
        fixed[2] = u8::from(sys.port_range.is_some());
        let (lo, hi) = sys.port_range.unwrap_or((0, 0));
        fixed[4..6].copy_from_slice(&lo.to_le_bytes());
        fixed[6..8].copy_from_slice(&hi.to_le_bytes());
        fixed[8..12].copy_from_slice(&self.count.to_le_bytes());
        self.raw
    }
}

/// The record of a census taken at `ts_ns` (CLOCK_MONOTONIC).
pub fn encode(ts_ns: u64, census: &Census, sys: &Sysctls) -> Vec<u8> {
    let mut record = Encoder::new(ts_ns, census.sockets.len());
    for s in &census.sockets {
        record.push(s);
    }
    record.finish(census.truncated, sys)
}

/// The record of a census that failed at `ts_ns`.
pub fn encode_failure(ts_ns: u64, error: &str) -> Vec<u8> {
    let mut raw = event::agent_header(kind::CENSUS, ts_ns);
    raw.extend_from_slice(&[FAILED, u8::MAX, 0, 0]);
    raw.extend_from_slice(&[0; FIXED_LEN - 4]);
    let mut end = error.len().min(MAX_ERROR_LEN);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    raw.extend_from_slice(&error.as_bytes()[..end]);
    raw
}

/// Decodes a census record's body (untrusted: every length is checked).
pub fn decode(body: &[u8]) -> Result<Decoded<'_>, CensusRecordError> {
    let fixed = body
        .get(..FIXED_LEN)
        .ok_or(CensusRecordError::Short(body.len()))?;
    let rest = &body[FIXED_LEN..];
    if fixed[0] & FAILED != 0 {
        let text = std::str::from_utf8(&rest[..rest.len().min(MAX_ERROR_LEN)])
            .map_err(|_| CensusRecordError::BadText)?;
        return Ok(Decoded::Failed(text.to_string()));
    }
    let u16_at = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]);
    let sys = Sysctls {
        tcp_tw_reuse: (fixed[1] != u8::MAX).then_some(fixed[1]),
        port_range: (fixed[2] == 1).then(|| (u16_at(4), u16_at(6))),
    };
    let count = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if rest.len() as u64 != u64::from(count) * SOCKET_LEN as u64 {
        return Err(CensusRecordError::BadLength {
            claimed: count,
            actual: rest.len(),
        });
    }
    Ok(Decoded::Census(
        CensusView {
            sockets: rest,
            truncated: fixed[0] & TRUNCATED != 0,
        },
        sys,
    ))
}

/// The census a whole census record (header included) holds; panics on anything else.
#[cfg(test)]
pub(crate) fn view_of(raw: &[u8]) -> (CensusView<'_>, Sysctls) {
    match event::decode(raw) {
        Ok(event::Event::Census(_, body)) => match decode(body) {
            Ok(Decoded::Census(view, sys)) => (view, sys),
            other => panic!("not a census: {other:?}"),
        },
        other => panic!("not a census record: {other:?}"),
    }
}

fn addr(b: &[u8]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let ip = Ipv6Addr::from(ip);
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    SocketAddr::new(ip, u16::from_le_bytes([b[16], b[17]]))
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(raw: &[u8]) -> &[u8] {
        &raw[std::mem::size_of::<traceid_common::EventHeader>()..]
    }

    fn decoded(raw: &[u8]) -> (Census, Sysctls) {
        let (view, sys) = view_of(raw);
        assert_eq!(view.len(), view.sockets().count());
        (view.to_census(), sys)
    }

    #[test]
    fn census_round_trips_v4_and_v6() {
        let census = Census {
            sockets: vec![
                TimeWaitSocket {
                    local: "127.0.0.1:40000".parse().unwrap(),
                    remote: "127.0.0.1:8080".parse().unwrap(),
                },
                TimeWaitSocket {
                    local: "[::1]:40001".parse().unwrap(),
                    remote: "[2001:db8::7]:443".parse().unwrap(),
                },
            ],
            truncated: true,
        };
        let sys = Sysctls {
            tcp_tw_reuse: Some(2),
            port_range: Some((32768, 60999)),
        };
        let raw = encode(42, &census, &sys);
        assert_eq!(event::decode(&raw).unwrap().header().ts_ns, 42);
        assert_eq!(decoded(&raw), (census, sys));
        let unknown = Sysctls::default();
        let empty = Census::default();
        let raw = encode(1, &empty, &unknown);
        assert_eq!(decoded(&raw), (empty, unknown));
    }

    #[test]
    fn failure_round_trips_bounded() {
        let raw = encode_failure(7, "sock_diag: permission denied");
        assert_eq!(
            decode(body(&raw)),
            Ok(Decoded::Failed("sock_diag: permission denied".into()))
        );
        let long = "é".repeat(MAX_ERROR_LEN);
        let Ok(Decoded::Failed(text)) = decode(body(&encode_failure(7, &long))) else {
            panic!("not a failure");
        };
        assert!(text.len() <= MAX_ERROR_LEN && long.starts_with(&text));
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        let sys = Sysctls::default();
        let census = Census {
            sockets: vec![TimeWaitSocket {
                local: "10.0.0.1:1".parse().unwrap(),
                remote: "10.0.0.2:2".parse().unwrap(),
            }],
            truncated: false,
        };
        let raw = encode(1, &census, &sys);
        let b = body(&raw);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = b.to_vec();
        lying[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&lying),
            Err(CensusRecordError::BadLength { .. })
        ));
    }
}
