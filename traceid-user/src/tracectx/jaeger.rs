//! Jaeger native propagation, `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`
//! (<https://www.jaegertracing.io/docs/latest/client-libraries/#tracespan-identity>).

use super::{
    all_zeros, hex_class, lower_string, pad32, Extraction, FormatHeaders, Hex, TraceContext,
    TraceFormat,
};

pub(super) const UBER_TRACE_ID: &str = "uber-trace-id";

pub(super) fn extract(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    out.single_header(
        TraceFormat::Jaeger,
        UBER_TRACE_ID,
        h.one(UBER_TRACE_ID),
        parse,
    );
}

/// Splits on ':' or its URL encoding "%3A"/"%3a" (Jaeger clients may URL-encode the value).
/// Any other '%' is an error (the value only carries hex digits and colons).
fn split_fields(s: &[u8]) -> Result<[&[u8]; 4], String> {
    let mut fields: [&[u8]; 4] = [&[]; 4];
    let mut n = 0usize;
    let mut start = 0usize;
    let mut i = 0usize;
    while let Some(&b) = s.get(i) {
        let sep = match b {
            b':' => 1,
            b'%' => match s.get(i + 1..i + 3) {
                Some(b"3A") | Some(b"3a") => 3,
                _ => return Err("bad percent-encoding".into()),
            },
            _ => 0,
        };
        if sep == 0 {
            i += 1;
            continue;
        }
        if let Some(slot) = fields.get_mut(n) {
            *slot = s.get(start..i).unwrap_or_default();
        }
        n += 1;
        i += sep;
        start = i;
    }
    if let Some(slot) = fields.get_mut(n) {
        *slot = s.get(start..).unwrap_or_default();
    }
    n += 1;
    if n != 4 {
        return Err(format!(
            "{n} fields (needs trace-id:span-id:parent-span-id:flags)"
        ));
    }
    Ok(fields)
}

/// Hex of 1..=max digits. Jaeger ids are written lowercase but parsed case-insensitively by
/// the clients (e.g. Go's strconv.ParseUint(s, 16, 64)), so uppercase is accepted and lowercased.
fn hex_up_to(v: &[u8], max: usize) -> bool {
    v.len() <= max && hex_class(v) != Hex::Invalid
}

fn parse(s: &[u8]) -> Result<TraceContext, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let [trace_id, span_id, parent, flags] = split_fields(s)?;
    // trace-id: 64 or 128 bit, hex, "leading zeros may be omitted"; 0 is invalid.
    if !hex_up_to(trace_id, 32) {
        return Err("trace id is not 1-32 hex digits".into());
    }
    if all_zeros(trace_id) {
        return Err("trace id is zero".into());
    }
    // span-id: 64 bit hex; 0 is invalid.
    if !hex_up_to(span_id, 16) {
        return Err("span id is not 1-16 hex digits".into());
    }
    if all_zeros(span_id) {
        return Err("span id is zero".into());
    }
    // parent-span-id: deprecated, "0" allowed (root span).
    if !hex_up_to(parent, 16) {
        return Err("parent span id is not 1-16 hex digits".into());
    }
    // flags: one byte, written in hex by some clients and decimal by others. Bit 0 (value 1) is
    // `sampled`; its value is the parity of the last digit in either base (10 and 16 are even),
    // so 1..=3 digits are accepted without deciding the base.
    if flags.is_empty() || flags.len() > 3 || hex_class(flags) == Hex::Invalid {
        return Err("flags is not a small integer".into());
    }
    let sampled = flags.last().map(|&b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            _ => (b | 0x20).wrapping_sub(b'a').wrapping_add(10),
        };
        d & 1 == 1
    });
    Ok(TraceContext {
        format: TraceFormat::Jaeger,
        header: UBER_TRACE_ID.into(),
        trace_id: lower_string(trace_id),
        normalized: pad32(trace_id),
        span_id: Some(lower_string(span_id)),
        sampled,
    })
}

#[cfg(test)]
mod tests {
    use crate::tracectx::test_support::{assert_bad, ctx, one, B3_TID};
    use crate::tracectx::{TraceContext, TraceFormat};

    // ------------------------------------------------------------------------------------------
    // Jaeger
    // ------------------------------------------------------------------------------------------

    #[test]
    fn jaeger_valid() {
        let e = one(
            "uber-trace-id",
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
        );
        assert_eq!(
            ctx(&e),
            &TraceContext {
                format: TraceFormat::Jaeger,
                header: "uber-trace-id".into(),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                normalized: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: Some("00f067aa0ba902b7".into()),
                sampled: Some(true),
            }
        );
    }

    #[test]
    fn jaeger_url_encoded_short_and_uppercase() {
        let e = one(
            "Uber-Trace-Id",
            "a3ce929d0e0e4736%3Ae457b5a2e4d86bd1%3a0%3A0",
        );
        let c = ctx(&e);
        assert_eq!(c.normalized, "0000000000000000a3ce929d0e0e4736");
        assert_eq!(c.sampled, Some(false));
        // Leading zeros omitted.
        let c = ctx(&one("uber-trace-id", "abc:1:0:3")).clone();
        assert_eq!(
            (c.trace_id.as_str(), c.normalized.as_str()),
            ("abc", "00000000000000000000000000000abc")
        );
        assert_eq!(c.sampled, Some(true));
        // Uppercase accepted, lowercased.
        let c = ctx(&one("uber-trace-id", "ABC:DEF:0:1")).clone();
        assert_eq!(
            (c.trace_id.as_str(), c.span_id.as_deref()),
            ("abc", Some("def"))
        );
    }

    #[test]
    fn jaeger_flags_parity() {
        for (flags, sampled) in [
            ("0", false),
            ("1", true),
            ("2", false),
            ("3", true),
            ("10", false),
            ("11", true),
            ("1f", true),
            ("255", true),
        ] {
            assert_eq!(
                ctx(&one("uber-trace-id", &format!("abc:def:0:{flags}"))).sampled,
                Some(sampled),
                "{flags}"
            );
        }
        assert_bad(
            &one("uber-trace-id", "abc:def:0:1000"),
            "uber-trace-id: flags is not a small integer",
        );
        assert_bad(
            &one("uber-trace-id", "abc:def:0:"),
            "uber-trace-id: flags is not a small integer",
        );
    }

    #[test]
    fn jaeger_zero_ids() {
        assert_bad(
            &one("uber-trace-id", "0:00f067aa0ba902b7:0:1"),
            "uber-trace-id: trace id is zero",
        );
        assert_bad(
            &one("uber-trace-id", "00000000000000000000000000000000:1:0:1"),
            "uber-trace-id: trace id is zero",
        );
        assert_bad(
            &one("uber-trace-id", "abc:0000:0:1"),
            "uber-trace-id: span id is zero",
        );
    }

    #[test]
    fn jaeger_bad_layout() {
        assert_bad(
            &one("uber-trace-id", "abc:def:1"),
            "uber-trace-id: 3 fields (needs trace-id:span-id:parent-span-id:flags)",
        );
        assert_bad(
            &one("uber-trace-id", "abc:def:0:1:2"),
            "uber-trace-id: 5 fields (needs trace-id:span-id:parent-span-id:flags)",
        );
        assert_bad(
            &one("uber-trace-id", "abc%3Bdef:0:1"),
            "uber-trace-id: bad percent-encoding",
        );
        assert_bad(
            &one("uber-trace-id", "abc:def:0:1%"),
            "uber-trace-id: bad percent-encoding",
        );
        assert_bad(
            &one("uber-trace-id", &format!("{B3_TID}0:def:0:1")),
            "uber-trace-id: trace id is not 1-32 hex digits",
        );
        assert_bad(
            &one("uber-trace-id", "abc:00f067aa0ba902b70:0:1"),
            "uber-trace-id: span id is not 1-16 hex digits",
        );
        assert_bad(
            &one("uber-trace-id", "abc:def::1"),
            "uber-trace-id: parent span id is not 1-16 hex digits",
        );
        assert_bad(&one("uber-trace-id", ""), "uber-trace-id: empty");
    }
}
