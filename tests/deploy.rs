//! deploy/: the Kubernetes manifests validate against the Kubernetes schemas offline
//! (PyPI's kubernetes-validate bundles them), the Dockerfile builds with the commands CI runs,
//! and the Grafana dashboard queries only metrics the agent exports. No root needed.

use std::path::PathBuf;
use std::process::Command;

use traceid_tests::Value;
// Used by the harness library (tests/src), not by name here.
use {libc as _, thiserror as _};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn kubernetes_manifests_validate_offline() {
    let dir = deploy().join("kubernetes");
    let files = [
        "namespace.yaml",
        "daemonset.yaml",
        "daemonset-privileged.yaml",
        "service.yaml",
    ];
    let probe = Command::new("/usr/bin/python3")
        .args(["-c", "import kubernetes_validate"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        traceid_tests::skip("kubernetes-validate not installed (`cargo xtask integration-test` installs it with pip)");
        return;
    }
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files.iter().map(|f| dir.join(f)))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    for f in files {
        assert!(
            text.contains(&format!("{f} passed")),
            "{f} not validated:\n{text}"
        );
    }
    // It does reject a broken manifest (the check is not vacuous).
    let bad = std::env::temp_dir().join("traceid-bad-daemonset.yaml");
    let ds = std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    std::fs::write(
        &bad,
        ds.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"),
    )
    .unwrap();
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed validation");
}

#[test]
fn daemonset_is_least_privilege() {
    let ds = std::fs::read_to_string(deploy().join("kubernetes/daemonset.yaml")).unwrap();
    let live: Vec<&str> = ds
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let has = |s: &str| live.iter().any(|l| l.trim() == s);
    assert!(has("privileged: false"));
    assert!(has("allowPrivilegeEscalation: false"));
    assert!(has("readOnlyRootFilesystem: true"));
    assert!(has("hostPID: true"));
    assert!(has("hostNetwork: true"));
    assert!(has("- ALL"), "capabilities must drop ALL");
    assert!(
        !has("- SYS_ADMIN"),
        "SYS_ADMIN is not needed (tests/metrics.rs proves it)"
    );
    assert!(has("path: /sys/kernel/tracing"));
    assert!(has("path: /sys/kernel/btf"));
    assert!(has("prometheus.io/scrape: \"true\""));
    assert!(live.iter().any(|l| l.contains("limits:")));
}

#[test]
fn dockerfile_build_stage_runs_the_ci_build_command() {
    let df = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        2,
        "multi-stage: build and runtime: {stages:?}"
    );
    assert!(stages[0].ends_with(" AS build"));
    assert!(
        stages[1].contains("-slim"),
        "slim runtime image: {}",
        stages[1]
    );
    // The build stage produces the binary with the very command CI and README use: a green
    // `cargo xtask test` (which runs build-ebpf and the agent build through xtask) means the
    // image's build stage works too. There is no container engine here to build the image.
    assert!(df
        .lines()
        .any(|l| l.trim() == "RUN cargo xtask build --release"));
    assert!(df.contains("COPY --from=build /src/target/release/traceid /usr/local/bin/traceid"));
    let xtask = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xtask/src/main.rs"),
    )
    .unwrap();
    assert!(xtask.contains("Build {"), "xtask has a `build` task");
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let raw = std::fs::read_to_string(deploy().join("grafana/traceid-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&raw).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let exported = [
        "traceid_http_requests_total",
        "traceid_findings_total",
        "traceid_trace_requests_total",
        "traceid_trace_series_evicted_total",
        "traceid_http_request_duration_seconds_bucket",
        "traceid_tcp_connections_opened_total",
        "traceid_tcp_time_wait_sockets",
        "traceid_events_lost_total",
        "traceid_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        // cAdvisor, for the container view of the agent.
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ];
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("traceid_")
                || word.starts_with("process_")
                || word.starts_with("container_")
            {
                assert!(exported.contains(&word), "{word} in {e:?} is not exported");
            }
        }
    }
    let text = raw.to_lowercase();
    for panel in [
        "broken hops",
        "findings by kind",
        "time_wait",
        "lost events",
        "cpu",
        "memory",
    ] {
        assert!(text.contains(panel), "no {panel} panel");
    }
}
