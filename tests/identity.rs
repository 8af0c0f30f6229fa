//! Issue 16: who is it. Two real containers of two "pods", started with Debian's runc the way
//! the kubelet lays them out (cgroupsPath `/kubepods/burstable/pod<uid>/<id>`, the pod name as
//! hostname, the host's network), and the kubelet's `/var/log/pods` layout under a temporary
//! `--host-root`. The agent must name the container, pod, namespace and workload of every
//! line of theirs, none on a host process's line, the broken hop workload -> workload in the
//! diagnosis, and the same identities when the recording is replayed.
//!
//! The pods: `shop/frontend-7d9f8b6c5d-x2x4k` (a Deployment's pod) serves on one port and,
//! for each request, calls `shop/checkout-0` (a StatefulSet's) without the trace id it was
//! given: a dropped hop. Both serve with the host's python3 (its /usr bind-mounted read-only):
//! busybox httpd forks a process per connection, whose reads the agent does not see (it
//! follows sockets by the process that accepted them). The containers' clients are busybox
//! wget (`runc exec`), the host's client is the host's busybox wget.
//!
//! Run by `cargo xtask integration-test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use traceid_tests::*;
// The harness crate's dependency, not named by this test.
use {libc as _, thiserror as _};

const NAMESPACE: &str = "shop";

/// The service both containers run: answers GET; with a URL argument, calls it first
/// (urllib, without the request's traceparent); `/slow` answers after 300 ms, so the client
/// still lives when the agent reads its /proc entry.
const SERVER_PY: &str = r#"
import http.server, sys, time, urllib.request
port = int(sys.argv[1])
call = sys.argv[2] if len(sys.argv) > 2 else None
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        if call:
            urllib.request.urlopen(call, timeout=5).read()
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// A pod of one container, as the kubelet would name and lay it out.
struct PodSpec {
    pod: &'static str,
    container: &'static str,
    workload: &'static str,
    workload_kind: &'static str,
    uid: String,
    /// The container id: 64 hex digits, also runc's name for it.
    id: String,
    port: u16,
}

impl PodSpec {
    fn new(
        pod: &'static str,
        container: &'static str,
        workload: (&'static str, &'static str),
        salt: u64,
    ) -> PodSpec {
        let hex = |n: usize, salt: u64| -> String {
            let mut x = salt ^ u64::from(std::process::id()) << 32 ^ nanos();
            (0..n)
                .map(|_| {
                    // splitmix64: distinct ids per run, no external randomness needed.
                    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = x;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    char::from_digit(((z ^ (z >> 31)) & 0xf) as u32, 16).unwrap()
                })
                .collect()
        };
        let u = hex(32, salt.wrapping_mul(7));
        PodSpec {
            pod,
            container,
            workload: workload.0,
            workload_kind: workload.1,
            uid: format!(
                "{}-{}-{}-{}-{}",
                &u[..8],
                &u[8..12],
                &u[12..16],
                &u[16..20],
                &u[20..]
            ),
            id: hex(64, salt),
            port: free_port(),
        }
    }

    /// The kubelet's cgroupfs-driver path of this container.
    fn cgroups_path(&self) -> String {
        format!("/kubepods/burstable/pod{}/{}", self.uid, self.id)
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("traceid-identity-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running runc container; killed and deleted (with its kubepods cgroups) on drop, so a
/// failing test leaves nothing behind.
struct Container {
    id: String,
    uid: String,
    dir: PathBuf,
}

impl Container {
    /// Builds the bundle (busybox, the service, the host's /usr read-only) and starts it.
    fn start(spec: &PodSpec, call: Option<String>) -> Container {
        let dir = scratch(spec.container);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "etc", "app", "usr", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
        for applet in ["sh", "wget", "httpd", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        // Merged /usr (Debian 12): the dynamic loader and libraries of the host's python3.
        for l in ["lib", "lib64"] {
            std::os::unix::fs::symlink(format!("usr/{l}"), rootfs.join(l)).unwrap();
        }
        std::fs::write(rootfs.join("etc/hostname"), format!("{}\n", spec.pod)).unwrap();
        std::fs::write(rootfs.join("app/server.py"), SERVER_PY).unwrap();
        let container = Container {
            id: spec.id.clone(),
            uid: spec.uid.clone(),
            dir: dir.clone(),
        };
        run(Command::new("runc").args(["spec", "--bundle"]).arg(&dir));
        let path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut args = vec![
            "/usr/bin/python3".to_string(),
            "/app/server.py".to_string(),
            spec.port.to_string(),
        ];
        args.extend(call);
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.into();
        config["hostname"] = spec.pod.into();
        config["linux"]["cgroupsPath"] = spec.cgroups_path().into();
        // The host's network: no network namespace.
        config["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network");
        config["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]
            }));
        std::fs::write(&path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("container.log")).unwrap();
        run(Command::new("runc")
            .args(["run", "--detach", "--bundle"])
            .arg(&dir)
            .arg(&spec.id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log));
        container.wait_listening(spec.port);
        container
    }

    fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "container {} does not listen on {port}: {}",
                self.id,
                std::fs::read_to_string(self.dir.join("container.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's first process, as the host sees it.
    fn pid(&self) -> u32 {
        let state: Value =
            serde_json::from_str(&run(Command::new("runc").args(["state", &self.id]))).unwrap();
        state["pid"].as_u64().expect("pid in runc state") as u32
    }

    /// Runs busybox wget inside the container: GET `url` with a traceparent.
    fn wget(&self, url: &str) {
        run(Command::new("runc")
            .args(["exec", &self.id, "/bin/wget", "-q", "-O", "-"])
            .args(["--header", &format!("traceparent: {TRACEPARENT}"), url]));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        // runc removes the container's own cgroup; the pod's and the QoS class's stay behind
        // in every hierarchy (rmdir only removes them empty, so a real node's are safe).
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
        roots.extend(hierarchies.filter_map(Result::ok).map(|e| e.path()));
        for root in roots {
            let pod = root.join(format!("kubepods/burstable/pod{}", self.uid));
            for dir in [pod.as_path(), pod.parent().unwrap(), &root.join("kubepods")] {
                let _ = std::fs::remove_dir(dir);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The kubelet's `/var/log/pods/<namespace>_<pod>_<uid>/<container>/` under a new host root.
fn host_root(pods: &[&PodSpec]) -> PathBuf {
    let root = scratch("host");
    for p in pods {
        let dir = root.join(format!(
            "var/log/pods/{NAMESPACE}_{}_{}/{}",
            p.pod, p.uid, p.container
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.log"), "").unwrap();
    }
    root
}

/// GET from the host (a process outside any container) with a traceparent.
fn host_wget(url: &str) {
    run(Command::new("busybox")
        .args(["wget", "-q", "-O", "-"])
        .args(["--header", &format!("traceparent: {TRACEPARENT}"), url]));
}

fn assert_identity(line: &Value, p: &PodSpec) {
    assert_eq!(line["container"]["id"], p.id.as_str(), "{line}");
    assert_eq!(line["container"]["name"], p.container, "{line}");
    assert_eq!(line["pod"]["name"], p.pod, "{line}");
    assert_eq!(line["pod"]["uid"], p.uid.as_str(), "{line}");
    assert_eq!(line["namespace"], NAMESPACE, "{line}");
    assert_eq!(line["workload"]["name"], p.workload, "{line}");
    assert_eq!(line["workload"]["kind"], p.workload_kind, "{line}");
    assert_eq!(line["workload"]["derived"], true, "{line}");
}

fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit_once(':')?.1.parse().ok()
}

fn line_on(direction: &'static str, side: &'static str, port: u16) -> impl Fn(&Value) -> bool {
    move |r| r["direction"] == direction && port_of(&r[side]) == Some(port)
}

/// Runs `round` (a fresh agent each time) again while its agent lost events to someone
/// else's load on this host, at most 3 times.
fn until_nothing_lost<T>(what: &str, mut round: impl FnMut() -> (T, u64)) -> T {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let (result, lost) = round();
        if lost == 0 || attempt == ATTEMPTS {
            return result;
        }
        eprintln!("{what}: the agent lost events (another load on this host?), attempt {attempt} of {ATTEMPTS}");
        std::thread::sleep(Duration::from_secs(5));
    }
    unreachable!()
}

/// `traceid diagnose --record FILE` while `traffic` runs; its text.
fn diagnose_during(record: &Path, filters: &[&str], traffic: impl FnOnce()) -> String {
    let mut child = Command::new(traceid_bin())
        .args(["diagnose", "--duration", "6s", "--record"])
        .arg(record)
        .args(filters)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning traceid diagnose");
    let stderr = collect_stderr(&mut child);
    wait_watching(&stderr);
    traffic();
    let out = child.wait_with_output().expect("traceid diagnose");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("--- traceid diagnose ---\n{text}");
    assert!(out.status.success(), "{text}\n{}", stderr.lock().unwrap());
    text
}

#[test]
fn container_pod_namespace_and_workload_on_lines_findings_and_replays() {
    if !can_run() {
        return;
    }
    if Command::new("runc").arg("--version").output().is_err()
        || !Path::new("/usr/bin/busybox").exists()
    {
        skip("runc or busybox-static not installed (`cargo xtask integration-test` installs them)");
        return;
    }
    let checkout = PodSpec::new("checkout-0", "app", ("checkout", "statefulset"), 1);
    let frontend = PodSpec::new(
        "frontend-7d9f8b6c5d-x2x4k",
        "web",
        ("frontend", "deployment"),
        2,
    );
    let checkout_url = format!("http://127.0.0.1:{}/slow", checkout.port);
    let back = Container::start(&checkout, None);
    let front = Container::start(&frontend, Some(checkout_url.clone()));
    // runc placed them where the kubelet would.
    for (c, spec) in [(&back, &checkout), (&front, &frontend)] {
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid())).unwrap();
        assert!(cgroup.contains(&spec.cgroups_path()), "{cgroup}");
    }
    let root = host_root(&[&checkout, &frontend]);
    let filters = [
        "--host-root".to_string(),
        root.display().to_string(),
        "--port".into(),
        checkout.port.to_string(),
        "--port".into(),
        frontend.port.to_string(),
    ];
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let frontend_url = format!("http://127.0.0.1:{}/pay", frontend.port);

    // Lines: the frontend's wget -> checkout; the host's wget -> frontend -> checkout.
    let lines = until_nothing_lost("watch", || {
        let agent = Agent::watch(&filters);
        front.wget(&checkout_url);
        host_wget(&frontend_url);
        agent.wait_for(Duration::from_secs(20), |l| {
            requests(l, line_on("inbound", "local", checkout.port)).len() >= 2
                && !requests(l, line_on("outbound", "peer", frontend.port)).is_empty()
                && !requests(l, |r| r["comm"] == "wget").is_empty()
        });
        let lines = agent.stop();
        let lost = lines
            .iter()
            .filter(|l| l["event"] == "lost")
            .filter_map(|l| l["count"].as_u64())
            .sum();
        (lines, lost)
    });
    let served_by_checkout = requests(&lines, line_on("inbound", "local", checkout.port));
    assert_eq!(served_by_checkout.len(), 2, "{lines:#?}");
    for l in &served_by_checkout {
        assert_identity(l, &checkout);
    }
    let served_by_frontend = requests(&lines, line_on("inbound", "local", frontend.port));
    assert_eq!(served_by_frontend.len(), 1, "{lines:#?}");
    assert_identity(served_by_frontend[0], &frontend);
    // The frontend's calls to checkout: busybox wget (runc exec: the container's cgroup),
    // and python3 serving the host's request, which drops the trace id.
    let calls = requests(&lines, line_on("outbound", "peer", checkout.port));
    let by_wget = calls
        .iter()
        .find(|r| r["comm"] == "wget")
        .expect("wget's call");
    assert_identity(by_wget, &frontend);
    assert_eq!(by_wget["trace_id"], TRACE_ID, "{by_wget}");
    let dropped = calls
        .iter()
        .find(|r| {
            r["findings"]
                .as_array()
                .unwrap()
                .contains(&"dropped".into())
        })
        .unwrap_or_else(|| panic!("no dropped call in {lines:#?}"));
    assert_identity(dropped, &frontend);
    // The host's own wget is in no container: no identity field at all.
    let host = requests(&lines, line_on("outbound", "peer", frontend.port));
    assert_eq!(host.len(), 1, "{lines:#?}");
    for field in ["container", "pod", "namespace", "workload"] {
        assert!(host[0].get(field).is_none(), "{field} on {}", host[0]);
    }

    // The diagnosis names the broken hop workload -> workload; its recording replays with the
    // same identities.
    let record = scratch("record").join("run.traceid");
    let text = until_nothing_lost("diagnose", || {
        let text = diagnose_during(&record, &filters, || {
            for _ in 0..3 {
                host_wget(&frontend_url);
            }
            front.wget(&checkout_url);
        });
        let lost = u64::from(!text.contains("LOST EVENTS: none"));
        (text, lost)
    });
    let hop = format!(
        "  shop/frontend -> shop/checkout (127.0.0.1:{}): dropped 3 of 4",
        checkout.port
    );
    assert!(text.contains(&hop), "no `{hop}` in\n{text}");
    for service in [
        format!("  shop/frontend :{} ", frontend.port),
        format!("  shop/checkout :{} ", checkout.port),
    ] {
        assert!(text.contains(&service), "no `{service}` in\n{text}");
    }
    // No host root now: the names come from the recording.
    let replayed = run(Command::new(traceid_bin()).arg("replay").arg(&record));
    eprintln!("--- traceid replay ---\n{replayed}");
    for who in [
        format!("python3[{}] shop/checkout-0 ", back.pid()),
        "wget[".to_string(),
        " shop/frontend-7d9f8b6c5d-x2x4k ".to_string(),
    ] {
        assert!(replayed.contains(&who), "no `{who}` in\n{replayed}");
    }
    let _ = std::fs::remove_dir_all(root);
    let _ = std::fs::remove_dir_all(record.parent().unwrap());
}
