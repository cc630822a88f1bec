//! Fault injection (cargo feature `fault-injection`, off by default): makes chosen syscalls
//! fail at chosen points, so tests can check what the port does with errors the kernel rarely
//! returns (EMFILE from accept, ENOMEM, ENOBUFS, EAGAIN/EBUSY from `io_uring_enter`, a reset
//! in the middle of a send).
//!
//! A plan is per thread: "fail the Nth call at point P, made on this thread, with errno E". A
//! test that submits its operations and polls the port on one thread therefore sees every
//! call, and tests running in parallel on other threads are unaffected.
//!
//! Where an injected failure takes effect:
//! - epoll: the operation's syscall is not made; it returns `-errno` to the operation's state
//!   machine (`Op::advance`), exactly as the kernel's error would.
//! - io_uring: the operation's SQE is replaced by a NOP carrying the same `user_data`; when its
//!   CQE arrives, the operation sees `-errno` as its result. The kernel never touches the
//!   operation's buffers, no fd is accepted, and the completion comes through the normal path.
//! - [`Point::Enter`]: `io_uring_enter` is not called and returns the errno instead.
//! - [`Point::SqPush`]: the SQ ring refuses the SQE (a full ring whose enter failed).
//!
//! One hook is not a failure and not per thread: [`delay_reaped`] holds every poller, process
//! wide, for a while between reaping completions from the kernel and queueing them, so a test
//! can catch what looks at the port while completions are in that hand-over.
//!
//! Without the feature (and outside the crate's unit tests) the hook is an inline `None`: the
//! hooks compile to nothing.

/// A place where a syscall can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
#[cfg_attr(not(feature = "fault-injection"), allow(unreachable_pub))]
pub enum Point {
    /// `accept4` (accept, the accept stage of an accept with initial data, accept_multi).
    Accept,
    /// `recv`/`recvmsg` of a receive into the caller's buffers (also an accept's initial
    /// receive).
    Recv,
    /// The receive into a registered buffer pool (`recv_pooled`).
    RecvPooled,
    /// `send`/`sendmsg` (send, send_vectored, send_to, the data stage of a connect). Each
    /// stage of a send that goes out in pieces is one call.
    Send,
    /// `connect`.
    Connect,
    /// `io_uring_enter` (submit, and the poller's submit-and-wait).
    Enter,
    /// Pushing an SQE into the io_uring SQ ring (refused: the ring is full and the kernel
    /// would not take its entries).
    SqPush,
}

#[cfg(any(test, feature = "fault-injection"))]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code, unreachable_pub))]
mod plan {
    use std::cell::RefCell;

    use super::Point;

    struct Rule {
        point: Point,
        /// Calls at `point` still to let through before failing.
        skip: u64,
        /// Calls to fail once `skip` is used up (`u64::MAX`: until cleared).
        times: u64,
        errno: i32,
    }

    #[derive(Default)]
    struct Plan {
        rules: Vec<Rule>,
        fired: Vec<(Point, u64)>,
        /// Calls made at each point (failed or not).
        calls: Vec<(Point, u64)>,
    }

    thread_local! {
        static PLAN: RefCell<Plan> = RefCell::new(Plan::default());
    }

    /// Makes the `nth` call (1 = the next one) at `point` made on this thread fail with
    /// `errno`; the calls before it and after it go through.
    ///
    /// # Panics
    /// If `nth` is 0 or `errno` is not positive.
    pub fn fail_nth(point: Point, nth: u64, errno: i32) {
        assert!(nth >= 1 && errno > 0, "fail_nth: nth counts from 1, errno is positive");
        add(Rule { point, skip: nth - 1, times: 1, errno });
    }

    /// Makes every call at `point` made on this thread fail with `errno`, until [`clear`].
    ///
    /// # Panics
    /// If `errno` is not positive.
    pub fn fail_always(point: Point, errno: i32) {
        assert!(errno > 0, "fail_always: errno is positive");
        add(Rule { point, skip: 0, times: u64::MAX, errno });
    }

    fn add(rule: Rule) {
        PLAN.with(|p| p.borrow_mut().rules.push(rule));
    }

    /// Drops this thread's plan and its counts.
    pub fn clear() {
        PLAN.with(|p| *p.borrow_mut() = Plan::default());
    }

    /// How many calls at `point` this thread's plan has failed since the last [`clear`].
    pub fn fired(point: Point) -> u64 {
        PLAN.with(|p| p.borrow().fired.iter().find(|(q, _)| *q == point).map_or(0, |f| f.1))
    }

    /// How many calls at `point` this thread has made since the last [`clear`] (failed or
    /// not): on epoll each is a syscall, on io_uring an SQE prepared.
    pub fn calls(point: Point) -> u64 {
        PLAN.with(|p| p.borrow().calls.iter().find(|(q, _)| *q == point).map_or(0, |f| f.1))
    }

    fn count(v: &mut Vec<(Point, u64)>, point: Point) {
        match v.iter_mut().find(|(q, _)| *q == point) {
            Some(f) => f.1 += 1,
            None => v.push((point, 1)),
        }
    }

    /// The hook at each syscall site: `Some(errno)` if this call must fail.
    pub(crate) fn hit(point: Point) -> Option<i32> {
        // `try_with`: a thread-local destructor that ends a port's accounting (`assoc`) may
        // reach a syscall site after this thread's plan is gone; no rule applies then.
        PLAN.try_with(|p| {
            let mut p = p.borrow_mut();
            count(&mut p.calls, point);
            let mut errno = None;
            // Every rule for `point` counts this call; the first one due fails it.
            for r in p.rules.iter_mut().filter(|r| r.point == point && r.times > 0) {
                if r.skip > 0 {
                    r.skip -= 1;
                } else if errno.is_none() {
                    r.times -= 1;
                    errno = Some(r.errno);
                }
            }
            p.rules.retain(|r| r.times > 0);
            if errno.is_some() {
                count(&mut p.fired, point);
            }
            errno
        })
        .ok()
        .flatten()
    }
}

#[cfg(any(test, feature = "fault-injection"))]
pub(crate) use plan::hit;
#[cfg(any(test, feature = "fault-injection"))]
pub use plan::{calls, clear, fail_always, fail_nth, fired};

#[cfg(any(test, feature = "fault-injection"))]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code, unreachable_pub))]
mod delay {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Nanoseconds every poller sleeps after a poll that reaped completions (0: none).
    static REAPED: AtomicU64 = AtomicU64::new(0);

    /// Process wide, for every port: after a poll that reaped completions, the poller holds
    /// them for `d` before it queues them (`Duration::ZERO` turns it off): what a preempted
    /// poller looks like on a loaded machine, made long enough to hit on purpose. In that
    /// hand-over the completions are not queued and nobody is running them; they must still
    /// count in flight in [`stats`](crate::CompletionPort::stats), and
    /// [`is_idle`](crate::CompletionPort::is_idle) must not read true (`tests/handover.rs`).
    pub fn delay_reaped(d: Duration) {
        REAPED.store(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The poller's hook, after a poll that reaped `n` completions.
    pub(crate) fn reaped(n: usize) {
        let ns = REAPED.load(Ordering::Relaxed);
        if n > 0 && ns > 0 {
            std::thread::sleep(Duration::from_nanos(ns));
        }
    }
}

#[cfg(any(test, feature = "fault-injection"))]
pub use delay::delay_reaped;
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) use delay::reaped;

/// Fault injection is compiled out: no poller is held.
#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn reaped(_n: usize) {}

/// Fault injection is compiled out: no call ever fails.
#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn hit(_point: Point) -> Option<i32> {
    None
}
