//! Stream receives and sends: into one buffer or scattered over several (`WSARecv`/`WSASend`
//! with one or more `WSABUF`s). Receives complete with what one call returned; sends go on
//! after a short write until every byte is out.

use std::os::fd::RawFd;

use super::code::{Count, OpCode, Progress, Side};
use super::msg::Msg;
use super::raw::{recv_spare, ret, send};
use crate::completion::{Payload, Status};
use crate::sys::fault::Point;
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Opcode};

/// A receive into one buffer's spare capacity.
pub(crate) struct Recv {
    buf: Vec<u8>,
}

/// A receive scattered over several buffers' spare capacity (`recvmsg`).
pub(crate) struct RecvV {
    bufs: Vec<Vec<u8>>,
    msg: Box<Msg>,
}

/// A send of one buffer's bytes.
pub(crate) struct Send {
    buf: Vec<u8>,
}

/// A send gathered from several buffers (`sendmsg`).
pub(crate) struct SendV {
    bufs: Vec<Vec<u8>>,
    msg: Box<Msg>,
}

impl Recv {
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        Recv { buf }
    }
}
impl RecvV {
    pub(crate) fn new(bufs: Vec<Vec<u8>>) -> Self {
        RecvV { bufs, msg: Msg::new() }
    }
}
impl Send {
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        Send { buf }
    }
}
impl SendV {
    pub(crate) fn new(bufs: Vec<Vec<u8>>) -> Self {
        SendV { bufs, msg: Msg::new() }
    }
}

/// Records `n` received bytes at the end of `buf` (the kernel wrote them into its spare
/// capacity, handed out for this stage).
pub(super) fn filled(buf: &mut Vec<u8>, n: usize) -> usize {
    let n = n.min(buf.capacity() - buf.len());
    // SAFETY: the kernel (recv, read, or the io_uring CQE for it) initialised exactly `n` bytes
    // at the start of the spare capacity handed out for this stage.
    unsafe { buf.set_len(buf.len() + n) };
    n
}

/// A send stage moved `n` more bytes of `total`: done when all are out (or the socket took
/// none), else the rest goes next.
pub(super) fn sent(bytes: &mut usize, n: usize, total: usize) -> Progress {
    *bytes += n;
    if *bytes >= total || n == 0 { Progress::DONE } else { Progress::Again }
}

/// The SQE of a `send` of `rest` (bytes the caller's op owns).
#[cfg(feature = "uring")]
pub(super) fn send_sqe(fd: RawFd, rest: &[u8]) -> io_uring::squeue::Entry {
    use io_uring::{opcode, types::Fd};
    opcode::Send::new(Fd(fd), rest.as_ptr(), super::raw::len_u32(rest.len()))
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

/// The SQE of a `recv` into the spare capacity of `buf` (which the caller's op owns).
#[cfg(feature = "uring")]
pub(super) fn recv_sqe(fd: RawFd, buf: &mut Vec<u8>) -> io_uring::squeue::Entry {
    use io_uring::{opcode, types::Fd};
    let spare = buf.spare_capacity_mut();
    opcode::Recv::new(Fd(fd), spare.as_mut_ptr().cast(), super::raw::len_u32(spare.len())).build()
}

impl OpCode for Recv {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Receive;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::RECV];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::Recv)
    }
    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        recv_spare(fd, &mut self.buf)
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        recv_sqe(fd, &mut self.buf)
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        *bytes = filled(&mut self.buf, n);
        Progress::DONE
    }
    fn short_read(&self, bytes: usize) -> bool {
        // One call moves at most MAX_RW_COUNT (INT_MAX rounded down to a page): a larger
        // buffer's read may be short with more waiting.
        const MAX_RW: usize = (i32::MAX as usize) & !4095;
        let asked = self.buf.capacity() - (self.buf.len() - bytes.min(self.buf.len()));
        bytes > 0 && self.buf.len() < self.buf.capacity() && asked <= MAX_RW
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Recv(self.buf)
    }
}

impl OpCode for RecvV {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Receive;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::RECVMSG];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::Recv)
    }
    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        let hdr = self.msg.scatter(&mut self.bufs);
        // SAFETY: `hdr` points at iovecs describing spare capacity owned by this op.
        ret(unsafe { libc::recvmsg(fd, hdr, libc::MSG_DONTWAIT) })
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        opcode::RecvMsg::new(Fd(fd), self.msg.scatter(&mut self.bufs)).build()
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        let mut left = n;
        for b in self.bufs.iter_mut() {
            let take = left.min(b.capacity() - b.len());
            // SAFETY: recvmsg filled the iovecs in order without gaps; this buffer's spare
            // capacity received its first `take` bytes.
            unsafe { b.set_len(b.len() + take) };
            left -= take;
        }
        *bytes = n - left;
        Progress::DONE
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::RecvVectored(self.bufs)
    }
}

impl OpCode for Send {
    const SIDE: Side = Side::Write;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Send;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::SEND];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::Send)
    }
    fn syscall(&mut self, fd: RawFd, bytes: usize) -> isize {
        send(fd, &self.buf[bytes.min(self.buf.len())..])
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, bytes: usize) -> io_uring::squeue::Entry {
        send_sqe(fd, &self.buf[bytes.min(self.buf.len())..])
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        sent(bytes, n, self.buf.len())
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Send(self.buf)
    }
}

impl OpCode for SendV {
    const SIDE: Side = Side::Write;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Send;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::SENDMSG];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::Send)
    }
    fn syscall(&mut self, fd: RawFd, bytes: usize) -> isize {
        let hdr = self.msg.gather(&self.bufs, bytes);
        // SAFETY: `hdr` points at iovecs describing bytes owned by this op.
        ret(unsafe { libc::sendmsg(fd, hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        opcode::SendMsg::new(Fd(fd), self.msg.gather(&self.bufs, bytes))
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        let total: usize = self.bufs.iter().map(Vec::len).sum();
        sent(bytes, n, total)
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::SendVectored(self.bufs)
    }
}
