//! `iocp serve syslog`: the syslog collector until SIGINT or SIGTERM; SIGHUP reopens files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use iocp_server::syslog::{Collector, Format, Fsync, SyslogConfig, Template};

use crate::serve::{Common, init_logging, print_report, start_metrics};

/// `iocp serve syslog` options.
#[derive(Debug, clap::Args)]
pub(crate) struct SyslogArgs {
    /// TCP input address (RFC 6587: octet counting or LF framing, detected per connection)
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// UDP input address (one message per datagram)
    #[arg(long, value_name = "ADDR")]
    udp: Option<SocketAddr>,
    /// Output directory
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// File layout under DIR: {host} {app} {year} {month} {day} {hour} {facility} {severity} {input}
    #[arg(long, default_value = "{host}/{app}.log")]
    template: String,
    /// Line format: text (the original message) or json (parsed fields and the original)
    #[arg(long, value_name = "text|json", default_value = "text", value_parser = parse_format)]
    format: Format,
    /// When to fsync: none, interval (every --fsync-interval seconds) or batch (after every batch)
    #[arg(long, value_name = "none|interval|batch", default_value = "none", value_parser = parse_fsync)]
    fsync: Fsync,
    /// Seconds between fsyncs with --fsync interval
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    fsync_interval: f64,
    /// Rotate a file before it grows past this size (bytes; k, m, g suffixes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    rotate_size: Option<u64>,
    /// Rotate each file once it has been open this long (30s, 10m, 1h, 1d), as size rotation
    /// does: FILE becomes FILE.1, FILE.1 becomes FILE.2, ...
    #[arg(long, value_name = "DURATION", value_parser = parse_rotate_time)]
    rotate_time: Option<Duration>,
    /// Rotated files kept per log (FILE.1 ... FILE.N)
    #[arg(long, value_name = "N", default_value_t = 5)]
    rotate_keep: u32,
    /// Bound of the queue between inputs and files (bytes; k, m, g suffixes)
    #[arg(long, value_name = "SIZE", default_value = "64m", value_parser = parse_size)]
    queue_size: u64,
    /// Longest message (bytes); longer ones are cut, kept and counted as malformed
    #[arg(long, value_name = "SIZE", default_value = "64k", value_parser = parse_size)]
    max_message: u64,
    /// UDP socket receive buffer (SO_RCVBUF; the kernel caps it at net.core.rmem_max)
    #[arg(long, value_name = "SIZE", default_value = "8m", value_parser = parse_size)]
    udp_rcvbuf: u64,
    /// Print a counters line to stderr every N seconds (0: never)
    #[arg(long, value_name = "N", default_value_t = 0)]
    stats: u64,
    #[command(flatten)]
    pub(crate) common: Common,
}

fn parse_rotate_time(s: &str) -> Result<Duration, String> {
    crate::load::parse_duration(s)
        .and_then(|d| if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) })
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        _ => Err(format!("expected text or json, got {s:?}")),
    }
}

fn parse_fsync(s: &str) -> Result<Fsync, String> {
    match s {
        "none" => Ok(Fsync::None),
        "interval" => Ok(Fsync::Interval),
        "batch" => Ok(Fsync::Batch),
        _ => Err(format!("expected none, interval or batch, got {s:?}")),
    }
}

/// `123`, `64k`, `8m`, `1g` (binary multiples).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("expected a size like 4096, 64k, 8m or 1g, got {s:?}"))
}

enum Event {
    Stop(i32),
    Hangup,
}

pub(crate) fn run(a: &SyslogArgs) -> anyhow::Result<()> {
    init_logging();
    if a.tcp.is_none() && a.udp.is_none() {
        anyhow::bail!(
            "no input: give --tcp ADDR, --udp ADDR or both (only --udp binds no TCP port, only \
             --tcp no UDP port)"
        );
    }
    let template = Template::parse(&a.template).map_err(|e| anyhow::anyhow!("--template: {e}"))?;
    let fsync_interval = Duration::try_from_secs_f64(a.fsync_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--fsync-interval: expected seconds > 0"))?;
    let usize_of = |v: u64, what: &str| {
        usize::try_from(v).map_err(|_| anyhow::anyhow!("--{what}: too large for this machine"))
    };
    let cfg = SyslogConfig {
        tcp: a.tcp,
        udp: a.udp,
        dir: a.dir.clone(),
        template,
        format: a.format,
        fsync: a.fsync,
        fsync_interval,
        rotate_size: a.rotate_size,
        rotate_time: a.rotate_time,
        rotate_keep: a.rotate_keep.max(1),
        max_message: usize_of(a.max_message, "max-message")?,
        queue_bytes: usize_of(a.queue_size, "queue-size")?,
        udp_rcvbuf: usize_of(a.udp_rcvbuf, "udp-rcvbuf")?,
        ..SyslogConfig::default()
    };
    let server = a.common.config(a.tcp.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let backend = server.backend;
    // SIGINT/SIGTERM and SIGHUP are caught before the ready line: a supervisor's signal right
    // after it is a graceful stop or a reopen, never the default disposition (death).
    let (tx, rx) = mpsc::channel();
    let stop = iocp_server::StopSignal::install().context("installing signal handlers")?;
    let hup = tx.clone();
    iocp_server::on_hangup(move || {
        let _ = hup.send(Event::Hangup);
    })
    .context("installing the SIGHUP handler")?;
    let col = Collector::start(cfg, server)
        .with_context(|| format!("starting the syslog collector into {}", a.dir.display()))?;
    eprintln!(
        "iocp syslog: tcp {} udp {} -> {}; SIGHUP reopens files, Ctrl-C or SIGTERM stops",
        col.tcp_addr().map_or("-".into(), |x| x.to_string()),
        col.udp_addr().map_or("-".into(), |x| x.to_string()),
        a.dir.display()
    );
    let metrics = start_metrics(col.live_stats(), a.common.metrics_addr(), backend)?;
    std::thread::Builder::new().name("iocp-stop".into()).spawn(move || {
        if let Ok(sig) = stop.wait() {
            let _ = tx.send(Event::Stop(sig));
        }
    })?;
    let tick = if a.stats == 0 { Duration::from_secs(3600) } else { Duration::from_secs(a.stats) };
    loop {
        match rx.recv_timeout(tick) {
            Ok(Event::Stop(sig)) => {
                eprintln!("iocp syslog: signal {sig}: stopping (writing what was received)");
                break;
            }
            Ok(Event::Hangup) => {
                eprintln!("iocp syslog: SIGHUP: reopening files");
                col.reopen();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if a.stats > 0 {
                    eprintln!("iocp syslog: {}", col.stats());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(m) = metrics {
        m.stop();
    }
    let report = col.stop();
    eprintln!("iocp syslog: {}", report.stats);
    print_report(&report.server);
    if report.stats.lost > 0 {
        anyhow::bail!("{} messages could not be written", report.stats.lost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999g").is_err());
    }

    #[test]
    fn rotate_times() {
        assert_eq!(parse_rotate_time("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_rotate_time("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_rotate_time("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_rotate_time("0s").is_err());
        assert!(parse_rotate_time("soon").is_err());
    }
}
