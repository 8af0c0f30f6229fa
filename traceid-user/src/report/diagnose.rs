//! The diagnosis: what an operator reads after watching a host for a while.
//!
//! Aggregates request records per service (workload, or process, and listening port) and per
//! client (workload or process name), per hop (calling service -> called service), plus
//! malformed reasons and link confidence. Both ends of a hop are named as services: the caller
//! by its workload, or by its process name and the port it serves on; the callee by the
//! service this host saw answering on that address. Short-lived clients are counted by name,
//! not per pid. Every map is bounded: beyond `MAX_KEYS` distinct keys, new ones are folded
//! into `other`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::mem::FastMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::record::{Direction, Evidence, Finding, Record, RequestRecord, WorkloadKind};

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
            method: r.method.to_string(),
            path: r.path.to_string(),
            pid: r.pid,
            comm: r.comm.to_string(),
            local: r.local.as_deref().map(str::to_string),
            peer: r.peer.as_deref().map(str::to_string),
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
    /// Process name (the first one seen when the group is a workload's).
    pub comm: String,
    /// Listening port (services) or None (clients).
    pub port: Option<u16>,
    /// Kubernetes namespace of the group's pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The workload the group's pods belong to (derived from their names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<WorkloadKind>,
    /// Pod names seen (at most 16).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    pub pids: Vec<u32>,
    pub requests: u64,
    pub with_trace: u64,
    pub formats: BTreeMap<String, u64>,
    pub findings: BTreeMap<Finding, Counted>,
}

impl Group {
    fn new(comm: &str, port: Option<u16>, r: &RequestRecord) -> Group {
        let id = r.identity.as_deref();
        let workload = id.and_then(|i| i.workload.as_ref());
        Group {
            comm: comm.to_string(),
            port,
            namespace: id.and_then(|i| i.namespace.clone()),
            workload: workload.map(|w| w.name.clone()),
            workload_kind: workload.map(|w| w.kind),
            ..Group::default()
        }
    }

    /// How the report names the group: `namespace/workload`, `namespace/pod` for a pod of
    /// no known workload (such a group is that one pod's), or the process name; services add
    /// their listening port.
    pub fn name(&self) -> String {
        let who = match (
            &self.namespace,
            self.workload.as_ref().or(self.pods.first()),
        ) {
            (Some(ns), Some(w)) => format!("{ns}/{w}"),
            (None, Some(w)) => w.clone(),
            (_, None) => self.comm.clone(),
        };
        match self.port {
            Some(p) => format!("{who} :{p}"),
            None => who,
        }
    }

    fn add(&mut self, r: &RequestRecord) {
        self.requests += 1;
        if self.pids.len() < 16 && !self.pids.contains(&r.pid) {
            self.pids.push(r.pid);
        }
        let pod = r
            .identity
            .as_ref()
            .and_then(|i| i.pod.as_ref()?.name.as_ref());
        if let Some(pod) = pod.filter(|p| self.pods.len() < 16 && !self.pods.contains(p)) {
            self.pods.push(pod.clone());
        }
        if let Some(f) = r.trace_format {
            self.with_trace += 1;
            match self.formats.get_mut(f.as_str()) {
                Some(n) => *n += 1,
                None => {
                    self.formats.insert(f.as_str().to_string(), 1);
                }
            }
        }
        for f in &r.findings {
            self.findings.entry(*f).or_default().add(r);
        }
    }
}

/// One calling service (or client) calling one server endpoint.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Hop {
    /// The calling process's name.
    pub client: String,
    /// The calling service: `namespace/workload`, or its process name and the port it
    /// serves on (`python3 :8001`), or the process name alone for a client that serves
    /// nothing (all its processes together).
    pub caller: String,
    /// The server's address as the client dialled it.
    pub server_addr: String,
    /// The server's process name when this host serves that address, else None.
    pub server: Option<String>,
    /// The called service, named like `caller`, when this host serves that address.
    pub callee: Option<String>,
    pub requests: u64,
    pub outcomes: BTreeMap<Finding, Counted>,
}

impl Hop {
    /// Adds another hop between the same two services (another process of the caller).
    fn merge(&mut self, other: &Hop) {
        self.requests += other.requests;
        for (f, c) in &other.outcomes {
            let mine = self.outcomes.entry(*f).or_default();
            mine.count += c.count;
            if mine.example.is_none() {
                mine.example.clone_from(&c.example);
            }
        }
    }

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

/// Who makes an outbound call, as the hop is keyed until the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Caller {
    /// A process of a workload (or pod): named by it, whatever its pid.
    Owner(Arc<str>),
    /// A process that serves requests: named by its service, which its inbound requests tell
    /// (they usually complete after the calls they make).
    Server {
        pid: u32,
        comm: Arc<str>,
    },
    /// A process that only calls: its name, all its processes together.
    Client(Arc<str>),
    Other,
}

/// A server as the hops name it: process name and service name.
#[derive(Debug, Clone)]
struct Served {
    comm: Arc<str>,
    service: String,
}

#[derive(Default)]
pub struct Aggregator {
    // Keyed by shared names (`Arc<str>`, as records carry them) on the fast hasher: a request
    // that adds to known groups allocates nothing.
    services: FastMap<(Arc<str>, Option<u16>), Group>,
    clients: FastMap<Arc<str>, Group>,
    hops: FastMap<(Caller, Arc<str>), Hop>,
    /// Listening address -> server, learned from inbound requests.
    servers: FastMap<Arc<str>, Served>,
    /// Listening port -> server (for peers seen through another address).
    server_ports: FastMap<u16, Served>,
    /// Serving pid -> its service name (for callers without a workload).
    server_pids: FastMap<u32, String>,
    malformed: BTreeMap<String, Counted>,
    links: BTreeMap<String, u64>,
    lost: BTreeMap<String, u64>,
    requests: u64,
    inbound: u64,
    outbound: u64,
}

/// `namespace/workload` or `namespace/pod` of a request's process, when it is in a pod.
fn owner(r: &RequestRecord) -> Option<Arc<str>> {
    let id = r.identity.as_deref()?;
    let name = match (&id.workload, &id.pod) {
        (Some(w), _) => &w.name,
        (None, Some(p)) => p.name.as_ref()?,
        (None, None) => return None,
    };
    Some(match &id.namespace {
        Some(ns) => format!("{ns}/{name}").into(),
        None => name.as_str().into(),
    })
}

/// The key every group, client or hop past `MAX_KEYS` is folded into.
fn other() -> Arc<str> {
    Arc::from("other")
}

fn bounded_key<K: std::hash::Hash + Eq, V>(map: &FastMap<K, V>, key: K, other: K) -> K {
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
                let who = owner(r).unwrap_or_else(|| Arc::clone(&r.comm));
                let key = bounded_key(&self.services, (who, r.local_port), (other(), None));
                let g = match self.services.get_mut(&key) {
                    Some(g) => g,
                    None => self
                        .services
                        .entry(key.clone())
                        .or_insert_with(|| match &*key.0 {
                            "other" if key.1.is_none() => Group {
                                comm: "other".into(),
                                ..Group::default()
                            },
                            _ => Group::new(&r.comm, key.1, r),
                        }),
                };
                g.add(r);
                // Who serves here, for the hops that call it; the latest server of an address
                // or port names it. Built only when an entry is new or its server changed.
                let served = || Served {
                    comm: Arc::clone(&r.comm),
                    service: owner(r).map_or_else(|| g.name(), |o| o.to_string()),
                };
                let fresh = |s: &Served| *s.comm == *r.comm;
                if self.server_pids.len() < MAX_KEYS * 4 && !self.server_pids.contains_key(&r.pid) {
                    self.server_pids.insert(r.pid, served().service);
                }
                if let Some(local) = &r.local {
                    let room = self.servers.len() < MAX_KEYS * 4;
                    match self.servers.get_mut(local) {
                        Some(s) if fresh(s) => {}
                        Some(s) => *s = served(),
                        None if room => {
                            self.servers.insert(Arc::clone(local), served());
                        }
                        None => {}
                    }
                }
                if let Some(p) = r.local_port {
                    let room = self.server_ports.len() < MAX_KEYS * 4;
                    match self.server_ports.get_mut(&p) {
                        Some(s) if fresh(s) => {}
                        Some(s) => *s = served(),
                        None if room => {
                            self.server_ports.insert(p, served());
                        }
                        None => {}
                    }
                }
            }
            Direction::Outbound => {
                self.outbound += 1;
                let owner = owner(r);
                let who = owner.clone().unwrap_or_else(|| Arc::clone(&r.comm));
                let key = bounded_key(&self.clients, who, other());
                let g = match self.clients.get_mut(&key) {
                    Some(g) => g,
                    None => self
                        .clients
                        .entry(key.clone())
                        .or_insert_with(|| match &*key {
                            "other" => Group {
                                comm: "other".into(),
                                ..Group::default()
                            },
                            _ => Group::new(&r.comm, None, r),
                        }),
                };
                g.add(r);
                // A process that serves (its call is linked, or the linker knows it serves and
                // could not link the call) is named by its service, one that only calls by its
                // name: `curl[3905]`, `curl[3907]`, ... make one hop.
                let caller = match owner {
                    Some(o) => Caller::Owner(o),
                    None if r.inbound.is_some() || r.has(Finding::Unlinked) => Caller::Server {
                        pid: r.pid,
                        comm: Arc::clone(&r.comm),
                    },
                    None => Caller::Client(Arc::clone(&r.comm)),
                };
                let addr = r.peer.clone().unwrap_or_else(|| "?".into());
                let key = bounded_key(&self.hops, (caller, addr), (Caller::Other, other()));
                let hop = match self.hops.get_mut(&key) {
                    Some(hop) => hop,
                    None => self.hops.entry(key.clone()).or_insert_with(|| Hop {
                        client: match key.0 {
                            Caller::Other => "other".to_string(),
                            _ => r.comm.to_string(),
                        },
                        server_addr: key.1.to_string(),
                        ..Hop::default()
                    }),
                };
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
                let link = match r.inbound.as_ref() {
                    Some(l) => match l.evidence {
                        // Both certain: the report says which of the two exact rules linked it.
                        Evidence::Goroutine => "certain_goroutine",
                        _ => l.confidence.as_str(),
                    },
                    // A process that never served a request starts its chains: nothing to link.
                    None if r.has(Finding::Unlinked) => "unlinked",
                    None => "chain_start",
                };
                match self.links.get_mut(link) {
                    Some(n) => *n += 1,
                    None => {
                        self.links.insert(link.to_string(), 1);
                    }
                }
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
        services.sort_by_cached_key(|g| (std::cmp::Reverse(g.requests), g.name(), g.port));
        let mut clients: Vec<Group> = self.clients.values().cloned().collect();
        clients.sort_by_cached_key(|g| (std::cmp::Reverse(g.requests), g.name()));
        // Hops of several processes of one service become one.
        let mut merged: HashMap<(String, String), Hop> = HashMap::new();
        for ((caller, addr), hop) in &self.hops {
            let caller = match caller {
                Caller::Owner(name) | Caller::Client(name) => name.to_string(),
                Caller::Server { pid, comm } => self
                    .server_pids
                    .get(pid)
                    .cloned()
                    .unwrap_or_else(|| format!("{comm}[{pid}]")),
                Caller::Other => "other".to_string(),
            };
            match merged.entry((caller.clone(), addr.to_string())) {
                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().merge(hop),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let served = self.servers.get(addr).or_else(|| {
                        addr.rsplit_once(':')
                            .and_then(|(_, p)| p.parse::<u16>().ok())
                            .and_then(|p| self.server_ports.get(&p))
                    });
                    e.insert(Hop {
                        caller,
                        server: served.map(|s| s.comm.to_string()),
                        callee: served.map(|s| s.service.clone()),
                        ..hop.clone()
                    });
                }
            }
        }
        let mut hops: Vec<Hop> = merged.into_values().collect();
        hops.sort_by(|a, b| {
            (b.broken(), b.requests, &a.caller, &a.server_addr).cmp(&(
                a.broken(),
                a.requests,
                &b.caller,
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

fn render_group(s: &mut String, g: &Group) {
    let name = g.name();
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
            "\nNo HTTP requests were seen. HTTP/1.x, HTTP/2 and gRPC on any TCP port, plaintext \
             or through OpenSSL, are watched; other TLS libraries (Go's crypto/tls, BoringSSL, \
             Java, rustls) are not decoded yet."
        );
    }
    if !d.services.is_empty() {
        let _ = writeln!(
            s,
            "\nSERVICES (inbound requests, by workload or process, and listening port)"
        );
        for g in &d.services {
            render_group(&mut s, g);
        }
    }
    if !d.clients.is_empty() {
        let _ = writeln!(
            s,
            "\nCLIENTS (outbound requests, by workload or process name)"
        );
        for g in &d.clients {
            render_group(&mut s, g);
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
        let server = match &h.callee {
            Some(name) => format!("{name} ({})", h.server_addr),
            None => h.server_addr.clone(),
        };
        for f in [Finding::Dropped, Finding::Restarted] {
            if let Some(c) = h.outcomes.get(&f) {
                let ex = c.example.as_ref().map(example_text).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {} -> {}: {} {} of {}, e.g. {ex}",
                    h.caller,
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
            let server = h.callee.clone().unwrap_or_else(|| h.server_addr.clone());
            let _ = writeln!(
                s,
                "  {} -> {}: propagated {} of {}",
                h.caller, server, n, h.requests
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{Confidence, ConnKey, Identity, InboundRef, Pod, Workload};

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn request(
        direction: Direction,
        pid: u32,
        comm: &str,
        local: &str,
        peer: &str,
    ) -> RequestRecord {
        RequestRecord {
            event: "request",
            ts: "".into(),
            direction,
            pid,
            tid: pid,
            comm: comm.into(),
            local: Some(local.into()),
            peer: Some(peer.into()),
            tls: false,
            protocol: crate::record::Protocol::Http1,
            stream_id: None,
            headers_known: crate::record::HeadersKnown::Exact,
            method: "GET".into(),
            path: "/charge".into(),
            status: Some(200),
            grpc_status: None,
            duration_ms: Some(1.0),
            trace_id: Some(TRACE.into()),
            trace_format: Some(crate::tracectx::TraceFormat::W3c),
            findings: Default::default(),
            reason: None,
            inbound: None,
            identity: None,
            header: None,
            local_port: local.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
            ts_ns: 0,
            conn: ConnKey {
                pid,
                fd: 3,
                conn_ts_ns: 0,
            },
        }
    }

    fn serving(direction: Direction, pid: u32, comm: &str, local: &str, peer: &str) -> Record {
        Record::Request(Box::new(request(direction, pid, comm, local, peer)))
    }

    /// An outbound call made while serving a request with a trace id, without one: dropped.
    fn dropped_call(pid: u32, comm: &str, local: &str, server: &str) -> Record {
        let mut q = request(Direction::Outbound, pid, comm, local, server);
        q.trace_id = None;
        q.trace_format = None;
        q.findings = vec![Finding::Missing, Finding::Dropped].into();
        q.inbound = Some(InboundRef {
            trace_id: Some(TRACE.into()),
            method: "GET".into(),
            path: "/pay".into(),
            confidence: Confidence::Strong,
            evidence: Evidence::Thread,
        });
        Record::Request(Box::new(q))
    }

    fn in_pod(r: Record, ns: &str, pod: &str, workload: &str) -> Record {
        let Record::Request(mut q) = r else {
            unreachable!()
        };
        q.identity = Some(Arc::new(Identity {
            container: None,
            pod: Some(Pod {
                name: Some(pod.into()),
                uid: format!("uid-{pod}"),
            }),
            namespace: Some(ns.into()),
            workload: Some(Workload {
                kind: WorkloadKind::Deployment,
                name: workload.into(),
                derived: true,
            }),
        }));
        Record::Request(q)
    }

    #[test]
    fn both_ends_of_a_hop_are_services_even_with_one_process_name() {
        // Two python3 services: front (:18101) calls middle (:18102), middle calls back
        // (:18103) and drops the trace id. Calls complete before the requests they serve.
        let mut agg = Aggregator::default();
        for _ in 0..3 {
            agg.add(&dropped_call(
                200,
                "python3",
                "127.0.0.1:50000",
                "127.0.0.1:18103",
            ));
            agg.add(&serving(
                Direction::Inbound,
                300,
                "python3",
                "127.0.0.1:18103",
                "127.0.0.1:50000",
            ));
            agg.add(&serving(
                Direction::Inbound,
                200,
                "python3",
                "127.0.0.1:18102",
                "127.0.0.1:50001",
            ));
            agg.add(&serving(
                Direction::Inbound,
                100,
                "python3",
                "127.0.0.1:18101",
                "127.0.0.1:50002",
            ));
        }
        let text = render(&agg.diagnosis(1.0));
        assert!(
            text.contains(
                "  python3 :18102 -> python3 :18103 (127.0.0.1:18103): dropped 3 of 3, e.g. GET /charge"
            ),
            "{text}"
        );
    }

    #[test]
    fn workloads_group_services_and_name_broken_hops() {
        let mut agg = Aggregator::default();
        // Two replicas of frontend call checkout and drop the trace id.
        for (pid, pod) in [
            (10, "frontend-7d9f8b6c5d-x2x4k"),
            (11, "frontend-7d9f8b6c5d-q8z5t"),
        ] {
            agg.add(&in_pod(
                dropped_call(pid, "node", "127.0.0.1:50000", "127.0.0.1:9090"),
                "shop",
                pod,
                "frontend",
            ));
            agg.add(&in_pod(
                serving(
                    Direction::Inbound,
                    pid,
                    "node",
                    "127.0.0.1:8080",
                    "127.0.0.1:1",
                ),
                "shop",
                pod,
                "frontend",
            ));
        }
        agg.add(&in_pod(
            serving(
                Direction::Inbound,
                20,
                "java",
                "127.0.0.1:9090",
                "127.0.0.1:50000",
            ),
            "shop",
            "checkout-6c9b8d4f5-ln7xb",
            "checkout",
        ));
        let d = agg.diagnosis(1.0);
        let text = render(&d);
        assert!(
            text.contains("  shop/frontend -> shop/checkout (127.0.0.1:9090): dropped 2 of 2"),
            "{text}"
        );
        let front = d
            .services
            .iter()
            .find(|g| g.workload.as_deref() == Some("frontend"))
            .expect("frontend service");
        assert_eq!(front.requests, 2);
        assert_eq!(front.pods.len(), 2);
        assert_eq!(front.namespace.as_deref(), Some("shop"));
        assert!(text.contains("  shop/frontend :8080 "), "{text}");
        // The JSON keeps the process names of both ends, as before.
        let hop = &d.hops[0];
        assert_eq!(
            (hop.client.as_str(), hop.server.as_deref()),
            ("node", Some("java"))
        );
    }

    #[test]
    fn short_lived_clients_are_one_hop_and_one_client_by_name() {
        let mut agg = Aggregator::default();
        for pid in [3905, 3907, 3911] {
            agg.add(&serving(
                Direction::Outbound,
                pid,
                "curl",
                "127.0.0.1:50000",
                "127.0.0.1:8080",
            ));
        }
        agg.add(&serving(
            Direction::Inbound,
            50,
            "nginx",
            "127.0.0.1:8080",
            "127.0.0.1:50000",
        ));
        let d = agg.diagnosis(1.0);
        assert_eq!(d.hops.len(), 1, "{:?}", d.hops);
        assert_eq!(d.hops[0].caller, "curl");
        assert_eq!(d.hops[0].requests, 3);
        assert_eq!(d.hops[0].callee.as_deref(), Some("nginx :8080"));
        assert_eq!(d.clients.len(), 1);
        assert_eq!(d.clients[0].pids, [3905, 3907, 3911]);
    }
}
