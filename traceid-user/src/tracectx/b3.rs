//! Zipkin B3 propagation (<https://github.com/openzipkin/b3-propagation>): the multi-header
//! form (`X-B3-*`) and the single header `b3`.

use super::{
    all_zeros, ascii_string, hex_class, pad32, Extraction, FormatHeaders, Hex, TraceContext,
    TraceFormat, Value,
};

pub(super) const X_B3_TRACEID: &str = "x-b3-traceid";
pub(super) const X_B3_SPANID: &str = "x-b3-spanid";
pub(super) const X_B3_PARENTSPANID: &str = "x-b3-parentspanid";
pub(super) const X_B3_SAMPLED: &str = "x-b3-sampled";
pub(super) const X_B3_FLAGS: &str = "x-b3-flags";
pub(super) const B3: &str = "b3";

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
pub(super) fn extract_multi(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    let f = TraceFormat::B3;
    let span_id = h.one(X_B3_SPANID);
    let parent_span_id = h.one(X_B3_PARENTSPANID);
    // X-B3-Sampled: the spec says "1" or "0". Older instrumentation sent "true"/"false" and
    // Zipkin's own parsers (Brave) accept them, so they are treated as valid here (lenient).
    let sampled = match h.one(X_B3_SAMPLED) {
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
    let debug = match h.one(X_B3_FLAGS) {
        Value::One(b"1") => true,
        Value::Repeated => {
            out.bad(f, X_B3_FLAGS, "repeated header");
            false
        }
        _ => false,
    };
    let trace_id = match h.one(X_B3_TRACEID) {
        Value::Absent => {
            if span_id.is_present() || parent_span_id.is_present() {
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
    let span_id = match span_id {
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
    match parent_span_id {
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
        header: X_B3_TRACEID.into(),
        trace_id: ascii_string(trace_id),
        normalized: pad32(trace_id),
        span_id: Some(ascii_string(span_id)),
        sampled: if debug { Some(true) } else { sampled },
    });
}

/// Single header `b3: {TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`, the last two optional.
/// "b3: 0" (deny), and likewise "1"/"d" alone, is a sampling decision only (B3 README,
/// "Single Header").
pub(super) fn extract_single(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    let f = TraceFormat::B3Single;
    match h.one(B3) {
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
        header: B3.into(),
        trace_id: ascii_string(trace_id),
        normalized: pad32(trace_id),
        span_id: Some(ascii_string(span_id)),
        sampled,
    })
}

#[cfg(test)]
mod tests {
    use crate::tracectx::test_support::{
        assert_bad, ctx, ex, one, reasons, B3_PID, B3_SID, B3_SINGLE, B3_TID,
    };
    use crate::tracectx::{TraceContext, TraceFormat};

    // ------------------------------------------------------------------------------------------
    // B3 multi
    // ------------------------------------------------------------------------------------------

    #[test]
    fn b3_multi_official_example() {
        let e = ex(&[
            ("X-B3-TraceId", B3_TID),
            ("X-B3-SpanId", B3_SID),
            ("X-B3-ParentSpanId", B3_PID),
            ("X-B3-Sampled", "1"),
        ]);
        assert_eq!(
            ctx(&e),
            &TraceContext {
                format: TraceFormat::B3,
                header: "x-b3-traceid".into(),
                trace_id: B3_TID.into(),
                normalized: B3_TID.into(),
                span_id: Some(B3_SID.into()),
                sampled: Some(true),
            }
        );
    }

    #[test]
    fn b3_multi_64bit_is_left_padded() {
        let e = ex(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", B3_SID),
        ]);
        let c = ctx(&e);
        assert_eq!(c.trace_id, "a3ce929d0e0e4736");
        assert_eq!(c.normalized, "0000000000000000a3ce929d0e0e4736");
        assert_eq!(c.sampled, None);
        assert!(c.is_64bit());
    }

    #[test]
    fn b3_multi_15_hex_digits() {
        let e = ex(&[("x-b3-traceid", "a3ce929d0e0e473"), ("x-b3-spanid", B3_SID)]);
        assert_bad(&e, "x-b3-traceid: 15 hex digits (needs 16 or 32)");
    }

    #[test]
    fn b3_multi_uppercase_zero_and_not_hex() {
        let e = ex(&[
            ("x-b3-traceid", "A3CE929D0E0E4736"),
            ("x-b3-spanid", B3_SID),
        ]);
        assert_bad(&e, "x-b3-traceid: uppercase hex");
        let e = ex(&[
            ("x-b3-traceid", "0000000000000000"),
            ("x-b3-spanid", B3_SID),
        ]);
        assert_bad(&e, "x-b3-traceid: trace id is all zeros");
        let e = ex(&[
            ("x-b3-traceid", "a3ce929d0e0e473x"),
            ("x-b3-spanid", B3_SID),
        ]);
        assert_bad(&e, "x-b3-traceid: not hex");
        let e = ex(&[("x-b3-traceid", ""), ("x-b3-spanid", B3_SID)]);
        assert_bad(&e, "x-b3-traceid: empty");
        let e = ex(&[
            ("x-b3-traceid", B3_TID),
            ("x-b3-spanid", "E457B5A2E4D86BD1"),
        ]);
        assert_bad(&e, "x-b3-spanid: uppercase hex");
        let e = ex(&[
            ("x-b3-traceid", B3_TID),
            ("x-b3-spanid", "0000000000000000"),
        ]);
        assert_bad(&e, "x-b3-spanid: span id is all zeros");
        let e = ex(&[("x-b3-traceid", B3_TID), ("x-b3-spanid", &B3_TID[..20])]);
        assert_bad(&e, "x-b3-spanid: 20 hex digits (needs 16)");
    }

    #[test]
    fn b3_multi_span_missing() {
        assert_bad(&one("x-b3-traceid", B3_TID), "x-b3-spanid: missing");
    }

    #[test]
    fn b3_multi_span_without_trace_id() {
        assert_bad(
            &one("x-b3-spanid", B3_SID),
            "x-b3-traceid: missing (span id present)",
        );
    }

    #[test]
    fn b3_sampling_decision_alone_is_nothing() {
        assert!(one("X-B3-Sampled", "0").is_empty());
        assert!(one("X-B3-Sampled", "1").is_empty());
        assert!(one("X-B3-Flags", "1").is_empty());
        assert!(ex(&[("x-b3-sampled", "1"), ("x-b3-flags", "1")]).is_empty());
    }

    #[test]
    fn b3_multi_sampled_values() {
        let with = |s: &str| {
            ex(&[
                ("x-b3-traceid", B3_TID),
                ("x-b3-spanid", B3_SID),
                ("x-b3-sampled", s),
            ])
        };
        assert_eq!(ctx(&with("1")).sampled, Some(true));
        assert_eq!(ctx(&with("0")).sampled, Some(false));
        // Lenient: legacy true/false.
        assert_eq!(ctx(&with("true")).sampled, Some(true));
        assert_eq!(ctx(&with("false")).sampled, Some(false));
        // Invalid sampled: reported, but the context stays (sampled unknown).
        let e = with("yes");
        assert_eq!(reasons(&e), ["x-b3-sampled: must be 0 or 1"]);
        assert_eq!(e.contexts.len(), 1);
        assert_eq!(e.contexts[0].sampled, None);
        // Debug flag implies sampled.
        let e = ex(&[
            ("x-b3-traceid", B3_TID),
            ("x-b3-spanid", B3_SID),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(ctx(&e).sampled, Some(true));
        // Other flag values are ignored.
        let e = ex(&[
            ("x-b3-traceid", B3_TID),
            ("x-b3-spanid", B3_SID),
            ("x-b3-flags", "0"),
        ]);
        assert_eq!(ctx(&e).sampled, None);
    }

    #[test]
    fn b3_multi_bad_parent_keeps_context() {
        let e = ex(&[
            ("x-b3-traceid", B3_TID),
            ("x-b3-spanid", B3_SID),
            ("x-b3-parentspanid", "xyz"),
        ]);
        assert_eq!(reasons(&e), ["x-b3-parentspanid: not hex"]);
        assert_eq!(e.contexts.len(), 1);
    }

    // ------------------------------------------------------------------------------------------
    // B3 single
    // ------------------------------------------------------------------------------------------

    #[test]
    fn b3_single_official_example() {
        let e = one("b3", B3_SINGLE);
        assert_eq!(
            ctx(&e),
            &TraceContext {
                format: TraceFormat::B3Single,
                header: "b3".into(),
                trace_id: B3_TID.into(),
                normalized: B3_TID.into(),
                span_id: Some(B3_SID.into()),
                sampled: Some(true),
            }
        );
    }

    #[test]
    fn b3_single_short_forms() {
        let c = ctx(&one("b3", "a3ce929d0e0e4736-e457b5a2e4d86bd1")).clone();
        assert_eq!(
            (c.normalized.as_str(), c.sampled),
            ("0000000000000000a3ce929d0e0e4736", None)
        );
        assert_eq!(
            ctx(&one("b3", &format!("{B3_TID}-{B3_SID}-d"))).sampled,
            Some(true)
        );
        assert_eq!(
            ctx(&one("b3", &format!("{B3_TID}-{B3_SID}-0"))).sampled,
            Some(false)
        );
    }

    #[test]
    fn b3_single_sampling_only() {
        for v in ["0", "1", "d", " 0 "] {
            assert!(one("b3", v).is_empty(), "{v}");
        }
    }

    #[test]
    fn b3_single_bad() {
        assert_bad(
            &one("b3", &format!("{B3_TID}-{B3_SID}-x")),
            "b3: sampling state must be 0, 1 or d",
        );
        assert_bad(
            &one("b3", &format!("{B3_TID}-{B3_SID}-1-{B3_PID}-1")),
            "b3: 5 fields (max 4)",
        );
        assert_bad(&one("b3", "abc"), "b3: needs {TraceId}-{SpanId}");
        assert_bad(&one("b3", ""), "b3: empty");
        assert_bad(
            &one("b3", &format!("{}-{B3_SID}", &B3_TID[..15])),
            "b3: trace id: 15 hex digits (needs 16 or 32)",
        );
        assert_bad(&one("b3", &format!("{B3_TID}-")), "b3: span id: empty");
        assert_bad(
            &one("b3", &format!("{B3_TID}-{B3_SID}-1-xyz")),
            "b3: parent span id: not hex",
        );
        assert_bad(
            &one("b3", &format!("{}-{B3_SID}", B3_TID.to_uppercase())),
            "b3: trace id: uppercase hex",
        );
    }
}
