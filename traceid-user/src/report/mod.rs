//! Turning records into what people and machines read.

pub mod diagnose;
pub mod time_wait;

use std::io::Write;

use crate::record::{
    BuildupRecord, Direction, Finding, HeadersKnown, Holder, Protocol, Record, RequestRecord,
};

/// One JSON line for a record (the contract of docs/json-lines.md).
pub fn json_line(r: &Record) -> String {
    let v = match r {
        Record::Request(q) => serde_json::to_string(q),
        Record::Lost(l) => serde_json::to_string(l),
        Record::Buildup(b) => serde_json::to_string(b),
    };
    v.unwrap_or_else(|e| format!("{{\"event\":\"error\",\"reason\":\"{e}\"}}"))
}

/// One human line for a record.
pub fn human_line(r: &Record) -> String {
    match r {
        Record::Request(q) => human_request(q),
        Record::Lost(l) => format!(
            "{}  LOST {} events at {}",
            time_of_day(&l.ts),
            l.count,
            l.stage
        ),
        Record::Buildup(b) => format!("{}  BUILDUP {}", time_of_day(&b.ts), buildup_text(b)),
    }
}

/// A `buildup` finding in words, with the sysctls that decide whether it hurts.
pub fn buildup_text(b: &BuildupRecord) -> String {
    let who = match (&b.comm, b.pid) {
        (Some(c), Some(p)) => format!("{c}[{p}]"),
        (None, Some(p)) => format!("pid {p}"),
        _ => "an unknown process".to_string(),
    };
    let share = b
        .port_range
        .map(|(lo, hi)| u64::from(hi) - u64::from(lo) + 1)
        .map_or_else(String::new, |n| {
            format!(
                ", {:.0} % of the ephemeral port range",
                b.time_wait as f64 * 100.0 / n as f64
            )
        });
    let reuse = b
        .requests_per_connection
        .map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
    let sysctls = format!(
        " (tcp_tw_reuse={}, ip_local_port_range={})",
        b.tcp_tw_reuse
            .map_or_else(|| "?".to_string(), |v| v.to_string()),
        b.port_range
            .map_or_else(|| "?".to_string(), |(lo, hi)| format!("{lo}-{hi}"))
    );
    match b.holder {
        Holder::Server => format!(
            "{who} accepts {:.1} connections/s at {} at {reuse} requests per connection and closes them first: {} sockets in TIME_WAIT on the server side (threshold {}){sysctls}",
            b.connections_per_s, b.remote, b.time_wait, b.threshold
        ),
        Holder::Client | Holder::Unknown => format!(
            "{who} opens {:.1} connections/s to {} at {reuse} requests per connection; {} sockets in TIME_WAIT toward it{share} (threshold {}){sysctls}",
            b.connections_per_s, b.remote, b.time_wait, b.threshold
        ),
    }
}

fn time_of_day(ts: &str) -> &str {
    ts.get(11..23).unwrap_or(ts)
}

fn human_request(q: &RequestRecord) -> String {
    let arrow = match q.direction {
        Direction::Inbound => "<-",
        Direction::Outbound => "->",
    };
    let status = q
        .status
        .map_or_else(|| "---".to_string(), |s| s.to_string());
    let dur = q
        .duration_ms
        .map_or_else(String::new, |d| format!(" {d:.1}ms"));
    // HTTP/2 and gRPC: the protocol and stream, the gRPC status, and how headers were known.
    let mut h2 = match (q.protocol, q.stream_id) {
        (Protocol::Http1, _) => String::new(),
        (p, Some(id)) => format!(" {}#{id}", p.as_str()),
        (p, None) => format!(" {}", p.as_str()),
    };
    if let Some(g) = q.grpc_status {
        h2.push_str(&format!(" grpc-status={g}"));
    }
    if q.headers_known != HeadersKnown::Exact {
        h2.push_str(&format!(" headers={}", q.headers_known.as_str()));
    }
    // Not read (a table entry the agent never saw): shown as such, never guessed.
    let unread = |s: &str| if s.is_empty() { "?" } else { s }.to_string();
    let trace = match (&q.trace_format, &q.trace_id) {
        (Some(f), Some(id)) => format!("{}={}", f.as_str(), id),
        _ => "no-trace".to_string(),
    };
    let mut findings: Vec<&str> = q
        .findings
        .iter()
        .filter(|f| **f != Finding::Propagated)
        .map(|f| f.as_str())
        .collect();
    if q.has(Finding::Propagated) {
        findings.push("propagated");
    }
    let findings = if findings.is_empty() {
        String::new()
    } else {
        format!("  [{}]", findings.join(","))
    };
    let link = q.inbound.as_ref().map_or_else(String::new, |l| {
        format!(
            " (serving {} {}, {} by {})",
            l.method,
            l.path,
            l.confidence.as_str(),
            l.evidence.as_str()
        )
    });
    let reason = q
        .reason
        .as_ref()
        .map_or_else(String::new, |r| format!(" {r}"));
    let who = q
        .identity
        .as_ref()
        .and_then(|i| i.short_name())
        .map_or_else(String::new, |n| format!(" {n}"));
    format!(
        "{}  {:<8} {}[{}]{who} {} {} {}  {} {} {}{}{}{}  {}{}{}{}",
        time_of_day(&q.ts),
        q.direction.as_str(),
        q.comm,
        q.pid,
        q.local.as_deref().unwrap_or("?"),
        arrow,
        q.peer.as_deref().unwrap_or("?"),
        unread(&q.method),
        unread(&q.path),
        status,
        if q.tls { " tls" } else { "" },
        h2,
        dur,
        trace,
        findings,
        link,
        reason
    )
}

/// Writes each line and flushes, so a reader of a pipe sees lines as they happen.
pub struct LineSink<W: Write> {
    out: W,
    json: bool,
}

impl<W: Write> LineSink<W> {
    pub fn new(out: W, json: bool) -> Self {
        LineSink { out, json }
    }

    pub fn write(&mut self, r: &Record) -> std::io::Result<()> {
        let line = if self.json {
            json_line(r)
        } else {
            human_line(r)
        };
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Confidence, InboundRef};
    use crate::test_util::events::*;

    #[test]
    fn human_line_keeps_the_case_of_linked_paths() {
        let mut s = Stream::default();
        let c = C {
            pid: 7,
            fd: 3,
            ts: 1,
            comm: "Api",
            role: traceid_common::ROLE_CLIENT,
        };
        s.data(c, 7, true, &get("/Orders/X1", &[]));
        s.data(c, 7, false, OK);
        let mut q = s.run().remove(0);
        q.inbound = Some(InboundRef {
            trace_id: None,
            method: "GET".into(),
            path: "/Users/ABC".into(),
            confidence: Confidence::Strong,
            evidence: crate::record::Evidence::Thread,
        });
        let line = human_line(&Record::Request(Box::new(q)));
        assert!(
            line.contains("(serving GET /Users/ABC, strong by thread)"),
            "{line}"
        );
        assert!(
            line.contains("Api[7]") && line.contains("/Orders/X1"),
            "{line}"
        );
        assert!(
            line.contains("/Orders/X1 200 0.0ms"),
            "HTTP/1 adds nothing: {line}"
        );
    }

    #[test]
    fn human_line_names_the_protocol_stream_and_grpc_status() {
        let mut s = Stream::default();
        let c = C {
            pid: 7,
            fd: 3,
            ts: 1,
            comm: "client",
            role: traceid_common::ROLE_CLIENT,
        };
        s.data(c, 7, true, &get("/x", &[]));
        s.data(c, 7, false, OK);
        let mut q = s.run().remove(0);
        q.protocol = Protocol::Grpc;
        q.stream_id = Some(41);
        q.grpc_status = Some(5);
        q.method = "POST".into();
        q.path = "/shop.Cart/Checkout".into();
        let line = human_line(&Record::Request(Box::new(q.clone())));
        assert!(
            line.contains("POST /shop.Cart/Checkout 200 grpc#41 grpc-status=5"),
            "{line}"
        );
        q.headers_known = HeadersKnown::Unknown;
        q.path = "".into();
        let line = human_line(&Record::Request(Box::new(q)));
        assert!(
            line.contains("POST ? 200 grpc#41 grpc-status=5 headers=unknown"),
            "{line}"
        );
    }

    #[test]
    fn human_lines_name_the_pod_where_there_is_one() {
        use crate::record::{Container, Identity, Pod};
        let mut s = Stream::default();
        let c = C {
            pid: 7,
            fd: 3,
            ts: 1,
            comm: "httpd",
            role: traceid_common::ROLE_SERVER,
        };
        s.data(c, 7, false, &get("/x", &[]));
        s.data(c, 7, true, OK);
        let mut q = s.run().remove(0);
        let host = human_line(&Record::Request(Box::new(q.clone())));
        assert!(host.contains("httpd[7] ? <- ?"), "{host}");
        let container = Container {
            id: "ab".repeat(32),
            runtime: None,
            name: None,
        };
        let mut id = Identity {
            container: Some(container),
            pod: Some(Pod {
                name: Some("web-0".into()),
                uid: "u".into(),
            }),
            namespace: Some("shop".into()),
            workload: None,
        };
        q.identity = Some(id.clone().into());
        let line = human_line(&Record::Request(Box::new(q.clone())));
        assert!(line.contains("httpd[7] shop/web-0 ? <- ?"), "{line}");
        // Outside Kubernetes, the container's short id.
        id.pod = None;
        id.namespace = None;
        q.identity = Some(id.into());
        let line = human_line(&Record::Request(Box::new(q)));
        assert!(line.contains("httpd[7] abababababab ? <- ?"), "{line}");
    }
}
