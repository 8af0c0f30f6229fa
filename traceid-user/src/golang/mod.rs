//! Go programs from the outside: recognise a Go executable and its version
//! ([`buildinfo`]), locate its functions through its function table ([`pclntab`]), find
//! the RET instructions where plain uprobes stand in for uretprobes ([`retsites`]), all of
//! it from the file ([`binary`]) and for the Go programs running on the host
//! ([`discover`]); [`probes`] says what the Go probes need and whether a binary has it;
//! [`offsets`] gives the struct offsets they read through, from the DWARF ([`dwarf`]) or a
//! table per Go version.
//!
//! Pure userspace and read-only: the kernel probes build on it. docs/go.md has the layout
//! and ABI facts they use.

pub mod binary;
pub mod buildinfo;
pub mod discover;
pub mod dwarf;
pub mod offsets;
pub mod pclntab;
pub mod probes;
pub mod retsites;

pub use binary::{GoBinary, InspectError};
pub use buildinfo::BuildInfo;
pub use discover::{discover, Discovery, RunningGo};
pub use pclntab::{FunctionRange, Pclntab};
pub use probes::{plan, CannotInstrument, Plan, Probe, ProbeSites};

#[cfg(test)]
pub(crate) mod tests;
