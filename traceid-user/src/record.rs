//! What the agent reports: the records every producer emits and every sink consumes.
//!
//! This module is a leaf (it names no other module of the agent but the trace format enum):
//! the engine and the lifecycle produce these records, the report, metrics and recording sinks
//! consume them. Their JSON form is the contract of docs/json-lines.md.

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
}

impl Finding {
    pub const ALL: [Finding; 9] = [
        Finding::Missing,
        Finding::Malformed,
        Finding::Inconsistent,
        Finding::Dropped,
        Finding::Restarted,
        Finding::Propagated,
        Finding::Started,
        Finding::Exposed,
        Finding::Unlinked,
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
        }
    }
}

/// How sure the engine is that an outbound call serves a given inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Same trace id.
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

/// The inbound request an outbound call was linked to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundRef {
    pub trace_id: Option<String>,
    pub method: String,
    pub path: String,
    pub confidence: Confidence,
}

/// One observed HTTP request (with its response when one came).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Always "request".
    pub event: &'static str,
    /// Wall-clock time the request started, RFC 3339 UTC with milliseconds.
    pub ts: String,
    pub direction: Direction,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub local: Option<String>,
    pub peer: Option<String>,
    pub tls: bool,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    pub duration_ms: Option<f64>,
    pub trace_id: Option<String>,
    pub trace_format: Option<TraceFormat>,
    pub findings: Vec<Finding>,
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundRef>,
    /// Header the trace id was read from (evidence for reports).
    #[serde(skip)]
    pub header: Option<String>,
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

/// Formats CLOCK_REALTIME nanoseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(realtime_ns: i128) -> String {
    let ms_total = realtime_ns.div_euclid(1_000_000);
    let secs = ms_total.div_euclid(1000);
    let ms = ms_total.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
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
                "unlinked"
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
