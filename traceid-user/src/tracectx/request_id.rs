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
            header: name.to_string().into(),
            trace_id: value.clone(),
            normalized: value,
            span_id: None,
            sampled: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::tracectx::test_support::{assert_bad, ctx, ex, one};
    use crate::tracectx::{extract, HeaderNames, TraceFormat};

    // ------------------------------------------------------------------------------------------
    // Request ids
    // ------------------------------------------------------------------------------------------

    #[test]
    fn request_id_valid() {
        for name in ["x-request-id", "X-Trace-Id", "trace-id", "X-CORRELATION-ID"] {
            let e = one(name, " 9f1c2d3e-AbCd-4e5f ");
            let c = ctx(&e);
            assert_eq!(c.format, TraceFormat::RequestId);
            assert_eq!(c.header, name.to_ascii_lowercase());
            assert_eq!(c.trace_id, "9f1c2d3e-AbCd-4e5f", "case is kept");
            assert_eq!(c.normalized, "9f1c2d3e-AbCd-4e5f");
            assert_eq!((c.span_id.clone(), c.sampled), (None, None));
        }
        assert!(one("x-request-id", &"a".repeat(200)).malformed.is_empty());
    }

    #[test]
    fn request_id_empty() {
        assert_bad(&one("x-request-id", ""), "x-request-id: empty");
        assert_bad(&one("x-request-id", " \t "), "x-request-id: empty");
    }

    #[test]
    fn request_id_too_long() {
        assert_bad(
            &one("x-correlation-id", &"a".repeat(201)),
            "x-correlation-id: too long (201 bytes)",
        );
    }

    #[test]
    fn request_id_non_printable() {
        assert_bad(
            &one("x-request-id", "abc\u{1}def"),
            "x-request-id: non-printable character",
        );
        assert_bad(
            &one("x-request-id", "abc def"),
            "x-request-id: non-printable character",
        );
        assert_bad(
            &one("x-request-id", "caf\u{e9}"),
            "x-request-id: non-printable character",
        );
        let e = extract([("x-request-id", &b"ab\0cd"[..])], &HeaderNames::default());
        assert_bad(&e, "x-request-id: non-printable character");
    }

    #[test]
    fn request_id_repeated_header() {
        let e = ex(&[("x-request-id", "a"), ("X-Request-Id", "b")]);
        assert_bad(&e, "x-request-id: repeated header");
        assert_eq!(
            ctx(&ex(&[("x-request-id", "a"), ("x-request-id", "a")])).trace_id,
            "a"
        );
    }
}
