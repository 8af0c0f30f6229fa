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
pub enum Decoded {
    Census(Census, Sysctls),
    /// The census could not be taken; the reason.
    Failed(String),
}

/// The record of a census taken at `ts_ns` (CLOCK_MONOTONIC).
pub fn encode(ts_ns: u64, census: &Census, sys: &Sysctls) -> Vec<u8> {
    let mut raw = event::agent_header(kind::CENSUS, ts_ns);
    raw.reserve(FIXED_LEN + census.sockets.len() * SOCKET_LEN);
    raw.push(if census.truncated { TRUNCATED } else { 0 });
    raw.push(sys.tcp_tw_reuse.unwrap_or(u8::MAX));
    raw.push(u8::from(sys.port_range.is_some()));
    raw.push(0);
    let (lo, hi) = sys.port_range.unwrap_or((0, 0));
    raw.extend_from_slice(&lo.to_le_bytes());
    raw.extend_from_slice(&hi.to_le_bytes());
    raw.extend_from_slice(&(census.sockets.len() as u32).to_le_bytes());
    for s in &census.sockets {
        for a in [s.local, s.remote] {
            raw.extend_from_slice(&v6(a.ip()).octets());
            raw.extend_from_slice(&a.port().to_le_bytes());
        }
    }
    raw
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
pub fn decode(body: &[u8]) -> Result<Decoded, CensusRecordError> {
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
    let addr = |b: &[u8]| {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&b[..16]);
        let ip = Ipv6Addr::from(ip);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        SocketAddr::new(ip, u16::from_le_bytes([b[16], b[17]]))
    };
    let sockets = rest
        .chunks_exact(SOCKET_LEN)
        .map(|s| TimeWaitSocket {
            local: addr(&s[..18]),
            remote: addr(&s[18..]),
        })
        .collect();
    Ok(Decoded::Census(
        Census {
            sockets,
            truncated: fixed[0] & TRUNCATED != 0,
        },
        sys,
    ))
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
        assert_eq!(decode(body(&raw)), Ok(Decoded::Census(census, sys)));
        let unknown = Sysctls::default();
        let empty = Census::default();
        let raw = encode(1, &empty, &unknown);
        assert_eq!(decode(body(&raw)), Ok(Decoded::Census(empty, unknown)));
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
