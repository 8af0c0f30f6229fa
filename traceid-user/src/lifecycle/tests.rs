//! Unit tests of the pure lifecycle: synthetic events and censuses, no kernel.

use super::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use traceid_common::{
    kind, tcp_state, ConnEvent, EventHeader, StateEvent, ROLE_CLIENT, ROLE_SERVER,
};

use super::census::TimeWaitSocket;
use super::config::NS;
use crate::record::{Direction, HeadersKnown, Holder, Protocol, RequestRecord};

const S: u64 = NS;
const CLIENT_PID: u32 = 100;
const SERVER: ([u8; 4], u16) = ([10, 0, 0, 7], 9000);

fn comm(name: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

fn header(kind: u16, pid: u32, fd: i32, conn_ts: u64, ts: u64, name: &str) -> EventHeader {
    EventHeader {
        kind,
        _pad0: 0,
        pid,
        tid: pid,
        fd,
        ts_ns: ts,
        conn_ts_ns: conn_ts,
        comm: comm(name),
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a);
    o
}

fn addr(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((a, port))
}

/// A client connection of `pid` from 10.0.0.1:`lport` to SERVER, sock = 0x1000 + lport.
struct Conn {
    pid: u32,
    fd: i32,
    ts: u64,
    lport: u16,
}

impl Conn {
    fn sock(&self) -> u64 {
        0xffff_0000_0000_0000 + u64::from(self.lport)
    }

    fn open(&self, lc: &mut Lifecycle, name: &str) {
        self.open_flagged(lc, name, 0);
    }

    /// The open a process that did not open the connection announces (`CONN_HELD`).
    fn open_flagged(&self, lc: &mut Lifecycle, name: &str, flags: u8) {
        let ev = ConnEvent {
            header: header(kind::CONN_OPEN, self.pid, self.fd, self.ts, self.ts, name),
            role: ROLE_CLIENT,
            flags,
            family: 2,
            local_port: self.lport,
            remote_port: SERVER.1,
            local_addr: v4([10, 0, 0, 1]),
            remote_addr: v4(SERVER.0),
            sock: self.sock(),
        };
        lc.on_event(&Event::ConnOpen(ev));
    }

    fn close(&self, lc: &mut Lifecycle, at: u64) {
        let h = header(kind::CONN_CLOSE, self.pid, self.fd, self.ts, at, "x");
        lc.on_event(&Event::ConnClose(h));
    }

    /// A state change seen in softirq context: pid 0, comm "swapper/1".
    fn state(&self, lc: &mut Lifecycle, new: u8, at: u64) {
        let ev = StateEvent {
            header: header(kind::STATE, 0, -1, 0, at, "swapper/1"),
            skaddr: self.sock(),
            old_state: tcp_state::ESTABLISHED,
            new_state: new,
            family: 2,
            local_port: self.lport,
            remote_port: SERVER.1,
            local_addr: v4([10, 0, 0, 1]),
            remote_addr: v4(SERVER.0),
        };
        lc.on_event(&Event::State(ev));
    }

    fn request(&self, lc: &mut Lifecycle) {
        lc.on_record(&Record::Request(Box::new(request_record(ConnKey {
            pid: self.pid,
            fd: self.fd,
            conn_ts_ns: self.ts,
        }))));
    }

    fn time_wait(&self) -> TimeWaitSocket {
        TimeWaitSocket {
            local: addr([10, 0, 0, 1], self.lport),
            remote: addr(SERVER.0, SERVER.1),
        }
    }
}

fn request_record(conn: ConnKey) -> RequestRecord {
    RequestRecord {
        event: "request",
        ts: "".into(),
        direction: Direction::Outbound,
        pid: conn.pid,
        tid: conn.pid,
        comm: "client".into(),
        local: None,
        peer: None,
        tls: false,
        protocol: Protocol::Http1,
        stream_id: None,
        headers_known: HeadersKnown::Exact,
        method: "GET".into(),
        path: "/".into(),
        status: Some(200),
        grpc_status: None,
        duration_ms: None,
        trace_id: None,
        trace_format: None,
        findings: Default::default(),
        reason: None,
        inbound: None,
        identity: None,
        header: None,
        local_port: None,
        ts_ns: 0,
        conn,
    }
}

fn sys() -> Sysctls {
    Sysctls {
        tcp_tw_reuse: Some(2),
        port_range: Some((32768, 60999)),
    }
}

/// `n` churned connections (open, one request, client closes first) starting at `t0`, one per
/// millisecond; returns their TIME_WAIT sockets.
fn churn(lc: &mut Lifecycle, pid: u32, first_port: u16, n: u16, t0: u64) -> Vec<TimeWaitSocket> {
    (0..n)
        .map(|i| {
            let t = t0 + u64::from(i) * 1_000_000;
            let c = Conn {
                pid,
                fd: 5,
                ts: t,
                lport: first_port + i,
            };
            c.open(lc, "grpc-client");
            c.request(lc);
            // close() first, then the kernel moves the socket to FIN_WAIT1.
            c.close(lc, t + 500_000);
            c.state(lc, tcp_state::FIN_WAIT1, t + 600_000);
            c.time_wait()
        })
        .collect()
}

/// A complete census of `sockets` at `now_ns`.
fn census(lc: &mut Lifecycle, now_ns: u64, sockets: Vec<TimeWaitSocket>, out: &mut Vec<Record>) {
    lc.on_census(now_ns, sockets.into_iter(), false, sys(), 0, out);
}

fn buildups(out: &[Record]) -> Vec<&BuildupRecord> {
    out.iter()
        .filter_map(|r| match r {
            Record::Buildup(b) => Some(&**b),
            _ => None,
        })
        .collect()
}

#[test]
fn threshold_is_explicit_or_lower_of_default_and_range_share() {
    // Default range 32768-60999: 10 % is 2824, so 1000 holds.
    assert_eq!(effective_threshold(None, Some(28232), 1000, 0.10), 1000);
    // A narrow range: 10 % of 5000 ports.
    assert_eq!(effective_threshold(None, Some(5000), 1000, 0.10), 500);
    assert_eq!(effective_threshold(None, None, 1000, 0.10), 1000);
    assert_eq!(effective_threshold(Some(50), Some(5000), 1000, 0.10), 50);
    assert_eq!(effective_threshold(Some(0), None, 1000, 0.10), 1);
    assert_eq!(effective_threshold(None, Some(3), 1000, 0.10), 1);
}

#[test]
fn buildup_needs_threshold_and_growth() {
    assert!(is_buildup(1000, Some(999), 1000));
    assert!(!is_buildup(999, Some(10), 1000));
    // Flat or shrinking: not a buildup, however high.
    assert!(!is_buildup(5000, Some(5000), 1000));
    assert!(!is_buildup(5000, Some(6000), 1000));
    // No earlier census: growth unknown.
    assert!(!is_buildup(5000, None, 1000));
}

#[test]
fn reuse_ratio_is_requests_per_connection() {
    assert_eq!(reuse_ratio(0, 0), None);
    assert_eq!(reuse_ratio(10, 10), Some(1.0));
    assert_eq!(reuse_ratio(2000, 1), Some(2000.0));
}

#[test]
fn rate_limiter_fires_once_per_period_per_key() {
    let mut l = RateLimiter::default();
    let a = addr([1, 1, 1, 1], 80);
    let b = addr([2, 2, 2, 2], 80);
    assert!(l.allow(a, 0, 10 * S));
    assert!(!l.allow(a, 9 * S, 10 * S));
    assert!(l.allow(b, 9 * S, 10 * S));
    assert!(l.allow(a, 10 * S, 10 * S));
    l.expire(25 * S, 10 * S);
    assert!(l.last.is_empty());
}

#[test]
fn closer_from_states() {
    use traceid_common::tcp_state::*;
    assert_eq!(
        Closer::from_states(ESTABLISHED, FIN_WAIT1),
        Some(Closer::Local)
    );
    assert_eq!(
        Closer::from_states(ESTABLISHED, CLOSE_WAIT),
        Some(Closer::Peer)
    );
    assert_eq!(Closer::from_states(ESTABLISHED, CLOSE), Some(Closer::Reset));
    assert_eq!(Closer::from_states(SYN_SENT, ESTABLISHED), None);
    assert_eq!(Closer::from_states(FIN_WAIT2, CLOSE), None);
}

#[test]
fn churn_is_attributed_and_reported_as_buildup_once_per_10s() {
    let mut lc = Lifecycle::new(LifecycleConfig::default());
    let mut out = Vec::new();
    // Noise: another process's TIME_WAIT toward another remote, never seen opening.
    let other = TimeWaitSocket {
        local: addr([10, 0, 0, 1], 1),
        remote: addr([10, 9, 9, 9], 443),
    };
    census(&mut lc, S, vec![other], &mut out);
    assert!(out.is_empty());

    let mut tw = churn(&mut lc, CLIENT_PID, 20000, 1200, S);
    tw.push(other);
    census(&mut lc, 2 * S, tw.clone(), &mut out);
    let b = buildups(&out);
    assert_eq!(b.len(), 1, "{out:?}");
    let b = b[0];
    assert_eq!(b.remote, "10.0.0.7:9000");
    assert_eq!(b.time_wait, 1200);
    assert_eq!(b.threshold, 1000);
    assert_eq!(b.pid, Some(CLIENT_PID));
    assert_eq!(b.comm.as_deref(), Some("grpc-client"));
    assert_eq!(b.requests_per_connection, Some(1.0));
    assert!(b.connections_per_s > 1000.0, "{b:?}");
    assert_eq!(b.tcp_tw_reuse, Some(2));
    let json = crate::report::json_line(&out[0]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "comm",
            "connections_per_s",
            "event",
            "holder",
            "pid",
            "remote",
            "requests_per_connection",
            "threshold",
            "time_wait",
            "ts"
        ]
    );
    assert_eq!(v["event"], "buildup");
    assert!(crate::report::human_line(&out[0]).contains("grpc-client[100] opens"));

    // Still growing 5 s later: rate-limited. 11 s after the first: reported again.
    out.clear();
    tw.extend(churn(&mut lc, CLIENT_PID, 30000, 100, 3 * S));
    census(&mut lc, 7 * S, tw.clone(), &mut out);
    assert!(buildups(&out).is_empty());
    tw.extend(churn(&mut lc, CLIENT_PID, 31000, 100, 8 * S));
    census(&mut lc, 13 * S, tw.clone(), &mut out);
    assert_eq!(buildups(&out).len(), 1);
    assert_eq!(buildups(&out)[0].time_wait, 1400);
    // Flat: no buildup even after the period.
    out.clear();
    census(&mut lc, 30 * S, tw.clone(), &mut out);
    assert!(out.is_empty());

    let r = lc.report(30 * S);
    assert_eq!(r.total, 1401);
    assert_eq!(r.threshold, 1000);
    assert_eq!(r.remotes[0].remote, "10.0.0.7:9000");
    assert_eq!(r.remotes[0].pid, Some(CLIENT_PID));
    assert_eq!(r.remotes[0].attributed, 1400);
    assert_eq!(r.remotes[0].requests_per_connection, Some(1.0));
    assert_eq!(r.remotes[1].pid, None);
    let p = &r.peers[0];
    assert_eq!(
        (p.opened, p.closed, p.closed_local_first),
        (1400, 1400, 1400)
    );
    assert_eq!(p.closed_peer_first, 0);
    assert_eq!(p.mean_lifetime_ms, Some(0.5));
    assert_eq!(r.locals[0], ("10.0.0.1".to_string(), 1401));
    assert_eq!(r.buildups.len(), 2);
    let text = crate::report::time_wait::render(&r);
    assert!(text.contains("10.0.0.7:9000"), "{text}");
    assert!(text.contains("grpc-client[100]"), "{text}");
    assert!(text.contains("tcp_tw_reuse=2 (loopback only)"), "{text}");
    assert!(text.contains("32768-60999 (28232 ports)"), "{text}");
}

#[test]
fn a_connection_another_process_holds_is_counted_once() {
    let mut lc = Lifecycle::new(LifecycleConfig::default());
    let opener = Conn {
        pid: CLIENT_PID,
        fd: 7,
        ts: S,
        lport: 40000,
    };
    opener.open(&mut lc, "forker");
    // The forked child uses the same socket through its own fd.
    let child = Conn {
        pid: CLIENT_PID + 1,
        ..opener
    };
    child.open_flagged(&mut lc, "forker", traceid_common::CONN_HELD);
    let r = lc.report(2 * S);
    let opened: u64 = r.peers.iter().map(|p| p.opened).sum();
    assert_eq!(opened, 1, "{:?}", r.peers);
}

#[test]
fn keep_alive_shows_reuse_and_no_buildup() {
    let mut lc = Lifecycle::new(LifecycleConfig::default());
    let mut out = Vec::new();
    let c = Conn {
        pid: CLIENT_PID,
        fd: 7,
        ts: S,
        lport: 40000,
    };
    c.open(&mut lc, "pooled");
    census(&mut lc, S, vec![], &mut out);
    for _ in 0..2000 {
        c.request(&mut lc);
    }
    // The peer closes first this time: CLOSE_WAIT arrives while the fd is still open.
    c.state(&mut lc, tcp_state::CLOSE_WAIT, 5 * S);
    c.close(&mut lc, 5 * S + 1000);
    census(&mut lc, 6 * S, vec![], &mut out);
    assert!(out.is_empty());
    let r = lc.report(6 * S);
    let p = &r.peers[0];
    assert_eq!(p.requests_per_connection, Some(2000.0));
    assert_eq!((p.closed_local_first, p.closed_peer_first), (0, 1));
}

#[test]
fn attribution_matches_four_tuples_not_pids_of_the_moment() {
    let mut lc = Lifecycle::new(LifecycleConfig {
        tw_threshold: Some(2),
        ..LifecycleConfig::default()
    });
    let mut out = Vec::new();
    census(&mut lc, 0, vec![], &mut out);
    // Two processes talk to the same remote; A closes 3, B closes 1.
    let tw_a = churn(&mut lc, 1, 20000, 3, S);
    let tw_b = churn(&mut lc, 2, 21000, 1, S);
    // A TIME_WAIT socket whose connection was never seen: counted, not attributed.
    let unknown = TimeWaitSocket {
        local: addr([10, 0, 0, 1], 22000),
        remote: addr(SERVER.0, SERVER.1),
    };
    let all: Vec<_> = tw_a.iter().chain(&tw_b).copied().chain([unknown]).collect();
    census(&mut lc, 2 * S, all, &mut out);
    let b = buildups(&out);
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].pid, b[0].time_wait), (Some(1), 5));
    let r = lc.report(2 * S);
    assert_eq!(r.remotes[0].attributed, 4);
}

#[test]
fn state_change_before_the_open_or_of_unknown_sockets_is_ignored() {
    let mut lc = Lifecycle::new(LifecycleConfig::default());
    let c = Conn {
        pid: 1,
        fd: 3,
        ts: S,
        lport: 40000,
    };
    c.state(&mut lc, tcp_state::FIN_WAIT1, S);
    c.open(&mut lc, "x");
    c.state(&mut lc, tcp_state::CLOSE_WAIT, 2 * S);
    // A second state change of the same connection does not count twice.
    c.state(&mut lc, tcp_state::CLOSE, 2 * S);
    c.close(&mut lc, 3 * S);
    let p = &lc.report(3 * S).peers[0];
    assert_eq!(
        (p.closed_local_first, p.closed_peer_first, p.resets),
        (0, 1, 0)
    );
}

#[test]
fn recently_closed_is_bounded_by_ttl_and_cap() {
    let mut lc = Lifecycle::new(LifecycleConfig {
        recent_cap: 100,
        recent_ttl_ns: 120 * S,
        ..LifecycleConfig::default()
    });
    let mut out = Vec::new();
    let tw = churn(&mut lc, 1, 20000, 250, S);
    // At most 100 whole (the last closed) and 100 kept as TIME_WAIT holders.
    assert_eq!(lc.recently_closed(), 200);
    // A second on, the whole ones are holders too: only the last 100 can be attributed.
    census(&mut lc, 3 * S, tw.clone(), &mut out);
    assert_eq!(lc.recently_closed(), 100);
    assert_eq!(lc.report(3 * S).remotes[0].attributed, 100);
    census(&mut lc, 200 * S, tw, &mut out);
    assert_eq!(lc.recently_closed(), 0);
}

#[test]
fn only_ends_that_may_hold_time_wait_are_kept_past_their_close() {
    let mut lc = Lifecycle::new(LifecycleConfig::default());
    let mut out = Vec::new();
    // Four connections of one client: it closes first, its peer closes first, a reset, and
    // one whose closer was never seen.
    let ends: Vec<(Conn, Option<u8>)> = [
        Some(tcp_state::FIN_WAIT1),
        Some(tcp_state::CLOSE_WAIT),
        Some(tcp_state::CLOSE),
        None,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, state)| {
        let c = Conn {
            pid: CLIENT_PID,
            fd: 5,
            ts: S + i as u64,
            lport: 30000 + i as u16,
        };
        (c, state)
    })
    .collect();
    for (c, state) in &ends {
        c.open(&mut lc, "client");
        c.close(&mut lc, S + 500_000);
        if let Some(state) = state {
            c.state(&mut lc, *state, S + 600_000);
        }
    }
    assert_eq!(lc.recently_closed(), 4);
    // Past the closing second: the peer-closed and the reset ends are forgotten.
    let tw: Vec<TimeWaitSocket> = ends.iter().map(|(c, _)| c.time_wait()).collect();
    census(&mut lc, 3 * S, tw, &mut out);
    assert_eq!(lc.recently_closed(), 2);
    assert_eq!(lc.report(3 * S).remotes[0].attributed, 2);
}

#[test]
fn ipv4_mapped_census_entries_match_ipv4_connections() {
    let mut lc = Lifecycle::new(LifecycleConfig {
        tw_threshold: Some(1),
        ..LifecycleConfig::default()
    });
    let mut out = Vec::new();
    census(&mut lc, 0, vec![], &mut out);
    let tw = churn(&mut lc, 9, 20000, 1, S);
    let mapped = |a: SocketAddr| match a {
        SocketAddr::V4(v) => SocketAddr::new(IpAddr::V6(v.ip().to_ipv6_mapped()), v.port()),
        v6 => v6,
    };
    let s = TimeWaitSocket {
        local: mapped(tw[0].local),
        remote: mapped(tw[0].remote),
    };
    census(&mut lc, S, vec![s], &mut out);
    let b = buildups(&out);
    assert_eq!((b[0].remote.as_str(), b[0].pid), ("10.0.0.7:9000", Some(9)));
}

#[test]
fn server_side_time_wait_is_counted_per_listening_address() {
    let mut lc = Lifecycle::new(LifecycleConfig::default());
    let mut out = Vec::new();
    let listen = addr([10, 0, 0, 7], 8080);
    let mut sockets = Vec::new();
    for i in 0..3u16 {
        let ev = ConnEvent {
            header: header(kind::CONN_OPEN, 50, 10 + i32::from(i), S, S, "nginx"),
            role: ROLE_SERVER,
            flags: 0,
            family: 10,
            local_port: 8080,
            remote_port: 50000 + i,
            local_addr: Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped().octets(),
            remote_addr: Ipv6Addr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]).octets(),
            sock: 0,
        };
        lc.on_event(&Event::ConnOpen(ev));
        let h = header(kind::CONN_CLOSE, 50, 10 + i32::from(i), S, 2 * S, "nginx");
        lc.on_event(&Event::ConnClose(h));
        sockets.push(TimeWaitSocket {
            local: listen,
            remote: SocketAddr::new("fd00::1".parse().unwrap(), 50000 + i),
        });
    }
    census(&mut lc, 3 * S, sockets, &mut out);
    let r = lc.report(3 * S);
    assert_eq!(r.locals, vec![("10.0.0.7:8080".to_string(), 3)]);
    assert_eq!(r.peers[0].role, Role::Server);
    assert_eq!(r.peers[0].endpoint, "10.0.0.7:8080");
    assert_eq!(r.peers[0].opened, 3);
}

#[test]
fn peers_are_capped() {
    let mut lc = Lifecycle::new(LifecycleConfig {
        max_peers: 2,
        ..LifecycleConfig::default()
    });
    for port in 0..5u16 {
        let ev = ConnEvent {
            header: header(kind::CONN_OPEN, 1, i32::from(port), S, S, "c"),
            role: ROLE_CLIENT,
            flags: 0,
            family: 2,
            local_port: 1000 + port,
            remote_port: 80 + port,
            local_addr: v4([10, 0, 0, 1]),
            remote_addr: v4([10, 0, 0, 2]),
            sock: 0,
        };
        lc.on_event(&Event::ConnOpen(ev));
    }
    assert_eq!(lc.report(S).peers.len(), 2);
    assert_eq!(lc.peers_dropped, 3);
}

#[test]
fn process_that_exits_without_close_still_owns_its_time_wait() {
    let mut lc = Lifecycle::new(LifecycleConfig {
        tw_threshold: Some(2),
        ..LifecycleConfig::default()
    });
    let mut out = Vec::new();
    census(&mut lc, 0, vec![], &mut out);
    // Opened, then the process exited: the kernel closed the fds, no close() was traced.
    let tw: Vec<TimeWaitSocket> = (0..3u16)
        .map(|i| {
            let c = Conn {
                pid: 77,
                fd: 3 + i32::from(i),
                ts: S,
                lport: 45000 + i,
            };
            c.open(&mut lc, "curl");
            c.state(&mut lc, tcp_state::FIN_WAIT1, 2 * S);
            c.time_wait()
        })
        .collect();
    census(&mut lc, 3 * S, tw, &mut out);
    let b = buildups(&out);
    assert_eq!((b[0].pid, b[0].comm.as_deref()), (Some(77), Some("curl")));
    assert_eq!(lc.report(3 * S).peers[0].closed_local_first, 3);
}

#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<String>>);

impl LifecycleObserver for Seen {
    fn connection_opened(&self, comm: &str, endpoint: &str, role: &'static str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("open {comm} {endpoint} {role}"));
    }
    fn connection_closed(&self, comm: &str, endpoint: &str, requests: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("close {comm} {endpoint} {requests}"));
    }
    fn time_wait(&self, by_service: &[(String, Holder, u64)]) {
        self.0.lock().unwrap().push(format!("tw {by_service:?}"));
    }
}

#[test]
fn observer_gets_opens_requests_per_connection_and_census() {
    let seen = std::sync::Arc::new(Seen::default());
    let mut lc = Lifecycle::new(LifecycleConfig {
        observer: Some(Observer(seen.clone())),
        ..LifecycleConfig::default()
    });
    let tw = churn(&mut lc, 1, 20000, 2, S);
    let mut out = Vec::new();
    census(&mut lc, 2 * S, tw, &mut out);
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "open grpc-client 10.0.0.7:9000 client",
            "close grpc-client 10.0.0.7:9000 1",
            "open grpc-client 10.0.0.7:9000 client",
            "close grpc-client 10.0.0.7:9000 1",
            "tw [(\"10.0.0.7:9000\", Client, 2)]",
        ]
    );
}

#[test]
fn metrics_export_the_lifecycle_series() {
    let m = crate::metrics::Metrics::new(&crate::metrics::MetricsConfig::default());
    let obs: &dyn LifecycleObserver = &m;
    obs.connection_opened("grpc-client", "10.0.0.7:9000", "client");
    obs.connection_closed("grpc-client", "10.0.0.7:9000", 1);
    obs.time_wait(&[("10.0.0.7:9000".to_string(), Holder::Client, 1200)]);
    let text = m.encode_prometheus();
    for want in [
        "traceid_tcp_connections_opened_total{",
        "traceid_tcp_connection_requests_count{",
        "traceid_tcp_time_wait_sockets{remote=\"10.0.0.7:9000\",holder=\"client\"} 1200",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
}

#[test]
fn unattributed_buildup_waits_one_census_for_late_connection_events() {
    let mut lc = Lifecycle::new(LifecycleConfig {
        tw_threshold: Some(3),
        ..LifecycleConfig::default()
    });
    let mut out = Vec::new();
    census(&mut lc, 0, vec![], &mut out);
    // The census sees the TIME_WAIT before the connection events were read.
    let conns: Vec<Conn> = (0..3u16)
        .map(|i| Conn {
            pid: 5,
            fd: 3,
            ts: S + u64::from(i),
            lport: 41000 + i,
        })
        .collect();
    let tw: Vec<TimeWaitSocket> = conns.iter().map(Conn::time_wait).collect();
    census(&mut lc, S, tw.clone(), &mut out);
    assert!(out.is_empty(), "deferred: {out:?}");
    for c in &conns {
        c.open(&mut lc, "late");
        c.close(&mut lc, 2 * S);
    }
    // Flat since, yet reported (it was growing when first seen), now with its owner.
    census(&mut lc, 2 * S, tw.clone(), &mut out);
    let b = buildups(&out);
    assert_eq!((b.len(), b[0].pid), (1, Some(5)));
    // A genuinely unknown owner is reported one census late, with pid null.
    let mut lc = Lifecycle::new(LifecycleConfig {
        tw_threshold: Some(3),
        ..LifecycleConfig::default()
    });
    out.clear();
    census(&mut lc, 0, vec![], &mut out);
    census(&mut lc, S, tw.clone(), &mut out);
    assert!(out.is_empty());
    census(&mut lc, 2 * S, tw, &mut out);
    let b = buildups(&out);
    assert_eq!((b.len(), b[0].pid, b[0].time_wait), (1, None, 3));
}

#[test]
fn server_closing_first_is_labelled_by_its_listening_endpoint_not_client_ports() {
    let seen = std::sync::Arc::new(Seen::default());
    let mut lc = Lifecycle::new(LifecycleConfig {
        tw_threshold: Some(3),
        observer: Some(Observer(seen.clone())),
        ..LifecycleConfig::default()
    });
    let mut out = Vec::new();
    census(&mut lc, S, vec![], &mut out);
    let listen = addr([10, 0, 0, 7], 8080);
    let mut sockets = Vec::new();
    // nginx (pid 50) accepts 4 connections from ephemeral ports and closes each first.
    for i in 0..4u16 {
        let sock = 0xffff_0000_0000_9000 + u64::from(i);
        let fd = 10 + i32::from(i);
        let ev = ConnEvent {
            header: header(kind::CONN_OPEN, 50, fd, S, S, "nginx"),
            role: ROLE_SERVER,
            flags: 0,
            family: 2,
            local_port: 8080,
            remote_port: 40000 + i,
            local_addr: v4([10, 0, 0, 7]),
            remote_addr: v4([10, 0, 0, 1]),
            sock,
        };
        lc.on_event(&Event::ConnOpen(ev));
        let h = header(kind::CONN_CLOSE, 50, fd, S, 2 * S, "nginx");
        lc.on_event(&Event::ConnClose(h));
        sockets.push(TimeWaitSocket {
            local: listen,
            remote: addr([10, 0, 0, 1], 40000 + i),
        });
    }
    // A server this run never saw accepting: its port is outside the ephemeral range, its
    // clients' ports inside, so it holds them too.
    for i in 0..5u16 {
        sockets.push(TimeWaitSocket {
            local: addr([10, 0, 0, 9], 443),
            remote: addr([10, 0, 0, 1], 50000 + i),
        });
    }
    census(&mut lc, 2 * S, sockets, &mut out);

    let series = seen.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        series,
        "tw [(\"10.0.0.9:443\", Server, 5), (\"10.0.0.7:8080\", Server, 4)]"
    );
    let b = buildups(&out);
    let nginx = b
        .iter()
        .find(|b| b.pid == Some(50))
        .expect("nginx's buildup");
    assert_eq!(
        (nginx.remote.as_str(), nginx.holder, nginx.time_wait),
        ("10.0.0.7:8080", Holder::Server, 4)
    );
    let line = crate::report::human_line(&Record::Buildup(Box::new((*nginx).clone())));
    assert!(
        line.contains("nginx[50] accepts") && line.contains("on the server side"),
        "{line}"
    );
    let json: serde_json::Value = serde_json::from_str(&crate::report::json_line(
        &Record::Buildup(Box::new((*nginx).clone())),
    ))
    .unwrap();
    assert_eq!(json["holder"], "server");

    let r = lc.report(2 * S);
    let holders: Vec<(&str, Holder, u64)> = r
        .remotes
        .iter()
        .map(|t| (t.remote.as_str(), t.holder, t.time_wait))
        .collect();
    assert_eq!(
        holders,
        [
            ("10.0.0.9:443", Holder::Server, 5),
            ("10.0.0.7:8080", Holder::Server, 4)
        ]
    );
    assert_eq!(r.remotes[1].pid, Some(50));
    let text = crate::report::time_wait::render(&r);
    assert!(
        text.contains("10.0.0.7:8080") && text.contains("held by the server"),
        "{text}"
    );
}

/// gRPC over h2 bytes, as grpc clients write them: the preface and one call per stream.
mod grpc_channels {
    use std::net::SocketAddr;

    use crate::lifecycle::census::TimeWaitSocket;
    use crate::pipeline::{Pipeline, PipelineConfig};
    use crate::record::{Protocol, Record};
    use crate::test_util::events::{Stream, C};
    use traceid_common::{tcp_state, ROLE_CLIENT};

    const SERVER: ([u8; 4], u16) = ([10, 0, 0, 9], 50051);
    const PID: u32 = 700;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// HEADERS with END_HEADERS (and END_STREAM when `end`).
    fn headers(stream: u32, end: bool, block: &[u8]) -> Vec<u8> {
        frame(1, 0x4 | if end { 0x1 } else { 0 }, stream, block)
    }

    /// A literal field without indexing, its name from the static table (index < 15).
    fn literal(index: u8, value: &str) -> Vec<u8> {
        let mut b = vec![index, value.len() as u8];
        b.extend(value.as_bytes());
        b
    }

    /// One unary call on `stream`: the request head and the response with its trailers.
    fn call(stream: u32) -> (Vec<u8>, Vec<u8>) {
        // :method POST, :scheme http, :path, content-type: application/grpc.
        let mut req = vec![0x83, 0x86];
        req.extend(literal(4, "/demo.Echo/Call"));
        req.extend([0x0f, 0x10, 16]);
        req.extend(b"application/grpc");
        let mut trailers = vec![0x00, 11];
        trailers.extend(b"grpc-status");
        trailers.extend([1, b'0']);
        let mut resp = headers(stream, false, &[0x88]);
        resp.extend(headers(stream, true, &trailers));
        (headers(stream, true, &req), resp)
    }

    /// `channels` client connections to SERVER, each carrying `calls` calls on streams 1, 3,
    /// 5...; every connection closed by the client (its TIME_WAIT). Returns every record the
    /// pipeline emits, a census taken before and one after, and the pipeline.
    fn run(channels: u16, calls: u32) -> (Vec<Record>, Pipeline) {
        let mut s = Stream::default();
        let sys = super::sys();
        s.census(&[], &sys);
        s.advance(super::S);
        let mut tw = Vec::new();
        for i in 0..channels {
            let c = C {
                pid: PID,
                fd: 20 + i32::from(i),
                ts: 1_000 + u64::from(i),
                comm: "grpc-client",
                role: ROLE_CLIENT,
            };
            let local = ([10, 0, 0, 1], 30_000 + i);
            s.open(c, local.0, local.1, SERVER.0, SERVER.1);
            s.data(c, PID, true, crate::protocol::H2_PREFACE);
            for k in 0..calls {
                let (req, resp) = call(2 * k + 1);
                s.data(c, PID, true, &req);
                s.data(c, PID, false, &resp);
            }
            s.state(c, local, SERVER, tcp_state::FIN_WAIT1);
            s.close(c);
            tw.push(TimeWaitSocket {
                local: SocketAddr::from(local),
                remote: SocketAddr::from(SERVER),
            });
        }
        s.advance(super::S);
        s.census(&tw, &sys);
        let mut cfg = PipelineConfig::default();
        cfg.lifecycle.tw_threshold = Some(1000);
        let mut p = Pipeline::new(cfg);
        let mut out = Vec::new();
        for r in &s.records {
            p.process(r, &mut |r: &Record| out.push(r.clone()));
        }
        (out, p)
    }

    fn grpc_calls(out: &[Record]) -> usize {
        out.iter()
            .filter(|r| matches!(r, Record::Request(q) if q.protocol == Protocol::Grpc))
            .count()
    }

    #[test]
    fn a_channel_per_call_is_named_by_buildup_with_one_stream_per_connection() {
        let (out, _) = run(1200, 1);
        assert_eq!(grpc_calls(&out), 1200);
        let b: Vec<_> = out
            .iter()
            .filter_map(|r| match r {
                Record::Buildup(b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(
            (b[0].pid, b[0].comm.as_deref()),
            (Some(PID), Some("grpc-client"))
        );
        assert_eq!(b[0].remote, "10.0.0.9:50051");
        assert_eq!(b[0].time_wait, 1200);
        assert_eq!(b[0].requests_per_connection, Some(1.0));
        let human = crate::report::human_line(&Record::Buildup(b[0].clone()));
        assert!(human.contains("at 1.00 requests per connection"), "{human}");
    }

    #[test]
    fn streams_of_one_channel_count_as_requests_of_its_connection() {
        // A channel reused for its calls: 2 connections (under the threshold), 600 streams each.
        let (out, p) = run(2, 600);
        assert_eq!(grpc_calls(&out), 1200);
        assert!(!out.iter().any(|r| matches!(r, Record::Buildup(_))));
        let report = p.time_wait_report();
        let peer = report
            .peers
            .iter()
            .find(|p| p.pid == PID)
            .expect("the client");
        assert_eq!((peer.opened, peer.requests), (2, 1200));
        assert_eq!(peer.requests_per_connection, Some(600.0));
    }
}
