//! A Go executable read from the outside: its build info, its function table and its code,
//! through the ELF headers. Read-only and bounded: only the headers, the build info, the
//! function table and the code of the functions asked for are read, each checked against
//! the file's real length and a size limit first.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef};

use super::buildinfo::{self, BuildInfo, BuildInfoError};
use super::pclntab::{FunctionRange, Pclntab, PclntabError};
use super::retsites::{self, RetSitesError};

/// Largest function table read (Kubernetes-sized binaries have ~30 MiB).
const MAX_PCLNTAB_BYTES: u64 = 256 * 1024 * 1024;
/// Largest function decoded (Go's biggest functions are tens of KiB).
const MAX_FUNCTION_BYTES: u64 = 1024 * 1024;
/// ELF segment flag: executable.
const PF_X: u32 = 1;
/// ELF segment flag: writable.
const PF_W: u32 = 2;

/// Why a file could not be read as a Go executable.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ELF file we can read: {0}")]
    Elf(#[from] object::Error),
    #[error("not an ELF file")]
    NotElf,
    #[error(transparent)]
    BuildInfo(#[from] BuildInfoError),
    #[error("no function table: no .gopclntab section, runtime.pclntab symbol or pclntab header in a read-only segment")]
    NoPclntab,
    #[error("{what} of {size} bytes is larger than the {limit} read at most")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{what} ({offset:#x}, {len} bytes) lies outside the file")]
    OutsideFile {
        what: &'static str,
        offset: u64,
        len: u64,
    },
    #[error("pclntab: {0}")]
    Pclntab(#[from] PclntabError),
    #[error("address {0:#x} is in no segment of the file")]
    Unmapped(u64),
    #[error("RET sites are decoded for x86-64 only, this is {0:?}")]
    NotX86_64(object::Architecture),
    #[error(transparent)]
    RetSites(#[from] RetSitesError),
}

impl InspectError {
    /// True when the file is simply not a Go program (no ELF, or no build info): not worth
    /// reporting when scanning every process.
    pub fn is_not_go(&self) -> bool {
        matches!(
            self,
            InspectError::NotElf
                | InspectError::Elf(_)
                | InspectError::BuildInfo(BuildInfoError::NotFound)
        )
    }
}

/// Where the bytes come from: an open file, or memory (tests, hostile input).
#[derive(Debug)]
enum Source {
    File { file: File, len: u64 },
    Bytes(Vec<u8>),
}

impl Source {
    /// `len` bytes at `offset`, all in the file (checked before allocating).
    fn read_at(&self, what: &'static str, offset: u64, len: u64) -> Result<Vec<u8>, InspectError> {
        let outside = || InspectError::OutsideFile { what, offset, len };
        let file_len = match self {
            Source::File { len, .. } => *len,
            Source::Bytes(bytes) => bytes.len() as u64,
        };
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(outside());
        }
        let len = usize::try_from(len).map_err(|_| outside())?;
        match self {
            Source::File { file, .. } => {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            }
            Source::Bytes(bytes) => {
                let start = usize::try_from(offset).map_err(|_| outside())?;
                Ok(bytes[start..start + len].to_vec())
            }
        }
    }
}

/// A loadable segment: `address..address + file_len` is `offset..offset + file_len` of
/// the file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    address: u64,
    offset: u64,
    file_len: u64,
    flags: u32,
}

impl Segment {
    /// The file offset of `address..address + len` when the segment's file bytes hold it.
    fn offset_of(&self, address: u64, len: u64) -> Option<u64> {
        let end = address.checked_add(len)?;
        let seg_end = self.address.checked_add(self.file_len)?;
        (address >= self.address && end <= seg_end).then(|| address - self.address + self.offset)
    }
}

/// A recognised Go executable.
#[derive(Debug)]
pub struct GoBinary {
    source: Source,
    build: BuildInfo,
    architecture: object::Architecture,
    segments: Vec<Segment>,
    /// Where the function table is in the file, when found.
    pclntab_at: Option<(u64, u64)>,
    /// Base of Go 1.18+ entry offsets, when the table does not record it.
    text_start: Option<u64>,
}

impl GoBinary {
    /// Reads the headers and build info of the ELF file at `path` (without following what
    /// the function table says yet).
    pub fn open(path: &Path) -> Result<GoBinary, InspectError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let cache = ReadCache::new(file);
        let parts = Parts::read(&cache)?;
        Ok(parts.with_source(Source::File {
            file: cache.into_inner(),
            len,
        }))
    }

    /// The same from bytes in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<GoBinary, InspectError> {
        let parts = Parts::read(bytes.as_slice())?;
        Ok(parts.with_source(Source::Bytes(bytes)))
    }

    pub fn build_info(&self) -> &BuildInfo {
        &self.build
    }

    pub fn architecture(&self) -> object::Architecture {
        self.architecture
    }

    /// Reads and parses the function table.
    pub fn pclntab(&self) -> Result<Pclntab, InspectError> {
        let (offset, len) = self.pclntab_at.ok_or(InspectError::NoPclntab)?;
        if len > MAX_PCLNTAB_BYTES {
            return Err(InspectError::TooLarge {
                what: "pclntab",
                size: len,
                limit: MAX_PCLNTAB_BYTES,
            });
        }
        let bytes = self.source.read_at("pclntab", offset, len)?;
        Ok(Pclntab::parse(bytes, self.text_start)?)
    }

    /// The file offset of code at `address` (what a uprobe takes): through the executable
    /// segment that maps it.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.segments
            .iter()
            .filter(|s| s.flags & PF_X != 0)
            .find_map(|s| s.offset_of(address, 1))
    }

    /// File offsets of the RET instructions of the function at `range`.
    pub fn ret_offsets(&self, range: FunctionRange) -> Result<Vec<u64>, InspectError> {
        if self.architecture != object::Architecture::X86_64 {
            return Err(InspectError::NotX86_64(self.architecture));
        }
        let len = range.end - range.entry;
        if len > MAX_FUNCTION_BYTES {
            return Err(InspectError::TooLarge {
                what: "function",
                size: len,
                limit: MAX_FUNCTION_BYTES,
            });
        }
        let offset = self
            .segments
            .iter()
            .filter(|s| s.flags & PF_X != 0)
            .find_map(|s| s.offset_of(range.entry, len))
            .ok_or(InspectError::Unmapped(range.entry))?;
        let code = self.source.read_at("function code", offset, len)?;
        retsites::ret_addresses(&code, range.entry)?
            .into_iter()
            .map(|address| {
                self.file_offset(address)
                    .ok_or(InspectError::Unmapped(address))
            })
            .collect()
    }
}

/// What is read from the ELF headers once.
struct Parts {
    build: BuildInfo,
    architecture: object::Architecture,
    segments: Vec<Segment>,
    pclntab_at: Option<(u64, u64)>,
    text_start: Option<u64>,
}

impl Parts {
    fn read<'data, R: ReadRef<'data>>(data: R) -> Result<Parts, InspectError> {
        let file = object::File::parse(data)?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(InspectError::NotElf);
        }
        let segments: Vec<Segment> = file
            .segments()
            .map(|s| {
                let (offset, file_len) = s.file_range();
                let flags = match s.flags() {
                    object::SegmentFlags::Elf { p_flags } => p_flags,
                    _ => 0,
                };
                Segment {
                    address: s.address(),
                    offset,
                    file_len,
                    flags,
                }
            })
            .collect();
        let build = read_build_info(data, &file, &segments)?;
        // Only where the function table's own record of it is 0: `runtime.text`, else the
        // `.text` section (which can start before it: see `Pclntab::parse`).
        let text_start = file
            .symbols()
            .find(|s| s.name() == Ok("runtime.text"))
            .map(|s| s.address())
            .or_else(|| file.section_by_name(".text").map(|s| s.address()));
        let pclntab_at = locate_pclntab(&file, &segments);
        Ok(Parts {
            build,
            architecture: file.architecture(),
            segments,
            pclntab_at,
            text_start,
        })
    }

    fn with_source(self, source: Source) -> GoBinary {
        GoBinary {
            source,
            build: self.build,
            architecture: self.architecture,
            segments: self.segments,
            pclntab_at: self.pclntab_at,
            text_start: self.text_start,
        }
    }
}

/// The build info: in `.go.buildinfo`, else near the start of the first writable, not
/// executable segment (as Go's `debug/buildinfo` looks).
fn read_build_info<'data, R: ReadRef<'data>>(
    data: R,
    file: &object::File<'data, R>,
    segments: &[Segment],
) -> Result<BuildInfo, InspectError> {
    let (offset, len) = match file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.file_range())
    {
        Some(range) => range,
        None => segments
            .iter()
            .find(|s| s.flags & (PF_X | PF_W) == PF_W)
            .map(|s| (s.offset, s.file_len))
            .ok_or(BuildInfoError::NotFound)?,
    };
    let bytes = data
        .read_bytes_at(offset, len.min(buildinfo::SEARCH_LEN))
        .map_err(|()| InspectError::OutsideFile {
            what: "build info",
            offset,
            len,
        })?;
    let blob = buildinfo::locate(bytes).ok_or(BuildInfoError::NotFound)?;
    let read_virtual = |address: u64, len: u64| -> Option<Vec<u8>> {
        let offset = segments.iter().find_map(|s| s.offset_of(address, len))?;
        data.read_bytes_at(offset, len).ok().map(<[u8]>::to_vec)
    };
    Ok(buildinfo::parse(blob, &read_virtual)?)
}

/// Where the function table is in the file: the `.gopclntab` section (Go's own linker
/// always writes it, stripped or not), else the `runtime.pclntab`..`runtime.epclntab`
/// symbols. A binary with neither (external linking, then stripped) is not searched for a
/// bare pcHeader: see docs/go.md.
fn locate_pclntab<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    segments: &[Segment],
) -> Option<(u64, u64)> {
    if let Some(range) = file
        .section_by_name(".gopclntab")
        .and_then(|s| s.file_range())
    {
        return Some(range);
    }
    let symbol = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    let (start, end) = (symbol("runtime.pclntab")?, symbol("runtime.epclntab")?);
    let len = end.checked_sub(start)?;
    let offset = segments.iter().find_map(|s| s.offset_of(start, len))?;
    Some((offset, len))
}
