//! What every operation implements ([`OpCode`]) and the small types its methods return; the
//! operation files import only this (and their shared helpers), never the dispatch above them.

use std::os::fd::{BorrowedFd, RawFd};

use crate::completion::{Payload, Status};
use crate::sys::fault::Point;
pub(crate) use crate::sys::handle::Side;
#[cfg(feature = "uring")]
use crate::sys::opcodes::{Feature, Opcode};

/// Where an operation stands after a syscall (or a CQE).
#[derive(Debug, Eq, PartialEq)]
pub(crate) enum Progress {
    /// Finished, with this status.
    Done(Status),
    /// Not ready: wait for readiness on the op's handle (epoll), or resubmit (io_uring).
    Again,
    /// Accept's initial receive must wait for the accepted socket to become readable.
    AgainOnAccepted,
}

impl Progress {
    /// Finished successfully.
    pub(crate) const DONE: Progress = Progress::Done(Status::OK);

    /// Finished with the error `errno` (0: success).
    pub(crate) const fn fail(errno: i32) -> Progress {
        Progress::Done(Status::from_errno(errno))
    }
}

/// What a CQE (io_uring) or a readiness event (epoll) means to an operation, before the
/// shared reading of `Op::advance`.
pub(crate) enum Outcome {
    /// Read `res` (bytes or `-errno`) as the current stage's result.
    Result(isize),
    /// The operation settled it itself (a poll mask, a buffer-less end of stream, a
    /// connect's `SO_ERROR`).
    Progress(Progress),
}

/// Which `InFlightByKind` counter an operation adds to.
#[derive(Clone, Copy)]
pub(crate) enum Count {
    Accept,
    Connect,
    Receive,
    Send,
    File,
    Other,
}

/// One operation family: its stages' syscalls on each backend and how their results read.
///
/// `fd` is the handle's descriptor (kept open by the op's `Arc<HandleInner>`); `bytes` is what
/// the op has moved so far (a resumed send skips it; a receive's result is stored there).
/// Results follow one convention: bytes (or 0) when non-negative, `-errno` when negative.
pub(crate) trait OpCode {
    /// The handle side whose readiness serves this op (epoll's queue for it).
    const SIDE: Side;
    /// Whether ops of this kind on one handle must keep their start order on [`Self::SIDE`]
    /// (stream receives fill buffers in order, sends go out in order). Accepts, zero-byte
    /// receives and file I/O at explicit offsets need not.
    const ORDERED: bool;
    /// The in-flight counter this op adds to.
    const COUNT: Count;
    /// Regular-file I/O: epoll cannot wait for it, so it runs on the file pool.
    const FILE_IO: bool = false;
    /// A repeating op: each result is its own packet, the op ends only by cancel, close or error.
    const MULTISHOT: bool = false;
    /// Uses ring 0's provided buffers, so it must start on ring 0 (io_uring).
    const RING_BUFFERS: bool = false;
    /// Every io_uring opcode [`OpCode::sqe`] may build; the probe requires each (and a test
    /// checks this list against the file's source).
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode];
    /// Kernel behaviours beyond opcodes the op relies on; the probe tries each.
    #[cfg(feature = "uring")]
    const FEATURES: &'static [Feature] = &[];

    /// The fault-injection point of the current stage's syscall, if it has one.
    fn fault_point(&self) -> Option<Point> {
        None
    }
    /// epoll (and the file pool): the current stage's non-blocking syscall.
    fn syscall(&mut self, fd: RawFd, bytes: usize) -> isize;
    /// io_uring: the submission entry for the current stage.
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, bytes: usize) -> io_uring::squeue::Entry;
    /// io_uring: a CQE for this op, before the shared reading.
    #[cfg(feature = "uring")]
    fn on_cqe(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Outcome {
        Outcome::Result(res as isize)
    }
    /// io_uring: the current stage's CQE is a readiness poll, after which the reaping thread
    /// makes the syscall itself (transmit's `sendfile`: io_uring has none).
    #[cfg(feature = "uring")]
    fn reaps_by_syscall(&self) -> bool {
        false
    }
    /// Records a non-negative stage result `n`.
    fn advance(&mut self, n: usize, bytes: &mut usize, fd: RawFd) -> Progress;
    /// epoll: the current stage of this read-side op waits for the socket to be readable (a
    /// disconnect's first stage, its `shutdown`, does not: it must not wait for an event).
    fn waits_readable(&self) -> bool {
        true
    }
    /// epoll: the op is done and read less than it had room for (`bytes` > 0): on TCP, the
    /// read side is drained (epoll(7), Q9). Only single-buffer receives say so.
    fn short_read(&self, _bytes: usize) -> bool {
        false
    }
    /// The current stage would block (`EAGAIN`).
    fn would_block(&self) -> Progress {
        Progress::Again
    }
    /// The descriptor the current stage waits on when it is not the handle's (an accept's
    /// initial receive waits on the accepted socket).
    fn stage_fd(&self) -> Option<RawFd> {
        None
    }
    /// epoll: the handle became ready; `Some` is the current stage's outcome read without its
    /// syscall (a connect's is `SO_ERROR`, not a second `connect`).
    fn ready_result(&mut self, _fd: BorrowedFd<'_>) -> Option<Outcome> {
        None
    }
    /// The buffers (and what the op produced), handed back when it is refused or completes;
    /// `status` is the completion's, before an abort reason replaces it.
    fn into_payload(self, bytes: usize, status: Status) -> Payload;
}
