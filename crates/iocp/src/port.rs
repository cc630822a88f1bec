//! The completion port: queue, waiters, concurrency, and the backend driver under them.

mod assoc;
pub(crate) mod state;
mod timers;

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{BackendChoice, BackendKind, BackendReport, PortConfig};
use crate::completion::{Completion, CompletionKey, OpId};
use crate::error::{GetError, PostError, SubmitError};
use crate::handle::Handle;
use crate::stats::PortStats;
use crate::sys::bufpool::BufferPool;
use crate::sys::op::HandleInner;
use crate::sys::op::{Op, OpKind};
use crate::sys::{Driver, Sink, Submitted};
use state::{State, Wake};
use timers::{NO_TIMER, Submit, Wheel};

/// What a completion hook ([`CompletionPort::on_complete`]) does with the completion it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queue the packet, as without a hook.
    Queue,
    /// Drop it: nobody dequeues this operation's completion (the hook consumed it).
    Drop,
}

/// The hook type stored in a port.
type Hook<C> = Box<dyn Fn(&mut Completion<C>) -> Delivery + Send + Sync>;

/// Configures and creates a [`CompletionPort`].
#[derive(Clone, Debug, Default)]
pub struct PortBuilder {
    cfg: PortConfig,
}

impl PortBuilder {
    /// A builder with the defaults: concurrency = CPUs, [`BackendChoice::Auto`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The most threads that may run packets from this port at once
    /// (`NumberOfConcurrentThreads`); 0, the default, means the number of CPUs.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.cfg.concurrency = n;
        self
    }

    /// Which backend to use (default [`BackendChoice::Auto`]).
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.cfg.backend = choice;
        self
    }

    /// io_uring submission queue entries (default 256, at most 32768).
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.cfg.ring_entries = n;
        self
    }

    /// io_uring completion queue entries (default 16 × `ring_entries`, at most 65536). It does
    /// not bound the operations in flight: completions beyond its room wait in the kernel until
    /// the poller reaps; a larger CQ only saves those round trips under bursts.
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cfg.cq_entries = Some(n);
        self
    }

    /// io_uring only: how many rings the port spreads its operations over (at most 64; 0 means
    /// one per thread of the concurrency limit). Each thread starts its operations on its own
    /// ring, so threads do not contend for one ring's kernel lock; the port's queue, wake-up
    /// order and concurrency limit stay one (see docs/DESIGN.md §5.3). The default, 1, shares one
    /// ring between all threads.
    pub fn rings(mut self, n: usize) -> Self {
        self.cfg.rings = n;
        self
    }

    /// epoll only: the most threads that run regular-file I/O (`read_at`, `write_at`) for this
    /// port (default 4). They start on demand and exit after 10 s idle.
    pub fn file_threads(mut self, n: usize) -> Self {
        self.cfg.file_threads = n;
        self
    }

    /// Creates the port.
    ///
    /// # Errors
    /// `Unsupported` when [`BackendChoice::Uring`] was required and io_uring is unavailable (the
    /// message says why); otherwise the setup syscall's error.
    pub fn build<C: Send + 'static>(mut self) -> io::Result<CompletionPort<C>> {
        let report = crate::sys::probe::choose(self.cfg.backend)?;
        let max = if self.cfg.concurrency == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.cfg.concurrency
        };
        if self.cfg.rings == 0 {
            self.cfg.rings = max;
        }
        let driver = Driver::open(report.kind(), &self.cfg)?;
        static NEXT_PORT: AtomicU64 = AtomicU64::new(1);
        let epoch = Instant::now();
        let inner = Arc::new(PortInner {
            id: NEXT_PORT.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(State::new(max)),
            closed: AtomicBool::new(false),
            driver,
            reaped: Mutex::new(Vec::new()),
            pools: Mutex::new(Vec::new()),
            timers: Mutex::new(Wheel::new(epoch)),
            epoch,
            last_poll: AtomicU64::new(0),
            timers_armed: AtomicUsize::new(0),
            queued_hint: AtomicUsize::new(0),
            next_op: AtomicU64::new(1),
            starts: AtomicU64::new(0),
            hook: OnceLock::new(),
            max,
            report,
        });
        let sink: Weak<dyn Sink<C>> = Arc::downgrade(&inner) as Weak<PortInner<C>>;
        inner.driver.set_sink(sink);
        Ok(CompletionPort { shared: Arc::new(PortRef { inner }) })
    }
}

/// A completion port (Windows IOCP semantics): I/O completions and posted packets land in one
/// FIFO queue that any thread may drain with [`get`](CompletionPort::get) or
/// [`get_many`](CompletionPort::get_many).
///
/// - Packets come out FIFO; blocked threads are released LIFO (the most recent waiter first).
/// - At most `concurrency` threads run packets at once. A thread counts as running from the
///   moment it receives a packet until it calls `get` again (or enters [`blocking`]); see
///   docs/DESIGN.md for how this differs from Windows, which also sees a thread block in any
///   syscall.
/// - Every operation started on an associated [`Handle`] yields exactly one packet, with its
///   context and buffers handed back whole.
///
/// `C` is the per-operation context type: the "extended OVERLAPPED". Clones share the port;
/// dropping the last clone closes it.
///
/// ```no_run
/// use std::time::Duration;
/// use iocp::{CompletionKey, CompletionPort};
///
/// let port: CompletionPort<&'static str> = CompletionPort::new()?;
/// port.post(7, CompletionKey(1), "hello")?;
/// let packet = port.get(Some(Duration::from_secs(1)))?;
/// assert_eq!((packet.key(), packet.bytes(), *packet.context()), (CompletionKey(1), 7, "hello"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CompletionPort<C: Send + 'static = ()> {
    shared: Arc<PortRef<C>>,
}

/// The user-facing reference count: when the last `CompletionPort` clone goes, the port closes
/// (Win32: closing the last port handle), even if handles still hold the inner state.
struct PortRef<C: Send + 'static> {
    inner: Arc<PortInner<C>>,
}

impl<C: Send + 'static> Drop for PortRef<C> {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl<C: Send + 'static> Clone for CompletionPort<C> {
    fn clone(&self) -> Self {
        CompletionPort { shared: self.shared.clone() }
    }
}

impl<C: Send + 'static> fmt::Debug for CompletionPort<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionPort")
            .field("backend", &self.shared.inner.report.kind())
            .field("concurrency", &self.shared.inner.max)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<C: Send + 'static> CompletionPort<C> {
    /// A port with default settings: concurrency = CPUs, backend chosen by the probe.
    ///
    /// # Errors
    /// As [`PortBuilder::build`].
    pub fn new() -> io::Result<Self> {
        PortBuilder::default().build()
    }

    /// Starts configuring a port.
    pub fn builder() -> PortBuilder {
        PortBuilder::default()
    }

    /// Which backend runs this port, and why.
    pub fn backend(&self) -> &BackendReport {
        &self.shared.inner.report
    }

    /// The concurrency limit in force.
    pub fn concurrency(&self) -> usize {
        self.shared.inner.max
    }

    /// Associates a socket with this port and `key` (CreateIoCompletionPort on an existing
    /// port). The port takes ownership of the fd.
    ///
    /// # Errors
    /// `InvalidInput` when the same socket (even through another fd: a `dup`) is already
    /// associated with a port (Win32 `ERROR_INVALID_PARAMETER`); `BrokenPipe` when the port is
    /// closed; or the registration syscall's error.
    pub fn associate(&self, fd: impl Into<OwnedFd>, key: CompletionKey) -> io::Result<Handle<C>> {
        if self.is_closed() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the completion port is closed"));
        }
        Handle::associate(&self.shared.inner, fd.into(), key)
    }

    /// Queues a user packet (PostQueuedCompletionStatus): it joins the same FIFO as I/O
    /// completions and comes back from `get` with these values and `Payload::Posted`.
    ///
    /// # Errors
    /// The port is closed; the context comes back.
    pub fn post(&self, bytes: usize, key: CompletionKey, context: C) -> Result<(), PostError<C>> {
        let inner = &self.shared.inner;
        let mut st = inner.lock();
        if st.is_closed() {
            return Err(PostError(context));
        }
        st.counts.posted += 1;
        let mut kick = false;
        st.push(Completion::posted(bytes, key, context), &mut |w| wake(w, &mut kick));
        inner.queued_hint.store(st.queued(), Ordering::Relaxed);
        drop(st);
        if kick {
            inner.driver.kick();
        }
        Ok(())
    }

    /// Dequeues one packet (GetQueuedCompletionStatus), waiting up to `timeout` (`None`: no
    /// limit; zero: just poll).
    ///
    /// # Errors
    /// [`GetError::TimedOut`], or [`GetError::Closed`] when the port is (or gets) closed. A
    /// packet already handed to this thread before a close is still returned.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Completion<C>, GetError> {
        let mut one = None;
        self.shared.inner.get_inner(timeout, 1, &mut |c| one = Some(c))?;
        Ok(one.expect("invariant: get_inner returned Ok with no packet"))
    }

    /// Dequeues up to `max` packets at once (GetQueuedCompletionStatusEx), appending them to
    /// `out` in queue order; waits up to `timeout` for the first. The batch counts as one running
    /// thread. Returns how many were appended (at least 1).
    ///
    /// # Errors
    /// As [`CompletionPort::get`]; `max == 0` is not an error but returns `Ok(0)` at once.
    pub fn get_many(
        &self,
        out: &mut Vec<Completion<C>>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, GetError> {
        if max == 0 {
            return Ok(0);
        }
        self.shared.inner.get_inner(timeout, max, &mut |c| out.push(c))
    }

    /// Closes the port: every blocked `get` returns [`GetError::Closed`] (except a thread that
    /// was already handed a packet: it gets the packet), later calls fail, queued packets are
    /// dropped, and pending operations are cancelled (their buffers are freed only once the
    /// kernel has let go of them). Idempotent.
    pub fn close(&self) {
        self.shared.inner.close();
    }

    /// True once the port is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.inner.closed.load(Ordering::Acquire)
    }

    /// Installs the port's completion hook: `hook` sees every I/O completion once, at the
    /// moment it leaves the kernel or the driver (in whichever thread reaps or produces it:
    /// a thread in [`get`](Self::get), [`reap`](Self::reap), a start or cancel call that
    /// completed at once, or the epoll file pool), before it is queued. It may read and change
    /// the completion (take its buffers, replace its context) and returns whether the packet
    /// is queued ([`Delivery::Queue`]) or dropped ([`Delivery::Drop`]: the operation's one
    /// completion was the hook's). Posted packets do not pass through it.
    ///
    /// This is the moment Windows writes an OVERLAPPED's status and signals its event, with no
    /// thread dequeuing (libiocp uses it for exactly that). The hook runs outside the port's
    /// locks but must not call [`get`](Self::get), [`get_many`](Self::get_many) or
    /// [`reap`](Self::reap) (it may be running inside one). A panic in it is raised to the
    /// caller after the completions are queued unchanged. One hook per port, installed before
    /// operations start.
    ///
    /// # Errors
    /// `AlreadyExists` when the port has a hook already.
    pub fn on_complete(
        &self,
        hook: impl Fn(&mut Completion<C>) -> Delivery + Send + Sync + 'static,
    ) -> io::Result<()> {
        self.shared.inner.hook.set(Box::new(hook)).map_err(|_| {
            io::Error::new(io::ErrorKind::AlreadyExists, "the port has a completion hook already")
        })
    }

    /// Polls the kernel for I/O completions without dequeuing any: if no thread is polling,
    /// waits up to `timeout` (`None`: until one arrives; zero: just look) and queues what it
    /// reaps (each through the [`on_complete`](Self::on_complete) hook), handing them to
    /// blocked [`get`](Self::get) callers as usual; deadlines due meanwhile fire. Returns how
    /// many I/O completions it reaped, or 0 at once when another thread is polling (it reaps
    /// for everyone) or the port is closed.
    ///
    /// For programs that must see operations finish while no thread waits in `get`: a
    /// `GetOverlappedResult(bWait = TRUE)`, a spin on `HasOverlappedIoCompleted`, an
    /// OVERLAPPED event. A thread calling it does not count as running on the port.
    pub fn reap(&self, timeout: Option<Duration>) -> usize {
        self.shared.inner.reap(timeout)
    }

    /// Creates a pool of `count` receive buffers of `size` bytes for this port (the Registered
    /// I/O analog), for [`Handle::recv_pooled`]: a receive takes a buffer only when data arrives,
    /// so idle connections pin none. On io_uring the buffers form a provided-buffer ring the
    /// kernel picks from; on epoll a free list. The pool lives as long as the port.
    ///
    /// # Errors
    /// `InvalidInput` unless `1 <= count <= 32768` and `size >= 1`; `BrokenPipe` when the port is
    /// closed; the registration's error.
    pub fn buffer_pool(&self, count: usize, size: usize) -> io::Result<BufferPool> {
        if self.is_closed() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the completion port is closed"));
        }
        let count = u16::try_from(count).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "at most 32768 buffers per pool")
        })?;
        let inner = &self.shared.inner;
        let pool = inner.driver.buffer_pool(inner.id, count, size)?;
        inner.pools.lock().push(pool.clone());
        Ok(pool)
    }

    /// The operations in flight now, by kind. It walks the driver's records (O(operations)
    /// under their locks, about 10 ns each): for a metrics scrape, not for the hot path.
    pub fn in_flight_by_kind(&self) -> crate::stats::InFlightByKind {
        self.shared.inner.driver.in_flight_by_kind()
    }

    /// Batches this thread's operation starts on this port: until the guard drops, operations
    /// started by this thread are queued for the kernel but not yet handed to it, and the drop
    /// hands them all over with one system call (on io_uring, one `io_uring_enter` for the
    /// batch instead of one per operation; any other thread entering the ring meanwhile may
    /// take them earlier). The epoll backend starts operations inline and ignores the batch.
    ///
    /// For a worker that handles a `get_many` batch of completions, each starting the next
    /// operation: wrap the handling loop in a batch. Do not block inside one (the batched
    /// operations would not start until the guard drops) and keep it on the thread that made
    /// it (the guard is not `Send`).
    ///
    /// ```no_run
    /// # let port: iocp::CompletionPort<()> = iocp::CompletionPort::new()?;
    /// let mut done = Vec::new();
    /// port.get_many(&mut done, 64, None)?;
    /// let batch = port.submit_batch();
    /// for c in done.drain(..) {
    ///     // handle c, starting the next receive or send...
    /// }
    /// drop(batch); // one system call starts them all
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_batch(&self) -> SubmitBatch<'_, C> {
        let previous = BATCH.with(|b| b.replace(self.shared.inner.id));
        SubmitBatch { port: self, previous, _not_send: PhantomData }
    }

    /// Whether the port has nothing left for its threads: no operation in flight (an
    /// operation counts until its completion is queued, so one a poller has reaped and holds
    /// counts too), no packet queued or handed to a waiter, no thread running a packet it
    /// dequeued, and no operation started while this looked. What the port's own threads
    /// start is seen (they start it while counted as running); a thread outside them that
    /// starts operations must have stopped first. For a graceful stop: `Pool::stop` waits on
    /// it.
    pub fn is_idle(&self) -> bool {
        let inner = &self.shared.inner;
        let started = inner.starts.load(Ordering::Acquire);
        // The start counter, the driver's count, the queue (as in `stats`), the start counter
        // again. A start bumps the counter (Release) after the driver counted it: seen at the
        // first read, its count is visible to the second; made after it by a handler, the
        // lock orders it before the handler stops running, so the last read sees it.
        if inner.driver.stats().in_flight != 0 {
            return false;
        }
        {
            let st = inner.lock();
            if st.queued() != 0 || st.running() != 0 || st.waiters_handed() != 0 {
                return false;
            }
        }
        inner.starts.load(Ordering::Acquire) == started
    }

    /// Counters: packets posted and dequeued, operations in flight, waiters, SQ-full events,
    /// CQ overflows (which must stay 0).
    pub fn stats(&self) -> PortStats {
        let inner = &self.shared.inner;
        // The driver's count first, the queue after: an operation moves from one to the other
        // (counted in flight until it is queued), so read in that order it is never missed.
        let d = inner.driver.stats();
        let (queued, waiters, running, posted, dequeued, io_completions) = {
            let st = inner.lock();
            let c = &st.counts;
            (
                st.queued() as u64,
                st.waiters() as u64,
                st.running() as u64,
                c.posted,
                c.dequeued,
                c.io_completions,
            )
        };
        let (pool_buffers, pool_lent) = inner
            .pools
            .lock()
            .iter()
            .fold((0, 0), |(n, l), p| (n + p.count() as u64, l + p.lent() as u64));
        PortStats {
            posted,
            dequeued,
            io_completions,
            queued,
            waiters,
            running,
            in_flight: d.in_flight,
            backlog: d.backlog,
            sq_full: d.sq_full,
            cq_overflow: d.cq_overflow,
            submitted: d.submitted,
            submit_enters: d.submit_enters,
            pool_buffers,
            pool_lent,
        }
    }
}

/// A section in which the current thread blocks outside the port: while the guard lives, the
/// thread does not count against its port's concurrency limit, so another waiter may be released
/// (Windows does this by itself when an associated thread blocks in any wait; Linux gives no such
/// hook, so the thread says so). Returned by [`blocking`].
#[must_use = "the thread counts as blocked only while the guard lives"]
pub struct BlockingGuard {
    port: Option<Arc<dyn assoc::Accounting>>,
}

impl fmt::Debug for BlockingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingGuard").field("active", &self.port.is_some()).finish()
    }
}

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.port.take() {
            assoc::unblock(p);
        }
    }
}

/// Declares that the current thread is about to block (on a lock, a sleep, a blocking syscall)
/// while handling a packet. Until the guard drops, it does not count as running on the port it
/// last dequeued from, so the port may release another waiter (conformance case 40). When the
/// guard drops, the thread counts again, and the running count may briefly exceed the limit, as
/// on Windows. A no-op on a thread that is not running a packet.
pub fn blocking() -> BlockingGuard {
    BlockingGuard { port: assoc::block() }
}

thread_local! {
    /// The port whose submissions this thread defers (a live [`SubmitBatch`]); 0 for none.
    static BATCH: Cell<u64> = const { Cell::new(0) };
}

/// Batches the submissions a thread makes on one port; see [`CompletionPort::submit_batch`].
#[must_use = "the batch is submitted when the guard drops"]
pub struct SubmitBatch<'a, C: Send + 'static> {
    port: &'a CompletionPort<C>,
    previous: u64,
    /// The batch belongs to the thread-local state of the thread that made it.
    _not_send: PhantomData<*const ()>,
}

impl<C: Send + 'static> std::fmt::Debug for SubmitBatch<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitBatch").field("port", &self.port.shared.inner.id).finish()
    }
}

impl<C: Send + 'static> Drop for SubmitBatch<'_, C> {
    fn drop(&mut self) {
        BATCH.with(|b| b.set(self.previous));
        self.port.shared.inner.driver.flush();
    }
}

pub(crate) struct PortInner<C: Send + 'static> {
    pub(crate) id: u64,
    state: Mutex<State<Completion<C>, Arc<Condvar>>>,
    closed: AtomicBool,
    pub(crate) driver: Driver<C>,
    /// The buffer pools made for this port (they live as long as it), for the stats.
    pools: Mutex<Vec<BufferPool>>,
    /// The poller's scratch vector (one poller at a time).
    reaped: Mutex<Vec<Completion<C>>>,
    next_op: AtomicU64,
    /// Operations handed to the driver so far (bumped after `submit` returns; `is_idle`).
    starts: AtomicU64,
    max: usize,
    report: BackendReport,
    /// Operation deadlines: expiry cancels the op, which then completes with `ETIMEDOUT`.
    timers: Mutex<Wheel<Weak<HandleInner<C>>>>,
    /// Deadlines in the wheel (read without its lock: most ops have none).
    timers_armed: AtomicUsize,
    /// The queue length as of the last push (a hint for spinning waiters; exact under the lock).
    queued_hint: AtomicUsize,
    /// `last_poll` counts nanoseconds from here.
    epoch: Instant,
    /// When the last kernel poll ended: with [`POLL_INTERVAL`], the time bound on how long
    /// packets taken from the queue may keep the kernel unpolled.
    last_poll: AtomicU64,
    /// The completion hook ([`CompletionPort::on_complete`]), if any.
    hook: OnceLock<Hook<C>>,
}

/// While nobody polls the kernel, a thread that takes packets polls it (without blocking)
/// once this long has passed since the last poll, or once `state::POLL_EVERY` packets went out:
/// whichever comes first. Re-posted work can then delay I/O completions and deadlines by about
/// this much, never starve them.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

thread_local! {
    static SIGNAL: Arc<Condvar> = Arc::new(Condvar::new());
}

fn wake(w: Wake<'_, Arc<Condvar>>, kick: &mut bool) {
    match w {
        Wake::Signal(cv) => {
            cv.notify_one();
        }
        Wake::Kick => *kick = true,
    }
}

impl<C: Send + 'static> Sink<C> for PortInner<C> {
    /// A completion made off the poller (the epoll file pool).
    fn deliver_one(&self, c: Completion<C>) {
        self.deliver(std::iter::once(c));
    }
}

impl<C: Send + 'static> assoc::Accounting for PortInner<C> {
    fn leave(&self) {
        let mut st = self.lock();
        st.leave_running();
        let mut kick = false;
        st.dispatch(false, &mut |w| wake(w, &mut kick));
        drop(st);
        if kick {
            self.driver.kick();
        }
    }

    fn rejoin(&self) {
        self.lock().join_running();
    }
}

impl<C: Send + 'static> PortInner<C> {
    fn lock(&self) -> MutexGuard<'_, State<Completion<C>, Arc<Condvar>>> {
        self.state.lock()
    }

    fn as_accounting(self: &Arc<Self>) -> Arc<dyn assoc::Accounting> {
        self.clone()
    }

    pub(crate) fn register(&self, h: &Arc<HandleInner<C>>) -> io::Result<()> {
        self.driver.register(h)
    }

    pub(crate) fn start(
        &self,
        h: &Arc<HandleInner<C>>,
        kind: OpKind,
        context: C,
        timeout: Option<Duration>,
    ) -> Result<OpId, SubmitError<C>> {
        if self.closed.load(Ordering::Acquire) {
            let error = io::Error::new(io::ErrorKind::BrokenPipe, "the completion port is closed");
            return Err(SubmitError { error, context, payload: kind.into_unstarted_payload() });
        }
        let id = OpId(self.next_op.fetch_add(1, Ordering::Relaxed));
        let mut op = Op::new(id, h.clone(), context, kind);
        // A deadline too far away to represent is no deadline.
        if let Some(at) = timeout.and_then(|t| Instant::now().checked_add(t)) {
            op.timer = self.arm_timer(at, id, h);
        }
        let timer = op.timer;
        let timed = timer != NO_TIMER;
        let defer = BATCH.with(Cell::get) == self.id;
        let submitted = self.driver.submit(op, defer);
        // Counted once the driver has it (in flight, or queued if done inline): `is_idle`
        // reads this around its look.
        self.starts.fetch_add(1, Ordering::Release);
        // Done inline: `deliver` disarms it. Refused: disarmed below.
        if timed && matches!(submitted, Submitted::Pending | Submitted::Packets(_)) {
            self.timer_submitted(timer, id, h);
        }
        // Done inside its start: the driver never counted it in flight, nothing to settle.
        match submitted {
            Submitted::Pending => Ok(id),
            Submitted::Done(mut c) => {
                c.settles = false;
                self.deliver(std::iter::once(c));
                Ok(id)
            }
            Submitted::Packets(mut cs) => {
                cs.iter_mut().for_each(|c| c.settles = false);
                self.deliver(cs);
                // A context's `Clone` that panicked while the driver accepted: raised now that
                // the packets it made are queued.
                crate::sys::op::resume_user_panic();
                Ok(id)
            }
            Submitted::Refused(error, op) => {
                if timed {
                    self.timers.lock().disarm(timer, id);
                    self.note_timers(None);
                }
                let Op { context, kind, .. } = *op;
                Err(SubmitError { error, context, payload: kind.into_unstarted_payload() })
            }
        }
    }

    /// Cancels the pending operations of `h` (one, or all); each completes once with `reason`
    /// unless it finished first. Returns how many were asked to stop.
    pub(crate) fn cancel(
        &self,
        h: &Arc<HandleInner<C>>,
        target: Option<OpId>,
        reason: i32,
    ) -> usize {
        let mut out = Vec::new();
        let n = self.driver.cancel(h, target, reason, &mut out);
        if !out.is_empty() {
            self.deliver(out);
        }
        n
    }

    /// Arms op `id`'s deadline; returns its place in the wheel (the op carries it back).
    fn arm_timer(&self, at: Instant, id: OpId, h: &Arc<HandleInner<C>>) -> u32 {
        let (timer, earlier) = {
            let mut w = self.timers.lock();
            let r = w.arm(at, id, Arc::downgrade(h));
            self.timers_armed.store(w.len(), Ordering::Release);
            r
        };
        // A poller blocked with a later (or no) timeout must recompute it.
        if earlier && self.lock().is_polling() {
            self.driver.kick();
        }
        timer
    }

    /// Publishes the wheel's size (after a change made under its lock, passed in, or not).
    fn note_timers(&self, w: Option<&Wheel<Weak<HandleInner<C>>>>) {
        let len = match w {
            Some(w) => w.len(),
            None => self.timers.lock().len(),
        };
        self.timers_armed.store(len, Ordering::Release);
    }

    /// The driver took timed op `id`: from now on its expiry cancels it. If it expired while
    /// it was being submitted, cancel it now (it completes with `ETIMEDOUT`, or normally if it
    /// finished first).
    fn timer_submitted(&self, timer: u32, id: OpId, h: &Arc<HandleInner<C>>) {
        let expired = {
            let mut w = self.timers.lock();
            let r = w.submitted(timer, id);
            self.note_timers(Some(&w));
            r == Submit::Expired
        };
        if expired {
            self.cancel(h, Some(id), libc::ETIMEDOUT);
        }
    }

    /// Disarms the deadlines of operations that completed.
    fn disarm_completed<'a>(&self, cs: impl Iterator<Item = &'a Completion<C>>) {
        if self.timers_armed.load(Ordering::Acquire) == 0 {
            return;
        }
        // No allocation: lock the wheel at the first timed completion, if any.
        let mut timers = None;
        for c in cs.filter(|c| c.timer != NO_TIMER) {
            let w = timers.get_or_insert_with(|| self.timers.lock());
            w.disarm(c.timer, c.op);
        }
        if let Some(w) = timers {
            self.note_timers(Some(&w));
        }
    }

    /// When the poller must next wake for the deadlines, if any.
    fn next_timer(&self) -> Option<Instant> {
        if self.timers_armed.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.timers.lock().next_deadline()
    }

    /// Cancels the operations whose deadline has passed; they complete with `ETIMEDOUT`.
    fn fire_timers(&self) {
        if self.timers_armed.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut expired = Vec::new();
        {
            let mut w = self.timers.lock();
            w.expire(Instant::now(), &mut expired);
            self.note_timers(Some(&w));
        }
        for (id, h) in expired {
            if let Some(h) = h.upgrade() {
                self.cancel(&h, Some(id), libc::ETIMEDOUT);
            }
        }
    }

    /// Queues I/O completions produced outside the poller (inline successes, aborts).
    fn deliver(&self, cs: impl IntoIterator<Item = Completion<C>>) {
        let mut cs: Vec<Completion<C>> = cs.into_iter().collect();
        let finals = finals(&cs);
        self.disarm_completed(cs.iter());
        // A panicking hook leaves the rest of the batch unhooked; it is queued all the same,
        // and the panic raised once it is.
        let hooked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_hook(&mut cs)));
        let dropped = *hooked.as_ref().unwrap_or(&0);
        let mut st = self.lock();
        if st.is_closed() {
            drop(st);
            self.driver.settle(finals);
            // Dropped outside the lock: a context may own a Handle whose drop takes locks.
            drop(cs);
        } else {
            let mut kick = false;
            st.counts.io_completions += dropped;
            for c in cs {
                st.counts.io_completions += 1;
                st.push(c, &mut |w| wake(w, &mut kick));
            }
            self.queued_hint.store(st.queued(), Ordering::Relaxed);
            // Queued first, settled after, under the lock: never counted in neither place,
            // and settled before a waiter woken for them can look.
            self.driver.settle(finals);
            drop(st);
            if kick {
                self.driver.kick();
            }
        }
        if let Err(payload) = hooked {
            std::panic::resume_unwind(payload);
        }
    }

    /// Passes each completion through the hook, if there is one; removes those it drops and
    /// returns how many.
    fn run_hook(&self, cs: &mut Vec<Completion<C>>) -> u64 {
        let Some(hook) = self.hook.get() else { return 0 };
        let before = cs.len();
        cs.retain_mut(|c| hook(c) == Delivery::Queue);
        (before - cs.len()) as u64
    }

    /// [`CompletionPort::reap`]: one kernel poll, for nobody in particular.
    fn reap(&self, timeout: Option<Duration>) -> usize {
        let mut st = self.lock();
        if st.is_closed() || st.is_polling() {
            return 0;
        }
        let id = st.add_waiter(SIGNAL.with(Arc::clone), true);
        drop(st);
        let mut reaped = self.reaped.lock();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let wake_at = match (deadline, self.next_timer()) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (None, Some(t)) => Some(t),
            (d, None) => d,
        };
        let left = match timeout {
            Some(t) if t.is_zero() => Some(Duration::ZERO),
            _ => wake_at.map(|d| d.saturating_duration_since(Instant::now())),
        };
        let (mut dropped, mut ended) = (0, 0);
        // As in `get`: no panic may leave the port with nobody polling.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.poll_driver(left, &mut reaped, &mut ended);
            self.disarm_completed(reaped.iter());
            dropped = self.run_hook(&mut reaped);
            self.fire_timers();
        }));
        self.last_poll.store(self.since_epoch(), Ordering::Relaxed);
        let late: Vec<Completion<C>> = reaped.drain(..).collect();
        drop(reaped);
        let n = late.len() + dropped as usize;
        // Queue what was reaped, give back a packet handed to us meanwhile, and promote a
        // waiter to poll in our place.
        self.abandon_poll(id, late, dropped, ended);
        if let Err(payload) = polled {
            std::panic::resume_unwind(payload);
        }
        n
    }

    pub(crate) fn close_handle(&self, h: &Arc<HandleInner<C>>) {
        if h.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut out = Vec::new();
        self.driver.close_handle(h, &mut out);
        // Closed and out of the driver's tables: no operation can start on it any more, so
        // its socket may be associated again now (a reference a driver or a poller still
        // holds would otherwise keep the claim for a moment, and a re-association would
        // fail by chance).
        h.release_claim();
        if !out.is_empty() {
            self.deliver(out);
        }
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut kick = false;
        let dropped = {
            let mut st = self.lock();
            st.close(&mut |w| wake(w, &mut kick))
        };
        if kick {
            self.driver.kick();
        }
        drop(dropped);
        self.driver.shutdown();
    }

    fn get_inner(
        self: &Arc<Self>,
        timeout: Option<Duration>,
        max: usize,
        out: &mut impl FnMut(Completion<C>),
    ) -> Result<usize, GetError> {
        // A timeout too long to represent as an instant is no timeout (`Duration::MAX`).
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let was_running = assoc::enter(self.id, || self.as_accounting());
        let mut st = self.lock();
        if was_running {
            st.leave_running();
        }
        let mut may_spin = timeout != Some(Duration::ZERO);
        loop {
            if st.is_closed() {
                drop(st);
                assoc::end(self.id);
                return Err(GetError::Closed);
            }
            // Re-posted work must not keep the kernel unpolled: past the bound, poll it first
            // (without blocking), then take.
            let due = st.queued() > 0 && (st.poll_due() || self.poll_overdue(&st));
            if !due {
                let n = st.take(max, out);
                if n > 0 {
                    return Ok(self.got(st, n, false));
                }
            }
            if !due && may_spin && st.running() < self.max {
                // Before sleeping (a futex or a kernel wait, and a wake-up syscall for whoever
                // posts next), watch the queue for a moment: under load the next packet is
                // usually microseconds away. Once per call.
                may_spin = false;
                drop(st);
                spin_until(|| self.queued_hint.load(Ordering::Relaxed) > 0);
                st = self.lock();
                continue;
            }
            if !st.is_polling() {
                // Become the poller: wait in the kernel for I/O completions (or a kick).
                let signal = SIGNAL.with(Arc::clone);
                let id = st.add_waiter(signal, true);
                drop(st);
                let mut reaped = self.reaped.lock();
                let wake_at = match (deadline, self.next_timer()) {
                    (Some(d), Some(t)) => Some(d.min(t)),
                    (d, t) => d.or(t),
                };
                let left = if due {
                    Some(Duration::ZERO)
                } else {
                    wake_at.map(|d| d.saturating_duration_since(Instant::now()))
                };
                // No panic in the poll path (a driver bug, a context's `Clone` or `Drop`) may
                // leave the port with `polling` set and nobody polling: on unwind, hand the
                // polling on and queue what was reaped, then let the panic go on.
                // What the driver reaped stays counted in flight until it is queued (or
                // dropped): `ended` of them end an operation, settled then.
                let (mut dropped, mut ended) = (0, 0);
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.poll_driver(left, &mut reaped, &mut ended);
                    self.disarm_completed(reaped.iter());
                    dropped = self.run_hook(&mut reaped);
                    self.fire_timers();
                    crate::sys::fault::reaped(reaped.len());
                }));
                self.last_poll.store(self.since_epoch(), Ordering::Relaxed);
                if let Err(payload) = polled {
                    let late: Vec<Completion<C>> = reaped.drain(..).collect();
                    drop(reaped);
                    self.abandon_poll(id, late, dropped, ended);
                    assoc::end(self.id);
                    std::panic::resume_unwind(payload);
                }
                st = self.lock();
                st.end_polling(id);
                if st.is_closed() {
                    // Closed while we were in the kernel: a packet handed to us before the close
                    // is still ours (case 9); what we reaped after it (the shutdown's aborts) is
                    // dropped, like everything queued at the close, outside both locks.
                    let n = st.take_handed(id, max - 1, out);
                    if n > 0 {
                        // Dropped after `got` has let the state lock go (a context may own a
                        // `Handle`, whose drop takes it).
                        let _late: Vec<Completion<C>> = reaped.drain(..).collect();
                        self.driver.settle(ended);
                        return Ok(self.got(st, n, true));
                    }
                    drop(st);
                    self.drop_reaped(reaped, ended);
                    st = self.lock();
                    continue;
                }
                let batch = reaped.len();
                st.counts.io_completions += batch as u64 + dropped;
                st.extend(reaped.drain(..));
                crate::spare::vec(&mut reaped, batch);
                drop(reaped);
                // Queued under the lock we hold: a stats reader (the driver's count first,
                // then this lock) sees them in one place or both, never in neither.
                self.driver.settle(ended);
                let n = st.take_handed(id, max - 1, out);
                if n > 0 {
                    return Ok(self.got(st, n, true));
                }
                let n = st.take(max, out);
                if n > 0 {
                    return Ok(self.got(st, n, true));
                }
                // Hand what we cannot take to others. If we poll again ourselves, nobody needs
                // promoting; if we time out, the most recent waiter must take over the polling.
                let expired = deadline.is_some_and(|d| Instant::now() >= d);
                let mut kick = false;
                st.dispatch(expired, &mut |w| wake(w, &mut kick));
                debug_assert!(!kick, "no poller to kick while we were the poller");
                if st.is_closed() {
                    continue;
                }
                if expired {
                    return Err(self.timed_out(st));
                }
                continue;
            }
            // Someone else polls: park until handed a packet, promoted, closed, or timed out.
            let signal = SIGNAL.with(Arc::clone);
            let id = st.add_waiter(signal.clone(), false);
            loop {
                match deadline {
                    None => signal.wait(&mut st),
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        let _ = signal.wait_for(&mut st, left);
                    }
                }
                let n = st.take_handed(id, max - 1, out);
                if n > 0 {
                    return Ok(self.got(st, n, false));
                }
                if !st.is_waiting(id) {
                    break; // promoted to poller, or the port closed: re-evaluate
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    st.remove_waiter(id);
                    return Err(self.timed_out(st));
                }
            }
        }
    }

    /// One driver wait into `reaped`; `ended` is set to how many of the reaped completions
    /// end an operation (to settle once they are queued) even when the wait unwinds (a user
    /// `Clone` that panicked in a repeating accept is raised at the wait's end, after the
    /// driver reaped the rest of its batch).
    fn poll_driver(
        &self,
        left: Option<Duration>,
        reaped: &mut Vec<Completion<C>>,
        ended: &mut usize,
    ) {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.driver.wait(left, reaped)
        }));
        *ended = finals(reaped);
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("completion port wait failed: {e}"),
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }

    /// Drops what a poller reaped after the port closed (outside every lock: a context may own
    /// a `Handle`, whose drop takes locks) and settles the `ended` operations among it.
    fn drop_reaped(&self, mut reaped: MutexGuard<'_, Vec<Completion<C>>>, ended: usize) {
        let late: Vec<Completion<C>> = reaped.drain(..).collect();
        drop(reaped);
        self.driver.settle(ended);
        drop(late);
    }

    /// Nanoseconds since the port was made (for `last_poll`).
    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// True when nobody polls and the last poll ended more than [`POLL_INTERVAL`] ago.
    fn poll_overdue(&self, st: &State<Completion<C>, Arc<Condvar>>) -> bool {
        !st.is_polling()
            && self.since_epoch().saturating_sub(self.last_poll.load(Ordering::Relaxed))
                > POLL_INTERVAL.as_nanos() as u64
    }

    /// The poller `id` unwound out of the poll path (or was [`reap`](Self::reap)): give back
    /// what it was handed, queue what it reaped (`late`; `dropped` more went to the hook), and
    /// promote another waiter to poll.
    fn abandon_poll(
        &self,
        id: state::WaiterId,
        late: Vec<Completion<C>>,
        dropped: u64,
        ended: usize,
    ) {
        self.disarm_completed(late.iter());
        let mut st = self.lock();
        let orphan = st.abandon_poll(id);
        let mut kick = false;
        if st.is_closed() {
            drop(st);
            self.driver.settle(ended);
            drop((orphan, late));
            return;
        }
        st.counts.io_completions += late.len() as u64 + dropped;
        st.extend(late);
        // Queued, then settled under the lock, before a waiter woken for them can look.
        self.driver.settle(ended);
        st.dispatch(true, &mut |w| wake(w, &mut kick));
        self.queued_hint.store(st.queued(), Ordering::Relaxed);
        drop(st);
        if kick {
            self.driver.kick();
        }
    }

    /// Bookkeeping for a `get` that returns `n` packets; `was_poller` promotes another waiter to
    /// poll the kernel in our place.
    fn got(
        &self,
        mut st: MutexGuard<'_, State<Completion<C>, Arc<Condvar>>>,
        n: usize,
        was_poller: bool,
    ) -> usize {
        let mut kick = false;
        if was_poller {
            st.dispatch(true, &mut |w| wake(w, &mut kick));
        }
        st.counts.dequeued += n as u64;
        drop(st);
        if kick {
            self.driver.kick();
        }
        assoc::set_running(self.id);
        n
    }

    /// A thread leaving `get` on a timeout counts as running again (ReactOS `KeRemoveQueue`).
    fn timed_out(&self, mut st: MutexGuard<'_, State<Completion<C>, Arc<Condvar>>>) -> GetError {
        st.join_running();
        drop(st);
        assoc::set_running(self.id);
        GetError::TimedOut
    }
}

/// How many of `cs` end an operation the driver counts in flight (see `Completion::settles`).
fn finals<C>(cs: &[Completion<C>]) -> usize {
    cs.iter().filter(|c| c.settles).count()
}

/// Spins briefly (exponential `spin_loop`, then a few yields: a few microseconds) until `ready`.
fn spin_until(ready: impl Fn() -> bool) {
    for step in 0..10u32 {
        if ready() {
            return;
        }
        if step < 6 {
            for _ in 0..(1u32 << step) {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<CompletionPort<()>>();
    is::<Handle<()>>();
    is::<BackendKind>();
    is::<BackendChoice>();
}
