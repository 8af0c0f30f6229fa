//! Helpers and example header values shared by the per-format tests (a `mod tests` at the
//! bottom of each format file) and the cross-format tests (`tests.rs`).

use super::{extract, Extraction, HeaderNames, TraceContext};

pub(super) const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
pub(super) const B3_TID: &str = "80f198ee56343ba864fe8b2a57d3eff7";
pub(super) const B3_SID: &str = "e457b5a2e4d86bd1";
pub(super) const B3_PID: &str = "05e3ac9a4f6e3b90";
pub(super) const B3_SINGLE: &str =
    "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
pub(super) const XRAY: &str =
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
pub(super) const SW8_EX: &str = "1-MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=-MWU3YzIwNGE3YmY3MTFlYWI4NThhY2RlNDgwMDExMjI=-0-c2VydmljZQ==-aW5zdGFuY2U=-L2FwcA==-MTI3LjAuMC4xOjgwODA=";
/// grpc-trace-bin: version 0, trace id 4bf92f35..4736, span id 00f067aa0ba902b7, sampled.
pub(super) const GRPC_BIN: &str = "AABL+S81d7NNpqPOkp0ODkc2AQDwZ6oLqQK3AgE=";
/// 0xa3ce929d0e0e4736 in decimal.
pub(super) const DD_A3CE: &str = "11803532876627986230";

pub(super) fn ex(headers: &[(&str, &str)]) -> Extraction {
    extract(
        headers.iter().map(|(n, v)| (*n, v.as_bytes())),
        &HeaderNames::default(),
    )
}

pub(super) fn ex_with(names: &HeaderNames, headers: &[(&str, &str)]) -> Extraction {
    extract(headers.iter().map(|(n, v)| (*n, v.as_bytes())), names)
}

pub(super) fn one(name: &str, value: &str) -> Extraction {
    ex(&[(name, value)])
}

/// The only context; panics (test only) when there is not exactly one context and no malformed.
pub(super) fn ctx(e: &Extraction) -> &TraceContext {
    assert!(
        e.malformed.is_empty(),
        "unexpected malformed: {:?}",
        e.malformed
    );
    assert_eq!(e.contexts.len(), 1, "contexts: {:?}", e.contexts);
    &e.contexts[0]
}

/// The reasons of all malformed headers.
pub(super) fn reasons(e: &Extraction) -> Vec<&str> {
    e.malformed.iter().map(|m| m.reason.as_str()).collect()
}

/// Exactly one malformed header with this reason and no context.
pub(super) fn assert_bad(e: &Extraction, reason: &str) {
    assert!(
        e.contexts.is_empty(),
        "unexpected contexts: {:?}",
        e.contexts
    );
    assert_eq!(reasons(e), vec![reason]);
}

pub(super) fn tp(trace: &str, parent: &str, flags: &str) -> String {
    format!("00-{trace}-{parent}-{flags}")
}
