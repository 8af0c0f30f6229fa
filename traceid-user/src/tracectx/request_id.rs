//! The request-id family (`x-request-id`, `x-trace-id`, `trace-id`, `x-correlation-id` and the
//! run-time extras): opaque, case-sensitive values with no standard beyond common practice.

use super::{ascii_string, Extraction, TraceContext, TraceFormat, Value};

/// Longest request id accepted.
const MAX_LEN: usize = 200;

pub(super) fn extract(name: &str, v: Value<'_>, out: &mut Extraction) {
    let f = TraceFormat::RequestId;
    let s = match v {
        Value::Absent => return,
        Value::Repeated => {
            out.bad(f, name, "repeated header");
            return;
        }
        Value::One(s) => s,
    };
    if s.is_empty() {
        out.bad(f, name, "empty");
    } else if s.len() > MAX_LEN {
        out.bad(f, name, format_args!("too long ({} bytes)", s.len()));
    } else if !s.iter().all(|b| (0x21..=0x7e).contains(b)) {
        // Visible ASCII only: control chars, NUL, DEL, inner spaces and non-ASCII bytes are out.
        out.bad(f, name, "non-printable character");
    } else {
        let value = ascii_string(s);
        out.contexts.push(TraceContext {
            format: f,
            header: name.to_string(),
            trace_id: value.clone(),
            normalized: value,
            span_id: None,
            sampled: None,
        });
    }
}
