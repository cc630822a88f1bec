//! `iocp serve echo|http|chat|syslog`: the servers, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use iocp::BackendChoice;
use iocp_server::{
    Chat, ChatConfig, ChatHub, Echo, Http, Server, ServerConfig, ServerReport, Service, SlowPolicy,
    metrics,
};

/// Options every server takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// Worker threads (and the port's concurrency limit) [default: one per CPU]
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Backend: auto (io_uring when the probe passes, else epoll), uring or epoll
    #[arg(long, value_name = "auto|uring|epoll", default_value = "auto")]
    backend: BackendChoice,
    /// io_uring rings: 1 shares one ring between the threads, 0 gives each thread its own
    #[arg(long, value_name = "N", default_value_t = 1)]
    rings: usize,
    /// Connections served at once; more are accepted and closed at once
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// Close a connection idle this many seconds (0: never)
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    idle_timeout: f64,
    /// Seconds a connection waiting for its next request keeps its buffers before it parks
    /// on a zero-byte receive and holds none (0: park at once)
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    park_after: f64,
    /// Close a connection whose peer has not read a response within this many seconds (0: never)
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    write_timeout: f64,
    /// Seconds a stop lets connections finish before aborting them
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    grace: f64,
    /// Set SO_REUSEPORT, so several server processes can share the address (the kernel spreads
    /// connections across them)
    #[arg(long)]
    reuseport: bool,
    /// Serve metrics on this address: /metrics (Prometheus), /health, / (live dashboard)
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// glibc malloc arenas (0: glibc's default, 8 per CPU). One keeps RSS flat under
    /// connection churn, where operations complete on another thread than the one that
    /// started them (docs/DESIGN.md §5.2); MALLOC_ARENA_MAX in the environment wins
    #[arg(long, value_name = "N", default_value_t = 1)]
    malloc_arenas: usize,
}

impl Common {
    /// Applies the process-wide settings: before the server starts a thread.
    pub(crate) fn apply_process(&self) -> anyhow::Result<()> {
        iocp::limit_heap_arenas(self.malloc_arenas).context("--malloc-arenas")?;
        Ok(())
    }
}

/// `iocp serve echo` options.
#[derive(Debug, clap::Args)]
pub(crate) struct EchoArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    #[command(flatten)]
    common: Common,
}

/// `iocp serve http` options.
#[derive(Debug, clap::Args)]
pub(crate) struct HttpArgs {
    /// The directory to serve
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Log every response (combined log format fields) to stderr
    #[arg(long)]
    access_log: bool,
    /// Seconds a client has to finish sending a request it started (slowloris: 408, then close)
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    request_timeout: f64,
    /// Serve HTML listings of directories without index.html (else 403)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    listings: bool,
    #[command(flatten)]
    common: Common,
}

/// `iocp serve chat` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    /// Address of the web port: the page at /, WebSocket upgrades at /ws
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    /// Also serve the line protocol (nc, telnet) on this address
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Messages kept per room and replayed on join
    #[arg(long, value_name = "N", default_value_t = 50)]
    history: usize,
    /// Commands per second a connection may send (its token bucket refills at this rate)
    #[arg(long, value_name = "N", default_value_t = 20.0)]
    rate: f64,
    /// Commands a connection may send at once (the bucket's size)
    #[arg(long, value_name = "N", default_value_t = 40.0)]
    burst: f64,
    /// Most bytes of a message's text
    #[arg(long, value_name = "BYTES", default_value_t = 2000)]
    max_text: usize,
    /// Buffers queued per connection before it counts as slow
    #[arg(long, value_name = "N", default_value_t = 512)]
    queue: usize,
    /// A slow client is dropped (drop) or skips to the newest messages (skip)
    #[arg(long, value_name = "drop|skip", default_value = "drop")]
    slow: String,
    /// Send join/leave presence events only in rooms of at most N members (default: always)
    #[arg(long, value_name = "N")]
    presence_max: Option<usize>,
    #[command(flatten)]
    common: Common,
}

/// Which server.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ServeCommand {
    /// Echo every byte back (TCP)
    Echo(EchoArgs),
    /// Serve a directory over HTTP/1.1 (GET and HEAD, keep-alive, ranges, conditionals)
    Http(HttpArgs),
    /// A chat: rooms, nicknames, private messages over WebSocket (with a browser page) and a
    /// TCP line protocol
    Chat(ChatArgs),
    /// Collect syslog over TCP and UDP into files (RFC 5424 / RFC 3164; SIGHUP reopens files)
    Syslog(crate::syslog::SyslogArgs),
}

fn secs(s: f64, what: &str) -> anyhow::Result<Option<Duration>> {
    if s == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(s)
        .map(Some)
        .map_err(|_| anyhow::anyhow!("--{what}: expected a number of seconds >= 0, got {s}"))
}

impl Common {
    pub(crate) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    pub(crate) fn config(&self, addr: SocketAddr) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig {
            addr,
            threads: self.threads,
            backend: self.backend,
            rings: self.rings,
            max_connections: self.max_connections.max(1),
            idle_timeout: secs(self.idle_timeout, "idle-timeout")?,
            park_after: Some(secs(self.park_after, "park-after")?.unwrap_or(Duration::ZERO)),
            write_timeout: secs(self.write_timeout, "write-timeout")?,
            grace: secs(self.grace, "grace")?.unwrap_or(Duration::ZERO),
            reuse_port: self.reuseport,
            ..ServerConfig::default()
        })
    }
}

pub(crate) fn run(cmd: &ServeCommand) -> anyhow::Result<()> {
    match cmd {
        ServeCommand::Echo(EchoArgs { common, .. })
        | ServeCommand::Http(HttpArgs { common, .. })
        | ServeCommand::Chat(ChatArgs { common, .. }) => common.apply_process()?,
        ServeCommand::Syslog(a) => a.common.apply_process()?,
    }
    init_logging();
    match cmd {
        ServeCommand::Echo(a) => serve(Echo, a.common.config(a.addr)?, a.common.metrics, "echo"),
        ServeCommand::Http(a) => {
            let mut site_cfg = iocp_http::Config::new(&a.root);
            site_cfg.listings = a.listings;
            let site = iocp_http::Site::new(site_cfg)
                .with_context(|| format!("serving {}", a.root.display()))?;
            eprintln!("iocp http: serving {}", site.root().display());
            let cfg = ServerConfig {
                request_timeout: secs(a.request_timeout, "request-timeout")?,
                ..a.common.config(a.addr)?
            };
            serve(Http::new(site, a.access_log), cfg, a.common.metrics, "http")
        }
        ServeCommand::Chat(a) => serve_chat(a),
        ServeCommand::Syslog(a) => crate::syslog::run(a),
    }
}

fn serve_chat(a: &ChatArgs) -> anyhow::Result<()> {
    let policy = match a.slow.as_str() {
        "drop" => SlowPolicy::Drop,
        "skip" => SlowPolicy::KeepNewest,
        other => anyhow::bail!("--slow: expected drop or skip, got {other:?}"),
    };
    if !(a.rate > 0.0 && a.burst >= 1.0) {
        anyhow::bail!("--rate must be > 0 and --burst >= 1");
    }
    let defaults = ChatConfig::default();
    let cfg = ChatConfig {
        history: a.history,
        rate: a.rate,
        burst: a.burst,
        max_text: a.max_text.max(1),
        push: iocp_server::PushConfig { max_messages: a.queue.max(1), policy, ..defaults.push },
        presence_max: a.presence_max.unwrap_or(usize::MAX),
        ..defaults
    };
    let hub = ChatHub::new(cfg);
    // Caught before the ready lines: a SIGTERM right after them is a graceful stop.
    let stop = iocp_server::StopSignal::install().context("installing signal handlers")?;
    let web = Server::start(hub.web(), a.common.config(a.addr)?)
        .with_context(|| format!("starting the chat web server on {}", a.addr))?;
    let b = web.backend();
    eprintln!(
        "iocp chat: listening on {0} (page at http://{0}/, WebSocket at ws://{0}/ws; {1} \
         backend: {2})",
        web.local_addr(),
        b.kind(),
        b.reason()
    );
    let tcp = match a.tcp {
        Some(addr) => {
            let s = Server::start(hub.tcp(), a.common.config(addr)?)
                .with_context(|| format!("starting the chat TCP server on {addr}"))?;
            eprintln!("iocp chat: line protocol on tcp {} (nc works)", s.local_addr());
            Some(s)
        }
        None => None,
    };
    eprintln!("iocp chat: Ctrl-C or SIGTERM stops");
    let metrics = start_metrics(
        chat_live_stats(&hub, &web, tcp.as_ref()),
        a.common.metrics,
        a.common.backend,
    )?;
    let sig = stop.wait().context("waiting for a stop signal")?;
    eprintln!("iocp chat: signal {sig}: stopping (close frames 1001, then what is in flight)");
    if let Some(m) = metrics {
        m.stop();
    }
    print_report(&web.stop());
    if let Some(t) = tcp {
        print_report(&t.stop());
    }
    let s = hub.stats();
    eprintln!(
        "iocp chat: {} messages, {} deliveries, {} undelivered, {} rate-limited, {} bad inputs",
        s.messages, s.deliveries, s.undelivered, s.rate_limited, s.bad_input
    );
    Ok(())
}

fn serve<S: Service>(
    service: S,
    cfg: ServerConfig,
    metrics_addr: Option<SocketAddr>,
    what: &str,
) -> anyhow::Result<()> {
    let (addr, backend) = (cfg.addr, cfg.backend);
    // Caught before the ready line: a SIGTERM right after it is a graceful stop.
    let stop = iocp_server::StopSignal::install().context("installing signal handlers")?;
    let server = Server::start(service, cfg)
        .with_context(|| format!("starting the {what} server on {addr}"))?;
    let b = server.backend();
    eprintln!(
        "iocp {what}: listening on {} ({} backend: {}); Ctrl-C or SIGTERM stops",
        server.local_addr(),
        b.kind(),
        b.reason()
    );
    let metrics = start_metrics(server.live_stats(), metrics_addr, backend)?;
    let sig = stop.wait().context("waiting for a stop signal")?;
    eprintln!("iocp {what}: signal {sig}: stopping (finishing what is in flight)");
    if let Some(m) = metrics {
        m.stop();
    }
    let report = server.stop();
    print_report(&report);
    Ok(())
}

/// What `serve chat --metrics` shows: the web server's counters (HTTP and WebSocket, the
/// `iocp_*` families and the dashboard), the chat's own (`iocp_chat_*`), and with `--tcp` the
/// line-protocol server's connections and bytes (`iocp_chat_tcp_*`).
fn chat_live_stats(
    hub: &ChatHub,
    web: &Server<Chat>,
    tcp: Option<&Server<Chat>>,
) -> metrics::LiveStats {
    let hub = hub.clone();
    let tcp = tcp.map(Server::live_stats);
    web.live_stats().with_extra(move || {
        let mut out = hub.stats().metrics();
        if let Some(t) = &tcp {
            let s = t.snapshot().server;
            let one =
                |name: &str, help: &str, kind, v| metrics::ExtraMetric::single(name, help, kind, v);
            use metrics::ExtraKind::{Counter, Gauge};
            out.extend([
                one(
                    "chat_tcp_connections_accepted",
                    "Line-protocol connections accepted.",
                    Counter,
                    s.accepted,
                ),
                one(
                    "chat_tcp_connections_active",
                    "Line-protocol connections open now.",
                    Gauge,
                    s.active,
                ),
                one(
                    "chat_tcp_connections_closed",
                    "Line-protocol connections closed.",
                    Counter,
                    s.closed,
                ),
                one(
                    "chat_tcp_received_bytes",
                    "Bytes received on line-protocol connections (counted at close).",
                    Counter,
                    s.bytes_in,
                ),
                one(
                    "chat_tcp_sent_bytes",
                    "Bytes sent on line-protocol connections (counted at close).",
                    Counter,
                    s.bytes_out,
                ),
            ]);
        }
        out
    })
}

/// The `--metrics` endpoint: its own server (listener, port, worker) over `server`'s counters.
pub(crate) fn start_metrics(
    live: metrics::LiveStats,
    addr: Option<SocketAddr>,
    backend: iocp::BackendChoice,
) -> anyhow::Result<Option<Server<metrics::MetricsService>>> {
    let Some(addr) = addr else { return Ok(None) };
    let cfg = ServerConfig { backend, ..metrics::config(addr) };
    let m = metrics::start(live, cfg)
        .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    eprintln!(
        "iocp: metrics on http://{0}/metrics, dashboard on http://{0}/, health on http://{0}/health",
        m.local_addr()
    );
    Ok(Some(m))
}

pub(crate) fn print_report(r: &ServerReport) {
    let s = &r.stats;
    eprintln!(
        "iocp: stopped: {} connections accepted, {} refused, {} closed, {} timeouts, {} errors, \
         {} bytes in, {} bytes out, {} handler panics{}",
        s.accepted,
        s.refused,
        s.closed,
        s.idle_timeouts + s.request_timeouts + s.write_timeouts,
        s.io_errors + s.accept_errors,
        s.bytes_in,
        s.bytes_out,
        r.pool.panics,
        if r.pool.drained { "" } else { " (grace period over: the rest was aborted)" }
    );
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already set (tests running several commands in one process): keep the first.
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
