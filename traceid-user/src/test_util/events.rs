//! Builders of synthetic event streams: exactly the records the kernel would write.

use crate::event::pod_bytes;
use crate::lifecycle::census::{Census, TimeWaitSocket};
use crate::lifecycle::{census_record, Sysctls};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::record::{Record, RequestRecord};
use traceid_common::{
    kind, ConnEvent, DataEvent, EventHeader, GoCallEvent, GoServeEvent, GoSpawnEvent, StateEvent,
    DIR_EGRESS, DIR_INGRESS,
};

pub const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
pub const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Builds raw records with a clock that advances 1 µs per record.
#[derive(Default)]
pub struct Stream {
    pub records: Vec<Vec<u8>>,
    now: u64,
}

fn header(
    kind: u16,
    pid: u32,
    tid: u32,
    fd: i32,
    conn_ts: u64,
    now: u64,
    comm: &str,
) -> EventHeader {
    let mut c = [0u8; 16];
    c[..comm.len().min(15)].copy_from_slice(&comm.as_bytes()[..comm.len().min(15)]);
    EventHeader {
        kind,
        _pad0: 0,
        pid,
        tid,
        fd,
        ts_ns: now,
        conn_ts_ns: conn_ts,
        comm: c,
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a);
    b
}

/// A connection as the tests name it.
#[derive(Clone, Copy)]
pub struct C {
    pub pid: u32,
    pub fd: i32,
    pub ts: u64,
    pub comm: &'static str,
    pub role: u8,
}

impl C {
    /// The kernel socket pointer the builders give this connection (state changes name it).
    pub fn sock(&self) -> u64 {
        0xffff_0000_0000_0000 | (u64::from(self.pid) << 24) | (self.fd as u64 & 0xff_ffff)
    }
}

impl Stream {
    fn tick(&mut self) -> u64 {
        self.now += 1000;
        self.now
    }

    /// Moves the clock `ns` forward (between bursts, before a census).
    pub fn advance(&mut self, ns: u64) {
        self.now += ns;
    }

    /// The socket of `c` left ESTABLISHED for `new_state` (a [`traceid_common::tcp_state`]),
    /// as `sock:inet_sock_set_state` reports it: seen from softirq, pid 0, named by `sock`.
    pub fn state(&mut self, c: C, local: ([u8; 4], u16), peer: ([u8; 4], u16), new_state: u8) {
        let now = self.tick();
        let ev = StateEvent {
            header: header(kind::STATE, 0, 0, -1, 0, now, "swapper/0"),
            skaddr: c.sock(),
            old_state: traceid_common::tcp_state::ESTABLISHED,
            new_state,
            family: 2,
            local_port: local.1,
            remote_port: peer.1,
            local_addr: v4(local.0),
            remote_addr: v4(peer.0),
        };
        self.records.push(pod_bytes(&ev));
    }

    /// A TIME_WAIT census record listing `sockets`.
    pub fn census(&mut self, sockets: &[TimeWaitSocket], sys: &Sysctls) {
        let now = self.tick();
        let census = Census {
            sockets: sockets.to_vec(),
            truncated: false,
        };
        self.records.push(census_record::encode(now, &census, sys));
    }

    pub fn open(&mut self, c: C, local: [u8; 4], lport: u16, peer: [u8; 4], pport: u16) {
        let now = self.tick();
        let (la, ra) = (v4(local), v4(peer));
        let ev = ConnEvent {
            header: header(kind::CONN_OPEN, c.pid, c.pid, c.fd, c.ts, now, c.comm),
            role: c.role,
            flags: 0,
            family: 2,
            local_port: lport,
            remote_port: pport,
            local_addr: la,
            remote_addr: ra,
            sock: c.sock(),
        };
        self.records.push(pod_bytes(&ev));
    }

    /// One read (`egress` false) or write of `bytes`, captured whole.
    pub fn data(&mut self, c: C, tid: u32, egress: bool, bytes: &[u8]) {
        self.data_captured(c, tid, egress, bytes, bytes.len());
    }

    /// One read or write of `bytes` of which the kernel copied only the first `captured`
    /// (the capture window): the record says the real length.
    pub fn data_captured(&mut self, c: C, tid: u32, egress: bool, bytes: &[u8], captured: usize) {
        let now = self.tick();
        let kept = &bytes[..captured.min(bytes.len())];
        let ev = DataEvent {
            header: header(kind::DATA, c.pid, tid, c.fd, c.ts, now, c.comm),
            direction: if egress { DIR_EGRESS } else { DIR_INGRESS },
            source: 1,
            role: c.role,
            _pad0: 0,
            captured: kept.len() as u32,
            real_len: bytes.len() as u64,
        };
        let mut raw = pod_bytes(&ev);
        raw.extend_from_slice(kept);
        self.records.push(raw);
    }

    /// Go: goroutine `goid` of `c`'s process starts serving the server connection `c`
    /// (`net/http.(*conn).serve`).
    pub fn go_serve(&mut self, c: C, tid: u32, goid: u64) {
        let now = self.tick();
        let ev = GoServeEvent {
            header: header(kind::GO_SERVE, c.pid, tid, c.fd, c.ts, now, c.comm),
            goid,
        };
        self.records.push(pod_bytes(&ev));
    }

    /// Go: goroutine `goid` asks for the next request on the client connection `c`
    /// (`net/http.(*persistConn).roundTrip`).
    pub fn go_call(&mut self, c: C, tid: u32, goid: u64) {
        let now = self.tick();
        let ev = GoCallEvent {
            header: header(kind::GO_CALL, c.pid, tid, c.fd, c.ts, now, c.comm),
            goid,
        };
        self.records.push(pod_bytes(&ev));
    }

    /// Go: goroutine `parent` of process `pid` starts goroutine `child`.
    pub fn go_spawn(&mut self, pid: u32, tid: u32, parent: u64, child: u64) {
        let now = self.tick();
        let ev = GoSpawnEvent {
            header: header(kind::GO_SPAWN, pid, tid, -1, 0, now, "go"),
            parent_goid: parent,
            child_goid: child,
        };
        self.records.push(pod_bytes(&ev));
    }

    pub fn close(&mut self, c: C) {
        let now = self.tick();
        self.records.push(pod_bytes(&header(
            kind::CONN_CLOSE,
            c.pid,
            c.pid,
            c.fd,
            c.ts,
            now,
            c.comm,
        )));
    }

    pub fn run(&self) -> Vec<RequestRecord> {
        run_records(&self.records)
    }
}

/// Every request record a pipeline with the default configuration makes of `records`.
pub fn run_records(records: &[Vec<u8>]) -> Vec<RequestRecord> {
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let mut out = Vec::new();
    let mut sink = |r: &Record| {
        if let Record::Request(q) = r {
            out.push((**q).clone());
        }
    };
    for r in records {
        pipeline.process(r, &mut sink);
    }
    pipeline.finish(&mut sink);
    out
}

pub fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n");
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
