//! Issue 14, done-when: a gRPC chain instrumented with OpenTelemetry (W3C `traceparent` in
//! the call metadata), front client -> middle -> back (tests/services/grpc/chain.py), watched
//! by the real agent. The middle's three methods propagate, drop and re-mint the context; its
//! call to back is named after the inbound call it serves (`/chain.Back/<Method>For<trace
//! id>`), so a link to the wrong inbound call shows.
//!
//! What each side can know (tests/h2.rs): the side that reads a header block decodes it
//! exactly; of a vectored write the kernel inspects the first 16 iovecs only, and gRPC C-core
//! writes every literal name and value of a header block as an iovec of its own. The first
//! call on a connection (about 30 iovecs: every field is a new literal) is cut, so the entries
//! it inserted into the writer's HPACK table are never seen, and later calls index them. Alone,
//! the middle would know those calls' headers as `unknown`. But back runs on this host too
//! and reads every call whole: the agent gives the middle's record of each call the head back
//! decoded on the same connection and stream (traceid-user/src/engine/peer.rs), so every call,
//! the drop route's included, is known exactly and carries its finding.
//! Run by `cargo xtask integration-test` (as root, one test at a time).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::time::Duration;

use traceid_tests::*;
// Used by the harness library (tests/src), not by name here.
use {libc as _, serde_json as _, thiserror as _};

const PYTHON: &str = "/usr/bin/python3";
const METHODS: [&str; 3] = ["Propagate", "Drop", "Restart"];
/// Calls per method.
const CALLS: u64 = 10;

fn chain_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("services/grpc/chain.py")
}

/// The trace id the front starts for its call `i` to METHODS[method] (chain.py's
/// `front_trace_id`).
fn front_trace_id(method: usize, i: u64) -> String {
    format!(
        "{:032x}",
        0xf0e1_0000_0000_0000_0000_0000_0000_0000u128
            + ((method as u128) << 32)
            + u128::from(i)
            + 1
    )
}

fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit_once(':')?.1.parse().ok()
}

fn findings(r: &Value) -> Vec<&str> {
    r["findings"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A chain.py server (`back PORT` or `middle PORT BACK`), stopped on drop.
struct Service {
    peer: Peer,
    port: u16,
}

impl Service {
    fn start(role: &str, extra: &[u16]) -> Service {
        let port = free_port();
        let mut peer = Peer::spawn(
            Command::new(PYTHON)
                .arg(chain_py())
                .arg(role)
                .arg(port.to_string())
                .args(extra.iter().map(u16::to_string))
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("NO_PROXY", "127.0.0.1")
                .stdout(Stdio::null()),
            libc::SIGTERM,
        )
        .expect(
            "starting chain.py (cargo xtask integration-test installs grpcio and OpenTelemetry)",
        );
        peer.wait_listening("chain.py", port, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{role}: {}", error_chain(&e)));
        Service { peer, port }
    }

    fn pid(&self) -> u32 {
        self.peer.id()
    }
}

struct Chain {
    middle: Service,
    back: Service,
}

impl Chain {
    fn start() -> Chain {
        let back = Service::start("back", &[]);
        let middle = Service::start("middle", &[back.port]);
        Chain { middle, back }
    }

    /// Runs the front client to completion: CALLS calls to each method of the middle.
    fn front(&self) {
        let out = Command::new(PYTHON)
            .arg(chain_py())
            .args(["front", &self.middle.port.to_string(), &CALLS.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "127.0.0.1")
            .stderr(Stdio::inherit())
            .output()
            .expect("chain.py front");
        assert!(out.status.success(), "chain.py front failed");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let want: Vec<String> = METHODS
            .iter()
            .enumerate()
            .flat_map(|(m, name)| {
                (0..CALLS).map(move |i| format!("{name} {} OK", front_trace_id(m, i)))
            })
            .collect();
        assert_eq!(lines, want);
    }

    /// The middle's inbound calls (read by the middle).
    fn middle_inbound<'a>(&self, lines: &'a [Value]) -> Vec<&'a Value> {
        let (pid, port) = (self.middle.pid(), self.middle.port);
        requests(lines, move |r| {
            r["pid"] == pid && r["direction"] == "inbound" && port_of(&r["local"]) == Some(port)
        })
    }

    /// The middle's calls to back (written by the middle).
    fn middle_outbound<'a>(&self, lines: &'a [Value]) -> Vec<&'a Value> {
        let (pid, port) = (self.middle.pid(), self.back.port);
        requests(lines, move |r| {
            r["pid"] == pid && r["direction"] == "outbound" && port_of(&r["peer"]) == Some(port)
        })
    }

    /// Back's inbound calls (read by back).
    fn back_inbound<'a>(&self, lines: &'a [Value]) -> Vec<&'a Value> {
        let pid = self.back.pid();
        requests(lines, move |r| {
            r["pid"] == pid && r["direction"] == "inbound"
        })
    }
}

/// The method and the inbound trace id a call to back names (`/chain.Back/<Method>For<id>`).
fn served_by(back_path: &str) -> Option<(&str, &str)> {
    back_path.strip_prefix("/chain.Back/")?.split_once("For")
}

/// Per method, how many calls ended with each outcome (for the closing figures).
type Tally = BTreeMap<String, BTreeMap<String, u64>>;

fn tally(t: &mut Tally, method: &str, outcome: &str) {
    *t.entry(method.into())
        .or_default()
        .entry(outcome.into())
        .or_default() += 1;
}

fn count(t: &Tally, method: &str, outcome: &str) -> u64 {
    t.get(method)
        .and_then(|m| m.get(outcome))
        .copied()
        .unwrap_or(0)
}

#[test]
fn grpc_chain_every_call_with_method_status_and_trace_id_and_each_middle_call_linked() {
    if !can_run() {
        return;
    }
    let agent = Agent::watch(&[]);
    let chain = Chain::start();
    chain.front();
    let want = METHODS.len() * CALLS as usize;
    agent.wait_for(Duration::from_secs(20), |l| {
        chain.middle_outbound(l).len() >= want && chain.back_inbound(l).len() >= want
    });
    let lines = agent.stop();

    // The middle reads each front call whole: method, trace id, exactly.
    let inbound = chain.middle_inbound(&lines);
    assert_eq!(inbound.len(), want, "{inbound:#?}");
    let mut read = Tally::new();
    for (m, method) in METHODS.iter().enumerate() {
        let calls: Vec<&&Value> = inbound
            .iter()
            .filter(|r| r["path"] == format!("/chain.Middle/{method}"))
            .collect();
        let mut ids: Vec<&str> = calls
            .iter()
            .filter_map(|r| r["trace_id"].as_str())
            .collect();
        ids.sort_unstable();
        let sent: Vec<String> = (0..CALLS).map(|i| front_trace_id(m, i)).collect();
        assert_eq!(ids, sent, "{method}: {calls:#?}");
        for r in calls {
            assert_eq!(r["protocol"], "grpc", "{r:#}");
            assert_eq!(r["method"], "POST", "{r:#}");
            assert_eq!(r["headers_known"], "exact", "{r:#}");
            assert_eq!(r["trace_format"], "w3c", "{r:#}");
            // The response is the middle's own write: exact or unknown, never wrong.
            assert!(r["status"].is_null() || r["status"] == 200, "{r:#}");
            assert!(r["grpc_status"].is_null() || r["grpc_status"] == 0, "{r:#}");
            tally(
                &mut read,
                "middle_in",
                if r["grpc_status"] == 0 {
                    "grpc_status"
                } else {
                    "no_status"
                },
            );
        }
    }

    // Back reads each of the middle's calls whole: propagated ids go on, dropped ones are
    // missing, restarted ones are new.
    let back = chain.back_inbound(&lines);
    assert_eq!(back.len(), want, "{back:#?}");
    for r in &back {
        let path = r["path"].as_str().unwrap();
        let (method, served) = served_by(path).unwrap_or_else(|| panic!("{r:#}"));
        assert_eq!(r["protocol"], "grpc", "{r:#}");
        assert_eq!(r["headers_known"], "exact", "{r:#}");
        match method {
            "Propagate" => assert_eq!(r["trace_id"], served, "{r:#}"),
            "Drop" => {
                assert!(r["trace_id"].is_null(), "{r:#}");
                assert_eq!(findings(r), ["missing"], "{r:#}");
            }
            "Restart" => {
                assert!(r["trace_id"].is_string(), "{r:#}");
                assert_ne!(r["trace_id"], served, "{r:#}");
            }
            _ => panic!("unexpected call {r:#}"),
        }
    }

    // The middle's calls: each linked to the very inbound call it serves, each known exactly
    // (what back read of it) with its finding.
    let outbound = chain.middle_outbound(&lines);
    assert_eq!(outbound.len(), want, "{outbound:#?}");
    let mut outcomes = Tally::new();
    for r in &outbound {
        let path = r["path"].as_str().unwrap();
        let inb = &r["inbound"];
        assert!(inb.is_object(), "unlinked: {r:#}");
        assert!(["certain", "strong", "weak"].contains(&inb["confidence"].as_str().unwrap()));
        assert_eq!(r["headers_known"], "exact", "{r:#}");
        let (method, served) = served_by(path).unwrap_or_else(|| panic!("{r:#}"));
        assert_eq!(
            inb["path"],
            format!("/chain.Middle/{method}"),
            "wrong link: {r:#}"
        );
        assert_eq!(inb["trace_id"], served, "wrong link: {r:#}");
        assert_eq!(r["grpc_status"], 0, "{r:#}");
        let want_finding = match method {
            "Propagate" => "propagated",
            "Drop" => "dropped",
            _ => "restarted",
        };
        if method == "Drop" {
            assert_eq!(findings(r), ["missing", "dropped"], "{r:#}");
        } else {
            assert_eq!(findings(r), [want_finding], "{r:#}");
        }
        match method {
            "Propagate" => assert_eq!(inb["confidence"], "certain", "{r:#}"),
            "Drop" => assert!(r["trace_id"].is_null(), "{r:#}"),
            _ => assert_ne!(r["trace_id"], inb["trace_id"], "{r:#}"),
        }
        tally(&mut outcomes, method, want_finding);
    }
    eprintln!("middle inbound responses: {read:?}; middle -> back calls: {outcomes:?}");
    for (method, finding) in [
        ("Propagate", "propagated"),
        ("Drop", "dropped"),
        ("Restart", "restarted"),
    ] {
        assert_eq!(count(&outcomes, method, finding), CALLS, "{outcomes:?}");
    }
}

fn outcome(hop: &Value, finding: &str) -> u64 {
    hop["outcomes"][finding]["count"].as_u64().unwrap_or(0)
}

#[test]
fn grpc_chain_diagnose_names_the_middle_to_back_hop_as_broken() {
    if !can_run() {
        return;
    }
    let mut chain = None;
    let d = diagnose_during(25, || {
        let c = Chain::start();
        c.front();
        chain = Some(c);
    });
    let chain = chain.unwrap();
    let hops = d["hops"].as_array().expect("hops");
    let served_on = |h: &Value, port: u16| port_of(&h["server_addr"]) == Some(port);
    let mid_hop = hops
        .iter()
        .find(|h| served_on(h, chain.back.port))
        .unwrap_or_else(|| panic!("no hop to back in {d:#}"));
    let middle_port = format!(":{}", chain.middle.port);
    assert!(
        mid_hop["caller"]
            .as_str()
            .is_some_and(|c| c.ends_with(&middle_port)),
        "the caller is the service on the middle's port: {mid_hop:#}"
    );
    assert_eq!(
        mid_hop["requests"],
        METHODS.len() as u64 * CALLS,
        "{mid_hop:#}"
    );
    for (finding, method) in [
        ("restarted", "Restart"),
        ("dropped", "Drop"),
        ("propagated", "Propagate"),
    ] {
        assert_eq!(outcome(mid_hop, finding), CALLS, "{finding}: {mid_hop:#}");
        let example = &mid_hop["outcomes"][finding]["example"];
        assert!(
            example["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("/chain.Back/{method}For"))),
            "{mid_hop:#}"
        );
    }
    eprintln!(
        "middle -> back: restarted {}, dropped {}, propagated {} of {}",
        outcome(mid_hop, "restarted"),
        outcome(mid_hop, "dropped"),
        outcome(mid_hop, "propagated"),
        mid_hop["requests"]
    );
    // The front -> middle hop is healthy, and ranked behind the broken one.
    let front_hop = hops
        .iter()
        .position(|h| served_on(h, chain.middle.port))
        .unwrap_or_else(|| panic!("no hop to middle in {d:#}"));
    let mid_pos = hops
        .iter()
        .position(|h| served_on(h, chain.back.port))
        .unwrap();
    assert!(mid_pos < front_hop, "{d:#}");
    let front_hop = &hops[front_hop];
    assert_eq!(
        outcome(front_hop, "dropped") + outcome(front_hop, "restarted"),
        0
    );
}
