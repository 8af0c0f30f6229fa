//! A process's identity as a record ([`kind::IDENTITY`]), so the live loop announces it
//! through the same pipeline as kernel events and `traceid record` keeps it for replay.
//!
//! The header's `pid` is the process. Body: u8 flags (bit 0: forget the process: the agent
//! stopped following it), then fields, each u8 tag, u16 length (little-endian) and that many
//! bytes of UTF-8. Unknown tags are skipped, so fields can be added; a process with no field
//! is outside any container.

use traceid_common::{kind, EventHeader, COMM_LEN};

use crate::event;
use crate::record::{Container, Identity, Pod, Runtime, Workload, WorkloadKind};

const FORGET: u8 = 1;
/// Longest field value (names are DNS names of at most 253 bytes; ids are 64).
pub const MAX_FIELD_LEN: usize = 512;

const CONTAINER_ID: u8 = 1;
const RUNTIME: u8 = 2;
const CONTAINER_NAME: u8 = 3;
const POD_UID: u8 = 4;
const POD_NAME: u8 = 5;
const NAMESPACE: u8 = 6;
const WORKLOAD_KIND: u8 = 7;
const WORKLOAD_NAME: u8 = 8;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum IdentityRecordError {
    #[error("identity record of {0} bytes is shorter than its header and flags")]
    Short(usize),
    #[error("identity field {tag} claims {claimed} bytes, {left} are left")]
    FieldTruncated {
        tag: u8,
        claimed: usize,
        left: usize,
    },
    #[error("identity field {tag} is not UTF-8 or longer than {MAX_FIELD_LEN} bytes")]
    BadField { tag: u8 },
    #[error("identity field {tag} has an unknown value {value:?}")]
    UnknownValue { tag: u8, value: String },
    #[error("identity record has {0} without {1}")]
    Incomplete(&'static str, &'static str),
}

/// What an identity record says about its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// The process is this (empty: outside any container).
    Is(Identity),
    /// Nothing is known about the process any more.
    Forget,
}

/// The record announcing that `pid` is `identity`, at `ts_ns` (CLOCK_MONOTONIC).
pub fn encode(ts_ns: u64, pid: u32, identity: &Identity) -> Vec<u8> {
    let mut raw = header(ts_ns, pid);
    raw.push(0);
    let mut field = |tag: u8, value: Option<&str>| {
        if let Some(v) = value {
            let mut end = v.len().min(MAX_FIELD_LEN);
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            raw.push(tag);
            raw.extend_from_slice(&(end as u16).to_le_bytes());
            raw.extend_from_slice(&v.as_bytes()[..end]);
        }
    };
    if let Some(c) = &identity.container {
        field(CONTAINER_ID, Some(&c.id));
        field(RUNTIME, c.runtime.map(Runtime::as_str));
        field(CONTAINER_NAME, c.name.as_deref());
    }
    if let Some(p) = &identity.pod {
        field(POD_UID, Some(&p.uid));
        field(POD_NAME, p.name.as_deref());
    }
    field(NAMESPACE, identity.namespace.as_deref());
    if let Some(w) = &identity.workload {
        field(WORKLOAD_KIND, Some(w.kind.as_str()));
        field(WORKLOAD_NAME, Some(&w.name));
    }
    raw
}

/// The record saying the agent no longer follows `pid`.
pub fn encode_forget(ts_ns: u64, pid: u32) -> Vec<u8> {
    let mut raw = header(ts_ns, pid);
    raw.push(FORGET);
    raw
}

fn header(ts_ns: u64, pid: u32) -> Vec<u8> {
    event::pod_bytes(&EventHeader {
        kind: kind::IDENTITY,
        _pad0: 0,
        pid,
        tid: 0,
        fd: -1,
        ts_ns,
        conn_ts_ns: 0,
        comm: [0; COMM_LEN],
    })
}

/// The header of any raw record, when it is long enough to have one.
pub fn peek_header(raw: &[u8]) -> Option<EventHeader> {
    bytemuck::try_pod_read_unaligned(raw.get(..size_of::<EventHeader>())?).ok()
}

/// Decodes an identity record (untrusted: every length is checked): its pid and what it says.
pub fn decode(raw: &[u8]) -> Result<(u32, Announced), IdentityRecordError> {
    let header = peek_header(raw).ok_or(IdentityRecordError::Short(raw.len()))?;
    let body = &raw[size_of::<EventHeader>()..];
    let (&flags, mut fields) = body
        .split_first()
        .ok_or(IdentityRecordError::Short(raw.len()))?;
    if flags & FORGET != 0 {
        return Ok((header.pid, Announced::Forget));
    }
    let mut values: [Option<String>; 9] = Default::default();
    while let Some((&tag, rest)) = fields.split_first() {
        let len = rest
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or(IdentityRecordError::FieldTruncated {
                tag,
                claimed: 2,
                left: rest.len(),
            })?;
        let value = rest
            .get(2..2 + len)
            .ok_or(IdentityRecordError::FieldTruncated {
                tag,
                claimed: len,
                left: rest.len() - 2,
            })?;
        fields = &rest[2 + len..];
        let Some(slot) = values.get_mut(tag as usize) else {
            continue;
        };
        if len > MAX_FIELD_LEN {
            return Err(IdentityRecordError::BadField { tag });
        }
        let text = std::str::from_utf8(value).map_err(|_| IdentityRecordError::BadField { tag })?;
        *slot = Some(text.to_string());
    }
    let mut take = |tag: u8| values[tag as usize].take();
    let container = match (take(CONTAINER_ID), take(RUNTIME), take(CONTAINER_NAME)) {
        (Some(id), runtime, name) => Some(Container {
            id,
            runtime: runtime
                .map(|r| {
                    Runtime::ALL.into_iter().find(|k| k.as_str() == r).ok_or(
                        IdentityRecordError::UnknownValue {
                            tag: RUNTIME,
                            value: r,
                        },
                    )
                })
                .transpose()?,
            name,
        }),
        (None, None, None) => None,
        (None, ..) => {
            return Err(IdentityRecordError::Incomplete(
                "a runtime or name",
                "a container id",
            ))
        }
    };
    let pod = match (take(POD_UID), take(POD_NAME)) {
        (Some(uid), name) => Some(Pod { name, uid }),
        (None, None) => None,
        (None, Some(_)) => return Err(IdentityRecordError::Incomplete("a pod name", "a pod uid")),
    };
    let namespace = take(NAMESPACE);
    let workload = match (take(WORKLOAD_KIND), take(WORKLOAD_NAME)) {
        (Some(k), Some(name)) => Some(Workload {
            kind: WorkloadKind::ALL
                .into_iter()
                .find(|w| w.as_str() == k)
                .ok_or(IdentityRecordError::UnknownValue {
                    tag: WORKLOAD_KIND,
                    value: k,
                })?,
            name,
            derived: true,
        }),
        (None, None) => None,
        _ => {
            return Err(IdentityRecordError::Incomplete(
                "half a workload",
                "the other half",
            ))
        }
    };
    Ok((
        header.pid,
        Announced::Is(Identity {
            container,
            pod,
            namespace,
            workload,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Identity {
        Identity {
            container: Some(Container {
                id: "ab".repeat(32),
                runtime: Some(Runtime::CriO),
                name: Some("web".into()),
            }),
            pod: Some(Pod {
                name: Some("frontend-7d9f8b6c5d-x2x4k".into()),
                uid: "8e1c6a2b-4f3d-4c5e-9a7b-0d1e2f3a4b5c".into(),
            }),
            namespace: Some("shop".into()),
            workload: Some(Workload {
                kind: WorkloadKind::Deployment,
                name: "frontend".into(),
                derived: true,
            }),
        }
    }

    #[test]
    fn identities_round_trip() {
        let partial = Identity {
            container: Some(Container {
                id: "cd".repeat(32),
                runtime: None,
                name: None,
            }),
            ..Identity::default()
        };
        for id in [full(), partial, Identity::default()] {
            let raw = encode(77, 4242, &id);
            assert_eq!(peek_header(&raw).unwrap().kind, kind::IDENTITY);
            assert_eq!(decode(&raw), Ok((4242, Announced::Is(id))));
        }
        assert_eq!(decode(&encode_forget(1, 9)), Ok((9, Announced::Forget)));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut raw = encode(1, 5, &full());
        raw.extend_from_slice(&[200, 3, 0, b'x', b'y', b'z']);
        assert_eq!(decode(&raw), Ok((5, Announced::Is(full()))));
    }

    #[test]
    fn every_cut_of_a_record_is_refused_or_a_prefix_of_it() {
        let raw = encode(1, 5, &full());
        for end in 0..raw.len() {
            // Cutting between fields leaves a shorter valid record; anything else is refused.
            if let Ok((pid, Announced::Is(id))) = decode(&raw[..end]) {
                assert_eq!(pid, 5);
                assert_ne!(id, full(), "cut at {end}");
            }
        }
        assert_eq!(decode(&raw[..10]), Err(IdentityRecordError::Short(10)));
    }

    #[test]
    fn nonsense_values_are_refused() {
        let mut id = full();
        id.container.as_mut().unwrap().runtime = None;
        let mut raw = encode(1, 5, &id);
        raw.extend_from_slice(&[RUNTIME, 4, 0]);
        raw.extend_from_slice(b"rkt!");
        assert!(matches!(
            decode(&raw),
            Err(IdentityRecordError::UnknownValue { tag: RUNTIME, .. })
        ));
        let mut raw = encode(1, 5, &Identity::default());
        raw.extend_from_slice(&[POD_NAME, 1, 0, b'p']);
        assert!(matches!(
            decode(&raw),
            Err(IdentityRecordError::Incomplete(..))
        ));
        let mut raw = encode(1, 5, &Identity::default());
        raw.extend_from_slice(&[NAMESPACE, 2, 0, 0xff, 0xfe]);
        assert_eq!(
            decode(&raw),
            Err(IdentityRecordError::BadField { tag: NAMESPACE })
        );
    }
}
