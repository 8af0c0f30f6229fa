//! The struct offsets the Go probes read through, per Go version.
//!
//! Only versions whose layout was checked on a real build are listed (docs/go.md says how:
//! the DWARF of an unstripped build, `debug/dwarf`); any other version is reported as not
//! instrumentable for linking rather than read with offsets that might be wrong.

use traceid_common::GoOffsets;

use super::buildinfo::major_minor;

/// Go 1.19 (checked on Debian's go1.19.8, linux/amd64).
const GO_1_19: GoOffsets = GoOffsets {
    g_goid: 152,
    http_conn_rwc: 16,
    persist_conn_conn: 80,
    netfd_sysfd: 16,
    netfd_family: 56,
    netfd_sotype: 64,
};

/// Verified layouts by (major, minor) Go version.
const VERIFIED: &[((u32, u32), GoOffsets)] = &[((1, 19), GO_1_19)];

/// The offsets for a binary built by `go_version` (e.g. `go1.19.8`), when verified.
pub fn for_version(go_version: &str) -> Option<GoOffsets> {
    let version = major_minor(go_version)?;
    VERIFIED
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, offsets)| *offsets)
}

/// The Go versions whose layout is known, for messages (`1.19`).
pub fn verified_versions() -> String {
    VERIFIED
        .iter()
        .map(|((major, minor), _)| format!("{major}.{minor}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verified_versions_have_offsets() {
        assert_eq!(for_version("go1.19.8"), Some(GO_1_19));
        assert_eq!(for_version("go1.19"), Some(GO_1_19));
        assert_eq!(for_version("go1.20.1"), None);
        assert_eq!(for_version("go1.18"), None);
        assert_eq!(for_version("devel"), None);
        assert_eq!(verified_versions(), "1.19");
    }
}
