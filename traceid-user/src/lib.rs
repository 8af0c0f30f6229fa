//! traceid: finds, from the outside, which service loses the trace id.
//!
//! The pipeline, in the order data flows:
//! - [`capture`]: kernel programs and their ring buffer (the only eBPF-facing part);
//! - [`event`]: decoding raw records;
//! - [`engine`]: connection table, HTTP reassembly ([`http`]), trace context ([`tracectx`]),
//!   findings; pure, fed by live capture or by a recording;
//! - [`lifecycle`]: connection lifecycle, TIME_WAIT census (sock_diag) and `buildup`;
//! - [`report`]: JSON lines, human lines, the diagnosis.

// Dependencies of the `traceid` binary only (src/main.rs); `unused_crate_dependencies`
// checks each target against the whole package's list.
use {clap as _, signal_hook as _, tracing_subscriber as _};
// The benchmarks' dev-dependency, unused by the unit tests.
#[cfg(test)]
use criterion as _;

pub mod agent;
pub mod capture;
pub mod check;
pub mod engine;
pub mod event;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod recording;
pub mod report;
pub mod tracectx;
