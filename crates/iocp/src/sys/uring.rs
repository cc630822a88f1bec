//! The io_uring backend: one shared ring per port.
//!
//! - Submission: any thread pushes an SQE under the `sq` lock, then calls `io_uring_enter` to
//!   submit it (outside the lock), so an operation starts at once, as on Windows.
//! - Completion: only the port's poller reaps the CQ (the port guarantees one poller at a time;
//!   the `cq` lock makes that explicit), so the multi-consumer port needs no multi-consumer CQ.
//! - Wake-up: `kick` pushes a NOP, whose CQE ends the poller's `io_uring_enter` wait.
//! - Overflow: every started operation goes to the kernel at once, however many are in flight
//!   (an idle receive must never keep an accept, a send or a cancel out of the kernel: that
//!   deadlocks a server whose idle connections outnumber the CQ). More CQEs than the CQ holds
//!   are kept by the kernel (`IORING_FEAT_NODROP`, implied by the EXT_ARG the probe requires)
//!   and flushed into the CQ by the poller's next enter. Only an SQE the kernel refuses (SQ
//!   ring full and `io_uring_enter` failing with EBUSY/EAGAIN) waits in a user-space backlog
//!   (counted in `sq_full`); the poller retries it at each reap and wait, stopping at the first
//!   refusal, so it never spins with the locks held.
//!
//! Each in-flight operation lives in a slab slot; its `user_data` is the slot index plus a
//! generation, so a late cancel can never hit a newer operation in a reused slot.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, SubmitArgs, Timespec};
use io_uring::{IoUring, opcode, squeue};

use super::bufpool::BufferPool;
use super::fault::{self, Point};
use super::op::{Op, Progress, reason_code};
use super::{DriverStats, Submitted};
use crate::backend::PortConfig;
use crate::chunks::ChunkVec;
use crate::completion::{Completion, OpId, Status};
use crate::sys::op::HandleInner;

const KICK: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;
/// Generations of a slot stay below this (24 bits, in a [`Token`]).
const GENERATION_MASK: u32 = 0x00ff_ffff;

/// An op's `user_data`: `ring << 56 | generation << 32 | slot`. The generation tells a CQE (or a
/// cancel) for an op that has gone from one for the op now in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Token(u64);

impl Token {
    fn new(ring: u64, slot: usize, generation: u32) -> Self {
        debug_assert!(ring < MAX_RINGS as u64 && generation <= GENERATION_MASK);
        Token((ring << 56) | (u64::from(generation & GENERATION_MASK) << 32) | slot as u64)
    }

    fn ring(self) -> usize {
        (self.0 >> 56) as usize
    }

    fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    fn generation(self) -> u32 {
        ((self.0 >> 32) as u32) & GENERATION_MASK
    }

    fn user_data(self) -> u64 {
        self.0
    }
}
/// Rings per port at most: a token keeps its ring's index in bits 56-62 (bit 63 stays clear,
/// so no op token can equal `KICK` or `CANCEL`).
pub(crate) const MAX_RINGS: usize = 64;

struct Slot<C> {
    generation: u32,
    op: Option<Box<Op<C>>>,
    in_kernel: bool,
    cancel_sent: bool,
    /// An injected error (`fault`): the slot's SQE was a NOP whose CQE stands for this errno.
    #[cfg(any(test, feature = "fault-injection"))]
    injected: i32,
}

enum Backlogged {
    Op(Token),
    Cancel(Token),
}

struct Sq<C> {
    /// This ring's index, in the top bits of its tokens.
    ring: u64,
    slots: ChunkVec<Slot<C>>,
    free: Vec<u32>,
    /// Operations whose SQE the kernel has (or will get with the next enter).
    ops_in_kernel: usize,
    /// Refused by a full SQ ring, waiting to be pushed, in order.
    backlog: VecDeque<Backlogged>,
    /// An SQE was pushed since `reap` started (it must enter before returning).
    pushed: bool,
}

impl<C> Sq<C> {
    fn slot(&mut self, token: Token) -> Option<&mut Slot<C>> {
        debug_assert_eq!(token.ring() as u64, self.ring, "a token routed to another ring");
        let generation = token.generation();
        self.slots.get_mut(token.slot()).filter(|s| s.generation == generation && s.op.is_some())
    }

    fn insert(&mut self, op: Box<Op<C>>) -> Token {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => self.slots.push_with(|| Slot {
                generation: 0,
                op: None,
                in_kernel: false,
                cancel_sent: false,
                #[cfg(any(test, feature = "fault-injection"))]
                injected: 0,
            }) as u32,
        };
        let slot = &mut self.slots[idx as usize];
        slot.generation = (slot.generation + 1) & GENERATION_MASK;
        slot.op = Some(op);
        slot.in_kernel = false;
        slot.cancel_sent = false;
        let generation = slot.generation;
        self.token(idx as usize, generation)
    }

    fn token(&self, idx: usize, generation: u32) -> Token {
        Token::new(self.ring, idx, generation)
    }

    fn remove(&mut self, token: Token) -> Option<Box<Op<C>>> {
        let op = self.slot(token)?.op.take();
        self.free.push(token.slot() as u32);
        op
    }
}

/// One io_uring with its slab of in-flight ops. A port has one per worker thread (see
/// [`Driver`]); each op lives on the ring of the thread that started it.
struct Ring<C> {
    ring: IoUring,
    sq: Mutex<Sq<C>>,
    cq: Mutex<Vec<(u64, i32, u32)>>,
    kick_pending: AtomicBool,
    /// SQEs were pushed by a `SubmitBatch` and not yet entered.
    deferred: AtomicBool,
    sq_full: AtomicU64,
    /// SQEs the kernel took, and the enters that submitted them (one submitter at a time:
    /// uncontended).
    submitted: AtomicU64,
    submit_enters: AtomicU64,
    /// Registered buffer rings; declared after `ring`, so the ring is closed first on drop and
    /// the kernel is done with their memory before it is freed.
    pools: Mutex<Vec<BufferPool>>,
    /// Ops queued behind another op of their handle (stream order), not yet in a slab (shared
    /// by the port's rings: an op queued on one ring may start on another).
    waiting: Arc<AtomicU64>,
    /// Ops that ended into a caller's `out` (out of their slot or the waiting queue) and that
    /// the port has not yet settled: still in flight to its counters until it has queued them
    /// (shared by the port's rings; see `Driver::settle`).
    ended: Arc<AtomicU64>,
    /// The port is shutting down (shared by its rings).
    shut: Arc<AtomicBool>,
    /// A thread is in `io_uring_enter` submitting (see `enter`).
    submitting: AtomicBool,
    /// SQEs were pushed since the submitter's last enter.
    want_submit: AtomicBool,
}

impl<C: Send + 'static> Ring<C> {
    fn open(
        cfg: &PortConfig,
        index: usize,
        waiting: Arc<AtomicU64>,
        ended: Arc<AtomicU64>,
        shut: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let entries = cfg.ring_entries.clamp(2, 32768);
        let cq_entries = cfg.cq_entries.unwrap_or(entries * 16).clamp(entries, 65536);
        let ring = IoUring::builder().setup_cqsize(cq_entries).setup_clamp().build(entries)?;
        Ok(Ring {
            ring,
            sq: Mutex::new(Sq {
                ring: index as u64,
                slots: ChunkVec::new(),
                free: Vec::new(),
                ops_in_kernel: 0,
                backlog: VecDeque::new(),
                pushed: false,
            }),
            cq: Mutex::new(Vec::with_capacity(256)),
            kick_pending: AtomicBool::new(false),
            deferred: AtomicBool::new(false),
            sq_full: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            submit_enters: AtomicU64::new(0),
            pools: Mutex::new(Vec::new()),
            waiting,
            ended,
            shut,
            submitting: AtomicBool::new(false),
            want_submit: AtomicBool::new(false),
        })
    }

    fn sq(&self) -> MutexGuard<'_, Sq<C>> {
        self.sq.lock()
    }

    fn buffer_pool(&self, port: u64, count: u16, size: usize) -> io::Result<BufferPool> {
        let mut pools = self.pools.lock();
        let group = u16::try_from(pools.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "too many buffer pools on one port")
        })?;
        let pool = BufferPool::new(port, count, size, group, true)?;
        let (addr, entries, group) = pool.ring_registration().expect("invariant: a ring pool");
        // SAFETY: the ring memory belongs to `pool`, which `self.pools` keeps alive until this
        // driver drops; `ring` is declared before `pools`, so it is closed (and the kernel stops
        // using the ring) before the memory is freed.
        unsafe { self.ring.submitter().register_buf_ring_with_flags(addr, entries, group, 0) }?;
        pools.push(pool.clone());
        Ok(pool)
    }

    fn register(&self, h: &Arc<HandleInner<C>>) -> io::Result<()> {
        // Non-blocking, as on epoll: io_uring still waits for readiness itself (a spurious EAGAIN
        // is resubmitted), and syscalls made from the reaping thread (TransmitFile's sendfile)
        // must never block it.
        rustix::io::ioctl_fionbio(&h.fd, !h.is_file)?;
        Ok(())
    }

    /// Pushes one SQE. The caller holds the `sq` lock (so no other `SubmissionQueue` exists)
    /// and has checked the budget.
    fn push(&self, entry: &squeue::Entry) -> bool {
        if fault::hit(Point::SqPush).is_some() {
            return false;
        }
        // SAFETY: the `sq` mutex is held by the caller, so this is the only live
        // `SubmissionQueue` of the ring.
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: every pointer in `entry` points into a boxed `Op` held in the slab (or is
        // none, for NOP and cancel entries). The box is neither moved nor freed until its CQE is
        // reaped in `reap`, or it is leaked by `shutdown`, so the memory stays valid for as long
        // as the kernel may use it.
        let pushed = unsafe { sq.push(entry) }.is_ok();
        if !pushed {
            drop(sq);
            // The SQ ring is full of entries not yet submitted: submit them and retry.
            let _ = self.ring.submitter().submit();
            // SAFETY: as above; the `sq` lock is still held.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: as above.
            return unsafe { sq.push(entry) }.is_ok();
        }
        true
    }

    /// Gives the kernel the op in `token`'s slot; backlogs it if the SQ ring refuses it.
    fn issue(&self, sq: &mut Sq<C>, token: Token) {
        if !self.try_issue(sq, token) {
            self.sq_full.fetch_add(1, Ordering::Relaxed);
            sq.backlog.push_back(Backlogged::Op(token));
        }
    }

    /// Pushes the op in `token`'s slot. False only if the SQ ring refused it; true also when
    /// the slot is gone (the op was aborted meanwhile): nothing is left to issue.
    fn try_issue(&self, sq: &mut Sq<C>, token: Token) -> bool {
        let Some(slot) = sq.slot(token) else { return true };
        let op = slot.op.as_mut().expect("invariant: slot() only returns occupied slots");
        // An injected failure sends a NOP in the op's place: the kernel never sees the op.
        let injected = op.fault_point().and_then(fault::hit);
        let entry = match injected {
            Some(_) => opcode::Nop::new().build().user_data(token.user_data()),
            None => op.sqe().user_data(token.user_data()),
        };
        if !self.push(&entry) {
            return false;
        }
        #[cfg(any(test, feature = "fault-injection"))]
        {
            slot.injected = injected.unwrap_or(0);
        }
        slot.in_kernel = true;
        sq.ops_in_kernel += 1;
        sq.pushed = true;
        true
    }

    fn issue_cancel(&self, sq: &mut Sq<C>, token: Token) {
        let Some(slot) = sq.slot(token) else { return };
        if slot.cancel_sent || !slot.in_kernel {
            return;
        }
        slot.cancel_sent = true;
        if !self.try_cancel(sq, token) {
            sq.backlog.push_back(Backlogged::Cancel(token));
        }
    }

    /// Pushes the cancel of `token`. False only if the SQ ring refused it.
    fn try_cancel(&self, sq: &mut Sq<C>, token: Token) -> bool {
        let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(token.user_data()))
            .build()
            .user_data(CANCEL);
        if !self.push(&entry) {
            return false;
        }
        sq.pushed = true;
        true
    }

    /// `io_uring_enter` to submit, unless a failure is injected for it.
    fn submit_now(&self) -> io::Result<usize> {
        match fault::hit(Point::Enter) {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => self.ring.submitter().submit(),
        }
    }

    /// Submits what the SQ ring holds. Coalesced: at most one thread is in `io_uring_enter` to
    /// submit at a time. A thread that finds another one submitting leaves its SQEs to it and
    /// goes on: the submitter enters again before it gives up the role, so nothing pushed before
    /// a call is left in the ring. Two threads entering at once would serialise on the ring's
    /// `uring_lock` in the kernel, which spins while the other's inline sends run (12 % of an
    /// echo server's CPU at 1,000 connections, see DESIGN.md §5.3).
    fn enter(&self) {
        self.want_submit.store(true, Ordering::SeqCst);
        loop {
            if self.submitting.swap(true, Ordering::SeqCst) {
                return; // the submitter sees `want_submit` before it lets go
            }
            while self.want_submit.swap(false, Ordering::SeqCst) {
                self.submit_once();
            }
            self.submitting.store(false, Ordering::SeqCst);
            // A request that came after our last swap, whose thread saw us still submitting.
            if !self.want_submit.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    fn submit_once(&self) {
        match self.submit_now() {
            Ok(n) => {
                self.submitted.fetch_add(n as u64, Ordering::Relaxed);
                self.submit_enters.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // EBUSY/EAGAIN: the SQEs stay in the ring for the next enter, but the poller may
                // be asleep in its own (earlier) enter and make no other until a CQE or its
                // timeout wakes it. Kick it: the kick's NOP is submitted by this thread's next
                // turn of the loop in `enter`, and its CQE wakes the poller, whose wait retries
                // the backlog. If that enter fails too, the NOP waits in the ring with the rest
                // (`kick_pending` stays set, so this does not recurse further).
                tracing::trace!("io_uring_enter(submit): {e}");
                self.kick();
            }
        }
    }

    fn submit(&self, op: Box<Op<C>>, defer: bool) -> Submitted<C> {
        let mut sq = self.sq();
        if op.handle.is_closed() || self.shut.load(Ordering::Acquire) {
            return Submitted::Refused(super::closed_error(), op);
        }
        let handle = op.handle.clone();
        let mut io = handle.io();
        if let Some(side) = op.kind.ordered_side() {
            if io.is_busy(side) {
                // Keep stream order: wait for the receive (send) in the kernel to finish.
                io.push_back(side, op);
                self.waiting.fetch_add(1, Ordering::Relaxed);
                return Submitted::Pending;
            }
            io.set_busy(side, true);
        }
        let token = sq.insert(op);
        io.push_token(token.user_data());
        drop(io);
        let backlog = sq.backlog.len();
        self.issue(&mut sq, token);
        let backlogged = sq.backlog.len() > backlog;
        drop(sq);
        if defer {
            self.deferred.store(true, Ordering::Release);
        } else {
            self.enter();
        }
        if backlogged {
            // Only the poller retries the backlog: wake it, it may be asleep.
            self.kick();
        }
        Submitted::Pending
    }

    /// Submits the SQEs that `submit(.., true)` left in the ring (one `io_uring_enter` for a
    /// whole batch). A concurrent enter by another thread may already have taken them.
    fn flush(&self) {
        if self.deferred.swap(false, Ordering::AcqRel) {
            self.enter();
        }
    }

    /// Before a wait: retries the backlog and submits what the ring holds. Returns the longest
    /// the wait may last: about a millisecond while the kernel refuses backlogged SQEs, so they
    /// are retried soon, not only when an unrelated CQE happens to arrive.
    fn prepare_wait(&self, timeout: Option<Duration>) -> Option<Duration> {
        self.deferred.store(false, Ordering::Release);
        let mut timeout = timeout;
        {
            let mut sq = self.sq();
            if !sq.backlog.is_empty() {
                self.drain_backlog(&mut sq);
                if !sq.backlog.is_empty() {
                    let retry = Duration::from_millis(1);
                    timeout = Some(timeout.map_or(retry, |t| t.min(retry)));
                }
            }
        }
        // Deferred SQEs (a batch, resumed ops) go in first through the coalesced submit; the
        // wait itself submits nothing, so it never takes the ring's `uring_lock` against a
        // thread that is submitting (see `enter`).
        if self.pending_sqes() {
            self.enter();
        }
        timeout
    }

    /// Waits on this ring alone (a port with one ring; a ring's part of the shutdown).
    fn wait(&self, timeout: Option<Duration>, out: &mut Vec<Completion<C>>) -> io::Result<()> {
        let timeout = self.prepare_wait(timeout);
        let res = if let Some(errno) = fault::hit(Point::Enter) {
            Err(io::Error::from_raw_os_error(errno))
        } else {
            self.wait_only(timeout)
        };
        wait_result(res)?;
        self.reap(out);
        Ok(())
    }

    /// Completions the kernel holds but has not posted to the CQ (overflowed CQEs, task work
    /// flagged for the ring): an enter with GETEVENTS posts them.
    fn needs_flush(&self) -> bool {
        let _sq = self.sq();
        // SAFETY: the `sq` lock is held, so this is the only live `SubmissionQueue`; only its
        // flags are read.
        let sq = unsafe { self.ring.submission_shared() };
        sq.cq_overflow() || sq.taskrun()
    }

    /// Whether the SQ ring holds entries the kernel has not taken.
    fn pending_sqes(&self) -> bool {
        let _sq = self.sq();
        // SAFETY: the `sq` lock is held, so this is the only live `SubmissionQueue`; it is only
        // read.
        !unsafe { self.ring.submission_shared() }.is_empty()
    }

    /// `io_uring_enter` waiting for one CQE (or `timeout`), submitting nothing.
    fn wait_only(&self, timeout: Option<Duration>) -> io::Result<usize> {
        let getevents = io_uring::EnterFlags::GETEVENTS.bits();
        match timeout {
            Some(t) if t.is_zero() => {
                // Only flush overflowed CQEs and task work into the CQ.
                // SAFETY: no argument pointer is passed.
                unsafe { self.ring.submitter().enter::<libc::sigset_t>(0, 0, getevents, None) }
            }
            Some(t) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                let flags = getevents | io_uring::EnterFlags::EXT_ARG.bits();
                // SAFETY: `args` (and the timespec it points to) outlive the call; EXT_ARG tells
                // the kernel that the argument is an `io_uring_getevents_arg`, which `SubmitArgs`
                // wraps (the crate's own `submit_with_args` passes it the same way).
                unsafe { self.ring.submitter().enter(0, 1, flags, Some(&args)) }
            }
            // SAFETY: no argument pointer is passed.
            None => unsafe { self.ring.submitter().enter::<libc::sigset_t>(0, 1, getevents, None) },
        }
    }

    /// Moves every available CQE into `out` as completions, resubmitting multi-stage ops.
    fn reap(&self, out: &mut Vec<Completion<C>>) {
        let mut cqes = self.cq.lock();
        {
            // SAFETY: the `cq` mutex is held, so this is the only live `CompletionQueue`.
            let cq = unsafe { self.ring.completion_shared() };
            cqes.extend(cq.map(|e| (e.user_data(), e.result(), e.flags())));
        }
        if cqes.is_empty() {
            return;
        }
        let mut sq = self.sq();
        sq.pushed = false;
        for (user_data, res, flags) in cqes.drain(..) {
            match user_data {
                KICK => {
                    self.kick_pending.store(false, Ordering::Release);
                    continue;
                }
                CANCEL => continue,
                _ => {}
            }
            let token = Token(user_data);
            let Some(slot) = sq.slot(token) else {
                debug_assert!(false, "CQE for an unknown op {user_data:#x}");
                continue;
            };
            // The NOP of an injected failure: the op sees the injected errno.
            #[cfg(any(test, feature = "fault-injection"))]
            let res = if slot.injected == 0 { res } else { -std::mem::take(&mut slot.injected) };
            let op = slot.op.as_mut().expect("invariant: slot() only returns occupied slots");
            if op.kind.is_multishot() {
                if res >= 0 {
                    let clone =
                        op.handle.io().clone_ctx().expect("invariant: accept_multi sets clone_ctx");
                    // A panicking user `Clone` is caught there and raised again after this reap.
                    out.extend(op.accepted_raw(res, clone));
                }
                if io_uring::cqueue::more(flags) {
                    continue; // still armed
                }
                slot.in_kernel = false;
                sq.ops_in_kernel -= 1;
                let ended = self.shut.load(Ordering::Acquire)
                    || sq.slot(token).is_some_and(|s| {
                        s.cancel_sent || s.op.as_ref().is_some_and(|o| o.handle.is_closed())
                    });
                match res {
                    _ if ended => out.push(self.finish(&mut sq, token, Status::CANCELED)),
                    // The kernel stopped the multishot without an error: arm it again.
                    // (ECANCELED unasked: the thread that armed it exited; see below.)
                    r if r >= 0
                        || r == -libc::ECONNABORTED
                        || r == -libc::EPROTO
                        || r == -libc::ECANCELED =>
                    {
                        self.issue(&mut sq, token)
                    }
                    r => out.push(self.finish(&mut sq, token, Status::from_errno(-r))),
                }
                continue;
            }
            slot.in_kernel = false;
            // The kernel cancels a thread's requests when the thread exits. On a port, I/O
            // outlives the thread that started it (iocp-semantics case 38: Vista's
            // thread-agnostic I/O), so a cancel nobody asked for starts the op again, from this
            // thread.
            let orphaned = res == -libc::ECANCELED
                && !slot.cancel_sent
                && !op.handle.is_closed()
                && !self.shut.load(Ordering::Acquire);
            let progress = if orphaned { Progress::Again } else { op.on_cqe(res, flags) };
            sq.ops_in_kernel -= 1;
            match progress {
                Progress::Done(status) => out.push(self.finish(&mut sq, token, status)),
                Progress::Again | Progress::AgainOnAccepted => {
                    let shut = self.shut.load(Ordering::Acquire);
                    let closed = shut
                        || sq.slot(token).is_some_and(|s| {
                            s.cancel_sent || s.op.as_ref().is_some_and(|o| o.handle.is_closed())
                        });
                    if closed {
                        out.push(self.finish(&mut sq, token, Status::CANCELED));
                    } else {
                        self.issue(&mut sq, token);
                    }
                }
            }
        }
        self.drain_backlog(&mut sq);
        // Only what this reap pushed (resumed ops, the backlog) needs an enter here; other
        // threads' submissions enter on their own (or at their batch's flush).
        let pushed = sq.pushed;
        drop(sq);
        drop(cqes);
        if pushed {
            self.enter();
        }
    }

    fn finish(&self, sq: &mut Sq<C>, token: Token, status: Status) -> Completion<C> {
        // Counted as ended before it leaves its slot: a stats reader sees it in one or the
        // other (or both), never in neither.
        self.ended.fetch_add(1, Ordering::Relaxed);
        let op = sq.remove(token).expect("invariant: finishing an occupied slot");
        let handle = op.handle.clone();
        let mut io = handle.io();
        io.remove_token(token.user_data());
        if let Some(side) = op.kind.ordered_side() {
            // Start the next receive (send) of this handle, in order.
            // A closed handle's queue is drained (and aborted) by `close_handle`, which runs
            // under the `sq` lock we hold, right after the handle was marked closed.
            let next = if handle.is_closed() { None } else { io.pop_front(side) };
            match next {
                Some(next) => {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    let next_token = sq.insert(next);
                    io.push_token(next_token.user_data());
                    drop(io);
                    self.issue(sq, next_token);
                }
                None => io.set_busy(side, false),
            }
        }
        op.complete(status)
    }

    /// Pushes backlogged SQEs in order until the SQ ring refuses one, which stays at the front
    /// for the next reap or wait: each entry is tried once per call, never re-queued in a loop.
    fn drain_backlog(&self, sq: &mut Sq<C>) {
        while let Some(front) = sq.backlog.front() {
            let pushed = match *front {
                Backlogged::Op(token) => self.try_issue(sq, token),
                // The op may have completed (or been aborted) meanwhile: nothing to cancel.
                Backlogged::Cancel(token) => {
                    !sq.slot(token).is_some_and(|s| s.in_kernel) || self.try_cancel(sq, token)
                }
            };
            if !pushed {
                break;
            }
            sq.backlog.pop_front();
        }
        if sq.backlog.is_empty() {
            crate::spare::deque(&mut sq.backlog);
        }
    }

    fn kick(&self) {
        if self.kick_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let sq = self.sq();
        let pushed = self.push(&opcode::Nop::new().build().user_data(KICK));
        drop(sq);
        if pushed {
            self.enter();
        } else {
            self.kick_pending.store(false, Ordering::Release);
        }
    }

    /// This ring's part of the port's shutdown (the caller has set `shut`): cancels
    /// everything, reaps for up to a second, and leaks (never frees) what the kernel still
    /// holds after that.
    fn shutdown(&self) {
        let mut dropped: Vec<Completion<C>> = Vec::new();
        let mut backlogged = Vec::new();
        {
            let mut sq = self.sq();
            // Ops waiting behind an in-kernel op of their handle never reached the kernel.
            for slot in sq.slots.iter() {
                if let Some(op) = &slot.op {
                    let mut io = op.handle.io();
                    let queued = io.drain_all();
                    self.waiting.fetch_sub(queued.len() as u64, Ordering::Relaxed);
                    backlogged.extend(queued);
                }
            }
            let tokens: Vec<Token> = sq
                .backlog
                .drain(..)
                .filter_map(|b| match b {
                    Backlogged::Op(t) => Some(t),
                    Backlogged::Cancel(_) => None,
                })
                .collect();
            for t in tokens {
                if let Some(op) = sq.remove(t) {
                    backlogged.push(op);
                }
            }
            if sq.ops_in_kernel > 0 {
                let entry =
                    opcode::AsyncCancel2::new(CancelBuilder::any()).build().user_data(CANCEL);
                let _ = self.push(&entry);
            }
        }
        self.enter();
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let left = {
                let sq = self.sq();
                sq.ops_in_kernel
            };
            let now = Instant::now();
            if left == 0 || now >= deadline {
                break;
            }
            let _ = self.wait(Some((deadline - now).min(Duration::from_millis(50))), &mut dropped);
        }
        let leaked: Vec<Box<Op<C>>> = {
            let mut sq = self.sq();
            let live: Vec<Token> = sq
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.op.is_some())
                .map(|(i, s)| (i, s.generation))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|(i, g)| sq.token(i, g))
                .collect();
            live.into_iter().filter_map(|t| sq.remove(t)).collect()
        };
        if !leaked.is_empty() {
            // Their receives may still pick buffers from our rings: keep those alive too.
            let pools = std::mem::take(&mut *self.pools.lock());
            std::mem::forget(pools);
            tracing::warn!(
                count = leaked.len(),
                "io_uring ops still in the kernel at port close; leaking them"
            );
            for op in leaked {
                // The kernel may still write into this op's buffers: never free it.
                std::mem::forget(op);
            }
        }
        drop(backlogged);
        drop(dropped);
    }

    fn stats(&self) -> DriverStats {
        // Lock order is `cq` then `sq` (as in `reap`); never hold `sq` while taking `cq`.
        let overflow = {
            let _cq = self.cq.lock();
            // SAFETY: the `cq` mutex is held, so this is the only live `CompletionQueue`; it is
            // only read, not consumed.
            let cq = unsafe { self.ring.completion_shared() };
            u64::from(cq.overflow())
        };
        let sq = self.sq();
        let in_flight = sq.slots.iter().filter(|s| s.op.is_some()).count() as u64;
        DriverStats {
            in_flight,
            sq_full: self.sq_full.load(Ordering::Relaxed),
            cq_overflow: overflow,
            backlog: sq.backlog.len() as u64,
            submitted: self.submitted.load(Ordering::Relaxed),
            submit_enters: self.submit_enters.load(Ordering::Relaxed),
        }
    }

    fn count_in_flight(&self, counts: &mut crate::stats::InFlightByKind) {
        let sq = self.sq();
        for op in sq.slots.iter().filter_map(|s| s.op.as_ref()) {
            op.kind.count_in(counts);
        }
    }
}

/// The io_uring backend of a port: one ring per worker thread, one port.
///
/// A thread starts its ops on its own ring (threads take rings in turn, on first use), so the
/// kernel's per-ring `uring_lock` is taken almost only by that thread: its submissions and the
/// task work that completes its ops. One shared ring serialised every send and receive of the
/// port behind that lock (`mutex_spin_on_owner` was 12-16 % of an echo server's CPU at 1,000
/// connections). The port stays one: one FIFO, one LIFO waiter stack, one concurrency limit;
/// its poller waits on every ring at once (an epoll set of the ring fds, level-triggered: a ring
/// is readable while its CQ holds entries or the kernel holds overflowed ones) and reaps them
/// all. With one ring the poller waits in `io_uring_enter` itself, as before.
///
/// Receives from a buffer pool run on ring 0, which holds the pools' buffer rings.
pub(crate) struct Driver<C> {
    rings: Vec<Ring<C>>,
    /// The rings' fds, when there is more than one.
    epfd: Option<std::os::fd::OwnedFd>,
    shut: Arc<AtomicBool>,
    waiting: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
}

/// Threads take rings in turn: the `n`th thread to start an op uses ring `n % rings`.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_NO: u64 = THREADS.fetch_add(1, Ordering::Relaxed);
}

impl<C: Send + 'static> Driver<C> {
    pub(crate) fn open(cfg: &PortConfig) -> io::Result<Self> {
        let n = cfg.rings.clamp(1, MAX_RINGS);
        let shut = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let rings = (0..n)
            .map(|i| Ring::open(cfg, i, waiting.clone(), ended.clone(), shut.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        let epfd = if n > 1 {
            let epfd = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)?;
            for (i, r) in rings.iter().enumerate() {
                // SAFETY: the ring's fd stays open for as long as the ring, which the driver
                // owns beside the epoll set (and drops after it: `rings` is declared first, but
                // an epoll set never touches a registered fd's number after the fd closes).
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(r.ring.as_raw_fd()) };
                rustix::event::epoll::add(
                    &epfd,
                    fd,
                    rustix::event::epoll::EventData::new_u64(i as u64),
                    rustix::event::epoll::EventFlags::IN,
                )?;
            }
            Some(epfd)
        } else {
            None
        };
        Ok(Driver { rings, epfd, shut, waiting, ended })
    }

    /// The ring an op starts on: the calling thread's; pooled receives on ring 0.
    fn ring_for(&self, op: &Op<C>) -> &Ring<C> {
        if self.rings.len() == 1 || op.kind.uses_ring_buffers() {
            return &self.rings[0];
        }
        let n = THREAD_NO.with(|n| *n);
        &self.rings[(n % self.rings.len() as u64) as usize]
    }

    pub(crate) fn buffer_pool(&self, port: u64, count: u16, size: usize) -> io::Result<BufferPool> {
        self.rings[0].buffer_pool(port, count, size)
    }

    pub(crate) fn register(&self, h: &Arc<HandleInner<C>>) -> io::Result<()> {
        self.rings[0].register(h)
    }

    pub(crate) fn submit(&self, op: Box<Op<C>>, defer: bool) -> Submitted<C> {
        self.ring_for(&op).submit(op, defer)
    }

    /// Submits the SQEs that `submit(.., true)` left in the rings.
    pub(crate) fn flush(&self) {
        for r in &self.rings {
            r.flush();
        }
    }

    pub(crate) fn wait(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion<C>>,
    ) -> io::Result<()> {
        let Some(epfd) = &self.epfd else { return self.rings[0].wait(timeout, out) };
        let mut timeout = timeout;
        for r in &self.rings {
            timeout = r.prepare_wait(timeout);
        }
        let res = if let Some(errno) = fault::hit(Point::Enter) {
            Err(io::Error::from_raw_os_error(errno))
        } else {
            use rustix::event::{Timespec as Ts, epoll};
            let mut events = [const { std::mem::MaybeUninit::<epoll::Event>::uninit() }; MAX_RINGS];
            let ts = timeout.map(|t| Ts {
                tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(t.subsec_nanos()) as _,
            });
            // Readiness is level-triggered: which rings are ready does not matter, all are
            // reaped below.
            epoll::wait(epfd, &mut events, ts.as_ref())
                .map(|(got, _)| got.len())
                .map_err(Into::into)
        };
        wait_result(res)?;
        for r in &self.rings {
            if r.needs_flush() {
                // Post the overflowed CQEs (or flagged task work) into the CQ.
                wait_result(r.wait_only(Some(Duration::ZERO)))?;
            }
            r.reap(out);
        }
        Ok(())
    }

    /// Wakes the poller: a NOP on ring 0, whose CQE ends a wait on it (or makes its fd
    /// readable in the epoll set).
    pub(crate) fn kick(&self) {
        self.rings[0].kick();
    }

    /// Cancels the pending operations of `h` (all, or the one with id `target`): ops the kernel
    /// has get an `ASYNC_CANCEL`, the others are aborted here. Each completes once, reporting
    /// `reason` if it was aborted (or its normal result if it won the race). Returns how many.
    pub(crate) fn cancel(
        &self,
        h: &Arc<HandleInner<C>>,
        target: Option<OpId>,
        reason: i32,
        out: &mut Vec<Completion<C>>,
    ) -> usize {
        let matches = |op: &Op<C>| target.is_none_or(|t| op.id == t);
        // Every ring's `sq` lock, in ring order (the one order any thread takes more than one
        // in), then the handle's: a start racing with this cancel on any ring either put its
        // token in the handle before, or sees the handle closed after.
        let mut sqs: Vec<MutexGuard<'_, Sq<C>>> = self.rings.iter().map(Ring::sq).collect();
        let (tokens, queued) = {
            let mut io = h.io();
            let queued = io.take_matching(matches);
            (io.tokens(), queued)
        };
        let mut n = queued.len();
        let backlogs: Vec<usize> = sqs.iter().map(|sq| sq.backlog.len()).collect();
        let mut touched = vec![false; self.rings.len()];
        // Ended before they stop waiting (as in `finish`).
        self.ended.fetch_add(queued.len() as u64, Ordering::Relaxed);
        self.waiting.fetch_sub(queued.len() as u64, Ordering::Relaxed);
        for mut op in queued {
            op.cancel_reason = reason_code(reason);
            out.push(op.abort());
        }
        for token in tokens.into_iter().map(Token) {
            let i = token.ring();
            let (ring, sq) = (&self.rings[i], &mut *sqs[i]);
            let Some(slot) = sq.slot(token) else { continue };
            let op = slot.op.as_mut().expect("invariant: slot() only returns occupied slots");
            if !matches(op) {
                continue;
            }
            if op.cancel_reason == 0 {
                op.cancel_reason = reason_code(reason);
            }
            n += 1;
            touched[i] = true;
            if slot.in_kernel {
                ring.issue_cancel(sq, token);
            } else {
                // Backlogged, never seen by the kernel: abort it here.
                sq.backlog.retain(|b| !matches!(b, Backlogged::Op(t) if *t == token));
                out.push(ring.finish(sq, token, Status::CANCELED));
            }
        }
        let backlogged = sqs.iter().zip(&backlogs).any(|(sq, b)| sq.backlog.len() > *b);
        drop(sqs);
        for (ring, touched) in self.rings.iter().zip(touched) {
            if touched {
                ring.enter();
            }
        }
        if backlogged {
            self.kick(); // the poller retries the backlog: wake it
        }
        n
    }

    pub(crate) fn close_handle(&self, h: &Arc<HandleInner<C>>, out: &mut Vec<Completion<C>>) {
        self.cancel(h, None, libc::ECANCELED, out);
    }

    /// Port close: every ring cancels everything, reaps for up to a second, and leaks (never
    /// frees) what the kernel still holds after that.
    pub(crate) fn shutdown(&self) {
        if self.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        for r in &self.rings {
            r.shutdown();
        }
        // What the shutdown reaped was dropped, never settled.
        self.ended.store(0, Ordering::Relaxed);
    }

    /// The port has queued (or handed on, or dropped at its close) `n` completions this driver
    /// pushed to an `out` that ended operations: they are no longer in flight.
    pub(crate) fn settle(&self, n: usize) {
        super::settle_count(&self.ended, n);
    }

    pub(crate) fn stats(&self) -> DriverStats {
        let mut total =
            DriverStats { in_flight: self.waiting.load(Ordering::Relaxed), ..Default::default() };
        for r in &self.rings {
            let s = r.stats();
            total.in_flight += s.in_flight;
            total.sq_full += s.sq_full;
            total.cq_overflow += s.cq_overflow;
            total.backlog += s.backlog;
            total.submitted += s.submitted;
            total.submit_enters += s.submit_enters;
        }
        // Read after the rings: an op that left its slot meanwhile was counted here first.
        total.in_flight += self.ended.load(Ordering::Relaxed);
        total
    }

    pub(crate) fn in_flight_by_kind(&self) -> crate::stats::InFlightByKind {
        let mut counts = crate::stats::InFlightByKind {
            waiting: self.waiting.load(Ordering::Relaxed),
            reaped: self.ended.load(Ordering::Relaxed),
            ..Default::default()
        };
        for r in &self.rings {
            r.count_in_flight(&mut counts);
        }
        counts
    }
}

/// The errors a wait shrugs off: a timeout, a signal, a kernel that is briefly out of room.
fn wait_result(res: io::Result<usize>) -> io::Result<()> {
    if let Err(e) = res {
        match e.raw_os_error() {
            Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
            Some(libc::EBADR) => {
                // The kernel could not allocate an overflow entry and dropped CQEs (counted in
                // `cq_overflow`); the CQEs it kept are still reaped.
                tracing::error!("io_uring dropped completions (out of kernel memory)");
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

impl<C> Drop for Ring<C> {
    fn drop(&mut self) {
        // `shutdown` needs `C: Send + 'static` bounds that Drop cannot name; the port always
        // calls it before the last reference goes. Anything still in the slab here is leaked.
        let sq = self.sq.get_mut();
        let mut n = 0;
        for slot in sq.slots.iter_mut() {
            if let Some(op) = slot.op.take()
                && slot.in_kernel
            {
                std::mem::forget(op);
                n += 1;
            }
        }
        if n > 0 {
            let pools = std::mem::take(self.pools.get_mut());
            std::mem::forget(pools);
            tracing::warn!(
                count = n,
                "io_uring driver dropped with ops in the kernel; leaked them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::fault::{self, Point};
    use crate::{BackendChoice, BackendKind, CompletionKey, CompletionPort, GetError};

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        (c, l.accept().expect("accept").0)
    }

    /// An SQE the kernel keeps refusing stays at the head of the backlog: the poller returns
    /// the completions it has (instead of spinning on the entry with the SQ and CQ locks held)
    /// and pushes the entry once the ring takes it.
    #[test]
    fn a_refused_sqe_waits_in_the_backlog_without_spinning() {
        if std::env::var("IOCP_BACKEND").is_ok_and(|v| v == "epoll") {
            eprintln!("SKIP io_uring: IOCP_BACKEND=epoll");
            return;
        }
        if crate::probe().kind() != BackendKind::Uring {
            assert!(
                !std::env::var("IOCP_REQUIRE_URING").is_ok_and(|v| v == "1"),
                "IOCP_REQUIRE_URING=1 but io_uring is unavailable"
            );
            eprintln!("SKIP io_uring: unavailable");
            return;
        }
        let (done, done_rx) = mpsc::channel();
        // The scenario runs on its own thread, which is also the port's poller: the refusal is
        // per thread. A spinning poller would never report back.
        std::thread::spawn(move || {
            let port = CompletionPort::<u32>::builder()
                .backend(BackendChoice::Uring)
                .build::<u32>()
                .expect("port");
            let (mut ca, sa) = pair();
            let (mut cb, sb) = pair();
            let ha = port.associate(sa, CompletionKey(1)).expect("associate");
            let hb = port.associate(sb, CompletionKey(2)).expect("associate");
            cb.write_all(b"b").expect("write");
            hb.recv(Vec::with_capacity(8), 2).expect("recv b");
            // This thread's SQE pushes fail, as a full SQ ring whose enter fails would.
            fault::fail_always(Point::SqPush, libc::EBUSY);
            ha.recv(Vec::with_capacity(8), 1).expect("recv a");
            assert_eq!(port.stats().backlog, 1);
            // b's completion arrives although a's SQE is still refused.
            let c = port.get(Some(Duration::from_secs(10))).expect("b completes");
            assert_eq!((*c.context(), c.result().ok()), (2, Some(1)));
            assert_eq!(port.stats().backlog, 1);
            fault::clear();
            ca.write_all(b"a").expect("write");
            let c = port.get(Some(Duration::from_secs(10))).expect("a completes");
            assert_eq!((*c.context(), c.result().ok()), (1, Some(1)));
            let s = port.stats();
            assert_eq!((s.backlog, s.in_flight), (0, 0));
            assert_eq!(port.get(Some(Duration::from_millis(50))).unwrap_err(), GetError::TimedOut);
            done.send(()).expect("report");
        });
        done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the poller returned (did not spin on a refused SQE) and the op completed");
    }
}
