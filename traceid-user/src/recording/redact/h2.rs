//! HTTP/2 in recordings: secrets masked inside HPACK header blocks.
//!
//! HPACK is compression, not encryption: a `cookie` sent over HTTP/2 is in the bytes, as
//! they are or Huffman-coded, and the line scanner of HTTP/1 cannot see it. Whether a value
//! is secret is known once its name is decoded, which takes the whole block and the table
//! every earlier block of the direction built. So each direction of an HTTP/2 connection walks
//! its frames like the engine's frame reader, gathers each header block with where each of
//! its bytes lies in the stream, and decodes it when it ends, with a decoder of its own. A
//! block can span several records (gRPC C-core hands the kernel each field as an iovec, and
//! each iovec is a record): the [`Redactor`](super::Redactor) holds records back from the
//! first of an unfinished block until it ends, so each is masked before it is written and the
//! recording keeps the order the kernel gave.
//!
//! Masked, with lengths kept (the engine reads the same frames, lengths and table):
//! - the values of `authorization`, `proxy-authorization`, `cookie` and `set-cookie`;
//! - the query of `:path`;
//! - values whose name predates what the recording saw (a connection followed from its
//!   middle, or after its table was lost), unless they have the shape of trace context: they
//!   may be secrets;
//! - a block that cannot be decoded (bytes lost, malformed, interrupted), whole, and bytes
//!   read while frame boundaries are lost: the engine cannot read them either.
//!
//! A Huffman-coded value is masked as a plain string of as many bytes (its Huffman flag
//! cleared): the replayed table then counts that entry by its coded length rather than its
//! decoded one, which only keeps entries longer, so every index the sender used still
//! resolves to what it named.

use crate::protocol::h2::frame::{self, flag, kind, FrameHeader, Payload, ReadEvent, PREFACE};
use crate::protocol::h2::hpack::{Decoder, Field, FieldFilter, Name, Value, ValueSpan};
use crate::protocol::h2::{header_fragment, trace_header_by_value};

use super::SENSITIVE_HEADERS;

/// What masked bytes become.
const MASK: u8 = b'*';

/// A header block's bytes kept while it is gathered; past this it is masked whole (the
/// engine reads blocks of at most 64 KiB by default).
const MAX_BLOCK: usize = 1 << 20;

/// A change to bytes of a direction's stream, at absolute stream offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch {
    /// `len` bytes from `at` become [`MASK`].
    Mask { at: u64, len: u64 },
    /// The byte at `at` loses its top bit (a string's Huffman flag).
    PlainString { at: u64 },
    /// The bytes from `at` become `bytes`.
    Write { at: u64, bytes: Vec<u8> },
}

impl Patch {
    /// Applies the patch to `payload`, the stream's bytes from offset `start`.
    pub fn apply(&self, start: u64, payload: &mut [u8]) {
        let end = start + payload.len() as u64;
        let mut each = |at: u64, len: u64, f: &mut dyn FnMut(usize, &mut u8)| {
            let (from, to) = (at.max(start), (at + len).min(end));
            for pos in from..to {
                f((pos - at) as usize, &mut payload[(pos - start) as usize]);
            }
        };
        match self {
            Patch::Mask { at, len } => each(*at, *len, &mut |_, b| *b = MASK),
            Patch::PlainString { at } => each(*at, 1, &mut |_, b| *b &= 0x7f),
            Patch::Write { at, bytes } => {
                each(*at, bytes.len() as u64, &mut |i, b| *b = bytes[i]);
            }
        }
    }
}

/// A header block being gathered.
#[derive(Debug)]
struct Block {
    /// Its fragments so far, and where each lies in the stream.
    fragments: Gathered,
    /// Lost, malformed or too large: masked whole, not decoded.
    spoiled: bool,
    /// The first record holding its bytes (the redactor's sequence number).
    first_seq: u64,
}

/// Bytes of the stream gathered in order: runs of (stream offset, length).
#[derive(Debug, Default)]
struct Gathered {
    bytes: Vec<u8>,
    runs: Vec<(u64, usize)>,
}

impl Gathered {
    fn push(&mut self, at: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.bytes.extend_from_slice(bytes);
        match self.runs.last_mut() {
            Some((start, len)) if *start + *len as u64 == at => *len += bytes.len(),
            _ => self.runs.push((at, bytes.len())),
        }
    }

    /// The stream ranges of `len` bytes from offset `off` of the gathered bytes.
    fn ranges(&self, mut off: usize, mut len: usize, out: &mut Vec<(u64, usize)>) {
        for &(start, run) in &self.runs {
            if len == 0 {
                break;
            }
            if off >= run {
                off -= run;
                continue;
            }
            let n = (run - off).min(len);
            out.push((start + off as u64, n));
            len -= n;
            off = 0;
        }
    }

    /// Masks everything gathered.
    fn mask_all(&self, patches: &mut Vec<Patch>) {
        for &(at, len) in &self.runs {
            patches.push(Patch::Mask {
                at,
                len: len as u64,
            });
        }
    }
}

/// One direction of an HTTP/2 connection, as a recording masks it: the engine's frame reader
/// (so both find the same frames, and lose and regain them at the same bytes) and a decoder
/// of its own.
#[derive(Debug)]
pub struct Direction {
    reader: frame::Reader,
    decoder: Decoder,
    block: Option<Block>,
    /// The first record read while the reader was inside the current header frame's payload.
    frame_since: Option<u64>,
}

/// What the decoder keeps: the names masking depends on.
struct Secrets;

impl FieldFilter for Secrets {
    fn keeps(&self, name: &str) -> bool {
        name == ":path"
            || SENSITIVE_HEADERS
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name.as_bytes()))
    }

    fn name_by_value(&self, value: &[u8]) -> Option<&'static str> {
        trace_header_by_value(value)
    }
}

/// A frame the reader delivered, kept past the reader's borrow.
enum Read {
    Frame {
        header: FrameHeader,
        /// The payload when whole (header-block frames only).
        bytes: Option<Vec<u8>>,
        end: u64,
    },
    Lost {
        at: u64,
    },
}

impl Direction {
    /// `from_start`: the connection is seen from its first byte (its table is known);
    /// `matched` bytes of the preface already passed.
    pub fn new(from_start: bool, matched: usize) -> Direction {
        let mut reader = frame::Reader::new(true, MAX_BLOCK);
        reader.feed(&PREFACE[..matched.min(PREFACE.len())], 0, 0, 0, &mut |_| {});
        Direction {
            reader,
            decoder: if from_start {
                Decoder::from_start()
            } else {
                Decoder::mid_connection()
            },
            block: None,
            frame_since: None,
        }
    }

    /// Stream offset of the next byte: where the next record's payload starts.
    pub fn offset(&self) -> u64 {
        self.reader.offset()
    }

    /// The sequence number of the first record of an unfinished header block: records from
    /// it on are held until the block ends.
    pub fn open_since(&self) -> Option<u64> {
        let block = self
            .block
            .as_ref()
            .filter(|b| !b.spoiled)
            .map(|b| b.first_seq);
        match (block, self.frame_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads the next record's `payload` (record `seq`), followed by `gap` bytes not
    /// captured; adds what must be masked to `patches`.
    pub fn feed(&mut self, payload: &[u8], gap: u64, seq: u64, patches: &mut Vec<Patch>) {
        let start = self.reader.offset();
        let end = start + payload.len() as u64;
        let mut read = Vec::new();
        if self.reader.is_lost() && !frame::looks_like_frames(payload) {
            // Skipped by the engine's reader too; they may hold header blocks.
            read.push(Read::Lost { at: start });
        }
        self.reader.feed(payload, gap, 0, 0, &mut |ev| match ev {
            ReadEvent::Frame {
                header,
                payload,
                end,
                ..
            } if is_block_frame(&header) => read.push(Read::Frame {
                header,
                bytes: match payload {
                    Payload::Bytes(b) => Some(b.to_vec()),
                    _ => None,
                },
                end,
            }),
            ReadEvent::Frame { header, end, .. } => read.push(Read::Frame {
                header,
                bytes: None,
                end,
            }),
            ReadEvent::LostSync { at } => read.push(Read::Lost { at }),
            ReadEvent::Preface => {}
        });
        for r in read {
            match r {
                Read::Frame { header, bytes, end } => {
                    self.on_frame(header, bytes.as_deref(), end, seq, patches)
                }
                Read::Lost { at } => {
                    if at < end {
                        patches.push(Patch::Mask { at, len: end - at });
                    }
                    self.spoil(patches);
                    self.block = None;
                }
            }
        }
        self.frame_since = match self.reader.in_payload() {
            Some((h, _)) if is_block_frame(&h) => Some(self.frame_since.unwrap_or(seq)),
            _ => None,
        };
    }

    /// A whole frame (`bytes`: its payload, when a header-block frame's came whole).
    fn on_frame(
        &mut self,
        header: FrameHeader,
        bytes: Option<&[u8]>,
        end: u64,
        seq: u64,
        patches: &mut Vec<Patch>,
    ) {
        let first_seq = self.frame_since.take().unwrap_or(seq);
        if self.block.is_some() && header.kind != kind::CONTINUATION {
            // RFC 9113 §6.10: nothing may come between a block's frames.
            self.spoil(patches);
            self.block = None;
        }
        if !is_block_frame(&header) {
            return;
        }
        let whole_frame = Patch::Mask {
            at: end - u64::from(header.len),
            len: u64::from(header.len),
        };
        if header.kind == kind::CONTINUATION && self.block.is_none() {
            // Its HEADERS came before the recording (or was cut): not decodable.
            patches.push(whole_frame);
            self.decoder = Decoder::mid_connection();
            return;
        }
        let block = self.block.get_or_insert(Block {
            fragments: Gathered::default(),
            spoiled: false,
            first_seq,
        });
        let fragment = bytes.and_then(|b| {
            let f = header_fragment(&header, b, false)?;
            Some((f.as_ptr() as usize - b.as_ptr() as usize, f))
        });
        match fragment {
            Some((off, f))
                if !block.spoiled && block.fragments.bytes.len() + f.len() <= MAX_BLOCK =>
            {
                // Padding and priority carry no header: they stay as sent.
                block
                    .fragments
                    .push(end - u64::from(header.len) + off as u64, f);
            }
            // Lost bytes, too large, padding past the frame, or a block already spoiled.
            _ => {
                patches.push(whole_frame);
                self.spoil(patches);
            }
        }
        if header.has(flag::END_HEADERS) {
            self.end_block(patches);
        }
    }

    /// The block ended: decoded, and its secrets masked (the whole of it when it cannot be).
    fn end_block(&mut self, patches: &mut Vec<Patch>) {
        let Some(block) = self.block.take() else {
            return;
        };
        if block.spoiled {
            return;
        }
        let fragments = &block.fragments;
        let mut found = Vec::new();
        let result =
            self.decoder
                .decode_block_spans(&fragments.bytes, &Secrets, &mut |field, span| {
                    if let Some(span) = span {
                        mask_field(&field, span, &mut found);
                    }
                });
        if result.is_err() {
            // The engine cannot read it either, and its table is lost from here.
            fragments.mask_all(patches);
            self.decoder = Decoder::mid_connection();
            return;
        }
        let mut ranges = Vec::new();
        for (off, change) in found {
            ranges.clear();
            match change {
                Change::Mask { len } => {
                    fragments.ranges(off, len, &mut ranges);
                    patches.extend(ranges.iter().map(|&(at, len)| Patch::Mask {
                        at,
                        len: len as u64,
                    }));
                }
                Change::PlainString => {
                    fragments.ranges(off, 1, &mut ranges);
                    patches.extend(ranges.iter().map(|&(at, _)| Patch::PlainString { at }));
                }
                Change::Write(bytes) => {
                    fragments.ranges(off, bytes.len(), &mut ranges);
                    let mut from = 0;
                    for &(at, len) in &ranges {
                        patches.push(Patch::Write {
                            at,
                            bytes: bytes[from..from + len].to_vec(),
                        });
                        from += len;
                    }
                }
            }
        }
    }

    /// The open block cannot be decoded: what it gathered is masked, and so is the rest of
    /// it as it comes; the table is lost (as the engine's).
    fn spoil(&mut self, patches: &mut Vec<Patch>) {
        if let Some(block) = &mut self.block {
            if !block.spoiled {
                block.fragments.mask_all(patches);
                block.spoiled = true;
                block.fragments = Gathered::default();
            }
        }
        self.decoder = Decoder::mid_connection();
    }

    /// The connection ended, or the recording, or its records were held too long: an
    /// unfinished block is masked as far as it came, header frame being read included.
    pub fn end(&mut self, patches: &mut Vec<Patch>) {
        if let Some((h, from)) = self.reader.in_payload() {
            if is_block_frame(&h) {
                patches.push(Patch::Mask {
                    at: from,
                    len: self.reader.offset() - from,
                });
            }
        }
        self.spoil(patches);
        self.block = None;
        self.frame_since = None;
    }
}

/// Whether a frame's payload belongs to a header block.
fn is_block_frame(h: &FrameHeader) -> bool {
    matches!(
        h.kind,
        kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION
    )
}

/// A change to a block's bytes, at a block offset.
enum Change {
    Mask { len: usize },
    PlainString,
    Write(Vec<u8>),
}

/// What masking a decoded literal field takes.
fn mask_field(field: &Field, span: ValueSpan, out: &mut Vec<(usize, Change)>) {
    let whole = |out: &mut Vec<(usize, Change)>| {
        if span.huffman {
            out.push((span.prefix, Change::PlainString));
        }
        out.push((span.start, Change::Mask { len: span.len }));
    };
    match (&field.name, &field.value) {
        (Name::Known(name), Value::Kept(value)) if name == ":path" => {
            let Some(q) = value.iter().position(|&b| b == b'?') else {
                return;
            };
            if span.huffman {
                // Written out plain: the path up to its `?`, as far as the coded length goes.
                out.push((span.prefix, Change::PlainString));
                let mut plain: Vec<u8> = value[..=q].iter().copied().take(span.len).collect();
                plain.resize(span.len, MASK);
                out.push((span.start, Change::Write(plain)));
            } else {
                out.push((
                    span.start + q + 1,
                    Change::Mask {
                        len: span.len.saturating_sub(q + 1),
                    },
                ));
            }
        }
        // A secret header's value.
        (Name::Known(_), _) => whole(out),
        // A name that predates the decoder, and a value of no trace shape: perhaps a secret.
        (Name::Unknown, _) => whole(out),
        (Name::ByValue(_) | Name::Other, _) => {}
    }
}

/// What a connection's first captured bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// HTTP/2: the whole client preface came (after `matched` bytes of it in earlier records
    /// of this direction), or frames (a connection followed from its middle, or the server's
    /// first SETTINGS).
    Http2,
    /// So far, the start of the preface: `matched` bytes in all.
    PrefaceSoFar(usize),
    /// Anything else: HTTP/1, or no protocol the engine reads.
    Other,
}

/// Sniffs the next record of a direction that has passed `matched` bytes of the preface.
pub fn sniff(payload: &[u8], matched: usize) -> Sniffed {
    let want = &PREFACE[matched.min(PREFACE.len())..];
    let n = want.len().min(payload.len());
    if payload[..n] == want[..n] {
        return if n == want.len() {
            Sniffed::Http2
        } else {
            Sniffed::PrefaceSoFar(matched + n)
        };
    }
    // HTTP/1 text does not make plausible frame headers (its "lengths" are far too large);
    // a start line is ruled out all the same.
    if matched == 0 && frame::looks_like_frames(payload) && !super::starts_message(payload) {
        Sniffed::Http2
    } else {
        Sniffed::Other
    }
}

#[cfg(test)]
mod tests {
    use super::super::Redactor;
    use super::*;
    use crate::protocol::h2::frame::HEADER_LEN;
    use crate::protocol::h2::hpack::KeepAll;
    use crate::protocol::h2::huffman::tests::encode as huffman;
    use crate::test_util::events::{run_records, Stream as Records, C, TP};
    use crate::test_util::Rng;
    use std::mem::size_of;
    use traceid_common::{DataEvent, ROLE_CLIENT, ROLE_SERVER};

    const SECRETS: [&str; 4] = [
        "SECRETTOKEN",
        "SECRETCOOKIE456",
        "SECRETQUERY789",
        "SETSECRET",
    ];

    /// The two ends of the connection, both on this host.
    const CLIENT: C = C {
        pid: 10,
        fd: 4,
        ts: 9,
        comm: "client",
        role: ROLE_CLIENT,
    };
    const SERVER: C = C {
        pid: 20,
        fd: 5,
        ts: 8,
        comm: "server",
        role: ROLE_SERVER,
    };

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A string literal (RFC 7541 §5.2), values under 127 bytes.
    fn string(s: &str, huff: bool) -> Vec<u8> {
        let bytes = if huff {
            huffman(s.as_bytes())
        } else {
            s.as_bytes().to_vec()
        };
        let mut out = vec![bytes.len() as u8 | if huff { 0x80 } else { 0 }];
        out.extend(bytes);
        out
    }

    /// The client's two requests: every way a secret travels in HPACK.
    fn client_stream() -> Vec<u8> {
        let mut b1 = vec![0x82]; // :method GET
        b1.push(0x44); // :path, with incremental indexing, a query in plain
        b1.extend(string("/login?password=SECRETQUERY789", false));
        b1.extend([0x1f, 0x08]); // authorization (static 23), never indexed, Huffman
        b1.extend(string("Bearer SECRETTOKEN", true));
        b1.push(0x40); // a new name, indexed: cookie
        b1.extend(string("cookie", false));
        b1.extend(string("a=SECRETCOOKIE456", false));
        b1.push(0x40);
        b1.extend(string("traceparent", false));
        b1.extend(string(TP, false));
        // Table now: 62 traceparent, 63 cookie, 64 :path.
        let mut b2 = vec![0x82, 0xbe]; // GET, traceparent (62) as a whole
        b2.push(0x04); // :path without indexing, Huffman, with a query
        b2.extend(string("/r2?token=SECRETQUERY789", true));
        b2.extend([0x7f, 0x00]); // incremental, name from the table: cookie (63)
        b2.extend(string("b=SECRETCOOKIE456", true));
        let mut s = PREFACE.to_vec();
        s.extend(frame(kind::SETTINGS, 0, 0, &[]));
        // The first block in two frames (HEADERS + CONTINUATION).
        let split = 20;
        s.extend(frame(kind::HEADERS, flag::END_STREAM, 1, &b1[..split]));
        s.extend(frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            1,
            &b1[split..],
        ));
        s.extend(frame(
            kind::HEADERS,
            flag::END_STREAM | flag::END_HEADERS,
            3,
            &b2,
        ));
        s
    }

    fn server_stream() -> Vec<u8> {
        let mut s = frame(kind::SETTINGS, 0, 0, &[]);
        for id in [1, 3] {
            let mut b = vec![0x88]; // :status 200
            b.extend([0x1f, 0x28]); // set-cookie (static 55), never indexed, Huffman
            b.extend(string("s=SETSECRET", true));
            s.extend(frame(
                kind::HEADERS,
                flag::END_STREAM | flag::END_HEADERS,
                id,
                &b,
            ));
        }
        s
    }

    /// Every field value of the header blocks in `stream` (no gaps), decoded.
    fn decoded_values(stream: &[u8]) -> Vec<String> {
        let mut pos = if stream.starts_with(PREFACE) {
            PREFACE.len()
        } else {
            0
        };
        let (mut d, mut block, mut out) = (Decoder::from_start(), Vec::new(), Vec::new());
        while pos + HEADER_LEN <= stream.len() {
            let h = FrameHeader::parse(stream[pos..pos + HEADER_LEN].try_into().unwrap());
            let payload = &stream[pos + HEADER_LEN..pos + HEADER_LEN + h.len as usize];
            pos += HEADER_LEN + h.len as usize;
            if is_block_frame(&h) {
                block.extend_from_slice(header_fragment(&h, payload, false).unwrap());
                if h.has(flag::END_HEADERS) {
                    d.decode_block(&block, &KeepAll, &mut |f| {
                        if let Value::Kept(v) = f.value {
                            out.push(String::from_utf8_lossy(&v).into_owned());
                        }
                    })
                    .expect("a masked block still decodes");
                    block.clear();
                }
            }
        }
        out
    }

    fn leaked(values: &[String]) -> Vec<&'static str> {
        SECRETS
            .into_iter()
            .filter(|s| values.iter().any(|v| v.contains(s)))
            .collect()
    }

    /// Both ends on this host, the client's writes cut into `piece`-byte records and the
    /// server's interleaved: the records as the kernel gives them. `whole_preface`: the
    /// client's first write is its preface and SETTINGS (what the engine sniffs HTTP/2 by).
    fn records(piece: usize, whole_preface: bool) -> Records {
        let (client, server) = (CLIENT, SERVER);
        let mut s = Records::default();
        s.open(client, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 50051);
        s.open(server, [127, 0, 0, 1], 50051, [127, 0, 0, 1], 40000);
        let (c2s, s2c) = (client_stream(), server_stream());
        let first = if whole_preface {
            PREFACE.len() + HEADER_LEN
        } else {
            0
        };
        let (head, rest) = c2s.split_at(first);
        for chunk in std::iter::once(head)
            .filter(|h| !h.is_empty())
            .chain(rest.chunks(piece))
        {
            s.data(client, 10, true, chunk);
            s.data(server, 20, false, chunk);
        }
        for chunk in s2c.chunks(piece) {
            s.data(server, 20, true, chunk);
            s.data(client, 10, false, chunk);
        }
        s
    }

    /// Every record through push/pop, then finish: what reaches the disk.
    fn to_disk(r: &mut Redactor, records: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut disk = Vec::new();
        for rec in records {
            r.push(rec.clone());
            disk.extend(std::iter::from_fn(|| r.pop()));
        }
        r.finish();
        disk.extend(std::iter::from_fn(|| r.pop()));
        disk
    }

    /// The payloads of process `pid`'s records in one direction, joined.
    fn joined(records: &[Vec<u8>], pid: u32, egress: bool) -> Vec<u8> {
        records
            .iter()
            .filter_map(|r| match crate::event::decode(r) {
                Ok(crate::event::Event::Data(d, p))
                    if d.header.pid == pid && crate::event::is_egress(&d) == egress =>
                {
                    Some(p.to_vec())
                }
                _ => None,
            })
            .collect::<Vec<_>>()
            .concat()
    }

    #[test]
    fn http2_secrets_are_masked_wherever_records_cut_the_blocks_and_the_engine_reads_the_rest() {
        // The secrets are really in the stream (as HPACK carries them), or this proves nothing.
        let all: Vec<String> = [client_stream(), server_stream()]
            .iter()
            .flat_map(|s| decoded_values(s))
            .collect();
        assert_eq!(leaked(&all), SECRETS.to_vec());
        // The preface itself cut byte by byte: told from HTTP/1 all the same.
        let s = records(1, false);
        let disk = to_disk(&mut Redactor::default(), &s.records);
        for (pid, egress) in [(10, true), (20, false), (20, true), (10, false)] {
            let values = decoded_values(&joined(&disk, pid, egress));
            assert_eq!(leaked(&values), Vec::<&str>::new());
            assert!(!values.is_empty());
        }
        for piece in [1, 2, 3, 5, 7, 11, 16, 64, 4096] {
            let s = records(piece, true);
            let disk = to_disk(&mut Redactor::default(), &s.records);
            assert_eq!(disk.len(), s.records.len(), "piece {piece}");
            for (a, b) in s.records.iter().zip(&disk) {
                assert_eq!(a.len(), b.len());
                assert_eq!(a[..size_of::<DataEvent>()], b[..size_of::<DataEvent>()]);
            }
            for (pid, egress) in [(10, true), (20, false), (20, true), (10, false)] {
                let values = decoded_values(&joined(&disk, pid, egress));
                assert_eq!(leaked(&values), Vec::<&str>::new(), "piece {piece}");
                // What is not secret is untouched.
                if egress == (pid == 10) {
                    assert!(values.iter().any(|v| v == TP), "{values:?}");
                    assert!(
                        values.iter().any(|v| v.starts_with("/login?")),
                        "{values:?}"
                    );
                    assert!(values.iter().any(|v| v.starts_with("/r2?")), "{values:?}");
                }
            }
            let (live, replayed) = (run_records(&s.records), run_records(&disk));
            assert_eq!(live.len(), 4, "piece {piece}");
            assert!(live
                .iter()
                .all(|r| r.trace_id.as_deref() == Some(&TP[3..35])));
            assert_eq!(live, replayed, "piece {piece}");
        }
    }

    /// An HTTP/1.1 request that upgrades to h2c, then HTTP/2 both ways (RFC 9113 §3.2 of
    /// RFC 7540): the client's and the server's bytes.
    fn upgrade_streams() -> (Vec<u8>, Vec<u8>) {
        let mut c2s = b"GET /up?q=SECRETQUERY789 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nCookie: up=SECRETCOOKIE456\r\n\r\n".to_vec();
        let h2 = client_stream();
        // The client's HTTP/2 starts with the preface; its first block is stream 1's there,
        // which an upgraded connection does not send: renumbered 5 (and 3 stays).
        let mut h2 = h2;
        let first = PREFACE.len() + HEADER_LEN;
        h2[first + 5..first + 9].copy_from_slice(&5u32.to_be_bytes());
        let cont = first + HEADER_LEN + 20;
        h2[cont + 5..cont + 9].copy_from_slice(&5u32.to_be_bytes());
        c2s.extend(h2);
        let mut s2c =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        s2c.extend(server_stream());
        (c2s, s2c)
    }

    #[test]
    fn an_http1_connection_upgraded_to_h2c_is_masked_as_http2_after_the_switch() {
        let (c2s, s2c) = upgrade_streams();
        let h2_part = |s: &[u8]| -> Vec<u8> {
            let end = s.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            s[end..].to_vec()
        };
        let all: Vec<String> = [h2_part(&c2s), h2_part(&s2c)]
            .iter()
            .flat_map(|s| decoded_values(s))
            .collect();
        assert_eq!(leaked(&all), SECRETS.to_vec());
        for piece in [1, 7, 16, 64, 4096] {
            let mut s = Records::default();
            s.open(CLIENT, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 8080);
            let (c_head, c_rest) = c2s.split_at(c2s.len() - client_stream().len());
            s.data(CLIENT, 10, true, c_head);
            s.data(SERVER, 20, false, c_head);
            // The 101 head and the server's first frames in one write, then the rest.
            let (s_head, s_rest) = s2c.split_at(s2c.len() - server_stream().len() + 9);
            s.data(SERVER, 20, true, s_head);
            s.data(CLIENT, 10, false, s_head);
            for chunk in c_rest.chunks(piece.max(PREFACE.len())) {
                s.data(CLIENT, 10, true, chunk);
                s.data(SERVER, 20, false, chunk);
            }
            for chunk in s_rest.chunks(piece) {
                s.data(SERVER, 20, true, chunk);
                s.data(CLIENT, 10, false, chunk);
            }
            let disk = to_disk(&mut Redactor::default(), &s.records);
            assert_eq!(disk.len(), s.records.len());
            for (pid, egress) in [(10, true), (20, false), (20, true), (10, false)] {
                let bytes = joined(&disk, pid, egress);
                let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&bytes[..head_end]);
                assert!(!head.contains("SECRET"), "piece {piece}: {head}");
                let values = decoded_values(&bytes[head_end..]);
                assert_eq!(leaked(&values), Vec::<&str>::new(), "piece {piece}");
                assert!(!values.is_empty());
            }
            let (live, replayed) = (run_records(&s.records), run_records(&disk));
            assert_eq!(live.len(), 6, "piece {piece}: {live:?}");
            assert_eq!(live, replayed, "piece {piece}");
        }
    }

    #[test]
    fn records_wait_for_the_end_of_their_block_and_keep_their_order() {
        let s = records(7, true);
        let mut r = Redactor::default();
        let mut out = Vec::new();
        let mut most_held = 0;
        for (i, rec) in s.records.iter().enumerate() {
            r.push(rec.clone());
            while let Some(rec) = r.pop() {
                out.push(rec);
            }
            most_held = most_held.max(i + 1 - out.len());
        }
        // Held while a block was open: never more than one block's records and those
        // interleaved with them.
        assert!(most_held > 1 && most_held < 64, "{most_held}");
        assert_eq!(out.len(), s.records.len(), "nothing is left held");
        for (a, b) in s.records.iter().zip(&out) {
            // The same record (the header is never changed): same order.
            assert_eq!(a[..size_of::<DataEvent>()], b[..size_of::<DataEvent>()]);
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn an_unfinished_block_is_masked_at_the_end_and_a_lost_one_whole() {
        // The recording ends inside the first block, after its cookie: what it gathered is
        // masked, and every record still comes out.
        let c2s = client_stream();
        let after_cookie = c2s
            .windows(15)
            .position(|w| w == b"SECRETCOOKIE456")
            .unwrap()
            + 20;
        let s = records(5, true);
        let first = PREFACE.len() + HEADER_LEN;
        let n = 2 + 2 * (1 + (after_cookie - first).div_ceil(5));
        let disk = to_disk(&mut Redactor::default(), &s.records[..n]);
        assert_eq!(disk.len(), n);
        let sent = joined(&disk, 10, true);
        assert!(contains(
            &joined(&s.records[..n], 10, true),
            b"SECRETCOOKIE456"
        ));
        assert!(!contains(&sent, b"SECRETCOOKIE456"));
        assert!(!contains(&sent, b"ECRETQUERY789"));

        // Bytes lost from inside the first block to the second: the first is masked whole,
        // and the second is read with the table lost, so its cookie, whose name came from
        // the table, is masked too (its name is unknown); its path keeps all but the query.
        // Where the second request's HEADERS frame starts.
        let block2_at = c2s.len()
            - (HEADER_LEN
                + 2
                + 1
                + string("/r2?token=SECRETQUERY789", true).len()
                + 2
                + string("b=SECRETCOOKIE456", true).len());
        let client = CLIENT;
        let mut lossy = Records::default();
        lossy.open(client, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 50051);
        let at = first + HEADER_LEN + 8;
        lossy.data(client, 10, true, &c2s[..at]);
        lossy.data_captured(client, 10, true, &c2s[at..block2_at], 0);
        lossy.data(client, 10, true, &c2s[block2_at..]);
        let disk = to_disk(&mut Redactor::default(), &lossy.records);
        let (kept, resumed) = (joined(&disk[..2], 10, true), joined(&disk[3..], 10, true));
        assert!(!contains(&kept, b"password"), "the block's start is masked");
        let cookie = huffman(b"b=SECRETCOOKIE456");
        let query = huffman(b"/r2?token=SECRETQUERY789");
        assert!(contains(&c2s[block2_at..], &cookie) && contains(&c2s[block2_at..], &query));
        assert!(!contains(&resumed, &cookie) && !contains(&resumed, &query));
        assert!(contains(&resumed, b"/r2?*****"));
    }

    #[test]
    fn arbitrary_frames_never_panic_and_every_record_comes_out_once() {
        let mut rng = Rng::new(29);
        let mut r = Redactor::new(8);
        let (c2s, s2c) = (client_stream(), server_stream());
        let mut sent = 0usize;
        let mut got = 0usize;
        for round in 0..3_000u32 {
            let pid = rng.below(3) as u32;
            let c = C {
                pid,
                fd: 4,
                ts: u64::from(round / 500),
                comm: "x",
                role: ROLE_CLIENT,
            };
            let mut s = Records::default();
            if rng.pct(3) {
                s.open(c, [127, 0, 0, 1], 1, [127, 0, 0, 1], 2);
            }
            let src = if rng.pct(50) { &c2s } else { &s2c };
            let from = rng.index(src.len());
            let len = rng.index(40).min(src.len() - from);
            let mut bytes = src[from..from + len].to_vec();
            for b in bytes.iter_mut() {
                if rng.pct(3) {
                    *b = rng.next_u64() as u8;
                }
            }
            let captured = if rng.pct(10) { rng.index(len + 1) } else { len };
            s.data_captured(c, pid, rng.pct(50), &bytes, captured);
            if rng.pct(2) {
                s.close(c);
            }
            for rec in s.records {
                let len = rec.len();
                r.push(rec);
                sent += 1;
                while let Some(out) = r.pop() {
                    assert!(out.len() == len || out.len() >= size_of::<DataEvent>() / 2);
                    got += 1;
                }
            }
        }
        r.finish();
        got += std::iter::from_fn(|| r.pop()).count();
        assert_eq!(got, sent);
    }
}
