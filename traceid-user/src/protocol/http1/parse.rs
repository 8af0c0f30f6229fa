//! Low-level helpers: cheap "is this HTTP?" signatures, end-of-head detection,
//! head parsing on top of `httparse`, and the incremental chunked-body skipper.
//!
//! Nothing here allocates in proportion to the input except the few header
//! values the caller asked to keep (each capped).

use std::mem::MaybeUninit;
use std::sync::Arc;

use super::{MAX_HEADER_VALUE_BYTES, MAX_PATH_BYTES};

/// Longest method token accepted by the cheap request signature.
pub(super) const MAX_METHOD_LEN: usize = 16;
/// Headers parsed on the stack first; a head with more is retried once with this many on the heap.
pub(super) const STACK_HEADERS: usize = 128;
const HEAP_HEADERS: usize = 1024;
/// Longest chunk-size line (size + extensions) accepted.
const MAX_CHUNK_LINE: u32 = 4096;
/// Largest body (Content-Length) or chunk believed: 1 PiB. Beyond it the framing is absurd
/// (`ffffffffffffffff`): skipping it would leave the direction blind for good, so it is a
/// parse error and the direction resyncs at the next message head.
pub(super) const MAX_BODY_LEN: u64 = 1 << 50;
/// Longest trailer section accepted.
const MAX_TRAILER_BYTES: u32 = 65536;

/// Outcome of a cheap signature check on the first bytes of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sig {
    Yes,
    No,
    /// Not enough bytes yet to decide (always fewer than 17 bytes seen).
    Maybe,
}

/// Does `b` start like a request line: `TOKEN SP` with TOKEN 1..=16 chars of
/// uppercase letters (plus `-`/`_` after the first)? The HTTP/2 connection
/// preface (`PRI * HTTP/2.0`) is rejected.
pub(super) fn request_sig(b: &[u8]) -> Sig {
    for (i, &c) in b.iter().enumerate() {
        if c == b' ' {
            if i == 0 || b.get(..i) == Some(&b"PRI"[..]) {
                return Sig::No;
            }
            return Sig::Yes;
        }
        let ok = c.is_ascii_uppercase() || (i > 0 && (c == b'-' || c == b'_'));
        if !ok || i >= MAX_METHOD_LEN {
            return Sig::No;
        }
    }
    Sig::Maybe
}

/// Does `b` start with `HTTP/1.`?
pub(super) fn response_sig(b: &[u8]) -> Sig {
    const P: &[u8] = b"HTTP/1.";
    let n = b.len().min(P.len());
    if b.get(..n) != P.get(..n) {
        Sig::No
    } else if n == P.len() {
        Sig::Yes
    } else {
        Sig::Maybe
    }
}

/// Index just past the end of the head (the `\n` of the empty line) in `hay`,
/// given the two bytes of the head that precede `hay` (`prev = [b[-2], b[-1]]`,
/// 0 when absent). Accepts CRLF and bare LF line endings.
pub(super) fn find_head_end(prev: [u8; 2], hay: &[u8]) -> Option<usize> {
    // The byte `back` places before `hay[i]`, reaching into `prev` before the start.
    let before = |i: usize, back: usize| match i.checked_sub(back) {
        Some(j) => hay.get(j).copied().unwrap_or(0),
        None => prev.get(2 + i - back).copied().unwrap_or(0),
    };
    memchr::memchr_iter(b'\n', hay)
        .find(|&i| {
            let p1 = before(i, 1);
            p1 == b'\n' || (p1 == b'\r' && before(i, 2) == b'\n')
        })
        .map(|i| i + 1)
}

/// Last two bytes of `buf` (0 when absent).
pub(super) fn tail2(buf: &[u8]) -> [u8; 2] {
    match buf {
        [.., a, b] => [*a, *b],
        [b] => [0, *b],
        [] => [0, 0],
    }
}

/// Body length as announced by `Content-Length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContentLength {
    Absent,
    Len(u64),
    Invalid,
}

/// What `Transfer-Encoding` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransferEncoding {
    Absent,
    /// `chunked` is the final coding.
    Chunked,
    /// Present but `chunked` is not the final coding.
    Other,
}

/// Everything the reassembler needs from one parsed head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParsedHead {
    /// Request: method. Response: empty. Shared as is by the request's head and records.
    pub method: Arc<str>,
    /// Request: path without query (capped). Response: empty.
    pub path: Arc<str>,
    pub version: u8,
    /// Response: status code. Request: 0.
    pub status: u16,
    /// Only the headers `keep` accepted.
    pub headers: Vec<(String, String)>,
    pub content_length: ContentLength,
    pub transfer_encoding: TransferEncoding,
    /// An `Upgrade` header is present.
    pub upgrade: bool,
    /// An `Upgrade` header names `h2c`: HTTP/2 over cleartext (RFC 7540 §3.2).
    pub upgrade_h2c: bool,
}

fn request_config() -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    c.allow_multiple_spaces_in_request_line_delimiters(true)
        .ignore_invalid_headers_in_requests(true);
    c
}

fn response_config() -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    c.allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_responses(true);
    c
}

/// Why httparse refused a head (its own wording, kept for the anomaly).
pub(super) fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid new line",
        httparse::Error::Status => "invalid response status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// A complete head that httparse still found incomplete (a bare line end it does not accept).
const INCOMPLETE: &str = "incomplete head";

/// Parses a complete request head (`bytes` must include the empty line); the error is
/// httparse's reason.
pub(super) fn parse_request(
    bytes: &[u8],
    keep: &dyn Fn(&str) -> bool,
) -> Result<ParsedHead, &'static str> {
    let cfg = request_config();
    {
        // Uninitialised slots: httparse writes each before it hands it back, and zeroing
        // 128 headers per head cost more than parsing a small head.
        let mut hs = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        match cfg.parse_request_with_uninit_headers(&mut req, bytes, &mut hs) {
            Ok(httparse::Status::Complete(_)) => return Ok(request_head(&req, keep)),
            Err(httparse::Error::TooManyHeaders) => {}
            Ok(httparse::Status::Partial) => return Err(INCOMPLETE),
            Err(e) => return Err(httparse_reason(e)),
        }
    }
    let mut hs = vec![httparse::EMPTY_HEADER; HEAP_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match cfg.parse_request(&mut req, bytes) {
        Ok(httparse::Status::Complete(_)) => Ok(request_head(&req, keep)),
        Ok(httparse::Status::Partial) => Err(INCOMPLETE),
        Err(e) => Err(httparse_reason(e)),
    }
}

/// Parses a complete response head (`bytes` must include the empty line); the error is
/// httparse's reason.
pub(super) fn parse_response(
    bytes: &[u8],
    keep: &dyn Fn(&str) -> bool,
) -> Result<ParsedHead, &'static str> {
    let cfg = response_config();
    {
        // Uninitialised, as in `parse_request`.
        let mut hs = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        match cfg.parse_response_with_uninit_headers(&mut resp, bytes, &mut hs) {
            Ok(httparse::Status::Complete(_)) => return Ok(response_head(&resp, keep)),
            Err(httparse::Error::TooManyHeaders) => {}
            Ok(httparse::Status::Partial) => return Err(INCOMPLETE),
            Err(e) => return Err(httparse_reason(e)),
        }
    }
    let mut hs = vec![httparse::EMPTY_HEADER; HEAP_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    match cfg.parse_response(&mut resp, bytes) {
        Ok(httparse::Status::Complete(_)) => Ok(response_head(&resp, keep)),
        Ok(httparse::Status::Partial) => Err(INCOMPLETE),
        Err(e) => Err(httparse_reason(e)),
    }
}

fn request_head(req: &httparse::Request<'_, '_>, keep: &dyn Fn(&str) -> bool) -> ParsedHead {
    let mut head = ParsedHead::request(
        req.method.unwrap_or(""),
        req.path.unwrap_or(""),
        req.version.unwrap_or(1),
    );
    for h in req.headers.iter() {
        head.add_header(h.name, h.value, keep);
    }
    head
}

fn response_head(resp: &httparse::Response<'_, '_>, keep: &dyn Fn(&str) -> bool) -> ParsedHead {
    let mut head = ParsedHead::response(resp.code.unwrap_or(0), resp.version.unwrap_or(1));
    for h in resp.headers.iter() {
        head.add_header(h.name, h.value, keep);
    }
    head
}

/// The headers the reassembler itself reads (their values are never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    TransferEncoding,
    Upgrade,
}

/// Which framing header `name` is, if any (any case). The length decides before a byte is
/// compared: most names are rejected by it.
fn framing_header(name: &str) -> Option<Framing> {
    let (framing, canonical) = match name.len() {
        14 => (Framing::ContentLength, "content-length"),
        17 => (Framing::TransferEncoding, "transfer-encoding"),
        7 => (Framing::Upgrade, "upgrade"),
        _ => return None,
    };
    name.eq_ignore_ascii_case(canonical).then_some(framing)
}

impl ParsedHead {
    /// A request head with its request line, before its headers.
    pub(super) fn request(method: &str, target: &str, version: u8) -> ParsedHead {
        let path = target.split('?').next().unwrap_or("");
        ParsedHead {
            method: Arc::from(method),
            path: Arc::from(truncate_str(path, MAX_PATH_BYTES)),
            ..ParsedHead::before_headers(version, 0)
        }
    }

    /// A response head with its status line, before its headers.
    pub(super) fn response(status: u16, version: u8) -> ParsedHead {
        ParsedHead::before_headers(version, status)
    }

    /// No request line (method and path empty), no header yet.
    fn before_headers(version: u8, status: u16) -> ParsedHead {
        ParsedHead {
            // The empty `Arc<str>` is a shared static: a response head allocates nothing here.
            method: Arc::default(),
            path: Arc::default(),
            version,
            status,
            headers: Vec::new(),
            content_length: ContentLength::Absent,
            transfer_encoding: TransferEncoding::Absent,
            upgrade: false,
            upgrade_h2c: false,
        }
    }

    /// One header line, in wire order: reads the framing headers (never stored unless kept)
    /// and copies the kept ones.
    pub(super) fn add_header(&mut self, name: &str, value: &[u8], keep: &dyn Fn(&str) -> bool) {
        self.add_header_as(HeaderUse::of(name, keep), name, value);
    }

    /// [`ParsedHead::add_header`] with what the header is to the head already known.
    pub(super) fn add_header_as(&mut self, header: HeaderUse, name: &str, value: &[u8]) {
        match header.framing {
            Some(Framing::ContentLength) => {
                self.content_length = merge_content_length(self.content_length, value);
            }
            Some(Framing::TransferEncoding) => {
                self.transfer_encoding = transfer_encoding(value, self.transfer_encoding);
            }
            Some(Framing::Upgrade) => {
                self.upgrade = true;
                self.upgrade_h2c |= value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"h2c"));
            }
            None => {}
        }
        if header.kept {
            self.headers
                .push((name.to_ascii_lowercase(), header_value(value)));
        }
    }
}

/// What a header is to the head: read for the framing, kept, both, or neither (then its
/// value is never looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeaderUse {
    framing: Option<Framing>,
    kept: bool,
}

impl HeaderUse {
    pub(super) fn of(name: &str, keep: &dyn Fn(&str) -> bool) -> HeaderUse {
        HeaderUse {
            framing: framing_header(name),
            // `keep` compares names in any case: only the few headers kept are lowercased.
            kept: keep(name),
        }
    }

    /// Neither read nor kept.
    pub(super) fn is_ignored(self) -> bool {
        self.framing.is_none() && !self.kept
    }
}

/// Header value: at most `MAX_HEADER_VALUE_BYTES` raw bytes, lossily decoded,
/// trimmed, and again capped at `MAX_HEADER_VALUE_BYTES` bytes of UTF-8.
fn header_value(v: &[u8]) -> String {
    let raw = v.get(..MAX_HEADER_VALUE_BYTES).unwrap_or(v);
    // Valid UTF-8 (the rule: trace headers are ASCII) is checked far faster than it is
    // decoded lossily.
    let s = match std::str::from_utf8(raw) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(raw),
    };
    truncate_str(s.trim(), MAX_HEADER_VALUE_BYTES).to_owned()
}

/// Longest prefix of `s` of at most `max` bytes ending on a char boundary.
pub(super) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Content-Length values: a comma-separated list of identical decimal numbers is
/// accepted (RFC 9110 §8.6); several headers must agree too.
fn merge_content_length(prev: ContentLength, value: &[u8]) -> ContentLength {
    let mut cur = prev;
    for part in value.split(|&b| b == b',') {
        let n = match parse_decimal(trim_ascii(part)) {
            Some(n) if n <= MAX_BODY_LEN => n,
            _ => return ContentLength::Invalid,
        };
        cur = match cur {
            ContentLength::Absent => ContentLength::Len(n),
            ContentLength::Len(m) if m == n => ContentLength::Len(n),
            _ => return ContentLength::Invalid,
        };
    }
    cur
}

fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

fn trim_ascii(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// The last Transfer-Encoding header decides whether the final coding is chunked.
fn transfer_encoding(value: &[u8], prev: TransferEncoding) -> TransferEncoding {
    let last = value
        .split(|&b| b == b',')
        .map(trim_ascii)
        .rfind(|t| !t.is_empty());
    match last {
        Some(t) if t.eq_ignore_ascii_case(b"chunked") => TransferEncoding::Chunked,
        Some(_) => TransferEncoding::Other,
        // An empty header value: keep whatever an earlier header said.
        None if prev == TransferEncoding::Absent => TransferEncoding::Other,
        None => prev,
    }
}

/// Result of feeding bytes to a [`Chunked`] skipper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkStep {
    /// All bytes consumed, body not finished.
    NeedMore,
    /// Body (including trailers) finished after the returned number of bytes.
    Done,
    /// Malformed framing.
    Error,
    /// A chunk larger than [`MAX_BODY_LEN`].
    TooLarge,
}

/// Incremental `Transfer-Encoding: chunked` skipper. Keeps O(1) state; chunk
/// data is skipped in bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Inside a chunk-size line.
    Size {
        value: u64,
        digits: u8,
        in_ext: bool,
        line: u32,
    },
    /// Inside chunk data: this many bytes remain.
    Data(u64),
    /// After chunk data, expecting CR (or a bare LF).
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// In the trailer section (`line` = bytes on the current line, CR excluded).
    Trailer { line: u32, total: u32 },
}

impl Chunked {
    pub(super) const START: Chunked = Chunked::Size {
        value: 0,
        digits: 0,
        in_ext: false,
        line: 0,
    };

    /// Consumes a prefix of `data`. Returns the number of bytes consumed and the
    /// outcome. Always consumes at least one byte of a non-empty input unless
    /// the outcome is `Error`.
    pub(super) fn feed(&mut self, data: &[u8]) -> (usize, ChunkStep) {
        let mut i = 0usize;
        while let Some(rest) = data.get(i..) {
            let Some(&b) = rest.first() else { break };
            match *self {
                Chunked::Data(n) => {
                    let take = n.min(rest.len() as u64);
                    // take <= rest.len(), so it fits in usize.
                    i += take as usize;
                    *self = if n == take {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(n - take)
                    };
                    continue;
                }
                Chunked::DataCr => match b {
                    b'\r' => *self = Chunked::DataLf,
                    b'\n' => *self = Chunked::START,
                    _ => return (i, ChunkStep::Error),
                },
                Chunked::DataLf => match b {
                    b'\n' => *self = Chunked::START,
                    _ => return (i, ChunkStep::Error),
                },
                Chunked::Size {
                    value,
                    digits,
                    in_ext,
                    line,
                } => {
                    let line = line + 1;
                    if line > MAX_CHUNK_LINE {
                        return (i, ChunkStep::Error);
                    }
                    let hex = (b as char).to_digit(16);
                    *self = match (b, hex) {
                        (b'\n', _) => {
                            if digits == 0 {
                                return (i, ChunkStep::Error);
                            }
                            if value == 0 {
                                Chunked::Trailer { line: 0, total: 0 }
                            } else if value > MAX_BODY_LEN {
                                return (i, ChunkStep::TooLarge);
                            } else {
                                Chunked::Data(value)
                            }
                        }
                        (b'\r', _) => Chunked::Size {
                            value,
                            digits,
                            in_ext,
                            line,
                        },
                        (_, _) if in_ext => Chunked::Size {
                            value,
                            digits,
                            in_ext,
                            line,
                        },
                        (_, Some(d)) => {
                            if usize::from(digits) >= 16 {
                                return (i, ChunkStep::Error);
                            }
                            Chunked::Size {
                                value: (value << 4) | u64::from(d),
                                digits: digits + 1,
                                in_ext,
                                line,
                            }
                        }
                        (b';', _) if digits > 0 => Chunked::Size {
                            value,
                            digits,
                            in_ext: true,
                            line,
                        },
                        (b' ' | b'\t', _) => Chunked::Size {
                            value,
                            digits,
                            in_ext: digits > 0,
                            line,
                        },
                        _ => return (i, ChunkStep::Error),
                    };
                }
                Chunked::Trailer { line, total } => {
                    let total = total + 1;
                    if total > MAX_TRAILER_BYTES {
                        return (i, ChunkStep::Error);
                    }
                    match b {
                        b'\n' if line == 0 => return (i + 1, ChunkStep::Done),
                        b'\n' => *self = Chunked::Trailer { line: 0, total },
                        b'\r' => *self = Chunked::Trailer { line, total },
                        _ => {
                            *self = Chunked::Trailer {
                                line: line + 1,
                                total,
                            }
                        }
                    }
                }
            }
            i += 1;
        }
        (i, ChunkStep::NeedMore)
    }

    /// `len` uncaptured bytes follow. Returns false when the position is lost
    /// (the gap covers framing bytes that cannot be inferred).
    ///
    /// A gap that ends exactly after a chunk's data plus its CRLF is assumed to
    /// have contained that CRLF: this is the common shape of a large chunk
    /// written in one syscall and captured only partially.
    pub(super) fn gap(&mut self, len: u64) -> bool {
        let mut len = len;
        if let Chunked::Data(n) = *self {
            if len < n {
                *self = Chunked::Data(n - len);
                return true;
            }
            len -= n;
            *self = Chunked::DataCr;
        }
        match (*self, len) {
            (_, 0) => true,
            (Chunked::DataCr, 2) | (Chunked::DataLf, 1) => {
                *self = Chunked::START;
                true
            }
            _ => false,
        }
    }
}
