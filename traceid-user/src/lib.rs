//! traceid: finds, from the outside, which service loses the trace id.
//!
//! The pipeline, in the order data flows (docs/architecture.md):
//! - [`capture`]: kernel programs and their ring buffer (the only eBPF-facing part);
//! - [`pipeline`]: decodes each raw record once ([`event`]) and feeds the producers, for live
//!   runs ([`agent`]) and replays alike;
//! - producers: [`engine`] (connections, [`protocol`] parsers, trace context from [`tracectx`],
//!   linking, findings) and [`lifecycle`] (TCP lifecycle, TIME_WAIT census, `buildup`);
//! - [`record`]: what they emit, the JSON-line contract;
//! - sinks: [`report`] (JSON lines, human lines, the diagnosis), [`metrics`], [`recording`].
//!
//! Dependencies point from sinks to producers and from producers to `record`, never back
//! (checked by a unit test of the module graph).

// Dependencies of the `traceid` binary only (src/main.rs); `unused_crate_dependencies`
// checks each target against the whole package's list.
use {anyhow as _, clap as _, signal_hook as _, tracing_subscriber as _};
// The benchmarks' dev-dependencies (criterion; this crate with `test-util`), unused by the
// unit tests.
#[cfg(test)]
use {criterion as _, traceid as _};

pub mod agent;
pub mod capture;
pub mod check;
pub mod engine;
pub mod event;
pub mod golang;
pub mod identity;
pub mod lifecycle;
pub mod mem;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod record;
pub mod recording;
pub mod report;
pub mod sched;
pub mod tracectx;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

#[cfg(test)]
mod module_graph;
