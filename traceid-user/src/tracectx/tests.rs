//! Cross-format tests: the format table, header names, priority, consistency between
//! formats, repeated headers, hostile input and fuzzing. Each format's own tests are at the
//! bottom of its file.

use super::test_support::*;
use super::*;
use crate::test_util::Rng;

// ------------------------------------------------------------------------------------------
// TraceFormat / HeaderNames
// ------------------------------------------------------------------------------------------

#[test]
fn format_names_and_order() {
    let names: Vec<&str> = TraceFormat::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(
        names,
        [
            "w3c",
            "b3",
            "b3single",
            "jaeger",
            "aws",
            "datadog",
            "grpc_bin",
            "sw8",
            "request_id"
        ]
    );
    let mut sorted = TraceFormat::ALL;
    sorted.sort();
    assert_eq!(sorted, TraceFormat::ALL, "ALL is in priority (Ord) order");
    assert_eq!(TraceFormat::B3Single.to_string(), "b3single");
    assert!(TraceFormat::Datadog.is_hex());
    assert!(!TraceFormat::Sw8.is_hex());
    assert!(!TraceFormat::RequestId.is_hex());
}

#[test]
fn is_trace_header_true_for_every_read_name_any_case() {
    let names = HeaderNames::new(&["X-Amz-Cf-Id".to_string()]);
    for n in [
        "traceparent",
        "tracestate",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "b3",
        "uber-trace-id",
        "x-amzn-trace-id",
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "x-datadog-sampling-priority",
        "grpc-trace-bin",
        "sw8",
        "x-request-id",
        "x-trace-id",
        "trace-id",
        "x-correlation-id",
        "x-amz-cf-id",
    ] {
        assert!(names.is_trace_header(n), "{n}");
        assert!(
            names.is_trace_header(&n.to_ascii_uppercase()),
            "{n} uppercase"
        );
    }
    assert!(names.is_trace_header("TraceParent"));
    assert!(names.is_trace_header("X-B3-TraceId"));
    assert!(names.is_trace_header("X-Amz-Cf-Id"));
}

#[test]
fn is_trace_header_false_for_others() {
    let names = HeaderNames::default();
    for n in [
        "authorization",
        "Authorization",
        "cookie",
        "Cookie",
        "set-cookie",
        "proxy-authorization",
        "content-type",
        "host",
        "",
        "traceparent2",
        " traceparent",
        "x-b3-",
        "b",
        "x-amz-cf-id",
        "sw6",
    ] {
        assert!(!names.is_trace_header(n), "{n:?}");
    }
}

#[test]
fn names_sharing_a_length_or_a_first_letter_are_told_apart() {
    // Names of 32 bytes or more share one bucket whatever their length.
    let long = "x-very-long-request-identifier-header";
    let longer = "x-very-long-request-identifier-headers";
    let names = HeaderNames::new(&[long.to_string(), longer.to_uppercase()]);
    assert!(names.is_trace_header(long) && names.is_trace_header(longer));
    assert!(names.is_trace_header(&long.to_uppercase()));
    for n in [
        "x-very-long-request-identifier-headerz",
        "x-very-long-request-identifier-heade",
        // The length and first letter of x-trace-id and x-b3-flags.
        "x-trace-ie",
        "X-B3-Flagz",
    ] {
        assert!(!names.is_trace_header(n), "{n}");
    }
}

#[test]
fn header_names_extras_are_normalised_and_deduplicated() {
    let names = HeaderNames::new(&[
        " X-Amz-Cf-Id ".to_string(),
        "x-amz-cf-id".to_string(),
        "".to_string(),
        "X-Request-Id".to_string(),
        "traceparent".to_string(),
        "x-cloud-trace-context".to_string(),
    ]);
    let rids: Vec<&str> = names.request_id_headers().collect();
    assert_eq!(
        rids,
        [
            "x-request-id",
            "x-trace-id",
            "trace-id",
            "x-correlation-id",
            "x-amz-cf-id",
            "x-cloud-trace-context"
        ]
    );
    assert_eq!(names.iter().count(), 15 + 6);
    assert!(names.iter().all(|n| n == n.to_ascii_lowercase()));
    // "traceparent" as an extra does not turn traceparent into a request id.
    let e = ex_with(&names, &[("traceparent", TP)]);
    assert_eq!(ctx(&e).format, TraceFormat::W3c);
    // Extras are request ids, reported under their lowercase name.
    let e = ex_with(&names, &[("X-Amz-Cf-Id", "abc-123")]);
    let c = ctx(&e);
    assert_eq!(
        (c.format, c.header.as_ref(), c.trace_id.as_str()),
        (TraceFormat::RequestId, "x-amz-cf-id", "abc-123")
    );
}

#[test]
fn unrelated_headers_are_ignored() {
    let e = ex(&[
        ("authorization", "Bearer 00-4bf9"),
        ("cookie", "traceparent=1"),
        ("host", "x"),
    ]);
    assert!(e.is_empty());
    assert_eq!(e, Extraction::default());
    assert_eq!(e.primary(), None);
    assert_eq!(e.inconsistent(), None);
}

// ------------------------------------------------------------------------------------------
// The format table and the header roles
// ------------------------------------------------------------------------------------------

#[test]
fn format_table_is_well_formed() {
    // One row per format except the run-time configured request ids, in priority order.
    let rows: Vec<TraceFormat> = FORMATS.iter().map(|spec| spec.format).collect();
    let expected: Vec<TraceFormat> = TraceFormat::ALL
        .into_iter()
        .filter(|f| *f != TraceFormat::RequestId)
        .collect();
    assert_eq!(rows, expected);
    let mut seen: Vec<&str> = Vec::new();
    for spec in FORMATS {
        let trace_id_headers = spec.headers.iter().filter(|h| h.role == Role::TraceId);
        assert_eq!(
            trace_id_headers.count(),
            1,
            "{}: one TraceId header",
            spec.format
        );
        for h in spec.headers {
            assert!(!h.name.is_empty(), "{}: empty header name", spec.format);
            assert_eq!(h.name, h.name.to_ascii_lowercase(), "names are lowercase");
            assert!(!seen.contains(&h.name), "{} is in two rows", h.name);
            assert!(
                !REQUEST_ID_HEADERS.contains(&h.name),
                "{} is a request id",
                h.name
            );
            seen.push(h.name);
        }
    }
}

/// Every header of a format with a valid value (from [`valid_value_for`]).
fn valid_headers(spec: &FormatSpec) -> Vec<(&'static str, &'static str)> {
    spec.headers
        .iter()
        .map(|h| (h.name, valid_value_for(h.name)))
        .collect()
}

/// `headers` without `name`.
fn without<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Vec<(&'a str, &'a str)> {
    headers
        .iter()
        .copied()
        .filter(|(n, _)| *n != name)
        .collect()
}

#[test]
fn every_format_honours_its_header_roles() {
    // Invalid for every header in the table (x-b3-flags ignores any value but "1").
    const INVALID: &str = "!";
    for spec in FORMATS {
        let valid = valid_headers(spec);
        let e = ex(&valid);
        let c = ctx(&e);
        let trace_id_header = spec.headers.iter().find(|h| h.role == Role::TraceId);
        assert_eq!(
            (c.format, Some(c.header.as_ref())),
            (spec.format, trace_id_header.map(|h| h.name)),
            "a context is reported under its TraceId header"
        );
        for h in spec.headers {
            let missing = ex(&without(&valid, h.name));
            let mut invalid_headers = without(&valid, h.name);
            invalid_headers.push((h.name, INVALID));
            let invalid = ex(&invalid_headers);
            match h.role {
                Role::TraceId | Role::Required => {
                    assert!(missing.contexts.is_empty(), "{}: missing", h.name);
                    assert!(invalid.contexts.is_empty(), "{}: invalid", h.name);
                    assert!(
                        invalid.malformed.iter().any(|m| m.header == h.name),
                        "{}: invalid is reported: {:?}",
                        h.name,
                        invalid.malformed
                    );
                }
                Role::Optional | Role::List => {
                    assert_eq!(ctx(&missing).format, spec.format, "{}: missing", h.name);
                    assert_eq!(invalid.contexts.len(), 1, "{}: invalid", h.name);
                    assert!(
                        invalid.malformed.iter().all(|m| m.header == h.name),
                        "{}: {:?}",
                        h.name,
                        invalid.malformed
                    );
                }
            }
        }
    }
}

#[test]
fn repeated_headers_in_every_format() {
    for spec in FORMATS {
        let valid = valid_headers(spec);
        let once = ex(&valid);
        for h in spec.headers {
            let value = valid_value_for(h.name);
            let mut same_twice = valid.clone();
            same_twice.push((h.name, value));
            let other = format!("{value}0");
            let mut different: Vec<(&str, &str)> = valid.clone();
            different.push((h.name, &other));
            let e = ex(&different);
            let repeated = format!("{}: repeated header", h.name);
            let is_repeated = reasons(&e).contains(&repeated.as_str());
            match h.role {
                // Instances are combined, never "repeated".
                Role::List => {
                    assert!(!is_repeated, "{}", h.name);
                    assert_eq!(e.contexts.len(), 1, "{}", h.name);
                }
                Role::TraceId | Role::Required | Role::Optional => {
                    assert_eq!(ex(&same_twice), once, "{}: the same value twice", h.name);
                    assert!(is_repeated, "{}: {:?}", h.name, e.malformed);
                    let kept = h.role == Role::Optional;
                    assert_eq!(e.contexts.len(), usize::from(kept), "{}", h.name);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Normalisation, consistency, priority, case-insensitivity
// ------------------------------------------------------------------------------------------

#[test]
fn same_trace_across_formats_is_consistent() {
    let w3c = tp("0000000000000000a3ce929d0e0e4736", "00f067aa0ba902b7", "01");
    let e = ex(&[
        ("traceparent", &w3c),
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", B3_SID),
        ("x-datadog-trace-id", DD_A3CE),
        ("b3", "0000000000000000a3ce929d0e0e4736-e457b5a2e4d86bd1"),
        ("uber-trace-id", "a3ce929d0e0e4736:e457b5a2e4d86bd1:0:1"),
        ("x-request-id", "req-1"),
        ("sw8", SW8_EX),
    ]);
    assert!(e.malformed.is_empty(), "{:?}", e.malformed);
    assert_eq!(e.contexts.len(), 7);
    for c in e.contexts.iter().filter(|c| c.format.is_hex()) {
        assert_eq!(
            c.normalized, "0000000000000000a3ce929d0e0e4736",
            "{:?}",
            c.format
        );
    }
    assert_eq!(e.inconsistent(), None);
}

#[test]
fn aws_and_w3c_same_trace_consistent() {
    let w3c = tp("5759e988bd862e3fe1be46a994272793", "53995c3f42cd8ad8", "01");
    let e = ex(&[("traceparent", &w3c), ("x-amzn-trace-id", XRAY)]);
    assert_eq!(e.contexts.len(), 2);
    assert_eq!(e.inconsistent(), None);
}

#[test]
fn differing_ids_are_inconsistent() {
    let e = ex(&[
        ("traceparent", TP),
        ("x-b3-traceid", B3_TID),
        ("x-b3-spanid", B3_SID),
    ]);
    assert_eq!(
        e.inconsistent().as_deref(),
        Some("w3c 4bf92f3577b34da6a3ce929d0e0e4736 != b3 80f198ee56343ba864fe8b2a57d3eff7")
    );
    let e = ex(&[("x-datadog-trace-id", "1"), ("uber-trace-id", "2:1:0:1")]);
    assert_eq!(
        e.inconsistent().as_deref(),
        Some("jaeger 00000000000000000000000000000002 != datadog 00000000000000000000000000000001")
    );
    let e = ex(&[
        ("traceparent", TP),
        ("b3", "0000000000000000a3ce929d0e0e4736-e457b5a2e4d86bd1"),
    ]);
    assert!(e.inconsistent().is_some(), "128-bit ids compare in full");
}

#[test]
fn low_64_bits_of_a_128_bit_id_are_consistent() {
    // Tracers with 128-bit ids send the low half in x-datadog-trace-id / 16-hex B3.
    let e = ex(&[
        ("traceparent", TP),
        ("x-datadog-trace-id", DD_A3CE),
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", B3_SID),
    ]);
    assert_eq!(e.contexts.len(), 3);
    assert_eq!(e.inconsistent(), None);
    let e = ex(&[("traceparent", TP), ("x-datadog-trace-id", "1")]);
    assert_eq!(
        e.inconsistent().as_deref(),
        Some("w3c 4bf92f3577b34da6a3ce929d0e0e4736 != datadog 00000000000000000000000000000001")
    );
}

#[test]
fn request_ids_compared_only_with_each_other() {
    // Never compared with hex formats.
    let e = ex(&[
        ("traceparent", TP),
        ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736x"),
    ]);
    assert_eq!(e.inconsistent(), None);
    let e = ex(&[
        ("x-request-id", "abc"),
        ("x-correlation-id", "abc"),
        ("sw8", SW8_EX),
    ]);
    assert_eq!(e.inconsistent(), None);
    let e = ex(&[("x-request-id", "abc"), ("x-correlation-id", "def")]);
    assert_eq!(
        e.inconsistent().as_deref(),
        Some("x-request-id abc != x-correlation-id def")
    );
    // Case matters for opaque ids.
    let e = ex(&[("x-request-id", "abc"), ("trace-id", "ABC")]);
    assert!(e.inconsistent().is_some());
}

#[test]
fn inconsistent_reason_is_bounded_for_long_request_ids() {
    let a = "a".repeat(200);
    let b = "b".repeat(200);
    let e = ex(&[("x-request-id", &a), ("x-trace-id", &b)]);
    let r = e.inconsistent().expect("inconsistent");
    assert!(r.len() <= 200, "{r}");
    assert!(!r.contains(&"a".repeat(MAX_ECHO + 1)));
}

#[test]
fn header_names_are_case_insensitive() {
    let e = ex(&[
        ("TRACEPARENT", TP),
        ("X-B3-TRACEID", B3_TID),
        ("x-B3-spanID", B3_SID),
        ("B3", B3_SINGLE),
        ("UBER-TRACE-ID", "abc:def:0:1"),
        ("X-AMZN-TRACE-ID", XRAY),
        ("X-Datadog-Trace-Id", "12"),
        ("GRPC-Trace-Bin", GRPC_BIN),
        ("SW8", SW8_EX),
        ("X-Request-ID", "r"),
    ]);
    assert!(e.malformed.is_empty(), "{:?}", e.malformed);
    let formats: Vec<TraceFormat> = e.contexts.iter().map(|c| c.format).collect();
    assert_eq!(formats, TraceFormat::ALL);
    for c in &e.contexts {
        assert_eq!(c.header, c.header.to_ascii_lowercase());
    }
    let e = one("TraceParent", "bogus");
    assert_eq!(e.malformed[0].header, "traceparent");
    assert!(e.malformed[0].reason.starts_with("traceparent: "));
}

fn format_of(header: &str) -> TraceFormat {
    FORMATS
        .iter()
        .find(|spec| spec.headers.iter().any(|h| h.name == header))
        .map_or(TraceFormat::RequestId, |spec| spec.format)
}

#[test]
fn primary_follows_priority() {
    let all: Vec<(&str, String)> = vec![
        ("traceparent", TP.to_string()),
        ("x-b3-traceid", B3_TID.to_string()),
        ("x-b3-spanid", B3_SID.to_string()),
        ("b3", B3_SINGLE.to_string()),
        ("uber-trace-id", "abc:def:0:1".to_string()),
        ("x-amzn-trace-id", XRAY.to_string()),
        ("x-datadog-trace-id", "12".to_string()),
        ("grpc-trace-bin", GRPC_BIN.to_string()),
        ("sw8", SW8_EX.to_string()),
        ("x-correlation-id", "second".to_string()),
        ("x-request-id", "first".to_string()),
    ];
    // Feed the headers in reverse wire order: priority, not order, decides.
    let mut headers: Vec<(&str, String)> = all.iter().rev().cloned().collect();
    for expected in TraceFormat::ALL {
        let hv: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let e = ex(&hv);
        assert_eq!(e.primary().map(|c| c.format), Some(expected));
        // Drop every header of the expected format.
        headers.retain(|(n, _)| format_of(n) != expected);
    }
    // Among request ids, the first on the wire wins.
    let e = ex(&[("x-request-id", "first"), ("x-correlation-id", "second")]);
    assert_eq!(e.primary().map(|c| c.trace_id.as_str()), Some("first"));
    let e = ex(&[("x-correlation-id", "second"), ("x-request-id", "first")]);
    assert_eq!(e.primary().map(|c| c.trace_id.as_str()), Some("second"));
}

#[test]
fn malformed_primary_falls_back() {
    let e = ex(&[("traceparent", "garbage"), ("x-request-id", "r1")]);
    assert_eq!(e.primary().map(|c| c.format), Some(TraceFormat::RequestId));
    assert!(!e.is_empty());
    let e = one("traceparent", "garbage");
    assert_eq!(e.primary(), None);
    assert!(!e.is_empty());
}

#[test]
fn get_finds_a_format() {
    let e = ex(&[("traceparent", TP), ("x-request-id", "r1")]);
    assert_eq!(
        e.get(TraceFormat::RequestId).map(|c| c.trace_id.as_str()),
        Some("r1")
    );
    assert_eq!(e.get(TraceFormat::B3), None);
}

// ------------------------------------------------------------------------------------------
// Hostile input and fuzzing
// ------------------------------------------------------------------------------------------

fn check_invariants(e: &Extraction) {
    for m in &e.malformed {
        assert!(m.reason.len() <= 200, "reason too long: {}", m.reason.len());
        assert!(
            m.reason.starts_with(&format!("{}: ", m.header)),
            "{}",
            m.reason
        );
        assert!(
            m.reason.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "{:?}",
            m.reason
        );
        assert_eq!(m.header, m.header.to_ascii_lowercase());
    }
    for c in &e.contexts {
        if c.format.is_hex() {
            assert_eq!(c.normalized.len(), 32, "{c:?}");
            assert!(
                c.normalized
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{c:?}"
            );
        } else {
            assert!(!c.normalized.is_empty() && c.normalized.len() <= 256);
        }
        assert_eq!(c.header, c.header.to_ascii_lowercase());
    }
    let _ = e.primary();
    if let Some(r) = e.inconsistent() {
        assert!(r.len() <= 200, "{r}");
    }
}

#[test]
fn hostile_values_never_echoed() {
    let names = HeaderNames::new(&["x-extra-id".to_string()]);
    let huge_x = vec![b'x'; 64 * 1024];
    let huge_hex = vec![b'a'; 64 * 1024];
    let mut nuls = vec![0u8; 1000];
    nuls[0] = b'1';
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    let controls: Vec<u8> = (0u8..0x20).chain([0x7f]).cycle().take(300).collect();
    let seps: Vec<u8> = b"-:;=,%".iter().copied().cycle().take(64 * 1024).collect();
    for value in [&huge_x, &huge_hex, &nuls, &garbage, &controls, &seps] {
        for name in names.iter() {
            let e = extract([(name, value.as_slice())], &names);
            check_invariants(&e);
            for m in &e.malformed {
                assert!(!m.reason.contains(&"x".repeat(65)));
                assert!(!m.reason.contains(&"a".repeat(65)));
            }
            // Sampling-only headers alone produce nothing; every other header is malformed.
            if !matches!(
                name,
                "x-b3-sampled" | "x-b3-flags" | "x-datadog-sampling-priority"
            ) {
                assert!(e.contexts.is_empty(), "{name}: {:?}", e.contexts);
                assert_eq!(e.malformed.len(), 1, "{name}");
            }
        }
    }
    // A 64 KiB tracestate of valid members.
    let many: String = (0..8000).map(|i| format!("k{i}=v,")).collect();
    let e = one("tracestate", &many);
    assert_eq!(reasons(&e), ["tracestate: 8000 list members (max 32)"]);
}

fn valid_value_for(name: &str) -> &'static str {
    match name {
        "traceparent" => TP,
        "tracestate" => "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,fw529a3039@dt=x",
        "x-b3-traceid" => B3_TID,
        "x-b3-spanid" => B3_SID,
        "x-b3-parentspanid" => B3_PID,
        "x-b3-sampled" => "1",
        "x-b3-flags" => "1",
        "b3" => B3_SINGLE,
        "uber-trace-id" => "4bf92f3577b34da6a3ce929d0e0e4736%3A00f067aa0ba902b7:0:1",
        "x-amzn-trace-id" => XRAY,
        "x-datadog-trace-id" => DD_A3CE,
        "x-datadog-parent-id" => "5208512171318403364",
        "x-datadog-sampling-priority" => "2",
        "grpc-trace-bin" => GRPC_BIN,
        "sw8" => SW8_EX,
        _ => "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    }
}

fn mutate(rng: &mut Rng, v: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"-:;=,%@0aAfF \t\x00\x7f\xff3";
    for _ in 0..=rng.index(4) {
        match rng.index(7) {
            0 if !v.is_empty() => {
                let i = rng.index(v.len());
                v[i] = rng.next_u64() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.index(v.len());
                v[i] = INTERESTING[rng.index(INTERESTING.len())];
            }
            2 => {
                let i = rng.index(v.len() + 1);
                v.insert(i, INTERESTING[rng.index(INTERESTING.len())]);
            }
            3 if !v.is_empty() => {
                let i = rng.index(v.len());
                v.remove(i);
            }
            4 => {
                let n = rng.index(v.len() + 1);
                v.truncate(n);
            }
            5 if !v.is_empty() && v.len() < 4096 => {
                let a = rng.index(v.len());
                let b = a + rng.index(v.len() - a);
                let chunk = v[a..=b.min(v.len() - 1)].to_vec();
                v.extend_from_slice(&chunk);
            }
            _ => {
                if let Some(b) = v.iter_mut().find(|b| b.is_ascii_lowercase()) {
                    *b = b.to_ascii_uppercase();
                }
            }
        }
    }
}

fn random_case(rng: &mut Rng, name: &str) -> String {
    name.chars()
        .map(|c| {
            if rng.next_u64() & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn fuzz_no_panic_and_bounded_reasons() {
    let names = HeaderNames::new(&["x-extra-id".to_string()]);
    let all_names: Vec<&str> = names.iter().collect();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut contexts = 0usize;
    let mut malformed = 0usize;
    for _ in 0..50_000 {
        let n_headers = 1 + rng.index(4);
        let mut owned: Vec<(String, Vec<u8>)> = Vec::with_capacity(n_headers);
        for _ in 0..n_headers {
            let name = all_names[rng.index(all_names.len())];
            let value = match rng.index(4) {
                0 => {
                    let len = match rng.index(20) {
                        0 => rng.index(70_000),
                        _ => rng.index(80),
                    };
                    (0..len).map(|_| rng.next_u64() as u8).collect()
                }
                1 => valid_value_for(name).as_bytes().to_vec(),
                _ => {
                    let mut v = valid_value_for(name).as_bytes().to_vec();
                    mutate(&mut rng, &mut v);
                    v
                }
            };
            owned.push((random_case(&mut rng, name), value));
        }
        let e = extract(
            owned.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            &names,
        );
        check_invariants(&e);
        contexts += e.contexts.len();
        malformed += e.malformed.len();
    }
    // The generator exercises both paths.
    assert!(contexts > 10_000, "contexts {contexts}");
    assert!(malformed > 10_000, "malformed {malformed}");
}
