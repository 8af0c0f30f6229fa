//! Attributing a TIME_WAIT census to the processes that closed the connections, growth, and
//! `buildup` records.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::census::TimeWaitSocket;
use super::config::{is_buildup, reuse_ratio, Sysctls, NS};
use super::report::{round2, top_owner};
use super::track::{normalize, tuple, Owner, PeerKey};
use super::{Lifecycle, MAX_BUILDUPS_KEPT, MAX_REMOTES, TOP};
use crate::event::Role;
use crate::record::{rfc3339_ms, BuildupRecord, Holder, Record};

/// TIME_WAIT sockets are grouped by their connections' stable side: the service endpoint
/// (where the server listens) and which end holds them. Grouping by the sockets' remote end
/// would name one group per client port whenever the server closes first.
pub(crate) type ServiceKey = (SocketAddr, Holder);

/// The state of the last census.
#[derive(Debug, Default)]
pub(crate) struct LastCensus {
    pub(crate) ns: u64,
    pub(crate) total: u64,
    pub(crate) truncated: bool,
    pub(crate) growth_per_s: f64,
    pub(crate) by_service: HashMap<ServiceKey, u64>,
    /// Per service, sockets per second since the census before.
    pub(crate) growth: HashMap<ServiceKey, f64>,
    /// service -> pid -> attributed sockets.
    pub(crate) owners: HashMap<ServiceKey, HashMap<u32, u64>>,
    pub(crate) by_local: HashMap<SocketAddr, u64>,
    pub(crate) sysctls: Sysctls,
}

impl Lifecycle {
    /// One census at `now_ns` (CLOCK_MONOTONIC): attributes, counts, measures growth and pushes
    /// `buildup` records to `out`. The sockets are walked twice and never collected (a
    /// [`super::census_record::CensusView`] decodes them from the record as they are walked).
    pub fn on_census(
        &mut self,
        now_ns: u64,
        census: impl Iterator<Item = TimeWaitSocket> + Clone,
        truncated: bool,
        sys: Sysctls,
        realtime_offset_ns: i128,
        out: &mut Vec<Record>,
    ) {
        self.census_error = None;
        self.recent
            .expire(now_ns, self.cfg.recent_ttl_ns, self.cfg.recent_cap);
        self.limiter.expire(now_ns, self.cfg.buildup_every_ns);
        let mut by_service: HashMap<ServiceKey, u64> = HashMap::new();
        let mut owners: HashMap<ServiceKey, HashMap<u32, u64>> = HashMap::new();
        let mut by_local: HashMap<SocketAddr, u64> = HashMap::new();
        let endpoints_of = |role: Role| -> HashSet<SocketAddr> {
            self.peers
                .keys()
                .filter(|p| p.role == role)
                .map(|p| p.endpoint)
                .collect()
        };
        let known = KnownEndpoints {
            listening: endpoints_of(Role::Server),
            connected_to: endpoints_of(Role::Client),
        };
        let tuple_of = |s: &TimeWaitSocket| tuple(normalize(s.local), normalize(s.remote));
        let closed = self.recent.owners(census.clone().map(|s| tuple_of(&s)));
        let mut total = 0u64;
        for s in census {
            total += 1;
            let TimeWaitSocket { local, remote } = s;
            let (local, remote) = (normalize(local), normalize(remote));
            let t = tuple(local, remote);
            let owner: Option<Owner> = closed.get(&t).or_else(|| {
                let k = self.open_by_tuple.get(&t)?;
                self.open.get(k).map(|c| Owner {
                    pid: k.pid,
                    role: c.role,
                })
            });
            let service = stable_side(local, remote, owner.map(|p| p.role), &known, &sys);
            *by_service.entry(service).or_default() += 1;
            let local_key = match owner {
                Some(p) if p.role == Role::Server => local,
                _ => SocketAddr::new(local.ip(), 0),
            };
            if by_local.len() < MAX_REMOTES || by_local.contains_key(&local_key) {
                *by_local.entry(local_key).or_default() += 1;
            }
            if let Some(c) = owner {
                if owners.len() < MAX_REMOTES || owners.contains_key(&service) {
                    *owners.entry(service).or_default().entry(c.pid).or_default() += 1;
                }
            }
        }
        // Keep the largest services only.
        if by_service.len() > MAX_REMOTES {
            let mut v: Vec<(ServiceKey, u64)> = by_service.into_iter().collect();
            v.sort_by_key(|e| (std::cmp::Reverse(e.1), e.0));
            v.truncate(MAX_REMOTES);
            by_service = v.into_iter().collect();
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
            let mut v: Vec<(String, Holder, u64)> = by_service
                .iter()
                .map(|((service, holder), n)| (service.to_string(), *holder, *n))
                .collect();
            v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, a.1).cmp(&(&b.0, b.1))));
            v.truncate(TOP * 10);
            o.0.time_wait(&v);
        }
        let threshold = self.threshold(&sys);
        let prev = self.last.as_ref();
        let dt_s = prev.map(|p| now_ns.saturating_sub(p.ns) as f64 / NS as f64);
        let growth_per_s = match (prev, dt_s) {
            (Some(p), Some(dt)) if dt > 0.0 => (total as f64 - p.total as f64) / dt,
            _ => 0.0,
        };
        let growth: HashMap<ServiceKey, f64> = match (prev, dt_s) {
            (Some(p), Some(dt)) if dt > 0.0 => by_service
                .iter()
                .map(|(r, n)| {
                    let before = p.by_service.get(r).copied().unwrap_or(0);
                    (*r, round2((*n as f64 - before as f64) / dt))
                })
                .collect(),
            _ => HashMap::new(),
        };
        // A buildup seen without an owner waits one census (the connection events may still be
        // on their way through the ring buffer); if still over the threshold then, it is
        // reported as it is.
        let pending = std::mem::take(&mut self.pending);
        let mut candidates: Vec<(ServiceKey, u64)> = by_service
            .iter()
            .filter(|(r, n)| {
                let previous = prev.map(|p| p.by_service.get(r).copied().unwrap_or(0));
                is_buildup(**n, previous, threshold) || (pending.contains(r) && **n >= threshold)
            })
            .map(|(r, n)| (*r, *n))
            .collect();
        candidates.sort_by_key(|c| (std::cmp::Reverse(c.1), c.0));
        for (key, n) in candidates {
            let (service, holder) = key;
            let owner = owners.get(&key).and_then(top_owner);
            if owner.is_none() && !pending.contains(&key) && self.pending.len() < MAX_REMOTES {
                self.pending.push(key);
                continue;
            }
            if !self
                .limiter
                .allow(service, now_ns, self.cfg.buildup_every_ns)
            {
                continue;
            }
            let stats = owner.and_then(|pid| self.peers.get(&holder_peer(pid, key)));
            let rec = BuildupRecord {
                event: "buildup",
                ts: rfc3339_ms(now_ns as i128 + realtime_offset_ns),
                remote: service.to_string(),
                holder,
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
            truncated,
            growth_per_s,
            by_service,
            growth,
            owners,
            by_local,
            sysctls: sys,
        });
    }
}

/// The process's connections of the service `key` as the lifecycle counts them: accepted at
/// the endpoint when the server holds the sockets, opened to it otherwise.
pub(crate) fn holder_peer(pid: u32, (endpoint, holder): ServiceKey) -> PeerKey {
    PeerKey {
        pid,
        role: match holder {
            Holder::Server => Role::Server,
            Holder::Client | Holder::Unknown => Role::Client,
        },
        endpoint,
    }
}

/// Service endpoints the lifecycle has seen connections of.
pub(crate) struct KnownEndpoints {
    /// Where processes of this host accepted connections.
    pub(crate) listening: HashSet<SocketAddr>,
    /// Where processes of this host connected to.
    pub(crate) connected_to: HashSet<SocketAddr>,
}

/// The service endpoint of a TIME_WAIT socket (`local`, `remote` on this host) and which end
/// holds it. The role of the connection seen closing says it; else an endpoint seen
/// accepting (local) or connected to (remote); else the ports: the end whose port is in the
/// ephemeral range is the client. When nothing tells, the remote end is taken for the
/// service.
pub(crate) fn stable_side(
    local: SocketAddr,
    remote: SocketAddr,
    closed_by: Option<Role>,
    known: &KnownEndpoints,
    sys: &Sysctls,
) -> ServiceKey {
    match closed_by {
        Some(Role::Server) => return (local, Holder::Server),
        Some(Role::Client) => return (remote, Holder::Client),
        _ => {}
    }
    if known.listening.contains(&local) {
        return (local, Holder::Server);
    }
    if known.connected_to.contains(&remote) {
        return (remote, Holder::Client);
    }
    let ephemeral = |a: SocketAddr| {
        sys.port_range
            .is_some_and(|(lo, hi)| (lo..=hi).contains(&a.port()))
    };
    match (ephemeral(local), ephemeral(remote)) {
        (true, false) => (remote, Holder::Client),
        (false, true) => (local, Holder::Server),
        _ => (remote, Holder::Unknown),
    }
}
