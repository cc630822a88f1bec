//! Operation deadlines: a hierarchical timing wheel (the shape of the Linux kernel's and
//! tokio's), in 1 ms ticks.
//!
//! Six levels of 64 slots: level 0 holds the deadlines of the current 64 ms one per tick, level
//! 1 the rest of the current 4.1 s in 64 ms slots, and so on up to about 2.2 years. Arming,
//! disarming and (amortised) expiring are O(1): an entry is linked into one slot's list, a slot
//! that comes due is emptied, its entries firing or moving down a level. The next deadline is
//! found from one 64-bit occupancy mask per level. This replaced a `BTreeMap` keyed by instant
//! plus a hash map by op, whose O(log n) inserts and removes (and their cache misses) were paid
//! on every receive of every connection: with 19,000 connections each holding a deadline, the
//! map was the scale row's biggest user-space cost (BENCHMARKS.md).
//!
//! A deadline fires at the first tick at or after it (never early, at most one tick late, plus
//! however late the poller runs). Entries are addressed by their index in a slab, which the op
//! carries (`Op::timer`, then `Completion::timer`); the op id stored beside guards against an
//! index reused by a later op.

use std::time::{Duration, Instant};

use crate::chunks::ChunkVec;
use crate::completion::OpId;

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Ticks the wheel spans; a deadline further out is placed at the edge and re-placed as the
/// wheel turns (it still fires at its own tick).
const MAX_TICKS: u64 = 1 << (SLOT_BITS as usize * LEVELS);
/// Ticks one top-level slot spans.
const TOP_SLOT_TICKS: u64 = 1 << (SLOT_BITS as usize * (LEVELS - 1));
const TICK: Duration = Duration::from_millis(1);
const NIL: u32 = u32::MAX;

pub(crate) use crate::completion::NO_TIMER;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    /// In slot `slot` of level `level`.
    Linked { level: u8, slot: u8 },
    /// Fired before its op reached the driver: kept until `submitted` cancels the op.
    Expired,
    /// Not in use (on the free list).
    Free,
}

struct Entry<T> {
    /// The deadline, in ticks since `start` (rounded up).
    tick: u64,
    id: OpId,
    value: Option<T>,
    /// The driver has the op: an expiry hands it out at once.
    submitted: bool,
    at: Where,
    prev: u32,
    next: u32,
}

impl<T> Entry<T> {
    /// An unused entry (what a new chunk is filled with).
    fn vacant() -> Self {
        Entry {
            tick: 0,
            id: OpId(0),
            value: None,
            submitted: false,
            at: Where::Free,
            prev: NIL,
            next: NIL,
        }
    }
}

/// What [`Wheel::submitted`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Submit {
    /// Still armed; from now on its expiry hands the op out.
    Armed,
    /// It expired while the op was being submitted: cancel the op now (the entry is freed).
    Expired,
    /// Gone already (the op completed inline).
    Gone,
}

/// The deadlines of a port's operations, each with a value (the op's handle).
pub(crate) struct Wheel<T> {
    start: Instant,
    /// Ticks processed: every slot due at or before this has been emptied.
    elapsed: u64,
    /// In fixed chunks, not a doubling `Vec`: 40 bytes per deadline, not 40-80 (an idle
    /// connection's idle timeout is one).
    entries: ChunkVec<Entry<T>>,
    free: Vec<u32>,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Entries in use (linked or expired-unsubmitted).
    len: usize,
}

impl<T> Wheel<T> {
    pub(crate) fn new(start: Instant) -> Self {
        Wheel {
            start,
            elapsed: 0,
            entries: ChunkVec::new(),
            free: Vec::new(),
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            len: 0,
        }
    }

    /// Entries in use.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Ticks from `start` to `at`, rounded up (so a deadline never fires early).
    fn tick_up(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.start).as_nanos();
        u64::try_from(ns.div_ceil(TICK.as_nanos())).unwrap_or(u64::MAX)
    }

    /// Ticks from `start` to `now`, rounded down (the ticks that have fully come).
    fn tick_down(&self, now: Instant) -> u64 {
        let ns = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(ns / TICK.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Arms a deadline for op `id`; returns its index and whether the next wake-up time
    /// moved earlier (a poller blocked until the old one must recompute its timeout).
    pub(crate) fn arm(&mut self, at: Instant, id: OpId, value: T) -> (u32, bool) {
        let before = self.next_expiration().map(|(_, _, t)| t);
        let tick = self.tick_up(at).max(self.elapsed);
        let entry = Entry {
            tick,
            id,
            value: Some(value),
            submitted: false,
            at: Where::Free,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = entry;
                i
            }
            None => {
                // Past u32::MAX - 1 deadlines at once, the op goes without one, rather than
                // aliasing another's (a port never holds that many ops).
                let Ok(i) = u32::try_from(self.entries.len()) else { return (NO_TIMER, false) };
                if i == NIL {
                    return (NO_TIMER, false);
                }
                self.entries.push_with(Entry::vacant);
                self.entries[i as usize] = entry;
                i
            }
        };
        self.len += 1;
        let (level, slot) = self.link(i);
        let due = self.slot_due(level, slot);
        (i, before.is_none_or(|b| due < b))
    }

    /// The op of entry `i` reached the driver.
    pub(crate) fn submitted(&mut self, i: u32, id: OpId) -> Submit {
        let Some(e) = self.get_mut(i, id) else { return Submit::Gone };
        if e.at == Where::Expired {
            self.release(i);
            self.settle();
            return Submit::Expired;
        }
        e.submitted = true;
        Submit::Armed
    }

    /// Op `id` completed (or was refused): its deadline, if still armed, goes.
    pub(crate) fn disarm(&mut self, i: u32, id: OpId) {
        if self.get_mut(i, id).is_some() {
            self.unlink(i);
            self.release(i);
            self.settle();
        }
    }

    /// When the poller must next wake for the wheel (a deadline, or a slot to cascade).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let (_, _, tick) = self.next_expiration()?;
        // (Beyond what an Instant holds: no wake-up needed; arming an earlier one kicks.)
        self.start.checked_add(Duration::from_millis(tick))
    }

    /// Hands out (in `out`) every submitted op whose deadline has passed at `now`; one not yet
    /// submitted is kept as expired for [`Wheel::submitted`].
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(OpId, T)>) {
        let now_tick = self.tick_down(now);
        while let Some((level, slot, deadline)) = self.next_expiration() {
            if deadline > now_tick {
                break;
            }
            self.elapsed = self.elapsed.max(deadline);
            let mut i = std::mem::replace(&mut self.heads[level][slot], NIL);
            self.occupied[level] &= !(1 << slot);
            while i != NIL {
                let e = &mut self.entries[i as usize];
                let next = e.next;
                e.prev = NIL;
                e.next = NIL;
                e.at = Where::Free;
                if e.tick <= now_tick {
                    if e.submitted {
                        let id = e.id;
                        let value = e.value.take();
                        self.release(i);
                        if let Some(v) = value {
                            out.push((id, v));
                        }
                    } else {
                        e.at = Where::Expired;
                    }
                } else {
                    self.link(i);
                }
                i = next;
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
        self.settle();
    }

    /// With no entry in use, gives back what a burst of deadlines left (`spare.rs`). Every
    /// index handed out is then stale, which `get_mut` already tolerates: it checks the index
    /// is in range and that the entry is still the same op's (op ids are never reused).
    fn settle(&mut self) {
        if self.len == 0
            && crate::spare::target(self.entries.capacity(), 0, crate::spare::KEEP).is_some()
        {
            debug_assert!(self.occupied.iter().all(|&o| o == 0), "an empty wheel links nothing");
            self.entries = ChunkVec::new();
            self.free = Vec::new();
        }
    }

    fn get_mut(&mut self, i: u32, id: OpId) -> Option<&mut Entry<T>> {
        self.entries.get_mut(i as usize).filter(|e| e.id == id && e.at != Where::Free)
    }

    fn release(&mut self, i: u32) {
        let e = &mut self.entries[i as usize];
        e.value = None;
        e.at = Where::Free;
        e.submitted = false;
        self.free.push(i);
        self.len -= 1;
    }

    /// Links entry `i` into the slot its tick falls in, as seen from `elapsed`.
    fn link(&mut self, i: u32) -> (usize, usize) {
        let tick = self.entries[i as usize].tick;
        // Placement: at most 63 top-level slots ahead, never in the current one (a later
        // deadline is re-placed as the wheel turns, and fires at its own tick).
        let when = tick.min(self.elapsed + MAX_TICKS - TOP_SLOT_TICKS);
        let level = level_for(self.elapsed, when);
        let slot = ((when >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize;
        let head = self.heads[level][slot];
        if head != NIL {
            self.entries[head as usize].prev = i;
        }
        let e = &mut self.entries[i as usize];
        e.next = head;
        e.prev = NIL;
        e.at = Where::Linked { level: level as u8, slot: slot as u8 };
        self.heads[level][slot] = i;
        self.occupied[level] |= 1 << slot;
        (level, slot)
    }

    fn unlink(&mut self, i: u32) {
        let e = &self.entries[i as usize];
        let Where::Linked { level, slot } = e.at else { return };
        let (level, slot, prev, next) = (level as usize, slot as usize, e.prev, e.next);
        if prev == NIL {
            self.heads[level][slot] = next;
            if next == NIL {
                self.occupied[level] &= !(1 << slot);
            }
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        let e = &mut self.entries[i as usize];
        e.prev = NIL;
        e.next = NIL;
        e.at = Where::Free;
    }

    /// The first occupied slot to come due: `(level, slot, tick it comes due)`. Lower levels
    /// always come due first (a level's entries lie beyond the current span of the one below).
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        (0..LEVELS).find_map(|level| {
            let occupied = self.occupied[level];
            if occupied == 0 {
                return None;
            }
            let now_slot = ((self.elapsed >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as u32;
            let slot =
                (occupied.rotate_right(now_slot).trailing_zeros() + now_slot) as usize % SLOTS;
            Some((level, slot, self.slot_due(level, slot)))
        })
    }

    /// The tick at which slot `slot` of `level` comes due (its start).
    fn slot_due(&self, level: usize, slot: usize) -> u64 {
        let slot_range = 1u64 << (level as u32 * SLOT_BITS);
        let level_range = slot_range << SLOT_BITS;
        let level_start = self.elapsed & !(level_range - 1);
        let due = level_start + slot as u64 * slot_range;
        if due < self.elapsed {
            // Only the top level wraps around (its slots are a ring beyond the span).
            due + level_range
        } else {
            due
        }
    }
}

/// The level a deadline `when` goes in, seen from `elapsed`: the highest 6-bit group in which
/// the two differ.
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = ((elapsed ^ when) | SLOT_MASK).min(MAX_TICKS - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_burst_of_deadlines_is_given_back_and_stale_indices_stay_harmless() {
        let start = Instant::now();
        let mut w = Wheel::new(start);
        let armed: Vec<(u32, OpId)> = (0..5_000u64)
            .map(|k| {
                let (i, _) = w.arm(at(start, 10 + k % 700), OpId(k + 1), ());
                assert_eq!(w.submitted(i, OpId(k + 1)), Submit::Armed);
                (i, OpId(k + 1))
            })
            .collect();
        assert!(w.entries.capacity() >= 5_000);
        for &(i, id) in &armed {
            w.disarm(i, id);
        }
        assert_eq!(w.len(), 0);
        assert_eq!(w.entries.capacity(), 0, "the burst's entries were given back");
        // The old indices point past the end or at other ops now: all ignored.
        let (j, _) = w.arm(at(start, 5), OpId(9_999), ());
        for &(i, id) in &armed {
            assert_eq!(w.submitted(i, id), Submit::Gone);
            w.disarm(i, id);
        }
        assert_eq!(w.len(), 1);
        assert_eq!(w.submitted(j, OpId(9_999)), Submit::Armed);
        let mut out = Vec::new();
        w.expire(at(start, 6), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn fires_at_its_tick_never_before() {
        let start = Instant::now();
        let mut w = Wheel::new(start);
        let (i, earliest) = w.arm(at(start, 5), OpId(1), ());
        assert!(earliest);
        assert_eq!(w.submitted(i, OpId(1)), Submit::Armed);
        let mut out = Vec::new();
        w.expire(at(start, 4), &mut out);
        assert!(out.is_empty());
        assert_eq!(w.next_deadline(), Some(at(start, 5)));
        w.expire(at(start, 5), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_deadline_that_passes_before_the_op_is_submitted_is_reported_then() {
        let start = Instant::now();
        let mut w = Wheel::new(start);
        let (i, _) = w.arm(at(start, 1), OpId(7), ());
        let mut out = Vec::new();
        w.expire(at(start, 2), &mut out);
        assert!(out.is_empty());
        assert_eq!(w.len(), 1);
        assert_eq!(w.submitted(i, OpId(7)), Submit::Expired);
        assert_eq!(w.len(), 0);
        // A reused index does not answer for the old op.
        let (j, _) = w.arm(at(start, 10), OpId(8), ());
        assert_eq!(j, i);
        assert_eq!(w.submitted(i, OpId(7)), Submit::Gone);
        w.disarm(i, OpId(7));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn far_deadlines_cascade_and_fire_on_time() {
        let start = Instant::now();
        let mut w = Wheel::new(start);
        let ticks = [0, 63, 64, 65, 4095, 4096, 300_000, 86_400_000, MAX_TICKS + 5];
        for (n, &t) in ticks.iter().enumerate() {
            let (i, _) = w.arm(at(start, t), OpId(n as u64), ());
            w.submitted(i, OpId(n as u64));
        }
        let mut fired = Vec::new();
        let mut out = Vec::new();
        // Follow the wheel's own wake-ups, as the poller does.
        while let Some(next) = w.next_deadline() {
            w.expire(next, &mut out);
            let now = w.tick_down(next);
            for (id, ()) in out.drain(..) {
                assert_eq!(now, ticks[id.0 as usize], "op {id:?} fired at {now}");
                fired.push(id.0);
            }
        }
        assert_eq!(fired, (0..ticks.len() as u64).collect::<Vec<_>>());
    }

    #[derive(Clone, Debug)]
    enum Step {
        Arm(u64),
        Submit(usize),
        Disarm(usize),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => prop_oneof![0u64..4, 0u64..200, 0u64..100_000, 0u64..(MAX_TICKS * 2)].prop_map(Step::Arm),
            2 => any::<usize>().prop_map(Step::Submit),
            1 => any::<usize>().prop_map(Step::Disarm),
            2 => prop_oneof![0u64..3, 0u64..300, 0u64..50_000, 0u64..MAX_TICKS].prop_map(Step::Advance),
        ]
    }

    proptest! {
        /// Against a plain list: every submitted op fires exactly once, at the first expiry at
        /// or after its deadline; an unsubmitted one is reported expired at its submit; a
        /// disarmed one never fires; the next wake-up is never after the earliest deadline.
        #[test]
        fn matches_a_reference_model(steps in proptest::collection::vec(step(), 1..200)) {
            let start = Instant::now();
            let mut w = Wheel::new(start);
            // (index, id, deadline tick, submitted, expired-unsubmitted)
            let mut model: Vec<(u32, OpId, u64, bool, bool)> = Vec::new();
            let mut now = 0u64;
            let mut next_id = 0u64;
            let mut out = Vec::new();
            for s in steps {
                match s {
                    Step::Arm(d) => {
                        let id = OpId(next_id);
                        next_id += 1;
                        let (i, _) = w.arm(at(start, now + d), id, id);
                        model.push((i, id, now + d, false, false));
                    }
                    Step::Submit(k) if !model.is_empty() => {
                        let k = k % model.len();
                        let (i, id, _, submitted, expired) = model[k];
                        if submitted { continue; }
                        let r = w.submitted(i, id);
                        if expired {
                            prop_assert_eq!(r, Submit::Expired);
                            model.remove(k);
                        } else {
                            prop_assert_eq!(r, Submit::Armed);
                            model[k].3 = true;
                        }
                    }
                    Step::Disarm(k) if !model.is_empty() => {
                        let k = k % model.len();
                        let (i, id, ..) = model.remove(k);
                        w.disarm(i, id);
                    }
                    Step::Advance(d) => {
                        now += d;
                        w.expire(at(start, now), &mut out);
                        let mut fired: Vec<OpId> = out.drain(..).map(|(id, v)| { assert_eq!(id, v); id }).collect();
                        fired.sort();
                        let mut due = Vec::new();
                        model.retain_mut(|(_, id, tick, submitted, expired)| {
                            if *tick <= now {
                                if *submitted {
                                    due.push(*id);
                                    return false;
                                }
                                *expired = true;
                            }
                            true
                        });
                        due.sort();
                        prop_assert_eq!(fired, due);
                    }
                    _ => {}
                }
                prop_assert_eq!(w.len(), model.len());
                let earliest = model.iter().filter(|m| !m.4).map(|m| m.2).min();
                if let Some(e) = earliest {
                    let next = w.next_deadline().expect("an armed deadline and no wake-up");
                    prop_assert!(next <= at(start, e.max(now)), "wake-up after the earliest deadline");
                }
            }
        }
    }
}
