use std::time::{Duration, Instant, SystemTime};

use super::server::{
    self, parse_head, read_head, respond, wants_openmetrics, Head, HeadError, Incoming, MAX_HEAD,
};
use super::*;
use crate::record::{Direction, Finding, LostRecord, Record, RequestRecord};
use crate::test_util::events::*;
use crate::tracectx::TraceFormat;
use traceid_common::ROLE_SERVER;

/// A real engine record: nginx serves GET /api carrying a W3C traceparent.
fn request() -> RequestRecord {
    let c = C {
        pid: 10,
        fd: 5,
        ts: 1,
        comm: "nginx",
        role: ROLE_SERVER,
    };
    let mut s = Stream::default();
    s.open(c, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.data(c, 10, false, &get("/api", &[("traceparent", TP)]));
    s.data(c, 10, true, OK);
    s.close(c);
    let r = s.run().into_iter().next().expect("one request");
    assert_eq!(r.trace_id.as_deref(), Some(TRACE));
    r
}

fn req(comm: &str, direction: Direction, trace: Option<&str>, ms: f64) -> Record {
    let mut r = request();
    r.comm = comm.into();
    r.direction = direction;
    r.trace_id = trace.map(str::to_string);
    r.trace_format = trace.map(|_| TraceFormat::W3c);
    r.findings = if trace.is_some() {
        vec![]
    } else {
        vec![Finding::Missing]
    }
    .into();
    r.duration_ms = Some(ms);
    Record::Request(Box::new(r))
}

fn small_config() -> MetricsConfig {
    MetricsConfig {
        trace_series_cap: 3,
        trace_series_ttl: Duration::from_secs(300),
        comm_cap: 2,
        namespace_cap: 1,
        workload_cap: 1,
        remote_cap: 1,
        stage_cap: 4,
        process_metrics: false,
    }
}

/// 2023-11-14T22:13:20Z: a fixed wall clock for exemplar timestamps.
fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn small_registry() -> Metrics {
    let m = Metrics::new(&small_config());
    let now = Instant::now();
    m.observe_at(
        &req("nginx", Direction::Inbound, Some(TRACE), 12.0),
        now,
        wall(),
    );
    m.observe_at(&req("curl", Direction::Outbound, None, 0.3), now, wall());
    // A third process name is past comm_cap = 2.
    m.observe_at(&req("python3", Direction::Outbound, None, 0.3), now, wall());
    m.observe_at(
        &Record::Lost(LostRecord {
            event: "lost",
            ts: "2023-11-14T22:13:20.000Z".into(),
            stage: "kernel_ringbuf_full".into(),
            count: 3,
        }),
        now,
        wall(),
    );
    m.set_time_wait_sockets([
        ("127.0.0.1:8080", Holder::Client, 40),
        ("127.0.0.1:9090", Holder::Server, 2),
    ]);
    m
}

/// Histogram lines of traceid_http_request_duration_seconds for one label set, with
/// `exemplar` appended to the bucket holding the single observation (OpenMetrics only).
fn histogram(
    direction: &str,
    comm: &str,
    obs: f64,
    count: u64,
    exemplar_format: bool,
    exemplar: Option<&str>,
) -> String {
    let mut s = String::new();
    let labels = format!("direction=\"{direction}\",comm=\"{comm}\"");
    s.push_str(&format!(
        "traceid_http_request_duration_seconds_sum{{{labels}}} {}\n",
        format_f64(obs * count as f64)
    ));
    s.push_str(&format!(
        "traceid_http_request_duration_seconds_count{{{labels}}} {count}\n"
    ));
    let mut ex_done = false;
    for b in DURATION_BUCKETS
        .iter()
        .map(|b| Some(*b))
        .chain(std::iter::once(None))
    {
        let n = if b.is_none_or(|b| obs <= b) { count } else { 0 };
        // OpenMetrics writes integral bounds as `1.0`, the 0.0.4 encoder as `1`.
        let le = b.map_or("+Inf".to_string(), |b| {
            let v = format_f64(b);
            if exemplar_format {
                v
            } else {
                v.trim_end_matches(".0").to_string()
            }
        });
        // OpenMetrics puts `le` first, the 0.0.4 encoder last.
        let all = if exemplar_format {
            format!("le=\"{le}\",{labels}")
        } else {
            format!("{labels},le=\"{le}\"")
        };
        s.push_str(&format!(
            "traceid_http_request_duration_seconds_bucket{{{all}}} {n}"
        ));
        if let (Some(ex), false, true) = (exemplar, ex_done, n > 0) {
            s.push_str(ex);
            ex_done = true;
        }
        s.push('\n');
    }
    s
}

fn format_f64(v: f64) -> String {
    let s = format!("{v:?}");
    s
}

const HELP_REQUESTS: &str = "HTTP requests observed, by direction, process and trace-context format (none: no trace context).";
const HELP_FINDINGS: &str = "Findings on observed requests, by kind and process.";
const HELP_TRACE: &str = "HTTP requests per trace id (bounded: LRU with TTL and a cap; see traceid_trace_series_evicted_total).";
const HELP_EVICTED: &str = "Per-trace series dropped from traceid_trace_requests_total (cap reached or idle past the TTL).";
const HELP_DURATION: &str =
    "HTTP request duration, request start to end of response; exemplars carry the trace id.";

fn expected(openmetrics: bool) -> String {
    let (counter, total) = if openmetrics {
        ("traceid_http_requests", "traceid_http_requests_total")
    } else {
        ("traceid_http_requests_total", "traceid_http_requests_total")
    };
    let name = |base: &str| {
        if openmetrics {
            base.to_string()
        } else {
            format!("{base}_total")
        }
    };
    let mut s = String::new();
    s += &format!("# HELP {counter} {HELP_REQUESTS}\n# TYPE {counter} counter\n");
    s += &format!(
        "{total}{{direction=\"inbound\",comm=\"nginx\",trace_format=\"w3c\"}} 1\n\
         {total}{{direction=\"outbound\",comm=\"curl\",trace_format=\"none\"}} 1\n\
         {total}{{direction=\"outbound\",comm=\"other\",trace_format=\"none\"}} 1\n"
    );
    let f = name("traceid_findings");
    s += &format!("# HELP {f} {HELP_FINDINGS}\n# TYPE {f} counter\n");
    s += "traceid_findings_total{finding=\"missing\",comm=\"curl\"} 1\n\
          traceid_findings_total{finding=\"missing\",comm=\"other\"} 1\n";
    let d = "traceid_http_request_duration_seconds";
    s += &format!("# HELP {d} {HELP_DURATION}\n# TYPE {d} histogram\n");
    if openmetrics {
        s += &format!("# UNIT {d} seconds\n");
    }
    let exemplar = format!(" # {{trace_id=\"{TRACE}\"}} 0.012 1700000000.0");
    s += &histogram(
        "inbound",
        "nginx",
        0.012,
        1,
        openmetrics,
        openmetrics.then_some(exemplar.as_str()),
    );
    s += &histogram("outbound", "curl", 0.0003, 1, openmetrics, None);
    s += &histogram("outbound", "other", 0.0003, 1, openmetrics, None);
    // Families without series (the tcp_* ones here) are left out.
    let l = name("traceid_events_lost");
    s += &format!("# HELP {l} Events lost, by the stage that lost them.\n# TYPE {l} counter\n");
    s += "traceid_events_lost_total{stage=\"kernel_ringbuf_full\"} 3\n";
    if openmetrics {
        s += "# HELP traceid_build traceid build information.\n# TYPE traceid_build info\n";
    } else {
        s += "# HELP traceid_build_info traceid build information.\n# TYPE traceid_build_info gauge\n";
    }
    s += &format!(
        "traceid_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    // Then the collectors, in registration order.
    s += &trace_series_block(openmetrics);
    s += "# HELP traceid_tcp_time_wait_sockets Sockets in TIME_WAIT per service endpoint (the listening side) and the end that holds them (latest census).\n\
          # TYPE traceid_tcp_time_wait_sockets gauge\n\
          traceid_tcp_time_wait_sockets{remote=\"127.0.0.1:8080\",holder=\"client\"} 40\n\
          traceid_tcp_time_wait_sockets{remote=\"other\",holder=\"server\"} 2\n";
    if openmetrics {
        s += "# EOF\n";
    }
    s
}

fn trace_series_block(openmetrics: bool) -> String {
    let name = |base: &str| {
        if openmetrics {
            base.to_string()
        } else {
            format!("{base}_total")
        }
    };
    let mut s = String::new();
    let t = name("traceid_trace_requests");
    s += &format!("# HELP {t} {HELP_TRACE}\n# TYPE {t} counter\n");
    s += &format!(
        "traceid_trace_requests_total{{trace_id=\"{TRACE}\",comm=\"nginx\",direction=\"inbound\"}} 1\n"
    );
    let e = name("traceid_trace_series_evicted");
    s += &format!("# HELP {e} {HELP_EVICTED}\n# TYPE {e} counter\n");
    s += "traceid_trace_series_evicted_total 0\n";
    s
}

/// The exposition with each family's samples sorted: families come in registration order,
/// but the series of one family in hash order. Every line is still compared exactly.
fn canonical(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort();
            out.extend(samples.drain(..).map(str::to_string));
            out.push(line.to_string());
        } else {
            samples.push(line);
        }
    }
    samples.sort();
    out.extend(samples.drain(..).map(str::to_string));
    out.join("\n") + "\n"
}

fn assert_text_eq(got: &str, want: &str) {
    assert!(got.ends_with('\n'));
    let (got, want) = (&canonical(got), &canonical(want));
    if got != want {
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "first difference at line {}\n--- got:\n{got}", i + 1);
        }
        assert_eq!(got, want, "lengths differ");
    }
}

#[test]
fn metrics_prometheus_text_exposition_is_exact() {
    let m = small_registry();
    assert_text_eq(&m.encode_prometheus(), &expected(false));
}

#[test]
fn metrics_openmetrics_exposition_is_exact_with_exemplar() {
    let m = small_registry();
    let om = m.encode_openmetrics();
    assert_text_eq(&om, &expected(true));
    assert!(om.contains(&format!("# {{trace_id=\"{TRACE}\"}} 0.012")));
}

#[test]
fn metrics_trace_series_cap_holds_for_10000_trace_ids_and_counts_evictions() {
    let m = Metrics::new(&MetricsConfig {
        process_metrics: false,
        ..MetricsConfig::default()
    });
    let now = Instant::now();
    for i in 0..10_000u32 {
        let id = format!("{i:032x}");
        m.observe_at(&req("svc", Direction::Inbound, Some(&id), 1.0), now, wall());
    }
    assert_eq!(m.trace_series(), 2000);
    assert_eq!(m.trace_series_evicted(), 8000);
    let text = m.encode_prometheus();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("traceid_trace_requests_total{"))
        .collect();
    assert_eq!(series.len(), 2000);
    // The most recent ids are the ones kept.
    assert!(text.contains(&format!("trace_id=\"{:032x}\"", 9999)));
    assert!(!text.contains(&format!("trace_id=\"{:032x}\"", 7999)));
    assert!(text.contains("traceid_trace_series_evicted_total 8000\n"));
}

#[test]
fn metrics_trace_series_expire_after_the_ttl_and_repeat_ids_count_up() {
    let m = Metrics::new(&MetricsConfig {
        trace_series_ttl: Duration::from_secs(60),
        process_metrics: false,
        ..MetricsConfig::default()
    });
    let t0 = Instant::now();
    let a = "a".repeat(32);
    let b = "b".repeat(32);
    m.observe_at(&req("svc", Direction::Inbound, Some(&a), 1.0), t0, wall());
    m.observe_at(
        &req("svc", Direction::Inbound, Some(&b), 1.0),
        t0 + Duration::from_secs(30),
        wall(),
    );
    m.observe_at(
        &req("svc", Direction::Inbound, Some(&b), 1.0),
        t0 + Duration::from_secs(40),
        wall(),
    );
    assert_eq!(m.trace_series(), 2);
    // At t0 + 70 s, `a` (idle 70 s) expires, `b` (idle 30 s) stays with its count of 2.
    m.observe_at(
        &req("svc", Direction::Outbound, None, 1.0),
        t0 + Duration::from_secs(70),
        wall(),
    );
    let mut lru = lock(&m.traces);
    lru.expire(t0 + Duration::from_secs(70));
    assert_eq!(lru.len(), 1);
    assert_eq!(lru.evicted(), 1);
    let kept: Vec<_> = lru.iter().map(|(k, n)| (k.0.clone(), n)).collect();
    assert_eq!(kept, vec![(b.clone(), 2)]);
    lru.expire(t0 + Duration::from_secs(100));
    assert!(lru.is_empty());
}

#[test]
fn metrics_trace_series_cap_zero_keeps_none() {
    let mut lru = lru::TraceLru::new(0, Duration::from_secs(1));
    lru.inc(("x".into(), "c".into(), "inbound"), Instant::now());
    assert!(lru.is_empty());
}

#[test]
fn metrics_label_cap_keeps_the_first_values_then_other() {
    let mut cap = LabelCap::new(2);
    assert_eq!(cap.label("a"), "a");
    assert_eq!(cap.label("b"), "b");
    assert_eq!(cap.label("c"), "other");
    assert_eq!(cap.label("a"), "a");
    assert_eq!(cap.label(""), "unknown");
}

#[test]
fn metrics_label_values_are_escaped() {
    let m = Metrics::new(&small_config());
    m.observe_at(
        &req("we\"ird\\", Direction::Inbound, None, 1.0),
        Instant::now(),
        wall(),
    );
    assert!(m.encode_prometheus().contains("comm=\"we\\\"ird\\\\\""));
}

#[test]
fn metrics_exemplar_trace_id_is_truncated_to_the_openmetrics_limit() {
    let m = Metrics::new(&small_config());
    let long = "r".repeat(300);
    m.observe_at(
        &req("svc", Direction::Inbound, Some(&long), 1.0),
        Instant::now(),
        wall(),
    );
    let om = m.encode_openmetrics();
    let ex = om
        .lines()
        .find_map(|l| l.split_once(" # {trace_id=\"").map(|(_, r)| r))
        .expect("an exemplar");
    let id = ex.split('"').next().unwrap();
    assert_eq!(id.len() + "trace_id".len(), 128);
}

#[test]
fn metrics_accept_header_negotiation() {
    // What Prometheus sends.
    assert!(wants_openmetrics(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ));
    assert!(wants_openmetrics("application/openmetrics-text"));
    assert!(!wants_openmetrics(""));
    assert!(!wants_openmetrics("*/*"));
    assert!(!wants_openmetrics("text/plain"));
    assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    assert!(!wants_openmetrics(
        "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
    ));
}

/// Delivers its pieces one `read` at a time, as a slow or fragmenting client would.
struct Pieces(std::collections::VecDeque<Vec<u8>>);

impl Pieces {
    fn of(pieces: &[&[u8]]) -> Pieces {
        Pieces(pieces.iter().map(|p| p.to_vec()).collect())
    }
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(mut piece) = self.0.pop_front() else {
            return Ok(0);
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            self.0.push_front(piece.split_off(n));
        }
        Ok(n)
    }
}

#[test]
fn metrics_http_heads_and_routes() {
    let h = parse_head(
        b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\naccept: application/openmetrics-text\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        h,
        Head {
            method: "GET".into(),
            path: "/metrics".into(),
            accept: "application/openmetrics-text".into()
        }
    );
    let m = small_registry();
    let (status, ctype, body) = respond(&h, &m);
    assert_eq!(status, 200);
    assert_eq!(ctype, OPENMETRICS_CONTENT_TYPE);
    assert!(body.ends_with("# EOF\n"));
    let plain = Head {
        accept: String::new(),
        ..h
    };
    let (_, ctype, body) = respond(&plain, &m);
    assert_eq!(ctype, PROMETHEUS_CONTENT_TYPE);
    assert!(!body.contains("# EOF"));
    let health = Head {
        path: "/healthz".into(),
        ..plain
    };
    assert_eq!(respond(&health, &m).0, 200);
    let missing = Head {
        path: "/nope".into(),
        ..health
    };
    assert_eq!(respond(&missing, &m).0, 404);
    let post = Head {
        method: "POST".into(),
        ..missing
    };
    assert_eq!(respond(&post, &m).0, 405);
}

#[test]
fn metrics_http_head_parsing_waits_refuses_and_joins_accept() {
    // Not complete until the blank line.
    assert_eq!(
        parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"),
        Ok(None)
    );
    // Several Accept lines are one list, in order; other headers do not count.
    let h = parse_head(
        b"GET / HTTP/1.0\r\nAccept: text/plain;q=0.5\r\nX-Accept: nope\r\nACCEPT: application/openmetrics-text\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.accept, "text/plain;q=0.5,application/openmetrics-text");
    assert!(wants_openmetrics(&h.accept));

    for bad in [
        &b"garbage\r\n\r\n"[..],
        b"GET /metrics HTTP/2.0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
    ] {
        let err = parse_head(bad).unwrap_err();
        assert!(matches!(err, HeadError::Malformed(_)), "{err}");
        assert_eq!(err.status(), 400);
    }

    // Still no blank line at MAX_HEAD bytes: too large, whatever follows.
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    long.resize(MAX_HEAD, b'a');
    assert_eq!(parse_head(&long), Err(HeadError::TooLarge));
    assert_eq!(parse_head(&long[..MAX_HEAD - 1]), Ok(None));
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let err = parse_head(&many).unwrap_err();
    assert_eq!(err, HeadError::TooLarge);
    assert_eq!(err.status(), 431);
}

#[test]
fn metrics_http_head_read_in_pieces() {
    // Split inside the request line, inside a header and inside the final CRLFCRLF.
    let mut split = Pieces::of(&[
        b"GE",
        b"T /metr",
        b"ics HTTP/1.1\r\nAcc",
        b"ept: application/openmetrics-text\r",
        b"\n\r",
        b"\n",
    ]);
    assert_eq!(
        read_head(&mut split).unwrap(),
        Incoming::Head(Head {
            method: "GET".into(),
            path: "/metrics".into(),
            accept: "application/openmetrics-text".into()
        })
    );
    // The peer goes away mid-head.
    let mut gone = Pieces::of(&[b"GET /metrics HTTP/1.1\r\n"]);
    assert_eq!(read_head(&mut gone).unwrap(), Incoming::Closed);
    // An endless head is refused after MAX_HEAD bytes, the rest left unread.
    let start = b"GET / HTTP/1.1\r\nX: ";
    let mut endless = Pieces::of(&[start, &vec![b'a'; 3 * MAX_HEAD]]);
    assert_eq!(
        read_head(&mut endless).unwrap(),
        Incoming::Refused(HeadError::TooLarge)
    );
    let unread: usize = endless.0.iter().map(Vec::len).sum();
    assert_eq!(unread, start.len() + 3 * MAX_HEAD - MAX_HEAD);
}

/// One request over a real socket to the real server, sent in `pieces` a little apart; the
/// whole answer as text.
fn exchange(addr: std::net::SocketAddr, pieces: &[&[u8]]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for p in pieces {
        s.write_all(p).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    String::from_utf8(answer).unwrap()
}

#[test]
fn metrics_http_server_answers_split_bad_and_oversized_heads() {
    let listener = server::bind("127.0.0.1:0").unwrap();
    let addr = server::spawn(listener, std::sync::Arc::new(small_registry())).unwrap();

    let om = exchange(
        addr,
        &[
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;",
            b"version=1.0.0\r\n\r\n",
        ],
    );
    assert!(om.starts_with("HTTP/1.1 200 OK\r\n"), "{om}");
    assert!(
        om.contains(&format!("Content-Type: {OPENMETRICS_CONTENT_TYPE}\r\n")),
        "{om}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");

    let text = exchange(addr, &[b"GET /metrics HTTP/1.1\r\n\r\n"]);
    assert!(
        text.contains(&format!("Content-Type: {PROMETHEUS_CONTENT_TYPE}\r\n")),
        "{text}"
    );

    let bad = exchange(addr, &[b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"]);
    assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
    assert!(bad.contains("malformed request head"), "{bad}");

    // Exactly MAX_HEAD bytes and no end in sight (more would be left unread, and closing a
    // socket with unread bytes resets the connection).
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(MAX_HEAD, b'a');
    let refused = exchange(addr, &[&huge]);
    assert!(
        refused.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{refused}"
    );
}

#[test]
fn metrics_process_stat_parsing() {
    let stat = "1234 (trace id) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 \
                1000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
    let s = super::process::parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0).unwrap();
    assert_eq!(s.cpu_seconds, 3.0);
    assert_eq!(s.start_time_seconds, 1_700_000_010.0);
    assert_eq!(s.virtual_bytes, 104_857_600.0);
    assert_eq!(s.resident_bytes, 2560.0 * 4096.0);
}

#[test]
fn metrics_process_collector_exports_cpu_and_memory() {
    let m = Metrics::new(&MetricsConfig::default());
    let text = m.encode_prometheus();
    assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    assert!(text.contains("\nprocess_resident_memory_bytes "));
}

/// A request of `comm` in a pod of `namespace`, owned by `workload`.
fn in_pod(comm: &str, namespace: &str, workload: &str) -> Record {
    use crate::record::{Identity, Pod, Workload, WorkloadKind};
    let Record::Request(mut q) = req(comm, Direction::Inbound, Some(TRACE), 1.0) else {
        unreachable!()
    };
    q.identity = Some(std::sync::Arc::new(Identity {
        container: None,
        pod: Some(Pod {
            name: Some(format!("{workload}-0")),
            uid: format!("uid-{workload}"),
        }),
        namespace: Some(namespace.into()),
        workload: Some(Workload {
            kind: WorkloadKind::StatefulSet,
            name: workload.into(),
            derived: true,
        }),
    }));
    Record::Request(q)
}

#[test]
fn pods_add_bounded_namespace_and_workload_labels_and_nothing_per_pod() {
    let m = Metrics::new(&small_config());
    let now = Instant::now();
    m.observe_at(&in_pod("nginx", "shop", "web"), now, wall());
    // Past namespace_cap = 1 and workload_cap = 1.
    m.observe_at(&in_pod("nginx", "billing", "ledger"), now, wall());
    m.observe_at(
        &req("nginx", Direction::Inbound, Some(TRACE), 1.0),
        now,
        wall(),
    );
    let t = m.encode_prometheus();
    for line in [
        "traceid_http_requests_total{direction=\"inbound\",comm=\"nginx\",trace_format=\"w3c\",namespace=\"shop\",workload=\"web\"} 1",
        "traceid_http_requests_total{direction=\"inbound\",comm=\"nginx\",trace_format=\"w3c\",namespace=\"other\",workload=\"other\"} 1",
        // A process outside pods: neither label.
        "traceid_http_requests_total{direction=\"inbound\",comm=\"nginx\",trace_format=\"w3c\"} 1",
    ] {
        assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
    }
    assert!(
        t.contains("traceid_http_request_duration_seconds_count{direction=\"inbound\",comm=\"nginx\",namespace=\"shop\",workload=\"web\"} 1"),
        "{t}"
    );
    for per_pod in ["web-0", "uid-web", "pod="] {
        assert!(!t.contains(per_pod), "{per_pod} in\n{t}");
    }
}
