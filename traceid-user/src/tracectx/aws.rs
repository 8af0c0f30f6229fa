//! AWS X-Ray `X-Amzn-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`
//! (<https://docs.aws.amazon.com/xray/latest/devguide/xray-concepts.html#xray-concepts-tracingheader>).

use super::{
    all_zeros, ascii_string, hex_class, trim_ows, Extraction, Hex, TraceContext, TraceFormat,
    Value, X_AMZN_TRACE_ID,
};

pub(super) fn extract(v: Value<'_>, out: &mut Extraction) {
    let f = TraceFormat::Aws;
    match v {
        Value::Absent => {}
        Value::Repeated => out.bad(f, X_AMZN_TRACE_ID, "repeated header"),
        Value::One(s) => match parse(s) {
            Ok(ctx) => out.contexts.push(ctx),
            Err(d) => out.bad(f, X_AMZN_TRACE_ID, d),
        },
    }
}

fn parse(s: &[u8]) -> Result<TraceContext, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let mut root: Option<&[u8]> = None;
    let mut parent: Option<&[u8]> = None;
    let mut sampled_v: Option<&[u8]> = None;
    // `;`-separated key=value fields; other keys (Self, Lineage, custom) are allowed. Keys are
    // matched case-insensitively (lenient), OWS around fields is ignored, empty fields skipped.
    for part in s.split(|&b| b == b';') {
        let part = trim_ows(part);
        if part.is_empty() {
            continue;
        }
        let eq = part
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| "field without '='".to_string())?;
        let (k, val) = part.split_at(eq);
        let k = trim_ows(k);
        let val = trim_ows(val.get(1..).unwrap_or_default());
        let (slot, name) = if k.eq_ignore_ascii_case(b"root") {
            (&mut root, "Root")
        } else if k.eq_ignore_ascii_case(b"parent") {
            (&mut parent, "Parent")
        } else if k.eq_ignore_ascii_case(b"sampled") {
            (&mut sampled_v, "Sampled")
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(format!("repeated {name}"));
        }
        *slot = Some(val);
    }
    let root = root.ok_or_else(|| "missing Root".to_string())?;
    // Root = version "1" '-' 8 hex (epoch seconds) '-' 24 hex (random).
    let ok_layout = root.len() == 35 && root.get(..2) == Some(b"1-") && root.get(10) == Some(&b'-');
    let time = root.get(2..10).unwrap_or_default();
    let rand = root.get(11..35).unwrap_or_default();
    let (tc, rc) = (hex_class(time), hex_class(rand));
    if !ok_layout || tc == Hex::Invalid || rc == Hex::Invalid {
        return Err("Root is not 1-<8 hex>-<24 hex>".into());
    }
    if tc == Hex::Upper || rc == Hex::Upper {
        return Err("uppercase hex in Root".into());
    }
    if all_zeros(time) && all_zeros(rand) {
        return Err("Root trace id is all zeros".into());
    }
    if let Some(p) = parent {
        match hex_class(p) {
            Hex::Lower if p.len() == 16 => {}
            Hex::Upper if p.len() == 16 => return Err("uppercase hex in Parent".into()),
            _ => return Err("Parent is not 16 hex digits".into()),
        }
    }
    let sampled = match sampled_v {
        None | Some(b"?") => None,
        Some(b"1") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return Err("Sampled must be 0, 1 or ?".into()),
    };
    let mut normalized = String::with_capacity(32);
    normalized.push_str(&ascii_string(time));
    normalized.push_str(&ascii_string(rand));
    Ok(TraceContext {
        format: TraceFormat::Aws,
        header: X_AMZN_TRACE_ID.to_string(),
        trace_id: ascii_string(root),
        normalized,
        span_id: parent.map(ascii_string),
        sampled,
    })
}
