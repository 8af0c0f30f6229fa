//! The pipeline on synthetic record streams: what live runs and replays share.

use std::net::SocketAddr;

use super::*;
use crate::identity::IdentityFilter;
use crate::lifecycle::census::TimeWaitSocket;
use crate::lifecycle::Sysctls;
use crate::record::{Direction, Finding, Identity, RequestRecord};
use crate::recording;
use crate::report::diagnose::Aggregator;
use crate::test_util::events::*;
use crate::test_util::Rng;
use traceid_common::{tcp_state, ROLE_CLIENT};

fn run(cfg: PipelineConfig, records: &[Vec<u8>]) -> (Vec<Record>, Pipeline) {
    let mut p = Pipeline::new(cfg);
    let mut out = Vec::new();
    let mut sink = |r: &Record| out.push(r.clone());
    for r in records {
        p.process(r, &mut sink);
    }
    p.finish(&mut sink);
    (out, p)
}

fn lost(out: &[Record], stage: &str) -> u64 {
    out.iter()
        .filter_map(|r| match r {
            Record::Lost(l) if l.stage == stage => Some(l.count),
            _ => None,
        })
        .sum()
}

const SERVER: ([u8; 4], u16) = ([10, 0, 0, 2], 8080);

fn client(i: u16) -> C {
    C {
        pid: 4242,
        fd: 10 + i32::from(i),
        ts: 100 + u64::from(i),
        comm: "churner",
        role: ROLE_CLIENT,
    }
}

/// `n` connections of one client process to SERVER, each carrying one request and closed by
/// the client first (it keeps the TIME_WAIT); returns their TIME_WAIT sockets.
fn churn(s: &mut Stream, n: u16) -> Vec<TimeWaitSocket> {
    let mut tw = Vec::new();
    for i in 0..n {
        let c = client(i);
        let local = ([10, 0, 0, 1], 40_000 + i);
        s.open(c, local.0, local.1, SERVER.0, SERVER.1);
        s.data(c, c.pid, true, &get("/churn", &[("traceparent", TP)]));
        s.data(c, c.pid, false, OK);
        s.state(c, local, SERVER, tcp_state::FIN_WAIT1);
        s.close(c);
        tw.push(TimeWaitSocket {
            local: SocketAddr::from((local.0, local.1)),
            remote: SocketAddr::from(SERVER),
        });
    }
    tw
}

fn sysctls() -> Sysctls {
    Sysctls {
        tcp_tw_reuse: Some(2),
        port_range: Some((32768, 60999)),
    }
}

/// A run with requests, connection churn, censuses (two, so growth is known), a kernel loss
/// and garbage: everything a live run feeds the pipeline.
fn busy_run() -> Vec<Vec<u8>> {
    let mut s = Stream::default();
    s.census(&[], &sysctls());
    s.advance(1_000_000_000);
    let tw = churn(&mut s, 30);
    s.records
        .push(loss_record(5_000_000_000, "kernel_ringbuf_full", 3));
    s.records.push(vec![0xde, 0xad]);
    s.advance(1_000_000_000);
    s.census(&tw, &sysctls());
    s.records
}

#[test]
fn census_records_drive_buildup_and_the_connection_section() {
    let mut cfg = PipelineConfig::default();
    cfg.lifecycle.tw_threshold = Some(20);
    let (out, p) = run(cfg, &busy_run());
    let buildups: Vec<_> = out
        .iter()
        .filter_map(|r| match r {
            Record::Buildup(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(buildups.len(), 1, "{out:#?}");
    let b = buildups[0];
    assert_eq!(b.remote, "10.0.0.2:8080");
    assert_eq!(b.time_wait, 30);
    assert_eq!((b.pid, b.comm.as_deref()), (Some(4242), Some("churner")));
    assert_eq!(b.requests_per_connection, Some(1.0));
    let tw = p.time_wait_report();
    assert_eq!(tw.total, 30);
    let peer = tw
        .peers
        .iter()
        .find(|p| p.pid == 4242)
        .expect("the churning client is in the connection section");
    assert_eq!(
        (peer.opened, peer.closed, peer.closed_local_first),
        (30, 30, 30)
    );
    assert_eq!(peer.requests, 30);
}

#[test]
fn losses_are_reported_by_stage_and_garbage_is_counted() {
    let (out, p) = run(PipelineConfig::default(), &busy_run());
    assert_eq!(lost(&out, "kernel_ringbuf_full"), 3);
    assert_eq!(lost(&out, "decode"), 1);
    assert_eq!(p.stats().decode_errors, 1);
    let requests = out
        .iter()
        .filter(|r| matches!(r, Record::Request(q) if q.direction == Direction::Outbound))
        .count();
    assert_eq!(requests, 30);
}

#[test]
fn own_losses_are_reported_once_as_increases() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = Vec::new();
    let mut sink = |r: &Record| out.push(r.clone());
    p.process(&[1, 2, 3], &mut sink);
    p.report_losses(10, &mut sink);
    p.report_losses(20, &mut sink);
    p.process(&[4], &mut sink);
    p.process(&[5], &mut sink);
    p.finish(&mut sink);
    let counts: Vec<u64> = out
        .iter()
        .filter_map(|r| match r {
            Record::Lost(l) => Some(l.count),
            _ => None,
        })
        .collect();
    assert_eq!(counts, [1, 2]);
}

#[test]
fn hostile_agent_records_are_decode_errors_not_panics() {
    let mut rng = Rng::new(99);
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut emitted = 0u64;
    let mut sink = |_: &Record| emitted += 1;
    let census = census_record::encode(
        1,
        &crate::lifecycle::census::Census {
            sockets: vec![TimeWaitSocket {
                local: "127.0.0.1:1".parse().unwrap(),
                remote: "127.0.0.1:2".parse().unwrap(),
            }],
            truncated: false,
        },
        &sysctls(),
    );
    let loss = loss_record(1, "kernel_ringbuf_full", 1);
    for _ in 0..2000 {
        let mut r = if rng.pct(50) {
            census.clone()
        } else {
            loss.clone()
        };
        let cut = rng.below(r.len() as u64 + 1) as usize;
        r.truncate(cut);
        if let Some(b) = r.get_mut(48 + rng.below(16) as usize) {
            *b = rng.next_u64() as u8;
        }
        p.process(&r, &mut sink);
    }
    p.finish(&mut sink);
    assert!(p.stats().decode_errors > 0);
    assert_eq!(p.stats().records, 2000);
}

#[test]
fn a_loss_record_round_trips() {
    let raw = loss_record(77, "kernel_socket_table_full", 12);
    let (out, _) = run(PipelineConfig::default(), &[raw]);
    let Some(Record::Lost(l)) = out.first() else {
        panic!("no lost record: {out:?}");
    };
    assert_eq!(
        (l.stage.as_str(), l.count),
        ("kernel_socket_table_full", 12)
    );
    assert_eq!(decode_loss(&[0; 8]), None, "a loss without a stage name");
}

/// The diagnosis a pipeline makes of `records`, as `traceid diagnose` and `traceid replay
/// --diagnose` print it (JSON).
fn diagnosis_json(records: &[Vec<u8>]) -> String {
    let mut cfg = PipelineConfig::default();
    cfg.lifecycle.tw_threshold = Some(20);
    let mut p = Pipeline::new(cfg);
    let mut agg = Aggregator::default();
    let mut sink = |r: &Record| agg.add(r);
    for r in records {
        p.process(r, &mut sink);
    }
    p.finish(&mut sink);
    let mut d = agg.diagnosis(p.span_s());
    d.time_wait = Some(p.time_wait_report());
    serde_json::to_string_pretty(&d).unwrap()
}

#[test]
fn a_recording_replays_to_the_same_diagnosis_connection_section_included() {
    let records = busy_run();
    let mut w = recording::Writer::new(Vec::new(), 0).unwrap();
    for r in &records {
        w.write(r).unwrap();
    }
    let file = w.finish().unwrap();
    let mut rd = recording::Reader::new(&file[..]).unwrap();
    let mut replayed = Vec::new();
    while let Some(r) = rd.next_record().unwrap() {
        replayed.push(r);
    }
    let live = diagnosis_json(&records);
    assert_eq!(live, diagnosis_json(&replayed));
    // The report is not empty: the sections the comparison is about are there.
    for needle in [
        "\"closed_local_first\": 30",
        "\"buildups\"",
        "\"kernel_ringbuf_full\"",
    ] {
        assert!(live.contains(needle), "{needle} missing from {live}");
    }
    let requests: Vec<_> = crate::test_util::events::run_records(&replayed);
    assert!(requests
        .iter()
        .all(|q| q.trace_id.as_deref() == Some(TRACE) && !q.has(Finding::Missing)));
}

const NGINX: C = C {
    pid: 900,
    fd: 5,
    ts: 9,
    comm: "nginx",
    role: traceid_common::ROLE_SERVER,
};

#[test]
fn a_head_cut_by_the_capture_window_is_truncated_never_missing() {
    // A traceparent at byte ~12,460 of a head, 8 KiB captured.
    let filler = "x".repeat(12_400);
    let head = get("/long", &[("x-filler", &filler), ("traceparent", TP)]);
    let mut s = Stream::default();
    s.data_captured(NGINX, 900, false, &head, 8192);
    s.data(NGINX, 900, true, OK);
    let (out, _) = run(PipelineConfig::default(), &s.records);
    let q = out
        .iter()
        .find_map(|r| match r {
            Record::Request(q) => Some(q),
            _ => None,
        })
        .expect("the request is reported");
    assert_eq!(*q.findings, [Finding::Truncated], "{q:?}");
    assert_eq!(q.reason.as_deref(), Some(crate::engine::TRUNCATED_REASON));
    assert_eq!(&*q.path, "/long");
}

#[test]
fn pipelined_requests_past_the_capture_window_are_counted_not_silently_lost() {
    // 1,000 pipelined requests in one write, 8 KiB of it captured; the server answers each.
    let mut one_write = Vec::new();
    for i in 0..1000 {
        one_write.extend_from_slice(&get(&format!("/pipe{i}"), &[("traceparent", TP)]));
    }
    let mut s = Stream::default();
    s.data_captured(NGINX, 900, false, &one_write, 8192);
    for _ in 0..1000 {
        s.data(NGINX, 900, true, OK);
    }
    s.close(NGINX);
    let (out, _) = run(PipelineConfig::default(), &s.records);
    let reported = out
        .iter()
        .filter(|r| matches!(r, Record::Request(_)))
        .count() as u64;
    let unseen = lost(&out, "requests_unseen");
    assert!(reported > 10 && reported < 1000, "{reported}");
    assert_eq!(
        reported + unseen,
        1000,
        "reported {reported}, unseen {unseen}"
    );
    // The bytes not seen held the other requests: the estimate (by mean request size) says
    // about how many.
    let estimate = lost(&out, "requests_uninspected_estimate");
    assert!(
        (reported + estimate).abs_diff(1000) <= 100,
        "reported {reported}, estimated {estimate}"
    );
    let uninspected = lost(&out, "uninspected_bytes");
    assert!(
        uninspected > 0 && uninspected <= one_write.len() as u64 - 8192 + 200,
        "{uninspected}"
    );
    // The request cut mid-head is not `missing`.
    assert!(out.iter().all(|r| match r {
        Record::Request(q) => !q.has(Finding::Missing),
        _ => true,
    }));
}

/// A pod's server (pid 10) answering a host client (pid 20), with pid 10's identity announced
/// first, as the live loop does.
fn pod_and_host_exchange() -> (Vec<Vec<u8>>, Identity) {
    use crate::record::{Container, Pod, Workload, WorkloadKind};
    use traceid_common::ROLE_SERVER;
    let identity = Identity {
        container: Some(Container {
            id: "ab".repeat(32),
            runtime: None,
            name: Some("web".into()),
        }),
        pod: Some(Pod {
            name: Some("web-0".into()),
            uid: "8e1c6a2b-4f3d-4c5e-9a7b-0d1e2f3a4b5c".into(),
        }),
        namespace: Some("shop".into()),
        workload: Some(Workload {
            kind: WorkloadKind::StatefulSet,
            name: "web".into(),
            derived: true,
        }),
    };
    let server = C {
        pid: 10,
        fd: 4,
        ts: 1,
        comm: "httpd",
        role: ROLE_SERVER,
    };
    let client = C {
        pid: 20,
        fd: 3,
        ts: 2,
        comm: "curl",
        role: ROLE_CLIENT,
    };
    let mut s = Stream::default();
    s.records
        .push(crate::identity::wire::encode(1, 10, &identity));
    s.open(server, [127, 0, 0, 1], 8080, [127, 0, 0, 1], 40000);
    s.open(client, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 8080);
    s.data(client, 20, true, &get("/x", &[("traceparent", TP)]));
    s.data(server, 10, false, &get("/x", &[("traceparent", TP)]));
    s.data(server, 10, true, OK);
    s.data(client, 20, false, OK);
    (s.records, identity)
}

fn requests(out: &[Record]) -> Vec<&RequestRecord> {
    out.iter()
        .filter_map(|r| match r {
            Record::Request(q) => Some(q.as_ref()),
            _ => None,
        })
        .collect()
}

#[test]
fn request_records_carry_their_process_identity_and_only_theirs() {
    let (records, identity) = pod_and_host_exchange();
    let (out, p) = run(PipelineConfig::default(), &records);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 2, "{out:?}");
    assert_eq!(p.stats().decode_errors, 0);
    for q in reqs {
        let json = crate::report::json_line(&Record::Request(Box::new(q.clone())));
        if q.pid == 10 {
            assert_eq!(q.identity.as_deref(), Some(&identity));
            for needle in [
                format!(
                    "\"container\":{{\"id\":\"{}\",\"name\":\"web\"}}",
                    "ab".repeat(32)
                ),
                "\"pod\":{\"name\":\"web-0\",\"uid\":\"8e1c6a2b-4f3d-4c5e-9a7b-0d1e2f3a4b5c\"}"
                    .into(),
                "\"namespace\":\"shop\"".into(),
                "\"workload\":{\"kind\":\"statefulset\",\"name\":\"web\",\"derived\":true}".into(),
            ] {
                assert!(json.contains(&needle), "{needle} not in {json}");
            }
        } else {
            assert_eq!(q.identity, None);
            for absent in ["container", "pod", "namespace", "workload"] {
                assert!(!json.contains(&format!("\"{absent}\"")), "{json}");
            }
        }
    }
}

#[test]
fn identity_filters_keep_only_the_matching_processes() {
    let (records, _) = pod_and_host_exchange();
    let only = |f: IdentityFilter| {
        let cfg = PipelineConfig {
            identity_filter: f,
            ..PipelineConfig::default()
        };
        let (out, _) = run(cfg, &records);
        requests(&out).iter().map(|q| q.pid).collect::<Vec<_>>()
    };
    let by_ns = IdentityFilter {
        namespaces: vec!["shop".into()],
        ..IdentityFilter::default()
    };
    assert_eq!(only(by_ns), [10]);
    let by_pod = IdentityFilter {
        pods: vec!["web-1".into()],
        ..IdentityFilter::default()
    };
    assert_eq!(only(by_pod), Vec::<u32>::new());
    let by_container = IdentityFilter {
        containers: vec!["abab".into()],
        ..IdentityFilter::default()
    };
    assert_eq!(only(by_container), [10]);
    let mut all = only(IdentityFilter::default());
    all.sort();
    assert_eq!(all, [10, 20]);
}

#[test]
fn a_recording_keeps_identities_and_broken_identity_records_are_decode_errors() {
    let (records, identity) = pod_and_host_exchange();
    let mut w = recording::Writer::new(Vec::new(), 0).unwrap();
    for r in &records {
        w.write(r).unwrap();
    }
    let file = w.finish().unwrap();
    let mut rd = recording::Reader::new(&file[..]).unwrap();
    let mut replayed = Vec::new();
    while let Some(r) = rd.next_record().unwrap() {
        replayed.push(r);
    }
    let (out, _) = run(PipelineConfig::default(), &replayed);
    let server = requests(&out).into_iter().find(|q| q.pid == 10).unwrap();
    assert_eq!(server.identity.as_deref(), Some(&identity));
    let mut broken = records[0].clone();
    broken.truncate(broken.len() - 3);
    let (_, p) = run(PipelineConfig::default(), &[broken]);
    assert_eq!(p.stats().decode_errors, 1);
}

#[test]
fn gaps_of_any_length_are_counted_without_overflow() {
    // A replayed file can claim any real length: two gaps of 2^64-1 bytes on one stream.
    let mut s = Stream::default();
    for _ in 0..2 {
        s.data(NGINX, 900, false, &get("/a", &[]));
        let mut cut = s.records.pop().unwrap();
        let real_len = std::mem::offset_of!(traceid_common::DataEvent, real_len);
        cut[real_len..real_len + 8].copy_from_slice(&u64::MAX.to_ne_bytes());
        s.records.push(cut);
    }
    let (out, _) = run(PipelineConfig::default(), &s.records);
    assert_eq!(lost(&out, "uninspected_bytes"), u64::MAX);
}
