//! Back-pressure on reading: connections that stop posting receives ([`Next::Pause`](super::Next::Pause)) until a
//! [`Resumer`] wakes them.
//!
//! A lost wake-up is the hazard: the service decides to pause (its queue is full), the queue
//! drains and `resume` runs before the connection is in the paused list. The resume epoch
//! closes it: `resume` bumps the epoch before looking at the list, every service callback
//! reads the epoch before it runs, and a connection that finds the epoch moved once it is in
//! the list posts the resume itself.

use std::fmt;
use std::sync::Weak;

use super::{
    Arc, AtomicU64, CloseReason, Conn, Ctx, Duration, Instant, Mutex, Ordering, Pending, PushConn,
    Server, Service, Shared,
};
use iocp::CompletionKey;

/// A posted packet asking a worker to resume the paused connections.
pub(super) const RESUME_KEY: CompletionKey = CompletionKey(18);

/// The paused connections (no operation pending) and the resume epoch.
pub(super) struct Paused<S: Service> {
    conns: Mutex<Vec<Box<Conn<S>>>>,
    epoch: AtomicU64,
}

impl<S: Service> Default for Paused<S> {
    fn default() -> Self {
        Paused { conns: Mutex::new(Vec::new()), epoch: AtomicU64::new(0) }
    }
}

impl<S: Service> Paused<S> {
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

/// Resumes a [`Server`]'s paused connections ([`Next::Pause`](super::Next::Pause)): each gets
/// [`Service::on_resume`] on a worker. Cheap to clone, callable from any thread; it does not
/// keep the server alive (after the server is gone it does nothing).
#[derive(Clone)]
pub struct Resumer {
    resume: Arc<dyn Fn() + Send + Sync>,
}

impl Resumer {
    /// Wakes every connection paused now or about to pause (a connection that decided to
    /// pause before this call and is not yet in the list is woken too).
    pub fn resume(&self) {
        (self.resume)();
    }

    /// A resumer that does nothing (for a service not yet attached to a server).
    pub fn none() -> Self {
        Resumer { resume: Arc::new(|| {}) }
    }
}

impl fmt::Debug for Resumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resumer").finish_non_exhaustive()
    }
}

impl Default for Resumer {
    fn default() -> Self {
        Resumer::none()
    }
}

impl<S: Service> Server<S> {
    /// A handle that resumes this server's paused connections (see [`Next::Pause`](super::Next::Pause)).
    pub fn resumer(&self) -> Resumer {
        let shared: Weak<Shared<S>> = Arc::downgrade(&self.shared);
        Resumer {
            resume: Arc::new(move || {
                if let Some(s) = shared.upgrade() {
                    s.request_resume();
                }
            }),
        }
    }
}

/// Whether `conn`'s outgoing side is `pc`.
fn is_of<S: Service>(conn: &Conn<S>, pc: &PushConn<S>) -> bool {
    conn.push.as_ref().is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), pc))
}

impl<S: Service> Shared<S> {
    fn request_resume(&self) {
        self.paused.epoch.fetch_add(1, Ordering::SeqCst);
        if !self.paused.conns.lock().is_empty() {
            let _ = self.port.post(0, RESUME_KEY, Ctx::Accept(0));
        }
    }

    /// The stop's resume: bumps the epoch first, so a connection whose service is deciding to
    /// pause right now (and finds the list empty to a concurrent resume) posts its own.
    pub(super) fn resume_for_stop(&self) {
        self.paused.epoch.fetch_add(1, Ordering::SeqCst);
        let _ = self.port.post(0, RESUME_KEY, Ctx::Accept(0));
    }

    /// `Next::Pause`: park the connection with no operation pending.
    pub(super) fn pause(&self, mut conn: Box<Conn<S>>) {
        conn.pending = Pending::Ready;
        let seen = conn.epoch;
        let push = conn.push.clone();
        self.paused.conns.lock().push(conn);
        // A push side that died before the connection was in the list found nothing to close
        // there (it looks after setting `dead`): close it now, after the service's callback
        // returned, on this worker's stack.
        if let Some(pc) = push.filter(|pc| pc.is_dead()) {
            self.close_paused_push(&pc);
        }
        if self.paused.epoch() as u32 != seen {
            // A resume ran after the service decided to pause: it may have missed this one.
            let _ = self.port.post(0, RESUME_KEY, Ctx::Accept(0));
        }
    }

    /// Whether `pc`'s connection is in the paused list now.
    pub(super) fn is_paused_push(&self, pc: &PushConn<S>) -> bool {
        self.paused.conns.lock().iter().any(|c| is_of(c, pc))
    }

    /// The push side of `pc`'s connection has ended and its socket is closed: if the
    /// connection is paused, nothing would end it until a resume, so take it out of the list
    /// and close it (dropped as slow, or an error). Calls the service's `on_close`: only on a
    /// worker's own stack (a completion or a posted packet), never inside a service callback.
    pub(super) fn close_paused_push(&self, pc: &PushConn<S>) {
        let conn = {
            let mut list = self.paused.conns.lock();
            let at = list.iter().position(|c| is_of(c, pc));
            at.map(|i| list.remove(i))
        };
        if let Some(conn) = conn {
            let reason = if pc.dropped_slow() { CloseReason::Slow } else { CloseReason::Error };
            self.close(conn, reason);
        }
    }

    /// The resume packet: every paused connection asks its service what next.
    pub(super) fn resume_paused(&self) {
        let conns = std::mem::take(&mut *self.paused.conns.lock());
        for conn in conns {
            let Some((mut conn, next)) = self.step(conn, S::on_resume) else { continue };
            conn.note_partial(self.mark());
            self.drive(conn, next);
        }
    }

    /// Stopping: waits (up to `grace`) until every connection has closed (each read on to the
    /// end-of-stream of its shut receiving side, paused ones once resumed), nothing is paused
    /// and the port is idle. Returns the grace left.
    pub(super) fn wait_finished(&self, grace: Duration) -> Duration {
        let deadline = Instant::now() + grace;
        loop {
            // The connections first: the port's counters alone cannot tell (see
            // `connections_done`); then whatever else is on the port (datagram receives).
            if self.connections_done() && self.port.is_idle() && self.paused.conns.lock().is_empty()
            {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Connections still paused when the grace ends are closed as stopped: each is closed
        // once, its unconsumed input offered to `on_unread` and its `on_close` called (dropping
        // them lost both).
        let left = std::mem::take(&mut *self.paused.conns.lock());
        for conn in left {
            self.close(conn, CloseReason::Stopped);
        }
        deadline.saturating_duration_since(Instant::now())
    }
}
