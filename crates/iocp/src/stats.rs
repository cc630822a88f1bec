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
    /// io_uring: SQEs waiting in user space because the SQ ring refused them (full, and the
    /// kernel did not take its entries).
    pub backlog: u64,
    /// io_uring: times an operation had to wait for room in the SQ ring.
    pub sq_full: u64,
    /// io_uring: completions the kernel dropped (it keeps those the CQ has no room for, unless
    /// it cannot allocate memory for them). Must stay 0.
    pub cq_overflow: u64,
}
