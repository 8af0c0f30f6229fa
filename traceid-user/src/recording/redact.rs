//! Stream-aware redaction: secrets are masked wherever their bytes fall.
//!
//! A process may write a request in pieces, and the kernel cuts a write at the capture
//! window, so a secret header value can start in one record and end in another. The
//! [`Redactor`] follows every byte stream (one direction of a connection, plain or TLS
//! plaintext) through its HTTP/1 messages with a small state machine: the value of a
//! sensitive header is masked wherever its bytes fall, and so is the query string of every
//! request line. Each overwrite keeps the length, because the engine relies on lengths (body
//! sizes, chunk framing, gaps).
//!
//! Bodies pass through untouched when the framing says where they end (Content-Length,
//! chunked, no body after a HEAD request or for 1xx, 204 and 304). Bytes whose framing the
//! stream does not tell (a close-delimited body, a stream that is not HTTP) are scanned line
//! by line like a head, so a message head that the framing missed is still redacted.
//!
//! Where bytes were not captured (a gap), the position in the stream is unknown unless a
//! body's length covers the gap. The next line is then masked (it may be the tail of a
//! secret), unless it starts a new message.

mod h2;

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;

use traceid_common::{source, DataEvent, DIR_INGRESS};

use crate::event::{self, Event};

/// Header names whose values are masked (compared without regard to case).
pub const SENSITIVE_HEADERS: &[&[u8]] = &[
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"set-cookie",
];

/// What masked bytes become.
const MASK: u8 = b'*';

/// Request methods that start a message where the position in the stream is not known (after
/// a gap, in bytes without framing). At a known message start, any token does.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PRI",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"PURGE",
    b"SEARCH",
    b"REPORT",
];

/// Bytes of a line's first token that are kept: more than every sensitive name, method and
/// framing header name. A longer token is none of them.
const TOKEN_CAP: usize = 24;

/// Connections followed at once; past the cap the least recently used tenth is forgotten
/// (their next bytes are treated like bytes after a gap).
pub const DEFAULT_STREAM_CAP: usize = 16_384;

/// Records held back at once while HTTP/2 header blocks are unfinished; past either bound the
/// oldest unfinished block is masked whole and its records go.
const MAX_HELD: usize = 4096;
const MAX_HELD_BYTES: usize = 8 << 20;

/// Follows every byte stream of a recording and masks secrets in its data records.
///
/// HTTP/1 is masked record by record. An HTTP/2 header block can span records and is masked
/// once it ends ([`h2`]): [`Redactor::push`] holds records back from the first record of an
/// unfinished block, and [`Redactor::pop`] gives them back in order once masked.
#[derive(Debug)]
pub struct Redactor {
    conns: HashMap<ConnKey, Tracked>,
    cap: usize,
    /// Increases with every record: how recently a connection was used, and each record's
    /// sequence number.
    clock: u64,
    held: VecDeque<Held>,
    held_bytes: usize,
    /// Unfinished HTTP/2 header blocks, by connection and direction: the first record each
    /// needs held.
    open: HashMap<(ConnKey, usize), u64>,
}

/// A record held back.
#[derive(Debug)]
struct Held {
    seq: u64,
    rec: Vec<u8>,
    /// The HTTP/2 stream its payload belongs to.
    stream: Option<H2Part>,
}

/// Where a record's payload lies in an HTTP/2 stream.
#[derive(Debug, Clone, Copy)]
struct H2Part {
    key: ConnKey,
    dir: usize,
    /// Bytes of the payload before the stream (the end of an HTTP/1 head that switched).
    skip: usize,
    /// The stream offset of the payload's byte `skip`.
    at: u64,
}

/// One connection's plain or TLS-plaintext streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    pid: u32,
    fd: i32,
    conn_ts_ns: u64,
    tls: bool,
}

#[derive(Debug)]
struct Tracked {
    conn: Conn,
    last_used: u64,
}

/// Both directions of a connection, and what one tells about the other.
#[derive(Debug)]
struct Conn {
    /// Indexed by direction: [`DIR_INGRESS`] then egress.
    streams: [Stream; 2],
    /// Requests still waiting for their response, oldest first: whether each is a HEAD,
    /// whose response has no body whatever its Content-Length says.
    pending_heads: PendingHeads,
    /// Seen from its first byte.
    fresh: bool,
    /// Its first captured bytes told whether it is HTTP/2.
    sniffed: bool,
    /// Bytes of the client preface each direction passed before that was told.
    preface: [usize; 2],
    /// HTTP/2, by direction (as `streams`): from the first byte (prior knowledge), or from
    /// where an HTTP/1.1 upgrade switched.
    h2: [Option<Box<h2::Direction>>; 2],
}

impl Conn {
    /// A connection seen from its first byte: each stream starts with a message.
    fn fresh() -> Conn {
        Conn {
            streams: [Stream::fresh(), Stream::fresh()],
            pending_heads: PendingHeads::default(),
            fresh: true,
            sniffed: false,
            preface: [0; 2],
            h2: [None, None],
        }
    }

    /// A connection whose earlier bytes were not seen.
    fn joined_late() -> Conn {
        Conn {
            streams: [Stream::after_gap(), Stream::after_gap()],
            pending_heads: PendingHeads::default(),
            fresh: false,
            sniffed: false,
            preface: [0; 2],
            h2: [None, None],
        }
    }
}

/// A FIFO of "is HEAD" bits, bounded: past 64 outstanding requests, later ones count as not
/// HEAD (their responses' bodies are then scanned, not skipped: safe).
#[derive(Debug, Clone, Copy, Default)]
struct PendingHeads {
    bits: u64,
    len: u32,
}

impl PendingHeads {
    fn push(&mut self, is_head: bool) {
        if self.len < u64::BITS {
            self.bits |= u64::from(is_head) << self.len;
            self.len += 1;
        }
    }

    fn pop(&mut self) -> bool {
        if self.len == 0 {
            return false;
        }
        let is_head = self.bits & 1 == 1;
        self.bits >>= 1;
        self.len -= 1;
        is_head
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(DEFAULT_STREAM_CAP)
    }
}

impl Redactor {
    /// Follows at most `cap` connections (at least one).
    pub fn new(cap: usize) -> Redactor {
        Redactor {
            conns: HashMap::new(),
            cap: cap.max(1),
            clock: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            open: HashMap::new(),
        }
    }

    /// Takes the next raw record; [`Redactor::pop`] gives records back, masked, in order.
    pub fn push(&mut self, mut rec: Vec<u8>) {
        let stream = self.redact_one(&mut rec);
        self.held_bytes += rec.len();
        self.held.push_back(Held {
            seq: self.clock,
            rec,
            stream,
        });
        while self.held.len() > MAX_HELD || self.held_bytes > MAX_HELD_BYTES {
            let Some((&key, _)) = self.open.iter().min_by_key(|(_, seq)| **seq) else {
                break;
            };
            self.end_h2(key.0, Some(key.1));
        }
    }

    /// The next record whose masking is final, if any.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let front = self.held.front()?;
        if self.open.values().any(|&first| first <= front.seq) {
            return None;
        }
        let h = self.held.pop_front()?;
        self.held_bytes -= h.rec.len();
        Some(h.rec)
    }

    /// The recording ends: unfinished header blocks are masked as far as they came, and every
    /// record held can go.
    pub fn finish(&mut self) {
        let keys: Vec<(ConnKey, usize)> = self.open.keys().copied().collect();
        for (key, dir) in keys {
            self.end_h2(key, Some(dir));
        }
    }

    /// Masks the secrets of one raw record in place (and of the records held before it).
    /// Connection opens and closes start and end a connection's streams; other records and
    /// records that do not decode are left as they are (the reader refuses them the same way).
    #[cfg(test)]
    pub fn redact(&mut self, rec: &mut [u8]) {
        self.redact_one(rec);
    }

    /// [`Redactor::redact`]; where the record's payload lies in an HTTP/2 stream.
    fn redact_one(&mut self, rec: &mut [u8]) -> Option<H2Part> {
        self.clock += 1;
        let (ev, captured) = match event::decode(rec) {
            Ok(Event::Data(ev, payload)) => (ev, payload.len()),
            Ok(Event::ConnOpen(open)) => {
                let h = open.header;
                for tls in [false, true] {
                    let key = ConnKey {
                        pid: h.pid,
                        fd: h.fd,
                        conn_ts_ns: h.conn_ts_ns,
                        tls,
                    };
                    // A connection seeded at start-up (no socket pointer) may be mid-message.
                    self.forget(key);
                    if open.sock != 0 {
                        self.insert(key, Conn::fresh());
                    }
                }
                return None;
            }
            Ok(Event::ConnClose(h)) => {
                for tls in [false, true] {
                    self.forget(ConnKey {
                        pid: h.pid,
                        fd: h.fd,
                        conn_ts_ns: h.conn_ts_ns,
                        tls,
                    });
                }
                return None;
            }
            _ => return None,
        };
        let key = ConnKey {
            pid: ev.header.pid,
            fd: ev.header.fd,
            conn_ts_ns: ev.header.conn_ts_ns,
            tls: source::is_tls(ev.source),
        };
        let clock = self.clock;
        if !self.conns.contains_key(&key) {
            self.insert(key, Conn::joined_late());
        }
        let tracked = self.conns.get_mut(&key)?;
        tracked.last_used = clock;
        let conn = &mut tracked.conn;
        let dir = usize::from(ev.direction != DIR_INGRESS);
        let start = size_of::<DataEvent>();
        let payload = rec.get_mut(start..start + captured)?;
        let gap = ev.real_len.saturating_sub(captured as u64);
        if !conn.sniffed && !payload.is_empty() {
            match h2::sniff(payload, conn.preface[dir]) {
                h2::Sniffed::Http2 => {
                    conn.sniffed = true;
                    let fresh = conn.fresh;
                    for (d, matched) in conn.preface.into_iter().enumerate() {
                        conn.h2[d] = Some(Box::new(h2::Direction::new(fresh, matched)));
                    }
                }
                // Nothing to mask in it either way; HTTP/1's scanner follows it meanwhile.
                h2::Sniffed::PrefaceSoFar(matched) => conn.preface[dir] = matched,
                h2::Sniffed::Other => conn.sniffed = true,
            }
        }
        let mut skip = 0;
        if conn.h2[dir].is_none() {
            let stream = &mut conn.streams[dir];
            // An HTTP/1.1 upgrade to h2c: the client's preface at a message start (RFC 9113
            // §3.2), the server's frames after its 101.
            let switched =
                if stream.at_message_start() && payload.starts_with(crate::protocol::h2::PREFACE) {
                    Some(0)
                } else {
                    stream.redact(payload, gap, &mut conn.pending_heads)
                };
            let at = switched?;
            let rest = &payload[at..];
            if rest.is_empty() {
                // What follows the switch comes in the next record.
                return None;
            }
            if h2::sniff(rest, 0) != h2::Sniffed::Http2 {
                // Another protocol (WebSocket...): scanned for lines, as bytes not HTTP.
                stream.not_http();
                stream.redact(&mut payload[at..], gap, &mut conn.pending_heads);
                return None;
            }
            conn.h2[dir] = Some(Box::new(h2::Direction::new(true, 0)));
            skip = at;
        }
        let d = conn.h2[dir].as_mut()?;
        let at = d.offset();
        let payload = &mut payload[skip..];
        let mut patches = Vec::new();
        d.feed(payload, gap, clock, &mut patches);
        let open = d.open_since();
        for p in &patches {
            p.apply(at, payload);
        }
        apply_held(&mut self.held, (key, dir), &patches);
        match open {
            Some(first) => {
                self.open.insert((key, dir), first);
            }
            None => {
                self.open.remove(&(key, dir));
            }
        }
        Some(H2Part { key, dir, skip, at })
    }

    /// Ends the HTTP/2 header blocks of a connection (of one direction when `dir` says):
    /// what they gathered is masked, and their records are no longer held.
    fn end_h2(&mut self, key: ConnKey, dir: Option<usize>) {
        for i in 0..2 {
            if dir.is_some_and(|x| x != i) {
                continue;
            }
            self.open.remove(&(key, i));
            let Some(d) = self.conns.get_mut(&key).and_then(|t| t.conn.h2[i].as_mut()) else {
                continue;
            };
            let mut patches = Vec::new();
            d.end(&mut patches);
            apply_held(&mut self.held, (key, i), &patches);
        }
    }

    /// Stops following a connection.
    fn forget(&mut self, key: ConnKey) {
        self.end_h2(key, None);
        self.conns.remove(&key);
    }

    fn insert(&mut self, key: ConnKey, conn: Conn) {
        if self.conns.len() >= self.cap && !self.conns.contains_key(&key) {
            self.forget_least_recent();
        }
        self.conns.insert(
            key,
            Tracked {
                conn,
                last_used: self.clock,
            },
        );
    }

    /// Forgets the least recently used tenth of the connections (at least one).
    fn forget_least_recent(&mut self) {
        let mut ages: Vec<u64> = self.conns.values().map(|t| t.last_used).collect();
        let n = (ages.len() / 10).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        let (_, &mut cutoff, _) = ages.select_nth_unstable(n - 1);
        let mut gone: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, t)| t.last_used <= cutoff)
            .map(|(k, _)| *k)
            .take(n)
            .collect();
        gone.sort_unstable_by_key(|k| (k.conn_ts_ns, k.pid, k.fd, k.tls));
        for key in gone {
            self.forget(key);
        }
    }
}

/// Applies `patches` of the HTTP/2 stream `(key, dir)` to the records held.
fn apply_held(held: &mut VecDeque<Held>, stream: (ConnKey, usize), patches: &[h2::Patch]) {
    if patches.is_empty() {
        return;
    }
    let start = size_of::<DataEvent>();
    for h in held.iter_mut() {
        let Some(part) = h.stream else {
            continue;
        };
        if (part.key, part.dir) != stream {
            continue;
        }
        if let Some(payload) = h.rec.get_mut(start + part.skip..) {
            for p in patches {
                p.apply(part.at, payload);
            }
        }
    }
}

/// Where one byte stream is: its message framing, and its position in the current line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stream {
    framing: Framing,
    line: Line,
}

/// The message framing of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// In a message head (or before one), scanned line by line.
    Head(Head),
    /// In a body of known length: `remaining` bytes pass through untouched.
    Body { remaining: u64 },
    /// In a chunked body.
    Chunked(Chunk),
    /// Bytes whose end the stream does not tell (a close-delimited body, or not HTTP):
    /// scanned line by line like a head, so a message head in them is still redacted.
    Unframed,
    /// After a `101 Switching Protocols` head: another protocol from here on (the redactor
    /// follows HTTP/2 as such, anything else as [`Framing::Unframed`]).
    Switched,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line (hex size, then extensions up to the line end).
    Size { size: u64, digits: u8, ext: bool },
    /// In chunk data.
    Data { remaining: u64 },
    /// In the CRLF after chunk data.
    DataEnd,
}

/// What a stream has learnt about the message head it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Head {
    message: Message,
    content_length: ContentLength,
    chunked: bool,
    /// A Transfer-Encoding other than chunked: the body's end is not counted.
    other_coding: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Message {
    /// No start line seen yet: the next line starts a message.
    #[default]
    NotStarted,
    Request,
    Response {
        status: u16,
        /// The response to a HEAD request: no body.
        to_head: bool,
    },
    /// The trailer section of a chunked body: header lines, then the message ends.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ContentLength {
    #[default]
    Absent,
    Known(u64),
    /// Not a number, or two that differ: the body's end is not counted.
    Invalid,
}

/// The position in the current line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// At a line start; `fold_masked`: the previous line was a masked header, which an
    /// obsolete line folding (a line starting with whitespace) continues.
    Start { fold_masked: bool },
    /// In a line's first token: a header name, a method or an HTTP version.
    Token(Token),
    /// In a request target, before any query.
    Target,
    /// In a query string: masked up to the space before the version or the line end.
    Query,
    /// In a status line's code.
    Status { code: u16, digits: u8 },
    /// In a header value.
    Value(Value),
    /// The rest of the line, passed through.
    Rest,
    /// The rest of the line, masked: it may be the tail of a secret.
    MaskedRest,
    /// Right after a gap, at a record start: a record that starts a message passes, anything
    /// else masks the rest of the line.
    AfterGap,
}

/// The kind of header value being scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Plain,
    Masked,
    ContentLength {
        value: u64,
        digits: u32,
        valid: bool,
    },
    /// Keeps the last bytes of the value, to tell whether chunked is the last coding.
    TransferEncoding {
        tail: [u8; 7],
    },
}

/// The first token of a line as far as it matters; whitespace in it is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    bytes: [u8; TOKEN_CAP],
    len: u8,
    /// More than `TOKEN_CAP` bytes: none of the names this module looks for.
    overflow: bool,
    /// Whitespace came after the first bytes: no longer a start line's first token.
    spaced: bool,
}

impl Token {
    fn new() -> Token {
        Token {
            bytes: [0; TOKEN_CAP],
            len: 0,
            overflow: false,
            spaced: false,
        }
    }

    fn push(&mut self, b: u8) {
        match self.bytes.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn is(&self, name: &[u8]) -> bool {
        !self.overflow && self.as_bytes().eq_ignore_ascii_case(name)
    }

    fn is_sensitive(&self) -> bool {
        SENSITIVE_HEADERS.iter().any(|n| self.is(n))
    }

    fn is_version(&self) -> bool {
        !self.overflow && self.as_bytes().starts_with(b"HTTP/")
    }

    fn is_method(&self) -> bool {
        !self.overflow && METHODS.contains(&self.as_bytes())
    }
}

impl Stream {
    /// A stream seen from its first byte.
    fn fresh() -> Stream {
        Stream {
            framing: Framing::Head(Head::default()),
            line: Line::Start { fold_masked: false },
        }
    }

    /// A stream whose previous bytes were not seen.
    fn after_gap() -> Stream {
        Stream {
            framing: Framing::Unframed,
            line: Line::AfterGap,
        }
    }

    /// Masks the secrets in `payload`, the next captured bytes of the stream, followed by
    /// `gap` bytes that were not captured. Where the stream stopped being HTTP/1 (a 101 head
    /// ended) when it did: the bytes from there on are left for the caller.
    fn redact(
        &mut self,
        payload: &mut [u8],
        gap: u64,
        pending_heads: &mut PendingHeads,
    ) -> Option<usize> {
        if self.framing == Framing::Switched {
            return Some(0);
        }
        if matches!(
            self.framing,
            Framing::Body { .. } | Framing::Chunked(Chunk::Data { .. })
        ) && starts_message(payload)
        {
            // A body that the framing expected, and a write that starts a new message
            // instead: the framing was wrong (a response to a HEAD request this recording did
            // not see, say). The message wins.
            *self = Stream::fresh();
        }
        if self.line == Line::AfterGap && !payload.is_empty() {
            // Only a whole start token proves the record starts a message: bytes that merely
            // begin like one ("SE") may be the tail of a secret.
            *self = if starts_message(payload) {
                Stream::fresh()
            } else {
                Stream {
                    line: Line::MaskedRest,
                    ..self.clone()
                }
            };
        }
        let mut i = 0;
        while i < payload.len() {
            i += match self.framing {
                Framing::Body { remaining } => {
                    let n = remaining.min((payload.len() - i) as u64);
                    self.skip_body(n);
                    n as usize
                }
                Framing::Chunked(Chunk::Data { remaining }) => {
                    let n = remaining.min((payload.len() - i) as u64);
                    self.skip_body(n);
                    n as usize
                }
                Framing::Chunked(chunk) => {
                    self.chunk_framing(chunk, payload[i]);
                    1
                }
                Framing::Head(_) | Framing::Unframed => {
                    self.scan(&mut payload[i], pending_heads);
                    1
                }
                Framing::Switched => return Some(i),
            };
        }
        if gap > 0 {
            self.skip_gap(gap);
        }
        None
    }

    /// At the start of a message: nothing of one read yet.
    fn at_message_start(&self) -> bool {
        matches!(
            self.framing,
            Framing::Head(Head {
                message: Message::NotStarted,
                ..
            })
        ) && matches!(self.line, Line::Start { .. })
    }

    /// What follows is not HTTP: scanned line by line, as bytes without framing.
    fn not_http(&mut self) {
        self.framing = Framing::Unframed;
        self.line = Line::Start { fold_masked: false };
    }

    /// Passes `n` body bytes (no more than the body has left).
    fn skip_body(&mut self, n: u64) {
        match &mut self.framing {
            Framing::Body { remaining } => {
                *remaining -= n;
                if *remaining == 0 {
                    *self = Stream::fresh();
                }
            }
            Framing::Chunked(Chunk::Data { remaining }) => {
                *remaining -= n;
                if *remaining == 0 {
                    self.framing = Framing::Chunked(Chunk::DataEnd);
                }
            }
            _ => {}
        }
    }

    /// Follows `gap` bytes that were not captured.
    fn skip_gap(&mut self, gap: u64) {
        match self.framing {
            Framing::Body { remaining } | Framing::Chunked(Chunk::Data { remaining })
                if remaining >= gap =>
            {
                self.skip_body(gap)
            }
            Framing::Head(_) => self.line = Line::AfterGap,
            _ => *self = Stream::after_gap(),
        }
    }

    /// One byte of a chunk-size line or of the CRLF after chunk data.
    fn chunk_framing(&mut self, chunk: Chunk, b: u8) {
        self.framing = match (chunk, b) {
            (Chunk::Size { .. }, b'\n') | (Chunk::DataEnd, b'\n') => match chunk {
                Chunk::Size { size: 0, .. } => {
                    self.line = Line::Start { fold_masked: false };
                    Framing::Head(Head {
                        message: Message::Trailers,
                        ..Head::default()
                    })
                }
                Chunk::Size { size, .. } => Framing::Chunked(Chunk::Data { remaining: size }),
                _ => Framing::Chunked(Chunk::Size {
                    size: 0,
                    digits: 0,
                    ext: false,
                }),
            },
            (_, b'\r') => Framing::Chunked(chunk),
            (Chunk::Size { ext: true, .. }, _) => Framing::Chunked(chunk),
            (Chunk::Size { size, digits, .. }, b';' | b' ' | b'\t') if digits > 0 => {
                Framing::Chunked(Chunk::Size {
                    size,
                    digits,
                    ext: true,
                })
            }
            (Chunk::Size { size, digits, .. }, _) => match (b as char).to_digit(16) {
                Some(d) if digits < 16 => Framing::Chunked(Chunk::Size {
                    size: size << 4 | u64::from(d),
                    digits: digits + 1,
                    ext: false,
                }),
                _ => self.lost_framing(b),
            },
            _ => self.lost_framing(b),
        };
    }

    /// The chunk framing broke at byte `b`: the body's end is no longer known.
    fn lost_framing(&mut self, b: u8) -> Framing {
        self.line = if b == b'\n' {
            Line::Start { fold_masked: false }
        } else {
            Line::Rest
        };
        Framing::Unframed
    }

    /// One byte of a line scanned for secrets (in a head, or in bytes without framing).
    fn scan(&mut self, b: &mut u8, pending_heads: &mut PendingHeads) {
        if *b == b'\n' {
            self.end_line(pending_heads);
            return;
        }
        match &mut self.line {
            Line::Start { fold_masked } => match *b {
                b'\r' => {}
                b' ' | b'\t' => {
                    self.line = Line::Value(if *fold_masked {
                        Value::Masked
                    } else {
                        Value::Plain
                    })
                }
                first => {
                    let mut token = Token::new();
                    token.push(first);
                    self.line = Line::Token(token);
                }
            },
            Line::Token(token) => match *b {
                b':' => {
                    let name = token.clone();
                    self.line = Line::Value(self.header_value(&name));
                }
                b'\r' => {}
                b' ' | b'\t' => {
                    if !token.spaced && starts_message_here(&self.framing, token) {
                        let token = token.clone();
                        self.start_message(&token, pending_heads);
                    } else {
                        token.spaced = true;
                    }
                }
                other => token.push(other),
            },
            Line::Target => match *b {
                b'?' => self.line = Line::Query,
                b' ' => self.line = Line::Rest,
                _ => {}
            },
            Line::Query => match *b {
                b' ' | b'\r' => self.line = Line::Rest,
                _ => *b = MASK,
            },
            Line::Status { code, digits } => match *b {
                d @ b'0'..=b'9' if *digits < 3 => {
                    *code = *code * 10 + u16::from(d - b'0');
                    *digits += 1;
                }
                _ => {
                    let code = *code;
                    self.status_known(code, pending_heads);
                    self.line = Line::Rest;
                }
            },
            Line::Value(value) => match value {
                Value::Plain => {}
                Value::Masked => {
                    if *b != b'\r' {
                        *b = MASK;
                    }
                }
                Value::ContentLength {
                    value,
                    digits,
                    valid,
                } => match *b {
                    d @ b'0'..=b'9' => {
                        *value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
                        *digits += 1;
                    }
                    b' ' | b'\t' | b'\r' => {}
                    _ => *valid = false,
                },
                Value::TransferEncoding { tail } => {
                    if !matches!(*b, b' ' | b'\t' | b'\r') {
                        tail.rotate_left(1);
                        tail[6] = b.to_ascii_lowercase();
                    }
                }
            },
            Line::Rest => {}
            Line::MaskedRest | Line::AfterGap => {
                if *b != b'\r' {
                    *b = MASK;
                }
            }
        }
    }

    /// A start line begins with `token` (a method or an HTTP version) and whitespace.
    fn start_message(&mut self, token: &Token, pending_heads: &mut PendingHeads) {
        let message = if token.is_version() {
            self.line = Line::Status { code: 0, digits: 0 };
            Message::Response {
                status: 0,
                to_head: false,
            }
        } else {
            pending_heads.push(token.is(b"HEAD"));
            self.line = Line::Target;
            Message::Request
        };
        self.framing = Framing::Head(Head {
            message,
            ..Head::default()
        });
    }

    /// A response's status code is known (0 when it did not parse).
    fn status_known(&mut self, code: u16, pending_heads: &mut PendingHeads) {
        if let Framing::Head(head) = &mut self.framing {
            if let Message::Response { status, to_head } = &mut head.message {
                *status = code;
                // Interim responses (1xx) answer no request yet.
                if !(100..200).contains(&code) {
                    *to_head = pending_heads.pop();
                }
            }
        }
    }

    /// A header name ended with ':': how to scan its value.
    fn header_value(&self, name: &Token) -> Value {
        if name.is_sensitive() {
            return Value::Masked;
        }
        let in_head = matches!(
            self.framing,
            Framing::Head(Head {
                message: Message::Request | Message::Response { .. },
                ..
            })
        );
        if in_head && name.is(b"content-length") {
            Value::ContentLength {
                value: 0,
                digits: 0,
                valid: true,
            }
        } else if in_head && name.is(b"transfer-encoding") {
            Value::TransferEncoding { tail: [0; 7] }
        } else {
            Value::Plain
        }
    }

    /// A line ended (at its '\n').
    fn end_line(&mut self, pending_heads: &mut PendingHeads) {
        let line = std::mem::replace(&mut self.line, Line::Start { fold_masked: false });
        match line {
            Line::Start { .. } => self.blank_line(),
            Line::Status { code, .. } => self.status_known(code, pending_heads),
            Line::Value(Value::Masked) => self.line = Line::Start { fold_masked: true },
            Line::Value(Value::ContentLength {
                value,
                digits,
                valid,
            }) => {
                if let Framing::Head(head) = &mut self.framing {
                    head.content_length = match head.content_length {
                        _ if !valid || digits == 0 => ContentLength::Invalid,
                        ContentLength::Absent => ContentLength::Known(value),
                        ContentLength::Known(v) if v == value => ContentLength::Known(v),
                        _ => ContentLength::Invalid,
                    };
                }
            }
            Line::Value(Value::TransferEncoding { tail }) => {
                if let Framing::Head(head) = &mut self.framing {
                    if &tail == b"chunked" {
                        head.chunked = true;
                    } else {
                        head.other_coding = true;
                    }
                }
            }
            _ => {}
        }
    }

    /// An empty line: in a head, the head ends and the framing says what follows.
    fn blank_line(&mut self) {
        let Framing::Head(head) = self.framing else {
            return;
        };
        self.framing = match head.message {
            // Empty lines before a message are ignored (RFC 9112, 2.2).
            Message::NotStarted => return,
            Message::Trailers => Framing::Head(Head::default()),
            Message::Response { status, to_head } => match status {
                // 101 Switching Protocols: what follows is not HTTP/1.
                101 => Framing::Switched,
                100..=199 | 204 | 304 => Framing::Head(Head::default()),
                _ if to_head => Framing::Head(Head::default()),
                // Without a length, a response's body ends with the connection.
                _ => head.body_framing().unwrap_or(Framing::Unframed),
            },
            // Without a length, a request has no body.
            Message::Request => head
                .body_framing()
                .unwrap_or(Framing::Head(Head::default())),
        };
    }
}

impl Head {
    /// The body's framing as the head's headers give it; None when they give none.
    fn body_framing(&self) -> Option<Framing> {
        if self.chunked && !self.other_coding {
            return Some(Framing::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }));
        }
        if self.chunked || self.other_coding {
            return Some(Framing::Unframed);
        }
        match self.content_length {
            ContentLength::Absent => None,
            ContentLength::Known(0) => Some(Framing::Head(Head::default())),
            ContentLength::Known(remaining) => Some(Framing::Body { remaining }),
            ContentLength::Invalid => Some(Framing::Unframed),
        }
    }
}

/// Whether a token followed by whitespace is a start line's first token here.
fn starts_message_here(framing: &Framing, token: &Token) -> bool {
    if token.is_version() || token.is_method() {
        return true;
    }
    // At a known message start, any token starts a request line (an extension method),
    // except a secret header's name written with whitespace before its colon.
    matches!(
        framing,
        Framing::Head(Head {
            message: Message::NotStarted,
            ..
        })
    ) && !token.overflow
        && !token.is_sensitive()
}

/// Whether a write starts with a whole start line's first token (a method or an HTTP
/// version, then a space).
fn starts_message(payload: &[u8]) -> bool {
    let Some(space) = payload.iter().take(TOKEN_CAP + 1).position(|&b| b == b' ') else {
        return false;
    };
    let token = &payload[..space];
    token.starts_with(b"HTTP/1.") || METHODS.contains(&token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::pod_bytes;
    use crate::test_util::events::{run_records, Stream as Records, C, TP};
    use crate::test_util::Rng;
    use traceid_common::{kind, EventHeader, DIR_EGRESS, ROLE_CLIENT, ROLE_SERVER};

    const SECRETS: &[&str] = &[
        "SECRETTOKEN",
        "SECRETCOOKIE456",
        "SECRETQUERY789",
        "SETSECRET",
    ];

    /// A client's request (egress) and the response it reads (ingress): every secret kind,
    /// a body that must pass untouched, a trace header that must survive.
    const REQUEST: &[u8] = b"POST /login?password=SECRETQUERY789&u=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRETTOKEN\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nCookie: a=SECRETCOOKIE456; b=SECRETCOOKIE456\r\nContent-Length: 19\r\n\r\nCookie: body stays.";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=SETSECRET\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

    fn header(pid: u32, fd: i32, kind: u16) -> EventHeader {
        EventHeader {
            kind,
            _pad0: 0,
            pid,
            tid: pid,
            fd,
            ts_ns: 1,
            conn_ts_ns: 7,
            comm: [0; 16],
        }
    }

    /// A data record of connection (pid, fd) carrying `captured` of `real_len` bytes moved.
    fn data(pid: u32, egress: bool, captured: &[u8], real_len: usize) -> Vec<u8> {
        let ev = DataEvent {
            header: header(pid, 3, kind::DATA),
            direction: if egress { DIR_EGRESS } else { DIR_INGRESS },
            source: if egress { source::WRITE } else { source::READ },
            role: ROLE_CLIENT,
            _pad0: 0,
            captured: captured.len() as u32,
            real_len: real_len as u64,
        };
        let mut rec = pod_bytes(&ev);
        rec.extend_from_slice(captured);
        rec
    }

    fn open(pid: u32) -> Vec<u8> {
        pod_bytes(&traceid_common::ConnEvent {
            header: header(pid, 3, kind::CONN_OPEN),
            role: ROLE_CLIENT,
            flags: 0,
            family: 2,
            local_port: 40000,
            remote_port: 80,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            sock: 0xffff_1234,
        })
    }

    /// Runs `pieces` of one direction's stream through a redactor as whole records (after
    /// the connection's open) and gives back the bytes as they would reach the disk.
    fn redacted(r: &mut Redactor, pid: u32, egress: bool, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            let mut rec = data(pid, egress, p, p.len());
            r.redact(&mut rec);
            out.extend_from_slice(&rec[size_of::<DataEvent>()..]);
        }
        out
    }

    fn leaked(bytes: &[u8]) -> Vec<&'static str> {
        let s = String::from_utf8_lossy(bytes);
        SECRETS.iter().copied().filter(|x| s.contains(x)).collect()
    }

    /// The stream redacted in one write: what every split must give.
    fn whole(stream: &[u8], egress: bool) -> Vec<u8> {
        let mut r = Redactor::default();
        let mut o = open(1);
        r.redact(&mut o);
        redacted(&mut r, 1, egress, &[stream])
    }

    #[test]
    fn one_write_masks_values_and_query_and_keeps_the_rest() {
        let out = whole(REQUEST, true);
        assert_eq!(out.len(), REQUEST.len());
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("POST /login?*************************** HTTP/1.1\r\nHost: x\r\nAuthorization:*******************\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nCookie:"),
            "{s}"
        );
        assert!(
            s.ends_with("Content-Length: 19\r\n\r\nCookie: body stays."),
            "body untouched: {s}"
        );
        assert_eq!(leaked(s.as_bytes()), Vec::<&str>::new());

        let out = whole(RESPONSE, false);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("HTTP/1.1 200 OK\r\nSet-Cookie:************\r\n"),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{s}");
    }

    #[test]
    fn a_split_at_every_offset_leaks_nothing_and_masks_the_same() {
        for (stream, egress) in [(REQUEST, true), (RESPONSE, false)] {
            let want = whole(stream, egress);
            for i in 0..=stream.len() {
                for j in i..=stream.len() {
                    let mut r = Redactor::default();
                    let mut o = open(1);
                    r.redact(&mut o);
                    let got = redacted(
                        &mut r,
                        1,
                        egress,
                        &[&stream[..i], &stream[i..j], &stream[j..]],
                    );
                    assert_eq!(leaked(&got), Vec::<&str>::new(), "split at {i}, {j}");
                    assert_eq!(got, want, "split at {i}, {j}");
                }
            }
        }
    }

    #[test]
    fn a_stream_joined_late_masks_every_split_too() {
        // No open seen (seeded connection, or forgotten past the cap): the first record
        // starts a message, whatever its split.
        for i in 0..=REQUEST.len() {
            let mut r = Redactor::default();
            let got = redacted(&mut r, 1, true, &[&REQUEST[..i], &REQUEST[i..]]);
            assert_eq!(leaked(&got), Vec::<&str>::new(), "split at {i}");
        }
    }

    #[test]
    fn a_secret_cut_by_the_capture_window_is_masked_after_the_gap() {
        let head =
            b"GET /a HTTP/1.1\r\nCookie: a=SECRETCOOKIE456SECRETCOOKIE456\r\nHost: x\r\n\r\n";
        // The cookie value spans bytes 25..57.
        let cookie = 25;
        for cut in 17..head.len() {
            for gap in [1, 5, 20] {
                let rest = (cut + gap).min(head.len());
                let mut r = Redactor::default();
                let mut o = open(1);
                r.redact(&mut o);
                // The write of `rest` bytes captured up to `cut`; the next write goes on.
                let mut first = data(1, true, &head[..cut], rest);
                r.redact(&mut first);
                let mut second = data(1, true, &head[rest..], head.len() - rest);
                r.redact(&mut second);
                let disk = [
                    &first[size_of::<DataEvent>()..],
                    &second[size_of::<DataEvent>()..],
                ]
                .concat();
                assert_eq!(leaked(&disk), Vec::<&str>::new(), "cut {cut}, gap {gap}");
                // Nothing of the secret's tail: masked up to its line end.
                if (cookie..cookie + 32).contains(&rest) {
                    let tail = &second[size_of::<DataEvent>()..];
                    let line_end = tail.iter().position(|&b| b == b'\r').unwrap();
                    assert!(
                        tail[..line_end].iter().all(|&b| b == MASK),
                        "cut {cut}, gap {gap}: {}",
                        String::from_utf8_lossy(tail)
                    );
                }
            }
        }
    }

    #[test]
    fn a_gap_inside_a_counted_body_keeps_the_framing() {
        let mut r = Redactor::default();
        let mut o = open(1);
        r.redact(&mut o);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let mut rec = data(
            1,
            false,
            &[head.as_slice(), b"0123456789"].concat(),
            head.len() + 90,
        );
        r.redact(&mut rec);
        // The body's last 10 bytes, then the next response, in one write.
        let next = b"Cookie: in body!!!\r\nHTTP/1.1 200 OK\r\nSet-Cookie: SETSECRET\r\n\r\n";
        let got = redacted(&mut r, 1, false, &[&next[..]]);
        let s = String::from_utf8(got).unwrap();
        assert!(s.starts_with("Cookie: in"), "the body passes: {s}");
        assert_eq!(leaked(s.as_bytes()), Vec::<&str>::new(), "{s}");
    }

    #[test]
    fn a_message_right_after_a_body_is_found_mid_line() {
        // Pipelined: a body without a line end, then the next request in the same write.
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b?password=SECRETQUERY789 HTTP/1.1\r\nCookie: SECRETCOOKIE456\r\n\r\n";
        let got = whole(stream, true);
        assert_eq!(
            leaked(&got),
            Vec::<&str>::new(),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(String::from_utf8_lossy(&got).contains("\r\n\r\nhelloGET /b?"));
        // A chunked request body, then the next request.
        let stream = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nCookie: SECRETCOOKIE456\r\n\r\nGET /b?SECRETQUERY789 HTTP/1.1\r\n\r\n";
        let got = whole(stream, true);
        assert_eq!(
            leaked(&got),
            Vec::<&str>::new(),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(String::from_utf8_lossy(&got).contains("\r\n\r\n3;x=1\r\nabc\r\n0\r\n"));
    }

    #[test]
    fn responses_without_a_body_do_not_hide_the_next_head() {
        let mut r = Redactor::default();
        let mut o = open(1);
        r.redact(&mut o);
        redacted(
            &mut r,
            1,
            true,
            &[b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        );
        for (first, second) in [
            // The response to HEAD has a length but no body.
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"[..], &b"HTTP/1.1 200 OK\r\nSet-Cook"[..]),
            (&b"ie: SETSECRET\r\nContent-Length: 0\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"[..], &b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 401 No\r\nSet-Cookie: SETSE"[..]),
        ] {
            let got = redacted(&mut r, 1, false, &[first, second]);
            assert_eq!(leaked(&got), Vec::<&str>::new(), "{}", String::from_utf8_lossy(&got));
        }
        let got = redacted(&mut r, 1, false, &[b"CRET\r\n\r\n"]);
        assert_eq!(got, b"****\r\n\r\n");
    }

    #[test]
    fn folded_and_odd_header_lines_are_masked() {
        let stream = b"GET / HTTP/1.1\r\nCookie: a=1;\r\n  SECRETCOOKIE456\r\nauthorization :SECRETTOKEN\r\nPROXY-AUTHORIZATION:\tSECRETTOKEN\r\n\r\n";
        let got = whole(stream, true);
        assert_eq!(
            leaked(&got),
            Vec::<&str>::new(),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let stream = b"PURGE /x?SECRETQUERY789 HTTP/1.1\r\n\r\n";
        let got = whole(stream, true);
        assert_eq!(got, b"PURGE /x?************** HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn the_engine_reads_a_redacted_stream_as_it_read_the_original() {
        let (client, server) = (
            C {
                pid: 10,
                fd: 4,
                ts: 9,
                comm: "curl",
                role: ROLE_CLIENT,
            },
            C {
                pid: 20,
                fd: 5,
                ts: 8,
                comm: "nginx",
                role: ROLE_SERVER,
            },
        );
        let mut s = Records::default();
        s.open(client, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 80);
        s.open(server, [127, 0, 0, 1], 80, [127, 0, 0, 1], 40000);
        for i in 0..5 {
            let req = format!("GET /r{i}?token=SECRETQUERY789 HTTP/1.1\r\nHost: x\r\ncookie: SECRETCOOKIE456\r\ntraceparent: {TP}\r\n\r\n");
            let (a, b) = req.as_bytes().split_at(20 + i);
            s.data(client, 10, true, a);
            s.data(client, 10, true, b);
            s.data(server, 20, false, req.as_bytes());
            let resp = b"HTTP/1.1 200 OK\r\nSet-Cookie: SETSECRET\r\nContent-Length: 2\r\n\r\nok";
            s.data(server, 20, true, resp);
            s.data(client, 10, false, resp);
        }
        let mut r = Redactor::default();
        let disk: Vec<Vec<u8>> = s
            .records
            .iter()
            .map(|rec| {
                let mut rec = rec.clone();
                r.redact(&mut rec);
                rec
            })
            .collect();
        assert_eq!(leaked(&disk.concat()), Vec::<&str>::new());
        let (live, replayed) = (run_records(&s.records), run_records(&disk));
        assert_eq!(live.len(), 10);
        assert_eq!(live, replayed);
    }

    #[test]
    fn memory_is_bounded_and_a_forgotten_stream_still_leaks_nothing() {
        let mut r = Redactor::new(4);
        for pid in 0..20 {
            let mut o = open(pid);
            r.redact(&mut o);
            redacted(
                &mut r,
                pid,
                true,
                &[b"GET / HTTP/1.1\r\nCookie: SECRETCOOK"],
            );
            assert!(r.conns.len() <= 4);
        }
        // pid 0 was forgotten in the middle of its cookie: the rest of the line is masked.
        let got = redacted(&mut r, 0, true, &[b"IE456\r\nHost: x\r\n\r\n"]);
        assert_eq!(got, b"*****\r\nHost: x\r\n\r\n");
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_keep_lengths() {
        let mut rng = Rng::new(13);
        let mut r = Redactor::new(8);
        let alphabet = b"GET HTTP/1.1 200\r\n:?;0123456789abcdefCookie Content-Length Transfer-Encoding chunked";
        for _ in 0..20_000 {
            let len = rng.index(64);
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.pct(80) {
                        alphabet[rng.index(alphabet.len())]
                    } else {
                        rng.next_u64() as u8
                    }
                })
                .collect();
            let real = len + if rng.pct(10) { rng.index(100) } else { 0 };
            let mut rec = data(rng.below(3) as u32, rng.pct(50), &payload, real);
            let before = rec.len();
            r.redact(&mut rec);
            assert_eq!(rec.len(), before);
            if rng.pct(2) {
                let mut o = open(rng.below(3) as u32);
                r.redact(&mut o);
            }
        }
    }
}
