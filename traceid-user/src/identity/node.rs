//! Reading a process's identity from what the node holds.
//!
//! - `/proc/<pid>/cgroup`: container id, runtime, pod UID ([`super::cgroup`]);
//! - the kubelet's log layout under the host root: `var/log/pods/<namespace>_<pod>_<uid>/<container>/`
//!   gives the namespace, the pod name and the container names of a pod; when a pod has
//!   several containers, `var/log/containers/<pod>_<namespace>_<container>-<id>.log` says
//!   which one has this id;
//! - the container's own `/etc/hostname` (`/proc/<pid>/root/etc/hostname`): the pod name under
//!   Kubernetes, unless the pod shares the node's (host network: it then holds the node name).
//!
//! `/proc` is the agent's own (the DaemonSet shares the host's pid namespace); node files are
//! read under `--host-root`, where the DaemonSet mounts them.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{cgroup, workload};
use crate::record::{Container, Identity, Pod};

/// Kubelet pod log directories below the host root.
pub const PODS_LOG_DIR: &str = "var/log/pods";
/// Kubelet per-container log symlinks below the host root.
pub const CONTAINERS_LOG_DIR: &str = "var/log/containers";
/// Pods whose log directory is remembered; the map is cleared when it holds more.
const POD_CACHE_CAP: usize = 4096;
/// The pod log directory is listed again at most this often when a pod is not in it.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest name kept from a node file (DNS names are at most 253 bytes).
const MAX_NAME_LEN: usize = 253;

/// A name source the agent cannot read here, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSource {
    /// The names this source would give.
    pub gives: &'static str,
    pub path: PathBuf,
    pub error: String,
}

/// The node's files, and what was learned from them.
#[derive(Debug)]
pub struct NodeFiles {
    proc_root: PathBuf,
    host_root: PathBuf,
    /// The node's hostname: a container whose /etc/hostname says this shares the node's.
    node_hostname: Option<String>,
    /// Pod UID -> (namespace, pod name), from the kubelet's pod log directories.
    pods: HashMap<String, (String, String)>,
    last_scan: Option<Instant>,
    /// Why a container's /etc/hostname could not be read, the first time access was denied.
    hostname_denied: Option<MissingSource>,
}

impl NodeFiles {
    /// `proc_root` is normally `/proc`, `host_root` the `--host-root` (default `/`).
    pub fn new(proc_root: impl Into<PathBuf>, host_root: impl Into<PathBuf>) -> NodeFiles {
        let proc_root = proc_root.into();
        let node_hostname = std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))
            .ok()
            .and_then(|h| first_line(&h));
        NodeFiles {
            proc_root,
            host_root: host_root.into(),
            node_hostname,
            pods: HashMap::new(),
            last_scan: None,
            hostname_denied: None,
        }
    }

    /// The name sources that cannot be read here: the kubelet's log layout, and the
    /// containers' /etc/hostname once reading one was denied (another process's root needs
    /// ptrace access: CAP_SYS_PTRACE).
    pub fn missing_sources(&self) -> Vec<MissingSource> {
        let mut missing = Vec::new();
        let pods = self.host_root.join(PODS_LOG_DIR);
        if let Err(e) = std::fs::read_dir(&pods) {
            missing.push(MissingSource {
                gives: "namespaces, and pod and container names from the kubelet's log layout",
                path: pods,
                error: e.to_string(),
            });
        }
        missing.extend(self.hostname_denied.clone());
        missing
    }

    /// The start time of `pid` (clock ticks after boot, field 22 of `/proc/<pid>/stat`): a
    /// pid reused by a new process has a new start time. None when the process is gone.
    pub fn start_time(&self, pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(self.proc_root.join(format!("{pid}/stat"))).ok()?;
        parse_start_time(&stat)
    }

    /// Everything the node says about `pid`; empty outside containers or once it is gone.
    pub fn resolve(&mut self, pid: u32) -> Identity {
        let dir = self.proc_root.join(pid.to_string());
        let Some(cg) = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| cgroup::parse(&c))
        else {
            return Identity::default();
        };
        let mut container = Container {
            id: cg.container_id,
            runtime: cg.runtime,
            name: None,
        };
        let Some(uid) = cg.pod_uid else {
            return Identity {
                container: Some(container),
                ..Identity::default()
            };
        };
        let (namespace, mut pod_name) = match self.pod_dir(&uid) {
            Some((ns, pod)) => {
                container.name = self.container_name(&ns, &pod, &uid, &container.id);
                (Some(ns), Some(pod))
            }
            None => (None, None),
        };
        if pod_name.is_none() {
            pod_name = self
                .hostname(&dir)
                .filter(|h| Some(h) != self.node_hostname.as_ref());
        }
        Identity {
            workload: pod_name.as_deref().and_then(workload::derive),
            container: Some(container),
            pod: Some(Pod {
                name: pod_name,
                uid,
            }),
            namespace,
        }
    }

    /// The hostname a container's own files give it (`<proc>/<pid>/root/etc/hostname`).
    fn hostname(&mut self, proc_dir: &Path) -> Option<String> {
        let path = proc_dir.join("root/etc/hostname");
        match std::fs::read_to_string(&path) {
            Ok(h) => first_line(&h),
            Err(e) => {
                if e.kind() == io::ErrorKind::PermissionDenied && self.hostname_denied.is_none() {
                    self.hostname_denied = Some(MissingSource {
                        gives: "pod names from each container's /etc/hostname",
                        path,
                        error: e.to_string(),
                    });
                }
                None
            }
        }
    }

    /// (namespace, pod name) of a pod UID, from `var/log/pods/<namespace>_<pod>_<uid>`.
    fn pod_dir(&mut self, uid: &str) -> Option<(String, String)> {
        if let Some(found) = self.pods.get(uid) {
            return Some(found.clone());
        }
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < RESCAN_INTERVAL)
        {
            return None;
        }
        self.last_scan = Some(Instant::now());
        if let Err(e) = self.scan_pods() {
            tracing::debug!(
                "listing {}: {e}",
                self.host_root.join(PODS_LOG_DIR).display()
            );
        }
        self.pods.get(uid).cloned()
    }

    fn scan_pods(&mut self) -> io::Result<()> {
        if self.pods.len() >= POD_CACHE_CAP {
            self.pods.clear();
        }
        for entry in std::fs::read_dir(self.host_root.join(PODS_LOG_DIR))? {
            let name = entry?.file_name();
            let Some((ns, pod, uid)) = name.to_str().and_then(parse_pod_dir) else {
                continue;
            };
            if self.pods.len() >= POD_CACHE_CAP {
                break;
            }
            self.pods
                .insert(uid.to_string(), (ns.to_string(), pod.to_string()));
        }
        Ok(())
    }

    /// The name of container `id` in the pod: the pod's only container directory, or the one
    /// whose `var/log/containers` link carries this id.
    fn container_name(&self, ns: &str, pod: &str, uid: &str, id: &str) -> Option<String> {
        let dir = self
            .host_root
            .join(PODS_LOG_DIR)
            .join(format!("{ns}_{pod}_{uid}"));
        let names: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        if let [only] = names.as_slice() {
            return Some(only.clone());
        }
        let links = self.host_root.join(CONTAINERS_LOG_DIR);
        names
            .into_iter()
            .find(|n| exists_no_follow(&links.join(format!("{pod}_{ns}_{n}-{id}.log"))))
    }
}

fn exists_no_follow(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// `<namespace>_<pod>_<uid>`: none of the three may contain '_' (DNS labels and UUIDs).
fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && valid_name(ns) && valid_name(pod) && valid_name(uid))
        .then_some((ns, pod, uid))
}

/// A Kubernetes object name as it can appear in a path: non-empty, bounded, no separators.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The first line of a name file, trimmed; None when empty or not a plausible name.
fn first_line(s: &str) -> Option<String> {
    let line = s.lines().next()?.trim();
    valid_name(line).then(|| line.to_string())
}

/// Field 22 of `/proc/<pid>/stat`, counted after the command name (which may hold spaces and
/// parentheses, so the fields start after the last ')').
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, fields) = stat.rsplit_once(')')?;
    // Fields after the name start at 3 (state): 22 is the 20th of them.
    fields.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::{Node, ID, UID};
    use crate::record::{Runtime, WorkloadKind};

    const SIDECAR: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f93f2a9c1b7d4e5f60718293a4b5c6d7e8";

    fn kubepods(id: &str) -> String {
        format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope\n",
            UID.replace('-', "_")
        )
    }

    #[test]
    fn kubelet_layout_names_namespace_pod_container_and_workload() {
        let node = Node::new("kubelet");
        node.process(10, &kubepods(ID), Some("ignored-hostname"));
        node.write(
            &format!("host/var/log/pods/shop_frontend-7d9f8b6c5d-x2x4k_{UID}/web/0.log"),
            "",
        );
        let id = node.files().resolve(10);
        let c = id.container.as_ref().unwrap();
        assert_eq!(
            (c.id.as_str(), c.runtime, c.name.as_deref()),
            (ID, Some(Runtime::Containerd), Some("web"))
        );
        let pod = id.pod.as_ref().unwrap();
        assert_eq!(
            (pod.name.as_deref(), pod.uid.as_str()),
            (Some("frontend-7d9f8b6c5d-x2x4k"), UID)
        );
        assert_eq!(id.namespace.as_deref(), Some("shop"));
        let w = id.workload.unwrap();
        assert_eq!(
            (w.kind, w.name.as_str()),
            (WorkloadKind::Deployment, "frontend")
        );
    }

    #[test]
    fn several_containers_are_told_apart_by_their_log_links() {
        let node = Node::new("sidecar");
        let pod_dir = format!("host/var/log/pods/shop_db-0_{UID}");
        node.write(&format!("{pod_dir}/postgres/0.log"), "");
        node.write(&format!("{pod_dir}/exporter/0.log"), "");
        node.write(
            &format!("host/var/log/containers/db-0_shop_exporter-{SIDECAR}.log"),
            "",
        );
        node.write(
            &format!("host/var/log/containers/db-0_shop_postgres-{ID}.log"),
            "",
        );
        node.process(10, &kubepods(ID), None);
        node.process(11, &kubepods(SIDECAR), None);
        let mut files = node.files();
        let name = |id: Identity| id.container.and_then(|c| c.name);
        assert_eq!(name(files.resolve(10)).as_deref(), Some("postgres"));
        assert_eq!(name(files.resolve(11)).as_deref(), Some("exporter"));
    }

    #[test]
    fn hostname_names_the_pod_without_the_kubelet_layout() {
        let node = Node::new("hostname");
        node.process(10, &kubepods(ID), Some("web-2"));
        let id = node.files().resolve(10);
        assert_eq!(id.pod.unwrap().name.as_deref(), Some("web-2"));
        assert_eq!(id.namespace, None);
        let w = id.workload.unwrap();
        assert_eq!(
            (w.kind, w.name.as_str()),
            (WorkloadKind::StatefulSet, "web")
        );
    }

    #[test]
    fn a_host_network_pods_hostname_is_the_nodes_and_names_nothing() {
        let node = Node::new("hostnet");
        node.process(10, &kubepods(ID), Some("node-1"));
        let id = node.files().resolve(10);
        let pod = id.pod.unwrap();
        assert_eq!((pod.name, pod.uid.as_str()), (None, UID));
        assert_eq!(id.workload, None);
    }

    #[test]
    fn containers_outside_kubernetes_have_no_pod() {
        let node = Node::new("docker");
        node.process(
            10,
            &format!("0::/system.slice/docker-{ID}.scope\n"),
            Some("3f2a9c1b7d4e"),
        );
        let id = node.files().resolve(10);
        assert_eq!(id.container.unwrap().runtime, Some(Runtime::Docker));
        assert_eq!((id.pod, id.namespace, id.workload), (None, None, None));
    }

    #[test]
    fn host_processes_and_gone_processes_are_empty() {
        let node = Node::new("host");
        node.process(10, "0::/user.slice/user-0.slice/session-1.scope\n", None);
        let mut files = node.files();
        assert!(files.resolve(10).is_empty());
        assert!(files.resolve(11).is_empty());
        assert_eq!(files.start_time(11), None);
    }

    #[test]
    fn missing_sources_are_named() {
        let node = Node::new("missing");
        let missing = node.files().missing_sources();
        assert!(
            missing
                .iter()
                .any(|m| m.path.ends_with(PODS_LOG_DIR) && m.gives.contains("namespaces")),
            "{missing:?}"
        );
        node.write(&format!("host/{PODS_LOG_DIR}/.keep"), "");
        let missing = node.files().missing_sources();
        assert!(
            !missing.iter().any(|m| m.path.ends_with(PODS_LOG_DIR)),
            "{missing:?}"
        );
    }

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 12345678 300 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
        // This test's own process, through the real /proc.
        let files = NodeFiles::new("/proc", "/");
        assert!(files.start_time(std::process::id()).is_some());
    }

    #[test]
    fn pod_directory_names_split_in_three() {
        assert_eq!(
            parse_pod_dir(&format!("kube-system_coredns-5d78c9869d-8gkzq_{UID}")),
            Some(("kube-system", "coredns-5d78c9869d-8gkzq", UID))
        );
        assert_eq!(parse_pod_dir("a_b"), None);
        assert_eq!(parse_pod_dir("a_b_c_d"), None);
        assert_eq!(parse_pod_dir("a__c"), None);
    }
}
