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
    /// io_uring: SQEs the kernel took, over every `io_uring_enter` that submitted.
    pub submitted: u64,
    /// io_uring: `io_uring_enter` calls that submitted (`submitted / submit_enters` is the
    /// batching: SQEs per system call).
    pub submit_enters: u64,
    /// Buffers in the port's buffer pools ([`CompletionPort::buffer_pool`](crate::CompletionPort::buffer_pool)).
    pub pool_buffers: u64,
    /// Of those, not available to a new receive now (each held by a completed pooled
    /// receive's payload until it is dropped).
    pub pool_lent: u64,
}

/// Operations in flight by kind ([`CompletionPort::in_flight_by_kind`]): counted by walking the
/// driver's records at the call, so it costs O(operations) then and nothing on the hot path.
///
/// [`CompletionPort::in_flight_by_kind`]: crate::CompletionPort::in_flight_by_kind
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct InFlightByKind {
    /// Accepts (single and repeating).
    pub accept: u64,
    /// Connects.
    pub connect: u64,
    /// Receives (buffered, vectored, datagram, pooled, zero-byte).
    pub receive: u64,
    /// Sends (buffered, vectored, datagram, `transmit_file`).
    pub send: u64,
    /// Regular-file reads and writes.
    pub file: u64,
    /// Disconnects.
    pub other: u64,
    /// io_uring: receives and sends queued behind one of their handle's in the kernel (stream
    /// order), not in the kernel yet and not counted by kind.
    pub waiting: u64,
    /// Completed and taken from the kernel, on their way to the port's queue (a poller holds
    /// them for the moment): still in flight, no longer of any kind.
    pub reaped: u64,
}

impl InFlightByKind {
    /// Every count with its label (`accept`, `connect`, `receive`, `send`, `file`, `other`,
    /// `waiting`, `reaped`), for an exposition.
    pub fn labelled(&self) -> [(&'static str, u64); 8] {
        [
            ("accept", self.accept),
            ("connect", self.connect),
            ("receive", self.receive),
            ("send", self.send),
            ("file", self.file),
            ("other", self.other),
            ("waiting", self.waiting),
            ("reaped", self.reaped),
        ]
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.labelled().iter().map(|(_, n)| n).sum()
    }
}
