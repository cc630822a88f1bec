//! The command line of `iocp bench …` and its exit status.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::echo::{EchoLoad, run_echo};
use super::http::{HttpLoad, run_http};
use super::run::raise_fd_limit;

/// `iocp bench …`: the load generator.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Ping-pong over C connections against an echo server
    Echo(EchoArgs),
    /// Keep-alive GET loop over C connections against an HTTP server
    Http(HttpArgs),
    /// N WebSocket clients in R rooms sending at a set rate against a chat server: deliveries/s,
    /// delivery latency, drops
    Chat(super::chat::ChatArgs),
    /// Numbered syslog messages over TCP connections and UDP senders; then counts what reached
    /// the files (--check-dir)
    Syslog(super::syslog::SyslogArgs),
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
    /// and its RSS growth per connection (VmRSS before the first connect and at the window's
    /// start)
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
    /// Scale mode: only this many of the connections send; the rest connect and stay idle
    #[arg(long)]
    active: Option<usize>,
    /// Scale mode: open the connections as fast as they go (up to 60 s for all) and report
    /// the connect time and, with --server-pid, the server's RSS per connection
    #[arg(long)]
    ramp: bool,
    /// Scale mode: open this many connections per second in all (implies --ramp)
    #[arg(long)]
    rate: Option<f64>,
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
/// printed), 2 when it could not run at all (bad arguments, or not one connection made: then
/// only the error is printed, on stderr).
pub(crate) fn cli(cmd: &BenchCommand) -> ExitCode {
    raise_fd_limit();
    let common = match cmd {
        BenchCommand::Echo(a) => &a.common,
        BenchCommand::Http(a) => &a.common,
        BenchCommand::Chat(a) => return chat_cli(a),
        BenchCommand::Syslog(a) => return super::syslog::cli(a),
    };
    let scrape = match super::server_metrics::Scrape::start(common.metrics.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("iocp: error: --metrics: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (report, json) = match cmd {
        BenchCommand::Echo(a) => {
            (echo_load(a).and_then(|load| run_echo(&load, !a.common.json)), a.common.json)
        }
        BenchCommand::Http(a) => (
            HttpLoad::new(&a.url, &a.common).and_then(|load| run_http(&load, !a.common.json)),
            a.common.json,
        ),
        BenchCommand::Chat(a) => return chat_cli(a),
        BenchCommand::Syslog(a) => return super::syslog::cli(a),
    };
    match report {
        Ok(r) => {
            print!("{}", if json { r.json() } else { r.table() });
            match scrape.map(|s| s.finish(json)) {
                Some(Ok(server)) => print!("{server}"),
                Some(Err(e)) => eprintln!("iocp: --metrics: {e:#}"),
                None => {}
            }
            if r.totals.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("iocp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `iocp bench chat`: 0 when nothing was lost or refused, 1 otherwise (the report is still
/// printed), 2 when it could not run.
fn chat_cli(a: &super::chat::ChatArgs) -> ExitCode {
    match super::chat::run_chat(a, !a.json) {
        Ok(r) => {
            print!("{}", if a.json { r.json() } else { r.table() });
            if r.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("iocp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The echo load of the command line, scale mode included.
fn echo_load(a: &EchoArgs) -> anyhow::Result<EchoLoad> {
    let mut load = EchoLoad::new(a.addr, a.size, a.pipeline, &a.common)?;
    if let Some(n) = a.active {
        if n > a.common.connections {
            bail!("--active {n} is more than --connections {}", a.common.connections);
        }
        load.plan.active = n;
    }
    if a.ramp || a.rate.is_some() {
        load.plan.ramp(a.rate)?;
    }
    Ok(load)
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
        "h" => x * 3600.0,
        "d" => x * 86400.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s, m, h, d)")),
    };
    if !(secs.is_finite() && (0.0..1e6).contains(&secs)) {
        return Err(format!("out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
