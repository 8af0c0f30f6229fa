//! The pure engine: decoded events in, request records and findings out.
//!
//! It holds no eBPF and decodes nothing: the [`crate::pipeline`] hands it each event once,
//! for live runs and replays alike. Per connection it keeps two streams (the plain bytes, and
//! the TLS plaintext from the OpenSSL probes), each with the protocol sniffed from its first
//! bytes ([`crate::protocol`]); the protocol's messages become request records with their
//! trace context, links and findings. Everything it keeps is bounded (connections, requests in
//! flight, head buffers).

pub mod link;
mod peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::event::{self, Event, Role};
use crate::mem::{self, Endpoint};
use crate::protocol::{
    self, Chunk, Flow, HeadersKnown, Limits, Message, Parser, Protocol, ProtocolParser,
    RequestHead, ResponseHead,
};
use crate::record::{
    endpoint_string, ConnKey, Direction, Finding, Findings, InboundRef, Record, RequestRecord,
    Timestamp,
};
use crate::tracectx::{self, Extraction, HeaderNames, TraceContext};

use link::{Inflight, Linker};
use peer::PeerHeads;

/// Which processes and ports to report (empty = all).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
}

impl Filter {
    fn admits(
        &self,
        pid: u32,
        comm: &str,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && (self.ports.is_empty()
                || [local, peer]
                    .iter()
                    .flatten()
                    .any(|a| self.ports.contains(&a.port())))
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub names: HeaderNames,
    pub limits: Limits,
    /// Connections followed at once; the least recently active are dropped beyond it.
    pub max_conns: usize,
    pub filter: Filter,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC in ns, to stamp records with wall-clock time.
    pub realtime_offset_ns: i128,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            names: HeaderNames::new(&[]),
            limits: Limits::default(),
            max_conns: mem::MAX_CONNS,
            filter: Filter::default(),
            realtime_offset_ns: 0,
        }
    }
}

/// One byte stream of a connection and the protocol that frames it.
#[derive(Debug)]
enum StreamState {
    /// No bytes seen yet: the protocol is sniffed from the first ones.
    Unsniffed,
    Parsing(Parser),
    /// Nothing more to parse: the filter excludes the connection, the protocol is recognised
    /// but not decoded, or its parser ended.
    Off,
}

/// Index of the plain stream in `Conn::streams`; the TLS plaintext is at 1.
const PLAIN: usize = 0;
const TLS: usize = 1;

struct Conn {
    role: Role,
    local: Option<Endpoint>,
    peer: Option<Endpoint>,
    comm: Arc<str>,
    /// The syscalls' bytes and, for a TLS connection, the plaintext of the OpenSSL probes:
    /// parsed apart, each with its own protocol.
    streams: [StreamState; 2],
    last_ns: u64,
    /// Allocated at the connection's first request: most of the connections followed at
    /// once are idle, and this is half of what a connection would take.
    requests: Option<Box<ConnRequests>>,
}

/// What a connection keeps for its requests.
#[derive(Default)]
struct ConnRequests {
    /// `local` and `peer` as records show them, formatted at the connection's first record.
    shown: Option<Shown>,
    /// Outbound requests' links, decided when each request started (by request number).
    links: Vec<(u64, Option<link::Link>)>,
    /// The trace context of requests in flight, read once when each started (by number).
    contexts: Vec<(u64, Extraction)>,
}

/// A connection's endpoints as text: (local, peer).
type Shown = (Option<Arc<str>>, Option<Arc<str>>);

/// Appends `item` to a connection's per-request list, dropping the oldest entry when `max`
/// (at least one) are already kept.
fn push_bounded<T>(v: &mut Vec<T>, item: T, max: usize) {
    if v.len() >= max.max(1) {
        v.remove(0);
    }
    v.push(item);
}

impl Conn {
    fn requests(&mut self) -> &mut ConnRequests {
        self.requests.get_or_insert_default()
    }

    /// The endpoints as records show them, formatted once per connection.
    fn shown(&mut self) -> &Shown {
        let (local, peer) = (self.local, self.peer);
        self.requests().shown.get_or_insert_with(|| {
            let text = |e: Option<Endpoint>| e.map(|e| Arc::from(endpoint_string(e.addr())));
            (text(local), text(peer))
        })
    }
}

/// Counters of everything the engine dropped or could not make sense of.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub conns_evicted: u64,
    /// Parser anomalies by name, plus `<protocol>_not_decoded` for recognised streams of a
    /// protocol the engine does not decode.
    pub anomalies: HashMap<&'static str, u64>,
    /// Parse errors by reason (httparse's for heads).
    pub parse_errors: HashMap<&'static str, u64>,
    /// Stream bytes no parser could inspect (see [`Message::Uninspected`]).
    pub uninspected_bytes: u64,
    /// Requests those bytes held, estimated by each connection's mean request size.
    pub requests_uninspected: u64,
    pub requests: u64,
}

pub struct Engine {
    cfg: EngineConfig,
    conns: mem::FastMap<ConnKey, Conn>,
    linker: Linker,
    peer_heads: PeerHeads,
    comms: event::Comms,
    pub stats: EngineStats,
    /// Reused buffer of parser messages.
    messages: Vec<Message>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            conns: mem::FastMap::default(),
            linker: Linker::default(),
            peer_heads: PeerHeads::default(),
            comms: event::Comms::default(),
            stats: EngineStats::default(),
            messages: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Connections currently followed.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The keys of the connections currently followed, in no particular order.
    pub fn connection_keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.conns.keys().copied()
    }

    pub fn process_event(&mut self, ev: &Event<'_>, out: &mut Vec<Record>) {
        let h = *ev.header();
        let key = ConnKey::of(&h);
        match ev {
            Event::ConnOpen(c) => {
                let (local, peer) = match event::endpoints(c) {
                    Some((l, p)) => (Some(l), Some(p)),
                    None => (None, None),
                };
                let comm = self.comms.intern(&h.comm);
                self.insert_conn(key, Role::from_raw(c.role), local, peer, comm, h.ts_ns, out);
            }
            Event::ConnClose(_) => {
                if let Some(mut conn) = self.conns.remove(&key) {
                    self.end_conn(key, &mut conn, Some(h.ts_ns), out);
                    mem::shrink_if_sparse(&mut self.conns);
                }
            }
            // TCP state changes, censuses and losses are the lifecycle's and the pipeline's.
            Event::State(_) | Event::Census(..) | Event::Loss(..) => {}
            Event::GoServe(e) => self.linker.go_serve(h.pid, e.goid, (h.fd, h.conn_ts_ns)),
            Event::GoCall(e) => self.linker.go_call(h.pid, e.goid, (h.fd, h.conn_ts_ns)),
            Event::GoSpawn(e) => self.linker.go_spawn(h.pid, e.parent_goid, e.child_goid),
            Event::Data(d, payload) => {
                if !self.conns.contains_key(&key) {
                    // Its open was lost or happened before a replay started: follow it anyway.
                    let comm = self.comms.intern(&h.comm);
                    self.insert_conn(key, Role::from_raw(d.role), None, None, comm, h.ts_ns, out);
                }
                let Engine {
                    cfg,
                    conns,
                    linker,
                    peer_heads,
                    stats,
                    messages,
                    ..
                } = self;
                let Some(conn) = conns.get_mut(&key) else {
                    return;
                };
                conn.last_ns = h.ts_ns;
                let tls = traceid_common::source::is_tls(d.source);
                let idx = if tls { TLS } else { PLAIN };
                if matches!(conn.streams[idx], StreamState::Off) {
                    return;
                }
                let egress = event::is_egress(d);
                let sniffed = (conn.role == Role::Unknown
                    || matches!(conn.streams[idx], StreamState::Unsniffed))
                .then(|| protocol::sniff(egress, payload));
                if let Some(s) = sniffed {
                    if conn.role == Role::Unknown {
                        conn.role = s.role;
                    }
                }
                if matches!(conn.streams[idx], StreamState::Unsniffed) {
                    // HTTP/1 is the fallback: its parser ignores a direction that does not
                    // start like HTTP, and counts it.
                    let protocol = sniffed.and_then(|s| s.protocol).unwrap_or(Protocol::Http1);
                    conn.streams[idx] = match Parser::for_protocol(protocol, cfg.limits) {
                        Some(p) => StreamState::Parsing(p),
                        None => {
                            *stats.anomalies.entry(not_decoded(protocol)).or_default() += 1;
                            StreamState::Off
                        }
                    };
                }
                let flow = match (conn.role, egress) {
                    (Role::Server, false) | (Role::Client, true) => Flow::ClientToServer,
                    (Role::Server, true) | (Role::Client, false) => Flow::ServerToClient,
                    (Role::Unknown, _) => return,
                };
                let StreamState::Parsing(parser) = &mut conn.streams[idx] else {
                    return;
                };
                let chunk = Chunk {
                    data: payload,
                    real_len: d.real_len,
                    ts_ns: h.ts_ns,
                    tid: h.tid,
                };
                let names = &cfg.names;
                let keep = |n: &str| names.is_trace_header(n);
                parser.on_data(flow, chunk, &keep, messages);
                if let Some(Message::Switched { to, request, rest }) =
                    messages.pop_if(|m| matches!(m, Message::Switched { .. }))
                {
                    // Same connection, another protocol: its parser takes the rest of the chunk.
                    conn.streams[idx] = match Parser::after_upgrade(to, cfg.limits, request) {
                        Some(mut next) => {
                            let uncaptured = d.real_len.saturating_sub(payload.len() as u64);
                            let chunk = Chunk {
                                data: &rest,
                                real_len: (rest.len() as u64).saturating_add(uncaptured),
                                ..chunk
                            };
                            next.on_data(flow, chunk, &keep, messages);
                            StreamState::Parsing(next)
                        }
                        None => {
                            *stats.anomalies.entry(not_decoded(to)).or_default() += 1;
                            StreamState::Off
                        }
                    };
                }
                if let StreamState::Parsing(parser) = &conn.streams[idx] {
                    if parser.is_dead() {
                        conn.streams[idx] = StreamState::Off;
                    }
                }
                let mut cx = Cx {
                    cfg,
                    linker,
                    peer_heads,
                    stats,
                };
                cx.handle_messages(key, conn, tls, messages, out);
            }
        }
    }

    /// Ends every connection (end of a replay or of a diagnosis): unanswered requests are
    /// reported without a response.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        // In the order the connections were followed, not the table's (randomly seeded) hash
        // order: a replay ends exactly as the live run did.
        let mut keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        keys.sort_unstable_by_key(|k| (k.conn_ts_ns, k.pid, k.fd));
        for key in keys {
            if let Some(mut conn) = self.conns.remove(&key) {
                self.end_conn(key, &mut conn, None, out);
            }
        }
    }

    /// Ends both streams of a connection: at its close (`Some(ts)`), or flushing (`None`).
    fn end_conn(
        &mut self,
        key: ConnKey,
        conn: &mut Conn,
        close_ts: Option<u64>,
        out: &mut Vec<Record>,
    ) {
        for (idx, tls) in [(PLAIN, false), (TLS, true)] {
            let StreamState::Parsing(mut parser) =
                std::mem::replace(&mut conn.streams[idx], StreamState::Off)
            else {
                continue;
            };
            match close_ts {
                Some(ts) => parser.on_close(ts, &mut self.messages),
                None => parser.flush(&mut self.messages),
            }
            let mut cx = Cx {
                cfg: &self.cfg,
                linker: &mut self.linker,
                peer_heads: &mut self.peer_heads,
                stats: &mut self.stats,
            };
            cx.handle_messages(key, conn, tls, &mut self.messages, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_conn(
        &mut self,
        key: ConnKey,
        role: Role,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        comm: Arc<str>,
        ts_ns: u64,
        out: &mut Vec<Record>,
    ) {
        if self.conns.len() >= self.cfg.max_conns && !self.conns.contains_key(&key) {
            self.evict_idle(out);
        }
        let admitted = self.cfg.filter.admits(key.pid, &comm, local, peer);
        let stream = || {
            if admitted {
                StreamState::Unsniffed
            } else {
                StreamState::Off
            }
        };
        self.conns.insert(
            key,
            Conn {
                role,
                local: local.map(Endpoint::from),
                peer: peer.map(Endpoint::from),
                comm,
                streams: [stream(), stream()],
                last_ns: ts_ns,
                requests: None,
            },
        );
    }

    /// Drops the least recently active tenth of the connections (closes never seen: killed
    /// processes, lost events).
    fn evict_idle(&mut self, out: &mut Vec<Record>) {
        let mut ages: Vec<(u64, ConnKey)> =
            self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        let n = (ages.len() / 10).max(1);
        ages.select_nth_unstable(n - 1);
        for (_, key) in ages.into_iter().take(n) {
            if let Some(mut conn) = self.conns.remove(&key) {
                self.end_conn(key, &mut conn, None, out);
                self.stats.conns_evicted += 1;
            }
        }
    }
}

/// Why a request without trace context is `truncated`, not `missing`.
pub const TRUNCATED_REASON: &str =
    "head truncated: trace context may lie past the captured bytes (see --capture-bytes)";

/// The anomaly name of a recognised protocol the engine does not decode.
fn not_decoded(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "http1_not_decoded",
        Protocol::H2 | Protocol::Grpc => "h2_not_decoded",
    }
}

/// What turning messages into records needs, borrowed apart from the connection table.
struct Cx<'a> {
    cfg: &'a EngineConfig,
    linker: &'a mut Linker,
    peer_heads: &'a mut PeerHeads,
    stats: &'a mut EngineStats,
}

impl Cx<'_> {
    fn handle_messages(
        &mut self,
        key: ConnKey,
        conn: &mut Conn,
        tls: bool,
        messages: &mut Vec<Message>,
        out: &mut Vec<Record>,
    ) {
        for m in messages.drain(..) {
            match m {
                Message::RequestStarted { seq, head } => {
                    let ex = self.extract(&head.headers);
                    self.start_request(key, conn, seq, head, &ex);
                    let max = self.cfg.limits.max_pending;
                    push_bounded(&mut conn.requests().contexts, (seq, ex), max);
                }
                Message::Exchange {
                    seq,
                    mut request,
                    response,
                } => {
                    let contexts = &mut conn.requests().contexts;
                    let mut ex = match contexts.iter().position(|(s, _)| *s == seq) {
                        Some(i) => contexts.swap_remove(i).1,
                        None => self.extract(&request.headers),
                    };
                    if let Some(read) = self.read_by_peer(key, conn, &request) {
                        request = Arc::new(peer::completed(&request, &read));
                        ex = self.extract(&request.headers);
                        // Linked when it started without its trace: with it now, the link
                        // may be certain.
                        if let Some(trace) = ex.primary() {
                            if let Some(certain) = self.linker.link_by_trace(key.pid, trace) {
                                let links = &mut conn.requests().links;
                                if let Some(i) = links.iter().position(|(s, _)| *s == seq) {
                                    links[i].1 = Some(certain);
                                }
                            }
                        }
                    }
                    self.finish_request(key, conn, tls, seq, &request, response, ex, out);
                }
                // Lengths come from the record (a replayed file can say anything): saturate.
                Message::Uninspected { bytes, requests } => {
                    let st = &mut *self.stats;
                    st.uninspected_bytes = st.uninspected_bytes.saturating_add(bytes);
                    st.requests_uninspected = st.requests_uninspected.saturating_add(requests);
                }
                // Engine::process_event replaces the parser before messages get here.
                Message::Switched { .. } => {}
                Message::Anomaly(a) => {
                    *self.stats.anomalies.entry(a.as_str()).or_default() += 1;
                    if let Some(reason) = a.reason() {
                        *self.stats.parse_errors.entry(reason).or_default() += 1;
                    }
                }
            }
        }
    }

    /// What the server end of this connection read of an outbound request whose own head
    /// was not fully known (see [`peer`]), when both ends are followed here.
    fn read_by_peer(
        &mut self,
        key: ConnKey,
        conn: &Conn,
        request: &RequestHead,
    ) -> Option<Arc<RequestHead>> {
        if conn.role != Role::Client {
            return None;
        }
        let (local, peer, stream) = (conn.local?, conn.peer?, request.stream_id?);
        // Taken even when not needed: the server's copy has served its purpose.
        let read = self
            .peer_heads
            .take_for_client(local, peer, stream, key.conn_ts_ns);
        read.filter(|_| request.headers_known != HeadersKnown::Exact)
    }

    /// A request head is complete: an inbound one is in flight for linking, an outbound one
    /// is linked now (while the request it serves is still in flight).
    fn start_request(
        &mut self,
        key: ConnKey,
        conn: &mut Conn,
        seq: u64,
        head: Arc<RequestHead>,
        ex: &Extraction,
    ) {
        if let (Role::Server, Some(local), Some(peer)) = (conn.role, conn.local, conn.peer) {
            self.peer_heads.server_read(local, peer, &head);
        }
        match conn.role {
            Role::Server => self.linker.start(
                key.pid,
                Inflight {
                    conn: (key.fd, key.conn_ts_ns),
                    seq,
                    head,
                    trace: ex.primary().cloned(),
                },
            ),
            _ => {
                let l = self
                    .linker
                    .link(key.pid, head.tid, (key.fd, key.conn_ts_ns), ex.primary());
                let max = self.cfg.limits.max_pending;
                push_bounded(&mut conn.requests().links, (seq, l), max);
            }
        }
    }

    /// A request ended (answered, or its connection ended): its record, with findings.
    #[allow(clippy::too_many_arguments)]
    fn finish_request(
        &mut self,
        key: ConnKey,
        conn: &mut Conn,
        tls: bool,
        seq: u64,
        request: &RequestHead,
        response: Option<ResponseHead>,
        ex: Extraction,
        out: &mut Vec<Record>,
    ) {
        let link = if conn.role == Role::Server {
            self.linker.finish(key.pid, (key.fd, key.conn_ts_ns), seq);
            if let Some(resp) = &response {
                self.linker.observe_thread(key.pid, request.tid, resp.tid);
            }
            None
        } else {
            // A server's own calls say whether one thread carries them through.
            if let Some(resp) = &response {
                if self.linker.is_server(key.pid) {
                    self.linker.observe_thread(key.pid, request.tid, resp.tid);
                }
            }
            let links = &mut conn.requests().links;
            links
                .iter()
                .position(|(s, _)| *s == seq)
                .and_then(|i| links.remove(i).1)
        };
        let shown = conn.shown().clone();
        let rec = self.request_record(key, conn, shown, tls, request, response.as_ref(), ex, link);
        self.stats.requests += 1;
        out.push(Record::Request(Box::new(rec)));
    }

    fn extract(&self, headers: &[(String, String)]) -> Extraction {
        tracectx::extract(
            headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            &self.cfg.names,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn request_record(
        &self,
        key: ConnKey,
        conn: &Conn,
        (local, peer): Shown,
        tls: bool,
        req: &RequestHead,
        resp: Option<&ResponseHead>,
        ex: Extraction,
        link: Option<link::Link>,
    ) -> RequestRecord {
        let primary = ex.primary();
        let direction = if conn.role == Role::Server {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        // HTTP/2 headers indexed before the agent attached may hold trace context: without
        // one found, its absence is not claimed (no `missing`, no hop finding).
        let unread = |head: &RequestHead, trace: Option<&TraceContext>| {
            trace.is_none() && head.headers_known == HeadersKnown::Unknown
        };
        let mut findings = Findings::default();
        let mut reasons = Vec::new();
        if primary.is_none() && !unread(req, primary) {
            if req.truncated {
                // Part of the head was not captured: its trace context may be there.
                findings.push(Finding::Truncated);
                reasons.push(TRUNCATED_REASON.to_string());
            } else {
                findings.push(Finding::Missing);
            }
        }
        if !ex.malformed.is_empty() {
            findings.push(Finding::Malformed);
            reasons.extend(ex.malformed.iter().map(|m| m.reason.clone()));
        }
        if let Some(r) = ex.inconsistent() {
            findings.push(Finding::Inconsistent);
            reasons.push(r);
        }
        if resp.is_some_and(|r| !r.headers.is_empty()) {
            // Responses keep only trace-context headers, so any kept header is one sent back.
            findings.push(Finding::Exposed);
        }
        let mut inbound = None;
        if direction == Direction::Outbound {
            match &link {
                None if self.linker.is_server(key.pid) => findings.push(Finding::Unlinked),
                None => {}
                Some(l) => {
                    let inbound_trace = l.inbound.trace.as_ref();
                    if !unread(req, primary) && !unread(&l.inbound.head, inbound_trace) {
                        findings.extend(hop_finding(inbound_trace, primary));
                    }
                    inbound = Some(InboundRef {
                        trace_id: l.inbound.trace.as_ref().map(|t| t.trace_id.clone()),
                        method: l.inbound.head.method.clone(),
                        path: l.inbound.head.path.clone(),
                        confidence: l.confidence(),
                        evidence: l.evidence,
                    });
                }
            }
        }
        let ts = Timestamp::rfc3339_ms(req.ts_ns as i128 + self.cfg.realtime_offset_ns);
        let trace_format = primary.map(|t| t.format);
        let primary = ex.into_primary();
        let (trace_id, header) = primary.map(|t| (t.trace_id, t.header)).unzip();
        RequestRecord {
            event: "request",
            ts,
            direction,
            pid: key.pid,
            tid: req.tid,
            comm: Arc::clone(&conn.comm),
            local,
            peer,
            tls,
            protocol: req.protocol,
            stream_id: req.stream_id,
            headers_known: req.headers_known,
            method: req.method.clone(),
            path: req.path.clone(),
            status: resp.and_then(|r| r.status),
            grpc_status: resp.and_then(|r| r.grpc_status),
            // An inferred request's time is its response's: no duration was measured.
            duration_ms: resp
                .filter(|_| !req.inferred)
                .map(|r| r.ts_ns.saturating_sub(req.ts_ns) as f64 / 1e6),
            trace_id,
            trace_format,
            findings,
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            inbound,
            identity: None,
            header,
            local_port: conn.local.map(|a| a.port()),
            ts_ns: req.ts_ns,
            conn: key,
        }
    }
}

/// What an outbound call does with the trace of the inbound request it serves.
pub fn hop_finding(
    inbound: Option<&TraceContext>,
    outbound: Option<&TraceContext>,
) -> Option<Finding> {
    match (inbound, outbound) {
        (Some(_), None) => Some(Finding::Dropped),
        (Some(i), Some(o)) => Some(match i.same_trace(o) {
            Some(true) => Finding::Propagated,
            // Different formats that cannot be compared (a request id in, W3C out) still
            // carry a different id than the one given.
            _ => Finding::Restarted,
        }),
        (None, Some(_)) => Some(Finding::Started),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;
