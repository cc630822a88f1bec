//! What the library keeps: the port table (HANDLE value → port), the association table (fd →
//! core handle), the per-operation context, and the conversion of a core completion into what
//! GetQueuedCompletionStatus reports.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use iocp_core::{
    BackendChoice, Completion, CompletionKey, CompletionPort, Delivery, Handle, OpId, Payload,
    PortBuilder, SubmitError,
};
use parking_lot::{Condvar, Mutex, RwLock};
use socket2::SockAddr;

use crate::errors::{self, Codes};
use crate::mem;
use crate::types::{DWORD, HANDLE, OVERLAPPED, handle_from, hval};

/// Where the bytes of a receive or read go, and what else the dequeue must do.
pub(crate) enum Target {
    /// Nothing to copy (sends, connects, posted packets).
    None,
    /// The caller's buffers `(address, length)`, filled in order.
    Scatter(Vec<(usize, usize)>),
    /// WSARecvFrom: the buffers, and where the sender's address and its length go.
    RecvFrom { bufs: Vec<(usize, usize)>, from: usize, fromlen: usize },
    /// AcceptEx: the output buffer, its three lengths, the accept socket's fd, and the watch
    /// that says whether that socket is still the one the caller passed ([`watch_accept`]).
    Accept {
        out: usize,
        data_len: usize,
        local_len: usize,
        remote_len: usize,
        accept_fd: i32,
        watch: u64,
    },
    /// The operation is finished: the completion hook ([`on_complete`]) did it when it
    /// completed; the dequeue only reports this packet.
    Done(Box<Done>),
}

/// The per-operation context the core hands back in the completion: the caller's
/// `LPOVERLAPPED` (returned untouched) plus what the dequeue must do.
pub(crate) struct Ctx {
    pub(crate) ov: usize,
    pub(crate) target: Target,
    pub(crate) assoc: Weak<Assoc>,
    /// Which in-flight counter of the association this op holds (`Side`).
    pub(crate) side: Side,
    /// Bytes already sent in line before the rest went to the core (added to the packet's
    /// count, a DWORD).
    pub(crate) extra: u32,
    /// The OVERLAPPED's `hEvent` when the operation started (set on completion; low bit: no
    /// packet).
    pub(crate) event: usize,
    /// Started on the hidden port: counted in [`HIDDEN_LIVE`] until finished.
    pub(crate) hidden: bool,
}

/// The direction of a stream operation, for the in-line attempts: a receive (or send) is tried
/// in line only when no other receive (send) of the socket is in flight, to keep stream order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    None,
    Recv,
    Send,
}

impl Ctx {
    pub(crate) fn posted(ov: usize) -> Self {
        let (target, assoc, side) = (Target::None, Weak::new(), Side::None);
        Ctx { ov, target, assoc, side, extra: 0, event: 0, hidden: false }
    }
}

/// A port and its table id.
pub(crate) struct PortEntry {
    pub(crate) port: CompletionPort<Ctx>,
    /// Threads inside GetQueuedCompletionStatus(Ex) on this port now (one of them polls the
    /// kernel: nothing for the [`reaper`] to do).
    pub(crate) inside: AtomicUsize,
    /// GetQueuedCompletionStatus(Ex) calls that returned: the [`reaper`] polls a port only when
    /// this did not move for a whole tick (nobody is dequeuing).
    pub(crate) exits: AtomicU64,
    /// The hidden port of sockets used for overlapped I/O without a port ([`implicit_port`]).
    pub(crate) implicit: bool,
}

impl PortEntry {
    /// Counts a GetQueuedCompletionStatus(Ex) call in; the guard counts it out.
    pub(crate) fn enter(&self) -> Inside<'_> {
        self.inside.fetch_add(1, Ordering::AcqRel);
        Inside(self)
    }
}

/// A thread inside GetQueuedCompletionStatus(Ex) ([`PortEntry::enter`]).
pub(crate) struct Inside<'a>(&'a PortEntry);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.exits.fetch_add(1, Ordering::Release);
        self.0.inside.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket or file associated with a port: the core handle (on a `dup` of the caller's fd),
/// and the operations started on it that have not been dequeued yet, by OVERLAPPED address.
pub(crate) struct Assoc {
    pub(crate) handle: Handle<Ctx>,
    /// The caller fd's identity when it was associated: a `close()` (not `closesocket`) and a
    /// new file or socket on the same number shows as a different identity.
    ident: Ident,
    pub(crate) port: Arc<PortEntry>,
    pub(crate) key: usize,
    pub(crate) is_socket: bool,
    /// A connected-stream socket type (SOCK_STREAM): in-line receive/send attempts apply.
    pub(crate) is_stream: bool,
    /// SetFileCompletionNotificationModes flags (only ever added to).
    pub(crate) modes: AtomicU8,
    /// Receives / sends started on the core and not yet dequeued.
    pub(crate) inflight: [AtomicUsize; 2],
    pub(crate) pending: Mutex<HashMap<usize, (OpId, ThreadId)>>,
    /// A ConnectEx whose connection was established and then reset at once reported success
    /// (as Windows does); the next receive or send on the socket reports the reset.
    pub(crate) reset_pending: AtomicBool,
}

impl Assoc {
    pub(crate) fn skips_on_success(&self) -> bool {
        self.modes.load(Ordering::Acquire) & crate::types::FILE_SKIP_COMPLETION_PORT_ON_SUCCESS != 0
    }

    pub(crate) fn idle(&self, side: Side) -> bool {
        match side {
            Side::Recv => self.inflight[0].load(Ordering::Acquire) == 0,
            Side::Send => self.inflight[1].load(Ordering::Acquire) == 0,
            Side::None => true,
        }
    }

    fn count(&self, side: Side, up: bool) {
        let c = match side {
            Side::Recv => &self.inflight[0],
            Side::Send => &self.inflight[1],
            Side::None => return,
        };
        if up {
            c.fetch_add(1, Ordering::AcqRel);
        } else {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Ends every operation of this association that has not been dequeued, for the caller:
    /// `Internal = STATUS_CANCELLED` now, and the caller's memory is never touched again (the
    /// dequeue of such an operation finds it gone from `pending` and reports the abort without
    /// copying anything). Used when the socket or the port goes away, so that
    /// `HasOverlappedIoCompleted` / `GetOverlappedResult` see the end without any dequeue.
    pub(crate) fn release_pending(&self) {
        let ovs: Vec<usize> = self.pending.lock().drain().map(|(ov, _)| ov).collect();
        for ov in ovs {
            // SAFETY: an operation's OVERLAPPED stays valid until its packet is dequeued (Win32
            // contract); this one was still in `pending`, so not dequeued, and removing it under
            // the lock made this the last write to it (and `abort_ov` reads its event first).
            unsafe { abort_ov(ov as *mut OVERLAPPED) };
        }
    }

    /// The accept socket of this listener's AcceptEx with `ov` is being closed: that AcceptEx
    /// is released (its OVERLAPPED ends as cancelled now, its dequeue touches nothing) and
    /// cancelled, so it completes once, aborted (or, if it had already completed, its queued
    /// packet reports the abort and its connection is closed).
    fn release_accept(&self, ov: usize) {
        let Some((op, _)) = self.pending.lock().remove(&ov) else { return };
        // SAFETY: the AcceptEx's OVERLAPPED, valid until its packet is dequeued (Win32
        // contract); it was still in `pending` and is no longer, so this is the last write.
        unsafe { abort_ov(ov as *mut OVERLAPPED) };
        let _ = self.handle.cancel(op);
    }

    /// The association goes away (closesocket, CloseHandle, a stale number): its pending
    /// operations are released ([`Assoc::release_pending`]), then its core handle is closed,
    /// which completes each of them once, aborted.
    fn retire(&self) {
        self.release_pending();
        self.handle.close();
    }

    /// Reports an operation that completed in line with success: `Internal`/`InternalHigh` are
    /// written now, and a packet is queued unless skip mode is on (iocp-semantics.md §7).
    pub(crate) fn inline_success(&self, ov: *mut OVERLAPPED, bytes: usize) {
        // SAFETY: the caller's OVERLAPPED, non-NULL (checked by the caller), valid (Win32
        // contract); the event is read before the status is written (after that the caller may
        // reuse the OVERLAPPED).
        let event = unsafe { mem::ov_event(ov) };
        // SAFETY: as above.
        unsafe { mem::ov_done(ov, 0, bytes) };
        if event != 0 {
            crate::win32::op_event(event, true);
        }
        if !self.skips_on_success() && event & 1 == 0 {
            let key = CompletionKey(self.key as u64);
            // A closed port has nobody to dequeue the packet: dropping it is what Windows does.
            let _ = self.port.port.post(bytes, key, Ctx::posted(ov as usize));
        }
    }
}

/// Modes set on a handle before its association (applied when it is associated).
fn early_modes() -> &'static Mutex<HashMap<i32, u8>> {
    static M: OnceLock<Mutex<HashMap<i32, u8>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// SetFileCompletionNotificationModes: adds `flags` to `fd`'s modes (associated or not yet).
pub(crate) fn add_modes(fd: i32, flags: u8) {
    match assoc(fd) {
        Some(a) => {
            a.modes.fetch_or(flags, Ordering::AcqRel);
        }
        None => *early_modes().lock().entry(fd).or_default() |= flags,
    }
}

/// Port HANDLE values: far above any fd, multiples of 4 like Windows handles.
const PORT_BASE: usize = 0x0000_5043_0000_0000;

fn ports() -> &'static RwLock<HashMap<u64, Arc<PortEntry>>> {
    static P: OnceLock<RwLock<HashMap<u64, Arc<PortEntry>>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

fn assocs() -> &'static RwLock<HashMap<i32, Arc<Assoc>>> {
    static A: OnceLock<RwLock<HashMap<i32, Arc<Assoc>>>> = OnceLock::new();
    A.get_or_init(Default::default)
}

/// Files opened by CreateFile: fd → opened with FILE_FLAG_OVERLAPPED.
pub(crate) fn created_files() -> &'static Mutex<HashMap<i32, bool>> {
    static F: OnceLock<Mutex<HashMap<i32, bool>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

/// The backend `IOCP_BACKEND` names (`epoll`, `uring`, `auto`; default auto).
fn backend_choice() -> Result<BackendChoice, Codes> {
    match std::env::var("IOCP_BACKEND") {
        Ok(v) => v.parse().map_err(|_| errors::from_errno(libc::EINVAL)),
        Err(_) => Ok(BackendChoice::Auto),
    }
}

/// Creates a port; returns its HANDLE.
pub(crate) fn create_port(concurrency: DWORD) -> Result<(HANDLE, Arc<PortEntry>), Codes> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let port = PortBuilder::new()
        .backend(backend_choice()?)
        .concurrency(concurrency as usize)
        .build::<Ctx>()
        .map_err(|e| errors::from_io(&e))?;
    // Each operation is finished the moment it completes, dequeued or not (Windows writes the
    // OVERLAPPED and signals its event then): see `on_complete`.
    port.on_complete(on_complete).map_err(|e| errors::from_io(&e))?;
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let entry = Arc::new(PortEntry {
        port,
        inside: AtomicUsize::new(0),
        exits: AtomicU64::new(0),
        implicit: false,
    });
    ports().write().insert(id, entry.clone());
    reaper(&entry);
    Ok((handle_from(PORT_BASE + ((id as usize) << 2)), entry))
}

/// The process's hidden port, for sockets used for overlapped I/O without a completion port
/// (`WSARecv` with an OVERLAPPED and its `hEvent`, then `WSAWaitForMultipleEvents` and
/// `WSAGetOverlappedResult`: Windows reports such an operation through its OVERLAPPED only).
/// No HANDLE names it and nobody dequeues from it: its hook drops every packet after finishing
/// the operation, and its reaper waits in the kernel all the time, as Windows' kernel would.
fn implicit_port() -> Result<Arc<PortEntry>, Codes> {
    static IMPLICIT: OnceLock<Arc<PortEntry>> = OnceLock::new();
    static MAKING: Mutex<()> = Mutex::new(());
    if let Some(p) = IMPLICIT.get() {
        return Ok(p.clone());
    }
    let _one = MAKING.lock();
    if let Some(p) = IMPLICIT.get() {
        return Ok(p.clone());
    }
    let port = PortBuilder::new()
        .backend(backend_choice()?)
        .build::<Ctx>()
        .map_err(|e| errors::from_io(&e))?;
    port.on_complete(|c| {
        on_complete(c);
        Delivery::Drop
    })
    .map_err(|e| errors::from_io(&e))?;
    let entry = Arc::new(PortEntry {
        port,
        inside: AtomicUsize::new(0),
        exits: AtomicU64::new(0),
        implicit: true,
    });
    reaper(&entry);
    Ok(IMPLICIT.get_or_init(|| entry).clone())
}

/// Associates socket `fd` with the hidden port ([`implicit_port`]) for its first overlapped
/// operation without CreateIoCompletionPort.
pub(crate) fn associate_implicit(fd: i32) -> Result<Arc<Assoc>, Codes> {
    let port = implicit_port()?;
    match associate(fd, &port, 0) {
        Ok(()) => {}
        // Another thread associated it meanwhile (with this port or a real one): use that.
        Err(e) if assoc(fd).is_none() => return Err(e),
        Err(_) => {}
    }
    assoc(fd).ok_or_else(|| errors::from_errno(libc::EBADF))
}

/// How often a port's [`reaper`] looks at it.
const REAP_TICK: Duration = Duration::from_millis(2);
/// How long a reaper waits in the kernel at most, once it polls.
const REAP_WAIT: Duration = Duration::from_millis(20);

/// Starts the reaper of `entry`: a library thread that, every [`REAP_TICK`], checks whether
/// anybody dequeues from the port (a thread inside GetQueuedCompletionStatus(Ex) now, or one
/// that returned during the last tick) and, if nobody does, waits in the kernel for completions
/// itself (up to [`REAP_WAIT`] at a time), so that the completion hook runs. On Windows an
/// operation completes, writes its OVERLAPPED and signals its event by itself; here the core
/// sees completions only when some thread polls, and a program that does not dequeue (one that
/// spins on `HasOverlappedIoCompleted` at shutdown, or runs on OVERLAPPED events) would never
/// see them. A server whose workers wait in GQCS is never polled by it: a worker arriving while
/// it polls is handed what it reaps. It ends when the port is closed.
fn reaper(entry: &Arc<PortEntry>) {
    let port = Arc::downgrade(entry);
    // Nobody ever dequeues from the hidden port: poll it back to back while it has operations
    // in flight, and sleep while it has none (the next start wakes it).
    let eager = entry.implicit;
    let spawned = std::thread::Builder::new().name("iocp-reaper".into()).spawn(move || {
        let mut seen = u64::MAX;
        loop {
            if !eager {
                std::thread::sleep(REAP_TICK);
            } else if HIDDEN_LIVE.load(Ordering::Acquire) == 0 {
                // Bounded: a lost wake-up would cost a second, never a hang.
                std::thread::park_timeout(HIDDEN_IDLE);
                continue;
            }
            let Some(p) = port.upgrade() else { return };
            if p.port.is_closed() {
                return;
            }
            let exits = p.exits.load(Ordering::Acquire);
            let quiet = std::mem::replace(&mut seen, exits) == exits;
            if quiet && p.inside.load(Ordering::Acquire) == 0 {
                // A panic (in the hook) must not end the reaper; the core queued what it reaped.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    p.port.reap(Some(REAP_WAIT))
                }));
            }
        }
    });
    // Without the thread (no memory for one) the port still works: only completions that
    // nobody dequeues stay unseen until someone does.
    if let (true, Ok(t)) = (eager, &spawned) {
        let _ = HIDDEN_REAPER.set(t.thread().clone());
    }
    drop(spawned);
}

/// Operations started on the hidden port and not yet finished ([`settle`]).
static HIDDEN_LIVE: AtomicUsize = AtomicUsize::new(0);
/// The hidden port's reaper thread, woken when the first of them starts.
static HIDDEN_REAPER: OnceLock<std::thread::Thread> = OnceLock::new();
/// How long the hidden port's reaper sleeps at most while nothing is in flight there.
const HIDDEN_IDLE: Duration = Duration::from_secs(1);

fn hidden_started() {
    if HIDDEN_LIVE.fetch_add(1, Ordering::AcqRel) == 0
        && let Some(t) = HIDDEN_REAPER.get()
    {
        t.unpark();
    }
}

fn hidden_finished() {
    HIDDEN_LIVE.fetch_sub(1, Ordering::AcqRel);
}

fn port_id(h: HANDLE) -> Option<u64> {
    let v = hval(h);
    ((PORT_BASE..PORT_BASE + (1 << 40)).contains(&v) && v.is_multiple_of(4))
        .then(|| ((v - PORT_BASE) >> 2) as u64)
}

/// True when `h` has the shape of a port HANDLE (live or not).
pub(crate) fn is_port_value(h: HANDLE) -> bool {
    port_id(h).is_some()
}

/// The live port behind `h`.
pub(crate) fn port(h: HANDLE) -> Option<Arc<PortEntry>> {
    ports().read().get(&port_id(h)?).cloned()
}

/// Removes and closes the port behind `h`; false if there is none.
pub(crate) fn close_port(h: HANDLE) -> bool {
    let Some(id) = port_id(h) else { return false };
    let Some(entry) = ports().write().remove(&id) else { return false };
    entry.port.close();
    // The core drops what it held: the operations started through this port that were not
    // dequeued never will be. Their OVERLAPPEDs end as cancelled, so GetOverlappedResult and
    // HasOverlappedIoCompleted do not wait forever (the caller may then free them). Sockets
    // closed before the port ended theirs when they were closed.
    let members: Vec<Arc<Assoc>> =
        assocs().read().values().filter(|a| Arc::ptr_eq(&a.port, &entry)).cloned().collect();
    for a in members {
        a.release_pending();
    }
    true
}

/// The fd a HANDLE or SOCKET value names, if it is one (0 is NULL, not stdin).
pub(crate) fn fd_of(v: usize) -> Option<i32> {
    let fd = i32::try_from(v).ok().filter(|&fd| fd > 0)?;
    // SAFETY: F_GETFD on any integer is harmless; it only reports whether the fd is open.
    (unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then_some(fd)
}

/// What an open fd refers to: `(st_dev, st_ino)`. A live socket or file keeps its inode, so a
/// different identity on the same fd number means the number was closed and reused.
pub(crate) type Ident = (u64, u64);

/// The identity of `fd`, or `None` if it is not open.
pub(crate) fn ident(fd: i32) -> Option<Ident> {
    // SAFETY: an all-zero `stat` is a valid value for fstat(2) to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) on any integer writes only into `st`, which we own.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// The association of `fd`. One whose fd number was `close()`d and reused by another file or
/// socket (its identity differs) is stale: it is dropped here (its pending operations complete
/// aborted) and the new file or socket counts as not associated.
pub(crate) fn assoc(fd: i32) -> Option<Arc<Assoc>> {
    let a = assocs().read().get(&fd).cloned()?;
    if ident(fd) == Some(a.ident) {
        return Some(a);
    }
    drop_stale(fd, &a);
    None
}

/// Forgets `a`, the stale association of `fd` (unless another thread already replaced it).
fn drop_stale(fd: i32, a: &Arc<Assoc>) {
    let mut table = assocs().write();
    if table.get(&fd).is_some_and(|cur| Arc::ptr_eq(cur, a)) {
        table.remove(&fd);
    }
    drop(table);
    a.retire();
}

/// Associates `fd` with `port` and `key` (CreateIoCompletionPort on a file or socket).
pub(crate) fn associate(fd: i32, port: &Arc<PortEntry>, key: usize) -> Result<(), Codes> {
    let invalid = errors::from_errno(libc::EINVAL);
    if created_files().lock().get(&fd) == Some(&false) {
        return Err(invalid); // case 11: opened without FILE_FLAG_OVERLAPPED
    }
    let Some(id) = ident(fd) else { return Err(errors::from_errno(libc::EBADF)) };
    let mut table = assocs().write();
    if let Some(old) = table.get(&fd).filter(|old| old.ident == id) {
        // A socket that did overlapped I/O before it had a port (the hidden port) may still be
        // given one, once none of that I/O is pending.
        if !(old.port.implicit && !Arc::ptr_eq(&old.port, port) && old.pending.lock().is_empty()) {
            return Err(invalid); // case 12
        }
        // Its core handle goes first (the core allows one association per socket); with
        // nothing pending, closing it completes nothing.
        if let Some(old) = table.remove(&fd) {
            old.retire();
        }
    }
    // An entry with another identity is stale (the number was close()d and reused): replaced
    // below, its handle closed once the table is unlocked.
    let stale = table.remove(&fd);
    let r = associate_locked(&mut table, fd, id, port, key);
    drop(table);
    if let Some(old) = stale {
        old.retire();
    }
    r
}

fn associate_locked(
    table: &mut HashMap<i32, Arc<Assoc>>,
    fd: i32,
    id: Ident,
    port: &Arc<PortEntry>,
    key: usize,
) -> Result<(), Codes> {
    // SAFETY: F_DUPFD_CLOEXEC on an open fd (checked by the caller) creates a new fd we own.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(errors::last_os());
    }
    // SAFETY: `dup` is a fresh fd owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    let ty = socket2::SockRef::from(&owned).r#type().ok();
    let is_socket = ty.is_some();
    let is_stream = ty == Some(socket2::Type::STREAM);
    let handle =
        port.port.associate(owned, CompletionKey(key as u64)).map_err(|e| errors::from_io(&e))?;
    let modes = early_modes().lock().remove(&fd).unwrap_or(0);
    let a = Assoc {
        handle,
        ident: id,
        port: port.clone(),
        key,
        is_socket,
        is_stream,
        modes: AtomicU8::new(modes),
        inflight: [AtomicUsize::new(0), AtomicUsize::new(0)],
        pending: Mutex::new(HashMap::new()),
        reset_pending: AtomicBool::new(false),
    };
    table.insert(fd, Arc::new(a));
    Ok(())
}

/// Forgets `fd`'s association and closes its core handle: every pending operation completes
/// once, aborted. Returns whether there was one.
pub(crate) fn dissociate(fd: i32) -> bool {
    let Some(a) = assocs().write().remove(&fd) else { return false };
    a.retire();
    true
}

/// A pending AcceptEx's claim on its accept socket: which AcceptEx (the listener and the
/// OVERLAPPED, to cancel it) and the accept socket's identity when it started.
struct AcceptWatch {
    id: u64,
    listener: Weak<Assoc>,
    ov: usize,
    ident: Ident,
}

/// Pending AcceptEx claims by accept-socket fd. The accepted connection is installed on the fd
/// number only under this lock and only while the claim stands; closing the accept socket
/// removes the claim under the same lock first, so no `dup3` can land on a closed (and maybe
/// reused) number.
fn accept_watches() -> &'static Mutex<HashMap<i32, Vec<AcceptWatch>>> {
    static W: OnceLock<Mutex<HashMap<i32, Vec<AcceptWatch>>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Claims `accept_fd` for an AcceptEx on `listener` with `ov`; `None` if the fd is not open.
pub(crate) fn watch_accept(accept_fd: i32, listener: &Arc<Assoc>, ov: usize) -> Option<u64> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let ident = ident(accept_fd)?;
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let w = AcceptWatch { id, listener: Arc::downgrade(listener), ov, ident };
    accept_watches().lock().entry(accept_fd).or_default().push(w);
    Some(id)
}

/// Removes claim `id` on `accept_fd`; returns the identity it recorded if it still stood.
fn take_watch(
    watches: &mut HashMap<i32, Vec<AcceptWatch>>,
    accept_fd: i32,
    id: u64,
) -> Option<Ident> {
    let list = watches.get_mut(&accept_fd)?;
    let i = list.iter().position(|w| w.id == id)?;
    let w = list.swap_remove(i);
    if list.is_empty() {
        watches.remove(&accept_fd);
    }
    Some(w.ident)
}

/// After a started AcceptEx: if its claim was withdrawn meanwhile (closesocket of the accept
/// socket raced the start and found no operation to cancel yet), cancels it now.
pub(crate) fn recheck_accept(listener: &Arc<Assoc>, accept_fd: i32, id: u64, ov: usize) {
    let stands =
        accept_watches().lock().get(&accept_fd).is_some_and(|l| l.iter().any(|w| w.id == id));
    if !stands {
        listener.release_accept(ov);
    }
}

/// Withdraws claim `id` on `accept_fd` (its AcceptEx was refused at start).
pub(crate) fn unwatch_accept(accept_fd: i32, id: u64) {
    take_watch(&mut accept_watches().lock(), accept_fd, id);
}

/// The accept socket `fd` is being closed: every AcceptEx pending with it loses its claim (its
/// connection, if one comes, is never put on the fd number) and is cancelled, so it completes
/// once with `ERROR_OPERATION_ABORTED` (iocp-semantics.md: closing the accept socket is how
/// Windows code aborts an AcceptEx).
fn abort_accepts_into(fd: i32) {
    let Some(list) = accept_watches().lock().remove(&fd) else { return };
    for w in list {
        if let Some(listener) = w.listener.upgrade() {
            listener.release_accept(w.ov);
        }
    }
}

/// closesocket / CloseHandle of a socket or file: aborts the AcceptEx calls that would put a
/// connection on it, forgets its association (pending operations complete aborted), closes
/// the fd.
///
/// A socket with no overlapped operation in flight is first shut down for reading: a Linux
/// `close` does not wake a thread blocked in `accept`/`recv` on the same socket (the blocked
/// call holds its own reference), `shutdown` does (accept fails, recv returns 0), as
/// closesocket does on Windows. With operations in flight it is not: they must complete
/// aborted, not with the end of stream the shutdown would give them first. `SHUT_RD` sends
/// nothing to the peer, so a graceful or abortive (SO_LINGER 0) close is unchanged.
pub(crate) fn close_socket_or_file(fd: i32) -> Result<(), Codes> {
    let busy = assocs().read().get(&fd).is_some_and(|a| !a.pending.lock().is_empty());
    abort_accepts_into(fd);
    dissociate(fd);
    if !busy {
        // SAFETY: shutdown(2) on the caller's fd, still open (closed just below); on a file or
        // an unconnected socket it fails harmlessly (ENOTSOCK, ENOTCONN).
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
    close_fd(fd)
}

/// Starts an operation on `a` for the caller's `ov`: marks it pending, submits, records it for
/// CancelIo/CancelIoEx. On refusal the OVERLAPPED holds the failure status and no packet comes.
pub(crate) fn start(
    a: &Arc<Assoc>,
    ov: *mut OVERLAPPED,
    target: Target,
    submit: impl FnOnce(&Handle<Ctx>, Ctx) -> Result<OpId, SubmitError<Ctx>>,
) -> Result<(), Codes> {
    start_sided(a, ov, target, Side::None, 0, submit)
}

/// [`start`] for a stream receive or send: counts it in flight on its side until dequeued;
/// `extra` is the bytes already sent in line.
pub(crate) fn start_sided(
    a: &Arc<Assoc>,
    ov: *mut OVERLAPPED,
    target: Target,
    side: Side,
    extra: usize,
    submit: impl FnOnce(&Handle<Ctx>, Ctx) -> Result<OpId, SubmitError<Ctx>>,
) -> Result<(), Codes> {
    // SAFETY: the caller checked `ov` is non-NULL; it is the caller's OVERLAPPED, valid until
    // the packet is dequeued (Win32 contract).
    let event = unsafe { mem::ov_event(ov) };
    // SAFETY: as above.
    unsafe { mem::ov_pending(ov) };
    if event != 0 {
        // The I/O functions reset the event when they start (iocp-semantics.md §6).
        crate::win32::op_event(event, false);
    }
    // The packet reports a DWORD count; more than 4 GiB sent in line saturates it.
    let extra = u32::try_from(extra).unwrap_or(u32::MAX);
    let hidden = a.port.implicit;
    let ctx = Ctx { ov: ov as usize, target, assoc: Arc::downgrade(a), side, extra, event, hidden };
    a.count(side, true);
    if hidden {
        hidden_started();
    }
    // Recorded before the submit, under a placeholder id: the operation may complete inside
    // it (the completion hook then runs on this thread and must find it, without this lock).
    let tid = std::thread::current().id();
    a.pending.lock().insert(ov as usize, (STARTING, tid));
    match submit(&a.handle, ctx) {
        Ok(op) => {
            // Unless it already completed (or its socket was closed) meanwhile.
            if let Some(e) = a.pending.lock().get_mut(&(ov as usize))
                && e.0 == STARTING
            {
                e.0 = op;
            }
            Ok(())
        }
        Err(e) => {
            {
                let mut pending = a.pending.lock();
                if pending.get(&(ov as usize)).is_some_and(|e| e.0 == STARTING) {
                    pending.remove(&(ov as usize));
                }
            }
            a.count(side, false);
            if hidden {
                hidden_finished();
            }
            let codes = errors::from_io(e.error());
            // SAFETY: as above; no packet will come, the status is written in line.
            unsafe { mem::ov_done(ov, codes.nt, 0) };
            Err(codes)
        }
    }
}

/// GetOverlappedResult(bWait = TRUE) waits here for a dequeue to finish some OVERLAPPED.
pub(crate) struct Finished {
    pub(crate) lock: Mutex<()>,
    pub(crate) cond: Condvar,
    pub(crate) waiters: AtomicUsize,
}

pub(crate) fn finished() -> &'static Finished {
    static F: OnceLock<Finished> = OnceLock::new();
    F.get_or_init(|| Finished {
        lock: Mutex::new(()),
        cond: Condvar::new(),
        waiters: AtomicUsize::new(0),
    })
}

/// Writes an operation's final status and wakes GetOverlappedResult waiters.
///
/// # Safety
/// `ov` is the non-NULL, valid OVERLAPPED of an operation whose packet has not been dequeued
/// (or is being dequeued now).
unsafe fn complete_ov(ov: *mut OVERLAPPED, nt: u32, bytes: usize) {
    let f = finished();
    let _g = (f.waiters.load(Ordering::Acquire) > 0).then(|| f.lock.lock());
    // SAFETY: valid and not yet released to the caller (this function's contract).
    unsafe { mem::ov_done(ov, nt, bytes) };
    if f.waiters.load(Ordering::Acquire) > 0 {
        f.cond.notify_all();
    }
}

/// The id an operation has in `pending` while its submit runs (core ids start at 1).
const STARTING: OpId = OpId(0);

/// Writes an aborted operation's status (`STATUS_CANCELLED`) and signals its event.
///
/// # Safety
/// As [`complete_ov`]; this is the last access to `ov`.
unsafe fn abort_ov(ov: *mut OVERLAPPED) {
    // SAFETY: valid and not yet released (this function's contract): read before the status
    // write that releases it.
    let event = unsafe { mem::ov_event(ov) };
    // SAFETY: this function's contract.
    unsafe { complete_ov(ov, errors::STATUS_CANCELLED, 0) };
    if event != 0 {
        crate::win32::op_event(event, true);
    }
}

/// The port's completion hook: finishes each operation the moment the core sees it complete
/// (in whichever thread reaps it), as Windows does with no thread dequeuing: received bytes go
/// into the caller's buffers, an AcceptEx's connection onto its accept socket, `Internal` /
/// `InternalHigh` are written (so `HasOverlappedIoCompleted` and `GetOverlappedResult` see
/// it), the OVERLAPPED's event is signalled, and with the event's low bit set no packet is
/// queued (case 17). The dequeue then only reports the packet ([`finish`]).
fn on_complete(c: &mut Completion<Ctx>) -> Delivery {
    if matches!(c.payload(), Payload::Posted) || matches!(c.context().target, Target::Done(_)) {
        return Delivery::Queue;
    }
    let key = c.key().0 as usize;
    let bytes = c.bytes();
    let op = c.op();
    let errno = if c.is_eof() { errors::EOF } else { c.raw_os_error().unwrap_or(0) };
    let payload = std::mem::replace(c.payload_mut(), Payload::Posted);
    let ctx = c.context_mut();
    let event = ctx.event;
    let taken = Ctx {
        ov: ctx.ov,
        target: std::mem::replace(&mut ctx.target, Target::None),
        assoc: ctx.assoc.clone(),
        side: ctx.side,
        extra: ctx.extra,
        event,
        hidden: ctx.hidden,
    };
    let d = settle(key, bytes, op, errno, taken, payload);
    let suppressed = d.suppressed;
    c.context_mut().target = Target::Done(Box::new(d));
    if suppressed { Delivery::Drop } else { Delivery::Queue }
}

/// A dequeued packet, as GetQueuedCompletionStatus reports it.
pub(crate) struct Done {
    pub(crate) key: usize,
    pub(crate) ov: usize,
    pub(crate) bytes: usize,
    pub(crate) nt: u32,
    /// 0 for success, else the Win32 error GQCS returns FALSE with.
    pub(crate) error: DWORD,
    /// The OVERLAPPED's event had its low bit set: no packet is reported (only reached when
    /// the hook could not finish the operation first).
    pub(crate) suppressed: bool,
}

/// Turns a core completion into the packet: copies received bytes into the caller's buffers,
/// finishes an AcceptEx (the accepted socket onto the caller's accept socket, the addresses
/// into its buffer), writes `Internal` / `InternalHigh`, forgets the pending operation.
pub(crate) fn finish(c: Completion<Ctx>) -> Done {
    let key = c.key().0 as usize;
    let bytes = c.bytes();
    let op = c.op();
    let errno = if c.is_eof() { errors::EOF } else { c.raw_os_error().unwrap_or(0) };
    let (ctx, payload) = c.into_parts();
    if let Target::Done(d) = ctx.target {
        return *d; // finished by the hook when it completed
    }
    if matches!(payload, Payload::Posted) {
        let bytes = bytes & 0xFFFF_FFFF;
        return Done { key, ov: ctx.ov, bytes, nt: 0, error: 0, suppressed: false };
    }
    settle(key, bytes, op, errno, ctx, payload)
}

/// Finishes operation `op` (see [`finish`]), once: by the hook when it completes, or at its
/// dequeue if the hook could not.
fn settle(key: usize, mut bytes: usize, op: OpId, errno: i32, ctx: Ctx, payload: Payload) -> Done {
    let event = ctx.event;
    let suppressed = event & 1 != 0;
    if ctx.hidden {
        hidden_finished();
    }
    // Whether this dequeue still owns the operation: it is in its association's `pending`
    // (removed here, under the lock). If not, the socket or the port went away and already
    // ended the OVERLAPPED (`release_pending`): the caller may have freed it and its buffers,
    // so nothing of the caller's is touched; the packet reports the abort.
    let owner = ctx.assoc.upgrade();
    let owned = owner.as_ref().is_some_and(|a| {
        let mut pending = a.pending.lock();
        let mine = pending.get(&ctx.ov).is_some_and(|&(id, _)| id == op || id == STARTING);
        if mine {
            pending.remove(&ctx.ov);
        }
        mine
    });
    if let Some(a) = &owner {
        a.count(ctx.side, false);
    }
    if !owned {
        if let Target::Accept { accept_fd, watch, .. } = ctx.target {
            take_watch(&mut accept_watches().lock(), accept_fd, watch);
        }
        drop(payload); // an accepted connection in it is closed, never installed
        let codes = errors::from_errno(libc::ECANCELED);
        let (nt, error) = (codes.nt, codes.win32);
        return Done { key, ov: ctx.ov, bytes: 0, nt, error, suppressed };
    }
    let mut codes = errors::from_errno(errno);
    match (ctx.target, payload) {
        // A refused connect is ECONNREFUSED; ECONNRESET (or EPIPE from the initial send) means
        // the connection was established and the peer reset it at once. On Windows that
        // ConnectEx succeeds and the reset shows on the next I/O: so here too (issue 14 §2.4).
        (_, Payload::Connect(_)) if errno == libc::ECONNRESET || errno == libc::EPIPE => {
            codes = errors::from_errno(0);
            if let Some(a) = &owner {
                a.reset_pending.store(true, Ordering::Release);
            }
        }
        (Target::Scatter(bufs), Payload::Recv(b) | Payload::Read(b)) => {
            // SAFETY: the caller's buffers stay valid until the operation completes (Win32
            // contract for WSARecv/ReadFile buffers): it completes here, its status unwritten.
            bytes = unsafe { mem::scatter(&bufs, &b) };
        }
        (Target::RecvFrom { bufs, from, fromlen }, Payload::RecvFrom(b, addr)) => {
            // SAFETY: the WSARecvFrom buffers stay valid until completion, which is here (Win32
            // contract).
            bytes = unsafe { mem::scatter(&bufs, &b) };
            if let Some(addr) = addr {
                // SAFETY: lpFrom / lpFromlen stay valid until completion (Win32 contract).
                unsafe { write_addr(from, fromlen, &addr) };
            }
        }
        (Target::Accept { out, data_len, local_len, remote_len, accept_fd, watch }, payload) => {
            let mut watches = accept_watches().lock();
            let claim = take_watch(&mut watches, accept_fd, watch);
            match payload {
                Payload::Accept(mut acc) if errno == 0 => match acc.take_socket() {
                    // The accept socket is still open and still the caller's (not close()d and
                    // its number reused): the connection goes onto it, under the lock that
                    // closesocket takes before closing.
                    Some(sock) if claim.is_some() && ident(accept_fd) == claim => {
                        let local = sock.local_addr().ok();
                        let peer = acc.peer_addr().cloned().or_else(|| sock.peer_addr().ok());
                        let data = acc.take_data();
                        // SAFETY: the AcceptEx output buffer stays valid until completion
                        // (Win32 contract); `data` is at most `data_len` (the capacity asked).
                        unsafe { mem::copy_out(out, &data[..data.len().min(data_len)]) };
                        // SAFETY: the same buffer; its local slot follows the data area and
                        // holds `local_len` bytes (AcceptEx's contract on the three lengths).
                        unsafe { write_slot(out + data_len, local_len, local.as_ref()) };
                        // SAFETY: the same buffer; the remote slot follows the local one.
                        unsafe {
                            write_slot(out + data_len + local_len, remote_len, peer.as_ref())
                        };
                        if let Err(e) = install_accepted(sock.into(), accept_fd) {
                            codes = e;
                        }
                    }
                    // The accept socket was closed meanwhile: the connection is dropped (reset),
                    // the fd number never touched; the AcceptEx reports the abort.
                    Some(_) => codes = errors::from_errno(libc::ECANCELED),
                    None => codes = errors::from_errno(libc::ECONNABORTED),
                },
                _ => {}
            }
            drop(watches);
        }
        _ => {}
    }
    bytes += ctx.extra as usize;
    // SAFETY: the caller's OVERLAPPED stays valid until its packet is dequeued (Win32
    // contract); this operation is still the caller's (`owned`), its status still pending.
    unsafe { complete_ov(ctx.ov as *mut OVERLAPPED, codes.nt, bytes) };
    if event != 0 {
        crate::win32::op_event(event, true);
    }
    let error = if codes.nt == 0 { 0 } else { codes.win32 };
    Done { key, ov: ctx.ov, bytes: bytes & 0xFFFF_FFFF, nt: codes.nt, error, suppressed }
}

/// Puts the accepted connection on the caller's accept-socket fd number (`dup3`), and moves an
/// association the accept socket already had onto the new connection (same port and key).
fn install_accepted(sock: OwnedFd, accept_fd: i32) -> Result<(), Codes> {
    let old = assocs().write().remove(&accept_fd);
    // SAFETY: dup3 onto the caller's accept socket: the caller holds the accept-watch lock
    // with the AcceptEx's claim standing and the fd's identity just checked, and closesocket
    // withdraws the claim under that lock before it closes, so the number is still the
    // caller's accept socket; dup3 atomically replaces it by the new connection.
    let r = unsafe { libc::dup3(sock.as_raw_fd(), accept_fd, libc::O_CLOEXEC) };
    drop(sock);
    if r < 0 {
        return Err(errors::last_os());
    }
    if let Some(old) = old {
        old.retire();
        let (port, key) = (old.port.clone(), old.key);
        let modes = old.modes.load(Ordering::Acquire);
        drop(old);
        associate(accept_fd, &port, key)?;
        add_modes(accept_fd, modes);
    }
    Ok(())
}

/// An address slot of the AcceptEx buffer: `[u16 length][14 bytes][sockaddr]` (Windows also
/// wants 16 spare bytes per slot). GetAcceptExSockaddrs reads it back.
///
/// # Safety
/// `slot` is valid for writes of `len` bytes.
unsafe fn write_slot(slot: usize, len: usize, addr: Option<&SockAddr>) {
    if slot == 0 || len < 16 {
        return;
    }
    let bytes = addr.map(sockaddr_bytes).unwrap_or_default();
    let n = bytes.len().min(len - 16);
    let mut head = [0u8; 16];
    head[..2].copy_from_slice(&(n as u16).to_ne_bytes());
    // SAFETY: `len >= 16` bytes are writable at `slot` (caller's contract).
    unsafe { mem::copy_out(slot, &head) };
    // SAFETY: 16 + n <= len bytes are writable at `slot`.
    unsafe { mem::copy_out(slot + 16, &bytes[..n]) };
}

/// The bytes of a socket address, as `struct sockaddr_*`.
pub(crate) fn sockaddr_bytes(a: &SockAddr) -> Vec<u8> {
    // SAFETY: a SockAddr holds `len()` initialised bytes of sockaddr storage at `as_ptr()`;
    // the slice lives only for the copy.
    let s = unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), a.len() as usize) };
    s.to_vec()
}

/// Writes an address to `(*from, *fromlen)` as recvfrom would (truncating to `*fromlen`).
///
/// # Safety
/// `fromlen` is NULL or a valid `int`; `from` is NULL or valid for `*fromlen` bytes.
pub(crate) unsafe fn write_addr(from: usize, fromlen: usize, addr: &SockAddr) {
    let lenp = fromlen as *mut i32;
    // SAFETY: `lenp` is NULL or valid for a read (the exported call's contract); `get` skips NULL.
    let Some(cap) = (unsafe { mem::get(lenp) }) else { return };
    let bytes = sockaddr_bytes(addr);
    let n = bytes.len().min(usize::try_from(cap).unwrap_or(0));
    // SAFETY: `from` is writable for `*fromlen >= n` bytes (caller's contract).
    unsafe { mem::copy_out(from, &bytes[..n]) };
    // SAFETY: `lenp` is NULL or valid for a write (the exported call's out-parameter contract);
    // `put` skips NULL.
    unsafe { mem::put(lenp, bytes.len() as i32) };
}

/// A fresh `OwnedFd` duplicate of `fd` (for TransmitFile's file).
pub(crate) fn dup_owned(fd: i32) -> Result<OwnedFd, Codes> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new fd we own (or fails).
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if d < 0 {
        return Err(errors::last_os());
    }
    // SAFETY: `d` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// Closes a caller fd (CloseHandle / closesocket on something not associated).
pub(crate) fn close_fd(fd: i32) -> Result<(), Codes> {
    created_files().lock().remove(&fd);
    early_modes().lock().remove(&fd);
    // SAFETY: the caller hands us the fd to close (CloseHandle/closesocket contract).
    if unsafe { libc::close(fd) } < 0 {
        return Err(errors::last_os());
    }
    Ok(())
}
