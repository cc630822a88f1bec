//! The push path: a connection that keeps its receive posted while other connections' messages
//! are sent to it (full duplex), for services such as chat where output is not an answer to
//! the connection's own input.
//!
//! A service opts in with [`Service::push`](super::Service::push). Each of its connections
//! then gets an [`Outbox`]: a bounded queue of shared buffers ([`Bytes`]: a message fanned out
//! to a room is one allocation, referenced by every member's queue) and a cheap, cloneable
//! handle that any thread may push to. At most one send is in flight per connection, beside
//! the connection's one receive. The design is in docs/DESIGN.md ("The push path").
//!
//! Ownership: the connection's state ([`Conn`]) still travels with its receive (or its
//! lingering read). The outgoing side is a [`PushConn`], shared by the outbox handles and the
//! send in flight (whose context is [`Ctx::Push`]). "Sending" is a token: whoever holds it
//! (a posted kick packet or the send in flight) drains the queue; a push that finds the token
//! free takes it and starts the send (on a pool worker) or posts a kick (on any other thread).
//! When the receiving side ends gracefully (the service said [`Next::Close`](super::Next) or
//! the peer closed) while a send is in flight, the connection is parked in the
//! [`PushConn`] and the token holder finishes it once the queue has drained.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use iocp::{Handle, Payload};
use parking_lot::Mutex;

use super::{CloseReason, Conn, Ctx, PUSH_CLOSE_KEY, PUSH_KEY, Service, Shared, bump, timed_out};

thread_local! {
    /// This thread is a worker of a push-mode server: it may start operations directly.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a server worker (operations started here do not interrupt a
/// foreign thread's blocking calls with io_uring task work).
pub(super) fn mark_worker() {
    ON_WORKER.with(|w| w.set(true));
}

fn on_worker() -> bool {
    ON_WORKER.with(Cell::get)
}

/// Distinct ids for outboxes across every server in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What happens when a connection's outgoing queue is full (the peer does not read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Close the connection (counted in [`ServerStats::slow_drops`](super::ServerStats)).
    Drop,
    /// Discard the oldest queued buffers until the new one fits (each counted in
    /// [`ServerStats::push_skipped`](super::ServerStats)); the connection stays.
    KeepNewest,
}

/// The bounds of a push-mode connection's outgoing queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushConfig {
    /// Buffers queued per connection (not counting the send in flight).
    pub max_messages: usize,
    /// Bytes queued per connection (not counting the send in flight).
    pub max_bytes: usize,
    /// What a full queue does.
    pub policy: SlowPolicy,
    /// Queued buffers are gathered into one send up to this many bytes.
    pub max_batch: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_messages: 1024,
            max_bytes: 1024 * 1024,
            policy: SlowPolicy::Drop,
            max_batch: 64 * 1024,
        }
    }
}

/// A [`PushConfig`] as each connection keeps it: 16 bytes, not 32 (the counts and sizes as
/// `u32`, a bound above 4 GiB held as 4 GiB: no queue gets near it).
#[derive(Clone, Copy)]
struct Limits {
    max_messages: u32,
    max_bytes: u32,
    max_batch: u32,
    policy: SlowPolicy,
}

impl Limits {
    fn new(cfg: PushConfig) -> Self {
        let cut = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Limits {
            max_messages: cut(cfg.max_messages),
            max_bytes: cut(cfg.max_bytes),
            max_batch: cut(cfg.max_batch),
            policy: cfg.policy,
        }
    }

    fn max_messages(&self) -> usize {
        self.max_messages as usize
    }

    fn max_bytes(&self) -> usize {
        self.max_bytes as usize
    }

    fn max_batch(&self) -> usize {
        self.max_batch as usize
    }
}

/// Why a push was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closed, closing, or the outbox is detached.
    Closed,
    /// The queue was full: the connection is being dropped ([`SlowPolicy::Drop`]), or the
    /// buffer alone is larger than the queue may hold.
    Full,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PushError::Closed => "connection closed",
            PushError::Full => "outgoing queue full",
        })
    }
}

impl std::error::Error for PushError {}

/// The type-erased outgoing side of a connection.
trait Target: Send + Sync {
    fn push(&self, buf: Bytes, last: bool) -> Result<(), PushError>;
    fn is_open(&self) -> bool;
    fn queued_bytes(&self) -> usize;
}

/// A connection's outgoing queue: cheap to clone, usable from any thread. Buffers pushed are
/// sent in order, each whole (a buffer is never interleaved with another), after whatever is
/// in flight.
#[derive(Clone)]
pub struct Outbox {
    id: u64,
    target: Option<Arc<dyn Target>>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").field("id", &self.id).field("open", &self.is_open()).finish()
    }
}

impl Outbox {
    /// An outbox attached to no connection: every push fails with [`PushError::Closed`].
    pub fn detached() -> Outbox {
        Outbox { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), target: None }
    }

    /// A process-wide unique id of this connection's outbox (equal for clones).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `buf` to be sent.
    ///
    /// # Errors
    /// [`PushError::Closed`] when the connection is closed or closing;
    /// [`PushError::Full`] when the queue is full and the policy drops the connection.
    pub fn push(&self, buf: Bytes) -> Result<(), PushError> {
        match &self.target {
            Some(t) => t.push(buf, false),
            None => Err(PushError::Closed),
        }
    }

    /// Queues `buf` as the last thing sent: later pushes fail, and once the queue has drained
    /// the connection closes gracefully (its sending side is shut, the rest of its input is
    /// read and discarded for the server's linger time). An empty `buf` just closes.
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub fn push_last(&self, buf: Bytes) -> Result<(), PushError> {
        match &self.target {
            Some(t) => t.push(buf, true),
            None => Err(PushError::Closed),
        }
    }

    /// Whether pushes are accepted.
    pub fn is_open(&self) -> bool {
        self.target.as_ref().is_some_and(|t| t.is_open())
    }

    /// Bytes queued and not yet handed to a send.
    pub fn queued_bytes(&self) -> usize {
        self.target.as_ref().map_or(0, |t| t.queued_bytes())
    }
}

/// How a connection parked for the drain is finished.
#[derive(Clone, Copy, Debug)]
pub(super) enum Finish {
    /// The service closed it: shut the sending side and linger.
    Linger,
    /// The receiving side ended: close with this reason.
    Close(CloseReason),
}

/// A connection's queued buffers, in order. The first is held inline: a connection that has
/// at most one buffer waiting behind its send in flight (a member told its welcome and then
/// its room listing, a chat client between messages) never allocates queue storage; the
/// `VecDeque` (144 bytes of heap for its first four) is made only when two or more wait,
/// and given back when they have been taken, unless it grew past [`SMALL_SPILL`].
/// (Boxed, so that a connection that never spills pays 8 bytes for it, not 32.)
#[derive(Default)]
struct OutQueue {
    /// The oldest buffer; `None` only when `rest` is empty too.
    head: Option<Bytes>,
    // Boxed on purpose: 8 bytes in every connection rather than 32, for storage that most
    // never have (and that is given back when drained).
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
}

/// The largest spill deque (in buffers) given back when it drains.
const SMALL_SPILL: usize = 8;

impl OutQueue {
    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    fn front(&self) -> Option<&Bytes> {
        self.head.as_ref()
    }

    fn push_back(&mut self, buf: Bytes) {
        if self.head.is_none() {
            self.head = Some(buf);
        } else {
            self.rest.get_or_insert_default().push_back(buf);
        }
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        let first = self.head.take();
        if let Some(r) = &mut self.rest {
            self.head = r.pop_front();
            if r.is_empty() && r.capacity() <= SMALL_SPILL {
                // Drained after a small burst (a new WebSocket's handshake, welcome and
                // listing queue up together): give the storage back, so that an idle
                // connection holds none. A deque that grew past that is kept: a connection
                // that queued more will again, and freeing and regrowing it at every drained
                // batch cost a saturated 5,000-member room 60 % of its deliveries (the
                // allocations of many KiB go to the one shared arena, under its lock).
                self.rest = None;
            }
        }
        first
    }

    fn clear(&mut self) {
        self.head = None;
        if let Some(r) = &mut self.rest {
            r.clear();
        }
    }
}

struct OutState<S: Service> {
    queue: OutQueue,
    bytes: usize,
    /// The drain token is taken (a kick is posted or a send is in flight).
    sending: bool,
    /// No more pushes; finish the connection once drained.
    closing: bool,
    /// The connection is gone (or going): nothing more is sent.
    dead: bool,
    /// Dropped for not reading (the reader's abort is then counted as such).
    slow: bool,
    /// The connection, waiting for the queue to drain.
    parked: Option<(Box<Conn<S>>, Finish)>,
    /// A send failed on a pusher's stack: the parked connection is closed with this reason by
    /// the packet posted for it.
    failed: Option<CloseReason>,
}

/// The outgoing side of one push-mode connection.
pub(super) struct PushConn<S: Service> {
    me: Weak<PushConn<S>>,
    shared: Weak<Shared<S>>,
    handle: Handle<Ctx<S>>,
    id: u64,
    cfg: Limits,
    /// Bytes sent (added to the server's count when the connection closes).
    sent: AtomicU64,
    st: Mutex<OutState<S>>,
}

impl<S: Service> PushConn<S> {
    pub(super) fn new(
        shared: Weak<Shared<S>>,
        handle: Handle<Ctx<S>>,
        cfg: PushConfig,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| PushConn {
            me: me.clone(),
            shared,
            handle,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cfg: Limits::new(cfg),
            sent: AtomicU64::new(0),
            st: Mutex::new(OutState {
                queue: OutQueue::default(),
                bytes: 0,
                sending: false,
                closing: false,
                dead: false,
                slow: false,
                parked: None,
                failed: None,
            }),
        })
    }

    pub(super) fn outbox(self: &Arc<Self>) -> Outbox {
        let target: Arc<dyn Target> = self.clone();
        Outbox { id: self.id, target: Some(target) }
    }

    /// Queues a connection's own output (an answer to its input).
    pub(super) fn queue_private(&self, out: Vec<u8>) -> Result<(), PushError> {
        Target::push(self, Bytes::from(out), false)
    }

    /// Bytes sent so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the connection was dropped for not reading.
    pub(super) fn dropped_slow(&self) -> bool {
        self.st.lock().slow
    }

    /// The connection closed: nothing more is queued or sent.
    pub(super) fn retire(&self) {
        let mut st = self.st.lock();
        st.dead = true;
        st.queue.clear();
        st.bytes = 0;
    }

    /// The receiving side is done (`finish` says how to end). Returns the connection when
    /// nothing is being sent (the caller finishes it now); else parks it for the drain.
    pub(super) fn park(&self, conn: Box<Conn<S>>, finish: Finish) -> Option<Box<Conn<S>>> {
        let mut st = self.st.lock();
        st.closing = true;
        if st.sending && !st.dead {
            st.parked = Some((conn, finish));
            None
        } else {
            Some(conn)
        }
    }

    /// A send failed where the parked connection cannot be finished (see
    /// [`Shared::push_send`]): nothing more is sent, the socket is closed (which ends the
    /// receive), and the connection, if parked, is closed with `reason` by the packet.
    fn fail(&self, reason: CloseReason) {
        {
            let mut st = self.st.lock();
            st.dead = true;
            st.queue.clear();
            st.bytes = 0;
            st.failed = Some(reason);
        }
        self.close_socket();
    }

    /// Closes the socket, which ends the connection's receive. A connection paused by its
    /// service has no receive to end: a posted `PUSH_CLOSE_KEY` packet takes it out of the
    /// paused list and closes it on a worker's own stack (this may run inside a service's
    /// `push`, under the service's own locks, where its `on_close` must not be called).
    fn close_socket(&self) {
        self.handle.close();
        let (Some(shared), Some(me)) = (self.shared.upgrade(), self.me.upgrade()) else {
            return;
        };
        if shared.is_paused_push(self) {
            // A closed port (the server is stopping) refuses it: the stop closes what is paused.
            let _ = shared.port.post(0, PUSH_CLOSE_KEY, Ctx::Push(me));
        }
    }

    /// The port is closed: nothing more is sent; hands back a connection parked for the
    /// drain (no completion will ever finish it now).
    pub(super) fn take_parked(&self) -> Option<Box<Conn<S>>> {
        let mut st = self.st.lock();
        st.dead = true;
        st.sending = false;
        st.queue.clear();
        st.bytes = 0;
        st.parked.take().map(|(conn, _)| conn)
    }

    /// Closes the socket, from a worker or through one.
    fn abort(&self) {
        if on_worker() {
            self.close_socket();
        } else if let (Some(shared), Some(me)) = (self.shared.upgrade(), self.me.upgrade()) {
            if shared.port.post(0, PUSH_CLOSE_KEY, Ctx::Push(me)).is_err() {
                // The port is closed (the server is stopping): the stop closes what is paused.
                self.handle.close();
            }
        } else {
            self.handle.close();
        }
    }

    /// Whether the outgoing side has ended (failed, dropped as slow, or retired).
    pub(super) fn is_dead(&self) -> bool {
        self.st.lock().dead
    }

    /// Gives the drain token to a send (on a worker) or to a posted kick.
    fn kick(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let Some(shared) = self.shared.upgrade() else {
            self.st.lock().sending = false;
            return;
        };
        if on_worker() {
            shared.push_send(me, true);
        } else if let Err(e) = shared.port.post(0, PUSH_KEY, Ctx::Push(me)) {
            drop(e);
            let mut st = self.st.lock();
            st.sending = false;
            st.dead = true;
        }
    }
}

impl<S: Service> Target for PushConn<S> {
    fn push(&self, buf: Bytes, last: bool) -> Result<(), PushError> {
        let mut st = self.st.lock();
        if st.dead || st.closing {
            return Err(PushError::Closed);
        }
        let len = buf.len();
        if len > 0 {
            let full = |st: &OutState<S>| {
                st.queue.len() >= self.cfg.max_messages() || st.bytes + len > self.cfg.max_bytes()
            };
            if full(&st) {
                let can_skip = self.cfg.policy == SlowPolicy::KeepNewest
                    && len <= self.cfg.max_bytes()
                    && self.cfg.max_messages() > 0;
                if !can_skip {
                    st.dead = true;
                    st.slow = true;
                    st.queue.clear();
                    st.bytes = 0;
                    drop(st);
                    if let Some(shared) = self.shared.upgrade() {
                        bump(&shared.counters.slow_drops);
                    }
                    self.abort();
                    return Err(PushError::Full);
                }
                let mut skipped = 0;
                while full(&st) {
                    let Some(old) = st.queue.pop_front() else { break };
                    st.bytes -= old.len();
                    skipped += 1;
                }
                if let Some(shared) = self.shared.upgrade() {
                    shared.counters.push_skipped.fetch_add(skipped, Ordering::Relaxed);
                }
            }
            st.bytes += len;
            st.queue.push_back(buf);
        }
        if last {
            st.closing = true;
        }
        if st.sending {
            return Ok(());
        }
        st.sending = true;
        drop(st);
        self.kick();
        Ok(())
    }

    fn is_open(&self) -> bool {
        let st = self.st.lock();
        !st.dead && !st.closing
    }

    fn queued_bytes(&self) -> usize {
        self.st.lock().bytes
    }
}

impl<S: Service> Shared<S> {
    /// Holding the drain token: sends what is queued, or releases the token (and finishes a
    /// parked connection) when nothing is. `inline`: on the stack of the push that took the
    /// token (service code, maybe holding its own locks), where a parked connection must not
    /// be finished (that runs the service's `on_close`): a packet finishes it instead.
    pub(super) fn push_send(&self, pc: Arc<PushConn<S>>, inline: bool) {
        let mut st = pc.st.lock();
        if inline && st.parked.is_some() && (st.dead || st.queue.is_empty()) {
            drop(st);
            return self.finish_later(pc);
        }
        if st.dead || st.queue.is_empty() {
            st.sending = false;
            let parked = st.parked.take();
            let failed = st.failed.take();
            let dead = st.dead;
            let closing_unparked = st.closing && parked.is_none() && !dead;
            drop(st);
            if let Some((conn, finish)) = parked {
                match failed {
                    Some(reason) => self.close(conn, reason),
                    None => self.push_finish(conn, finish),
                }
            } else if closing_unparked {
                // The last buffer was pushed while the connection is still receiving: shut
                // our side so that the peer sees the end (its close then ends the receive).
                let _ = pc.handle.shutdown(std::net::Shutdown::Write);
            }
            return;
        }
        let mut buf;
        if st.queue.len() == 1 || st.queue.front().is_some_and(|b| b.len() >= pc.cfg.max_batch()) {
            let b = st.queue.pop_front().unwrap_or_default();
            st.bytes -= b.len();
            // Zero-copy when the buffer is not shared (a private reply).
            buf = Vec::from(b);
        } else {
            buf = Vec::with_capacity(st.bytes.min(pc.cfg.max_batch()));
            while let Some(b) = st.queue.front() {
                if !buf.is_empty() && buf.len() + b.len() > pc.cfg.max_batch() {
                    break;
                }
                buf.extend_from_slice(b);
                st.bytes -= b.len();
                st.queue.pop_front();
            }
        }
        drop(st);
        let handle = pc.handle.clone();
        let r = handle.with_timeout(self.cfg.write_timeout).send(buf, Ctx::Push(pc));
        if let Err(e) = r {
            let (_err, ctx, _) = e.into_parts();
            if let Ctx::Push(pc) = ctx {
                if inline {
                    pc.fail(CloseReason::Error);
                    self.finish_later(pc);
                } else {
                    self.push_failed(&pc, CloseReason::Error);
                }
            }
        }
    }

    /// A push send (or a posted kick or close) completed.
    pub(super) fn on_push(
        &self,
        pc: Arc<PushConn<S>>,
        key: iocp::CompletionKey,
        res: std::io::Result<usize>,
        payload: Payload,
    ) {
        if key == PUSH_CLOSE_KEY {
            // On this worker's own stack: a paused connection is closed here, at once.
            pc.handle.close();
            self.close_paused_push(&pc);
            return;
        }
        if key == PUSH_KEY {
            return self.push_send(pc, false);
        }
        drop(payload);
        match res {
            Ok(n) => {
                pc.sent.fetch_add(n as u64, Ordering::Relaxed);
                self.live.transferred(true, false, n);
                self.push_send(pc, false);
            }
            Err(e) => {
                let reason = if timed_out(&e) {
                    bump(&self.counters.write_timeouts);
                    CloseReason::Timeout
                } else {
                    let dead = pc.st.lock().dead;
                    if !dead && !self.stopping.load(Ordering::Relaxed) {
                        bump(&self.counters.io_errors);
                        tracing::debug!(error = %e, "push send failed");
                    }
                    CloseReason::Error
                };
                self.push_failed(&pc, reason);
            }
        }
    }

    /// Still holding the drain token, hands it to a posted packet, whose `push_send` then
    /// finishes a parked connection on a worker's own stack. If the port is closed (the server
    /// is stopping), the token is released and the stop's `close_parked` finishes it.
    fn finish_later(&self, pc: Arc<PushConn<S>>) {
        if let Err(e) = self.port.post(0, PUSH_KEY, Ctx::Push(pc.clone())) {
            drop(e);
            pc.st.lock().sending = false;
        }
    }

    /// The send side failed: nothing more is sent; the socket is closed (which ends the
    /// receive) and a parked connection is closed here.
    fn push_failed(&self, pc: &PushConn<S>, reason: CloseReason) {
        let parked = {
            let mut st = pc.st.lock();
            st.dead = true;
            st.sending = false;
            st.queue.clear();
            st.bytes = 0;
            st.parked.take()
        };
        // A send's completion, on a worker's own stack: a paused connection is closed here.
        pc.handle.close();
        self.close_paused_push(pc);
        if let Some((conn, _)) = parked {
            self.close(conn, reason);
        }
    }

    /// Finishes a connection whose queue has drained.
    pub(super) fn push_finish(&self, conn: Box<Conn<S>>, finish: Finish) {
        match finish {
            Finish::Linger => self.close_gracefully(conn),
            Finish::Close(reason) => self.close(conn, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The inline-first queue keeps the order, length and emptiness of a plain `VecDeque`
    /// through any mix of pushes, pops and clears, and allocates no storage while at most one
    /// buffer waits.
    #[test]
    fn the_out_queue_behaves_as_a_deque_and_allocates_only_for_a_second_buffer() {
        let mut q = OutQueue::default();
        let mut model = VecDeque::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..10_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 7 {
                0..=2 => {
                    let b = Bytes::from(i.to_le_bytes().to_vec());
                    q.push_back(b.clone());
                    model.push_back(b);
                }
                3..=5 => assert_eq!(q.pop_front(), model.pop_front()),
                _ if x.is_multiple_of(61) => {
                    q.clear();
                    model.clear();
                }
                _ => {}
            }
            assert_eq!(q.len(), model.len());
            assert_eq!(q.is_empty(), model.is_empty());
            assert_eq!(q.front(), model.front());
        }
        let mut one = OutQueue::default();
        for i in 0..100u8 {
            one.push_back(Bytes::from(vec![i]));
            assert_eq!(one.pop_front().unwrap()[0], i);
            assert!(one.rest.is_none(), "one buffer at a time needs no storage");
        }
        for i in 0..3u8 {
            one.push_back(Bytes::from(vec![i]));
        }
        assert!(one.rest.is_some());
        for i in 0..3u8 {
            assert_eq!(one.pop_front().unwrap()[0], i);
        }
        assert!(one.rest.is_none() && one.is_empty(), "a drained small queue keeps no storage");
        for i in 0..100u8 {
            one.push_back(Bytes::from(vec![i]));
        }
        while one.pop_front().is_some() {}
        assert!(one.rest.as_ref().is_some_and(|r| r.capacity() > SMALL_SPILL), "a big one stays");
    }
}
