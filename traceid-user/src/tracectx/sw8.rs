//! Apache SkyWalking cross-process propagation header `sw8`
//! (<https://skywalking.apache.org/docs/main/latest/en/api/x-process-propagation-headers-v3/>):
//! `sample-traceId-segmentId-spanId-parentService-parentServiceInstance-parentEndpoint-addressUsedAtClient`
//! with every string field base64-encoded (standard alphabet, which has no '-').
//!
//! The trace id is an opaque string (not hex): both `trace_id` and `normalized` are the decoded
//! trace id, and sw8 is never compared with the hex formats.

use super::{ascii_string, parse_u64, Extraction, FormatHeaders, TraceContext, TraceFormat};

pub(super) const SW8: &str = "sw8";

/// A decoded trace id longer than this is rejected (SkyWalking ids are ~50 chars).
const MAX_TRACE_ID: usize = 256;

pub(super) fn extract(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    out.single_header(TraceFormat::Sw8, SW8, h.one(SW8), parse);
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
        header: SW8.into(),
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
/// (Hand-written to keep the module free of extra dependencies; `grpc_bin` uses it too.)
pub(super) fn b64_decode(input: &[u8], mut sink: impl FnMut(u8)) -> bool {
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
mod tests {
    use super::b64_decode;
    use crate::tracectx::test_support::{assert_bad, ctx, one, SW8_EX};
    use crate::tracectx::{TraceContext, TraceFormat};

    // ------------------------------------------------------------------------------------------
    // SkyWalking sw8
    // ------------------------------------------------------------------------------------------

    #[test]
    fn sw8_example() {
        let e = one("sw8", SW8_EX);
        assert_eq!(
            ctx(&e),
            &TraceContext {
                format: TraceFormat::Sw8,
                header: "sw8".into(),
                trace_id: "1f2d4bf47bf711eab794acde48001122".into(),
                normalized: "1f2d4bf47bf711eab794acde48001122".into(),
                span_id: Some("0".into()),
                sampled: Some(true),
            }
        );
    }

    #[test]
    fn sw8_bad_base64() {
        let v = SW8_EX.replace("MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=", "MWYy!DRi");
        assert_bad(&one("sw8", &v), "sw8: traceId is not valid base64");
        let v = SW8_EX.replace("MWU3YzIwNGE3YmY3MTFlYWI4NThhY2RlNDgwMDExMjI=", "M");
        assert_bad(&one("sw8", &v), "sw8: segmentId is not valid base64");
        let v = SW8_EX.replace("L2FwcA==", "L2FwcA=");
        assert_bad(&one("sw8", &v), "sw8: parentEndpoint is not valid base64");
    }

    #[test]
    fn sw8_other_errors() {
        // "\0abc" is not printable.
        let v = SW8_EX.replace("MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=", "AGFiYw==");
        assert_bad(&one("sw8", &v), "sw8: traceId is not printable ASCII");
        let v = SW8_EX.replace("MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=", "");
        assert_bad(&one("sw8", &v), "sw8: traceId is empty");
        assert_bad(
            &one("sw8", &format!("2{}", &SW8_EX[1..])),
            "sw8: sample flag must be 0 or 1",
        );
        assert_bad(&one("sw8", "1-abc"), "sw8: 2 fields (needs 8)");
        let v = SW8_EX.replace("=-0-c2", "=-x-c2");
        assert_bad(&one("sw8", &v), "sw8: spanId is not a non-negative integer");
        let v = format!("0{}", &SW8_EX[1..]);
        assert_eq!(ctx(&one("sw8", &v)).sampled, Some(false));
    }

    // ------------------------------------------------------------------------------------------
    // base64
    // ------------------------------------------------------------------------------------------

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
