//! Engine tests on synthetic event streams.

use super::*;
use crate::record::{Confidence, Evidence};
use crate::test_util::events::*;
use traceid_common::{ROLE_CLIENT, ROLE_SERVER};

const FRONT: C = C {
    pid: 100,
    fd: 7,
    ts: 1,
    comm: "front",
    role: ROLE_CLIENT,
};
const MID_IN: C = C {
    pid: 200,
    fd: 5,
    ts: 2,
    comm: "middle",
    role: ROLE_SERVER,
};
const MID_OUT: C = C {
    pid: 200,
    fd: 9,
    ts: 3,
    comm: "middle",
    role: ROLE_CLIENT,
};

/// Earlier inbound requests of middle (pid 200), each read by thread `read_tid` and answered by
/// thread `answer_tid`: what the linker learns about the process's threads from.
const MID_EARLIER: C = C {
    pid: 200,
    fd: 4,
    ts: 0,
    comm: "middle",
    role: ROLE_SERVER,
};

fn earlier_exchanges(s: &mut Stream, read_tid: u32, answer_tid: u32, n: u32) {
    for _ in 0..n {
        s.open(MID_EARLIER, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 39999);
        s.data(MID_EARLIER, read_tid, false, &get("/earlier", &[]));
        s.data(MID_EARLIER, answer_tid, true, OK);
        s.close(MID_EARLIER);
    }
}

/// Enough earlier requests read and answered by thread 201 to link middle by thread.
fn thread_per_request(s: &mut Stream) {
    earlier_exchanges(s, 201, 201, link::MIN_THREAD_EVIDENCE);
}

/// front -> middle (inbound with `in_headers`), middle -> back (outbound with `out_headers`),
/// the outbound written by thread `out_tid`, in a middle that has already answered one request
/// on the thread that read it, often enough (thread 201: a thread-per-request server).
fn hop(
    in_headers: &[(&str, &str)],
    out_headers: &[(&str, &str)],
    out_tid: u32,
) -> Vec<RequestRecord> {
    let mut s = Stream::default();
    thread_per_request(&mut s);
    s.open(MID_IN, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.data(MID_IN, 201, false, &get("/pay?card=1", in_headers));
    s.open(MID_OUT, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9090);
    s.data(MID_OUT, out_tid, true, &get("/charge", out_headers));
    s.data(MID_OUT, out_tid, false, OK);
    s.data(MID_IN, 201, true, OK);
    s.close(MID_OUT);
    s.close(MID_IN);
    s.run()
}

fn outbound(recs: &[RequestRecord]) -> &RequestRecord {
    recs.iter()
        .find(|r| r.direction == Direction::Outbound)
        .expect("outbound record")
}

#[test]
fn inbound_request_carries_trace_endpoints_status_and_strips_query() {
    let recs = hop(&[("traceparent", TP)], &[("traceparent", TP)], 201);
    let inb = recs
        .iter()
        .find(|r| r.direction == Direction::Inbound && &*r.path != "/earlier")
        .unwrap();
    assert_eq!(inb.pid, 200);
    assert_eq!(&*inb.comm, "middle");
    assert_eq!(&*inb.method, "GET");
    assert_eq!(&*inb.path, "/pay");
    assert_eq!(inb.status, Some(200));
    assert_eq!(inb.trace_id.as_deref(), Some(TRACE));
    assert_eq!(inb.trace_format, Some(tracectx::TraceFormat::W3c));
    assert_eq!(inb.local.as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(inb.peer.as_deref(), Some("127.0.0.1:40000"));
    assert!(inb.findings.is_empty(), "{:?}", inb.findings);
    assert!(inb.duration_ms.unwrap() > 0.0);
    let json = serde_json::to_string(inb).unwrap();
    assert!(!json.contains("secret"), "Authorization leaked: {json}");
    assert!(!json.contains("card"), "query string leaked: {json}");
}

#[test]
fn propagated_dropped_restarted_started_on_the_same_thread() {
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Headers, Headers, Finding); 4] = [
        (
            &[("traceparent", TP)],
            &[("traceparent", TP)],
            Finding::Propagated,
        ),
        (&[("traceparent", TP)], &[], Finding::Dropped),
        (
            &[("traceparent", TP)],
            &[("traceparent", other)],
            Finding::Restarted,
        ),
        (&[], &[("traceparent", other)], Finding::Started),
    ];
    for (inh, outh, want) in cases {
        let recs = hop(inh, outh, 201);
        let out = outbound(&recs);
        assert!(out.has(want), "{want:?} expected, got {:?}", out.findings);
        let link = out.inbound.as_ref().expect("linked");
        assert_eq!(&*link.path, "/pay");
        // Propagation proves the link; otherwise it rests on the thread.
        let conf = if want == Finding::Propagated {
            Confidence::Certain
        } else {
            Confidence::Strong
        };
        assert_eq!(link.confidence, conf, "{want:?}");
    }
}

#[test]
fn only_request_in_flight_links_weakly_across_threads() {
    let recs = hop(&[("traceparent", TP)], &[], 999);
    let out = outbound(&recs);
    assert!(out.has(Finding::Dropped));
    assert_eq!(out.inbound.as_ref().unwrap().confidence, Confidence::Weak);
}

/// Two inbound requests of middle in flight, /a (traceparent TP) read by thread 201 and /b
/// (no trace) read by thread 202, then a call without trace context written by thread 201.
fn two_in_flight_then_untraced_call_on_201(s: &mut Stream) -> RequestRecord {
    let in2 = C {
        pid: 200,
        fd: 6,
        ts: 4,
        comm: "middle",
        role: ROLE_SERVER,
    };
    s.open(MID_IN, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.open(in2, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40002);
    s.data(MID_IN, 201, false, &get("/a", &[("traceparent", TP)]));
    s.data(in2, 202, false, &get("/b", &[]));
    s.open(MID_OUT, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9090);
    s.data(MID_OUT, 201, true, &get("/charge", &[]));
    s.data(MID_OUT, 201, false, OK);
    let recs = s.run();
    recs.into_iter()
        .find(|r| &*r.path == "/charge")
        .expect("the call")
}

#[test]
fn thread_per_request_process_links_strongly_among_several_in_flight() {
    let mut s = Stream::default();
    thread_per_request(&mut s);
    let out = two_in_flight_then_untraced_call_on_201(&mut s);
    assert!(out.has(Finding::Dropped), "{:?}", out.findings);
    let link = out.inbound.as_ref().expect("linked by thread");
    assert_eq!(
        (link.path.as_ref(), link.confidence),
        ("/a", Confidence::Strong)
    );
}

/// Regression (Go `net/http` middle under concurrent load, tests/chain.rs): goroutines hop
/// threads, so the thread that read a request often writes another request's call; the
/// thread rule linked 5 of 21 such calls to the wrong inbound request, as `strong`.
#[test]
fn process_that_answers_on_another_thread_is_never_linked_by_thread() {
    let mut s = Stream::default();
    thread_per_request(&mut s);
    // One request answered by another thread than the one that read it outweighs them all.
    earlier_exchanges(&mut s, 201, 1, 1);
    thread_per_request(&mut s);
    let out = two_in_flight_then_untraced_call_on_201(&mut s);
    assert_eq!(out.findings, vec![Finding::Missing, Finding::Unlinked]);
    assert!(out.inbound.is_none());
}

#[test]
fn process_that_propagates_from_another_thread_is_never_linked_by_thread() {
    let mut s = Stream::default();
    thread_per_request(&mut s);
    // A propagating call written by thread 1 for a request read by thread 201: certain, and
    // proof that this process hands requests from thread to thread.
    let early_out = C {
        pid: 200,
        fd: 3,
        ts: 0,
        comm: "middle",
        role: ROLE_CLIENT,
    };
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    s.open(MID_EARLIER, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 39998);
    s.data(
        MID_EARLIER,
        201,
        false,
        &get("/early", &[("traceparent", other)]),
    );
    s.open(early_out, [127, 0, 0, 1], 39997, [127, 0, 0, 1], 9090);
    s.data(
        early_out,
        1,
        true,
        &get("/early-call", &[("traceparent", other)]),
    );
    s.data(early_out, 1, false, OK);
    s.close(early_out);
    s.data(MID_EARLIER, 201, true, OK);
    s.close(MID_EARLIER);
    let out = two_in_flight_then_untraced_call_on_201(&mut s);
    assert_eq!(out.findings, vec![Finding::Missing, Finding::Unlinked]);
    let recs = s.run();
    let early = recs.iter().find(|r| &*r.path == "/early-call").unwrap();
    assert_eq!(
        early.inbound.as_ref().map(|l| l.confidence),
        Some(Confidence::Certain)
    );
}

#[test]
fn process_whose_calls_are_read_by_another_thread_is_never_linked_by_thread() {
    // Go's HTTP client writes a call on one goroutine and reads its response on another.
    let mut s = Stream::default();
    thread_per_request(&mut s);
    let early_out = C {
        pid: 200,
        fd: 3,
        ts: 0,
        comm: "middle",
        role: ROLE_CLIENT,
    };
    s.open(early_out, [127, 0, 0, 1], 39997, [127, 0, 0, 1], 9090);
    s.data(early_out, 201, true, &get("/early-call", &[]));
    s.data(early_out, 2, false, OK);
    s.close(early_out);
    let out = two_in_flight_then_untraced_call_on_201(&mut s);
    assert_eq!(out.findings, vec![Finding::Missing, Finding::Unlinked]);
}

#[test]
fn process_not_yet_seen_answering_is_not_linked_by_thread() {
    // Too little evidence yet that this process serves a request on one thread: the only
    // request in flight is a weak link, never a strong one.
    let mut s = Stream::default();
    earlier_exchanges(&mut s, 201, 201, link::MIN_THREAD_EVIDENCE - 1);
    s.open(MID_IN, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.data(MID_IN, 201, false, &get("/pay", &[("traceparent", TP)]));
    s.open(MID_OUT, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9090);
    s.data(MID_OUT, 201, true, &get("/charge", &[]));
    s.data(MID_OUT, 201, false, OK);
    let recs = s.run();
    assert_eq!(
        outbound(&recs).inbound.as_ref().map(|l| l.confidence),
        Some(Confidence::Weak)
    );
    // And with two in flight, unlinked.
    let mut s = Stream::default();
    earlier_exchanges(&mut s, 201, 201, link::MIN_THREAD_EVIDENCE - 1);
    let out = two_in_flight_then_untraced_call_on_201(&mut s);
    assert!(out.has(Finding::Unlinked), "{:?}", out.findings);
}

#[test]
fn several_requests_in_flight_on_other_threads_stay_unlinked() {
    let in2 = C {
        pid: 200,
        fd: 6,
        ts: 4,
        comm: "middle",
        role: ROLE_SERVER,
    };
    let mut s = Stream::default();
    s.open(MID_IN, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.open(in2, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40002);
    s.data(MID_IN, 201, false, &get("/a", &[("traceparent", TP)]));
    s.data(in2, 202, false, &get("/b", &[]));
    s.open(MID_OUT, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9090);
    s.data(MID_OUT, 777, true, &get("/charge", &[]));
    s.data(MID_OUT, 777, false, OK);
    let recs = s.run();
    let out = outbound(&recs);
    assert_eq!(out.findings, vec![Finding::Missing, Finding::Unlinked]);
    assert!(out.inbound.is_none());
}

#[test]
fn same_trace_links_with_certainty_among_many() {
    let in2 = C {
        pid: 200,
        fd: 6,
        ts: 4,
        comm: "middle",
        role: ROLE_SERVER,
    };
    let mut s = Stream::default();
    s.data(MID_IN, 201, false, &get("/a", &[("traceparent", TP)]));
    s.data(in2, 201, false, &get("/b", &[]));
    s.data(
        MID_OUT,
        201,
        true,
        &get(
            "/charge",
            &[
                ("x-b3-traceid", "a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
            ],
        ),
    );
    let recs = s.run();
    let out = outbound(&recs);
    // B3 64-bit carries the low half of the W3C id: the same trace, so the link is certain
    // even though both inbound requests were read by the same (event-loop) thread.
    assert!(out.has(Finding::Propagated), "{:?}", out.findings);
    let link = out.inbound.as_ref().unwrap();
    assert_eq!(
        (link.path.as_ref(), link.confidence),
        ("/a", Confidence::Certain)
    );
}

#[test]
fn missing_malformed_and_exposed() {
    let mut s = Stream::default();
    let c = C {
        pid: 300,
        fd: 4,
        ts: 9,
        comm: "svc",
        role: ROLE_SERVER,
    };
    s.data(c, 1, false, &get("/none", &[]));
    s.data(c, 1, true, OK);
    s.data(
        c,
        1,
        false,
        &get(
            "/bad",
            &[(
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            )],
        ),
    );
    s.data(
        c,
        1,
        true,
        format!("HTTP/1.1 200 OK\r\ntraceparent: {TP}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    let recs = s.run();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].findings, vec![Finding::Missing]);
    assert!(recs[1].has(Finding::Malformed));
    assert!(recs[1].has(Finding::Exposed));
    assert!(
        recs[1].reason.as_deref().unwrap().contains("uppercase"),
        "{:?}",
        recs[1].reason
    );
}

#[test]
fn fd_reuse_never_mixes_connections() {
    // Same (pid, fd), two connections: the first ends mid-request, the second starts clean.
    let a = C {
        pid: 400,
        fd: 3,
        ts: 10,
        comm: "svc",
        role: ROLE_SERVER,
    };
    let b = C { ts: 20, ..a };
    let mut s = Stream::default();
    s.data(a, 1, false, b"GET /first HTTP/1.1\r\nHo");
    s.close(a);
    s.data(b, 1, false, &get("/second", &[("x-request-id", "req-42")]));
    s.data(b, 1, true, OK);
    let recs = s.run();
    let paths: Vec<_> = recs.iter().map(|r| (r.path.as_ref(), r.status)).collect();
    assert_eq!(paths, vec![("/second", Some(200))]);
    assert_eq!(recs[0].trace_id.as_deref(), Some("req-42"));
    assert_eq!(recs[0].trace_format, Some(tracectx::TraceFormat::RequestId));
}

#[test]
fn a_request_whose_end_was_lost_leaves_the_linker_when_its_fd_is_reused() {
    // Middle reads /lost on fd 5; its answer and close are lost (records dropped by the
    // kernel). fd 5 then carries a new connection with /a, and middle makes a call from
    // another thread: /a is the only request that can be in flight.
    let mut s = Stream::default();
    s.open(MID_IN, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.data(MID_IN, 201, false, &get("/lost", &[]));
    let reused = C { ts: 5, ..MID_IN };
    s.open(reused, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40002);
    s.data(reused, 202, false, &get("/a", &[("traceparent", TP)]));
    s.open(MID_OUT, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9090);
    s.data(MID_OUT, 999, true, &get("/charge", &[]));
    s.data(MID_OUT, 999, false, OK);
    let recs = s.run();
    assert_eq!(
        linked_to(&outbound_to(&recs, "/charge")),
        ("/a", Evidence::OnlyInFlight)
    );
}

#[test]
fn seeded_connection_without_role_is_sniffed() {
    let c = C {
        pid: 500,
        fd: 8,
        ts: 30,
        comm: "old",
        role: traceid_common::ROLE_UNKNOWN,
    };
    let mut s = Stream::default();
    s.data(c, 1, true, &get("/from-pool", &[("traceparent", TP)]));
    s.data(c, 1, false, OK);
    let recs = s.run();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].direction, Direction::Outbound);
    assert_eq!(recs[0].status, Some(200));
}

#[test]
fn filter_by_pid_drops_other_processes() {
    let mut cfg = EngineConfig::default();
    cfg.filter.pids = vec![200];
    let mut engine = Engine::new(cfg);
    let mut s = Stream::default();
    s.data(FRONT, 101, true, &get("/x", &[]));
    s.data(FRONT, 101, false, OK);
    s.data(MID_IN, 201, false, &get("/y", &[]));
    s.data(MID_IN, 201, true, OK);
    let mut out = Vec::new();
    for r in &s.records {
        engine.process_event(&crate::event::decode(r).unwrap(), &mut out);
    }
    let pids: Vec<u32> = out
        .iter()
        .filter_map(|r| match r {
            Record::Request(r) => Some(r.pid),
            _ => None,
        })
        .collect();
    assert_eq!(pids, vec![200]);
}

#[test]
fn pure_client_outbound_is_a_chain_start_not_unlinked() {
    // curl, a batch job: never served a request, so there is nothing to link to.
    let mut s = Stream::default();
    s.data(FRONT, 101, true, &get("/x", &[("traceparent", TP)]));
    s.data(FRONT, 101, false, OK);
    let recs = s.run();
    assert_eq!(recs.len(), 1);
    assert!(recs[0].findings.is_empty(), "{:?}", recs[0].findings);
    assert!(recs[0].inbound.is_none());
}

// HTTP/2

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS frame (END_HEADERS, and END_STREAM when `end`) with HPACK-encoded `fields`: the
/// names `:method`, `:path`, `:status` by their static index, the others as literals.
fn h2_headers(stream: u32, end: bool, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        match *name {
            ":method" => block.push(2),
            ":path" => block.push(4),
            ":status" => block.push(8),
            _ => {
                block.extend([0, name.len() as u8]);
                block.extend(name.bytes());
            }
        }
        block.push(value.len() as u8);
        block.extend(value.bytes());
    }
    h2_frame(1, 0x4 | u8::from(end), stream, &block)
}

const TP2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn h2_streams_become_records_with_protocol_and_stream() {
    let mut s = Stream::default();
    s.open(MID_IN, [127, 0, 0, 1], 50051, [127, 0, 0, 1], 40000);
    let mut c2s = protocol::H2_PREFACE.to_vec();
    c2s.extend(h2_frame(4, 0, 0, &[]));
    c2s.extend(h2_headers(
        1,
        true,
        &[(":method", "GET"), (":path", "/a?q=1"), ("traceparent", TP)],
    ));
    c2s.extend(h2_headers(
        3,
        false,
        &[
            (":method", "POST"),
            (":path", "/shop.Cart/Checkout"),
            ("content-type", "application/grpc"),
            ("traceparent", TP2),
        ],
    ));
    s.data(MID_IN, 201, false, &c2s);
    // Stream 3 answers first: headers, then trailers with grpc-status.
    let mut s2c = h2_headers(3, false, &[(":status", "200")]);
    s2c.extend(h2_headers(3, true, &[("grpc-status", "5")]));
    s2c.extend(h2_headers(1, true, &[(":status", "404")]));
    s.data(MID_IN, 202, true, &s2c);
    s.close(MID_IN);
    let recs = s.run();
    let got: Vec<_> = recs
        .iter()
        .map(|r| {
            (
                r.protocol,
                r.stream_id,
                r.path.as_ref(),
                r.status,
                r.grpc_status,
                r.trace_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Protocol::Grpc,
                Some(3),
                "/shop.Cart/Checkout",
                Some(200),
                Some(5),
                Some("0af7651916cd43dd8448eb211c80319c")
            ),
            (
                Protocol::H2,
                Some(1),
                "/a",
                Some(404),
                None,
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            ),
        ]
    );
    let json = serde_json::to_string(&recs[0]).unwrap();
    assert!(
        json.contains(r#""protocol":"grpc","stream_id":3,"headers_known":"exact","method":"POST""#),
        "{json}"
    );
    assert!(json.contains(r#""status":200,"grpc_status":5,"#), "{json}");
}

#[test]
fn h2_headers_that_could_not_be_read_claim_no_missing_context() {
    // A connection the agent joined mid-way: the request's fields index table entries it
    // never saw (index 68, 69), so its trace context, if any, is unknown.
    let mut s = Stream::default();
    s.open(MID_IN, [127, 0, 0, 1], 50051, [127, 0, 0, 1], 40000);
    s.data(
        MID_IN,
        201,
        false,
        &h2_frame(1, 0x5, 5, &[0x83, 0xc4, 0xc5]),
    );
    s.data(
        MID_IN,
        201,
        true,
        &h2_headers(5, true, &[(":status", "200")]),
    );
    s.close(MID_IN);
    let recs = s.run();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(
        (r.method.as_ref(), r.path.as_ref(), r.headers_known),
        ("POST", "", HeadersKnown::Unknown)
    );
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    // The same request with every field known and no trace context: missing.
    let mut s = Stream::default();
    s.open(MID_IN, [127, 0, 0, 1], 50051, [127, 0, 0, 1], 40000);
    s.data(
        MID_IN,
        201,
        false,
        &h2_headers(5, true, &[(":method", "POST"), (":path", "/p")]),
    );
    s.data(
        MID_IN,
        201,
        true,
        &h2_headers(5, true, &[(":status", "200")]),
    );
    s.close(MID_IN);
    assert_eq!(s.run()[0].findings, vec![Finding::Missing]);
}

#[test]
fn h2_call_known_from_its_response_alone_has_no_duration() {
    // The client's write is captured up to the end of stream 1's HEADERS: stream 3's request
    // is lost, its answer read.
    let mut s = Stream::default();
    s.open(MID_OUT, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 50051);
    let mut c2s = protocol::H2_PREFACE.to_vec();
    c2s.extend(h2_frame(4, 0, 0, &[]));
    c2s.extend(h2_headers(1, true, &[(":method", "GET"), (":path", "/a")]));
    let captured = c2s.len();
    c2s.extend(h2_headers(3, true, &[(":method", "GET"), (":path", "/b")]));
    s.data_captured(MID_OUT, 201, true, &c2s, captured);
    s.advance(2_000_000);
    let mut s2c = h2_headers(1, true, &[(":status", "200")]);
    s2c.extend(h2_headers(3, true, &[(":status", "503")]));
    s.data(MID_OUT, 201, false, &s2c);
    s.close(MID_OUT);
    let recs = s.run();
    let got: Vec<_> = recs
        .iter()
        .map(|r| {
            (
                r.stream_id,
                r.path.as_ref(),
                r.status,
                r.duration_ms.is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(1), "/a", Some(200), true),
            (Some(3), "", Some(503), false)
        ]
    );
    assert_eq!(recs[1].headers_known, HeadersKnown::Unknown);
    assert!(recs[1].findings.is_empty(), "{:?}", recs[1].findings);
}

const BACK: C = C {
    pid: 300,
    fd: 6,
    ts: 4,
    comm: "back",
    role: ROLE_SERVER,
};

/// middle writes an HTTP/2 request on a connection to back (both followed here) of which the
/// kernel hands over only `captured` bytes; back reads it whole, answers, middle reads that.
fn h2_call_both_ends(back_port: u16, captured: impl Fn(usize) -> usize) -> Vec<RequestRecord> {
    let mut s = Stream::default();
    s.open(MID_OUT, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 50051);
    s.open(BACK, [127, 0, 0, 1], back_port, [127, 0, 0, 1], 40000);
    let mut c2s = protocol::H2_PREFACE.to_vec();
    c2s.extend(h2_frame(4, 0, 0, &[]));
    c2s.extend(h2_headers(
        1,
        true,
        &[
            (":method", "POST"),
            (":path", "/shop.Cart/Pay"),
            ("traceparent", TP2),
        ],
    ));
    s.data_captured(MID_OUT, 201, true, &c2s, captured(c2s.len()));
    s.data(BACK, 301, false, &c2s);
    let s2c = h2_headers(1, true, &[(":status", "200")]);
    s.data(BACK, 301, true, &s2c);
    s.data(MID_OUT, 201, false, &s2c);
    s.close(MID_OUT);
    s.close(BACK);
    s.run()
}

#[test]
fn h2_writer_short_of_its_own_bytes_takes_the_head_its_server_read() {
    // The writer's capture stops 20 bytes into its HEADERS: alone it knows nothing of it.
    let recs = h2_call_both_ends(50051, |len| len - 20);
    let out = recs.iter().find(|r| &*r.comm == "middle").unwrap();
    assert_eq!(
        (
            out.headers_known,
            out.method.as_ref(),
            out.path.as_ref(),
            out.trace_id.as_deref()
        ),
        (
            HeadersKnown::Exact,
            "POST",
            "/shop.Cart/Pay",
            Some("0af7651916cd43dd8448eb211c80319c")
        )
    );
    assert!(out.duration_ms.is_some());
    let back = recs.iter().find(|r| &*r.comm == "back").unwrap();
    assert_eq!(back.trace_id, out.trace_id);
    // A server on another port read another connection: the writer keeps its own unknown.
    let recs = h2_call_both_ends(50052, |len| len - 20);
    let out = recs.iter().find(|r| &*r.comm == "middle").unwrap();
    assert_eq!(
        (out.headers_known, out.trace_id.as_deref()),
        (HeadersKnown::Unknown, None)
    );
    assert!(out.findings.is_empty(), "{:?}", out.findings);
}

/// A Go middle (pid 200) serving two connections at once, /a on MID_IN by goroutine 10 and /b
/// on GO_IN2 by goroutine 20, each request with its own trace id, while every thread reads
/// and writes for any goroutine.
const GO_IN2: C = C {
    pid: 200,
    fd: 6,
    ts: 4,
    comm: "middle",
    role: ROLE_SERVER,
};
const TP_A: &str = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-00f067aa0ba902b7-01";
const TP_B: &str = "00-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-00f067aa0ba902b7-01";

fn go_two_in_flight() -> Stream {
    let mut s = Stream::default();
    s.open(MID_IN, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.go_serve(MID_IN, 301, 10);
    s.open(GO_IN2, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40002);
    s.go_serve(GO_IN2, 302, 20);
    s.data(MID_IN, 302, false, &get("/a", &[("traceparent", TP_A)]));
    s.data(GO_IN2, 301, false, &get("/b", &[("traceparent", TP_B)]));
    s.open(MID_OUT, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9090);
    s
}

fn outbound_to(recs: &[RequestRecord], path: &str) -> RequestRecord {
    let found: Vec<&RequestRecord> = recs
        .iter()
        .filter(|r| r.direction == Direction::Outbound && &*r.path == path)
        .collect();
    assert_eq!(found.len(), 1, "{path}: {recs:#?}");
    found[0].clone()
}

/// The path of the inbound request `r` is linked to, and on what evidence (a goroutine link
/// is certain).
fn linked_to(r: &RequestRecord) -> (&str, Evidence) {
    let inbound = r
        .inbound
        .as_ref()
        .unwrap_or_else(|| panic!("unlinked: {r:#?}"));
    assert_eq!(inbound.confidence, inbound.evidence.confidence());
    (inbound.path.as_ref(), inbound.evidence)
}

#[test]
fn go_call_links_to_the_request_its_goroutine_serves_among_several() {
    let mut s = go_two_in_flight();
    // One keep-alive client connection, written by writeLoop's thread for both goroutines.
    s.go_call(MID_OUT, 303, 20);
    s.data(MID_OUT, 304, true, &get("/charge-b", &[]));
    s.data(MID_OUT, 305, false, OK);
    s.go_call(MID_OUT, 301, 10);
    s.data(MID_OUT, 304, true, &get("/charge-a", &[]));
    s.data(MID_OUT, 302, false, OK);
    let recs = s.run();
    let b = outbound_to(&recs, "/charge-b");
    assert_eq!(linked_to(&b), ("/b", Evidence::Goroutine));
    assert_eq!(b.findings, vec![Finding::Missing, Finding::Dropped]);
    let a = outbound_to(&recs, "/charge-a");
    assert_eq!(linked_to(&a), ("/a", Evidence::Goroutine));
    assert_eq!(
        a.inbound.as_ref().unwrap().trace_id.as_deref(),
        Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    );
}

#[test]
fn go_call_from_a_goroutine_the_handler_started_links_through_its_ancestry() {
    let mut s = go_two_in_flight();
    // Goroutine 20 started 30, which started 31 (a worker of a worker).
    s.go_spawn(200, 302, 20, 30);
    s.go_spawn(200, 301, 30, 31);
    // A goroutine of the other request's family, and one of nobody known.
    s.go_spawn(200, 301, 10, 40);
    s.go_call(MID_OUT, 303, 31);
    s.data(MID_OUT, 304, true, &get("/from-31", &[("traceparent", TP)]));
    s.data(MID_OUT, 305, false, OK);
    s.go_call(MID_OUT, 303, 40);
    s.data(MID_OUT, 304, true, &get("/from-40", &[]));
    s.data(MID_OUT, 305, false, OK);
    s.go_call(MID_OUT, 303, 99);
    s.data(MID_OUT, 304, true, &get("/from-99", &[]));
    s.data(MID_OUT, 305, false, OK);
    let recs = s.run();
    let from31 = outbound_to(&recs, "/from-31");
    assert_eq!(linked_to(&from31), ("/b", Evidence::Goroutine));
    assert_eq!(from31.findings, vec![Finding::Restarted]);
    assert_eq!(
        linked_to(&outbound_to(&recs, "/from-40")),
        ("/a", Evidence::Goroutine)
    );
    // No known ancestry and two requests in flight: no guess.
    let from99 = outbound_to(&recs, "/from-99");
    assert!(from99.inbound.is_none(), "{from99:#?}");
    assert!(from99.findings.contains(&Finding::Unlinked));
}

#[test]
fn go_call_evidence_is_used_once_and_trace_ids_still_come_first() {
    let mut s = go_two_in_flight();
    s.go_call(MID_OUT, 303, 20);
    // Carries /a's trace id although goroutine 20 serves /b: the trace id is certain.
    s.data(MID_OUT, 304, true, &get("/first", &[("traceparent", TP_A)]));
    s.data(MID_OUT, 305, false, OK);
    // Its GO_CALL lost: the previous one is not reused, and two in flight stay unlinked.
    s.data(MID_OUT, 304, true, &get("/second", &[]));
    s.data(MID_OUT, 305, false, OK);
    let recs = s.run();
    assert_eq!(
        linked_to(&outbound_to(&recs, "/first")),
        ("/a", Evidence::TraceId)
    );
    assert!(outbound_to(&recs, "/second").inbound.is_none());
}

#[test]
fn go_call_of_a_goroutine_whose_request_is_answered_is_not_given_another() {
    let mut s = go_two_in_flight();
    // /b is answered; then its goroutine (or a goroutine it left behind) makes a call while
    // only /a is in flight: the weak rule would name /a, the goroutine says it serves no one.
    s.data(GO_IN2, 302, true, OK);
    s.go_spawn(200, 302, 20, 21);
    s.go_call(MID_OUT, 303, 21);
    s.data(MID_OUT, 304, true, &get("/late", &[]));
    s.data(MID_OUT, 305, false, OK);
    let recs = s.run();
    let late = outbound_to(&recs, "/late");
    assert!(late.inbound.is_none(), "{late:#?}");
    assert!(late.findings.contains(&Finding::Unlinked));
}

#[test]
fn go_serving_goroutine_links_each_keep_alive_request_in_turn() {
    let mut s = Stream::default();
    s.open(MID_IN, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.go_serve(MID_IN, 301, 10);
    s.open(GO_IN2, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40002);
    s.go_serve(GO_IN2, 302, 20);
    s.data(GO_IN2, 301, false, &get("/other", &[]));
    s.open(MID_OUT, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9090);
    for path in ["/one", "/two"] {
        s.data(MID_IN, 302, false, &get(path, &[]));
        s.go_call(MID_OUT, 303, 10);
        s.data(MID_OUT, 304, true, &get(&format!("/call{path}"), &[]));
        s.data(MID_OUT, 305, false, OK);
        s.data(MID_IN, 301, true, OK);
    }
    let recs = s.run();
    assert_eq!(
        linked_to(&outbound_to(&recs, "/call/one")),
        ("/one", Evidence::Goroutine)
    );
    assert_eq!(
        linked_to(&outbound_to(&recs, "/call/two")),
        ("/two", Evidence::Goroutine)
    );
}

#[test]
fn an_idle_connection_takes_little() {
    // Hundreds of thousands of connections may be followed at once, most of them idle: what
    // their requests need is allocated only when they have some.
    assert!(
        std::mem::size_of::<Conn>() <= 112,
        "{}",
        std::mem::size_of::<Conn>()
    );
}
