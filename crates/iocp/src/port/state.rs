//! The completion port's queue, waiter stack and concurrency count, as a pure state machine.
//!
//! This is the whole scheduling policy of the port, with no threads, locks or syscalls in it:
//! `port.rs` runs it under one mutex, and the model check in `tests` drives it through every
//! interleaving of a few threads. Keeping it pure is what makes that exhaustive check possible.
//!
//! The rules (ReactOS `KQUEUE`, iocp-semantics §1.4):
//! - packets are queued FIFO;
//! - a waiter is released only while `running < max`, and the most recent waiter first (LIFO);
//! - a released waiter is counted as running from the moment it is handed a packet;
//! - at most one waiter is the *poller*: it waits in the kernel (io_uring / epoll) and reaps I/O
//!   completions for everyone; when it leaves, the most recent other waiter is promoted;
//! - while nobody polls, a thread that has taken `poll_every` packets since the last poll polls
//!   the kernel (without blocking) before it takes more, so that re-posted work cannot starve
//!   I/O completions and deadlines (`poll_due`);
//! - a poller that unwinds (a panic in the poll path) gives back what it was handed and hands
//!   the polling on (`abandon_poll`), so the port keeps serving.

use std::collections::VecDeque;

/// Packets taken from the queue without a kernel poll after which the next taker polls first
/// (non-blocking): the bound on how long re-posted work can hold back I/O and deadlines.
pub(crate) const POLL_EVERY: u32 = 32;

/// Identifies one blocked call to `get`.
pub(crate) type WaiterId = u64;

#[cfg_attr(test, derive(Clone, Hash, PartialEq, Eq))]
#[derive(Debug)]
struct Waiter<S> {
    id: WaiterId,
    poller: bool,
    signal: S,
}

/// Who must be woken after a state change; the caller performs it.
#[derive(Debug, Eq, PartialEq)]
pub(crate) enum Wake<'a, S> {
    /// A waiter parked on its signal.
    Signal(&'a S),
    /// The poller, blocked in the kernel.
    Kick,
}

#[cfg_attr(test, derive(Clone, Hash, PartialEq, Eq))]
#[derive(Debug)]
pub(crate) struct State<P, S> {
    queue: VecDeque<P>,
    /// LIFO: the last element is the most recent waiter.
    waiters: Vec<Waiter<S>>,
    /// Packets handed to released waiters that have not picked them up yet.
    handed: Vec<(WaiterId, P)>,
    running: usize,
    max: usize,
    closed: bool,
    polling: bool,
    /// Packets taken since the last kernel poll ended.
    since_poll: u32,
    /// How many packets a thread may take, while nobody polls, before it must poll.
    poll_every: u32,
    next_id: WaiterId,
    /// Counters for `PortStats`, kept under the same lock as the queue (no shared atomics to
    /// bounce between cores on every packet). Not part of the scheduling logic.
    pub(crate) counts: Counts,
}

/// Packet counters (see `PortStats`).
#[cfg_attr(test, derive(Clone, Hash, PartialEq, Eq))]
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) posted: u64,
    pub(crate) dequeued: u64,
    pub(crate) io_completions: u64,
}

impl<P, S> State<P, S> {
    pub(crate) fn new(max: usize) -> Self {
        State {
            queue: VecDeque::new(),
            waiters: Vec::new(),
            handed: Vec::new(),
            running: 0,
            max: max.max(1),
            closed: false,
            polling: false,
            since_poll: 0,
            poll_every: POLL_EVERY,
            next_id: 1,
            counts: Counts::default(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn is_polling(&self) -> bool {
        self.polling
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn waiters(&self) -> usize {
        self.waiters.len()
    }

    /// Packets handed to a waiter that has not picked them up yet.
    pub(crate) fn waiters_handed(&self) -> usize {
        self.handed.len()
    }

    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// A thread that was counted as running calls `get` again, blocks visibly, or exits.
    pub(crate) fn leave_running(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// A thread counts as running again (timeout return, end of a blocking section).
    pub(crate) fn join_running(&mut self) {
        self.running += 1;
    }

    /// Takes up to `n` packets for the calling thread if the concurrency limit allows, counting
    /// it as running. Returns how many were pushed to `out`.
    pub(crate) fn take(&mut self, n: usize, out: &mut impl FnMut(P)) -> usize {
        if self.running >= self.max || self.queue.is_empty() {
            return 0;
        }
        self.running += 1;
        self.drain_into(n, out)
    }

    fn drain_into(&mut self, n: usize, out: &mut impl FnMut(P)) -> usize {
        let mut taken = 0;
        while taken < n {
            match self.queue.pop_front() {
                Some(p) => {
                    out(p);
                    taken += 1;
                }
                None => break,
            }
        }
        if self.queue.is_empty() {
            crate::spare::deque(&mut self.queue);
        }
        self.since_poll = self.since_poll.saturating_add(taken as u32);
        taken
    }

    /// True when the calling thread must poll the kernel (without blocking) before it takes
    /// more packets: nobody polls, and `poll_every` packets went out since the last poll.
    pub(crate) fn poll_due(&self) -> bool {
        !self.polling && self.since_poll >= self.poll_every
    }

    #[cfg(test)]
    pub(crate) fn set_poll_every(&mut self, n: u32) {
        self.poll_every = n;
    }

    /// Appends a packet and releases waiters as the rules allow.
    pub(crate) fn push(&mut self, p: P, wake: &mut impl FnMut(Wake<'_, S>)) {
        self.queue.push_back(p);
        self.dispatch(true, wake);
    }

    /// Appends packets reaped from the kernel, without dispatching.
    pub(crate) fn extend(&mut self, ps: impl IntoIterator<Item = P>) {
        self.queue.extend(ps);
    }

    /// Hands queued packets to the most recent waiters while `running < max`; then, when
    /// `promote` is set and nobody polls the kernel, wakes the most recent remaining waiter so
    /// that it becomes the poller.
    pub(crate) fn dispatch(&mut self, promote: bool, wake: &mut impl FnMut(Wake<'_, S>)) {
        while self.running < self.max && !self.queue.is_empty() {
            let Some(w) = self.waiters.pop() else { break };
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            self.running += 1;
            self.handed.push((w.id, p));
            if w.poller {
                wake(Wake::Kick);
            } else {
                wake(Wake::Signal(&w.signal));
            }
        }
        if promote
            && !self.polling
            && let Some(w) = self.waiters.pop()
        {
            debug_assert!(!w.poller);
            wake(Wake::Signal(&w.signal));
        }
    }

    /// Registers a blocked `get`. A poller also sets the polling flag.
    pub(crate) fn add_waiter(&mut self, signal: S, poller: bool) -> WaiterId {
        let id = self.next_id;
        self.next_id += 1;
        if poller {
            debug_assert!(!self.polling);
            self.polling = true;
        }
        self.waiters.push(Waiter { id, poller, signal });
        id
    }

    /// The poller is back from the kernel.
    pub(crate) fn end_polling(&mut self, id: WaiterId) {
        self.polling = false;
        self.since_poll = 0;
        self.remove_waiter(id);
    }

    /// The poller unwound (a panic in the poll path): it stops polling, and a packet handed to
    /// it goes back to the head of the queue, its running slot with it. The caller then
    /// dispatches with `promote`, so that another waiter takes the polling over.
    /// On a closed port the packet is returned instead, to be dropped outside the lock.
    pub(crate) fn abandon_poll(&mut self, id: WaiterId) -> Option<P> {
        self.end_polling(id);
        let i = self.handed.iter().position(|(w, _)| *w == id)?;
        let (_, p) = self.handed.swap_remove(i);
        self.running = self.running.saturating_sub(1);
        if self.closed {
            return Some(p);
        }
        self.queue.push_front(p);
        None
    }

    #[cfg(test)]
    pub(crate) fn has_handed(&self, id: WaiterId) -> bool {
        self.handed.iter().any(|(w, _)| *w == id)
    }

    #[cfg(test)]
    pub(crate) fn queue(&self) -> &VecDeque<P> {
        &self.queue
    }

    pub(crate) fn is_waiting(&self, id: WaiterId) -> bool {
        self.waiters.iter().rev().any(|w| w.id == id)
    }

    pub(crate) fn remove_waiter(&mut self, id: WaiterId) {
        if let Some(i) = self.waiters.iter().rposition(|w| w.id == id) {
            self.waiters.remove(i);
        }
    }

    /// The packet handed to waiter `id`, plus up to `more` further queued packets (a batch
    /// `get_many`; the thread was counted as running when it was handed the first).
    pub(crate) fn take_handed(
        &mut self,
        id: WaiterId,
        more: usize,
        out: &mut impl FnMut(P),
    ) -> usize {
        let Some(i) = self.handed.iter().position(|(w, _)| *w == id) else {
            return 0;
        };
        let (_, p) = self.handed.swap_remove(i);
        out(p);
        self.since_poll = self.since_poll.saturating_add(1);
        1 + self.drain_into(more, out)
    }

    /// Closes the port: every waiter without a packet is woken (and will see `Closed`); queued
    /// packets are returned to be dropped outside the lock.
    pub(crate) fn close(&mut self, wake: &mut impl FnMut(Wake<'_, S>)) -> VecDeque<P> {
        self.closed = true;
        for w in self.waiters.drain(..).rev() {
            if w.poller {
                wake(Wake::Kick);
            } else {
                wake(Wake::Signal(&w.signal));
            }
        }
        std::mem::take(&mut self.queue)
    }
}

#[cfg(test)]
mod tests;
