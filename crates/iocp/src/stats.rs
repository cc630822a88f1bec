//! Port counters.

/// A snapshot of a port's counters ([`CompletionPort::stats`](crate::CompletionPort::stats)).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct PortStats {
    /// Packets posted with `post`.
    pub posted: u64,
    /// Packets returned by `get`/`get_many`.
    pub dequeued: u64,
    /// I/O completions queued (inline, reaped or aborted).
    pub io_completions: u64,
    /// Packets queued now, not yet dequeued.
    pub queued: u64,
    /// Threads blocked in `get` now.
    pub waiters: u64,
    /// Threads counted as running packets now.
    pub running: u64,
    /// Operations started and not yet completed.
    pub in_flight: u64,
    /// io_uring: operations waiting in user space for room in the CQ.
    pub backlog: u64,
    /// io_uring: times an operation had to wait for room (back-pressure events).
    pub sq_full: u64,
    /// io_uring: completions the kernel dropped for lack of CQ room. Must stay 0.
    pub cq_overflow: u64,
}
