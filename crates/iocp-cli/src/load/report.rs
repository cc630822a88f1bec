//! What a load run measured: a thread's [`Recorder`], the merged [`Totals`] (counts, rates,
//! latency, errors, CPU) and the [`Report`] printed as a table or one JSON line.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::plan::Plan;
use crate::json::Json;
use crate::table::{self, Align};

/// Why an exchange or a connection failed. The discriminant indexes the per-run counts.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Fault {
    /// The connect was refused (nothing listening).
    ConnectRefused = 0,
    /// The connect did not finish in time.
    ConnectTimeout,
    /// The connect failed otherwise (out of descriptors, unreachable, …).
    ConnectOther,
    /// The server reset the connection.
    Reset,
    /// The server closed the connection while a reply was owed.
    Closed,
    /// A reply that is not what was asked: garbled echo, extra bytes, malformed HTTP.
    BadReply,
    /// An HTTP response with `Transfer-Encoding: chunked` (not supported by this generator).
    Chunked,
    /// No reply within `--timeout`.
    Timeout,
    /// Another I/O error.
    Io,
}

impl Fault {
    /// How many kinds there are.
    pub(crate) const COUNT: usize = 9;
    const ALL: [Fault; Fault::COUNT] = [
        Fault::ConnectRefused,
        Fault::ConnectTimeout,
        Fault::ConnectOther,
        Fault::Reset,
        Fault::Closed,
        Fault::BadReply,
        Fault::Chunked,
        Fault::Timeout,
        Fault::Io,
    ];

    /// The name used in tables and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::ConnectRefused => "connect_refused",
            Fault::ConnectTimeout => "connect_timeout",
            Fault::ConnectOther => "connect_other",
            Fault::Reset => "reset",
            Fault::Closed => "closed",
            Fault::BadReply => "bad_reply",
            Fault::Chunked => "chunked",
            Fault::Timeout => "timeout",
            Fault::Io => "io",
        }
    }

    /// Classifies an I/O error on an established connection.
    pub(crate) fn from_io(e: &io::Error) -> Fault {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Fault::Reset,
            _ => Fault::Io,
        }
    }
}

/// Where a thread's completed exchanges go: only those that finish inside the window count.
#[derive(Debug)]
pub(crate) struct Recorder {
    window: (Instant, Instant),
    pub(super) hist: Histogram<u64>,
    /// Exchanges completed in the window.
    pub(super) msgs: u64,
    /// Payload bytes received in the window (echo: message bytes; HTTP: whole responses).
    pub(super) bytes: u64,
    /// Exchanges completed since the last progress flush, window or not.
    pub(super) progress: u64,
    /// HTTP status counts in the window, indexed by status code.
    pub(super) statuses: Vec<u64>,
}

impl Recorder {
    pub(super) fn new(window: (Instant, Instant)) -> Recorder {
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
pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("invariant: valid static bounds")
}

/// What one run of one protocol measured, as `iocp bench` prints it.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    /// The protocol: `echo` or `http`.
    pub(crate) bench: &'static str,
    /// One exchange in tables (`msg`, `req`) and the JSON key of their count (`msgs`,
    /// `requests`).
    pub(crate) unit: (&'static str, &'static str),
    /// The table's `load` row.
    pub(crate) load: String,
    /// The protocol's own JSON fields, before the common ones.
    pub(crate) fields: Vec<(&'static str, Json)>,
    /// Whether the JSON ends with the HTTP status classes (`status: {"2xx": …}`).
    pub(crate) status_classes: bool,
    /// Counts, rates, latency, status codes, errors and CPU.
    pub(crate) totals: Totals,
}

impl Report {
    /// Exchanges (messages, requests) per second.
    pub(crate) fn rate(&self) -> f64 {
        self.totals.rate()
    }

    /// 99th percentile latency in microseconds.
    pub(crate) fn p99_us(&self) -> f64 {
        self.totals.latency.p99
    }

    /// A plain-text table, one line per quantity.
    pub(crate) fn table(&self) -> String {
        let mut rows = vec![row("load", self.load.clone())];
        rows.extend(self.totals.rows(self.unit.0));
        Totals::render(&rows)
    }

    /// One JSON object line (with the newline).
    pub(crate) fn json(&self) -> String {
        let mut fields = vec![("bench", Json::str(self.bench))];
        fields.extend(self.fields.iter().cloned());
        fields.extend(self.totals.json_fields(self.unit.1));
        if self.status_classes {
            let class = |lo: u16| {
                Json::Int(self.totals.statuses.range(lo..lo + 100).map(|(_, n)| n).sum::<u64>())
            };
            let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
            let by_class = classes.iter().zip((100..).step_by(100)).map(|(k, lo)| (*k, class(lo)));
            fields.push(("status", Json::Obj(by_class.collect())));
        }
        format!("{}\n", Json::Obj(fields))
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Latency {
    /// Mean.
    pub(crate) mean: f64,
    /// Median.
    pub(crate) p50: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Maximum.
    pub(crate) max: f64,
}

impl Latency {
    /// The percentiles of a histogram in nanoseconds (all zero when it is empty).
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The protocol-independent part of a report.
#[derive(Clone, Debug)]
pub(crate) struct Totals {
    /// Where the load went.
    pub(crate) addr: SocketAddr,
    /// Connections asked for.
    pub(crate) connections: usize,
    /// Connections that connected at the start.
    pub(crate) connected: u64,
    /// Generator threads.
    pub(crate) threads: usize,
    /// The generator's I/O loop.
    pub(crate) engine: &'static str,
    /// The warm-up asked for.
    pub(crate) warmup: Duration,
    /// The window asked for.
    pub(crate) duration: Duration,
    /// The window actually measured (shorter when every connection failed early).
    pub(crate) window: Duration,
    /// Exchanges completed in the window.
    pub(crate) msgs: u64,
    /// Bytes received in the window.
    pub(crate) bytes: u64,
    /// Latency of the window's exchanges.
    pub(crate) latency: Latency,
    /// Errors by kind over the whole run (connect, warm-up and window).
    pub(crate) faults: [u64; Fault::COUNT],
    /// HTTP status counts in the window.
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Reconnects after `Connection: close`.
    pub(crate) reconnects: u64,
    /// The generator threads' CPU time over the window.
    pub(crate) gen_cpu: Duration,
    /// The `--server-pid` process's CPU time over the window.
    pub(crate) server_cpu: Option<Duration>,
    /// From the first connect until every generator thread was connected (or gave up).
    pub(crate) connect_time: Duration,
    /// How long each successful first connect took.
    pub(crate) connect_latency: Latency,
    /// The `--server-pid` process's resident memory in bytes before the first connect and at
    /// the start of the window.
    pub(crate) server_rss: Option<(u64, u64)>,
}

impl Totals {
    pub(crate) fn new(plan: &Plan) -> Totals {
        Totals {
            addr: plan.addr,
            connections: plan.connections,
            connected: 0,
            threads: plan.threads,
            engine: plan.engine.name(),
            warmup: plan.warmup,
            duration: plan.duration,
            window: Duration::ZERO,
            msgs: 0,
            bytes: 0,
            latency: Latency::default(),
            faults: [0; Fault::COUNT],
            statuses: BTreeMap::new(),
            reconnects: 0,
            gen_cpu: Duration::ZERO,
            server_cpu: None,
            connect_time: Duration::ZERO,
            connect_latency: Latency::default(),
            server_rss: None,
        }
    }

    /// Server RSS growth per connection connected, in bytes, with `--server-pid`.
    pub(crate) fn server_rss_per_conn(&self) -> Option<f64> {
        let (before, after) = self.server_rss?;
        (self.connected > 0).then(|| (after as f64 - before as f64) / self.connected as f64)
    }

    /// Errors of every kind.
    pub(crate) fn errors(&self) -> u64 {
        self.faults.iter().sum()
    }

    /// The errors by kind, e.g. `connect_refused 3, timeout 1`, or `0`.
    pub(crate) fn error_summary(&self) -> String {
        let errors: Vec<String> = Fault::ALL
            .iter()
            .filter(|f| self.faults[**f as usize] > 0)
            .map(|f| format!("{} {}", f.name(), self.faults[*f as usize]))
            .collect();
        if errors.is_empty() { "0".to_owned() } else { errors.join(", ") }
    }

    /// A run that had errors or completed nothing: the command exits non-zero.
    pub(crate) fn failed(&self) -> bool {
        self.errors() > 0 || self.msgs == 0
    }

    /// Exchanges per second over the window.
    pub(crate) fn rate(&self) -> f64 {
        per_sec(self.msgs as f64, self.window)
    }

    /// Megabytes (10^6) per second received over the window.
    pub(crate) fn mb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1e6, self.window)
    }

    /// Generator CPU per exchange in microseconds.
    pub(crate) fn gen_us_per_msg(&self) -> Option<f64> {
        (self.msgs > 0).then(|| self.gen_cpu.as_secs_f64() * 1e6 / self.msgs as f64)
    }

    /// Server CPU per exchange in microseconds, with `--server-pid`.
    pub(crate) fn server_us_per_msg(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.msgs > 0).then(|| cpu.as_secs_f64() * 1e6 / self.msgs as f64)
    }

    /// Table rows: (name, value).
    pub(crate) fn rows(&self, unit: &str) -> Vec<Vec<String>> {
        let mut rows = vec![
            row("target", self.addr.to_string()),
            row(
                "connections",
                format!(
                    "{} ({} connected; {} generator threads, {} engine)",
                    self.connections, self.connected, self.threads, self.engine
                ),
            ),
            row(
                "connect",
                format!(
                    "{:.2} s in all; each p50 {:.0}  p99 {:.0}  max {:.0} µs",
                    self.connect_time.as_secs_f64(),
                    self.connect_latency.p50,
                    self.connect_latency.p99,
                    self.connect_latency.max
                ),
            ),
            row(
                "window",
                format!(
                    "{:.2} s after {:.1} s warm-up",
                    self.window.as_secs_f64(),
                    self.warmup.as_secs_f64()
                ),
            ),
            row(&format!("{unit}s"), table::thousands(self.msgs)),
            row(&format!("{unit}s/s"), table::thousands(self.rate().round() as u64)),
            row("MB/s", format!("{:.1}", self.mb_per_sec())),
            row(
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
        ];
        if !self.statuses.is_empty() {
            let s: Vec<String> = self.statuses.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            rows.push(row("status", s.join("  ")));
        }
        if self.reconnects > 0 {
            rows.push(row("reconnects", table::thousands(self.reconnects)));
        }
        rows.push(row("errors", self.error_summary()));
        if let Some(g) = self.gen_us_per_msg() {
            rows.push(row(&format!("generator CPU µs/{unit}"), format!("{g:.2}")));
        }
        if let Some(s) = self.server_us_per_msg() {
            rows.push(row(&format!("server CPU µs/{unit}"), format!("{s:.2}")));
        }
        if let (Some((before, after)), Some(per)) = (self.server_rss, self.server_rss_per_conn()) {
            let mb = |b: u64| b as f64 / 1e6;
            let text = format!(
                "{:.1} MB before connecting, {:.1} MB connected: {per:.0} B per connection",
                mb(before),
                mb(after)
            );
            rows.push(row("server RSS", text));
        }
        rows
    }

    /// Renders `rows` as the two-column table every report prints.
    pub(crate) fn render(rows: &[Vec<String>]) -> String {
        table::render(None, rows, &[Align::Left, Align::Left], "  ")
    }

    /// JSON fields common to every report, after the protocol's own.
    pub(crate) fn json_fields(&self, unit: &'static str) -> Vec<(&'static str, Json)> {
        let opt = |x: Option<f64>| x.map_or(Json::Null, |v| Json::Num((v * 100.0).round() / 100.0));
        let faults = Fault::ALL.iter().map(|f| (f.name(), Json::Int(self.faults[*f as usize])));
        vec![
            ("addr", Json::str(self.addr.to_string())),
            ("connections", Json::Int(self.connections as u64)),
            ("connected", Json::Int(self.connected)),
            ("threads", Json::Int(self.threads as u64)),
            ("engine", Json::str(self.engine)),
            ("warmup_s", Json::Num(self.warmup.as_secs_f64())),
            ("duration_s", Json::Num(self.duration.as_secs_f64())),
            ("window_s", Json::Num((self.window.as_secs_f64() * 1000.0).round() / 1000.0)),
            (unit, Json::Int(self.msgs)),
            ("rate", Json::num1(self.rate())),
            ("bytes", Json::Int(self.bytes)),
            ("mb_per_s", Json::Num((self.mb_per_sec() * 100.0).round() / 100.0)),
            (
                "latency_us",
                Json::Obj(vec![
                    ("mean", Json::num1(self.latency.mean)),
                    ("p50", Json::num1(self.latency.p50)),
                    ("p99", Json::num1(self.latency.p99)),
                    ("p999", Json::num1(self.latency.p999)),
                    ("max", Json::num1(self.latency.max)),
                ]),
            ),
            ("errors", Json::Int(self.errors())),
            ("error_kinds", Json::Obj(faults.collect())),
            ("reconnects", Json::Int(self.reconnects)),
            ("gen_cpu_us_per_msg", opt(self.gen_us_per_msg())),
            ("server_cpu_us_per_msg", opt(self.server_us_per_msg())),
            ("connect_s", Json::Num((self.connect_time.as_secs_f64() * 1000.0).round() / 1000.0)),
            (
                "connect_us",
                Json::Obj(vec![
                    ("p50", Json::num1(self.connect_latency.p50)),
                    ("p99", Json::num1(self.connect_latency.p99)),
                    ("max", Json::num1(self.connect_latency.max)),
                ]),
            ),
            ("server_rss_before", self.server_rss.map_or(Json::Null, |r| Json::Int(r.0))),
            ("server_rss_after", self.server_rss.map_or(Json::Null, |r| Json::Int(r.1))),
            ("server_rss_per_conn", opt(self.server_rss_per_conn())),
        ]
    }
}

fn row(name: &str, value: String) -> Vec<String> {
    vec![name.to_owned(), value]
}

fn per_sec(x: f64, window: Duration) -> f64 {
    let s = window.as_secs_f64();
    if s > 0.0 { x / s } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[test]
    fn every_fault_is_listed_once_in_order() {
        for (i, f) in Fault::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "{}", f.name());
        }
    }
}
