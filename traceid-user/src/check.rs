//! `traceid check`: can the agent run here, and what would be missing.

use std::collections::BTreeSet;
use std::fs;

/// One preflight line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub name: String,
    pub ok: bool,
    /// Fatal: the agent cannot run without it.
    pub required: bool,
    pub detail: String,
}

/// Capabilities the agent uses and what each one enables.
pub const CAPABILITIES: &[(u32, &str, bool, &str)] = &[
    (39, "CAP_BPF", true, "loading the kernel programs and maps"),
    (
        38,
        "CAP_PERFMON",
        true,
        "attaching tracepoints and uprobes and reading process memory from eBPF",
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        false,
        "mounting tracefs when missing, creating uprobes through perf on recent kernels (else through tracefs), loading on kernels older than 6.3",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        false,
        "the TIME_WAIT census through netlink sock_diag",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        false,
        "reading /proc/<pid>/fd of other processes to follow connections opened before start-up",
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        false,
        "reading other processes' /proc entries and libraries",
    ),
];

/// Effective capability set of this process.
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Names of required capabilities missing from `caps`.
pub fn missing_required(caps: u64) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .filter(|(bit, _, required, _)| *required && caps & (1u64 << bit) == 0)
        .map(|(_, name, _, _)| *name)
        .collect()
}

/// TLS libraries mapped by running processes (for the TLS capture, which attaches to them).
pub fn tls_libraries() -> BTreeSet<String> {
    let mut libs = BTreeSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return libs;
    };
    for e in dir.flatten().take(100_000) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) {
            for l in maps.lines() {
                if let Some(path) = l.split_whitespace().nth(5) {
                    if path.contains("libssl.so") && libs.len() < 64 {
                        libs.insert(path.to_string());
                    }
                }
            }
        }
    }
    libs
}

pub fn run_checks() -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim().to_string();
    let (major, minor) = parse_release(&release);
    lines.push(CheckLine {
        name: "kernel".into(),
        ok: (major, minor) >= (6, 3),
        required: true,
        detail: if (major, minor) >= (6, 3) {
            format!("{release} (ring buffer and socket tracepoints available)")
        } else {
            format!(
                "{release}: needs Linux 6.3 or newer (the socket tracepoints \
                 sock:sock_recv_length and sock:sock_send_length carry the captured data)"
            )
        },
    });
    let btf = std::path::Path::new(crate::capture::btf::VMLINUX_BTF).exists();
    lines.push(CheckLine {
        name: "btf".into(),
        ok: btf,
        required: false,
        detail: if btf {
            match crate::capture::btf::kernel_offsets() {
                Ok(_) => "kernel BTF found; socket endpoints readable".into(),
                Err(e) => format!("kernel BTF unusable ({e}): requests are seen, endpoints are not"),
            }
        } else {
            "no /sys/kernel/btf/vmlinux: requests are seen, connection endpoints are not (needs CONFIG_DEBUG_INFO_BTF)".into()
        },
    });
    let caps = effective_caps();
    for (bit, name, required, what) in CAPABILITIES {
        let ok = caps & (1u64 << bit) != 0;
        lines.push(CheckLine {
            name: name.to_string(),
            ok,
            required: *required,
            detail: if ok {
                format!("present: {what}")
            } else if *required {
                format!(
                    "missing: needed for {what}; run as root or grant it (setcap/securityContext)"
                )
            } else {
                format!("missing: disables {what}")
            },
        });
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    lines.push(tracefs_line(
        crate::capture::tracefs::is_mounted(),
        tracefs_mount_point(&mounts),
        caps & (1u64 << 21) != 0,
    ));
    let uprobe_events =
        std::path::Path::new(crate::capture::tracefs::TRACEFS).join("uprobe_events");
    lines.push(uprobes_line(
        caps & (1u64 << 21) != 0,
        writable(&uprobe_events),
    ));
    let built = crate::capture::object_built();
    lines.push(CheckLine {
        name: "kernel programs".into(),
        ok: built,
        required: true,
        detail: if built {
            format!(
                "embedded ({} tracepoints)",
                crate::capture::TRACEPOINTS.len()
            )
        } else {
            "not built into this binary: run `cargo xtask build-ebpf` then rebuild".into()
        },
    });
    let libs = tls_libraries();
    lines.push(CheckLine {
        name: "tls libraries".into(),
        ok: true,
        required: false,
        detail: if libs.is_empty() {
            "no process maps libssl right now".into()
        } else {
            format!(
                "found {}: the agent attaches its OpenSSL probes to these (and to libraries of processes started later)",
                libs.into_iter().collect::<Vec<_>>().join(", ")
            )
        },
    });
    lines.extend(go_lines(&crate::golang::discover(std::path::Path::new(
        "/proc",
    ))));
    lines.push(CheckLine {
        name: "kprobes".into(),
        ok: true,
        required: false,
        detail: "not used: tracepoints only".into(),
    });
    lines
}

/// Go programs listed one per line at most; more are counted.
const MAX_GO_LINES: usize = 32;

/// The Go lines: a summary, then each running Go program with what the Go probes find in
/// it, or why it cannot be instrumented; processes that could not be looked at, counted.
fn go_lines(found: &crate::golang::Discovery) -> Vec<CheckLine> {
    let plans: Vec<_> = found
        .go
        .iter()
        .map(|g| crate::golang::plan(&g.binary))
        .collect();
    let instrumentable = plans.iter().filter(|p| p.is_ok()).count();
    let mut lines = vec![CheckLine {
        name: "go programs".into(),
        ok: true,
        required: false,
        detail: if found.go.is_empty() {
            "no Go program running right now".into()
        } else {
            format!(
                "{} running, {instrumentable} of them instrumentable (amd64, Go 1.17+, probed functions located)",
                found.go.len()
            )
        },
    }];
    for (running, plan) in found.go.iter().zip(&plans).take(MAX_GO_LINES) {
        let build = running.binary.build_info();
        let module = build
            .module_path
            .as_deref()
            .map_or(String::new(), |m| format!(", {m}"));
        let what = format!(
            "{} (pid {}, {}{module})",
            running.path, running.pid, build.go_version
        );
        lines.push(go_program_line(&what, plan));
    }
    if found.go.len() > MAX_GO_LINES {
        lines.push(CheckLine {
            name: "go program".into(),
            ok: true,
            required: false,
            detail: format!("and {} more", found.go.len() - MAX_GO_LINES),
        });
    }
    if !found.errors.is_empty() || found.skipped > 0 {
        let mut left_out = Vec::new();
        if let Some(first) = found.errors.first() {
            let n = found.errors.len();
            left_out.push(format!(
                "{n} process{} could not be looked at (e.g. {first})",
                if n == 1 { "" } else { "es" }
            ));
        }
        if found.skipped > 0 {
            left_out.push(format!(
                "{} executables left out past the limit",
                found.skipped
            ));
        }
        lines.push(CheckLine {
            name: "go programs".into(),
            ok: false,
            required: false,
            detail: left_out.join("; "),
        });
    }
    lines
}

/// One Go program: its probed functions (with their RET sites where returns are probed),
/// those not located and why; or why it cannot be instrumented.
fn go_program_line(
    what: &str,
    plan: &Result<crate::golang::Plan, crate::golang::CannotInstrument>,
) -> CheckLine {
    use crate::golang::Probe;
    let (ok, detail) = match plan {
        Err(why) => (false, format!("{what}: cannot instrument: {why}")),
        Ok(plan) => {
            let mut located = Vec::new();
            let mut missing = Vec::new();
            for (name, sites) in &plan.functions {
                match sites {
                    Ok(s) if s.probe == Probe::Entry => located.push(format!("{name} (entry)")),
                    Ok(s) => {
                        let n = s.ret_offsets.len();
                        located.push(format!(
                            "{name} ({n} RET site{})",
                            if n == 1 { "" } else { "s" }
                        ));
                    }
                    Err(e) => missing.push(format!("{name} ({e})")),
                }
            }
            let mut detail = format!("{what}: located {}", located.join(", "));
            if !missing.is_empty() {
                detail.push_str(&format!("; not located: {}", missing.join(", ")));
            }
            (true, detail)
        }
    };
    CheckLine {
        name: "go program".into(),
        ok,
        required: false,
        detail,
    }
}

/// Where tracefs is mounted, from a mount table (`/proc/self/mounts`): it can be mounted and
/// still unreadable by this user.
fn tracefs_mount_point(mounts: &str) -> Option<&str> {
    mounts.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let (_source, at, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        (fs_type == "tracefs").then_some(at)
    })
}

/// The tracefs line: `usable` when its events directory can be read, `mounted_at` from the
/// mount table, `can_mount` with CAP_SYS_ADMIN.
fn tracefs_line(usable: bool, mounted_at: Option<&str>, can_mount: bool) -> CheckLine {
    use crate::capture::tracefs::TRACEFS;
    let (ok, detail) = match (usable, mounted_at) {
        (true, _) => (true, "mounted".to_string()),
        (false, Some(at)) => (
            false,
            format!("mounted at {at} but not readable by this user: run as root (the agent attaches its tracepoints through it)"),
        ),
        (false, None) if can_mount => (
            true,
            format!("not mounted: the agent mounts it at {TRACEFS} on start"),
        ),
        (false, None) => (
            false,
            format!("not mounted and no CAP_SYS_ADMIN to mount it: `mount -t tracefs tracefs {TRACEFS}`"),
        ),
    };
    CheckLine {
        name: "tracefs".into(),
        ok,
        required: true,
        detail,
    }
}

/// Whether this process may write `path` (effective ids and capabilities; a read-only mount
/// says no).
fn writable(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// The TLS capture line: its uprobes are created through perf with CAP_SYS_ADMIN, else
/// through tracefs's `uprobe_events` when this process may write it (Linux 6.14 and stable
/// kernels with the same fix refuse perf uprobes to CAP_PERFMON alone).
fn uprobes_line(sys_admin: bool, uprobe_events_writable: bool) -> CheckLine {
    let (ok, detail) = match (sys_admin, uprobe_events_writable) {
        (true, _) => (true, "created through perf (CAP_SYS_ADMIN): HTTPS via OpenSSL is seen".to_string()),
        (false, true) => (
            true,
            "created through tracefs uprobe_events (perf creates uprobes only for CAP_SYS_ADMIN on recent kernels): HTTPS via OpenSSL is seen".to_string(),
        ),
        (false, false) => (
            false,
            format!("TLS capture is off, HTTPS is not seen: needs CAP_SYS_ADMIN, or uid 0 with a writable {}/uprobe_events", crate::capture::tracefs::TRACEFS),
        ),
    };
    CheckLine {
        name: "tls uprobes".into(),
        ok,
        required: false,
        detail,
    }
}

fn parse_release(r: &str) -> (u32, u32) {
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_parsing() {
        assert_eq!(parse_release("6.18.44-fc-v595"), (6, 18));
        assert_eq!(parse_release("5.4.0"), (5, 4));
        assert_eq!(parse_release("garbage"), (0, 0));
    }

    #[test]
    fn tracefs_mounted_but_unreadable_is_not_called_unmounted() {
        let mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw,nosuid 0 0\n";
        assert_eq!(tracefs_mount_point(mounts), Some("/sys/kernel/tracing"));
        assert_eq!(tracefs_mount_point("sysfs /sys sysfs rw 0 0\n"), None);

        let line = tracefs_line(false, tracefs_mount_point(mounts), false);
        assert!(!line.ok && line.required);
        assert!(
            line.detail
                .starts_with("mounted at /sys/kernel/tracing but not readable by this user"),
            "{}",
            line.detail
        );
        assert_eq!(tracefs_line(true, Some("/x"), false).detail, "mounted");
        assert!(tracefs_line(false, None, false)
            .detail
            .starts_with("not mounted and no CAP_SYS_ADMIN"));
        assert!(tracefs_line(false, None, true).ok);
    }

    #[test]
    fn tls_capture_says_how_its_probes_are_made_or_why_it_is_off() {
        assert!(uprobes_line(true, false).ok);
        let tracefs = uprobes_line(false, true);
        assert!(tracefs.ok && tracefs.detail.contains("uprobe_events"));
        let off = uprobes_line(false, false);
        assert!(!off.ok && !off.required);
        assert!(
            off.detail
                .starts_with("TLS capture is off, HTTPS is not seen: needs CAP_SYS_ADMIN"),
            "{}",
            off.detail
        );
    }

    #[test]
    fn go_programs_say_what_is_located_or_why_not() {
        use crate::golang::probes::{ProbeSites, SiteError};
        use crate::golang::{CannotInstrument, Plan, Probe};
        let sites = |function, probe, rets: usize| ProbeSites {
            function,
            probe,
            entry: 0x40_1000,
            end: 0x40_1100,
            entry_offset: 0x1000,
            ret_offsets: (0..rets as u64).map(|i| 0x1010 + i).collect(),
        };
        let plan = Ok(Plan {
            functions: vec![
                (
                    "net/http.serverHandler.ServeHTTP",
                    Ok(sites(
                        "net/http.serverHandler.ServeHTTP",
                        Probe::EntryAndReturns,
                        2,
                    )),
                ),
                (
                    "runtime.newproc1",
                    Ok(sites("runtime.newproc1", Probe::EntryAndReturns, 1)),
                ),
                (
                    "crypto/tls.(*Conn).Write",
                    Ok(sites("crypto/tls.(*Conn).Write", Probe::Entry, 0)),
                ),
                ("net/http.(*Transport).roundTrip", Err(SiteError::Absent)),
            ],
        });
        let line = go_program_line("/srv/app (pid 7, go1.19.8)", &plan);
        assert!(line.ok && !line.required);
        assert_eq!(
            line.detail,
            "/srv/app (pid 7, go1.19.8): located net/http.serverHandler.ServeHTTP (2 RET sites), \
             runtime.newproc1 (1 RET site), crypto/tls.(*Conn).Write (entry); \
             not located: net/http.(*Transport).roundTrip (absent)"
        );
        let old = go_program_line(
            "/srv/old (pid 8, go1.16.2)",
            &Err(CannotInstrument::TooOld("go1.16.2".into())),
        );
        assert!(!old.ok);
        assert_eq!(
            old.detail,
            "/srv/old (pid 8, go1.16.2): cannot instrument: go1.16.2 is older than Go 1.17: no register ABI to read arguments from"
        );
        let none = go_lines(&crate::golang::Discovery::default());
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].detail, "no Go program running right now");
    }

    #[test]
    fn missing_capabilities_are_named() {
        assert_eq!(missing_required(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert!(missing_required((1 << 39) | (1 << 38)).is_empty());
        assert_eq!(missing_required(1 << 38), vec!["CAP_BPF"]);
    }
}
