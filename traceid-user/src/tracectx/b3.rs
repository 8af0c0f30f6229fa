//! Zipkin B3 propagation (<https://github.com/openzipkin/b3-propagation>): the multi-header
//! form (`X-B3-*`) and the single header `b3`.

use super::{
    all_zeros, ascii_string, hex_class, pad32, Extraction, Hex, TraceContext, TraceFormat, Value,
    B3, X_B3_FLAGS, X_B3_PARENTSPANID, X_B3_SAMPLED, X_B3_SPANID, X_B3_TRACEID,
};

pub(super) struct Multi<'a> {
    pub trace_id: Value<'a>,
    pub span_id: Value<'a>,
    pub parent_span_id: Value<'a>,
    pub sampled: Value<'a>,
    pub flags: Value<'a>,
}

/// TraceId: "16 or 32 lower-hex characters" (B3 README, TraceId section); not all zeros.
fn check_trace_id(v: &[u8]) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty".into());
    }
    let class = hex_class(v);
    if class == Hex::Invalid {
        return Err("not hex".into());
    }
    if v.len() != 16 && v.len() != 32 {
        return Err(format!("{} hex digits (needs 16 or 32)", v.len()));
    }
    if class == Hex::Upper {
        return Err("uppercase hex".into());
    }
    if all_zeros(v) {
        return Err("trace id is all zeros".into());
    }
    Ok(())
}

/// SpanId / ParentSpanId: "16 lower-hex characters". A zero span id is rejected (B3 implementations
/// such as Brave treat it as invalid); a zero parent is tolerated.
fn check_span_id(v: &[u8], zero_ok: bool) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty".into());
    }
    let class = hex_class(v);
    if class == Hex::Invalid {
        return Err("not hex".into());
    }
    if v.len() != 16 {
        return Err(format!("{} hex digits (needs 16)", v.len()));
    }
    if class == Hex::Upper {
        return Err("uppercase hex".into());
    }
    if !zero_ok && all_zeros(v) {
        return Err("span id is all zeros".into());
    }
    Ok(())
}

/// Multi-header B3. A sampling decision alone (X-B3-Sampled / X-B3-Flags without X-B3-TraceId)
/// is neither a context nor malformed.
pub(super) fn multi(m: Multi<'_>, out: &mut Extraction) {
    let f = TraceFormat::B3;
    // X-B3-Sampled: the spec says "1" or "0". Older instrumentation sent "true"/"false" and
    // Zipkin's own parsers (Brave) accept them, so they are treated as valid here (lenient).
    let sampled = match m.sampled {
        Value::Absent => None,
        Value::Repeated => {
            out.bad(f, X_B3_SAMPLED, "repeated header");
            None
        }
        Value::One(b"1") | Value::One(b"true") => Some(true),
        Value::One(b"0") | Value::One(b"false") => Some(false),
        Value::One(_) => {
            out.bad(f, X_B3_SAMPLED, "must be 0 or 1");
            None
        }
    };
    // X-B3-Flags: "Debug is encoded as X-B3-Flags: 1 ... Absent or any other value can be
    // ignored." Debug implies an accept sampling decision.
    let debug = match m.flags {
        Value::One(b"1") => true,
        Value::Repeated => {
            out.bad(f, X_B3_FLAGS, "repeated header");
            false
        }
        _ => false,
    };
    let trace_id = match m.trace_id {
        Value::Absent => {
            if m.span_id.is_present() || m.parent_span_id.is_present() {
                out.bad(f, X_B3_TRACEID, "missing (span id present)");
            }
            return;
        }
        Value::Repeated => {
            out.bad(f, X_B3_TRACEID, "repeated header");
            return;
        }
        Value::One(t) => match check_trace_id(t) {
            Ok(()) => t,
            Err(d) => {
                out.bad(f, X_B3_TRACEID, d);
                return;
            }
        },
    };
    // "The SpanId is required when TraceId is present" (B3 README).
    let span_id = match m.span_id {
        Value::Absent => {
            out.bad(f, X_B3_SPANID, "missing");
            return;
        }
        Value::Repeated => {
            out.bad(f, X_B3_SPANID, "repeated header");
            return;
        }
        Value::One(s) => match check_span_id(s, false) {
            Ok(()) => s,
            Err(d) => {
                out.bad(f, X_B3_SPANID, d);
                return;
            }
        },
    };
    match m.parent_span_id {
        Value::Absent => {}
        Value::Repeated => out.bad(f, X_B3_PARENTSPANID, "repeated header"),
        Value::One(p) => {
            if let Err(d) = check_span_id(p, true) {
                out.bad(f, X_B3_PARENTSPANID, d);
            }
        }
    }
    out.contexts.push(TraceContext {
        format: f,
        header: X_B3_TRACEID.to_string(),
        trace_id: ascii_string(trace_id),
        normalized: pad32(trace_id),
        span_id: Some(ascii_string(span_id)),
        sampled: if debug { Some(true) } else { sampled },
    });
}

/// Single header `b3: {TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`, the last two optional.
/// "b3: 0" (deny), and likewise "1"/"d" alone, is a sampling decision only (B3 README,
/// "Single Header").
pub(super) fn single(v: Value<'_>, out: &mut Extraction) {
    let f = TraceFormat::B3Single;
    match v {
        Value::Absent => {}
        Value::Repeated => out.bad(f, B3, "repeated header"),
        Value::One(b"0") | Value::One(b"1") | Value::One(b"d") => {}
        Value::One(s) => match parse_single(s) {
            Ok(ctx) => out.contexts.push(ctx),
            Err(d) => out.bad(f, B3, d),
        },
    }
}

fn parse_single(s: &[u8]) -> Result<TraceContext, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let n = s.split(|&b| b == b'-').count();
    if n < 2 {
        return Err("needs {TraceId}-{SpanId}".into());
    }
    if n > 4 {
        return Err(format!("{n} fields (max 4)"));
    }
    let mut it = s.split(|&b| b == b'-');
    let trace_id = it.next().unwrap_or_default();
    let span_id = it.next().unwrap_or_default();
    let state = it.next();
    let parent = it.next();
    check_trace_id(trace_id).map_err(|d| format!("trace id: {d}"))?;
    check_span_id(span_id, false).map_err(|d| format!("span id: {d}"))?;
    let sampled = match state {
        None => None,
        Some(b"1") | Some(b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return Err("sampling state must be 0, 1 or d".into()),
    };
    if let Some(p) = parent {
        check_span_id(p, true).map_err(|d| format!("parent span id: {d}"))?;
    }
    Ok(TraceContext {
        format: TraceFormat::B3Single,
        header: B3.to_string(),
        trace_id: ascii_string(trace_id),
        normalized: pad32(trace_id),
        span_id: Some(ascii_string(span_id)),
        sampled,
    })
}
