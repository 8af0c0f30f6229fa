//! Unit tests for trace-context extraction.

use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const B3_TID: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SID: &str = "e457b5a2e4d86bd1";
const B3_PID: &str = "05e3ac9a4f6e3b90";
const B3_SINGLE: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
const XRAY: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
const SW8_EX: &str = "1-MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=-MWU3YzIwNGE3YmY3MTFlYWI4NThhY2RlNDgwMDExMjI=-0-c2VydmljZQ==-aW5zdGFuY2U=-L2FwcA==-MTI3LjAuMC4xOjgwODA=";
/// 0xa3ce929d0e0e4736 in decimal.
const DD_A3CE: &str = "11803532876627986230";

fn ex(headers: &[(&str, &str)]) -> Extraction {
    extract(
        headers.iter().map(|(n, v)| (*n, v.as_bytes())),
        &HeaderNames::default(),
    )
}

fn ex_with(names: &HeaderNames, headers: &[(&str, &str)]) -> Extraction {
    extract(headers.iter().map(|(n, v)| (*n, v.as_bytes())), names)
}

fn one(name: &str, value: &str) -> Extraction {
    ex(&[(name, value)])
}

/// The only context; panics (test only) when there is not exactly one context and no malformed.
fn ctx(e: &Extraction) -> &TraceContext {
    assert!(
        e.malformed.is_empty(),
        "unexpected malformed: {:?}",
        e.malformed
    );
    assert_eq!(e.contexts.len(), 1, "contexts: {:?}", e.contexts);
    &e.contexts[0]
}

/// The reasons of all malformed headers.
fn reasons(e: &Extraction) -> Vec<&str> {
    e.malformed.iter().map(|m| m.reason.as_str()).collect()
}

/// Exactly one malformed header with this reason and no context.
fn assert_bad(e: &Extraction, reason: &str) {
    assert!(
        e.contexts.is_empty(),
        "unexpected contexts: {:?}",
        e.contexts
    );
    assert_eq!(reasons(e), vec![reason]);
}

fn tp(trace: &str, parent: &str, flags: &str) -> String {
    format!("00-{trace}-{parent}-{flags}")
}

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
    assert_eq!(names.iter().count(), 14 + 6);
    assert!(names.iter().all(|n| n == n.to_ascii_lowercase()));
    // "traceparent" as an extra does not turn traceparent into a request id.
    let e = ex_with(&names, &[("traceparent", TP)]);
    assert_eq!(ctx(&e).format, TraceFormat::W3c);
    // Extras are request ids, reported under their lowercase name.
    let e = ex_with(&names, &[("X-Amz-Cf-Id", "abc-123")]);
    let c = ctx(&e);
    assert_eq!(
        (c.format, c.header.as_str(), c.trace_id.as_str()),
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
    let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like";
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

// ------------------------------------------------------------------------------------------
// B3 multi
// ------------------------------------------------------------------------------------------

#[test]
fn b3_multi_official_example() {
    let e = ex(&[
        ("X-B3-TraceId", B3_TID),
        ("X-B3-SpanId", B3_SID),
        ("X-B3-ParentSpanId", B3_PID),
        ("X-B3-Sampled", "1"),
    ]);
    assert_eq!(
        ctx(&e),
        &TraceContext {
            format: TraceFormat::B3,
            header: "x-b3-traceid".into(),
            trace_id: B3_TID.into(),
            normalized: B3_TID.into(),
            span_id: Some(B3_SID.into()),
            sampled: Some(true),
        }
    );
}

#[test]
fn b3_multi_64bit_is_left_padded() {
    let e = ex(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", B3_SID),
    ]);
    let c = ctx(&e);
    assert_eq!(c.trace_id, "a3ce929d0e0e4736");
    assert_eq!(c.normalized, "0000000000000000a3ce929d0e0e4736");
    assert_eq!(c.sampled, None);
    assert!(c.is_64bit());
}

#[test]
fn b3_multi_15_hex_digits() {
    let e = ex(&[("x-b3-traceid", "a3ce929d0e0e473"), ("x-b3-spanid", B3_SID)]);
    assert_bad(&e, "x-b3-traceid: 15 hex digits (needs 16 or 32)");
}

#[test]
fn b3_multi_uppercase_zero_and_not_hex() {
    let e = ex(&[
        ("x-b3-traceid", "A3CE929D0E0E4736"),
        ("x-b3-spanid", B3_SID),
    ]);
    assert_bad(&e, "x-b3-traceid: uppercase hex");
    let e = ex(&[
        ("x-b3-traceid", "0000000000000000"),
        ("x-b3-spanid", B3_SID),
    ]);
    assert_bad(&e, "x-b3-traceid: trace id is all zeros");
    let e = ex(&[
        ("x-b3-traceid", "a3ce929d0e0e473x"),
        ("x-b3-spanid", B3_SID),
    ]);
    assert_bad(&e, "x-b3-traceid: not hex");
    let e = ex(&[("x-b3-traceid", ""), ("x-b3-spanid", B3_SID)]);
    assert_bad(&e, "x-b3-traceid: empty");
    let e = ex(&[
        ("x-b3-traceid", B3_TID),
        ("x-b3-spanid", "E457B5A2E4D86BD1"),
    ]);
    assert_bad(&e, "x-b3-spanid: uppercase hex");
    let e = ex(&[
        ("x-b3-traceid", B3_TID),
        ("x-b3-spanid", "0000000000000000"),
    ]);
    assert_bad(&e, "x-b3-spanid: span id is all zeros");
    let e = ex(&[("x-b3-traceid", B3_TID), ("x-b3-spanid", &B3_TID[..20])]);
    assert_bad(&e, "x-b3-spanid: 20 hex digits (needs 16)");
}

#[test]
fn b3_multi_span_missing() {
    assert_bad(&one("x-b3-traceid", B3_TID), "x-b3-spanid: missing");
}

#[test]
fn b3_multi_span_without_trace_id() {
    assert_bad(
        &one("x-b3-spanid", B3_SID),
        "x-b3-traceid: missing (span id present)",
    );
}

#[test]
fn b3_sampling_decision_alone_is_nothing() {
    assert!(one("X-B3-Sampled", "0").is_empty());
    assert!(one("X-B3-Sampled", "1").is_empty());
    assert!(one("X-B3-Flags", "1").is_empty());
    assert!(ex(&[("x-b3-sampled", "1"), ("x-b3-flags", "1")]).is_empty());
}

#[test]
fn b3_multi_sampled_values() {
    let with = |s: &str| {
        ex(&[
            ("x-b3-traceid", B3_TID),
            ("x-b3-spanid", B3_SID),
            ("x-b3-sampled", s),
        ])
    };
    assert_eq!(ctx(&with("1")).sampled, Some(true));
    assert_eq!(ctx(&with("0")).sampled, Some(false));
    // Lenient: legacy true/false.
    assert_eq!(ctx(&with("true")).sampled, Some(true));
    assert_eq!(ctx(&with("false")).sampled, Some(false));
    // Invalid sampled: reported, but the context stays (sampled unknown).
    let e = with("yes");
    assert_eq!(reasons(&e), ["x-b3-sampled: must be 0 or 1"]);
    assert_eq!(e.contexts.len(), 1);
    assert_eq!(e.contexts[0].sampled, None);
    // Debug flag implies sampled.
    let e = ex(&[
        ("x-b3-traceid", B3_TID),
        ("x-b3-spanid", B3_SID),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
    ]);
    assert_eq!(ctx(&e).sampled, Some(true));
    // Other flag values are ignored.
    let e = ex(&[
        ("x-b3-traceid", B3_TID),
        ("x-b3-spanid", B3_SID),
        ("x-b3-flags", "0"),
    ]);
    assert_eq!(ctx(&e).sampled, None);
}

#[test]
fn b3_multi_bad_parent_keeps_context() {
    let e = ex(&[
        ("x-b3-traceid", B3_TID),
        ("x-b3-spanid", B3_SID),
        ("x-b3-parentspanid", "xyz"),
    ]);
    assert_eq!(reasons(&e), ["x-b3-parentspanid: not hex"]);
    assert_eq!(e.contexts.len(), 1);
}

// ------------------------------------------------------------------------------------------
// B3 single
// ------------------------------------------------------------------------------------------

#[test]
fn b3_single_official_example() {
    let e = one("b3", B3_SINGLE);
    assert_eq!(
        ctx(&e),
        &TraceContext {
            format: TraceFormat::B3Single,
            header: "b3".into(),
            trace_id: B3_TID.into(),
            normalized: B3_TID.into(),
            span_id: Some(B3_SID.into()),
            sampled: Some(true),
        }
    );
}

#[test]
fn b3_single_short_forms() {
    let c = ctx(&one("b3", "a3ce929d0e0e4736-e457b5a2e4d86bd1")).clone();
    assert_eq!(
        (c.normalized.as_str(), c.sampled),
        ("0000000000000000a3ce929d0e0e4736", None)
    );
    assert_eq!(
        ctx(&one("b3", &format!("{B3_TID}-{B3_SID}-d"))).sampled,
        Some(true)
    );
    assert_eq!(
        ctx(&one("b3", &format!("{B3_TID}-{B3_SID}-0"))).sampled,
        Some(false)
    );
}

#[test]
fn b3_single_sampling_only() {
    for v in ["0", "1", "d", " 0 "] {
        assert!(one("b3", v).is_empty(), "{v}");
    }
}

#[test]
fn b3_single_bad() {
    assert_bad(
        &one("b3", &format!("{B3_TID}-{B3_SID}-x")),
        "b3: sampling state must be 0, 1 or d",
    );
    assert_bad(
        &one("b3", &format!("{B3_TID}-{B3_SID}-1-{B3_PID}-1")),
        "b3: 5 fields (max 4)",
    );
    assert_bad(&one("b3", "abc"), "b3: needs {TraceId}-{SpanId}");
    assert_bad(&one("b3", ""), "b3: empty");
    assert_bad(
        &one("b3", &format!("{}-{B3_SID}", &B3_TID[..15])),
        "b3: trace id: 15 hex digits (needs 16 or 32)",
    );
    assert_bad(&one("b3", &format!("{B3_TID}-")), "b3: span id: empty");
    assert_bad(
        &one("b3", &format!("{B3_TID}-{B3_SID}-1-xyz")),
        "b3: parent span id: not hex",
    );
    assert_bad(
        &one("b3", &format!("{}-{B3_SID}", B3_TID.to_uppercase())),
        "b3: trace id: uppercase hex",
    );
}

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
    let bad =
        |v: &str, r: &str| assert_bad(&one("x-amzn-trace-id", v), &format!("x-amzn-trace-id: {r}"));
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

// ------------------------------------------------------------------------------------------
// Datadog
// ------------------------------------------------------------------------------------------

#[test]
fn datadog_decimal() {
    let e = ex(&[
        ("x-datadog-trace-id", DD_A3CE),
        ("x-datadog-parent-id", "5208512171318403364"),
        ("x-datadog-sampling-priority", "1"),
    ]);
    assert_eq!(
        ctx(&e),
        &TraceContext {
            format: TraceFormat::Datadog,
            header: "x-datadog-trace-id".into(),
            trace_id: DD_A3CE.into(),
            normalized: "0000000000000000a3ce929d0e0e4736".into(),
            span_id: Some("5208512171318403364".into()),
            sampled: Some(true),
        }
    );
}

#[test]
fn datadog_priorities_and_limits() {
    let prio = |p: &str| {
        ctx(&ex(&[
            ("x-datadog-trace-id", "1"),
            ("x-datadog-sampling-priority", p),
        ]))
        .sampled
    };
    assert_eq!(prio("2"), Some(true));
    assert_eq!(prio("0"), Some(false));
    assert_eq!(prio("-1"), Some(false));
    let c = ctx(&one("x-datadog-trace-id", "18446744073709551615")).clone();
    assert_eq!(c.normalized, "0000000000000000ffffffffffffffff");
    assert_eq!(
        ctx(&one("x-datadog-trace-id", "0001")).normalized,
        "00000000000000000000000000000001"
    );
    // Priority alone: a sampling decision only.
    assert!(one("x-datadog-sampling-priority", "1").is_empty());
}

#[test]
fn datadog_overflow() {
    assert_bad(
        &one("x-datadog-trace-id", "18446744073709551616"),
        "x-datadog-trace-id: overflows 64 bits",
    );
    assert_bad(
        &one("x-datadog-trace-id", &"9".repeat(100)),
        "x-datadog-trace-id: overflows 64 bits",
    );
}

#[test]
fn datadog_bad_values() {
    assert_bad(
        &one("x-datadog-trace-id", "0"),
        "x-datadog-trace-id: is zero",
    );
    assert_bad(
        &one("x-datadog-trace-id", "12a"),
        "x-datadog-trace-id: not an unsigned decimal",
    );
    assert_bad(
        &one("x-datadog-trace-id", "-12"),
        "x-datadog-trace-id: not an unsigned decimal",
    );
    assert_bad(&one("x-datadog-trace-id", ""), "x-datadog-trace-id: empty");
    assert_bad(
        &one("x-datadog-parent-id", "12"),
        "x-datadog-trace-id: missing (parent id present)",
    );
    // Bad optional headers are reported, the context stays.
    let e = ex(&[
        ("x-datadog-trace-id", "12"),
        ("x-datadog-parent-id", "x"),
        ("x-datadog-sampling-priority", "high"),
    ]);
    assert_eq!(
        reasons(&e),
        [
            "x-datadog-sampling-priority: not an integer",
            "x-datadog-parent-id: not an unsigned decimal"
        ]
    );
    assert_eq!(e.contexts.len(), 1);
    assert_eq!(
        (e.contexts[0].span_id.clone(), e.contexts[0].sampled),
        (None, None)
    );
}

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
// Request ids
// ------------------------------------------------------------------------------------------

#[test]
fn request_id_valid() {
    for name in ["x-request-id", "X-Trace-Id", "trace-id", "X-CORRELATION-ID"] {
        let e = one(name, " 9f1c2d3e-AbCd-4e5f ");
        let c = ctx(&e);
        assert_eq!(c.format, TraceFormat::RequestId);
        assert_eq!(c.header, name.to_ascii_lowercase());
        assert_eq!(c.trace_id, "9f1c2d3e-AbCd-4e5f", "case is kept");
        assert_eq!(c.normalized, "9f1c2d3e-AbCd-4e5f");
        assert_eq!((c.span_id.clone(), c.sampled), (None, None));
    }
    assert!(one("x-request-id", &"a".repeat(200)).malformed.is_empty());
}

#[test]
fn request_id_empty() {
    assert_bad(&one("x-request-id", ""), "x-request-id: empty");
    assert_bad(&one("x-request-id", " \t "), "x-request-id: empty");
}

#[test]
fn request_id_too_long() {
    assert_bad(
        &one("x-correlation-id", &"a".repeat(201)),
        "x-correlation-id: too long (201 bytes)",
    );
}

#[test]
fn request_id_non_printable() {
    assert_bad(
        &one("x-request-id", "abc\u{1}def"),
        "x-request-id: non-printable character",
    );
    assert_bad(
        &one("x-request-id", "abc def"),
        "x-request-id: non-printable character",
    );
    assert_bad(
        &one("x-request-id", "caf\u{e9}"),
        "x-request-id: non-printable character",
    );
    let e = extract([("x-request-id", &b"ab\0cd"[..])], &HeaderNames::default());
    assert_bad(&e, "x-request-id: non-printable character");
}

#[test]
fn request_id_repeated_header() {
    let e = ex(&[("x-request-id", "a"), ("X-Request-Id", "b")]);
    assert_bad(&e, "x-request-id: repeated header");
    assert_eq!(
        ctx(&ex(&[("x-request-id", "a"), ("x-request-id", "a")])).trace_id,
        "a"
    );
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
    match header {
        "traceparent" | "tracestate" => TraceFormat::W3c,
        h if h.starts_with("x-b3-") => TraceFormat::B3,
        "b3" => TraceFormat::B3Single,
        "uber-trace-id" => TraceFormat::Jaeger,
        "x-amzn-trace-id" => TraceFormat::Aws,
        h if h.starts_with("x-datadog-") => TraceFormat::Datadog,
        "sw8" => TraceFormat::Sw8,
        _ => TraceFormat::RequestId,
    }
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

const ALL_NAMES: [&str; 19] = [
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
    "sw8",
    "x-request-id",
    "x-trace-id",
    "trace-id",
    "x-correlation-id",
    "x-extra-id",
];

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
        for name in ALL_NAMES {
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

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
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
        "sw8" => SW8_EX,
        _ => "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    }
}

fn mutate(rng: &mut XorShift, v: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"-:;=,%@0aAfF \t\x00\x7f\xff3";
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            4 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            5 if !v.is_empty() && v.len() < 4096 => {
                let a = rng.below(v.len());
                let b = a + rng.below(v.len() - a);
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

fn random_case(rng: &mut XorShift, name: &str) -> String {
    name.chars()
        .map(|c| {
            if rng.next() & 1 == 1 {
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
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut contexts = 0usize;
    let mut malformed = 0usize;
    for _ in 0..50_000 {
        let n_headers = 1 + rng.below(4);
        let mut owned: Vec<(String, Vec<u8>)> = Vec::with_capacity(n_headers);
        for _ in 0..n_headers {
            let name = ALL_NAMES[rng.below(ALL_NAMES.len())];
            let value = match rng.below(4) {
                0 => {
                    let len = match rng.below(20) {
                        0 => rng.below(70_000),
                        _ => rng.below(80),
                    };
                    (0..len).map(|_| rng.next() as u8).collect()
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
