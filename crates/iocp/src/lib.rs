//! A Linux completion port: Windows I/O Completion Port semantics on io_uring, with an epoll
//! fallback chosen at run time.
//!
//! - [`CompletionPort`]: any thread may dequeue any completion ([`CompletionPort::get`],
//!   [`CompletionPort::get_many`]); packets come out FIFO; blocked threads are released LIFO;
//!   a concurrency limit gates how many threads run packets at once; user packets can be posted.
//! - [`Handle`]: a socket or file associated with one port and one [`CompletionKey`] for life,
//!   on which overlapped operations start: accept (with an initial receive) and repeating
//!   accept, connect (with an initial send), scatter/gather receive and send, the zero-byte
//!   receive, receives from a registered [`BufferPool`], UDP `recv_from`/`send_to`, file
//!   `read_at`/`write_at` (with [`APPEND`]), `transmit_file`, `disconnect` (for reuse); each may
//!   carry a deadline, and pending ones can be cancelled one by one or all at once.
//! - [`Completion`]: key, bytes transferred, result, and the operation's context handed back
//!   whole: your context value `C` plus every buffer the operation owned (the "extended
//!   OVERLAPPED"). Every started operation yields exactly one.
//!
//! # Implementation
//! The port is a mutex-protected FIFO of packets, a LIFO stack of blocked threads and a running
//! count (`port/state.rs`, a pure state machine that a test model-checks). One blocked thread at
//! a time is the *poller*: it waits in the kernel (`io_uring_enter` or `epoll_wait`), turns what
//! it reaps into packets, takes the first itself and hands the rest to other waiters. The
//! io_uring backend shares one ring per port; the epoll backend emulates a proactor on
//! edge-triggered readiness. `iocp::probe()` / [`CompletionPort::backend`] say which runs and
//! why. docs/DESIGN.md has the full mapping and every deviation from Windows.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use std::time::Duration;
//! use iocp::{CompletionKey, CompletionPort, Payload};
//!
//! let port: CompletionPort<u32> = CompletionPort::new()?;
//! println!("backend: {}", port.backend());
//! let listener = port.associate(TcpListener::bind("127.0.0.1:0")?, CompletionKey(1))?;
//! listener.accept(Vec::with_capacity(512), 0)?; // accept + first receive
//! let mut done = port.get(Some(Duration::from_secs(5)))?;
//! if let Payload::Accept(_) = done.payload() {
//!     let acc = done.take_accepted().unwrap();
//!     println!("{} bytes from {:?}", done.bytes(), acc.peer_addr());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

#[cfg(not(target_os = "linux"))]
compile_error!("iocp supports Linux only (io_uring and epoll)");

mod backend;
mod chunks;
mod completion;
mod error;
mod handle;
mod port;
mod spare;
mod stats;
#[allow(unsafe_code)]
mod sys;

pub use backend::{BackendChoice, BackendKind, BackendReport, UringCaps};
pub use completion::{Accepted, Completion, CompletionKey, OpId, Payload, Transmitted};
pub use error::{GetError, PostError, SubmitError};
pub use handle::{Handle, TransmitRange, WithTimeout};
pub use sys::heap::{limit_heap_arenas, trim_heap};
pub use sys::probe::probe;

/// The [`Handle::write_at`] offset that appends at the end of the file (Windows'
/// `0xFFFFFFFF_FFFFFFFF`).
pub const APPEND: u64 = u64::MAX;
pub use port::{BlockingGuard, CompletionPort, Delivery, PortBuilder, SubmitBatch, blocking};
pub use stats::{InFlightByKind, PortStats};
pub use sys::bufpool::{BufferPool, PooledBuf};
/// Fault injection for tests (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
pub use sys::fault;

#[cfg(test)]
mod size_report {
    /// Memory per idle connection (BENCHMARKS.md, `idle-memory`) depends on these sizes; a
    /// change that grows them must be a decision, not an accident.
    #[test]
    fn per_connection_structures_stay_small() {
        let handle = size_of::<crate::sys::op::HandleInner<u32>>();
        let op = size_of::<crate::sys::op::Op<u32>>();
        eprintln!("HandleInner<u32> = {handle} bytes, Op<u32> = {op} bytes");
        assert!(handle <= 88, "HandleInner grew to {handle} bytes");
        // 80 since the timer wheel: the op carries its deadline's index (a u32), which costs
        // 8 bytes beside a 4-byte context; an op with a pointer-sized context (a server's) was
        // 80 before and is still. The wheel's 40-byte entry replaced a BTreeMap entry and a
        // hash-map entry per timed op.
        assert!(op <= 80, "Op grew to {op} bytes");
        let boxed = size_of::<crate::sys::op::Op<Box<u32>>>();
        assert!(boxed <= 80, "Op<Box<_>> grew to {boxed} bytes");
        assert_eq!(size_of::<crate::Handle<u32>>(), 16);
    }
}
