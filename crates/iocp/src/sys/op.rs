//! Operations: everything the kernel may touch while an operation is in flight, owned in one
//! boxed value, and the syscalls each backend makes for it.
//!
//! An `Op` is boxed when it is started and never moves until its completion is built, so the
//! pointers handed to the kernel (buffer spare capacity, iovec arrays, `msghdr`, `sockaddr`
//! storage) stay valid for as long as the kernel may use them. The epoll backend makes the same
//! syscalls itself, non-blocking, when the fd is ready.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use socket2::SockAddr;

use crate::completion::{Accepted, Completion, OpId, Payload};
use crate::handle::HandleInner;

/// A `msghdr` with its iovec array, pointing into buffers owned by the same op.
pub(crate) struct Msg {
    iov: Vec<libc::iovec>,
    hdr: libc::msghdr,
}

// SAFETY: the raw pointers in `iov` and `hdr` point only into buffers owned by the same `Op`
// (and into `iov` itself); the `Op` is moved between threads as a whole, and only the thread
// that owns it (or the kernel, while it is in flight) dereferences them.
unsafe impl Send for Msg {}
// SAFETY: as above; a shared `&Msg` gives no access to the pointees.
unsafe impl Sync for Msg {}

impl Msg {
    fn new() -> Box<Self> {
        // SAFETY: `msghdr` is a plain C struct for which all-zero bytes is a valid value (null
        // pointers, zero lengths).
        let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        Box::new(Msg {
            iov: Vec::new(),
            hdr,
        })
    }

    /// Points the iovecs at the spare capacity of `bufs`, in order (scatter).
    fn scatter(&mut self, bufs: &mut [Vec<u8>]) -> *mut libc::msghdr {
        self.iov.clear();
        for b in bufs.iter_mut() {
            let spare = b.spare_capacity_mut();
            self.iov.push(libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: spare.len(),
            });
        }
        self.finish()
    }

    /// Points the iovecs at the unsent bytes of `bufs`, skipping the first `skip` bytes (gather).
    fn gather(&mut self, bufs: &[Vec<u8>], mut skip: usize) -> *mut libc::msghdr {
        self.iov.clear();
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let rest = &b[skip..];
            skip = 0;
            self.iov.push(libc::iovec {
                iov_base: rest.as_ptr().cast_mut().cast(),
                iov_len: rest.len(),
            });
        }
        self.finish()
    }

    fn finish(&mut self) -> *mut libc::msghdr {
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = self.iov.len();
        &mut self.hdr
    }
}

/// Storage for a peer address written by `accept4`.
pub(crate) struct AddrBuf {
    storage: MaybeUninit<libc::sockaddr_storage>,
    len: libc::socklen_t,
}

impl AddrBuf {
    fn new() -> Box<Self> {
        Box::new(AddrBuf {
            storage: MaybeUninit::zeroed(),
            len: size_of::<libc::sockaddr_storage>() as _,
        })
    }

    pub(crate) fn ptrs(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        self.len = size_of::<libc::sockaddr_storage>() as _;
        (self.storage.as_mut_ptr().cast(), &mut self.len)
    }

    /// The address the kernel wrote, if any.
    fn take(&self) -> Option<SockAddr> {
        if self.len == 0 || self.len as usize > size_of::<libc::sockaddr_storage>() {
            return None;
        }
        // SAFETY: `storage` was zero-initialised at creation and the kernel wrote at most `len`
        // bytes of a valid address into it, so it is initialised, and `len` is in bounds.
        let storage = unsafe { self.storage.assume_init() };
        // SAFETY: `sockaddr_storage` and socket2's storage are both the C `sockaddr_storage`
        // (same size and layout), so the bytes are a valid value of the target type.
        let storage = unsafe {
            std::mem::transmute::<libc::sockaddr_storage, socket2::SockAddrStorage>(storage)
        };
        // SAFETY: `len` bytes of `storage` hold the address the kernel wrote.
        Some(unsafe { SockAddr::new(storage, self.len) })
    }
}

/// The per-kind state of an operation.
pub(crate) enum OpKind {
    Recv {
        buf: Vec<u8>,
    },
    RecvV {
        bufs: Vec<Vec<u8>>,
        msg: Box<Msg>,
    },
    Send {
        buf: Vec<u8>,
    },
    SendV {
        bufs: Vec<Vec<u8>>,
        msg: Box<Msg>,
    },
    Accept {
        addr: Box<AddrBuf>,
        accepted: Option<OwnedFd>,
        buf: Vec<u8>,
        want_data: bool,
    },
    Connect {
        addr: SockAddr,
        connected: bool,
        buf: Vec<u8>,
    },
    Ready,
}

impl OpKind {
    pub(crate) fn recv(buf: Vec<u8>) -> Self {
        OpKind::Recv { buf }
    }
    pub(crate) fn recv_vectored(bufs: Vec<Vec<u8>>) -> Self {
        OpKind::RecvV {
            bufs,
            msg: Msg::new(),
        }
    }
    pub(crate) fn send(buf: Vec<u8>) -> Self {
        OpKind::Send { buf }
    }
    pub(crate) fn send_vectored(bufs: Vec<Vec<u8>>) -> Self {
        OpKind::SendV {
            bufs,
            msg: Msg::new(),
        }
    }
    pub(crate) fn accept(buf: Vec<u8>) -> Self {
        let want_data = buf.capacity() > buf.len();
        OpKind::Accept {
            addr: AddrBuf::new(),
            accepted: None,
            buf,
            want_data,
        }
    }
    pub(crate) fn connect(addr: SockAddr, buf: Vec<u8>) -> Self {
        OpKind::Connect {
            addr,
            connected: false,
            buf,
        }
    }

    /// The side of the stream whose order this op must keep (receives fill buffers in the order
    /// they were started, sends go out in order): 0 = read, 1 = write; `None` when order does
    /// not matter (accept, zero-byte receive).
    pub(crate) fn ordered_side(&self) -> Option<usize> {
        match self {
            OpKind::Recv { .. } | OpKind::RecvV { .. } => Some(0),
            OpKind::Send { .. } | OpKind::SendV { .. } | OpKind::Connect { .. } => Some(1),
            OpKind::Accept { .. } | OpKind::Ready => None,
        }
    }

    /// True for operations served by the read side of a handle (epoll's read queue).
    pub(crate) fn is_read(&self) -> bool {
        matches!(
            self,
            OpKind::Recv { .. } | OpKind::RecvV { .. } | OpKind::Accept { .. } | OpKind::Ready
        )
    }

    /// The buffers, handed back when the operation is refused or completes.
    pub(crate) fn into_payload(self, peer: Option<SockAddr>) -> Payload {
        match self {
            OpKind::Recv { buf } => Payload::Recv(buf),
            OpKind::RecvV { bufs, .. } => Payload::RecvVectored(bufs),
            OpKind::Send { buf } => Payload::Send(buf),
            OpKind::SendV { bufs, .. } => Payload::SendVectored(bufs),
            OpKind::Accept { accepted, buf, .. } => {
                Payload::Accept(Box::new(Accepted::new(accepted, peer, buf)))
            }
            OpKind::Connect { buf, .. } => Payload::Connect(buf),
            OpKind::Ready => Payload::Ready,
        }
    }
}

/// Where an operation stands after a syscall (or a CQE).
#[derive(Debug, Eq, PartialEq)]
pub(crate) enum Progress {
    /// Finished; the status is 0 or an errno.
    Done(i32),
    /// Not ready: wait for readiness on the op's handle (epoll), or resubmit (io_uring).
    Again,
    /// Accept's initial receive must wait for the accepted socket to become readable.
    AgainOnAccepted,
}

/// One started operation: the "extended OVERLAPPED". Owns the handle reference (so the fd
/// cannot be closed and reused while the kernel may use it), the buffers, and the context.
pub(crate) struct Op<C> {
    pub(crate) id: OpId,
    pub(crate) handle: Arc<HandleInner<C>>,
    pub(crate) context: C,
    pub(crate) kind: OpKind,
    /// Bytes moved so far (sends resumed after a short write; the result of a receive).
    pub(crate) bytes: usize,
    /// Set by a cancel: the status an abort reports (`ECANCELED`, or `ETIMEDOUT` for a deadline).
    pub(crate) cancel_reason: i32,
    /// The op's deadline timer, removed from the port's timer set when it completes.
    pub(crate) timer: Option<TimerKey>,
}

/// Identifies a deadline in the port's timer set.
pub(crate) type TimerKey = (std::time::Instant, u64);

impl<C> Op<C> {
    pub(crate) fn new(
        id: OpId,
        handle: Arc<HandleInner<C>>,
        context: C,
        kind: OpKind,
    ) -> Box<Self> {
        Box::new(Op {
            id,
            handle,
            context,
            kind,
            bytes: 0,
            cancel_reason: 0,
            timer: None,
        })
    }

    /// Builds the completion packet, handing back the context and every buffer.
    #[allow(clippy::boxed_local)] // ops live boxed (stable addresses) until they complete
    pub(crate) fn complete(self: Box<Self>, status: i32) -> Completion<C> {
        let Op {
            id,
            handle,
            context,
            kind,
            bytes,
            cancel_reason,
            timer,
        } = *self;
        let peer = match &kind {
            OpKind::Accept {
                addr,
                accepted: Some(_),
                ..
            } => addr.take(),
            _ => None,
        };
        // An abort reports why it was asked for (a deadline reports ETIMEDOUT).
        let status = if status == libc::ECANCELED && cancel_reason != 0 {
            cancel_reason
        } else {
            status
        };
        Completion {
            key: handle.key,
            op: id,
            bytes,
            status,
            context,
            payload: kind.into_payload(peer),
            timer,
        }
    }

    /// Builds the completion for a cancelled operation: "aborted", with the bytes it had moved.
    pub(crate) fn abort(self: Box<Self>) -> Completion<C> {
        self.complete(libc::ECANCELED)
    }

    fn fd(&self) -> RawFd {
        self.handle.fd.as_raw_fd()
    }

    /// The accepted socket of an accept in its initial-receive stage.
    pub(crate) fn accepted_fd(&self) -> Option<RawFd> {
        match &self.kind {
            OpKind::Accept {
                accepted: Some(fd), ..
            } => Some(fd.as_raw_fd()),
            _ => None,
        }
    }

    /// Records a syscall (or CQE) result `res` (bytes or `-errno`) for the current stage.
    /// Shared by both backends, so that they agree on every operation's outcome.
    pub(crate) fn advance(&mut self, res: isize) -> Progress {
        if res < 0 {
            let errno = (-res) as i32;
            if errno == libc::EAGAIN || errno == libc::EINTR {
                return match self.kind {
                    OpKind::Accept {
                        accepted: Some(_), ..
                    } => Progress::AgainOnAccepted,
                    _ => Progress::Again,
                };
            }
            if errno == libc::EINPROGRESS || errno == libc::EALREADY {
                return Progress::Again;
            }
            return Progress::Done(errno);
        }
        let n = res as usize;
        match &mut self.kind {
            OpKind::Recv { buf } => {
                let n = n.min(buf.capacity() - buf.len());
                // SAFETY: the kernel (recv or the io_uring CQE for it) initialised exactly `n`
                // bytes at the start of the spare capacity that `recv_ptr` handed out.
                unsafe { buf.set_len(buf.len() + n) };
                self.bytes = n;
                Progress::Done(0)
            }
            OpKind::RecvV { bufs, .. } => {
                let mut left = n;
                for b in bufs.iter_mut() {
                    let take = left.min(b.capacity() - b.len());
                    // SAFETY: recvmsg filled the iovecs in order without gaps; this buffer's
                    // spare capacity received its first `take` bytes.
                    unsafe { b.set_len(b.len() + take) };
                    left -= take;
                }
                self.bytes = n - left;
                Progress::Done(0)
            }
            OpKind::Send { buf } => {
                self.bytes += n;
                if self.bytes >= buf.len() || n == 0 {
                    Progress::Done(0)
                } else {
                    Progress::Again
                }
            }
            OpKind::SendV { bufs, .. } => {
                self.bytes += n;
                let total: usize = bufs.iter().map(Vec::len).sum();
                if self.bytes >= total || n == 0 {
                    Progress::Done(0)
                } else {
                    Progress::Again
                }
            }
            OpKind::Accept {
                accepted,
                buf,
                want_data,
                ..
            } => match accepted {
                None => {
                    // SAFETY: a non-negative accept result is a new fd that nobody else owns.
                    *accepted = Some(unsafe { OwnedFd::from_raw_fd(res as RawFd) });
                    if *want_data {
                        Progress::AgainOnAccepted
                    } else {
                        Progress::Done(0)
                    }
                }
                Some(_) => {
                    let n = n.min(buf.capacity() - buf.len());
                    // SAFETY: the initial receive initialised `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    self.bytes = n;
                    Progress::Done(0)
                }
            },
            OpKind::Connect { connected, buf, .. } => {
                if !*connected {
                    *connected = true;
                    return if buf.is_empty() {
                        Progress::Done(0)
                    } else {
                        Progress::Again
                    };
                }
                self.bytes += n;
                if self.bytes >= buf.len() || n == 0 {
                    Progress::Done(0)
                } else {
                    Progress::Again
                }
            }
            OpKind::Ready => Progress::Done(0),
        }
    }

    /// epoll: makes the current stage's syscall, non-blocking, and records its result.
    pub(crate) fn try_io(&mut self) -> Progress {
        loop {
            let res = self.syscall();
            match self.advance(res) {
                // A send that moved bytes, or a connect that just finished: go on at once.
                Progress::Again | Progress::AgainOnAccepted if res >= 0 => continue,
                p => return p,
            }
        }
    }

    fn syscall(&mut self) -> isize {
        let fd = self.fd();
        let ret: isize = match &mut self.kind {
            OpKind::Recv { buf } => {
                let spare = buf.spare_capacity_mut();
                // SAFETY: `spare` is writable memory owned by this op, of the length given.
                unsafe {
                    libc::recv(
                        fd,
                        spare.as_mut_ptr().cast(),
                        spare.len(),
                        libc::MSG_DONTWAIT,
                    )
                }
            }
            OpKind::RecvV { bufs, msg } => {
                let hdr = msg.scatter(bufs);
                // SAFETY: `hdr` points at iovecs describing spare capacity owned by this op.
                unsafe { libc::recvmsg(fd, hdr, libc::MSG_DONTWAIT) }
            }
            OpKind::Send { buf } => {
                let rest = &buf[self.bytes.min(buf.len())..];
                // SAFETY: `rest` is readable memory owned by this op, of the length given.
                unsafe {
                    libc::send(
                        fd,
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                }
            }
            OpKind::SendV { bufs, msg } => {
                let hdr = msg.gather(bufs, self.bytes);
                // SAFETY: `hdr` points at iovecs describing bytes owned by this op.
                unsafe { libc::sendmsg(fd, hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
            }
            OpKind::Accept {
                addr,
                accepted,
                buf,
                ..
            } => match accepted {
                None => {
                    let (a, l) = addr.ptrs();
                    // SAFETY: `a`/`l` point at storage owned by this op, `l` holding its size.
                    unsafe {
                        libc::accept4(fd, a, l, libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) as isize
                    }
                }
                Some(newfd) => {
                    let spare = buf.spare_capacity_mut();
                    // SAFETY: `spare` is writable memory owned by this op.
                    unsafe {
                        libc::recv(
                            newfd.as_raw_fd(),
                            spare.as_mut_ptr().cast(),
                            spare.len(),
                            libc::MSG_DONTWAIT,
                        )
                    }
                }
            },
            OpKind::Connect {
                addr,
                connected,
                buf,
            } => {
                if !*connected {
                    // SAFETY: `addr` is a valid socket address of the length given.
                    let r = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) };
                    if r == 0 {
                        0
                    } else {
                        let e = errno();
                        if e == libc::EALREADY || e == libc::EINPROGRESS {
                            -(libc::EINPROGRESS as isize)
                        } else if e == libc::EISCONN {
                            // A previous attempt finished in the background: ask how it ended.
                            -(so_error(fd) as isize)
                        } else {
                            -(e as isize)
                        }
                    }
                } else {
                    let rest = &buf[self.bytes.min(buf.len())..];
                    // SAFETY: `rest` is readable memory owned by this op.
                    unsafe {
                        libc::send(
                            fd,
                            rest.as_ptr().cast(),
                            rest.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    }
                }
            }
            OpKind::Ready => {
                let mut byte = 0u8;
                // SAFETY: peeks at most one byte into a local.
                let r = unsafe {
                    libc::recv(
                        fd,
                        (&raw mut byte).cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                if r >= 0 { 0 } else { r }
            }
        };
        if ret < 0
            && !matches!(
                self.kind,
                OpKind::Connect {
                    connected: false,
                    ..
                }
            )
        {
            -(errno() as isize)
        } else {
            ret
        }
    }

    /// epoll: a connect's writability arrived; fetch its outcome (`SO_ERROR`).
    pub(crate) fn connect_outcome(&mut self) -> Option<Progress> {
        if let OpKind::Connect {
            connected: false, ..
        } = self.kind
        {
            let e = so_error(self.fd());
            if e == 0 {
                let p = self.advance(0);
                return Some(if p == Progress::Again {
                    self.try_io()
                } else {
                    p
                });
            }
            return Some(Progress::Done(e));
        }
        None
    }

    /// io_uring: the submission entry for the current stage.
    #[cfg(feature = "uring")]
    pub(crate) fn sqe(&mut self) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let fd = Fd(self.fd());
        match &mut self.kind {
            OpKind::Recv { buf } => {
                let spare = buf.spare_capacity_mut();
                opcode::Recv::new(fd, spare.as_mut_ptr().cast(), len_u32(spare.len())).build()
            }
            OpKind::RecvV { bufs, msg } => opcode::RecvMsg::new(fd, msg.scatter(bufs)).build(),
            OpKind::Send { buf } => {
                let rest = &buf[self.bytes.min(buf.len())..];
                opcode::Send::new(fd, rest.as_ptr(), len_u32(rest.len()))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            OpKind::SendV { bufs, msg } => opcode::SendMsg::new(fd, msg.gather(bufs, self.bytes))
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            OpKind::Accept {
                addr,
                accepted,
                buf,
                ..
            } => match accepted {
                None => {
                    let (a, l) = addr.ptrs();
                    opcode::Accept::new(fd, a, l)
                        .flags(libc::SOCK_CLOEXEC)
                        .build()
                }
                Some(newfd) => {
                    let spare = buf.spare_capacity_mut();
                    opcode::Recv::new(
                        Fd(newfd.as_raw_fd()),
                        spare.as_mut_ptr().cast(),
                        len_u32(spare.len()),
                    )
                    .build()
                }
            },
            OpKind::Connect {
                addr,
                connected,
                buf,
            } => {
                if *connected {
                    let rest = &buf[self.bytes.min(buf.len())..];
                    opcode::Send::new(fd, rest.as_ptr(), len_u32(rest.len()))
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                } else {
                    opcode::Connect::new(fd, addr.as_ptr().cast(), addr.len()).build()
                }
            }
            OpKind::Ready => opcode::PollAdd::new(
                fd,
                (libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32,
            )
            .build(),
        }
    }

    /// io_uring: records a CQE result. A poll result is an event mask, not a byte count.
    #[cfg(feature = "uring")]
    pub(crate) fn on_cqe(&mut self, res: i32) -> Progress {
        if let OpKind::Ready = self.kind
            && res >= 0
        {
            if res & i32::from(libc::POLLERR) != 0 {
                let e = so_error(self.fd());
                if e != 0 {
                    return Progress::Done(e);
                }
            }
            return Progress::Done(0);
        }
        if let (
            OpKind::Connect {
                connected: false, ..
            },
            true,
        ) = (&self.kind, res == -libc::EISCONN)
        {
            return self.advance(0);
        }
        match self.advance(res as isize) {
            // io_uring retries readiness internally; EAGAIN reaching us is spurious: resubmit.
            Progress::AgainOnAccepted => Progress::Again,
            p => p,
        }
    }
}

#[cfg(feature = "uring")]
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `getsockopt(SO_ERROR)`: the pending error of a socket, 0 if none.
pub(crate) fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err`/`len` are valid locals of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    };
    if r < 0 { errno() } else { err }
}
