//! HPACK (RFC 7541): the header-block decoder of one direction of one connection.
//!
//! Every header block of a direction goes through its decoder in capture order, because each
//! block may change the dynamic table that later blocks index. The decoder keeps the table
//! exactly when it saw the connection from its start. When it did not (a connection opened
//! before the agent, or a header block whose bytes were lost), it still decodes: HPACK indexes
//! count from the newest entry, so every entry inserted since then resolves exactly, and an
//! index past them names an entry the decoder never saw, decoded as an unknown field instead
//! of an error ([`Name::Unknown`], [`Value::Unknown`]).
//!
//! Privacy and memory: the table keeps the bytes of a value only when the caller's
//! [`FieldFilter`] reads its name (trace context, the pseudo-headers it reports), or when an
//! unknown name's value has the shape of trace context. Other values are dropped at once; only
//! their lengths are kept, for the table's size accounting. The table is capped at
//! [`MAX_TABLE_BYTES`], and every read is bounds-checked: hostile input yields an error, never a
//! panic.

use std::borrow::Cow;
use std::collections::VecDeque;

use super::huffman::{self, HuffmanError};

/// The largest dynamic table kept, in HPACK's accounting (RFC 7541 §4.1). Beyond it, older
/// entries are dropped and later references to them decode as unknown.
pub const MAX_TABLE_BYTES: usize = 65536;
/// SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 9113 §6.5.2).
const DEFAULT_TABLE_BYTES: usize = 4096;
/// Per-entry overhead of the size accounting (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
/// Kept values are cut to this many bytes (paths are the longest values read).
pub const MAX_KEPT_VALUE: usize = 4096;
/// Values of unknown names are decoded up to this many bytes to judge their shape.
const MAX_SHAPE_VALUE: usize = 512;

/// What the caller reads from header blocks.
pub trait FieldFilter {
    /// The caller reads fields named `name` (lowercase): their values are kept.
    fn keeps(&self, name: &str) -> bool;
    /// A value whose field name is unknown, recognised by its shape: the header name it has.
    fn name_by_value(&self, value: &[u8]) -> Option<&'static str>;
}

/// Keeps every field (tests: what the RFC examples check, what a masked block still says).
#[cfg(test)]
pub(crate) struct KeepAll;

#[cfg(test)]
impl FieldFilter for KeepAll {
    fn keeps(&self, _: &str) -> bool {
        true
    }
    fn name_by_value(&self, _: &[u8]) -> Option<&'static str> {
        None
    }
}

/// A decoded field's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// Known, and read by the filter (lowercase).
    Known(Cow<'static, str>),
    /// Known, and not read by the filter: not stored.
    Other,
    /// Unknown (the entry predates what the decoder saw), but the value has the shape of this
    /// header.
    ByValue(&'static str),
    /// Unknown.
    Unknown,
}

/// A decoded field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Known and kept (at most [`MAX_KEPT_VALUE`] bytes).
    Kept(Cow<'static, [u8]>),
    /// Known and not kept: of no interest to the filter.
    Dropped,
    /// Unknown: the entry predates what the decoder saw.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Name,
    pub value: Value,
}

/// Where a literal field's value lies in its block, in byte offsets (what a recording masks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSpan {
    /// The string's first byte: its Huffman flag (bit 7) and the start of its length.
    pub prefix: usize,
    /// The value's bytes as sent: `start..start + len`.
    pub start: usize,
    pub len: usize,
    pub huffman: bool,
}

/// Why a header block could not be decoded (RFC 7541 calls each a COMPRESSION_ERROR). After
/// one, the table is no longer trusted: the caller goes on with a
/// [`Decoder::mid_connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("hpack: block ends inside a field")]
    Truncated,
    #[error("hpack: integer too large")]
    IntegerOverflow,
    #[error("hpack: index 0")]
    IndexZero,
    #[error("hpack: index past the table")]
    IndexOutOfRange,
    #[error("hpack: table size update after a field")]
    LateSizeUpdate,
    #[error("hpack: invalid huffman string")]
    Huffman(#[from] HuffmanError),
}

impl HpackError {
    /// The reason as a static phrase (the anomaly's reason).
    pub fn reason(self) -> &'static str {
        match self {
            HpackError::Truncated => "hpack: block ends inside a field",
            HpackError::IntegerOverflow => "hpack: integer too large",
            HpackError::IndexZero => "hpack: index 0",
            HpackError::IndexOutOfRange => "hpack: index past the table",
            HpackError::LateSizeUpdate => "hpack: table size update after a field",
            HpackError::Huffman(_) => "hpack: invalid huffman string",
        }
    }
}

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The name of static entry `index` (1-based), when it is one.
pub fn static_name(index: usize) -> Option<&'static str> {
    index
        .checked_sub(1)
        .and_then(|i| STATIC_TABLE.get(i))
        .map(|(n, _)| *n)
}

#[derive(Debug, Clone)]
struct Entry {
    field: Field,
    /// Length of the name in HPACK's accounting; None when the name is unknown.
    name_len: Option<usize>,
    /// HPACK's size of the entry (name + value + 32); with an unknown name, the least it can be.
    size: usize,
}

/// One direction's decoder: its dynamic table and what it knows about it.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The table's current maximum size (the last size update, or the default).
    max_size: usize,
    /// Entries older than `entries` may exist that this decoder never saw: an index past
    /// `entries` decodes as unknown instead of being an error.
    older_unknown: bool,
}

impl Decoder {
    /// A decoder that sees the direction from its first header block: exact.
    pub fn from_start() -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_BYTES,
            older_unknown: false,
        }
    }

    /// A decoder that starts in the middle of a connection: the table may hold entries it never
    /// saw, and its size limit is unknown (the largest kept: keeping an entry the peer already
    /// evicted is harmless, because a compliant encoder never indexes it).
    pub fn mid_connection() -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE_BYTES,
            older_unknown: true,
        }
    }

    /// A decoder of size `max_size` from the start (the RFC examples' SETTINGS).
    #[cfg(test)]
    pub fn with_max_size(max_size: usize) -> Decoder {
        Decoder {
            max_size,
            ..Decoder::from_start()
        }
    }

    /// The entries as (name, value) text, newest first, and the table size (tests).
    #[cfg(test)]
    pub fn table(&self) -> (Vec<(String, String)>, usize) {
        let text = |f: &Field| {
            let name = match &f.name {
                Name::Known(n) => n.to_string(),
                Name::ByValue(n) => format!("{n}?"),
                Name::Other | Name::Unknown => "-".to_string(),
            };
            let value = match &f.value {
                Value::Kept(v) => String::from_utf8_lossy(v).into_owned(),
                Value::Dropped | Value::Unknown => "-".to_string(),
            };
            (name, value)
        };
        (
            self.entries.iter().map(|e| text(&e.field)).collect(),
            self.size,
        )
    }

    /// True when the table is known exactly (the decoder saw every block since the start).
    pub fn is_exact(&self) -> bool {
        !self.older_unknown
    }

    /// True when no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries currently kept and the bytes of their kept names and values (for bounds tests).
    #[cfg(test)]
    pub fn footprint(&self) -> (usize, usize) {
        let bytes = self
            .entries
            .iter()
            .map(|e| {
                let n = match &e.field.name {
                    Name::Known(n) => n.len(),
                    _ => 0,
                };
                let v = match &e.field.value {
                    Value::Kept(v) => v.len(),
                    _ => 0,
                };
                n + v
            })
            .sum();
        (self.entries.len(), bytes)
    }

    /// Decodes one complete header block, in order, handing every field to `on_field`.
    pub fn decode_block(
        &mut self,
        block: &[u8],
        filter: &dyn FieldFilter,
        on_field: &mut dyn FnMut(Field),
    ) -> Result<(), HpackError> {
        self.decode_block_spans(block, filter, &mut |f, _| on_field(f))
    }

    /// [`Decoder::decode_block`], with where each literal's value lies in the block.
    pub fn decode_block_spans(
        &mut self,
        block: &[u8],
        filter: &dyn FieldFilter,
        on_field: &mut dyn FnMut(Field, Option<ValueSpan>),
    ) -> Result<(), HpackError> {
        let mut input = Input { buf: block, pos: 0 };
        let mut fields_seen = false;
        while let Some(first) = input.peek() {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = input.integer(7)?;
                on_field(self.lookup(index, filter)?, None);
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                let index = input.integer(6)?;
                let (field, name_len, value_len, span) = self.literal(&mut input, index, filter)?;
                self.insert(field.clone(), name_len, value_len);
                on_field(field, Some(span));
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only at the start of a block (§4.2).
                let size = input.integer(5)?;
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                self.resize(size);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
                let index = input.integer(4)?;
                let (field, _, _, span) = self.literal(&mut input, index, filter)?;
                on_field(field, Some(span));
            }
            fields_seen = true;
        }
        Ok(())
    }

    /// The field at `index` (static, then dynamic).
    fn lookup(&self, index: usize, filter: &dyn FieldFilter) -> Result<Field, HpackError> {
        if index == 0 {
            return Err(HpackError::IndexZero);
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok(if filter.keeps(name) {
                Field {
                    name: Name::Known(Cow::Borrowed(name)),
                    value: Value::Kept(Cow::Borrowed(value.as_bytes())),
                }
            } else {
                Field {
                    name: Name::Other,
                    value: Value::Dropped,
                }
            });
        }
        match self.entries.get(index - 1 - STATIC_TABLE.len()) {
            Some(e) => Ok(e.field.clone()),
            None if self.older_unknown => Ok(Field {
                name: Name::Unknown,
                value: Value::Unknown,
            }),
            None => Err(HpackError::IndexOutOfRange),
        }
    }

    /// The name of the entry at `index` and its length (None when unknown).
    fn lookup_name(
        &self,
        index: usize,
        filter: &dyn FieldFilter,
    ) -> Result<(Name, Option<usize>), HpackError> {
        if let Some(name) = static_name(index) {
            let kept = if filter.keeps(name) {
                Name::Known(Cow::Borrowed(name))
            } else {
                Name::Other
            };
            return Ok((kept, Some(name.len())));
        }
        if index == 0 {
            return Err(HpackError::IndexZero);
        }
        match self.entries.get(index - 1 - STATIC_TABLE.len()) {
            Some(e) => Ok(match &e.field.name {
                // The entry's name was inferred from its value: this value is judged anew.
                Name::ByValue(_) => (Name::Unknown, None),
                n => (n.clone(), e.name_len),
            }),
            None if self.older_unknown => Ok((Name::Unknown, None)),
            None => Err(HpackError::IndexOutOfRange),
        }
    }

    /// A literal field whose name is `index` (0: a literal name follows). Returns the field,
    /// the name and value lengths in HPACK's accounting, and where its value lies.
    fn literal(
        &self,
        input: &mut Input<'_>,
        index: usize,
        filter: &dyn FieldFilter,
    ) -> Result<(Field, Option<usize>, usize, ValueSpan), HpackError> {
        let (name, name_len) = if index == 0 {
            let raw = input.string()?;
            let mut bytes = Vec::new();
            let len = raw.decode(MAX_SHAPE_VALUE, &mut bytes)?;
            let name = match std::str::from_utf8(&bytes) {
                Ok(s) if len <= MAX_SHAPE_VALUE => {
                    let lower = s.to_ascii_lowercase();
                    if filter.keeps(&lower) {
                        Name::Known(Cow::Owned(lower))
                    } else {
                        Name::Other
                    }
                }
                _ => Name::Other,
            };
            (name, Some(len))
        } else {
            self.lookup_name(index, filter)?
        };
        let raw = input.string()?;
        let span = raw.span;
        let (name, value, value_len) = match name {
            Name::Known(n) => {
                let mut v = Vec::new();
                let len = raw.decode(MAX_KEPT_VALUE, &mut v)?;
                (Name::Known(n), Value::Kept(Cow::Owned(v)), len)
            }
            Name::Unknown => {
                let mut v = Vec::new();
                let len = raw.decode(MAX_SHAPE_VALUE, &mut v)?;
                match filter.name_by_value(&v) {
                    Some(n) => (Name::ByValue(n), Value::Kept(Cow::Owned(v)), len),
                    None => (Name::Unknown, Value::Dropped, len),
                }
            }
            // Of no interest: skipped without decoding, unless its length is needed.
            Name::Other | Name::ByValue(_) => (Name::Other, Value::Dropped, raw.decoded_len()?),
        };
        Ok((Field { name, value }, name_len, value_len, span))
    }

    /// Adds an entry (§4.4): evicts the oldest until it fits; an entry larger than the table
    /// empties it and is not added.
    fn insert(&mut self, field: Field, name_len: Option<usize>, value_len: usize) {
        let size = name_len
            .unwrap_or(0)
            .saturating_add(value_len)
            .saturating_add(ENTRY_OVERHEAD);
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.entries.push_front(Entry {
            field,
            name_len,
            size,
        });
        self.size += size;
    }

    /// A dynamic table size update (§6.3). Sizes past [`MAX_TABLE_BYTES`] are capped: entries
    /// evicted for the cap alone may still be indexed by the peer, so they become unknown.
    fn resize(&mut self, size: usize) {
        if size > MAX_TABLE_BYTES {
            self.max_size = MAX_TABLE_BYTES;
            self.older_unknown = true;
        } else {
            self.max_size = size;
        }
        self.evict_to(self.max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// The static-table index naming the first field of a header block fragment, when it is one
/// (table size updates skipped). What tells which side sent a block seen without context.
pub fn first_static_name(fragment: &[u8]) -> Option<usize> {
    let mut input = Input {
        buf: fragment,
        pos: 0,
    };
    loop {
        let first = input.peek()?;
        let index = if first & 0x80 != 0 {
            input.integer(7)
        } else if first & 0xc0 == 0x40 {
            input.integer(6)
        } else if first & 0xe0 == 0x20 {
            input.integer(5).ok()?;
            continue;
        } else {
            input.integer(4)
        };
        return index.ok().filter(|i| static_name(*i).is_some());
    }
}

/// A cursor over a header block.
struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A string literal as found in a block, not decoded yet.
struct RawString<'a> {
    bytes: &'a [u8],
    huffman: bool,
    span: ValueSpan,
}

impl RawString<'_> {
    /// Appends at most `max` decoded bytes to `out`; returns the decoded length.
    fn decode(&self, max: usize, out: &mut Vec<u8>) -> Result<usize, HpackError> {
        if self.huffman {
            Ok(huffman::decode(self.bytes, max, out)?)
        } else {
            out.extend_from_slice(self.bytes.get(..max.min(self.bytes.len())).unwrap_or(&[]));
            Ok(self.bytes.len())
        }
    }

    /// The decoded length, without keeping the bytes.
    fn decoded_len(&self) -> Result<usize, HpackError> {
        self.decode(0, &mut Vec::new())
    }
}

impl<'a> Input<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = self.peek().ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// An integer with an N-bit prefix (§5.1). Values past 2^28 are refused: no length or
    /// index of a bounded block gets near it.
    fn integer(&mut self, prefix_bits: u8) -> Result<usize, HpackError> {
        let mask = (1u8 << prefix_bits) - 1;
        let first = self.byte()? & mask;
        if first < mask {
            return Ok(usize::from(first));
        }
        let mut value = usize::from(mask);
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return Err(HpackError::IntegerOverflow);
            }
        }
        if value > 1 << 28 {
            return Err(HpackError::IntegerOverflow);
        }
        Ok(value)
    }

    /// A string literal (§5.2).
    fn string(&mut self) -> Result<RawString<'a>, HpackError> {
        let prefix = self.pos;
        let huffman = self.peek().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let start = self.pos;
        let end = start.checked_add(len).ok_or(HpackError::Truncated)?;
        let bytes = self.buf.get(start..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        Ok(RawString {
            bytes,
            huffman,
            span: ValueSpan {
                prefix,
                start,
                len,
                huffman,
            },
        })
    }
}
