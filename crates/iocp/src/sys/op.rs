//! Operations: everything the kernel may touch while an operation is in flight, owned in one
//! boxed value, and the syscalls each backend makes for it.
//!
//! An `Op` is boxed when it is started and never moves until its completion is built, so the
//! pointers handed to the kernel (buffer spare capacity, iovec arrays, `msghdr`, `sockaddr`
//! storage) stay valid for as long as the kernel may use them. The epoll backend makes the same
//! syscalls itself, non-blocking, when the fd is ready; `Op::advance` interprets a result the
//! same way for both backends, so they agree on every outcome.

use crate::stats::InFlightByKind;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use socket2::SockAddr;

use crate::APPEND;
use crate::completion::{Accepted, Completion, OpId, Payload, STATUS_EOF, Transmitted};
use crate::sys::bufpool::BufferPool;
use crate::sys::fault::{self, Point};
use crate::sys::handle::{HandleInner, Side};

/// Largest count for one `sendfile(2)` call.
const SENDFILE_MAX: u64 = 0x7fff_f000;

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
        Box::new(Self::plain())
    }

    fn plain() -> Self {
        // SAFETY: `msghdr` is a plain C struct for which all-zero bytes is a valid value (null
        // pointers, zero lengths).
        let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        Msg { iov: Vec::new(), hdr }
    }

    /// Points the iovecs at the spare capacity of `bufs`, in order (scatter).
    fn scatter(&mut self, bufs: &mut [Vec<u8>]) -> *mut libc::msghdr {
        self.iov.clear();
        for b in bufs.iter_mut() {
            let spare = b.spare_capacity_mut();
            self.iov
                .push(libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() });
        }
        self.finish(std::ptr::null_mut(), 0)
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
        self.finish(std::ptr::null_mut(), 0)
    }

    /// One buffer's spare capacity, and room for the sender's address (recvmsg).
    fn recv_from(&mut self, buf: &mut Vec<u8>, addr: &mut AddrBuf) -> *mut libc::msghdr {
        self.iov.clear();
        let spare = buf.spare_capacity_mut();
        self.iov.push(libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() });
        let (name, len) = addr.ptrs();
        // SAFETY: `len` points at `addr.len`, initialised by `ptrs`.
        let len = unsafe { *len };
        self.finish(name.cast(), len)
    }

    /// One buffer's bytes, to `to` (sendmsg).
    fn send_to(&mut self, buf: &[u8], to: &SockAddr) -> *mut libc::msghdr {
        self.iov.clear();
        self.iov.push(libc::iovec { iov_base: buf.as_ptr().cast_mut().cast(), iov_len: buf.len() });
        self.finish(to.as_ptr().cast_mut().cast(), to.len())
    }

    fn finish(&mut self, name: *mut libc::c_void, namelen: libc::socklen_t) -> *mut libc::msghdr {
        self.hdr.msg_name = name;
        self.hdr.msg_namelen = namelen;
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = self.iov.len();
        self.hdr.msg_flags = 0;
        &mut self.hdr
    }
}

/// Storage for a peer address written by `accept4` or `recvmsg`.
pub(crate) struct AddrBuf {
    storage: MaybeUninit<libc::sockaddr_storage>,
    len: libc::socklen_t,
}

impl AddrBuf {
    fn plain() -> Self {
        AddrBuf { storage: MaybeUninit::zeroed(), len: size_of::<libc::sockaddr_storage>() as _ }
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

/// TransmitFile's state: head bytes, a file range, tail bytes, sent in that order.
pub(crate) struct Transmit {
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

impl Transmit {
    fn body_left(&self) -> bool {
        self.remaining > 0
    }

    /// In the body stage (head sent, file bytes left).
    fn in_body(&self) -> bool {
        self.head_sent >= self.head.len() && self.body_left()
    }

    fn into_parts(self) -> Transmitted {
        Transmitted { file: self.file, head: self.head, tail: self.tail }
    }
}

/// recvmsg's header and the sender's address, boxed together (keeps `OpKind` small).
pub(crate) struct MsgFrom {
    msg: Msg,
    addr: AddrBuf,
}

/// sendmsg's header and the destination, boxed together.
pub(crate) struct MsgTo {
    msg: Msg,
    to: SockAddr,
}

/// An accept's peer address storage, the accepted socket once there is one, and whether an
/// initial receive follows.
pub(crate) struct AcceptState {
    addr: AddrBuf,
    accepted: Option<OwnedFd>,
    want_data: bool,
}

/// Where a DisconnectEx is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DisconnectStage {
    /// `shutdown(SHUT_WR)`: our FIN goes out.
    Shutdown,
    /// Reading (and dropping) what the peer still sends, until its FIN.
    DrainToFin,
}

/// A connect's destination and whether the connection is made (then the initial send runs).
pub(crate) struct ConnectState {
    addr: SockAddr,
    connected: bool,
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
    RecvFrom {
        buf: Vec<u8>,
        io: Box<MsgFrom>,
    },
    SendTo {
        buf: Vec<u8>,
        io: Box<MsgTo>,
    },
    Accept {
        st: Box<AcceptState>,
        buf: Vec<u8>,
    },
    Connect {
        st: Box<ConnectState>,
        buf: Vec<u8>,
    },
    Ready,
    ReadAt {
        buf: Vec<u8>,
        offset: u64,
    },
    WriteAt {
        buf: Vec<u8>,
        offset: u64,
    },
    Transmit(Box<Transmit>),
    /// DisconnectEx: shut down the write side, read until the peer's FIN, then (reuse)
    /// dissolve the association so the socket can connect again.
    Disconnect {
        stage: DisconnectStage,
        reuse: bool,
        scratch: Vec<u8>,
    },
    /// A receive into a buffer the pool lends when data arrives; `got` is that buffer's id.
    RecvPooled {
        pool: BufferPool,
        got: Option<u16>,
    },
    /// A repeating accept: each connection is its own packet; the op itself ends only by
    /// cancel, close or error.
    AcceptMulti,
}

impl OpKind {
    pub(crate) fn recv(buf: Vec<u8>) -> Self {
        OpKind::Recv { buf }
    }
    pub(crate) fn recv_vectored(bufs: Vec<Vec<u8>>) -> Self {
        OpKind::RecvV { bufs, msg: Msg::new() }
    }
    pub(crate) fn send(buf: Vec<u8>) -> Self {
        OpKind::Send { buf }
    }
    pub(crate) fn send_vectored(bufs: Vec<Vec<u8>>) -> Self {
        OpKind::SendV { bufs, msg: Msg::new() }
    }
    pub(crate) fn recv_from(buf: Vec<u8>) -> Self {
        OpKind::RecvFrom {
            buf,
            io: Box::new(MsgFrom { msg: Msg::plain(), addr: AddrBuf::plain() }),
        }
    }
    pub(crate) fn send_to(buf: Vec<u8>, to: SockAddr) -> Self {
        OpKind::SendTo { buf, io: Box::new(MsgTo { msg: Msg::plain(), to }) }
    }
    pub(crate) fn accept(buf: Vec<u8>) -> Self {
        let want_data = buf.capacity() > buf.len();
        OpKind::Accept {
            st: Box::new(AcceptState { addr: AddrBuf::plain(), accepted: None, want_data }),
            buf,
        }
    }
    pub(crate) fn connect(addr: SockAddr, buf: Vec<u8>) -> Self {
        OpKind::Connect { st: Box::new(ConnectState { addr, connected: false }), buf }
    }
    pub(crate) fn read_at(buf: Vec<u8>, offset: u64) -> Self {
        OpKind::ReadAt { buf, offset }
    }
    pub(crate) fn write_at(buf: Vec<u8>, offset: u64) -> Self {
        OpKind::WriteAt { buf, offset }
    }
    pub(crate) fn transmit(
        file: Arc<File>,
        offset: u64,
        len: u64,
        head: Vec<u8>,
        tail: Vec<u8>,
    ) -> Self {
        OpKind::Transmit(Box::new(Transmit {
            file,
            offset,
            remaining: len,
            head,
            tail,
            head_sent: 0,
            tail_sent: 0,
        }))
    }
    pub(crate) fn accept_multi() -> Self {
        OpKind::AcceptMulti
    }
    pub(crate) fn recv_pooled(pool: BufferPool) -> Self {
        OpKind::RecvPooled { pool, got: None }
    }
    pub(crate) fn disconnect(reuse: bool) -> Self {
        OpKind::Disconnect { stage: DisconnectStage::Shutdown, reuse, scratch: Vec::new() }
    }

    /// The side of the handle whose order this op must keep (receives fill buffers in the order
    /// they were started, sends go out in order); `None` when order does not matter (accept,
    /// zero-byte receive, file I/O at explicit offsets).
    pub(crate) fn ordered_side(&self) -> Option<Side> {
        match self {
            OpKind::Recv { .. }
            | OpKind::RecvV { .. }
            | OpKind::RecvFrom { .. }
            | OpKind::RecvPooled { .. }
            | OpKind::Disconnect { .. } => Some(Side::Read),
            OpKind::Send { .. }
            | OpKind::SendV { .. }
            | OpKind::SendTo { .. }
            | OpKind::Connect { .. }
            | OpKind::Transmit(_) => Some(Side::Write),
            OpKind::Accept { .. }
            | OpKind::AcceptMulti
            | OpKind::Ready
            | OpKind::ReadAt { .. }
            | OpKind::WriteAt { .. } => None,
        }
    }

    /// Adds one to this op's kind in `counts` (for [`InFlightByKind`]).
    pub(crate) fn count_in(&self, counts: &mut InFlightByKind) {
        let c = match self {
            OpKind::Accept { .. } | OpKind::AcceptMulti => &mut counts.accept,
            OpKind::Connect { .. } => &mut counts.connect,
            OpKind::Recv { .. }
            | OpKind::RecvV { .. }
            | OpKind::RecvFrom { .. }
            | OpKind::RecvPooled { .. }
            | OpKind::Ready => &mut counts.receive,
            OpKind::Send { .. }
            | OpKind::SendV { .. }
            | OpKind::SendTo { .. }
            | OpKind::Transmit(_) => &mut counts.send,
            OpKind::ReadAt { .. } | OpKind::WriteAt { .. } => &mut counts.file,
            OpKind::Disconnect { .. } => &mut counts.other,
        };
        *c += 1;
    }

    /// The side of a handle whose readiness serves this op (epoll's queue for it).
    pub(crate) fn ready_side(&self) -> Side {
        if self.is_read() { Side::Read } else { Side::Write }
    }

    /// True for operations served by the read side of a handle (epoll's read queue).
    pub(crate) fn is_read(&self) -> bool {
        matches!(
            self,
            OpKind::Recv { .. }
                | OpKind::RecvV { .. }
                | OpKind::RecvFrom { .. }
                | OpKind::Accept { .. }
                | OpKind::AcceptMulti
                | OpKind::Ready
                | OpKind::Disconnect { .. }
                | OpKind::RecvPooled { .. }
        )
    }

    /// True for regular-file I/O: epoll cannot wait for it, so it runs on the file pool.
    pub(crate) fn is_file_io(&self) -> bool {
        matches!(self, OpKind::ReadAt { .. } | OpKind::WriteAt { .. })
    }

    /// The buffers, handed back when the operation is refused or completes.
    pub(crate) fn into_payload(self, peer: Option<SockAddr>, bytes: usize) -> Payload {
        match self {
            OpKind::Recv { buf } => Payload::Recv(buf),
            OpKind::RecvV { bufs, .. } => Payload::RecvVectored(bufs),
            OpKind::Send { buf } => Payload::Send(buf),
            OpKind::SendV { bufs, .. } => Payload::SendVectored(bufs),
            OpKind::RecvFrom { buf, .. } => Payload::RecvFrom(buf, peer.map(Box::new)),
            OpKind::SendTo { buf, .. } => Payload::SendTo(buf),
            OpKind::Accept { st, buf } => {
                let accepted = st.accepted;
                Payload::Accept(Box::new(Accepted::new(accepted, peer, buf)))
            }
            OpKind::Connect { buf, .. } => Payload::Connect(buf),
            OpKind::Ready => Payload::Ready,
            OpKind::ReadAt { buf, .. } => Payload::Read(buf),
            OpKind::WriteAt { buf, .. } => Payload::Write(buf),
            OpKind::Transmit(t) => Payload::TransmitFile(Box::new(t.into_parts())),
            OpKind::Disconnect { .. } => Payload::Disconnect,
            OpKind::AcceptMulti => Payload::Accept(Box::new(Accepted::new(None, None, Vec::new()))),
            OpKind::RecvPooled { pool, got } => {
                Payload::RecvPooled(got.map(|id| pool.lend(id, bytes)))
            }
        }
    }
}

/// Where an operation stands after a syscall (or a CQE).
#[derive(Debug, Eq, PartialEq)]
pub(crate) enum Progress {
    /// Finished; the status is 0, an errno, or `STATUS_EOF`.
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
    /// (An errno below 256, so one byte: an idle connection's op stays small.)
    pub(crate) cancel_reason: u8,
    /// The op's deadline in the port's timer wheel, to disarm when it completes (an opaque
    /// tag the port sets and the completion carries back), or [`NO_TIMER`].
    pub(crate) timer: u32,
}

/// Stores an abort reason (`ECANCELED`, `ETIMEDOUT`) in a byte.
pub(crate) fn reason_code(errno: i32) -> u8 {
    u8::try_from(errno).unwrap_or(libc::ECANCELED as u8)
}

pub(crate) use crate::completion::NO_TIMER;

impl<C> Op<C> {
    pub(crate) fn new(
        id: OpId,
        handle: Arc<HandleInner<C>>,
        context: C,
        kind: OpKind,
    ) -> Box<Self> {
        Box::new(Op { id, handle, context, kind, bytes: 0, cancel_reason: 0, timer: NO_TIMER })
    }

    /// Builds the completion packet, handing back the context and every buffer.
    #[allow(clippy::boxed_local)] // ops live boxed (stable addresses) until they complete
    pub(crate) fn complete(self: Box<Self>, status: i32) -> Completion<C> {
        let Op { id, handle, context, kind, bytes, cancel_reason, timer } = *self;
        let peer = match &kind {
            OpKind::Accept { st, .. } if st.accepted.is_some() => st.addr.take(),
            OpKind::RecvFrom { io, .. } if bytes > 0 || status == 0 || status == libc::EMSGSIZE => {
                io.addr.take()
            }
            _ => None,
        };
        // An abort reports why it was asked for (a deadline reports ETIMEDOUT).
        let status = if status == libc::ECANCELED && cancel_reason != 0 {
            i32::from(cancel_reason)
        } else {
            status
        };
        Completion {
            key: handle.key,
            op: id,
            bytes,
            status,
            context,
            payload: kind.into_payload(peer, bytes),
            timer,
        }
    }

    /// A repeating accept took connection `fd`: its own packet, with a copy of the op's context.
    /// The copy is user code (`Clone`) running in the poll path: if it panics, the connection
    /// is closed (it gets no packet), the driver finishes its work, and the panic is raised
    /// again once the driver is consistent (see [`resume_user_panic`]).
    pub(crate) fn accepted_packet(&self, fd: OwnedFd, clone: fn(&C) -> C) -> Option<Completion<C>> {
        let context = catch_user_panic(|| clone(&self.context))?;
        let peer = socket2::SockRef::from(&fd).peer_addr().ok();
        Some(Completion {
            key: self.handle.key,
            op: self.id,
            bytes: 0,
            status: 0,
            context,
            payload: Payload::Accept(Box::new(Accepted::new(Some(fd), peer, Vec::new()))),
            timer: NO_TIMER,
        })
    }

    /// io_uring: a multishot accept's CQE carried connection `res` (a new fd).
    pub(crate) fn accepted_raw(&self, res: i32, clone: fn(&C) -> C) -> Option<Completion<C>> {
        // SAFETY: a non-negative accept CQE result is a new fd that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        self.accepted_packet(fd, clone)
    }

    /// epoll: runs a repeating accept until the listener has no connection left, a packet per
    /// connection into `out`. `Again` leaves the op waiting; `Done` ends it (an error).
    pub(crate) fn accept_many(
        &mut self,
        clone: fn(&C) -> C,
        out: &mut Vec<Completion<C>>,
    ) -> Progress {
        loop {
            let res = self.syscall();
            if res >= 0 {
                // SAFETY: a non-negative accept result is a new fd that nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(res as RawFd) };
                out.extend(self.accepted_packet(fd, clone));
                continue;
            }
            let errno = (-res) as i32;
            return match errno {
                libc::EAGAIN | libc::EINTR => Progress::Again,
                // The peer gave up before we took it: not the listener's failure.
                libc::ECONNABORTED | libc::EPROTO => continue,
                e => Progress::Done(e),
            };
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
            OpKind::Accept { st, .. } => st.accepted.as_ref().map(AsRawFd::as_raw_fd),
            _ => None,
        }
    }

    /// Records a syscall (or CQE) result `res` (bytes or `-errno`) for the current stage.
    /// Shared by both backends, so that they agree on every operation's outcome.
    pub(crate) fn advance(&mut self, res: isize) -> Progress {
        if res < 0 {
            let errno = (-res) as i32;
            if errno == libc::EAGAIN || errno == libc::EINTR {
                return match &self.kind {
                    OpKind::Accept { st, .. } if st.accepted.is_some() => Progress::AgainOnAccepted,
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
                // bytes at the start of the spare capacity handed out for this stage.
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
            OpKind::RecvFrom { buf, io } => {
                let MsgFrom { msg, addr } = &mut **io;
                let spare = buf.capacity() - buf.len();
                let copied = n.min(spare);
                // SAFETY: recvmsg initialised `copied` bytes of the spare capacity (with
                // MSG_TRUNC it reports the datagram's full length, which may be larger).
                unsafe { buf.set_len(buf.len() + copied) };
                self.bytes = copied;
                addr.len = msg.hdr.msg_namelen;
                let truncated = n > spare || msg.hdr.msg_flags & libc::MSG_TRUNC != 0;
                Progress::Done(if truncated { libc::EMSGSIZE } else { 0 })
            }
            OpKind::Send { buf } => {
                self.bytes += n;
                if self.bytes >= buf.len() || n == 0 { Progress::Done(0) } else { Progress::Again }
            }
            OpKind::SendV { bufs, .. } => {
                self.bytes += n;
                let total: usize = bufs.iter().map(Vec::len).sum();
                if self.bytes >= total || n == 0 { Progress::Done(0) } else { Progress::Again }
            }
            OpKind::SendTo { .. } => {
                self.bytes = n;
                Progress::Done(0)
            }
            OpKind::Accept { st, buf } => match st.accepted {
                None => {
                    // SAFETY: a non-negative accept result is a new fd that nobody else owns.
                    st.accepted = Some(unsafe { OwnedFd::from_raw_fd(res as RawFd) });
                    if st.want_data { Progress::AgainOnAccepted } else { Progress::Done(0) }
                }
                Some(_) => {
                    let n = n.min(buf.capacity() - buf.len());
                    // SAFETY: the initial receive initialised `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    self.bytes = n;
                    Progress::Done(0)
                }
            },
            OpKind::Connect { st, buf } => {
                if !st.connected {
                    st.connected = true;
                    return if buf.is_empty() { Progress::Done(0) } else { Progress::Again };
                }
                self.bytes += n;
                if self.bytes >= buf.len() || n == 0 { Progress::Done(0) } else { Progress::Again }
            }
            OpKind::Ready => Progress::Done(0),
            OpKind::ReadAt { buf, .. } => {
                if n == 0 && buf.capacity() > buf.len() {
                    return Progress::Done(STATUS_EOF);
                }
                let n = n.min(buf.capacity() - buf.len());
                // SAFETY: the read initialised `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                self.bytes = n;
                Progress::Done(0)
            }
            OpKind::WriteAt { buf, .. } => {
                self.bytes += n;
                if self.bytes >= buf.len() || n == 0 { Progress::Done(0) } else { Progress::Again }
            }
            OpKind::Transmit(t) => {
                if t.head_sent < t.head.len() {
                    t.head_sent += n;
                    self.bytes += n;
                } else if t.body_left() {
                    // sendfile (it advanced the offset itself, see `syscall`); 0 means the file
                    // ended early: send what there is, then the tail.
                    if n == 0 {
                        t.remaining = 0;
                    } else {
                        t.remaining -= (n as u64).min(t.remaining);
                    }
                    self.bytes += n;
                } else {
                    t.tail_sent += n;
                    self.bytes += n;
                }
                let done =
                    t.head_sent >= t.head.len() && !t.body_left() && t.tail_sent >= t.tail.len();
                if done { Progress::Done(0) } else { Progress::Again }
            }
            OpKind::AcceptMulti => {
                // The drivers turn each accepted fd into its own packet (`accepted_packet`);
                // a non-negative result here is a stray fd: close it and go on.
                // SAFETY: a non-negative accept result is a new fd that nobody else owns.
                drop(unsafe { OwnedFd::from_raw_fd(res as RawFd) });
                Progress::Again
            }
            OpKind::RecvPooled { pool, got } => {
                self.bytes = n.min(pool.buf_size());
                if got.is_none() && n > 0 {
                    return Progress::Done(libc::EIO); // data without a buffer: cannot happen
                }
                Progress::Done(0)
            }
            OpKind::Disconnect { stage, reuse, .. } => {
                if *stage == DisconnectStage::Shutdown {
                    *stage = DisconnectStage::DrainToFin;
                    return Progress::Again;
                }
                if n > 0 {
                    return Progress::Again; // discard what the peer still sends, until its FIN
                }
                if *reuse {
                    return Progress::Done(dissolve(self.handle.fd.as_raw_fd()));
                }
                Progress::Done(0)
            }
        }
    }

    /// epoll (and the file pool): makes the current stage's syscall and records its result,
    /// going on until the op is done or would block.
    pub(crate) fn try_io(&mut self) -> Progress {
        loop {
            let res = self.syscall();
            match self.advance(res) {
                // A stage that moved bytes (or just finished): go on at once.
                Progress::Again | Progress::AgainOnAccepted if res >= 0 => continue,
                p => return p,
            }
        }
    }

    /// The fault-injection point of the current stage's syscall, if it has one.
    pub(crate) fn fault_point(&self) -> Option<Point> {
        match &self.kind {
            OpKind::Accept { st, .. } if st.accepted.is_none() => Some(Point::Accept),
            OpKind::AcceptMulti => Some(Point::Accept),
            OpKind::Accept { .. } | OpKind::Recv { .. } | OpKind::RecvV { .. } => Some(Point::Recv),
            OpKind::RecvFrom { .. } => Some(Point::Recv),
            OpKind::RecvPooled { .. } => Some(Point::RecvPooled),
            OpKind::Send { .. } | OpKind::SendV { .. } | OpKind::SendTo { .. } => Some(Point::Send),
            OpKind::Connect { st, .. } if st.connected => Some(Point::Send),
            OpKind::Connect { .. } => Some(Point::Connect),
            _ => None,
        }
    }

    /// Makes the current stage's syscall, or returns the error injected for it.
    fn syscall(&mut self) -> isize {
        if let Some(errno) = self.fault_point().and_then(fault::hit) {
            return -(errno as isize);
        }
        self.raw_syscall()
    }

    fn raw_syscall(&mut self) -> isize {
        let fd = self.fd();
        let bytes = self.bytes;
        let ret: isize = match &mut self.kind {
            OpKind::Recv { buf } => {
                let spare = buf.spare_capacity_mut();
                // SAFETY: `spare` is writable memory owned by this op, of the length given.
                unsafe {
                    libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT)
                }
            }
            OpKind::RecvV { bufs, msg } => {
                let hdr = msg.scatter(bufs);
                // SAFETY: `hdr` points at iovecs describing spare capacity owned by this op.
                unsafe { libc::recvmsg(fd, hdr, libc::MSG_DONTWAIT) }
            }
            OpKind::RecvFrom { buf, io } => {
                let MsgFrom { msg, addr } = &mut **io;
                let hdr = msg.recv_from(buf, addr);
                // SAFETY: `hdr` points at spare capacity and address storage owned by this op.
                unsafe { libc::recvmsg(fd, hdr, libc::MSG_DONTWAIT | libc::MSG_TRUNC) }
            }
            OpKind::Send { buf } => send(fd, &buf[bytes.min(buf.len())..]),
            OpKind::SendV { bufs, msg } => {
                let hdr = msg.gather(bufs, bytes);
                // SAFETY: `hdr` points at iovecs describing bytes owned by this op.
                unsafe { libc::sendmsg(fd, hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
            }
            OpKind::SendTo { buf, io } => {
                let MsgTo { msg, to } = &mut **io;
                let hdr = msg.send_to(buf, to);
                // SAFETY: `hdr` points at bytes and an address owned by this op.
                unsafe { libc::sendmsg(fd, hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
            }
            OpKind::Accept { st, buf } => match &mut st.accepted {
                None => {
                    let (a, l) = st.addr.ptrs();
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
            OpKind::Connect { st, buf } => {
                if st.connected {
                    send(fd, &buf[bytes.min(buf.len())..])
                } else {
                    let addr = &st.addr;
                    // SAFETY: `addr` is a valid socket address of the length given.
                    let r = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) };
                    if r == 0 {
                        0
                    } else {
                        match errno() {
                            libc::EALREADY | libc::EINPROGRESS => -(libc::EINPROGRESS as isize),
                            // A previous attempt finished in the background: ask how it ended.
                            libc::EISCONN => -(so_error(fd) as isize),
                            e => -(e as isize),
                        }
                    }
                }
            }
            OpKind::Ready => {
                let mut byte = 0u8;
                // SAFETY: peeks at most one byte into a local.
                let r = unsafe {
                    libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
                };
                if r >= 0 { 0 } else { r }
            }
            OpKind::ReadAt { buf, offset } => {
                let spare = buf.spare_capacity_mut();
                let Ok(off) = i64::try_from(*offset) else {
                    return -(libc::EINVAL as isize);
                };
                // SAFETY: `spare` is writable memory owned by this op. Blocking is fine here: file
                // ops run on the file pool's threads.
                unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), spare.len(), off) }
            }
            OpKind::WriteAt { buf, offset } => {
                let rest = &buf[bytes.min(buf.len())..];
                let iov =
                    libc::iovec { iov_base: rest.as_ptr().cast_mut().cast(), iov_len: rest.len() };
                let (off, flags) = if *offset == APPEND {
                    (-1, libc::RWF_APPEND)
                } else {
                    match i64::try_from(*offset + bytes as u64) {
                        Ok(o) => (o, 0),
                        Err(_) => return -(libc::EINVAL as isize),
                    }
                };
                // SAFETY: `iov` describes bytes owned by this op. Runs on the file pool.
                unsafe { libc::pwritev2(fd, &iov, 1, off, flags) }
            }
            OpKind::Transmit(t) => {
                if t.head_sent < t.head.len() {
                    send(fd, &t.head[t.head_sent..])
                } else if t.body_left() {
                    let Ok(mut off) = i64::try_from(t.offset) else {
                        return -(libc::EINVAL as isize);
                    };
                    let count = t.remaining.min(SENDFILE_MAX) as usize;
                    // SAFETY: `off` is a local the kernel updates; both fds are open (the socket
                    // through the handle, the file through the op's `Arc<File>`).
                    let r = unsafe { libc::sendfile(fd, t.file.as_raw_fd(), &mut off, count) };
                    if r > 0 {
                        t.offset = off as u64;
                    }
                    r
                } else {
                    send(fd, &t.tail[t.tail_sent..])
                }
            }
            OpKind::AcceptMulti => {
                // SAFETY: null address pointers are allowed; the peer is read later.
                unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    ) as isize
                }
            }
            OpKind::RecvPooled { pool, got } => {
                let Some(id) = pool.take() else {
                    // Readable but no buffer free: fail like io_uring does (ENOBUFS).
                    // The end of the stream needs no buffer: report it as EOF.
                    return match peek(fd) {
                        r if r < 0 => -(errno() as isize),
                        0 => 0,
                        _ => -(libc::ENOBUFS as isize),
                    };
                };
                let (p, len) = pool.buf_ptr(id);
                // SAFETY: buffer `id` was just taken from the free list: this op is its only user.
                let r = unsafe { libc::recv(fd, p.cast(), len, libc::MSG_DONTWAIT) };
                if r < 0 {
                    let e = errno();
                    pool.untake(id);
                    return -(e as isize);
                }
                *got = Some(id);
                r
            }
            OpKind::Disconnect { stage, scratch, .. } => {
                if *stage == DisconnectStage::Shutdown {
                    // SAFETY: plain syscall on an fd the handle keeps open.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) as isize }
                } else {
                    if scratch.capacity() == 0 {
                        scratch.reserve(4096);
                    }
                    let spare = scratch.spare_capacity_mut();
                    // SAFETY: `spare` is writable memory owned by this op; the bytes are dropped.
                    unsafe {
                        libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT)
                    }
                }
            }
        };
        if ret < 0 && !matches!(&self.kind, OpKind::Connect { st, .. } if !st.connected) {
            -(errno() as isize)
        } else {
            ret
        }
    }

    /// epoll: a connect's writability arrived; fetch its outcome (`SO_ERROR`).
    /// A readiness flag is never trusted for completion: the event may be a stale mask of the
    /// fresh socket (`EPOLLOUT | EPOLLHUP` before the connect), consumed after the connect was
    /// queued. `SO_ERROR` 0 with no peer yet (`getpeername`: `ENOTCONN`) means the handshake
    /// is still in progress: keep waiting.
    pub(crate) fn connect_outcome(&mut self) -> Option<Progress> {
        if matches!(&self.kind, OpKind::Connect { st, .. } if !st.connected) {
            let e = so_error(self.fd());
            if e == 0 {
                if let Err(err) = rustix::net::getpeername(&self.handle.fd)
                    && err == rustix::io::Errno::NOTCONN
                {
                    // Still in SYN_SENT, or failed since: a failure sets SO_ERROR.
                    let e = so_error(self.fd());
                    return Some(if e == 0 { Progress::Again } else { Progress::Done(e) });
                }
                let p = self.advance(0);
                return Some(if p == Progress::Again { self.try_io() } else { p });
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
        let bytes = self.bytes;
        match &mut self.kind {
            OpKind::Recv { buf } => {
                let spare = buf.spare_capacity_mut();
                opcode::Recv::new(fd, spare.as_mut_ptr().cast(), len_u32(spare.len())).build()
            }
            OpKind::RecvV { bufs, msg } => opcode::RecvMsg::new(fd, msg.scatter(bufs)).build(),
            OpKind::RecvFrom { buf, io } => {
                let MsgFrom { msg, addr } = &mut **io;
                opcode::RecvMsg::new(fd, msg.recv_from(buf, addr))
                    .flags(libc::MSG_TRUNC as u32)
                    .build()
            }
            OpKind::Send { buf } => send_sqe(fd, &buf[bytes.min(buf.len())..]),
            OpKind::SendV { bufs, msg } => opcode::SendMsg::new(fd, msg.gather(bufs, bytes))
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            OpKind::SendTo { buf, io } => {
                let MsgTo { msg, to } = &mut **io;
                opcode::SendMsg::new(fd, msg.send_to(buf, to))
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
            OpKind::Accept { st, buf } => match &st.accepted {
                None => {
                    let (a, l) = st.addr.ptrs();
                    opcode::Accept::new(fd, a, l).flags(libc::SOCK_CLOEXEC).build()
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
            OpKind::Connect { st, buf } => {
                if st.connected {
                    send_sqe(fd, &buf[bytes.min(buf.len())..])
                } else {
                    opcode::Connect::new(fd, st.addr.as_ptr().cast(), st.addr.len()).build()
                }
            }
            OpKind::Ready => opcode::PollAdd::new(
                fd,
                (libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32,
            )
            .build(),
            OpKind::ReadAt { buf, offset } => {
                let spare = buf.spare_capacity_mut();
                opcode::Read::new(fd, spare.as_mut_ptr().cast(), len_u32(spare.len()))
                    .offset(*offset)
                    .build()
            }
            OpKind::WriteAt { buf, offset } => {
                let rest = &buf[bytes.min(buf.len())..];
                let w = opcode::Write::new(fd, rest.as_ptr(), len_u32(rest.len()));
                if *offset == APPEND {
                    w.offset(0).rw_flags(libc::RWF_APPEND).build()
                } else {
                    w.offset(*offset + bytes as u64).build()
                }
            }
            OpKind::Transmit(t) => {
                if t.head_sent < t.head.len() {
                    send_sqe(fd, &t.head[t.head_sent..])
                } else if t.body_left() {
                    // Wait for room, then `sendfile` from the reaping thread (`on_cqe`):
                    // io_uring has no sendfile, and its SPLICE always runs on io-wq threads.
                    opcode::PollAdd::new(fd, libc::POLLOUT as u32).build()
                } else {
                    send_sqe(fd, &t.tail[t.tail_sent..])
                }
            }
            OpKind::AcceptMulti => opcode::AcceptMulti::new(fd).flags(libc::SOCK_CLOEXEC).build(),
            OpKind::RecvPooled { pool, .. } => {
                opcode::Recv::new(fd, std::ptr::null_mut(), len_u32(pool.buf_size()))
                    .buf_group(pool.group())
                    .build()
                    .flags(io_uring::squeue::Flags::BUFFER_SELECT)
            }
            OpKind::Disconnect { stage, scratch, .. } => {
                if *stage == DisconnectStage::Shutdown {
                    opcode::Shutdown::new(fd, libc::SHUT_WR).build()
                } else {
                    if scratch.capacity() == 0 {
                        scratch.reserve(4096);
                    }
                    let spare = scratch.spare_capacity_mut();
                    opcode::Recv::new(fd, spare.as_mut_ptr().cast(), len_u32(spare.len())).build()
                }
            }
        }
    }

    /// io_uring: records a CQE result. A poll result is an event mask, not a byte count.
    #[cfg(feature = "uring")]
    pub(crate) fn on_cqe(&mut self, res: i32, flags: u32) -> Progress {
        if let OpKind::Transmit(t) = &self.kind
            && t.in_body()
        {
            // The POLLOUT of the body stage: send file bytes until the socket is full.
            if res < 0 {
                return Progress::Done(-res);
            }
            loop {
                let r = self.syscall();
                match self.advance(r) {
                    Progress::Again if r >= 0 => {
                        if matches!(&self.kind, OpKind::Transmit(t) if t.in_body()) {
                            continue;
                        }
                        return Progress::Again; // on to the tail
                    }
                    p => return p,
                }
            }
        }
        if let OpKind::RecvPooled { pool, got } = &mut self.kind
            && let Some(id) = io_uring::cqueue::buffer_select(flags)
        {
            pool.note_selected();
            *got = Some(id);
        }
        // No buffer free (the kernel selects one before it looks at the socket): if the peer
        // is gone, that is the end of the stream, which needs no buffer.
        if res == -libc::ENOBUFS
            && matches!(&self.kind, OpKind::RecvPooled { got: None, .. })
            && peek(self.fd()) == 0
        {
            return Progress::Done(0);
        }
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
        if res == -libc::EISCONN
            && matches!(&self.kind, OpKind::Connect { st, .. } if !st.connected)
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

fn send(fd: RawFd, rest: &[u8]) -> isize {
    // SAFETY: `rest` is readable memory owned by the calling op, of the length given.
    unsafe {
        libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }
}

#[cfg(feature = "uring")]
fn send_sqe(fd: io_uring::types::Fd, rest: &[u8]) -> io_uring::squeue::Entry {
    io_uring::opcode::Send::new(fd, rest.as_ptr(), len_u32(rest.len()))
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

#[cfg(feature = "uring")]
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Peeks at one byte without blocking: 1 (data), 0 (end of stream) or -1 (`errno()` says).
fn peek(fd: RawFd) -> isize {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into a local.
    unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) }
}

thread_local! {
    /// A panic caught in user code run by the poll path, to raise once the driver is done.
    static USER_PANIC: std::cell::Cell<Option<Box<dyn std::any::Any + Send>>> =
        const { std::cell::Cell::new(None) };
}

/// Runs user code (a context's `Clone`) from inside a driver: a panic is caught and kept for
/// [`resume_user_panic`] (the first one, if several), so that the driver never unwinds with
/// its bookkeeping half done (CQEs consumed but not handled, edges lost, an op in no queue).
fn catch_user_panic<T>(f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(payload) => {
            tracing::error!("a context's Clone panicked in the poll path; connection closed");
            // `try_with`: after this thread's slot is gone (a thread-local destructor), the
            // panic is dropped here; it was logged.
            let _ = USER_PANIC.try_with(|p| {
                let first = p.take().unwrap_or(payload);
                p.set(Some(first));
            });
            None
        }
    }
}

/// Raises again a panic that [`catch_user_panic`] kept on this thread, if any. Called once the
/// driver's state is consistent (end of `wait`, end of a start).
pub(crate) fn resume_user_panic() {
    if let Ok(Some(payload)) = USER_PANIC.try_with(std::cell::Cell::take) {
        std::panic::resume_unwind(payload);
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// `connect(AF_UNSPEC)`: dissolves a TCP socket's association so it can connect again
/// (DisconnectEx with TF_REUSE_SOCKET). Returns 0 or an errno.
fn dissolve(fd: RawFd) -> i32 {
    // SAFETY: an all-zero sockaddr with family AF_UNSPEC (0) is the documented argument.
    let addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: `addr` is a valid local of the size given.
    let r = unsafe { libc::connect(fd, &addr, size_of::<libc::sockaddr>() as libc::socklen_t) };
    if r < 0 { errno() } else { 0 }
}

/// `getsockopt(SO_ERROR)`: the pending error of a socket, 0 if none.
pub(crate) fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err`/`len` are valid locals of the sizes given.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut len)
    };
    if r < 0 { errno() } else { err }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use socket2::{Domain, Socket, Type};

    use super::{Op, OpKind, Progress};
    use crate::completion::{CompletionKey, OpId};
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
            Op::new(OpId(1), h.inner().clone(), (), OpKind::connect(addr, Vec::new()));
        assert_eq!(op.try_io(), Progress::Again, "connect in progress");
        let no_peer = rustix::net::getpeername(&h.inner().fd).unwrap_err();
        assert_eq!(no_peer, rustix::io::Errno::NOTCONN, "the test socket is in SYN_SENT");
        assert_eq!(op.connect_outcome(), Some(Progress::Again));
    }
}
