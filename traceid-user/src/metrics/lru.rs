//! The bounded set of per-trace series: an LRU with a TTL and a cap.
//!
//! prometheus-client's families keep every label set they ever saw; per-trace_id series are
//! unbounded by nature (one per request tree), so they live here instead and are encoded on
//! scrape by [`super::TraceSeriesCollector`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Labels of one per-trace series: (trace_id, comm, direction).
pub type TraceKey = (String, String, &'static str);

#[derive(Debug)]
struct Entry {
    count: u64,
    /// Position in `order` (higher = more recently used).
    seq: u64,
    last: Instant,
}

/// Least-recently-used map of per-trace counters, bounded by `cap` entries and by `ttl` of
/// inactivity. Every entry that leaves (pushed out by the cap or expired) is counted.
#[derive(Debug)]
pub struct TraceLru {
    cap: usize,
    ttl: Duration,
    map: HashMap<TraceKey, Entry>,
    order: BTreeMap<u64, TraceKey>,
    next_seq: u64,
    evicted: u64,
}

impl TraceLru {
    /// `cap` 0 keeps no per-trace series at all.
    pub fn new(cap: usize, ttl: Duration) -> TraceLru {
        TraceLru {
            cap,
            ttl,
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            evicted: 0,
        }
    }

    /// Counts one request for `key` at `now`; returns how many entries were evicted.
    pub fn inc(&mut self, key: TraceKey, now: Instant) -> u64 {
        let before = self.evicted;
        self.expire(now);
        if self.cap == 0 {
            return self.evicted - before;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(e) = self.map.get_mut(&key) {
            self.order.remove(&e.seq);
            e.seq = seq;
            e.count += 1;
            e.last = now;
            self.order.insert(seq, key);
        } else {
            while self.map.len() >= self.cap {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.map.remove(&oldest);
                self.evicted += 1;
            }
            self.order.insert(seq, key.clone());
            self.map.insert(
                key,
                Entry {
                    count: 1,
                    seq,
                    last: now,
                },
            );
        }
        self.evicted - before
    }

    /// Drops the entries idle for `ttl` or longer; returns how many.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let before = self.evicted;
        while let Some((_, key)) = self.order.first_key_value() {
            let idle = self
                .map
                .get(key)
                .map_or(Duration::MAX, |e| now.saturating_duration_since(e.last));
            if idle < self.ttl {
                break;
            }
            if let Some((_, key)) = self.order.pop_first() {
                self.map.remove(&key);
                self.evicted += 1;
            }
        }
        self.evicted - before
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries evicted or expired since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The live series, least recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (&TraceKey, u64)> {
        self.order
            .values()
            .filter_map(|k| self.map.get(k).map(|e| (k, e.count)))
    }
}
