//! Userspace pipeline throughput: raw ring-buffer records → decode → connection table →
//! HTTP/1.1 reassembly → trace context → linking and findings, on one core.
//!
//! The stream is generated (deterministically) to look like a busy host where every hop is
//! observed from both ends: a load generator (`client`) calls a front service (`front`) over
//! keep-alive connections, and `front` calls a back service (`back`) while serving most of its
//! requests. Requests carry W3C `traceparent`, B3, `X-Request-ID`, nothing, or a malformed
//! `traceparent`; some carry kilobyte cookies; POSTs have bodies. Responses have
//! Content-Length bodies, some are chunked (chunks across writes), some have head and body in
//! separate writes. Connections are closed and reopened after a while, and a few connections
//! carry bytes that are not HTTP (the parser gives up on them).
//!
//! One "message" is one captured read or write (one DATA record); bytes are their payload.
//! `cargo xtask bench` runs this and reads the line printed below plus criterion's estimate.

use std::hint::black_box;
use std::time::Duration;

// Dependencies of the library and the binary, not used here by name;
// `unused_crate_dependencies` checks each target against the whole package's list.
use {
    anyhow as _, aya as _, btf_rs as _, bytemuck as _, clap as _, foldhash as _, gimli as _,
    httparse as _, iced_x86 as _, libc as _, memchr as _, miniz_oxide as _,
    netlink_packet_core as _, netlink_packet_sock_diag as _, netlink_sys as _, object as _,
    prometheus_client as _, serde as _, serde_json as _, signal_hook as _, thiserror as _,
    tracing as _, tracing_subscriber as _,
};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use traceid::event::pod_bytes;
use traceid::pipeline::{Pipeline, PipelineConfig};
use traceid::record::{Finding, Record};
use traceid::test_util::Rng;
use traceid_common::{
    kind, source, ConnEvent, DataEvent, EventHeader, DIR_EGRESS, DIR_INGRESS, ROLE_CLIENT,
    ROLE_SERVER,
};

/// Inbound requests `front` serves in one pass of the stream.
const INBOUND_REQUESTS: usize = 6_000;
/// Keep-alive connections client → front, and front → back, open at once.
const FRONT_CONNS: usize = 32;
const BACK_CONNS: usize = 8;

const CLIENT: (u32, &str) = (3000, "client");
const FRONT: (u32, &str) = (1000, "front");
const BACK: (u32, &str) = (2000, "back");

/// One observed end of a TCP connection.
#[derive(Clone, Copy)]
struct End {
    pid: u32,
    comm: &'static str,
    fd: i32,
    conn_ts: u64,
    role: u8,
}

/// Both ends of a connection, and how many more requests it carries before it is closed.
struct Pair {
    client: End,
    server: End,
    left: u32,
}

#[derive(Default)]
struct Stream {
    records: Vec<Vec<u8>>,
    now: u64,
    next_fd: i32,
    next_port: u16,
    messages: u64,
    bytes: u64,
}

/// A zeroed `#[repr(C)]` event: fields added to the shared types later (reserved, optional)
/// stay zero, as the kernel would leave them, so the bench keeps building.
fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for traceid_common's event structs, which hold integers and integer
    // arrays only: all-zero bytes are a valid value of each.
    unsafe { std::mem::zeroed() }
}

fn header(kind: u16, e: End, tid: u32, now: u64) -> EventHeader {
    let mut h: EventHeader = zeroed();
    let n = e.comm.len().min(15);
    h.comm[..n].copy_from_slice(&e.comm.as_bytes()[..n]);
    h.kind = kind;
    h.pid = e.pid;
    h.tid = tid;
    h.fd = e.fd;
    h.ts_ns = now;
    h.conn_ts_ns = e.conn_ts;
    h
}

impl Stream {
    fn tick(&mut self, ns: u64) -> u64 {
        self.now += ns;
        self.now
    }

    fn end(&mut self, (pid, comm): (u32, &'static str), role: u8) -> End {
        self.next_fd += 1;
        End {
            pid,
            comm,
            fd: 10 + self.next_fd % 60_000,
            conn_ts: self.tick(1_000),
            role,
        }
    }

    fn open_one(&mut self, e: End, local_port: u16, remote_port: u16) {
        let now = self.tick(500);
        let mut local = [0u8; 16];
        let mut remote = [0u8; 16];
        local[..4].copy_from_slice(&[127, 0, 0, 1]);
        remote[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut ev: ConnEvent = zeroed();
        ev.header = header(kind::CONN_OPEN, e, e.pid, now);
        ev.role = e.role;
        ev.family = 2;
        ev.local_port = local_port;
        ev.remote_port = remote_port;
        ev.local_addr = local;
        ev.remote_addr = remote;
        self.records.push(pod_bytes(&ev));
    }

    /// A new connection from `client` to `server` listening on `port`, both ends seen.
    fn connect(
        &mut self,
        client: (u32, &'static str),
        server: (u32, &'static str),
        port: u16,
        left: u32,
    ) -> Pair {
        self.next_port = self.next_port.wrapping_add(1);
        let eport = 32_768 + self.next_port % 28_000;
        let c = self.end(client, ROLE_CLIENT);
        let s = self.end(server, ROLE_SERVER);
        self.open_one(c, eport, port);
        self.open_one(s, port, eport);
        Pair {
            client: c,
            server: s,
            left,
        }
    }

    fn close(&mut self, p: &Pair) {
        for e in [p.client, p.server] {
            let now = self.tick(300);
            self.records
                .push(pod_bytes(&header(kind::CONN_CLOSE, e, e.pid, now)));
        }
    }

    fn data(&mut self, e: End, tid: u32, egress: bool, bytes: &[u8]) {
        let now = self.tick(2_000);
        let mut ev: DataEvent = zeroed();
        ev.header = header(kind::DATA, e, tid, now);
        ev.direction = if egress { DIR_EGRESS } else { DIR_INGRESS };
        ev.source = if egress { source::WRITE } else { source::READ };
        ev.role = e.role;
        ev.captured = bytes.len() as u32;
        ev.real_len = bytes.len() as u64;
        let mut raw = pod_bytes(&ev);
        raw.extend_from_slice(bytes);
        self.records.push(raw);
        self.messages += 1;
        self.bytes += bytes.len() as u64;
    }

    /// Sends `pieces` (one write each) from `from` and reads them at `to`, in order.
    fn exchange(&mut self, from: End, from_tid: u32, to: End, to_tid: u32, pieces: &[Vec<u8>]) {
        for p in pieces {
            self.data(from, from_tid, true, p);
            self.data(to, to_tid, false, p);
        }
    }
}

/// Trace context a request carries.
enum Ctx {
    None,
    W3c(String),
    B3(String),
    RequestId(String),
    Malformed,
}

fn request(rng: &mut Rng, host: &str, path: &str, ctx: &Ctx) -> Vec<Vec<u8>> {
    let post = rng.pct(20);
    let mut h = format!(
        "{} {path}?page={} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n\
         Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n",
        if post { "POST" } else { "GET" },
        rng.below(100)
    );
    if rng.pct(15) {
        // A big cookie in front of the trace header: the header block is not small.
        let n = 200 + rng.below(1_200) as usize;
        h.push_str(&format!("Cookie: session={}\r\n", "c".repeat(n)));
    }
    h.push_str("Authorization: Bearer not-a-real-token\r\n");
    match ctx {
        Ctx::None => {}
        Ctx::W3c(tp) => {
            h.push_str(&format!("traceparent: {tp}\r\n"));
            if rng.pct(30) {
                h.push_str("tracestate: vendor=opaque-value\r\n");
            }
        }
        Ctx::B3(t) => h.push_str(&format!(
            "X-B3-TraceId: {t}\r\nX-B3-SpanId: {}\r\nX-B3-Sampled: 1\r\n",
            rng.hex(16)
        )),
        Ctx::RequestId(id) => h.push_str(&format!("X-Request-ID: {id}\r\n")),
        Ctx::Malformed => h.push_str(&format!(
            "traceparent: 00-{}-{}-01\r\n",
            // Upper case hex, or a too-short id.
            if rng.pct(50) {
                rng.hex(32).to_uppercase()
            } else {
                rng.hex(20)
            },
            rng.hex(16)
        )),
    }
    if post {
        let body = vec![b'{'; 50 + rng.below(450) as usize];
        h.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ));
        let mut head = h.into_bytes();
        if rng.pct(50) {
            head.extend_from_slice(&body);
            vec![head]
        } else {
            vec![head, body]
        }
    } else {
        h.push_str("\r\n");
        vec![h.into_bytes()]
    }
}

fn response(rng: &mut Rng) -> Vec<Vec<u8>> {
    let status = if rng.pct(95) {
        "200 OK"
    } else {
        "404 Not Found"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nServer: nginx\r\nDate: Wed, 25 Nov 2026 06:00:00 GMT\r\n\
         Content-Type: application/json\r\nConnection: keep-alive\r\n"
    );
    let r = rng.below(100);
    if r < 15 {
        // Chunked: 2–4 chunks, each its own write, then the terminator.
        let mut out = vec![format!("{head}Transfer-Encoding: chunked\r\n\r\n").into_bytes()];
        for _ in 0..2 + rng.below(3) {
            let n = 16 + rng.below(1_000) as usize;
            let mut c = format!("{n:x}\r\n").into_bytes();
            c.extend(std::iter::repeat_n(b'x', n));
            c.extend_from_slice(b"\r\n");
            out.push(c);
        }
        out.push(b"0\r\n\r\n".to_vec());
        out
    } else {
        let n = 2 + rng.below(1_500) as usize;
        let mut h = format!("{head}Content-Length: {n}\r\n\r\n").into_bytes();
        let body = vec![b'y'; n];
        if r < 25 {
            // Head and body in separate writes (sendfile-style servers).
            vec![h, body]
        } else {
            h.extend_from_slice(&body);
            vec![h]
        }
    }
}

/// What one pass of the generated stream holds.
struct Generated {
    records: Vec<Vec<u8>>,
    messages: u64,
    bytes: u64,
}

fn generate() -> Generated {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut s = Stream::default();
    let mut front: Vec<Pair> = (0..FRONT_CONNS)
        .map(|_| {
            let left = 50 + rng.below(150) as u32;
            s.connect(CLIENT, FRONT, 8080, left)
        })
        .collect();
    let mut back: Vec<Pair> = (0..BACK_CONNS)
        .map(|_| {
            let left = 100 + rng.below(300) as u32;
            s.connect(FRONT, BACK, 9090, left)
        })
        .collect();
    for i in 0..INBOUND_REQUESTS {
        // A connection now and then that is not HTTP at all (TLS, a binary protocol).
        if rng.pct(1) {
            let p = s.connect(CLIENT, FRONT, 8443, 0);
            let junk = vec![
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
                vec![0u8; 200],
            ];
            s.exchange(p.client, CLIENT.0, p.server, FRONT.0, &junk);
            s.close(&p);
        }
        let fi = rng.below(FRONT_CONNS as u64) as usize;
        let worker = FRONT.0 + 1 + (fi % 4) as u32;
        let trace = rng.hex(32);
        let ctx = match rng.below(100) {
            0..=49 => Ctx::W3c(format!("00-{trace}-{}-01", rng.hex(16))),
            50..=59 => Ctx::B3(trace.clone()),
            60..=64 => Ctx::RequestId(format!("req-{}", rng.hex(12))),
            65..=69 => Ctx::Malformed,
            _ => Ctx::None,
        };
        let path = ["/api/orders", "/api/users/42", "/healthz", "/v1/cart"][i % 4];
        let req = request(&mut rng, "front:8080", path, &ctx);
        let (c, sv) = (front[fi].client, front[fi].server);
        s.exchange(c, CLIENT.0, sv, worker, &req);
        // Most requests make one outbound call on the same worker thread.
        if rng.pct(60) {
            let bi = rng.below(BACK_CONNS as u64) as usize;
            let out_ctx = match (&ctx, rng.below(100)) {
                (Ctx::W3c(tp), 0..=69) => Ctx::W3c(format!("00-{}-{}-01", &tp[3..35], rng.hex(16))),
                (_, 0..=79) if !matches!(ctx, Ctx::None) => Ctx::None,
                (_, 80..=89) => Ctx::W3c(format!("00-{}-{}-01", rng.hex(32), rng.hex(16))),
                _ => Ctx::None,
            };
            let oreq = request(&mut rng, "back:9090", "/charge", &out_ctx);
            let (bc, bs) = (back[bi].client, back[bi].server);
            s.exchange(bc, worker, bs, BACK.0 + 1, &oreq);
            let oresp = response(&mut rng);
            s.exchange(bs, BACK.0 + 1, bc, worker, &oresp);
            back[bi].left = back[bi].left.saturating_sub(1);
            if back[bi].left == 0 {
                s.close(&back[bi]);
                let left = 100 + rng.below(300) as u32;
                back[bi] = s.connect(FRONT, BACK, 9090, left);
            }
        }
        let resp = response(&mut rng);
        s.exchange(sv, worker, c, CLIENT.0, &resp);
        front[fi].left = front[fi].left.saturating_sub(1);
        if front[fi].left == 0 {
            s.close(&front[fi]);
            let left = 50 + rng.below(150) as u32;
            front[fi] = s.connect(CLIENT, FRONT, 8080, left);
        }
    }
    for p in front.iter().chain(back.iter()) {
        s.close(p);
    }
    Generated {
        records: s.records,
        messages: s.messages,
        bytes: s.bytes,
    }
}

/// Feeds the whole stream through a fresh pipeline (what the live loop and replay run);
/// returns the records it emitted.
fn run(records: &[Vec<u8>]) -> u64 {
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let mut emitted = 0u64;
    let mut sink = |r: &Record| {
        black_box(r);
        emitted += 1;
    };
    for r in records {
        pipeline.process(r, &mut sink);
    }
    pipeline.finish(&mut sink);
    emitted
}

fn pipeline(c: &mut Criterion) {
    let g = generate();
    // Check once, outside the timing, that the stream exercises what it should.
    let mut out = Vec::new();
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let mut sink = |r: &Record| out.push(r.clone());
    for r in &g.records {
        pipeline.process(r, &mut sink);
    }
    pipeline.finish(&mut sink);
    let mut counts = [0u64; Finding::ALL.len()];
    let mut requests = 0u64;
    for r in &out {
        if let Record::Request(r) = r {
            requests += 1;
            for f in &r.findings {
                counts[Finding::ALL.iter().position(|x| x == f).unwrap_or(0)] += 1;
            }
        }
    }
    let summary: Vec<String> = Finding::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| format!("{} {n}", f.as_str()))
        .collect();
    // `cargo xtask bench` parses this line.
    println!(
        "pipeline stream: {} messages, {} bytes, {} records, {} requests ({})",
        g.messages,
        g.bytes,
        g.records.len(),
        requests,
        summary.join(", ")
    );
    for f in [
        Finding::Missing,
        Finding::Malformed,
        Finding::Propagated,
        Finding::Dropped,
    ] {
        assert!(
            counts[Finding::ALL.iter().position(|x| *x == f).unwrap()] > 0,
            "the generated stream should produce {f:?} findings"
        );
    }
    assert!(requests as usize > INBOUND_REQUESTS, "too few requests");

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::ElementsAndBytes {
        elements: g.messages,
        bytes: g.bytes,
    });
    group.bench_function("http1_mixed", |b| b.iter(|| run(black_box(&g.records))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = pipeline
}
criterion_main!(benches);
