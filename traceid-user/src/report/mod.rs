//! Turning records into what people and machines read.

pub mod diagnose;

use std::io::Write;

use crate::engine::{Finding, Record, RequestRecord};

/// One JSON line for a record (the contract of DESIGN.md "Interfaces").
pub fn json_line(r: &Record) -> String {
    let v = match r {
        Record::Request(q) => serde_json::to_string(q),
        Record::Lost(l) => serde_json::to_string(l),
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
    }
}

fn time_of_day(ts: &str) -> &str {
    ts.get(11..23).unwrap_or(ts)
}

fn human_request(q: &RequestRecord) -> String {
    let arrow = match q.direction {
        crate::engine::Direction::Inbound => "<-",
        crate::engine::Direction::Outbound => "->",
    };
    let status = q
        .status
        .map_or_else(|| "---".to_string(), |s| s.to_string());
    let dur = q
        .duration_ms
        .map_or_else(String::new, |d| format!(" {d:.1}ms"));
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
        format!(" (serving {} {}, {:?})", l.method, l.path, l.confidence).to_lowercase()
    });
    let reason = q
        .reason
        .as_ref()
        .map_or_else(String::new, |r| format!(" {r}"));
    format!(
        "{}  {:<8} {}[{}] {} {} {}  {} {} {}{}{}  {}{}{}{}",
        time_of_day(&q.ts),
        q.direction.as_str(),
        q.comm,
        q.pid,
        q.local.as_deref().unwrap_or("?"),
        arrow,
        q.peer.as_deref().unwrap_or("?"),
        q.method,
        q.path,
        status,
        if q.tls { " tls" } else { "" },
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
