//! A syslog collector on the [`Server`]: TCP (RFC 6587 octet counting or LF
//! framing, detected per connection) and UDP (one message per datagram) inputs on one port
//! and pool, RFC 5424 / RFC 3164 parsing (`syslog_loose`), a bounded queue, and a writer that
//! appends to files laid out by a [`Template`] with the port's overlapped file writes, in
//! batches (group commit), with an fsync policy and rotation by size and by age.
//!
//! Nothing is dropped silently: a message that does not parse is written raw (to the file of
//! app `malformed`) and counted; a full queue pauses TCP connections (their receives stop
//! being posted) and counts UDP drops; a failing write (a full disk) is logged and retried
//! with the messages held, so back-pressure reaches TCP senders. A graceful
//! [`Collector::stop`] writes every message received before it.

mod frame;
pub mod fuzzing;
mod queue;
mod render;
mod writer;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

pub use frame::{Frame, Framing, last_frame, next_frame};
pub use render::{Format, Input, Outcome, Received, Template, render};

use crate::metrics::{ExtraKind, ExtraMetric, LiveStats};
use crate::server::{CloseReason, Io, Next, Server, ServerConfig, ServerReport, Service};
use queue::{Chunk, Queue};

/// When the files are flushed to stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fsync {
    /// Never (the kernel writes back when it likes; a crash of the machine loses what it had
    /// not written yet; a crash of the process loses only the queue).
    #[default]
    None,
    /// Every [`SyslogConfig::fsync_interval`].
    Interval,
    /// After every batch, before the next is taken.
    Batch,
}

/// How a [`Collector`] runs.
#[derive(Clone, Debug)]
pub struct SyslogConfig {
    /// TCP input address (None: no TCP input).
    pub tcp: Option<SocketAddr>,
    /// UDP input address (None: no UDP input).
    pub udp: Option<SocketAddr>,
    /// Output directory.
    pub dir: PathBuf,
    /// File layout, relative to `dir`.
    pub template: Template,
    /// Line format.
    pub format: Format,
    /// fsync policy.
    pub fsync: Fsync,
    /// The period of [`Fsync::Interval`].
    pub fsync_interval: Duration,
    /// Rotate a file before it would grow past this many bytes.
    pub rotate_size: Option<u64>,
    /// Rotate a file once this long has passed since the collector opened it (time rotation;
    /// checked every 50 ms; a file that is still empty is not rotated). The clock restarts
    /// whenever the file is (re)opened: after a rotation, a [`Collector::reopen`] or a restart.
    pub rotate_time: Option<Duration>,
    /// Rotated files kept (`f.1` ... `f.N`).
    pub rotate_keep: u32,
    /// The longest message (bytes); longer lines are cut, flagged and counted malformed.
    pub max_message: usize,
    /// The queue's bound (bytes of rendered lines not yet written).
    pub queue_bytes: usize,
    /// At most this many bytes per batch.
    pub batch_bytes: usize,
    /// UDP: the socket's receive buffer (SO_RCVBUF) and the receives kept posted.
    pub udp_rcvbuf: usize,
    /// UDP receives kept posted.
    pub udp_posted: usize,
    /// On stop, how long to keep retrying writes that fail before giving up (counted lost).
    pub flush_timeout: Duration,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            tcp: None,
            udp: None,
            dir: PathBuf::from("."),
            template: Template::default(),
            format: Format::Text,
            fsync: Fsync::None,
            fsync_interval: Duration::from_secs(1),
            rotate_size: None,
            rotate_time: None,
            rotate_keep: 5,
            max_message: 64 * 1024,
            queue_bytes: 64 * 1024 * 1024,
            batch_bytes: 4 * 1024 * 1024,
            udp_rcvbuf: 8 * 1024 * 1024,
            udp_posted: 32,
            flush_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct InputCounters {
    received: AtomicU64,
    parsed: AtomicU64,
    malformed: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    tcp: InputCounters,
    udp: InputCounters,
    pauses: AtomicU64,
    batches: AtomicU64,
    batch_msgs: AtomicU64,
    bytes_written: AtomicU64,
    write_errors: AtomicU64,
    rotations: AtomicU64,
    lost: AtomicU64,
}

/// One input's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputStats {
    /// Messages received (admitted to the queue).
    pub received: u64,
    /// Of which parsed as RFC 5424 or RFC 3164.
    pub parsed: u64,
    /// Of which malformed (written raw).
    pub malformed: u64,
    /// Messages dropped (UDP: the queue was full).
    pub dropped: u64,
    /// Messages written to their files.
    pub written: u64,
    /// Message bytes received.
    pub bytes: u64,
}

/// A collector's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyslogStats {
    /// TCP input.
    pub tcp: InputStats,
    /// UDP input.
    pub udp: InputStats,
    /// Datagrams the kernel dropped on the UDP socket (its receive buffer was full), from
    /// `/proc/net/udp`.
    pub udp_kernel_drops: u64,
    /// Times a TCP connection paused because the queue was full.
    pub pauses: u64,
    /// Batches written.
    pub batches: u64,
    /// Messages in those batches (mean batch = `batch_msgs / batches`).
    pub batch_msgs: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Write attempts that failed (each retried).
    pub write_errors: u64,
    /// Files rotated.
    pub rotations: u64,
    /// Messages given up at stop because their files could not be written (in batches not
    /// written whole: the head of such a batch may be on disk).
    pub lost: u64,
    /// Bytes queued and not yet written.
    pub queued_bytes: u64,
}

impl std::fmt::Display for SyslogStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = |s: &InputStats| {
            format!(
                "received={} parsed={} malformed={} dropped={} written={} bytes={}",
                s.received, s.parsed, s.malformed, s.dropped, s.written, s.bytes
            )
        };
        write!(
            f,
            "tcp: {} | udp: {} kernel_drops={} | batches={} mean_batch={} written_bytes={} \
             queued_bytes={} pauses={} write_errors={} rotations={} lost={}",
            i(&self.tcp),
            i(&self.udp),
            self.udp_kernel_drops,
            self.batches,
            self.batch_msgs.checked_div(self.batches).unwrap_or(0),
            self.bytes_written,
            self.queued_bytes,
            self.pauses,
            self.write_errors,
            self.rotations,
            self.lost
        )
    }
}

impl SyslogStats {
    /// The counters as metric families for a metrics endpoint (`iocp_syslog_*`), the
    /// per-input ones labelled `input="tcp"` / `input="udp"` for the inputs given.
    pub fn metrics(&self, tcp: bool, udp: bool) -> Vec<ExtraMetric> {
        let inputs: Vec<(&str, &InputStats)> = [("tcp", tcp, &self.tcp), ("udp", udp, &self.udp)]
            .into_iter()
            .filter(|x| x.1)
            .map(|(n, _, s)| (n, s))
            .collect();
        let per = |name: &str, help: &str, f: fn(&InputStats) -> u64| {
            let v: Vec<(&str, u64)> = inputs.iter().map(|(n, s)| (*n, f(s))).collect();
            ExtraMetric::labelled(name, help, ExtraKind::Counter, "input", &v)
        };
        let one =
            |name: &str, help: &str, v: u64| ExtraMetric::single(name, help, ExtraKind::Counter, v);
        let mut out = vec![
            per("syslog_received", "Messages received (admitted to the queue).", |s| s.received),
            per("syslog_parsed", "Messages parsed as RFC 5424 or RFC 3164.", |s| s.parsed),
            per("syslog_malformed", "Messages that did not parse (written raw).", |s| s.malformed),
            per("syslog_dropped", "Messages dropped because the queue was full (UDP).", |s| {
                s.dropped
            }),
            per("syslog_written", "Messages written to their files.", |s| s.written),
            per("syslog_received_bytes", "Message bytes received.", |s| s.bytes),
        ];
        if udp {
            out.push(one(
                "syslog_udp_kernel_drops",
                "Datagrams the kernel dropped on the UDP socket (receive buffer full).",
                self.udp_kernel_drops,
            ));
        }
        out.extend([
            one("syslog_batches", "Batches written (group commits).", self.batches),
            one("syslog_batch_messages", "Messages in the batches written.", self.batch_msgs),
            one("syslog_written_bytes", "Bytes written to the files.", self.bytes_written),
            one(
                "syslog_pauses",
                "Times a TCP connection paused because the queue was full.",
                self.pauses,
            ),
            one(
                "syslog_write_errors",
                "File writes that failed (each retried).",
                self.write_errors,
            ),
            one("syslog_rotations", "Files rotated (by size or time).", self.rotations),
            one(
                "syslog_lost",
                "Messages given up at stop (files could not be written).",
                self.lost,
            ),
            ExtraMetric::single(
                "syslog_queued_bytes",
                "Bytes queued and not yet written.",
                ExtraKind::Gauge,
                self.queued_bytes,
            ),
        ]);
        out
    }
}

struct Inner {
    cfg: SyslogConfig,
    queue: Queue,
    counters: Counters,
    reopen: AtomicBool,
    closed: AtomicBool,
}

impl Inner {
    fn queue_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn input(&self, i: Input) -> &InputCounters {
        match i {
            Input::Tcp => &self.counters.tcp,
            Input::Udp => &self.counters.udp,
        }
    }

    /// Renders `frames` into a chunk.
    fn chunk<'a>(
        &self,
        input: Input,
        peer: Option<SocketAddr>,
        frames: impl Iterator<Item = Frame<'a>>,
    ) -> (Chunk, [u64; 3]) {
        let rx = Received::now();
        let mut chunk = Chunk::new(input);
        let (mut path, mut line) = (String::new(), Vec::new());
        let mut n = [0u64; 3]; // messages, malformed, bytes
        for f in frames {
            line.clear();
            let o = render(
                f.msg,
                f.fault,
                peer,
                input,
                &rx,
                &self.cfg.template,
                self.cfg.format,
                &mut path,
                &mut line,
            );
            chunk.push(&path, &line);
            n[0] += 1;
            n[1] += u64::from(o.malformed);
            n[2] += f.msg.len() as u64;
        }
        (chunk, n)
    }

    fn count(&self, input: Input, n: [u64; 3]) {
        let c = self.input(input);
        c.received.fetch_add(n[0], Ordering::Relaxed);
        c.malformed.fetch_add(n[1], Ordering::Relaxed);
        c.parsed.fetch_add(n[0] - n[1], Ordering::Relaxed);
        c.bytes.fetch_add(n[2], Ordering::Relaxed);
    }

    fn stats(&self) -> SyslogStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let i = |c: &InputCounters| InputStats {
            received: l(&c.received),
            parsed: l(&c.parsed),
            malformed: l(&c.malformed),
            dropped: l(&c.dropped),
            written: l(&c.written),
            bytes: l(&c.bytes),
        };
        let c = &self.counters;
        SyslogStats {
            tcp: i(&c.tcp),
            udp: i(&c.udp),
            udp_kernel_drops: 0,
            pauses: l(&c.pauses),
            batches: l(&c.batches),
            batch_msgs: l(&c.batch_msgs),
            bytes_written: l(&c.bytes_written),
            write_errors: l(&c.write_errors),
            rotations: l(&c.rotations),
            lost: l(&c.lost),
            queued_bytes: self.queue.bytes() as u64,
        }
    }
}

/// The syslog [`Service`]: frames, parses and queues what TCP connections and datagrams bring.
#[derive(Clone)]
pub struct Syslog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syslog").finish_non_exhaustive()
    }
}

/// A TCP connection's state.
#[derive(Debug)]
pub struct SyslogConn {
    peer: Option<SocketAddr>,
    framing: Framing,
}

impl Syslog {
    /// Frames and queues what is in `io.input`; pauses when the queue is full.
    fn drain(&self, conn: &mut SyslogConn, io: &mut Io) -> Next {
        let inner = &*self.inner;
        if !inner.queue.has_room(io.input.len()) {
            inner.counters.pauses.fetch_add(1, Ordering::Relaxed);
            return Next::Pause;
        }
        let before = conn.framing;
        let mut used = 0;
        let max = inner.cfg.max_message;
        let buf = &io.input;
        let frames = std::iter::from_fn(|| {
            let (f, n) = next_frame(&buf[used..], &mut conn.framing, max)?;
            used += n;
            Some(f)
        });
        let (chunk, n) = inner.chunk(Input::Tcp, conn.peer, frames);
        if !chunk.is_empty() && inner.queue.push(chunk, false).is_err() {
            conn.framing = before;
            inner.counters.pauses.fetch_add(1, Ordering::Relaxed);
            return Next::Pause;
        }
        inner.count(Input::Tcp, n);
        io.consume(used);
        Next::Read
    }
}

impl Service for Syslog {
    type Conn = SyslogConn;

    fn open(&self, peer: Option<SocketAddr>) -> SyslogConn {
        SyslogConn { peer, framing: Framing::Unknown }
    }

    fn on_read(&self, conn: &mut SyslogConn, io: &mut Io) -> Next {
        self.drain(conn, io)
    }

    fn on_resume(&self, conn: &mut SyslogConn, io: &mut Io) -> Next {
        self.drain(conn, io)
    }

    fn on_unread(&self, conn: &mut SyslogConn, input: &[u8], _reason: CloseReason) {
        // What is left may hold many whole frames (a connection that ended while paused, its
        // input unconsumed): frame them as `drain` would, then the unterminated rest.
        let max = self.inner.cfg.max_message;
        let mut used = 0;
        let mut frames = Vec::new();
        while let Some((f, n)) = next_frame(&input[used..], &mut conn.framing, max) {
            used += n;
            frames.push(f);
        }
        frames.extend(last_frame(&input[used..], conn.framing));
        if frames.is_empty() {
            return;
        }
        let (chunk, n) = self.inner.chunk(Input::Tcp, conn.peer, frames.into_iter());
        // The connection is gone: its last bytes go in even past the bound.
        if self.inner.queue.push(chunk, true).is_ok() {
            self.inner.count(Input::Tcp, n);
        }
    }

    fn on_datagram(&self, data: &[u8], peer: Option<SocketAddr>, truncated: bool) {
        let inner = &*self.inner;
        let mut msg = data;
        while let Some((b'\n' | b'\r' | b'\0', head)) = msg.split_last() {
            msg = head;
        }
        if msg.is_empty() {
            return;
        }
        let fault = truncated.then_some("datagram longer than the message limit");
        let (chunk, n) = inner.chunk(Input::Udp, peer, std::iter::once(Frame { msg, fault }));
        match inner.queue.push(chunk, false) {
            Ok(()) => inner.count(Input::Udp, n),
            Err(_) => {
                inner.counters.udp.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What [`Collector::stop`] reports.
#[derive(Clone, Copy, Debug)]
pub struct SyslogReport {
    /// The server's report (connections, bytes).
    pub server: ServerReport,
    /// The collector's counters at the end.
    pub stats: SyslogStats,
}

/// A running collector: the server (TCP and UDP inputs) and the writer thread.
#[derive(Debug)]
pub struct Collector {
    server: Server<Syslog>,
    writer: Option<JoinHandle<()>>,
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    udp_inode: Option<u64>,
}

impl Collector {
    /// Starts the inputs and the writer. `server` gives the threads, backend and limits; its
    /// address is replaced by [`SyslogConfig::tcp`]. Without a TCP input no TCP socket is
    /// bound at all (the server runs with no listener, only the UDP socket); without a UDP
    /// input no UDP socket is.
    ///
    /// # Errors
    /// Neither input given, a zero [`SyslogConfig::rotate_time`], an address cannot be bound,
    /// the output directory cannot be created, or the port or threads cannot start.
    pub fn start(cfg: SyslogConfig, server: ServerConfig) -> io::Result<Collector> {
        if cfg.tcp.is_none() && cfg.udp.is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no input: give TCP or UDP"));
        }
        if cfg.rotate_time.is_some_and(|d| d.is_zero()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "rotate_time must be longer than zero",
            ));
        }
        std::fs::create_dir_all(&cfg.dir)?;
        let max_input = cfg.max_message + 64 + server.read_buffer;
        let scfg = ServerConfig {
            addr: cfg.tcp.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            listen: cfg.tcp.is_some(),
            // Senders keep connections open and quiet for as long as they like, and a partial
            // message may wait for its end.
            idle_timeout: None,
            request_timeout: None,
            max_input: max_input.max(server.max_input),
            linger: Duration::ZERO,
            ..server
        };
        let backend = scfg.backend;
        let inner = Arc::new(Inner {
            queue: Queue::new(cfg.queue_bytes),
            cfg,
            counters: Counters::default(),
            reopen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let writer = writer::Writer::new(inner.clone(), backend)?;
        let writer =
            std::thread::Builder::new().name("syslog-writer".into()).spawn(move || writer.run())?;
        let svc = Syslog { inner: inner.clone() };
        let server = match Server::start(svc, scfg) {
            Ok(s) => s,
            Err(e) => {
                inner.closed.store(true, Ordering::SeqCst);
                inner.queue.close();
                let _ = writer.join();
                return Err(e);
            }
        };
        inner.queue.set_resumer(server.resumer());
        let tcp = server.listen_addr();
        let mut c = Collector { server, writer: Some(writer), tcp, udp: None, udp_inode: None };
        if let Some(addr) = inner.cfg.udp {
            let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            // The kernel may cap it (net.core.rmem_max); what it grants is what it grants.
            let _ = sock.set_recv_buffer_size(inner.cfg.udp_rcvbuf);
            sock.bind(&addr.into())?;
            c.udp = sock.local_addr()?.as_socket();
            c.udp_inode = rustix::fs::fstat(&sock).ok().map(|st| st.st_ino);
            let buf = inner.cfg.max_message.max(512);
            c.server.add_datagram(UdpSocket::from(sock), buf, inner.cfg.udp_posted.max(1))?;
        }
        tracing::info!(tcp = ?c.tcp, udp = ?c.udp, dir = %inner.cfg.dir.display(), "syslog collector started");
        Ok(c)
    }

    /// The TCP input's address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The UDP input's address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
    }

    /// The counters now.
    pub fn stats(&self) -> SyslogStats {
        let mut s = self.server.service().inner.stats();
        s.udp_kernel_drops = self.udp_inode.and_then(udp_drops).unwrap_or(0);
        s
    }

    /// Closes every file; the next message for each reopens it (after `logrotate` moved it:
    /// SIGHUP).
    pub fn reopen(&self) {
        self.server.service().inner.reopen.store(true, Ordering::SeqCst);
    }

    /// The server's live counters with the collector's ([`SyslogStats::metrics`]), for
    /// `--metrics`.
    pub fn live_stats(&self) -> LiveStats {
        let inner = self.server.service().inner.clone();
        let (inode, tcp, udp) = (self.udp_inode, self.tcp.is_some(), self.udp.is_some());
        self.server.live_stats().with_extra(move || {
            let mut s = inner.stats();
            s.udp_kernel_drops = inode.and_then(udp_drops).unwrap_or(0);
            s.metrics(tcp, udp)
        })
    }

    /// Stops gracefully: the inputs stop (TCP connections are read to their end, as
    /// [`Server::stop`] does), then the writer writes everything queued and syncs.
    pub fn stop(mut self) -> SyslogReport {
        let kernel_drops = self.udp_inode.and_then(udp_drops).unwrap_or(0);
        let inner = self.server.service().inner.clone();
        let server = self.server.stop();
        inner.closed.store(true, Ordering::SeqCst);
        inner.queue.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let mut stats = inner.stats();
        stats.udp_kernel_drops = kernel_drops;
        tracing::info!(%stats, "syslog collector stopped");
        SyslogReport { server, stats }
    }
}

/// The `drops` column of the socket with this inode in `/proc/net/udp` or `/proc/net/udp6`.
fn udp_drops(inode: u64) -> Option<u64> {
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(9).and_then(|c| c.parse::<u64>().ok()) == Some(inode) {
                return cols.last().and_then(|c| c.parse().ok());
            }
        }
    }
    None
}
