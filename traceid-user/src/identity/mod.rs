//! Who a process is: its container, pod, namespace and workload.
//!
//! Two halves, on either side of the recording:
//! - the live loop's [`Resolver`] reads each process's identity from the node ([`node`]) the
//!   first time one of its records goes by, and announces it as an identity record
//!   ([`wire`], `kind::IDENTITY`) fed ahead of that record: the recording keeps it;
//! - the pipeline's [`IdentityTable`] learns identities from those records, live and in a
//!   replay alike, and attaches them to the records the engine emits for the process.
//!
//! The resolver remembers a bounded number of processes (least recently seen ones are
//! forgotten, and the forgetting is announced too, so the table never outgrows it). A process
//! is never reported to exit, and its pid may be reused: each connection it opens re-reads its
//! start time, and a new start time means a new process, resolved again.

pub mod cgroup;
pub mod node;
pub mod wire;
pub mod workload;

use crate::mem::FastMap;
use std::sync::Arc;

use traceid_common::kind;

use crate::record::Identity;
pub use node::{MissingSource, NodeFiles};
use wire::Announced;

/// Processes the resolver remembers by default.
pub const DEFAULT_PROCESS_CAP: usize = 16_384;

/// What the resolver knows of one process.
#[derive(Debug)]
struct Known {
    /// Start time read when it was resolved (0: it was already gone).
    start_time: u64,
    /// Announced identity (empty: outside any container, never announced).
    identity: Identity,
    /// Resolver tick of the last record of this process.
    last_seen: u64,
}

/// The live side: resolves processes from the node and announces them as records.
#[derive(Debug)]
pub struct Resolver {
    node: NodeFiles,
    known: FastMap<u32, Known>,
    cap: usize,
    tick: u64,
    /// Whether the unreadable name sources were already reported.
    told_unavailable: bool,
    /// Set when a pod's process was resolved while name sources are missing.
    unavailable: Option<Vec<MissingSource>>,
}

impl Resolver {
    pub fn new(node: NodeFiles, cap: usize) -> Resolver {
        Resolver {
            node,
            known: FastMap::default(),
            cap: cap.max(1),
            tick: 0,
            told_unavailable: false,
            unavailable: None,
        }
    }

    /// Once, after the first process of a Kubernetes pod: the name sources the node does not
    /// give this agent, when there are any. (Outside Kubernetes they have nothing to give.)
    pub fn take_unavailable(&mut self) -> Option<Vec<MissingSource>> {
        self.unavailable.take()
    }

    /// Processes remembered now.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Called with every raw record before it is fed: pushes to `out` the identity records to
    /// feed ahead of it (the process's identity when it is new or changed, and the forgetting
    /// of the processes evicted to make room).
    pub fn before(&mut self, raw: &[u8], out: &mut Vec<Vec<u8>>) {
        let Some(h) = wire::peek_header(raw) else {
            return;
        };
        // Only these carry the pid of the process that owns the socket (state events run in
        // softirq context; agent records have no process).
        if !matches!(h.kind, kind::DATA | kind::CONN_OPEN | kind::CONN_CLOSE) || h.pid == 0 {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        let start_time = if let Some(k) = self.known.get_mut(&h.pid) {
            k.last_seen = tick;
            // A new connection may be a new process behind a reused pid.
            if h.kind != kind::CONN_OPEN {
                return;
            }
            match self.node.start_time(h.pid) {
                Some(t) if t != k.start_time => t,
                _ => return,
            }
        } else {
            if self.known.len() >= self.cap {
                self.evict(h.ts_ns, out);
            }
            self.node.start_time(h.pid).unwrap_or(0)
        };
        let identity = self.node.resolve(h.pid);
        if identity.pod.is_some() && !self.told_unavailable {
            self.told_unavailable = true;
            let missing = self.node.missing_sources();
            self.unavailable = (!missing.is_empty()).then_some(missing);
        }
        let previous = self.known.insert(
            h.pid,
            Known {
                start_time,
                identity: identity.clone(),
                last_seen: tick,
            },
        );
        let announced = previous.map(|p| p.identity).unwrap_or_default();
        if identity != announced {
            out.push(wire::encode(h.ts_ns, h.pid, &identity));
        }
    }

    /// Forgets the least recently seen tenth of the processes (one pass, not one per record).
    fn evict(&mut self, ts_ns: u64, out: &mut Vec<Vec<u8>>) {
        let mut ticks: Vec<u64> = self.known.values().map(|k| k.last_seen).collect();
        let n = (self.cap / 10).max(1).min(ticks.len());
        let (_, cutoff, _) = ticks.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        self.known.retain(|pid, k| {
            let keep = k.last_seen > cutoff;
            if !keep && !k.identity.is_empty() {
                out.push(wire::encode_forget(ts_ns, *pid));
            }
            keep
        });
    }
}

/// The pipeline side: identities announced so far, by pid.
#[derive(Debug, Default)]
pub struct IdentityTable {
    by_pid: FastMap<u32, Arc<Identity>>,
}

/// Most processes the table holds: an agent-written recording never announces more than the
/// resolver remembers; a doctored one is not allowed to grow the table without bound.
const TABLE_CAP: usize = 4 * DEFAULT_PROCESS_CAP;

impl IdentityTable {
    /// Applies one identity record; an error when it cannot be decoded.
    pub fn apply(&mut self, raw: &[u8]) -> Result<(), wire::IdentityRecordError> {
        match wire::decode(raw)? {
            (pid, Announced::Is(id)) if !id.is_empty() => {
                if self.by_pid.len() < TABLE_CAP || self.by_pid.contains_key(&pid) {
                    self.by_pid.insert(pid, Arc::new(id));
                }
            }
            (pid, _) => {
                self.by_pid.remove(&pid);
            }
        }
        Ok(())
    }

    /// The identity of `pid`; None outside containers and for processes never announced.
    pub fn get(&self, pid: u32) -> Option<&Arc<Identity>> {
        self.by_pid.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

/// `--namespace`, `--pod`, `--container`: each given list must match (any of its values).
#[derive(Debug, Clone, Default)]
pub struct IdentityFilter {
    pub namespaces: Vec<String>,
    pub pods: Vec<String>,
    /// Container names or id prefixes.
    pub containers: Vec<String>,
}

impl IdentityFilter {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.pods.is_empty() && self.containers.is_empty()
    }

    /// Whether a process of this identity is reported (None: outside any container).
    pub fn admits(&self, id: Option<&Identity>) -> bool {
        let empty = Identity::default();
        let id = id.unwrap_or(&empty);
        let namespace = id.namespace.as_deref();
        let pod = id.pod.as_ref().and_then(|p| p.name.as_deref());
        let container = id.container.as_ref();
        (self.namespaces.is_empty()
            || self
                .namespaces
                .iter()
                .any(|n| Some(n.as_str()) == namespace))
            && (self.pods.is_empty() || self.pods.iter().any(|p| Some(p.as_str()) == pod))
            && (self.containers.is_empty()
                || container.is_some_and(|c| {
                    self.containers.iter().any(|want| {
                        c.name.as_deref() == Some(want.as_str())
                            || (!want.is_empty() && c.id.starts_with(want.as_str()))
                    })
                }))
    }
}

#[cfg(test)]
mod tests;
