//! Struct layouts from the DWARF of an unstripped Go executable.
//!
//! Go's linker writes `.debug_info` and `.debug_abbrev` zlib-compressed (`SHF_COMPRESSED`
//! sections, as Debian's go1.19 does, or `.zdebug_*` in older Go), with every type of the
//! program as a top-level DIE of its compile unit, named by its import path (`net.netFD`,
//! `internal/poll.FD`) and its members' offsets as constants. [`StructLayouts::read`] finds
//! the structures asked for by name and keeps their members' offsets and type names, so the
//! probes' offsets are read from the binary itself instead of a table per Go version.
//!
//! Bounded: each section is read only after its (claimed) size is checked against
//! [`MAX_SECTION_BYTES`], inflated with that limit, and walked with gimli, which checks
//! every read against the section's end. A hostile file gets an error, never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use gimli::{AttributeValue, DebugInfoOffset, EndianSlice, RunTimeEndian, SectionId};
use object::read::ReadCache;
use object::{CompressionFormat, Object, ObjectSection, ReadRef};

/// Largest DWARF section read (inflated). Go's `.debug_info` is 1.5 MiB for a net/http
/// program (go1.19.8) and grows with the code linked in: this leaves room for programs
/// ~80 times larger while bounding what a hostile file can make the agent hold.
pub const MAX_SECTION_BYTES: u64 = 128 * 1024 * 1024;

/// Why struct offsets could not be read from the DWARF.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ELF file we can read: {0}")]
    Elf(#[from] object::Error),
    #[error("no DWARF (no .debug_info section: a stripped build)")]
    Absent,
    #[error("{section} of {size} bytes is larger than the {limit} read at most")]
    TooLarge {
        section: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{section} ({offset:#x}, {len} bytes) lies outside the file")]
    OutsideFile {
        section: &'static str,
        offset: u64,
        len: u64,
    },
    #[error("{section}: {format:?} compression is not supported")]
    Compression {
        section: &'static str,
        format: CompressionFormat,
    },
    #[error("{section}: inflating: {why}")]
    Inflate { section: &'static str, why: String },
    #[error("malformed DWARF: {0}")]
    Malformed(#[from] gimli::Error),
    #[error("no structure {0} in the DWARF")]
    NoStruct(String),
    /// `structure.member` has no constant offset, or is not there.
    #[error("no member {0} with a constant offset")]
    NoMember(String),
    #[error("{member} is a {found}, not the {expected} expected")]
    MemberType {
        /// `structure.member`.
        member: String,
        found: String,
        expected: String,
    },
    #[error("offset of {0} does not fit 32 bits")]
    OffsetTooLarge(String),
}

/// One member of a structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub offset: u64,
    /// The name of its type (`internal/poll.FD`, `*net.netFD`, `int`); None when the DIE
    /// has no type reference or the referenced DIE no name.
    pub type_name: Option<String>,
}

/// One step of a member path: `(structure, member, type of the member)`. The type is
/// checked on every step: a nested struct is never read through a member that became a
/// pointer in some Go version, and the last member is the size the kernel reads.
pub type Step<'a> = (&'a str, &'a str, &'a str);

/// The members of the structures asked for, by structure name then member name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StructLayouts {
    structs: HashMap<String, HashMap<String, Member>>,
}

impl StructLayouts {
    /// Reads the structures named in `wanted` from the DWARF of the ELF file at `path`,
    /// reading only the headers and the DWARF sections needed.
    pub fn read(path: &Path, wanted: &[&str]) -> Result<StructLayouts, DwarfError> {
        let cache = ReadCache::new(File::open(path)?);
        Self::read_from(&cache, wanted)
    }

    /// The same from an ELF file in memory.
    pub fn parse(bytes: &[u8], wanted: &[&str]) -> Result<StructLayouts, DwarfError> {
        Self::read_from(bytes, wanted)
    }

    fn read_from<'data, R: ReadRef<'data>>(
        data: R,
        wanted: &[&str],
    ) -> Result<StructLayouts, DwarfError> {
        let file = object::File::parse(data)?;
        if dwarf_section(&file, ".debug_info").is_none() {
            return Err(DwarfError::Absent);
        }
        let endian = if file.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let sections = gimli::DwarfSections::load(|id| section_bytes(data, &file, id))?;
        let dwarf = sections.borrow(|bytes| EndianSlice::new(bytes, endian));
        collect(&dwarf, wanted)
    }

    /// The members of `structure`, when it was found.
    pub fn members(&self, structure: &str) -> Option<&HashMap<String, Member>> {
        self.structs.get(structure)
    }

    /// The offset of a (possibly nested) member: the sum of the offsets along `path`, e.g.
    /// `[("net.netFD", "pfd", "internal/poll.FD"), ("internal/poll.FD", "Sysfd", "int")]`.
    /// Every step's member must have the type named, so that each step's structure is the
    /// one actually stored at that offset.
    pub fn offset(&self, path: &[Step<'_>]) -> Result<u32, DwarfError> {
        let mut total: u64 = 0;
        for &(structure, member, expected) in path {
            let members = self
                .members(structure)
                .ok_or_else(|| DwarfError::NoStruct(structure.to_string()))?;
            let found = members
                .get(member)
                .ok_or_else(|| DwarfError::NoMember(format!("{structure}.{member}")))?;
            let type_name = found.type_name.as_deref().unwrap_or("unnamed type");
            if type_name != expected {
                return Err(DwarfError::MemberType {
                    member: format!("{structure}.{member}"),
                    found: type_name.to_string(),
                    expected: expected.to_string(),
                });
            }
            total = total.saturating_add(found.offset);
        }
        let shown = || {
            path.iter()
                .map(|(s, m, _)| format!("{s}.{m}"))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        u32::try_from(total).map_err(|_| DwarfError::OffsetTooLarge(shown()))
    }
}

/// The bytes of one DWARF section, inflated; empty when the file does not have it (gimli
/// asks for every section; only those the walk reads are ever present in Go binaries).
fn section_bytes<'data, R: ReadRef<'data>>(
    data: R,
    file: &object::File<'data, R>,
    id: SectionId,
) -> Result<Vec<u8>, DwarfError> {
    // Only what naming structures and their members needs: the DIEs, their abbreviations
    // and the string tables a name may be stored in (Go writes names inline).
    let section: &'static str = match id {
        SectionId::DebugInfo => ".debug_info",
        SectionId::DebugAbbrev => ".debug_abbrev",
        SectionId::DebugStr => ".debug_str",
        SectionId::DebugLineStr => ".debug_line_str",
        _ => return Ok(Vec::new()),
    };
    let Some(found) = dwarf_section(file, section) else {
        return Ok(Vec::new());
    };
    let range = found.compressed_file_range()?;
    for size in [range.compressed_size, range.uncompressed_size] {
        if size > MAX_SECTION_BYTES {
            return Err(DwarfError::TooLarge {
                section,
                size,
                limit: MAX_SECTION_BYTES,
            });
        }
    }
    let stored = data
        .read_bytes_at(range.offset, range.compressed_size)
        .map_err(|()| DwarfError::OutsideFile {
            section,
            offset: range.offset,
            len: range.compressed_size,
        })?;
    match range.format {
        CompressionFormat::None => Ok(stored.to_vec()),
        CompressionFormat::Zlib => {
            // The claimed size bounds the output (checked above); a stream that inflates to
            // more, or to less, is corrupt.
            let limit = usize::try_from(range.uncompressed_size).unwrap_or(usize::MAX);
            let inflated = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(stored, limit)
                .map_err(|e| DwarfError::Inflate {
                section,
                why: e.to_string(),
            })?;
            if inflated.len() as u64 != range.uncompressed_size {
                return Err(DwarfError::Inflate {
                    section,
                    why: format!(
                        "{} bytes inflated, {} claimed",
                        inflated.len(),
                        range.uncompressed_size
                    ),
                });
            }
            Ok(inflated)
        }
        format => Err(DwarfError::Compression { section, format }),
    }
}

/// The section `.debug_<name>`, or the `.zdebug_<name>` older Go and
/// `objcopy --compress-debug-sections=zlib-gnu` write instead.
fn dwarf_section<'data, 'file, R: ReadRef<'data>>(
    file: &'file object::File<'data, R>,
    section: &str,
) -> Option<object::Section<'data, 'file, R>> {
    file.section_by_name(section).or_else(|| {
        let old_name = format!(".zdebug_{}", section.strip_prefix(".debug_")?);
        file.section_by_name(&old_name)
    })
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
type Dwarf<'a> = gimli::Dwarf<Reader<'a>>;
type Entry<'abbrev, 'unit, 'a> = gimli::DebuggingInformationEntry<'abbrev, 'unit, Reader<'a>>;

/// Walks the top-level DIEs of every unit for the structures in `wanted` (the first
/// definition of each), then names their members' types.
///
/// Units are read through their headers and abbreviations only: a `gimli::Unit` would
/// also parse the line program, which needs `.debug_line`, not read here.
fn collect(dwarf: &Dwarf<'_>, wanted: &[&str]) -> Result<StructLayouts, DwarfError> {
    // Members with the DIE of their type, named once every structure is found.
    let mut found: HashMap<String, Vec<(String, u64, Option<DebugInfoOffset>)>> = HashMap::new();
    let mut headers = dwarf.units();
    while found.len() < wanted.len() {
        let Some(header) = headers.next()? else {
            break;
        };
        let abbreviations = dwarf.abbreviations(&header)?;
        let mut tree = header.entries_tree(&abbreviations, None)?;
        let mut children = tree.root()?.children();
        while let Some(node) = children.next()? {
            let entry = node.entry();
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = name_of(dwarf, entry)? else {
                continue;
            };
            if !wanted.contains(&name.as_str()) || found.contains_key(&name) {
                continue;
            }
            let mut members = Vec::new();
            let mut member_nodes = node.children();
            while let Some(member) = member_nodes.next()? {
                let entry = member.entry();
                if entry.tag() != gimli::DW_TAG_member {
                    continue;
                }
                // A member without a name or a constant offset (a DWARF expression, which
                // Go never writes) is left out: asking for it is then an error.
                let Some(member_name) = name_of(dwarf, entry)? else {
                    continue;
                };
                let Some(offset) = entry
                    .attr_value(gimli::DW_AT_data_member_location)?
                    .and_then(|v| v.udata_value())
                else {
                    continue;
                };
                let type_at = match entry.attr_value(gimli::DW_AT_type)? {
                    Some(AttributeValue::UnitRef(at)) => at.to_debug_info_offset(&header),
                    Some(AttributeValue::DebugInfoRef(at)) => Some(at),
                    _ => None,
                };
                members.push((member_name, offset, type_at));
            }
            found.insert(name, members);
        }
    }
    let mut names = TypeNames::new(dwarf);
    let mut structs = HashMap::new();
    for (structure, members) in found {
        let mut named = HashMap::new();
        for (member, offset, type_at) in members {
            let type_name = match type_at {
                Some(at) => names.name_at(at)?,
                None => None,
            };
            named.insert(member, Member { offset, type_name });
        }
        structs.insert(structure, named);
    }
    Ok(StructLayouts { structs })
}

/// The `DW_AT_name` of `entry`, as text: inline (as Go writes it) or in a string section;
/// a name by index (`DW_FORM_strx`, DWARF 5) counts as none.
fn name_of(dwarf: &Dwarf<'_>, entry: &Entry<'_, '_, '_>) -> Result<Option<String>, DwarfError> {
    let name = match entry.attr_value(gimli::DW_AT_name)? {
        Some(AttributeValue::String(name)) => name,
        Some(AttributeValue::DebugStrRef(at)) => dwarf.debug_str.get_str(at)?,
        Some(AttributeValue::DebugLineStrRef(at)) => dwarf.debug_line_str.get_str(at)?,
        _ => return Ok(None),
    };
    Ok(Some(String::from_utf8_lossy(name.slice()).into_owned()))
}

/// Names of DIEs by their `.debug_info` offset (Go refers to types across units with
/// `DW_FORM_ref_addr`).
struct TypeNames<'d, 'a> {
    dwarf: &'d Dwarf<'a>,
    names: HashMap<DebugInfoOffset, Option<String>>,
}

impl<'d, 'a> TypeNames<'d, 'a> {
    fn new(dwarf: &'d Dwarf<'a>) -> Self {
        TypeNames {
            dwarf,
            names: HashMap::new(),
        }
    }

    fn name_at(&mut self, at: DebugInfoOffset) -> Result<Option<String>, DwarfError> {
        if let Some(name) = self.names.get(&at) {
            return Ok(name.clone());
        }
        let mut headers = self.dwarf.units();
        let mut name = None;
        while let Some(header) = headers.next()? {
            let Some(offset) = at.to_unit_offset(&header) else {
                continue;
            };
            let abbreviations = self.dwarf.abbreviations(&header)?;
            name = name_of(self.dwarf, &header.entry(&abbreviations, offset)?)?;
            break;
        }
        // A reference outside every unit (a corrupt file) leaves the type unnamed.
        self.names.insert(at, name.clone());
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use object::{Object as _, ObjectSection as _};

    use super::*;
    use crate::golang::offsets::{self, OffsetsSource};
    use crate::golang::GoBinary;
    use crate::test_util::Rng;

    /// Every structure the Go probes read, with members of both attachers.
    const PROBED: &[&str] = &[
        "runtime.g",
        "net/http.conn",
        "net/http.persistConn",
        "net.netFD",
        "internal/poll.FD",
        "crypto/tls.Conn",
        "net.TCPConn",
        "net.conn",
    ];

    /// `binary` rewritten by `objcopy` with `flag` (its DWARF inflated, or compressed the
    /// old way as `.zdebug_*`); None after saying why when `objcopy` is missing (a failure
    /// under CI=true).
    fn objcopy(binary: &Path, flag: &str, suffix: &str) -> Option<PathBuf> {
        let out = binary.with_extension(suffix);
        match Command::new("objcopy")
            .arg(flag)
            .arg(binary)
            .arg(&out)
            .status()
        {
            Ok(status) => {
                assert!(status.success(), "objcopy {flag} failed");
                Some(out)
            }
            Err(e) => {
                assert!(
                    std::env::var("CI").map_or(true, |v| v != "true"),
                    "CI=true and `objcopy` is missing (Debian binutils): {e}"
                );
                eprintln!("SKIPPED: `objcopy` is missing (Debian binutils): {e}");
                None
            }
        }
    }

    fn section_range(bytes: &[u8], name: &str) -> (usize, usize) {
        let file = object::File::parse(bytes).unwrap();
        let (offset, len) = file.section_by_name(name).unwrap().file_range().unwrap();
        (offset as usize, len as usize)
    }

    #[test]
    fn dwarf_offsets_of_real_binaries_equal_the_verified_table() {
        let Some(built) = super::super::tests::built() else {
            return;
        };
        for (unstripped, _) in built {
            let go_version = GoBinary::open(unstripped)
                .unwrap()
                .build_info()
                .go_version
                .clone();
            let layouts = StructLayouts::read(unstripped, PROBED).unwrap();
            for name in PROBED {
                assert!(layouts.members(name).is_some(), "{name} not found");
            }
            let from_dwarf = offsets::from_dwarf(&layouts).unwrap();
            let (chosen, source) = offsets::for_binary(unstripped, &go_version).unwrap();
            assert_eq!((chosen, source), (from_dwarf, OffsetsSource::Dwarf));
            // The table holds the values checked by hand with `debug/dwarf` (docs/go.md);
            // only Go 1.19 is there, so only a 1.19 toolchain can compare with it.
            match offsets::for_version(&go_version) {
                Some(table) => assert_eq!(from_dwarf, table, "{}", unstripped.display()),
                None => eprintln!("{go_version} is not in the table: DWARF read, not compared"),
            }
            // Nested: netFD.pfd.Sysfd is pfd's offset plus Sysfd's in poll.FD.
            let pfd = &layouts.members("net.netFD").unwrap()["pfd"];
            let sysfd = &layouts.members("internal/poll.FD").unwrap()["Sysfd"];
            assert_eq!(u64::from(from_dwarf.netfd_sysfd), pfd.offset + sysfd.offset);
            assert_eq!(sysfd.type_name.as_deref(), Some("int"));
        }
    }

    #[test]
    fn stripped_binaries_have_no_dwarf_and_fall_back_to_the_table() {
        let Some(built) = super::super::tests::built() else {
            return;
        };
        for (unstripped, stripped) in built {
            assert!(matches!(
                StructLayouts::read(stripped, PROBED),
                Err(DwarfError::Absent)
            ));
            let go_version = GoBinary::open(stripped)
                .unwrap()
                .build_info()
                .go_version
                .clone();
            match offsets::for_version(&go_version) {
                Some(table) => {
                    let (chosen, source) = offsets::for_binary(stripped, &go_version).unwrap();
                    assert_eq!((chosen, source), (table, OffsetsSource::VersionTable));
                    let (from_dwarf, _) = offsets::for_binary(unstripped, &go_version).unwrap();
                    assert_eq!(chosen, from_dwarf);
                }
                None => {
                    let refused = offsets::for_binary(stripped, &go_version).unwrap_err();
                    assert!(matches!(refused.dwarf, DwarfError::Absent));
                }
            }
        }
    }

    #[test]
    fn a_version_missing_from_the_table_is_read_from_its_dwarf_only() {
        let Some(built) = super::super::tests::built() else {
            return;
        };
        // As a later Go would be: no table entry, so the DWARF is all there is.
        let unknown = "go1.99.0";
        assert_eq!(offsets::for_version(unknown), None);
        for (unstripped, stripped) in built {
            let layouts = StructLayouts::read(unstripped, PROBED).unwrap();
            assert_eq!(
                offsets::for_binary(unstripped, unknown).unwrap(),
                (offsets::from_dwarf(&layouts).unwrap(), OffsetsSource::Dwarf)
            );
            let refused = offsets::for_binary(stripped, unknown).unwrap_err();
            assert!(matches!(refused.dwarf, DwarfError::Absent), "{refused}");
        }
    }

    #[test]
    fn uncompressed_and_zdebug_sections_read_the_same() {
        let Some(built) = super::super::tests::built() else {
            return;
        };
        let unstripped = &built[0].0;
        let expected = StructLayouts::read(unstripped, PROBED).unwrap();
        for (flag, suffix) in [
            ("--decompress-debug-sections", "plain"),
            ("--compress-debug-sections=zlib-gnu", "zdebug"),
        ] {
            let Some(rewritten) = objcopy(unstripped, flag, suffix) else {
                return;
            };
            let bytes = std::fs::read(&rewritten).unwrap();
            let file = object::File::parse(bytes.as_slice()).unwrap();
            let has = |name: &str| file.sections().any(|s| s.name() == Ok(name));
            assert_eq!(has(".zdebug_info"), suffix == "zdebug");
            assert_eq!(StructLayouts::parse(&bytes, PROBED).unwrap(), expected);
        }
    }

    #[test]
    fn a_member_of_another_type_is_refused() {
        let Some(built) = super::super::tests::built() else {
            return;
        };
        let layouts = StructLayouts::read(&built[0].0, PROBED).unwrap();
        // netFD.pfd is a poll.FD stored inline, not a pointer to one.
        let refused = layouts.offset(&[
            ("net.netFD", "pfd", "*internal/poll.FD"),
            ("internal/poll.FD", "Sysfd", "int"),
        ]);
        assert!(matches!(refused, Err(DwarfError::MemberType { .. })));
        assert!(matches!(
            layouts.offset(&[("net.netFD", "nosuch", "int")]),
            Err(DwarfError::NoMember(_))
        ));
        assert!(matches!(
            layouts.offset(&[("net.nosuch", "fd", "int")]),
            Err(DwarfError::NoStruct(_))
        ));
    }

    #[test]
    fn hostile_dwarf_is_an_error_never_a_panic() {
        let Some(built) = super::super::tests::built() else {
            return;
        };
        let Some(plain) = objcopy(&built[0].0, "--decompress-debug-sections", "hostile") else {
            return;
        };
        let compressed = std::fs::read(&built[0].0).unwrap();
        let plain = std::fs::read(plain).unwrap();

        // Truncated: the headers, or the DWARF sections cut off.
        let (info_at, info_len) = section_range(&compressed, ".debug_info");
        let (abbrev_at, _) = section_range(&compressed, ".debug_abbrev");
        for len in [0, 16, 64, abbrev_at + 1, info_at + info_len / 2] {
            assert!(StructLayouts::parse(&compressed[..len], PROBED).is_err());
        }

        // A compressed section claiming more than the limit is refused before inflating;
        // claiming less or more than it inflates to is corrupt. Elf64_Chdr: ch_type (4),
        // ch_reserved (4), ch_size (8).
        let claimed = u64::from_le_bytes(compressed[info_at + 8..info_at + 16].try_into().unwrap());
        for (claim, too_large) in [
            (MAX_SECTION_BYTES + 1, true),
            (claimed - 1, false),
            (claimed + 1, false),
        ] {
            let mut bytes = compressed.clone();
            bytes[info_at + 8..info_at + 16].copy_from_slice(&claim.to_le_bytes());
            let refused = StructLayouts::parse(&bytes, PROBED).unwrap_err();
            if too_large {
                assert!(matches!(refused, DwarfError::TooLarge { .. }), "{refused}");
            } else {
                assert!(matches!(refused, DwarfError::Inflate { .. }), "{refused}");
            }
        }

        // Garbage instead of the zlib stream.
        let mut rng = Rng::new(0xd3a2f);
        let mut bytes = compressed.clone();
        for byte in &mut bytes[info_at + 24..info_at + info_len] {
            *byte = rng.next_u64() as u8;
        }
        assert!(matches!(
            StructLayouts::parse(&bytes, PROBED),
            Err(DwarfError::Inflate { .. })
        ));

        // Uncompressed DIEs and abbreviations with bytes overwritten: whatever is read,
        // nothing panics or runs away.
        let (info_at, info_len) = section_range(&plain, ".debug_info");
        let (abbrev_at, abbrev_len) = section_range(&plain, ".debug_abbrev");
        for round in 0..12 {
            let mut bytes = plain.clone();
            let (at, len) = if round % 3 == 0 {
                (abbrev_at, abbrev_len)
            } else {
                (info_at, info_len)
            };
            for _ in 0..1 + rng.index(64) {
                bytes[at + rng.index(len)] = rng.next_u64() as u8;
            }
            let _ = StructLayouts::parse(&bytes, PROBED);
        }
        // All garbage DIEs: an error or nothing found, and nothing asked for is invented.
        let mut bytes = plain.clone();
        for byte in &mut bytes[info_at..info_at + info_len] {
            *byte = rng.next_u64() as u8;
        }
        if let Ok(layouts) = StructLayouts::parse(&bytes, PROBED) {
            assert!(offsets::from_dwarf(&layouts).is_err());
        }
    }
}
