//! Which port the current thread is associated with, and whether it counts as running there.
//!
//! Windows associates a thread with the port it last called GQCS on (iocp-semantics §1.4); the
//! concurrency count of that port includes the thread while it runs. Here the association lives
//! in a thread-local so that a thread moving to another port, declaring a blocking section, or
//! exiting gives its running slot back.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

/// The port side of the association: what a thread calls when it stops or starts running.
pub(crate) trait Accounting: Send + Sync {
    /// The thread stopped running on this port (it blocks, moves to another port, or exits):
    /// decrement the running count and release a waiter if the rules now allow one.
    fn leave(&self);
    /// The thread runs again (end of a blocking section).
    fn rejoin(&self);
}

struct Assoc {
    port: Weak<dyn Accounting>,
    id: u64,
    counted: bool,
}

struct Slot(Option<Assoc>);

impl Drop for Slot {
    fn drop(&mut self) {
        // Thread exit: a thread that was running gives its slot back.
        if let Some(p) = self.0.take().filter(|a| a.counted).and_then(|a| a.port.upgrade()) {
            p.leave();
        }
    }
}

thread_local! {
    static ASSOC: RefCell<Slot> = const { RefCell::new(Slot(None)) };
}

/// Called at the start of `get` on port `id`. Returns true when the thread was counted as
/// running on this same port (the caller then decrements under its own lock). If the thread was
/// associated with another port, that port's slot is given back first (case 44).
pub(crate) fn enter(id: u64, port: impl FnOnce() -> Arc<dyn Accounting>) -> bool {
    let previous = ASSOC.with(|a| {
        let mut a = a.borrow_mut();
        match &mut a.0 {
            Some(x) if x.id == id => {
                let was = x.counted;
                x.counted = false;
                return Ok(was);
            }
            _ => {}
        }
        let old = a.0.replace(Assoc { port: Arc::downgrade(&port()), id, counted: false });
        Err(old)
    });
    match previous {
        Ok(was) => was,
        Err(old) => {
            if let Some(old) = old.filter(|o| o.counted)
                && let Some(p) = old.port.upgrade()
            {
                p.leave();
            }
            false
        }
    }
}

/// `get` on port `id` returned a packet or timed out: the thread counts as running there (the
/// port has already incremented its count).
pub(crate) fn set_running(id: u64) {
    ASSOC.with(|a| {
        if let Some(x) = a.borrow_mut().0.as_mut().filter(|x| x.id == id) {
            x.counted = true;
        }
    });
}

/// `get` on port `id` saw the port closed: the association ends.
pub(crate) fn end(id: u64) {
    ASSOC.with(|a| {
        let mut a = a.borrow_mut();
        if a.0.as_ref().is_some_and(|x| x.id == id) {
            a.0 = None;
        }
    });
}

/// Starts a blocking section: if the thread counts as running on a port, it stops counting.
/// Returns the port to rejoin at the end.
pub(crate) fn block() -> Option<Arc<dyn Accounting>> {
    let port = ASSOC.with(|a| {
        let mut a = a.borrow_mut();
        let x = a.0.as_mut().filter(|x| x.counted)?;
        x.counted = false;
        x.port.upgrade()
    })?;
    port.leave();
    Some(port)
}

/// Ends a blocking section started by [`block`].
pub(crate) fn unblock(port: Arc<dyn Accounting>) {
    ASSOC.with(|a| {
        if let Some(x) = a.borrow_mut().0.as_mut()
            && std::ptr::addr_eq(x.port.as_ptr(), Arc::as_ptr(&port))
        {
            x.counted = true;
            port.rejoin();
        }
    });
}
