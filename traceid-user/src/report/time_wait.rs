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
    let clients: Vec<&PeerReport> = tw
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
