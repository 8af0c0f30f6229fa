//! W3C Trace Context Level 1 (<https://www.w3.org/TR/trace-context-1/>): `traceparent` and
//! `tracestate`.

use super::{
    all_zeros, ascii_string, hex_class, show, trim_ows, Extraction, Hex, TraceContext, TraceFormat,
    Value, MAX_ECHO, TRACEPARENT, TRACESTATE,
};

/// Length of a version-00 traceparent: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const V00_LEN: usize = 55;
/// tracestate: "There can be a maximum of 32 list-members in a list." (§3.3.1.1)
const MAX_MEMBERS: usize = 32;

pub(super) fn traceparent(v: Value<'_>, out: &mut Extraction) {
    match v {
        Value::Absent => {}
        // §3.2: a request with more than one traceparent is invalid (not list-valued).
        Value::Repeated => out.bad(TraceFormat::W3c, TRACEPARENT, "repeated header"),
        Value::One(s) => match parse_traceparent(s) {
            Ok(ctx) => out.contexts.push(ctx),
            Err(d) => out.bad(TraceFormat::W3c, TRACEPARENT, d),
        },
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
    let vs = ascii_string(version);
    let n = s.len();
    if version == b"00" {
        // §3.2.2.1/§3.2.4: version 00 has exactly four fields, 55 characters.
        if n != V00_LEN {
            return Err(format!("wrong length ({n}, version 00 needs 55)"));
        }
    } else {
        // §3.2.4 (versioning): a higher version is parsed as 00 on its first 55 chars; it must
        // be at least 55 long and, if longer, the flags must be followed by '-'.
        if n < V00_LEN {
            return Err(format!(
                "wrong length ({n}, version {vs} needs at least 55)"
            ));
        }
        if n > V00_LEN && s.get(V00_LEN) != Some(&b'-') {
            return Err(format!("version {vs}: no '-' after flags"));
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
        header: TRACEPARENT.to_string(),
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
pub(super) fn tracestate(values: &[&[u8]], out: &mut Extraction) {
    if let Err(d) = check_tracestate(values) {
        out.bad(TraceFormat::W3c, TRACESTATE, d);
    }
}

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
