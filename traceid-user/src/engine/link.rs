//! Linking an outbound request to the inbound request its process is serving.
//!
//! Rules, strongest first (docs/findings.md, "Linking"):
//! 1. certain: an inbound request in flight in the same process carries the same trace id;
//! 2. goroutine: in a Go program, the goroutine that asked for the outbound request on its
//!    connection (`net/http.(*persistConn).roundTrip`) is the goroutine serving the
//!    connection of an inbound request in flight (`net/http.(*conn).serve`), or descends from
//!    it (`go` statements, `runtime.newproc1`): exact, from the Go probes. When the ancestry
//!    reaches a serving goroutine whose connection has no request in flight, the call serves
//!    no request in flight and the weaker rules are not asked;
//! 3. strong: an inbound request in flight was read by the thread that writes the outbound
//!    request (thread-per-request servers: Flask, Java servlet pools), in a process that has
//!    shown, `MIN_THREAD_EVIDENCE` times and never the opposite, that one thread carries a
//!    request through: a response written by the thread that read its request, a propagating
//!    call written by the thread that read the request it propagates, a call's response read
//!    by the thread that wrote the call. Go schedules goroutines across threads (and its HTTP
//!    client writes and reads on two goroutines), so a Go service soon shows a request handled
//!    by two threads and is never linked by thread: under concurrency a thread says nothing
//!    about which goroutine it runs;
//! 4. weak: it is the only inbound request in flight in that process (sequential load on
//!    async runtimes and Go, where goroutines hop threads);
//! 5. otherwise unlinked: the engine never guesses between several candidates.
//!
//! Memory is bounded: at most `MAX_INFLIGHT_PER_PROCESS` requests per process and
//! `MAX_PROCESSES` processes; the oldest are forgotten first. The goroutine tables age out in
//! generations of `MAX_GOROUTINE_ENTRIES`.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::Arc;

use crate::protocol::RequestHead;
use crate::record::{Confidence, Evidence};
use crate::tracectx::TraceContext;

pub const MAX_INFLIGHT_PER_PROCESS: usize = 4096;
pub const MAX_PROCESSES: usize = 16_384;
/// Observations of one thread carrying a request through before a process is linked by thread.
/// Go's scheduler can keep a goroutine on one OS thread for a few requests in a row before it
/// moves it, so a short run of same-thread observations proves nothing (8 was seen to let a
/// wrong thread link through under load); each request of a thread-per-request server gives
/// two or more observations, so 32 costs such a server its first dozen requests.
pub const MIN_THREAD_EVIDENCE: u32 = 32;
/// Entries of each goroutine table per generation (serving and asking goroutines, parents).
pub const MAX_GOROUTINE_ENTRIES: usize = 65_536;
/// Goroutine ancestors walked up from the one that asked for a call: handlers rarely nest
/// `go` statements deeper, and a bound keeps a corrupt chain from looping.
pub const MAX_GOROUTINE_ANCESTRY: usize = 16;

/// An inbound request whose response has not been seen yet.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Connection identity (fd, conn_ts_ns) and request number on it.
    pub conn: (i32, u64),
    pub seq: u64,
    pub head: Arc<RequestHead>,
    pub trace: Option<TraceContext>,
}

/// The link chosen for an outbound request.
#[derive(Debug, Clone)]
pub struct Link {
    pub inbound: Inflight,
    pub evidence: Evidence,
}

impl Link {
    pub fn confidence(&self) -> Confidence {
        self.evidence.confidence()
    }
}

#[derive(Default)]
pub struct Linker {
    by_pid: crate::mem::FastMap<u32, VecDeque<Inflight>>,
    /// Processes seen serving inbound requests (bounded): only their outbound calls can be
    /// unlinked; a pure client (curl, a batch job) is the start of a chain.
    servers: std::collections::HashSet<u32, crate::mem::FastState>,
    /// What each server process has shown about serving a request on one thread (bounded).
    affinity: crate::mem::FastMap<u32, Affinity>,
    /// What the Go probes said about goroutines.
    goroutines: Goroutines,
    /// Inflight entries forgotten because a bound was hit.
    pub evicted: u64,
}

/// A map that forgets its oldest entries first, a generation at a time: when the current
/// generation is full it becomes the previous one, and the previous one is dropped.
struct Aging<K, V> {
    current: crate::mem::FastMap<K, V>,
    previous: crate::mem::FastMap<K, V>,
}

impl<K, V> Default for Aging<K, V> {
    fn default() -> Self {
        Aging {
            current: Default::default(),
            previous: Default::default(),
        }
    }
}

impl<K: Eq + Hash, V> Aging<K, V> {
    fn insert(&mut self, key: K, value: V) {
        if self.current.len() >= MAX_GOROUTINE_ENTRIES && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&key);
        self.current.insert(key, value);
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        self.current
            .remove(key)
            .or_else(|| self.previous.remove(key))
    }
}

/// Goroutines of Go programs, by (pid, goid): goroutine ids are never reused in a process.
#[derive(Default)]
struct Goroutines {
    /// The server connection (fd, conn_ts_ns) each serving goroutine reads requests from.
    serving: Aging<(u32, u64), (i32, u64)>,
    /// The goroutine that asked for the next request on each client connection
    /// (pid, fd, conn_ts_ns), taken by the request it asked for.
    asking: Aging<(u32, i32, u64), u64>,
    /// The goroutine that started each goroutine.
    parents: Aging<(u32, u64), u64>,
}

/// What the goroutine evidence says about an outbound request.
enum GoroutineVerdict {
    /// The request serving this call.
    Serves(Inflight),
    /// The asking goroutine serves (or descends from one serving) a connection with no
    /// request in flight: the call serves none.
    NoneInFlight,
    /// No evidence: not a Go program, or its ancestry is not known.
    Unknown,
}

/// Evidence that a process serves each request on one thread from read to response.
#[derive(Debug, Default, Clone, Copy)]
struct Affinity {
    /// Requests seen handled by the thread that read them.
    same: u32,
    /// Requests seen handled by another thread than the one that read them.
    hopped: u32,
}

impl Affinity {
    /// Linking by thread is sound: seen often enough, contradicted never.
    fn thread_per_request(self) -> bool {
        self.same >= MIN_THREAD_EVIDENCE && self.hopped == 0
    }
}

impl Linker {
    pub fn start(&mut self, pid: u32, entry: Inflight) {
        if self.servers.len() < MAX_PROCESSES * 4 {
            self.servers.insert(pid);
        }
        if !self.by_pid.contains_key(&pid) && self.by_pid.len() >= MAX_PROCESSES {
            // Forget the process with the fewest requests in flight: cheapest to lose.
            if let Some(victim) = self
                .by_pid
                .iter()
                .min_by_key(|(_, q)| q.len())
                .map(|(p, _)| *p)
            {
                self.evicted += self.by_pid.remove(&victim).map_or(0, |q| q.len() as u64);
            }
        }
        let q = self.by_pid.entry(pid).or_default();
        // A request still in flight on an earlier connection with this fd cannot be answered:
        // the kernel gives a process an fd number again only after closing it, so that
        // connection ended and its end was lost with the kernel's records. Left in the queue,
        // such requests would pile up to its cap exactly when records are being lost (measured:
        // 4,096 of them in a server taking 13,000 connections/s), and each link and finish
        // would scan them all.
        let before = q.len();
        q.retain(|e| e.conn.0 != entry.conn.0 || e.conn.1 >= entry.conn.1);
        self.evicted += (before - q.len()) as u64;
        if q.len() >= MAX_INFLIGHT_PER_PROCESS {
            q.pop_front();
            self.evicted += 1;
        }
        q.push_back(entry);
    }

    pub fn finish(&mut self, pid: u32, conn: (i32, u64), seq: u64) {
        if let Some(q) = self.by_pid.get_mut(&pid) {
            if let Some(i) = q.iter().position(|e| e.conn == conn && e.seq == seq) {
                q.remove(i);
            }
            // An emptied queue stays: the server's next request would allocate it again.
            // The table is bounded by `MAX_PROCESSES` all the same, and empty queues go first.
        }
    }

    /// Records that a request first handled by thread `read_tid` of `pid` (an inbound request
    /// read, a call written) was later handled by thread `later_tid` (its response written, a
    /// call propagating its trace written, the call's response read).
    pub fn observe_thread(&mut self, pid: u32, read_tid: u32, later_tid: u32) {
        if !self.affinity.contains_key(&pid) && self.affinity.len() >= MAX_PROCESSES * 4 {
            return;
        }
        let a = self.affinity.entry(pid).or_default();
        if read_tid == later_tid {
            a.same = a.same.saturating_add(1);
        } else {
            a.hopped = a.hopped.saturating_add(1);
        }
    }

    /// True when `pid` has shown that it serves each request on one thread.
    pub fn thread_per_request(&self, pid: u32) -> bool {
        self.affinity
            .get(&pid)
            .is_some_and(|a| a.thread_per_request())
    }

    /// True when `pid` has served inbound requests.
    pub fn is_server(&self, pid: u32) -> bool {
        self.servers.contains(&pid)
    }

    /// Inbound requests in flight in `pid`.
    pub fn inflight(&self, pid: u32) -> usize {
        self.by_pid.get(&pid).map_or(0, VecDeque::len)
    }

    /// The inbound request in flight in `pid` whose trace `outbound` continues: certain.
    pub fn link_by_trace(&self, pid: u32, outbound: &TraceContext) -> Option<Link> {
        // Newest first: a nested call is most likely to serve the latest request.
        let e = self.by_pid.get(&pid)?.iter().rev().find(|e| {
            e.trace
                .as_ref()
                .is_some_and(|t| t.same_trace(outbound) == Some(true))
        })?;
        Some(Link {
            inbound: e.clone(),
            evidence: Evidence::TraceId,
        })
    }

    /// A Go goroutine started serving the server connection `conn` (fd, conn_ts_ns).
    pub fn go_serve(&mut self, pid: u32, goid: u64, conn: (i32, u64)) {
        self.goroutines.serving.insert((pid, goid), conn);
    }

    /// A Go goroutine asked for the next request on the client connection `conn`.
    pub fn go_call(&mut self, pid: u32, goid: u64, conn: (i32, u64)) {
        self.goroutines.asking.insert((pid, conn.0, conn.1), goid);
    }

    /// A Go goroutine started another.
    pub fn go_spawn(&mut self, pid: u32, parent: u64, child: u64) {
        self.goroutines.parents.insert((pid, child), parent);
    }

    /// The goroutine evidence for the request starting on the client connection `conn`; the
    /// asking goroutine it names is used up (a request whose own GO_CALL was lost must not
    /// take its predecessor's).
    fn link_by_goroutine(&mut self, pid: u32, conn: (i32, u64)) -> GoroutineVerdict {
        let Some(mut goid) = self.goroutines.asking.remove(&(pid, conn.0, conn.1)) else {
            return GoroutineVerdict::Unknown;
        };
        for _ in 0..MAX_GOROUTINE_ANCESTRY {
            if let Some(served) = self.goroutines.serving.get(&(pid, goid)) {
                // HTTP/1 serves a connection's requests one after the other: the one being
                // served is the oldest still in flight on it.
                let serving = self
                    .by_pid
                    .get(&pid)
                    .and_then(|q| q.iter().filter(|e| e.conn == *served).min_by_key(|e| e.seq));
                return match serving {
                    Some(e) => GoroutineVerdict::Serves(e.clone()),
                    None => GoroutineVerdict::NoneInFlight,
                };
            }
            match self.goroutines.parents.get(&(pid, goid)) {
                Some(parent) => goid = *parent,
                None => break,
            }
        }
        GoroutineVerdict::Unknown
    }

    /// Chooses the inbound request an outbound request made by (pid, tid) on the client
    /// connection `conn` (fd, conn_ts_ns) serves.
    pub fn link(
        &mut self,
        pid: u32,
        tid: u32,
        conn: (i32, u64),
        outbound: Option<&TraceContext>,
    ) -> Option<Link> {
        let by_goroutine = self.link_by_goroutine(pid, conn);
        if let Some(link) = outbound.and_then(|out| self.link_by_trace(pid, out)) {
            self.observe_thread(pid, link.inbound.head.tid, tid);
            return Some(link);
        }
        match by_goroutine {
            GoroutineVerdict::Serves(inbound) => {
                return Some(Link {
                    inbound,
                    evidence: Evidence::Goroutine,
                })
            }
            GoroutineVerdict::NoneInFlight => return None,
            GoroutineVerdict::Unknown => {}
        }
        let q = self.by_pid.get(&pid)?;
        // An event-loop server reads every request on one thread: a thread that has several
        // requests in flight says nothing about which one a call serves. Neither does a thread
        // of a process that hands requests from thread to thread (Go, async servlets).
        if self.thread_per_request(pid) {
            let mut same_thread = q.iter().filter(|e| e.head.tid == tid);
            if let (Some(e), None) = (same_thread.next(), same_thread.next()) {
                return Some(Link {
                    inbound: e.clone(),
                    evidence: Evidence::Thread,
                });
            }
        }
        if q.len() == 1 {
            return Some(Link {
                inbound: q[0].clone(),
                evidence: Evidence::OnlyInFlight,
            });
        }
        None
    }
}
