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
/// is kept. A kept end is its owner and the [`fingerprint`] of its 4-tuple, in 8 bytes, so the
/// 262,144 ends of a busy minute take 2 MiB; a census looks them up in one pass
/// ([`Recent::owners`]).
#[derive(Debug, Default)]
pub(crate) struct Recent {
    pub(crate) order: VecDeque<Closed>,
    pub(crate) by_tuple: mem::FastMap<Tuple, usize>,
    pub(crate) by_sock: mem::FastMap<u64, usize>,
    pub(crate) by_key: mem::FastMap<ConnKey, usize>,
    /// Index in `order` of its first element ever pushed (indexes are absolute).
    pub(crate) base: usize,
    /// Ends that may hold TIME_WAIT, past their first [`CLOSING_NS`], oldest first.
    kept: VecDeque<KeptEnd>,
    /// `kept` cut in runs, oldest first, to expire them by run: no close time per end.
    kept_runs: VecDeque<KeptRun>,
}

/// The owners of a census's 4-tuples among the recently closed connections.
pub(crate) struct ClosedOwners<'a> {
    recent: &'a Recent,
    /// Owners of the kept ends by fingerprint, for the 4-tuples not closed whole.
    by_print: mem::FastMap<u32, Option<Owner>>,
}

impl ClosedOwners<'_> {
    /// The process end that owned `t`, one of the 4-tuples looked up.
    pub(crate) fn get(&self, t: &Tuple) -> Option<Owner> {
        self.recent
            .whole_owner(t)
            .or_else(|| self.by_print.get(&fingerprint(t)).copied().flatten())
    }
}

/// Consecutive ends of [`Recent::kept`] that closed within [`RUN_NS`] of the first.
#[derive(Debug, Clone, Copy)]
struct KeptRun {
    first_ns: u64,
    last_ns: u64,
    ends: usize,
}

/// How far apart the closes of one run of kept ends may be: they expire together, when the
/// last is older than the time to live, so an end is kept at most this much longer.
const RUN_NS: u64 = NS;

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

/// The 30-bit fingerprint of a 4-tuple, kept instead of its 36 bytes. Fixed-seeded, so a
/// replay attributes exactly as the live run did. A TIME_WAIT socket that no kept end owns
/// matches one of n kept ends by chance with a probability of n / 2^30 (2.4e-4 for 262,144),
/// and is then attributed to that end's owner.
pub(crate) fn fingerprint(t: &Tuple) -> u32 {
    (foldhash::quality::FixedState::default().hash_one(t) >> 34) as u32
}

/// An end that may hold a TIME_WAIT socket, in 8 bytes: its process, and in `stamp` its
/// 4-tuple's [`fingerprint`] (the high 30 bits) and its role (the low 2).
#[derive(Debug, Clone, Copy)]
struct KeptEnd {
    pid: u32,
    stamp: u32,
}

impl KeptEnd {
    fn new(owner: Owner, print: u32) -> KeptEnd {
        let role = match owner.role {
            Role::Server => 0,
            Role::Client => 1,
            Role::Unknown => 2,
        };
        KeptEnd {
            pid: owner.pid,
            stamp: (print << 2) | role,
        }
    }

    fn print(self) -> u32 {
        self.stamp >> 2
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
        while self.kept.len() >= cap.max(1) {
            self.pop_kept();
        }
        match self.kept_runs.back_mut() {
            Some(run) if c.closed_ns.saturating_sub(run.first_ns) < RUN_NS => {
                run.last_ns = run.last_ns.max(c.closed_ns);
                run.ends += 1;
            }
            _ => self.kept_runs.push_back(KeptRun {
                first_ns: c.closed_ns,
                last_ns: c.closed_ns,
                ends: 1,
            }),
        }
        self.kept
            .push_back(KeptEnd::new(c.peer.into(), fingerprint(&t)));
    }

    /// Forgets the oldest kept end.
    fn pop_kept(&mut self) {
        if self.kept.pop_front().is_none() {
            return;
        }
        if let Some(run) = self.kept_runs.front_mut() {
            run.ends -= 1;
            if run.ends == 0 {
                self.kept_runs.pop_front();
            }
        }
        mem::shrink_if_sparse(&mut self.kept);
        mem::shrink_if_sparse(&mut self.kept_runs);
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

    /// Forgets what closed more than `ttl_ns` before `now_ns` (TIME_WAIT lasts 60 s; a kept
    /// end may stay [`RUN_NS`] longer).
    pub(crate) fn expire(&mut self, now_ns: u64, ttl_ns: u64, cap: usize) {
        self.settle(now_ns, cap);
        while let Some(&run) = self.kept_runs.front() {
            if now_ns.saturating_sub(run.last_ns) <= ttl_ns {
                break;
            }
            self.kept_runs.pop_front();
            self.kept.drain(..run.ends.min(self.kept.len()));
        }
        mem::shrink_if_sparse(&mut self.kept);
        mem::shrink_if_sparse(&mut self.kept_runs);
    }

    /// The owner of a closed connection's 4-tuple (local, remote) while it is whole.
    fn whole_owner(&self, t: &Tuple) -> Option<Owner> {
        let c = self.by_tuple.get(t).and_then(|&i| self.get(i))?;
        Some(Owner::from(c.peer))
    }

    /// Looks up the owners of the 4-tuples `tuples` (a census's) in one pass over the kept
    /// ends; [`ClosedOwners::get`] then names the process end that owned each, where it may
    /// hold its TIME_WAIT.
    pub(crate) fn owners(&self, tuples: impl Iterator<Item = Tuple>) -> ClosedOwners<'_> {
        let mut by_print: mem::FastMap<u32, Option<Owner>> = tuples
            .filter(|t| self.whole_owner(t).is_none())
            .map(|t| (fingerprint(&t), None))
            .collect();
        if !by_print.is_empty() {
            // Oldest first: a 4-tuple closed again later is its later owner's.
            for end in &self.kept {
                if let Some(owner) = by_print.get_mut(&end.print()) {
                    *owner = Some(end.owner());
                }
            }
        }
        ClosedOwners {
            recent: self,
            by_print,
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
        self.order.len() + self.kept.len()
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
        let t = tuple(
            ([127, 0, 0, 1], lport).into(),
            ([127, 0, 0, 1], 8080).into(),
        );
        r.owners(std::iter::once(t)).get(&t)
    }

    #[test]
    fn per_connection_state_stays_small() {
        // Hundreds of thousands of each may be kept at once.
        assert_eq!(std::mem::size_of::<OpenConn>(), 64);
        assert_eq!(std::mem::size_of::<KeptEnd>(), 8);
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
