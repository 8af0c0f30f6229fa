//! HTTP/2 framing (RFC 9113 §4): frame headers, and the reassembly of one direction's frames
//! from captured chunks that may split them anywhere and may miss bytes.

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Frames longer than this are not taken for HTTP/2 when recognising a connection from its
/// middle. Peers send at most 16 KiB unless the receiver allowed more, and the largest limit
/// in common use is 1 MiB (Go); a TLS record read as a frame header has a length of at least
/// 0x140300 (its content type 0x14..=0x17, then 0x03), so it is never taken for a frame.
pub const MAX_SNIFFED_LEN: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The stream identifier (the reserved bit is in `reserved`).
    pub stream: u32,
    /// The reserved bit, which senders must leave unset.
    pub reserved: bool,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> FrameHeader {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *b;
        let stream = u32::from_be_bytes([s0, s1, s2, s3]);
        FrameHeader {
            len: u32::from_be_bytes([0, l0, l1, l2]),
            kind,
            flags,
            stream: stream & 0x7fff_ffff,
            reserved: stream & 0x8000_0000 != 0,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// True when the header is one a conforming peer sends: a known type, only that type's
    /// flags, the stream-id and length rules of RFC 9113 §6, and a length within
    /// [`MAX_SNIFFED_LEN`]. What recognises frames without the connection preface.
    pub fn plausible(&self) -> bool {
        use kind::*;
        if self.reserved || self.len > MAX_SNIFFED_LEN {
            return false;
        }
        let on_stream = self.stream != 0;
        let (flags_allowed, shape_ok) = match self.kind {
            DATA => (flag::END_STREAM | flag::PADDED, on_stream),
            HEADERS => (
                flag::END_STREAM | flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
                on_stream,
            ),
            PRIORITY => (0, on_stream && self.len == 5),
            RST_STREAM => (0, on_stream && self.len == 4),
            SETTINGS => (
                flag::ACK,
                !on_stream && self.len.is_multiple_of(6) && (!self.has(flag::ACK) || self.len == 0),
            ),
            PUSH_PROMISE => (flag::END_HEADERS | flag::PADDED, on_stream && self.len >= 4),
            PING => (flag::ACK, !on_stream && self.len == 8),
            GOAWAY => (0, !on_stream && self.len >= 8),
            WINDOW_UPDATE => (0, self.len == 4),
            CONTINUATION => (flag::END_HEADERS, on_stream),
            _ => (0, false),
        };
        shape_ok && self.flags & !flags_allowed == 0
    }

    /// Whether the reader keeps this frame's payload: header blocks and the frames that end
    /// streams. DATA and the rest are skipped by length.
    fn wanted(&self) -> bool {
        matches!(
            self.kind,
            kind::HEADERS
                | kind::CONTINUATION
                | kind::PUSH_PROMISE
                | kind::RST_STREAM
                | kind::GOAWAY
        )
    }
}

/// The first frame header in `bytes`, when there are enough bytes.
pub fn first_header(bytes: &[u8]) -> Option<FrameHeader> {
    let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    Some(FrameHeader::parse(h))
}

/// True when `bytes` start with a plausible frame and every further frame header they hold
/// is plausible too (the last frame may run past their end).
pub fn looks_like_frames(bytes: &[u8]) -> bool {
    let mut pos = 0usize;
    let mut frames = 0;
    while let Some(h) = bytes.get(pos..).and_then(first_header) {
        if !h.plausible() {
            return false;
        }
        frames += 1;
        pos = pos
            .saturating_add(HEADER_LEN)
            .saturating_add(h.len as usize);
    }
    frames > 0
}

/// A frame's payload as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The whole payload (frames the reader keeps).
    Bytes(&'a [u8]),
    /// Not kept: the frame type's payload is of no use (DATA, SETTINGS...).
    Skipped,
    /// Some of its bytes were not captured.
    Lost,
    /// Larger than the reader's buffer.
    TooLarge,
}

/// What the reader delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEvent<'a> {
    /// A whole frame; `ts_ns`/`tid` are those of the chunk holding its first byte. Its
    /// payload ends at stream offset `end` (see [`Reader::offset`]).
    Frame {
        header: FrameHeader,
        payload: Payload<'a>,
        ts_ns: u64,
        tid: u32,
        end: u64,
    },
    /// The client preface was seen at the start of the direction.
    Preface,
    /// The frame boundaries were lost: uncaptured bytes held a frame header, or the bytes
    /// stopped being frames, from stream offset `at` on. The reader skips bytes until a
    /// chunk starts with a frame.
    LostSync { at: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Client direction before its first byte: the preface may come (`matched` bytes so far).
    Preface { matched: usize },
    /// Reading a frame header (`have` bytes in `Reader::header`). `checked`: the header must
    /// be plausible (the first after starting mid-connection or after losing sync).
    Header { have: usize, checked: bool },
    /// Inside a payload: `remaining` bytes to go; `lost` once some were not captured.
    Payload {
        header: FrameHeader,
        remaining: u32,
        lost: bool,
    },
    /// Position unknown: waiting for a chunk that starts with plausible frames.
    Lost,
}

/// The frame reader of one direction.
#[derive(Debug, Clone)]
pub struct Reader {
    state: State,
    header: [u8; HEADER_LEN],
    /// The kept payload of the current frame, when it spans chunks.
    buf: Vec<u8>,
    /// Largest payload kept.
    max_payload: usize,
    frame_ts: u64,
    frame_tid: u32,
    /// Stream offset of the next byte, captured or not (what a recording masks by).
    pos: u64,
}

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Reader {
    /// `client`: the direction that may start with the connection preface.
    pub fn new(client: bool, max_payload: usize) -> Reader {
        Reader {
            state: if client {
                State::Preface { matched: 0 }
            } else {
                State::Header {
                    have: 0,
                    checked: true,
                }
            },
            header: [0; HEADER_LEN],
            buf: Vec::new(),
            max_payload,
            frame_ts: 0,
            frame_tid: 0,
            pos: 0,
        }
    }

    /// Stream offset of the next byte: every byte fed before it, captured or not.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Waiting for a chunk that starts with frames: what is fed until then is skipped.
    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// The frame whose payload is being read, when the reader is inside one, and the stream
    /// offset where that payload started.
    pub fn in_payload(&self) -> Option<(FrameHeader, u64)> {
        match self.state {
            State::Payload {
                header, remaining, ..
            } => Some((header, self.pos - u64::from(header.len - remaining))),
            _ => None,
        }
    }

    /// Bytes buffered (for bounds tests).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds captured bytes followed by `gap` bytes that were not captured.
    pub fn feed(
        &mut self,
        data: &[u8],
        gap: u64,
        ts_ns: u64,
        tid: u32,
        sink: &mut dyn FnMut(ReadEvent<'_>),
    ) {
        if self.state == State::Lost && looks_like_frames(data) {
            self.state = State::Header {
                have: 0,
                checked: false,
            };
        }
        let mut pos = 0usize;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            let n = self.step(rest, ts_ns, tid, sink);
            pos += n;
            self.pos += n as u64;
        }
        if gap > 0 {
            self.gap(gap, sink);
            self.pos += gap;
        }
    }

    /// Consumes a prefix of `rest` (at least one byte).
    fn step(
        &mut self,
        rest: &[u8],
        ts_ns: u64,
        tid: u32,
        sink: &mut dyn FnMut(ReadEvent<'_>),
    ) -> usize {
        match self.state {
            State::Lost => rest.len(),
            State::Preface { matched } => {
                let want = PREFACE.get(matched..).unwrap_or_default();
                let n = want.len().min(rest.len());
                if rest.get(..n) == want.get(..n) {
                    if matched + n == PREFACE.len() {
                        self.state = State::Header {
                            have: 0,
                            checked: false,
                        };
                        sink(ReadEvent::Preface);
                    } else {
                        self.state = State::Preface {
                            matched: matched + n,
                        };
                    }
                    n
                } else if matched == 0 {
                    // No preface: a connection seen from its middle.
                    self.state = State::Header {
                        have: 0,
                        checked: true,
                    };
                    0
                } else {
                    self.lose(sink);
                    rest.len()
                }
            }
            State::Header { have, checked } => {
                if have == 0 {
                    self.frame_ts = ts_ns;
                    self.frame_tid = tid;
                }
                let n = (HEADER_LEN - have).min(rest.len());
                if let (Some(dst), Some(src)) = (self.header.get_mut(have..have + n), rest.get(..n))
                {
                    dst.copy_from_slice(src);
                }
                if have + n < HEADER_LEN {
                    self.state = State::Header {
                        have: have + n,
                        checked,
                    };
                    return n;
                }
                let header = FrameHeader::parse(&self.header);
                if checked && !header.plausible() {
                    self.lose(sink);
                    return rest.len();
                }
                self.state = State::Payload {
                    header,
                    remaining: header.len,
                    lost: false,
                };
                self.buf.clear();
                if header.len == 0 {
                    self.finish(&[], self.pos + n as u64, sink);
                }
                n
            }
            State::Payload {
                header,
                remaining,
                lost,
            } => {
                let n = (remaining as usize).min(rest.len());
                let bytes = rest.get(..n).unwrap_or_default();
                let whole = remaining == header.len && n == remaining as usize;
                let remaining = remaining - n as u32;
                if whole {
                    // The whole payload is in this chunk: no copy.
                    self.state = State::Payload {
                        header,
                        remaining,
                        lost,
                    };
                    self.finish(bytes, self.pos + n as u64, sink);
                    return n;
                }
                if header.wanted() && !lost && self.buf.len() + n <= self.max_payload {
                    self.buf.extend_from_slice(bytes);
                }
                self.state = State::Payload {
                    header,
                    remaining,
                    lost,
                };
                if remaining == 0 {
                    let buf = std::mem::take(&mut self.buf);
                    self.finish(&buf, self.pos + n as u64, sink);
                    self.buf = buf;
                    self.buf.clear();
                }
                n
            }
        }
    }

    /// The current frame's payload is complete (`bytes` when it is kept and whole); it ends
    /// at stream offset `end`.
    fn finish(&mut self, bytes: &[u8], end: u64, sink: &mut dyn FnMut(ReadEvent<'_>)) {
        let State::Payload { header, lost, .. } = self.state else {
            return;
        };
        let payload = if !header.wanted() {
            Payload::Skipped
        } else if lost {
            Payload::Lost
        } else if header.len as usize > self.max_payload {
            Payload::TooLarge
        } else {
            Payload::Bytes(bytes)
        };
        sink(ReadEvent::Frame {
            header,
            payload,
            ts_ns: self.frame_ts,
            tid: self.frame_tid,
            end,
        });
        self.state = State::Header {
            have: 0,
            checked: false,
        };
        if self.buf.capacity() > self.max_payload.min(KEEP_CAPACITY) {
            self.buf = Vec::new();
        }
    }

    /// `len` bytes were not captured.
    fn gap(&mut self, len: u64, sink: &mut dyn FnMut(ReadEvent<'_>)) {
        match self.state {
            State::Lost => {}
            State::Payload {
                header, remaining, ..
            } if len <= u64::from(remaining) => {
                self.state = State::Payload {
                    header,
                    remaining: remaining - len as u32,
                    lost: true,
                };
                self.buf.clear();
                if len == u64::from(remaining) {
                    self.finish(&[], self.pos + len, sink);
                }
            }
            State::Payload {
                header, remaining, ..
            } => {
                // The frame ends inside the gap, and so does the next frame header.
                self.state = State::Payload {
                    header,
                    remaining: 0,
                    lost: true,
                };
                self.finish(&[], self.pos + u64::from(remaining), sink);
                self.lose(sink);
            }
            State::Preface { .. } | State::Header { .. } => self.lose(sink),
        }
    }

    /// Frame boundaries are lost from `self.pos` (the start of the bytes being read, or of
    /// the gap).
    fn lose(&mut self, sink: &mut dyn FnMut(ReadEvent<'_>)) {
        self.state = State::Lost;
        self.buf = Vec::new();
        sink(ReadEvent::LostSync { at: self.pos });
    }

    /// The direction ended (connection closed): nothing more is read.
    pub fn close(&mut self) {
        self.state = State::Lost;
        self.buf = Vec::new();
    }
}

/// A payload buffer that grew beyond this is freed after its frame.
const KEEP_CAPACITY: usize = 16384;
