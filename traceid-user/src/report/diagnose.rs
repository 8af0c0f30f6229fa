//! The diagnosis: what an operator reads after watching a host for a while.
//!
//! Aggregates request records per service (process and listening port) and per client
//! process, per hop (client process -> server), plus malformed reasons and link confidence.
//! Every map is bounded: beyond `MAX_KEYS` distinct keys, new ones are folded into `other`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use crate::record::{Confidence, Direction, Finding, Record, RequestRecord};

const MAX_KEYS: usize = 500;

/// One request as an example: enough to find it, nothing secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Example {
    pub method: String,
    pub path: String,
    pub pid: u32,
    pub comm: String,
    pub local: Option<String>,
    pub peer: Option<String>,
    pub trace_id: Option<String>,
    pub reason: Option<String>,
}

impl Example {
    fn of(r: &RequestRecord) -> Example {
        Example {
            method: r.method.clone(),
            path: r.path.clone(),
            pid: r.pid,
            comm: r.comm.clone(),
            local: r.local.clone(),
            peer: r.peer.clone(),
            trace_id: r.trace_id.clone(),
            reason: r.reason.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Counted {
    pub count: u64,
    pub example: Option<Example>,
}

impl Counted {
    fn add(&mut self, r: &RequestRecord) {
        self.count += 1;
        if self.example.is_none() {
            self.example = Some(Example::of(r));
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Group {
    /// Process name.
    pub comm: String,
    /// Listening port (services) or None (clients).
    pub port: Option<u16>,
    pub pids: Vec<u32>,
    pub requests: u64,
    pub with_trace: u64,
    pub formats: BTreeMap<String, u64>,
    pub findings: BTreeMap<Finding, Counted>,
}

impl Group {
    fn add(&mut self, r: &RequestRecord) {
        self.requests += 1;
        if self.pids.len() < 16 && !self.pids.contains(&r.pid) {
            self.pids.push(r.pid);
        }
        if let Some(f) = r.trace_format {
            self.with_trace += 1;
            *self.formats.entry(f.as_str().to_string()).or_default() += 1;
        }
        for f in &r.findings {
            self.findings.entry(*f).or_default().add(r);
        }
    }
}

/// A client process calling one server endpoint while serving inbound requests.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Hop {
    pub client: String,
    /// The server's address as the client dialled it.
    pub server_addr: String,
    /// The server's process name when this host serves that address, else None.
    pub server: Option<String>,
    pub requests: u64,
    pub outcomes: BTreeMap<Finding, Counted>,
}

impl Hop {
    /// Requests on this hop that lose the trace (dropped or restarted).
    pub fn broken(&self) -> u64 {
        [Finding::Dropped, Finding::Restarted]
            .iter()
            .filter_map(|f| self.outcomes.get(f))
            .map(|c| c.count)
            .sum()
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Diagnosis {
    pub duration_s: f64,
    pub requests: u64,
    pub inbound: u64,
    pub outbound: u64,
    pub services: Vec<Group>,
    pub clients: Vec<Group>,
    pub hops: Vec<Hop>,
    pub malformed: BTreeMap<String, Counted>,
    pub links: BTreeMap<String, u64>,
    pub lost: BTreeMap<String, u64>,
    /// Extra sections appended by other parts of the agent (TIME_WAIT census).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Connection lifecycle and TIME_WAIT census of a live run (None for replays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_wait: Option<crate::lifecycle::TimeWaitReport>,
}

#[derive(Default)]
pub struct Aggregator {
    services: HashMap<(String, Option<u16>), Group>,
    clients: HashMap<String, Group>,
    hops: HashMap<(String, String), Hop>,
    /// Listening address -> process name, learned from inbound requests.
    servers: HashMap<String, String>,
    /// Listening port -> process name (for peers seen through another address).
    server_ports: HashMap<u16, String>,
    malformed: BTreeMap<String, Counted>,
    links: BTreeMap<String, u64>,
    lost: BTreeMap<String, u64>,
    requests: u64,
    inbound: u64,
    outbound: u64,
}

fn bounded_key<K: std::hash::Hash + Eq, V>(map: &HashMap<K, V>, key: K, other: K) -> K {
    if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        other
    } else {
        key
    }
}

impl Aggregator {
    pub fn add(&mut self, rec: &Record) {
        match rec {
            Record::Request(r) => self.add_request(r),
            Record::Lost(l) => *self.lost.entry(l.stage.clone()).or_default() += l.count,
            // Buildups reach the diagnosis through `Diagnosis::time_wait` (the live run's report).
            Record::Buildup(_) => {}
        }
    }

    pub fn add_lost(&mut self, stage: &str, count: u64) {
        if count > 0 {
            *self.lost.entry(stage.to_string()).or_default() += count;
        }
    }

    fn add_request(&mut self, r: &RequestRecord) {
        self.requests += 1;
        match r.direction {
            Direction::Inbound => {
                self.inbound += 1;
                let key = bounded_key(
                    &self.services,
                    (r.comm.clone(), r.local_port),
                    ("other".to_string(), None),
                );
                let g = self.services.entry(key.clone()).or_insert_with(|| Group {
                    comm: key.0.clone(),
                    port: key.1,
                    ..Group::default()
                });
                g.add(r);
                if let Some(local) = &r.local {
                    if self.servers.len() < MAX_KEYS * 4 {
                        self.servers.insert(local.clone(), r.comm.clone());
                    }
                }
                if let Some(p) = r.local_port {
                    if self.server_ports.len() < MAX_KEYS * 4 {
                        self.server_ports.insert(p, r.comm.clone());
                    }
                }
            }
            Direction::Outbound => {
                self.outbound += 1;
                let key = bounded_key(&self.clients, r.comm.clone(), "other".to_string());
                let g = self.clients.entry(key.clone()).or_insert_with(|| Group {
                    comm: key,
                    ..Group::default()
                });
                g.add(r);
                let addr = r.peer.clone().unwrap_or_else(|| "?".to_string());
                let key = bounded_key(
                    &self.hops,
                    (r.comm.clone(), addr),
                    ("other".to_string(), "other".to_string()),
                );
                let hop = self.hops.entry(key.clone()).or_insert_with(|| Hop {
                    client: key.0.clone(),
                    server_addr: key.1.clone(),
                    ..Hop::default()
                });
                hop.requests += 1;
                for f in &r.findings {
                    if matches!(
                        f,
                        Finding::Dropped
                            | Finding::Restarted
                            | Finding::Propagated
                            | Finding::Started
                            | Finding::Unlinked
                    ) {
                        hop.outcomes.entry(*f).or_default().add(r);
                    }
                }
                let link = match r.inbound.as_ref().map(|l| l.confidence) {
                    Some(Confidence::Certain) => "certain",
                    Some(Confidence::Strong) => "strong",
                    Some(Confidence::Weak) => "weak",
                    // A process that never served a request starts its chains: nothing to link.
                    None if r.has(Finding::Unlinked) => "unlinked",
                    None => "chain_start",
                };
                *self.links.entry(link.to_string()).or_default() += 1;
            }
        }
        if let Some(reason) = &r.reason {
            if r.has(Finding::Malformed) {
                for part in reason.split("; ") {
                    if self.malformed.len() < MAX_KEYS || self.malformed.contains_key(part) {
                        self.malformed.entry(part.to_string()).or_default().add(r);
                    }
                }
            }
        }
    }

    pub fn diagnosis(&self, duration_s: f64) -> Diagnosis {
        let mut services: Vec<Group> = self.services.values().cloned().collect();
        // Total orders (ties broken by name, port, address), so a diagnosis does not depend on
        // hash order: a replay prints exactly what the live run printed.
        services.sort_by(|a, b| (b.requests, &a.comm, a.port).cmp(&(a.requests, &b.comm, b.port)));
        let mut clients: Vec<Group> = self.clients.values().cloned().collect();
        clients.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.comm.cmp(&b.comm)));
        let mut hops: Vec<Hop> = self
            .hops
            .values()
            .cloned()
            .map(|mut h| {
                h.server = self.servers.get(&h.server_addr).cloned().or_else(|| {
                    h.server_addr
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .and_then(|p| self.server_ports.get(&p).cloned())
                });
                h
            })
            .collect();
        hops.sort_by(|a, b| {
            (b.broken(), b.requests, &a.client, &a.server_addr).cmp(&(
                a.broken(),
                a.requests,
                &b.client,
                &b.server_addr,
            ))
        });
        Diagnosis {
            duration_s,
            requests: self.requests,
            inbound: self.inbound,
            outbound: self.outbound,
            services,
            clients,
            hops,
            malformed: self.malformed.clone(),
            links: self.links.clone(),
            lost: self.lost.clone(),
            notes: Vec::new(),
            time_wait: None,
        }
    }
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.0}%", n as f64 * 100.0 / d as f64)
    }
}

fn example_text(e: &Example) -> String {
    format!("{} {}", e.method, e.path)
}

fn render_group(s: &mut String, g: &Group, is_service: bool) {
    let name = match (is_service, g.port) {
        (true, Some(p)) => format!("{} :{p}", g.comm),
        _ => g.comm.clone(),
    };
    let pids: Vec<String> = g.pids.iter().map(u32::to_string).collect();
    let formats: Vec<String> = g
        .formats
        .iter()
        .map(|(f, n)| format!("{f} {}", pct(*n, g.requests)))
        .collect();
    let _ = writeln!(
        s,
        "  {name:<28} pid {:<12} {:>6} requests  {:>4} with trace id{}",
        pids.join(","),
        g.requests,
        pct(g.with_trace, g.requests),
        if formats.is_empty() {
            String::new()
        } else {
            format!(" ({})", formats.join(", "))
        }
    );
    for (f, c) in &g.findings {
        if *f == Finding::Propagated {
            continue;
        }
        let ex = c.example.as_ref().map(example_text).unwrap_or_default();
        let _ = writeln!(s, "      {:<12} {:>6}  e.g. {ex}", f.as_str(), c.count);
    }
}

/// The report as text.
pub fn render(d: &Diagnosis) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "traceid diagnosis: {:.1} s observed, {} HTTP requests ({} inbound, {} outbound)",
        d.duration_s, d.requests, d.inbound, d.outbound
    );
    if d.requests == 0 {
        let _ = writeln!(
            s,
            "\nNo HTTP/1.x requests were seen. Plaintext HTTP on any TCP port and HTTPS through \
             OpenSSL are watched; HTTP/2, gRPC and other TLS libraries are not decoded yet."
        );
    }
    if !d.services.is_empty() {
        let _ = writeln!(
            s,
            "\nSERVICES (inbound requests, by process and listening port)"
        );
        for g in &d.services {
            render_group(&mut s, g, true);
        }
    }
    if !d.clients.is_empty() {
        let _ = writeln!(s, "\nCLIENTS (outbound requests, by process)");
        for g in &d.clients {
            render_group(&mut s, g, false);
        }
    }
    let broken: Vec<&Hop> = d.hops.iter().filter(|h| h.broken() > 0).collect();
    let _ = writeln!(
        s,
        "\nBROKEN HOPS (outbound calls that lose the trace id of the request they serve)"
    );
    if broken.is_empty() {
        let _ = writeln!(s, "  none seen");
    }
    for h in broken {
        let server = match &h.server {
            Some(name) => format!("{name} ({})", h.server_addr),
            None => h.server_addr.clone(),
        };
        for f in [Finding::Dropped, Finding::Restarted] {
            if let Some(c) = h.outcomes.get(&f) {
                let ex = c.example.as_ref().map(example_text).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {} -> {}: {} {} of {}, e.g. {ex}",
                    h.client,
                    server,
                    f.as_str(),
                    c.count,
                    h.requests
                );
            }
        }
    }
    let healthy: Vec<&Hop> = d
        .hops
        .iter()
        .filter(|h| h.broken() == 0 && h.outcomes.contains_key(&Finding::Propagated))
        .collect();
    if !healthy.is_empty() {
        let _ = writeln!(s, "\nHEALTHY HOPS");
        for h in healthy {
            let n = h.outcomes.get(&Finding::Propagated).map_or(0, |c| c.count);
            let server = h.server.clone().unwrap_or_else(|| h.server_addr.clone());
            let _ = writeln!(
                s,
                "  {} -> {}: propagated {} of {}",
                h.client, server, n, h.requests
            );
        }
    }
    if !d.malformed.is_empty() {
        let _ = writeln!(s, "\nMALFORMED TRACE IDS");
        for (reason, c) in &d.malformed {
            let ex = c
                .example
                .as_ref()
                .map(|e| format!("{} from {}[{}]", example_text(e), e.comm, e.pid))
                .unwrap_or_default();
            let _ = writeln!(s, "  {reason}: {} (e.g. {ex})", c.count);
        }
    }
    if !d.links.is_empty() {
        let parts: Vec<String> = d.links.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "\nLINKING of outbound to inbound requests: {}",
            parts.join(", ")
        );
    }
    let lost: Vec<String> = d
        .lost
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "\nLOST EVENTS: {}",
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join(", ")
        }
    );
    if let Some(tw) = &d.time_wait {
        let _ = write!(s, "\n{}", super::time_wait::render(tw));
    }
    for n in &d.notes {
        let _ = writeln!(s, "\n{n}");
    }
    s
}
