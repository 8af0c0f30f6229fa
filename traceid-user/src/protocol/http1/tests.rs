use super::*;
use crate::test_util::Rng;
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Fixtures: bytes as sent by curl 8.x and nginx 1.24.
// ---------------------------------------------------------------------------

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const CURL_GET: &[u8] = b"GET /api/users?id=42&sort=asc HTTP/1.1\r\n\
Host: example.com:8080\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
\r\n";

/// Body: `{"status":"ok"}\n` (16 bytes).
const NGINX_200: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.24.0 (Ubuntu)\r\n\
Date: Tue, 14 May 2024 10:00:00 GMT\r\n\
Content-Type: application/json\r\n\
Content-Length: 16\r\n\
Connection: keep-alive\r\n\
\r\n\
{\"status\":\"ok\"}\n";

/// nginx chunked response (gzip off, proxied upstream), with a chunk extension.
const NGINX_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.24.0\r\n\
Date: Tue, 14 May 2024 10:00:01 GMT\r\n\
Content-Type: text/plain\r\n\
Transfer-Encoding: chunked\r\n\
Connection: keep-alive\r\n\
\r\n\
1a\r\nabcdefghijklmnopqrstuvwxyz\r\n\
5;name=value\r\nhello\r\n\
A\r\n0123456789\r\n\
0\r\n\
\r\n";

const NGINX_CHUNKED_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.24.0\r\n\
Transfer-Encoding: chunked\r\n\
Trailer: Server-Timing\r\n\
\r\n\
4\r\nWiki\r\n\
7\r\npedia i\r\n\
0\r\n\
Server-Timing: db;dur=53\r\n\
X-Checksum: 0cc175b9c0f1b6a8\r\n\
\r\n";

const NGINX_404: &[u8] = b"HTTP/1.1 404 Not Found\r\n\
Server: nginx/1.24.0\r\n\
Content-Type: text/html\r\n\
Content-Length: 153\r\n\
Connection: keep-alive\r\n\
\r\n\
<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n\
<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n\
</body>\r\n</html>\r\n";

const TLS_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x7a, 0x1c, 0x55, 0x9e, 0x20,
    0xd3, 0x4b, 0x0f, 0x8e, 0x11, 0x42, 0x9a, 0xc7, 0x6d, 0x03, 0x00, 0x5f, 0xe2, 0x81, 0x9c, 0x47,
    0x10, 0x2e, 0x00, 0x3e, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f,
];
const TLS_SERVER_HELLO: &[u8] = &[
    0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03, 0x9b, 0x44, 0x01, 0xee, 0x2a,
];

fn get(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn keep_tp(name: &str) -> bool {
    name.eq_ignore_ascii_case("traceparent")
}

fn keep_all(_: &str) -> bool {
    true
}

const C2S: Flow = Flow::ClientToServer;
const S2C: Flow = Flow::ServerToClient;

/// Test harness: one connection, timestamps increasing by 1 per chunk.
struct T {
    c: HttpConn,
    ev: Vec<Message>,
    ts: u64,
    keep: fn(&str) -> bool,
}

impl T {
    fn new() -> Self {
        Self::with(Limits::default())
    }

    fn with(limits: Limits) -> Self {
        T {
            c: HttpConn::new(limits),
            ev: Vec::new(),
            ts: 0,
            keep: keep_tp,
        }
    }

    fn send(&mut self, flow: Flow, data: &[u8]) {
        self.send_real(flow, data, data.len() as u64);
    }

    fn send_real(&mut self, flow: Flow, data: &[u8], real_len: u64) {
        self.ts += 1;
        let chunk = Chunk {
            data,
            real_len,
            ts_ns: self.ts,
            tid: 100 + self.ts as u32,
        };
        let keep = self.keep;
        self.c.on_data(flow, chunk, &keep, &mut self.ev);
        self.check_bounds();
    }

    fn check_bounds(&self) {
        let max = self.c.limits.max_head_bytes;
        for d in [&self.c.req, &self.c.resp] {
            assert!(d.buf.len() <= max, "buffer {} > {}", d.buf.len(), max);
            assert!(d.buf.capacity() <= max, "capacity {}", d.buf.capacity());
            // A buffer exists only while a head is incomplete.
            if !d.head_started {
                assert_eq!(d.buf.capacity(), 0, "buffer kept between heads");
            }
        }
        assert!(self.c.pending() <= self.c.limits.max_pending);
    }

    fn req(&mut self, data: &[u8]) {
        self.send(C2S, data);
    }

    fn resp(&mut self, data: &[u8]) {
        self.send(S2C, data);
    }

    fn close(&mut self) {
        self.ts += 1;
        self.c.on_close(self.ts, &mut self.ev);
    }

    fn anomalies(&self) -> Vec<Anomaly> {
        self.ev
            .iter()
            .filter_map(|e| match e {
                Message::Anomaly(a) => Some(*a),
                _ => None,
            })
            .collect()
    }

    fn started(&self) -> Vec<(u64, Arc<RequestHead>)> {
        self.ev
            .iter()
            .filter_map(|e| match e {
                Message::RequestStarted { seq, head } => Some((*seq, Arc::clone(head))),
                _ => None,
            })
            .collect()
    }

    /// (seq, method, path, status)
    fn exchanges(&self) -> Vec<(u64, String, String, Option<u16>)> {
        self.ev
            .iter()
            .filter_map(|e| match e {
                Message::Exchange {
                    seq,
                    request,
                    response,
                } => Some((
                    *seq,
                    request.method.to_string(),
                    request.path.to_string(),
                    response.as_ref().and_then(|r| r.status),
                )),
                _ => None,
            })
            .collect()
    }

    fn responses(&self) -> Vec<ResponseHead> {
        self.ev
            .iter()
            .filter_map(|e| match e {
                Message::Exchange {
                    response: Some(r), ..
                } => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

fn ex(
    seq: u64,
    method: &str,
    path: &str,
    status: Option<u16>,
) -> (u64, String, String, Option<u16>) {
    (seq, method.to_owned(), path.to_owned(), status)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------
// Basic exchange and head reassembly
// ---------------------------------------------------------------------------

#[test]
fn fixtures_content_length_is_consistent() {
    for r in [NGINX_200, NGINX_404] {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let mut p = httparse::Response::new(&mut hs);
        let n = match p.parse(r) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}"),
        };
        let cl = p
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value);
        let cl: usize = std::str::from_utf8(cl.unwrap()).unwrap().parse().unwrap();
        assert_eq!(r.len() - n, cl);
    }
}

#[test]
fn get_200_exchange() {
    let mut t = T::new();
    t.req(CURL_GET);
    let expected = RequestHead {
        method: "GET".into(),
        path: "/api/users".into(),
        version: 1,
        headers: vec![("traceparent".into(), TP.into())],
        ts_ns: 1,
        tid: 101,
        truncated: false,
        protocol: Protocol::Http1,
        stream_id: None,
        headers_known: HeadersKnown::Exact,
        inferred: false,
    };
    assert_eq!(
        t.ev,
        vec![Message::RequestStarted {
            seq: 0,
            head: Arc::new(expected.clone())
        }]
    );
    assert_eq!(t.c.pending(), 1);
    t.resp(NGINX_200);
    assert_eq!(t.ev.len(), 2);
    assert_eq!(
        t.ev[1],
        Message::Exchange {
            seq: 0,
            request: Arc::new(expected),
            response: Some(ResponseHead {
                status: Some(200),
                grpc_status: None,
                headers: vec![],
                ts_ns: 2,
                tid: 102,
                truncated: false
            }),
        }
    );
    assert_eq!(t.c.pending(), 0);
    assert_eq!(t.c.buffered_bytes(), 0);
    assert!(t.anomalies().is_empty());
    assert!(!t.c.is_dead());
    // The connection is still in sync.
    t.req(&get("/next"));
    t.resp(&ok("x"));
    assert_eq!(
        t.exchanges().last().unwrap(),
        &ex(1, "GET", "/next", Some(200))
    );
}

fn reference_head(req: &[u8]) -> RequestHead {
    let mut t = T::new();
    t.req(req);
    let s = t.started();
    assert_eq!(s.len(), 1);
    (*s[0].1).clone()
}

#[test]
fn request_split_at_every_offset_into_two_chunks() {
    let reference = reference_head(CURL_GET);
    for i in 1..CURL_GET.len() {
        let mut t = T::new();
        t.req(&CURL_GET[..i]);
        assert!(t.ev.is_empty(), "offset {i}: {:?}", t.ev);
        t.req(&CURL_GET[i..]);
        let s = t.started();
        assert_eq!(s.len(), 1, "offset {i}");
        assert_eq!(*s[0].1, reference, "offset {i}");
        assert!(t.anomalies().is_empty(), "offset {i}");
        assert_eq!(t.c.buffered_bytes(), 0);
        assert_eq!(t.c.pending(), 1);
    }
}

#[test]
fn request_split_into_three_chunks_at_every_pair_of_offsets() {
    let req: &[u8] = b"GET /a?b=c HTTP/1.1\r\nHost: h\r\ntraceparent: 00-ab-cd-01\r\n\r\n";
    let reference = reference_head(req);
    for i in 1..req.len() {
        for j in i + 1..req.len() {
            let mut t = T::new();
            t.req(&req[..i]);
            t.req(&req[i..j]);
            t.req(&req[j..]);
            assert_eq!(t.ev.len(), 1, "offsets {i},{j}: {:?}", t.ev);
            assert_eq!(*t.started()[0].1, reference, "offsets {i},{j}");
        }
    }
}

#[test]
fn head_timestamp_is_that_of_its_first_byte() {
    let mut t = T::new();
    // A stray CRLF before the head does not count as the head's first byte.
    t.req(b"\r\n");
    t.req(&CURL_GET[..3]);
    t.req(&CURL_GET[3..]);
    let h = &t.started()[0].1;
    assert_eq!((h.ts_ns, h.tid), (2, 102));
    t.resp(&NGINX_200[..10]);
    t.resp(&NGINX_200[10..]);
    let r = &t.responses()[0];
    assert_eq!((r.ts_ns, r.tid), (4, 104));
}

#[test]
fn response_split_at_every_offset_into_two_chunks() {
    let mut stream = NGINX_404.to_vec();
    stream.extend_from_slice(NGINX_200);
    for i in 1..stream.len() {
        let mut t = T::new();
        t.req(CURL_GET);
        t.req(&get("/two"));
        t.resp(&stream[..i]);
        t.resp(&stream[i..]);
        assert_eq!(
            t.exchanges(),
            vec![
                ex(0, "GET", "/api/users", Some(404)),
                ex(1, "GET", "/two", Some(200))
            ],
            "offset {i}"
        );
        assert!(t.anomalies().is_empty(), "offset {i}");
        // First response's ts is the first chunk's; the second starts in chunk 1 or 2.
        let rs = t.responses();
        assert_eq!(rs[0].ts_ns, 3);
        assert_eq!(
            rs[1].ts_ns,
            if i <= NGINX_404.len() { 4 } else { 3 },
            "offset {i}"
        );
    }
}

#[test]
fn response_split_into_three_chunks_at_every_pair_of_offsets() {
    let resp: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
    for i in 1..resp.len() {
        for j in i + 1..resp.len() {
            let mut t = T::new();
            t.req(&get("/"));
            t.resp(&resp[..i]);
            t.resp(&resp[i..j]);
            t.resp(&resp[j..]);
            t.req(&get("/2"));
            t.resp(resp);
            assert_eq!(
                t.exchanges(),
                vec![ex(0, "GET", "/", Some(200)), ex(1, "GET", "/2", Some(200))]
            );
            assert!(t.anomalies().is_empty());
            assert_eq!(t.responses()[0].ts_ns, 2);
        }
    }
}

#[test]
fn pipelined_requests_and_responses_in_one_chunk_pair_in_order() {
    let mut t = T::new();
    let reqs = cat(&[
        &get("/a"),
        &get("/b?x"),
        b"HEAD /c HTTP/1.1\r\nHost: localhost\r\n\r\n",
        &get("/d"),
    ]);
    t.req(&reqs);
    let s = t.started();
    assert_eq!(
        s.iter()
            .map(|(q, h)| (*q, h.path.as_ref()))
            .collect::<Vec<_>>(),
        vec![(0, "/a"), (1, "/b"), (2, "/c"), (3, "/d")]
    );
    assert_eq!(t.c.pending(), 4);
    let head_resp: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 4096\r\n\r\n";
    let resps = cat(&[NGINX_200, NGINX_CHUNKED, head_resp, NGINX_404]);
    t.resp(&resps);
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "GET", "/a", Some(200)),
            ex(1, "GET", "/b", Some(200)),
            ex(2, "HEAD", "/c", Some(200)),
            ex(3, "GET", "/d", Some(404)),
        ]
    );
    assert!(t.anomalies().is_empty());
    assert_eq!(t.c.pending(), 0);
}

// ---------------------------------------------------------------------------
// Content-Length bodies and gaps
// ---------------------------------------------------------------------------

#[test]
fn content_length_body_in_following_chunks() {
    let mut t = T::new();
    let post = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 27\r\n\r\n";
    t.req(post);
    t.req(b"name=GET / HTTP/1.1");
    t.req(b"&value=1");
    t.req(&get("/after"));
    let paths: Vec<_> = t
        .started()
        .iter()
        .map(|(_, h)| h.path.to_string())
        .collect();
    assert_eq!(paths, vec!["/upload", "/after"]);
    t.resp(&NGINX_200[..NGINX_200.len() - 16]);
    t.resp(&NGINX_200[NGINX_200.len() - 16..NGINX_200.len() - 3]);
    t.resp(&NGINX_200[NGINX_200.len() - 3..]);
    t.resp(NGINX_404);
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "POST", "/upload", Some(200)),
            ex(1, "GET", "/after", Some(404))
        ]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn content_length_body_not_captured_at_all() {
    let mut t = T::new();
    t.req(&get("/file.bin"));
    t.resp(b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\nAccept-Ranges: bytes\r\n\r\n");
    // sendfile: nothing captured, only the length is known.
    t.send_real(S2C, b"", 1048576);
    t.req(&get("/next"));
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "GET", "/file.bin", Some(200)),
            ex(1, "GET", "/next", Some(200))
        ]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn content_length_body_cut_short_with_rest_in_gap() {
    let mut t = T::new();
    t.req(&get("/big"));
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20000\r\n\r\n";
    let mut first = head.to_vec();
    first.extend_from_slice(&[b'x'; 100]);
    // One write of head + whole body, only 100 body bytes captured.
    t.send_real(S2C, &first, (head.len() + 20000) as u64);
    t.req(&get("/next"));
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "GET", "/big", Some(200)),
            ex(1, "GET", "/next", Some(200))
        ]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn large_request_body_with_capture_limit_stays_in_sync() {
    // 1 MiB upload written 64 KiB at a time, the kernel captures 8 KiB of each write.
    let mut t = T::new();
    let head = b"PUT /objects/blob HTTP/1.1\r\nHost: s3.local\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n";
    t.req(head);
    let cap = [b'Z'; 8192];
    for _ in 0..16 {
        t.send_real(C2S, &cap, 65536);
    }
    t.req(&get("/after"));
    let paths: Vec<_> = t
        .started()
        .iter()
        .map(|(_, h)| h.path.to_string())
        .collect();
    assert_eq!(paths, vec!["/objects/blob", "/after"]);
    assert!(t.anomalies().is_empty());
}

#[test]
fn gap_spanning_body_end_into_next_head_loses_sync() {
    let mut t = T::new();
    t.req(&get("/a"));
    let r = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    // 10 body bytes + 50 bytes of an unknown next message.
    t.send_real(S2C, r, (r.len() + 60) as u64);
    assert_eq!(t.anomalies(), vec![Anomaly::LostSync]);
    t.req(&get("/b"));
    t.resp(b"garbage continuing the lost response");
    t.resp(&ok("fine"));
    assert_eq!(
        t.exchanges(),
        vec![ex(0, "GET", "/a", Some(200)), ex(1, "GET", "/b", Some(200))]
    );
}

// ---------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------

#[test]
fn chunked_response_split_at_every_offset() {
    let stream = cat(&[NGINX_CHUNKED, NGINX_200]);
    for i in 1..stream.len() {
        let mut t = T::new();
        t.req(&get("/c"));
        t.req(&get("/d"));
        t.resp(&stream[..i]);
        t.resp(&stream[i..]);
        assert_eq!(
            t.exchanges(),
            vec![ex(0, "GET", "/c", Some(200)), ex(1, "GET", "/d", Some(200))],
            "offset {i}"
        );
        assert!(t.anomalies().is_empty(), "offset {i}: {:?}", t.anomalies());
    }
}

#[test]
fn chunked_response_byte_by_byte() {
    let stream = cat(&[NGINX_CHUNKED, NGINX_CHUNKED_TRAILERS, NGINX_404]);
    let mut t = T::new();
    for p in ["/1", "/2", "/3"] {
        t.req(&get(p));
    }
    for b in &stream {
        t.resp(std::slice::from_ref(b));
    }
    assert_eq!(
        t.exchanges().iter().map(|e| e.3).collect::<Vec<_>>(),
        vec![Some(200), Some(200), Some(404)]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn chunked_with_trailers() {
    let mut t = T::new();
    t.req(&get("/t"));
    t.req(&get("/u"));
    t.resp(&cat(&[NGINX_CHUNKED_TRAILERS, NGINX_200]));
    assert_eq!(
        t.exchanges(),
        vec![ex(0, "GET", "/t", Some(200)), ex(1, "GET", "/u", Some(200))]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn chunked_request_body_split_at_every_offset() {
    // curl -T - (upload from stdin) uses chunked encoding.
    let post: &[u8] = b"PUT /upload HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nTransfer-Encoding: chunked\r\n\r\n\
7\r\nGET / H\r\n3;x=\"y\"\r\nabc\r\n0\r\n\r\n";
    let stream = cat(&[post, &get("/next")]);
    for i in 1..stream.len() {
        let mut t = T::new();
        t.req(&stream[..i]);
        t.req(&stream[i..]);
        let paths: Vec<_> = t
            .started()
            .iter()
            .map(|(_, h)| h.path.to_string())
            .collect();
        assert_eq!(paths, vec!["/upload", "/next"], "offset {i}");
        assert!(t.anomalies().is_empty());
    }
}

#[test]
fn chunked_gap_inside_chunk_data_stays_in_sync() {
    let mut t = T::new();
    t.req(&get("/stream"));
    t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    // One write: "4000\r\n" + 16 KiB data + "\r\n", only 8 KiB captured.
    let mut w = b"4000\r\n".to_vec();
    w.extend_from_slice(&[b'd'; 8186]);
    t.send_real(S2C, &w, 6 + 16384 + 2);
    // Next write: a chunk cut inside its data, rest of it in the following write.
    let mut w2 = b"2000\r\n".to_vec();
    w2.extend_from_slice(&[b'e'; 100]);
    t.send_real(S2C, &w2, 6 + 4000);
    t.send_real(S2C, &[b'e'; 10], 8192 - 4000 + 2);
    t.resp(b"0\r\n\r\n");
    t.req(&get("/next"));
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "GET", "/stream", Some(200)),
            ex(1, "GET", "/next", Some(200))
        ]
    );
    assert!(t.anomalies().is_empty(), "{:?}", t.anomalies());
}

#[test]
fn chunked_gap_over_size_line_loses_sync_then_resyncs() {
    let mut t = T::new();
    t.req(&get("/a"));
    t.req(&get("/b"));
    let mut w = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123".to_vec();
    let captured = w.len() as u64;
    // Gap covers the 12 missing data bytes, CRLF, and further chunk-size lines.
    t.send_real(S2C, &w, captured + 12 + 2 + 40);
    assert_eq!(t.anomalies(), vec![Anomaly::LostSync]);
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/a", Some(200))]);
    // The rest of the lost body is ignored (even chunk data that looks like a head mid-chunk).
    w.clear();
    w.extend_from_slice(b"8\r\nHTTP/1.1\r\n0\r\n\r\n");
    t.resp(&w);
    // Resync at a chunk starting with a status line.
    t.resp(NGINX_404);
    assert_eq!(
        t.exchanges(),
        vec![ex(0, "GET", "/a", Some(200)), ex(1, "GET", "/b", Some(404))]
    );
    assert_eq!(t.anomalies(), vec![Anomaly::LostSync]);
}

#[test]
fn malformed_chunk_size_is_a_parse_error() {
    let mut t = T::new();
    t.req(&get("/a"));
    t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(
        t.anomalies(),
        vec![Anomaly::ParseError("invalid chunk framing")]
    );
    t.req(&get("/b"));
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges().last().unwrap(),
        &ex(1, "GET", "/b", Some(200))
    );
}

#[test]
fn absurd_chunk_size_does_not_blind_the_connection() {
    // 16 hex digits fit in a u64, but no body is 16 EiB: skipping it would swallow every
    // later message of the connection.
    let mut t = T::new();
    t.req(&get("/a"));
    t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nxx");
    assert_eq!(
        t.anomalies(),
        vec![Anomaly::ParseError("chunk size too large")]
    );
    for (i, path) in ["/b", "/c"].iter().enumerate() {
        t.req(&get(path));
        t.resp(NGINX_200);
        assert_eq!(
            t.exchanges().last().unwrap(),
            &ex(i as u64 + 1, "GET", path, Some(200))
        );
    }
}

#[test]
fn absurd_content_length_is_a_parse_error_not_a_blind_skip() {
    let mut t = T::new();
    t.req(&get("/a"));
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nxx");
    assert_eq!(
        t.anomalies(),
        vec![Anomaly::ParseError("invalid content-length")]
    );
    t.req(&get("/b"));
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges().last().unwrap(),
        &ex(1, "GET", "/b", Some(200))
    );
}

// ---------------------------------------------------------------------------
// Bodiless responses, interim responses, read-until-close
// ---------------------------------------------------------------------------

#[test]
fn head_response_with_content_length_has_no_body() {
    let mut t = T::new();
    t.req(b"HEAD /index.html HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n");
    t.req(&get("/x"));
    t.resp(b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: text/html\r\nContent-Length: 615\r\nLast-Modified: Tue, 11 Apr 2023 01:45:34 GMT\r\nConnection: keep-alive\r\nETag: \"6434bbbe-267\"\r\nAccept-Ranges: bytes\r\n\r\n");
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "HEAD", "/index.html", Some(200)),
            ex(1, "GET", "/x", Some(200))
        ]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn status_204_and_304_have_no_body() {
    let mut t = T::new();
    t.req(b"OPTIONS /api HTTP/1.1\r\nHost: localhost\r\nOrigin: http://a\r\n\r\n");
    t.req(b"GET /logo.png HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"6434bbbe-267\"\r\n\r\n");
    t.req(&get("/z"));
    t.resp(&cat(&[
        b"HTTP/1.1 204 No Content\r\nServer: nginx/1.24.0\r\nAccess-Control-Allow-Origin: *\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nServer: nginx/1.24.0\r\nETag: \"6434bbbe-267\"\r\nContent-Length: 615\r\n\r\n",
        NGINX_404,
    ]));
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "OPTIONS", "/api", Some(204)),
            ex(1, "GET", "/logo.png", Some(304)),
            ex(2, "GET", "/z", Some(404))
        ]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn continue_100_then_200() {
    let mut t = T::new();
    t.req(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Length: 2048\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\n");
    t.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(t.exchanges().is_empty());
    assert_eq!(t.c.pending(), 1);
    t.send_real(C2S, &[0u8; 1024], 2048);
    t.resp(b"HTTP/1.1 201 Created\r\nServer: nginx/1.24.0\r\nContent-Length: 0\r\nLocation: /upload/1\r\n\r\n");
    assert_eq!(t.exchanges(), vec![ex(0, "POST", "/upload", Some(201))]);
    // The pairing uses the final response's timestamp.
    assert_eq!(t.responses()[0].ts_ns, 4);
    assert_eq!(t.c.pending(), 0);
    assert!(t.anomalies().is_empty());
}

#[test]
fn interim_103_and_100_in_one_chunk() {
    let mut t = T::new();
    t.req(&get("/e"));
    t.resp(&cat(&[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n", NGINX_200]));
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/e", Some(200))]);
    assert!(t.anomalies().is_empty());
}

#[test]
fn read_until_close_body_ended_by_on_close() {
    let mut t = T::new();
    t.req(b"GET /index.html HTTP/1.0\r\nHost: localhost:8000\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n");
    t.resp(b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.12.3\r\nDate: Tue, 14 May 2024 10:00:00 GMT\r\nContent-type: text/html\r\nLast-Modified: Tue, 14 May 2024 09:00:00 GMT\r\n\r\n");
    t.resp(b"<html><body>");
    // Body bytes that look like a status line are still body.
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    t.send_real(S2C, b"", 100_000);
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/index.html", Some(200))]);
    assert_eq!(t.started()[0].1.version, 0);
    t.close();
    assert_eq!(t.exchanges().len(), 1);
    assert!(t.anomalies().is_empty());
    assert!(t.c.is_dead());
    // Data after close is ignored.
    t.req(&get("/late"));
    assert_eq!(t.started().len(), 1);
}

#[test]
fn keep_alive_100_requests() {
    let mut t = T::new();
    for i in 0..100 {
        t.req(&get(&format!("/item/{i}?page={i}")));
        if i % 2 == 0 {
            t.resp(NGINX_200);
        } else {
            t.resp(NGINX_CHUNKED);
        }
    }
    let exs = t.exchanges();
    assert_eq!(exs.len(), 100);
    for (i, e) in exs.iter().enumerate() {
        assert_eq!(e, &ex(i as u64, "GET", &format!("/item/{i}"), Some(200)));
    }
    assert!(t.anomalies().is_empty());
    assert_eq!(t.c.pending(), 0);
    t.close();
    assert_eq!(t.exchanges().len(), 100);
}

// ---------------------------------------------------------------------------
// Not HTTP, limits, lost sync
// ---------------------------------------------------------------------------

#[test]
fn tls_is_not_http() {
    let mut t = T::new();
    t.req(TLS_CLIENT_HELLO);
    t.resp(TLS_SERVER_HELLO);
    assert_eq!(t.anomalies(), vec![Anomaly::NotHttp, Anomaly::NotHttp]);
    assert!(t.c.is_dead());
    for _ in 0..100 {
        t.req(&[0x17, 0x03, 0x03, 0x01, 0x00, b'G', b'E', b'T', b' ']);
        t.resp(&get("/looks-like-http"));
        t.resp(NGINX_200);
        t.send_real(S2C, &[0x17; 100], 16384);
    }
    assert_eq!(t.ev.len(), 2);
    assert_eq!(t.c.buffered_bytes(), 0);
    assert_eq!(t.c.req.buf.capacity(), 0);
    assert_eq!(t.c.resp.buf.capacity(), 0);
}

#[test]
fn garbage_and_near_misses_are_not_http() {
    let cases: &[&[u8]] = &[
        &[0x8f, 0x00, 0x13, 0x77, 0xfe, 0x01],
        b"get / HTTP/1.1\r\n\r\n",
        b" GET / HTTP/1.1\r\n\r\n",
        b"VERYLONGMETHODNAMEX / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"*1\r\n$4\r\nPING\r\n",
    ];
    for case in cases {
        let mut t = T::new();
        t.req(case);
        assert_eq!(
            t.anomalies(),
            vec![Anomaly::NotHttp],
            "{:?}",
            String::from_utf8_lossy(case)
        );
        assert_eq!(t.c.buffered_bytes(), 0);
        t.resp(b"+PONG\r\n");
        assert!(t.c.is_dead());
    }
    // Byte-by-byte garbage: decided within the first bytes, no growth.
    let mut t = T::new();
    for b in b"GETX/ HTTP/1.1\r\n" {
        t.req(std::slice::from_ref(b));
        assert!(t.c.buffered_bytes() <= 16);
    }
    assert_eq!(t.anomalies(), vec![Anomaly::NotHttp]);
}

#[test]
fn unusual_method_tokens_are_http() {
    for m in ["PROPFIND", "M-SEARCH", "BASELINE-CONTROL", "PURGE"] {
        let mut t = T::new();
        t.req(format!("{m} /dav HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(&*t.started()[0].1.method, m);
        assert!(t.anomalies().is_empty());
    }
}

#[test]
fn head_too_large_is_bounded_then_resyncs() {
    let mut t = T::with(Limits {
        max_head_bytes: 1024,
        max_pending: 64,
    });
    let mut req =
        b"GET /huge?q=1 HTTP/1.1\r\nHost: localhost\r\ntraceparent: 00-aa-bb-01\r\nX-Big: "
            .to_vec();
    req.extend(std::iter::repeat_n(b'x', 4000));
    req.extend_from_slice(b"\r\n\r\n");
    for part in req.chunks(100) {
        t.req(part);
        assert!(t.c.buffered_bytes() <= 1024);
    }
    assert_eq!(t.anomalies(), vec![Anomaly::HeadTooLarge]);
    // The complete lines were salvaged as a truncated head.
    let s = t.started();
    assert_eq!(s.len(), 1);
    assert_eq!(&*s[0].1.path, "/huge");
    assert!(s[0].1.truncated);
    assert_eq!(
        s[0].1.headers,
        vec![("traceparent".to_owned(), "00-aa-bb-01".to_owned())]
    );
    assert_eq!(t.c.buffered_bytes(), 0);
    // Resync at the next request.
    t.req(&get("/ok"));
    assert_eq!(t.started().len(), 2);
    t.resp(NGINX_404);
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "GET", "/huge", Some(404)),
            ex(1, "GET", "/ok", Some(200))
        ]
    );

    // Same in one single chunk.
    let mut t = T::with(Limits {
        max_head_bytes: 1024,
        max_pending: 64,
    });
    t.req(&req);
    assert_eq!(t.anomalies(), vec![Anomaly::HeadTooLarge]);
    assert_eq!(t.c.buffered_bytes(), 0);

    // A head of exactly max_head_bytes is accepted.
    let mut t = T::with(Limits {
        max_head_bytes: 1024,
        max_pending: 64,
    });
    let mut exact = b"GET / HTTP/1.1\r\nX: ".to_vec();
    exact.extend(std::iter::repeat_n(b'y', 1024 - exact.len() - 4));
    exact.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exact.len(), 1024);
    t.req(&exact[..500]);
    t.req(&exact[500..]);
    assert!(t.anomalies().is_empty());
    assert_eq!(t.started().len(), 1);
}

#[test]
fn gap_at_head_start_loses_sync_and_resyncs_on_request_line() {
    let mut t = T::new();
    t.req(&get("/1"));
    t.resp(NGINX_200);
    // A whole request not captured.
    t.send_real(C2S, b"", 300);
    assert_eq!(t.anomalies(), vec![Anomaly::LostSync]);
    t.req(b"more lost bytes GET / HTTP/1.1\r\n\r\n");
    t.req(&get("/3"));
    assert_eq!(
        t.started()
            .iter()
            .map(|(q, h)| (*q, h.path.to_string()))
            .collect::<Vec<_>>(),
        vec![(0, "/1".to_owned()), (1, "/3".to_owned())]
    );
    assert_eq!(t.anomalies(), vec![Anomaly::LostSync]);
}

#[test]
fn gap_inside_head_gives_truncated_head() {
    let mut t = T::new();
    let full = cat(&[
        b"POST /api/orders?id=1 HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-ab-cd-01\r\nX-Padding: ",
        &[b'p'; 300],
        b"\r\nContent-Length: 5\r\n\r\nhello",
    ]);
    // Captured: up to the middle of X-Padding.
    t.send_real(C2S, &full[..100], full.len() as u64);
    assert_eq!(
        t.anomalies(),
        vec![Anomaly::HeadTruncated, Anomaly::LostSync]
    );
    let s = t.started();
    assert_eq!(s.len(), 1);
    assert_eq!(
        *s[0].1,
        RequestHead {
            method: "POST".into(),
            path: "/api/orders".into(),
            version: 1,
            headers: vec![("traceparent".into(), "00-ab-cd-01".into())],
            ts_ns: 1,
            tid: 101,
            truncated: true,
            protocol: Protocol::Http1,
            stream_id: None,
            headers_known: HeadersKnown::Exact,
            inferred: false,
        }
    );
    t.resp(NGINX_200);
    assert_eq!(t.exchanges(), vec![ex(0, "POST", "/api/orders", Some(200))]);
    t.req(&get("/next"));
    assert_eq!(t.started().len(), 2);
}

#[test]
fn gap_inside_response_head_gives_truncated_response() {
    let mut t = T::new();
    t.req(&get("/a"));
    let r = b"HTTP/1.1 502 Bad Gateway\r\nServer: nginx\r\nContent-Type: text/ht";
    t.send_real(S2C, r, 500);
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/a", Some(502))]);
    assert!(t.responses()[0].truncated);
    assert_eq!(
        t.anomalies(),
        vec![Anomaly::HeadTruncated, Anomaly::LostSync]
    );
    t.req(&get("/b"));
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges().last().unwrap(),
        &ex(1, "GET", "/b", Some(200))
    );
}

#[test]
fn response_predating_request_is_not_paired() {
    let mut t = T::new();
    // Response to a request whose bytes were lost arrives, then a new request.
    t.resp(NGINX_200);
    assert_eq!(t.anomalies(), vec![Anomaly::ResponseWithoutRequest]);
    t.req(&get("/b"));
    t.resp(NGINX_404);
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/b", Some(404))]);
}

// ---------------------------------------------------------------------------
// Privacy, path, header handling
// ---------------------------------------------------------------------------

#[test]
fn only_kept_headers_are_stored() {
    let mut t = T::new();
    let req = b"GET /account/settings?tab=security&token=s3cr3t HTTP/1.1\r\n\
Host: app.example.com\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.secret.sig\r\n\
Cookie: session=abcdef0123456789; csrftoken=zzz\r\n\
TraceParent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
X-Request-Id: 42\r\n\
\r\n";
    t.req(req);
    let h = &t.started()[0].1;
    assert_eq!(
        h.headers,
        vec![(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()
        )]
    );
    assert_eq!(&*h.path, "/account/settings");
    t.resp(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=fedcba; HttpOnly\r\nContent-Length: 0\r\n\r\n");
    let dump = format!("{:?}", t.ev);
    for secret in [
        "Bearer",
        "eyJ",
        "session",
        "abcdef",
        "csrftoken",
        "s3cr3t",
        "fedcba",
        "X-Request-Id",
        "42",
    ] {
        assert!(!dump.contains(secret), "{secret} leaked: {dump}");
    }
}

#[test]
fn query_is_stripped_from_path() {
    for (target, path) in [
        ("/api/users?id=42", "/api/users"),
        ("/?a=b", "/"),
        ("/x?", "/x"),
        ("/a/b/c", "/a/b/c"),
        ("/p?q=1?r=2", "/p"),
        ("http://proxy.example/abs?x=1", "http://proxy.example/abs"),
        ("*", "*"),
    ] {
        let mut t = T::new();
        t.req(format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        assert_eq!(&*t.started()[0].1.path, path, "{target}");
    }
}

#[test]
fn header_names_lowercased_and_values_capped() {
    let mut t = T::new();
    t.keep = keep_all;
    let long = "v".repeat(2000);
    let mut req =
        format!("GET / HTTP/1.1\r\nX-Long: {long}\r\nTRACEPARENT:  00-x-y-01  \r\nX-Bin: a")
            .into_bytes();
    req.extend_from_slice(b"\xffb\r\n\r\n");
    t.req(&req);
    let h = &t.started()[0].1;
    assert_eq!(h.headers[0].0, "x-long");
    assert_eq!(h.headers[0].1.len(), MAX_HEADER_VALUE_BYTES);
    assert_eq!(
        h.headers[1],
        ("traceparent".to_owned(), "00-x-y-01".to_owned())
    );
    // Lossy: the invalid byte becomes U+FFFD.
    assert_eq!(h.headers[2], ("x-bin".to_owned(), "a\u{fffd}b".to_owned()));
    t.resp(
        format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Trace-Id: {long}\r\n\r\n").as_bytes(),
    );
    let r = &t.responses()[0];
    assert_eq!(r.headers[0], ("content-length".to_owned(), "0".to_owned()));
    assert_eq!(r.headers[1].1.len(), MAX_HEADER_VALUE_BYTES);
}

#[test]
fn many_headers_are_parsed() {
    let mut t = T::new();
    let mut req = b"GET /many HTTP/1.1\r\n".to_vec();
    for i in 0..300 {
        req.extend_from_slice(format!("X-H-{i}: {i}\r\n").as_bytes());
    }
    req.extend_from_slice(format!("traceparent: {TP}\r\n\r\n").as_bytes());
    t.req(&req);
    assert_eq!(
        t.started()[0].1.headers,
        vec![("traceparent".to_owned(), TP.to_owned())]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn http_1_0_request() {
    let mut t = T::new();
    t.req(b"GET /status HTTP/1.0\r\nUser-Agent: ApacheBench/2.3\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    assert_eq!(t.started()[0].1.version, 0);
    t.resp(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/status", Some(200))]);
}

#[test]
fn invalid_content_length_is_parse_error_then_resync() {
    let mut t = T::new();
    t.req(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 12abc\r\n\r\nbodybodybody");
    let framing = Anomaly::ParseError("invalid request body framing");
    assert_eq!(t.anomalies(), vec![framing]);
    assert_eq!(t.started().len(), 1);
    t.req(b"POST /b HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc");
    t.req(b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd");
    assert_eq!(t.anomalies(), vec![framing, framing]);
    t.req(&get("/d"));
    let paths: Vec<_> = t
        .started()
        .iter()
        .map(|(_, h)| h.path.to_string())
        .collect();
    assert_eq!(paths, vec!["/a", "/b", "/c", "/d"]);
}

#[test]
fn malformed_head_is_parse_error() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    t.req(b"GET /bad HTTP/9.9\r\n\r\n");
    // httparse's reason is kept.
    let version = Anomaly::ParseError("invalid HTTP version");
    assert_eq!(t.anomalies(), vec![version]);
    // After a first valid message, a non-HTTP start is a parse error, not NotHttp.
    t.req(&get("/ok"));
    t.req(b"\x16\x03\x01garbage");
    assert_eq!(
        t.anomalies(),
        vec![version, Anomaly::ParseError("not a message start")]
    );
    assert_eq!(t.started().len(), 2);
}

#[test]
fn stray_crlf_between_requests() {
    let mut t = T::new();
    t.req(b"POST /form HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b\r\n");
    t.req(b"\r\n");
    t.req(&get("/next"));
    assert_eq!(t.started().len(), 2);
    assert!(t.anomalies().is_empty());
}

// ---------------------------------------------------------------------------
// Pairing, close, upgrades
// ---------------------------------------------------------------------------

#[test]
fn on_close_emits_unanswered_requests() {
    let mut t = T::new();
    t.req(&cat(&[&get("/a"), &get("/b"), &get("/c")]));
    t.resp(NGINX_200);
    assert_eq!(t.c.pending(), 2);
    t.close();
    assert_eq!(
        t.exchanges(),
        vec![
            ex(0, "GET", "/a", Some(200)),
            ex(1, "GET", "/b", None),
            ex(2, "GET", "/c", None)
        ]
    );
    assert_eq!(t.c.pending(), 0);
    assert!(t.c.is_dead());
}

#[test]
fn flush_emits_unanswered_requests_and_keeps_parsing() {
    let mut t = T::new();
    t.req(&get("/a"));
    t.c.flush(&mut t.ev);
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/a", None)]);
    t.req(&get("/b"));
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges().last().unwrap(),
        &ex(1, "GET", "/b", Some(200))
    );
}

#[test]
fn too_many_pending_emits_oldest() {
    let mut t = T::with(Limits {
        max_head_bytes: 65536,
        max_pending: 4,
    });
    for i in 0..6 {
        t.req(&get(&format!("/{i}")));
    }
    assert_eq!(
        t.anomalies(),
        vec![Anomaly::TooManyPending, Anomaly::TooManyPending]
    );
    assert_eq!(
        t.exchanges(),
        vec![ex(0, "GET", "/0", None), ex(1, "GET", "/1", None)]
    );
    assert_eq!(t.c.pending(), 4);
    t.resp(NGINX_200);
    assert_eq!(
        t.exchanges().last().unwrap(),
        &ex(2, "GET", "/2", Some(200))
    );
}

#[test]
fn response_without_request_is_skipped_correctly() {
    let mut t = T::new();
    // Capture started mid-connection: a chunked response arrives first.
    t.resp(NGINX_CHUNKED);
    assert_eq!(t.anomalies(), vec![Anomaly::ResponseWithoutRequest]);
    t.req(&get("/a"));
    t.resp(NGINX_200);
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/a", Some(200))]);
    assert_eq!(t.anomalies(), vec![Anomaly::ResponseWithoutRequest]);
}

#[test]
fn websocket_upgrade_stops_parsing() {
    let mut t = T::new();
    t.req(b"GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    // The client may send frames before the 101 is seen.
    t.req(&[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ]);
    t.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello");
    t.resp(b"HTTP/1.1 200 OK\r\n\r\n");
    t.req(&get("/not-http-anymore"));
    assert_eq!(t.exchanges(), vec![ex(0, "GET", "/chat", Some(101))]);
    assert_eq!(t.started().len(), 1);
    assert!(t.anomalies().is_empty());
    assert!(t.c.is_dead());
}

#[test]
fn refused_h2c_upgrade_stays_http() {
    let mut t = T::new();
    t.req(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
    t.resp(NGINX_200);
    t.req(&get("/2"));
    t.resp(NGINX_404);
    assert_eq!(
        t.exchanges(),
        vec![ex(0, "GET", "/", Some(200)), ex(1, "GET", "/2", Some(404))]
    );
    assert!(t.anomalies().is_empty());
}

#[test]
fn connect_tunnel_stops_parsing() {
    let mut t = T::new();
    t.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUser-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n");
    t.resp(b"HTTP/1.1 200 Connection established\r\n\r\n");
    t.req(TLS_CLIENT_HELLO);
    t.resp(TLS_SERVER_HELLO);
    assert_eq!(
        t.exchanges(),
        vec![ex(0, "CONNECT", "example.com:443", Some(200))]
    );
    assert!(t.anomalies().is_empty());
    assert!(t.c.is_dead());

    // A refused CONNECT keeps the connection HTTP.
    let mut t = T::new();
    t.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    t.resp(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n");
    t.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n");
    t.resp(b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(
        t.exchanges().iter().map(|e| e.3).collect::<Vec<_>>(),
        vec![Some(407), Some(200)]
    );
    assert!(t.anomalies().is_empty());
}

// ---------------------------------------------------------------------------
// Deterministic fuzzing
// ---------------------------------------------------------------------------

const FRAGMENTS: &[&[u8]] = &[
    CURL_GET,
    NGINX_200,
    NGINX_CHUNKED,
    NGINX_CHUNKED_TRAILERS,
    NGINX_404,
    b"GET / HTTP/1.1\r\n\r\n",
    b"HEAD / HTTP/1.1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n\r\n",
    b"GET /u HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"5\r\nabcde\r\n",
    b"0\r\n\r\n",
    b"0\r\nX-T: 1\r\n\r\n",
    b"X-Header: value\r\n",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"HTTP/1.",
    b"GET ",
    TLS_CLIENT_HELLO,
];

fn random_stream(rng: &mut Rng, request_side: bool) -> Vec<u8> {
    let mut s = Vec::new();
    // Usually start like HTTP so that the deeper states get exercised.
    if rng.below(8) != 0 {
        s.extend_from_slice(if request_side {
            b"GET /start HTTP/1.1\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        });
    }
    let parts = rng.below(12);
    for _ in 0..parts {
        match rng.below(10) {
            0..=5 => {
                let f = FRAGMENTS[rng.below(FRAGMENTS.len() as u64) as usize];
                // Sometimes only a piece of a fragment.
                if rng.below(4) == 0 {
                    let a = rng.below(f.len() as u64 + 1) as usize;
                    let b = a + rng.below((f.len() - a) as u64 + 1) as usize;
                    s.extend_from_slice(&f[a..b]);
                } else {
                    s.extend_from_slice(f);
                }
            }
            6..=7 => {
                let n = rng.below(64);
                for _ in 0..n {
                    s.push(rng.next_u64() as u8);
                }
            }
            8 => {
                // A long header line (exercises HeadTooLarge with small limits).
                let n = rng.below(3000) as usize;
                s.extend_from_slice(b"X-Long: ");
                s.extend(std::iter::repeat_n(b'a', n));
                s.extend_from_slice(b"\r\n");
            }
            _ => {
                let n = rng.below(16);
                for _ in 0..n {
                    const ALPHABET: &[u8] = b"0123456789abcdefABCDEF\r\n ;:/HTTP";
                    s.push(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]);
                }
            }
        }
    }
    s
}

#[test]
fn fuzz_random_streams_never_panic_and_stay_bounded() {
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let mut total_events = 0usize;
    let mut answered = 0usize;
    let mut seen_anomalies = std::collections::HashSet::new();
    for iter in 0..20_000u32 {
        let limits = Limits {
            max_head_bytes: [16, 64, 200, 1024, 65536][rng.below(5) as usize],
            max_pending: 1 + rng.below(8) as usize,
        };
        let max_head = limits.max_head_bytes.max(MIN_HEAD_BYTES);
        let mut c = HttpConn::new(limits);
        let streams = [
            random_stream(&mut rng, true),
            random_stream(&mut rng, false),
        ];
        let mut pos = [0usize, 0usize];
        let mut out = Vec::new();
        let mut ts = 0u64;
        let keep = |n: &str| {
            n.eq_ignore_ascii_case("traceparent") || n.starts_with('x') || n.starts_with('X')
        };
        while pos[0] < streams[0].len() || pos[1] < streams[1].len() {
            let side = if pos[0] >= streams[0].len() {
                1
            } else if pos[1] >= streams[1].len() {
                0
            } else {
                rng.below(2) as usize
            };
            let s = &streams[side];
            let max_len = [1u64, 8, 64, 512, 4096][rng.below(5) as usize];
            let len = (1 + rng.below(max_len)) as usize;
            let end = (pos[side] + len).min(s.len());
            let mut data = &s[pos[side]..end];
            let mut real_len = data.len() as u64;
            match rng.below(10) {
                // Captured prefix only; the rest of the piece is a gap.
                0 => {
                    let keep_n = rng.below(data.len() as u64 + 1) as usize;
                    data = &data[..keep_n];
                }
                // Extra uncaptured bytes (possibly huge).
                1 => real_len += [1u64, 7, 1000, 1 << 20, u64::MAX / 2][rng.below(5) as usize],
                _ => {}
            }
            pos[side] = end;
            ts += rng.below(3);
            let flow = if side == 0 {
                Flow::ClientToServer
            } else {
                Flow::ServerToClient
            };
            c.on_data(
                flow,
                Chunk {
                    data,
                    real_len,
                    ts_ns: ts,
                    tid: 1,
                },
                &keep,
                &mut out,
            );
            for d in [&c.req, &c.resp] {
                assert!(d.buf.len() <= max_head, "iter {iter}: buf {}", d.buf.len());
                assert!(
                    d.buf.capacity() <= max_head,
                    "iter {iter}: cap {}",
                    d.buf.capacity()
                );
                if !d.head_started {
                    assert_eq!(d.buf.capacity(), 0, "iter {iter}: buffer kept");
                }
            }
            assert!(c.pending() <= limits.max_pending.max(1), "iter {iter}");
            for e in &out {
                if let Message::RequestStarted { head, .. }
                | Message::Exchange { request: head, .. } = e
                {
                    assert!(head.path.len() <= MAX_PATH_BYTES);
                    assert!(head
                        .headers
                        .iter()
                        .all(|(_, v)| v.len() <= MAX_HEADER_VALUE_BYTES));
                    assert!(head.headers.iter().all(|(n, _)| keep(n)));
                }
            }
            for e in &out {
                match e {
                    Message::Anomaly(a) => {
                        seen_anomalies.insert(*a);
                    }
                    Message::Exchange {
                        response: Some(_), ..
                    } => answered += 1,
                    _ => {}
                }
            }
            total_events += out.len();
            out.clear();
        }
        c.on_close(ts, &mut out);
        assert_eq!(c.pending(), 0);
        assert!(c.is_dead());
        assert_eq!(c.buffered_bytes(), 0);
        total_events += out.len();
    }
    // The generator does produce HTTP, not only rejections, and reaches every anomaly.
    assert!(total_events > 20_000);
    assert!(answered > 5_000, "{answered}");
    let kinds: std::collections::HashSet<&str> =
        seen_anomalies.iter().map(|a| a.as_str()).collect();
    assert_eq!(kinds.len(), 7, "{seen_anomalies:?}");
    // Parse errors carry their reasons, httparse's among them.
    assert!(seen_anomalies.contains(&Anomaly::ParseError("invalid header name")));
    assert!(seen_anomalies.contains(&Anomaly::ParseError("invalid chunk framing")));
}

#[test]
fn fuzz_valid_exchanges_with_random_chunking_stay_in_sync() {
    // Valid traffic, random chunking (no gaps): every request must be paired.
    let resps: [&[u8]; 4] = [NGINX_200, NGINX_CHUNKED, NGINX_CHUNKED_TRAILERS, NGINX_404];
    let mut rng = Rng::new(12345);
    for _ in 0..300 {
        let n = 1 + rng.below(10) as usize;
        let mut reqs = Vec::new();
        let mut rs = Vec::new();
        for i in 0..n {
            reqs.extend_from_slice(&get(&format!("/r{i}")));
            rs.extend_from_slice(resps[rng.below(4) as usize]);
        }
        let mut t = T::new();
        for (flow, s) in [(C2S, &reqs), (S2C, &rs)] {
            let mut p = 0;
            while p < s.len() {
                let e = (p + 1 + rng.below(100) as usize).min(s.len());
                t.send(flow, &s[p..e]);
                p = e;
            }
        }
        let exs = t.exchanges();
        assert_eq!(exs.len(), n);
        for (i, e) in exs.iter().enumerate() {
            assert_eq!(e.0, i as u64);
            assert_eq!(e.2, format!("/r{i}"));
            assert!(e.3.is_some());
        }
        assert!(t.anomalies().is_empty());
    }
}

#[test]
fn accepted_h2c_upgrade_hands_the_request_and_the_rest_to_http2() {
    let mut t = T::new();
    t.req(b"GET /up HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
    t.resp(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    // Answered on HTTP/2 stream 1, not here: no exchange, the switch and the frames after it.
    assert!(t.exchanges().is_empty());
    let switched: Vec<_> =
        t.ev.iter()
            .filter_map(|m| match m {
                Message::Switched { to, request, rest } => {
                    Some((*to, request.0, request.1.path.to_string(), rest.clone()))
                }
                _ => None,
            })
            .collect();
    assert_eq!(
        switched,
        [(
            Protocol::H2,
            0,
            "/up".to_string(),
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec()
        )]
    );
    assert!(matches!(t.ev.last(), Some(Message::Switched { .. })));
}
