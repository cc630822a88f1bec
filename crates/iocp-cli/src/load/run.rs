//! A run, whatever the engine: generator threads, the connect phase, the measured window, the
//! progress bar, CPU clocks, and the merge of every thread's counts into [`Totals`].
//!
//! [`Worker`] is what every engine's thread does around its own I/O loop (connect, wait for
//! the start, keep the window's clock, expire silent connections, reconnect, count faults), so
//! an engine file holds only how it moves bytes.

use std::io::{self, IsTerminal as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::args::Engine;
use super::plan::{Next, Plan, Session};
use super::report::{Fault, Latency, Recorder, Totals, new_histogram};
use super::{engine_epoll, engine_iocp};

/// How long the connect phase may take in all, per generator thread (outside scale mode).
pub(crate) const CONNECT_BUDGET: Duration = Duration::from_secs(5);

/// What one generator thread measured.
pub(super) struct ThreadOut {
    rec: Recorder,
    faults: [u64; Fault::COUNT],
    connected: u64,
    /// How long each successful first connect took, in nanoseconds.
    connect_hist: Histogram<u64>,
    reconnects: u64,
    cpu: Duration,
}

/// Runs `plan` with one session per connection from `make`, returning the merged totals.
///
/// # Errors
///
/// When the run cannot happen (no thread, no epoll) and when not one connection could be made.
pub(crate) fn run<S: Session>(
    plan: &Plan,
    make: impl Fn(usize) -> S,
    progress: bool,
    what: &str,
) -> anyhow::Result<Totals> {
    let progress_count = Arc::new(AtomicU64::new(0));
    let rss_before = plan.server_pid.and_then(process_rss);
    let connect_start = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut workers = Vec::with_capacity(plan.threads);
    for t in 0..plan.threads {
        let sessions: Vec<S> = (t..plan.connections).step_by(plan.threads).map(&make).collect();
        let (start_tx, start_rx) = mpsc::channel::<(Instant, Instant)>();
        let (plan, ready_tx, count) = (plan.clone(), ready_tx.clone(), Arc::clone(&progress_count));
        let join = thread::Builder::new()
            .name(format!("iocp-bench-{t}"))
            .spawn(move || {
                let w = Worker::new(&plan, t, &ready_tx, &start_rx, &count);
                let out = match plan.engine {
                    Engine::Epoll => engine_epoll::worker(w, sessions),
                    Engine::Iocp => engine_iocp::worker(w, sessions, iocp::BackendChoice::Uring),
                    Engine::IocpEpoll => {
                        engine_iocp::worker(w, sessions, iocp::BackendChoice::Epoll)
                    }
                };
                if out.is_err() {
                    let _ = ready_tx.send(()); // do not keep the others waiting
                }
                out
            })
            .context("spawning a generator thread")?;
        workers.push((start_tx, join));
    }
    drop(ready_tx);

    // Everyone connected (or gave up: the connect phase is bounded), then the clock starts.
    let connect_deadline = Instant::now() + plan.connect_budget + Duration::from_secs(1);
    for _ in 0..plan.threads {
        let left = connect_deadline.saturating_duration_since(Instant::now());
        if ready_rx.recv_timeout(left).is_err() {
            break; // a thread died or overran: it gets the start and finds it late
        }
    }
    let t0 = Instant::now();
    let connect_time = t0.duration_since(connect_start);
    let window = (t0 + plan.warmup, t0 + plan.warmup + plan.duration);
    for (start_tx, _) in &workers {
        let _ = start_tx.send(window);
    }

    let bar = progress_bar(progress, plan, what);
    let mut server_cpu0 = None;
    let mut rss_after = None;
    let mut last = (t0, 0u64);
    let mut rate = 0.0;
    let ended = loop {
        let now = Instant::now();
        if server_cpu0.is_none() && now >= window.0 {
            server_cpu0 = Some(plan.server_pid.map(process_cpu));
            // After the warm-up the server has accepted every connection it is going to.
            rss_after = plan.server_pid.and_then(process_rss);
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
    totals.connect_time = connect_time;
    let mut hist = new_histogram();
    let mut connect_hist = new_histogram();
    for (start_tx, join) in workers {
        drop(start_tx);
        let out = join.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        hist.add(&out.rec.hist).context("merging latency histograms")?;
        connect_hist.add(&out.connect_hist).context("merging connect histograms")?;
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
    if totals.connected == 0 {
        // Nothing was measured: a table of zeros would read like a result.
        bail!(
            "no connection to {} could be made ({} tried; errors: {})",
            plan.addr,
            plan.connections,
            totals.error_summary()
        );
    }
    totals.latency = Latency::of(&hist);
    totals.connect_latency = Latency::of(&connect_hist);
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        totals.server_rss = Some((a, b));
    }
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

/// Resident memory of process `pid` in bytes (VmRSS in /proc/PID/status); `None` if the
/// process is gone or the file is unreadable.
pub(crate) fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..].trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// Raises this process's soft limit on open files to the hard limit, so that as many
/// connections as the system allows can be opened (a failure is left to show as connect
/// errors).
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // "unlimited" is not a valid open-file limit: the kernel caps it at fs.nr_open.
    let max = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|c| c < max) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(max), maximum: limit.maximum });
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Connects to `addr` within `limit` (from `source` when given), non-blocking with
/// TCP_NODELAY.
fn connect(
    addr: SocketAddr,
    source: Option<SocketAddr>,
    limit: Duration,
) -> Result<TcpStream, Fault> {
    if limit.is_zero() {
        return Err(Fault::ConnectTimeout);
    }
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|_| Fault::ConnectOther)?;
    if let Some(from) = source {
        sock.bind(&SockAddr::from(from)).map_err(|_| Fault::ConnectOther)?;
    }
    sock.connect_timeout(&SockAddr::from(addr), limit).map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => Fault::ConnectRefused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Fault::ConnectTimeout,
        _ => Fault::ConnectOther,
    })?;
    sock.set_tcp_nodelay(true).map_err(|_| Fault::ConnectOther)?;
    sock.set_nonblocking(true).map_err(|_| Fault::ConnectOther)?;
    Ok(sock.into())
}

/// One connection of an engine, as [`Worker`] drives its life: opened on a connected socket,
/// closed on a fault, a timeout or a polite close (then opened again on a new socket).
pub(super) trait Link {
    /// The engine's I/O object (the epoll instance, the port).
    type Io;
    /// Takes over `sock` as connection `i` and sends the session's first requests. The outer
    /// error ends the run; the inner one is this connection's fault.
    fn open(
        &mut self,
        io: &Self::Io,
        i: usize,
        sock: TcpStream,
        now: Instant,
    ) -> anyhow::Result<Result<(), Fault>>;
    /// Closes the connection (nothing, if it is not open).
    fn close(&mut self, io: &Self::Io);
    /// Whether it is open.
    fn is_open(&self) -> bool;
    /// Whether a reply is owed, and when the connection last made progress.
    fn waiting(&self) -> (bool, Instant);
}

/// One generator thread's bookkeeping, shared by every engine: the engine calls
/// [`Worker::connect_all`], [`Worker::start`], [`Worker::open_all`], then loops on
/// [`Worker::tick`] until it says stop (settling each connection's outcome with
/// [`Worker::settle`]), and ends with [`Worker::finish`].
pub(super) struct Worker<'a> {
    plan: &'a Plan,
    /// This thread's number: it owns connections `thread`, `thread + threads`, …
    thread: usize,
    ready: &'a mpsc::Sender<()>,
    start: &'a mpsc::Receiver<(Instant, Instant)>,
    progress: &'a AtomicU64,
    faults: [u64; Fault::COUNT],
    connected: u64,
    connect_hist: Histogram<u64>,
    reconnects: u64,
    /// Connections that are up (or being restarted); the loop ends when none is left.
    live: usize,
    window: (Instant, Instant),
    cpu0: Option<Duration>,
    last_scan: Instant,
}

/// What the engine does next, from [`Worker::tick`].
pub(super) struct Tick {
    /// Whether to look for connections silent past the timeout ([`Worker::expire`]).
    pub(super) scan: bool,
    /// How long to wait for I/O at most.
    pub(super) wait: Duration,
}

impl<'a> Worker<'a> {
    fn new(
        plan: &'a Plan,
        thread: usize,
        ready: &'a mpsc::Sender<()>,
        start: &'a mpsc::Receiver<(Instant, Instant)>,
        progress: &'a AtomicU64,
    ) -> Worker<'a> {
        let now = Instant::now();
        Worker {
            plan,
            thread,
            ready,
            start,
            progress,
            faults: [0; Fault::COUNT],
            connected: 0,
            connect_hist: new_histogram(),
            reconnects: 0,
            live: 0,
            window: (now, now),
            cpu0: None,
            last_scan: now,
        }
    }

    /// Connects one socket per session, in turn, within the plan's connect budget in all (and
    /// at this thread's share of its connect rate); `wrap` makes the engine's connection from
    /// the session and the socket (`None`: the connect failed, its fault counted).
    pub(super) fn connect_all<S, C>(
        &mut self,
        sessions: Vec<S>,
        mut wrap: impl FnMut(usize, S, Option<TcpStream>) -> anyhow::Result<C>,
    ) -> anyhow::Result<Vec<C>> {
        let mut conns = Vec::with_capacity(sessions.len());
        let begin = Instant::now();
        let deadline = begin + self.plan.connect_budget;
        let threads = self.plan.threads as f64;
        for (i, session) in sessions.into_iter().enumerate() {
            if let Some(rate) = self.plan.connect_rate {
                // Pacing, not synchronisation: connect `i` is due at i / (rate / threads).
                let due = begin + Duration::from_secs_f64(i as f64 * threads / rate);
                thread::sleep(due.min(deadline).saturating_duration_since(Instant::now()));
            }
            let at = Instant::now();
            let limit = Duration::from_secs(2).min(deadline.saturating_duration_since(at));
            let source = self.plan.source(self.thread + i * self.plan.threads);
            let sock = connect(self.plan.addr, source, limit).map_err(|f| self.fault(f)).ok();
            if sock.is_some() {
                self.connected += 1;
                let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.connect_hist.saturating_record(ns.max(1));
            }
            conns.push(wrap(i, session, sock)?);
        }
        Ok(conns)
    }

    /// Says this thread is connected and waits for the window; returns the thread's recorder.
    pub(super) fn start(&mut self) -> anyhow::Result<Recorder> {
        let _ = self.ready.send(());
        let Ok(window) = self.start.recv_timeout(self.plan.connect_budget * 2) else {
            bail!("the run was abandoned before it started");
        };
        self.window = window;
        self.last_scan = Instant::now();
        Ok(Recorder::new(window))
    }

    /// The top of the loop: `None` once the window is over or no connection is left.
    pub(super) fn tick(&mut self) -> Option<Tick> {
        let now = Instant::now();
        if self.cpu0.is_none() && now >= self.window.0 {
            self.cpu0 = Some(thread_cpu());
        }
        if now >= self.window.1 || self.live == 0 {
            return None;
        }
        let scan = now.duration_since(self.last_scan) >= Duration::from_millis(100);
        if scan {
            self.last_scan = now;
        }
        let edge = if now < self.window.0 { self.window.0 } else { self.window.1 };
        let wait = (edge - now).clamp(Duration::from_millis(1), Duration::from_millis(100));
        Some(Tick { scan, wait })
    }

    /// Opens every connection that got a socket from [`Worker::connect_all`].
    pub(super) fn open_all<L: Link>(
        &mut self,
        io: &L::Io,
        conns: &mut [L],
        socks: Vec<Option<TcpStream>>,
        now: Instant,
    ) -> anyhow::Result<()> {
        for (i, (c, sock)) in conns.iter_mut().zip(socks).enumerate() {
            let Some(sock) = sock else { continue };
            self.live += 1;
            if let Err(f) = c.open(io, i, sock, now)? {
                c.close(io);
                self.lost(f);
            }
        }
        Ok(())
    }

    /// Closes, as timed out, every connection that owes a reply and has been silent longer
    /// than the timeout.
    pub(super) fn expire<L: Link>(&mut self, io: &L::Io, conns: &mut [L]) {
        for c in conns {
            let (waiting, last_progress) = c.waiting();
            if c.is_open() && waiting && last_progress.elapsed() > self.plan.timeout {
                c.close(io);
                self.lost(Fault::Timeout);
            }
        }
    }

    /// Acts on what happened on open connection `i`: nothing, a reconnect (after a polite
    /// close; not once the window is over), or a close on a fault.
    pub(super) fn settle<L: Link>(
        &mut self,
        io: &L::Io,
        c: &mut L,
        i: usize,
        outcome: Result<Next, Fault>,
        now: Instant,
    ) -> anyhow::Result<()> {
        match outcome {
            Ok(Next::Continue) => {}
            Ok(Next::Reconnect) => {
                c.close(io);
                if now >= self.window.1 {
                    self.live -= 1; // the run is over: no point connecting again
                    return Ok(());
                }
                self.reconnects += 1;
                let limit = self.plan.timeout.min(Duration::from_secs(2));
                match connect(self.plan.addr, None, limit) {
                    Ok(sock) => {
                        if let Err(f) = c.open(io, i, sock, now)? {
                            c.close(io);
                            self.lost(f);
                        }
                    }
                    Err(f) => self.lost(f),
                }
            }
            Err(f) => {
                c.close(io);
                self.lost(f);
            }
        }
        Ok(())
    }

    /// Counts a fault that does not end a live connection (a failed first connect).
    fn fault(&mut self, f: Fault) {
        self.faults[f as usize] += 1;
    }

    /// Counts a fault that ended a live connection.
    fn lost(&mut self, f: Fault) {
        self.fault(f);
        self.live -= 1;
    }

    /// Publishes the exchanges completed since the last call to the progress bar.
    pub(super) fn publish(&self, rec: &mut Recorder) {
        if rec.progress > 0 {
            self.progress.fetch_add(rec.progress, Ordering::Relaxed);
            rec.progress = 0;
        }
    }

    /// What this thread measured.
    pub(super) fn finish(self, rec: Recorder) -> ThreadOut {
        let cpu = self.cpu0.map_or(Duration::ZERO, |c0| thread_cpu().saturating_sub(c0));
        let Worker { faults, connected, connect_hist, reconnects, .. } = self;
        ThreadOut { rec, faults, connected, connect_hist, reconnects, cpu }
    }
}
