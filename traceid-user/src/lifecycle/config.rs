//! The lifecycle's knobs, the observer its figures go to, and the rules that decide a
//! buildup (pure functions of counts and sysctls).

use serde::Serialize;

use super::census;
use crate::event::Role;
use crate::record::Holder;

pub(crate) const NS: u64 = 1_000_000_000;

/// Knobs of the lifecycle tracker (`--tw-threshold`).
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// TIME_WAIT sockets toward one remote that make a buildup; None: the lower of
    /// `default_threshold` and `range_share` of `ip_local_port_range`.
    pub tw_threshold: Option<u64>,
    pub default_threshold: u64,
    pub range_share: f64,
    /// How long closed connections' 4-tuples are remembered (TIME_WAIT lasts 60 s).
    pub recent_ttl_ns: u64,
    /// At most this many remembered closed connections (oldest dropped first).
    pub recent_cap: usize,
    /// Open connections followed at once.
    pub max_conns: usize,
    /// (process, endpoint) pairs with statistics; new pairs beyond it are not counted.
    pub max_peers: usize,
    /// Sockets listed per census (beyond it the census says it was truncated).
    pub census_max: usize,
    /// At most one `buildup` per remote per this long.
    pub buildup_every_ns: u64,
    /// Window of the connections-per-second figure of a buildup.
    pub rate_window_ns: u64,
    /// Where connection and census figures go as they happen (`traceid run`'s metrics).
    pub observer: Option<Observer>,
}

/// Receives the lifecycle's figures as they happen (the metrics of docs/metrics.md: connections
/// opened, requests per connection, TIME_WAIT per remote).
pub trait LifecycleObserver: Send + Sync {
    /// A connection opened; `endpoint` is the remote (clients) or the listening address
    /// (servers); `role` is `client`, `server` or `unknown`.
    fn connection_opened(&self, comm: &str, endpoint: &str, role: &'static str);
    /// A connection closed after carrying `requests` requests.
    fn connection_closed(&self, comm: &str, endpoint: &str, requests: u64);
    /// A census: TIME_WAIT sockets per service endpoint and holder (the largest ones).
    fn time_wait(&self, by_service: &[(String, Holder, u64)]);
}

/// A shared [`LifecycleObserver`].
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<dyn LifecycleObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

pub(crate) fn role_label(r: Role) -> &'static str {
    match r {
        Role::Client => "client",
        Role::Server => "server",
        Role::Unknown => "unknown",
    }
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            tw_threshold: None,
            default_threshold: 1000,
            range_share: 0.10,
            // TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN); the census runs about every second.
            recent_ttl_ns: 70 * NS,
            recent_cap: 262_144,
            max_conns: crate::mem::MAX_CONNS,
            max_peers: 4096,
            census_max: 1_000_000,
            buildup_every_ns: 10 * NS,
            rate_window_ns: 10 * NS,
            observer: None,
        }
    }
}

/// The sysctls that decide whether TIME_WAIT hurts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sysctls {
    /// `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 loopback only.
    pub tcp_tw_reuse: Option<u8>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u16, u16)>,
}

impl Sysctls {
    pub fn read() -> Sysctls {
        Sysctls {
            tcp_tw_reuse: census::tcp_tw_reuse().ok(),
            port_range: census::local_port_range().ok(),
        }
    }

    /// Ports in the ephemeral range.
    pub fn range_size(&self) -> Option<u64> {
        self.port_range
            .map(|(lo, hi)| u64::from(hi) - u64::from(lo) + 1)
    }
}

/// The threshold in force: the explicit one, else the lower of `default` and `share` of the
/// ephemeral port range.
pub fn effective_threshold(
    explicit: Option<u64>,
    range_size: Option<u64>,
    default: u64,
    share: f64,
) -> u64 {
    if let Some(n) = explicit {
        return n.max(1);
    }
    match range_size {
        Some(n) => default.min((n as f64 * share).ceil() as u64).max(1),
        None => default.max(1),
    }
}

/// A buildup: at or over the threshold and more than at the previous census. Without a
/// previous census growth is unknown, so no buildup.
pub fn is_buildup(count: u64, previous: Option<u64>, threshold: u64) -> bool {
    count >= threshold && previous.is_some_and(|p| count > p)
}

/// Requests per connection (reuse); None before any connection.
pub fn reuse_ratio(requests: u64, connections: u64) -> Option<f64> {
    (connections > 0).then(|| requests as f64 / connections as f64)
}
