//! What the agent reports: the records every producer emits and every sink consumes.
//!
//! This module is a leaf (it names no other module of the agent but the trace format enum):
//! the engine and the lifecycle produce these records, the report, metrics and recording sinks
//! consume them. Their JSON form is the contract of docs/json-lines.md.

use std::sync::Arc;

use serde::Serialize;

use crate::tracectx::TraceFormat;

/// Identity of a connection as one process sees it: fd reuse cannot mix two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub pid: u32,
    pub fd: i32,
    /// When the kernel started following the socket (CLOCK_MONOTONIC ns).
    pub conn_ts_ns: u64,
}

impl ConnKey {
    /// The connection an event belongs to.
    pub fn of(h: &traceid_common::EventHeader) -> ConnKey {
        ConnKey {
            pid: h.pid,
            fd: h.fd,
            conn_ts_ns: h.conn_ts_ns,
        }
    }
}

/// The application protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.0 and HTTP/1.1, plain or inside TLS.
    Http1,
    /// HTTP/2, plain (prior knowledge) or inside TLS.
    H2,
    /// gRPC: HTTP/2 whose request or response says `content-type: application/grpc` (or
    /// carries `grpc-status`). Never sniffed: a connection is HTTP/2, a request is gRPC.
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// How a request's trace context (or its absence) was known. HTTP/2 compresses headers against
/// a table both ends build from the start of the connection (HPACK); on a connection opened
/// before the agent, the fields that index older entries are unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadersKnown {
    /// Trace-context headers were read by their names, or every field was known (always for
    /// HTTP/1).
    Exact,
    /// A trace-context header was recognised by the shape of its value, its name being unknown
    /// (a valid traceparent, grpc-trace-bin, uber-trace-id or b3 value); or, without one, the
    /// fields of unknown name had values of no such shape.
    ByValue,
    /// No trace context was found and some fields were unknown, name and value: the request
    /// may carry trace context that could not be read.
    Unknown,
}

impl HeadersKnown {
    pub fn as_str(self) -> &'static str {
        match self {
            HeadersKnown::Exact => "exact",
            HeadersKnown::ByValue => "by_value",
            HeadersKnown::Unknown => "unknown",
        }
    }
}

/// Inbound: the process accepted the connection (it serves the request). Outbound: the
/// process connected (it makes the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Finding kinds; names are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Finding {
    /// No recognised trace context.
    Missing,
    /// A trace-context header is present but invalid (`reason` names it).
    Malformed,
    /// Two formats on one request carry different trace ids.
    Inconsistent,
    /// Outbound call with no trace context while serving an inbound request that had one.
    Dropped,
    /// Outbound call carrying a different trace id than the inbound request it serves.
    Restarted,
    /// Outbound call carrying the inbound request's trace id (healthy).
    Propagated,
    /// Outbound call carrying a trace id while the inbound request it serves had none.
    Started,
    /// A response carries a trace header back to the client (informational).
    Exposed,
    /// Outbound call that could not be linked to an inbound request.
    Unlinked,
    /// No trace context was seen, but part of the head was not captured (the capture window
    /// cut it): the context may be there. Never reported as `missing`.
    Truncated,
}

/// A record's findings in the order they were found, held inline: most records have one or
/// two, and a record is built per request. Each kind appears at most once, so
/// `Finding::ALL.len()` places always suffice.
#[derive(Clone, Copy)]
pub struct Findings {
    len: u8,
    items: [Finding; Finding::ALL.len()],
}

impl Findings {
    /// Adds `f` unless it is already there (a kind is found once per record).
    pub fn push(&mut self, f: Finding) {
        if self.contains(&f) {
            return;
        }
        if let Some(slot) = self.items.get_mut(usize::from(self.len)) {
            *slot = f;
            self.len += 1;
        }
    }
}

impl Default for Findings {
    fn default() -> Self {
        Findings {
            len: 0,
            // Placeholders past `len`, never read.
            items: [Finding::Missing; Finding::ALL.len()],
        }
    }
}

impl std::ops::Deref for Findings {
    type Target = [Finding];
    fn deref(&self) -> &[Finding] {
        self.items.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl<'a> IntoIterator for &'a Findings {
    type Item = &'a Finding;
    type IntoIter = std::slice::Iter<'a, Finding>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Extend<Finding> for Findings {
    fn extend<I: IntoIterator<Item = Finding>>(&mut self, found: I) {
        for f in found {
            self.push(f);
        }
    }
}

impl FromIterator<Finding> for Findings {
    fn from_iter<I: IntoIterator<Item = Finding>>(found: I) -> Self {
        let mut findings = Findings::default();
        findings.extend(found);
        findings
    }
}

impl From<Vec<Finding>> for Findings {
    fn from(found: Vec<Finding>) -> Self {
        found.into_iter().collect()
    }
}

impl PartialEq for Findings {
    fn eq(&self, other: &Findings) -> bool {
        **self == **other
    }
}

impl Eq for Findings {}

impl PartialEq<Vec<Finding>> for Findings {
    fn eq(&self, other: &Vec<Finding>) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Findings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl Finding {
    pub const ALL: [Finding; 10] = [
        Finding::Missing,
        Finding::Malformed,
        Finding::Inconsistent,
        Finding::Dropped,
        Finding::Restarted,
        Finding::Propagated,
        Finding::Started,
        Finding::Exposed,
        Finding::Unlinked,
        Finding::Truncated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Finding::Missing => "missing",
            Finding::Malformed => "malformed",
            Finding::Inconsistent => "inconsistent",
            Finding::Dropped => "dropped",
            Finding::Restarted => "restarted",
            Finding::Propagated => "propagated",
            Finding::Started => "started",
            Finding::Exposed => "exposed",
            Finding::Unlinked => "unlinked",
            Finding::Truncated => "truncated",
        }
    }
}

/// How sure the engine is that an outbound call serves a given inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Exact: the same trace id, or (Go) the goroutine that asked for the call serves the
    /// inbound request ([`Evidence`] says which).
    Certain,
    /// Same thread while the inbound request was in flight.
    Strong,
    /// The only inbound request in flight in that process.
    Weak,
}

impl Confidence {
    /// The contract name (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Certain => "certain",
            Confidence::Strong => "strong",
            Confidence::Weak => "weak",
        }
    }
}

/// What a link rests on; each implies one [`Confidence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// The call continues the inbound request's trace id (`certain`).
    TraceId,
    /// Go: the goroutine that asked for the call serves the inbound request's connection, or
    /// was started by one that does, as the Go probes saw it (`certain`).
    Goroutine,
    /// The thread that read the inbound request wrote the call while it was in flight
    /// (`strong`).
    Thread,
    /// The inbound request was the only one in flight in the process (`weak`).
    OnlyInFlight,
}

impl Evidence {
    /// The contract name (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::TraceId => "trace_id",
            Evidence::Goroutine => "goroutine",
            Evidence::Thread => "thread",
            Evidence::OnlyInFlight => "only_in_flight",
        }
    }

    /// How sure a link on this evidence is.
    pub fn confidence(self) -> Confidence {
        match self {
            Evidence::TraceId | Evidence::Goroutine => Confidence::Certain,
            Evidence::Thread => Confidence::Strong,
            Evidence::OnlyInFlight => Confidence::Weak,
        }
    }
}

/// The inbound request an outbound call was linked to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundRef {
    pub trace_id: Option<String>,
    pub method: Arc<str>,
    pub path: Arc<str>,
    pub confidence: Confidence,
    pub evidence: Evidence,
}

/// One observed HTTP request (with its response when one came).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Always "request".
    pub event: &'static str,
    /// Wall-clock time the request started, RFC 3339 UTC with milliseconds.
    pub ts: Timestamp,
    pub direction: Direction,
    pub pid: u32,
    pub tid: u32,
    /// Shared by the records of one process name.
    pub comm: std::sync::Arc<str>,
    /// `ip:port`; shared by the records of one connection.
    pub local: Option<std::sync::Arc<str>>,
    pub peer: Option<std::sync::Arc<str>>,
    pub tls: bool,
    /// `http1`, `h2` or `grpc`.
    pub protocol: Protocol,
    /// The HTTP/2 stream id; null for HTTP/1.
    pub stream_id: Option<u32>,
    /// How the request's header fields were known (`exact` for HTTP/1).
    pub headers_known: HeadersKnown,
    /// Empty when not read (see `headers_known`); gRPC: `/package.Service/Method`. Shared
    /// with the request's head.
    pub method: Arc<str>,
    pub path: Arc<str>,
    /// HTTP status; null without a response, or when not read.
    pub status: Option<u16>,
    /// gRPC status (`grpc-status` of the trailers or of a trailers-only response); null
    /// otherwise.
    pub grpc_status: Option<u32>,
    pub duration_ms: Option<f64>,
    pub trace_id: Option<String>,
    pub trace_format: Option<TraceFormat>,
    pub findings: Findings,
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundRef>,
    /// Who the process is (container, pod, namespace, workload); its fields are written at
    /// the top level and only when known. None outside containers.
    #[serde(flatten)]
    pub identity: Option<Arc<Identity>>,
    /// Header the trace id was read from (evidence for reports).
    #[serde(skip)]
    pub header: Option<std::borrow::Cow<'static, str>>,
    /// Local port, for grouping by service.
    #[serde(skip)]
    pub local_port: Option<u16>,
    /// Start of the request, CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub ts_ns: u64,
    /// The connection, for per-connection reuse figures.
    #[serde(skip)]
    pub conn: ConnKey,
}

impl RequestRecord {
    pub fn has(&self, f: Finding) -> bool {
        self.findings.contains(&f)
    }
}

/// Who a process is, from what the node holds (see `crate::identity`). Every part is
/// optional: a process outside any container has none, and names need node files the agent
/// may not be allowed to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

impl Identity {
    /// True when nothing is known (a process outside any container).
    pub fn is_empty(&self) -> bool {
        self == &Identity::default()
    }

    /// `namespace/pod`, the pod name alone, or the container's name or short id: the shortest
    /// name a person recognises the process by. None outside containers.
    pub fn short_name(&self) -> Option<String> {
        let pod = self.pod.as_ref().and_then(|p| p.name.as_deref());
        match (&self.namespace, pod, &self.container) {
            (Some(ns), Some(pod), _) => Some(format!("{ns}/{pod}")),
            (None, Some(pod), _) => Some(pod.to_string()),
            (_, None, Some(c)) => Some(c.name.clone().unwrap_or_else(|| c.short_id().into())),
            (_, None, None) => None,
        }
    }
}

/// The container a process runs in, from its cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The runtime's container id (64 hex digits).
    pub id: String,
    /// None when the cgroup path does not say (the cgroupfs driver under Kubernetes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// The container's name in its pod (kubelet log layout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Container {
    /// The first 12 digits, as container tools print ids.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// The container runtime named by the cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Runtime {
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "podman")]
    Podman,
}

impl Runtime {
    pub const ALL: [Runtime; 4] = [
        Runtime::Containerd,
        Runtime::CriO,
        Runtime::Docker,
        Runtime::Podman,
    ];

    /// The contract name (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// The Kubernetes pod of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// None when no name source could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub uid: String,
}

/// The controller that owns a pod, derived from the pod's name by the naming rules of its
/// owner (never read from the API server).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    /// Always true: the workload is inferred from the pod name, not read from its owner.
    pub derived: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 3] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
    ];

    /// The contract name (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
        }
    }
}

/// Events were lost somewhere; reported as they are noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostRecord {
    /// Always "lost".
    pub event: &'static str,
    pub ts: String,
    /// Where: `kernel_ringbuf_full`, `decode`, `http_<anomaly>`...
    pub stage: String,
    /// How many since the previous report for this stage.
    pub count: u64,
}

/// Which end of a service's connections holds their TIME_WAIT sockets: the end that closed
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Holder {
    /// The connecting side: the service endpoint is the sockets' remote end.
    Client,
    /// The listening side: the service endpoint is the sockets' own (local) end.
    Server,
    /// Neither a connection seen closing nor the ports tell.
    Unknown,
}

impl Holder {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Holder::Client => "client",
            Holder::Server => "server",
            Holder::Unknown => "unknown",
        }
    }
}

/// TIME_WAIT of one service endpoint passed the threshold and is growing (from the lifecycle).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildupRecord {
    /// Always "buildup".
    pub event: &'static str,
    pub ts: String,
    /// The service endpoint of the connections, "ip:port": the listening side, whichever end
    /// closed first (so clients' ephemeral ports never name a series).
    pub remote: String,
    /// Which end holds the sockets: `client` (they point to `remote`) or `server` (`remote` is
    /// this host's own listening address).
    pub holder: Holder,
    /// TIME_WAIT sockets of `remote` held by `holder` at the census.
    pub time_wait: u64,
    pub threshold: u64,
    /// The process that owned most of them (matched by 4-tuple with connections it closed);
    /// null when none was seen closing.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Connections that process opened to `remote` per second (recent window).
    pub connections_per_s: f64,
    /// Requests per connection of that process to `remote` (reuse): 1 means no reuse.
    pub requests_per_connection: Option<f64>,
    /// `net.ipv4.tcp_tw_reuse` and `ip_local_port_range`, for the human line and the report.
    #[serde(skip)]
    pub tcp_tw_reuse: Option<u8>,
    #[serde(skip)]
    pub port_range: Option<(u16, u16)>,
}

/// Everything the pipeline emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Request(Box<RequestRecord>),
    Lost(LostRecord),
    Buildup(Box<BuildupRecord>),
}

/// Formats CLOCK_REALTIME nanoseconds as RFC 3339 UTC with milliseconds
/// (`2026-11-25T05:40:12.345Z`).
pub fn rfc3339_ms(realtime_ns: i128) -> String {
    Timestamp::rfc3339_ms(realtime_ns).as_str().to_owned()
}

/// A record's wall-clock time as RFC 3339 text, kept inline for the four-digit years of any
/// real clock: a request record is built per request, and its time no longer allocates.
#[derive(Clone, PartialEq, Eq)]
pub struct Timestamp(TimestampText);

#[derive(Clone, PartialEq, Eq)]
enum TimestampText {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, ASCII.
    Inline([u8; 24]),
    /// Anything else: a year outside 0..=9999, a time past `i64` milliseconds, a test's text.
    Text(Box<str>),
}

impl Timestamp {
    /// CLOCK_REALTIME nanoseconds as RFC 3339 UTC with milliseconds. Written digit by digit:
    /// it runs for every record.
    pub fn rfc3339_ms(realtime_ns: i128) -> Timestamp {
        match rfc3339_ms_inline(realtime_ns) {
            Ok(b) => Timestamp(TimestampText::Inline(b)),
            Err(text) => Timestamp(TimestampText::Text(text.into_boxed_str())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Built only from ASCII digits and the template's separators.
            TimestampText::Inline(b) => std::str::from_utf8(b).unwrap_or_default(),
            TimestampText::Text(t) => t,
        }
    }
}

impl std::ops::Deref for Timestamp {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<&str> for Timestamp {
    fn from(text: &str) -> Timestamp {
        Timestamp(TimestampText::Text(text.into()))
    }
}

/// The 24 bytes of a four-digit year's timestamp, or the text of any other.
fn rfc3339_ms_inline(realtime_ns: i128) -> Result<[u8; 24], String> {
    // 64-bit division where the value fits (until 2262): 128-bit division is a library call.
    let ms_total = match i64::try_from(realtime_ns) {
        Ok(ns) => i128::from(ns.div_euclid(1_000_000)),
        Err(_) => realtime_ns.div_euclid(1_000_000),
    };
    let Ok(ms_total) = i64::try_from(ms_total) else {
        return Err(format!("{realtime_ns}ns"));
    };
    let secs = ms_total.div_euclid(1000);
    let ms = ms_total.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        // Outside what four digits hold: the slow path keeps it correct.
        return Err(format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod % 3600) / 60,
            sod % 60
        ));
    }
    let mut b = *b"0000-00-00T00:00:00.000Z";
    // Two digits at a time (values below 100).
    let mut put2 = |at: usize, v: u32| {
        let i = (v as usize % 100) * 2;
        b[at..at + 2].copy_from_slice(&DIGIT_PAIRS[i..i + 2]);
    };
    put2(0, y as u32 / 100);
    put2(2, y as u32 % 100);
    put2(5, m);
    put2(8, d);
    put2(11, sod / 3600);
    put2(14, (sod % 3600) / 60);
    put2(17, sod % 60);
    put2(21, ms % 100);
    b[20] = b'0' + (ms / 100) as u8;
    Ok(b)
}

/// "00" to "99", each number's two ASCII digits at twice its value.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// "ip:port" as `SocketAddr`'s Display writes it, without the formatting machinery for the
/// common IPv4 case (it runs for both endpoints of every record).
pub fn endpoint_string(a: std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v4) => {
            let mut s = String::with_capacity(21);
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                push_decimal(&mut s, u32::from(*o));
            }
            s.push(':');
            push_decimal(&mut s, u32::from(v4.port()));
            s
        }
        std::net::SocketAddr::V6(_) => a.to_string(),
    }
}

fn push_decimal(s: &mut String, v: u32) {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = v;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for d in digits[..n].iter().rev() {
        s.push(char::from(*d));
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-25T05:40:12.345Z
        assert_eq!(
            rfc3339_ms(1_795_585_212_345_000_000),
            "2026-11-25T05:40:12.345Z"
        );
        // Leap day.
        assert_eq!(
            rfc3339_ms(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn rfc3339_agrees_with_the_formatting_machinery_everywhere() {
        let mut rng = crate::test_util::Rng::new(5);
        for _ in 0..20_000 {
            // 1970..2100, and a few out of four digits' reach.
            let ns =
                (rng.below(4_102_444_800_000) as i128) * 1_000_000 + rng.below(1_000_000) as i128;
            let ms_total = ns.div_euclid(1_000_000);
            let secs = ms_total.div_euclid(1000);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400) as i64);
            let sod = secs.rem_euclid(86_400);
            let want = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3600,
                (sod % 3600) / 60,
                sod % 60,
                ms_total.rem_euclid(1000)
            );
            assert_eq!(rfc3339_ms(ns), want);
        }
        assert_eq!(rfc3339_ms(-1_000_000), "1969-12-31T23:59:59.999Z");
        // Years past 9999 take the slow path and stay correct.
        assert_eq!(
            rfc3339_ms(253_402_300_800_000_000_000),
            "10000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn a_timestamp_is_written_as_its_text_whether_inline_or_not() {
        let inline = Timestamp::rfc3339_ms(1_795_585_212_345_000_000);
        let far = Timestamp::rfc3339_ms(253_402_300_800_000_000_000);
        assert!(matches!(inline.0, TimestampText::Inline(_)));
        assert!(matches!(far.0, TimestampText::Text(_)));
        for (ts, text) in [
            (inline, "2026-11-25T05:40:12.345Z"),
            (far, "10000-01-01T00:00:00.000Z"),
        ] {
            assert_eq!(&*ts, text);
            assert_eq!(ts.to_string(), text);
            assert_eq!(format!("{ts:?}"), format!("{text:?}"));
            assert_eq!(
                serde_json::to_string(&ts).expect("a string"),
                format!("\"{text}\"")
            );
        }
    }

    #[test]
    fn findings_keep_their_order_once_each_and_are_written_as_a_list() {
        let mut f = Findings::default();
        assert_eq!(serde_json::to_string(&f).expect("a list"), "[]");
        f.push(Finding::Missing);
        f.extend([Finding::Malformed, Finding::Missing, Finding::Unlinked]);
        assert_eq!(
            f,
            vec![Finding::Missing, Finding::Malformed, Finding::Unlinked]
        );
        assert!(f.contains(&Finding::Unlinked) && !f.contains(&Finding::Dropped));
        assert_eq!(
            serde_json::to_string(&f).expect("a list"),
            r#"["missing","malformed","unlinked"]"#
        );
        // Every kind fits.
        let all: Findings = Finding::ALL.into_iter().collect();
        assert_eq!(*all, Finding::ALL);
    }

    #[test]
    fn endpoints_print_as_socket_addr_does() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "10.20.3.4:9",
            "[::1]:443",
            "[2001:db8::7]:80",
        ] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(endpoint_string(addr), addr.to_string());
        }
    }

    #[test]
    fn finding_names_match_contract() {
        let names: Vec<_> = Finding::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "missing",
                "malformed",
                "inconsistent",
                "dropped",
                "restarted",
                "propagated",
                "started",
                "exposed",
                "unlinked",
                "truncated"
            ]
        );
        for f in Finding::ALL {
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.as_str())
            );
        }
    }
}
