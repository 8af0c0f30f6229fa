//! The struct offsets the Go probes read through: from the binary's DWARF when it has it
//! ([`super::dwarf`]), else from a table per Go version.
//!
//! Only versions whose layout was checked on a real build are in the table (docs/go.md says
//! how: the DWARF of an unstripped build, `debug/dwarf`); a stripped binary of any other
//! version is reported as not instrumentable for linking rather than read with offsets that
//! might be wrong. An unstripped one of any version is read with its own layout.

use std::fmt::Debug;
use std::path::Path;

use traceid_common::GoOffsets;

use super::buildinfo::major_minor;
use super::dwarf::{DwarfError, StructLayouts};

/// Where a binary's offsets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetsSource {
    Dwarf,
    VersionTable,
}

impl std::fmt::Display for OffsetsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OffsetsSource::Dwarf => "DWARF",
            OffsetsSource::VersionTable => "version table",
        })
    }
}

/// Neither source has the offsets: the version is not in the table, and the DWARF is
/// absent or lacks something.
#[derive(Debug, thiserror::Error)]
#[error(
    "{go_version}: struct offsets not in the version table (Go {known}) and not in the DWARF: {dwarf}",
    known = verified_versions()
)]
pub struct NoOffsets {
    pub go_version: String,
    pub dwarf: DwarfError,
}

/// The offsets from the DWARF when it has them all, else the table's. When both exist and
/// disagree, the DWARF is the binary's own description of itself and wins; the difference
/// is logged at debug (`what` and `exe` say whose offsets).
pub fn prefer_dwarf<T: PartialEq + Debug>(
    what: &str,
    exe: &Path,
    dwarf: Result<T, DwarfError>,
    table: Option<T>,
) -> Result<(T, OffsetsSource), DwarfError> {
    match (dwarf, table) {
        (Ok(from_dwarf), table) => {
            if let Some(from_table) = table.filter(|t| *t != from_dwarf) {
                tracing::debug!(
                    "{what} offsets of {}: DWARF {from_dwarf:?} differ from the version table's {from_table:?}: using DWARF",
                    exe.display()
                );
            }
            Ok((from_dwarf, OffsetsSource::Dwarf))
        }
        (Err(_), Some(from_table)) => Ok((from_table, OffsetsSource::VersionTable)),
        (Err(e), None) => Err(e),
    }
}

/// The structures [`GoOffsets`] are read from.
const STRUCTS: &[&str] = &[
    "runtime.g",
    "net/http.conn",
    "net/http.persistConn",
    "net.netFD",
    "internal/poll.FD",
];

/// [`GoOffsets`] from the layouts of [`STRUCTS`]; each member's type is checked, so that the
/// kernel's 8-byte reads (`int`, `int64`) and interface reads (`net.Conn`) stay right.
pub fn from_dwarf(layouts: &StructLayouts) -> Result<GoOffsets, DwarfError> {
    Ok(GoOffsets {
        g_goid: layouts.offset(&[("runtime.g", "goid", "int64")])?,
        http_conn_rwc: layouts.offset(&[("net/http.conn", "rwc", "net.Conn")])?,
        persist_conn_conn: layouts.offset(&[("net/http.persistConn", "conn", "net.Conn")])?,
        netfd_sysfd: layouts.offset(&[
            ("net.netFD", "pfd", "internal/poll.FD"),
            ("internal/poll.FD", "Sysfd", "int"),
        ])?,
        netfd_family: layouts.offset(&[("net.netFD", "family", "int")])?,
        netfd_sotype: layouts.offset(&[("net.netFD", "sotype", "int")])?,
    })
}

/// The offsets for the Go executable at `exe`, built by `go_version`: DWARF first, the
/// version table otherwise.
pub fn for_binary(exe: &Path, go_version: &str) -> Result<(GoOffsets, OffsetsSource), NoOffsets> {
    let dwarf = StructLayouts::read(exe, STRUCTS).and_then(|layouts| from_dwarf(&layouts));
    prefer_dwarf("Go linking", exe, dwarf, for_version(go_version)).map_err(|dwarf| NoOffsets {
        go_version: go_version.to_string(),
        dwarf,
    })
}

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

    #[test]
    fn dwarf_wins_over_the_table_which_stands_in_without_it() {
        let exe = Path::new("/bin/app");
        let table = GO_1_19;
        let other = GoOffsets {
            g_goid: 160,
            ..GO_1_19
        };
        assert_eq!(
            prefer_dwarf("test", exe, Ok(other), Some(table)).unwrap(),
            (other, OffsetsSource::Dwarf)
        );
        assert_eq!(
            prefer_dwarf("test", exe, Ok(other), None).unwrap(),
            (other, OffsetsSource::Dwarf)
        );
        assert_eq!(
            prefer_dwarf("test", exe, Err(DwarfError::Absent), Some(table)).unwrap(),
            (table, OffsetsSource::VersionTable)
        );
        assert!(matches!(
            prefer_dwarf::<GoOffsets>("test", exe, Err(DwarfError::Absent), None),
            Err(DwarfError::Absent)
        ));
    }
}
