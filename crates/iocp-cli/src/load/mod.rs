//! The load generator behind `iocp bench echo` and `iocp bench http`.
//!
//! # Implementation
//!
//! Each generator thread owns a share of the connections and drives them from one hand-rolled,
//! non-blocking, level-triggered epoll loop (rustix): per readable event one `read` into a
//! thread-wide buffer, the protocol [`Session`] checks the bytes and queues the next request, and
//! one `write` sends it (EPOLLOUT is armed only while a write is short). That is two syscalls per
//! message plus a share of an `epoll_wait`, with no allocation, lock or wake-up on the path, so the
//! generator stays cheap beside the server it measures (the machine has 2 cores for both), and it
//! does not use the `iocp` library: a bug in the code under test cannot skew the peers' numbers.
//! Each report carries the generator's own CPU time per message (its threads' CPU clocks over the
//! measured window), so a reader can see how much of the machine it took.
//!
//! A run: connect (bounded by [`CONNECT_BUDGET`]), warm up (messages not counted), measure, stop.
//! Every wait has a deadline: connects time out, a connection that gets no reply for `timeout`
//! is counted as an error and dropped, and the loop ends at the end of the window, so a dead
//! server gives errors and a non-zero exit, never a hang.

mod echo;
mod engine_iocp;
mod http;
mod report;
mod server_metrics;

use std::io::{self, IsTerminal as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustix::event::epoll;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

// The in-process entry points for `iocp demo`: run_echo(&EchoLoad, progress) -> EchoReport and
// run_http(&HttpLoad, progress) -> HttpReport.
pub(crate) use echo::{EchoLoad, run_echo};
pub(crate) use http::{HttpLoad, run_http};
use report::{Fault, Totals};

/// How long the connect phase may take in all, per generator thread.
pub(crate) const CONNECT_BUDGET: Duration = Duration::from_secs(5);

/// `iocp bench …`: the load generator.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Ping-pong over C connections against an echo server
    Echo(EchoArgs),
    /// Keep-alive GET loop over C connections against an HTTP server
    Http(HttpArgs),
}

/// Options every load shares.
#[derive(Clone, Debug, Args)]
pub(crate) struct CommonArgs {
    /// Concurrent connections
    #[arg(long, short = 'c', default_value_t = 50)]
    pub(crate) connections: usize,
    /// Measured time, after the warm-up: 10s, 500ms, 2m or plain seconds
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Warm-up time before measuring (messages not counted)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// Generator threads (each owns a share of the connections)
    #[arg(long, short = 't', default_value_t = 1)]
    pub(crate) threads: usize,
    /// A connection waiting longer than this for a reply counts as an error and is dropped
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Also report this process's CPU time per message (from /proc/PID/stat, over the window)
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Print one JSON object line instead of a table (and no progress bar)
    #[arg(long)]
    pub(crate) json: bool,
    /// The generator's own I/O loop: epoll (default, independent of the code under test), or
    /// an iocp CompletionPort on io_uring (iocp) or on epoll (iocp-epoll)
    #[arg(long, value_enum, default_value_t = Engine::Epoll)]
    pub(crate) engine: Engine,
    /// The server's metrics endpoint (`iocp serve … --metrics ADDR`): scraped before and after
    /// the run, and what the server and its port saw is printed after the table
    #[arg(long, value_name = "URL")]
    pub(crate) metrics: Option<String>,
}

/// The generator's I/O loop.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, clap::ValueEnum)]
pub(crate) enum Engine {
    /// A hand-rolled level-triggered epoll loop (rustix).
    #[default]
    Epoll,
    /// An iocp CompletionPort on io_uring.
    Iocp,
    /// An iocp CompletionPort on its epoll backend.
    IocpEpoll,
}

impl Engine {
    /// The name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Engine::Epoll => "epoll",
            Engine::Iocp => "iocp",
            Engine::IocpEpoll => "iocp-epoll",
        }
    }
}

/// `iocp bench echo`.
#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
    /// The echo server
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Message size in bytes
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    #[command(flatten)]
    common: CommonArgs,
}

/// `iocp bench http`.
#[derive(Debug, Args)]
pub(crate) struct HttpArgs {
    /// What to GET, e.g. http://127.0.0.1:8080/file
    #[arg(long)]
    url: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// Runs `iocp bench …`: 0 when the run had no error, 1 when it had errors (the report is still
/// printed), 2 when it could not run at all.
pub(crate) fn cli(cmd: &BenchCommand) -> ExitCode {
    let common = match cmd {
        BenchCommand::Echo(a) => &a.common,
        BenchCommand::Http(a) => &a.common,
    };
    let scrape = match server_metrics::Scrape::start(common.metrics.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("iocp: error: --metrics: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        BenchCommand::Echo(a) => EchoLoad::new(a.addr, a.size, a.pipeline, &a.common)
            .and_then(|load| run_echo(&load, !a.common.json))
            .map(|r| (r.totals.failed(), if a.common.json { r.json() } else { r.table() })),
        BenchCommand::Http(a) => HttpLoad::new(&a.url, &a.common)
            .and_then(|load| run_http(&load, !a.common.json))
            .map(|r| (r.totals.failed(), if a.common.json { r.json() } else { r.table() })),
    };
    match result {
        Ok((failed, text)) => {
            print!("{text}");
            match scrape.map(|s| s.finish(common.json)) {
                Some(Ok(server)) => print!("{server}"),
                Some(Err(e)) => eprintln!("iocp: --metrics: {e:#}"),
                None => {}
            }
            if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("iocp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parses `10s`, `250ms`, `2m`, `1.5` (seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let x: f64 = num.trim().parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => x / 1000.0,
        "s" => x,
        "m" | "min" => x * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s, m)")),
    };
    if !(secs.is_finite() && (0.0..1e6).contains(&secs)) {
        return Err(format!("out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The shape of one run, whatever the protocol.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// Connections in all.
    pub(crate) connections: usize,
    /// Measured window.
    pub(crate) duration: Duration,
    /// Warm-up before the window.
    pub(crate) warmup: Duration,
    /// Generator threads.
    pub(crate) threads: usize,
    /// Per-reply deadline.
    pub(crate) timeout: Duration,
    /// A process whose CPU time over the window is reported per message.
    pub(crate) server_pid: Option<u32>,
    /// The generator's I/O loop.
    pub(crate) engine: Engine,
}

impl Plan {
    /// A plan for in-process use (the demo): `connections` to `addr`, measured for `duration`
    /// after `warmup`, one generator thread on the epoll engine, a 5 s reply timeout.
    pub(crate) fn basic(
        addr: SocketAddr,
        connections: usize,
        duration: Duration,
        warmup: Duration,
    ) -> Plan {
        Plan {
            addr,
            connections: connections.max(1),
            duration: duration.max(Duration::from_millis(1)),
            warmup,
            threads: 1,
            timeout: Duration::from_secs(5),
            server_pid: None,
            engine: Engine::Epoll,
        }
    }

    fn new(addr: SocketAddr, a: &CommonArgs) -> anyhow::Result<Plan> {
        if a.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if a.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if a.duration.is_zero() {
            bail!("--duration must be positive");
        }
        Ok(Plan {
            addr,
            connections: a.connections,
            duration: a.duration,
            warmup: a.warmup,
            threads: a.threads.min(a.connections),
            timeout: a.timeout.max(Duration::from_millis(10)),
            server_pid: a.server_pid,
            engine: a.engine,
        })
    }
}

/// What a protocol does on one connection. The engine owns the socket; the session owns the
/// protocol state and says what to send.
pub(crate) trait Session: Send + 'static {
    /// The connection is up: append the first request(s) to `tx`, stamped `now`.
    fn start(&mut self, now: Instant, tx: &mut Vec<u8>);
    /// `data` arrived. Record each completed exchange in `rec` and append what to send next
    /// to `tx`. An error is a protocol fault (garbled reply and the like).
    fn on_data(
        &mut self,
        data: &[u8],
        now: Instant,
        rec: &mut Recorder,
        tx: &mut Vec<u8>,
    ) -> Result<Next, Fault>;
    /// Whether a reply is owed (so a close or a silence is an error).
    fn waiting(&self) -> bool;
    /// The receive buffer a completion-based engine keeps per connection.
    fn recv_capacity(&self) -> usize {
        16 * 1024
    }
}

/// What the engine does after [`Session::on_data`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Next {
    /// Keep going on this connection.
    Continue,
    /// The server asked to close (`Connection: close`): connect again and start over.
    Reconnect,
}

/// Where a thread's completed exchanges go: only those that finish inside the window count.
#[derive(Debug)]
pub(crate) struct Recorder {
    window: (Instant, Instant),
    hist: Histogram<u64>,
    /// Exchanges completed in the window.
    msgs: u64,
    /// Payload bytes received in the window (echo: message bytes; HTTP: whole responses).
    bytes: u64,
    /// Exchanges completed since the last progress flush, window or not.
    progress: u64,
    /// HTTP status counts in the window, indexed by status code.
    statuses: Vec<u64>,
}

impl Recorder {
    fn new(window: (Instant, Instant)) -> Recorder {
        Recorder {
            window,
            hist: new_histogram(),
            msgs: 0,
            bytes: 0,
            progress: 0,
            statuses: Vec::new(),
        }
    }

    /// One exchange sent at `sent` finished at `now`, having received `bytes`.
    pub(crate) fn done(&mut self, sent: Instant, now: Instant, bytes: u64) {
        self.progress += 1;
        if now >= self.window.0 && now < self.window.1 {
            self.msgs += 1;
            self.bytes += bytes;
            let ns = u64::try_from(now.duration_since(sent).as_nanos()).unwrap_or(u64::MAX);
            self.hist.saturating_record(ns.max(1));
        }
    }

    /// Counts an HTTP status (in the window only, like [`Recorder::done`]).
    pub(crate) fn status(&mut self, now: Instant, code: u16) {
        if now >= self.window.0 && now < self.window.1 {
            let i = usize::from(code);
            if self.statuses.len() <= i {
                self.statuses.resize(i + 1, 0);
            }
            self.statuses[i] += 1;
        }
    }
}

/// A latency histogram in nanoseconds, 3 significant digits, up to an hour.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("invariant: valid static bounds")
}

/// One connection as the engine sees it.
struct Conn<S> {
    sock: Option<TcpStream>,
    session: S,
    tx: Vec<u8>,
    tx_off: usize,
    want_out: bool,
    last_progress: Instant,
}

/// What one generator thread measured.
struct ThreadOut {
    rec: Recorder,
    faults: [u64; Fault::COUNT],
    connected: u64,
    reconnects: u64,
    cpu: Duration,
}

/// Runs `plan` with one session per connection from `make`, returning the merged totals.
pub(crate) fn run<S: Session>(
    plan: &Plan,
    make: impl Fn(usize) -> S,
    progress: bool,
    what: &str,
) -> anyhow::Result<Totals> {
    let progress_count = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut workers = Vec::with_capacity(plan.threads);
    for t in 0..plan.threads {
        let sessions: Vec<S> = (t..plan.connections).step_by(plan.threads).map(&make).collect();
        let (start_tx, start_rx) = mpsc::channel::<(Instant, Instant)>();
        let (plan, ready_tx, count) = (plan.clone(), ready_tx.clone(), Arc::clone(&progress_count));
        let join = thread::Builder::new()
            .name(format!("iocp-bench-{t}"))
            .spawn(move || match plan.engine {
                Engine::Epoll => worker(&plan, sessions, &ready_tx, &start_rx, &count),
                Engine::Iocp | Engine::IocpEpoll => {
                    let backend = if plan.engine == Engine::Iocp {
                        iocp::BackendChoice::Uring
                    } else {
                        iocp::BackendChoice::Epoll
                    };
                    let out = engine_iocp::worker_iocp(
                        &plan, sessions, &ready_tx, &start_rx, &count, backend,
                    );
                    if out.is_err() {
                        let _ = ready_tx.send(()); // do not keep the others waiting
                    }
                    out
                }
            })
            .context("spawning a generator thread")?;
        workers.push((start_tx, join));
    }
    drop(ready_tx);

    // Everyone connected (or gave up: the connect phase is bounded), then the clock starts.
    let connect_deadline = Instant::now() + CONNECT_BUDGET + Duration::from_secs(1);
    for _ in 0..plan.threads {
        let left = connect_deadline.saturating_duration_since(Instant::now());
        if ready_rx.recv_timeout(left).is_err() {
            break; // a thread died or overran: it gets the start and finds it late
        }
    }
    let t0 = Instant::now();
    let window = (t0 + plan.warmup, t0 + plan.warmup + plan.duration);
    for (start_tx, _) in &workers {
        let _ = start_tx.send(window);
    }

    let bar = progress_bar(progress, plan, what);
    let mut server_cpu0 = None;
    let mut last = (t0, 0u64);
    let mut rate = 0.0;
    let ended = loop {
        let now = Instant::now();
        if server_cpu0.is_none() && now >= window.0 {
            server_cpu0 = Some(plan.server_pid.map(process_cpu));
        }
        if now >= window.1 || workers.iter().all(|(_, j)| j.is_finished()) {
            break now.min(window.1);
        }
        let n = progress_count.load(Ordering::Relaxed);
        if now.duration_since(last.0) >= Duration::from_millis(500) {
            rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, n);
        }
        bar.set_position(u64::try_from(now.duration_since(t0).as_millis()).unwrap_or(u64::MAX));
        let phase = if now < window.0 { "warm-up" } else { "measuring" };
        bar.set_message(format!("{phase}: {} msgs/s", crate::table::thousands(rate as u64)));
        let next_edge = if now < window.0 { window.0 } else { window.1 };
        thread::sleep(Duration::from_millis(100).min(next_edge - now));
    };
    let server_cpu1 = plan.server_pid.map(process_cpu);
    bar.finish_and_clear();

    let mut totals = Totals::new(plan);
    totals.window = ended.saturating_duration_since(window.0);
    let mut hist = new_histogram();
    for (start_tx, join) in workers {
        drop(start_tx);
        let out = join.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        hist.add(&out.rec.hist).context("merging latency histograms")?;
        totals.msgs += out.rec.msgs;
        totals.bytes += out.rec.bytes;
        for (i, n) in out.rec.statuses.iter().enumerate() {
            if *n > 0 {
                let code = u16::try_from(i).unwrap_or(u16::MAX);
                *totals.statuses.entry(code).or_insert(0) += n;
            }
        }
        for (acc, n) in totals.faults.iter_mut().zip(out.faults) {
            *acc += n;
        }
        totals.connected += out.connected;
        totals.reconnects += out.reconnects;
        totals.gen_cpu += out.cpu;
    }
    totals.set_latency(&hist);
    if let (Some(Some(Some(a))), Some(Some(b))) = (server_cpu0, server_cpu1) {
        totals.server_cpu = Some(b.saturating_sub(a));
    }
    Ok(totals)
}

fn progress_bar(show: bool, plan: &Plan, what: &str) -> ProgressBar {
    if !show || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total = u64::try_from((plan.warmup + plan.duration).as_millis()).unwrap_or(u64::MAX);
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!("{what} {{bar:30}} {{elapsed:>3}}/{}s {{msg}}", total.div_ceil(1000));
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// CPU time (user + system, all threads) of process `pid` from /proc/PID/stat; `None` if the
/// process is gone or the file is unreadable.
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest's field 0 is the state (field 3 of the file); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some(Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Connects to `addr` within `limit`, non-blocking with TCP_NODELAY.
fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, Fault> {
    if limit.is_zero() {
        return Err(Fault::ConnectTimeout);
    }
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|_| Fault::ConnectOther)?;
    sock.connect_timeout(&SockAddr::from(addr), limit).map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => Fault::ConnectRefused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Fault::ConnectTimeout,
        _ => Fault::ConnectOther,
    })?;
    sock.set_tcp_nodelay(true).map_err(|_| Fault::ConnectOther)?;
    sock.set_nonblocking(true).map_err(|_| Fault::ConnectOther)?;
    Ok(sock.into())
}

const IN: epoll::EventFlags = epoll::EventFlags::IN;

fn worker<S: Session>(
    plan: &Plan,
    sessions: Vec<S>,
    ready: &mpsc::Sender<()>,
    start: &mpsc::Receiver<(Instant, Instant)>,
    progress: &AtomicU64,
) -> anyhow::Result<ThreadOut> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?;
    let mut faults = [0u64; Fault::COUNT];
    let mut conns: Vec<Conn<S>> = Vec::with_capacity(sessions.len());
    let connect_deadline = Instant::now() + CONNECT_BUDGET;
    let mut connected = 0;
    for session in sessions {
        let limit =
            Duration::from_secs(2).min(connect_deadline.saturating_duration_since(Instant::now()));
        let sock = match connect(plan.addr, limit) {
            Ok(s) => Some(s),
            Err(f) => {
                faults[f as usize] += 1;
                None
            }
        };
        connected += u64::from(sock.is_some());
        conns.push(Conn {
            sock,
            session,
            tx: Vec::new(),
            tx_off: 0,
            want_out: false,
            last_progress: Instant::now(),
        });
    }
    let _ = ready.send(());
    let Ok(window) = start.recv_timeout(CONNECT_BUDGET * 2) else {
        bail!("the run was abandoned before it started");
    };

    let mut rec = Recorder::new(window);
    let now = Instant::now();
    let mut live = 0usize;
    for (i, c) in conns.iter_mut().enumerate() {
        let Some(sock) = &c.sock else { continue };
        let data = epoll::EventData::new_u64(i as u64);
        epoll::add(&ep, sock.as_fd(), data, IN).context("epoll_ctl add")?;
        c.session.start(now, &mut c.tx);
        c.last_progress = now;
        live += 1;
        if let Err(f) = flush(&ep, i, c) {
            faults[f as usize] += 1;
            live -= 1;
        }
    }

    let mut events = Vec::with_capacity(256);
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut cpu0 = None;
    let mut last_scan = now;
    let mut reconnects = 0u64;
    loop {
        let now = Instant::now();
        if cpu0.is_none() && now >= window.0 {
            cpu0 = Some(thread_cpu());
        }
        if now >= window.1 || live == 0 {
            break;
        }
        if now.duration_since(last_scan) >= Duration::from_millis(100) {
            last_scan = now;
            for (i, c) in conns.iter_mut().enumerate() {
                if c.sock.is_some()
                    && c.session.waiting()
                    && now.duration_since(c.last_progress) > plan.timeout
                {
                    faults[Fault::Timeout as usize] += 1;
                    drop_conn(&ep, i, c);
                    live -= 1;
                }
            }
        }
        let edge = if now < window.0 { window.0 } else { window.1 };
        let wait = (edge - now).min(Duration::from_millis(100));
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(wait.subsec_nanos()).max(1_000_000),
        };
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        let now = Instant::now();
        for ev in &events {
            let (flags, data) = (ev.flags, ev.data);
            let i = usize::try_from(data.u64()).unwrap_or(usize::MAX);
            let Some(c) = conns.get_mut(i) else { continue };
            if c.sock.is_none() {
                continue; // dropped earlier in this batch
            }
            let mut outcome = Ok(Next::Continue);
            if flags.contains(epoll::EventFlags::OUT) {
                outcome = flush(&ep, i, c).map(|()| Next::Continue);
            }
            if outcome.is_ok()
                && flags.intersects(IN | epoll::EventFlags::ERR | epoll::EventFlags::HUP)
            {
                let Some(sock) = &c.sock else { continue };
                outcome = match (&*sock).read(&mut rbuf) {
                    Ok(0) if c.session.waiting() => Err(Fault::Closed),
                    Ok(0) => Ok(Next::Reconnect),
                    Ok(n) => {
                        c.last_progress = now;
                        let r = c.session.on_data(&rbuf[..n], now, &mut rec, &mut c.tx);
                        match r {
                            Ok(next) => flush(&ep, i, c).map(|()| next),
                            Err(f) => Err(f),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Next::Continue),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Next::Continue),
                    Err(e) => Err(Fault::from_io(&e)),
                };
            }
            match outcome {
                Ok(Next::Continue) => {}
                Ok(Next::Reconnect) => {
                    drop_conn(&ep, i, c);
                    if now >= window.1 {
                        live -= 1; // the run is over: no point connecting again
                        continue;
                    }
                    reconnects += 1;
                    let limit = plan.timeout.min(Duration::from_secs(2));
                    match connect(plan.addr, limit) {
                        Ok(sock) => {
                            let data = epoll::EventData::new_u64(i as u64);
                            epoll::add(&ep, sock.as_fd(), data, IN).context("epoll_ctl add")?;
                            c.sock = Some(sock);
                            c.tx.clear();
                            c.tx_off = 0;
                            c.want_out = false;
                            c.last_progress = now;
                            c.session.start(now, &mut c.tx);
                            if let Err(f) = flush(&ep, i, c) {
                                faults[f as usize] += 1;
                                drop_conn(&ep, i, c);
                                live -= 1;
                            }
                        }
                        Err(f) => {
                            faults[f as usize] += 1;
                            live -= 1;
                        }
                    }
                }
                Err(f) => {
                    faults[f as usize] += 1;
                    drop_conn(&ep, i, c);
                    live -= 1;
                }
            }
        }
        if rec.progress > 0 {
            progress.fetch_add(rec.progress, Ordering::Relaxed);
            rec.progress = 0;
        }
    }
    let cpu = cpu0.map_or(Duration::ZERO, |c0| thread_cpu().saturating_sub(c0));
    Ok(ThreadOut { rec, faults, connected, reconnects, cpu })
}

/// Writes what `c.tx` holds; arms EPOLLOUT while the socket is full, disarms it once drained.
fn flush<S>(ep: &impl std::os::fd::AsFd, i: usize, c: &mut Conn<S>) -> Result<(), Fault> {
    let Some(sock) = &c.sock else { return Ok(()) };
    while c.tx_off < c.tx.len() {
        match (&*sock).write(&c.tx[c.tx_off..]) {
            Ok(0) => return Err(Fault::Closed),
            Ok(n) => c.tx_off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !c.want_out {
                    c.want_out = true;
                    let data = epoll::EventData::new_u64(i as u64);
                    epoll::modify(ep, sock.as_fd(), data, IN | epoll::EventFlags::OUT)
                        .map_err(|_| Fault::Io)?;
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Fault::from_io(&e)),
        }
    }
    c.tx.clear();
    c.tx_off = 0;
    if c.want_out {
        c.want_out = false;
        let data = epoll::EventData::new_u64(i as u64);
        epoll::modify(ep, sock.as_fd(), data, IN).map_err(|_| Fault::Io)?;
    }
    Ok(())
}

fn drop_conn<S>(ep: &impl std::os::fd::AsFd, _i: usize, c: &mut Conn<S>) {
    if let Some(sock) = c.sock.take() {
        let _ = epoll::delete(ep, sock.as_fd());
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::thread;
    use std::time::Duration;

    use super::{EchoLoad, Plan, parse_duration, run_echo};

    /// The demo's way in: a plan built in code, no progress bar, a report back.
    #[test]
    fn run_echo_in_process() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for s in listener.incoming().take(3) {
                let mut s = s.expect("accept");
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let plan = Plan::basic(addr, 3, Duration::from_millis(300), Duration::ZERO);
        let load = EchoLoad { plan, size: 32, pipeline: 2 };
        let report = run_echo(&load, false).expect("a run");
        assert_eq!(report.totals.errors(), 0, "{}", report.table());
        assert_eq!(report.totals.connected, 3);
        assert!(report.msgs_per_sec() > 0.0 && report.p99_us() > 0.0, "{}", report.table());
        assert!(report.json().starts_with(r#"{"bench":"echo","#));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
