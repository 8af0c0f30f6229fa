//! HTTP/2 and gRPC: frames, HPACK header blocks and streams, behind [`ProtocolParser`].
//!
//! [`H2Conn`] reads both directions of one connection (plain h2c, or the TLS plaintext):
//!
//! * **Frames** are reassembled per direction from captured chunks split anywhere
//!   ([`frame::Reader`]). Uncaptured bytes inside a frame make that frame's payload unknown;
//!   uncaptured bytes across a frame boundary lose the frame boundaries until a chunk starts
//!   with frames again. DATA frames are skipped by length.
//! * **Header blocks** (HEADERS + CONTINUATION, padding and priority removed) are decoded with
//!   one HPACK decoder per direction ([`hpack::Decoder`]), every block in capture order. A
//!   block whose bytes were lost (or could not be decoded) makes the table untrusted: it is
//!   counted ([`Anomaly::HeaderTableLost`]) and decoding goes on as on a connection seen from
//!   its middle.
//! * **Connections opened before the agent** (no preface seen) are decoded all the same: fields
//!   that index entries the agent never saw are unknown, every entry inserted since resolves
//!   exactly. A field whose name is unknown but whose value has the shape of trace context
//!   (traceparent, b3, uber-trace-id, grpc-trace-bin) is read as that header. Each request
//!   says how its headers were known ([`HeadersKnown`]); a method, path or status that was
//!   not read stays unknown, never guessed.
//! * **Streams** pair a client-initiated stream's request block with the server's response
//!   block on the same stream; trailers add `grpc-status`, a trailers-only response carries it
//!   in its only block. A stream ends with END_STREAM from the server, RST_STREAM, a GOAWAY that
//!   leaves it unprocessed, or the connection's close. Streams are kept apart by id: the
//!   request and response of two streams are never mixed.
//!
//! Only the fields the caller's `keep` accepts (trace context) are stored in heads, plus
//! `:method`, `:path` (without its query), `:status`, `grpc-status` and whether `content-type`
//! says gRPC.

pub(crate) mod frame;
pub(crate) mod hpack;
pub(crate) mod huffman;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};

use super::{
    Anomaly, Chunk, Flow, HeadersKnown, Limits, Message, Protocol, ProtocolParser, RequestHead,
    ResponseHead, MAX_HEADER_VALUE_BYTES, MAX_PATH_BYTES, MIN_HEAD_BYTES,
};
use crate::event::Role;
use crate::tracectx::{self, HeaderNames};
use frame::{flag, kind, FrameHeader, Payload, ReadEvent, Reader};
use hpack::{Decoder, Field, FieldFilter, Name, Value};

pub use frame::PREFACE;

/// Recognises HTTP/2 frames at the start of `bytes` without the connection preface (a
/// connection opened before the agent): Some(role of the process that moved them) when they
/// look like frames. The role is known when a HEADERS frame among them starts with a field only
/// one side sends (`:method`, `:path`, `:scheme`, `:authority`: the client; `:status`: the
/// server), and [`Role::Unknown`] otherwise.
pub fn sniff_frames(egress: bool, bytes: &[u8]) -> Option<Role> {
    if !frame::looks_like_frames(bytes) {
        return None;
    }
    let mut pos = 0usize;
    while let Some(h) = bytes.get(pos..).and_then(frame::first_header) {
        let payload_start = pos + frame::HEADER_LEN;
        if h.kind == kind::HEADERS {
            let payload = bytes.get(payload_start..).unwrap_or_default();
            let fragment = header_fragment(&h, payload, true).unwrap_or_default();
            let client_sent = match hpack::first_static_name(fragment) {
                Some(1..=7) => Some(true),
                Some(8..=14) => Some(false),
                _ => None,
            };
            return Some(match client_sent {
                Some(client) if client == egress => Role::Client,
                Some(_) => Role::Server,
                None => Role::Unknown,
            });
        }
        pos = payload_start.saturating_add(h.len as usize);
    }
    Some(Role::Unknown)
}

/// The header block fragment of a HEADERS or PUSH_PROMISE frame: without the pad length,
/// priority fields or promised stream id in front and the padding behind (RFC 9113 §6.2,
/// §6.6). `partial`: `payload` may stop short of the frame's end (sniffing), so the
/// padding is not removed. None when the padding is longer than the frame.
pub(crate) fn header_fragment<'a>(
    h: &FrameHeader,
    payload: &'a [u8],
    partial: bool,
) -> Option<&'a [u8]> {
    let (pad, mut start) = if h.has(flag::PADDED) {
        (usize::from(*payload.first()?), 1)
    } else {
        (0, 0)
    };
    match h.kind {
        kind::HEADERS if h.has(flag::PRIORITY) => start += 5,
        kind::PUSH_PROMISE => start += 4,
        _ => {}
    }
    if partial {
        return payload.get(start..);
    }
    let end = payload.len().checked_sub(pad)?;
    payload.get(start..end)
}

/// Fields read beyond trace context.
const READ_FIELDS: [&str; 5] = [":method", ":path", ":status", "content-type", "grpc-status"];

/// Header names recognised by the shape of a value, most specific first.
const TRACE_SHAPES: [&str; 4] = ["traceparent", "grpc-trace-bin", "uber-trace-id", "b3"];

/// The default header names (no extra request ids: those are opaque, they have no shape).
static SHAPE_NAMES: LazyLock<HeaderNames> = LazyLock::new(HeaderNames::default);

/// The trace header whose valid value `value` is, if any.
pub(crate) fn trace_header_by_value(value: &[u8]) -> Option<&'static str> {
    TRACE_SHAPES.into_iter().find(|name| {
        let ex = tracectx::extract([(*name, value)], &SHAPE_NAMES);
        !ex.contexts.is_empty() && ex.malformed.is_empty()
    })
}

/// What the decoders keep: [`READ_FIELDS`] and what the caller's `keep` accepts.
struct Interest<'k> {
    keep: &'k dyn Fn(&str) -> bool,
}

impl FieldFilter for Interest<'_> {
    fn keeps(&self, name: &str) -> bool {
        READ_FIELDS.contains(&name) || (self.keep)(name)
    }

    fn name_by_value(&self, value: &[u8]) -> Option<&'static str> {
        trace_header_by_value(value).filter(|name| (self.keep)(name))
    }
}

/// What one header block says, as far as it was read.
#[derive(Debug, Default)]
struct Collected {
    method: Option<Arc<str>>,
    path: Option<Arc<str>>,
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// `content-type` is `application/grpc` (or one of its `+proto`, `+json`... forms).
    grpc: bool,
    /// Kept headers (trace context), lowercase names.
    headers: Vec<(String, String)>,
    /// A trace header was recognised by the shape of its value.
    by_value: bool,
    /// A trace header was read by its name.
    by_name: bool,
    /// Some field's name was unknown, its value was judged by its shape.
    unknown_names: bool,
    /// Some field was entirely unknown (name and value), or the block was not decoded.
    unreadable: bool,
    /// Some of the block's bytes were missing.
    truncated: bool,
}

impl Collected {
    /// A block that could not be read at all.
    fn unreadable() -> Collected {
        Collected {
            unreadable: true,
            truncated: true,
            ..Collected::default()
        }
    }

    fn add(&mut self, field: Field, keep: &dyn Fn(&str) -> bool) {
        match (field.name, field.value) {
            (Name::Known(name), Value::Kept(value)) => self.add_known(&name, &value, keep),
            (Name::ByValue(name), Value::Kept(value)) => {
                self.by_value = true;
                self.unknown_names = true;
                self.headers.push((name.to_string(), header_value(&value)));
            }
            (Name::Other, _) => {}
            (Name::Unknown, Value::Dropped) => self.unknown_names = true,
            (Name::Known(_) | Name::ByValue(_) | Name::Unknown, _) => self.unreadable = true,
        }
    }

    fn add_known(&mut self, name: &str, value: &[u8], keep: &dyn Fn(&str) -> bool) {
        match name {
            ":method" => self.method = Some(Arc::from(&*String::from_utf8_lossy(value))),
            ":path" => {
                let path = value.split(|&b| b == b'?').next().unwrap_or_default();
                let path = path.get(..MAX_PATH_BYTES).unwrap_or(path);
                self.path = Some(Arc::from(&*String::from_utf8_lossy(path)));
            }
            ":status" => self.status = parse_decimal(value).and_then(|s| u16::try_from(s).ok()),
            "grpc-status" => self.grpc_status = parse_decimal(value),
            "content-type" => self.grpc = value.starts_with(b"application/grpc"),
            _ => {}
        }
        if keep(name) {
            self.by_name = true;
            self.headers.push((name.to_string(), header_value(value)));
        }
    }

    /// How the block's trace context was known (see [`HeadersKnown`]).
    fn headers_known(&self) -> HeadersKnown {
        if self.by_value {
            HeadersKnown::ByValue
        } else if self.by_name || !(self.unreadable || self.unknown_names) {
            HeadersKnown::Exact
        } else if self.unreadable {
            HeadersKnown::Unknown
        } else {
            HeadersKnown::ByValue
        }
    }

    /// Whether a client's block starts a request: it names a method or path, or may (fields
    /// unknown). A block known to have neither is the trailers of a stream opened before the
    /// agent saw the connection.
    fn may_be_request(&self) -> bool {
        self.method.is_some() || self.path.is_some() || self.unreadable || self.unknown_names
    }
}

/// Header value as heads store them: at most [`MAX_HEADER_VALUE_BYTES`], lossily decoded,
/// trimmed.
fn header_value(v: &[u8]) -> String {
    let raw = v.get(..MAX_HEADER_VALUE_BYTES).unwrap_or(v);
    String::from_utf8_lossy(raw).trim().to_string()
}

/// A decimal of at most 9 digits (status codes).
fn parse_decimal(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
}

/// Why a header block is not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spoiled {
    /// Some of its bytes were not captured.
    Lost,
    /// Larger than `max_head_bytes`.
    TooLarge,
    /// Malformed framing (the reason).
    Malformed(&'static str),
}

/// A header block being assembled from HEADERS (or PUSH_PROMISE) and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    /// A PUSH_PROMISE's block: decoded for the table only.
    push: bool,
    end_stream: bool,
    bytes: Vec<u8>,
    spoiled: Option<Spoiled>,
    ts_ns: u64,
    tid: u32,
}

#[derive(Debug)]
struct Stream {
    id: u32,
    seq: u64,
    request: Arc<RequestHead>,
    response: Option<ResponseHead>,
    /// The response says gRPC (`content-type` or `grpc-status`).
    grpc_response: bool,
    /// Its response was read before its request was written (see [`EARLY_RESPONSE_WAIT_NS`]):
    /// `request` is a placeholder, and `seq` was not announced yet.
    early: Option<Early>,
}

/// A response that came before its request.
#[derive(Debug, Clone, Copy)]
struct Early {
    /// When the response block was read.
    since_ns: u64,
    /// The stream already ended (END_STREAM, RST_STREAM): emitted once its request comes.
    ended: bool,
}

/// How long a response read before any request on its stream waits for that request.
///
/// The kernel reports a write when the call returns. A writer preempted between its send and
/// that report can be overtaken by the answer, read on another thread (gRPC's event engines,
/// Go's HTTP client): on a 2-core host under load, by a millisecond and more. Stream ids tell
/// which request the answer belongs to, so the answer waits for it; past this wait (by the
/// connection's later records) the request went unseen.
pub const EARLY_RESPONSE_WAIT_NS: u64 = 250_000_000;

/// The index of a direction in per-direction arrays.
fn side(flow: Flow) -> usize {
    match flow {
        Flow::ClientToServer => 0,
        Flow::ServerToClient => 1,
    }
}

/// Both directions of one HTTP/2 connection.
#[derive(Debug)]
pub struct H2Conn {
    readers: [Reader; 2],
    session: Session,
}

/// Everything but the frame readers.
#[derive(Debug)]
struct Session {
    limits: Limits,
    /// The client preface was seen: the connection is decoded from its start.
    preface_seen: bool,
    /// Per direction, created at its first header block: exact when the preface was seen.
    decoders: [Option<Decoder>; 2],
    blocks: [Option<Block>; 2],
    /// Streams awaiting their end, oldest first (at most `limits.max_pending`).
    streams: Vec<Stream>,
    /// Streams whose response came first ([`Stream::early`]).
    early: usize,
    /// The highest stream id the client was seen opening: a request not seen yet can only
    /// have a higher one (client stream ids only grow, RFC 9113 §5.1.1).
    last_client_stream: u32,
    /// The last streams that ended, newest last (at most [`ENDED_KEPT`]): a response block
    /// for one of them is late, not a call whose request went unseen.
    ended: VecDeque<u32>,
    /// Frames of the client's were lost: a response on a stream never opened in what was
    /// read answers a request that went unseen. (Streams opened before the agent saw the
    /// connection are not reported: their calls started before it.)
    requests_may_be_unseen: bool,
    next_seq: u64,
    closed: bool,
}

/// Streams remembered as ended, per connection.
const ENDED_KEPT: usize = 16;

impl H2Conn {
    pub fn new(limits: Limits) -> H2Conn {
        let limits = Limits {
            max_head_bytes: limits.max_head_bytes.max(MIN_HEAD_BYTES),
            max_pending: limits.max_pending.max(1),
        };
        H2Conn {
            readers: [
                Reader::new(true, limits.max_head_bytes),
                Reader::new(false, limits.max_head_bytes),
            ],
            session: Session {
                limits,
                preface_seen: false,
                decoders: [None, None],
                blocks: [None, None],
                streams: Vec::new(),
                early: 0,
                last_client_stream: 0,
                ended: VecDeque::new(),
                requests_may_be_unseen: false,
                next_seq: 0,
                closed: false,
            },
        }
    }

    /// The connection after an HTTP/1.1 upgrade to h2c (RFC 7540 §3.2): decoded from its
    /// start (the client preface comes next), and the upgrade request `(seq, head)` is stream
    /// 1, awaiting the server's response on it.
    pub fn after_upgrade(limits: Limits, (seq, head): (u64, Arc<RequestHead>)) -> H2Conn {
        let mut conn = H2Conn::new(limits);
        let request = RequestHead {
            protocol: Protocol::H2,
            stream_id: Some(1),
            ..(*head).clone()
        };
        let session = &mut conn.session;
        session.preface_seen = true;
        session.last_client_stream = 1;
        session.streams.push(Stream {
            id: 1,
            seq,
            request: Arc::new(request),
            response: None,
            grpc_response: false,
            early: None,
        });
        session.next_seq = seq.saturating_add(1);
        conn
    }

    /// Streams awaiting their end.
    pub fn pending(&self) -> usize {
        self.session.streams.len()
    }

    /// Bytes buffered for frames and header blocks (both directions).
    pub fn buffered_bytes(&self) -> usize {
        let blocks: usize = self
            .session
            .blocks
            .iter()
            .flatten()
            .map(|b| b.bytes.len())
            .sum();
        blocks + self.readers.iter().map(Reader::buffered).sum::<usize>()
    }
}

impl Session {
    fn on_event(
        &mut self,
        flow: Flow,
        event: ReadEvent<'_>,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    ) {
        let i = side(flow);
        match event {
            ReadEvent::Preface => self.preface_seen = true,
            ReadEvent::LostSync { .. } => {
                out.push(Message::Anomaly(Anomaly::LostSync));
                if flow == Flow::ClientToServer {
                    self.requests_may_be_unseen = true;
                }
                if let Some(mut block) = self.blocks[i].take() {
                    block.spoiled = Some(Spoiled::Lost);
                    self.complete_block(flow, block, keep, out);
                } else {
                    // The lost bytes may have held header blocks.
                    self.lose_table(i, out);
                }
            }
            ReadEvent::Frame {
                header,
                payload,
                ts_ns,
                tid,
                ..
            } => self.on_frame(flow, header, payload, ts_ns, tid, keep, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &mut self,
        flow: Flow,
        h: FrameHeader,
        payload: Payload<'_>,
        ts_ns: u64,
        tid: u32,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    ) {
        let i = side(flow);
        if let Some(mut block) = self.blocks[i].take() {
            if h.kind == kind::CONTINUATION && h.stream == block.stream {
                self.append(&mut block, &h, payload);
                if h.has(flag::END_HEADERS) {
                    self.complete_block(flow, block, keep, out);
                } else {
                    self.blocks[i] = Some(block);
                }
                return;
            }
            // RFC 9113 §6.10: nothing may come between a block's frames.
            block.spoiled = Some(Spoiled::Malformed("h2: header block interrupted"));
            self.complete_block(flow, block, keep, out);
        }
        match h.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                let mut block = Block {
                    stream: h.stream,
                    push: h.kind == kind::PUSH_PROMISE,
                    end_stream: h.kind == kind::HEADERS && h.has(flag::END_STREAM),
                    bytes: Vec::new(),
                    spoiled: None,
                    ts_ns,
                    tid,
                };
                self.append(&mut block, &h, payload);
                if h.has(flag::END_HEADERS) {
                    self.complete_block(flow, block, keep, out);
                } else {
                    self.blocks[i] = Some(block);
                }
            }
            kind::CONTINUATION => {
                // Its HEADERS came before the agent saw the connection (or was cut): the
                // fragment cannot be decoded, and the table is no longer trusted.
                out.push(Message::Anomaly(Anomaly::ParseError(
                    "h2: continuation without headers",
                )));
                self.lose_table(i, out);
            }
            kind::DATA if flow == Flow::ServerToClient && h.has(flag::END_STREAM) => {
                self.end_stream(h.stream, out);
            }
            kind::RST_STREAM => self.end_stream(h.stream, out),
            kind::GOAWAY if flow == Flow::ServerToClient => {
                if let Payload::Bytes(b) = payload {
                    if let Some(last) = b.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                        // Streams past the last one processed never will be (RFC 9113 §6.8).
                        let last = u32::from_be_bytes(last) & 0x7fff_ffff;
                        let unprocessed: Vec<u32> = self
                            .streams
                            .iter()
                            .filter(|s| s.id > last)
                            .map(|s| s.id)
                            .collect();
                        for id in unprocessed {
                            self.end_stream(id, out);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds a frame's fragment to its block, or spoils the block.
    fn append(&self, block: &mut Block, h: &FrameHeader, payload: Payload<'_>) {
        if block.spoiled.is_some() {
            return;
        }
        let fragment = match payload {
            Payload::Bytes(b) => match header_fragment(h, b, false) {
                Some(f) => f,
                None => {
                    block.spoiled = Some(Spoiled::Malformed("h2: padding exceeds frame"));
                    return;
                }
            },
            Payload::Lost => {
                block.spoiled = Some(Spoiled::Lost);
                return;
            }
            Payload::TooLarge | Payload::Skipped => {
                block.spoiled = Some(Spoiled::TooLarge);
                return;
            }
        };
        if block.bytes.len() + fragment.len() > self.limits.max_head_bytes {
            block.spoiled = Some(Spoiled::TooLarge);
            block.bytes = Vec::new();
            return;
        }
        block.bytes.extend_from_slice(fragment);
    }

    /// The table of direction `i` is no longer trusted.
    fn lose_table(&mut self, i: usize, out: &mut Vec<Message>) {
        let trusted = match &self.decoders[i] {
            Some(d) => d.is_exact() || !d.is_empty(),
            None => self.preface_seen,
        };
        self.decoders[i] = Some(Decoder::mid_connection());
        if trusted {
            out.push(Message::Anomaly(Anomaly::HeaderTableLost));
        }
    }

    /// Decodes a complete block and hands it to its stream.
    fn complete_block(
        &mut self,
        flow: Flow,
        block: Block,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    ) {
        let i = side(flow);
        let collected = match block.spoiled {
            Some(spoiled) => {
                out.push(Message::Anomaly(match spoiled {
                    Spoiled::Lost => Anomaly::HeadTruncated,
                    Spoiled::TooLarge => Anomaly::HeadTooLarge,
                    Spoiled::Malformed(reason) => Anomaly::ParseError(reason),
                }));
                self.lose_table(i, out);
                Collected::unreadable()
            }
            None => {
                let preface_seen = self.preface_seen;
                let decoder = self.decoders[i].get_or_insert_with(|| {
                    if preface_seen {
                        Decoder::from_start()
                    } else {
                        Decoder::mid_connection()
                    }
                });
                let mut collected = Collected::default();
                let interest = Interest { keep };
                let result =
                    decoder.decode_block(&block.bytes, &interest, &mut |f| collected.add(f, keep));
                if let Err(e) = result {
                    out.push(Message::Anomaly(Anomaly::ParseError(e.reason())));
                    self.lose_table(i, out);
                    collected.unreadable = true;
                    collected.truncated = true;
                }
                collected
            }
        };
        if block.push {
            return;
        }
        match flow {
            Flow::ClientToServer => self.on_request_block(&block, collected, out),
            Flow::ServerToClient => self.on_response_block(&block, collected, out),
        }
    }

    fn on_request_block(&mut self, block: &Block, c: Collected, out: &mut Vec<Message>) {
        // Client-initiated streams are odd (RFC 9113 §5.1.1).
        if block.stream.is_multiple_of(2) {
            return;
        }
        self.last_client_stream = self.last_client_stream.max(block.stream);
        if !c.may_be_request() {
            return;
        }
        if let Some(i) = self.streams.iter().position(|s| s.id == block.stream) {
            // A known stream's second block is its trailers, unless its answer came first.
            if self.streams[i].early.is_some() {
                self.answered_request(i, block, c, out);
            }
            return;
        }
        if self.ended.contains(&block.stream) {
            // Late: the stream was reported (its request, awaited, went unseen).
            return;
        }
        while self.streams.len() >= self.limits.max_pending {
            out.push(Message::Anomaly(Anomaly::TooManyPending));
            self.end_oldest(out);
        }
        let head = Arc::new(Self::request_head(block, c));
        let seq = self.open(block.stream, Arc::clone(&head));
        out.push(Message::RequestStarted { seq, head });
    }

    /// The request of stream `i`, whose response came first: announced now, and the exchange
    /// emitted if the stream already ended.
    fn answered_request(&mut self, i: usize, block: &Block, c: Collected, out: &mut Vec<Message>) {
        let stream = &mut self.streams[i];
        let Some(early) = stream.early.take() else {
            return;
        };
        self.early -= 1;
        let head = Arc::new(Self::request_head(block, c));
        stream.request = Arc::clone(&head);
        out.push(Message::RequestStarted {
            seq: stream.seq,
            head,
        });
        if early.ended {
            self.end_stream(block.stream, out);
        }
    }

    fn request_head(block: &Block, c: Collected) -> RequestHead {
        RequestHead {
            headers_known: c.headers_known(),
            method: c.method.unwrap_or_default(),
            path: c.path.unwrap_or_default(),
            version: 0,
            headers: c.headers,
            ts_ns: block.ts_ns,
            tid: block.tid,
            truncated: c.truncated,
            protocol: if c.grpc { Protocol::Grpc } else { Protocol::H2 },
            stream_id: Some(block.stream),
            inferred: false,
        }
    }

    /// Tracks a new stream whose request is `request`; its sequence number.
    fn open(&mut self, id: u32, request: Arc<RequestHead>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.streams.push(Stream {
            id,
            seq,
            request,
            response: None,
            grpc_response: false,
            early: None,
        });
        seq
    }

    /// Emits the oldest stream still open, as it is.
    fn end_oldest(&mut self, out: &mut Vec<Message>) {
        if let Some(oldest) = self.streams.first().map(|s| s.id) {
            self.give_up_waiting(oldest, out);
            self.end_stream(oldest, out);
        }
    }

    /// Responses that came first and whose request did not follow by `now_ns` (all of them
    /// when `None`: the connection ended) are taken as answers to requests that went unseen.
    fn expire_early(&mut self, now_ns: Option<u64>, out: &mut Vec<Message>) {
        if self.early == 0 {
            return;
        }
        let expired: Vec<u32> = self
            .streams
            .iter()
            .filter(|s| {
                s.early.is_some_and(|e| {
                    now_ns.is_none_or(|now| now.saturating_sub(e.since_ns) > EARLY_RESPONSE_WAIT_NS)
                })
            })
            .map(|s| s.id)
            .collect();
        for id in expired {
            let ended = self.give_up_waiting(id, out);
            if ended {
                self.end_stream(id, out);
            }
        }
    }

    /// Stream `id` stops waiting for its request: it answers a request that went unseen when
    /// frames of the client's were lost (reported with its fields unknown), and nothing
    /// otherwise (counted, and forgotten). Whether it had ended.
    fn give_up_waiting(&mut self, id: u32, out: &mut Vec<Message>) -> bool {
        let Some(i) = self.streams.iter().position(|s| s.id == id) else {
            return false;
        };
        let Some(early) = self.streams[i].early.take() else {
            return false;
        };
        self.early -= 1;
        if !self.requests_may_be_unseen {
            out.push(Message::Anomaly(Anomaly::ResponseWithoutRequest));
            self.streams.remove(i);
            self.remember_ended(id);
            return false;
        }
        early.ended
    }

    /// A final response block on a client-initiated stream (odd) that is not open and did not
    /// end lately: it answers a request not seen (yet).
    fn answers_unseen_stream(&self, block: &Block, c: &Collected) -> bool {
        block.stream % 2 == 1
            && !self.ended.contains(&block.stream)
            && c.status.is_some_and(|s| s >= 200)
    }

    fn on_response_block(&mut self, block: &Block, c: Collected, out: &mut Vec<Message>) {
        if !self.streams.iter().any(|s| s.id == block.stream) {
            // Past the last stream the client was seen opening, its request may still be on
            // its way (see EARLY_RESPONSE_WAIT_NS). Otherwise the request is known lost only
            // when frames of the client's were.
            let early = block.stream > self.last_client_stream;
            if !self.answers_unseen_stream(block, &c) || !(early || self.requests_may_be_unseen) {
                if c.status.is_some() {
                    out.push(Message::Anomaly(Anomaly::ResponseWithoutRequest));
                }
                return;
            }
            // The call happened (the server answers only streams the client opened), its
            // request head is not known: awaited, or reported with the response, fields
            // unknown.
            while self.streams.len() >= self.limits.max_pending {
                out.push(Message::Anomaly(Anomaly::TooManyPending));
                self.end_oldest(out);
            }
            let request = RequestHead {
                method: Arc::default(),
                path: Arc::default(),
                version: 0,
                headers: Vec::new(),
                ts_ns: block.ts_ns,
                tid: block.tid,
                truncated: true,
                protocol: if c.grpc { Protocol::Grpc } else { Protocol::H2 },
                stream_id: Some(block.stream),
                headers_known: HeadersKnown::Unknown,
                inferred: true,
            };
            self.open(block.stream, Arc::new(request));
            if early {
                if let Some(s) = self.streams.last_mut() {
                    s.early = Some(Early {
                        since_ns: block.ts_ns,
                        ended: false,
                    });
                    self.early += 1;
                }
            }
        }
        let Some(stream) = self.streams.iter_mut().find(|s| s.id == block.stream) else {
            return;
        };
        stream.grpc_response |= c.grpc || c.grpc_status.is_some();
        match &mut stream.response {
            None => {
                if c.status.is_some_and(|s| (100..200).contains(&s)) && !block.end_stream {
                    // Interim response: the final one follows.
                    return;
                }
                stream.response = Some(ResponseHead {
                    status: c.status,
                    grpc_status: c.grpc_status,
                    headers: c.headers,
                    ts_ns: block.ts_ns,
                    tid: block.tid,
                    truncated: c.truncated,
                });
            }
            Some(response) => {
                // Trailers.
                if c.grpc_status.is_some() {
                    response.grpc_status = c.grpc_status;
                }
                response.headers.extend(c.headers);
                response.truncated |= c.truncated;
            }
        }
        if block.end_stream {
            self.end_stream(block.stream, out);
        }
    }

    /// Stream `id` ended: its exchange is emitted (once its request came, when its response
    /// came first).
    fn end_stream(&mut self, id: u32, out: &mut Vec<Message>) {
        if let Some(pos) = self.streams.iter().position(|s| s.id == id) {
            if let Some(early) = &mut self.streams[pos].early {
                early.ended = true;
                return;
            }
            emit(self.streams.remove(pos), out);
            self.remember_ended(id);
        }
    }

    fn remember_ended(&mut self, id: u32) {
        if self.ended.len() >= ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back(id);
    }
}

/// Emits a stream's exchange; a request that did not say gRPC but whose response did is gRPC.
fn emit(stream: Stream, out: &mut Vec<Message>) {
    let mut request = stream.request;
    if stream.grpc_response && request.protocol != Protocol::Grpc {
        Arc::make_mut(&mut request).protocol = Protocol::Grpc;
    }
    out.push(Message::Exchange {
        seq: stream.seq,
        request,
        response: stream.response,
    });
}

impl ProtocolParser for H2Conn {
    fn on_data(
        &mut self,
        flow: Flow,
        chunk: Chunk<'_>,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    ) {
        let H2Conn { readers, session } = self;
        if session.closed {
            return;
        }
        session.expire_early(Some(chunk.ts_ns), out);
        let gap = chunk.real_len.saturating_sub(chunk.data.len() as u64);
        readers[side(flow)].feed(chunk.data, gap, chunk.ts_ns, chunk.tid, &mut |event| {
            session.on_event(flow, event, keep, out)
        });
    }

    /// Every stream still open is emitted, with its response head when one came.
    fn on_close(&mut self, _ts_ns: u64, out: &mut Vec<Message>) {
        self.session.closed = true;
        self.session.blocks = [None, None];
        for r in &mut self.readers {
            r.close();
        }
        self.flush(out);
    }

    /// Emits every stream still open (eviction, end of a replay); frames and tables are kept.
    fn flush(&mut self, out: &mut Vec<Message>) {
        self.session.expire_early(None, out);
        for stream in self.session.streams.drain(..) {
            emit(stream, out);
        }
    }

    fn is_dead(&self) -> bool {
        self.session.closed && self.session.streams.is_empty()
    }
}
