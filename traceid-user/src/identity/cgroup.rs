//! The container and pod of a process, read from its cgroup path (`/proc/<pid>/cgroup`).
//!
//! Every runtime puts the container id in the last components of the cgroup it creates, and
//! the kubelet puts the pod UID in the component above it:
//!
//! | Driver | Path (cgroup v2 `0::<path>`, or any v1 hierarchy `N:ctrl:<path>`) |
//! |---|---|
//! | cgroupfs (kubelet) | `/kubepods/burstable/pod<uid>/<id>` (runtime not named) |
//! | systemd (kubelet) | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope` (or `crio-<id>.scope`, `docker-<id>.scope`) |
//! | containerd, systemd cgroup not delegated | `…/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>` |
//! | docker | `/docker/<id>`, `/system.slice/docker-<id>.scope` |
//! | podman | `/machine.slice/libpod-<id>.scope` (and its `/container` child) |
//!
//! Monitor processes (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) are not
//! containers. A cgroup namespace only shortens the path from the top (`/../..`), which
//! leaves the components searched here in place.

use crate::record::Runtime;

/// What a cgroup path says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupIdentity {
    pub container_id: String,
    pub runtime: Option<Runtime>,
    /// The Kubernetes pod UID (dashed form), when the path is the kubelet's.
    pub pod_uid: Option<String>,
}

/// Parses the whole content of `/proc/<pid>/cgroup`: the first hierarchy whose path names a
/// container wins (they all name the same one). None for a process outside any container.
pub fn parse(content: &str) -> Option<CgroupIdentity> {
    content.lines().find_map(|line| {
        // `hierarchy-id:controllers:path`; the path itself may contain ':' (see module doc).
        let path = line.splitn(3, ':').nth(2)?;
        parse_path(path)
    })
}

/// One cgroup path: the deepest component naming a container, and the pod above it.
pub fn parse_path(path: &str) -> Option<CgroupIdentity> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (at, container_id, runtime) =
        components.iter().enumerate().rev().find_map(|(i, c)| {
            container_component(c, i, &components).map(|(id, rt)| (i, id, rt))
        })?;
    let pod_uid = components[..=at]
        .iter()
        .rev()
        .find_map(|c| pod_component(c));
    Some(CgroupIdentity {
        container_id: container_id.to_string(),
        runtime,
        pod_uid,
    })
}

/// The container id (and runtime when named) of one path component. A bare id counts only
/// under a parent that says what it is: a kubelet pod, or docker's own hierarchy.
fn container_component<'a>(
    c: &'a str,
    at: usize,
    all: &[&str],
) -> Option<(&'a str, Option<Runtime>)> {
    // systemd scopes: `<prefix>-<id>.scope`.
    const SCOPES: [(&str, Runtime); 4] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    if let Some(unit) = c.strip_suffix(".scope") {
        return SCOPES.iter().find_map(|(prefix, rt)| {
            let id = unit.strip_prefix(prefix)?;
            is_container_id(id).then_some((id, Some(*rt)))
        });
    }
    // containerd's systemd form when it writes the cgroup itself: `<slice>:<prefix>:<id>`.
    if let Some((_, rest)) = c.split_once(':') {
        let (prefix, id) = rest.split_once(':')?;
        let rt = match prefix {
            "cri-containerd" => Runtime::Containerd,
            "crio" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => return None,
        };
        return is_container_id(id).then_some((id, Some(rt)));
    }
    if !is_container_id(c) {
        return None;
    }
    let parent = at.checked_sub(1).map(|p| all[p])?;
    if parent == "docker" {
        Some((c, Some(Runtime::Docker)))
    } else if pod_component(parent).is_some() {
        Some((c, None))
    } else {
        None
    }
}

/// The pod UID of a kubelet pod component: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with _>.slice` (systemd), in the dashed form.
fn pod_component(c: &str) -> Option<String> {
    // In containerd's colon form the pod slice is the part before the first ':'.
    let c = c.split(':').next().unwrap_or(c);
    let uid = if let Some(slice) = c.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        // systemd escapes '-' inside a unit name component, so the kubelet writes '_'.
        slice.rsplit_once("-pod")?.1.replace('_', "-")
    } else {
        c.strip_prefix("pod")?.to_string()
    };
    is_uid(&uid).then_some(uid)
}

/// 64 lowercase hex digits: the ids containerd, CRI-O, docker and podman give containers.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A UUID in its 36-character dashed form (pod UIDs; static pods use a hash in that shape).
fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const UID: &str = "8e1c6a2b-4f3d-4c5e-9a7b-0d1e2f3a4b5c";
    const UID_SYSTEMD: &str = "8e1c6a2b_4f3d_4c5e_9a7b_0d1e2f3a4b5c";

    fn ident(rt: Option<Runtime>, pod: bool) -> Option<CgroupIdentity> {
        Some(CgroupIdentity {
            container_id: ID.into(),
            runtime: rt,
            pod_uid: pod.then(|| UID.to_string()),
        })
    }

    #[test]
    fn kubelet_cgroupfs_driver_v1_and_v2() {
        // cgroup v1: several hierarchies, the named systemd one first.
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        assert_eq!(parse(&v1), ident(None, true));
        // Guaranteed QoS pods sit directly under /kubepods.
        assert_eq!(
            parse(&format!("0::/kubepods/pod{UID}/{ID}\n")),
            ident(None, true)
        );
        assert_eq!(
            parse(&format!("0::/kubepods/besteffort/pod{UID}/{ID}\n")),
            ident(None, true)
        );
    }

    #[test]
    fn kubelet_systemd_driver_names_the_runtime() {
        let path = |scope: &str| {
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/{scope}\n"
            )
        };
        for (prefix, rt) in [
            ("cri-containerd", Runtime::Containerd),
            ("crio", Runtime::CriO),
            ("docker", Runtime::Docker),
        ] {
            assert_eq!(
                parse(&path(&format!("{prefix}-{ID}.scope"))),
                ident(Some(rt), true),
                "{prefix}"
            );
        }
        // Guaranteed pods: kubepods-pod<uid>.slice.
        assert_eq!(
            parse(&format!(
                "0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
            )),
            ident(Some(Runtime::Containerd), true)
        );
        // CRI-O's monitor process is not the container.
        assert_eq!(parse(&path(&format!("crio-conmon-{ID}.scope"))), None);
    }

    #[test]
    fn containerd_colon_form_and_cgroup_namespaces() {
        let line = format!(
            "0::/system.slice/containerd.service/kubepods-besteffort-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}\n"
        );
        assert_eq!(parse(&line), ident(Some(Runtime::Containerd), true));
        // Seen from inside a cgroup namespace rooted elsewhere.
        let line = format!(
            "0::/../../kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&line), ident(Some(Runtime::Containerd), true));
    }

    #[test]
    fn docker_and_podman_without_kubernetes() {
        assert_eq!(
            parse(&format!("0::/system.slice/docker-{ID}.scope\n")),
            ident(Some(Runtime::Docker), false)
        );
        assert_eq!(
            parse(&format!("13:cpu,cpuacct:/docker/{ID}\n")),
            ident(Some(Runtime::Docker), false)
        );
        assert_eq!(
            parse(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")),
            ident(Some(Runtime::Podman), false)
        );
        assert_eq!(
            parse(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")),
            None
        );
    }

    #[test]
    fn processes_outside_containers_have_none() {
        for content in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/nginx.service\n",
            "0::/init.scope\n",
            "0::/\n",
            // A hex name in an unrelated hierarchy is not a container.
            &format!("0::/system.slice/{ID}\n"),
            // A pod slice without a container below it (the pause process is a container).
            &format!("0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice\n"),
            // Garbage.
            "",
            "no colons at all",
            "0::/kubepods/burstable/podnot-a-uid/abc\n",
        ] {
            assert_eq!(parse(content), None, "{content:?}");
        }
    }

    #[test]
    fn short_or_uppercase_ids_are_not_container_ids() {
        let short = &ID[..63];
        assert_eq!(parse(&format!("0::/kubepods/pod{UID}/{short}")), None);
        let upper = ID.to_uppercase();
        assert_eq!(
            parse(&format!("0::/system.slice/docker-{upper}.scope")),
            None
        );
    }
}
