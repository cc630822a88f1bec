//! Metrics for operators: a server's counters, its pool's and its port's, served over HTTP by
//! a small [`Server`] of its own (on its own listener and port):
//!
//! - `/metrics`: the Prometheus text exposition format (version 0.0.4, written by the
//!   `prometheus-client` crate);
//! - `/health`: `200 ok` for load balancers;
//! - `/`: a live dashboard (plain HTML and JavaScript embedded in the binary) fed by
//! - `/events`: server-sent events, one JSON [`MetricsSnapshot`] a second;
//! - `/stats.json`: the same snapshot, once.
//!
//! The server-sent events ride on the request model: after the headers and the first event the
//! connection reads with the metrics server's idle timeout (1 s); each expiry's
//! [`Service::on_timeout`] sends the next event and
//! [`Service::keeps_open_after_timeout`] keeps the stream open.
//!
//! Hot-path cost: relaxed atomic adds per completed receive or send (bytes, messages), a
//! thread-local count per service callback, and for one callback in
//! [`SERVICE_TIME_SAMPLING`] two clock reads and two adds (the service-time histogram); one
//! add per close. A scrape reads the atomics and [`iocp::CompletionPort::stats`] (one lock).
//!
//! ```no_run
//! use iocp_server::{Echo, Server, ServerConfig, metrics};
//! let echo = Server::start(Echo, ServerConfig::default())?;
//! let m = metrics::start(echo.live_stats(), metrics::config("127.0.0.1:9100".parse().unwrap()))?;
//! println!("dashboard on http://{}/", m.local_addr());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iocp::PortStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::server::{
    CloseReason, Io, Next, Server, ServerConfig, ServerStats, Service, TimeoutKind,
};

/// One service callback in this many (per worker thread) is timed for the service-time
/// histogram; the first callback on each thread always is.
pub const SERVICE_TIME_SAMPLING: u32 = 8;

/// Upper bounds (seconds) of the service-time histogram's buckets (`+Inf` follows).
pub const SERVICE_TIME_BOUNDS: [f64; 16] =
    [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 1e-1, 1.0];
const BOUNDS_NS: [u64; 16] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];
const BUCKETS: usize = BOUNDS_NS.len() + 1;

const REASONS: [(CloseReason, &str); 7] = [
    (CloseReason::Eof, "eof"),
    (CloseReason::Done, "done"),
    (CloseReason::Timeout, "timeout"),
    (CloseReason::Error, "error"),
    (CloseReason::Overflow, "overflow"),
    (CloseReason::Stopped, "stopped"),
    (CloseReason::Slow, "slow"),
];

fn reason_index(r: CloseReason) -> usize {
    REASONS.iter().position(|(x, _)| *x == r).unwrap_or(0)
}

/// The live counters a server keeps for its metrics (relaxed atomics: each is exact, a
/// snapshot of several is not one instant).
#[derive(Debug, Default)]
pub(crate) struct Live {
    messages: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    closed: [AtomicU64; REASONS.len()],
    buckets: [AtomicU64; BUCKETS],
    service_ns: AtomicU64,
}

impl Live {
    /// A receive (`read`) or send (`sent`) completed with `n` bytes.
    pub(crate) fn transferred(&self, sent: bool, read: bool, n: usize) {
        if n == 0 {
            return;
        }
        if sent {
            self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            if read {
                self.messages.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The start time of a service callback to time, for one callback in
    /// [`SERVICE_TIME_SAMPLING`] on each thread (None for the others): the two clock reads are
    /// most of what the histogram would cost per message.
    pub(crate) fn sample_start(&self) -> Option<Instant> {
        thread_local! {
            static CALLS: Cell<u32> = const { Cell::new(0) };
        }
        let n = CALLS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        (n % SERVICE_TIME_SAMPLING == 1 % SERVICE_TIME_SAMPLING).then(Instant::now)
    }

    /// A (sampled) service callback took `d`.
    pub(crate) fn service_time(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.service_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, r: CloseReason) {
        self.closed_n(r, 1);
    }

    pub(crate) fn closed_n(&self, r: CloseReason, n: u64) {
        self.closed[reason_index(r)].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn fill(&self, s: &mut MetricsSnapshot) {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.messages = l(&self.messages);
        s.bytes_in = l(&self.bytes_in);
        s.bytes_out = l(&self.bytes_out);
        s.closed_by_reason =
            REASONS.iter().zip(&self.closed).map(|((_, n), c)| (*n, l(c))).collect();
        s.service_time = ServiceTime {
            counts: self.buckets.iter().map(l).collect(),
            sum_seconds: l(&self.service_ns) as f64 * 1e-9,
        };
    }
}

/// The service-time histogram: how long service callbacks (`on_read`, `on_sent`,
/// `on_timeout`) took, sampled (one callback in [`SERVICE_TIME_SAMPLING`] per worker).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceTime {
    /// Calls per bucket (not cumulative): one per [`SERVICE_TIME_BOUNDS`] entry, then `+Inf`.
    pub counts: Vec<u64>,
    /// Total time, in seconds.
    pub sum_seconds: f64,
}

impl ServiceTime {
    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Everything a metrics endpoint shows, read at one moment.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// The server's counters (its `bytes_in`/`bytes_out` count closed connections only; see
    /// [`MetricsSnapshot::bytes_in`] for live totals).
    pub server: ServerStats,
    /// The port's counters.
    pub port: PortStats,
    /// The backend (`io_uring` or `epoll`).
    pub backend: String,
    /// The port's concurrency limit.
    pub concurrency: usize,
    /// Receives that delivered bytes to the service (messages, for echo; request reads, for
    /// HTTP).
    pub messages: u64,
    /// Bytes received so far (every completed receive).
    pub bytes_in: u64,
    /// Bytes sent so far (every completed send).
    pub bytes_out: u64,
    /// Connections closed, by reason (`eof`, `done`, `timeout`, `error`, `overflow`,
    /// `stopped`).
    pub closed_by_reason: Vec<(&'static str, u64)>,
    /// Service callback time.
    pub service_time: ServiceTime,
    /// Packets each pool worker handled.
    pub worker_packets: Vec<u64>,
    /// The port's operations in flight, by kind.
    pub in_flight_by_kind: iocp::InFlightByKind,
    /// Time since the handle was made.
    pub uptime: Duration,
    /// Metrics a service contributes (a syslog collector's per-input counters, say), exposed
    /// after the server's in `/metrics`; see [`LiveStats::with_extra`].
    pub extra: Vec<ExtraMetric>,
}

/// Whether an [`ExtraMetric`] only grows or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraKind {
    /// Only grows (exposed with the `_total` suffix).
    Counter,
    /// A level now.
    Gauge,
}

/// A metric family a service contributes to a [`MetricsSnapshot`]: a name (after the `iocp_`
/// prefix; Prometheus rules: `[a-zA-Z_][a-zA-Z0-9_]*`), a help text, and one value per label
/// set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraMetric {
    /// The name after `iocp_`, e.g. `syslog_messages_received`.
    pub name: String,
    /// The `# HELP` text.
    pub help: String,
    /// Counter or gauge.
    pub kind: ExtraKind,
    /// The samples: label pairs (empty for a family of one unlabelled value) and the value.
    pub samples: Vec<(Vec<(String, String)>, u64)>,
}

impl ExtraMetric {
    /// A family of one unlabelled value.
    pub fn single(name: &str, help: &str, kind: ExtraKind, value: u64) -> Self {
        ExtraMetric {
            name: name.into(),
            help: help.into(),
            kind,
            samples: vec![(Vec::new(), value)],
        }
    }

    /// A family with one label: a value per label value.
    pub fn labelled(
        name: &str,
        help: &str,
        kind: ExtraKind,
        label: &str,
        values: &[(&str, u64)],
    ) -> Self {
        ExtraMetric {
            name: name.into(),
            help: help.into(),
            kind,
            samples: values
                .iter()
                .map(|(k, v)| (vec![(label.to_string(), (*k).to_string())], *v))
                .collect(),
        }
    }
}

impl MetricsSnapshot {
    /// A snapshot with the given server and port counters (the rest zero), for sources other
    /// than [`Server::live_stats`].
    pub fn new(server: ServerStats, port: PortStats, backend: String, concurrency: usize) -> Self {
        MetricsSnapshot { server, port, backend, concurrency, ..MetricsSnapshot::default() }
    }

    /// The snapshot in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("iocp");
        registry.register_collector(Box::new(SnapshotCollector(self.clone())));
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail; the encoder only fails on a writer error.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    /// The snapshot as one line of JSON (what the dashboard's events carry).
    pub fn to_json(&self) -> String {
        let s = &self.server;
        let p = &self.port;
        let closed: serde_json::Map<String, serde_json::Value> =
            self.closed_by_reason.iter().map(|(k, v)| ((*k).to_string(), (*v).into())).collect();
        serde_json::json!({
            "uptime": self.uptime.as_secs_f64(),
            "backend": self.backend,
            "accepted": s.accepted,
            "active": s.active,
            "refused": s.refused,
            "closed": s.closed,
            "closed_by_reason": closed,
            "messages": self.messages,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "errors": {
                "io": s.io_errors, "accept": s.accept_errors, "panic": s.panics,
                "overflow": s.overflows,
            },
            "timeouts": { "idle": s.idle_timeouts, "request": s.request_timeouts,
                          "write": s.write_timeouts },
            "service_time": {
                "bounds": SERVICE_TIME_BOUNDS, "counts": self.service_time.counts,
                "sum": self.service_time.sum_seconds,
            },
            "port": {
                "queued": p.queued, "waiters": p.waiters, "running": p.running,
                "concurrency": self.concurrency, "in_flight": p.in_flight, "backlog": p.backlog,
                "sq_full": p.sq_full, "cq_overflow": p.cq_overflow, "posted": p.posted,
                "dequeued": p.dequeued, "io_completions": p.io_completions,
                "submitted": p.submitted, "submit_enters": p.submit_enters,
                "pool_buffers": p.pool_buffers, "pool_lent": p.pool_lent,
                "in_flight_by_kind": self.in_flight_by_kind.labelled().iter()
                    .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                    .collect::<serde_json::Map<_, _>>(),
            },
            "worker_packets": self.worker_packets,
        })
        .to_string()
    }
}

/// A cloneable handle that reads a fresh [`MetricsSnapshot`] when asked
/// ([`Server::live_stats`] makes one; any other source can be wrapped with
/// [`LiveStats::new`]).
#[derive(Clone)]
pub struct LiveStats(Arc<dyn Fn() -> MetricsSnapshot + Send + Sync>);

impl fmt::Debug for LiveStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveStats")
    }
}

impl LiveStats {
    /// Wraps a function that reads the counters.
    pub fn new(read: impl Fn() -> MetricsSnapshot + Send + Sync + 'static) -> Self {
        LiveStats(Arc::new(read))
    }

    /// Reads the counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        (self.0)()
    }

    /// This source with the metrics `extra` reads appended to each snapshot's
    /// [`MetricsSnapshot::extra`] (a service's own counters next to its server's).
    pub fn with_extra(self, extra: impl Fn() -> Vec<ExtraMetric> + Send + Sync + 'static) -> Self {
        LiveStats::new(move || {
            let mut s = self.snapshot();
            s.extra.extend(extra());
            s
        })
    }
}

#[derive(Debug)]
struct SnapshotCollector(MetricsSnapshot);

type Enc<'a, 'b> = &'a mut DescriptorEncoder<'b>;

fn counter(e: Enc<'_, '_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: Enc<'_, '_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter_family(
    e: Enc<'_, '_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (k, v) in values {
        let labels = [(label, *k)];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_extra(e: Enc<'_, '_>, x: &ExtraMetric) -> fmt::Result {
    let kind = match x.kind {
        ExtraKind::Counter => MetricType::Counter,
        ExtraKind::Gauge => MetricType::Gauge,
    };
    let mut m = e.encode_descriptor(&x.name, &x.help, None, kind)?;
    for (labels, v) in &x.samples {
        let m = m.encode_family(labels)?;
        match x.kind {
            ExtraKind::Counter => ConstCounter::new(*v).encode(m)?,
            ExtraKind::Gauge => ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(m)?,
        }
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let m = &self.0;
        let s = &m.server;
        let p = &m.port;
        let e = &mut e;
        let mut info = e.encode_descriptor(
            "backend",
            "The port's backend (1 for the one in use).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(info.encode_family(&[("backend", m.backend.as_str())])?)?;
        gauge(
            e,
            "uptime_seconds",
            "Seconds since the metrics source was made.",
            m.uptime.as_secs(),
        )?;
        counter(e, "server_connections_accepted", "Connections accepted and served.", s.accepted)?;
        counter(
            e,
            "server_connections_refused",
            "Connections accepted and closed at once (max_connections open).",
            s.refused,
        )?;
        gauge(e, "server_connections_active", "Connections open now.", s.active)?;
        counter_family(
            e,
            "server_connections_closed",
            "Connections closed, by reason.",
            "reason",
            &m.closed_by_reason,
        )?;
        counter(
            e,
            "server_messages",
            "Receives that delivered bytes to the service (echo messages, HTTP request reads).",
            m.messages,
        )?;
        counter(e, "server_received_bytes", "Bytes received.", m.bytes_in)?;
        counter(e, "server_sent_bytes", "Bytes sent.", m.bytes_out)?;
        counter_family(
            e,
            "server_errors",
            "Errors, by kind (io: connection I/O errors; accept: failed accepts; panic: service \
             callbacks that panicked; overflow: connections closed for buffering too much input).",
            "kind",
            &[
                ("io", s.io_errors),
                ("accept", s.accept_errors),
                ("panic", s.panics),
                ("overflow", s.overflows),
            ],
        )?;
        counter_family(
            e,
            "server_timeouts",
            "Deadlines that expired, by kind.",
            "kind",
            &[
                ("idle", s.idle_timeouts),
                ("request", s.request_timeouts),
                ("write", s.write_timeouts),
            ],
        )?;
        {
            let mut h = e.encode_descriptor(
                "server_service_seconds",
                "Time spent in service callbacks (on_read, on_sent, on_timeout); one callback in 8 \
                 per worker thread is timed.",
                None,
                MetricType::Histogram,
            )?;
            let t = &m.service_time;
            let mut buckets: Vec<(f64, u64)> =
                SERVICE_TIME_BOUNDS.iter().zip(&t.counts).map(|(b, c)| (*b, *c)).collect();
            buckets.push((f64::INFINITY, t.counts.get(BOUNDS_NS.len()).copied().unwrap_or(0)));
            h.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                t.sum_seconds,
                t.count(),
                &buckets,
                None,
            )?;
        }
        gauge(e, "port_queued", "Packets queued on the port, not yet dequeued.", p.queued)?;
        gauge(e, "port_waiters", "Threads blocked in get.", p.waiters)?;
        gauge(e, "port_running", "Threads counted as running packets.", p.running)?;
        gauge(e, "port_concurrency", "The port's concurrency limit.", m.concurrency as u64)?;
        gauge(e, "port_in_flight", "Operations started and not yet completed.", p.in_flight)?;
        gauge(
            e,
            "port_backlog",
            "io_uring: operations waiting in user space for room in the CQ.",
            p.backlog,
        )?;
        let mut kinds = e.encode_descriptor(
            "port_in_flight_ops",
            "Operations in flight by kind (waiting: io_uring receives and sends queued behind \
             their handle's, not yet in the kernel).",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in m.in_flight_by_kind.labelled() {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(kinds.encode_family(&[("kind", kind)])?)?;
        }
        counter(e, "port_submitted_sqes", "io_uring: SQEs the kernel took.", p.submitted)?;
        counter(
            e,
            "port_submit_enters",
            "io_uring: io_uring_enter calls that submitted (SQEs per call = the ratio).",
            p.submit_enters,
        )?;
        gauge(e, "port_pool_buffers", "Buffers in the port's buffer pools.", p.pool_buffers)?;
        gauge(
            e,
            "port_pool_lent",
            "Pool buffers held by completed receives (not available to new ones).",
            p.pool_lent,
        )?;
        counter(e, "port_posted", "Packets posted.", p.posted)?;
        counter(e, "port_dequeued", "Packets dequeued.", p.dequeued)?;
        counter(e, "port_io_completions", "I/O completions queued.", p.io_completions)?;
        counter(e, "port_sq_full", "io_uring: times an operation waited for room.", p.sq_full)?;
        counter(
            e,
            "port_cq_overflow",
            "io_uring: completions the kernel dropped for lack of CQ room (must stay 0).",
            p.cq_overflow,
        )?;
        let workers: Vec<(String, u64)> =
            m.worker_packets.iter().enumerate().map(|(i, n)| (i.to_string(), *n)).collect();
        let workers: Vec<(&str, u64)> = workers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        counter_family(
            e,
            "pool_worker_packets",
            "Packets each pool worker handled.",
            "worker",
            &workers,
        )?;
        for x in &m.extra {
            encode_extra(e, x)?;
        }
        Ok(())
    }
}

const DASHBOARD: &str = include_str!("metrics/dashboard.html");

/// The metrics endpoint's service (see the module docs). Serve it with [`start`].
#[derive(Debug)]
pub struct MetricsService {
    source: LiveStats,
}

impl MetricsService {
    /// Serves what `source` reads.
    pub fn new(source: LiveStats) -> Self {
        MetricsService { source }
    }

    fn event(&self, io: &mut Io) {
        io.output.extend_from_slice(b"data: ");
        io.output.extend_from_slice(self.source.snapshot().to_json().as_bytes());
        io.output.extend_from_slice(b"\n\n");
    }
}

/// One metrics connection: whether it is an event stream.
#[derive(Debug, Default)]
pub struct MetricsConn {
    events: bool,
}

fn respond(io: &mut Io, status: &str, ctype: &str, body: &[u8], head_only: bool) -> Next {
    use std::io::Write as _;
    let _ = write!(
        io.output,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        io.output.extend_from_slice(body);
    }
    io.input.clear();
    io.close_after_send = true;
    Next::Send
}

impl Service for MetricsService {
    type Conn = MetricsConn;

    fn open(&self, _peer: Option<SocketAddr>) -> MetricsConn {
        MetricsConn::default()
    }

    fn on_read(&self, conn: &mut MetricsConn, io: &mut Io) -> Next {
        if conn.events {
            // An event stream's client has nothing more to say.
            io.input.clear();
            return Next::Read;
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let (method, path) = match req.parse(&io.input) {
            Ok(httparse::Status::Partial) => return Next::Read,
            Ok(httparse::Status::Complete(_)) => {
                (req.method.unwrap_or("").to_owned(), req.path.unwrap_or("").to_owned())
            }
            Err(_) => {
                return respond(io, "400 Bad Request", "text/plain", b"bad request\n", false);
            }
        };
        let head_only = method == "HEAD";
        if method != "GET" && !head_only {
            return respond(io, "405 Method Not Allowed", "text/plain", b"GET only\n", false);
        }
        let path = path.split('?').next().unwrap_or("");
        match path {
            "/metrics" => {
                let body = self.source.snapshot().to_prometheus();
                respond(
                    io,
                    "200 OK",
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    body.as_bytes(),
                    head_only,
                )
            }
            "/health" => respond(io, "200 OK", "text/plain", b"ok\n", head_only),
            "/" | "/index.html" => {
                respond(io, "200 OK", "text/html; charset=utf-8", DASHBOARD.as_bytes(), head_only)
            }
            "/stats.json" => {
                let body = self.source.snapshot().to_json();
                respond(io, "200 OK", "application/json", body.as_bytes(), head_only)
            }
            "/events" if !head_only => {
                conn.events = true;
                io.input.clear();
                io.output.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                      Cache-Control: no-store\r\nConnection: keep-alive\r\n\r\nretry: 1000\n\n",
                );
                self.event(io);
                Next::Send
            }
            _ => respond(io, "404 Not Found", "text/plain", b"not found\n", head_only),
        }
    }

    fn on_sent(&self, _conn: &mut MetricsConn, _io: &mut Io) -> Next {
        // An event stream waits a second (the idle timeout) for its next event; any other
        // response was the last (close_after_send).
        Next::Read
    }

    fn on_timeout(&self, conn: &mut MetricsConn, io: &mut Io, kind: TimeoutKind) -> Next {
        if conn.events && kind == TimeoutKind::Idle {
            self.event(io);
            return Next::Send;
        }
        Next::Close
    }

    fn keeps_open_after_timeout(&self, conn: &MetricsConn) -> bool {
        conn.events
    }
}

/// How often the dashboard's event stream sends an event.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// The metrics endpoint's configuration on `addr`: one worker thread, a few connections, and
/// the event interval (1 s) as the idle timeout (an idle keep-alive connection that is not an
/// event stream is closed then). Set `backend` as the served server's.
pub fn config(addr: SocketAddr) -> ServerConfig {
    ServerConfig {
        addr,
        threads: 1,
        accepts: 4,
        max_connections: 64,
        idle_timeout: Some(EVENT_INTERVAL),
        request_timeout: Some(Duration::from_secs(5)),
        write_timeout: Some(Duration::from_secs(10)),
        read_buffer: 4096,
        max_input: 16 * 1024,
        linger: Duration::from_millis(200),
        grace: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

/// Starts the metrics endpoint: a [`Server`] of its own (its own listener, port and worker)
/// serving [`MetricsService`] over `source`, configured by `cfg` (see [`config`]).
///
/// # Errors
/// As [`Server::start`].
pub fn start(source: LiveStats, cfg: ServerConfig) -> io::Result<Server<MetricsService>> {
    Server::start(MetricsService::new(source), cfg)
}
