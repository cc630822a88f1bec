//! The pooled receive: the buffer is chosen when data arrives, from a [`BufferPool`] (the
//! kernel picks it from a provided-buffer ring on io_uring; epoll takes one from the free
//! list), so an idle connection holds no receive buffer.

use std::os::fd::RawFd;

#[cfg(feature = "uring")]
use super::code::Outcome;
use super::code::{Count, OpCode, Progress, Side};
use super::raw::{errno, fail, peek};
use crate::completion::{Payload, Status};
use crate::sys::bufpool::BufferPool;
use crate::sys::fault::Point;
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Feature, Opcode};

/// A receive into a buffer the pool lends; `got` is that buffer's id once there is one.
pub(crate) struct RecvPooled {
    pool: BufferPool,
    got: Option<u16>,
}

impl RecvPooled {
    pub(crate) fn new(pool: BufferPool) -> Self {
        RecvPooled { pool, got: None }
    }
}

impl OpCode for RecvPooled {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Receive;
    const RING_BUFFERS: bool = true;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::RECV];
    #[cfg(feature = "uring")]
    const FEATURES: &'static [Feature] = &[Feature::BufferRing];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::RecvPooled)
    }
    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        let Some(id) = self.pool.take() else {
            // Readable but no buffer free: fail like io_uring does (ENOBUFS). The end of the
            // stream needs no buffer: report it as EOF.
            return match peek(fd) {
                r if r <= 0 => r,
                _ => fail(libc::ENOBUFS),
            };
        };
        let (p, len) = self.pool.buf_ptr(id);
        // SAFETY: buffer `id` was just taken from the free list: this op is its only user.
        let r = unsafe { libc::recv(fd, p.cast(), len, libc::MSG_DONTWAIT) };
        if r < 0 {
            let e = errno();
            self.pool.untake(id);
            return fail(e);
        }
        self.got = Some(id);
        r
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let len = super::raw::len_u32(self.pool.buf_size());
        opcode::Recv::new(Fd(fd), std::ptr::null_mut(), len)
            .buf_group(self.pool.group())
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
    }
    #[cfg(feature = "uring")]
    fn on_cqe(&mut self, res: i32, flags: u32, fd: RawFd) -> Outcome {
        if let Some(id) = io_uring::cqueue::buffer_select(flags) {
            self.pool.note_selected();
            self.got = Some(id);
        }
        // No buffer free (the kernel selects one before it looks at the socket): if the peer
        // is gone, that is the end of the stream, which needs no buffer.
        if res == -libc::ENOBUFS && self.got.is_none() && peek(fd) == 0 {
            return Outcome::Progress(Progress::DONE);
        }
        Outcome::Result(res as isize)
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        *bytes = n.min(self.pool.buf_size());
        if self.got.is_none() && n > 0 {
            return Progress::fail(libc::EIO); // data without a buffer: cannot happen
        }
        Progress::DONE
    }
    fn into_payload(self, bytes: usize, _status: Status) -> Payload {
        let RecvPooled { pool, got } = self;
        Payload::RecvPooled(got.map(|id| pool.lend(id, bytes)))
    }
}
