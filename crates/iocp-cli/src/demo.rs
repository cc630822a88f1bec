//! `iocp demo`: post→get throughput and a TCP echo over loopback, on each backend.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use iocp::{BackendChoice, BackendKind, CompletionKey, CompletionPort, Handle};

use crate::json::Json;
use crate::table::{self, Align};

/// Options of `iocp demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Backend(s) to run: auto, uring, epoll or all [default: $IOCP_BACKEND, else all]
    #[arg(long, value_name = "auto|uring|epoll|all", value_parser = parse_selection)]
    backend: Option<Selection>,
    /// Seconds for each measurement (two per backend)
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = parse_seconds)]
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
    tcp: Echo,
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

    let mut outcomes = Vec::new();
    for choice in choices {
        let o = run_backend(choice, dur)?;
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
                table::thousands(o.tcp.per_sec().round() as u64),
                format!("{:.1}", micros(o.tcp.p50)),
                format!("{:.1}", micros(o.tcp.p99)),
            ]
        })
        .collect();
    let header = ["backend", "post→get packets/s", "tcp round trips/s", "p50 µs", "p99 µs"];
    let align = [Align::Left, Align::Right, Align::Right, Align::Right, Align::Right];
    human.write_all(table::render(Some(&header), &rows, &align, " | ").as_bytes())?;
    writeln!(
        human,
        "\npost→get: {PRODUCERS} threads post, {CONSUMERS} threads get_many({BATCH}); \
         tcp: {CLIENTS} std clients ping-pong {MSG}-byte messages with an echo server on \
         the port ({SERVER_THREADS} threads; accept with initial receive, then recv/send)"
    )?;
    human.flush()?;
    Ok(())
}

fn run_backend(choice: BackendChoice, dur: Duration) -> anyhow::Result<Outcome> {
    let name = match choice {
        BackendChoice::Uring => "io_uring",
        BackendChoice::Epoll => "epoll",
        _ => "auto",
    };
    eprintln!("running {name}: post/get...");
    let posted = post_get(choice, dur).with_context(|| format!("{name}: post/get"))?;
    eprintln!("running {}: tcp echo...", posted.backend);
    let tcp = tcp_echo(choice, dur).with_context(|| format!("{name}: tcp echo"))?;
    if posted.cq_overflow + tcp.cq_overflow > 0 {
        eprintln!(
            "warning: {}: the kernel dropped {} completions (CQ overflow)",
            posted.backend,
            posted.cq_overflow + tcp.cq_overflow
        );
    }
    Ok(Outcome { backend: posted.backend, posted, tcp })
}

fn outcome_json(o: &Outcome) -> Json {
    Json::Obj(vec![
        ("backend", Json::str(o.backend.to_string())),
        ("post_get_packets", Json::Int(o.posted.packets)),
        ("post_get_seconds", Json::Num(o.posted.elapsed.as_secs_f64())),
        ("post_get_packets_per_s", Json::num1(o.posted.per_sec())),
        ("tcp_round_trips", Json::Int(o.tcp.round_trips)),
        ("tcp_seconds", Json::Num(o.tcp.elapsed.as_secs_f64())),
        ("tcp_round_trips_per_s", Json::num1(o.tcp.per_sec())),
        ("p50_us", Json::num1(micros(o.tcp.p50))),
        ("p99_us", Json::num1(micros(o.tcp.p99))),
        ("cq_overflow", Json::Int(o.posted.cq_overflow + o.tcp.cq_overflow)),
    ])
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
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
// TCP echo

const CLIENTS: usize = 2;
const SERVER_THREADS: usize = 2;
const MSG: usize = 64;
const RECV_BUF: usize = 4096;
const LISTENER: CompletionKey = CompletionKey(1);
/// Connections get keys from here up.
const FIRST_CONN: u64 = 2;
/// Longest a client waits for its echo.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The per-operation context: what was started.
#[derive(Debug)]
enum Io {
    Accept,
    Recv,
    Send,
    /// A posted packet telling a server thread to exit.
    Stop,
}

#[derive(Debug)]
struct Echo {
    round_trips: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    cq_overflow: u64,
}

impl Echo {
    fn per_sec(&self) -> f64 {
        per_sec(self.round_trips, self.elapsed)
    }
}

/// The echo server: the port, the listener, and every connection's handle by key (dropping a
/// handle closes its socket, so the map keeps them alive).
struct Server {
    port: CompletionPort<Io>,
    listener: Handle<Io>,
    conns: Mutex<HashMap<CompletionKey, Handle<Io>>>,
    next_key: AtomicU64,
    stopping: AtomicBool,
}

fn tcp_echo(choice: BackendChoice, dur: Duration) -> anyhow::Result<Echo> {
    let port: CompletionPort<Io> = CompletionPort::<Io>::builder()
        .backend(choice)
        .concurrency(SERVER_THREADS)
        .build()
        .context("creating the port")?;
    let std_listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = std_listener.local_addr()?;
    let listener = port.associate(std_listener, LISTENER).context("associating the listener")?;
    listener.accept(Vec::with_capacity(MSG), Io::Accept).context("starting accept")?;
    let server = Server {
        port,
        listener,
        conns: Mutex::new(HashMap::new()),
        next_key: AtomicU64::new(FIRST_CONN),
        stopping: AtomicBool::new(false),
    };

    let start = Instant::now();
    let deadline = start + dur;
    let (clients, elapsed) = thread::scope(|s| -> anyhow::Result<_> {
        let servers: Vec<_> =
            (0..SERVER_THREADS).map(|_| s.spawn(|| server.serve(dur + STUCK))).collect();
        let clients: Vec<_> =
            (0..CLIENTS).map(|_| s.spawn(move || client(addr, deadline))).collect();
        let clients: Vec<_> = clients.into_iter().map(join).collect();
        let elapsed = start.elapsed();
        server.stopping.store(true, Ordering::Release);
        for _ in 0..SERVER_THREADS {
            server
                .port
                .post(0, CompletionKey(0), Io::Stop)
                .map_err(|_| anyhow!("the port closed early"))?;
        }
        let served: Vec<_> = servers.into_iter().map(join).collect();
        served.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let clients = clients.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        Ok((clients, elapsed))
    })?;

    let stats = server.port.stats();
    server.listener.close();
    server.conns.lock().unwrap_or_else(|e| e.into_inner()).clear();
    server.port.close();

    let round_trips = clients.iter().map(|c| c.0).sum();
    let mut lat: Vec<Duration> = clients.into_iter().flat_map(|c| c.1).collect();
    lat.sort_unstable();
    Ok(Echo {
        round_trips,
        elapsed,
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        cq_overflow: stats.cq_overflow,
    })
}

/// Nearest-rank percentile of sorted samples (zero when there are none).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One client: ping-pong `MSG`-byte messages until `deadline`. Returns the round trips made
/// and their latencies, the first (which includes the accept) left out.
fn client(addr: SocketAddr, deadline: Instant) -> anyhow::Result<(u64, Vec<Duration>)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut msg = [0u8; MSG];
    let mut back = [0u8; MSG];
    let mut lat = Vec::with_capacity(1 << 16);
    let mut n: u64 = 0;
    loop {
        msg.fill(n as u8);
        msg[..8].copy_from_slice(&n.to_le_bytes());
        let t = Instant::now();
        s.write_all(&msg).context("sending")?;
        s.read_exact(&mut back).with_context(|| format!("waiting for echo {n}"))?;
        let rtt = t.elapsed();
        if back != msg {
            bail!("echo {n} differs from what was sent");
        }
        if n > 0 {
            lat.push(rtt);
        }
        n += 1;
        if Instant::now() >= deadline {
            return Ok((n, lat));
        }
    }
}

impl Server {
    /// A server thread: runs completions until a stop packet.
    fn serve(&self, idle_limit: Duration) -> anyhow::Result<()> {
        loop {
            let mut c =
                self.port.get(Some(idle_limit)).context("server waiting for completions")?;
            let key = c.key();
            match c.context() {
                Io::Stop => return Ok(()),
                Io::Accept => {
                    // Re-arm first, so the next client is not kept waiting. (A refusal while
                    // stopping is the listener closing under us: fine.)
                    if !self.stopping.load(Ordering::Acquire)
                        && let Err(e) = self.listener.accept(Vec::with_capacity(MSG), Io::Accept)
                        && !self.stopping.load(Ordering::Acquire)
                    {
                        return Err(anyhow!(e).context("re-arming accept"));
                    }
                    if c.is_aborted() {
                        continue;
                    }
                    c.result().context("accept")?;
                    let mut acc =
                        c.take_accepted().context("accept completion without a connection")?;
                    let data = acc.take_data();
                    let sock = acc.take_socket().context("accept completion without a socket")?;
                    if data.is_empty() {
                        continue; // closed before sending anything
                    }
                    sock.set_tcp_nodelay(true)?;
                    let key = CompletionKey(self.next_key.fetch_add(1, Ordering::Relaxed));
                    let h = self.port.associate(sock, key).context("associating a connection")?;
                    self.lock_conns().insert(key, h.clone());
                    // Echo the initial receive.
                    h.send(data, Io::Send).context("starting send")?;
                }
                Io::Recv => match c.result() {
                    Ok(0) => self.drop_conn(key), // the client closed
                    Ok(_) => {
                        let buf = c.take_buf().context("recv completion without a buffer")?;
                        self.conn(key)?.send(buf, Io::Send).context("starting send")?;
                    }
                    Err(_) if c.is_aborted() => self.drop_conn(key),
                    Err(e) => return Err(anyhow!(e).context(format!("recv on {key:?}"))),
                },
                Io::Send => match c.result() {
                    Ok(_) => {
                        let mut buf = c.take_buf().context("send completion without a buffer")?;
                        buf.clear();
                        buf.reserve(RECV_BUF);
                        self.conn(key)?.recv(buf, Io::Recv).context("starting recv")?;
                    }
                    Err(_) if c.is_aborted() => self.drop_conn(key),
                    Err(e) => return Err(anyhow!(e).context(format!("send on {key:?}"))),
                },
            }
        }
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<CompletionKey, Handle<Io>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conn(&self, key: CompletionKey) -> anyhow::Result<Handle<Io>> {
        self.lock_conns().get(&key).cloned().with_context(|| format!("no connection with {key:?}"))
    }

    /// Forgets a connection: dropping its last handle closes the socket.
    fn drop_conn(&self, key: CompletionKey) {
        let h = self.lock_conns().remove(&key);
        drop(h);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Selection, parse_seconds, parse_selection, percentile};
    use iocp::BackendChoice;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn parses_backend_selection() {
        assert_eq!(parse_selection("all"), Ok(Selection::All));
        assert_eq!(parse_selection("epoll"), Ok(Selection::One(BackendChoice::Epoll)));
        assert_eq!(parse_selection("io_uring"), Ok(Selection::One(BackendChoice::Uring)));
        assert!(parse_selection("kqueue").is_err());
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("nan").is_err());
        assert_eq!(parse_seconds("1.5"), Ok(1.5));
    }
}
