//! tracefs: where tracepoints live. Fresh machines may not have it mounted; production
//! agents mount it themselves, and so does this one (and says so).

use std::{ffi::CString, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(thiserror::Error, Debug)]
pub enum TracefsError {
    #[error("mounting tracefs at {TRACEFS}: {0} (needs CAP_SYS_ADMIN; or mount it: `mount -t tracefs tracefs {TRACEFS}`)")]
    Mount(std::io::Error),
}

/// True when tracefs (or debugfs's tracing directory) is usable.
pub fn is_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
}

/// True when the running kernel has the tracepoint `category:event` (tracefs mounted).
pub fn has_event(category: &str, event: &str) -> bool {
    [TRACEFS, "/sys/kernel/debug/tracing"].iter().any(|root| {
        Path::new(root)
            .join("events")
            .join(category)
            .join(event)
            .is_dir()
    })
}

/// Mounts tracefs when missing. Returns true when this call mounted it.
pub fn ensure_mounted() -> Result<bool, TracefsError> {
    if is_mounted() {
        return Ok(false);
    }
    tracing::info!("tracefs is not mounted: mounting it at {TRACEFS}");
    let src = CString::new("tracefs").expect("static");
    let target = CString::new(TRACEFS).expect("static");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_told_from_names_the_kernel_does_not_have() {
        assert!(!has_event("sock", "traceid_no_such_event"));
        assert!(!has_event("traceid_no_such_category", "sock_recv_length"));
        // Present since Linux 4.16; only visible where tracefs is mounted (the agent mounts it
        // at start when it is not).
        if is_mounted() {
            assert!(has_event("sock", "inet_sock_set_state"));
        }
    }
}
