//! Operations: everything the kernel may touch while an operation is in flight, owned in one
//! boxed value, and the syscalls each backend makes for it.
//!
//! An `Op` is boxed when it is started and never moves until its completion is built, so the
//! pointers handed to the kernel (buffer spare capacity, iovec arrays, `msghdr`, `sockaddr`
//! storage) stay valid for as long as the kernel may use them. The epoll backend makes the same
//! syscalls itself, non-blocking, when the fd is ready; `Op::advance` interprets a result the
//! same way for both backends, so they agree on every outcome.
//!
//! Each operation is one file (its state, its epoll syscall, its io_uring SQE and opcodes, how
//! its results read, its payload) implementing [`OpCode`]; the `ops!` list below makes
//! [`OpKind`] and its dispatch from them, with no `dyn` on the hot path. Adding an operation is
//! a file plus a line in that list (see DESIGN.md, "where to change what").

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::completion::{Accepted, Completion, OpId, Payload, Status};
use crate::stats::InFlightByKind;
use crate::sys::fault::{self, Point};
#[cfg(feature = "uring")]
use crate::sys::opcodes::{Feature, Opcode};
use code::{Count, OpCode, Outcome};
pub(crate) use code::{Progress, Side};

/// The kernel side of a handle, queueing this module's operations.
pub(crate) type HandleInner<C> = crate::sys::handle::HandleInner<C, Op<C>>;
/// A handle's pending-operation bookkeeping (under its lock).
pub(crate) type HandleIo<C> = crate::sys::handle::HandleIo<C, Op<C>>;

mod accept;
mod code;
mod connect;
mod dgram;
mod disconnect;
mod file;
mod msg;
mod pooled;
mod raw;
mod ready;
mod stream;
mod transmit;

/// Declares [`OpKind`], one variant per operation type (`Variant(module::Type)`, the type
/// implementing [`OpCode`] in `module.rs`), its dispatch (`each!`) and the [`OPS`] table the
/// io_uring probe derives its requirements from.
macro_rules! ops {
    ($d:tt $( $(#[$doc:meta])* $variant:ident($module:ident :: $ty:ident), )*) => {
        /// The per-kind state of an operation.
        pub(crate) enum OpKind {
            $( $(#[$doc])* $variant($module::$ty), )*
        }

        /// The operation types, by name, to build an [`OpKind`] from (`kind::Recv::new(buf)`).
        pub(crate) mod kind {
            $( pub(crate) use super::$module::$ty; )*
        }

        $( impl From<$module::$ty> for OpKind {
            fn from(op: $module::$ty) -> Self {
                OpKind::$variant(op)
            }
        } )*

        /// `each!(kind, k => expr)`: `expr` with `k` bound to the operation's own state.
        macro_rules! each {
            ($d kind:expr, $d k:ident => $d e:expr) => {
                match $d kind { $( OpKind::$variant($d k) => $d e, )* }
            };
        }

        /// Every operation type, for the probe and the opcode drift test.
        #[cfg(feature = "uring")]
        pub(crate) const OPS: &[OpInfo] = &[
            $( OpInfo {
                name: stringify!($variant),
                file: concat!(stringify!($module), ".rs"),
                opcodes: <$module::$ty as OpCode>::OPCODES,
                features: <$module::$ty as OpCode>::FEATURES,
            }, )*
        ];
    };
}

/// An operation type's io_uring needs (see [`OPS`]).
#[cfg(feature = "uring")]
pub(crate) struct OpInfo {
    /// The `OpKind` variant (read by the drift test only).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: &'static str,
    /// The file under `sys/op/` that defines it (read by the drift test only).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) file: &'static str,
    pub(crate) opcodes: &'static [Opcode],
    pub(crate) features: &'static [Feature],
}

ops! { $
    Recv(stream::Recv),
    RecvV(stream::RecvV),
    Send(stream::Send),
    SendV(stream::SendV),
    RecvFrom(dgram::RecvFrom),
    SendTo(dgram::SendTo),
    Accept(accept::Accept),
    /// A repeating accept: each connection is its own packet; the op itself ends only by
    /// cancel, close or error.
    AcceptMulti(accept::AcceptMulti),
    Connect(connect::Connect),
    /// A zero-byte receive: completes when the socket is readable.
    Ready(ready::Ready),
    ReadAt(file::ReadAt),
    WriteAt(file::WriteAt),
    Transmit(transmit::Transmit),
    /// DisconnectEx: shut down the write side, read until the peer's FIN, then (reuse)
    /// dissolve the association so the socket can connect again.
    Disconnect(disconnect::Disconnect),
    /// A receive into a buffer the pool lends when data arrives.
    RecvPooled(pooled::RecvPooled),
}

fn ordered<T: OpCode>(_: &T) -> Option<Side> {
    T::ORDERED.then_some(T::SIDE)
}
fn side<T: OpCode>(_: &T) -> Side {
    T::SIDE
}
fn count<T: OpCode>(_: &T) -> Count {
    T::COUNT
}
fn file_io<T: OpCode>(_: &T) -> bool {
    T::FILE_IO
}
fn multishot<T: OpCode>(_: &T) -> bool {
    T::MULTISHOT
}
#[cfg(feature = "uring")]
fn ring_buffers<T: OpCode>(_: &T) -> bool {
    T::RING_BUFFERS
}

impl OpKind {
    /// The side of the handle whose order this op must keep; `None` when order does not matter.
    pub(crate) fn ordered_side(&self) -> Option<Side> {
        each!(self, k => ordered(k))
    }

    /// The side of a handle whose readiness serves this op (epoll's queue for it).
    pub(crate) fn ready_side(&self) -> Side {
        each!(self, k => side(k))
    }

    /// Adds one to this op's kind in `counts` (for [`InFlightByKind`]).
    pub(crate) fn count_in(&self, counts: &mut InFlightByKind) {
        let c = match each!(self, k => count(k)) {
            Count::Accept => &mut counts.accept,
            Count::Connect => &mut counts.connect,
            Count::Receive => &mut counts.receive,
            Count::Send => &mut counts.send,
            Count::File => &mut counts.file,
            Count::Other => &mut counts.other,
        };
        *c += 1;
    }

    /// True for regular-file I/O: epoll cannot wait for it, so it runs on the file pool.
    pub(crate) fn is_file_io(&self) -> bool {
        each!(self, k => file_io(k))
    }

    /// True for a repeating op (a packet per result).
    pub(crate) fn is_multishot(&self) -> bool {
        each!(self, k => multishot(k))
    }

    /// True for an op that must start on ring 0 (its provided buffers live there).
    #[cfg(feature = "uring")]
    pub(crate) fn uses_ring_buffers(&self) -> bool {
        each!(self, k => ring_buffers(k))
    }

    /// The buffers, handed back when the operation completes with `status`.
    pub(crate) fn into_payload(self, bytes: usize, status: Status) -> Payload {
        each!(self, k => k.into_payload(bytes, status))
    }

    /// The buffers of an operation that never started: nothing in them came from the kernel.
    pub(crate) fn into_unstarted_payload(self) -> Payload {
        self.into_payload(0, Status::CANCELED)
    }
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
    pub(crate) fn complete(self: Box<Self>, status: Status) -> Completion<C> {
        let Op { id, handle, context, kind, bytes, cancel_reason, timer } = *self;
        let payload = kind.into_payload(bytes, status);
        // An abort reports why it was asked for (a deadline reports ETIMEDOUT).
        let status = if status == Status::CANCELED && cancel_reason != 0 {
            Status::from_errno(i32::from(cancel_reason))
        } else {
            status
        };
        Completion {
            key: handle.key,
            op: id,
            bytes,
            status,
            context,
            payload,
            timer,
            settles: true,
        }
    }

    /// Builds the completion for a cancelled operation: "aborted", with the bytes it had moved.
    pub(crate) fn abort(self: Box<Self>) -> Completion<C> {
        self.complete(Status::CANCELED)
    }

    fn fd(&self) -> RawFd {
        self.handle.fd.as_raw_fd()
    }

    /// Records a syscall (or CQE) result `res` (bytes or `-errno`) for the current stage.
    /// Shared by both backends, so that they agree on every operation's outcome.
    pub(crate) fn advance(&mut self, res: isize) -> Progress {
        if res < 0 {
            return match (-res) as i32 {
                libc::EAGAIN | libc::EINTR => each!(&self.kind, k => k.would_block()),
                libc::EINPROGRESS | libc::EALREADY => Progress::Again,
                errno => Progress::fail(errno),
            };
        }
        let fd = self.handle.fd.as_raw_fd();
        each!(&mut self.kind, k => k.advance(res as usize, &mut self.bytes, fd))
    }

    /// epoll: the current stage waits for readability (see `OpCode::waits_readable`).
    pub(crate) fn waits_readable(&self) -> bool {
        each!(&self.kind, k => k.waits_readable())
    }

    /// epoll: this finished op read less than it had room for (see `OpCode::short_read`).
    pub(crate) fn short_read(&self) -> bool {
        each!(&self.kind, k => k.short_read(self.bytes))
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
        each!(&self.kind, k => k.fault_point())
    }

    /// Makes the current stage's syscall, or returns the error injected for it.
    fn syscall(&mut self) -> isize {
        if let Some(errno) = self.fault_point().and_then(fault::hit) {
            return -(errno as isize);
        }
        let (fd, bytes) = (self.fd(), self.bytes);
        each!(&mut self.kind, k => k.syscall(fd, bytes))
    }

    /// io_uring: the submission entry for the current stage.
    #[cfg(feature = "uring")]
    pub(crate) fn sqe(&mut self) -> io_uring::squeue::Entry {
        let (fd, bytes) = (self.fd(), self.bytes);
        each!(&mut self.kind, k => k.sqe(fd, bytes))
    }

    /// io_uring: records a CQE result. A poll result is an event mask, not a byte count.
    #[cfg(feature = "uring")]
    pub(crate) fn on_cqe(&mut self, res: i32, flags: u32) -> Progress {
        if each!(&self.kind, k => k.reaps_by_syscall()) {
            // The readiness poll of a stage this thread runs itself: make its syscall until
            // the socket is full or the stage is over.
            if res < 0 {
                return Progress::fail(-res);
            }
            loop {
                let r = self.syscall();
                match self.advance(r) {
                    Progress::Again if r >= 0 => {
                        if each!(&self.kind, k => k.reaps_by_syscall()) {
                            continue;
                        }
                        return Progress::Again; // on to the next stage's SQE
                    }
                    p => return p,
                }
            }
        }
        let fd = self.fd();
        let res = match each!(&mut self.kind, k => k.on_cqe(res, flags, fd)) {
            Outcome::Result(res) => res,
            Outcome::Progress(p) => return p,
        };
        match self.advance(res) {
            // io_uring retries readiness internally; EAGAIN reaching us is spurious: resubmit.
            Progress::AgainOnAccepted => Progress::Again,
            p => p,
        }
    }

    /// The accepted socket of an accept in its initial-receive stage (the descriptor the
    /// current stage waits on, when it is not the handle's).
    pub(crate) fn accepted_fd(&self) -> Option<RawFd> {
        each!(&self.kind, k => k.stage_fd())
    }

    /// epoll: the handle is ready for this op: its stage's result (read without a syscall
    /// where the op says so, e.g. a connect's `SO_ERROR`), then on while it makes progress.
    pub(crate) fn on_ready(&mut self) -> Progress {
        let fd = self.handle.fd.as_fd();
        match each!(&mut self.kind, k => k.ready_result(fd)) {
            Some(Outcome::Result(res)) => match self.advance(res) {
                Progress::Again if res >= 0 => self.try_io(),
                p => p,
            },
            Some(Outcome::Progress(p)) => p,
            None => self.try_io(),
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
            status: Status::OK,
            context,
            payload: Payload::Accept(Box::new(Accepted::new(Some(fd), peer, Vec::new()))),
            timer: NO_TIMER,
            settles: false,
        })
    }

    /// io_uring: a multishot accept's CQE carried connection `res` (a new fd).
    #[cfg(feature = "uring")]
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
            return match (-res) as i32 {
                libc::EAGAIN | libc::EINTR => Progress::Again,
                // The peer gave up before we took it: not the listener's failure.
                libc::ECONNABORTED | libc::EPROTO => continue,
                e => Progress::fail(e),
            };
        }
    }
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

#[cfg(all(test, feature = "uring"))]
mod tests {
    use super::OPS;
    use crate::sys::opcodes::{DRIVER, INFO, emitted};

    fn source_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sys/op")
    }

    /// Each file under `sys/op/` builds only the opcodes its operations declare (`OPCODES`),
    /// so the probe, which requires every declared one, cannot drift from the code.
    #[test]
    fn every_opcode_an_op_file_builds_is_declared_by_its_ops() {
        let mut seen = 0;
        let mut files = 0;
        for entry in std::fs::read_dir(source_dir()).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_owned();
            let src = std::fs::read_to_string(&path).unwrap();
            files += 1;
            let ops: Vec<_> = OPS.iter().filter(|o| o.file == file).collect();
            for name in emitted(&src) {
                seen += 1;
                assert!(
                    ops.iter().any(|o| o.opcodes.iter().any(|u| u.rust == name)),
                    "sys/op/{file} builds opcode::{name}, which none of its ops ({:?}) declares \
                     in OPCODES, so the io_uring probe does not require it",
                    ops.iter().map(|o| o.name).collect::<Vec<_>>()
                );
                assert!(!INFO.iter().any(|u| u.rust == name), "{name} is listed as information");
            }
        }
        assert!(files >= 10 && seen >= 15, "scanned {files} files, {seen} opcodes: moved?");
        assert!(OPS.iter().all(|o| source_dir().join(o.file).exists()));
    }

    /// The driver's own opcodes (NOP, cancel) are declared too.
    #[test]
    fn every_opcode_the_driver_builds_is_declared() {
        let src = include_str!("../uring.rs");
        let names = emitted(src);
        assert!(names.len() >= 2, "found {names:?}");
        for name in names {
            assert!(DRIVER.iter().any(|u| u.rust == name), "uring.rs builds opcode::{name}");
        }
    }
}
