//! Giving back the spare capacity a burst left behind.
//!
//! The port's growable tables (the packet queue, the reaped batch, the timer wheel, the
//! registry of associated sockets) grow by doubling to the largest burst they have seen and
//! never shrink on their own: a server that once held 5,000 connections at the same moment
//! would keep their bookkeeping for life, and its idle RSS would creep up with each new peak.
//! One rule, with hysteresis, keeps that bounded: when the capacity is more than four times
//! what is used (or [`KEEP`], if larger), it shrinks to twice that. Growth doubles, so a
//! table has to lose three quarters of its load before it gives anything back, and one that
//! oscillates around a level reallocates at most once per oscillation: the cost is amortised
//! over the entries that filled it (DESIGN.md §5.2).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Entries a table keeps whatever its load: below this, shrinking is not worth a realloc.
pub(crate) const KEEP: usize = 256;

/// The capacity to shrink to, or `None` while `cap` is within four times `max(used, keep)`.
pub(crate) fn target(cap: usize, used: usize, keep: usize) -> Option<usize> {
    let floor = used.max(keep);
    (cap / 4 > floor).then(|| floor.saturating_mul(2))
}

/// [`target`] applied to a `Vec` whose recent use was `used` entries.
pub(crate) fn vec<T>(v: &mut Vec<T>, used: usize) {
    if let Some(to) = target(v.capacity(), used.max(v.len()), KEEP) {
        v.shrink_to(to);
    }
}

/// [`target`] applied to a `VecDeque`, by its current length.
pub(crate) fn deque<T>(q: &mut VecDeque<T>) {
    if let Some(to) = target(q.capacity(), q.len(), KEEP) {
        q.shrink_to(to);
    }
}

/// [`target`] applied to a `HashSet`, by its current length (a rehash of `len` entries, which
/// is under a quarter of the capacity).
pub(crate) fn set<T: Eq + Hash, S: BuildHasher>(s: &mut HashSet<T, S>) {
    if let Some(to) = target(s.capacity(), s.len(), KEEP) {
        s.shrink_to(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_only_past_four_times_the_load() {
        assert_eq!(target(1024, 0, 256), None);
        assert_eq!(target(1025 + 3, 0, 256), Some(512));
        assert_eq!(target(8192, 100, 256), Some(512));
        assert_eq!(target(8192, 2047, 256), Some(4094));
        assert_eq!(target(8192, 2048, 256), None);
        assert_eq!(target(usize::MAX, usize::MAX / 2, 0), None);
    }

    #[test]
    fn a_burst_is_given_back_and_a_steady_load_is_not() {
        let mut q: VecDeque<u64> = (0..10_000).collect();
        let peak = q.capacity();
        deque(&mut q);
        assert_eq!(q.capacity(), peak, "a full table keeps its capacity");
        q.drain(..9_990);
        deque(&mut q);
        assert!(q.capacity() <= 2 * KEEP + 16, "after the burst: {}", q.capacity());
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), (9_990..10_000).collect::<Vec<_>>());

        let mut v: Vec<u64> = Vec::with_capacity(4096);
        vec(&mut v, 3000);
        assert_eq!(v.capacity(), 4096, "recent use of 3000 keeps 4096");
        vec(&mut v, 10);
        assert!(v.capacity() <= 2 * KEEP + 16, "{}", v.capacity());

        let mut s: HashSet<u64> = (0..20_000).collect();
        s.retain(|&x| x < 10);
        set(&mut s);
        assert!(s.capacity() < 2_000, "{}", s.capacity());
        assert!((0..10).all(|x| s.contains(&x)) && s.len() == 10);
    }
}
