//! What the Go probes need from a binary: the functions they attach to, located, with the
//! file offsets of their entries and RET instructions, or why the binary cannot be
//! instrumented.

use super::binary::{GoBinary, InspectError};
use super::buildinfo::major_minor;

/// Oldest Go whose arguments the probes can read: the register ABI came with Go 1.17.
pub const MIN_GO: (u32, u32) = (1, 17);

/// Where a function is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// At its entry only (arguments).
    Entry,
    /// At its entry and at each RET instruction (results, the end of the call).
    EntryAndReturns,
}

/// The functions the Go probes attach to (issue 15), and how.
pub const FUNCTIONS: &[(&str, Probe)] = &[
    // The goroutine serving an inbound request, for as long as it serves it.
    ("net/http.serverHandler.ServeHTTP", Probe::EntryAndReturns),
    // The goroutine that starts an outbound request, until its response.
    ("net/http.(*Transport).roundTrip", Probe::EntryAndReturns),
    // Goroutine ancestry: the new goroutine is its result.
    ("runtime.newproc1", Probe::EntryAndReturns),
    // The goroutine that serves every HTTP/1 request of a server connection, one after the
    // other: the connection is an argument.
    ("net/http.(*conn).serve", Probe::Entry),
    // The goroutine that asks for a request on a client connection (net/http's writeLoop
    // goroutine then writes it): the connection is an argument.
    ("net/http.(*persistConn).roundTrip", Probe::Entry),
    // TLS plaintext written: the buffer is an argument.
    ("crypto/tls.(*Conn).Write", Probe::Entry),
    // TLS plaintext read: the count is a result.
    ("crypto/tls.(*Conn).Read", Probe::EntryAndReturns),
];

/// A located function's probe sites, as file offsets (what uprobes take).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSites {
    pub function: &'static str,
    pub probe: Probe,
    /// Entry and end addresses in the program.
    pub entry: u64,
    pub end: u64,
    pub entry_offset: u64,
    /// Empty for [`Probe::Entry`].
    pub ret_offsets: Vec<u64>,
}

/// Why one function cannot be probed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("absent")]
    Absent,
    #[error("no RET instruction: its returns cannot be seen")]
    NoReturn,
    #[error("its entry {0:#x} is in no executable segment")]
    EntryUnmapped(u64),
    #[error("{0}")]
    Inspect(#[from] InspectError),
}

/// Why a Go binary cannot be instrumented at all.
#[derive(Debug, thiserror::Error)]
pub enum CannotInstrument {
    #[error("not amd64 ({0:?}): RET sites are decoded for x86-64 only")]
    NotAmd64(object::Architecture),
    #[error("{0} is older than Go 1.17: no register ABI to read arguments from")]
    TooOld(String),
    #[error("Go version {0:?} not understood")]
    UnknownVersion(String),
    #[error("pclntab unreadable: {0}")]
    Pclntab(InspectError),
    #[error("none of the probed functions located ({0})")]
    NothingLocated(String),
}

/// Each probed function, located or with why not.
#[derive(Debug)]
pub struct Plan {
    pub functions: Vec<(&'static str, Result<ProbeSites, SiteError>)>,
}

impl Plan {
    pub fn located(&self) -> impl Iterator<Item = &ProbeSites> {
        self.functions.iter().filter_map(|(_, r)| r.as_ref().ok())
    }
}

/// Locates [`FUNCTIONS`] in `binary`, or says why it cannot be instrumented.
pub fn plan(binary: &GoBinary) -> Result<Plan, CannotInstrument> {
    let arch = binary.architecture();
    if arch != object::Architecture::X86_64 {
        return Err(CannotInstrument::NotAmd64(arch));
    }
    let version = &binary.build_info().go_version;
    match major_minor(version) {
        None => return Err(CannotInstrument::UnknownVersion(version.clone())),
        Some(v) if v < MIN_GO => return Err(CannotInstrument::TooOld(version.clone())),
        Some(_) => {}
    }
    let table = binary.pclntab().map_err(CannotInstrument::Pclntab)?;
    let mut functions = Vec::with_capacity(FUNCTIONS.len());
    for &(function, probe) in FUNCTIONS {
        let sites = match table.find(function) {
            // A table that lies somewhere is not trusted for any function.
            Err(e) => return Err(CannotInstrument::Pclntab(e.into())),
            Ok(None) => Err(SiteError::Absent),
            Ok(Some(range)) => locate(binary, function, probe, range),
        };
        functions.push((function, sites));
    }
    let plan = Plan { functions };
    if plan.located().next().is_none() {
        let why = plan
            .functions
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(CannotInstrument::NothingLocated(why));
    }
    Ok(plan)
}

fn locate(
    binary: &GoBinary,
    function: &'static str,
    probe: Probe,
    range: super::pclntab::FunctionRange,
) -> Result<ProbeSites, SiteError> {
    let entry_offset = binary
        .file_offset(range.entry)
        .ok_or(SiteError::EntryUnmapped(range.entry))?;
    let ret_offsets = match probe {
        Probe::Entry => Vec::new(),
        Probe::EntryAndReturns => binary.ret_offsets(range)?,
    };
    if probe == Probe::EntryAndReturns && ret_offsets.is_empty() {
        return Err(SiteError::NoReturn);
    }
    Ok(ProbeSites {
        function,
        probe,
        entry: range.entry,
        end: range.end,
        entry_offset,
        ret_offsets,
    })
}
