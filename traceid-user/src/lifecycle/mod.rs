//! Connection lifecycle and TIME_WAIT buildup.
//!
//! Fed by the same records as the engine (connection open/close, TCP state changes, request
//! records) and, every interval, by a TIME_WAIT census through sock_diag ([`census`]). Per
//! (process, remote endpoint) it counts connections opened and closed, which side closed first,
//! lifetimes and requests per connection (reuse). It remembers the 4-tuples of recently closed
//! connections (bounded, ~120 s: TIME_WAIT lasts 60 s) so each TIME_WAIT socket of a census is
//! attributed to the process that owned the connection, and it emits `buildup` when TIME_WAIT
//! toward one remote passes the threshold and is growing (at most once per remote per 10 s).
//!
//! Everything here is pure (time and census are passed in) except [`LiveCensus`], which talks
//! to the kernel. Every map is bounded.

pub mod census;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use traceid_common::tcp_state;

use crate::engine::record::{rfc3339_ms, BuildupRecord};
use crate::engine::{ConnKey, Record};
use crate::event::{self, Event, Role};

use census::{Census, CensusSocket, TimeWaitSocket};

const NS: u64 = 1_000_000_000;

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

/// Receives the lifecycle's figures as they happen (the metrics of DESIGN.md: connections
/// opened, requests per connection, TIME_WAIT per remote).
pub trait LifecycleObserver: Send + Sync {
    /// A connection opened; `endpoint` is the remote (clients) or the listening address
    /// (servers); `role` is `client`, `server` or `unknown`.
    fn connection_opened(&self, comm: &str, endpoint: &str, role: &'static str);
    /// A connection closed after carrying `requests` requests.
    fn connection_closed(&self, comm: &str, endpoint: &str, requests: u64);
    /// A census: TIME_WAIT sockets per remote (the largest remotes).
    fn time_wait(&self, by_remote: &[(String, u64)]);
}

/// A shared [`LifecycleObserver`].
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<dyn LifecycleObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl LifecycleObserver for crate::metrics::Metrics {
    fn connection_opened(&self, comm: &str, endpoint: &str, role: &'static str) {
        self.tcp_connection_opened(comm, endpoint, role);
    }

    fn connection_closed(&self, comm: &str, endpoint: &str, requests: u64) {
        self.tcp_connection_requests(comm, endpoint, requests);
    }

    fn time_wait(&self, by_remote: &[(String, u64)]) {
        self.set_time_wait_sockets(by_remote.iter().map(|(r, n)| (r.as_str(), *n)));
    }
}

fn role_label(r: Role) -> &'static str {
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
            recent_ttl_ns: 120 * NS,
            recent_cap: 262_144,
            max_conns: 200_000,
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

    fn describe(&self) -> String {
        let reuse = match self.tcp_tw_reuse {
            Some(0) => "0 (off)".to_string(),
            Some(1) => "1 (on)".to_string(),
            Some(2) => "2 (loopback only)".to_string(),
            Some(n) => n.to_string(),
            None => "unknown".to_string(),
        };
        let range = match (self.port_range, self.range_size()) {
            (Some((lo, hi)), Some(n)) => format!("{lo}-{hi} ({n} ports)"),
            _ => "unknown".to_string(),
        };
        format!("tcp_tw_reuse={reuse}  ip_local_port_range={range}")
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

/// IPv4-mapped IPv6 addresses as IPv4, as the engine reports them.
fn normalize(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Once per key per period.
#[derive(Debug, Default)]
pub struct RateLimiter {
    last: HashMap<SocketAddr, u64>,
}

impl RateLimiter {
    /// True (and remembered) when `key` may fire at `now_ns`.
    pub fn allow(&mut self, key: SocketAddr, now_ns: u64, period_ns: u64) -> bool {
        match self.last.get(&key) {
            Some(&t) if now_ns.saturating_sub(t) < period_ns => false,
            _ => {
                self.last.insert(key, now_ns);
                true
            }
        }
    }

    /// Forgets keys whose period is over (keeps the map bounded by what fired recently).
    pub fn expire(&mut self, now_ns: u64, period_ns: u64) {
        self.last
            .retain(|_, t| now_ns.saturating_sub(*t) < period_ns);
    }
}

/// Who closed a connection first, from its socket's move out of ESTABLISHED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// This side (ESTABLISHED -> FIN_WAIT1): it keeps the TIME_WAIT.
    Local,
    /// The peer (ESTABLISHED -> CLOSE_WAIT).
    Peer,
    /// Reset (ESTABLISHED -> CLOSE): no TIME_WAIT.
    Reset,
}

impl Closer {
    pub fn from_states(old: u8, new: u8) -> Option<Closer> {
        if old != tcp_state::ESTABLISHED {
            return None;
        }
        match new {
            tcp_state::FIN_WAIT1 => Some(Closer::Local),
            tcp_state::CLOSE_WAIT => Some(Closer::Peer),
            tcp_state::CLOSE => Some(Closer::Reset),
            _ => None,
        }
    }
}

/// Statistics are kept per process and endpoint: the remote for clients, the local
/// (listening) address for servers, whose remotes are ephemeral client ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub pid: u32,
    pub role: Role,
    pub endpoint: SocketAddr,
}

#[derive(Debug, Clone, Default)]
struct PeerStats {
    comm: String,
    opened: u64,
    closed: u64,
    closed_local_first: u64,
    closed_peer_first: u64,
    resets: u64,
    lifetime_sum_ns: u64,
    lifetime_max_ns: u64,
    requests: u64,
    first_ns: u64,
    /// (census time, `opened` then), for the connections-per-second window.
    history: VecDeque<(u64, u64)>,
}

impl PeerStats {
    /// Connections opened per second since the oldest census kept in `history` (about one
    /// window ago), or since the first connection when there is no earlier census.
    fn rate(&self, now_ns: u64) -> f64 {
        let (t0, n0) = match self.history.front() {
            Some(&(t, n)) if t < now_ns => (t, n),
            _ => (self.first_ns, 0),
        };
        let dt = now_ns.saturating_sub(t0);
        if dt == 0 {
            return 0.0;
        }
        self.opened.saturating_sub(n0) as f64 * NS as f64 / dt as f64
    }
}

#[derive(Debug, Clone)]
struct OpenConn {
    peer: PeerKey,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    sock: u64,
    opened_ns: u64,
    closer: Option<Closer>,
    requests: u64,
}

/// What is remembered of a closed connection.
#[derive(Debug, Clone)]
struct Closed {
    closed_ns: u64,
    key: ConnKey,
    peer: PeerKey,
    tuple: Option<(SocketAddr, SocketAddr)>,
    sock: u64,
    closer: Option<Closer>,
}

/// Recently closed connections: by 4-tuple (TIME_WAIT attribution), by socket (state changes
/// that arrive after the close), by connection key (request records that complete at the close).
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<Closed>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    by_sock: HashMap<u64, usize>,
    by_key: HashMap<ConnKey, usize>,
    /// Index in `order` of its first element ever pushed (indexes are absolute).
    base: usize,
}

impl Recent {
    fn push(&mut self, c: Closed, cap: usize) {
        while self.order.len() >= cap.max(1) {
            self.pop_front();
        }
        let idx = self.base + self.order.len();
        if let Some(t) = c.tuple {
            self.by_tuple.insert(t, idx);
        }
        if c.sock != 0 {
            self.by_sock.insert(c.sock, idx);
        }
        self.by_key.insert(c.key, idx);
        self.order.push_back(c);
    }

    fn pop_front(&mut self) {
        let Some(c) = self.order.pop_front() else {
            return;
        };
        let idx = self.base;
        self.base += 1;
        // Only when the entry still points here (a later connection may reuse the tuple).
        if let Some(t) = c.tuple {
            if self.by_tuple.get(&t) == Some(&idx) {
                self.by_tuple.remove(&t);
            }
        }
        if self.by_sock.get(&c.sock) == Some(&idx) {
            self.by_sock.remove(&c.sock);
        }
        if self.by_key.get(&c.key) == Some(&idx) {
            self.by_key.remove(&c.key);
        }
    }

    fn expire(&mut self, now_ns: u64, ttl_ns: u64) {
        while self
            .order
            .front()
            .is_some_and(|c| now_ns.saturating_sub(c.closed_ns) > ttl_ns)
        {
            self.pop_front();
        }
    }

    fn get_mut(&mut self, idx: usize) -> Option<&mut Closed> {
        self.order.get_mut(idx.checked_sub(self.base)?)
    }

    fn get(&self, idx: usize) -> Option<&Closed> {
        self.order.get(idx.checked_sub(self.base)?)
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// TIME_WAIT toward one remote, for the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RemoteTimeWait {
    pub remote: String,
    pub time_wait: u64,
    /// Share of the ephemeral port range these sockets hold (toward this one remote).
    pub share_of_port_range: Option<f64>,
    pub growth_per_s: f64,
    /// The process that owned most of the attributed sockets.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Sockets matched with a connection the agent saw close.
    pub attributed: u64,
    /// Of the owner's connections to this remote: per second over the run, and reuse.
    pub connections_per_s: Option<f64>,
    pub requests_per_connection: Option<f64>,
}

/// Per process and endpoint, for the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerReport {
    pub pid: u32,
    pub comm: String,
    /// "client": `endpoint` is the remote; "server": `endpoint` is the local listening address.
    pub role: Role,
    pub endpoint: String,
    pub opened: u64,
    pub closed: u64,
    /// Closed first by this side (it keeps the TIME_WAIT) / by the peer / by a reset.
    pub closed_local_first: u64,
    pub closed_peer_first: u64,
    pub resets: u64,
    pub mean_lifetime_ms: Option<f64>,
    pub max_lifetime_ms: Option<f64>,
    pub requests: u64,
    pub requests_per_connection: Option<f64>,
    pub connections_per_s: f64,
}

/// The TIME_WAIT section of the diagnosis.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct TimeWaitReport {
    /// TIME_WAIT sockets on the host (IPv4 + IPv6) at the last census.
    pub total: u64,
    /// The census listed at most `census_max` sockets.
    pub truncated: bool,
    pub growth_per_s: f64,
    pub threshold: u64,
    pub sysctls: Sysctls,
    /// Top remotes by TIME_WAIT count.
    pub remotes: Vec<RemoteTimeWait>,
    /// TIME_WAIT per local address: the IP for client sides, ip:port for servers that closed
    /// first (attributed to a server connection).
    pub locals: Vec<(String, u64)>,
    /// Top (process, endpoint) pairs by connections opened.
    pub peers: Vec<PeerReport>,
    /// `buildup` findings of the run (the last 100).
    pub buildups: Vec<BuildupRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub census_error: Option<String>,
}

/// The state of the last census.
#[derive(Debug, Default)]
struct LastCensus {
    ns: u64,
    total: u64,
    truncated: bool,
    growth_per_s: f64,
    by_remote: HashMap<SocketAddr, u64>,
    /// Per remote, sockets per second since the census before.
    growth: HashMap<SocketAddr, f64>,
    /// remote -> pid -> attributed sockets.
    owners: HashMap<SocketAddr, HashMap<u32, u64>>,
    by_local: HashMap<SocketAddr, u64>,
    sysctls: Sysctls,
}

/// Most remotes kept from one census to the next (for growth).
const MAX_REMOTES: usize = 1000;
/// Report sizes.
const TOP: usize = 10;
const MAX_BUILDUPS_KEPT: usize = 100;

pub struct Lifecycle {
    cfg: LifecycleConfig,
    open: HashMap<ConnKey, OpenConn>,
    open_by_sock: HashMap<u64, ConnKey>,
    /// Open connections by (local, remote): a process that exits without close() still owns
    /// the TIME_WAIT its exit leaves.
    open_by_tuple: HashMap<(SocketAddr, SocketAddr), ConnKey>,
    recent: Recent,
    peers: HashMap<PeerKey, PeerStats>,
    last: Option<LastCensus>,
    limiter: RateLimiter,
    /// Remotes over the threshold without an owner at the last census.
    pending: Vec<SocketAddr>,
    buildups: VecDeque<BuildupRecord>,
    census_error: Option<String>,
    first_ns: Option<u64>,
    /// Peers not counted because `max_peers` was reached.
    pub peers_dropped: u64,
}

impl Lifecycle {
    pub fn new(cfg: LifecycleConfig) -> Lifecycle {
        Lifecycle {
            cfg,
            open: HashMap::new(),
            open_by_sock: HashMap::new(),
            open_by_tuple: HashMap::new(),
            recent: Recent::default(),
            peers: HashMap::new(),
            last: None,
            limiter: RateLimiter::default(),
            pending: Vec::new(),
            buildups: VecDeque::new(),
            census_error: None,
            first_ns: None,
            peers_dropped: 0,
        }
    }

    pub fn config(&self) -> &LifecycleConfig {
        &self.cfg
    }

    /// Feeds one raw record (cheap for data records: only the kind is read).
    pub fn on_raw(&mut self, raw: &[u8]) {
        let kind = raw.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        if kind == Some(traceid_common::kind::DATA) {
            return;
        }
        if let Ok(ev) = event::decode(raw) {
            self.on_event(&ev);
        }
    }

    pub fn on_event(&mut self, ev: &Event<'_>) {
        let h = *ev.header();
        self.first_ns.get_or_insert(h.ts_ns);
        let key = ConnKey::of(&h);
        match ev {
            Event::ConnOpen(c) => {
                let (local, remote) = match event::endpoints(c) {
                    Some((l, r)) => (Some(l), Some(r)),
                    None => (None, None),
                };
                let role = Role::from_raw(c.role);
                let endpoint = match (role, local, remote) {
                    (Role::Server, Some(l), _) => l,
                    (_, _, Some(r)) => r,
                    // Endpoints unknown: nothing to attribute or group by.
                    _ => return,
                };
                let peer = PeerKey {
                    pid: h.pid,
                    role,
                    endpoint,
                };
                let comm = event::comm(&h);
                if !self.count_open(peer, comm, h.ts_ns) {
                    return;
                }
                if self.open.len() >= self.cfg.max_conns && !self.open.contains_key(&key) {
                    self.evict_oldest();
                }
                if let Some(old) = self.open.insert(
                    key,
                    OpenConn {
                        peer,
                        local,
                        remote,
                        sock: c.sock,
                        opened_ns: h.conn_ts_ns.min(h.ts_ns),
                        closer: None,
                        requests: 0,
                    },
                ) {
                    self.forget_open(key, &old);
                }
                if c.sock != 0 {
                    self.open_by_sock.insert(c.sock, key);
                }
                if let (Some(l), Some(r)) = (local, remote) {
                    self.open_by_tuple.insert((l, r), key);
                }
            }
            Event::ConnClose(_) => {
                let Some(conn) = self.open.remove(&key) else {
                    return;
                };
                self.forget_open(key, &conn);
                if let Some(p) = self.peers.get_mut(&conn.peer) {
                    if let Some(o) = &self.cfg.observer {
                        o.0.connection_closed(
                            &p.comm,
                            &conn.peer.endpoint.to_string(),
                            conn.requests,
                        );
                    }
                    p.closed += 1;
                    let life = h.ts_ns.saturating_sub(conn.opened_ns);
                    p.lifetime_sum_ns = p.lifetime_sum_ns.saturating_add(life);
                    p.lifetime_max_ns = p.lifetime_max_ns.max(life);
                }
                let tuple = conn.local.zip(conn.remote);
                self.recent.push(
                    Closed {
                        closed_ns: h.ts_ns,
                        key,
                        peer: conn.peer,
                        tuple,
                        sock: conn.sock,
                        closer: conn.closer,
                    },
                    self.cfg.recent_cap,
                );
            }
            Event::State(s) => {
                let Some(closer) = Closer::from_states(s.old_state, s.new_state) else {
                    return;
                };
                if s.skaddr == 0 {
                    return;
                }
                // The passive side moves to CLOSE_WAIT before its process closes; the active
                // side moves to FIN_WAIT1 inside close(), after the close record.
                let peer = if let Some(k) = self.open_by_sock.get(&s.skaddr) {
                    self.open.get_mut(k).and_then(|c| {
                        c.closer.is_none().then(|| {
                            c.closer = Some(closer);
                            c.peer
                        })
                    })
                } else if let Some(&idx) = self.recent.by_sock.get(&s.skaddr) {
                    self.recent.get_mut(idx).and_then(|c| {
                        c.closer.is_none().then(|| {
                            c.closer = Some(closer);
                            c.peer
                        })
                    })
                } else {
                    None
                };
                if let Some(p) = peer.and_then(|p| self.peers.get_mut(&p)) {
                    match closer {
                        Closer::Local => p.closed_local_first += 1,
                        Closer::Peer => p.closed_peer_first += 1,
                        Closer::Reset => p.resets += 1,
                    }
                }
            }
            Event::Data(..) => {}
        }
    }

    /// Counts requests per connection from the engine's request records.
    pub fn on_record(&mut self, r: &Record) {
        let Record::Request(q) = r else { return };
        let key = ConnKey {
            pid: q.conn.0,
            fd: q.conn.1,
            conn_ts_ns: q.conn.2,
        };
        let peer = match self.open.get_mut(&key) {
            Some(c) => {
                c.requests += 1;
                Some(c.peer)
            }
            None => self
                .recent
                .by_key
                .get(&key)
                .and_then(|&i| self.recent.get(i))
                .map(|c| c.peer),
        };
        if let Some(p) = peer.and_then(|p| self.peers.get_mut(&p)) {
            p.requests += 1;
        }
    }

    fn count_open(&mut self, peer: PeerKey, comm: String, ts_ns: u64) -> bool {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.cfg.max_peers {
            self.peers_dropped += 1;
            return false;
        }
        let p = self.peers.entry(peer).or_insert_with(|| PeerStats {
            first_ns: ts_ns,
            ..PeerStats::default()
        });
        p.opened += 1;
        if let Some(o) = &self.cfg.observer {
            o.0.connection_opened(&comm, &peer.endpoint.to_string(), role_label(peer.role));
        }
        p.comm = comm;
        true
    }

    /// Drops the oldest tenth of the open connections (closes never seen).
    fn evict_oldest(&mut self) {
        let mut ages: Vec<(u64, ConnKey)> =
            self.open.iter().map(|(k, c)| (c.opened_ns, *k)).collect();
        let n = (ages.len() / 10).max(1);
        ages.select_nth_unstable(n - 1);
        for (_, k) in ages.into_iter().take(n) {
            if let Some(c) = self.open.remove(&k) {
                self.forget_open(k, &c);
            }
        }
    }

    /// Removes an open connection's index entries (when they still name it).
    fn forget_open(&mut self, key: ConnKey, c: &OpenConn) {
        if self.open_by_sock.get(&c.sock) == Some(&key) {
            self.open_by_sock.remove(&c.sock);
        }
        if let Some(t) = c.local.zip(c.remote) {
            if self.open_by_tuple.get(&t) == Some(&key) {
                self.open_by_tuple.remove(&t);
            }
        }
    }

    /// The threshold in force with these sysctls.
    pub fn threshold(&self, sys: &Sysctls) -> u64 {
        effective_threshold(
            self.cfg.tw_threshold,
            sys.range_size(),
            self.cfg.default_threshold,
            self.cfg.range_share,
        )
    }

    /// A census failed: remembered for the report.
    pub fn on_census_error(&mut self, e: String) {
        self.census_error = Some(e);
    }

    /// One census at `now_ns` (CLOCK_MONOTONIC): attributes, counts, measures growth and pushes
    /// `buildup` records to `out`.
    pub fn on_census(
        &mut self,
        now_ns: u64,
        census: &Census,
        sys: Sysctls,
        realtime_offset_ns: i128,
        out: &mut Vec<Record>,
    ) {
        self.census_error = None;
        self.recent.expire(now_ns, self.cfg.recent_ttl_ns);
        self.limiter.expire(now_ns, self.cfg.buildup_every_ns);
        let mut by_remote: HashMap<SocketAddr, u64> = HashMap::new();
        let mut owners: HashMap<SocketAddr, HashMap<u32, u64>> = HashMap::new();
        let mut by_local: HashMap<SocketAddr, u64> = HashMap::new();
        for s in &census.sockets {
            let TimeWaitSocket { local, remote } = *s;
            let (local, remote) = (normalize(local), normalize(remote));
            *by_remote.entry(remote).or_default() += 1;
            let owner: Option<PeerKey> = self
                .recent
                .by_tuple
                .get(&(local, remote))
                .and_then(|&i| self.recent.get(i))
                .map(|c| c.peer)
                .or_else(|| {
                    let k = self.open_by_tuple.get(&(local, remote))?;
                    self.open.get(k).map(|c| c.peer)
                });
            let local_key = match owner {
                Some(p) if p.role == Role::Server => local,
                _ => SocketAddr::new(local.ip(), 0),
            };
            if by_local.len() < MAX_REMOTES || by_local.contains_key(&local_key) {
                *by_local.entry(local_key).or_default() += 1;
            }
            if let Some(c) = owner {
                if owners.len() < MAX_REMOTES || owners.contains_key(&remote) {
                    *owners.entry(remote).or_default().entry(c.pid).or_default() += 1;
                }
            }
        }
        // Keep the largest remotes only (server-side TIME_WAIT has one remote per socket).
        if by_remote.len() > MAX_REMOTES {
            let mut v: Vec<(SocketAddr, u64)> = by_remote.into_iter().collect();
            v.sort_by_key(|e| std::cmp::Reverse(e.1));
            v.truncate(MAX_REMOTES);
            by_remote = v.into_iter().collect();
        }
        for p in self.peers.values_mut() {
            p.history.push_back((now_ns, p.opened));
            while p.history.len() > 2
                && p.history
                    .get(1)
                    .is_some_and(|(t, _)| now_ns.saturating_sub(*t) >= self.cfg.rate_window_ns)
            {
                p.history.pop_front();
            }
        }
        if let Some(o) = &self.cfg.observer {
            let mut v: Vec<(String, u64)> =
                by_remote.iter().map(|(r, n)| (r.to_string(), *n)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.truncate(TOP * 10);
            o.0.time_wait(&v);
        }
        let total = census.sockets.len() as u64;
        let threshold = self.threshold(&sys);
        let prev = self.last.as_ref();
        let dt_s = prev.map(|p| now_ns.saturating_sub(p.ns) as f64 / NS as f64);
        let growth_per_s = match (prev, dt_s) {
            (Some(p), Some(dt)) if dt > 0.0 => (total as f64 - p.total as f64) / dt,
            _ => 0.0,
        };
        let growth: HashMap<SocketAddr, f64> = match (prev, dt_s) {
            (Some(p), Some(dt)) if dt > 0.0 => by_remote
                .iter()
                .map(|(r, n)| {
                    let before = p.by_remote.get(r).copied().unwrap_or(0);
                    (*r, round2((*n as f64 - before as f64) / dt))
                })
                .collect(),
            _ => HashMap::new(),
        };
        // A buildup seen without an owner waits one census (the connection events may still be
        // on their way through the ring buffer); if still over the threshold then, it is
        // reported as it is.
        let pending = std::mem::take(&mut self.pending);
        let mut candidates: Vec<(SocketAddr, u64)> = by_remote
            .iter()
            .filter(|(r, n)| {
                let previous = prev.map(|p| p.by_remote.get(r).copied().unwrap_or(0));
                is_buildup(**n, previous, threshold) || (pending.contains(r) && **n >= threshold)
            })
            .map(|(r, n)| (*r, *n))
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (remote, n) in candidates {
            let owner = owners.get(&remote).and_then(top_owner);
            if owner.is_none() && !pending.contains(&remote) && self.pending.len() < MAX_REMOTES {
                self.pending.push(remote);
                continue;
            }
            if !self
                .limiter
                .allow(remote, now_ns, self.cfg.buildup_every_ns)
            {
                continue;
            }
            let stats = owner.and_then(|pid| {
                self.peers.get(&PeerKey {
                    pid,
                    role: Role::Client,
                    endpoint: remote,
                })
            });
            let rec = BuildupRecord {
                event: "buildup",
                ts: rfc3339_ms(now_ns as i128 + realtime_offset_ns),
                remote: remote.to_string(),
                time_wait: n,
                threshold,
                pid: owner,
                comm: stats.map(|s| s.comm.clone()),
                connections_per_s: stats.map_or(0.0, |s| round2(s.rate(now_ns))),
                requests_per_connection: stats
                    .and_then(|s| reuse_ratio(s.requests, s.opened))
                    .map(round2),
                tcp_tw_reuse: sys.tcp_tw_reuse,
                port_range: sys.port_range,
            };
            if self.buildups.len() >= MAX_BUILDUPS_KEPT {
                self.buildups.pop_front();
            }
            self.buildups.push_back(rec.clone());
            out.push(Record::Buildup(Box::new(rec)));
        }
        self.last = Some(LastCensus {
            ns: now_ns,
            total,
            truncated: census.truncated,
            growth_per_s,
            by_remote,
            growth,
            owners,
            by_local,
            sysctls: sys,
        });
    }

    /// Connections remembered as recently closed (for tests and health).
    pub fn recently_closed(&self) -> usize {
        self.recent.len()
    }

    /// The TIME_WAIT section: last census, owners, reuse. `now_ns` ends the rate windows.
    pub fn report(&self, now_ns: u64) -> TimeWaitReport {
        let first = self.first_ns.unwrap_or(now_ns);
        let run_rate = |p: &PeerStats| {
            let dt = now_ns.saturating_sub(p.first_ns.max(first).min(now_ns));
            if dt == 0 {
                0.0
            } else {
                round2(p.opened as f64 * NS as f64 / dt as f64)
            }
        };
        let peer_report = |k: &PeerKey, p: &PeerStats| PeerReport {
            pid: k.pid,
            comm: p.comm.clone(),
            role: k.role,
            endpoint: k.endpoint.to_string(),
            opened: p.opened,
            closed: p.closed,
            closed_local_first: p.closed_local_first,
            closed_peer_first: p.closed_peer_first,
            resets: p.resets,
            mean_lifetime_ms: (p.closed > 0)
                .then(|| round2(p.lifetime_sum_ns as f64 / p.closed as f64 / 1e6)),
            max_lifetime_ms: (p.closed > 0).then(|| round2(p.lifetime_max_ns as f64 / 1e6)),
            requests: p.requests,
            requests_per_connection: reuse_ratio(p.requests, p.opened).map(round2),
            connections_per_s: run_rate(p),
        };
        let mut peers: Vec<(&PeerKey, &PeerStats)> = self.peers.iter().collect();
        peers.sort_by(|a, b| b.1.opened.cmp(&a.1.opened).then(a.0.pid.cmp(&b.0.pid)));
        let peers: Vec<PeerReport> = peers
            .into_iter()
            .take(TOP * 2)
            .map(|(k, p)| peer_report(k, p))
            .collect();
        let mut out = TimeWaitReport {
            peers,
            buildups: self.buildups.iter().cloned().collect(),
            census_error: self.census_error.clone(),
            ..TimeWaitReport::default()
        };
        let Some(last) = &self.last else {
            return out;
        };
        let range = last.sysctls.range_size();
        out.total = last.total;
        out.truncated = last.truncated;
        out.growth_per_s = round2(last.growth_per_s);
        out.threshold = self.threshold(&last.sysctls);
        out.sysctls = last.sysctls;
        let mut remotes: Vec<(&SocketAddr, &u64)> = last.by_remote.iter().collect();
        remotes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        out.remotes = remotes
            .into_iter()
            .take(TOP)
            .map(|(remote, &n)| {
                let owners = last.owners.get(remote);
                let owner = owners.and_then(top_owner);
                let stats = owner.and_then(|pid| {
                    self.peers.get(&PeerKey {
                        pid,
                        role: Role::Client,
                        endpoint: *remote,
                    })
                });
                RemoteTimeWait {
                    remote: remote.to_string(),
                    time_wait: n,
                    share_of_port_range: range.map(|r| round2(n as f64 * 100.0 / r as f64)),
                    growth_per_s: last.growth.get(remote).copied().unwrap_or(0.0),
                    pid: owner,
                    comm: stats.map(|s| s.comm.clone()),
                    attributed: owners.map_or(0, |o| o.values().sum()),
                    connections_per_s: stats.map(run_rate),
                    requests_per_connection: stats
                        .and_then(|s| reuse_ratio(s.requests, s.opened))
                        .map(round2),
                }
            })
            .collect();
        let mut locals: Vec<(String, u64)> = last
            .by_local
            .iter()
            .map(|(a, n)| {
                let name = if a.port() == 0 {
                    a.ip().to_string()
                } else {
                    a.to_string()
                };
                (name, *n)
            })
            .collect();
        locals.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        locals.truncate(TOP);
        out.locals = locals;
        out
    }
}

fn top_owner(owners: &HashMap<u32, u64>) -> Option<u32> {
    owners
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(pid, _)| *pid)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl TimeWaitReport {
    /// The TIME_WAIT section of the text diagnosis.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "TIME_WAIT (sock_diag census): {} sockets on this host{}, {:+.1}/s; buildup threshold {} toward one remote",
            self.total,
            if self.truncated { " (census truncated)" } else { "" },
            self.growth_per_s,
            self.threshold
        );
        let _ = writeln!(s, "  {}", self.sysctls.describe());
        if let Some(e) = &self.census_error {
            let _ = writeln!(s, "  census failed: {e}");
        }
        if self.remotes.is_empty() {
            let _ = writeln!(s, "  no TIME_WAIT sockets");
        }
        for r in &self.remotes {
            let owner = match (&r.comm, r.pid) {
                (Some(c), Some(p)) => format!("{c}[{p}]"),
                (None, Some(p)) => format!("pid {p}"),
                _ => "owner unknown (not seen closing it)".to_string(),
            };
            let share = r
                .share_of_port_range
                .map_or_else(String::new, |p| format!(" ({p:.1}% of the port range)"));
            let rate = r
                .connections_per_s
                .map_or_else(String::new, |c| format!(", {c:.1} conn/s"));
            let reuse = r
                .requests_per_connection
                .map_or_else(String::new, |q| format!(", {q:.2} requests/connection"));
            let _ = writeln!(
                s,
                "  {:<28} {:>7} TIME_WAIT{share}  {owner}{rate}{reuse}",
                r.remote, r.time_wait
            );
        }
        if !self.locals.is_empty() {
            let parts: Vec<String> = self
                .locals
                .iter()
                .map(|(a, n)| format!("{a} {n}"))
                .collect();
            let _ = writeln!(s, "  by local address: {}", parts.join(", "));
        }
        if !self.buildups.is_empty() {
            let _ = writeln!(s, "  BUILDUP findings: {}", self.buildups.len());
            let mut seen = Vec::new();
            for b in self.buildups.iter().rev() {
                if seen.contains(&&b.remote) {
                    continue;
                }
                seen.push(&b.remote);
                let _ = writeln!(s, "    {}", crate::report::buildup_text(b));
            }
        }
        let clients: Vec<&PeerReport> = self
            .peers
            .iter()
            .filter(|p| p.role != Role::Server)
            .take(TOP)
            .collect();
        if !clients.is_empty() {
            let _ = writeln!(
                s,
                "  CONNECTIONS by process -> remote: opened, closed (closed first by it / by peer / reset), requests per connection, mean lifetime"
            );
            for p in clients {
                let _ = writeln!(
                    s,
                    "    {}[{}] -> {}: {} opened ({:.1}/s), {} closed ({}/{}/{}), {} req/conn, {}",
                    p.comm,
                    p.pid,
                    p.endpoint,
                    p.opened,
                    p.connections_per_s,
                    p.closed,
                    p.closed_local_first,
                    p.closed_peer_first,
                    p.resets,
                    p.requests_per_connection
                        .map_or_else(|| "-".to_string(), |r| format!("{r:.2}")),
                    p.mean_lifetime_ms
                        .map_or_else(|| "-".to_string(), |m| format!("{m:.1} ms")),
                );
            }
        }
        s
    }
}

/// The census as the live loop runs it: one netlink socket kept open, errors reported once.
#[derive(Debug, Default)]
pub struct LiveCensus {
    socket: Option<CensusSocket>,
    warned: bool,
}

impl LiveCensus {
    /// Takes a census; on failure warns once on stderr and returns the error text.
    pub fn take(&mut self, max: usize) -> Result<Census, String> {
        let r = match &mut self.socket {
            Some(s) => s.dump(max),
            None => CensusSocket::open().and_then(|mut s| {
                let c = s.dump(max);
                self.socket = Some(s);
                c
            }),
        };
        r.map_err(|e| {
            if !self.warned {
                self.warned = true;
                eprintln!("traceid: TIME_WAIT census unavailable: {e}");
            }
            e.to_string()
        })
    }
}

#[cfg(test)]
mod tests;
