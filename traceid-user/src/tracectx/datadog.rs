//! Datadog propagation: `x-datadog-trace-id` (unsigned 64-bit decimal), `x-datadog-parent-id`,
//! `x-datadog-sampling-priority` (<https://docs.datadoghq.com/tracing/trace_collection/trace_context_propagation/>).

use super::{
    ascii_string, parse_u64, DecErr, Extraction, TraceContext, TraceFormat, Value,
    X_DATADOG_PARENT_ID, X_DATADOG_SAMPLING_PRIORITY, X_DATADOG_TRACE_ID,
};

fn check_id(v: &[u8]) -> Result<u64, &'static str> {
    match parse_u64(v) {
        Ok(0) => Err("is zero"),
        Ok(n) => Ok(n),
        Err(DecErr::Empty) => Err("empty"),
        Err(DecErr::NotDigits) => Err("not an unsigned decimal"),
        Err(DecErr::Overflow) => Err("overflows 64 bits"),
    }
}

/// Sampling priority: a small signed integer (-1 user reject, 0 auto reject, 1 auto keep,
/// 2 user keep); > 0 means sampled.
fn parse_priority(v: &[u8]) -> Option<bool> {
    let (neg, digits) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    if digits.len() > 10 {
        return None;
    }
    let n = parse_u64(digits).ok()?;
    Some(!neg && n > 0)
}

/// The sampling priority alone (no trace id) is a sampling decision only.
pub(super) fn extract(
    trace: Value<'_>,
    parent: Value<'_>,
    priority: Value<'_>,
    out: &mut Extraction,
) {
    let f = TraceFormat::Datadog;
    let sampled = match priority {
        Value::Absent => None,
        Value::Repeated => {
            out.bad(f, X_DATADOG_SAMPLING_PRIORITY, "repeated header");
            None
        }
        Value::One(p) => {
            let r = parse_priority(p);
            if r.is_none() {
                out.bad(f, X_DATADOG_SAMPLING_PRIORITY, "not an integer");
            }
            r
        }
    };
    let (t, id) = match trace {
        Value::Absent => {
            if parent.is_present() {
                out.bad(f, X_DATADOG_TRACE_ID, "missing (parent id present)");
            }
            return;
        }
        Value::Repeated => {
            out.bad(f, X_DATADOG_TRACE_ID, "repeated header");
            return;
        }
        Value::One(t) => match check_id(t) {
            Ok(id) => (t, id),
            Err(d) => {
                out.bad(f, X_DATADOG_TRACE_ID, d);
                return;
            }
        },
    };
    let span_id = match parent {
        Value::Absent => None,
        Value::Repeated => {
            out.bad(f, X_DATADOG_PARENT_ID, "repeated header");
            None
        }
        Value::One(p) => match check_id(p) {
            Ok(_) => Some(ascii_string(p)),
            Err(d) => {
                out.bad(f, X_DATADOG_PARENT_ID, d);
                None
            }
        },
    };
    out.contexts.push(TraceContext {
        format: f,
        header: X_DATADOG_TRACE_ID.to_string(),
        // The decimal as carried; the comparison key is the 64-bit value as padded hex.
        trace_id: ascii_string(t),
        normalized: format!("{id:032x}"),
        span_id,
        sampled,
    });
}
