//! HTTP/1.x stream reassembly.
//!
//! The kernel side reports, per socket and per direction, an ordered sequence
//! of [`Chunk`]s: the first bytes of each read/write syscall plus the real
//! length of the transfer. [`HttpConn`] turns both directions of one TCP
//! connection into [`Message`]s: request heads as soon as they are complete,
//! request/response pairs (FIFO, HTTP/1 pipelining), and counted anomalies.
//!
//! Design:
//! * Only head bytes are ever buffered (at most `Limits::max_head_bytes` per
//!   direction); bodies are skipped by their framing (Content-Length, chunked,
//!   read-until-close), including bytes that were not captured (gaps).
//! * When a gap hides framing bytes the direction is "lost" and resyncs at the
//!   next chunk whose data starts like a request line / status line.
//! * A direction that does not start like HTTP is ignored until close.
//! * Every operation is bounded and panic-free on arbitrary input.
//!
//! The protocol-neutral types ([`RequestHead`], [`Message`], ...) live in [`crate::protocol`];
//! [`HttpConn`] implements its [`ProtocolParser`].

use std::collections::VecDeque;
use std::sync::Arc;

use super::{
    Anomaly, Chunk, Flow, HeadersKnown, Limits, Message, Protocol, ProtocolParser, RequestHead,
    ResponseHead, MAX_HEADER_VALUE_BYTES, MAX_PATH_BYTES, MIN_HEAD_BYTES,
};

mod parse;
mod plain;
#[cfg(test)]
mod tests;

/// The smallest request an estimate assumes (`GET / HTTP/1.1` and an empty line).
const MIN_REQUEST_BYTES: u64 = 18;

use parse::{ChunkStep, Chunked, ContentLength, ParsedHead, Sig, TransferEncoding};

/// What a message's first bytes are, when they are enough to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

/// Recognises the start of an HTTP/1 request line (`METHOD SP`) or status line (`HTTP/1.`);
/// None when the bytes are too few to tell or are something else (the HTTP/2 preface's `PRI`
/// is not a request).
pub fn sniff_message(bytes: &[u8]) -> Option<MessageKind> {
    if parse::request_sig(bytes) == Sig::Yes {
        Some(MessageKind::Request)
    } else if parse::response_sig(bytes) == Sig::Yes {
        Some(MessageKind::Response)
    } else {
        None
    }
}

/// Body framing being skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting (or accumulating) a head.
    Head,
    Body(Body),
    /// Position unknown: waiting for a chunk that starts with a head.
    Lost,
    /// Request side after an `Upgrade`/`CONNECT` request: waiting for the
    /// response to decide whether the connection stays HTTP.
    Suspended {
        seq: u64,
        saw_bytes: bool,
    },
    /// Not HTTP (any more), or closed: everything is dropped.
    Ignored,
}

/// State of one direction.
#[derive(Debug, Clone)]
struct Dir {
    flow: Flow,
    state: State,
    /// Bytes of the head being accumulated (never more than max_head_bytes).
    buf: Vec<u8>,
    /// The current head's first byte was seen (`head_ts`/`head_tid` valid).
    head_started: bool,
    /// The current head passed the cheap signature check.
    sig_ok: bool,
    head_ts: u64,
    head_tid: u32,
    /// Some message of this direction passed the signature check.
    seen_http: bool,
    /// Request side: seq of an Upgrade/CONNECT request whose body is being skipped.
    upgrade_seq: Option<u64>,
}

impl Dir {
    fn new(flow: Flow) -> Self {
        Dir {
            flow,
            state: State::Head,
            buf: Vec::new(),
            head_started: false,
            sig_ok: false,
            head_ts: 0,
            head_tid: 0,
            seen_http: false,
            upgrade_seq: None,
        }
    }

    /// Forget the current (partial) head, and its buffer: a buffer exists only while a head
    /// is incomplete (most heads arrive whole and are parsed in place).
    fn reset_head(&mut self) {
        self.head_started = false;
        self.sig_ok = false;
        self.buf = Vec::new();
    }

    fn sig(&self, bytes: &[u8]) -> Sig {
        match self.flow {
            Flow::ClientToServer => parse::request_sig(bytes),
            Flow::ServerToClient => parse::response_sig(bytes),
        }
    }

    /// Signature of the current head: buffered bytes followed by `rest`.
    fn head_sig(&self, rest: &[u8]) -> Sig {
        if self.buf.is_empty() {
            // The common case: the head starts in this chunk.
            return self.sig(rest);
        }
        let mut peek = [0u8; parse::MAX_METHOD_LEN + 1];
        let mut n = 0usize;
        for (slot, &b) in peek.iter_mut().zip(self.buf.iter().chain(rest.iter())) {
            *slot = b;
            n += 1;
        }
        self.sig(peek.get(..n).unwrap_or(&[]))
    }

    /// May a lost direction resync at a chunk starting with `data`?
    fn resync_ok(&self, data: &[u8]) -> bool {
        let skip = data
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        self.sig(data.get(skip..).unwrap_or(&[])) == Sig::Yes
    }

    /// Appends to the head buffer, keeping its capacity within `max`.
    fn push_head_bytes(&mut self, bytes: &[u8], max: usize) {
        let need = self.buf.len().saturating_add(bytes.len());
        if need > self.buf.capacity() {
            let want = need
                .max(self.buf.capacity().saturating_mul(2))
                .max(256)
                .min(max)
                .max(need);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// Per-call context.
struct Cx<'k> {
    flow: Flow,
    ts: u64,
    tid: u32,
    keep: &'k dyn Fn(&str) -> bool,
}

/// Both directions of one TCP connection.
#[derive(Debug, Clone)]
pub struct HttpConn {
    limits: Limits,
    req: Dir,
    resp: Dir,
    /// Requests awaiting a response, oldest first.
    pending: VecDeque<(u64, Arc<RequestHead>)>,
    next_seq: u64,
    /// Request-side bytes seen while in step with the stream: with `next_seq`, the mean size
    /// of a request, to tell how many requests an uninspected stretch may hold.
    request_bytes: u64,
    /// A `101 Switching Protocols` to h2c was just parsed: the request it answered (its
    /// response comes on HTTP/2 stream 1), until [`Message::Switched`] hands it on.
    switched_to_h2: Option<(u64, Arc<RequestHead>)>,
}

impl HttpConn {
    pub fn new(limits: Limits) -> Self {
        HttpConn {
            limits: Limits {
                max_head_bytes: limits.max_head_bytes.max(MIN_HEAD_BYTES),
                max_pending: limits.max_pending.max(1),
            },
            req: Dir::new(Flow::ClientToServer),
            resp: Dir::new(Flow::ServerToClient),
            pending: VecDeque::new(),
            next_seq: 0,
            request_bytes: 0,
            switched_to_h2: None,
        }
    }

    /// Requests awaiting a response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Head bytes currently buffered (both directions).
    pub fn buffered_bytes(&self) -> usize {
        self.req.buf.len() + self.resp.buf.len()
    }

    /// `bytes` of `flow` could not be inspected; on the request side, with the number of
    /// requests they may hold (by the mean request size seen on this connection).
    fn uninspected(&self, flow: Flow, bytes: u64) -> Message {
        let requests = match flow {
            Flow::ClientToServer if self.next_seq > 0 => {
                let mean = (self.request_bytes / self.next_seq).max(MIN_REQUEST_BYTES);
                bytes.div_ceil(mean)
            }
            _ => 0,
        };
        Message::Uninspected { bytes, requests }
    }

    fn dir(&self, flow: Flow) -> &Dir {
        match flow {
            Flow::ClientToServer => &self.req,
            Flow::ServerToClient => &self.resp,
        }
    }

    fn dir_mut(&mut self, flow: Flow) -> &mut Dir {
        match flow {
            Flow::ClientToServer => &mut self.req,
            Flow::ServerToClient => &mut self.resp,
        }
    }

    /// Processes captured bytes.
    fn feed(&mut self, cx: &Cx<'_>, data: &[u8], out: &mut Vec<Message>) {
        let mut pos = 0usize;
        // Every step consumes a byte or changes state in a way that makes the
        // next step consume; the budget only guards against a logic error.
        let mut budget = data.len().saturating_mul(2).saturating_add(8);
        while let Some(rest) = data.get(pos..) {
            if rest.is_empty() || budget == 0 {
                break;
            }
            budget -= 1;
            let used = match self.dir(cx.flow).state {
                State::Ignored => rest.len(),
                State::Suspended { seq, .. } => {
                    self.dir_mut(cx.flow).state = State::Suspended {
                        seq,
                        saw_bytes: true,
                    };
                    rest.len()
                }
                State::Lost => {
                    let d = self.dir_mut(cx.flow);
                    if pos == 0 && d.resync_ok(rest) {
                        d.reset_head();
                        d.state = State::Head;
                        0
                    } else {
                        out.push(self.uninspected(cx.flow, rest.len() as u64));
                        rest.len()
                    }
                }
                State::Body(body) => self.step_body(cx, body, rest, out),
                State::Head => self.step_head(cx, rest, out),
            };
            pos = pos.saturating_add(used.min(rest.len()));
            if let Some(request) = self.switched_to_h2.take() {
                // The bytes after the 101 are HTTP/2 frames already: the next parser's.
                out.push(Message::Switched {
                    to: Protocol::H2,
                    request,
                    rest: data.get(pos..).unwrap_or_default().to_vec(),
                });
                return;
            }
        }
    }

    fn step_body(&mut self, cx: &Cx<'_>, body: Body, rest: &[u8], out: &mut Vec<Message>) -> usize {
        match body {
            Body::UntilClose => rest.len(),
            Body::Length(n) => {
                let take = n.min(rest.len() as u64);
                if take == n {
                    self.message_done(cx.flow);
                } else {
                    self.dir_mut(cx.flow).state = State::Body(Body::Length(n - take));
                }
                // take <= rest.len()
                take as usize
            }
            Body::Chunked(mut c) => {
                let (used, step) = c.feed(rest);
                match step {
                    ChunkStep::NeedMore => {
                        self.dir_mut(cx.flow).state = State::Body(Body::Chunked(c));
                    }
                    ChunkStep::Done => self.message_done(cx.flow),
                    ChunkStep::Error | ChunkStep::TooLarge => {
                        let reason = if step == ChunkStep::TooLarge {
                            "chunk size too large"
                        } else {
                            "invalid chunk framing"
                        };
                        out.push(Message::Anomaly(Anomaly::ParseError(reason)));
                        self.dir_mut(cx.flow).state = State::Lost;
                    }
                }
                used
            }
        }
    }

    /// A message (head + body) of `flow` ended.
    fn message_done(&mut self, flow: Flow) {
        let d = self.dir_mut(flow);
        d.reset_head();
        d.state = match d.upgrade_seq.take() {
            Some(seq) => State::Suspended {
                seq,
                saw_bytes: false,
            },
            None => State::Head,
        };
    }

    fn step_head(&mut self, cx: &Cx<'_>, rest: &[u8], out: &mut Vec<Message>) -> usize {
        let max = self.limits.max_head_bytes;
        let d = self.dir_mut(cx.flow);
        let mut skip = 0usize;
        if !d.head_started {
            // Stray CR/LF between messages are tolerated.
            skip = rest
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip == rest.len() {
                return skip;
            }
            d.head_started = true;
            d.head_ts = cx.ts;
            d.head_tid = cx.tid;
        }
        let rest = rest.get(skip..).unwrap_or(&[]);
        if !d.sig_ok {
            match d.head_sig(rest) {
                Sig::Yes => {
                    d.sig_ok = true;
                    d.seen_http = true;
                }
                Sig::No => {
                    self.bad_signature(cx.flow, out);
                    return skip;
                }
                Sig::Maybe => {
                    // Fewer than 17 bytes in total: buffer and wait.
                    d.push_head_bytes(rest, max);
                    return skip + rest.len();
                }
            }
        }
        let room = max.saturating_sub(d.buf.len());
        let window = rest.get(..rest.len().min(room)).unwrap_or(rest);
        if d.buf.is_empty() {
            // Most heads arrive whole and in the common shape: read in one pass.
            let plain = match cx.flow {
                Flow::ClientToServer => plain::request(window, cx.keep),
                Flow::ServerToClient => plain::response(window, cx.keep),
            };
            if let Some((head, end)) = plain {
                self.on_head(cx.flow, head, false, out);
                return skip + end;
            }
        }
        match parse::find_head_end(parse::tail2(&d.buf), window) {
            Some(end) => {
                let head = window.get(..end).unwrap_or(window);
                if d.buf.is_empty() {
                    self.complete_head(cx, head, out);
                } else {
                    // The buffer is dropped with the head: idle connections hold none.
                    let mut buf = std::mem::take(&mut d.buf);
                    buf.extend_from_slice(head);
                    self.complete_head(cx, &buf, out);
                }
                skip + end
            }
            None if rest.len() >= room => {
                // No end of head within max_head_bytes.
                out.push(Message::Anomaly(Anomaly::HeadTooLarge));
                let mut buf = std::mem::take(&mut d.buf);
                buf.extend_from_slice(window);
                self.salvage(cx.flow, &buf, cx.keep, out);
                let d = self.dir_mut(cx.flow);
                d.reset_head();
                d.state = State::Lost;
                skip + rest.len()
            }
            None => {
                d.push_head_bytes(rest, max);
                skip + rest.len()
            }
        }
    }

    /// The first bytes of a message do not look like HTTP.
    fn bad_signature(&mut self, flow: Flow, out: &mut Vec<Message>) {
        let d = self.dir_mut(flow);
        d.reset_head();
        d.buf = Vec::new();
        if d.seen_http {
            d.state = State::Lost;
            out.push(Message::Anomaly(Anomaly::ParseError("not a message start")));
        } else {
            d.state = State::Ignored;
            d.upgrade_seq = None;
            out.push(Message::Anomaly(Anomaly::NotHttp));
        }
    }

    /// A complete head (terminating empty line included) was received.
    fn complete_head(&mut self, cx: &Cx<'_>, head: &[u8], out: &mut Vec<Message>) {
        let parsed = match cx.flow {
            Flow::ClientToServer => parse::parse_request(head, cx.keep),
            Flow::ServerToClient => parse::parse_response(head, cx.keep),
        };
        match parsed {
            Ok(p) => self.on_head(cx.flow, p, false, out),
            Err(reason) => {
                out.push(Message::Anomaly(Anomaly::ParseError(reason)));
                let d = self.dir_mut(cx.flow);
                d.reset_head();
                d.state = State::Lost;
            }
        }
    }

    /// Parses the complete lines of an incomplete head and reports it as
    /// truncated. The caller sets the direction's state afterwards.
    fn salvage(
        &mut self,
        flow: Flow,
        bytes: &[u8],
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    ) {
        let Some(nl) = bytes.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let lines = bytes.get(..=nl).unwrap_or(bytes);
        let mut head = Vec::with_capacity(lines.len() + 2);
        head.extend_from_slice(lines);
        head.extend_from_slice(b"\r\n");
        let parsed = match flow {
            Flow::ClientToServer => parse::parse_request(&head, keep),
            Flow::ServerToClient => parse::parse_response(&head, keep),
        };
        if let Ok(p) = parsed {
            self.on_head(flow, p, true, out);
        }
    }

    fn on_head(&mut self, flow: Flow, p: ParsedHead, truncated: bool, out: &mut Vec<Message>) {
        match flow {
            Flow::ClientToServer => self.on_request(p, truncated, out),
            Flow::ServerToClient => self.on_response(p, truncated, out),
        }
    }

    fn on_request(&mut self, p: ParsedHead, truncated: bool, out: &mut Vec<Message>) {
        let d = &mut self.req;
        let (ts_ns, tid) = (d.head_ts, d.head_tid);
        d.reset_head();
        let is_connect = p.method.eq_ignore_ascii_case("CONNECT");
        let head = Arc::new(RequestHead {
            method: p.method,
            path: p.path,
            version: p.version,
            headers: p.headers,
            ts_ns,
            tid,
            truncated,
            protocol: Protocol::Http1,
            stream_id: None,
            headers_known: HeadersKnown::Exact,
            inferred: false,
        });
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        while self.pending.len() >= self.limits.max_pending {
            let Some((old_seq, request)) = self.pending.pop_front() else {
                break;
            };
            out.push(Message::Anomaly(Anomaly::TooManyPending));
            out.push(Message::Exchange {
                seq: old_seq,
                request,
                response: None,
            });
        }
        self.pending.push_back((seq, Arc::clone(&head)));
        out.push(Message::RequestStarted { seq, head });

        if truncated {
            self.req.state = State::Lost;
            return;
        }
        // A request without length has no body; TE other than chunked is an error.
        let body = match (p.transfer_encoding, p.content_length) {
            (TransferEncoding::Chunked, _) => Some(Body::Chunked(Chunked::START)),
            (TransferEncoding::Other, _) | (TransferEncoding::Absent, ContentLength::Invalid) => {
                out.push(Message::Anomaly(Anomaly::ParseError(
                    "invalid request body framing",
                )));
                self.req.state = State::Lost;
                return;
            }
            (TransferEncoding::Absent, ContentLength::Len(n)) if n > 0 => Some(Body::Length(n)),
            (TransferEncoding::Absent, _) => None,
        };
        self.req.upgrade_seq = if p.upgrade || is_connect {
            Some(seq)
        } else {
            None
        };
        match body {
            Some(b) => self.req.state = State::Body(b),
            None => self.message_done(Flow::ClientToServer),
        }
    }

    fn on_response(&mut self, p: ParsedHead, truncated: bool, out: &mut Vec<Message>) {
        let d = &mut self.resp;
        let (ts_ns, tid) = (d.head_ts, d.head_tid);
        d.reset_head();
        let status = p.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim response: not paired, no body, the request stays pending.
            self.resp.state = if truncated { State::Lost } else { State::Head };
            return;
        }
        // A response cannot answer a request whose first byte came after it.
        let paired = match self.pending.front() {
            Some((_, r)) if r.ts_ns <= ts_ns => self.pending.pop_front(),
            _ => None,
        };
        let (is_head, is_connect) = match &paired {
            Some((_, r)) => (
                r.method.eq_ignore_ascii_case("HEAD"),
                r.method.eq_ignore_ascii_case("CONNECT"),
            ),
            None => (false, false),
        };
        let switching = status == 101 || (is_connect && (200..300).contains(&status));
        let response = ResponseHead {
            status: Some(status),
            grpc_status: None,
            headers: p.headers,
            ts_ns,
            tid,
            truncated,
        };
        match paired {
            Some((seq, request)) if status == 101 && p.upgrade_h2c => {
                // HTTP/2 from here on, both ways; the request's response comes on stream 1.
                self.switched_to_h2 = Some((seq, request));
            }
            Some((seq, request)) => {
                out.push(Message::Exchange {
                    seq,
                    request,
                    response: Some(response),
                });
                if self.req.upgrade_seq == Some(seq) {
                    self.req.upgrade_seq = None;
                }
                if let State::Suspended { seq: s, saw_bytes } = self.req.state {
                    if s == seq && !switching {
                        // The upgrade was refused: the request side stays HTTP.
                        self.req.state = if saw_bytes {
                            out.push(Message::Anomaly(Anomaly::LostSync));
                            State::Lost
                        } else {
                            State::Head
                        };
                    }
                }
            }
            None => out.push(Message::Anomaly(Anomaly::ResponseWithoutRequest)),
        }
        if switching {
            // The connection stops being HTTP in both directions.
            for d in [&mut self.req, &mut self.resp] {
                d.reset_head();
                d.buf = Vec::new();
                d.upgrade_seq = None;
                d.state = State::Ignored;
            }
            return;
        }
        if truncated {
            self.resp.state = State::Lost;
            return;
        }
        let body = if is_head || status == 204 || status == 304 {
            None
        } else {
            match (p.transfer_encoding, p.content_length) {
                (TransferEncoding::Chunked, _) => Some(Body::Chunked(Chunked::START)),
                (TransferEncoding::Other, _) => Some(Body::UntilClose),
                (TransferEncoding::Absent, ContentLength::Invalid) => {
                    out.push(Message::Anomaly(Anomaly::ParseError(
                        "invalid content-length",
                    )));
                    self.resp.state = State::Lost;
                    return;
                }
                (TransferEncoding::Absent, ContentLength::Len(0)) => None,
                (TransferEncoding::Absent, ContentLength::Len(n)) => Some(Body::Length(n)),
                (TransferEncoding::Absent, ContentLength::Absent) => Some(Body::UntilClose),
            }
        };
        match body {
            Some(b) => self.resp.state = State::Body(b),
            None => self.message_done(Flow::ServerToClient),
        }
    }

    /// `len` uncaptured bytes follow the captured ones.
    fn gap(&mut self, cx: &Cx<'_>, len: u64, out: &mut Vec<Message>) {
        let mut len = len;
        // A gap can finish at most one Content-Length body, after which the
        // direction is at a head (lost) or suspended: two rounds suffice.
        for _ in 0..4 {
            if len == 0 {
                return;
            }
            match self.dir(cx.flow).state {
                State::Ignored | State::Body(Body::UntilClose) => return,
                State::Lost => {
                    out.push(self.uninspected(cx.flow, len));
                    return;
                }
                State::Suspended { seq, .. } => {
                    self.dir_mut(cx.flow).state = State::Suspended {
                        seq,
                        saw_bytes: true,
                    };
                    return;
                }
                State::Body(Body::Length(n)) => {
                    if len < n {
                        self.dir_mut(cx.flow).state = State::Body(Body::Length(n - len));
                        return;
                    }
                    len -= n;
                    self.message_done(cx.flow);
                }
                State::Body(Body::Chunked(mut c)) => {
                    if c.gap(len) {
                        self.dir_mut(cx.flow).state = State::Body(Body::Chunked(c));
                    } else {
                        out.push(Message::Anomaly(Anomaly::LostSync));
                        out.push(self.uninspected(cx.flow, len));
                        self.dir_mut(cx.flow).state = State::Lost;
                    }
                    return;
                }
                State::Head => {
                    let d = self.dir_mut(cx.flow);
                    if d.head_started && d.sig_ok {
                        // Part of a head was captured, the rest is missing.
                        out.push(Message::Anomaly(Anomaly::HeadTruncated));
                        let buf = std::mem::take(&mut d.buf);
                        self.salvage(cx.flow, &buf, cx.keep, out);
                    }
                    out.push(Message::Anomaly(Anomaly::LostSync));
                    out.push(self.uninspected(cx.flow, len));
                    let d = self.dir_mut(cx.flow);
                    d.reset_head();
                    d.state = State::Lost;
                    return;
                }
            }
        }
    }
}

impl ProtocolParser for HttpConn {
    /// Feeds one chunk of one direction.
    fn on_data(
        &mut self,
        flow: Flow,
        chunk: Chunk<'_>,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<Message>,
    ) {
        let cx = Cx {
            flow,
            ts: chunk.ts_ns,
            tid: chunk.tid,
            keep,
        };
        if flow == Flow::ClientToServer && matches!(self.req.state, State::Head | State::Body(_)) {
            self.request_bytes = self.request_bytes.saturating_add(chunk.data.len() as u64);
        }
        self.feed(&cx, chunk.data, out);
        let gap = chunk.real_len.saturating_sub(chunk.data.len() as u64);
        if gap > 0 {
            self.gap(&cx, gap, out);
        }
    }

    /// Connection closed: ends a read-until-close response body, then emits
    /// `Exchange { response: None }` for every request still unanswered.
    /// Later data is ignored.
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Message>) {
        let _ = ts_ns;
        for d in [&mut self.req, &mut self.resp] {
            d.reset_head();
            d.buf = Vec::new();
            d.upgrade_seq = None;
            d.state = State::Ignored;
        }
        self.flush(out);
    }

    /// Emits `Exchange { response: None }` for every request still
    /// unanswered (e.g. when evicting an idle connection). Parsing state is kept.
    fn flush(&mut self, out: &mut Vec<Message>) {
        for (seq, request) in self.pending.drain(..) {
            out.push(Message::Exchange {
                seq,
                request,
                response: None,
            });
        }
    }

    /// True once neither direction can produce anything any more (both found
    /// not to be HTTP, upgraded to another protocol, or closed) and no request
    /// is pending: the caller may drop the connection's state.
    fn is_dead(&self) -> bool {
        self.req.state == State::Ignored
            && self.resp.state == State::Ignored
            && self.pending.is_empty()
    }
}
