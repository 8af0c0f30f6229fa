//! gRPC's binary trace context `grpc-trace-bin` (the OpenCensus binary format,
//! <https://github.com/census-instrumentation/opencensus-specs/blob/master/encodings/BinaryEncoding.md>):
//! version 0, then field 0 with the 16-byte trace id, optionally field 1 with the 8-byte span
//! id and field 2 with the one-byte trace options (bit 0: sampled). Binary gRPC metadata
//! travels base64-encoded, padded or not.

use super::{sw8::b64_decode, Extraction, FormatHeaders, TraceContext, TraceFormat};

pub(super) const GRPC_TRACE_BIN: &str = "grpc-trace-bin";

/// Bytes decoded at most: a version-0 context is 29; later bytes are ignored anyway.
const MAX_DECODED: usize = 64;

pub(super) fn extract(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    out.single_header(
        TraceFormat::GrpcBin,
        GRPC_TRACE_BIN,
        h.one(GRPC_TRACE_BIN),
        parse,
    );
}

fn parse(s: &[u8]) -> Result<TraceContext, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let mut bytes = Vec::with_capacity(32);
    let valid = b64_decode(s, |b| {
        if bytes.len() < MAX_DECODED {
            bytes.push(b);
        }
    });
    if !valid {
        return Err("not valid base64".into());
    }
    let (&version, mut rest) = bytes.split_first().ok_or("no version byte")?;
    if version != 0 {
        return Err(format!("version {version} is not supported"));
    }
    // Fields come in id order; each optional field is read only when present.
    let trace_id = match rest.split_first() {
        Some((0, tail)) => {
            let id = tail.get(..16).ok_or("trace id field cut short")?;
            rest = tail.get(16..).unwrap_or_default();
            id
        }
        _ => return Err("no trace id field".into()),
    };
    if trace_id.iter().all(|&b| b == 0) {
        return Err("trace id is all zeros".into());
    }
    let mut span_id = None;
    if let Some((1, tail)) = rest.split_first() {
        let id = tail.get(..8).ok_or("span id field cut short")?;
        if id.iter().all(|&b| b == 0) {
            return Err("span id is all zeros".into());
        }
        span_id = Some(hex(id));
        rest = tail.get(8..).unwrap_or_default();
    }
    let sampled = match rest.split_first() {
        Some((2, tail)) => Some(tail.first().ok_or("options field cut short")? & 1 == 1),
        _ => None,
    };
    let id = hex(trace_id);
    Ok(TraceContext {
        format: TraceFormat::GrpcBin,
        header: GRPC_TRACE_BIN.into(),
        normalized: id.clone(),
        trace_id: id,
        span_id,
        sampled,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use crate::tracectx::test_support::{assert_bad, ctx, ex, one, GRPC_BIN, TP};
    use crate::tracectx::TraceFormat;

    #[test]
    fn grpc_bin_full_context() {
        let e = one("grpc-trace-bin", GRPC_BIN);
        let c = ctx(&e);
        assert_eq!(
            (
                c.format,
                c.trace_id.as_str(),
                c.span_id.as_deref(),
                c.sampled
            ),
            (
                TraceFormat::GrpcBin,
                "4bf92f3577b34da6a3ce929d0e0e4736",
                Some("00f067aa0ba902b7"),
                Some(true)
            )
        );
        // The same trace as a traceparent: consistent.
        let e = ex(&[("traceparent", TP), ("grpc-trace-bin", GRPC_BIN)]);
        assert_eq!(e.inconsistent(), None);
        assert_eq!(e.contexts.len(), 2);
    }

    #[test]
    fn grpc_bin_optional_fields_and_padding() {
        // Trace id only, unpadded (gRPC accepts both).
        let c = ctx(&one("grpc-trace-bin", "AABL+S81d7NNpqPOkp0ODkc2")).clone();
        assert_eq!((c.span_id, c.sampled), (None, None));
        let unpadded = GRPC_BIN.trim_end_matches('=');
        assert_eq!(ctx(&one("grpc-trace-bin", unpadded)).sampled, Some(true));
    }

    #[test]
    fn grpc_bin_bad() {
        for (value, reason) in [
            ("", "empty"),
            ("AAB*", "not valid base64"),
            ("AQBL+S81d7NNpqPOkp0ODkc2", "version 1 is not supported"),
            ("AAEA8GeqC6kCtw==", "no trace id field"),
            ("AABL+S81d7NNpqPOkp0ODkc=", "trace id field cut short"),
            (
                "AAAAAAAAAAAAAAAAAAAAAAAAAQDwZ6oLqQK3",
                "trace id is all zeros",
            ),
        ] {
            assert_bad(
                &one("grpc-trace-bin", value),
                &format!("grpc-trace-bin: {reason}"),
            );
        }
    }
}
