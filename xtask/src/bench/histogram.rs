//! A latency histogram of bounded memory: log-linear buckets, like HdrHistogram's.
//!
//! Values below [`SUB_BUCKETS`] ns have a bucket each; above, every power of two is split into
//! [`SUB_BUCKETS`] buckets of equal width, so a percentile is exact to within 1/128 (0.8 %)
//! of its value at any magnitude. The table is a fixed 4,352 counters (34 KiB) whatever the
//! number of samples, so a client records every request of a run without allocating.

/// Linear sub-buckets per power of two (2^7): the relative resolution of a bucket.
const SUB_BITS: u32 = 7;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Largest recordable value: 2^40 ns (about 18 minutes); longer ones count as the largest.
const MAX_BITS: u32 = 40;
const BUCKETS: usize = (MAX_BITS - SUB_BITS + 1) as usize * SUB_BUCKETS;

/// Counts of latencies in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max_ns: 0,
        }
    }
}

/// The bucket of `ns`: exact below `SUB_BUCKETS`, then `SUB_BUCKETS` per power of two.
fn bucket_of(ns: u64) -> usize {
    let ns = ns.min((1 << MAX_BITS) - 1);
    if ns < SUB_BUCKETS as u64 {
        return ns as usize;
    }
    let magnitude = 63 - ns.leading_zeros();
    let shift = magnitude - SUB_BITS;
    // `ns >> shift` is in SUB_BUCKETS..2 * SUB_BUCKETS: the top bits of the value.
    shift as usize * SUB_BUCKETS + (ns >> shift) as usize
}

/// The largest value that falls into `bucket` (the inverse of [`bucket_of`]).
fn bucket_high(bucket: usize) -> u64 {
    if bucket < SUB_BUCKETS {
        return bucket as u64;
    }
    let shift = (bucket / SUB_BUCKETS - 1) as u32;
    let top = (bucket % SUB_BUCKETS + SUB_BUCKETS) as u64;
    ((top + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds the samples of `other` (the histograms of several clients make one).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn samples(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.5 = median, 0.99 = p99) in ns: the smallest value that at
    /// least `q` of the samples do not exceed, rounded up to its bucket's upper edge (never
    /// above the largest sample). `None` without samples.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_high(bucket).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    /// [`Histogram::quantile_ns`] in µs, NaN without samples (the report's convention).
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.quantile_ns(q).map_or(f64::NAN, |ns| ns as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_holds_it_within_the_resolution() {
        let mut values: Vec<u64> = (0..100_000).collect();
        // Every magnitude up to the largest, and its neighbours.
        for bits in 0..MAX_BITS {
            let p = 1u64 << bits;
            values.extend([p - 1, p, p + 1, p + p / 3]);
        }
        for v in values {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> bucket {b}");
            let high = bucket_high(b);
            let low = if b == 0 { 0 } else { bucket_high(b - 1) + 1 };
            assert!(low <= v && v <= high, "{v} not in [{low}, {high}]");
            assert!(
                (high - low) as f64 <= (v as f64 / SUB_BUCKETS as f64).max(0.0),
                "{v}: bucket [{low}, {high}] wider than 1/{SUB_BUCKETS} of the value"
            );
        }
        // Too large: counted in the last bucket, not lost and not out of bounds.
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_of_a_uniform_run_are_within_one_percent() {
        // One sample per µs from 1 µs to 10 ms, shuffled the way a run interleaves them.
        let mut h = Histogram::default();
        for i in 0..10_000u64 {
            h.record((i * 7_919 % 10_000 + 1) * 1_000);
        }
        assert_eq!(h.samples(), 10_000);
        for (q, exact_us) in [(0.5, 5_000.0), (0.99, 9_900.0), (0.999, 9_990.0)] {
            let got = h.quantile_us(q);
            assert!(
                (got - exact_us).abs() <= exact_us * 0.01,
                "q{q}: {got} µs, exact {exact_us} µs"
            );
        }
        assert_eq!(h.quantile_ns(1.0), Some(10_000_000));
        // The smallest sample, 1000 ns, is in the bucket 1000..=1003.
        assert_eq!(h.quantile_ns(0.0), Some(1_003));
    }

    #[test]
    fn a_stall_in_one_percent_of_the_requests_is_the_p99_only_past_its_rank() {
        // 99 % answered in 100 µs, 1 % stalled behind a 5 ms preemption.
        let mut fast = Histogram::default();
        for _ in 0..9_900 {
            fast.record(100_000);
        }
        let mut stalled = Histogram::default();
        for _ in 0..100 {
            stalled.record(5_000_000);
        }
        fast.merge(&stalled);
        assert_eq!(fast.samples(), 10_000);
        let p99 = fast.quantile_us(0.99);
        let p999 = fast.quantile_us(0.999);
        assert!((100.0..=101.0).contains(&p99), "p99 {p99} µs");
        assert_eq!(p999, 5_000.0, "capped at the largest sample");
        // One more stalled request moves the p99 onto the stall.
        fast.record(5_000_000);
        assert!(fast.quantile_us(0.99) >= 4_960.0);
    }

    #[test]
    fn no_samples_no_percentile() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ns(0.99), None);
        assert!(h.quantile_us(0.5).is_nan());
    }
}
