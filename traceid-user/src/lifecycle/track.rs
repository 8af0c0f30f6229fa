//! Per-connection and per-(process, endpoint) state: open connections, recently closed
//! ones (for attributing TIME_WAIT sockets), closers, rates.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use traceid_common::tcp_state;

use super::config::NS;
use crate::event::Role;
use crate::mem::{self, Endpoint};
use crate::record::ConnKey;

/// IPv4-mapped IPv6 addresses as IPv4, as the engine reports them.
pub(crate) fn normalize(a: SocketAddr) -> SocketAddr {
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
    pub(crate) last: HashMap<SocketAddr, u64>,
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
pub(crate) struct PeerStats {
    pub(crate) comm: String,
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    pub(crate) closed_local_first: u64,
    pub(crate) closed_peer_first: u64,
    pub(crate) resets: u64,
    pub(crate) lifetime_sum_ns: u64,
    pub(crate) lifetime_max_ns: u64,
    pub(crate) requests: u64,
    pub(crate) first_ns: u64,
    /// (census time, `opened` then), for the connections-per-second window.
    pub(crate) history: VecDeque<(u64, u64)>,
}

impl PeerStats {
    /// Connections opened per second since the oldest census kept in `history` (about one
    /// window ago), or since the first connection when there is no earlier census.
    pub(crate) fn rate(&self, now_ns: u64) -> f64 {
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
pub(crate) struct OpenConn {
    pub(crate) peer: PeerKey,
    /// (local, remote), when known.
    pub(crate) tuple: Option<Tuple>,
    pub(crate) sock: u64,
    pub(crate) opened_ns: u64,
    pub(crate) closer: Option<Closer>,
    pub(crate) requests: u64,
}

/// What is remembered of a closed connection.
#[derive(Debug, Clone)]
pub(crate) struct Closed {
    pub(crate) closed_ns: u64,
    pub(crate) key: ConnKey,
    pub(crate) peer: PeerKey,
    pub(crate) tuple: Option<Tuple>,
    pub(crate) sock: u64,
    pub(crate) closer: Option<Closer>,
}

/// A connection's (local, remote) endpoints, compact: the tables of open and recently closed
/// connections are keyed by them.
pub(crate) type Tuple = (Endpoint, Endpoint);

/// The [`Tuple`] of two endpoints.
pub(crate) fn tuple(local: SocketAddr, remote: SocketAddr) -> Tuple {
    (local.into(), remote.into())
}

/// How long a closed connection is kept whole: what still arrives about it after its close
/// (the active closer's move to FIN_WAIT1 happens inside close(), request records end at the
/// close) comes within this.
pub(crate) const CLOSING_NS: u64 = NS;

/// Recently closed connections, in two tiers.
///
/// For [`CLOSING_NS`] each is kept whole, by 4-tuple (TIME_WAIT attribution), by socket (state
/// changes that arrive after the close) and by connection key (request records that complete
/// at the close). Then only the ends that may hold a TIME_WAIT socket stay, by 4-tuple, for the
/// attribution: those that closed first, or whose closer is unknown. An end its peer closed,
/// or that was reset, holds none; on loopback, where both ends are followed, that halves what
/// is kept, and each kept end takes a third of the memory of a whole entry.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    pub(crate) order: VecDeque<Closed>,
    pub(crate) by_tuple: mem::FastMap<Tuple, usize>,
    pub(crate) by_sock: mem::FastMap<u64, usize>,
    pub(crate) by_key: mem::FastMap<ConnKey, usize>,
    /// Index in `order` of its first element ever pushed (indexes are absolute).
    pub(crate) base: usize,
    /// Ends that may hold TIME_WAIT, past their first [`CLOSING_NS`].
    holders: mem::FastMap<Tuple, Holder>,
    /// `holders` by close time, oldest first (may name entries replaced since).
    holders_order: VecDeque<(u64, Tuple)>,
}

/// What is kept of an end that may hold a TIME_WAIT socket.
#[derive(Debug, Clone, Copy)]
struct Holder {
    peer: PeerKey,
    closed_ns: u64,
}

impl Recent {
    /// Remembers a closed connection; at most `cap` whole and `cap` holders.
    pub(crate) fn push(&mut self, c: Closed, cap: usize) {
        self.settle(c.closed_ns, cap);
        while self.order.len() >= cap.max(1) {
            self.demote_front(cap);
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

    /// Whole entries closed more than [`CLOSING_NS`] before `now_ns` keep only what the
    /// attribution needs.
    fn settle(&mut self, now_ns: u64, cap: usize) {
        while self
            .order
            .front()
            .is_some_and(|c| now_ns.saturating_sub(c.closed_ns) > CLOSING_NS)
        {
            self.demote_front(cap);
        }
    }

    /// The oldest whole entry leaves the first tier; kept as a holder when it may hold one.
    fn demote_front(&mut self, cap: usize) {
        let Some(c) = self.pop_front() else {
            return;
        };
        let (Some(t), None | Some(Closer::Local)) = (c.tuple, c.closer) else {
            return;
        };
        while self.holders.len() >= cap.max(1) {
            self.pop_holder();
        }
        self.holders.insert(
            t,
            Holder {
                peer: c.peer,
                closed_ns: c.closed_ns,
            },
        );
        self.holders_order.push_back((c.closed_ns, t));
    }

    fn pop_holder(&mut self) {
        let Some((closed_ns, t)) = self.holders_order.pop_front() else {
            return;
        };
        // Only when the entry is still this one (a later connection may reuse the tuple).
        if self
            .holders
            .get(&t)
            .is_some_and(|h| h.closed_ns == closed_ns)
        {
            self.holders.remove(&t);
        }
        mem::shrink_if_sparse(&mut self.holders);
        mem::shrink_if_sparse(&mut self.holders_order);
    }

    fn pop_front(&mut self) -> Option<Closed> {
        let c = self.order.pop_front()?;
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
        mem::shrink_if_sparse(&mut self.order);
        mem::shrink_if_sparse(&mut self.by_tuple);
        mem::shrink_if_sparse(&mut self.by_sock);
        mem::shrink_if_sparse(&mut self.by_key);
        Some(c)
    }

    /// Forgets what closed more than `ttl_ns` before `now_ns` (TIME_WAIT lasts 60 s).
    pub(crate) fn expire(&mut self, now_ns: u64, ttl_ns: u64, cap: usize) {
        self.settle(now_ns, cap);
        while self
            .holders_order
            .front()
            .is_some_and(|&(closed_ns, _)| now_ns.saturating_sub(closed_ns) > ttl_ns)
        {
            self.pop_holder();
        }
    }

    /// The process end that owned the connection `t` (local, remote), if it may hold its
    /// TIME_WAIT.
    pub(crate) fn owner(&self, t: &Tuple) -> Option<PeerKey> {
        match self.by_tuple.get(t).and_then(|&i| self.get(i)) {
            Some(c) => Some(c.peer),
            None => self.holders.get(t).map(|h| h.peer),
        }
    }

    pub(crate) fn get_mut(&mut self, idx: usize) -> Option<&mut Closed> {
        self.order.get_mut(idx.checked_sub(self.base)?)
    }

    pub(crate) fn get(&self, idx: usize) -> Option<&Closed> {
        self.order.get(idx.checked_sub(self.base)?)
    }

    /// Closed connections remembered, whole or as holders.
    pub(crate) fn len(&self) -> usize {
        self.order.len() + self.holders.len()
    }
}
