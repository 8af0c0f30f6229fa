//! Jaeger native propagation, `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`
//! (<https://www.jaegertracing.io/docs/latest/client-libraries/#tracespan-identity>).

use super::{
    all_zeros, hex_class, lower_string, pad32, Extraction, Hex, TraceContext, TraceFormat, Value,
    UBER_TRACE_ID,
};

pub(super) fn extract(v: Value<'_>, out: &mut Extraction) {
    let f = TraceFormat::Jaeger;
    match v {
        Value::Absent => {}
        Value::Repeated => out.bad(f, UBER_TRACE_ID, "repeated header"),
        Value::One(s) => match parse(s) {
            Ok(ctx) => out.contexts.push(ctx),
            Err(d) => out.bad(f, UBER_TRACE_ID, d),
        },
    }
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
        header: UBER_TRACE_ID.to_string(),
        trace_id: lower_string(trace_id),
        normalized: pad32(trace_id),
        span_id: Some(lower_string(span_id)),
        sampled,
    })
}
