//! Connection lifecycle and TIME_WAIT buildup.
//!
//! Fed by the same records as the engine (connection open/close, TCP state changes, request
//! records) and, every interval, by a TIME_WAIT census through sock_diag ([`census`]). Per
//! (process, remote endpoint) it counts connections opened and closed, which side closed first,
//! lifetimes and requests per connection (reuse). It remembers the 4-tuples of recently closed
//! connections that may hold TIME_WAIT (bounded, ~70 s: TIME_WAIT lasts 60 s) so each
//! TIME_WAIT socket of a census is attributed to the process that owned the connection, and
//! it emits `buildup` when TIME_WAIT
//! toward one remote passes the threshold and is growing (at most once per remote per 10 s).
//!
//! Everything here is pure (time and census are passed in) except [`LiveCensus`], which talks
//! to the kernel. Every map is bounded.

mod attribution;
pub mod census;
pub mod census_record;
mod config;
mod live;
mod report;
mod track;

use std::collections::VecDeque;

use crate::event::{self, Event, Role};
use crate::mem;
use crate::record::{BuildupRecord, ConnKey, Record};

use attribution::LastCensus;
use config::role_label;
pub use config::{
    effective_threshold, is_buildup, reuse_ratio, LifecycleConfig, LifecycleObserver, Observer,
    Sysctls,
};
pub use live::LiveCensus;
pub use report::{PeerReport, RemoteTimeWait, TimeWaitReport};
use track::{tuple, Closed, OpenConn, PeerStats, Recent, Tuple};
pub use track::{Closer, PeerKey, RateLimiter};

/// Most remotes kept from one census to the next (for growth).
const MAX_REMOTES: usize = 1000;
/// Report sizes.
const TOP: usize = 10;
const MAX_BUILDUPS_KEPT: usize = 100;

pub struct Lifecycle {
    cfg: LifecycleConfig,
    open: mem::FastMap<ConnKey, OpenConn>,
    open_by_sock: mem::FastMap<u64, ConnKey>,
    /// Open connections by (local, remote): a process that exits without close() still owns
    /// the TIME_WAIT its exit leaves.
    open_by_tuple: mem::FastMap<Tuple, ConnKey>,
    recent: Recent,
    peers: mem::FastMap<PeerKey, PeerStats>,
    last: Option<LastCensus>,
    limiter: RateLimiter,
    /// Services over the threshold without an owner at the last census.
    pending: Vec<attribution::ServiceKey>,
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
            open: mem::FastMap::default(),
            open_by_sock: mem::FastMap::default(),
            open_by_tuple: mem::FastMap::default(),
            recent: Recent::default(),
            peers: mem::FastMap::default(),
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

    pub fn on_event(&mut self, ev: &Event<'_>) {
        let h = *ev.header();
        self.first_ns.get_or_insert(h.ts_ns);
        let key = ConnKey::of(&h);
        match ev {
            // Another process using a connection that was already announced (a forked child,
            // a dup'd or passed fd): the connection was counted once, by its opener.
            Event::ConnOpen(c) if c.flags & traceid_common::CONN_HELD != 0 => {}
            Event::ConnOpen(c) => {
                // Endpoints unknown: nothing to attribute or group by.
                let Some((local, remote)) = event::endpoints(c) else {
                    return;
                };
                let role = Role::from_raw(c.role);
                let conn = OpenConn {
                    tuple: tuple(local, remote),
                    role,
                    sock: c.sock,
                    opened_ns: h.conn_ts_ns.min(h.ts_ns),
                    closer: None,
                    requests: 0,
                };
                let peer = conn.peer(h.pid);
                let comm = event::comm(&h);
                if !self.count_open(peer, comm, h.ts_ns) {
                    return;
                }
                if self.open.len() >= self.cfg.max_conns && !self.open.contains_key(&key) {
                    self.evict_oldest();
                }
                let t = conn.tuple;
                if let Some(old) = self.open.insert(key, conn) {
                    self.forget_open(key, &old);
                }
                if c.sock != 0 {
                    self.open_by_sock.insert(c.sock, key);
                }
                self.open_by_tuple.insert(t, key);
            }
            Event::ConnClose(_) => {
                let Some(conn) = self.open.remove(&key) else {
                    return;
                };
                self.forget_open(key, &conn);
                let peer = conn.peer(key.pid);
                if let Some(p) = self.peers.get_mut(&peer) {
                    if let Some(o) = &self.cfg.observer {
                        o.0.connection_closed(&p.comm, &peer.endpoint.to_string(), conn.requests);
                    }
                    p.closed += 1;
                    let life = h.ts_ns.saturating_sub(conn.opened_ns);
                    p.lifetime_sum_ns = p.lifetime_sum_ns.saturating_add(life);
                    p.lifetime_max_ns = p.lifetime_max_ns.max(life);
                }
                self.recent.push(
                    Closed {
                        closed_ns: h.ts_ns,
                        key,
                        peer,
                        tuple: Some(conn.tuple),
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
                    let pid = k.pid;
                    self.open.get_mut(k).and_then(|c| {
                        c.closer.is_none().then(|| {
                            c.closer = Some(closer);
                            c.peer(pid)
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
            Event::Data(..)
            | Event::Census(..)
            | Event::Loss(..)
            | Event::GoServe(_)
            | Event::GoCall(_)
            | Event::GoSpawn(_) => {}
        }
    }

    /// Counts requests per connection from the engine's request records.
    pub fn on_record(&mut self, r: &Record) {
        let Record::Request(q) = r else { return };
        let key = q.conn;
        let peer = match self.open.get_mut(&key) {
            Some(c) => {
                c.requests += 1;
                Some(c.peer(key.pid))
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
        if self.open_by_tuple.get(&c.tuple) == Some(&key) {
            self.open_by_tuple.remove(&c.tuple);
        }
        mem::shrink_if_sparse(&mut self.open);
        mem::shrink_if_sparse(&mut self.open_by_sock);
        mem::shrink_if_sparse(&mut self.open_by_tuple);
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

    /// The keys of the connections open now, in no particular order.
    pub fn open_keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.open.keys().copied()
    }

    /// Connections remembered as recently closed (for tests and health).
    pub fn recently_closed(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests;
