//! The kernel backends. Only this module (and its children) may use `unsafe`.
//!
//! Each backend is a `Driver` with the same contract:
//! - `submit(op)`: takes ownership of a boxed operation. `Pending`: the driver owns it until it
//!   hands back its completion from `wait` or `close_handle`. `Done`: it completed inline (its
//!   packet must still be queued: the one-packet rule). `Refused`: never started; the op comes
//!   back untouched.
//! - `wait(timeout, out)`: called by one thread at a time (the port's poller); blocks until at
//!   least one completion, a `kick`, or the timeout, and appends completions to `out`.
//! - `kick()`: makes a concurrent `wait` return soon.
//! - `close_handle(h, out)`: aborts every pending operation of `h`; completions that are ready
//!   at once go to `out`, the rest arrive through `wait`.
//! - `shutdown()`: the port is closing: abort everything and reclaim what the kernel released.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::{BackendKind, PortConfig};
use crate::completion::{Completion, OpId};
use crate::sys::op::HandleInner;

pub(crate) mod bufpool;
pub(crate) mod epoll;
#[cfg_attr(not(feature = "fault-injection"), allow(unreachable_pub))]
pub mod fault;
pub(crate) mod handle;
pub(crate) mod heap;
pub(crate) mod op;
#[cfg(feature = "uring")]
mod opcodes;
pub(crate) mod probe;
#[cfg(feature = "uring")]
pub(crate) mod uring;

use op::Op;

/// The outcome of `Driver::submit`.
pub(crate) enum Submitted<C> {
    Pending,
    Done(Completion<C>),
    /// Packets ready at once (a repeating accept's connections); the op may still be pending.
    Packets(Vec<Completion<C>>),
    Refused(io::Error, Box<Op<C>>),
}

/// Counters the drivers keep for `PortStats`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DriverStats {
    pub(crate) in_flight: u64,
    pub(crate) sq_full: u64,
    pub(crate) cq_overflow: u64,
    pub(crate) backlog: u64,
    pub(crate) submitted: u64,
    pub(crate) submit_enters: u64,
}

/// Where a driver delivers a completion it made off the poller (today only the epoll file
/// pool, whose threads run regular-file I/O). The port hands this down at open; it is the one
/// way up from `sys` to the port, and it carries nothing but finished completions.
pub(crate) trait Sink<C>: Send + Sync {
    /// Queues `c` as an I/O completion packet (or drops it, if the port is closed).
    fn deliver_one(&self, c: Completion<C>);
}

#[allow(clippy::large_enum_variant)] // one per port, never moved after creation
pub(crate) enum Driver<C: Send + 'static> {
    Epoll(epoll::Driver<C>),
    #[cfg(feature = "uring")]
    Uring(uring::Driver<C>),
}

impl<C: Send + 'static> Driver<C> {
    pub(crate) fn open(kind: BackendKind, cfg: &PortConfig) -> io::Result<Self> {
        match kind {
            BackendKind::Epoll => epoll::Driver::open(cfg).map(Driver::Epoll),
            #[cfg(feature = "uring")]
            BackendKind::Uring => uring::Driver::open(cfg).map(Driver::Uring),
            #[cfg(not(feature = "uring"))]
            BackendKind::Uring => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "built without the `uring` feature"))
            }
        }
    }

    /// Hands the driver where completions made off the poller go (the epoll file pool).
    pub(crate) fn set_sink(&self, sink: Weak<dyn Sink<C>>) {
        match self {
            Driver::Epoll(d) => d.set_sink(sink),
            #[cfg(feature = "uring")]
            Driver::Uring(_) => drop(sink),
        }
    }

    pub(crate) fn register(&self, h: &Arc<HandleInner<C>>) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.register(h),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.register(h),
        }
    }

    /// `defer`: the thread is inside a [`SubmitBatch`](crate::SubmitBatch) of this port; a
    /// driver that submits through a syscall may leave the request for [`Driver::flush`].
    pub(crate) fn submit(&self, op: Box<Op<C>>, defer: bool) -> Submitted<C> {
        match self {
            Driver::Epoll(d) => {
                let _ = defer;
                d.submit(op)
            }
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.submit(op, defer),
        }
    }

    /// Gives the kernel the requests deferred by `submit(.., true)`.
    pub(crate) fn flush(&self) {
        match self {
            Driver::Epoll(_) => {}
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.flush(),
        }
    }

    pub(crate) fn wait(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion<C>>,
    ) -> io::Result<()> {
        let res = match self {
            Driver::Epoll(d) => d.wait(timeout, out),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.wait(timeout, out),
        };
        // A user `Clone` that panicked while the driver worked is raised here, with the
        // driver's state whole and every completion it made in `out`.
        op::resume_user_panic();
        res
    }

    pub(crate) fn kick(&self) {
        match self {
            Driver::Epoll(d) => d.kick(),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.kick(),
        }
    }

    pub(crate) fn close_handle(&self, h: &Arc<HandleInner<C>>, out: &mut Vec<Completion<C>>) {
        match self {
            Driver::Epoll(d) => d.close_handle(h, out),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.close_handle(h, out),
        }
    }

    pub(crate) fn cancel(
        &self,
        h: &Arc<HandleInner<C>>,
        target: Option<OpId>,
        reason: i32,
        out: &mut Vec<Completion<C>>,
    ) -> usize {
        match self {
            Driver::Epoll(d) => d.cancel(h, target, reason, out),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.cancel(h, target, reason, out),
        }
    }

    /// Creates a receive-buffer pool for this port (registered with the ring on io_uring).
    pub(crate) fn buffer_pool(
        &self,
        port: u64,
        count: u16,
        size: usize,
    ) -> io::Result<bufpool::BufferPool> {
        match self {
            Driver::Epoll(d) => d.buffer_pool(port, count, size),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.buffer_pool(port, count, size),
        }
    }

    pub(crate) fn shutdown(&self) {
        match self {
            Driver::Epoll(d) => d.shutdown(),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.shutdown(),
        }
    }

    /// The port has queued `n` completions that ended operations (`Completion::settles`),
    /// which the driver counted in flight until now.
    pub(crate) fn settle(&self, n: usize) {
        match self {
            Driver::Epoll(d) => d.settle(n),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.settle(n),
        }
    }

    pub(crate) fn stats(&self) -> DriverStats {
        match self {
            Driver::Epoll(d) => d.stats(),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.stats(),
        }
    }

    /// The operations in flight, by kind (a walk over the driver's records).
    pub(crate) fn in_flight_by_kind(&self) -> crate::stats::InFlightByKind {
        match self {
            Driver::Epoll(d) => d.in_flight_by_kind(),
            #[cfg(feature = "uring")]
            Driver::Uring(d) => d.in_flight_by_kind(),
        }
    }
}

/// The error of a start on a closed handle (or a port shutting down).
/// Takes `n` settled completions off a driver's in-flight `count` (`Driver::settle`).
/// Saturating: a shutdown zeroes the count under completions still on their way.
pub(crate) fn settle_count(count: &AtomicU64, n: usize) {
    if n > 0 {
        let n = n as u64;
        let _ =
            count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }
}

pub(crate) fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the handle is closed")
}

/// Converts a timeout to epoll's milliseconds, rounding up so a wait never ends early.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}
