//! Both ends of one connection on this host: what the reader decoded, for the writer.
//!
//! HTTP/2 compresses each direction's headers against a table only its two ends share (HPACK),
//! so a writer whose bytes the kernel could not all hand over (a vectored write past the
//! inspected iovecs, a lost record) loses its table, and its later requests are `unknown`.
//! When both ends run on this host, the server read the very same bytes, and read them whole:
//! its decode of a stream is the client's request. [`PeerHeads`] keeps the server side's exact
//! request heads, by connection 4-tuple and stream, until the client's request on that stream
//! ends and asks for it (the server reads a request before it answers, so it is always there
//! first).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::mem::{self, Endpoint};
use crate::protocol::{HeadersKnown, Protocol, RequestHead};

/// Heads kept at once; the oldest go first. A client's call ends within the time this many
/// other HTTP/2 calls take to start, or it keeps what it decoded itself.
pub const MAX_KEPT: usize = 1024;

/// A stream of one connection, as its server sees it: (local, peer, stream id).
type StreamKey = (Endpoint, Endpoint, u32);

#[derive(Debug, Default)]
pub struct PeerHeads {
    heads: mem::FastMap<StreamKey, Arc<RequestHead>>,
    /// Insertion order, for eviction; may name keys already taken.
    order: VecDeque<StreamKey>,
}

impl PeerHeads {
    /// The server `(local, peer)` read request `head` (kept when exact and on a stream).
    pub fn server_read(&mut self, local: Endpoint, peer: Endpoint, head: &Arc<RequestHead>) {
        let Some(stream) = head.stream_id else {
            return;
        };
        if head.headers_known != HeadersKnown::Exact || head.truncated {
            return;
        }
        while self.order.len() >= MAX_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.heads.remove(&old);
            }
        }
        let key = (local, peer, stream);
        self.heads.insert(key, Arc::clone(head));
        self.order.push_back(key);
    }

    /// The head the server read of the request a client `(local, peer)` wrote on `stream`
    /// over a connection it followed since `conn_ts_ns`: taken, as one request has one reader.
    /// A head read before that time belongs to an earlier connection with the same endpoints.
    pub fn take_for_client(
        &mut self,
        local: Endpoint,
        peer: Endpoint,
        stream: u32,
        conn_ts_ns: u64,
    ) -> Option<Arc<RequestHead>> {
        let key = (peer, local, stream);
        let head = self.heads.remove(&key)?;
        if self.heads.is_empty() {
            self.order.clear();
        }
        (head.ts_ns >= conn_ts_ns).then_some(head)
    }

    /// Heads kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heads.len()
    }
}

/// The request as written, completed by what its reader decoded: the reader's method, path
/// and headers wherever the writer's own decode did not know them. The writer's time, thread
/// and whether it was inferred stay.
pub fn completed(written: &RequestHead, read: &RequestHead) -> RequestHead {
    let pick = |own: &Arc<str>, theirs: &Arc<str>| {
        if own.is_empty() {
            theirs.clone()
        } else {
            own.clone()
        }
    };
    RequestHead {
        method: pick(&written.method, &read.method),
        path: pick(&written.path, &read.path),
        headers: read.headers.clone(),
        headers_known: HeadersKnown::Exact,
        truncated: false,
        protocol: if written.protocol == Protocol::Grpc {
            Protocol::Grpc
        } else {
            read.protocol
        },
        ..written.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Endpoint {
        std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()
    }

    fn head(stream: u32, known: HeadersKnown, ts_ns: u64) -> Arc<RequestHead> {
        Arc::new(RequestHead {
            method: "POST".into(),
            path: "/chain.Back/Drop".into(),
            version: 0,
            headers: vec![("x-request-id".into(), "r1".into())],
            ts_ns,
            tid: 7,
            truncated: false,
            protocol: Protocol::Grpc,
            stream_id: Some(stream),
            headers_known: known,
            inferred: false,
        })
    }

    const SERVER: u16 = 50051;
    const CLIENT: u16 = 40000;

    #[test]
    fn the_client_takes_what_its_server_read_on_the_same_stream_once() {
        let mut p = PeerHeads::default();
        p.server_read(
            addr(SERVER),
            addr(CLIENT),
            &head(3, HeadersKnown::Exact, 100),
        );
        p.server_read(
            addr(SERVER),
            addr(CLIENT),
            &head(5, HeadersKnown::Exact, 110),
        );
        // Another stream, another connection, the server's own view: nothing.
        assert!(p
            .take_for_client(addr(CLIENT), addr(SERVER), 7, 0)
            .is_none());
        assert!(p
            .take_for_client(addr(CLIENT + 1), addr(SERVER), 3, 0)
            .is_none());
        assert!(p
            .take_for_client(addr(SERVER), addr(CLIENT), 3, 0)
            .is_none());
        let got = p
            .take_for_client(addr(CLIENT), addr(SERVER), 3, 50)
            .unwrap();
        assert_eq!(got.stream_id, Some(3));
        assert!(p
            .take_for_client(addr(CLIENT), addr(SERVER), 3, 50)
            .is_none());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn only_exact_whole_heads_are_kept_and_never_for_a_later_connection() {
        let mut p = PeerHeads::default();
        p.server_read(
            addr(SERVER),
            addr(CLIENT),
            &head(1, HeadersKnown::Unknown, 100),
        );
        p.server_read(
            addr(SERVER),
            addr(CLIENT),
            &head(3, HeadersKnown::ByValue, 100),
        );
        let mut cut = (*head(5, HeadersKnown::Exact, 100)).clone();
        cut.truncated = true;
        p.server_read(addr(SERVER), addr(CLIENT), &Arc::new(cut));
        let mut http1 = (*head(5, HeadersKnown::Exact, 100)).clone();
        http1.stream_id = None;
        p.server_read(addr(SERVER), addr(CLIENT), &Arc::new(http1));
        assert_eq!(p.len(), 0);
        // Read at 100 on a connection the client followed from 200: an earlier connection's.
        p.server_read(
            addr(SERVER),
            addr(CLIENT),
            &head(7, HeadersKnown::Exact, 100),
        );
        assert!(p
            .take_for_client(addr(CLIENT), addr(SERVER), 7, 200)
            .is_none());
    }

    #[test]
    fn kept_heads_are_bounded_oldest_first() {
        let mut p = PeerHeads::default();
        for i in 0..(MAX_KEPT as u32 + 10) {
            p.server_read(
                addr(SERVER),
                addr(CLIENT),
                &head(2 * i + 1, HeadersKnown::Exact, 1),
            );
        }
        assert_eq!(p.len(), MAX_KEPT);
        assert!(p
            .take_for_client(addr(CLIENT), addr(SERVER), 1, 0)
            .is_none());
        let newest = 2 * (MAX_KEPT as u32 + 9) + 1;
        assert!(p
            .take_for_client(addr(CLIENT), addr(SERVER), newest, 0)
            .is_some());
    }

    #[test]
    fn completed_keeps_what_the_writer_knew_and_takes_the_rest() {
        let mut written = (*head(3, HeadersKnown::Unknown, 500)).clone();
        written.method = "POST".into();
        written.path = Arc::default();
        written.headers = Vec::new();
        written.truncated = true;
        written.protocol = Protocol::H2;
        written.tid = 99;
        let read = head(3, HeadersKnown::Exact, 600);
        let c = completed(&written, &read);
        assert_eq!(
            (
                c.method.as_ref(),
                c.path.as_ref(),
                c.headers_known,
                c.truncated
            ),
            ("POST", "/chain.Back/Drop", HeadersKnown::Exact, false)
        );
        assert_eq!(c.headers, read.headers);
        assert_eq!((c.ts_ns, c.tid, c.protocol), (500, 99, Protocol::Grpc));
    }
}
