//! Giving memory back: tables that grew under a burst shrink once it has passed.
//!
//! A `HashMap` or `VecDeque` keeps its largest capacity forever; after 1,000,000 short
//! connections the tables would hold the memory of the busiest moment. Every table that can
//! grow with traffic calls [`shrink_if_sparse`] where it removes entries.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// The hasher of the tables looked up per captured message: much cheaper than SipHash on
/// small integer keys, still randomly seeded.
pub type FastState = foldhash::fast::RandomState;
/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = HashMap<K, V, FastState>;

/// The most connections a per-connection table follows: 7/8 of 2^18, the most a hash table
/// of 2^18 buckets holds before it doubles. 200,000 would take the same memory; this leaves
/// room for a host's other sockets beside 100,000 connections followed at both ends.
pub const MAX_CONNS: usize = 229_376;

/// Capacity below which a table is never shrunk (shrinking small tables costs more than it
/// gives back).
const MIN_CAPACITY: usize = 1024;

/// Something with a length and a capacity that can shrink.
pub trait Shrink {
    fn len_and_capacity(&self) -> (usize, usize);
    fn shrink_to(&mut self, min: usize);
}

impl<K: Eq + Hash, V, S: BuildHasher> Shrink for HashMap<K, V, S> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min: usize) {
        HashMap::shrink_to(self, min);
    }
}

impl<T> Shrink for VecDeque<T> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min: usize) {
        VecDeque::shrink_to(self, min);
    }
}

/// Shrinks `t` to twice its length once it is less than a quarter full (amortised O(1): a
/// table must lose three quarters of its entries between two shrinks).
pub fn shrink_if_sparse(t: &mut impl Shrink) {
    let (len, cap) = t.len_and_capacity();
    if cap > MIN_CAPACITY && len.saturating_mul(4) < cap {
        t.shrink_to((len * 2).max(MIN_CAPACITY / 2));
    }
}

/// Blocks at least this large are mapped on their own, and unmapped when freed.
const LARGE_BLOCK: usize = 256 * 1024;

/// Makes the allocator give large blocks (hash tables, census buffers) back to the kernel as
/// soon as they are freed. glibc otherwise raises its mmap threshold to the largest block
/// freed so far (up to 32 MiB): from then on such blocks come from the heap, and a table
/// shrunk after a burst or the buffers of each TIME_WAIT census stay resident. Fixing the
/// threshold also fixes the heap's trim threshold at its default (128 KiB), so a free top
/// of the heap goes back at once too. Call once, before start-up's big allocations.
pub fn return_large_blocks_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK as libc::c_int);
    }
}

/// Returns freed heap memory to the kernel (glibc keeps it in its arenas otherwise, and RSS
/// stays at the peak). Cheap enough to call every few seconds.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_emptied_after_a_burst_gives_its_capacity_back() {
        let mut m: HashMap<u64, [u8; 64]> = HashMap::new();
        for i in 0..100_000 {
            m.insert(i, [0; 64]);
        }
        let peak = m.capacity();
        for i in 0..99_990 {
            m.remove(&i);
            shrink_if_sparse(&mut m);
        }
        assert_eq!(m.len(), 10);
        assert!(m.capacity() <= MIN_CAPACITY, "{} of {peak}", m.capacity());
        // Entries survive the shrinks.
        assert!((99_990..100_000).all(|i| m.contains_key(&i)));
    }

    /// Set in the child process [`large_blocks_stay_mapped_after_a_larger_one_was_freed`]
    /// runs its check in.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const CHILD: &str = "TRACEID_MEM_TEST_CHILD";

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn large_blocks_stay_mapped_after_a_larger_one_was_freed() {
        // Where a block comes from depends on the allocator's history (a free heap chunk is
        // reused whatever the threshold), so the check runs alone, in a fresh test process,
        // on its main thread (libtest runs there with one test thread).
        if std::env::var_os(CHILD).is_none() {
            let exe = std::env::current_exe().unwrap();
            let name = "mem::tests::large_blocks_stay_mapped_after_a_larger_one_was_freed";
            let out = std::process::Command::new(exe)
                .args([name, "--exact", "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        return_large_blocks_at_once();
        // Without the fixed threshold, freeing this one would move the threshold above the
        // next block, which would then come from the heap.
        drop(std::hint::black_box(vec![1u8; 16 * LARGE_BLOCK]));
        let block = std::hint::black_box(vec![1u8; 2 * LARGE_BLOCK]);
        // A mapped block is whole pages: it has most of a page more than asked for, a heap
        // block a few bytes.
        // SAFETY: the pointer is a live allocation of the system allocator (no global
        // allocator is set), whose header malloc_usable_size reads.
        let usable = unsafe { libc::malloc_usable_size(block.as_ptr() as *mut libc::c_void) };
        assert!(usable >= block.len() + 2048, "{usable}");
    }

    #[test]
    fn a_full_connection_table_takes_no_more_buckets_than_one_of_200_000() {
        let mut full: FastMap<u64, u64> = FastMap::default();
        let mut usual: FastMap<u64, u64> = FastMap::default();
        for i in 0..MAX_CONNS as u64 {
            full.insert(i, i);
            if i < 200_000 {
                usual.insert(i, i);
            }
        }
        assert_eq!(full.capacity(), usual.capacity());
    }

    #[test]
    fn small_or_full_tables_are_left_alone() {
        let mut q: VecDeque<u32> = VecDeque::with_capacity(512);
        q.push_back(1);
        shrink_if_sparse(&mut q);
        assert!(q.capacity() >= 512);
        let mut m: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let cap = m.capacity();
        shrink_if_sparse(&mut m);
        assert_eq!(m.capacity(), cap);
    }
}

/// An IP endpoint in 18 bytes, where a `SocketAddr` takes 32: per-connection tables hold
/// several per connection, for hundreds of thousands of connections. IPv4 is kept as
/// IPv4-mapped IPv6 and comes back as IPv4, as [`crate::event::endpoints`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    ip: [u8; 16],
    port: u16,
}

impl From<std::net::SocketAddr> for Endpoint {
    fn from(a: std::net::SocketAddr) -> Endpoint {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        Endpoint { ip, port: a.port() }
    }
}

impl Endpoint {
    pub fn addr(self) -> std::net::SocketAddr {
        let v6 = std::net::Ipv6Addr::from(self.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(v6),
        };
        std::net::SocketAddr::new(ip, self.port)
    }

    pub fn port(self) -> u16 {
        self.port
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::Endpoint;
    use std::net::SocketAddr;

    #[test]
    fn endpoints_come_back_as_they_went_in_and_stay_small() {
        for s in [
            "127.0.0.1:8080",
            "10.1.2.3:0",
            "[::1]:443",
            "[fe80::1:2]:65535",
        ] {
            let a: SocketAddr = s.parse().unwrap();
            let e = Endpoint::from(a);
            assert_eq!(e.addr(), a);
            assert_eq!(e.port(), a.port());
        }
        let v4: SocketAddr = "192.0.2.7:9".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:9".parse().unwrap();
        assert_ne!(Endpoint::from(v4), Endpoint::from(v6));
        assert_eq!(std::mem::size_of::<Option<(Endpoint, Endpoint)>>(), 38);
    }
}
