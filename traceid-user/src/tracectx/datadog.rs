//! Datadog propagation: `x-datadog-trace-id` (unsigned 64-bit decimal), `x-datadog-parent-id`,
//! `x-datadog-sampling-priority` (<https://docs.datadoghq.com/tracing/trace_collection/trace_context_propagation/>).

use super::{
    ascii_string, parse_u64, DecErr, Extraction, FormatHeaders, TraceContext, TraceFormat, Value,
};

pub(super) const X_DATADOG_TRACE_ID: &str = "x-datadog-trace-id";
pub(super) const X_DATADOG_PARENT_ID: &str = "x-datadog-parent-id";
pub(super) const X_DATADOG_SAMPLING_PRIORITY: &str = "x-datadog-sampling-priority";

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
pub(super) fn extract(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    let f = TraceFormat::Datadog;
    let parent = h.one(X_DATADOG_PARENT_ID);
    let sampled = match h.one(X_DATADOG_SAMPLING_PRIORITY) {
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
    let (t, id) = match h.one(X_DATADOG_TRACE_ID) {
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
        header: X_DATADOG_TRACE_ID.into(),
        // The decimal as carried; the comparison key is the 64-bit value as padded hex.
        trace_id: ascii_string(t),
        normalized: format!("{id:032x}"),
        span_id,
        sampled,
    });
}

#[cfg(test)]
mod tests {
    use crate::tracectx::test_support::{assert_bad, ctx, ex, one, reasons, DD_A3CE};
    use crate::tracectx::{TraceContext, TraceFormat};

    // ------------------------------------------------------------------------------------------
    // Datadog
    // ------------------------------------------------------------------------------------------

    #[test]
    fn datadog_decimal() {
        let e = ex(&[
            ("x-datadog-trace-id", DD_A3CE),
            ("x-datadog-parent-id", "5208512171318403364"),
            ("x-datadog-sampling-priority", "1"),
        ]);
        assert_eq!(
            ctx(&e),
            &TraceContext {
                format: TraceFormat::Datadog,
                header: "x-datadog-trace-id".into(),
                trace_id: DD_A3CE.into(),
                normalized: "0000000000000000a3ce929d0e0e4736".into(),
                span_id: Some("5208512171318403364".into()),
                sampled: Some(true),
            }
        );
    }

    #[test]
    fn datadog_priorities_and_limits() {
        let prio = |p: &str| {
            ctx(&ex(&[
                ("x-datadog-trace-id", "1"),
                ("x-datadog-sampling-priority", p),
            ]))
            .sampled
        };
        assert_eq!(prio("2"), Some(true));
        assert_eq!(prio("0"), Some(false));
        assert_eq!(prio("-1"), Some(false));
        let c = ctx(&one("x-datadog-trace-id", "18446744073709551615")).clone();
        assert_eq!(c.normalized, "0000000000000000ffffffffffffffff");
        assert_eq!(
            ctx(&one("x-datadog-trace-id", "0001")).normalized,
            "00000000000000000000000000000001"
        );
        // Priority alone: a sampling decision only.
        assert!(one("x-datadog-sampling-priority", "1").is_empty());
    }

    #[test]
    fn datadog_overflow() {
        assert_bad(
            &one("x-datadog-trace-id", "18446744073709551616"),
            "x-datadog-trace-id: overflows 64 bits",
        );
        assert_bad(
            &one("x-datadog-trace-id", &"9".repeat(100)),
            "x-datadog-trace-id: overflows 64 bits",
        );
    }

    #[test]
    fn datadog_bad_values() {
        assert_bad(
            &one("x-datadog-trace-id", "0"),
            "x-datadog-trace-id: is zero",
        );
        assert_bad(
            &one("x-datadog-trace-id", "12a"),
            "x-datadog-trace-id: not an unsigned decimal",
        );
        assert_bad(
            &one("x-datadog-trace-id", "-12"),
            "x-datadog-trace-id: not an unsigned decimal",
        );
        assert_bad(&one("x-datadog-trace-id", ""), "x-datadog-trace-id: empty");
        assert_bad(
            &one("x-datadog-parent-id", "12"),
            "x-datadog-trace-id: missing (parent id present)",
        );
        // Bad optional headers are reported, the context stays.
        let e = ex(&[
            ("x-datadog-trace-id", "12"),
            ("x-datadog-parent-id", "x"),
            ("x-datadog-sampling-priority", "high"),
        ]);
        assert_eq!(
            reasons(&e),
            [
                "x-datadog-sampling-priority: not an integer",
                "x-datadog-parent-id: not an unsigned decimal"
            ]
        );
        assert_eq!(e.contexts.len(), 1);
        assert_eq!(
            (e.contexts[0].span_id.clone(), e.contexts[0].sampled),
            (None, None)
        );
    }
}
