//! `iocp bench chat`: N WebSocket clients in R rooms, each sending room messages at a set rate;
//! every message carries its sender and send time, so each receive gives one delivery latency.
//!
//! Clients are multiplexed over a few generator threads, each its own level-triggered epoll
//! loop (rustix) over non-blocking sockets with tungstenite's client protocol layer (not the
//! `iocp` library, so the peers' numbers cannot be skewed by the code under test). A thread
//! connects its clients a few at a time (a blocking connect and handshake, bounded by the
//! timeout) between polls, so early clients keep reading the presence events later joins cause.
//!
//! The rooms are `lobby` (room 0: the room `iocp serve chat` puts every client in at connect)
//! and `room1` … `room{R-1}`. A client of room 0 sends `join lobby` (for the server, a no-op
//! that answers `members` or `joined`); a client of another room joins it and leaves `lobby`,
//! and counts as ready when `left` comes. The run starts once every client is ready (or the
//! timeout passed); the warm-up sends but does not count; messages sent in the window count,
//! and each is owed to every ready member of its room (the sender too). After the window the
//! generator keeps reading until every owed delivery came or `--drain` passed: what did not
//! come is a drop. A client the server closes is counted as dropped.
//!
//! Message `k` of client `c` has the text `b<c> <k> <ns>` (padded with `x` to `--size`),
//! `<ns>` its send time in nanoseconds since the run's base instant.

use std::io::{self, ErrorKind, IsTerminal as _, Read as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustix::event::epoll;
use serde_json::Value;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::args::parse_duration;
use super::report::{Latency, new_histogram};
use super::run::process_cpu;
use crate::json::Json;
use crate::table::{self, Align};

/// `iocp bench chat`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ChatArgs {
    /// The chat's WebSocket endpoint
    #[arg(long, default_value = "ws://127.0.0.1:8090/ws")]
    pub(crate) url: String,
    /// Clients (WebSocket connections)
    #[arg(long, short = 'c', default_value_t = 100)]
    pub(crate) clients: usize,
    /// Rooms: lobby, room1, …; client i is in room i % R
    #[arg(long, short = 'r', default_value_t = 10)]
    pub(crate) rooms: usize,
    /// Messages per second each client sends (fractions allowed: 0.1 is one every 10 s)
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rate: f64,
    /// Bytes of each message's text
    #[arg(long, short = 's', default_value_t = 32)]
    pub(crate) size: usize,
    /// Measured time, after the warm-up: 10s, 500ms, 2m or plain seconds
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Warm-up time before measuring (messages sent but not counted)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// Generator threads (each owns a share of the clients)
    #[arg(long, short = 't', default_value_t = 2)]
    pub(crate) threads: usize,
    /// Bounds the setup (connect, handshake, join: per client and in all)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// After the window, how long to wait for deliveries still owed (later ones are drops)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) drain: Duration,
    /// Also report this process's CPU time per delivery (from /proc/PID/stat, over the window)
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Print one JSON object line instead of a table (and no progress bar)
    #[arg(long)]
    pub(crate) json: bool,
}

/// The `host:port` and path of a `ws://` URL.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let Some(rest) = url.strip_prefix("ws://") else {
        bail!("--url must be ws://HOST:PORT/PATH (wss is not supported), got {url:?}");
    };
    let (host, path) =
        rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("--url: resolving {host:?}"))?
        .next()
        .with_context(|| format!("--url: {host:?} has no address"))?;
    Ok((addr, path))
}

/// The room name of room `r`.
pub(crate) fn room_name(r: usize) -> String {
    if r == 0 { "lobby".to_owned() } else { format!("room{r}") }
}

/// What a chat run measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChatReport {
    pub(crate) url: String,
    pub(crate) clients: usize,
    pub(crate) rooms: usize,
    pub(crate) rate: f64,
    pub(crate) size: usize,
    pub(crate) threads: usize,
    pub(crate) warmup: Duration,
    /// Clients connected (handshake done).
    pub(crate) connected: u64,
    /// Clients ready (joined their room) when the run started.
    pub(crate) ready: u64,
    /// Connect, handshake and join of every client.
    pub(crate) setup: Duration,
    pub(crate) window: Duration,
    /// Messages sent in the window.
    pub(crate) sent: u64,
    /// Deliveries owed for them (each message times its room's ready members).
    pub(crate) expected: u64,
    /// Deliveries of the window's messages that came.
    pub(crate) deliveries: u64,
    pub(crate) latency: Latency,
    /// Connects or handshakes that failed.
    pub(crate) connect_errors: u64,
    /// Clients the server closed (or reset) after they were connected.
    pub(crate) clients_dropped: u64,
    /// `error` events the server sent (rate_limited, …).
    pub(crate) server_errors: u64,
    /// Frames that are not what the protocol says (bad JSON, a message text not ours).
    pub(crate) bad_frames: u64,
    pub(crate) gen_cpu: Duration,
    pub(crate) server_cpu: Option<Duration>,
}

impl ChatReport {
    /// Deliveries owed that did not come.
    pub(crate) fn drops(&self) -> u64 {
        self.expected.saturating_sub(self.deliveries)
    }

    /// Deliveries per second over the window.
    pub(crate) fn rate_per_sec(&self) -> f64 {
        let s = self.window.as_secs_f64();
        if s > 0.0 { self.deliveries as f64 / s } else { 0.0 }
    }

    fn per_delivery(&self, cpu: Duration) -> Option<f64> {
        (self.deliveries > 0).then(|| cpu.as_secs_f64() * 1e6 / self.deliveries as f64)
    }

    /// A run that lost something, failed somewhere or delivered nothing.
    pub(crate) fn failed(&self) -> bool {
        self.deliveries == 0
            || self.drops() > 0
            || self.connect_errors > 0
            || self.clients_dropped > 0
            || self.server_errors > 0
            || self.bad_frames > 0
            || self.ready < self.clients as u64
    }

    /// A plain-text table.
    pub(crate) fn table(&self) -> String {
        let r = |k: &str, v: String| vec![k.to_owned(), v];
        let mut rows = vec![
            r(
                "load",
                format!(
                    "{} WebSocket clients in {} rooms, {} msgs/s each, {} B texts",
                    self.clients, self.rooms, self.rate, self.size
                ),
            ),
            r("target", self.url.clone()),
            r(
                "clients",
                format!(
                    "{} ({} connected, {} ready; {} generator threads)",
                    self.clients, self.connected, self.ready, self.threads
                ),
            ),
            r("setup", format!("{:.2} s (connect, handshake, join)", self.setup.as_secs_f64())),
            r(
                "window",
                format!(
                    "{:.2} s after {:.1} s warm-up",
                    self.window.as_secs_f64(),
                    self.warmup.as_secs_f64()
                ),
            ),
            r("messages sent", table::thousands(self.sent)),
            r("deliveries", table::thousands(self.deliveries)),
            r("deliveries/s", table::thousands(self.rate_per_sec().round() as u64)),
            r(
                "latency µs",
                format!(
                    "p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  mean {:.0}",
                    self.latency.p50,
                    self.latency.p99,
                    self.latency.p999,
                    self.latency.max,
                    self.latency.mean
                ),
            ),
            r(
                "drops",
                format!(
                    "{} of {} owed; {} clients dropped by the server",
                    self.drops(),
                    self.expected,
                    self.clients_dropped
                ),
            ),
            r(
                "errors",
                format!(
                    "{} connect, {} server error events, {} bad frames",
                    self.connect_errors, self.server_errors, self.bad_frames
                ),
            ),
        ];
        if let Some(g) = self.per_delivery(self.gen_cpu) {
            rows.push(r("generator CPU µs/delivery", format!("{g:.3}")));
        }
        if let Some(s) = self.server_cpu.and_then(|c| self.per_delivery(c)) {
            rows.push(r("server CPU µs/delivery", format!("{s:.3}")));
        }
        table::render(None, &rows, &[Align::Left, Align::Left], "  ")
    }

    /// One JSON object line (with the newline).
    pub(crate) fn json(&self) -> String {
        let opt =
            |x: Option<f64>| x.map_or(Json::Null, |v| Json::Num((v * 1000.0).round() / 1000.0));
        let l = &self.latency;
        let fields = vec![
            ("bench", Json::str("chat")),
            ("url", Json::str(self.url.clone())),
            ("clients", Json::Int(self.clients as u64)),
            ("rooms", Json::Int(self.rooms as u64)),
            ("rate_per_client", Json::Num(self.rate)),
            ("size", Json::Int(self.size as u64)),
            ("threads", Json::Int(self.threads as u64)),
            ("connected", Json::Int(self.connected)),
            ("ready", Json::Int(self.ready)),
            ("setup_s", Json::Num((self.setup.as_secs_f64() * 1000.0).round() / 1000.0)),
            ("window_s", Json::Num((self.window.as_secs_f64() * 1000.0).round() / 1000.0)),
            ("sent", Json::Int(self.sent)),
            ("expected", Json::Int(self.expected)),
            ("deliveries", Json::Int(self.deliveries)),
            ("rate", Json::num1(self.rate_per_sec())),
            (
                "latency_us",
                Json::Obj(vec![
                    ("mean", Json::num1(l.mean)),
                    ("p50", Json::num1(l.p50)),
                    ("p99", Json::num1(l.p99)),
                    ("p999", Json::num1(l.p999)),
                    ("max", Json::num1(l.max)),
                ]),
            ),
            ("drops", Json::Int(self.drops())),
            ("clients_dropped", Json::Int(self.clients_dropped)),
            ("connect_errors", Json::Int(self.connect_errors)),
            ("server_errors", Json::Int(self.server_errors)),
            ("bad_frames", Json::Int(self.bad_frames)),
            ("gen_cpu_us_per_delivery", opt(self.per_delivery(self.gen_cpu))),
            ("server_cpu_us_per_delivery", opt(self.server_cpu.and_then(|c| self.per_delivery(c)))),
        ];
        format!("{}\n", Json::Obj(fields))
    }
}

/// What the threads share.
struct Shared {
    base: Instant,
    addr: SocketAddr,
    path: String,
    args: ChatArgs,
    /// Ready members per room.
    members: Vec<AtomicU64>,
    ready: AtomicUsize,
    /// Clients whose connect or handshake failed.
    failed: AtomicUsize,
    /// Clients connected.
    connected: AtomicUsize,
    /// Set when the run is called off (not one client connected).
    abort: AtomicBool,
    /// The run's start in ns since `base` (`u64::MAX` until it starts).
    start_ns: AtomicU64,
    expected: AtomicU64,
    received: AtomicU64,
    /// Deliveries seen at all (the progress bar).
    progress: AtomicU64,
}

impl Shared {
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One thread's counts.
struct ThreadOut {
    hist: Histogram<u64>,
    connected: u64,
    connect_errors: u64,
    dropped: u64,
    server_errors: u64,
    bad_frames: u64,
    sent: u64,
    cpu: Duration,
}

/// Runs the load. With `progress`, a bar on stderr (only on a terminal).
pub(crate) fn run_chat(args: &ChatArgs, progress: bool) -> anyhow::Result<ChatReport> {
    if args.clients == 0 || args.rooms == 0 || args.threads == 0 {
        bail!("--clients, --rooms and --threads must be at least 1");
    }
    if args.rooms > args.clients {
        bail!("--rooms {} is more than --clients {}", args.rooms, args.clients);
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 10_000.0) {
        bail!("--rate must be more than 0 and at most 10000 messages per second per client");
    }
    if !(24..=16_000).contains(&args.size) {
        bail!("--size must be 24 to 16000 bytes");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let (addr, path) = parse_url(&args.url)?;
    let threads = args.threads.min(args.clients);
    let shared = Arc::new(Shared {
        base: Instant::now(),
        addr,
        path,
        args: args.clone(),
        members: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        start_ns: AtomicU64::new(u64::MAX),
        expected: AtomicU64::new(0),
        received: AtomicU64::new(0),
        progress: AtomicU64::new(0),
    });
    let mut joins = Vec::with_capacity(threads);
    for t in 0..threads {
        let ids: Vec<usize> = (t..args.clients).step_by(threads).collect();
        let sh = Arc::clone(&shared);
        joins.push(
            thread::Builder::new()
                .name(format!("iocp-bench-chat-{t}"))
                .spawn(move || worker(&sh, ids))
                .context("spawning a generator thread")?,
        );
    }

    // Setup: every client ready, or every thread done trying, or the timeout.
    let setup_deadline = Instant::now() + args.timeout;
    loop {
        let ready = shared.ready.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let done = ready + failed >= args.clients || joins.iter().all(|j| j.is_finished());
        if done || Instant::now() >= setup_deadline {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    if shared.connected.load(Ordering::Relaxed) == 0 {
        shared.abort.store(true, Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        for j in joins {
            let _ = j.join();
        }
        bail!("no client could connect to {} ({} tried, {failed} failed)", args.url, args.clients);
    }
    let t0 = Instant::now();
    let setup = t0.duration_since(shared.base);
    let ready = shared.ready.load(Ordering::Relaxed) as u64;
    shared.start_ns.store(shared.ns(t0), Ordering::Release);
    let (w0, w1) = (t0 + args.warmup, t0 + args.warmup + args.duration);

    let bar = progress_bar(progress, args);
    let mut cpu0 = None;
    let mut cpu1 = None;
    let mut last = (t0, 0u64);
    let mut rate = 0.0;
    loop {
        let now = Instant::now();
        if cpu0.is_none() && now >= w0 {
            cpu0 = Some(args.server_pid.and_then(process_cpu));
        }
        if cpu1.is_none() && now >= w1 {
            cpu1 = Some(args.server_pid.and_then(process_cpu));
        }
        if joins.iter().all(|j| j.is_finished()) {
            break;
        }
        let n = shared.progress.load(Ordering::Relaxed);
        if now.duration_since(last.0) >= Duration::from_millis(500) {
            rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, n);
        }
        bar.set_position(u64::try_from(now.duration_since(t0).as_millis()).unwrap_or(u64::MAX));
        let phase = if now < w0 {
            "warm-up"
        } else if now < w1 {
            "measuring"
        } else {
            "draining"
        };
        bar.set_message(format!("{phase}: {} deliveries/s", table::thousands(rate as u64)));
        thread::sleep(Duration::from_millis(20));
    }
    bar.finish_and_clear();

    let mut report = ChatReport {
        url: args.url.clone(),
        clients: args.clients,
        rooms: args.rooms,
        rate: args.rate,
        size: args.size,
        threads,
        warmup: args.warmup,
        ready,
        setup,
        window: args.duration,
        expected: shared.expected.load(Ordering::Relaxed),
        deliveries: shared.received.load(Ordering::Relaxed),
        ..ChatReport::default()
    };
    let mut hist = new_histogram();
    for j in joins {
        let out = j.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        hist.add(&out.hist).context("merging latency histograms")?;
        report.connected += out.connected;
        report.connect_errors += out.connect_errors;
        report.clients_dropped += out.dropped;
        report.server_errors += out.server_errors;
        report.bad_frames += out.bad_frames;
        report.sent += out.sent;
        report.gen_cpu += out.cpu;
    }
    if report.connected == 0 {
        bail!(
            "no client could connect to {} ({} tried, {} connect errors)",
            args.url,
            args.clients,
            report.connect_errors
        );
    }
    report.latency = Latency::of(&hist);
    if let (Some(Some(a)), Some(Some(b))) = (cpu0, cpu1) {
        report.server_cpu = Some(b.saturating_sub(a));
    }
    Ok(report)
}

fn progress_bar(show: bool, args: &ChatArgs) -> ProgressBar {
    if !show || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total = u64::try_from((args.warmup + args.duration).as_millis()).unwrap_or(u64::MAX);
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!("chat {{bar:30}} {{elapsed:>3}}/{}s {{msg}}", total.div_ceil(1000));
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// One client.
struct Client {
    id: usize,
    room: usize,
    ws: Option<WebSocket<Wire>>,
    ready: bool,
    want_out: bool,
    seq: u64,
}

/// What one frame was.
enum Frame<'a> {
    /// A room message: its text.
    Msg(&'a str),
    /// Presence (join, leave, nick): nothing to do.
    Presence,
    /// Anything else, parsed.
    Other(Value),
    Bad,
}

/// Classifies a text frame cheaply: the events a run is made of (messages, presence) are
/// recognised by their compact JSON (`serde_json` writes `"type":"msg"` and the text with no
/// escape for the generator's texts); anything else is parsed.
fn classify(t: &str) -> Frame<'_> {
    if t.contains(r#""type":"msg""#) {
        const K: &str = r#""text":""#;
        if let Some(i) = t.find(K) {
            let rest = &t[i + K.len()..];
            if let Some(j) = rest.find('"') {
                return Frame::Msg(&rest[..j]);
            }
        }
        return Frame::Bad;
    }
    if t.contains(r#""type":"join""#)
        || t.contains(r#""type":"leave""#)
        || t.contains(r#""type":"nick""#)
    {
        return Frame::Presence;
    }
    serde_json::from_str(t).map_or(Frame::Bad, Frame::Other)
}

/// The send time (ns since the base) of one of our message texts, `b<c> <k> <ns>…`.
fn sent_ns(text: &str) -> Option<u64> {
    let mut it = text.strip_prefix('b')?.split(' ');
    let _client: usize = it.next()?.parse().ok()?;
    let _seq: u64 = it.next()?.parse().ok()?;
    it.next()?.trim_end_matches('x').parse().ok()
}

/// One generator thread: connect its clients (a few per turn, between polls), wait for the
/// start, send on schedule, read everything, drain after the window.
fn worker(sh: &Shared, ids: Vec<usize>) -> anyhow::Result<ThreadOut> {
    let args = &sh.args;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?;
    let mut clients: Vec<Client> = ids
        .iter()
        .map(|&id| Client {
            id,
            room: id % args.rooms,
            ws: None,
            ready: false,
            want_out: false,
            seq: 0,
        })
        .collect();
    let mut out = ThreadOut {
        hist: new_histogram(),
        connected: 0,
        connect_errors: 0,
        dropped: 0,
        server_errors: 0,
        bad_frames: 0,
        sent: 0,
        cpu: Duration::ZERO,
    };
    let room_names: Vec<String> = (0..args.rooms).map(room_name).collect();
    let setup_deadline = sh.base + args.timeout;
    let mut next_connect = 0usize;
    let mut events = Vec::with_capacity(256);
    // Sending: this thread's clients in turn, one every `interval`.
    let n = clients.len();
    let interval_ns = 1e9 / (args.rate * n as f64);
    let mut cursor = 0usize;
    let mut sends_done = 0u64;
    let (mut start, mut w0, mut w1, mut end) = (u64::MAX, u64::MAX, u64::MAX, u64::MAX);
    let warmup_ns = u64::try_from(args.warmup.as_nanos()).unwrap_or(u64::MAX);
    let window_ns = u64::try_from(args.duration.as_nanos()).unwrap_or(u64::MAX);
    let grace_ns = u64::try_from(args.drain.as_nanos()).unwrap_or(u64::MAX);
    let mut cpu0 = None;
    // Counts not yet published to `sh`.
    let (mut expected, mut received, mut progress) = (0u64, 0u64, 0u64);
    let mut text = String::with_capacity(args.size + 64);
    let mut set_up_said = false;
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        let now_ns = sh.ns(now);
        if start == u64::MAX {
            start = sh.start_ns.load(Ordering::Acquire);
            if start != u64::MAX {
                w0 = start + warmup_ns;
                w1 = w0 + window_ns;
                end = w1 + grace_ns;
            }
        }
        if cpu0.is_none() && now_ns >= w0 {
            cpu0 = Some(thread_cpu());
        }
        // Connect a few more (before the start, within the setup budget).
        if next_connect < n && start == u64::MAX && now < setup_deadline {
            for _ in 0..8 {
                if next_connect >= n {
                    break;
                }
                let c = &mut clients[next_connect];
                match connect(sh, setup_deadline) {
                    Ok(ws) => {
                        out.connected += 1;
                        sh.connected.fetch_add(1, Ordering::Relaxed);
                        epoll::add(
                            &ep,
                            ws.get_ref().sock.as_fd(),
                            epoll::EventData::new_u64(next_connect as u64),
                            epoll::EventFlags::IN,
                        )
                        .context("epoll_ctl add")?;
                        c.ws = Some(ws);
                        let join = format!(r#"{{"type":"join","room":"{}"}}"#, room_names[c.room]);
                        send(&ep, next_connect, c, join, &mut out);
                        if c.room != 0 {
                            send(
                                &ep,
                                next_connect,
                                c,
                                r#"{"type":"leave","room":"lobby"}"#.to_owned(),
                                &mut out,
                            );
                        }
                    }
                    Err(_) => {
                        out.connect_errors += 1;
                        sh.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next_connect += 1;
            }
        } else if !set_up_said {
            set_up_said = true;
            let untried = n - next_connect; // out of time
            out.connect_errors += untried as u64;
            sh.failed.fetch_add(untried, Ordering::Relaxed);
            next_connect = n;
        }
        // Send what is due (from the start until the window ends).
        if start != u64::MAX {
            loop {
                let due = start + (sends_done as f64 * interval_ns) as u64;
                if due > now_ns || due >= w1 {
                    break;
                }
                sends_done += 1;
                let i = cursor;
                cursor = (cursor + 1) % n;
                let c = &mut clients[i];
                if !c.ready || c.ws.is_none() {
                    continue;
                }
                let at = sh.ns(Instant::now());
                text.clear();
                use std::fmt::Write as _;
                let _ = write!(text, "b{} {} {}", c.id, c.seq, at);
                while text.len() < args.size {
                    text.push('x');
                }
                c.seq += 1;
                if at >= w0 && at < w1 {
                    out.sent += 1;
                    expected += sh.members[c.room].load(Ordering::Relaxed);
                }
                let msg =
                    format!(r#"{{"type":"msg","room":"{}","text":"{text}"}}"#, room_names[c.room]);
                send(&ep, i, c, msg, &mut out);
            }
        }
        // Publish.
        if expected > 0 {
            sh.expected.fetch_add(expected, Ordering::Relaxed);
            expected = 0;
        }
        if received > 0 {
            sh.received.fetch_add(received, Ordering::Relaxed);
            received = 0;
        }
        if progress > 0 {
            sh.progress.fetch_add(progress, Ordering::Relaxed);
            progress = 0;
        }
        // The end: past the window, and every owed delivery came (or the grace is over).
        if start != u64::MAX && now_ns >= w1 {
            if now_ns >= end {
                break;
            }
            let all_in = sh.received.load(Ordering::Relaxed) >= sh.expected.load(Ordering::Relaxed);
            if all_in && now_ns >= w1 + 50_000_000 {
                break;
            }
        }
        if sh.abort.load(Ordering::Relaxed) {
            break; // never started: the main thread gave up
        }
        // Wait for I/O until the next send is due (at most 10 ms; not at all while connecting).
        let wait_ns = if next_connect < n && start == u64::MAX {
            0
        } else if start != u64::MAX && now_ns < w1 {
            let due = start + (sends_done as f64 * interval_ns) as u64;
            due.saturating_sub(sh.ns(Instant::now())).min(10_000_000)
        } else {
            10_000_000
        };
        let ts = rustix::time::Timespec { tv_sec: 0, tv_nsec: wait_ns as i64 };
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for ev in &events {
            let (flags, data) = (ev.flags, ev.data);
            let i = usize::try_from(data.u64()).unwrap_or(usize::MAX);
            let Some(c) = clients.get_mut(i) else { continue };
            if c.ws.is_none() {
                continue;
            }
            if flags.contains(epoll::EventFlags::OUT) {
                flush(&ep, i, c, &mut out);
            }
            let Some(ws) = c.ws.as_mut() else { continue };
            let mut lost = !matches!(fill(ws, &mut scratch), Ok(true));
            while !lost {
                match ws.read() {
                    Ok(Message::Text(t)) => match classify(t.as_str()) {
                        Frame::Msg(body) => {
                            let Some(sent) = sent_ns(body) else {
                                out.bad_frames += 1;
                                continue;
                            };
                            progress += 1;
                            if sent >= w0 && sent < w1 {
                                received += 1;
                                let lat = sh.ns(Instant::now()).saturating_sub(sent);
                                out.hist.saturating_record(lat.max(1));
                            }
                        }
                        Frame::Presence => {}
                        Frame::Other(v) => {
                            let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
                            let room = v.get("room").and_then(Value::as_str).unwrap_or("");
                            let ready_now = match ty {
                                "left" => c.room != 0 && room == "lobby",
                                "joined" | "members" => c.room == 0 && room == "lobby",
                                "error" => {
                                    out.server_errors += 1;
                                    false
                                }
                                _ => false,
                            };
                            if ready_now && !c.ready {
                                c.ready = true;
                                if start == u64::MAX {
                                    sh.members[c.room].fetch_add(1, Ordering::Relaxed);
                                    sh.ready.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Frame::Bad => out.bad_frames += 1,
                    },
                    Ok(Message::Close(_)) => {
                        lost = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        lost = true;
                        break;
                    }
                }
            }
            if lost {
                drop_client(&ep, c, &mut out);
            }
        }
    }
    out.cpu = cpu0.map_or(Duration::ZERO, |c| thread_cpu().saturating_sub(c));
    // Close politely; the server's answers are not waited for.
    for c in &mut clients {
        if let Some(mut ws) = c.ws.take() {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }
    Ok(out)
}

/// Connects and shakes hands (blocking, within the deadline), then turns non-blocking.
/// A client's socket as tungstenite sees it: after the handshake, reads come from what the
/// loop read off the socket (one `read` per readiness event; "would block" once it is used up,
/// without a syscall); writes go straight to the socket.
struct Wire {
    sock: TcpStream,
    input: Vec<u8>,
    off: usize,
    /// During the (blocking) handshake: read the socket itself.
    direct: bool,
}

impl io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.off < self.input.len() {
            let n = buf.len().min(self.input.len() - self.off);
            buf[..n].copy_from_slice(&self.input[self.off..self.off + n]);
            self.off += n;
            if self.off == self.input.len() {
                self.input.clear();
                self.off = 0;
            }
            return Ok(n);
        }
        if self.direct {
            return (&self.sock).read(buf);
        }
        Err(ErrorKind::WouldBlock.into())
    }
}

impl io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.sock).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One `read` of the client's socket into its [`Wire`]: `Ok(false)` at end of stream.
fn fill(ws: &mut WebSocket<Wire>, scratch: &mut [u8]) -> io::Result<bool> {
    let wire = ws.get_mut();
    match (&wire.sock).read(scratch) {
        Ok(0) => Ok(false),
        Ok(n) => {
            wire.input.extend_from_slice(&scratch[..n]);
            Ok(true)
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(true),
        Err(e) => Err(e),
    }
}

fn connect(sh: &Shared, deadline: Instant) -> anyhow::Result<WebSocket<Wire>> {
    let limit = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(5));
    if limit.is_zero() {
        bail!("out of time");
    }
    let sock = TcpStream::connect_timeout(&sh.addr, limit)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(limit))?;
    sock.set_write_timeout(Some(limit))?;
    let url = format!("ws://{}{}", sh.addr, sh.path);
    let cfg = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0);
    let wire = Wire { sock, input: Vec::new(), off: 0, direct: true };
    let (mut ws, _) = tungstenite::client::client_with_config(url.as_str(), wire, Some(cfg))
        .map_err(|e| anyhow::anyhow!("handshake: {e}"))?;
    let wire = ws.get_mut();
    wire.direct = false;
    wire.sock.set_nonblocking(true)?;
    Ok(ws)
}

/// Sends one text frame; what the socket does not take stays in tungstenite's buffer and
/// goes out on EPOLLOUT.
fn send(ep: &impl AsFd, i: usize, c: &mut Client, text: String, out: &mut ThreadOut) {
    let Some(ws) = c.ws.as_mut() else { return };
    match ws.send(Message::text(text)) {
        Ok(()) => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
            if !c.want_out {
                c.want_out = true;
                let flags = epoll::EventFlags::IN | epoll::EventFlags::OUT;
                let _ = epoll::modify(
                    ep,
                    ws.get_ref().sock.as_fd(),
                    epoll::EventData::new_u64(i as u64),
                    flags,
                );
            }
        }
        Err(_) => drop_client(ep, c, out),
    }
}

/// Writes what tungstenite holds; disarms EPOLLOUT once it is all out.
fn flush(ep: &impl AsFd, i: usize, c: &mut Client, out: &mut ThreadOut) {
    let Some(ws) = c.ws.as_mut() else { return };
    match ws.flush() {
        Ok(()) => {
            if c.want_out {
                c.want_out = false;
                let data = epoll::EventData::new_u64(i as u64);
                let _ = epoll::modify(ep, ws.get_ref().sock.as_fd(), data, epoll::EventFlags::IN);
            }
        }
        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
        Err(_) => drop_client(ep, c, out),
    }
}

/// The server closed or reset the client.
fn drop_client(ep: &impl AsFd, c: &mut Client, out: &mut ThreadOut) {
    if let Some(ws) = c.ws.take() {
        let _ = epoll::delete(ep, ws.get_ref().sock.as_fd());
        out.dropped += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::{Frame, classify, parse_url, room_name, sent_ns};

    #[test]
    fn frames_are_classified() {
        let m = r#"{"from":"guest1","room":"room3","text":"b7 2 12345xxx","ts":1,"type":"msg"}"#;
        assert!(matches!(classify(m), Frame::Msg("b7 2 12345xxx")));
        assert_eq!(sent_ns("b7 2 12345xxx"), Some(12345));
        assert_eq!(sent_ns("hello"), None);
        assert!(matches!(
            classify(r#"{"nick":"a","room":"x","ts":1,"type":"join"}"#),
            Frame::Presence
        ));
        assert!(matches!(classify(r#"{"room":"lobby","type":"left"}"#), Frame::Other(_)));
        assert!(matches!(classify("not json"), Frame::Bad));
    }

    #[test]
    fn urls_and_rooms() {
        let (a, p) = parse_url("ws://127.0.0.1:8090/ws").expect("a url");
        assert_eq!((a.port(), p.as_str()), (8090, "/ws"));
        assert!(parse_url("wss://127.0.0.1:1/").is_err());
        assert_eq!((room_name(0), room_name(3)), ("lobby".to_owned(), "room3".to_owned()));
    }
}
