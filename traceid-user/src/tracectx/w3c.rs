//! W3C Trace Context Level 1 (<https://www.w3.org/TR/trace-context-1/>): `traceparent` and
//! `tracestate`.

use super::{
    all_zeros, ascii_string, hex_class, show, trim_ows, Extraction, FormatHeaders, Hex,
    TraceContext, TraceFormat, MAX_ECHO,
};

pub(super) const TRACEPARENT: &str = "traceparent";
pub(super) const TRACESTATE: &str = "tracestate";

/// Length of a version-00 traceparent: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const V00_LEN: usize = 55;
/// tracestate: "There can be a maximum of 32 list-members in a list." (§3.3.1.1)
const MAX_MEMBERS: usize = 32;

pub(super) fn extract(h: &FormatHeaders<'_, '_>, out: &mut Extraction) {
    // §3.2: a request with more than one traceparent is invalid (not list-valued), which
    // `single_header` reports as a repeated header.
    out.single_header(
        TraceFormat::W3c,
        TRACEPARENT,
        h.one(TRACEPARENT),
        parse_traceparent,
    );
    // §3.3.1.1: tracestate is list-valued; its instances are validated together.
    let tracestate = h.list(TRACESTATE);
    if !tracestate.is_empty() {
        if let Err(d) = check_tracestate(&tracestate) {
            out.bad(TraceFormat::W3c, TRACESTATE, d);
        }
    }
}

fn hex_field(field: &[u8], what: &str) -> Result<(), String> {
    match hex_class(field) {
        Hex::Lower => Ok(()),
        // §3.2.2.x: every field is lowercase hex ("HEXDIGLC"); uppercase is invalid.
        Hex::Upper => Err("uppercase hex".to_string()),
        Hex::Invalid => Err(what.to_string()),
    }
}

fn parse_traceparent(s: &[u8]) -> Result<TraceContext, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let version = s
        .get(..2)
        .ok_or_else(|| format!("wrong length ({}, version 00 needs 55)", s.len()))?;
    hex_field(version, "version is not 2 hex digits")?;
    // §3.2.2.1: "Version ff is invalid."
    if version == b"ff" {
        return Err("version ff is invalid".into());
    }
    let n = s.len();
    if version == b"00" {
        // §3.2.2.1/§3.2.4: version 00 has exactly four fields, 55 characters.
        if n != V00_LEN {
            return Err(format!("wrong length ({n}, version 00 needs 55)"));
        }
    } else {
        // §3.2.4 (versioning): a higher version is parsed as 00 on its first 55 chars; it must
        // be at least 55 long and, if longer, the flags must be followed by '-'.
        // Only a malformed value spells its version out: no string for the valid ones.
        let vs = || ascii_string(version);
        if n < V00_LEN {
            return Err(format!(
                "wrong length ({n}, version {} needs at least 55)",
                vs()
            ));
        }
        if n > V00_LEN && s.get(V00_LEN) != Some(&b'-') {
            return Err(format!("version {}: no '-' after flags", vs()));
        }
    }
    let s = s.get(..V00_LEN).unwrap_or(s);
    if s.get(2) != Some(&b'-') || s.get(35) != Some(&b'-') || s.get(52) != Some(&b'-') {
        return Err("fields not separated by '-'".into());
    }
    let trace_id = s.get(3..35).unwrap_or_default();
    let parent_id = s.get(36..52).unwrap_or_default();
    let flags = s.get(53..55).unwrap_or_default();
    hex_field(trace_id, "trace-id is not 32 hex digits")?;
    hex_field(parent_id, "parent-id is not 16 hex digits")?;
    hex_field(flags, "flags is not 2 hex digits")?;
    // §3.2.2.3: "All bytes as zero ... is considered an invalid value." (trace-id)
    if all_zeros(trace_id) {
        return Err("trace-id is all zeros".into());
    }
    // §3.2.2.4: "All bytes as zero ... is considered an invalid value." (parent-id)
    if all_zeros(parent_id) {
        return Err("parent-id is all zeros".into());
    }
    // §3.2.2.5: bit 0 of trace-flags is `sampled`; other bits are ignored for version 00.
    let sampled = flags.get(1).map(|&b| hex_val(b) & 1 == 1);
    let tid = ascii_string(trace_id);
    Ok(TraceContext {
        format: TraceFormat::W3c,
        header: TRACEPARENT.into(),
        normalized: tid.clone(),
        trace_id: tid,
        span_id: Some(ascii_string(parent_id)),
        sampled,
    })
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Validates the combined `tracestate` (all instances, in order).
fn check_tracestate(values: &[&[u8]]) -> Result<(), String> {
    // §3.3.1.1: list = list-member 0*31( OWS "," OWS list-member ); "Empty and whitespace-only
    // list members are allowed" and are ignored (they do not count towards the 32).
    let members = || {
        values
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(trim_ows)
            .filter(|m| !m.is_empty())
    };
    let count = members().count();
    if count > MAX_MEMBERS {
        return Err(format!("{count} list members (max 32)"));
    }
    let mut keys: Vec<&[u8]> = Vec::with_capacity(count);
    for (i, m) in members().enumerate() {
        let n = i + 1;
        let eq = m
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| format!("list member {n} has no '='"))?;
        let (key, value) = m.split_at(eq);
        let value = value.get(1..).unwrap_or_default();
        if !valid_key(key) {
            return Err(format!("bad key in list member {n}"));
        }
        if !valid_value(value) {
            return Err(format!("bad value in list member {n}"));
        }
        // §3.3.1.1: "a key ... MUST be unique"; duplicates make the header invalid.
        if keys.contains(&key) {
            return Err(format!("duplicate key {}", show(key, MAX_ECHO)));
        }
        keys.push(key);
    }
    Ok(())
}

fn key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// §3.3.1.3.1:
/// key = simple-key / multi-tenant-key
/// simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
/// multi-tenant-key = tenant-id "@" system-id
/// tenant-id = ( lcalpha / DIGIT ) 0*240( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
/// system-id = lcalpha 0*13( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
fn valid_key(k: &[u8]) -> bool {
    match k.iter().position(|&b| b == b'@') {
        None => match k.split_first() {
            Some((&first, rest)) => {
                first.is_ascii_lowercase() && rest.len() <= 255 && rest.iter().all(|&b| key_char(b))
            }
            None => false,
        },
        Some(at) => {
            let (tenant, system) = k.split_at(at);
            let system = system.get(1..).unwrap_or_default();
            let tenant_ok = match tenant.split_first() {
                Some((&first, rest)) => {
                    (first.is_ascii_lowercase() || first.is_ascii_digit())
                        && rest.len() <= 240
                        && rest.iter().all(|&b| key_char(b))
                }
                None => false,
            };
            let system_ok = match system.split_first() {
                Some((&first, rest)) => {
                    first.is_ascii_lowercase()
                        && rest.len() <= 13
                        && rest.iter().all(|&b| key_char(b))
                }
                None => false,
            };
            tenant_ok && system_ok
        }
    }
}

/// §3.3.1.3.2: value = 0*255(chr) nblk-chr; nblk-chr = %x21-2B / %x2D-3C / %x3E-7E;
/// chr = %x20 / nblk-chr. So at most 256 printable chars, no ',' or '=', not ending in space.
/// Lenient (as the brief asks): an empty value is accepted although the grammar needs one
/// nblk-chr.
fn valid_value(v: &[u8]) -> bool {
    v.len() <= 256
        && v.iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && v.last() != Some(&b' ')
}

#[cfg(test)]
mod tests {
    use crate::tracectx::test_support::{assert_bad, ctx, ex, one, reasons, tp, TP};
    use crate::tracectx::{TraceContext, TraceFormat};

    // ------------------------------------------------------------------------------------------
    // W3C traceparent
    // ------------------------------------------------------------------------------------------

    #[test]
    fn w3c_official_example() {
        let e = one("traceparent", TP);
        let c = ctx(&e);
        assert_eq!(
            c,
            &TraceContext {
                format: TraceFormat::W3c,
                header: "traceparent".into(),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                normalized: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: Some("00f067aa0ba902b7".into()),
                sampled: Some(true),
            }
        );
        assert!(!e.is_empty());
    }

    #[test]
    fn w3c_not_sampled_and_other_flag_bits() {
        let e = one(
            "traceparent",
            &tp("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "00"),
        );
        assert_eq!(ctx(&e).sampled, Some(false));
        let e = one(
            "traceparent",
            &tp("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "03"),
        );
        assert_eq!(ctx(&e).sampled, Some(true));
        let e = one(
            "traceparent",
            &tp("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "fe"),
        );
        assert_eq!(ctx(&e).sampled, Some(false));
    }

    #[test]
    fn w3c_ows_is_trimmed() {
        let e = one("traceparent", &format!(" \t{TP}\t "));
        assert_eq!(ctx(&e).trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn w3c_wrong_length() {
        let short = &TP[..54];
        assert_bad(
            &one("traceparent", short),
            "traceparent: wrong length (54, version 00 needs 55)",
        );
        let long = format!("{TP}-00");
        assert_bad(
            &one("traceparent", &long),
            "traceparent: wrong length (58, version 00 needs 55)",
        );
        assert_bad(
            &one("traceparent", "0"),
            "traceparent: wrong length (1, version 00 needs 55)",
        );
    }

    #[test]
    fn w3c_empty() {
        assert_bad(&one("traceparent", "  "), "traceparent: empty");
    }

    #[test]
    fn w3c_uppercase_hex() {
        let v = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_bad(&one("traceparent", v), "traceparent: uppercase hex");
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01";
        assert_bad(&one("traceparent", v), "traceparent: uppercase hex");
        let v = "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_bad(&one("traceparent", v), "traceparent: uppercase hex");
    }

    #[test]
    fn w3c_all_zero_trace_id() {
        let v = tp("00000000000000000000000000000000", "00f067aa0ba902b7", "01");
        assert_bad(
            &one("traceparent", &v),
            "traceparent: trace-id is all zeros",
        );
    }

    #[test]
    fn w3c_all_zero_parent_id() {
        let v = tp("4bf92f3577b34da6a3ce929d0e0e4736", "0000000000000000", "01");
        assert_bad(
            &one("traceparent", &v),
            "traceparent: parent-id is all zeros",
        );
    }

    #[test]
    fn w3c_version_ff_is_invalid() {
        let v = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_bad(&one("traceparent", v), "traceparent: version ff is invalid");
    }

    #[test]
    fn w3c_bad_version_and_fields() {
        let v = "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_bad(
            &one("traceparent", v),
            "traceparent: version is not 2 hex digits",
        );
        let v = "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_bad(
            &one("traceparent", v),
            "traceparent: fields not separated by '-'",
        );
        let v = "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01";
        assert_bad(
            &one("traceparent", v),
            "traceparent: trace-id is not 32 hex digits",
        );
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01";
        assert_bad(
            &one("traceparent", v),
            "traceparent: parent-id is not 16 hex digits",
        );
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x";
        assert_bad(
            &one("traceparent", v),
            "traceparent: flags is not 2 hex digits",
        );
        // Shifted fields: right length, separators in the wrong place.
        let v = "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01";
        assert_bad(
            &one("traceparent", v),
            "traceparent: fields not separated by '-'",
        );
    }

    #[test]
    fn w3c_higher_version_parsed_leniently() {
        // Exactly 55 chars.
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            ctx(&one("traceparent", v)).trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // Longer, with '-' after the flags: future fields are ignored.
        let v =
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like";
        let e = one("traceparent", v);
        let c = ctx(&e);
        assert_eq!(c.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(c.sampled, Some(true));
        // Longer without '-' after the flags.
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_bad(
            &one("traceparent", v),
            "traceparent: version 01: no '-' after flags",
        );
        // Shorter than 55.
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1";
        assert_bad(
            &one("traceparent", v),
            "traceparent: wrong length (54, version 01 needs at least 55)",
        );
        // The first 55 chars still follow the version-00 rules.
        let v = "01-00000000000000000000000000000000-00f067aa0ba902b7-01-x";
        assert_bad(&one("traceparent", v), "traceparent: trace-id is all zeros");
    }

    #[test]
    fn w3c_repeated_header() {
        let other = tp("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01");
        let e = ex(&[("traceparent", TP), ("traceparent", &other)]);
        assert_bad(&e, "traceparent: repeated header");
        // The same value twice is harmless.
        let e = ex(&[("traceparent", TP), ("Traceparent", TP)]);
        assert_eq!(ctx(&e).format, TraceFormat::W3c);
    }

    // ------------------------------------------------------------------------------------------
    // W3C tracestate
    // ------------------------------------------------------------------------------------------

    #[test]
    fn tracestate_valid() {
        for ts in [
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7 , \t congo=t61rcWkgMzE",
            "fw529a3039@dt=ZGl1Y3k,1a-2f@ada-x_y*z/w=a b c",
            "a=1,,  ,b=2,",
            "",
            "k=",
        ] {
            let e = ex(&[("traceparent", TP), ("tracestate", ts)]);
            assert!(e.malformed.is_empty(), "{ts:?}: {:?}", e.malformed);
            assert_eq!(e.contexts.len(), 1);
        }
    }

    #[test]
    fn tracestate_32_members_ok_33_too_many() {
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(one("tracestate", &members(32)).is_empty());
        let e = ex(&[("traceparent", TP), ("tracestate", &members(33))]);
        assert_eq!(reasons(&e), ["tracestate: 33 list members (max 32)"]);
        assert_eq!(e.malformed[0].format, TraceFormat::W3c);
        assert_eq!(e.malformed[0].header, "tracestate");
        // An invalid tracestate does not invalidate traceparent.
        assert_eq!(e.contexts.len(), 1);
        assert_eq!(e.contexts[0].format, TraceFormat::W3c);
    }

    #[test]
    fn tracestate_members_counted_across_repeated_headers() {
        let members = |from: usize, n: usize| {
            (from..from + n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(ex(&[
            ("tracestate", &members(0, 16)),
            ("tracestate", &members(16, 16))
        ])
        .is_empty());
        let e = ex(&[
            ("tracestate", &members(0, 20)),
            ("TraceState", &members(20, 20)),
        ]);
        assert_eq!(reasons(&e), ["tracestate: 40 list members (max 32)"]);
    }

    #[test]
    fn tracestate_bad_key() {
        for (ts, n) in [
            ("Rojo=1", 1),
            ("rojo=1,1abc=2", 2),
            ("ro jo=1", 1),
            ("=1", 1),
            ("@dt=1", 1),
            ("a@=1", 1),
            ("a@Dt=1", 1),
            ("a@b@c=1", 1),
            ("t@abcdefghijklmno=1", 1),
        ] {
            assert_bad(
                &one("tracestate", ts),
                &format!("tracestate: bad key in list member {n}"),
            );
        }
        let long_key = format!("a{}=1", "b".repeat(256));
        assert_bad(
            &one("tracestate", &long_key),
            "tracestate: bad key in list member 1",
        );
        let max_key = format!("a{}=1", "b".repeat(255));
        assert!(one("tracestate", &max_key).is_empty());
    }

    #[test]
    fn tracestate_duplicate_key() {
        assert_bad(
            &one("tracestate", "rojo=1,congo=2,rojo=3"),
            "tracestate: duplicate key rojo",
        );
        let e = ex(&[("tracestate", "rojo=1"), ("tracestate", "rojo=2")]);
        assert_bad(&e, "tracestate: duplicate key rojo");
    }

    #[test]
    fn tracestate_bad_value_and_missing_equals() {
        assert_bad(
            &one("tracestate", "rojo=a=b"),
            "tracestate: bad value in list member 1",
        );
        assert_bad(
            &one("tracestate", "rojo=a\u{1}b"),
            "tracestate: bad value in list member 1",
        );
        assert_bad(
            &one("tracestate", &format!("rojo={}", "v".repeat(257))),
            "tracestate: bad value in list member 1",
        );
        assert!(one("tracestate", &format!("rojo={}", "v".repeat(256))).is_empty());
        assert_bad(
            &one("tracestate", "rojo=1,congo"),
            "tracestate: list member 2 has no '='",
        );
    }
}
