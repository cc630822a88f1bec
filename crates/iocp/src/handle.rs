//! Handles: a socket or a file associated with one port and one key, for life.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use socket2::SockAddr;

use crate::APPEND;
use crate::completion::{CompletionKey, OpId, Payload, Transmitted};
use crate::error::SubmitError;
use crate::port::PortInner;
use crate::sys::bufpool::BufferPool;
use crate::sys::op::{Op, OpKind};

/// Backend bookkeeping for one handle, under the handle's lock. Sized for the common case of an
/// idle connection (at most one pending op per side, one op in the kernel) without allocating:
/// that is what keeps memory per idle connection small. Everything beyond lives in one
/// `Overflow` box, allocated only while needed.
///
/// Side 0 (read) / 1 (write):
/// - epoll: operations waiting for readability / writability, in submission order;
/// - io_uring: receives / sends waiting for the one in the kernel to finish (stream order).
pub(crate) struct HandleIo<C> {
    heads: [Option<Box<Op<C>>>; 2],
    /// io_uring: a receive / a send of this handle is in the kernel.
    pub(crate) busy: [bool; 2],
    /// epoll: tokens of accepts parked on their accepted socket (initial receive).
    /// io_uring: `user_data` of every operation in the kernel. Used to cancel them.
    /// The first lives inline (`token`, if `has_token`), the rest in the overflow.
    token: u64,
    has_token: bool,
    overflow: Option<Box<Overflow<C>>>,
}

struct Overflow<C> {
    rest: [VecDeque<Box<Op<C>>>; 2],
    tokens: Vec<u64>,
    /// Set by `accept_multi` (which requires `C: Clone`): how a repeating accept copies its
    /// context into each connection's packet. Only listeners pay for it.
    clone_ctx: Option<fn(&C) -> C>,
}

impl<C> HandleIo<C> {
    pub(crate) const fn new() -> Self {
        HandleIo {
            heads: [None, None],
            busy: [false; 2],
            token: 0,
            has_token: false,
            overflow: None,
        }
    }

    fn overflow(&mut self) -> &mut Overflow<C> {
        self.overflow.get_or_insert_with(|| {
            Box::new(Overflow {
                rest: [VecDeque::new(), VecDeque::new()],
                tokens: Vec::new(),
                clone_ctx: None,
            })
        })
    }

    /// Frees the overflow once nothing lives in it. A listener's clone function lives there
    /// for the handle's life (`accept_multi` may be pending, or started again, at any time), so
    /// a box holding one is kept.
    fn trim(&mut self) {
        if self.overflow.as_ref().is_some_and(|o| {
            o.rest.iter().all(VecDeque::is_empty) && o.tokens.is_empty() && o.clone_ctx.is_none()
        }) {
            self.overflow = None;
        }
    }

    pub(crate) fn clone_ctx(&self) -> Option<fn(&C) -> C> {
        self.overflow.as_ref().and_then(|o| o.clone_ctx)
    }

    pub(crate) fn set_clone_ctx(&mut self, f: fn(&C) -> C) {
        self.overflow().clone_ctx = Some(f);
    }

    pub(crate) fn is_empty(&self, side: usize) -> bool {
        self.heads[side].is_none()
    }

    pub(crate) fn push_back(&mut self, side: usize, op: Box<Op<C>>) {
        if self.heads[side].is_none() {
            self.heads[side] = Some(op);
        } else {
            self.overflow().rest[side].push_back(op);
        }
    }

    pub(crate) fn front_mut(&mut self, side: usize) -> Option<&mut Op<C>> {
        self.heads[side].as_deref_mut()
    }

    pub(crate) fn pop_front(&mut self, side: usize) -> Option<Box<Op<C>>> {
        let head = self.heads[side].take()?;
        self.heads[side] = self.overflow.as_mut().and_then(|o| o.rest[side].pop_front());
        self.trim();
        Some(head)
    }

    /// Every queued op, both sides (for counting).
    pub(crate) fn ops(&self) -> impl Iterator<Item = &Op<C>> {
        let rest = self.overflow.iter().flat_map(|o| o.rest.iter().flatten());
        self.heads.iter().flatten().map(|b| &**b).chain(rest.map(|b| &**b))
    }

    /// Takes every queued op, both sides, in order.
    pub(crate) fn drain_all(&mut self) -> Vec<Box<Op<C>>> {
        let mut out = Vec::new();
        for side in 0..2 {
            while let Some(op) = self.pop_front(side) {
                out.push(op);
            }
        }
        out
    }

    /// Removes the queued operations `f` selects, keeping the others in order.
    pub(crate) fn take_matching(&mut self, f: impl Fn(&Op<C>) -> bool) -> Vec<Box<Op<C>>> {
        let mut taken = Vec::new();
        for side in 0..2 {
            let mut keep = Vec::new();
            while let Some(op) = self.pop_front(side) {
                if f(&op) { taken.push(op) } else { keep.push(op) }
            }
            for op in keep {
                self.push_back(side, op);
            }
        }
        taken
    }

    pub(crate) fn push_token(&mut self, t: u64) {
        if self.has_token {
            self.overflow().tokens.push(t);
        } else {
            self.token = t;
            self.has_token = true;
        }
    }

    pub(crate) fn remove_token(&mut self, t: u64) {
        if self.has_token && self.token == t {
            // Refill the inline slot from the overflow, if any.
            match self.overflow.as_mut().and_then(|o| o.tokens.pop()) {
                Some(x) => self.token = x,
                None => self.has_token = false,
            }
        } else if let Some(o) = self.overflow.as_mut() {
            o.tokens.retain(|x| *x != t);
        }
        self.trim();
    }

    pub(crate) fn tokens(&self) -> Vec<u64> {
        let mut v = Vec::new();
        if self.has_token {
            v.push(self.token);
        }
        if let Some(o) = &self.overflow {
            v.extend_from_slice(&o.tokens);
        }
        v
    }

    pub(crate) fn clear_tokens(&mut self) {
        self.has_token = false;
        if let Some(o) = self.overflow.as_mut() {
            o.tokens.clear();
        }
        self.trim();
    }
}

/// What the port and the backends know of a handle. Operations hold an `Arc` of it, so the fd
/// is closed only after the last operation on it has completed: no fd number is reused while
/// the kernel may still act on it.
pub(crate) struct HandleInner<C> {
    pub(crate) fd: OwnedFd,
    pub(crate) key: CompletionKey,
    pub(crate) closed: AtomicBool,
    /// epoll: the registration token.
    pub(crate) token: AtomicU64,
    /// A regular file or block device: always "ready", so epoll cannot wait for it and its I/O
    /// runs on the file pool.
    pub(crate) is_file: bool,
    io: Mutex<HandleIo<C>>,
    /// The registry key of a socket or pipe (0: none; see `claim`).
    identity: u64,
    /// `Handle` clones alive; the last one to go closes the handle.
    users: AtomicU32,
}

impl<C> HandleInner<C> {
    pub(crate) fn io(&self) -> MutexGuard<'_, HandleIo<C>> {
        self.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<C> Drop for HandleInner<C> {
    fn drop(&mut self) {
        if self.identity != 0 {
            let id = self.identity;
            let mut set = registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            set.remove(&id);
            crate::spare::set(&mut set);
        }
    }
}

/// Process-wide set of associated sockets and pipes, by (device, inode): on Linux each socket
/// has its own inode, so a duplicated fd (`dup`, `try_clone`) is recognised as the same object,
/// as Windows recognises the same file object behind two handles.
fn registry() -> &'static Mutex<HashSet<u64>> {
    static REGISTRY: OnceLock<Mutex<HashSet<u64>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Records the association of `fd`'s socket or pipe; returns its identity (to release on close)
/// and whether it is a regular file or block device.
fn claim(fd: BorrowedFd<'_>) -> io::Result<(u64, bool)> {
    use rustix::fs::FileType;
    let st = rustix::fs::fstat(fd)?;
    let ty = FileType::from_raw_mode(st.st_mode);
    if !matches!(ty, FileType::Socket | FileType::Fifo) {
        return Ok((0, matches!(ty, FileType::RegularFile | FileType::BlockDevice)));
    }
    // Device and inode in one word: device numbers are small, and all sockets share one device
    // (sockfs), where inode numbers are unique.
    let id = ((st.st_dev << 44) ^ st.st_ino).max(1);
    if !registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "handle is already associated with a completion port (ERROR_INVALID_PARAMETER)",
        ));
    }
    Ok((id, false))
}

/// A socket associated with a [`CompletionPort`](crate::CompletionPort) and a
/// [`CompletionKey`]: every operation started on it completes on that port with that key.
///
/// The association lasts until the handle is closed ([`Handle::close`], or dropping the last
/// clone). Closing aborts every pending operation: each completes once, with `ECANCELED`. The
/// fd itself is closed after the last of those completions.
pub struct Handle<C: Send + 'static> {
    inner: Arc<HandleInner<C>>,
    port: Arc<PortInner<C>>,
}

impl<C: Send + 'static> Drop for Handle<C> {
    fn drop(&mut self) {
        if self.inner.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.port.close_handle(&self.inner);
        }
    }
}

impl<C: Send + 'static> Clone for Handle<C> {
    fn clone(&self) -> Self {
        self.inner.users.fetch_add(1, Ordering::Relaxed);
        Handle { inner: self.inner.clone(), port: self.port.clone() }
    }
}

impl<C: Send + 'static> fmt::Debug for Handle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("fd", &self.inner.fd.as_raw_fd())
            .field("key", &self.inner.key)
            .field("closed", &self.inner.is_closed())
            .finish()
    }
}

impl<C: Send + 'static> Handle<C> {
    pub(crate) fn associate(
        port: &Arc<PortInner<C>>,
        fd: OwnedFd,
        key: CompletionKey,
    ) -> io::Result<Self> {
        let (identity, is_file) = claim(fd.as_fd())?;
        let inner = Arc::new(HandleInner {
            fd,
            key,
            closed: AtomicBool::new(false),
            token: AtomicU64::new(0),
            is_file,
            io: Mutex::new(HandleIo::new()),
            identity,
            users: AtomicU32::new(1),
        });
        port.register(&inner)?;
        Ok(Handle { inner, port: port.clone() })
    }

    /// The backend's view of this handle (for crate tests that drive an op directly).
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Arc<HandleInner<C>> {
        &self.inner
    }

    /// The key every packet of this handle carries.
    pub fn key(&self) -> CompletionKey {
        self.inner.key
    }

    /// Receives into the spare capacity of `buf` (`capacity - len` bytes; WSARecv). Completes
    /// when at least one byte arrived (the buffer grows by that much), with 0 bytes when the
    /// peer closed, or with an error (`ECONNRESET` on reset).
    ///
    /// # Errors
    /// Refused, with `buf` and `context` handed back and no completion to come, when `buf` has
    /// no spare capacity (use [`Handle::recv_ready`] for a zero-byte receive), or the handle or
    /// port is closed.
    pub fn recv(&self, buf: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).recv(buf, context)
    }

    /// Scatter receive (WSARecv with several WSABUFs): fills the spare capacity of each buffer
    /// in order, with no gaps. Completes like [`Handle::recv`].
    ///
    /// # Errors
    /// As [`Handle::recv`]; also when there are more than 1024 buffers.
    pub fn recv_vectored(&self, bufs: Vec<Vec<u8>>, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).recv_vectored(bufs, context)
    }

    /// Sends all of `buf` (WSASend). Short writes are resumed inside the operation; the
    /// completion reports the bytes sent, also when it fails part-way.
    ///
    /// # Errors
    /// Refused, with the buffer and context handed back, when the handle or port is closed.
    pub fn send(&self, buf: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).send(buf, context)
    }

    /// Gather send (WSASend with several WSABUFs): sends every buffer, in order.
    ///
    /// # Errors
    /// As [`Handle::send`]; also when there are more than 1024 buffers.
    pub fn send_vectored(&self, bufs: Vec<Vec<u8>>, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).send_vectored(bufs, context)
    }

    /// The zero-byte receive: completes with 0 bytes when the socket becomes readable (data or
    /// end of stream) and pins no buffer meanwhile; a reset completes it with the error. Then
    /// read with a non-blocking `recv` into a pooled buffer.
    ///
    /// # Errors
    /// Refused when the handle or port is closed.
    pub fn recv_ready(&self, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).recv_ready(context)
    }

    /// Accepts one connection on this listening socket (AcceptEx). If `initial` has spare
    /// capacity, the operation also receives the client's first bytes into it and completes only
    /// when they arrived (bytes = their count); else it completes as soon as a connection is
    /// accepted, with 0 bytes. The completion carries this listener's key and a
    /// [`Payload::Accept`] with the new socket (not yet associated) and the peer address.
    ///
    /// # Errors
    /// Refused when the handle or port is closed.
    pub fn accept(&self, initial: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).accept(initial, context)
    }

    /// Keeps accepting connections on this listener with one operation (io_uring's multishot
    /// accept where the kernel has it; a repeating accept on epoll): every accepted connection
    /// completes as its own packet, with the listener's key, this op's [`OpId`], a clone of
    /// `context` and a [`Payload::Accept`] (no initial receive; the peer address is read with
    /// `getpeername`). The op goes on until it is cancelled or the handle closes, which completes
    /// it one last time as aborted (with an empty `Accept` payload and the original context), or
    /// until accepting fails (e.g. `EMFILE`), which ends it with that error. Under a connection
    /// storm the kernel may queue more completions than the port's CQ budget; `IORING_FEAT_NODROP`
    /// keeps them, and the port reaps them in order.
    ///
    /// # Errors
    /// Refused when the handle or port is closed.
    pub fn accept_multi(&self, context: C) -> Result<OpId, SubmitError<C>>
    where
        C: Clone,
    {
        self.inner.io().set_clone_ctx(<C as Clone>::clone);
        self.with_timeout(None).start(OpKind::accept_multi(), context)
    }

    /// Connects this socket to `addr` and then sends `initial` (ConnectEx); the completion
    /// reports the bytes of `initial` sent. A refused connection completes with
    /// `ECONNREFUSED`.
    ///
    /// Deviation from Windows: the socket need not be bound first (Linux binds it on connect).
    ///
    /// # Errors
    /// Refused when the handle or port is closed.
    pub fn connect(
        &self,
        addr: impl Into<SockAddr>,
        initial: Vec<u8>,
        context: C,
    ) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).connect(addr, initial, context)
    }

    /// Receives one datagram and its sender's address (WSARecvFrom). A datagram larger than the
    /// spare capacity fills the buffer and completes with `EMSGSIZE`, reporting the bytes copied
    /// (the rest is discarded, case 57).
    ///
    /// # Errors
    /// Refused when `buf` has no spare capacity, or the handle or port is closed.
    pub fn recv_from(&self, buf: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).recv_from(buf, context)
    }

    /// Sends `buf` as one datagram to `to` (WSASendTo).
    ///
    /// # Errors
    /// Refused when the handle or port is closed.
    pub fn send_to(
        &self,
        buf: Vec<u8>,
        to: impl Into<SockAddr>,
        context: C,
    ) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).send_to(buf, to, context)
    }

    /// Reads from a file at `offset` into the spare capacity of `buf` (ReadFile with an
    /// OVERLAPPED offset). Reads at different offsets may run concurrently and complete in any
    /// order (case 51). At or past the end of the file it completes with
    /// [`Completion::is_eof`](crate::Completion::is_eof) (`ERROR_HANDLE_EOF`, case 49). On epoll it
    /// runs on the port's bounded file-I/O threads and completes through the port.
    ///
    /// # Errors
    /// Refused when `buf` has no spare capacity, `offset` exceeds 2^63 - 1, or the handle or port
    /// is closed.
    pub fn read_at(&self, buf: Vec<u8>, offset: u64, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).read_at(buf, offset, context)
    }

    /// Writes all of `buf` to a file at `offset` (WriteFile); [`APPEND`](crate::APPEND)
    /// (`u64::MAX`, Windows' 0xFFFFFFFF_FFFFFFFF) appends at the end of the file (case 50).
    ///
    /// # Errors
    /// Refused when `offset + len` exceeds 2^63 - 1, or the handle or port is closed.
    pub fn write_at(&self, buf: Vec<u8>, offset: u64, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).write_at(buf, offset, context)
    }

    /// Sends `range.head`, then a range of `file`, then `range.tail`, as one operation with one
    /// completion (TransmitFile), without copying the file through user space: `sendfile(2)`
    /// whenever the socket has room (on io_uring after a `POLL_ADD`). Short sends are resumed
    /// inside the operation; offsets and lengths are 64-bit. The completion reports all bytes
    /// sent.
    ///
    /// # Errors
    /// Refused when the range lies beyond the end of the file, the file's size cannot be read,
    /// or the handle or port is closed.
    pub fn transmit_file(
        &self,
        file: Arc<File>,
        range: TransmitRange,
        context: C,
    ) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).transmit_file(file, range, context)
    }

    /// Disconnects (DisconnectEx): sends FIN, waits for the peer's FIN (discarding data it still
    /// sends), and completes. With `reuse` (TF_REUSE_SOCKET) the socket then returns to the
    /// unconnected state and can [`connect`](Handle::connect) again, keeping its association.
    ///
    /// # Errors
    /// Refused when the handle or port is closed; a socket that is not connected completes with
    /// `ENOTCONN`.
    pub fn disconnect(&self, reuse: bool, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).disconnect(reuse, context)
    }

    /// Receives into a buffer lent by `pool` when data arrives (a receive with a kernel-selected
    /// buffer; RIO's registered buffers): the completion's [`Payload::RecvPooled`] holds the
    /// bytes, and dropping it returns the buffer. While waiting, the receive pins no buffer, so
    /// idle connections cost no buffer memory. If data arrives while every buffer is lent out,
    /// it completes with `ENOBUFS` and the data stays in the socket.
    ///
    /// # Errors
    /// Refused when the pool belongs to another port, or the handle or port is closed.
    pub fn recv_pooled(&self, pool: &BufferPool, context: C) -> Result<OpId, SubmitError<C>> {
        self.with_timeout(None).recv_pooled(pool, context)
    }

    /// Starts the next operation with a deadline: if it has not completed `timeout` from now, it
    /// is cancelled and completes with `ETIMEDOUT` (reporting any bytes it had moved). The race
    /// between expiry and completion is decided once, by the single completion path: the op
    /// either completes normally or times out, never both. Deadlines fire while some thread
    /// waits in `get` (the poller wakes for them).
    ///
    /// Takes a `Duration` or an `Option<Duration>`: `None` is no deadline (the same as calling
    /// the op on the handle), so a caller with an optional timeout needs no branch. A deadline
    /// too far away to represent is none.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn f(h: iocp::Handle<()>, idle: Option<Duration>) -> Result<(), iocp::SubmitError<()>> {
    /// h.with_timeout(Duration::from_secs(30)).recv(Vec::with_capacity(4096), ())?;
    /// h.with_timeout(idle).recv_ready(())?;
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, timeout: impl Into<Option<Duration>>) -> WithTimeout<'_, C> {
        WithTimeout { handle: self, timeout: timeout.into() }
    }

    /// Cancels one pending operation (CancelIoEx with an OVERLAPPED). It completes once, with
    /// `ECANCELED` and the bytes it had already moved, or normally if it finished first.
    ///
    /// # Errors
    /// `NotFound` when no such operation is pending on this handle (it already completed, or
    /// never belonged to it): no packet results (Win32 `ERROR_NOT_FOUND`).
    pub fn cancel(&self, op: OpId) -> io::Result<()> {
        match self.port.cancel(&self.inner, Some(op), libc::ECANCELED) {
            0 => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such pending operation (ERROR_NOT_FOUND)",
            )),
            _ => Ok(()),
        }
    }

    /// Cancels every pending operation on this handle (CancelIoEx with NULL); returns how many.
    /// Each completes once, as with [`Handle::cancel`].
    ///
    /// # Errors
    /// `NotFound` when nothing is pending.
    pub fn cancel_all(&self) -> io::Result<usize> {
        match self.port.cancel(&self.inner, None, libc::ECANCELED) {
            0 => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no pending operation (ERROR_NOT_FOUND)",
            )),
            n => Ok(n),
        }
    }

    /// Shuts down one or both directions (`shutdown(2)`). Synchronous: no packet, as on Windows
    /// (conformance case 27).
    ///
    /// # Errors
    /// The syscall's error (`ENOTCONN` on an unconnected socket).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => rustix::net::Shutdown::Read,
            Shutdown::Write => rustix::net::Shutdown::Write,
            Shutdown::Both => rustix::net::Shutdown::Both,
        };
        rustix::net::shutdown(&self.inner.fd, how)?;
        Ok(())
    }

    /// Closes the handle: every pending operation completes once with `ECANCELED` (its buffers
    /// handed back), later starts are refused, and the fd is closed after the last completion.
    /// Idempotent; dropping the last clone does the same.
    pub fn close(&self) {
        self.port.close_handle(&self.inner);
    }

    /// True once [`Handle::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

/// A [`Handle`] with a deadline for the next operation, from [`Handle::with_timeout`].
pub struct WithTimeout<'a, C: Send + 'static> {
    handle: &'a Handle<C>,
    timeout: Option<Duration>,
}

impl<C: Send + 'static> fmt::Debug for WithTimeout<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithTimeout")
            .field("handle", self.handle)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<C: Send + 'static> WithTimeout<'_, C> {
    /// As [`Handle::recv`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::recv`].
    pub fn recv(&self, buf: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        if buf.capacity() == buf.len() {
            return Err(invalid(context, Payload::Recv(buf), "recv buffer has no spare capacity"));
        }
        self.start(OpKind::recv(buf), context)
    }
    /// As [`Handle::recv_vectored`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::recv_vectored`].
    pub fn recv_vectored(&self, bufs: Vec<Vec<u8>>, context: C) -> Result<OpId, SubmitError<C>> {
        if bufs.iter().all(|b| b.capacity() == b.len()) || bufs.len() > 1024 {
            return Err(invalid(
                context,
                Payload::RecvVectored(bufs),
                "recv buffers have no spare capacity or too many",
            ));
        }
        self.start(OpKind::recv_vectored(bufs), context)
    }
    /// As [`Handle::send`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::send`].
    pub fn send(&self, buf: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(OpKind::send(buf), context)
    }
    /// As [`Handle::send_vectored`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::send_vectored`].
    pub fn send_vectored(&self, bufs: Vec<Vec<u8>>, context: C) -> Result<OpId, SubmitError<C>> {
        if bufs.len() > 1024 {
            return Err(invalid(
                context,
                Payload::SendVectored(bufs),
                "more than 1024 send buffers",
            ));
        }
        self.start(OpKind::send_vectored(bufs), context)
    }
    /// As [`Handle::recv_ready`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::recv_ready`].
    pub fn recv_ready(&self, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(OpKind::Ready, context)
    }
    /// As [`Handle::accept`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::accept`].
    pub fn accept(&self, initial: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(OpKind::accept(initial), context)
    }
    /// As [`Handle::connect`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::connect`].
    pub fn connect(
        &self,
        addr: impl Into<SockAddr>,
        initial: Vec<u8>,
        context: C,
    ) -> Result<OpId, SubmitError<C>> {
        self.start(OpKind::connect(addr.into(), initial), context)
    }

    /// As [`Handle::recv_from`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::recv_from`].
    pub fn recv_from(&self, buf: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        if buf.capacity() == buf.len() {
            return Err(invalid(
                context,
                Payload::RecvFrom(buf, None),
                "recv buffer has no spare capacity",
            ));
        }
        self.start(OpKind::recv_from(buf), context)
    }

    /// As [`Handle::send_to`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::send_to`].
    pub fn send_to(
        &self,
        buf: Vec<u8>,
        to: impl Into<SockAddr>,
        context: C,
    ) -> Result<OpId, SubmitError<C>> {
        self.start(OpKind::send_to(buf, to.into()), context)
    }

    /// As [`Handle::read_at`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::read_at`].
    pub fn read_at(&self, buf: Vec<u8>, offset: u64, context: C) -> Result<OpId, SubmitError<C>> {
        if buf.capacity() == buf.len() {
            return Err(invalid(context, Payload::Read(buf), "read buffer has no spare capacity"));
        }
        if offset > i64::MAX as u64 {
            return Err(invalid(context, Payload::Read(buf), "offset beyond 2^63 - 1"));
        }
        self.start(OpKind::read_at(buf, offset), context)
    }

    /// As [`Handle::write_at`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::write_at`].
    pub fn write_at(&self, buf: Vec<u8>, offset: u64, context: C) -> Result<OpId, SubmitError<C>> {
        if offset != APPEND
            && offset.checked_add(buf.len() as u64).is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(invalid(context, Payload::Write(buf), "offset + length beyond 2^63 - 1"));
        }
        self.start(OpKind::write_at(buf, offset), context)
    }

    /// As [`Handle::transmit_file`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::transmit_file`].
    pub fn transmit_file(
        &self,
        file: Arc<File>,
        range: TransmitRange,
        context: C,
    ) -> Result<OpId, SubmitError<C>> {
        let TransmitRange { offset, len, head, tail } = range;
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(error) => {
                let payload = Payload::TransmitFile(Box::new(Transmitted { file, head, tail }));
                return Err(SubmitError { error, context, payload });
            }
        };
        let len = match len {
            Some(l) if offset.checked_add(l).is_some_and(|end| end <= size) => l,
            None if offset <= size => size - offset,
            _ => {
                let payload = Payload::TransmitFile(Box::new(Transmitted { file, head, tail }));
                return Err(invalid(context, payload, "file range beyond the end of the file"));
            }
        };
        self.start(OpKind::transmit(file, offset, len, head, tail), context)
    }

    /// As [`Handle::recv_pooled`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::recv_pooled`].
    pub fn recv_pooled(&self, pool: &BufferPool, context: C) -> Result<OpId, SubmitError<C>> {
        if pool.port() != self.handle.port.id {
            return Err(invalid(
                context,
                Payload::RecvPooled(None),
                "the buffer pool belongs to another port",
            ));
        }
        self.start(OpKind::recv_pooled(pool.clone()), context)
    }

    /// As [`Handle::disconnect`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::disconnect`].
    pub fn disconnect(&self, reuse: bool, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(OpKind::disconnect(reuse), context)
    }

    fn start(&self, kind: OpKind, context: C) -> Result<OpId, SubmitError<C>> {
        self.handle.port.start(&self.handle.inner, kind, context, self.timeout)
    }
}

impl<C: Send + 'static> AsFd for Handle<C> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}

impl<C: Send + 'static> AsRawFd for Handle<C> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }
}

/// What [`Handle::transmit_file`] sends: `head`, then `len` bytes of the file from `offset`
/// (`None`: to the end of the file), then `tail`.
#[derive(Clone, Debug, Default)]
pub struct TransmitRange {
    /// First byte of the file to send.
    pub offset: u64,
    /// Bytes of the file to send; `None` for all of it from `offset`.
    pub len: Option<u64>,
    /// Bytes sent before the file range (an HTTP response head, say).
    pub head: Vec<u8>,
    /// Bytes sent after the file range.
    pub tail: Vec<u8>,
}

fn invalid<C>(context: C, payload: Payload, msg: &'static str) -> SubmitError<C> {
    SubmitError { error: io::Error::new(io::ErrorKind::InvalidInput, msg), context, payload }
}
