//! The connection framework: a listener with pre-posted accepts, per-connection state that
//! travels with each operation, timeouts, back-pressure, limits and a graceful stop.

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use iocp::{
    BackendChoice, BackendReport, Completion, CompletionKey, CompletionPort, Handle, Payload,
    SubmitError, TransmitRange,
};
use parking_lot::Mutex;
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::metrics::{Live, LiveStats, MetricsSnapshot};
use crate::pool::{Pool, PoolConfig, PoolReport, cpus};

mod push;
use push::{Finish, PushConn};
pub use push::{Outbox, PushConfig, PushError, SlowPolicy};
mod datagram;
mod pause;

pub use pause::Resumer;

const LISTENER_KEY: CompletionKey = CompletionKey(0);
const CONN_KEY: CompletionKey = CompletionKey(1);
/// A posted packet asking a worker to post the listener's accepts.
const START_KEY: CompletionKey = CompletionKey(2);
/// A posted packet handing a push-mode connection's drain token to a worker.
const PUSH_KEY: CompletionKey = CompletionKey(3);
/// A posted packet asking a worker to close a push-mode connection's socket.
const PUSH_CLOSE_KEY: CompletionKey = CompletionKey(4);
/// The smallest buffer a readable idle connection takes (see `Shared::read_now`).
const MIN_READ: usize = 256;
/// Connection-table entries kept when the table empties; a larger one is shrunk then.
const SLAB_KEEP: usize = 1024;

/// How a [`Server`] runs. Every limit has a default a public-facing server can live with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port; see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// Whether to bind and listen on [`ServerConfig::addr`] at all. `false`: no TCP listener
    /// (no socket, no accepts), for a server whose only inputs are datagram sockets
    /// ([`Server::add_datagram`]); [`Server::listen_addr`] is then `None`.
    pub listen: bool,
    /// Worker threads; 0 means one per CPU. The port's concurrency limit is the same number.
    pub threads: usize,
    /// Which backend the port uses.
    pub backend: BackendChoice,
    /// io_uring rings of the port (`PortBuilder::rings`): 1 shares one ring between the
    /// workers; 0 gives each worker its own (docs/DESIGN.md §3.3).
    pub rings: usize,
    /// Accept operations kept posted on the listener (the AcceptEx pattern).
    pub accepts: usize,
    /// The kernel's listen backlog.
    pub listen_backlog: i32,
    /// Set `SO_REUSEPORT` on the listener, so several processes (or servers) can listen on the
    /// same address and the kernel spreads new connections across them.
    pub reuse_port: bool,
    /// Connections served at once; the next ones are accepted and closed at once, and counted
    /// as refused.
    pub max_connections: usize,
    /// A connection with nothing pending that sends nothing for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// How long a connection waiting for its next request keeps its buffers. Until then it
    /// waits on a buffered receive (one operation per message, as a busy connection wants);
    /// after it, it parks on a zero-byte receive and holds no buffer, and the first bytes that
    /// arrive are read into a buffer sized to them. `Some(ZERO)` parks at once (least memory,
    /// one more system call per message); `None` never parks. Whatever the setting, a new
    /// connection takes no buffer until its first bytes come (it waits on the zero-byte
    /// receive), and unless it is `None`, a connection's first wait for a next request parks
    /// at once (most connections quiet after their first exchange stay quiet).
    pub park_after: Option<Duration>,
    /// Once a request has started arriving (unconsumed input is buffered), the rest must come
    /// within this time (slowloris); the service chooses what to answer.
    pub request_timeout: Option<Duration>,
    /// A send that cannot complete within this time (the peer does not read) closes the
    /// connection: the server never buffers more than one response per connection.
    pub write_timeout: Option<Duration>,
    /// Bytes of input buffer added when a receive needs room.
    pub read_buffer: usize,
    /// Input a connection may buffer without the service consuming it; beyond it the
    /// connection is closed.
    pub max_input: usize,
    /// After the service closes a connection, how long the server keeps reading (and
    /// discarding) so that the peer sees the response rather than a reset.
    pub linger: Duration,
    /// How long [`Server::stop`] lets connections finish before aborting what remains.
    pub grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen: true,
            threads: 0,
            backend: BackendChoice::Auto,
            rings: 1,
            accepts: 16,
            listen_backlog: 1024,
            reuse_port: false,
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(60)),
            park_after: Some(Duration::from_secs(1)),
            request_timeout: Some(Duration::from_secs(10)),
            write_timeout: Some(Duration::from_secs(30)),
            read_buffer: 16 * 1024,
            max_input: 64 * 1024,
            linger: Duration::from_secs(2),
            grace: Duration::from_secs(5),
        }
    }
}

/// A connection's buffers, lent to the service at each step.
#[derive(Debug, Default)]
pub struct Io {
    /// Bytes received and not yet consumed. The service removes what it has handled (see
    /// [`Io::consume`]); what stays is a partial request (the request timeout runs on it).
    pub input: Vec<u8>,
    /// Bytes to send with [`Next::Send`], or the head sent before the file with
    /// [`Next::Transmit`]. Empty when the service is called (the capacity of the last send is
    /// kept while the connection is busy, and released when it goes idle).
    pub output: Vec<u8>,
    /// Close the connection (gracefully) once the next send completes.
    pub close_after_send: bool,
}

impl Io {
    /// Removes the first `n` bytes of input.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.input.len());
        self.input.drain(..n);
    }
}

/// What a connection does next, as the service decides.
#[derive(Debug)]
pub enum Next {
    /// Receive more input (appended to [`Io::input`]).
    Read,
    /// Send all of [`Io::output`]; then [`Service::on_sent`] is called.
    Send,
    /// Send [`Io::output`], then `len` bytes of `file` from `offset`, zero-copy
    /// (TransmitFile); then [`Service::on_sent`] is called.
    Transmit {
        /// The file.
        file: Arc<File>,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Close the connection gracefully: stop sending, read and discard for up to
    /// [`ServerConfig::linger`], close.
    Close,
    /// Stop reading for now (back-pressure): no receive is posted, the connection holds its
    /// buffers and waits, with no deadline, until a [`Resumer`] resumes paused connections;
    /// then [`Service::on_resume`] is called. A graceful stop resumes them too.
    Pause,
}

/// Which deadline expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The connection was idle (no partial input) for [`ServerConfig::idle_timeout`].
    Idle,
    /// A partial request did not complete within [`ServerConfig::request_timeout`].
    Request,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side.
    Eof,
    /// The service asked (after a lingering close).
    Done,
    /// A deadline expired.
    Timeout,
    /// An I/O error (reset, broken pipe...).
    Error,
    /// The peer sent more than [`ServerConfig::max_input`] unconsumed bytes.
    Overflow,
    /// The server stopped.
    Stopped,
    /// A push-mode connection did not read what was pushed to it fast enough (its outgoing
    /// queue filled up under [`SlowPolicy::Drop`]).
    Slow,
}

/// The protocol a [`Server`] speaks: callbacks that look at a connection's buffers and say what
/// to do next. Every callback runs on a pool worker, one at a time per connection, and must not
/// block (wrap unavoidable blocking in [`iocp::blocking`]).
pub trait Service: Send + Sync + 'static {
    /// Per-connection state.
    type Conn: Send + 'static;

    /// A connection was accepted.
    fn open(&self, peer: Option<SocketAddr>) -> Self::Conn;

    /// New bytes were appended to `io.input`.
    fn on_read(&self, conn: &mut Self::Conn, io: &mut Io) -> Next;

    /// The last [`Next::Send`] or [`Next::Transmit`] completed.
    fn on_sent(&self, conn: &mut Self::Conn, io: &mut Io) -> Next {
        let _ = (conn, io);
        Next::Read
    }

    /// A receive timed out. The default closes the connection.
    fn on_timeout(&self, conn: &mut Self::Conn, io: &mut Io, kind: TimeoutKind) -> Next {
        let _ = (conn, io, kind);
        Next::Close
    }

    /// The connection ended (called once, last).
    fn on_close(&self, conn: Self::Conn, reason: CloseReason) {
        let _ = (conn, reason);
    }

    /// Whether the connection stays open after what [`Service::on_timeout`] answered has been
    /// sent (asked right after `on_timeout`). The default, false, makes a timeout's answer the
    /// last thing sent. A streaming service paced by the idle timeout (server-sent events: one
    /// event per expiry) returns true; its `on_sent` then says [`Next::Read`] to arm the next
    /// deadline.
    fn keeps_open_after_timeout(&self, conn: &Self::Conn) -> bool {
        let _ = conn;
        false
    }

    /// Whether connections are full duplex (the push path, asked once at start). `None`, the
    /// default, is request/response: one operation in flight per connection. With a
    /// [`PushConfig`], each connection gets an [`Outbox`] ([`Service::open_push`]) that any
    /// thread may push shared buffers to while the connection keeps its receive posted; its
    /// sends go through that outbox, one at a time, in order: [`Next::Send`] queues
    /// [`Io::output`] there and reads on at once ([`Service::on_sent`] is not called),
    /// [`Next::Close`] and end-of-stream close once the queue has drained, and
    /// [`Next::Transmit`] is not supported (it closes the connection).
    fn push(&self) -> Option<PushConfig> {
        None
    }

    /// A connection was accepted by a push-mode server ([`Service::push`]); `outbox` sends to
    /// it. The default ignores the outbox and calls [`Service::open`].
    fn open_push(&self, peer: Option<SocketAddr>, outbox: Outbox) -> Self::Conn {
        drop(outbox);
        self.open(peer)
    }

    /// The server began stopping (called once, by [`Server::stop`], before the connections'
    /// receiving sides are shut). A push-mode service queues its goodbyes here (close frames,
    /// with [`Outbox::push_last`]); what is queued is delivered within the grace period.
    fn stopping(&self) {}
    /// A connection paused with [`Next::Pause`] was resumed ([`Resumer::resume`]). The
    /// default reads on.
    fn on_resume(&self, conn: &mut Self::Conn, io: &mut Io) -> Next {
        let _ = (conn, io);
        Next::Read
    }

    /// A datagram arrived on a socket added with [`Server::add_datagram`]. `truncated`: it
    /// was longer than the receive buffer and `data` is its head. The default ignores it.
    fn on_datagram(&self, data: &[u8], peer: Option<SocketAddr>, truncated: bool) {
        let _ = (data, peer, truncated);
    }

    /// The connection is ending with `input` received and not consumed (a last line without
    /// its terminator, a partial request); called just before [`Service::on_close`]. The
    /// default ignores it.
    fn on_unread(&self, conn: &mut Self::Conn, input: &[u8], reason: CloseReason) {
        let _ = (conn, input, reason);
    }
}

/// Counters of a running or stopped server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted and closed at once because `max_connections` were open.
    pub refused: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed.
    pub closed: u64,
    /// Accept operations that failed (e.g. `EMFILE`).
    pub accept_errors: u64,
    /// Idle connections closed (or answered) by the idle timeout.
    pub idle_timeouts: u64,
    /// Partial requests that hit the request timeout.
    pub request_timeouts: u64,
    /// Sends that hit the write timeout.
    pub write_timeouts: u64,
    /// Connections ended by an I/O error.
    pub io_errors: u64,
    /// Connections closed for buffering too much input.
    pub overflows: u64,
    /// Service callbacks that panicked (each closed its connection; the server went on).
    pub panics: u64,
    /// Bytes received (counted when a connection closes).
    pub bytes_in: u64,
    /// Bytes sent (counted when a connection closes).
    pub bytes_out: u64,
    /// Times an idle connection parked on a zero-byte receive, releasing its buffers
    /// ([`ServerConfig::park_after`]).
    pub parks: u64,
    /// Push-mode connections closed because their outgoing queue was full
    /// ([`SlowPolicy::Drop`]).
    pub slow_drops: u64,
    /// Queued buffers discarded to make room for newer ones ([`SlowPolicy::KeepNewest`]).
    pub push_skipped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    closed: AtomicU64,
    accept_errors: AtomicU64,
    idle_timeouts: AtomicU64,
    request_timeouts: AtomicU64,
    write_timeouts: AtomicU64,
    io_errors: AtomicU64,
    overflows: AtomicU64,
    panics: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    parks: AtomicU64,
    slow_drops: AtomicU64,
    push_skipped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            accepted: l(&self.accepted),
            refused: l(&self.refused),
            active: l(&self.active),
            closed: l(&self.closed),
            accept_errors: l(&self.accept_errors),
            idle_timeouts: l(&self.idle_timeouts),
            request_timeouts: l(&self.request_timeouts),
            write_timeouts: l(&self.write_timeouts),
            io_errors: l(&self.io_errors),
            overflows: l(&self.overflows),
            panics: l(&self.panics),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            parks: l(&self.parks),
            slow_drops: l(&self.slow_drops),
            push_skipped: l(&self.push_skipped),
        }
    }
}

/// What [`Server::stop`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerReport {
    /// The counters at the end.
    pub stats: ServerStats,
    /// The pool's report (handled completions, handler panics, whether it drained in time).
    pub pool: PoolReport,
}

/// Which operation a connection has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Parked on a zero-byte receive (no buffer): the connection has no partial input.
    Ready,
    Read,
    Send,
    Linger,
}

/// A connection: it travels inside the context of its one pending operation (the extended
/// OVERLAPPED), so a completion hands the whole state back to whichever worker dequeues it.
struct Conn<S: Service> {
    handle: Handle<Ctx<S>>,
    /// Its entry in the server's registry (`Shared::conns`).
    slot: u32,
    /// The resume epoch read just before the last service callback (see `pause.rs`), cut to
    /// 32 bits: it is only compared for a change across one callback.
    epoch: u32,
    /// A mark of the connection's clock ([`Shared::mark`], 0 for none): with
    /// [`Pending::Linger`], when the linger began; otherwise when the unconsumed input started
    /// (the request timeout's start).
    since: u32,
    pending: Pending,
    /// The pending buffered receive's deadline is `park_after`, not the idle timeout: when it
    /// expires the connection parks instead of closing.
    parking: bool,
    /// The last read filled the input buffer: the next one gets a `read_buffer`-sized one.
    filled: bool,
    /// The connection has waited for a next request once already (see `drive_request`).
    waited: bool,
    state: S::Conn,
    io: LazyIo,
    bytes_in: u64,
    bytes_out: u64,
    /// The outgoing side of a push-mode connection ([`Service::push`]).
    push: Option<Arc<PushConn<S>>>,
}

impl<S: Service> Conn<S> {
    /// Starts or stops the request timeout's clock after a service callback: it runs while
    /// unconsumed input waits.
    fn note_partial(&mut self, now: u32) {
        self.since = if self.io.input.is_empty() {
            0
        } else if self.since == 0 {
            now
        } else {
            self.since
        };
    }
}

/// A connection's [`Io`], boxed only while it holds something: a parked connection keeps 8
/// bytes here, not two empty `Vec`s and a flag (56 bytes; DESIGN.md §5.2). Reading an empty
/// one allocates nothing; the first write boxes it.
#[derive(Default)]
struct LazyIo(Option<Box<Io>>);

/// What an empty [`LazyIo`] reads as.
static NO_IO: Io = Io { input: Vec::new(), output: Vec::new(), close_after_send: false };

impl LazyIo {
    /// Frees the buffers and the box (the connection is parking).
    fn release(&mut self) {
        self.0 = None;
    }
}

impl std::ops::Deref for LazyIo {
    type Target = Io;
    fn deref(&self) -> &Io {
        self.0.as_deref().unwrap_or(&NO_IO)
    }
}

impl std::ops::DerefMut for LazyIo {
    fn deref_mut(&mut self) -> &mut Io {
        self.0.get_or_insert_with(Box::default)
    }
}

/// The context of every operation on the server's port.
enum Ctx<S: Service> {
    /// An accept, with [`ServerStats::closed`] from just before it was posted.
    Accept(u64),
    Conn(Box<Conn<S>>),
    /// A push-mode connection's send, or a packet posted for it.
    Push(Arc<PushConn<S>>),
    /// A receive (or the start of the receives) on the datagram socket at this index.
    Datagram(usize),
}

/// An open connection in the server's registry: its handle (for the stop's `shutdown`) and,
/// in push mode, its outgoing side (for the stop to finish a connection parked for its drain,
/// which only that side holds).
struct Registered<S: Service> {
    handle: Handle<Ctx<S>>,
    push: Option<Weak<PushConn<S>>>,
}

struct Shared<S: Service> {
    service: S,
    cfg: ServerConfig,
    port: Arc<CompletionPort<Ctx<S>>>,
    /// None: no listener ([`ServerConfig::listen`] false).
    listener: Option<Handle<Ctx<S>>>,
    conns: Mutex<Slab<Registered<S>>>,
    stopping: AtomicBool,
    accepts_posted: AtomicUsize,
    /// Accept completions being handled: counted in before their accept is counted out of
    /// `accepts_posted`, out after the connection is counted [`ServerStats::active`] (or
    /// dropped). See [`Shared::connections_done`].
    accepting: AtomicUsize,
    exhausted: Mutex<Exhausted>,
    counters: Counters,
    reclaim: crate::heap::Reclaimer,
    /// Connections paused by [`Next::Pause`] and the resume epoch.
    paused: pause::Paused<S>,
    /// Datagram sockets added with [`Server::add_datagram`].
    datagrams: datagram::Datagrams<S>,
    /// Live counters for metrics: bytes and messages as they complete, service time, closes
    /// by reason.
    live: Live,
    /// The push path's bounds, when the service is full duplex ([`Service::push`]).
    push: Option<PushConfig>,
    /// This, for the push path's connections to reach the server.
    me: Weak<Shared<S>>,
    /// The origin of the connections' clock marks ([`Shared::mark`]).
    clock0: Instant,
}

/// A TCP server on a completion port: the listener, a [`Pool`] of workers, and a [`Service`]
/// that gives the protocol.
pub struct Server<S: Service> {
    shared: Arc<Shared<S>>,
    pool: Option<Pool<Ctx<S>>>,
    local_addr: Option<SocketAddr>,
}

impl<S: Service> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("backend", &self.shared.port.backend().kind())
            .finish_non_exhaustive()
    }
}

impl<S: Service> Server<S> {
    /// Binds, listens, starts the workers and posts the accepts.
    ///
    /// # Errors
    /// The port cannot be built (e.g. io_uring forced but unavailable), the address cannot be
    /// bound, or a thread cannot be spawned.
    pub fn start(service: S, cfg: ServerConfig) -> io::Result<Self> {
        let threads = if cfg.threads == 0 { cpus() } else { cfg.threads };
        if cfg.read_buffer == 0 || cfg.max_input < cfg.read_buffer {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read_buffer must be at least 1 and at most max_input",
            ));
        }
        let port = Arc::new(
            CompletionPort::<Ctx<S>>::builder()
                .backend(cfg.backend)
                .concurrency(threads)
                .rings(cfg.rings)
                .build()?,
        );
        let (listener, local_addr) = if cfg.listen {
            let sock =
                Socket::new(Domain::for_address(cfg.addr), Type::STREAM, Some(Protocol::TCP))?;
            sock.set_reuse_address(true)?;
            if cfg.reuse_port {
                sock.set_reuse_port(true)?;
            }
            sock.bind(&cfg.addr.into())?;
            sock.listen(cfg.listen_backlog)?;
            let local_addr = sock
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no inet address"))?;
            (Some(port.associate(OwnedFd::from(sock), LISTENER_KEY)?), Some(local_addr))
        } else {
            (None, None)
        };
        let reclaim = crate::heap::Reclaimer::start()?;
        let push = service.push();
        let shared = Arc::new_cyclic(|me| Shared {
            service,
            cfg: ServerConfig { threads, ..cfg },
            port: port.clone(),
            listener,
            conns: Mutex::new(Slab::new()),
            stopping: AtomicBool::new(false),
            accepts_posted: AtomicUsize::new(0),
            accepting: AtomicUsize::new(0),
            exhausted: Mutex::new(Exhausted::default()),
            counters: Counters::default(),
            reclaim,
            paused: pause::Paused::default(),
            datagrams: datagram::Datagrams::default(),
            live: Live::default(),
            push,
            me: me.clone(),
            clock0: Instant::now(),
        });
        let pool_cfg = PoolConfig { threads, ..PoolConfig::default() };
        let handler_shared = shared.clone();
        let pool = Pool::start(port, &pool_cfg, move |c| handler_shared.on_completion(c))?;
        // The accepts are started by a worker, not by this thread: on io_uring the thread that
        // submits an operation runs its completion work (task_work) and is interrupted for it,
        // so the caller's own blocking calls could fail with EINTR. Every server operation is
        // started on a pool thread.
        if shared.listener.is_some() && shared.port.post(0, START_KEY, Ctx::Accept(0)).is_err() {
            return Err(io::Error::other("the server's port closed while starting"));
        }
        tracing::info!(
            addr = ?local_addr,
            backend = %shared.port.backend().kind(),
            threads,
            "server started"
        );
        Ok(Server { shared, pool: Some(pool), local_addr })
    }

    /// The address the listener is bound to. Without a listener ([`ServerConfig::listen`]
    /// false) this is the configured address, bound to nothing; see [`Server::listen_addr`].
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr.unwrap_or(self.shared.cfg.addr)
    }

    /// The address the listener is bound to, or `None` when the server has no listener.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The backend the port runs on, and why.
    pub fn backend(&self) -> &BackendReport {
        self.shared.port.backend()
    }

    /// The counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// A cheap, cloneable handle that reads this server's counters, its pool's and its port's
    /// ([`MetricsSnapshot`]) whenever asked, for a metrics endpoint
    /// ([`crate::metrics::start`]). It keeps the port's state alive, not the server running.
    pub fn live_stats(&self) -> LiveStats {
        let shared = self.shared.clone();
        let workers = self.pool.as_ref().map(|p| p.worker_counters());
        let started = Instant::now();
        LiveStats::new(move || {
            let s = &shared;
            let mut snap = MetricsSnapshot::new(
                s.counters.snapshot(),
                s.port.stats(),
                s.port.backend().kind().to_string(),
                s.port.concurrency(),
            );
            s.live.fill(&mut snap);
            snap.in_flight_by_kind = s.port.in_flight_by_kind();
            if let Some(w) = &workers {
                snap.worker_packets = w.handled_per_worker();
            }
            snap.uptime = started.elapsed();
            snap
        })
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.shared.service
    }

    /// Stops gracefully: no new connections; each open connection's receiving side is shut
    /// (`shutdown(SHUT_RD)`: whatever the peer had sent is still read and handled, then the
    /// connection sees end-of-stream and closes); after [`ServerConfig::grace`] whatever is
    /// still pending is aborted. Joins every worker.
    pub fn stop(mut self) -> ServerReport {
        let pool = self.pool.take();
        self.shared.begin_stop();
        let grace = self.shared.wait_finished(self.shared.cfg.grace);
        let pool = match pool {
            Some(p) => p.stop(grace),
            None => PoolReport::default(),
        };
        self.shared.close_parked();
        // Connections still registered were aborted by the port's close (their state was
        // dropped with the aborted operations' contexts).
        let aborted = {
            let mut conns = self.shared.conns.lock();
            let n = conns.len() as u64;
            conns.clear();
            n
        };
        let c = &self.shared.counters;
        c.active.fetch_sub(aborted.min(c.active.load(Ordering::Relaxed)), Ordering::Relaxed);
        c.closed.fetch_add(aborted, Ordering::Relaxed);
        self.shared.live.closed_n(CloseReason::Stopped, aborted);
        self.shared.reclaim.stop();
        let stats = c.snapshot();
        tracing::info!(?stats, handled = pool.handled, panics = pool.panics, "server stopped");
        ServerReport { stats, pool }
    }
}

impl<S: Service> Drop for Server<S> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            self.shared.begin_stop();
            let _ = pool.stop(Duration::ZERO);
            self.shared.close_parked();
            self.shared.conns.lock().clear();
            self.shared.reclaim.stop();
        }
    }
}

/// Counts itself out of a counter when dropped (also on unwind).
struct CountedOut<'a>(&'a AtomicUsize);

impl Drop for CountedOut<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn timed_out(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ETIMEDOUT)
}

fn cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

fn resource_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// After an accept fails for want of descriptors or memory, the server keeps a single accept
/// posted (a probe, re-posted as connections close and free descriptors) until this long after
/// the last such failure; then it posts its full [`ServerConfig::accepts`] again.
const EXHAUSTED_BACKOFF: Duration = Duration::from_secs(1);

/// At most one "out of descriptors" warning per this period (the rest are counted into it).
const EXHAUSTED_LOG_EVERY: Duration = Duration::from_secs(1);

/// The accept path's memory of running out of descriptors or memory.
#[derive(Debug, Default)]
struct Exhausted {
    /// The last accept that failed with EMFILE, ENFILE, ENOBUFS or ENOMEM.
    last: Option<Instant>,
    /// The last warning logged about it.
    logged: Option<Instant>,
    /// Such failures since that warning.
    unlogged: u64,
}

/// Inserts into the registry, growing it by a sixteenth (at least [`SLAB_KEEP`] entries) when
/// full, not by doubling: a doubled table carries up to one empty 24-byte entry per
/// connection (at 10,000 connections, 16,384 entries: 15 bytes per connection of slack; now
/// at most 6 %). Growth stays geometric, so inserts stay amortised O(1).
fn insert_registered<S: Service>(conns: &mut Slab<Registered<S>>, r: Registered<S>) -> usize {
    if conns.len() == conns.capacity() {
        conns.reserve_exact((conns.len() / 16).max(SLAB_KEEP));
    }
    conns.insert(r)
}

impl<S: Service> Shared<S> {
    /// Now on the connections' clock: milliseconds since the server started, wrapping every
    /// 49.7 days, never 0 (a connection's "no mark"). Four bytes per connection instead of an
    /// `Instant`'s sixteen; a span is read with [`Shared::elapsed`], right for any span under
    /// 49 days (the request timeout and the linger are far shorter).
    fn mark(&self) -> u32 {
        // (Truncation is the wrap.)
        (self.clock0.elapsed().as_millis() as u32).max(1)
    }

    /// Time since `mark` (from [`Shared::mark`]).
    fn elapsed(&self, mark: u32) -> Duration {
        Duration::from_millis(u64::from(self.mark().wrapping_sub(mark)))
    }

    fn begin_stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(l) = &self.listener {
            l.close();
        }
        if catch_unwind(AssertUnwindSafe(|| self.service.stopping())).is_err() {
            bump(&self.counters.panics);
            tracing::error!("service panicked in stopping");
        }
        for (_, r) in self.conns.lock().iter() {
            // The peer may already be gone (ENOTCONN): nothing to wake then.
            let _ = r.handle.shutdown(Shutdown::Read);
        }
        self.datagrams.close_all();
        // Paused connections read on to their end-of-stream.
        self.resume_for_stop();
    }

    /// Stopping: whether every connection is done: no accept posted or being handled (none can
    /// bring a new connection) and none open. Read in that order: an accept's handling counts
    /// itself into `accepting` before its accept leaves `accepts_posted`, and counts the
    /// connection it opens active before it leaves `accepting`; so zeros seen one after the
    /// other cannot miss a connection moving between them.
    ///
    /// The port going idle is not this: a connection paused (`Next::Pause`) has nothing in
    /// flight. (And before the port counted a completion in flight until it is queued, a
    /// poller between reaping and queueing showed nothing anywhere while connections still
    /// read: `tests/stop_handover.rs`.)
    fn connections_done(&self) -> bool {
        self.accepts_posted.load(Ordering::SeqCst) == 0
            && self.accepting.load(Ordering::SeqCst) == 0
            && self.counters.active.load(Ordering::SeqCst) == 0
    }

    /// After the port is closed: closes (as [`CloseReason::Stopped`]) every push-mode
    /// connection still parked for its drain. Its send was aborted with the port, so nothing
    /// would ever finish it, and it and its outgoing side hold each other.
    fn close_parked(&self) {
        let pushing: Vec<Arc<PushConn<S>>> =
            self.conns.lock().iter().filter_map(|(_, r)| r.push.as_ref()?.upgrade()).collect();
        for pc in pushing {
            if let Some(conn) = pc.take_parked() {
                self.close(conn, CloseReason::Stopped);
            }
        }
    }

    fn post_accept(&self) -> io::Result<()> {
        self.accepts_posted.fetch_add(1, Ordering::SeqCst);
        let closed = self.counters.closed.load(Ordering::SeqCst);
        let Some(listener) = &self.listener else {
            self.accepts_posted.fetch_sub(1, Ordering::SeqCst);
            return Err(io::Error::new(io::ErrorKind::Unsupported, "the server has no listener"));
        };
        match listener.accept(Vec::new(), Ctx::Accept(closed)) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.accepts_posted.fetch_sub(1, Ordering::SeqCst);
                Err(e.into_parts().0)
            }
        }
    }

    /// Keeps the posted accepts at their target (after a failed accept left a gap): one while
    /// the server is short of descriptors ([`EXHAUSTED_BACKOFF`]), else
    /// [`ServerConfig::accepts`].
    fn refill_accepts(&self) {
        if self.listener.is_none() {
            return;
        }
        let target = match self.exhausted.lock().last {
            Some(at) if at.elapsed() < EXHAUSTED_BACKOFF => 1,
            _ => self.cfg.accepts.max(1),
        };
        while !self.stopping.load(Ordering::SeqCst)
            && self.accepts_posted.load(Ordering::SeqCst) < target
        {
            if let Err(e) = self.post_accept() {
                if !self.stopping.load(Ordering::SeqCst) {
                    tracing::warn!(error = %e, "could not post an accept");
                }
                break;
            }
        }
    }

    fn on_completion(&self, mut c: Completion<Ctx<S>>) {
        let res = c.result();
        if c.key() == START_KEY {
            return self.refill_accepts();
        }
        if self.push.is_some() {
            push::mark_worker();
            if let Ctx::Push(_) = c.context() {
                let key = c.key();
                let (ctx, payload) = c.into_parts();
                if let Ctx::Push(pc) = ctx {
                    self.on_push(pc, key, res, payload);
                }
                return;
            }
        }
        if c.key() == pause::RESUME_KEY {
            return self.resume_paused();
        }
        if let &Ctx::Datagram(index) = c.context() {
            return self.on_datagram(c, index);
        }
        if let (Ctx::Conn(conn), Ok(n)) = (c.context(), &res) {
            self.live.transferred(conn.pending == Pending::Send, conn.pending == Pending::Read, *n);
        }
        match c.context() {
            &Ctx::Accept(closed) => {
                let accepted = c.take_accepted();
                self.accepting.fetch_add(1, Ordering::SeqCst);
                let _done = CountedOut(&self.accepting);
                self.on_accept(res, accepted, closed);
            }
            Ctx::Conn(_) => {
                let (ctx, payload) = c.into_parts();
                if let Ctx::Conn(conn) = ctx {
                    self.on_conn(conn, res, payload);
                }
            }
            // Only a push-mode server starts these (handled above).
            Ctx::Push(_) => {}
            Ctx::Datagram(_) => {}
        }
    }

    /// `closed_before`: [`ServerStats::closed`] just before the accept was posted.
    fn on_accept(
        &self,
        res: io::Result<usize>,
        accepted: Option<iocp::Accepted>,
        closed_before: u64,
    ) {
        self.accepts_posted.fetch_sub(1, Ordering::SeqCst);
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        match res {
            Ok(_) => self.refill_accepts(),
            Err(e) if resource_exhausted(&e) => {
                // Out of descriptors or memory: leave the slot empty; a closing connection
                // refills it, with a single accept while the shortage lasts. Every posted
                // accept fails at once when it starts, and again after each close while the
                // backlog is full: warn once a second, not per failure.
                bump(&self.counters.accept_errors);
                let now = Instant::now();
                let mut ex = self.exhausted.lock();
                ex.last = Some(now);
                ex.unlogged += 1;
                // A connection that closed while this accept was in flight found it posted and
                // posted none: retry for it, else nothing might accept again (a close counts
                // itself before its refill reads `accepts_posted` under this lock; this reads
                // the count under it after `accepts_posted` went down).
                let retry = self.counters.closed.load(Ordering::SeqCst) != closed_before;
                let log = ex.logged.is_none_or(|at| now.duration_since(at) >= EXHAUSTED_LOG_EVERY);
                let failures = if log { std::mem::take(&mut ex.unlogged) } else { 0 };
                if log {
                    ex.logged = Some(now);
                }
                drop(ex);
                if log {
                    tracing::warn!(
                        error = %e,
                        failures,
                        "accept failed: out of descriptors or memory; accepting again as \
                         connections close"
                    );
                }
                if retry {
                    self.refill_accepts();
                }
                return;
            }
            Err(e) => {
                if !cancelled(&e) {
                    bump(&self.counters.accept_errors);
                    tracing::warn!(error = %e, "accept failed");
                }
                self.refill_accepts();
                return;
            }
        }
        let Some((Some(sock), peer, _)) = accepted.map(|a| a.into_parts()) else {
            return;
        };
        // Count the connection in before checking, so two workers cannot both take the last slot.
        let active = self.counters.active.fetch_add(1, Ordering::AcqRel);
        if active >= self.cfg.max_connections as u64 {
            self.counters.active.fetch_sub(1, Ordering::AcqRel);
            bump(&self.counters.refused);
            tracing::debug!("connection refused: max_connections reached");
            return; // dropping the socket closes it
        }
        // Echo-style request/response traffic: never wait for Nagle.
        let _ = sock.set_tcp_nodelay(true);
        let peer = peer.and_then(|p| p.as_socket());
        let handle = match self.port.associate(OwnedFd::from(sock), CONN_KEY) {
            Ok(h) => h,
            Err(e) => {
                bump(&self.counters.accept_errors);
                self.counters.active.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(error = %e, "associate failed");
                return;
            }
        };
        let push = self.push.map(|cfg| PushConn::new(self.me.clone(), handle.clone(), cfg));
        let opened = catch_unwind(AssertUnwindSafe(|| match &push {
            Some(pc) => self.service.open_push(peer, pc.outbox()),
            None => self.service.open(peer),
        }));
        let state = match opened {
            Ok(state) => state,
            Err(_) => {
                bump(&self.counters.panics);
                self.counters.active.fetch_sub(1, Ordering::AcqRel);
                tracing::error!("service panicked in open: connection dropped");
                return;
            }
        };
        let registered =
            Registered { handle: handle.clone(), push: push.as_ref().map(Arc::downgrade) };
        // (A registry index fits 32 bits: 4G registered connections would need 96 GB of
        // registry alone.)
        let slot = insert_registered(&mut self.conns.lock(), registered) as u32;
        if self.stopping.load(Ordering::SeqCst) {
            // begin_stop may have walked the registry before this insert.
            let _ = handle.shutdown(Shutdown::Read);
        }
        bump(&self.counters.accepted);
        tracing::debug!(?peer, slot, "connection accepted");
        let conn = Box::new(Conn {
            handle,
            slot,
            epoch: 0,
            since: 0,
            pending: Pending::Read,
            parking: false,
            filled: false,
            waited: false,
            state,
            io: LazyIo::default(),
            bytes_in: 0,
            bytes_out: 0,
            push,
        });
        self.drive(conn, Next::Read);
    }

    fn on_conn(&self, mut conn: Box<Conn<S>>, res: io::Result<usize>, payload: Payload) {
        match conn.pending {
            // A zero-byte receive hands back no buffer.
            Pending::Ready => {}
            Pending::Read | Pending::Linger => {
                if let Payload::Recv(buf) = payload {
                    conn.io.input = buf;
                }
            }
            Pending::Send => match payload {
                Payload::Send(mut buf) => {
                    buf.clear();
                    conn.io.output = buf;
                }
                Payload::TransmitFile(t) => {
                    let mut buf = t.head;
                    buf.clear();
                    conn.io.output = buf;
                }
                _ => {}
            },
        }
        match (conn.pending, res) {
            (Pending::Linger, Ok(n)) if n > 0 => {
                conn.io.input.clear();
                self.drive_linger(conn);
            }
            (Pending::Linger, _) => self.close(conn, CloseReason::Done),
            (Pending::Ready, Ok(_)) => self.read_now(conn),
            (Pending::Read, Ok(0)) => self.eof(conn),
            (Pending::Read, Ok(n)) => {
                conn.filled = conn.io.input.len() == conn.io.input.capacity();
                self.on_input(conn, n);
            }
            (Pending::Read, Err(e)) if conn.parking && timed_out(&e) => {
                conn.parking = false;
                let park = self.cfg.park_after.unwrap_or_default();
                let left = self.cfg.idle_timeout.map(|d| d.saturating_sub(park));
                if left == Some(Duration::ZERO) {
                    return self.deadline_expired(conn, TimeoutKind::Idle);
                }
                self.park(conn, left);
            }
            (Pending::Read | Pending::Ready, Err(e)) if timed_out(&e) => {
                let kind = if conn.since != 0 { TimeoutKind::Request } else { TimeoutKind::Idle };
                self.deadline_expired(conn, kind);
            }
            (Pending::Send, Ok(n)) => {
                conn.bytes_out += n as u64;
                if conn.io.close_after_send {
                    self.drive(conn, Next::Close);
                } else if let Some((conn, next)) = self.step(conn, S::on_sent) {
                    self.drive(conn, next);
                }
            }
            (Pending::Send, Err(e)) if timed_out(&e) => {
                bump(&self.counters.write_timeouts);
                self.close(conn, CloseReason::Timeout);
            }
            (_, Err(_)) if conn.push.as_ref().is_some_and(|p| p.dropped_slow()) => {
                self.close(conn, CloseReason::Slow);
            }
            (_, Err(e)) => {
                if !(self.stopping.load(Ordering::Relaxed) && cancelled(&e)) {
                    bump(&self.counters.io_errors);
                    tracing::debug!(error = %e, slot = conn.slot, "connection error");
                }
                self.close(conn, CloseReason::Error);
            }
        }
    }

    /// Parks an idle connection on a zero-byte receive, holding no buffer meanwhile (the output
    /// buffer too is released: it has been sent).
    fn park(&self, mut conn: Box<Conn<S>>, timeout: Option<Duration>) {
        bump(&self.counters.parks);
        self.reclaim.note_released();
        conn.io.release();
        self.await_data(conn, timeout);
    }

    /// Posts the zero-byte receive: the connection holds no input buffer until data comes.
    fn await_data(&self, mut conn: Box<Conn<S>>, timeout: Option<Duration>) {
        conn.pending = Pending::Ready;
        let handle = conn.handle.clone();
        let r = handle.with_timeout(timeout).recv_ready(Ctx::Conn(conn));
        self.refused_start(r);
    }

    /// `n` new bytes are in `conn.io.input`: let the service handle them.
    fn on_input(&self, mut conn: Box<Conn<S>>, n: usize) {
        conn.bytes_in += n as u64;
        let Some((mut conn, next)) = self.step(conn, S::on_read) else { return };
        conn.note_partial(self.mark());
        self.drive(conn, next);
    }

    /// The zero-byte receive completed: the socket is readable. Takes a buffer sized to what
    /// the kernel holds (at least [`MIN_READ`], at most `read_buffer`) and reads it at once,
    /// non-blocking, as a Windows server does after its zero-byte `WSARecv`. The connection's
    /// one pending operation has completed, so nothing else reads this socket now.
    fn read_now(&self, mut conn: Box<Conn<S>>) {
        let queued = rustix::io::ioctl_fionread(&conn.handle).unwrap_or(0);
        let limit = self.cfg.read_buffer.min(self.cfg.max_input).max(1);
        let room = usize::try_from(queued).unwrap_or(usize::MAX).max(MIN_READ).min(limit);
        let mut buf = Vec::with_capacity(room);
        let r = rustix::net::recv(
            &conn.handle,
            rustix::buffer::spare_capacity(&mut buf),
            rustix::net::RecvFlags::DONTWAIT,
        );
        match r {
            Ok((0, _)) => self.eof(conn),
            Ok((n, _)) => {
                // Read here, not by a receive operation: count it as one.
                self.live.transferred(false, true, n);
                conn.filled = n == buf.capacity();
                conn.io.input = buf;
                self.on_input(conn, n);
            }
            // Readiness without data (another reader cannot exist; a spurious wake-up): park
            // again, without the buffer.
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => self.drive(conn, Next::Read),
            Err(e) => {
                if !self.stopping.load(Ordering::Relaxed) {
                    bump(&self.counters.io_errors);
                    tracing::debug!(error = %e, slot = conn.slot, "connection error");
                }
                self.close(conn, CloseReason::Error);
            }
        }
    }

    /// Runs a service callback on the connection. A panic closes the connection (counted and
    /// logged) rather than leaking it; the worker goes on.
    fn step(
        &self,
        mut conn: Box<Conn<S>>,
        f: impl FnOnce(&S, &mut S::Conn, &mut Io) -> Next,
    ) -> Option<(Box<Conn<S>>, Next)> {
        conn.epoch = self.paused.epoch() as u32;
        let Conn { state, io, .. } = &mut *conn;
        let t0 = self.live.sample_start();
        let r = catch_unwind(AssertUnwindSafe(|| f(&self.service, state, io)));
        if let Some(t0) = t0 {
            self.live.service_time(t0.elapsed());
        }
        match r {
            Ok(next) => Some((conn, next)),
            Err(_) => {
                bump(&self.counters.panics);
                tracing::error!(slot = conn.slot, "service panicked: connection closed");
                self.close(conn, CloseReason::Error);
                None
            }
        }
    }

    /// A receive deadline expired: count it, let the service answer, then close (after the
    /// answer, if any).
    fn deadline_expired(&self, conn: Box<Conn<S>>, kind: TimeoutKind) {
        bump(match kind {
            TimeoutKind::Request => &self.counters.request_timeouts,
            TimeoutKind::Idle => &self.counters.idle_timeouts,
        });
        let mut keep = false;
        let Some((mut conn, next)) = self.step(conn, |s, st, io| {
            let next = s.on_timeout(st, io, kind);
            keep = s.keeps_open_after_timeout(st);
            next
        }) else {
            return;
        };
        if matches!(next, Next::Read) {
            // Asking to read again after a timeout would wait forever on a silent peer; the
            // deadline already ran out.
            return self.close(conn, CloseReason::Timeout);
        }
        if !keep {
            conn.io.close_after_send = true;
        }
        self.drive(conn, next);
    }

    /// The peer closed its sending side. A push-mode connection first delivers what is
    /// queued for it.
    fn eof(&self, conn: Box<Conn<S>>) {
        if let Some(pc) = conn.push.clone() {
            if let Some(conn) = pc.park(conn, Finish::Close(CloseReason::Eof)) {
                self.close(conn, CloseReason::Eof);
            }
            return;
        }
        self.close(conn, CloseReason::Eof);
    }

    /// Starts what `next` says on a push-mode connection: output goes through its outbox.
    fn drive_push(&self, mut conn: Box<Conn<S>>, next: Next, pc: &Arc<PushConn<S>>) {
        match next {
            Next::Read => self.drive_read(conn),
            Next::Send => {
                let out = std::mem::take(&mut conn.io.output);
                let last = std::mem::take(&mut conn.io.close_after_send);
                if !out.is_empty() {
                    // A refused push means the connection is closed or being dropped: its
                    // receive ends it.
                    let _ = pc.queue_private(out);
                }
                if last {
                    self.drive_push(conn, Next::Close, pc);
                } else {
                    self.drive_read(conn);
                }
            }
            Next::Transmit { .. } => {
                tracing::error!(slot = conn.slot, "Next::Transmit on a push-mode connection");
                self.close(conn, CloseReason::Error);
            }
            Next::Close => {
                let pc = pc.clone();
                let parked = pc.park(conn, Finish::Linger);
                if let Some(conn) = parked {
                    self.close_gracefully(conn);
                }
            }
            // No receive is posted until the resume; the outbox keeps sending.
            Next::Pause => self.pause(conn),
        }
    }

    /// Starts what `next` says.
    fn drive(&self, conn: Box<Conn<S>>, next: Next) {
        if let Some(pc) = &conn.push {
            let pc = pc.clone();
            return self.drive_push(conn, next, &pc);
        }
        self.drive_request(conn, next);
    }

    /// Posts the connection's receive (with its deadline).
    fn drive_read(&self, conn: Box<Conn<S>>) {
        self.drive_request(conn, Next::Read);
    }

    /// Starts what `next` says on a request/response connection.
    fn drive_request(&self, mut conn: Box<Conn<S>>, next: Next) {
        match next {
            Next::Read => {
                if conn.io.input.len() >= self.cfg.max_input {
                    bump(&self.counters.overflows);
                    return self.close(conn, CloseReason::Overflow);
                }
                let timeout = match conn.since {
                    0 => self.cfg.idle_timeout,
                    t0 => self.cfg.request_timeout.map(|d| d.saturating_sub(self.elapsed(t0))),
                };
                if timeout == Some(Duration::ZERO) {
                    let kind =
                        if conn.since != 0 { TimeoutKind::Request } else { TimeoutKind::Idle };
                    return self.deadline_expired(conn, kind);
                }
                let mut timeout = timeout;
                conn.parking = false;
                if conn.bytes_in == 0 && conn.io.input.is_empty() {
                    // A new connection: wait for data with the zero-byte receive and take a
                    // buffer sized to what came (`read_now`). A burst of new connections then holds
                    // a few hundred bytes each while it sends its first request, not
                    // `read_buffer` each: 5,000 chat clients' 16 KiB buffers were 50 MB of
                    // transient heap among their long-lived records, and much of it stayed
                    // in the RSS after the buffers were freed (DESIGN.md §5.2).
                    return self.await_data(conn, timeout);
                }
                if conn.io.input.is_empty() {
                    // Waiting for the next request: keep the buffers for `park_after` (a busy
                    // connection's next message is usually close), then park without them.
                    // The first such wait parks at once: a connection quiet after its first
                    // exchange (a WebSocket after its upgrade, a client that said hello) is
                    // mostly one that stays quiet, and a burst of new connections holding
                    // their first buffers for `park_after` leaves them, once freed, as holes
                    // among the long-lived records allocated meanwhile (~400 B per idle chat
                    // client, DESIGN.md §5.2). A busy one pays one zero-byte receive, once.
                    if !conn.waited && self.cfg.park_after.is_some() {
                        conn.waited = true;
                        return self.park(conn, timeout);
                    }
                    match self.cfg.park_after {
                        Some(Duration::ZERO) => return self.park(conn, timeout),
                        Some(p) if timeout.is_none_or(|t| p < t) => {
                            timeout = Some(p);
                            conn.parking = true;
                        }
                        _ => {}
                    }
                }
                let spare = conn.io.input.capacity() - conn.io.input.len();
                if spare == 0 || (conn.filled && spare < self.cfg.read_buffer) {
                    // Full, or the last read filled it (more is coming than it holds): room
                    // for `read_buffer` more.
                    let room = self.cfg.read_buffer.min(self.cfg.max_input - conn.io.input.len());
                    conn.io.input.reserve_exact(room);
                }
                conn.filled = false;
                conn.pending = Pending::Read;
                let buf = std::mem::take(&mut conn.io.input);
                let handle = conn.handle.clone();
                let r = handle.with_timeout(timeout).recv(buf, Ctx::Conn(conn));
                self.refused_start(r);
            }
            Next::Send => {
                if conn.io.output.is_empty() {
                    // Nothing to send: as if it had been sent.
                    if conn.io.close_after_send {
                        return self.drive(conn, Next::Close);
                    }
                    if let Some((conn, next)) = self.step(conn, S::on_sent) {
                        self.drive(conn, next);
                    }
                    return;
                }
                conn.pending = Pending::Send;
                let buf = std::mem::take(&mut conn.io.output);
                let handle = conn.handle.clone();
                let r = handle.with_timeout(self.cfg.write_timeout).send(buf, Ctx::Conn(conn));
                self.refused_start(r);
            }
            Next::Transmit { file, offset, len } => {
                conn.pending = Pending::Send;
                let range = TransmitRange {
                    offset,
                    len: Some(len),
                    head: std::mem::take(&mut conn.io.output),
                    tail: Vec::new(),
                };
                let handle = conn.handle.clone();
                let r = handle.with_timeout(self.cfg.write_timeout).transmit_file(
                    file,
                    range,
                    Ctx::Conn(conn),
                );
                self.refused_start(r);
            }
            Next::Close => self.close_gracefully(conn),
            Next::Pause => self.pause(conn),
        }
    }

    /// Shuts the sending side and reads (discarding) until the peer closes or the linger time
    /// is over.
    fn close_gracefully(&self, mut conn: Box<Conn<S>>) {
        if self.cfg.linger.is_zero() || conn.handle.shutdown(Shutdown::Write).is_err() {
            return self.close(conn, CloseReason::Done);
        }
        conn.since = self.mark();
        self.drive_linger(conn);
    }

    /// Reads and discards until the peer closes or the linger time is over.
    fn drive_linger(&self, mut conn: Box<Conn<S>>) {
        let left = self.cfg.linger.saturating_sub(self.elapsed(conn.since));
        if left.is_zero() {
            return self.close(conn, CloseReason::Done);
        }
        conn.pending = Pending::Linger;
        let mut buf = std::mem::take(&mut conn.io.input);
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve_exact(4096);
        }
        let handle = conn.handle.clone();
        let r = handle.with_timeout(left).recv(buf, Ctx::Conn(conn));
        self.refused_start(r);
    }

    /// A start that was refused hands the connection back: close it (the handle or port is
    /// closing, or the arguments were impossible).
    fn refused_start(&self, r: Result<iocp::OpId, SubmitError<Ctx<S>>>) {
        if let Err(e) = r {
            let (err, ctx, _payload) = e.into_parts();
            if let Ctx::Conn(conn) = ctx {
                // Dropped as slow while a callback ran (its own push overflowed the queue, or
                // another connection's did): the slow drop closed the handle under it, and
                // that is the reason, not an I/O error.
                if conn.push.as_ref().is_some_and(|p| p.dropped_slow()) {
                    return self.close(conn, CloseReason::Slow);
                }
                if !self.stopping.load(Ordering::Relaxed) {
                    bump(&self.counters.io_errors);
                    tracing::debug!(error = %err, slot = conn.slot, "operation refused");
                }
                self.close(conn, CloseReason::Error);
            }
        }
    }

    // The connection arrives boxed as the operation's context; unboxing at every caller
    // would only move it twice.
    #[allow(clippy::boxed_local)]
    fn close(&self, conn: Box<Conn<S>>, reason: CloseReason) {
        let Conn { handle, slot, mut state, io, bytes_in, mut bytes_out, push, .. } = *conn;
        handle.close();
        if let Some(pc) = push {
            pc.retire();
            bytes_out += pc.sent();
        }
        let reason = if self.stopping.load(Ordering::Relaxed) && reason != CloseReason::Eof {
            CloseReason::Stopped
        } else {
            reason
        };
        {
            let mut conns = self.conns.lock();
            if conns.contains(slot as usize) {
                conns.remove(slot as usize);
            }
            // The last of a burst gives the burst's table back (the core's port tables do the
            // same, iocp's spare.rs): an idle server's RSS is not its busiest moment's.
            if conns.is_empty() && conns.capacity() > SLAB_KEEP {
                conns.shrink_to_fit();
            }
        }
        let c = &self.counters;
        c.active.fetch_sub(1, Ordering::SeqCst);
        bump(&c.closed);
        self.reclaim.note_released();
        self.live.closed(reason);
        c.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        c.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        tracing::debug!(slot, ?reason, bytes_in, bytes_out, "connection closed");
        if !io.input.is_empty()
            && catch_unwind(AssertUnwindSafe(|| {
                self.service.on_unread(&mut state, &io.input, reason);
            }))
            .is_err()
        {
            bump(&c.panics);
            tracing::error!(slot, "service panicked in on_unread");
        }
        if catch_unwind(AssertUnwindSafe(|| self.service.on_close(state, reason))).is_err() {
            bump(&c.panics);
            tracing::error!(slot, "service panicked in on_close");
        }
        self.refill_accepts();
    }
}

#[cfg(test)]
mod size_report {
    /// An idle connection's server state is one heap chunk of this (DESIGN.md §5.2): growing
    /// it must be a decision, not an accident. Up to 72 bytes fit glibc's 80-byte chunk.
    #[test]
    fn an_echo_connection_stays_in_an_80_byte_chunk() {
        let conn = size_of::<super::Conn<crate::echo::Echo>>();
        eprintln!("Conn<Echo> = {conn} bytes, Io = {} bytes", size_of::<super::Io>());
        assert!(conn <= 72, "Conn<Echo> grew to {conn} bytes");
    }

    /// A parked connection's `Io` is 8 bytes: reading it allocates nothing, the first write
    /// boxes it, and parking frees it.
    #[test]
    fn lazy_io_is_boxed_only_while_written() {
        let mut io = super::LazyIo::default();
        assert!(io.input.is_empty() && io.output.is_empty() && !io.close_after_send);
        assert!(io.0.is_none(), "reading allocated");
        io.output.extend_from_slice(b"reply");
        assert_eq!(io.0.as_ref().map(|b| b.output.len()), Some(5));
        io.release();
        assert!(io.0.is_none() && io.output.is_empty());
    }
}
