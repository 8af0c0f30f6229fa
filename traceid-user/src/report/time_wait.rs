//! The connection lifecycle and TIME_WAIT section of the diagnosis, in words.

use std::fmt::Write as _;

use crate::event::Role;
use crate::lifecycle::{PeerReport, Sysctls, TimeWaitReport};
use crate::record::Holder;

/// Processes listed in the connection section.
const TOP: usize = 10;

/// The TIME_WAIT and connection section of the text diagnosis.
pub fn render(tw: &TimeWaitReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "TIME_WAIT (sock_diag census): {} sockets on this host{}, {:+.1}/s; buildup threshold {} toward one remote",
        tw.total,
        if tw.truncated { " (census truncated)" } else { "" },
        tw.growth_per_s,
        tw.threshold
    );
    let _ = writeln!(s, "  {}", describe_sysctls(&tw.sysctls));
    if let Some(e) = &tw.census_error {
        let _ = writeln!(s, "  census failed: {e}");
    }
    if tw.remotes.is_empty() {
        let _ = writeln!(s, "  no TIME_WAIT sockets");
    }
    for r in &tw.remotes {
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
            "  {:<28} {:>7} TIME_WAIT {}{share}  {owner}{rate}{reuse}",
            r.remote,
            r.time_wait,
            held_by(r.holder)
        );
    }
    if !tw.locals.is_empty() {
        let parts: Vec<String> = tw.locals.iter().map(|(a, n)| format!("{a} {n}")).collect();
        let _ = writeln!(s, "  by local address: {}", parts.join(", "));
    }
    if !tw.buildups.is_empty() {
        let _ = writeln!(s, "  BUILDUP findings: {}", tw.buildups.len());
        let mut seen = Vec::new();
        for b in tw.buildups.iter().rev() {
            if seen.contains(&&b.remote) {
                continue;
            }
            seen.push(&b.remote);
            let _ = writeln!(s, "    {}", super::buildup_text(b));
        }
    }
    let clients = clients_by_name(&tw.peers);
    if !clients.is_empty() {
        let _ = writeln!(
            s,
            "  CONNECTIONS by process -> remote: opened, closed (closed first by it / by peer / reset), requests per connection, mean lifetime"
        );
        for c in clients.iter().take(TOP) {
            let who = match c.pids.as_slice() {
                [pid] => format!("{}[{pid}]", c.comm),
                pids => format!("{} ({} processes)", c.comm, pids.len()),
            };
            let _ = writeln!(
                s,
                "    {who} -> {}: {} opened ({:.1}/s), {} closed ({}/{}/{}), {} req/conn, {}",
                c.endpoint,
                c.opened,
                c.connections_per_s,
                c.closed,
                c.closed_local_first,
                c.closed_peer_first,
                c.resets,
                (c.opened > 0)
                    .then(|| c.requests as f64 / c.opened as f64)
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.2}")),
                (c.closed > 0)
                    .then(|| c.lifetime_ms_sum / c.closed as f64)
                    .map_or_else(|| "-".to_string(), |m| format!("{m:.1} ms")),
            );
        }
    }
    s
}

/// The client side of the connections of every process of one name toward one remote: a
/// client that runs once per request (`curl[3905]`, `curl[3907]`, ...) makes one line.
#[derive(Debug, Default)]
struct ClientLine<'a> {
    comm: &'a str,
    endpoint: &'a str,
    pids: Vec<u32>,
    opened: u64,
    connections_per_s: f64,
    closed: u64,
    closed_local_first: u64,
    closed_peer_first: u64,
    resets: u64,
    requests: u64,
    /// Mean lifetime times connections closed, summed over the processes.
    lifetime_ms_sum: f64,
}

/// Client connections by (process name, remote), most opened first.
fn clients_by_name(peers: &[PeerReport]) -> Vec<ClientLine<'_>> {
    let mut lines: Vec<ClientLine> = Vec::new();
    for p in peers.iter().filter(|p| p.role != Role::Server) {
        let i = match lines
            .iter()
            .position(|l| l.comm == p.comm && l.endpoint == p.endpoint)
        {
            Some(i) => i,
            None => {
                lines.push(ClientLine {
                    comm: &p.comm,
                    endpoint: &p.endpoint,
                    ..ClientLine::default()
                });
                lines.len() - 1
            }
        };
        let l = &mut lines[i];
        l.pids.push(p.pid);
        l.opened += p.opened;
        l.connections_per_s += p.connections_per_s;
        l.closed += p.closed;
        l.closed_local_first += p.closed_local_first;
        l.closed_peer_first += p.closed_peer_first;
        l.resets += p.resets;
        l.requests += p.requests;
        l.lifetime_ms_sum += p.mean_lifetime_ms.unwrap_or(0.0) * p.closed as f64;
    }
    // Stable: equal counts keep the lifecycle's (total) order.
    lines.sort_by_key(|l| std::cmp::Reverse(l.opened));
    lines
}

/// Which end holds a service's TIME_WAIT sockets, in words.
fn held_by(holder: Holder) -> &'static str {
    match holder {
        Holder::Client => "held by clients",
        Holder::Server => "held by the server (it closes first)",
        Holder::Unknown => "holder unknown",
    }
}

/// The sysctls in words.
fn describe_sysctls(sys: &Sysctls) -> String {
    let reuse = match sys.tcp_tw_reuse {
        Some(0) => "0 (off)".to_string(),
        Some(1) => "1 (on)".to_string(),
        Some(2) => "2 (loopback only)".to_string(),
        Some(n) => n.to_string(),
        None => "unknown".to_string(),
    };
    let range = match (sys.port_range, sys.range_size()) {
        (Some((lo, hi)), Some(n)) => format!("{lo}-{hi} ({n} ports)"),
        _ => "unknown".to_string(),
    };
    format!("tcp_tw_reuse={reuse}  ip_local_port_range={range}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(pid: u32, comm: &str, endpoint: &str) -> PeerReport {
        PeerReport {
            pid,
            comm: comm.into(),
            role: Role::Client,
            endpoint: endpoint.into(),
            opened: 2,
            closed: 2,
            closed_local_first: 2,
            closed_peer_first: 0,
            resets: 0,
            mean_lifetime_ms: Some(1.0),
            max_lifetime_ms: Some(1.5),
            requests: 2,
            requests_per_connection: Some(1.0),
            connections_per_s: 0.5,
        }
    }

    #[test]
    fn short_lived_clients_make_one_connection_line_by_name() {
        let tw = TimeWaitReport {
            peers: vec![
                peer(3905, "curl", "127.0.0.1:8080"),
                peer(3907, "curl", "127.0.0.1:8080"),
                peer(3911, "curl", "127.0.0.1:8080"),
                peer(77, "python3", "127.0.0.1:8080"),
            ],
            ..TimeWaitReport::default()
        };
        let text = render(&tw);
        assert!(
            text.contains(
                "    curl (3 processes) -> 127.0.0.1:8080: 6 opened (1.5/s), 6 closed (6/0/0), 1.00 req/conn, 1.0 ms"
            ),
            "{text}"
        );
        assert!(
            text.contains("    python3[77] -> 127.0.0.1:8080: 2 opened"),
            "{text}"
        );
        assert!(!text.contains("curl[3905]"), "{text}");
    }
}
