//! Go's function table, `.gopclntab`: where each function starts and ends, by name.
//!
//! It is what the runtime itself walks for stack traces, so it survives stripping
//! (`-ldflags=-s -w`). Layout (Go's `runtime/symtab.go` `pcHeader`, `debug/gosym`):
//!
//! ```text
//! magic u32 | 0 u8 | 0 u8 | pc quantum u8 | pointer size u8 | words (pointer size each):
//!   Go 1.16-1.17 (0xfffffffa): nfunc nfiles funcnameOffset cuOffset filetabOffset pctabOffset pclnOffset
//!   Go 1.18-1.19 (0xfffffff0), 1.20+ (0xfffffff1):
//!                              nfunc nfiles textStart funcnameOffset cuOffset filetabOffset pctabOffset pclnOffset
//! ```
//!
//! At `pclnOffset` is the function table: `nfunc + 1` pairs (entry, offset of the function's
//! `_func` record from `pclnOffset`), the last entry holding only the end of the last
//! function; each function ends where the next one starts. Entries are pointer-sized
//! addresses before Go 1.18 and 32-bit offsets from the start of the text after. A `_func`
//! starts with the same entry, then its name as a 32-bit offset into the NUL-terminated
//! names at `funcnameOffset`.
//!
//! Every offset is checked against the table's length: a hostile file can claim anything.

/// Layout versions, by magic.
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
/// Go 1.2-1.15: a different layout; those Go versions cannot be instrumented anyway (no
/// register ABI), so it is recognised only to say so.
const MAGIC_GO12: u32 = 0xffff_fffb;
/// Longest function name read (generic instantiations make long names, not this long).
const MAX_NAME_LEN: usize = 16 * 1024;

/// Which layout the table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Go 1.16 and 1.17.
    Go116,
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later (same layout as 1.18, new magic).
    Go120,
}

/// Why the table cannot be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("pclntab shorter than its header")]
    Truncated,
    #[error("pclntab magic {0:#010x} is not one of Go 1.16+")]
    BadMagic(u32),
    #[error("pclntab of Go 1.2-1.15 (magic {MAGIC_GO12:#010x}): not read")]
    TooOld,
    #[error("pclntab header is malformed (pc quantum {quantum}, pointer size {ptr_size})")]
    BadHeader { quantum: u8, ptr_size: u8 },
    #[error("pclntab {what} at {offset:#x} lies outside its {len} bytes")]
    OutOfBounds {
        what: &'static str,
        offset: u64,
        len: usize,
    },
    #[error("pclntab has {count} functions, not {index}")]
    NoSuchFunction { index: usize, count: usize },
    #[error("pclntab function {index} ends at {end:#x}, not after its entry {entry:#x}")]
    BadRange { index: usize, entry: u64, end: u64 },
    #[error("pclntab function {index}: its record says entry {record:#x}, the table {table:#x}")]
    EntryMismatch {
        index: usize,
        record: u64,
        table: u64,
    },
}

/// A function's code: `entry..end` in the program's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionRange {
    pub entry: u64,
    pub end: u64,
}

/// A parsed function table (owning its bytes).
#[derive(Debug)]
pub struct Pclntab {
    data: Vec<u8>,
    layout: Layout,
    big_endian: bool,
    ptr_size: usize,
    nfunc: usize,
    funcnametab: usize,
    /// Where the function table and the `_func` records start (`pclnOffset`).
    funcdata: usize,
    /// Added to the 32-bit entry offsets of Go 1.18+.
    text_start: u64,
}

impl Pclntab {
    /// Parses the header of `data`, the whole `.gopclntab`. Go 1.18+ entries are offsets
    /// from `runtime.text`, which the header records; `text_start` stands in where the
    /// header's is 0 (a position-independent binary whose linker left it to a dynamic
    /// relocation). Not the `.text` section's address by default, as Go's `debug/gosym`
    /// takes it: with external linking, C code comes first and `.text` starts before
    /// `runtime.text` (0x100 bytes before it in a cgo build here), which would shift every
    /// function.
    pub fn parse(data: Vec<u8>, text_start: Option<u64>) -> Result<Pclntab, PclntabError> {
        let header = data.get(..8).ok_or(PclntabError::Truncated)?;
        let (quantum, ptr_size) = (header[6], header[7]);
        let le = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let be = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let (magic, big_endian) = if [MAGIC_GO116, MAGIC_GO118, MAGIC_GO120, MAGIC_GO12]
            .contains(&be)
            && ![MAGIC_GO116, MAGIC_GO118, MAGIC_GO120, MAGIC_GO12].contains(&le)
        {
            (be, true)
        } else {
            (le, false)
        };
        let layout = match magic {
            MAGIC_GO116 => Layout::Go116,
            MAGIC_GO118 => Layout::Go118,
            MAGIC_GO120 => Layout::Go120,
            MAGIC_GO12 => return Err(PclntabError::TooOld),
            other => return Err(PclntabError::BadMagic(other)),
        };
        if header[4] != 0
            || header[5] != 0
            || ![1, 2, 4].contains(&quantum)
            || ![4, 8].contains(&ptr_size)
        {
            return Err(PclntabError::BadHeader { quantum, ptr_size });
        }
        let mut table = Pclntab {
            data,
            layout,
            big_endian,
            ptr_size: usize::from(ptr_size),
            nfunc: 0,
            funcnametab: 0,
            funcdata: 0,
            text_start: 0,
        };
        let word = |i: usize, what| table.uint(8 + i * table.ptr_size, table.ptr_size, what);
        let offset = |i: usize, what| -> Result<usize, PclntabError> {
            let value = word(i, what)?;
            table.checked_offset(value, 0, what)
        };
        let (nfunc, names, funcdata, header_text_start) = match layout {
            Layout::Go116 => (
                word(0, "nfunc")?,
                offset(2, "funcnameOffset")?,
                offset(6, "pclnOffset")?,
                0,
            ),
            Layout::Go118 | Layout::Go120 => (
                word(0, "nfunc")?,
                offset(3, "funcnameOffset")?,
                offset(7, "pclnOffset")?,
                word(2, "textStart")?,
            ),
        };
        // The function table itself must fit: (2 * nfunc + 1) fields.
        let field = table.functab_field_size();
        let functab_len = nfunc
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(field as u64))
            .ok_or(PclntabError::OutOfBounds {
                what: "function table",
                offset: nfunc,
                len: table.data.len(),
            })?;
        table.checked_offset(funcdata as u64, functab_len, "function table")?;
        table.nfunc = usize::try_from(nfunc).map_err(|_| PclntabError::Truncated)?;
        table.funcnametab = names;
        table.funcdata = funcdata;
        table.text_start = match (header_text_start, text_start) {
            (0, Some(fallback)) => fallback,
            (recorded, _) => recorded,
        };
        Ok(table)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Number of functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The `index`th function's name (raw bytes) and code range, `index < len()`.
    pub fn function(&self, index: usize) -> Result<(&[u8], FunctionRange), PclntabError> {
        if index >= self.nfunc {
            return Err(PclntabError::NoSuchFunction {
                index,
                count: self.nfunc,
            });
        }
        let entry = self.table_pc(index)?;
        let end = self.table_pc(index + 1)?;
        if end <= entry {
            return Err(PclntabError::BadRange { index, entry, end });
        }
        let field = self.functab_field_size();
        let record_at = self.uint(
            self.funcdata + (2 * index + 1) * field,
            field,
            "function offset",
        )?;
        let record = self.checked_offset(record_at, 0, "function record")? + self.funcdata;
        let record_entry = match self.layout {
            Layout::Go116 => self.uint(record, self.ptr_size, "function entry")?,
            Layout::Go118 | Layout::Go120 => self
                .uint(record, 4, "function entry")?
                .wrapping_add(self.text_start),
        };
        if record_entry != entry {
            return Err(PclntabError::EntryMismatch {
                index,
                record: record_entry,
                table: entry,
            });
        }
        let name_field = match self.layout {
            Layout::Go116 => self.ptr_size,
            Layout::Go118 | Layout::Go120 => 4,
        };
        let name_at = self.uint(record + name_field, 4, "function name offset")?;
        let name_start = self.checked_offset(name_at, 0, "function name")? + self.funcnametab;
        let tail = self
            .data
            .get(name_start..)
            .ok_or(PclntabError::OutOfBounds {
                what: "function name",
                offset: name_start as u64,
                len: self.data.len(),
            })?;
        let tail = &tail[..tail.len().min(MAX_NAME_LEN)];
        let name = tail
            .iter()
            .position(|&b| b == 0)
            .map(|nul| &tail[..nul])
            .ok_or(PclntabError::OutOfBounds {
                what: "function name terminator",
                offset: name_start as u64,
                len: self.data.len(),
            })?;
        Ok((name, FunctionRange { entry, end }))
    }

    /// The code range of the function named `name` (e.g. `net/http.serverHandler.ServeHTTP`),
    /// None when the binary has no such function. A malformed entry met on the way is an
    /// error: the table is not to be trusted then.
    pub fn find(&self, name: &str) -> Result<Option<FunctionRange>, PclntabError> {
        for index in 0..self.nfunc {
            let (found, range) = self.function(index)?;
            if found == name.as_bytes() {
                return Ok(Some(range));
            }
        }
        Ok(None)
    }

    fn functab_field_size(&self) -> usize {
        match self.layout {
            Layout::Go116 => self.ptr_size,
            Layout::Go118 | Layout::Go120 => 4,
        }
    }

    /// The function table's `index`th entry address (`index <= len()`).
    fn table_pc(&self, index: usize) -> Result<u64, PclntabError> {
        let field = self.functab_field_size();
        let value = self.uint(self.funcdata + 2 * index * field, field, "function entry")?;
        Ok(match self.layout {
            Layout::Go116 => value,
            Layout::Go118 | Layout::Go120 => value.wrapping_add(self.text_start),
        })
    }

    /// `value` as an offset into the table that has `len` bytes after it.
    fn checked_offset(
        &self,
        value: u64,
        len: u64,
        what: &'static str,
    ) -> Result<usize, PclntabError> {
        let out = PclntabError::OutOfBounds {
            what,
            offset: value,
            len: self.data.len(),
        };
        let end = value.checked_add(len).ok_or(out.clone())?;
        if end > self.data.len() as u64 {
            return Err(out);
        }
        usize::try_from(value).map_err(|_| out)
    }

    /// A `size`-byte unsigned integer at `at`, in the table's byte order.
    fn uint(&self, at: usize, size: usize, what: &'static str) -> Result<u64, PclntabError> {
        let bytes = at
            .checked_add(size)
            .and_then(|end| self.data.get(at..end))
            .ok_or(PclntabError::OutOfBounds {
                what,
                offset: at as u64,
                len: self.data.len(),
            })?;
        let mut buf = [0u8; 8];
        Ok(if self.big_endian {
            buf[8 - size..].copy_from_slice(bytes);
            u64::from_be_bytes(buf)
        } else {
            buf[..size].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        })
    }
}
