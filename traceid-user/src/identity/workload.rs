//! The workload that owns a pod, derived from the pod's name by its controller's naming rules.
//!
//! The agent never asks the API server, so the owner is inferred, and marked as such
//! ([`Workload::derived`]):
//!
//! - Deployment: `<deployment>-<pod-template-hash>-<suffix>`. The hash is the decimal FNV hash
//!   of the pod template, each digit mapped through the kubelet's safe alphabet, so it only
//!   uses `bcdf456789` (6 to 10 characters in practice);
//! - StatefulSet: `<statefulset>-<ordinal>`;
//! - DaemonSet: `<daemonset>-<suffix>`.
//!
//! `<suffix>` is the 5 random characters of `generateName`, from `bcdfghjklmnpqrstvwxz2456789`.
//! A Job's or a bare ReplicaSet's pods look like a DaemonSet's and are reported as one; a
//! CronJob's (`<cronjob>-<minutes since epoch>-<suffix>`) are recognised and left out.

use crate::record::{Workload, WorkloadKind};

/// Characters of `generateName` suffixes (k8s.io/apimachinery/pkg/util/rand).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Characters of a pod-template-hash: the safe alphabet at the indices of '0'..='9' mod 27.
const HASH_ALPHABET: &[u8] = b"bcdf456789";

/// The workload a pod of this name belongs to, when the name follows an owner's rules.
pub fn derive(pod: &str) -> Option<Workload> {
    let (rest, last) = pod.rsplit_once('-')?;
    let workload = |kind, name: &str| {
        (!name.is_empty()).then(|| Workload {
            kind,
            name: name.to_string(),
            derived: true,
        })
    };
    if is_ordinal(last) {
        return workload(WorkloadKind::StatefulSet, rest);
    }
    if !is_generated_suffix(last) {
        return None;
    }
    match rest.rsplit_once('-') {
        Some((name, hash)) if is_template_hash(hash) => workload(WorkloadKind::Deployment, name),
        // A CronJob's Job: `<cronjob>-<minutes since epoch>`.
        Some((_, minutes)) if minutes.len() >= 8 && minutes.bytes().all(|b| b.is_ascii_digit()) => {
            None
        }
        _ => workload(WorkloadKind::DaemonSet, rest),
    }
}

fn is_ordinal(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
        && s.len() <= 5
}

fn is_generated_suffix(s: &str) -> bool {
    s.len() == 5 && s.bytes().all(|b| SAFE_ALPHABET.contains(&b))
}

fn is_template_hash(s: &str) -> bool {
    (6..=10).contains(&s.len()) && s.bytes().all(|b| HASH_ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_name(pod: &str) -> Option<(WorkloadKind, String)> {
        derive(pod).map(|w| {
            assert!(w.derived);
            (w.kind, w.name)
        })
    }

    #[test]
    fn deployment_pods_lose_hash_and_suffix() {
        for (pod, name) in [
            ("frontend-7d9f8b6c5d-x2x4k", "frontend"),
            ("coredns-5d78c9869d-8gkzq", "coredns"),
            ("my-shop-api-6b4f9c7d8-qwz5t", "my-shop-api"),
            // A 9-character hash (a hash value below 10^9).
            ("checkout-6c9b8d4f5-ln7xb", "checkout"),
        ] {
            assert_eq!(
                kind_name(pod),
                Some((WorkloadKind::Deployment, name.into())),
                "{pod}"
            );
        }
    }

    #[test]
    fn statefulset_pods_lose_their_ordinal() {
        assert_eq!(
            kind_name("postgres-0"),
            Some((WorkloadKind::StatefulSet, "postgres".into()))
        );
        assert_eq!(
            kind_name("kafka-broker-12"),
            Some((WorkloadKind::StatefulSet, "kafka-broker".into()))
        );
        // Ordinals have no leading zeros.
        assert_eq!(kind_name("build-007"), None);
    }

    #[test]
    fn daemonset_pods_lose_their_suffix() {
        assert_eq!(
            kind_name("kube-proxy-x7kq2"),
            Some((WorkloadKind::DaemonSet, "kube-proxy".into()))
        );
        // "agent" is not a template hash (vowels are never generated), so this is a DaemonSet.
        assert_eq!(
            kind_name("traceid-agent-4xj8d"),
            Some((WorkloadKind::DaemonSet, "traceid-agent".into()))
        );
    }

    #[test]
    fn names_without_an_owner_pattern_have_no_workload() {
        for pod in [
            "nginx",
            "my-pod",
            // Vowels and '0', '1', '3' never appear in generated suffixes.
            "web-abcde",
            "web-x2x41",
            "-0",
            "",
            // A CronJob's pod: <cronjob>-<minutes since epoch>-<suffix>.
            "backup-28473920-k8sd2",
        ] {
            assert_eq!(kind_name(pod), None, "{pod}");
        }
    }
}
