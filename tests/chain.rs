//! Issue 4: a real three-service chain, front -> middle -> back, written with real web
//! frameworks (tests/services/chain: Flask services, and a Go Gin middle), watched by
//! the real agent. The middle service propagates, drops or restarts the trace id depending on
//! the route; the agent must report it on the middle -> back hop, linked to the right inbound
//! request with an honest confidence, and `diagnose` must name the middle as the broken hop.
//! Run by `cargo xtask integration-test` (as root, one test at a time).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use traceid_tests::*;
// Used by the harness library (tests/src), not by name here.
use {libc as _, serde_json as _, thiserror as _};

const ROUTES: [&str; 3] = ["propagate", "drop", "restart"];
const GO_ROUTES: [&str; 4] = ["propagate", "drop", "restart", "spawn"];
const PYTHON: &str = "/usr/bin/python3";
/// Where Debian's Go library packages (golang-github-gin-gonic-gin-dev) put their sources.
const GIN_GOPATH: &str = "/usr/share/gocode";

fn services_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("services/chain")
}

/// A fresh scratch directory for one test.
fn scratch(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "traceid-chain-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One service of the chain; stopped on drop with anything it forked.
struct Service {
    process: Peer,
    port: u16,
    /// The process name the agent reports (`comm`).
    comm: String,
    log: PathBuf,
}

impl Service {
    /// Starts `program args` (its stderr to `dir/comm.log`) and waits for its port.
    fn spawn(dir: &Path, comm: &str, program: &Path, args: &[String], port: u16) -> Service {
        let log = dir.join(format!("{comm}.log"));
        let process = Peer::spawn(
            Command::new(program)
                .args(args)
                .current_dir(services_dir())
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env_remove("PYTHONPATH")
                .env_remove("PYTHONHOME")
                .env("NO_PROXY", "127.0.0.1,localhost")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
            libc::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut svc = Service {
            process,
            port,
            comm: comm.to_string(),
            log,
        };
        if let Err(e) = svc
            .process
            .wait_listening("the service", port, Duration::from_secs(30))
        {
            panic!("{comm}: {e}:\n{}", svc.log_text());
        }
        svc
    }

    /// A Flask service run by Debian's python3 through a symlink named `comm`: the kernel
    /// names the process after the file it executed, so each service has its own comm.
    fn flask(dir: &Path, comm: &str, script: &str, args: &[u16]) -> Service {
        assert!(
            Path::new(PYTHON).exists(),
            "{PYTHON} missing: install python3-flask python3-requests"
        );
        let exe = dir.join(comm);
        std::os::unix::fs::symlink(PYTHON, &exe).unwrap();
        let mut argv = vec![services_dir().join(script).to_string_lossy().to_string()];
        argv.extend(args.iter().map(u16::to_string));
        Service::spawn(dir, comm, &exe, &argv, args[0])
    }

    /// The Go middle, a Gin service built once per test run from Debian's Gin (GOPATH mode,
    /// `/usr/share/gocode`); with `stripped`, without symbol table and DWARF
    /// (`-ldflags=-s -w`).
    fn go_middle(dir: &Path, port: u16, back: u16, stripped: bool) -> Service {
        static BINS: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
        let bin = BINS[usize::from(stripped)].get_or_init(|| {
            // One build directory per host and flavour, rebuilt by each test run.
            let flavour = if stripped { "stripped" } else { "normal" };
            let out = std::env::temp_dir().join(format!("traceid-chain-go-build-{flavour}"));
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            let bin = out.join("chain-middle-go");
            assert!(
                Path::new(GIN_GOPATH)
                    .join("src/github.com/gin-gonic/gin")
                    .is_dir(),
                "Gin missing: install golang-github-gin-gonic-gin-dev"
            );
            let ldflags: &[&str] = if stripped { &["-ldflags=-s -w"] } else { &[] };
            go_build(
                &services_dir().join("middle.go"),
                &bin,
                Path::new(GIN_GOPATH),
                ldflags,
            );
            bin
        });
        Service::spawn(
            dir,
            "chain-middle-go",
            bin,
            &[port.to_string(), back.to_string()],
            port,
        )
    }

    fn pid(&self) -> u64 {
        u64::from(self.process.id())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Middle {
    Flask,
    Go,
    /// The Go middle built with `-ldflags=-s -w`.
    GoStripped,
}

impl Middle {
    fn is_go(self) -> bool {
        matches!(self, Middle::Go | Middle::GoStripped)
    }

    /// The routes the middle serves: the Go one also calls from a goroutine its handler
    /// starts (`spawn`, which drops the trace).
    fn routes(self) -> &'static [&'static str] {
        if self.is_go() {
            &GO_ROUTES
        } else {
            &ROUTES
        }
    }
}

/// front (Flask) -> middle (Flask or Go) -> back (Flask), each on its own free port.
struct Chain {
    front: Service,
    middle: Service,
    back: Service,
    dir: PathBuf,
}

impl Drop for Chain {
    fn drop(&mut self) {
        // The services are stopped next (fields drop after this); their logs go with the dir.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Chain {
    fn start(kind: Middle) -> Chain {
        let dir = scratch("services");
        let (fp, mp, bp) = (free_port(), free_port(), free_port());
        let back = Service::flask(&dir, "chain-back", "back.py", &[bp]);
        let middle = match kind {
            Middle::Flask => Service::flask(&dir, "chain-middle", "middle.py", &[mp, bp]),
            Middle::Go => Service::go_middle(&dir, mp, bp, false),
            Middle::GoStripped => Service::go_middle(&dir, mp, bp, true),
        };
        let front = Service::flask(&dir, "chain-front", "front.py", &[fp, mp]);
        Chain {
            front,
            middle,
            back,
            dir,
        }
    }
}

/// A W3C trace id unique to (test salt, route, request number).
fn trace_id(salt: u16, route: usize, i: usize) -> String {
    format!("{salt:04x}c4a1{route:08x}{:016x}", i + 1)
}

fn traceparent(id: &str) -> String {
    format!("00-{id}-00f067aa0ba902b7-01")
}

/// One GET on a fresh connection with the given extra header lines; returns the status.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> u16 {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s)
}

/// Outbound requests made by `pid` to back (paths /work/...).
fn calls_to_back(lines: &[Value], pid: u64) -> Vec<&Value> {
    requests(lines, move |r| {
        r["pid"] == pid
            && r["direction"] == "outbound"
            && r["path"].as_str().is_some_and(|p| p.starts_with("/work/"))
    })
}

/// How a call was linked: `certain` (same trace id), `goroutine` (certain, by the Go probes),
/// `strong` (thread) or `weak` (only one in flight); checks the record's confidence agrees with
/// its evidence.
fn link_kind(inbound: &Value) -> &'static str {
    let (evidence, confidence) = (inbound["evidence"].as_str(), inbound["confidence"].as_str());
    let (kind, want) = match evidence {
        Some("trace_id") => ("certain", "certain"),
        Some("goroutine") => ("goroutine", "certain"),
        Some("thread") => ("strong", "strong"),
        Some("only_in_flight") => ("weak", "weak"),
        other => panic!("unknown evidence {other:?}: {inbound:#}"),
    };
    assert_eq!(confidence, Some(want), "{inbound:#}");
    kind
}

fn findings(r: &Value) -> Vec<&str> {
    r["findings"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Events the agent says it lost (`lost` lines).
fn lost(lines: &[Value]) -> u64 {
    lines
        .iter()
        .filter(|v| v["event"] == "lost")
        .map(|v| v["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Rounds of traffic tried while the agent loses events.
const ATTEMPTS: u16 = 3;

/// Runs `round(attempt)` (a fresh agent and fresh trace ids each time) until the agent loses no
/// events, at most `ATTEMPTS` times: on a shared host another load can fill the ring buffer,
/// and a round whose events were partly lost (the agent says so) proves nothing about linking.
/// The last round is returned even with losses, and its assertions then decide.
fn until_nothing_lost<T>(what: &str, mut round: impl FnMut(u16) -> (T, u64)) -> T {
    for attempt in 1..=ATTEMPTS {
        let (result, lost) = round(attempt);
        if lost == 0 {
            return result;
        }
        eprintln!(
            "{what}: the agent lost {lost} events (another load on this host?) in attempt \
             {attempt} of {ATTEMPTS}"
        );
        if attempt == ATTEMPTS {
            return result;
        }
        // Let a burst of someone else's load pass.
        std::thread::sleep(Duration::from_secs(5));
    }
    unreachable!()
}

/// Sends N requests per route, sequentially, to front /go/<route> with a traceparent each;
/// returns every agent line and the trace ids sent per route.
fn run_sequential(chain: &Chain, salt: u16, n: usize) -> (Vec<Value>, Vec<Vec<String>>) {
    let agent = Agent::watch(&[]);
    let mut sent = vec![Vec::new(); ROUTES.len()];
    for (ri, route) in ROUTES.iter().enumerate() {
        for i in 0..n {
            let id = trace_id(salt, ri, i);
            let tp = traceparent(&id);
            let status = get(
                chain.front.port,
                &format!("/go/{route}"),
                &[("traceparent", &tp)],
            );
            assert_eq!(
                status,
                200,
                "front /go/{route}: middle log:\n{}",
                chain.middle.log_text()
            );
            sent[ri].push(id);
        }
    }
    let mid = chain.middle.pid();
    let want = n * ROUTES.len();
    agent.wait_for(Duration::from_secs(20), |l| {
        calls_to_back(l, mid).len() >= want || lost(l) > 0
    });
    (agent.stop(), sent)
}

/// The assertions shared by the Flask and the Go middle under sequential load: each call to
/// back carries the finding its route makes, is linked to the inbound request it serves (the
/// route, and the very trace id sent with that request), and `certain` only when the call
/// carries that trace id.
fn assert_sequential_chain(kind: Middle, salt: u16) {
    let chain = Chain::start(kind);
    let n = 10;
    let (lines, sent) = until_nothing_lost("sequential chain", |attempt| {
        let (lines, sent) = run_sequential(&chain, salt.wrapping_add(attempt), n);
        let n = lost(&lines);
        ((lines, sent), n)
    });
    let mid = chain.middle.pid();
    let calls = calls_to_back(&lines, mid);
    assert_eq!(
        calls.len(),
        n * ROUTES.len(),
        "calls to back (the agent lost {} events in this round): {calls:#?}",
        lost(&lines)
    );
    let mut confidences = BTreeMap::<String, usize>::new();
    for (ri, route) in ROUTES.iter().enumerate() {
        let calls: Vec<&Value> = calls
            .iter()
            .copied()
            .filter(|r| r["path"] == format!("/work/{route}"))
            .collect();
        assert_eq!(calls.len(), n, "{route}: {calls:#?}");
        let mut linked_ids = BTreeSet::new();
        for r in &calls {
            assert_eq!(r["comm"], chain.middle.comm.as_str());
            assert_eq!(r["status"], 200);
            assert_eq!(r["peer"], format!("127.0.0.1:{}", chain.back.port), "{r:#}");
            let inb = &r["inbound"];
            assert_eq!(inb["path"], format!("/{route}"), "wrong inbound: {r:#}");
            assert_eq!(inb["method"], "GET");
            let conf = link_kind(inb);
            *confidences.entry(conf.to_string()).or_default() += 1;
            let f = findings(r);
            match *route {
                "propagate" => {
                    assert_eq!(f, ["propagated"], "{r:#}");
                    assert_eq!(r["trace_id"], inb["trace_id"]);
                    assert_eq!(conf, "certain", "{r:#}");
                }
                "drop" => {
                    assert!(f.contains(&"dropped"), "{r:#}");
                    assert!(r["trace_id"].is_null());
                }
                _ => {
                    assert_eq!(f, ["restarted"], "{r:#}");
                    assert!(r["trace_id"].is_string());
                    assert_ne!(r["trace_id"], inb["trace_id"]);
                }
            }
            // Honesty: certain only when the call carries the inbound trace id.
            if conf == "certain" {
                assert_eq!(r["trace_id"], inb["trace_id"], "certain but not: {r:#}");
            } else {
                assert_ne!(r["trace_id"], inb["trace_id"]);
                if kind.is_go() {
                    // Goroutines hop threads: Go is linked by its goroutines, not by thread.
                    assert_eq!(conf, "goroutine", "Go not linked by goroutine: {r:#}");
                } else {
                    assert!(["strong", "weak"].contains(&conf), "{r:#}");
                }
            }
            linked_ids.insert(inb["trace_id"].as_str().unwrap().to_string());
        }
        // Each call linked to its own request: the ten inbound ids, each once.
        let want: BTreeSet<String> = sent[ri].iter().cloned().collect();
        assert_eq!(
            linked_ids, want,
            "{route}: links do not match the requests sent"
        );
    }
    eprintln!(
        "{} middle, sequential, links: {confidences:?}",
        chain.middle.comm
    );
    // The front -> middle hop is healthy: front forwards the traceparent it was given.
    let front_calls = requests(&lines, |r| {
        r["pid"] == chain.front.pid() && r["direction"] == "outbound"
    });
    assert_eq!(front_calls.len(), n * ROUTES.len());
    for r in front_calls {
        assert_eq!(findings(r), ["propagated"], "{r:#}");
        assert_eq!(r["inbound"]["confidence"], "certain");
    }
    // back sees every call, as inbound requests.
    let back_in = requests(&lines, |r| {
        r["pid"] == chain.back.pid() && r["direction"] == "inbound"
    });
    assert_eq!(back_in.len(), n * ROUTES.len());
}

#[test]
fn chain_flask_middle_propagates_drops_and_restarts_each_linked_to_its_request() {
    if !can_run() {
        return;
    }
    assert_sequential_chain(Middle::Flask, 0xf1a5);
}

#[test]
fn chain_go_middle_propagates_drops_and_restarts_each_linked_to_its_request() {
    if !can_run() {
        return;
    }
    assert_sequential_chain(Middle::Go, 0x0960);
}

fn count(hop: &Value, finding: &str) -> u64 {
    hop["outcomes"][finding]["count"].as_u64().unwrap_or(0)
}

/// One `diagnose --json` run while N requests per route go through the chain.
fn diagnose_round(chain: &Chain, n: usize, attempt: u16) -> Value {
    diagnose_during(12, || {
        for (ri, route) in ROUTES.iter().enumerate() {
            for i in 0..n {
                let tp = traceparent(&trace_id(0xd1a0 + attempt, ri, i));
                let status = get(
                    chain.front.port,
                    &format!("/go/{route}"),
                    &[("traceparent", &tp)],
                );
                assert_eq!(status, 200);
            }
        }
    })
}

#[test]
fn chain_diagnose_names_the_middle_service_as_the_broken_hop() {
    if !can_run() {
        return;
    }
    let chain = Chain::start(Middle::Flask);
    let n = 5;
    let d = until_nothing_lost("diagnose", |attempt| {
        let d = diagnose_round(&chain, n, attempt);
        let lost = d["lost"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        (d, lost)
    });
    let hops = d["hops"].as_array().expect("hops");
    let back_addr = format!("127.0.0.1:{}", chain.back.port);
    let mid_addr = format!("127.0.0.1:{}", chain.middle.port);
    let mid_hop = hops
        .iter()
        .find(|h| h["client"] == "chain-middle" && h["server_addr"] == back_addr.as_str())
        .unwrap_or_else(|| panic!("no chain-middle -> back hop in {d:#}"));
    assert_eq!(mid_hop["server"], "chain-back", "{mid_hop:#}");
    assert_eq!(mid_hop["requests"], 3 * n as u64, "{mid_hop:#}");
    assert_eq!(count(mid_hop, "dropped"), n as u64, "{mid_hop:#}");
    assert_eq!(count(mid_hop, "restarted"), n as u64, "{mid_hop:#}");
    assert_eq!(count(mid_hop, "propagated"), n as u64, "{mid_hop:#}");
    assert_eq!(
        mid_hop["outcomes"]["dropped"]["example"]["path"], "/work/drop",
        "{mid_hop:#}"
    );
    assert_eq!(
        mid_hop["outcomes"]["restarted"]["example"]["path"],
        "/work/restart"
    );
    // The one broken hop of the chain is middle's: front -> middle only propagates.
    let front_hop = hops
        .iter()
        .find(|h| h["client"] == "chain-front" && h["server_addr"] == mid_addr.as_str())
        .unwrap_or_else(|| panic!("no chain-front -> middle hop in {d:#}"));
    assert_eq!(front_hop["server"], "chain-middle");
    assert_eq!(
        count(front_hop, "propagated"),
        3 * n as u64,
        "{front_hop:#}"
    );
    assert_eq!(
        count(front_hop, "dropped") + count(front_hop, "restarted"),
        0
    );
    // Hops are listed most broken first: no chain hop is ahead of middle's.
    let first_chain_hop = hops
        .iter()
        .find(|h| {
            h["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("chain-"))
        })
        .unwrap();
    assert_eq!(first_chain_hop["client"], "chain-middle");
    // The services are there, by process and listening port.
    let services = d["services"].as_array().expect("services");
    for svc in [&chain.front, &chain.middle, &chain.back] {
        let g = services
            .iter()
            .find(|g| g["comm"] == svc.comm.as_str() && g["port"] == svc.port)
            .unwrap_or_else(|| panic!("no service {} :{} in {d:#}", svc.comm, svc.port));
        assert_eq!(g["requests"], 3 * n as u64, "{g:#}");
    }
}

/// Malformed ids sent to a real Flask service: each inbound request reports `malformed` and
/// names the reason.
#[test]
fn chain_back_reports_malformed_ids_with_their_reason() {
    if !can_run() {
        return;
    }
    let dir = scratch("malformed");
    let port = free_port();
    let back = Service::flask(&dir, "chain-back", "back.py", &[port]);
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Headers, &str); 5] = [
        (
            "/m/wrong-length",
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            )],
            "traceparent: wrong length (54, version 00 needs 55)",
        ),
        (
            "/m/uppercase",
            &[(
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            )],
            "traceparent: uppercase hex",
        ),
        (
            "/m/all-zero",
            &[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            "traceparent: trace-id is all zeros",
        ),
        (
            "/m/version-ff",
            &[(
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            "traceparent: version ff is invalid",
        ),
        (
            "/m/b3-15-hex",
            &[
                ("X-B3-TraceId", "4bf92f3577b34da"),
                ("X-B3-SpanId", "00f067aa0ba902b7"),
            ],
            "x-b3-traceid: 15 hex digits (needs 16 or 32)",
        ),
    ];
    let pid = back.pid();
    let inbound = |l: &[Value]| -> usize {
        requests(l, |r| r["pid"] == pid && r["direction"] == "inbound").len()
    };
    let lines = until_nothing_lost("malformed ids", |_| {
        let agent = Agent::watch(&[]);
        for (path, headers, _) in &cases {
            assert_eq!(get(port, path, headers), 200);
        }
        agent.wait_for(Duration::from_secs(15), |l| {
            inbound(l) >= cases.len() || lost(l) > 0
        });
        let lines = agent.stop();
        let n = lost(&lines);
        (lines, n)
    });
    for (path, _, reason) in &cases {
        let recs = requests(&lines, |r| {
            r["pid"] == pid && r["direction"] == "inbound" && r["path"] == *path
        });
        assert_eq!(recs.len(), 1, "{path}: {recs:#?}");
        let r = recs[0];
        assert_eq!(r["comm"], "chain-back");
        assert_eq!(r["status"], 200);
        let f = findings(r);
        assert!(f.contains(&"malformed"), "{path}: {r:#}");
        assert!(
            f.contains(&"missing"),
            "{path}: no valid id, so missing: {r:#}"
        );
        assert!(r["trace_id"].is_null(), "{path}: {r:#}");
        assert_eq!(r["reason"], *reason, "{path}: {r:#}");
    }
    drop(back);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `per_client` requests from each of `clients` concurrent clients to front, each
/// request to its own tagged route (/go/<route>/<tag>, which middle passes on as
/// /work/<route>/<tag>) with its own trace id, so the test knows which inbound request every
/// call to back serves.
fn concurrent_traffic(chain: &Chain, kind: Middle, salt: u16, clients: usize, per_client: usize) {
    let front = chain.front.port;
    let routes = kind.routes();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..per_client {
                    let ri = (t + i) % routes.len();
                    let id = trace_id(salt, ri, t * 1000 + i);
                    let tp = traceparent(&id);
                    let path = format!("/go/{}/s{salt:x}t{t}r{i}", routes[ri]);
                    assert_eq!(get(front, &path, &[("traceparent", &tp)]), 200, "{path}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

/// Waits for `want` calls to back from the middle (or a loss), stops the agent.
fn calls_seen(agent: Agent, chain: &Chain, want: usize) -> Vec<Value> {
    let mid = chain.middle.pid();
    agent.wait_for(Duration::from_secs(30), |l| {
        calls_to_back(l, mid).len() >= want || lost(l) > 0
    });
    agent.stop()
}

/// Every link the agent reports for the middle's calls must be the right one, `certain` only
/// when the call carries the inbound trace id, and each linked call carries the finding of
/// its route. Returns the link shares of the middle's calls (`unlinked` for the others).
fn assert_concurrent_links(
    kind: Middle,
    chain: &Chain,
    lines: &[Value],
    what: &str,
) -> BTreeMap<String, usize> {
    let calls = calls_to_back(lines, chain.middle.pid());
    let mut shares = BTreeMap::<String, usize>::new();
    let mut wrong = Vec::new();
    for r in &calls {
        // /work/<route>/<tag> serves /<route>/<tag>.
        let path = r["path"].as_str().unwrap();
        let served = path.strip_prefix("/work").unwrap();
        let route = served.split('/').nth(1).unwrap();
        let inb = &r["inbound"];
        let f = findings(r);
        if inb.is_null() {
            *shares.entry("unlinked".into()).or_default() += 1;
            assert!(f.contains(&"unlinked"), "{r:#}");
            continue;
        }
        let conf = link_kind(inb);
        *shares.entry(conf.into()).or_default() += 1;
        if conf == "certain" {
            assert_eq!(r["trace_id"], inb["trace_id"], "certain but not: {r:#}");
        } else {
            assert_ne!(r["trace_id"], inb["trace_id"], "{r:#}");
        }
        if inb["path"] != served {
            wrong.push(format!(
                "{path} linked {conf} to {} ({})",
                inb["path"], inb["trace_id"]
            ));
            continue;
        }
        let want_finding = match route {
            "propagate" => "propagated",
            "drop" | "spawn" => "dropped",
            _ => "restarted",
        };
        assert!(f.contains(&want_finding), "{r:#}");
    }
    let linked = calls.len() - shares.get("unlinked").copied().unwrap_or(0);
    eprintln!(
        "{} middle, {what}: {linked} of {} calls linked ({:.1} %), links: {shares:?}",
        chain.middle.comm,
        calls.len(),
        100.0 * linked as f64 / calls.len().max(1) as f64
    );
    assert!(
        wrong.is_empty(),
        "{} of {} links name the wrong inbound request:\n{}",
        wrong.len(),
        calls.len(),
        wrong.join("\n")
    );
    // Propagated calls carry their own trace id: each is linked, with certainty.
    let propagated = calls
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/work/propagate/"))
        .count();
    assert_eq!(shares.get("certain").copied().unwrap_or(0), propagated);
    if kind.is_go() {
        assert_eq!(
            shares.get("strong"),
            None,
            "Go goroutines hop threads: a thread link is a guess"
        );
        // The Go probes link the calls that drop or re-mint the id by goroutine, the ones
        // made from goroutines the handler started too: 95 % at least (an event lost on a
        // busy host leaves a call unlinked, never wrongly linked).
        let untraced = calls.len() - propagated;
        let by_goroutine = shares.get("goroutine").copied().unwrap_or(0);
        assert!(
            by_goroutine * 100 >= untraced * 95,
            "{by_goroutine} of {untraced} dropping or re-minting calls linked by goroutine: {shares:?}"
        );
        let spawned = calls
            .iter()
            .filter(|r| r["path"].as_str().unwrap().starts_with("/work/spawn/"))
            .count();
        assert!(spawned > 0, "no call from a spawned goroutine");
    }
    shares
}

/// Concurrent load on a fresh agent (4 clients x 25 requests for Flask; 16 clients x 12 for
/// Go, over its four routes): the links of every call to back. Returns the link shares.
fn assert_concurrent_chain(kind: Middle, salt: u16) -> BTreeMap<String, usize> {
    let chain = Chain::start(kind);
    let (clients, per_client) = if kind.is_go() { (16, 12) } else { (4, 25) };
    let want = clients * per_client;
    let lines = until_nothing_lost("concurrent chain", |attempt| {
        let agent = Agent::watch(&[]);
        concurrent_traffic(
            &chain,
            kind,
            salt.wrapping_add(attempt),
            clients,
            per_client,
        );
        let lines = calls_seen(agent, &chain, want);
        let n = lost(&lines);
        (lines, n)
    });
    let calls = calls_to_back(&lines, chain.middle.pid());
    assert_eq!(
        calls.len(),
        want,
        "calls to back (the agent lost {} events in this round)",
        lost(&lines)
    );
    let what = format!("{clients} concurrent clients x {per_client} requests");
    assert_concurrent_links(kind, &chain, &lines, &what)
}

#[test]
fn chain_flask_middle_under_concurrent_load_links_honestly() {
    if !can_run() {
        return;
    }
    let shares = assert_concurrent_chain(Middle::Flask, 0xc0f1);
    // Flask serves each request on one thread: its untraced calls link by thread.
    assert!(shares.get("strong").copied().unwrap_or(0) > 0, "{shares:?}");
}

#[test]
fn chain_go_middle_under_concurrent_load_links_by_goroutine() {
    if !can_run() {
        return;
    }
    assert_concurrent_chain(Middle::Go, 0xc060);
}

#[test]
fn chain_stripped_go_middle_under_concurrent_load_links_by_goroutine() {
    if !can_run() {
        return;
    }
    assert_concurrent_chain(Middle::GoStripped, 0xc5e0);
}

/// A Go middle started after the agent: the agent finds it at its exec and links its calls by
/// goroutine.
#[test]
fn chain_go_middle_started_after_the_agent_links_by_goroutine() {
    if !can_run() {
        return;
    }
    let (clients, per_client) = (16, 4);
    let want = clients * per_client;
    let (chain, lines) = until_nothing_lost("Go middle started after the agent", |attempt| {
        let agent = Agent::watch_logging(&[], "warn,traceid::capture::go=debug");
        let chain = Chain::start(Middle::Go);
        // The agent looks at a new process at its exec; reading a Go executable takes the
        // debug build of the tests a few hundred ms (longer on a busy host).
        let middle = chain.middle.pid();
        assert!(
            agent.wait_for_log(
                Duration::from_secs(30),
                &format!("Go probes: pid {middle} registered")
            ),
            "the agent did not register the Go middle (pid {middle}) with its Go probes"
        );
        concurrent_traffic(&chain, Middle::Go, 0xa5e0 + attempt, clients, per_client);
        let lines = calls_seen(agent, &chain, want);
        let n = lost(&lines);
        ((chain, lines), n)
    });
    assert_eq!(
        calls_to_back(&lines, chain.middle.pid()).len(),
        want,
        "calls to back (the agent lost {} events)",
        lost(&lines)
    );
    assert_concurrent_links(Middle::Go, &chain, &lines, "started after the agent");
}
