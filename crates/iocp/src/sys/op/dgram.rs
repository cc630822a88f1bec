//! Datagram receives and sends with an address (`WSARecvFrom`/`WSASendTo`), over `recvmsg`
//! and `sendmsg`. A datagram larger than the buffer completes with `EMSGSIZE` and the part
//! that fit, as Windows reports `WSAEMSGSIZE`.

use std::os::fd::RawFd;

use socket2::SockAddr;

use super::code::{Count, OpCode, Progress, Side};
use super::msg::{AddrBuf, Msg};
use super::raw::ret;
use crate::completion::{Payload, Status};
use crate::sys::fault::Point;
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Opcode};

/// A receive of one datagram and its sender's address. The header and the address storage
/// are boxed together (keeps `OpKind` small).
pub(crate) struct RecvFrom {
    buf: Vec<u8>,
    io: Box<MsgFrom>,
}

struct MsgFrom {
    msg: Msg,
    addr: AddrBuf,
}

/// A send of one datagram to an address.
pub(crate) struct SendTo {
    buf: Vec<u8>,
    io: Box<MsgTo>,
}

struct MsgTo {
    msg: Msg,
    to: SockAddr,
}

impl RecvFrom {
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        RecvFrom { buf, io: Box::new(MsgFrom { msg: Msg::plain(), addr: AddrBuf::plain() }) }
    }
}
impl SendTo {
    pub(crate) fn new(buf: Vec<u8>, to: SockAddr) -> Self {
        SendTo { buf, io: Box::new(MsgTo { msg: Msg::plain(), to }) }
    }
}

impl OpCode for RecvFrom {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Receive;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::RECVMSG];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::Recv)
    }
    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        let MsgFrom { msg, addr } = &mut *self.io;
        let hdr = msg.recv_from(&mut self.buf, addr);
        // SAFETY: `hdr` points at spare capacity and address storage owned by this op.
        ret(unsafe { libc::recvmsg(fd, hdr, libc::MSG_DONTWAIT | libc::MSG_TRUNC) })
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let MsgFrom { msg, addr } = &mut *self.io;
        opcode::RecvMsg::new(Fd(fd), msg.recv_from(&mut self.buf, addr))
            .flags(libc::MSG_TRUNC as u32)
            .build()
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        let MsgFrom { msg, addr } = &mut *self.io;
        let buf = &mut self.buf;
        let spare = buf.capacity() - buf.len();
        let copied = n.min(spare);
        // SAFETY: recvmsg initialised `copied` bytes of the spare capacity (with MSG_TRUNC it
        // reports the datagram's full length, which may be larger).
        unsafe { buf.set_len(buf.len() + copied) };
        *bytes = copied;
        addr.len = msg.hdr.msg_namelen;
        let truncated = n > spare || msg.hdr.msg_flags & libc::MSG_TRUNC != 0;
        if truncated { Progress::fail(libc::EMSGSIZE) } else { Progress::DONE }
    }
    fn into_payload(self, bytes: usize, status: Status) -> Payload {
        // The sender is known once a datagram arrived (whole or truncated).
        let peer = if bytes > 0 || status.is_ok() || status.errno() == Some(libc::EMSGSIZE) {
            self.io.addr.take()
        } else {
            None
        };
        Payload::RecvFrom(self.buf, peer.map(Box::new))
    }
}

impl OpCode for SendTo {
    const SIDE: Side = Side::Write;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Send;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::SENDMSG];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::Send)
    }
    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        let MsgTo { msg, to } = &mut *self.io;
        let hdr = msg.send_to(&self.buf, to);
        // SAFETY: `hdr` points at bytes and an address owned by this op.
        ret(unsafe { libc::sendmsg(fd, hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let MsgTo { msg, to } = &mut *self.io;
        opcode::SendMsg::new(Fd(fd), msg.send_to(&self.buf, to))
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        *bytes = n;
        Progress::DONE
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::SendTo(self.buf)
    }
}
