//! Handles: a socket or a file associated with one port and one key, for life.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::SockAddr;

use crate::APPEND;
use crate::completion::{CompletionKey, OpId, Payload, Transmitted};
use crate::error::SubmitError;
use crate::port::PortInner;
use crate::sys::bufpool::BufferPool;
use crate::sys::op::HandleInner;
use crate::sys::op::{OpKind, kind};

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
        let inner = Arc::new(HandleInner::claim(fd, key)?);
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
        self.with_timeout(None).start(kind::AcceptMulti.into(), context)
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
        self.start(kind::Recv::new(buf).into(), context)
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
        self.start(kind::RecvV::new(bufs).into(), context)
    }
    /// As [`Handle::send`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::send`].
    pub fn send(&self, buf: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(kind::Send::new(buf).into(), context)
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
        self.start(kind::SendV::new(bufs).into(), context)
    }
    /// As [`Handle::recv_ready`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::recv_ready`].
    pub fn recv_ready(&self, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(kind::Ready.into(), context)
    }
    /// As [`Handle::accept`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::accept`].
    pub fn accept(&self, initial: Vec<u8>, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(kind::Accept::new(initial).into(), context)
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
        self.start(kind::Connect::new(addr.into(), initial).into(), context)
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
        self.start(kind::RecvFrom::new(buf).into(), context)
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
        self.start(kind::SendTo::new(buf, to.into()).into(), context)
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
        self.start(kind::ReadAt::new(buf, offset).into(), context)
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
        self.start(kind::WriteAt::new(buf, offset).into(), context)
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
        self.start(kind::Transmit::new(file, offset, len, head, tail).into(), context)
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
        self.start(kind::RecvPooled::new(pool.clone()).into(), context)
    }

    /// As [`Handle::disconnect`], with this deadline.
    ///
    /// # Errors
    /// As [`Handle::disconnect`].
    pub fn disconnect(&self, reuse: bool, context: C) -> Result<OpId, SubmitError<C>> {
        self.start(kind::Disconnect::new(reuse).into(), context)
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
