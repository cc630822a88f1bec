//! `iocp demo`: post→get throughput, then the echo, HTTP and chat servers and the syslog
//! collector under the load generator, on each backend.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use iocp::{BackendChoice, BackendKind, CompletionKey, CompletionPort};
use iocp_http::{Config as SiteConfig, Site};
use iocp_server::syslog::{Collector, SyslogConfig, Template};
use iocp_server::{ChatConfig, ChatHub, Echo as EchoService, Http, Server, ServerConfig};

use crate::load::{
    ChatArgs, EchoLoad, HttpLoad, Plan, SyslogLoad, process_cpu, run_chat, run_echo, run_http,
    run_syslog, thread_cpu,
};

use crate::json::Json;
use crate::table::{self, Align};

/// Options of `iocp demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Backend(s) to run: auto, uring, epoll or all [default: $IOCP_BACKEND, else all]
    #[arg(long, value_name = "auto|uring|epoll|all", value_parser = parse_selection)]
    backend: Option<Selection>,
    /// Seconds for each measurement (per backend: post→get, echo, http, chat, syslog; the
    /// syslog run also stops at 400,000 messages)
    #[arg(long, value_name = "S", default_value_t = 2.0, value_parser = parse_seconds)]
    seconds: f64,
    /// Print the probe report and one line per backend as JSON on stdout (tables go to stderr)
    #[arg(long)]
    json: bool,
}

/// Which backends to run.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Selection {
    /// Every available backend: io_uring when the probe passes, and epoll.
    All,
    /// One backend.
    One(BackendChoice),
}

fn parse_selection(s: &str) -> Result<Selection, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(Selection::All);
    }
    s.parse::<BackendChoice>().map(Selection::One).map_err(|e| format!("{e} (or all)"))
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let x: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if x.is_finite() && (0.05..=600.0).contains(&x) {
        Ok(x)
    } else {
        Err("expected a number of seconds between 0.05 and 600".into())
    }
}

/// The selection: `--backend`, else a non-empty `IOCP_BACKEND`, else all.
fn selection(flag: Option<Selection>) -> anyhow::Result<Selection> {
    if let Some(s) = flag {
        return Ok(s);
    }
    match std::env::var("IOCP_BACKEND") {
        Ok(v) if !v.trim().is_empty() => {
            parse_selection(&v).map_err(|e| anyhow!("IOCP_BACKEND: {e}"))
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Selection::All),
        Err(e) => Err(anyhow!("IOCP_BACKEND: {e}")),
    }
}

/// What one backend measured.
#[derive(Debug)]
struct Outcome {
    backend: BackendKind,
    posted: PostGet,
    echo: LoadRun,
    http: LoadRun,
    chat: LoadRun,
    syslog: SyslogRun,
}

/// Runs `iocp demo`.
pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let sel = selection(args.backend)?;
    let dur = Duration::from_secs_f64(args.seconds);
    let report = iocp::probe();

    // With --json, stdout carries only JSON lines; the human report goes to stderr.
    let mut human: Box<dyn Write> =
        if args.json { Box::new(io::stderr()) } else { Box::new(io::stdout()) };
    let mut json_out = io::stdout();
    human.write_all(crate::probe::human(&report).as_bytes())?;
    writeln!(human)?;
    human.flush()?;
    if args.json {
        writeln!(json_out, "{}", crate::probe::to_json(&report))?;
        json_out.flush()?;
    }

    let choices = match sel {
        Selection::All if report.kind() == BackendKind::Uring => {
            vec![BackendChoice::Uring, BackendChoice::Epoll]
        }
        Selection::All => {
            eprintln!(
                "note: skipping io_uring: {}",
                report.uring().err().unwrap_or(report.reason())
            );
            vec![BackendChoice::Epoll]
        }
        // Resolve Auto here, so that progress lines name the backend.
        Selection::One(BackendChoice::Auto) if report.kind() == BackendKind::Uring => {
            vec![BackendChoice::Uring]
        }
        Selection::One(BackendChoice::Auto) => vec![BackendChoice::Epoll],
        Selection::One(c) => vec![c],
    };

    let docroot = Docroot::create()?;
    let mut outcomes = Vec::new();
    for choice in choices {
        let o = run_backend(choice, dur, &docroot.0, !args.json)?;
        if args.json {
            writeln!(json_out, "{}", outcome_json(&o))?;
            json_out.flush()?;
        }
        outcomes.push(o);
    }

    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            vec![
                o.backend.to_string(),
                table::thousands(o.posted.per_sec().round() as u64),
                table::thousands(o.echo.rate.round() as u64),
                table::thousands(o.echo.p99_us.round() as u64),
                table::thousands(o.http.rate.round() as u64),
                table::thousands(o.http.p99_us.round() as u64),
                table::thousands(o.chat.rate.round() as u64),
                table::thousands(o.chat.p99_us.round() as u64),
                table::thousands(o.syslog.rate.round() as u64),
                table::thousands(o.syslog.lost),
                o.syslog.cpu_us_per_msg.map_or("-".into(), |u| format!("{u:.2}")),
            ]
        })
        .collect();
    let header = [
        "backend",
        "post→get packets/s",
        "echo msgs/s",
        "echo p99 µs",
        "http req/s",
        "http p99 µs",
        "chat deliveries/s",
        "chat p99 µs",
        "syslog written msgs/s",
        "syslog lost",
        "syslog CPU µs/msg",
    ];
    let align = [
        Align::Left,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
    ];
    writeln!(human)?;
    human.write_all(table::render(Some(&header), &rows, &align, " | ").as_bytes())?;
    writeln!(
        human,
        "\npost→get: {PRODUCERS} threads post, {CONSUMERS} threads get_many({BATCH}).\n\
         echo: `iocp serve echo` ({SERVER_THREADS} worker threads) in this process, \
         {ECHO_CONNS} connections ping-ponging {ECHO_SIZE}-byte messages from the \
         `iocp bench echo` generator.\n\
         http: `iocp serve http` on a generated docroot, {HTTP_CONNS} keep-alive connections \
         fetching {HTTP_PATH} (4 KiB) with `iocp bench http`.\n\
         chat: `iocp serve chat`, {CHAT_CLIENTS} WebSocket clients in {CHAT_ROOMS} rooms, each \
         sending {CHAT_RATE} messages/s with `iocp bench chat` (a delivery: one message to one \
         member).\n\
         syslog: `iocp serve syslog` into a temporary directory, {SYSLOG_CONNS} TCP connections \
         sending numbered 120-byte RFC 5424 messages flat out (at most {SYSLOG_MAX} in all) with \
         `iocp bench syslog`, then the files read back: written msgs/s counts the messages \
         found, lost those missing, duplicated or out of order (must be 0), CPU the \
         collector's threads only.\n\
         Server and generator share this machine's cores; see BENCHMARKS.md for comparisons \
         with tokio, monoio, C and nginx (and, for the chat, tokio-tungstenite)."
    )?;
    human.flush()?;
    let errors: u64 = outcomes
        .iter()
        .map(|o| o.echo.errors + o.http.errors + o.chat.errors + o.syslog.errors + o.syslog.lost)
        .sum();
    if errors > 0 {
        bail!("the load runs saw {errors} errors");
    }
    Ok(())
}

fn run_backend(
    choice: BackendChoice,
    dur: Duration,
    root: &Path,
    progress: bool,
) -> anyhow::Result<Outcome> {
    let name = match choice {
        BackendChoice::Uring => "io_uring",
        BackendChoice::Epoll => "epoll",
        _ => "auto",
    };
    eprintln!("running {name}: post/get...");
    let posted = post_get(choice, dur).with_context(|| format!("{name}: post/get"))?;
    eprintln!("running {name}: echo server, {ECHO_CONNS} connections...");
    let echo = echo_run(choice, dur, progress).with_context(|| format!("{name}: echo"))?;
    eprintln!("running {name}: http server, {HTTP_CONNS} connections...");
    let http = http_run(choice, dur, root, progress).with_context(|| format!("{name}: http"))?;
    eprintln!("running {name}: chat server, {CHAT_CLIENTS} WebSocket clients...");
    let chat = chat_run(choice, dur, progress).with_context(|| format!("{name}: chat"))?;
    eprintln!("running {name}: syslog collector, {SYSLOG_CONNS} TCP connections...");
    let syslog = syslog_run(choice, dur).with_context(|| format!("{name}: syslog"))?;
    if posted.cq_overflow > 0 {
        eprintln!(
            "warning: {}: the kernel dropped {} completions (CQ overflow)",
            posted.backend, posted.cq_overflow
        );
    }
    Ok(Outcome { backend: posted.backend, posted, echo, http, chat, syslog })
}

fn outcome_json(o: &Outcome) -> Json {
    Json::Obj(vec![
        ("backend", Json::str(o.backend.to_string())),
        ("post_get_packets", Json::Int(o.posted.packets)),
        ("post_get_seconds", Json::Num(o.posted.elapsed.as_secs_f64())),
        ("post_get_packets_per_s", Json::num1(o.posted.per_sec())),
        ("echo_connections", Json::Int(ECHO_CONNS as u64)),
        ("echo_msgs_per_s", Json::num1(o.echo.rate)),
        ("echo_p99_us", Json::num1(o.echo.p99_us)),
        ("echo_errors", Json::Int(o.echo.errors)),
        ("echo_accepted", Json::Int(o.echo.accepted)),
        ("http_connections", Json::Int(HTTP_CONNS as u64)),
        ("http_reqs_per_s", Json::num1(o.http.rate)),
        ("http_p99_us", Json::num1(o.http.p99_us)),
        ("http_errors", Json::Int(o.http.errors)),
        ("http_accepted", Json::Int(o.http.accepted)),
        ("chat_clients", Json::Int(CHAT_CLIENTS as u64)),
        ("chat_deliveries_per_s", Json::num1(o.chat.rate)),
        ("chat_p99_us", Json::num1(o.chat.p99_us)),
        ("chat_errors", Json::Int(o.chat.errors)),
        ("chat_accepted", Json::Int(o.chat.accepted)),
        ("syslog_connections", Json::Int(SYSLOG_CONNS as u64)),
        ("syslog_sent", Json::Int(o.syslog.sent)),
        ("syslog_written", Json::Int(o.syslog.written)),
        ("syslog_written_msgs_per_s", Json::num1(o.syslog.rate)),
        ("syslog_lost", Json::Int(o.syslog.lost)),
        ("syslog_cpu_us_per_msg", o.syslog.cpu_us_per_msg.map_or(Json::Null, Json::Num)),
        ("syslog_errors", Json::Int(o.syslog.errors)),
        ("cq_overflow", Json::Int(o.posted.cq_overflow)),
    ])
}

fn per_sec(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

// ---------------------------------------------------------------------------------------------
// post → get

const PRODUCERS: usize = 2;
const CONSUMERS: usize = 2;
const BATCH: usize = 64;
/// Most packets posted and not yet dequeued: keeps the queue (and memory) bounded when the
/// producers outrun the consumers.
const WINDOW: u64 = 1 << 16;
/// A posted packet with this key tells a consumer to stop.
const STOP: CompletionKey = CompletionKey(0);
const DATA: CompletionKey = CompletionKey(1);
/// Longest a worker waits for a packet before the demo is declared stuck.
const STUCK: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct PostGet {
    backend: BackendKind,
    packets: u64,
    elapsed: Duration,
    cq_overflow: u64,
}

impl PostGet {
    fn per_sec(&self) -> f64 {
        per_sec(self.packets, self.elapsed)
    }
}

fn post_get(choice: BackendChoice, dur: Duration) -> anyhow::Result<PostGet> {
    let port: CompletionPort<()> = CompletionPort::<()>::builder()
        .backend(choice)
        .concurrency(CONSUMERS)
        .build()
        .context("creating the port")?;
    let posted = AtomicU64::new(0);
    let consumed = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + dur;
    let elapsed = thread::scope(|s| -> anyhow::Result<Duration> {
        let consumers: Vec<_> =
            (0..CONSUMERS).map(|_| s.spawn(|| consume(&port, &consumed))).collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| s.spawn(|| produce(&port, &posted, &consumed, deadline)))
            .collect();
        let produced: Vec<_> = producers.into_iter().map(join).collect();
        // The stop packets queue behind every data packet (FIFO), so consumers drain all first.
        for _ in 0..CONSUMERS {
            port.post(0, STOP, ()).context("posting stop")?;
        }
        let drained: Vec<_> = consumers.into_iter().map(join).collect();
        let elapsed = start.elapsed();
        produced.into_iter().chain(drained).collect::<anyhow::Result<Vec<()>>>()?;
        Ok(elapsed)
    })?;
    let stats = port.stats();
    port.close();
    let (posted, consumed) = (posted.into_inner(), consumed.into_inner());
    if posted != consumed {
        bail!("posted {posted} packets but dequeued {consumed}");
    }
    Ok(PostGet {
        backend: port.backend().kind(),
        packets: consumed,
        elapsed,
        cq_overflow: stats.cq_overflow,
    })
}

fn produce(
    port: &CompletionPort<()>,
    posted: &AtomicU64,
    consumed: &AtomicU64,
    deadline: Instant,
) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        while posted.load(Ordering::Relaxed).saturating_sub(consumed.load(Ordering::Relaxed))
            > WINDOW
        {
            if Instant::now() >= deadline {
                return Ok(());
            }
            thread::yield_now();
        }
        for _ in 0..BATCH {
            port.post(1, DATA, ()).context("post")?;
        }
        posted.fetch_add(BATCH as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn consume(port: &CompletionPort<()>, consumed: &AtomicU64) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        port.get_many(&mut batch, BATCH, Some(STUCK)).context("waiting for posted packets")?;
        let stops = batch.iter().filter(|c| c.key() == STOP).count();
        consumed.fetch_add((batch.len() - stops) as u64, Ordering::Relaxed);
        if stops > 0 {
            // One stop each: hand any extra back to the other consumers.
            for _ in 1..stops {
                port.post(0, STOP, ()).context("re-posting stop")?;
            }
            return Ok(());
        }
    }
}

fn join<T>(h: thread::ScopedJoinHandle<'_, anyhow::Result<T>>) -> anyhow::Result<T> {
    h.join().map_err(|_| anyhow!("a worker thread panicked"))?
}

// ---------------------------------------------------------------------------------------------
// The servers under load: `iocp serve echo` and `iocp serve http`, in-process, driven by the
// `iocp bench` load generator.

const SERVER_THREADS: usize = 2;
const ECHO_CONNS: usize = 50;
const ECHO_SIZE: usize = 64;
const HTTP_CONNS: usize = 50;
/// The file the HTTP run fetches, from the generated docroot.
const HTTP_PATH: &str = "/assets/4k.bin";
const WARMUP: Duration = Duration::from_millis(300);
const CHAT_CLIENTS: usize = 50;
const CHAT_ROOMS: usize = 5;
const CHAT_RATE: f64 = 10.0;

/// One load run against one server.
#[derive(Debug)]
struct LoadRun {
    /// Messages (echo) or responses (HTTP) per second.
    rate: f64,
    p99_us: f64,
    errors: u64,
    /// The server's accepted connections, to show the run used the framework.
    accepted: u64,
}

fn server_config(choice: BackendChoice) -> ServerConfig {
    ServerConfig { backend: choice, threads: SERVER_THREADS, ..ServerConfig::default() }
}

fn echo_run(choice: BackendChoice, dur: Duration, progress: bool) -> anyhow::Result<LoadRun> {
    let server =
        Server::start(EchoService, server_config(choice)).context("starting the echo server")?;
    let plan = Plan::basic(server.local_addr(), ECHO_CONNS, dur, WARMUP);
    let load = run_echo(&EchoLoad { plan, size: ECHO_SIZE, pipeline: 1 }, progress);
    let report = server.stop();
    let r = load?;
    Ok(LoadRun {
        rate: r.rate(),
        p99_us: r.p99_us(),
        errors: r.totals.errors(),
        accepted: report.stats.accepted,
    })
}

fn http_run(
    choice: BackendChoice,
    dur: Duration,
    root: &Path,
    progress: bool,
) -> anyhow::Result<LoadRun> {
    let site = Site::new(SiteConfig::new(root)).context("opening the demo docroot")?;
    let server = Server::start(Http::new(site, false), server_config(choice))
        .context("starting the HTTP server")?;
    let url = format!("http://{}{HTTP_PATH}", server.local_addr());
    let plan = Plan::basic(server.local_addr(), HTTP_CONNS, dur, WARMUP);
    let load = HttpLoad::with_plan(&url, plan).and_then(|l| run_http(&l, progress));
    let report = server.stop();
    let r = load?;
    Ok(LoadRun {
        rate: r.rate(),
        p99_us: r.p99_us(),
        errors: r.totals.errors(),
        accepted: report.stats.accepted,
    })
}

fn chat_run(choice: BackendChoice, dur: Duration, progress: bool) -> anyhow::Result<LoadRun> {
    let hub = ChatHub::new(ChatConfig::default());
    let server = Server::start(hub.web(), server_config(choice)).context("starting the chat")?;
    let args = ChatArgs {
        url: format!("ws://{}/ws", server.local_addr()),
        clients: CHAT_CLIENTS,
        rooms: CHAT_ROOMS,
        rate: CHAT_RATE,
        size: 32,
        duration: dur.max(Duration::from_millis(100)),
        warmup: WARMUP,
        threads: 1,
        timeout: Duration::from_secs(5),
        drain: Duration::from_secs(2),
        server_pid: None,
        json: false,
    };
    let load = run_chat(&args, progress);
    let report = server.stop();
    let r = load?;
    // A drop, a dropped client or a refused message is an error here.
    let errors = r.drops()
        + r.clients_dropped
        + r.connect_errors
        + r.server_errors
        + r.bad_frames
        + (r.clients as u64 - r.ready.min(r.clients as u64));
    Ok(LoadRun {
        rate: r.rate_per_sec(),
        p99_us: r.latency.p99,
        errors,
        accepted: report.stats.accepted,
    })
}

const SYSLOG_CONNS: usize = 4;
/// At most this many messages (120 bytes each: 48 MB of files at most, removed afterwards).
const SYSLOG_MAX: u64 = 400_000;

/// The syslog run.
#[derive(Debug)]
struct SyslogRun {
    /// Messages found in the files per second (first send to last growth).
    rate: f64,
    sent: u64,
    written: u64,
    /// Messages missing, duplicated or out of order in the files, plus the collector's lost.
    lost: u64,
    /// The collector's threads' CPU time per message written.
    cpu_us_per_msg: Option<f64>,
    errors: u64,
}

fn syslog_run(choice: BackendChoice, dur: Duration) -> anyhow::Result<SyslogRun> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("iocp-demo-syslog-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let cfg = SyslogConfig {
        tcp: Some(([127, 0, 0, 1], 0).into()),
        dir: dir.0.clone(),
        template: Template::parse("{app}.log").map_err(|e| anyhow!("template: {e}"))?,
        ..SyslogConfig::default()
    };
    let col = Collector::start(cfg, server_config(choice)).context("starting the collector")?;
    let addr = col.tcp_addr().context("the collector has no TCP address")?;
    let pid = std::process::id();
    let (cpu0, me0) = (process_cpu(pid), thread_cpu());
    let load = run_syslog(&SyslogLoad::demo(addr, SYSLOG_CONNS, dur, SYSLOG_MAX, dir.0.clone()));
    // This process's CPU less the senders' and this thread's (which read the files back):
    // the collector's threads (workers, writer, io_uring's kernel workers).
    let (cpu1, me1) = (process_cpu(pid), thread_cpu());
    let report = col.stop();
    let (_, o) = load?;
    let cpu = cpu0.zip(cpu1).map(|(a, b)| {
        b.saturating_sub(a).saturating_sub(o.sender_cpu).saturating_sub(me1.saturating_sub(me0))
    });
    Ok(SyslogRun {
        rate: o.written_per_s.unwrap_or(0.0),
        sent: o.sent,
        written: o.written,
        lost: o.missing + o.duplicated + o.out_of_order + report.stats.lost,
        cpu_us_per_msg: cpu
            .filter(|_| o.written > 0)
            .map(|c| (c.as_secs_f64() * 1e6 / o.written as f64 * 100.0).round() / 100.0),
        errors: o.errors + o.unexpected,
    })
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small site in a temporary directory, removed on drop.
struct Docroot(PathBuf);

impl Docroot {
    fn create() -> anyhow::Result<Docroot> {
        let dir = std::env::temp_dir().join(format!("iocp-demo-{}", std::process::id()));
        let root = Docroot(dir);
        let d = &root.0;
        std::fs::create_dir_all(d.join("assets")).context("creating the demo docroot")?;
        std::fs::write(
            d.join("index.html"),
            "<!DOCTYPE html><title>iocp demo</title><h1>Served by iocp on a completion port</h1>\n",
        )?;
        std::fs::write(d.join("assets/style.css"), "h1 { font-family: sans-serif }\n")?;
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.join("assets/4k.bin"), data)?;
        Ok(root)
    }
}

impl Drop for Docroot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
