//! Per-connection and per-(process, endpoint) state: open connections, recently closed
//! ones (for attributing TIME_WAIT sockets), closers, rates.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
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

/// An open connection, in 64 bytes: a host may hold hundreds of thousands.
#[derive(Debug, Clone)]
pub(crate) struct OpenConn {
    pub(crate) tuple: Tuple,
    pub(crate) role: Role,
    pub(crate) closer: Option<Closer>,
    pub(crate) sock: u64,
    pub(crate) opened_ns: u64,
    pub(crate) requests: u64,
}

impl OpenConn {
    /// The statistics process `pid`'s connection counts in: by the local (listening)
    /// endpoint for a server, the remote one otherwise.
    pub(crate) fn peer(&self, pid: u32) -> PeerKey {
        let (local, remote) = self.tuple;
        let endpoint = if self.role == Role::Server {
            local
        } else {
            remote
        };
        PeerKey {
            pid,
            role: self.role,
            endpoint: endpoint.addr(),
        }
    }
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
/// at the close). Then only the ends that may hold a TIME_WAIT socket stay, for the
/// attribution: those that closed first, or whose closer is unknown. An end its peer closed,
/// or that was reset, holds none; on loopback, where both ends are followed, that halves what
/// is kept. A kept end is its owner and the [`fingerprint`] of its 4-tuple: 33 bytes with the
/// table's overhead, so the 262,144 ends of a busy minute take 8 MiB.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    pub(crate) order: VecDeque<Closed>,
    pub(crate) by_tuple: mem::FastMap<Tuple, usize>,
    pub(crate) by_sock: mem::FastMap<u64, usize>,
    pub(crate) by_key: mem::FastMap<ConnKey, usize>,
    /// Index in `order` of its first element ever pushed (indexes are absolute).
    pub(crate) base: usize,
    /// Ends that may hold TIME_WAIT, past their first [`CLOSING_NS`], by fingerprint.
    holders: mem::FastMap<u64, Holder>,
    /// `holders` in the order they came, oldest first: (close time, fingerprint). May name
    /// entries replaced since.
    holders_order: VecDeque<(u64, u64)>,
    /// Entries ever popped from `holders_order`: the absolute index of its front.
    holders_popped: u64,
}

/// Who owned a connection end: what the TIME_WAIT attribution needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    pub(crate) role: Role,
}

impl From<PeerKey> for Owner {
    fn from(p: PeerKey) -> Owner {
        Owner {
            pid: p.pid,
            role: p.role,
        }
    }
}

/// A 64-bit fingerprint of a 4-tuple, kept instead of its 36 bytes. Fixed-seeded, so a replay
/// attributes exactly as the live run did; two of 262,144 kept ends share one with a
/// probability of about 2^-29 (and then one TIME_WAIT socket is attributed to the other's
/// owner).
pub(crate) fn fingerprint(t: &Tuple) -> u64 {
    foldhash::quality::FixedState::default().hash_one(t)
}

/// What is kept of an end that may hold a TIME_WAIT socket, in 8 bytes: its process, and in
/// `stamp` its role (low 2 bits) and its index in `holders_order` (the 30 bits above: enough
/// to tell it from an entry of the same fingerprint pushed before it, as the order never
/// holds 2^30 entries).
#[derive(Debug, Clone, Copy)]
struct Holder {
    pid: u32,
    stamp: u32,
}

impl Holder {
    fn new(owner: Owner, index: u64) -> Holder {
        let role = match owner.role {
            Role::Server => 0,
            Role::Client => 1,
            Role::Unknown => 2,
        };
        Holder {
            pid: owner.pid,
            stamp: ((index as u32) << 2) | role,
        }
    }

    fn owner(self) -> Owner {
        let role = match self.stamp & 0b11 {
            0 => Role::Server,
            1 => Role::Client,
            _ => Role::Unknown,
        };
        Owner {
            pid: self.pid,
            role,
        }
    }

    /// Whether this is the entry pushed at `index` of `holders_order`.
    fn pushed_at(self, index: u64) -> bool {
        self.stamp >> 2 == (index as u32) & (u32::MAX >> 2)
    }
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
        let index = self.holders_popped + self.holders_order.len() as u64;
        let print = fingerprint(&t);
        self.holders
            .insert(print, Holder::new(c.peer.into(), index));
        self.holders_order.push_back((c.closed_ns, print));
    }

    fn pop_holder(&mut self) {
        let Some((_, print)) = self.holders_order.pop_front() else {
            return;
        };
        let index = self.holders_popped;
        self.holders_popped += 1;
        // Only when the entry is still this one (a later connection may reuse the tuple).
        if self.holders.get(&print).is_some_and(|h| h.pushed_at(index)) {
            self.holders.remove(&print);
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
    pub(crate) fn owner(&self, t: &Tuple) -> Option<Owner> {
        match self.by_tuple.get(t).and_then(|&i| self.get(i)) {
            Some(c) => Some(c.peer.into()),
            None => self.holders.get(&fingerprint(t)).map(|h| h.owner()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS;

    fn closed(pid: u32, role: Role, lport: u16, closed_ns: u64) -> Closed {
        let local: SocketAddr = ([127, 0, 0, 1], lport).into();
        let remote: SocketAddr = ([127, 0, 0, 1], 8080).into();
        Closed {
            closed_ns,
            key: ConnKey {
                pid,
                fd: 3,
                conn_ts_ns: closed_ns,
            },
            peer: PeerKey {
                pid,
                role,
                endpoint: remote,
            },
            tuple: Some(tuple(local, remote)),
            sock: 0,
            closer: Some(Closer::Local),
        }
    }

    fn owner_of(r: &Recent, lport: u16) -> Option<Owner> {
        r.owner(&tuple(
            ([127, 0, 0, 1], lport).into(),
            ([127, 0, 0, 1], 8080).into(),
        ))
    }

    #[test]
    fn per_connection_state_stays_small() {
        // Hundreds of thousands of each may be kept at once.
        assert_eq!(std::mem::size_of::<OpenConn>(), 64);
        assert_eq!(std::mem::size_of::<Holder>(), 8);
    }

    #[test]
    fn kept_ends_name_their_owner_and_a_reused_tuple_its_latest() {
        let mut r = Recent::default();
        r.push(closed(10, Role::Client, 40000, S), 100);
        r.push(closed(11, Role::Server, 40001, S), 100);
        r.push(closed(12, Role::Unknown, 40002, S), 100);
        // The same 4-tuple, closed again later by another process.
        r.push(closed(13, Role::Client, 40000, 3 * S), 100);
        // Past their closing second, the first three are kept only as holders.
        r.expire(5 * S, 60 * S, 100);
        assert_eq!(r.order.len(), 0);
        let owner = |pid, role| Some(Owner { pid, role });
        assert_eq!(owner_of(&r, 40000), owner(13, Role::Client));
        assert_eq!(owner_of(&r, 40001), owner(11, Role::Server));
        assert_eq!(owner_of(&r, 40002), owner(12, Role::Unknown));
        assert_eq!(owner_of(&r, 40003), None);
        // The first close of the reused tuple expires; the later one stays its owner.
        r.expire(62 * S, 60 * S, 100);
        assert_eq!(owner_of(&r, 40000), owner(13, Role::Client));
        assert_eq!(owner_of(&r, 40001), None);
        r.expire(64 * S, 60 * S, 100);
        assert_eq!(owner_of(&r, 40000), None);
        assert_eq!(r.len(), 0);
    }
}
