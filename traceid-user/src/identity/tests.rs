//! The resolver against a scratch node, the table and the filters.

use std::path::PathBuf;

use traceid_common::{kind, EventHeader, COMM_LEN};

use super::*;
use crate::event::pod_bytes;
use crate::record::{Container, Pod};

pub const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
pub const UID: &str = "8e1c6a2b-4f3d-4c5e-9a7b-0d1e2f3a4b5c";

/// A scratch node: `proc/` and a host root, removed on drop.
pub struct Node {
    dir: PathBuf,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let dir =
            std::env::temp_dir().join(format!("traceid-identity-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("proc/sys/kernel")).unwrap();
        std::fs::write(dir.join("proc/sys/kernel/hostname"), "node-1\n").unwrap();
        std::fs::create_dir_all(dir.join("host")).unwrap();
        Node { dir }
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn process(&self, pid: u32, cgroup: &str, hostname: Option<&str>) {
        self.write(&format!("proc/{pid}/cgroup"), cgroup);
        if let Some(h) = hostname {
            self.write(&format!("proc/{pid}/root/etc/hostname"), &format!("{h}\n"));
        }
    }

    pub fn files(&self) -> NodeFiles {
        NodeFiles::new(self.dir.join("proc"), self.dir.join("host"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    /// A process of this node whose `/proc/<pid>/stat` gives `start_time`.
    pub fn started(&self, pid: u32, start_time: u64) {
        let fields: Vec<String> = (3..22).map(|_| "0".to_string()).collect();
        self.write(
            &format!("proc/{pid}/stat"),
            &format!("{pid} (app) {} {start_time} 0 0\n", fields.join(" ")),
        );
    }
}

fn cgroupfs(id: &str) -> String {
    format!("0::/kubepods/burstable/pod{UID}/{id}\n")
}

fn raw(kind: u16, pid: u32) -> Vec<u8> {
    pod_bytes(&EventHeader {
        kind,
        _pad0: 0,
        pid,
        tid: pid,
        fd: 3,
        ts_ns: 1,
        conn_ts_ns: 1,
        comm: [0; COMM_LEN],
    })
}

/// Feeds `records` through the resolver; the identity records it asked to feed first.
fn announce(r: &mut Resolver, records: &[Vec<u8>]) -> Vec<(u32, Announced)> {
    let mut out = Vec::new();
    for rec in records {
        r.before(rec, &mut out);
    }
    out.iter().map(|o| wire::decode(o).unwrap()).collect()
}

fn container_id(a: &Announced) -> Option<&str> {
    match a {
        Announced::Is(id) => id.container.as_ref().map(|c| c.id.as_str()),
        Announced::Forget => None,
    }
}

#[test]
fn a_container_process_is_announced_once_a_host_process_never() {
    let node = Node::new("announce");
    node.process(10, &cgroupfs(ID), Some("web-0"));
    node.started(10, 500);
    node.process(11, "0::/user.slice/session-1.scope\n", None);
    node.started(11, 600);
    let mut r = Resolver::new(node.files(), 100);
    let got = announce(
        &mut r,
        &[
            raw(kind::CONN_OPEN, 10),
            raw(kind::DATA, 10),
            raw(kind::CONN_OPEN, 10),
            raw(kind::CONN_CLOSE, 10),
            raw(kind::CONN_OPEN, 11),
            raw(kind::DATA, 11),
            // No process behind these: a state event, an agent record.
            raw(kind::STATE, 10),
            raw(kind::CENSUS, 0),
        ],
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 10);
    assert_eq!(container_id(&got[0].1), Some(ID));
    assert_eq!(r.len(), 2);
}

#[test]
fn a_reused_pid_is_resolved_again_on_its_next_connection() {
    let node = Node::new("reuse");
    node.process(10, &cgroupfs(ID), Some("web-0"));
    node.started(10, 500);
    let mut r = Resolver::new(node.files(), 100);
    assert_eq!(announce(&mut r, &[raw(kind::CONN_OPEN, 10)]).len(), 1);
    // The process exits; a host process gets its pid.
    node.process(10, "0::/user.slice/session-1.scope\n", None);
    node.started(10, 900);
    // Data of the old connections does not re-read /proc; the next connection does.
    assert!(announce(&mut r, &[raw(kind::DATA, 10)]).is_empty());
    let got = announce(&mut r, &[raw(kind::CONN_OPEN, 10)]);
    assert_eq!(got, vec![(10, Announced::Is(Identity::default()))]);
}

#[test]
fn evicting_a_container_process_is_announced_and_the_table_follows() {
    let node = Node::new("evict");
    for pid in 10..15 {
        node.process(pid, &cgroupfs(ID), Some("web-0"));
        node.started(pid, 500);
    }
    let mut r = Resolver::new(node.files(), 4);
    let mut out = Vec::new();
    // 10 is seen again before 14 arrives: 11 is then the least recently seen.
    for (k, pid) in [
        (kind::CONN_OPEN, 10),
        (kind::CONN_OPEN, 11),
        (kind::CONN_OPEN, 12),
        (kind::CONN_OPEN, 13),
        (kind::DATA, 10),
        (kind::CONN_OPEN, 14),
    ] {
        r.before(&raw(k, pid), &mut out);
    }
    let said: Vec<(u32, Announced)> = out.iter().map(|o| wire::decode(o).unwrap()).collect();
    assert!(said.contains(&(11, Announced::Forget)), "{said:?}");
    assert!(!said.contains(&(10, Announced::Forget)), "{said:?}");
    assert_eq!(r.len(), 4);
    let mut table = IdentityTable::default();
    for rec in &out {
        table.apply(rec).unwrap();
    }
    assert_eq!(table.len(), r.len());
    assert!(table.get(11).is_none() && table.get(10).is_some() && table.get(14).is_some());
}

#[test]
fn the_table_attaches_what_was_announced_and_refuses_garbage() {
    let mut table = IdentityTable::default();
    let id = Identity {
        namespace: Some("shop".into()),
        pod: Some(Pod {
            name: Some("web-0".into()),
            uid: UID.into(),
        }),
        ..Identity::default()
    };
    table.apply(&wire::encode(1, 7, &id)).unwrap();
    assert_eq!(table.get(7).map(|a| a.as_ref()), Some(&id));
    table
        .apply(&wire::encode(2, 7, &Identity::default()))
        .unwrap();
    assert!(table.get(7).is_none());
    table.apply(&wire::encode(1, 7, &id)).unwrap();
    table.apply(&wire::encode_forget(3, 7)).unwrap();
    assert!(table.is_empty());
    let mut bad = wire::encode(1, 7, &id);
    bad.truncate(bad.len() - 1);
    assert!(table.apply(&bad).is_err());
    assert!(table.is_empty());
}

#[test]
fn filters_match_namespace_pod_and_container_name_or_id_prefix() {
    let id = Identity {
        container: Some(Container {
            id: ID.into(),
            runtime: None,
            name: Some("web".into()),
        }),
        pod: Some(Pod {
            name: Some("web-0".into()),
            uid: UID.into(),
        }),
        namespace: Some("shop".into()),
        workload: None,
    };
    let f = |ns: &[&str], pods: &[&str], containers: &[&str]| IdentityFilter {
        namespaces: ns.iter().map(|s| s.to_string()).collect(),
        pods: pods.iter().map(|s| s.to_string()).collect(),
        containers: containers.iter().map(|s| s.to_string()).collect(),
    };
    assert!(f(&[], &[], &[]).admits(Some(&id)));
    assert!(f(&[], &[], &[]).admits(None));
    assert!(f(&["kube-system", "shop"], &[], &[]).admits(Some(&id)));
    assert!(!f(&["kube-system"], &[], &[]).admits(Some(&id)));
    assert!(f(&["shop"], &["web-0"], &["web"]).admits(Some(&id)));
    assert!(!f(&["shop"], &["web-1"], &[]).admits(Some(&id)));
    assert!(f(&[], &[], &["3f2a9c1b7d4e"]).admits(Some(&id)));
    assert!(!f(&[], &[], &["3f2a9c1b7d4f"]).admits(Some(&id)));
    // A process outside any container matches no identity filter.
    assert!(!f(&["shop"], &[], &[]).admits(None));
    assert!(!f(&[], &[], &["web"]).admits(None));
}

#[test]
fn a_real_process_of_this_host_resolves_without_error() {
    // Whatever this test runs in (a host session, a CI container), resolving it through the
    // real /proc is consistent with its cgroup file.
    let mut files = NodeFiles::new("/proc", "/");
    let pid = std::process::id();
    let id = files.resolve(pid);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(
        id.container.map(|c| c.id),
        cgroup::parse(&cg).map(|c| c.container_id)
    );
}

#[test]
fn missing_name_sources_are_told_once_and_only_when_a_pod_is_seen() {
    let node = Node::new("tell");
    node.process(10, "0::/user.slice/session-1.scope\n", None);
    node.process(11, &cgroupfs(ID), Some("web-0"));
    node.process(12, &cgroupfs(ID), Some("web-0"));
    let mut r = Resolver::new(node.files(), 100);
    announce(&mut r, &[raw(kind::CONN_OPEN, 10)]);
    assert_eq!(
        r.take_unavailable(),
        None,
        "a host process needs no pod names"
    );
    announce(&mut r, &[raw(kind::CONN_OPEN, 11)]);
    let missing = r
        .take_unavailable()
        .expect("the scratch node has no kubelet layout");
    assert!(
        missing.iter().any(|m| m.path.ends_with(node::PODS_LOG_DIR)),
        "{missing:?}"
    );
    announce(&mut r, &[raw(kind::CONN_OPEN, 12)]);
    assert_eq!(r.take_unavailable(), None, "said once");
}
