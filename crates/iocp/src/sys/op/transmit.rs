//! `TransmitFile`: head bytes, a file range, tail bytes, sent in that order. The body goes by
//! `sendfile(2)` on both backends (io_uring waits for room with a POLLOUT, then the reaping
//! thread calls `sendfile`: io_uring has no sendfile, and its SPLICE always runs on io-wq
//! threads).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::code::{Count, OpCode, Progress, Side};
use super::raw::{fail, ret, send};
use crate::completion::{Payload, Status, Transmitted};
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Opcode};

/// Largest count for one `sendfile(2)` call.
const SENDFILE_MAX: u64 = 0x7fff_f000;

/// The transmit's state, boxed (keeps `OpKind` small).
pub(crate) struct Transmit(Box<State>);

struct State {
    file: Arc<File>,
    /// Next file offset to send.
    offset: u64,
    /// Body bytes still to send.
    remaining: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    head_sent: usize,
    tail_sent: usize,
}

impl State {
    fn body_left(&self) -> bool {
        self.remaining > 0
    }

    /// In the body stage (head sent, file bytes left).
    fn in_body(&self) -> bool {
        self.head_sent >= self.head.len() && self.body_left()
    }
}

impl Transmit {
    /// `head`, then `len` bytes of `file` from `offset`, then `tail`.
    pub(crate) fn new(
        file: Arc<File>,
        offset: u64,
        len: u64,
        head: Vec<u8>,
        tail: Vec<u8>,
    ) -> Self {
        let (head_sent, tail_sent, remaining) = (0, 0, len);
        Transmit(Box::new(State { file, offset, remaining, head, tail, head_sent, tail_sent }))
    }
}

impl OpCode for Transmit {
    const SIDE: Side = Side::Write;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Send;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::SEND, opcodes::POLL_ADD];

    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        let t = &mut *self.0;
        if t.head_sent < t.head.len() {
            return send(fd, &t.head[t.head_sent..]);
        }
        if !t.body_left() {
            return send(fd, &t.tail[t.tail_sent..]);
        }
        let Ok(mut off) = i64::try_from(t.offset) else { return fail(libc::EINVAL) };
        let count = t.remaining.min(SENDFILE_MAX) as usize;
        // SAFETY: `off` is a local the kernel updates; both fds are open (the socket through
        // the handle, the file through the op's `Arc<File>`).
        let r = ret(unsafe { libc::sendfile(fd, t.file.as_raw_fd(), &mut off, count) });
        if r > 0 {
            t.offset = off as u64;
        }
        r
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let t = &*self.0;
        if t.head_sent < t.head.len() {
            super::stream::send_sqe(fd, &t.head[t.head_sent..])
        } else if t.body_left() {
            // Wait for room, then `sendfile` from the reaping thread (`reaps_by_syscall`).
            opcode::PollAdd::new(Fd(fd), libc::POLLOUT as u32).build()
        } else {
            super::stream::send_sqe(fd, &t.tail[t.tail_sent..])
        }
    }
    #[cfg(feature = "uring")]
    fn reaps_by_syscall(&self) -> bool {
        self.0.in_body()
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        let t = &mut *self.0;
        if t.head_sent < t.head.len() {
            t.head_sent += n;
        } else if t.body_left() {
            // sendfile (it advanced the offset itself, see `syscall`); 0 means the file ended
            // early: send what there is, then the tail.
            t.remaining = if n == 0 { 0 } else { t.remaining - (n as u64).min(t.remaining) };
        } else {
            t.tail_sent += n;
        }
        *bytes += n;
        let done = t.head_sent >= t.head.len() && !t.body_left() && t.tail_sent >= t.tail.len();
        if done { Progress::DONE } else { Progress::Again }
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        let State { file, head, tail, .. } = *self.0;
        Payload::TransmitFile(Box::new(Transmitted { file, head, tail }))
    }
}
