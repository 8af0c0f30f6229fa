//! Apache SkyWalking cross-process propagation header `sw8`
//! (<https://skywalking.apache.org/docs/main/latest/en/api/x-process-propagation-headers-v3/>):
//! `sample-traceId-segmentId-spanId-parentService-parentServiceInstance-parentEndpoint-addressUsedAtClient`
//! with every string field base64-encoded (standard alphabet, which has no '-').
//!
//! The trace id is an opaque string (not hex): both `trace_id` and `normalized` are the decoded
//! trace id, and sw8 is never compared with the hex formats.

use super::{ascii_string, parse_u64, Extraction, TraceContext, TraceFormat, Value, SW8};

/// A decoded trace id longer than this is rejected (SkyWalking ids are ~50 chars).
const MAX_TRACE_ID: usize = 256;

pub(super) fn extract(v: Value<'_>, out: &mut Extraction) {
    let f = TraceFormat::Sw8;
    match v {
        Value::Absent => {}
        Value::Repeated => out.bad(f, SW8, "repeated header"),
        Value::One(s) => match parse(s) {
            Ok(ctx) => out.contexts.push(ctx),
            Err(d) => out.bad(f, SW8, d),
        },
    }
}

fn parse(s: &[u8]) -> Result<TraceContext, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let n = s.split(|&b| b == b'-').count();
    if n != 8 {
        return Err(format!("{n} fields (needs 8)"));
    }
    let mut f: [&[u8]; 8] = [&[]; 8];
    for (slot, field) in f.iter_mut().zip(s.split(|&b| b == b'-')) {
        *slot = field;
    }
    let [sample, trace_id, segment_id, span_id, service, instance, endpoint, address] = f;
    let sampled = match sample {
        b"1" => true,
        b"0" => false,
        _ => return Err("sample flag must be 0 or 1".into()),
    };
    if trace_id.len() > MAX_TRACE_ID * 4 / 3 + 4 {
        return Err("traceId too long".into());
    }
    let mut decoded = Vec::with_capacity(trace_id.len() * 3 / 4 + 2);
    if !b64_decode(trace_id, |b| decoded.push(b)) {
        return Err("traceId is not valid base64".into());
    }
    if decoded.is_empty() {
        return Err("traceId is empty".into());
    }
    if !decoded.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("traceId is not printable ASCII".into());
    }
    if segment_id.is_empty() || !b64_decode(segment_id, |_| {}) {
        return Err("segmentId is not valid base64".into());
    }
    if span_id.len() > 10 || parse_u64(span_id).map_or(true, |v| v > u64::from(u32::MAX)) {
        return Err("spanId is not a non-negative integer".into());
    }
    for (field, name) in [
        (service, "parentService"),
        (instance, "parentServiceInstance"),
        (endpoint, "parentEndpoint"),
        (address, "addressUsedAtClient"),
    ] {
        if !b64_decode(field, |_| {}) {
            return Err(format!("{name} is not valid base64"));
        }
    }
    let tid = ascii_string(&decoded);
    Ok(TraceContext {
        format: TraceFormat::Sw8,
        header: SW8.to_string(),
        normalized: tid.clone(),
        trace_id: tid,
        span_id: Some(ascii_string(span_id)),
        sampled: Some(sampled),
    })
}

fn b64_val(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Standard base64 (RFC 4648 §4). Padding is optional but, when present, must complete the last
/// quantum. Calls `sink` for every decoded byte; false when the input is not valid base64.
/// (Hand-written to keep the module free of extra dependencies.)
fn b64_decode(input: &[u8], mut sink: impl FnMut(u8)) -> bool {
    let mut data = input;
    let mut pad = 0usize;
    while pad < 2 {
        match data.split_last() {
            Some((b'=', rest)) => {
                data = rest;
                pad += 1;
            }
            _ => break,
        }
    }
    if pad > 0 && (data.len() + pad) & 3 != 0 {
        return false;
    }
    if data.len() & 3 == 1 {
        return false;
    }
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for &c in data {
        let Some(v) = b64_val(c) else {
            return false;
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            sink((acc >> bits) as u8);
            acc &= (1u32 << bits) - 1;
        }
    }
    true
}

#[cfg(test)]
mod b64_tests {
    use super::b64_decode;

    fn dec(s: &str) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        b64_decode(s.as_bytes(), |b| v.push(b)).then_some(v)
    }

    #[test]
    fn decodes_rfc4648_vectors() {
        for (enc, plain) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zg", "f"),
            ("Zm8", "fo"),
        ] {
            assert_eq!(dec(enc).as_deref(), Some(plain.as_bytes()), "{enc}");
        }
    }

    #[test]
    fn rejects_bad_base64() {
        for bad in [
            "Z", "Zg=", "Zg===", "Zm9v=", "Z=g=", "Zm9v!", "Zm 9v", "Zm-9",
        ] {
            assert_eq!(dec(bad), None, "{bad}");
        }
    }
}
