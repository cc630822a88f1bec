//! The epoll backend: a proactor emulated on readiness.
//!
//! Every handle is registered once, edge-triggered, for both directions. An operation first
//! tries its syscall at once (non-blocking) when nothing is queued ahead of it on the same side
//! of the handle; if the kernel says "would block", it waits in that side's FIFO queue, and the
//! poller makes the syscall again when the edge arrives. Queue access and syscall attempts happen
//! under the handle's lock, so an edge that arrives between a failed attempt and the queueing is
//! never lost.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::op::{Op, Progress, reason_code};
use super::{DriverStats, Sink, Submitted, closed_error, timeout_ms};
use crate::backend::PortConfig;
use crate::chunks::ChunkVec;
use crate::completion::{Completion, OpId, Status};
use crate::sys::op::Side;
use crate::sys::op::{HandleInner, HandleIo};

const KICK: u64 = u64::MAX;
const EVENTS: usize = 256;

enum Entry<C> {
    Handle(Arc<HandleInner<C>>),
    /// An accept waiting for its accepted socket to become readable (initial receive).
    Parked(Box<Op<C>>),
}

struct Slot<C> {
    generation: u32,
    entry: Option<Entry<C>>,
}

struct Slab<C> {
    slots: ChunkVec<Slot<C>>,
    free: Vec<u32>,
}

impl<C> Slab<C> {
    fn insert(&mut self, entry: Entry<C>) -> u64 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => self.slots.push_with(|| Slot { generation: 0, entry: None }) as u32,
        };
        let slot = &mut self.slots[idx as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.entry = Some(entry);
        (u64::from(slot.generation) << 32) | u64::from(idx)
    }

    fn slot(&mut self, token: u64) -> Option<&mut Slot<C>> {
        let idx = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        self.slots.get_mut(idx).filter(|s| s.generation == generation && s.entry.is_some())
    }

    fn remove(&mut self, token: u64) -> Option<Entry<C>> {
        let entry = self.slot(token)?.entry.take();
        self.free.push((token & 0xffff_ffff) as u32);
        entry
    }
}

pub(crate) struct Driver<C: Send + 'static> {
    epfd: OwnedFd,
    eventfd: OwnedFd,
    slab: Mutex<Slab<C>>,
    events: Mutex<Vec<libc::epoll_event>>,
    in_flight: Arc<AtomicU64>,
    files: FilePool<C>,
    /// The port is closing: `shutdown` sets it before it drains each handle (under the
    /// handle's lock), so a start that raced the close is refused instead of queued for ever.
    shut: AtomicBool,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

impl<C: Send + 'static> Driver<C> {
    pub(crate) fn open(cfg: &PortConfig) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `epfd` is a new fd that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: plain syscall; the result is checked and owned below.
        let efd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `efd` is a new fd that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let d = Driver {
            epfd,
            eventfd,
            slab: Mutex::new(Slab { slots: ChunkVec::new(), free: Vec::new() }),
            events: Mutex::new(Vec::with_capacity(EVENTS)),
            in_flight: Arc::new(AtomicU64::new(0)),
            files: FilePool::new(cfg.file_threads),
            shut: AtomicBool::new(false),
        };
        d.ctl(libc::EPOLL_CTL_ADD, d.eventfd.as_raw_fd(), libc::EPOLLIN | libc::EPOLLET, KICK)?;
        Ok(d)
    }

    fn slab(&self) -> MutexGuard<'_, Slab<C>> {
        self.slab.lock()
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: libc::c_int, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: events as u32, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    pub(crate) fn buffer_pool(
        &self,
        port: u64,
        count: u16,
        size: usize,
    ) -> io::Result<super::bufpool::BufferPool> {
        super::bufpool::BufferPool::new(port, count, size, 0, false)
    }

    /// Where the file pool delivers completions.
    pub(crate) fn set_sink(&self, sink: Weak<dyn Sink<C>>) {
        let _ = self.files.sink.set(sink);
    }

    pub(crate) fn register(&self, h: &Arc<HandleInner<C>>) -> io::Result<()> {
        if h.is_file {
            return Ok(()); // not pollable: its I/O runs on the file pool
        }
        rustix::io::ioctl_fionbio(&h.fd, true)?;
        if is_tcp(h.fd.as_fd()) {
            h.io().set_tcp();
        }
        let token = self.slab().insert(Entry::Handle(h.clone()));
        h.token.store(token, Ordering::Release);
        let events =
            libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, h.fd.as_raw_fd(), events, token) {
            self.slab().remove(token);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn submit(&self, mut op: Box<Op<C>>) -> Submitted<C> {
        let h = op.handle.clone();
        let mut io = h.io();
        if h.is_closed() || self.shut.load(Ordering::Acquire) {
            return Submitted::Refused(closed_error(), op);
        }
        if op.kind.is_file_io() {
            drop(io);
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return match self.files.push(op, &self.in_flight) {
                Ok(()) => Submitted::Pending,
                Err(op) => {
                    self.in_flight.fetch_sub(1, Ordering::Relaxed);
                    Submitted::Refused(closed_error(), op)
                }
            };
        }
        let side = op.kind.ready_side();
        if op.kind.is_multishot() {
            let clone = io.clone_ctx().expect("invariant: accept_multi sets clone_ctx");
            let mut out = Vec::new();
            let waiting = !io.is_empty(side);
            if waiting {
                io.push_back(side, op);
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                return Submitted::Pending;
            }
            match op.accept_many(clone, &mut out) {
                Progress::Done(status) => out.push(op.complete(status)),
                _ => {
                    io.push_back(side, op);
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Submitted::Packets(out);
        }
        // A read-side op on a handle known to hold nothing waits for the next readable event
        // without trying its syscall (which would fail with EAGAIN): a request/response
        // connection's next receive, started right after its reply, usually would.
        let read = side == Side::Read;
        if io.is_empty(side) && !(read && io.read_idle() && op.waits_readable()) {
            let progress = op.try_io();
            if read {
                io.note_read(matches!(progress, Progress::Again), op.short_read());
            }
            match progress {
                Progress::Done(status) => return Submitted::Done(op.complete(status)),
                Progress::Again => {}
                Progress::AgainOnAccepted => {
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                    return match self.park(&mut io, op) {
                        Ok(()) => Submitted::Pending,
                        Err(c) => {
                            self.in_flight.fetch_sub(1, Ordering::Relaxed);
                            Submitted::Done(*c)
                        }
                    };
                }
            }
        }
        io.push_back(side, op);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Submitted::Pending
    }

    /// Registers an accept's accepted socket so that the op resumes when it is readable. On
    /// failure the op completes with the error. The caller holds the listener's lock (`io`)
    /// from before the op left its queue (or its previous parking): a cancel, which looks for
    /// parked ops under that lock, can never miss it in between.
    fn park(&self, io: &mut HandleIo<C>, op: Box<Op<C>>) -> Result<(), Box<Completion<C>>> {
        let Some(fd) = op.accepted_fd() else {
            return Err(Box::new(op.complete(Status::from_errno(libc::EINVAL))));
        };
        if op.handle.is_closed() || self.shut.load(Ordering::Acquire) {
            return Err(Box::new(op.abort()));
        }
        let token = self.slab().insert(Entry::Parked(op));
        if let Err(e) = self.ctl(
            libc::EPOLL_CTL_ADD,
            fd,
            libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET,
            token,
        ) {
            let status = Status::from_errno(e.raw_os_error().unwrap_or(libc::EIO));
            return match self.slab().remove(token) {
                Some(Entry::Parked(op)) => Err(Box::new(op.complete(status))),
                _ => Ok(()),
            };
        }
        io.push_token(token);
        Ok(())
    }

    /// Takes a parked accept out (exactly one caller wins) and unregisters its socket. The
    /// caller holds the listener's lock (`io`).
    fn unpark(&self, io: &mut HandleIo<C>, token: u64) -> Option<Box<Op<C>>> {
        let Some(Entry::Parked(op)) = self.slab().remove(token) else {
            return None;
        };
        if let Some(fd) = op.accepted_fd() {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
        }
        io.remove_token(token);
        Some(op)
    }

    pub(crate) fn wait(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion<C>>,
    ) -> io::Result<()> {
        let mut events = self.events.lock();
        events.clear();
        // SAFETY: the kernel writes at most `EVENTS` entries into the spare capacity, which
        // holds at least that many; the count it returns is used to set the length below.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                timeout_ms(timeout),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        // SAFETY: `epoll_wait` initialised the first `n <= EVENTS` entries.
        unsafe { events.set_len(n as usize) };
        for ev in events.iter() {
            let (token, flags) = (ev.u64, ev.events as libc::c_int);
            if token == KICK {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.eventfd, &mut buf);
                continue;
            }
            let (h, parked) = {
                let mut slab = self.slab();
                match slab.slot(token).and_then(|s| s.entry.as_ref()) {
                    Some(Entry::Handle(h)) => (h.clone(), false),
                    Some(Entry::Parked(op)) => (op.handle.clone(), true),
                    None => continue,
                }
            };
            if !parked {
                self.ready(&h, flags, out);
                continue;
            }
            // Out of the slab, tried, and parked again under one hold of the listener's lock.
            let mut io = h.io();
            if let Some(mut op) = self.unpark(&mut io, token) {
                // A completion pushed to `out` stays counted in flight until the port has
                // queued it and settles it (`settle`).
                match op.try_io() {
                    Progress::Done(status) => out.push(op.complete(status)),
                    _ => {
                        if let Err(c) = self.park(&mut io, op) {
                            out.push(*c);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the queued operations of `h` that readiness `flags` may unblock, in FIFO order.
    fn ready(&self, h: &Arc<HandleInner<C>>, flags: libc::c_int, out: &mut Vec<Completion<C>>) {
        let mut parked = Vec::new();
        let mut io = h.io();
        let any = libc::EPOLLHUP | libc::EPOLLERR;
        if flags & (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLRDHUP | any) != 0 {
            // The peer's end, a hang-up, an error or urgent data: short reads prove nothing
            // from now on (DESIGN.md §3.6.1).
            io.note_readable(flags & (libc::EPOLLPRI | libc::EPOLLRDHUP | any) != 0);
            self.run_queue(&mut io, Side::Read, out, &mut parked);
        }
        if flags & (libc::EPOLLOUT | any) != 0 {
            self.run_queue(&mut io, Side::Write, out, &mut parked);
        }
        // Parked before the lock goes: a cancel never finds such an accept in no place.
        for op in parked {
            if let Err(c) = self.park(&mut io, op) {
                out.push(*c);
            }
        }
    }

    fn run_queue(
        &self,
        io: &mut HandleIo<C>,
        side: Side,
        out: &mut Vec<Completion<C>>,
        parked: &mut Vec<Box<Op<C>>>,
    ) {
        let clone = io.clone_ctx();
        while let Some(op) = io.front_mut(side) {
            let progress = match (&op.kind, clone) {
                (k, Some(clone)) if k.is_multishot() => op.accept_many(clone, out),
                _ => op.on_ready(),
            };
            if side == Side::Read {
                let short = op.short_read();
                io.note_read(matches!(progress, Progress::Again), short);
            }
            match progress {
                Progress::Again => break,
                Progress::Done(status) => {
                    let op = pop(io, side);
                    out.push(op.complete(status));
                }
                Progress::AgainOnAccepted => parked.push(pop(io, side)),
            }
        }
    }

    pub(crate) fn kick(&self) {
        let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
    }

    /// Aborts the pending operations of `h` (all of them, or the one with id `target`), each
    /// completing once with `reason` and the bytes it had moved. Returns how many.
    pub(crate) fn cancel(
        &self,
        h: &Arc<HandleInner<C>>,
        target: Option<OpId>,
        reason: i32,
        out: &mut Vec<Completion<C>>,
    ) -> usize {
        let matches = |op: &Op<C>| target.is_none_or(|t| op.id == t);
        let mut ops = {
            let mut io = h.io();
            let mut ops = io.take_matching(matches);
            // Parked accepts are taken under the same lock that every parking holds.
            for t in io.tokens() {
                let wanted = match self.slab().slot(t).and_then(|s| s.entry.as_ref()) {
                    Some(Entry::Parked(op)) => matches(op),
                    _ => false,
                };
                if wanted && let Some(op) = self.unpark(&mut io, t) {
                    ops.push(op);
                }
            }
            ops
        };
        let mut n = 0;
        ops.extend(self.files.take_matching(h, target));
        for mut op in ops {
            op.cancel_reason = reason_code(reason);
            out.push(op.abort());
            n += 1;
        }
        n
    }

    /// The port has queued (or handed on, or dropped at its close) `n` completions this driver
    /// pushed to an `out` (or its file pool's sink) that ended operations: they are no longer in
    /// flight.
    pub(crate) fn settle(&self, n: usize) {
        super::settle_count(&self.in_flight, n);
    }

    pub(crate) fn close_handle(&self, h: &Arc<HandleInner<C>>, out: &mut Vec<Completion<C>>) {
        self.cancel(h, None, libc::ECANCELED, out);
        let token = h.token.load(Ordering::Acquire);
        let _ = self.ctl(libc::EPOLL_CTL_DEL, h.fd.as_raw_fd(), 0, 0);
        self.slab().remove(token);
    }

    pub(crate) fn shutdown(&self) {
        self.shut.store(true, Ordering::Release);
        // Nothing is in the kernel between syscalls: queued operations are plain memory. Take
        // the registrations and the queued ops out under the locks, and drop them after: an
        // op's context may own a `Handle`, whose drop takes these locks again.
        let entries: Vec<Entry<C>> = {
            let mut slab = self.slab();
            slab.free.clear();
            slab.slots.take_all().into_iter().filter_map(|s| s.entry).collect()
        };
        let mut ops = Vec::new();
        for e in &entries {
            if let Entry::Handle(h) = e {
                let mut io = h.io();
                ops.extend(io.drain_all());
                io.clear_tokens();
            }
        }
        ops.extend(self.files.shutdown());
        self.in_flight.store(0, Ordering::Relaxed);
        drop(ops);
        drop(entries);
    }

    pub(crate) fn stats(&self) -> DriverStats {
        DriverStats { in_flight: self.in_flight.load(Ordering::Relaxed), ..DriverStats::default() }
    }

    /// Walks the registered handles' queues and the parked accepts; the rest of the in-flight
    /// count is file I/O on the file pool.
    pub(crate) fn in_flight_by_kind(&self) -> crate::stats::InFlightByKind {
        let mut counts = crate::stats::InFlightByKind::default();
        let handles: Vec<Arc<HandleInner<C>>> = {
            let slab = self.slab();
            let mut handles = Vec::new();
            for slot in slab.slots.iter() {
                match &slot.entry {
                    Some(Entry::Handle(h)) => handles.push(h.clone()),
                    Some(Entry::Parked(op)) => op.kind.count_in(&mut counts),
                    None => {}
                }
            }
            handles
        };
        // Outside the slab lock (the lock order is a handle's io, then the slab).
        for h in handles {
            for op in h.io().ops() {
                op.kind.count_in(&mut counts);
            }
        }
        counts.file += self.files.count();
        // The rest of the in-flight count: completions a poller (or a file worker) has taken
        // and not yet queued on the port, which settles them once queued.
        let walked = counts.total();
        counts.reaped = self.in_flight.load(Ordering::Relaxed).saturating_sub(walked);
        counts
    }
}

/// A TCP socket: a receive that returns less than it asked for has drained it (epoll(7), Q9).
/// Only TCP: a Unix stream socket's receive stops short at a message carrying descriptors or
/// credentials, SCTP's at each message, and a datagram says nothing of the next one; those
/// (and every non-socket) keep the `EAGAIN` rule only. (TCP urgent data also stops a receive
/// short: `EPOLLPRI` reports it, and turns the short-read rule off, see `ready`.)
fn is_tcp(fd: BorrowedFd<'_>) -> bool {
    socket2::SockRef::from(&fd).protocol().is_ok_and(|p| p == Some(socket2::Protocol::TCP))
}

fn pop<C>(io: &mut HandleIo<C>, side: Side) -> Box<Op<C>> {
    io.pop_front(side).expect("invariant: front_mut just returned an element")
}

/// epoll cannot wait for regular files (they are always "ready", and a read may block on the
/// disk), so file I/O runs here: at most `max` threads, started on demand, each making the
/// blocking `pread`/`pwritev2` and delivering the completion through the port like any other.
/// Queued ops can be cancelled; a running one finishes (file I/O takes bounded time).
struct FilePool<C: Send + 'static> {
    shared: Arc<PoolShared<C>>,
    sink: Arc<OnceLock<Weak<dyn Sink<C>>>>,
    max: usize,
}

struct PoolShared<C> {
    state: Mutex<PoolState<C>>,
    work: Condvar,
    /// Ops a worker took from the queue and has not completed yet.
    running: AtomicU64,
}

struct PoolState<C> {
    queue: VecDeque<Box<Op<C>>>,
    threads: usize,
    idle: usize,
    stop: bool,
}

impl<C: Send + 'static> FilePool<C> {
    fn new(max: usize) -> Self {
        FilePool {
            shared: Arc::new(PoolShared {
                state: Mutex::new(PoolState {
                    queue: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    stop: false,
                }),
                work: Condvar::new(),
                running: AtomicU64::new(0),
            }),
            sink: Arc::new(OnceLock::new()),
            max: max.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState<C>> {
        self.shared.state.lock()
    }

    /// Queues a file op; a stopped pool (the port is closing) hands it back.
    fn push(&self, op: Box<Op<C>>, in_flight: &Arc<AtomicU64>) -> Result<(), Box<Op<C>>> {
        let mut st = self.state();
        if st.stop {
            return Err(op);
        }
        st.queue.push_back(op);
        if st.idle == 0 && st.threads < self.max {
            st.threads += 1;
            let (shared, sink, in_flight) =
                (self.shared.clone(), self.sink.clone(), in_flight.clone());
            let spawned = std::thread::Builder::new()
                .name("iocp-file".into())
                .spawn(move || file_worker(&shared, &sink, &in_flight));
            if let Err(e) = spawned {
                st.threads -= 1;
                tracing::error!("cannot start a file I/O thread: {e}");
            }
        } else {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    fn take_matching(&self, h: &Arc<HandleInner<C>>, target: Option<OpId>) -> Vec<Box<Op<C>>> {
        let mut st = self.state();
        let (take, keep): (Vec<_>, Vec<_>) = st
            .queue
            .drain(..)
            .partition(|op| Arc::ptr_eq(&op.handle, h) && target.is_none_or(|t| op.id == t));
        st.queue = keep.into();
        take
    }

    /// File ops queued or running (for `in_flight_by_kind`).
    fn count(&self) -> u64 {
        let queued = self.state().queue.len() as u64;
        queued + self.shared.running.load(Ordering::Relaxed)
    }

    fn shutdown(&self) -> Vec<Box<Op<C>>> {
        let mut st = self.state();
        st.stop = true;
        self.shared.work.notify_all();
        st.queue.drain(..).collect()
    }
}

impl<C: Send + 'static> Drop for FilePool<C> {
    fn drop(&mut self) {
        let ops = self.shutdown();
        drop(ops);
    }
}

fn file_worker<C: Send + 'static>(
    shared: &PoolShared<C>,
    sink: &OnceLock<Weak<dyn Sink<C>>>,
    in_flight: &AtomicU64,
) {
    let idle_limit = Duration::from_secs(10);
    loop {
        let op = {
            let mut st = shared.state.lock();
            loop {
                if st.stop {
                    st.threads -= 1;
                    return;
                }
                if let Some(op) = st.queue.pop_front() {
                    shared.running.fetch_add(1, Ordering::Relaxed);
                    break op;
                }
                st.idle += 1;
                let timeout = shared.work.wait_for(&mut st, idle_limit);
                st.idle -= 1;
                if timeout.timed_out() && st.queue.is_empty() {
                    st.threads -= 1;
                    return;
                }
            }
        };
        let mut op = op;
        let status = loop {
            match op.try_io() {
                Progress::Done(status) => break status,
                // A regular file never says "would block"; if something else does, wait a bit.
                _ => std::thread::yield_now(),
            }
        };
        let completion = op.complete(status);
        // Reaped from here on, until the port has queued and settled it.
        shared.running.fetch_sub(1, Ordering::Relaxed);
        // The port settles it once queued; without a port nobody will.
        match sink.get().and_then(Weak::upgrade) {
            Some(sink) => sink.deliver_one(completion),
            None => {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(completion);
            }
        }
    }
}
