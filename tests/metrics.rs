//! `traceid run`: live traffic through the agent, /metrics scraped over HTTP (Prometheus text
//! checked by promtool, OpenMetrics by the reference Python parser), the bounded per-trace
//! series, and the agent run with exactly the DaemonSet's capabilities.
//! Run by `cargo xtask integration-test` (as root, one test at a time).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use traceid_tests::*;
// The harness library's dependency, not named by this test.
use thiserror as _;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool the test needs: Some(path), or None after printing why the test skips (panics under
/// CI=true, where `cargo xtask integration-test` installs it).
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    let reason = format!(
        "{name} not installed (package {package}; `cargo xtask integration-test` installs it)"
    );
    skip(&reason);
    None
}

/// A running `traceid run`, optionally under a wrapper (setpriv).
struct RunAgent {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<Vec<String>>>,
    port: u16,
}

impl RunAgent {
    fn spawn(wrapper: &[String], extra: &[&str]) -> RunAgent {
        let port = free_port();
        let bin = traceid_bin();
        let mut cmd = if wrapper.is_empty() {
            Command::new(&bin)
        } else {
            let mut c = Command::new(&wrapper[0]);
            c.args(&wrapper[1..]).arg("--").arg(&bin);
            c
        };
        let mut child = cmd
            .arg("run")
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning traceid run");
        let stderr = collect_stderr(&mut child);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let o2 = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                o2.lock().unwrap().push(line);
            }
        });
        RunAgent {
            child,
            stderr,
            stdout,
            port,
        }
    }

    /// Starts the agent and waits until its programs are attached and /metrics answers.
    fn start(wrapper: &[String], extra: &[&str]) -> RunAgent {
        let agent = RunAgent::spawn(wrapper, extra);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let err = agent.stderr.lock().unwrap().clone();
            if err.contains("watching:") && err.contains("metrics on http://") {
                break;
            }
            assert!(Instant::now() < deadline, "agent did not start: {err}");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// Waits (at most `timeout`) for the agent to exit on its own.
    fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return (status, self.stderr.lock().unwrap().clone());
            }
            assert!(Instant::now() < deadline, "agent did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn scrape(&self, accept: Option<&str>) -> Scrape {
        scrape(self.port, "/metrics", accept)
    }

    /// Scrapes until `pred` holds on the Prometheus text (at most `timeout`).
    fn scrape_until(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.scrape(None);
            if pred(&s.body) || Instant::now() >= deadline {
                return s.body;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, as Kubernetes stops a pod; the agent must exit 0.
    fn stop(mut self) -> Vec<String> {
        stop_child(&mut self.child, libc::SIGTERM, &self.stderr);
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for RunAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Scrape {
    status: u16,
    content_type: String,
    body: String,
}

/// One HTTP/1.1 GET over a plain socket (no client library between the test and the wire).
fn scrape(port: u16, path: &str, accept: Option<&str>) -> Scrape {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Scrape {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn curl(url: &str, headers: &[String]) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null"]);
    for h in headers {
        c.args(["-H", h]);
    }
    let st = c.arg(url).status().expect("curl");
    assert!(st.success());
}

/// The value of the first sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn promtool_check(text: &str) {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let out = run_with_stdin(Command::new(promtool).args(["check", "metrics"]), text);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses OpenMetrics text with the reference parser (python3-prometheus-client) and returns
/// the exemplars' trace ids.
fn openmetrics_exemplar_trace_ids(text: &str) -> Option<Vec<String>> {
    let python = tool("python3", "python3")?;
    let probe = Command::new(&python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .unwrap();
    if !probe.success() {
        let reason =
            "python3-prometheus-client not installed (`cargo xtask integration-test` installs it)";
        skip(reason);
        return None;
    }
    let script = r#"import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        if s.exemplar:
            print(s.exemplar.labels["trace_id"])
"#;
    let out = run_with_stdin(Command::new(python).args(["-c", script]), text);
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the exposition: {}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn metrics_endpoint_serves_both_formats_with_the_trace_id_of_a_real_request() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let agent = RunAgent::start(&[], &["--log-findings"]);
    let series = format!(
        "traceid_trace_requests_total{{trace_id=\"{TRACE_ID}\",comm=\"nginx\",direction=\"inbound\"}}"
    );
    let seen = |t: &str| {
        t.contains(&series)
            && t.contains("traceid_findings_total{finding=\"missing\",comm=\"nginx\"}")
    };
    let mut text = String::new();
    // Other load on the host can overflow the ring buffer (counted in
    // traceid_events_lost_total): send again rather than fail on a lost event.
    for attempt in 0..5 {
        curl(
            &format!("http://127.0.0.1:{}/api?x=1", nginx.port),
            &[format!("traceparent: {TRACEPARENT}")],
        );
        // A request without trace context: a `missing` finding, logged as a JSON line.
        curl(&format!("http://127.0.0.1:{}/api", nginx.port), &[]);
        text = agent.scrape_until(Duration::from_secs(5), seen);
        if seen(&text) {
            break;
        }
        eprintln!("attempt {attempt}: not captured yet, sending again");
    }

    // Prometheus text 0.0.4 by default.
    let plain = agent.scrape(None);
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(!plain.body.contains("# EOF"));
    promtool_check(&plain.body);
    assert!(sample(&text, &series).is_some_and(|v| v >= 1.0), "{text}");
    assert!(
        sample(
            &text,
            "traceid_http_requests_total{direction=\"inbound\",comm=\"nginx\",trace_format=\"w3c\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(text.contains(&format!(
        "traceid_trace_requests_total{{trace_id=\"{TRACE_ID}\",comm=\"curl\",direction=\"outbound\"}} "
    )));
    assert!(text.contains("traceid_build_info{version=\""));
    assert!(text.contains("traceid_events_lost_total{stage=\"kernel_ringbuf_full\"}"));
    assert!(text.contains("\nprocess_resident_memory_bytes "));
    assert!(!text.contains(" # {"), "no exemplars in the 0.0.4 text");

    // OpenMetrics when the Accept header asks for it (what Prometheus sends), with the trace
    // id of the real request as an exemplar on the latency histogram.
    let om = agent.scrape(Some(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ));
    assert_eq!(om.status, 200);
    assert_eq!(
        om.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.body.ends_with("# EOF\n"));
    let exemplar_line = om
        .body
        .lines()
        .find(|l| {
            l.starts_with("traceid_http_request_duration_seconds_bucket{")
                && l.contains("comm=\"nginx\"")
                && l.contains(&format!(" # {{trace_id=\"{TRACE_ID}\"}} "))
        })
        .unwrap_or_else(|| panic!("no exemplar with {TRACE_ID}:\n{}", om.body));
    eprintln!("exemplar: {exemplar_line}");
    if let Some(ids) = openmetrics_exemplar_trace_ids(&om.body) {
        assert!(ids.iter().any(|i| i == TRACE_ID), "{ids:?}");
    }

    let health = scrape(agent.port, "/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(scrape(agent.port, "/nope", None).status, 404);

    // --log-findings: the request without trace context, as a JSON line; healthy ones not.
    let lines = agent.stop();
    let logged: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON lines on stdout"))
        .collect();
    assert!(
        logged.iter().any(|v| v["event"] == "request"
            && v["comm"] == "nginx"
            && v["findings"] == serde_json::json!(["missing"])),
        "{lines:#?}"
    );
    assert!(
        !logged.iter().any(|v| v["trace_id"] == TRACE_ID),
        "a request without findings was logged: {lines:#?}"
    );
}

#[test]
fn ten_thousand_trace_ids_leave_at_most_the_cap_of_series() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start();
    let cap = 500;
    let agent = RunAgent::start(&[], &["--trace-series-cap", &cap.to_string()]);
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let n = 10_000u32;
    for i in 0..n {
        let req = format!(
            "GET /api HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{i:032x}-00f067aa0ba902b7-01\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(&mut s), 200);
        if i % 250 == 249 {
            // Let the agent keep up (the ring buffer is 16 MiB, shared with the host's load).
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(s);
    // Wait until the agent has caught up: all requests counted, or the count stopped moving
    // (events lost under other load are counted in traceid_events_lost_total).
    let inbound_of = |t: &str| {
        sample(
            t,
            "traceid_http_requests_total{direction=\"inbound\",comm=\"nginx\",trace_format=\"w3c\"}",
        )
        .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = agent.scrape(None).body;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let next = agent.scrape(None).body;
        let (before, now) = (inbound_of(&text), inbound_of(&next));
        text = next;
        if now >= f64::from(n) || (now > 0.0 && now == before) || Instant::now() >= deadline {
            break;
        }
    }
    let series = text
        .lines()
        .filter(|l| l.starts_with("traceid_trace_requests_total{"))
        .count();
    let evicted = sample(&text, "traceid_trace_series_evicted_total").unwrap();
    let inbound = sample(
        &text,
        "traceid_http_requests_total{direction=\"inbound\",comm=\"nginx\",trace_format=\"w3c\"}",
    )
    .unwrap_or(0.0);
    let lost = sample(
        &text,
        "traceid_events_lost_total{stage=\"kernel_ringbuf_full\"}",
    );
    eprintln!(
        "{series} per-trace series, {evicted} evicted, {inbound} nginx requests seen, ring buffer losses {lost:?}"
    );
    assert!(series <= cap, "{series} series > cap {cap}");
    // Events lost to other load on the host are counted, not hidden; the cap must hold for
    // however many ids got through, and far more than the cap did.
    assert!(
        inbound >= 4.0 * cap as f64,
        "only {inbound} of {n} requests seen"
    );
    assert_eq!(series, cap, "more distinct ids than the cap were seen");
    // Every id seen on nginx's side made a series; all but `cap` of them were evicted (the
    // test's own outbound side and other traffic only add to that).
    assert!(
        evicted >= inbound - cap as f64,
        "evicted {evicted}, expected at least {inbound} - {cap}"
    );
    // The series kept are the most recent ids (exact LRU order is unit-tested). Other
    // traffic with trace ids on this host (other tests running) can push all of ours out.
    let ids: Vec<Option<u32>> = text
        .lines()
        .filter_map(|l| l.strip_prefix("traceid_trace_requests_total{trace_id=\""))
        .map(|l| {
            l.get(..32)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .filter(|i| *i < n)
        })
        .collect();
    if ids.iter().all(Option::is_some) {
        let newest_kept = ids.iter().flatten().max();
        assert!(
            newest_kept.is_some_and(|i| *i >= n / 2),
            "newest id kept: {newest_kept:?}"
        );
    } else {
        eprintln!("other traffic with trace ids shares the LRU: not checking which ids stayed");
    }
    assert!(!text.contains(&format!("trace_id=\"{:032x}\"", 0)));
    agent.stop();
}

/// The capabilities `add`ed in deploy/kubernetes/daemonset.yaml, lowercase (`bpf`...).
fn daemonset_capabilities() -> Vec<String> {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let mut caps = Vec::new();
    let mut in_add = false;
    for line in yaml.lines() {
        let t = line.trim();
        if t == "add:" {
            in_add = true;
        } else if in_add {
            match t.strip_prefix("- ") {
                Some(c) => caps.push(c.trim().to_ascii_lowercase()),
                None => in_add = false,
            }
        }
    }
    caps
}

/// `setpriv` keeping exactly `caps` (as root: bounding, inheritable and ambient sets), so the
/// agent runs with those capabilities and no others.
fn setpriv_with(caps: &[String]) -> Vec<String> {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ]
}

/// CapEff of a process.
fn cap_eff(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = s
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(v, 16).unwrap()
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "dac_read_search" => 2,
        "net_admin" => 12,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("unknown capability {other}"),
    }
}

#[test]
fn the_daemonsets_capabilities_suffice_to_capture() {
    if !can_run() || tool("setpriv", "util-linux").is_none() {
        return;
    }
    let caps = daemonset_capabilities();
    assert_eq!(
        caps,
        [
            "bpf",
            "perfmon",
            "net_admin",
            "sys_ptrace",
            "dac_read_search"
        ],
        "the DaemonSet's capability list changed: update this test and the README"
    );
    let nginx = Nginx::start();
    let agent = RunAgent::start(&setpriv_with(&caps), &[]);
    let want = caps.iter().fold(0u64, |m, c| m | (1 << cap_bit(c)));
    // The agent is the setpriv child that exec'd: its pid is the child's.
    assert_eq!(
        cap_eff(agent.child.id()),
        want,
        "the agent must run with exactly the DaemonSet's capabilities"
    );
    curl(
        &format!("http://127.0.0.1:{}/api", nginx.port),
        &[format!("traceparent: {TRACEPARENT}")],
    );
    let text = agent.scrape_until(Duration::from_secs(10), |t| {
        t.contains(&format!("trace_id=\"{TRACE_ID}\",comm=\"nginx\""))
    });
    assert!(
        text.contains(&format!(
            "traceid_trace_requests_total{{trace_id=\"{TRACE_ID}\",comm=\"nginx\",direction=\"inbound\"}} 1"
        )),
        "nothing captured with the DaemonSet's capabilities:\n{text}"
    );
    let err = agent.stderr.lock().unwrap().clone();
    assert!(
        !err.contains("mounted it"),
        "needed to mount tracefs: {err}"
    );
    agent.stop();
}

#[test]
fn a_missing_required_capability_is_named_and_the_agent_exits() {
    if !can_run() || tool("setpriv", "util-linux").is_none() {
        return;
    }
    let caps = daemonset_capabilities();
    for missing in ["bpf", "perfmon"] {
        let kept: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let agent = RunAgent::spawn(&setpriv_with(&kept), &[]);
        let (status, err) = agent.wait_exit(Duration::from_secs(20));
        assert!(!status.success(), "ran without {missing}: {err}");
        let name = format!("CAP_{}", missing.to_ascii_uppercase());
        assert!(err.contains(&name), "the error does not name {name}: {err}");
    }
}

#[test]
fn a_metrics_address_in_use_is_named() {
    if !can_run() {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = Command::new(traceid_bin())
        .args(["run", &format!("--metrics-addr=127.0.0.1:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("--metrics-addr"),
        "{err}"
    );
}
