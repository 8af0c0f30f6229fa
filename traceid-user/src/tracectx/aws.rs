//! AWS X-Ray `X-Amzn-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`
//! (<https://docs.aws.amazon.com/xray/latest/devguide/xray-concepts.html#xray-concepts-tracingheader>).

use super::{
    all_zeros, ascii_string, hex_class, trim_ows, Extraction, FormatHeaders, Hex, TraceContext,
    TraceFormat,
};

pub(super) const X_AMZN_TRACE_ID: &str = "x-amzn-trace-id";

pub(super) fn extract(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    out.single_header(
        TraceFormat::Aws,
        X_AMZN_TRACE_ID,
        h.one(X_AMZN_TRACE_ID),
        parse,
    );
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
        header: X_AMZN_TRACE_ID.into(),
        trace_id: ascii_string(root),
        normalized,
        span_id: parent.map(ascii_string),
        sampled,
    })
}

#[cfg(test)]
mod tests {
    use crate::tracectx::test_support::{assert_bad, ctx, one, XRAY};
    use crate::tracectx::{TraceContext, TraceFormat};

    // ------------------------------------------------------------------------------------------
    // AWS X-Ray
    // ------------------------------------------------------------------------------------------

    #[test]
    fn aws_official_example() {
        let e = one("X-Amzn-Trace-Id", XRAY);
        assert_eq!(
            ctx(&e),
            &TraceContext {
                format: TraceFormat::Aws,
                header: "x-amzn-trace-id".into(),
                trace_id: "1-5759e988-bd862e3fe1be46a994272793".into(),
                normalized: "5759e988bd862e3fe1be46a994272793".into(),
                span_id: Some("53995c3f42cd8ad8".into()),
                sampled: Some(true),
            }
        );
    }

    #[test]
    fn aws_variants() {
        // Root only; other keys (ALB's Self) allowed; OWS and trailing ';' tolerated.
        let c = ctx(&one(
            "x-amzn-trace-id",
            "Self=1-67891234-12456789abcdef012345678;Root=1-5759e988-bd862e3fe1be46a994272793",
        ))
        .clone();
        assert_eq!((c.span_id, c.sampled), (None, None));
        let e = one(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793; Parent=53995c3f42cd8ad8; Sampled=?;",
        );
        assert_eq!(ctx(&e).sampled, None);
        let e = one(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0;Lineage=a87bd80c:0",
        );
        assert_eq!(ctx(&e).sampled, Some(false));
    }

    #[test]
    fn aws_missing_root() {
        assert_bad(
            &one("x-amzn-trace-id", "Parent=53995c3f42cd8ad8;Sampled=1"),
            "x-amzn-trace-id: missing Root",
        );
        assert_bad(&one("x-amzn-trace-id", ""), "x-amzn-trace-id: empty");
    }

    #[test]
    fn aws_bad_fields() {
        let bad = |v: &str, r: &str| {
            assert_bad(&one("x-amzn-trace-id", v), &format!("x-amzn-trace-id: {r}"))
        };
        bad(
            "Root=1-5759E988-bd862e3fe1be46a994272793",
            "uppercase hex in Root",
        );
        bad(
            "Root=2-5759e988-bd862e3fe1be46a994272793",
            "Root is not 1-<8 hex>-<24 hex>",
        );
        bad(
            "Root=1-5759e988-bd862e3fe1be46a99427279",
            "Root is not 1-<8 hex>-<24 hex>",
        );
        bad(
            "Root=1-5759e988bd862e3fe1be46a994272793",
            "Root is not 1-<8 hex>-<24 hex>",
        );
        bad(
            "Root=1-00000000-000000000000000000000000",
            "Root trace id is all zeros",
        );
        bad(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f",
            "Parent is not 16 hex digits",
        );
        bad(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995C3F42CD8AD8",
            "uppercase hex in Parent",
        );
        bad(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=yes",
            "Sampled must be 0, 1 or ?",
        );
        bad(
            "Root=1-5759e988-bd862e3fe1be46a994272793;garbage",
            "field without '='",
        );
        bad(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Root=1-5759e988-bd862e3fe1be46a994272793",
            "repeated Root",
        );
    }
}
