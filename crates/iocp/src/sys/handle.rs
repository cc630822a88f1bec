//! The kernel side of a handle: its fd, its key, and the backend's bookkeeping of the
//! operations pending on it. The drivers, the operations and the port share this; the public
//! `Handle` (crate::handle) is a facade over it, and nothing here knows of the port.
//!
//! The queued operations are a type parameter `T` (always `sys::op::Op<C>`: the aliases
//! `sys::op::HandleInner<C>` and `sys::op::HandleIo<C>` name it). An op owns its handle and a
//! handle queues its ops, and this file stores them without looking inside, so it need not
//! import the operations: the kernel layer has no import circle.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::completion::CompletionKey;

/// The two sides of a stream handle, each with its own queue of pending operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Receives, accepts, readiness waits, disconnect's wait for the FIN.
    Read = 0,
    /// Sends, connects, TransmitFile.
    Write = 1,
}

impl Side {
    pub(crate) const BOTH: [Side; 2] = [Side::Read, Side::Write];

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// Backend bookkeeping for one handle, under the handle's lock. Sized for the common case of an
/// idle connection (at most one pending op per side, one op in the kernel) without allocating:
/// that is what keeps memory per idle connection small. Everything beyond lives in one
/// `Overflow` box, allocated only while needed.
///
/// Per [`Side`]:
/// - epoll: operations waiting for readability / writability, in submission order;
/// - io_uring: receives / sends waiting for the one in the kernel to finish (stream order).
pub(crate) struct HandleIo<C, T> {
    heads: [Option<Box<T>>; 2],
    /// io_uring: a receive / a send of this handle is in the kernel (by [`Side`]).
    busy: [bool; 2],
    /// epoll: tokens of accepts parked on their accepted socket (initial receive).
    /// io_uring: `user_data` of every operation in the kernel. Used to cancel them.
    /// The first lives inline (`token`, if `has_token`), the rest in the overflow.
    token: u64,
    has_token: bool,
    /// epoll: the read side is known to hold nothing (see [`HandleIo::read_idle`]).
    read_idle: bool,
    /// epoll: a short read shows the read side drained (a TCP socket whose end, hang-up,
    /// error or urgent data was not reported).
    short_read_drains: bool,
    overflow: Option<Box<Overflow<C, T>>>,
}

struct Overflow<C, T> {
    rest: [VecDeque<Box<T>>; 2],
    tokens: Vec<u64>,
    /// Set by `accept_multi` (which requires `C: Clone`): how a repeating accept copies its
    /// context into each connection's packet. Only listeners pay for it.
    clone_ctx: Option<fn(&C) -> C>,
}

impl<C, T> HandleIo<C, T> {
    pub(crate) const fn new() -> Self {
        HandleIo {
            heads: [None, None],
            busy: [false; 2],
            token: 0,
            has_token: false,
            read_idle: false,
            short_read_drains: false,
            overflow: None,
        }
    }

    /// epoll: whether the read side is known to have nothing to read, so that a new read-side
    /// operation waits for the next readiness event instead of trying its syscall first (it
    /// would fail with `EAGAIN`). Set after a read-side syscall found nothing, or a TCP
    /// receive returned less than it asked for (epoll(7), Q9: the read space is exhausted);
    /// cleared by every readable, urgent-data, hang-up or error event. Both happen under this
    /// lock, and an event for data that arrives after a syscall is handled after it, so no
    /// readiness is lost (DESIGN.md §3.6.1).
    pub(crate) fn read_idle(&self) -> bool {
        self.read_idle
    }

    /// epoll: records what a read-side syscall found (see [`HandleIo::read_idle`]): `would_block`
    /// (it returned `EAGAIN`) or `short` (a receive filled less than its buffer).
    pub(crate) fn note_read(&mut self, would_block: bool, short: bool) {
        self.read_idle = would_block || (short && self.short_read_drains);
    }

    /// epoll: a readiness event for the read side; `end` if it reports the peer's end, a
    /// hang-up, an error or urgent data (after which reads go on until they fail: short reads
    /// prove nothing then).
    pub(crate) fn note_readable(&mut self, end: bool) {
        self.read_idle = false;
        if end {
            self.short_read_drains = false;
        }
    }

    /// epoll: the handle is a TCP socket, for which a short read shows the read side drained.
    pub(crate) fn set_tcp(&mut self) {
        self.short_read_drains = true;
    }

    fn overflow(&mut self) -> &mut Overflow<C, T> {
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

    /// io_uring: whether an op of `side` is in the kernel.
    pub(crate) fn is_busy(&self, side: Side) -> bool {
        self.busy[side.index()]
    }

    pub(crate) fn set_busy(&mut self, side: Side, busy: bool) {
        self.busy[side.index()] = busy;
    }

    pub(crate) fn clone_ctx(&self) -> Option<fn(&C) -> C> {
        self.overflow.as_ref().and_then(|o| o.clone_ctx)
    }

    pub(crate) fn set_clone_ctx(&mut self, f: fn(&C) -> C) {
        self.overflow().clone_ctx = Some(f);
    }

    pub(crate) fn is_empty(&self, side: Side) -> bool {
        self.heads[side.index()].is_none()
    }

    pub(crate) fn push_back(&mut self, side: Side, op: Box<T>) {
        let i = side.index();
        if self.heads[i].is_none() {
            self.heads[i] = Some(op);
        } else {
            self.overflow().rest[i].push_back(op);
        }
    }

    pub(crate) fn front_mut(&mut self, side: Side) -> Option<&mut T> {
        self.heads[side.index()].as_deref_mut()
    }

    pub(crate) fn pop_front(&mut self, side: Side) -> Option<Box<T>> {
        let i = side.index();
        let head = self.heads[i].take()?;
        self.heads[i] = self.overflow.as_mut().and_then(|o| o.rest[i].pop_front());
        self.trim();
        Some(head)
    }

    /// Every queued op, both sides (for counting).
    pub(crate) fn ops(&self) -> impl Iterator<Item = &T> {
        let rest = self.overflow.iter().flat_map(|o| o.rest.iter().flatten());
        self.heads.iter().flatten().map(|b| &**b).chain(rest.map(|b| &**b))
    }

    /// Takes every queued op, both sides, in order.
    pub(crate) fn drain_all(&mut self) -> Vec<Box<T>> {
        let mut out = Vec::new();
        for side in Side::BOTH {
            while let Some(op) = self.pop_front(side) {
                out.push(op);
            }
        }
        out
    }

    /// Removes the queued operations `f` selects, keeping the others in order.
    pub(crate) fn take_matching(&mut self, f: impl Fn(&T) -> bool) -> Vec<Box<T>> {
        let mut taken = Vec::new();
        for side in Side::BOTH {
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
pub(crate) struct HandleInner<C, T> {
    pub(crate) fd: OwnedFd,
    pub(crate) key: CompletionKey,
    pub(crate) closed: AtomicBool,
    /// epoll: the registration token.
    pub(crate) token: AtomicU64,
    /// A regular file or block device: always "ready", so epoll cannot wait for it and its I/O
    /// runs on the file pool.
    pub(crate) is_file: bool,
    io: Mutex<HandleIo<C, T>>,
    /// The registry key of a socket or pipe (0: none, or released; see `claim`).
    identity: AtomicU64,
    /// `Handle` clones alive; the last one to go closes the handle.
    pub(crate) users: AtomicU32,
}

impl<C, T> HandleInner<C, T> {
    /// Takes `fd` for an association with `key`: refused (ERROR_INVALID_PARAMETER) when its
    /// socket or pipe is associated already, through this fd or another.
    pub(crate) fn claim(fd: OwnedFd, key: CompletionKey) -> io::Result<Self> {
        let (identity, is_file) = claim(fd.as_fd())?;
        Ok(HandleInner {
            fd,
            key,
            closed: AtomicBool::new(false),
            token: AtomicU64::new(0),
            is_file,
            io: Mutex::new(HandleIo::new()),
            identity: AtomicU64::new(identity),
            users: AtomicU32::new(1),
        })
    }

    pub(crate) fn io(&self) -> MutexGuard<'_, HandleIo<C, T>> {
        self.io.lock()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Gives up the socket's or pipe's claim (see `claim`): once the handle is closed, the
    /// same socket may be associated again (through another fd), at once, although this
    /// struct lives on until the last reference to it (a driver's, an operation's) goes.
    /// Idempotent.
    pub(crate) fn release_claim(&self) {
        let id = self.identity.swap(0, Ordering::AcqRel);
        if id != 0 {
            let mut set = registry().lock();
            set.remove(&id);
            crate::spare::set(&mut set);
        }
    }
}

impl<C, T> Drop for HandleInner<C, T> {
    fn drop(&mut self) {
        self.release_claim();
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
    if !registry().lock().insert(id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "handle is already associated with a completion port (ERROR_INVALID_PARAMETER)",
        ));
    }
    Ok((id, false))
}
