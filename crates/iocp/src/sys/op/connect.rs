//! `ConnectEx`: a connect, then (when given) an initial send on the new connection.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use socket2::SockAddr;

use super::code::{Count, OpCode, Outcome, Progress, Side};
use super::raw::{errno, fail, send, so_error};
use super::stream::sent;
use crate::completion::{Payload, Status};
use crate::sys::fault::Point;
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Opcode};

/// A connect's destination (boxed: keeps `OpKind` small), whether the connection is made, and
/// the bytes sent once it is.
pub(crate) struct Connect {
    st: Box<ConnectState>,
    buf: Vec<u8>,
}

struct ConnectState {
    addr: SockAddr,
    connected: bool,
}

impl Connect {
    /// A connect to `addr`, then a send of `buf` (nothing if it is empty).
    pub(crate) fn new(addr: SockAddr, buf: Vec<u8>) -> Self {
        Connect { st: Box::new(ConnectState { addr, connected: false }), buf }
    }
}

impl OpCode for Connect {
    const SIDE: Side = Side::Write;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Connect;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::CONNECT, opcodes::SEND];

    fn fault_point(&self) -> Option<Point> {
        Some(if self.st.connected { Point::Send } else { Point::Connect })
    }
    fn syscall(&mut self, fd: RawFd, bytes: usize) -> isize {
        if self.st.connected {
            return send(fd, &self.buf[bytes.min(self.buf.len())..]);
        }
        let addr = &self.st.addr;
        // SAFETY: `addr` is a valid socket address of the length given.
        let r = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) };
        if r == 0 {
            return 0;
        }
        match errno() {
            libc::EALREADY | libc::EINPROGRESS => fail(libc::EINPROGRESS),
            // A previous attempt finished in the background: ask how it ended.
            libc::EISCONN => fail(so_error(fd)),
            e => fail(e),
        }
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        if self.st.connected {
            super::stream::send_sqe(fd, &self.buf[bytes.min(self.buf.len())..])
        } else {
            let addr = &self.st.addr;
            opcode::Connect::new(Fd(fd), addr.as_ptr().cast(), addr.len()).build()
        }
    }
    #[cfg(feature = "uring")]
    fn on_cqe(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Outcome {
        // Connected already (an earlier attempt finished): that is success.
        if res == -libc::EISCONN && !self.st.connected {
            return Outcome::Result(0);
        }
        Outcome::Result(res as isize)
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        if !self.st.connected {
            self.st.connected = true;
            return if self.buf.is_empty() { Progress::DONE } else { Progress::Again };
        }
        sent(bytes, n, self.buf.len())
    }
    /// A readiness event is never trusted for completion: it may be a stale mask of the fresh
    /// socket (`EPOLLOUT | EPOLLHUP` before the connect), consumed after the connect was
    /// queued. The outcome is `SO_ERROR`; 0 with no peer yet (`getpeername`: `ENOTCONN`) means
    /// the handshake is still in progress: keep waiting.
    fn ready_result(&mut self, fd: BorrowedFd<'_>) -> Option<Outcome> {
        if self.st.connected {
            return None;
        }
        let e = so_error(fd.as_raw_fd());
        if e != 0 {
            return Some(Outcome::Progress(Progress::fail(e)));
        }
        if rustix::net::getpeername(fd) == Err(rustix::io::Errno::NOTCONN) {
            // Still in SYN_SENT, or failed since: a failure sets SO_ERROR.
            let e = so_error(fd.as_raw_fd());
            return Some(Outcome::Progress(if e == 0 {
                Progress::Again
            } else {
                Progress::fail(e)
            }));
        }
        Some(Outcome::Result(0))
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Connect(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use socket2::{Domain, Socket, Type};

    use super::Connect;
    use crate::completion::{CompletionKey, OpId};
    use crate::sys::op::{Op, Progress};
    use crate::{BackendChoice, CompletionPort};

    /// Issue 11, bug 4: a readiness event for a connect that is still in SYN_SENT (the stale
    /// `EPOLLOUT | EPOLLHUP` of the fresh socket, consumed after the connect was queued) must
    /// not complete it: `SO_ERROR` is 0 then, but there is no peer yet.
    #[test]
    fn a_connect_in_syn_sent_is_not_done_on_a_stale_readiness_event() {
        // A listener whose accept queue is full drops SYNs: a connect to it stays in SYN_SENT.
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap();
        let _filler = TcpStream::connect(addr.as_socket().unwrap()).unwrap();
        let port: CompletionPort<()> =
            CompletionPort::<()>::builder().backend(BackendChoice::Epoll).build().unwrap();
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let h = port.associate(s, CompletionKey(1)).unwrap();
        let mut op: Box<Op<()>> =
            Op::new(OpId(1), h.inner().clone(), (), Connect::new(addr, Vec::new()).into());
        assert_eq!(op.try_io(), Progress::Again, "connect in progress");
        let no_peer = rustix::net::getpeername(&h.inner().fd).unwrap_err();
        assert_eq!(no_peer, rustix::io::Errno::NOTCONN, "the test socket is in SYN_SENT");
        assert_eq!(op.on_ready(), Progress::Again);
    }
}
