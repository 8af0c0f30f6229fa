//! What the lifecycle reports at the end of a run: connections per process and endpoint,
//! the last census and its owners. (Its text form is in `crate::report`.)

use std::collections::HashMap;

use serde::Serialize;

use super::attribution::{holder_peer, ServiceKey};
use super::config::{reuse_ratio, Sysctls, NS};
use super::track::{PeerKey, PeerStats};
use super::{Lifecycle, TOP};
use crate::event::Role;
use crate::record::{BuildupRecord, Holder};

/// TIME_WAIT of one service endpoint, for the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RemoteTimeWait {
    /// The service endpoint: the listening side of the connections, whichever end closed
    /// first.
    pub remote: String,
    /// Which end holds the sockets (closed first): `client`, `server` or `unknown`.
    pub holder: Holder,
    pub time_wait: u64,
    /// Share of the ephemeral port range these sockets hold (toward this one endpoint).
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
    /// Top service endpoints by TIME_WAIT count.
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

impl Lifecycle {
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
        // A total order (hash order must not show): a replay reports what the live run did.
        peers.sort_by(|a, b| {
            (b.1.opened, a.0.pid, a.0.endpoint, role_rank(a.0.role)).cmp(&(
                a.1.opened,
                b.0.pid,
                b.0.endpoint,
                role_rank(b.0.role),
            ))
        });
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
        let mut remotes: Vec<(&ServiceKey, &u64)> = last.by_service.iter().collect();
        remotes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        out.remotes = remotes
            .into_iter()
            .take(TOP)
            .map(|(&key, &n)| {
                let owners = last.owners.get(&key);
                let owner = owners.and_then(top_owner);
                let stats = owner.and_then(|pid| self.peers.get(&holder_peer(pid, key)));
                let (remote, holder) = key;
                RemoteTimeWait {
                    remote: remote.to_string(),
                    holder,
                    time_wait: n,
                    share_of_port_range: range.map(|r| round2(n as f64 * 100.0 / r as f64)),
                    growth_per_s: last.growth.get(&key).copied().unwrap_or(0.0),
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

pub(crate) fn top_owner(owners: &HashMap<u32, u64>) -> Option<u32> {
    owners
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(pid, _)| *pid)
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn role_rank(r: Role) -> u8 {
    match r {
        Role::Server => 0,
        Role::Client => 1,
        Role::Unknown => 2,
    }
}
