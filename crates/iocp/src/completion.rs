//! What comes out of a port: the completion packet and what it hands back.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;

use socket2::{SockAddr, Socket};

/// The value a handle was associated with; it comes back in every packet for that handle.
///
/// Like Win32's `ULONG_PTR CompletionKey`, it is never interpreted by the port.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct CompletionKey(pub u64);

/// Identifies one started operation on its port (the analog of the `OVERLAPPED` address).
///
/// Unique per port for the port's lifetime; returned by every operation start and carried by
/// its completion.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct OpId(pub u64);

/// What the operation that produced a completion hands back: every buffer it owned, and for an
/// accept the new socket.
///
/// Each variant names the operation; the buffers are the ones passed in, with `len()` grown by
/// the bytes received (receives) or unchanged (sends).
#[non_exhaustive]
#[derive(Debug)]
pub enum Payload {
    /// A packet posted with [`CompletionPort::post`](crate::CompletionPort::post).
    Posted,
    /// [`Handle::recv`](crate::Handle::recv): the buffer, grown by the bytes received.
    Recv(Vec<u8>),
    /// [`Handle::recv_vectored`](crate::Handle::recv_vectored): the buffers, filled in order.
    RecvVectored(Vec<Vec<u8>>),
    /// [`Handle::send`](crate::Handle::send): the buffer that was sent.
    Send(Vec<u8>),
    /// [`Handle::send_vectored`](crate::Handle::send_vectored): the buffers that were sent.
    SendVectored(Vec<Vec<u8>>),
    /// [`Handle::accept`](crate::Handle::accept): the accepted connection.
    Accept(Box<Accepted>),
    /// [`Handle::connect`](crate::Handle::connect): the initial-send buffer (possibly empty).
    Connect(Vec<u8>),
    /// [`Handle::recv_ready`](crate::Handle::recv_ready) (the zero-byte receive): nothing.
    Ready,
    /// [`Handle::recv_from`](crate::Handle::recv_from): the buffer and the sender's address.
    RecvFrom(Vec<u8>, Option<Box<SockAddr>>),
    /// [`Handle::send_to`](crate::Handle::send_to): the datagram's buffer.
    SendTo(Vec<u8>),
    /// [`Handle::read_at`](crate::Handle::read_at): the buffer, grown by the bytes read.
    Read(Vec<u8>),
    /// [`Handle::write_at`](crate::Handle::write_at): the buffer that was written.
    Write(Vec<u8>),
    /// [`Handle::transmit_file`](crate::Handle::transmit_file): the file and the head and
    /// tail buffers.
    TransmitFile(Box<Transmitted>),
    /// [`Handle::disconnect`](crate::Handle::disconnect): nothing.
    Disconnect,
    /// [`Handle::recv_pooled`](crate::Handle::recv_pooled): the buffer the pool lent when data
    /// arrived (`None` if the receive failed before one was chosen). Dropping it returns it.
    RecvPooled(Option<crate::sys::bufpool::PooledBuf>),
}

/// What a [`Handle::transmit_file`](crate::Handle::transmit_file) hands back.
#[derive(Debug)]
pub struct Transmitted {
    /// The file that was sent from.
    pub file: std::sync::Arc<std::fs::File>,
    /// The bytes sent before the file range.
    pub head: Vec<u8>,
    /// The bytes sent after the file range.
    pub tail: Vec<u8>,
}

/// How an operation ended, as the drivers carry it: success, an errno, or the end of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status(i32);

impl Status {
    /// Success.
    pub(crate) const OK: Status = Status(0);
    /// A read at or past the end of a file (Win32 `ERROR_HANDLE_EOF`); not an errno.
    pub(crate) const EOF: Status = Status(-1);
    /// Aborted by a cancel or a close.
    pub(crate) const CANCELED: Status = Status(libc::ECANCELED);

    /// The status of a call that returned `errno` (0: success).
    pub(crate) const fn from_errno(errno: i32) -> Status {
        Status(if errno < 0 { libc::EIO } else { errno })
    }

    /// The errno of a failure; `None` for success and the end of a file.
    pub(crate) fn errno(self) -> Option<i32> {
        (self.0 > 0).then_some(self.0)
    }

    pub(crate) fn is_ok(self) -> bool {
        self == Status::OK
    }
}

/// A connection accepted by [`Handle::accept`](crate::Handle::accept) (AcceptEx's accept socket
/// plus what `GetAcceptExSockaddrs` parses).
pub struct Accepted {
    pub(crate) socket: Option<Socket>,
    pub(crate) peer: Option<SockAddr>,
    pub(crate) data: Vec<u8>,
}

impl Accepted {
    /// The new connected socket, or `None` when the accept itself failed. It is not associated
    /// with any port yet: associate it to start I/O on it.
    pub fn socket(&self) -> Option<&Socket> {
        self.socket.as_ref()
    }

    /// Takes the new socket out (see [`Accepted::socket`]).
    pub fn take_socket(&mut self) -> Option<Socket> {
        self.socket.take()
    }

    /// The peer's address, as reported by `accept4(2)`.
    pub fn peer_addr(&self) -> Option<&SockAddr> {
        self.peer.as_ref()
    }

    /// The local address of the accepted socket (`getsockname(2)`).
    ///
    /// # Errors
    /// Fails when the socket was already taken, or the syscall fails.
    pub fn local_addr(&self) -> io::Result<SockAddr> {
        match &self.socket {
            Some(s) => s.local_addr(),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no accepted socket")),
        }
    }

    /// The initial-receive buffer, grown by the first bytes the client sent (empty when no
    /// initial receive was requested).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the initial-receive buffer out.
    pub fn take_data(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }

    /// Splits into the socket, the peer address and the initial-receive buffer.
    pub fn into_parts(self) -> (Option<Socket>, Option<SockAddr>, Vec<u8>) {
        (self.socket, self.peer, self.data)
    }

    pub(crate) fn new(fd: Option<OwnedFd>, peer: Option<SockAddr>, data: Vec<u8>) -> Self {
        Accepted { socket: fd.map(Socket::from), peer, data }
    }
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("socket", &self.socket)
            .field("peer", &self.peer.as_ref().and_then(SockAddr::as_socket))
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// The `timer` of a completion (and of an op) without a deadline in the port's timer wheel.
pub(crate) const NO_TIMER: u32 = u32::MAX;

/// One completion packet, as `GetQueuedCompletionStatus` returns it: the handle's key, the
/// bytes transferred, the status, and the operation's context handed back whole (the
/// "extended OVERLAPPED": your context value plus every buffer the operation owned).
///
/// A failed operation's packet is data, not an `Err` of `get`: check [`Completion::result`].
pub struct Completion<C> {
    pub(crate) key: CompletionKey,
    pub(crate) op: OpId,
    pub(crate) bytes: usize,
    pub(crate) status: Status,
    pub(crate) context: C,
    pub(crate) payload: Payload,
    /// The operation's deadline in the port's timer wheel (the port disarms it), or
    /// `NO_TIMER`.
    pub(crate) timer: u32,
    /// This packet ends an operation the driver counts in flight: the port settles that count
    /// once the packet is queued (or handed to the hook, or dropped at the close), so the op
    /// is never counted nowhere on its way (see `PortInner::settle`). False for posted
    /// packets, a repeating accept's intermediate packets, and an op done inside its start.
    pub(crate) settles: bool,
}

impl<C> Completion<C> {
    /// The completion key of the handle (or the key given to `post`).
    pub fn key(&self) -> CompletionKey {
        self.key
    }

    /// The operation this packet completes ([`OpId`] `0` for posted packets).
    pub fn op(&self) -> OpId {
        self.op
    }

    /// Bytes transferred. Also meaningful on failure: an operation that moved bytes before it
    /// failed or was cancelled reports them here.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `Ok(bytes)` on success, else the operation's error.
    ///
    /// # Errors
    /// The error the operation failed with: `ECANCELED` when aborted (cancel, close),
    /// `ECONNRESET` on a reset connection, and so on.
    pub fn result(&self) -> io::Result<usize> {
        match self.status.errno() {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None if self.status == Status::EOF => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of file (ERROR_HANDLE_EOF)"))
            }
            None => Ok(self.bytes),
        }
    }

    /// The errno of a failed operation; `None` on success and at end of file (see
    /// [`Completion::is_eof`]).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.status.errno()
    }

    /// True for a file read at or past the end of the file (Win32 `ERROR_HANDLE_EOF`, case 49);
    /// [`Completion::result`] is then an `UnexpectedEof` error.
    pub fn is_eof(&self) -> bool {
        self.status == Status::EOF
    }

    /// True when the operation was aborted by a cancel or a close (Win32
    /// `ERROR_OPERATION_ABORTED`).
    pub fn is_aborted(&self) -> bool {
        self.status == Status::CANCELED
    }

    /// The context passed when the operation was started (or to `post`).
    pub fn context(&self) -> &C {
        &self.context
    }

    /// Mutable access to the context.
    pub fn context_mut(&mut self) -> &mut C {
        &mut self.context
    }

    /// What the operation hands back.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Mutable access to what the operation hands back.
    pub fn payload_mut(&mut self) -> &mut Payload {
        &mut self.payload
    }

    /// Takes the context and the payload.
    pub fn into_parts(self) -> (C, Payload) {
        (self.context, self.payload)
    }

    /// Takes the context.
    pub fn into_context(self) -> C {
        self.context
    }

    /// The single buffer of a `Recv`, `Send` or `Connect` packet (taken out), or `None`.
    pub fn take_buf(&mut self) -> Option<Vec<u8>> {
        match &mut self.payload {
            Payload::Recv(b)
            | Payload::Send(b)
            | Payload::Connect(b)
            | Payload::RecvFrom(b, _)
            | Payload::SendTo(b)
            | Payload::Read(b)
            | Payload::Write(b) => Some(std::mem::take(b)),
            Payload::Accept(a) => Some(a.take_data()),
            _ => None,
        }
    }

    /// The buffers of a vectored packet (taken out), or `None`.
    pub fn take_bufs(&mut self) -> Option<Vec<Vec<u8>>> {
        match &mut self.payload {
            Payload::RecvVectored(b) | Payload::SendVectored(b) => Some(std::mem::take(b)),
            _ => None,
        }
    }

    /// The accepted connection of an `Accept` packet (taken out), or `None`.
    pub fn take_accepted(&mut self) -> Option<Accepted> {
        match std::mem::replace(&mut self.payload, Payload::Posted) {
            Payload::Accept(a) => Some(*a),
            other => {
                self.payload = other;
                None
            }
        }
    }

    pub(crate) fn posted(bytes: usize, key: CompletionKey, context: C) -> Self {
        Completion {
            key,
            op: OpId(0),
            bytes,
            status: Status::OK,
            context,
            payload: Payload::Posted,
            timer: NO_TIMER,
            settles: false,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Completion<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("key", &self.key)
            .field("op", &self.op)
            .field("bytes", &self.bytes)
            .field("result", &self.result())
            .field("context", &self.context)
            .field("payload", &self.payload)
            .finish()
    }
}
