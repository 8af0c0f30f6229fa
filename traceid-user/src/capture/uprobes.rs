//! What the three uprobe attachers (OpenSSL, Go goroutines, Go crypto/tls) share: finding and
//! loading their programs, and placing one at a file offset through perf or, once perf has
//! refused, through tracefs.

use std::os::fd::AsFd as _;
use std::path::Path;

use aya::programs::{uprobe::UProbeScope, UProbe};
use aya::Ebpf;

use super::tls::{error_chain, permission_denied, tracefs_root};
use super::tracefs_uprobe::TracefsUprobes;

/// The uprobe program `name` of the object.
pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))
}

/// Loads the uprobe programs `names` into the kernel.
pub(super) fn load<'n>(
    ebpf: &mut Ebpf,
    names: impl IntoIterator<Item = &'n str>,
) -> Result<(), String> {
    for name in names {
        program(ebpf, name)?
            .load()
            .map_err(|e| format!("loading {name}: {}", error_chain(&e)))?;
    }
    Ok(())
}

/// A plain uprobe running `name` at `offset` in the file at `path`: through perf, or through
/// tracefs once perf has refused (then every later probe goes there too). `probes` names the
/// probes in the message that says so.
pub(super) fn attach_at(
    ebpf: &mut Ebpf,
    name: &str,
    path: &Path,
    offset: u64,
    tracefs: &mut Option<TracefsUprobes>,
    probes: &str,
) -> Result<(), String> {
    let prog = program(ebpf, name)?;
    if tracefs.is_none() {
        match prog.attach(offset, path, UProbeScope::AllProcesses) {
            Ok(_) => return Ok(()),
            Err(e) if !permission_denied(&e) => return Err(error_chain(&e)),
            Err(e) => tracing::info!(
                "perf refuses to create uprobes ({}): creating the {probes} through tracefs",
                error_chain(&e)
            ),
        }
    }
    let fd = prog.fd().map_err(|e| error_chain(&e))?;
    tracefs
        .get_or_insert_with(|| TracefsUprobes::new(tracefs_root()))
        .attach(fd.as_fd(), false, path, offset)
        .map_err(|e| e.to_string())
}
