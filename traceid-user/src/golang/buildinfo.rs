//! The Go build info blob: which Go built a binary, and its main module.
//!
//! The linker writes a 32-byte header (Go's `debug/buildinfo`, `cmd/link`'s `buildinfo`)
//! into `.go.buildinfo`, or near the start of the first writable segment where sections
//! are missing: the 14-byte magic `\xff Go buildinf:`, the pointer size, a flags byte
//! (bit 0: big-endian, bit 1: the strings follow inline), then either two pointers to Go
//! strings (`runtime.buildVersion`, `runtime.modinfo`; before Go 1.18) or, from Go 1.18 on,
//! the two strings themselves, each prefixed by its length as a uvarint. Stripping
//! (`-ldflags=-s -w`) keeps it: the runtime itself reads it.

/// The magic that starts the blob, at a 16-byte aligned address.
pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// The header's size and alignment.
const HEADER_LEN: usize = 32;
const ALIGN: usize = 16;
/// How much of the data segment is searched when there is no `.go.buildinfo` section (Go
/// reads 64 KiB too: the linker puts the blob first).
pub const SEARCH_LEN: u64 = 64 * 1024;
/// Longest version or module-info string accepted (Go's own limit is 20 MiB; real module
/// info is a few KiB, with one line per dependency).
const MAX_STRING_LEN: u64 = 1024 * 1024;
/// Flags byte: the strings follow the header inline (Go 1.18+).
const FLAG_INLINE: u8 = 2;
/// Flags byte: pointers are big-endian (old form only).
const FLAG_BIG_ENDIAN: u8 = 1;

/// What the build info says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// As the runtime reports it, e.g. `go1.19.8` (or `devel go1.23-abcdef ...`).
    pub go_version: String,
    /// The main module's path, when built in module mode (`mod` line of the module info),
    /// else the main package's path (`path` line), when recorded.
    pub module_path: Option<String>,
}

/// Why no build info could be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("no Go build info (the `\\xff Go buildinf:` magic is absent)")]
    NotFound,
    #[error("build info header truncated")]
    Truncated,
    #[error("build info claims a {0}-byte pointer size")]
    BadPointerSize(u8),
    #[error("build info {what} string is malformed")]
    BadString { what: &'static str },
    #[error("build info {what} string at {address:#x} is not in the file")]
    Unmapped { what: &'static str, address: u64 },
    #[error("build info {what} string claims {len} bytes")]
    TooLong { what: &'static str, len: u64 },
    #[error("build info records an empty Go version")]
    NoVersion,
}

/// Finds the header in `data` (the first bytes of `.go.buildinfo` or of the data segment):
/// the first match of the magic at a 16-byte aligned offset with a whole header behind it.
pub fn locate(data: &[u8]) -> Option<&[u8]> {
    (0..data.len())
        .step_by(ALIGN)
        .map(|at| &data[at..])
        .find(|rest| rest.len() >= HEADER_LEN && rest.starts_with(MAGIC))
}

/// Decodes the blob that starts at the magic. `read_virtual(address, len)` reads the
/// program's memory image (the pointer form points at Go string headers and their bytes);
/// it returns None for addresses the file does not map.
pub fn parse(
    blob: &[u8],
    read_virtual: &dyn Fn(u64, u64) -> Option<Vec<u8>>,
) -> Result<BuildInfo, BuildInfoError> {
    if !blob.starts_with(MAGIC) {
        return Err(BuildInfoError::NotFound);
    }
    let header = blob.get(..HEADER_LEN).ok_or(BuildInfoError::Truncated)?;
    let (ptr_size, flags) = (header[14], header[15]);
    let (version, modinfo) = if flags & FLAG_INLINE != 0 {
        let (version, rest) = inline_string(&blob[HEADER_LEN..], "version")?;
        let (modinfo, _) = inline_string(rest, "module info")?;
        (version.to_vec(), modinfo.to_vec())
    } else {
        if ptr_size != 4 && ptr_size != 8 {
            return Err(BuildInfoError::BadPointerSize(ptr_size));
        }
        let word = Word {
            size: usize::from(ptr_size),
            big_endian: flags & FLAG_BIG_ENDIAN != 0,
        };
        let version_at = word.read(&header[16..]);
        let modinfo_at = word.read(&header[16 + word.size..]);
        (
            pointed_string(word, version_at, read_virtual, "version")?,
            pointed_string(word, modinfo_at, read_virtual, "module info")?,
        )
    };
    if version.is_empty() {
        return Err(BuildInfoError::NoVersion);
    }
    let go_version =
        String::from_utf8(version).map_err(|_| BuildInfoError::BadString { what: "version" })?;
    Ok(BuildInfo {
        go_version,
        module_path: module_path(&modinfo),
    })
}

/// A pointer-sized integer of the target.
#[derive(Clone, Copy)]
struct Word {
    size: usize,
    big_endian: bool,
}

impl Word {
    /// Reads one word from the start of `bytes`, which holds at least `size` bytes.
    fn read(self, bytes: &[u8]) -> u64 {
        let mut buf = [0u8; 8];
        let bytes = &bytes[..self.size];
        if self.big_endian {
            buf[8 - self.size..].copy_from_slice(bytes);
            u64::from_be_bytes(buf)
        } else {
            buf[..self.size].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        }
    }
}

/// A uvarint-prefixed string at the start of `data`, and what follows it.
fn inline_string<'a>(
    data: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), BuildInfoError> {
    let (len, used) = uvarint(data).ok_or(BuildInfoError::BadString { what })?;
    if len > MAX_STRING_LEN {
        return Err(BuildInfoError::TooLong { what, len });
    }
    let rest = &data[used..];
    let len = usize::try_from(len).map_err(|_| BuildInfoError::TooLong { what, len })?;
    if len > rest.len() {
        return Err(BuildInfoError::BadString { what });
    }
    Ok(rest.split_at(len))
}

/// Go's `encoding/binary.Uvarint`: the value and the bytes it took, None when truncated or
/// longer than 64 bits.
fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in data.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The bytes of the Go string whose header (data pointer, length) is at `address`.
fn pointed_string(
    word: Word,
    address: u64,
    read_virtual: &dyn Fn(u64, u64) -> Option<Vec<u8>>,
    what: &'static str,
) -> Result<Vec<u8>, BuildInfoError> {
    let header = read_virtual(address, 2 * word.size as u64)
        .filter(|h| h.len() == 2 * word.size)
        .ok_or(BuildInfoError::Unmapped { what, address })?;
    let (data_at, len) = (word.read(&header), word.read(&header[word.size..]));
    if len > MAX_STRING_LEN {
        return Err(BuildInfoError::TooLong { what, len });
    }
    read_virtual(data_at, len)
        .filter(|d| d.len() as u64 == len)
        .ok_or(BuildInfoError::Unmapped {
            what,
            address: data_at,
        })
}

/// The main module's path from the module info: the `mod` line, else the `path` line.
/// The info is framed by two 16-byte sentinels (`cmd/go`'s `infoStart`/`infoEnd`); without
/// them it is not module info and nothing is returned.
fn module_path(modinfo: &[u8]) -> Option<String> {
    let n = modinfo.len();
    if n < 33 || modinfo[n - 17] != b'\n' {
        return None;
    }
    let text = std::str::from_utf8(&modinfo[16..n - 16]).ok()?;
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let mut fields = line.split('\t');
            (fields.next() == Some(key))
                .then(|| fields.next())
                .flatten()
                .filter(|p| !p.is_empty())
                .map(str::to_string)
        })
    };
    field("mod").or_else(|| field("path"))
}

/// `go1.19.8` → (1, 19); also `devel go1.23-abc ...`. None when no version is recognisable.
pub fn major_minor(go_version: &str) -> Option<(u32, u32)> {
    let at = go_version.find("go1.")?;
    let mut parts = go_version[at + 2..].split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_memory(_: u64, _: u64) -> Option<Vec<u8>> {
        None
    }

    fn framed(modinfo: &str) -> Vec<u8> {
        let mut v = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6".to_vec();
        v.extend_from_slice(modinfo.as_bytes());
        v.extend_from_slice(b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2");
        v
    }

    fn inline_blob(version: &[u8], modinfo: &[u8]) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[8, FLAG_INLINE]);
        blob.resize(HEADER_LEN, 0);
        for s in [version, modinfo] {
            let mut len = s.len();
            while len >= 0x80 {
                blob.push((len as u8) | 0x80);
                len >>= 7;
            }
            blob.push(len as u8);
            blob.extend_from_slice(s);
        }
        blob
    }

    #[test]
    fn inline_form_gives_version_and_module() {
        let modinfo = framed("path\texample.com/srv\nmod\texample.com/srv\t(devel)\t\n");
        let blob = inline_blob(b"go1.19.8", &modinfo);
        let mut data = vec![0u8; 48];
        data.extend_from_slice(&blob);
        let found = locate(&data).expect("found at 48");
        assert_eq!(
            parse(found, &no_memory),
            Ok(BuildInfo {
                go_version: "go1.19.8".into(),
                module_path: Some("example.com/srv".into()),
            })
        );
        // GOPATH mode records only the package path.
        let blob = inline_blob(b"go1.19.8", &framed("path\tcommand-line-arguments\n"));
        assert_eq!(
            parse(&blob, &no_memory).unwrap().module_path.as_deref(),
            Some("command-line-arguments")
        );
        // Without the sentinels the info is not module info.
        let blob = inline_blob(b"go1.19.8", b"");
        assert_eq!(parse(&blob, &no_memory).unwrap().module_path, None);
    }

    #[test]
    fn misaligned_magic_is_not_the_blob() {
        let mut data = vec![0u8; 8];
        data.extend_from_slice(&inline_blob(b"go1.19.8", b""));
        assert_eq!(locate(&data), None);
    }

    #[test]
    fn pointer_form_reads_strings_through_memory() {
        // Header at 0x1000; string headers at 0x2000 and 0x2010; bytes at 0x3000.
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[8, 0]);
        blob.extend_from_slice(&0x2000u64.to_le_bytes());
        blob.extend_from_slice(&0x2010u64.to_le_bytes());
        let modinfo = framed("path\tx\nmod\tgithub.com/a/b\tv1.0.0\t\n");
        let memory = move |address: u64, len: u64| -> Option<Vec<u8>> {
            let mut image = vec![0u8; 0x4000];
            image[0x2000..0x2008].copy_from_slice(&0x3000u64.to_le_bytes());
            image[0x2008..0x2010].copy_from_slice(&8u64.to_le_bytes());
            image[0x2010..0x2018].copy_from_slice(&0x3100u64.to_le_bytes());
            image[0x2018..0x2020].copy_from_slice(&(modinfo.len() as u64).to_le_bytes());
            image[0x3000..0x3008].copy_from_slice(b"go1.16.2");
            image[0x3100..0x3100 + modinfo.len()].copy_from_slice(&modinfo);
            let end = address.checked_add(len)?;
            image
                .get(usize::try_from(address).ok()?..usize::try_from(end).ok()?)
                .map(<[u8]>::to_vec)
        };
        let info = parse(&blob, &memory).unwrap();
        assert_eq!(info.go_version, "go1.16.2");
        assert_eq!(info.module_path.as_deref(), Some("github.com/a/b"));
        assert_eq!(major_minor(&info.go_version), Some((1, 16)));
    }

    #[test]
    fn lying_lengths_and_pointers_are_errors() {
        // An inline length far past the end.
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[8, FLAG_INLINE]);
        blob.resize(HEADER_LEN, 0);
        blob.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(
            parse(&blob, &no_memory),
            Err(BuildInfoError::TooLong { .. })
        ));
        blob.truncate(HEADER_LEN);
        blob.extend_from_slice(&[0x20, b'g']);
        assert!(matches!(
            parse(&blob, &no_memory),
            Err(BuildInfoError::BadString { .. })
        ));
        // A pointer into nothing, a pointer size of 3, a cut header.
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[8, 0]);
        blob.extend_from_slice(&[0xee; 16]);
        assert!(matches!(
            parse(&blob, &no_memory),
            Err(BuildInfoError::Unmapped { .. })
        ));
        blob[14] = 3;
        assert_eq!(
            parse(&blob, &no_memory),
            Err(BuildInfoError::BadPointerSize(3))
        );
        assert_eq!(
            parse(&blob[..20], &no_memory),
            Err(BuildInfoError::Truncated)
        );
        assert_eq!(
            parse(&inline_blob(b"", b""), &no_memory),
            Err(BuildInfoError::NoVersion)
        );
    }

    #[test]
    fn versions_are_compared_by_major_and_minor() {
        assert_eq!(major_minor("go1.19.8"), Some((1, 19)));
        assert_eq!(major_minor("go1.21rc2"), Some((1, 21)));
        assert_eq!(major_minor("devel go1.23-1f3c9a1 Tue"), Some((1, 23)));
        assert_eq!(major_minor("gccgo"), None);
    }
}
