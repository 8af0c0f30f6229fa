//! HTTPS through the OpenSSL probes: nginx with TLS, curl, Python's ssl module, on 127.0.0.1.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use traceid_tests::*;
// The harness library's dependency, not named by this test.
use {serde_json as _, thiserror as _};
// Used by the harness library (tests/src), not by name here.
use libc as _;

fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit_once(':')?.1.parse().ok()
}

fn curl_tls(port: u16, path: &str, header: &str) -> u32 {
    let child = Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-H", header])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .spawn()
        .expect("curl");
    let pid = child.id();
    assert!(
        child.wait_with_output().unwrap().status.success(),
        "curl over TLS failed"
    );
    pid
}

fn inbound_on(lines: &[Value], port: u16, path: &str) -> Vec<Value> {
    requests(lines, |r| {
        r["direction"] == "inbound" && port_of(&r["local"]) == Some(port) && r["path"] == path
    })
    .into_iter()
    .cloned()
    .collect()
}

#[test]
fn nginx_tls_and_curl_are_decoded_with_the_trace_id() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start_tls();
    let agent = Agent::watch(&[]);
    let curl_pid = curl_tls(
        nginx.port,
        "/api/tls",
        &format!("traceparent: {TRACEPARENT}"),
    );
    agent.wait_for(Duration::from_secs(10), |l| {
        !inbound_on(l, nginx.port, "/api/tls").is_empty()
            && !requests(l, |r| r["pid"] == curl_pid).is_empty()
    });
    let lines = agent.stop();
    let inbound = inbound_on(&lines, nginx.port, "/api/tls");
    assert_eq!(inbound.len(), 1, "{lines:#?}");
    let r = &inbound[0];
    assert_eq!(r["comm"], "nginx");
    assert_eq!(r["tls"], true);
    assert_eq!(r["trace_id"], TRACE_ID);
    assert_eq!(r["status"], 200);
    let out = requests(&lines, |r| r["pid"] == curl_pid);
    assert_eq!(out.len(), 1, "{lines:#?}");
    assert_eq!(out[0]["direction"], "outbound");
    assert_eq!(out[0]["tls"], true);
    assert_eq!(out[0]["trace_id"], TRACE_ID);
    assert_eq!(port_of(&out[0]["peer"]), Some(nginx.port));
    // The ciphertext of those connections is never mistaken for HTTP.
    let plain_on_port = requests(&lines, |r| {
        port_of(&r["local"]) == Some(nginx.port) && r["tls"] == false
    });
    assert!(plain_on_port.is_empty(), "{plain_on_port:#?}");
}

#[test]
fn python_https_client_is_seen() {
    if !can_run() {
        return;
    }
    let nginx = Nginx::start_tls();
    let agent = Agent::watch(&[]);
    let script = format!(
        "import ssl, urllib.request\n\
         c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n\
         r = urllib.request.Request('https://127.0.0.1:{}/api/py', headers={{'X-Request-ID': 'py-req-1'}})\n\
         print(urllib.request.urlopen(r, context=c).status)\n",
        nginx.port
    );
    let child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let py_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    agent.wait_for(Duration::from_secs(10), |l| {
        !requests(l, |r| r["pid"] == py_pid).is_empty()
            && !inbound_on(l, nginx.port, "/api/py").is_empty()
    });
    let lines = agent.stop();
    let outb = requests(&lines, |r| r["pid"] == py_pid);
    assert_eq!(outb.len(), 1, "{lines:#?}");
    assert_eq!(outb[0]["tls"], true);
    assert_eq!(outb[0]["trace_id"], "py-req-1");
    assert_eq!(outb[0]["status"], 200);
    let inb = inbound_on(&lines, nginx.port, "/api/py");
    assert_eq!(inb.len(), 1, "{lines:#?}");
    assert_eq!(inb[0]["trace_id"], "py-req-1");
}

#[test]
fn tls_server_started_after_the_agent_is_seen() {
    if !can_run() {
        return;
    }
    let agent = Agent::watch(&[]);
    let nginx = Nginx::start_tls();
    // The agent looks at a new process shortly after its exec.
    std::thread::sleep(Duration::from_millis(2500));
    let curl_pid = curl_tls(nginx.port, "/api/late", "X-Request-ID: late-1");
    agent.wait_for(Duration::from_secs(10), |l| {
        !inbound_on(l, nginx.port, "/api/late").is_empty()
    });
    let lines = agent.stop();
    let inb = inbound_on(&lines, nginx.port, "/api/late");
    assert_eq!(inb.len(), 1, "{lines:#?}");
    assert_eq!(inb[0]["tls"], true);
    assert_eq!(inb[0]["trace_id"], "late-1");
    assert!(!requests(&lines, |r| r["pid"] == curl_pid).is_empty());
}

/// The capabilities the least-privilege DaemonSet adds (deploy/kubernetes/daemonset.yaml),
/// lowercase as setpriv names them.
fn daemonset_capabilities() -> Vec<String> {
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap();
    let mut caps = Vec::new();
    let mut in_add = false;
    for line in yaml.lines().map(str::trim) {
        if line == "add:" {
            in_add = true;
        } else if in_add {
            match line.strip_prefix("- ") {
                Some(c) => caps.push(c.trim().to_ascii_lowercase()),
                None => in_add = false,
            }
        }
    }
    caps
}

/// HTTPS is seen when the agent has exactly the DaemonSet's capabilities (and root's file
/// permissions, as its `runAsUser: 0`): recent kernels refuse to create uprobes through perf
/// without CAP_SYS_ADMIN, and the agent then creates them through tracefs.
#[test]
fn https_is_seen_with_exactly_the_daemonsets_capabilities() {
    if !can_run() {
        return;
    }
    let caps = daemonset_capabilities();
    assert!(caps.contains(&"perfmon".to_string()), "{caps:?}");
    assert!(!caps.contains(&"sys_admin".to_string()), "{caps:?}");
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let nginx = Nginx::start_tls();
    let port = nginx.port.to_string();
    let mut child = Command::new("setpriv")
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(traceid_bin())
        .args(["watch", "--json", "--duration", "10s", "--port", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let stderr = collect_stderr(&mut child);
    wait_watching(&stderr);
    assert!(
        !stderr
            .lock()
            .unwrap()
            .contains("TLS probes on 0 OpenSSL files"),
        "{}",
        stderr.lock().unwrap()
    );
    let curl_pid = curl_tls(nginx.port, "/api/least", "X-Request-ID: least-1");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{}",
        stderr.lock().unwrap()
    );
    let lines = json_lines(stdout.as_bytes());
    let inb = inbound_on(&lines, nginx.port, "/api/least");
    assert_eq!(inb.len(), 1, "{lines:#?}");
    assert_eq!(inb[0]["tls"], true);
    assert_eq!(inb[0]["trace_id"], "least-1");
    let out = requests(&lines, |r| r["pid"] == curl_pid);
    assert_eq!(out.len(), 1, "{lines:#?}");
    assert_eq!(out[0]["tls"], true);
    // Nothing of the agent's probes is left in tracefs.
    let left = std::fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default();
    assert!(!left.contains("traceid/"), "{left}");
}
