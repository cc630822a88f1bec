//! Accepts: `AcceptEx` (a connection, then optionally its first bytes) and the repeating
//! accept (a packet per connection, on a multishot SQE or an `accept4` loop).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::code::{Count, OpCode, Progress, Side};
use super::msg::AddrBuf;
use super::raw::{recv_spare, ret};
use crate::completion::{Accepted, Payload, Status};
use crate::sys::fault::Point;
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Feature, Opcode};

/// `AcceptEx`: the peer address storage, the accepted socket once there is one, and the
/// buffer for an initial receive (wanted when it has spare capacity).
pub(crate) struct Accept {
    st: Box<AcceptState>,
    buf: Vec<u8>,
}

struct AcceptState {
    addr: AddrBuf,
    accepted: Option<OwnedFd>,
    want_data: bool,
}

/// A repeating accept: each connection is its own packet (the drivers make them with
/// `Op::accepted_packet`).
pub(crate) struct AcceptMulti;

impl Accept {
    /// An accept whose initial receive fills the spare capacity of `buf` (none if it has none).
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        let want_data = buf.capacity() > buf.len();
        let st = Box::new(AcceptState { addr: AddrBuf::plain(), accepted: None, want_data });
        Accept { st, buf }
    }
}

/// `accept4` of a non-blocking, close-on-exec socket; `addr`, when given, gets the peer.
fn accept4(fd: RawFd, addr: Option<&mut AddrBuf>) -> isize {
    let (a, l) = match addr {
        Some(addr) => addr.ptrs(),
        None => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    // SAFETY: `a`/`l` are null (allowed: the peer is read later) or point at storage owned by
    // the calling op, `l` holding its size.
    ret(unsafe { libc::accept4(fd, a, l, libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) } as isize)
}

impl OpCode for Accept {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = false;
    const COUNT: Count = Count::Accept;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::ACCEPT, opcodes::RECV];

    fn fault_point(&self) -> Option<Point> {
        Some(if self.st.accepted.is_none() { Point::Accept } else { Point::Recv })
    }
    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        match &self.st.accepted {
            None => accept4(fd, Some(&mut self.st.addr)),
            Some(newfd) => recv_spare(newfd.as_raw_fd(), &mut self.buf),
        }
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        match &self.st.accepted {
            None => {
                let (a, l) = self.st.addr.ptrs();
                opcode::Accept::new(Fd(fd), a, l).flags(libc::SOCK_CLOEXEC).build()
            }
            Some(newfd) => super::stream::recv_sqe(newfd.as_raw_fd(), &mut self.buf),
        }
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        let st = &mut *self.st;
        match st.accepted {
            None => {
                // SAFETY: a non-negative accept result is a new fd that nobody else owns.
                st.accepted = Some(unsafe { OwnedFd::from_raw_fd(n as RawFd) });
                if st.want_data { Progress::AgainOnAccepted } else { Progress::DONE }
            }
            Some(_) => {
                *bytes = super::stream::filled(&mut self.buf, n);
                Progress::DONE
            }
        }
    }
    fn would_block(&self) -> Progress {
        // The initial receive waits on the accepted socket, not the listener.
        if self.st.accepted.is_some() { Progress::AgainOnAccepted } else { Progress::Again }
    }
    fn stage_fd(&self) -> Option<RawFd> {
        self.st.accepted.as_ref().map(AsRawFd::as_raw_fd)
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        let Accept { st, buf } = self;
        let peer = if st.accepted.is_some() { st.addr.take() } else { None };
        Payload::Accept(Box::new(Accepted::new(st.accepted, peer, buf)))
    }
}

impl OpCode for AcceptMulti {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = false;
    const COUNT: Count = Count::Accept;
    const MULTISHOT: bool = true;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::ACCEPT_MULTI];
    #[cfg(feature = "uring")]
    const FEATURES: &'static [Feature] = &[Feature::MultishotAccept];

    fn fault_point(&self) -> Option<Point> {
        Some(Point::Accept)
    }
    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        accept4(fd, None)
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        opcode::AcceptMulti::new(Fd(fd)).flags(libc::SOCK_CLOEXEC).build()
    }
    fn advance(&mut self, n: usize, _bytes: &mut usize, _fd: RawFd) -> Progress {
        // The drivers turn each accepted fd into its own packet (`accepted_packet`); a
        // non-negative result here is a stray fd: close it and go on.
        // SAFETY: a non-negative accept result is a new fd that nobody else owns.
        drop(unsafe { OwnedFd::from_raw_fd(n as RawFd) });
        Progress::Again
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Accept(Box::new(Accepted::new(None, None, Vec::new())))
    }
}
