//! The protocol seam: what the engine needs from any request/response protocol.
//!
//! In the spirit of Pixie's `protocols/common/interface.h`: per connection and per stream
//! (the plain byte stream, and the TLS plaintext when a TLS library is probed) the protocol is
//! sniffed once from the first bytes seen ([`sniff`]); from then on one [`ProtocolParser`] frames
//! both directions, stitches requests to responses and hands the engine protocol-neutral
//! [`Message`]s: request heads as soon as they are complete (for linking), request/response
//! pairs (for findings) and counted [`Anomaly`]s. The engine never sees a protocol's framing.
//!
//! Adding a protocol: a module beside [`http1`] and [`h2`], a [`Protocol`] variant (it lives
//! in [`crate::record`]: its name is part of the JSON contract), its case in [`sniff`] and in
//! [`Parser`]. Heads keep only the headers the caller's `keep` accepts
//! (trace context), so no other header value is ever stored.

pub mod h2;
pub mod http1;

use std::sync::Arc;

use crate::event::Role;

pub use crate::record::{HeadersKnown, Protocol};

/// What the first bytes of a stream say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniff {
    /// The protocol they start, None when they do not (yet) look like any.
    pub protocol: Option<Protocol>,
    /// The role of the process that moved them, when the bytes tell it: a process that sends
    /// a request (or receives a response) is the client.
    pub role: Role,
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = h2::PREFACE;

/// Recognises a protocol from the first bytes a process sent (`egress`) or received: the
/// HTTP/2 preface, an HTTP/1 request or status line, or else HTTP/2 frames (a connection
/// opened before the agent; see [`h2::sniff_frames`]).
pub fn sniff(egress: bool, payload: &[u8]) -> Sniff {
    let n = payload.len().min(H2_PREFACE.len());
    if n >= 3 && payload.get(..n) == H2_PREFACE.get(..n) {
        // Only clients send the preface.
        let role = if egress { Role::Client } else { Role::Server };
        return Sniff {
            protocol: Some(Protocol::H2),
            role,
        };
    }
    match http1::sniff_message(payload) {
        Some(http1::MessageKind::Request) => Sniff {
            protocol: Some(Protocol::Http1),
            role: if egress { Role::Client } else { Role::Server },
        },
        Some(http1::MessageKind::Response) => Sniff {
            protocol: Some(Protocol::Http1),
            role: if egress { Role::Server } else { Role::Client },
        },
        None => match h2::sniff_frames(egress, payload) {
            Some(role) => Sniff {
                protocol: Some(Protocol::H2),
                role,
            },
            None => Sniff {
                protocol: None,
                role: Role::Unknown,
            },
        },
    }
}

/// One protocol's parser for one stream of one connection (both directions).
///
/// Contract: never panics and stays bounded on any input (bytes are untrusted and may be cut
/// anywhere); `keep(name)` says which headers to store. It is asked about names as they came
/// (HTTP/1 names in any case: lowercasing every name of every head only to drop most of them
/// cost more than the parse), so it must compare without regard to case; stored names are
/// lowercase.
pub trait ProtocolParser {
    /// Feeds one captured chunk of one direction.
    fn on_data(
        &mut self,
        flow: Flow,
        chunk: Chunk<'_>,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    );
    /// The connection closed: every request still unanswered is emitted without a response.
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Message>);
    /// Emits every request still unanswered (eviction, end of a replay); parsing state is kept.
    fn flush(&mut self, out: &mut Vec<Message>);
    /// True once the stream can produce nothing more: the caller may drop the parser.
    fn is_dead(&self) -> bool;
}

/// The parser of a stream, one variant per decoded protocol (static dispatch: this sits on
/// the per-message hot path).
#[derive(Debug)]
pub enum Parser {
    Http1(Box<http1::HttpConn>),
    /// HTTP/2, and gRPC over it.
    H2(Box<h2::H2Conn>),
}

impl Parser {
    /// A parser for `protocol`, or None when it is recognised but not decoded.
    pub fn for_protocol(protocol: Protocol, limits: Limits) -> Option<Parser> {
        match protocol {
            Protocol::Http1 => Some(Parser::Http1(Box::new(http1::HttpConn::new(limits)))),
            Protocol::H2 | Protocol::Grpc => Some(Parser::H2(Box::new(h2::H2Conn::new(limits)))),
        }
    }

    /// The parser that goes on after [`Message::Switched`] to `to`: `request` awaits its
    /// response in the new protocol. None when `to` is not decoded after an upgrade.
    pub fn after_upgrade(
        to: Protocol,
        limits: Limits,
        request: (u64, Arc<RequestHead>),
    ) -> Option<Parser> {
        match to {
            Protocol::H2 | Protocol::Grpc => Some(Parser::H2(Box::new(h2::H2Conn::after_upgrade(
                limits, request,
            )))),
            Protocol::Http1 => None,
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Parser::Http1(_) => Protocol::Http1,
            Parser::H2(_) => Protocol::H2,
        }
    }
}

impl ProtocolParser for Parser {
    fn on_data(
        &mut self,
        flow: Flow,
        chunk: Chunk<'_>,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    ) {
        match self {
            Parser::Http1(p) => p.on_data(flow, chunk, keep, out),
            Parser::H2(p) => p.on_data(flow, chunk, keep, out),
        }
    }

    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Message>) {
        match self {
            Parser::Http1(p) => p.on_close(ts_ns, out),
            Parser::H2(p) => p.on_close(ts_ns, out),
        }
    }

    fn flush(&mut self, out: &mut Vec<Message>) {
        match self {
            Parser::Http1(p) => p.flush(out),
            Parser::H2(p) => p.flush(out),
        }
    }

    fn is_dead(&self) -> bool {
        match self {
            Parser::Http1(p) => p.is_dead(),
            Parser::H2(p) => p.is_dead(),
        }
    }
}

/// Stored header values are capped to this many bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 512;
/// Stored request paths are capped to this many bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// `Limits::max_head_bytes` below this value is raised to it.
pub const MIN_HEAD_BYTES: usize = 64;

/// Which side of the HTTP exchange a chunk flows on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    ClientToServer,
    ServerToClient,
}

/// One captured syscall worth of data for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Captured bytes (a prefix of the real transfer).
    pub data: &'a [u8],
    /// Real length of the transfer; `real_len - data.len()` bytes followed
    /// `data` in the stream but were not captured. A `real_len` smaller than
    /// `data.len()` is treated as `data.len()`.
    pub real_len: u64,
    /// Monotonic timestamp, ns.
    pub ts_ns: u64,
    /// Thread id of the syscall.
    pub tid: u32,
}

impl<'a> Chunk<'a> {
    /// A fully captured chunk (`real_len == data.len()`).
    pub fn full(data: &'a [u8], ts_ns: u64, tid: u32) -> Self {
        Chunk {
            data,
            real_len: data.len() as u64,
            ts_ns,
            tid,
        }
    }
}

/// Resource bounds of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (request/status line + headers + empty line) buffered,
    /// per direction. Values below [`MIN_HEAD_BYTES`] are raised to it.
    pub max_head_bytes: usize,
    /// Pipelined requests awaiting a response (values below 1 are raised to 1).
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 65536,
            max_pending: 64,
        }
    }
}

/// One request head as parsed.
///
/// Only headers for which `keep(name)` returned true are stored (name
/// lowercased, value lossily converted, at most [`MAX_HEADER_VALUE_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Empty when it was not read (HTTP/2: a table entry the agent never saw).
    pub method: Arc<str>,
    /// Request target without the query string (everything from the first
    /// `?` is stripped), capped at [`MAX_PATH_BYTES`]. gRPC: `/package.Service/Method`.
    /// Empty when it was not read, as `method`.
    pub path: Arc<str>,
    /// HTTP/1 minor version: 0 for HTTP/1.0, 1 for HTTP/1.1; 0 for HTTP/2.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    /// Timestamp of the chunk where the head's first byte arrived.
    pub ts_ns: u64,
    /// Thread id of that chunk.
    pub tid: u32,
    /// The head is incomplete: some of its bytes were not captured, or it
    /// exceeded `max_head_bytes`. Only its complete lines were parsed.
    pub truncated: bool,
    /// `Http1`, `H2`, or `Grpc` (HTTP/2 whose request or response says `application/grpc`).
    pub protocol: Protocol,
    /// The HTTP/2 stream; None for HTTP/1.
    pub stream_id: Option<u32>,
    /// How the header fields were known (always exact for HTTP/1).
    pub headers_known: HeadersKnown,
    /// No byte of the head was captured: the request is known from its response alone
    /// (HTTP/2: the server answered a stream the client opened in lost bytes). Its fields are
    /// unknown, `ts_ns` and `tid` are the response's, and no duration is measured.
    pub inferred: bool,
}

/// One response head as parsed (same header rules as [`RequestHead`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// None when it was not read (HTTP/2: a table entry the agent never saw).
    pub status: Option<u16>,
    /// gRPC: `grpc-status` of the trailers (or of a trailers-only response), when read.
    pub grpc_status: Option<u32>,
    pub headers: Vec<(String, String)>,
    /// Timestamp of the chunk where the head's first byte arrived.
    pub ts_ns: u64,
    pub tid: u32,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Emitted as soon as a request head is complete (before its body, before
    /// the response). `seq` numbers requests on this connection from 0.
    RequestStarted { seq: u64, head: Arc<RequestHead> },
    /// A request and its response head, paired FIFO. `response` is None when
    /// the connection closed (or `flush` was called, or the pending queue
    /// overflowed) before a response came.
    Exchange {
        seq: u64,
        request: Arc<RequestHead>,
        response: Option<ResponseHead>,
    },
    /// Something that must be counted.
    Anomaly(Anomaly),
    /// Bytes of the stream the parser could not inspect (not captured, or skipped while the
    /// stream position was unknown): the requests they held are not reported. `requests` is
    /// how many requests they held by the connection's mean request size so far (0 on the
    /// response side, or before any request was seen): an estimate, said as one.
    Uninspected { bytes: u64, requests: u64 },
    /// The stream switched protocol (HTTP/1.1 `101 Switching Protocols` to h2c); always the
    /// last message of its `on_data` call. The caller goes on with
    /// [`Parser::after_upgrade`]`(to, request)`, fed first with `rest`: the bytes of the same
    /// chunk after the switch. `request` (already announced by
    /// [`Message::RequestStarted`]) is answered in the new protocol.
    Switched {
        to: Protocol,
        request: (u64, Arc<RequestHead>),
        rest: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// This direction does not start like HTTP: it is ignored until close.
    NotHttp,
    /// A head exceeded `max_head_bytes`; the direction resyncs later.
    HeadTooLarge,
    /// Bytes of a head were not captured.
    HeadTruncated,
    /// Malformed head or body framing (the reason: httparse's for heads); the direction
    /// resyncs later.
    ParseError(&'static str),
    /// A final response arrived with no request to pair it with.
    ResponseWithoutRequest,
    /// More than `max_pending` requests awaited a response; the oldest was
    /// emitted unanswered.
    TooManyPending,
    /// A gap made the stream position unknown; resync happens at a later
    /// chunk that starts with a request/status line (HTTP/2: with frames).
    LostSync,
    /// HTTP/2: a direction's HPACK table stopped being trusted (header-block bytes were lost
    /// or could not be decoded); decoding goes on with the entries inserted from then on.
    HeaderTableLost,
}

impl Anomaly {
    /// Why, where the kind alone does not say it (a parse error's reason).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Anomaly::ParseError(r) => Some(r),
            _ => None,
        }
    }

    /// Stable snake_case name, e.g. for metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Anomaly::NotHttp => "not_http",
            Anomaly::HeadTooLarge => "head_too_large",
            Anomaly::HeadTruncated => "head_truncated",
            Anomaly::ParseError(_) => "parse_error",
            Anomaly::ResponseWithoutRequest => "response_without_request",
            Anomaly::TooManyPending => "too_many_pending",
            Anomaly::LostSync => "lost_sync",
            Anomaly::HeaderTableLost => "hpack_table_lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_names_protocol_and_role() {
        let s = sniff(true, b"GET / HTTP/1.1\r\n");
        assert_eq!((s.protocol, s.role), (Some(Protocol::Http1), Role::Client));
        let s = sniff(false, b"GET / HTTP/1.1\r\n");
        assert_eq!((s.protocol, s.role), (Some(Protocol::Http1), Role::Server));
        let s = sniff(true, b"HTTP/1.1 200 OK\r\n");
        assert_eq!((s.protocol, s.role), (Some(Protocol::Http1), Role::Server));
        let s = sniff(false, b"HTTP/1.0 404 Not Found\r\n");
        assert_eq!((s.protocol, s.role), (Some(Protocol::Http1), Role::Client));
        let s = sniff(true, H2_PREFACE);
        assert_eq!((s.protocol, s.role), (Some(Protocol::H2), Role::Client));
        let s = sniff(false, &H2_PREFACE[..8]);
        assert_eq!((s.protocol, s.role), (Some(Protocol::H2), Role::Server));
    }

    #[test]
    fn sniff_waits_on_too_little_or_foreign_bytes() {
        for bytes in [
            &b""[..],
            b"GE",
            b"HTTP/",
            b"\x16\x03\x01\x02\x00",
            b"hello world",
        ] {
            let s = sniff(true, bytes);
            assert_eq!(s.protocol, None, "{bytes:?}");
            assert_eq!(s.role, Role::Unknown, "{bytes:?}");
        }
    }
}
