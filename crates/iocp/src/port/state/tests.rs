//! Exhaustive model check of the port's scheduling state machine.
//!
//! Threads are modelled exactly as `PortInner::get_inner` drives `State`: each step below is one
//! critical section of the real code (enter, poller return, parked wake-up), and the environment
//! posts packets, completes kernel operations, and closes the port. Every interleaving of a few
//! threads is explored (depth-first, with visited-state pruning), and after every step the
//! invariants are checked:
//! - conservation: every packet is queued, handed, delivered or dropped at close, exactly once;
//! - FIFO: the queue stays in arrival order;
//! - accounting: the running count equals the threads that hold (or were handed) a packet or
//!   came back from a timeout, and never exceeds the limit;
//! - LIFO: a packet handed to a waiter goes to the most recent one;
//! - no lost wake-up: in a state where nothing but a timeout can happen, no packet waits while a
//!   waiter sleeps and the limit allows its release, and sleeping waiters always have a poller.

use std::collections::HashSet;

use super::{State, WaiterId, Wake};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Th {
    /// Not in `get`. `running`: counted as running on the port.
    Idle { gets_left: u8, running: bool, holds_packet: bool },
    /// Blocked on its condvar; `signalled` once woken (or promoted).
    Parked { id: WaiterId, gets_left: u8, signalled: bool },
    /// Blocked in the kernel; `kicked` once a kick or a kernel completion arrived.
    Polling { id: WaiterId, gets_left: u8, kicked: bool },
    /// Saw the port closed.
    Closed,
}

impl Th {
    /// A thread back from `get`, counted as running: with a packet, or from a timeout.
    fn returned(gets_left: u8, holds_packet: bool) -> Th {
        Th::Idle { gets_left: gets_left - 1, running: true, holds_packet }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct World {
    st: State<u32, usize>,
    th: Vec<Th>,
    kernel_ready: u8,
    next_packet: u32,
    posts_left: u8,
    kernel_left: u8,
    close_left: bool,
    delivered: Vec<u32>,
    dropped: Vec<u32>,
    max: usize,
    timeouts: bool,
    /// Poll-path panics left to inject.
    panics_left: u8,
}

impl World {
    fn apply_wake(th: &mut [Th], w: Wake<'_, usize>) {
        match w {
            Wake::Signal(&t) => match &mut th[t] {
                Th::Parked { signalled, .. } => *signalled = true,
                other => panic!("signalled a thread that is not parked: {other:?}"),
            },
            Wake::Kick => {
                let mut n = 0;
                for t in th.iter_mut() {
                    if let Th::Polling { kicked, .. } = t {
                        *kicked = true;
                        n += 1;
                    }
                }
                assert_eq!(n, 1, "kick with {n} pollers");
            }
        }
    }

    /// The loop body of `get_inner` after entering (or after a parked waiter was promoted).
    fn get_loop(&mut self, t: usize, gets_left: u8) {
        if self.st.is_closed() {
            self.th[t] = Th::Closed;
            return;
        }
        let mut got = Vec::new();
        // As `get_inner`: past the poll bound, poll the kernel (without blocking) first.
        let due = self.st.queued() > 0 && self.st.poll_due();
        if !due && self.st.take(1, &mut |p| got.push(p)) > 0 {
            self.delivered.extend(got);
            self.th[t] = Th::Idle { gets_left: gets_left - 1, running: true, holds_packet: true };
            return;
        }
        if !self.st.is_polling() {
            let id = self.st.add_waiter(t, true);
            // A non-blocking poll returns at once: as if kicked.
            self.th[t] = Th::Polling { id, gets_left, kicked: due || self.kernel_ready > 0 };
        } else {
            let top_before = self.st.waiters();
            let id = self.st.add_waiter(t, false);
            assert_eq!(self.st.waiters(), top_before + 1);
            self.th[t] = Th::Parked { id, gets_left, signalled: false };
        }
    }

    fn dispatch(&mut self, promote: bool) {
        let mut wakes = Vec::new();
        let mut kick = false;
        self.st.dispatch(promote, &mut |w| match w {
            Wake::Signal(&t) => wakes.push(t),
            Wake::Kick => kick = true,
        });
        for t in wakes {
            Self::apply_wake(&mut self.th, Wake::Signal(&t));
        }
        if kick {
            Self::apply_wake(&mut self.th, Wake::Kick);
        }
    }

    fn successors(&self) -> Vec<World> {
        let mut out = Vec::new();
        for t in 0..self.th.len() {
            match self.th[t].clone() {
                Th::Idle { gets_left, running, .. } if gets_left > 0 => {
                    let mut w = self.clone();
                    if running {
                        w.st.leave_running();
                    }
                    w.get_loop(t, gets_left);
                    out.push(w);
                }
                Th::Parked { id, gets_left, signalled } => {
                    for timeout in [false, true] {
                        if !(signalled || (timeout && self.timeouts)) {
                            continue;
                        }
                        let mut w = self.clone();
                        let mut got = Vec::new();
                        if w.st.take_handed(id, 0, &mut |p| got.push(p)) > 0 {
                            w.delivered.extend(got);
                            w.th[t] = Th::returned(gets_left, true);
                        } else if !w.st.is_waiting(id) {
                            w.get_loop(t, gets_left);
                        } else if timeout {
                            w.st.remove_waiter(id);
                            w.st.join_running();
                            w.th[t] = Th::returned(gets_left, false);
                        } else {
                            continue; // spurious wake-up: nothing changes
                        }
                        out.push(w);
                        if signalled {
                            break;
                        }
                    }
                }
                Th::Polling { id, gets_left, .. } if self.panics_left > 0 => {
                    // The poll path unwinds (a panic in the driver or a context's Clone): what
                    // was reaped is queued, a packet handed to the poller goes back, and the
                    // polling is handed on (`abandon_poll`); the thread leaves `get`.
                    let mut w = self.clone();
                    w.panics_left -= 1;
                    let reaped: Vec<u32> =
                        (0..w.kernel_ready).map(|i| w.next_packet + u32::from(i)).collect();
                    w.next_packet += u32::from(w.kernel_ready);
                    w.kernel_ready = 0;
                    w.dropped.extend(w.st.abandon_poll(id));
                    if w.st.is_closed() {
                        w.dropped.extend(reaped);
                    } else {
                        w.st.extend(reaped);
                        w.dispatch(true);
                    }
                    w.th[t] =
                        Th::Idle { gets_left: gets_left - 1, running: false, holds_packet: false };
                    out.push(w);
                }
                _ => {}
            }
        }
        for t in 0..self.th.len() {
            if let Th::Polling { id, gets_left, kicked } = self.th[t].clone() {
                for timeout in [false, true] {
                    if !(kicked || (timeout && self.timeouts)) {
                        continue;
                    }
                    let mut w = self.clone();
                    w.st.end_polling(id);
                    if w.st.is_closed() {
                        // As `get_inner`: keep a packet handed before the close, drop what
                        // was reaped after it.
                        let mut got = Vec::new();
                        if w.st.take_handed(id, 0, &mut |p| got.push(p)) > 0 {
                            w.delivered.extend(got);
                            w.th[t] = Th::returned(gets_left, true);
                        } else {
                            w.th[t] = Th::Closed;
                        }
                        let late = u32::from(w.kernel_ready);
                        w.dropped.extend(w.next_packet..w.next_packet + late);
                        w.next_packet += late;
                        w.kernel_ready = 0;
                        out.push(w);
                        if kicked {
                            break;
                        }
                        continue;
                    }
                    let reaped: Vec<u32> =
                        (0..w.kernel_ready).map(|i| w.next_packet + u32::from(i)).collect();
                    w.next_packet += u32::from(w.kernel_ready);
                    w.kernel_ready = 0;
                    w.st.extend(reaped);
                    let mut got = Vec::new();
                    let n = w.st.take_handed(id, 0, &mut |p| got.push(p));
                    let n = if n > 0 { n } else { w.st.take(1, &mut |p| got.push(p)) };
                    if n > 0 {
                        w.delivered.extend(got);
                        w.dispatch(true);
                        w.th[t] = Th::returned(gets_left, true);
                    } else {
                        w.dispatch(timeout);
                        if w.st.is_closed() {
                            w.th[t] = Th::Closed;
                        } else if timeout {
                            w.st.join_running();
                            w.th[t] = Th::returned(gets_left, false);
                        } else {
                            w.get_loop(t, gets_left);
                        }
                    }
                    out.push(w);
                    if kicked {
                        break;
                    }
                }
            }
        }
        if self.posts_left > 0 && !self.st.is_closed() {
            let mut w = self.clone();
            w.posts_left -= 1;
            let p = w.next_packet;
            w.next_packet += 1;
            let mut wakes = Vec::new();
            let mut kick = false;
            w.st.push(p, &mut |x| match x {
                Wake::Signal(&t) => wakes.push(t),
                Wake::Kick => kick = true,
            });
            // LIFO: a post hands its packet to the most recent waiter, if any is released.
            assert!(wakes.len() + usize::from(kick) <= 2);
            for t in wakes {
                Self::apply_wake(&mut w.th, Wake::Signal(&t));
            }
            if kick {
                Self::apply_wake(&mut w.th, Wake::Kick);
            }
            out.push(w);
        }
        if self.kernel_left > 0 && !self.st.is_closed() {
            let mut w = self.clone();
            w.kernel_left -= 1;
            w.kernel_ready += 1;
            for t in w.th.iter_mut() {
                if let Th::Polling { kicked, .. } = t {
                    *kicked = true;
                }
            }
            out.push(w);
        }
        if self.close_left {
            let mut w = self.clone();
            w.close_left = false;
            let mut wakes = Vec::new();
            let mut kick = false;
            let dropped = w.st.close(&mut |x| match x {
                Wake::Signal(&t) => wakes.push(t),
                Wake::Kick => kick = true,
            });
            w.dropped.extend(dropped);
            for t in wakes {
                Self::apply_wake(&mut w.th, Wake::Signal(&t));
            }
            if kick {
                Self::apply_wake(&mut w.th, Wake::Kick);
            }
            out.push(w);
        }
        out
    }

    fn check(&self) {
        // Nothing enters a closed port's queue.
        if self.st.is_closed() {
            assert!(self.st.queued() == 0, "packets queued after close: {self:?}");
        }
        // FIFO: the queue holds packets in arrival order.
        let q: Vec<u32> = self.st.queue().iter().copied().collect();
        assert!(q.windows(2).all(|p| p[0] < p[1]), "queue out of order: {q:?}");
        // Conservation: every packet that entered the queue is in exactly one place.
        let mut all: Vec<u32> = q.clone();
        all.extend(&self.delivered);
        all.extend(&self.dropped);
        let mut handed_count = 0;
        for th in &self.th {
            if let Th::Parked { id, .. } | Th::Polling { id, .. } = th
                && self.st.has_handed(*id)
            {
                handed_count += 1;
            }
        }
        let entered = self.next_packet as usize;
        let mut uniq = all.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), all.len(), "a packet is in two places: {all:?}");
        assert_eq!(all.len() + handed_count, entered, "a packet was lost: {self:?}");
        // Accounting.
        let running_threads = self
            .th
            .iter()
            .filter(|t| match t {
                Th::Idle { running, .. } => *running,
                Th::Parked { id, .. } | Th::Polling { id, .. } => self.st.has_handed(*id),
                Th::Closed => false,
            })
            .count();
        if !self.st.is_closed() {
            assert_eq!(self.st.running(), running_threads, "running count drifted: {self:?}");
        }
        // A thread back from a timeout counts as running even above the limit (as on Windows),
        // but packets are only ever released while fewer than `max` threads run.
        let holders = self
            .th
            .iter()
            .filter(|t| match t {
                Th::Idle { holds_packet, running, .. } => *holds_packet && *running,
                Th::Parked { id, .. } | Th::Polling { id, .. } => self.st.has_handed(*id),
                Th::Closed => false,
            })
            .count();
        let timed_out = running_threads - holders;
        assert!(holders <= self.max + timed_out, "concurrency limit exceeded: {self:?}");
        if timed_out == 0 {
            assert!(self.st.running() <= self.max, "concurrency limit exceeded: {self:?}");
        }
        // At most one poller.
        let pollers = self.th.iter().filter(|t| matches!(t, Th::Polling { .. })).count();
        assert!(pollers <= 1);
        assert_eq!(pollers == 1, self.st.is_polling());
    }

    /// Nothing can happen any more except timeouts.
    fn check_quiescent(&self) {
        let sleeping = self.th.iter().any(|t| matches!(t, Th::Parked { signalled: false, .. }));
        let polling = self.th.iter().any(|t| matches!(t, Th::Polling { .. }));
        if self.st.is_closed() {
            assert!(!sleeping && !polling, "a waiter sleeps on a closed port: {self:?}");
            return;
        }
        if sleeping {
            assert!(polling, "waiters sleep with nobody polling the kernel: {self:?}");
        }
        let waiting = self.st.waiters() > 0;
        assert!(
            !(waiting && self.st.queued() > 0 && self.st.running() < self.max),
            "a packet waits while a releasable waiter sleeps: {self:?}"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn explore(
    threads: usize,
    gets: u8,
    posts: u8,
    kernel: u8,
    close: bool,
    max: usize,
    timeouts: bool,
    poll_every: u32,
    panics: u8,
) -> usize {
    let mut st = State::new(max);
    st.set_poll_every(poll_every);
    let start = World {
        st,
        th: vec![Th::Idle { gets_left: gets, running: false, holds_packet: false }; threads],
        kernel_ready: 0,
        next_packet: 0,
        posts_left: posts,
        kernel_left: kernel,
        close_left: close,
        delivered: Vec::new(),
        dropped: Vec::new(),
        max,
        timeouts,
        panics_left: panics,
    };
    let mut seen = HashSet::new();
    let mut stack = vec![start];
    while let Some(w) = stack.pop() {
        if !seen.insert(w.clone()) {
            continue;
        }
        w.check();
        let next = w.successors();
        // Quiescent: only timeouts could move it.
        let mut no_timeouts = w.clone();
        no_timeouts.timeouts = false;
        if no_timeouts.successors().is_empty() {
            w.check_quiescent();
        }
        stack.extend(next);
    }
    seen.len()
}

#[test]
fn model_two_threads_limit_one() {
    for close in [false, true] {
        for timeouts in [false, true] {
            let n = explore(2, 2, 3, 2, close, 1, timeouts, super::POLL_EVERY, 0);
            assert!(n > 100, "explored only {n} states");
        }
    }
}

#[test]
fn model_three_threads_limit_two() {
    for close in [false, true] {
        let n = explore(3, 2, 3, 1, close, 2, true, super::POLL_EVERY, 0);
        assert!(n > 1000, "explored only {n} states");
    }
}

#[test]
fn model_three_threads_limit_three_no_timeouts() {
    let n = explore(3, 1, 2, 2, true, 3, false, super::POLL_EVERY, 0);
    assert!(n > 100, "explored only {n} states");
}

/// The poll bound: with a bound of one or two packets, takers poll the kernel between packets
/// (re-posted work cannot starve I/O); every rule above still holds.
#[test]
fn model_poll_bound() {
    for poll_every in [1, 2] {
        for close in [false, true] {
            let n = explore(2, 3, 3, 2, close, 1, true, poll_every, 0);
            assert!(n > 100, "explored only {n} states");
        }
    }
    let n = explore(3, 1, 2, 2, true, 2, false, 1, 0);
    assert!(n > 100, "explored only {n} states");
}

/// A panic in the poll path hands the polling on and loses no packet.
#[test]
fn model_poller_unwinds() {
    for close in [false, true] {
        for poll_every in [1, super::POLL_EVERY] {
            let n = explore(2, 2, 3, 2, close, 1, true, poll_every, 1);
            assert!(n > 100, "explored only {n} states");
        }
    }
    let n = explore(3, 1, 2, 2, true, 2, false, super::POLL_EVERY, 1);
    assert!(n > 100, "explored only {n} states");
}

#[test]
fn a_drained_burst_gives_its_queue_back_in_order() {
    let mut st: State<u32, usize> = State::new(1);
    st.extend(0..10_000);
    assert!(st.queue().capacity() >= 10_000);
    let mut got = Vec::new();
    assert_eq!(st.take(6_000, &mut |p| got.push(p)), 6_000);
    assert!(st.queue().capacity() >= 10_000, "a table still in use keeps its capacity");
    st.leave_running();
    assert_eq!(st.take(usize::MAX, &mut |p| got.push(p)), 4_000);
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    assert!(st.queue().capacity() <= 2 * crate::spare::KEEP, "{}", st.queue().capacity());
}
