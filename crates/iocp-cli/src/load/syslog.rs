//! `iocp bench syslog`: numbered syslog messages over TCP connections and UDP senders, then a
//! count of what reached the files.
//!
//! # Implementation
//!
//! One std thread per sender with a blocking socket (no `iocp` code on the sending side, so a
//! bug in the collector under test cannot skew the numbers, and the same generator measures
//! rsyslog). Each message carries `iocpbench r=RUN s=SENDER n=SEQ` (RUN is random per run, so
//! lines of earlier runs in the same directory are told apart), inside an RFC 5424 or RFC 3164
//! line padded to `--size` bytes. A TCP sender puts up to `--batch` messages in one `write`
//! (LF or RFC 6587 octet-counted framing), then half-closes and waits (bounded) for the
//! server's EOF, so every byte it counts as sent was taken by the kernel and read by the server.
//! A UDP sender sends one datagram per message. `--rate` paces all senders together (each gets
//! its share); without it they go flat out.
//!
//! With `--check-dir`, the bench then waits until the files under the directory stop growing
//! (`--settle`, bounded by `--settle-max`), reads every file, and counts per sender the messages
//! written, missing, duplicated and out of order ([`Tally`]). "Written msgs/s" is the messages
//! found over the time from the first send to the last growth seen.

use std::fs;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::parse_duration;
use super::run::process_cpu;
use crate::json::Json;
use crate::table::{self, Align};

/// The marker every message carries; the check looks for it on every line.
const MARK: &str = "iocpbench r=";

/// `iocp bench syslog`.
#[derive(Debug, Args)]
pub(crate) struct SyslogArgs {
    /// The collector's TCP input (with --connections senders)
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// The collector's UDP input (with --udp-senders senders)
    #[arg(long, value_name = "ADDR")]
    udp: Option<SocketAddr>,
    /// TCP connections (one sender thread each)
    #[arg(long, short = 'c', default_value_t = 4)]
    connections: usize,
    /// UDP senders (one thread and socket each)
    #[arg(long, default_value_t = 1)]
    udp_senders: usize,
    /// Messages in all, shared out among the senders (default 100000 without --duration)
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Stop sending after this long (10s, 500ms, 2m); with --count, whichever comes first
    #[arg(long, short = 'd', value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Messages per second in all (default: flat out)
    #[arg(long)]
    rate: Option<f64>,
    /// Message format
    #[arg(long, value_enum, default_value_t = MsgFormat::Rfc5424)]
    format: MsgFormat,
    /// TCP framing: LF-terminated lines or RFC 6587 octet counting
    #[arg(long, value_enum, default_value_t = Framing::Lf)]
    framing: Framing,
    /// Message size in bytes (padded; at least what the header and the numbers take)
    #[arg(long, short = 's', default_value_t = 120)]
    size: usize,
    /// Messages per TCP write
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Afterwards, read the files under DIR and count written, missing, duplicated and
    /// out-of-order messages per sender
    #[arg(long, value_name = "DIR")]
    check_dir: Option<PathBuf>,
    /// With --check-dir: the files count as complete once they have not grown for this long
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
    /// With --check-dir: the longest wait for the files to settle
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    settle_max: Duration,
    /// With --check-dir: also follow the files while the run goes and report the time from
    /// each message's send to its line being readable in a file (p50/p99/p99.9/max; the
    /// collector's write: with `--fsync batch` each batch is written after the previous one's
    /// fsync). Reading the files as they grow costs this process CPU beside the collector
    #[arg(long)]
    latency: bool,
    /// Also report this process's CPU time per message (from /proc/PID/stat)
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object line instead of tables (and no progress bar)
    #[arg(long)]
    json: bool,
}

/// The syslog line format sent.
#[derive(Clone, Copy, Debug, Eq, PartialEq, clap::ValueEnum)]
pub(crate) enum MsgFormat {
    /// `<134>1 TIMESTAMP HOST APP PROCID - - MSG`
    Rfc5424,
    /// `<134>Mmm dd hh:mm:ss HOST APP[PROCID]: MSG`
    Rfc3164,
}

/// How TCP messages are delimited.
#[derive(Clone, Copy, Debug, Eq, PartialEq, clap::ValueEnum)]
pub(crate) enum Framing {
    /// A line feed after each message.
    Lf,
    /// `LEN SP MSG` (RFC 6587 octet counting).
    Octet,
}

/// Builds the numbered messages of one run.
#[derive(Clone, Debug)]
pub(crate) struct Maker {
    run: u64,
    format: MsgFormat,
    size: usize,
}

impl Maker {
    pub(crate) fn new(run: u64, format: MsgFormat, size: usize) -> Maker {
        Maker { run, format, size }
    }

    /// Appends message `seq` of `sender` (without framing) to `out`; `sent_us` is when it is
    /// sent, in microseconds since the run's start (`t=`, for `--latency`).
    pub(crate) fn message(&self, sender: u32, seq: u64, sent_us: u64, out: &mut Vec<u8>) {
        let start = out.len();
        // Fixed timestamps: formatting the clock per message would cost more than the rest.
        let _ = match self.format {
            MsgFormat::Rfc5424 => write!(
                out,
                "<134>1 2026-01-01T00:00:00.000000Z bench iocpbench {sender} - - {MARK}{} s={sender} n={seq} t={sent_us} ",
                self.run
            ),
            MsgFormat::Rfc3164 => write!(
                out,
                "<134>Jan  1 00:00:00 bench iocpbench[{sender}]: {MARK}{} s={sender} n={seq} t={sent_us} ",
                self.run
            ),
        };
        let pad = self.size.saturating_sub(out.len() - start);
        out.extend(std::iter::repeat_n(b'x', pad));
    }

    /// Appends message `seq` of `sender` framed for TCP.
    pub(crate) fn framed(
        &self,
        framing: Framing,
        sender: u32,
        seq: u64,
        sent_us: u64,
        out: &mut Vec<u8>,
    ) {
        match framing {
            Framing::Lf => {
                self.message(sender, seq, sent_us, out);
                out.push(b'\n');
            }
            Framing::Octet => {
                let mut msg = Vec::with_capacity(self.size + 64);
                self.message(sender, seq, sent_us, &mut msg);
                let _ = write!(out, "{} ", msg.len());
                out.extend_from_slice(&msg);
            }
        }
    }
}

/// `(run, sender, seq)` of a line carrying the marker, else `None`.
pub(crate) fn parse_mark(line: &[u8]) -> Option<(u64, u32, u64)> {
    let text = String::from_utf8_lossy(line);
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let mut words = rest.split(' ');
    let run = words.next()?.parse().ok()?;
    let sender = words.next()?.strip_prefix("s=")?.parse().ok()?;
    let seq = words.next()?.strip_prefix("n=")?.parse().ok()?;
    Some((run, sender, seq))
}

/// The `t=` of a line of run `run` (microseconds from the run's start to its send).
pub(crate) fn parse_sent_at(line: &[u8], run: u64) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let mut words = rest.split(' ');
    if words.next()?.parse::<u64>().ok()? != run {
        return None;
    }
    words.find_map(|w| w.strip_prefix("t="))?.parse().ok()
}

/// Follows the files under a directory as they grow (`--latency`): each whole new line of
/// this run gives the time from its send to now.
struct Follower {
    dir: PathBuf,
    run: u64,
    start: Instant,
    /// Per file: bytes read so far and the unfinished tail of the last read.
    files: std::collections::HashMap<PathBuf, (u64, Vec<u8>)>,
    /// Microseconds from send to seen.
    hist: hdrhistogram::Histogram<u64>,
}

impl Follower {
    fn new(dir: PathBuf, run: u64, start: Instant) -> Follower {
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("invariant: valid static bounds");
        Follower { dir, run, start, files: std::collections::HashMap::new(), hist }
    }

    /// Reads what the files gained since the last call.
    fn poll(&mut self) -> anyhow::Result<()> {
        for (path, len) in files_under(&self.dir)? {
            let (read, tail) = self.files.entry(path.clone()).or_default();
            if len <= *read {
                continue;
            }
            let mut f =
                fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            std::io::Seek::seek(&mut f, io::SeekFrom::Start(*read))?;
            let mut buf = Vec::with_capacity(usize::try_from(len - *read).unwrap_or(0));
            f.take(len - *read).read_to_end(&mut buf)?;
            *read += buf.len() as u64;
            let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            tail.extend_from_slice(&buf);
            let mut used = 0;
            while let Some(i) = tail[used..].iter().position(|&b| b == b'\n') {
                if let Some(t) = parse_sent_at(&tail[used..used + i], self.run) {
                    self.hist.saturating_record(now.saturating_sub(t).max(1));
                }
                used += i + 1;
            }
            tail.drain(..used);
        }
        Ok(())
    }
}

/// What the check found for one sender.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SenderCheck {
    /// Messages sent (taken by the kernel).
    pub(crate) sent: u64,
    /// Distinct messages found.
    pub(crate) written: u64,
    /// Sent and not found.
    pub(crate) missing: u64,
    /// Found more than once (each extra copy counts).
    pub(crate) duplicated: u64,
    /// Found after a message of the same sender with a higher number (same file order).
    pub(crate) out_of_order: u64,
}

/// Counts the marked lines of one run, per sender.
#[derive(Debug)]
pub(crate) struct Tally {
    run: u64,
    senders: Vec<SenderTally>,
    /// Lines without this run's marker (other runs, other programs).
    pub(crate) other: u64,
    /// Marked lines of this run naming a sender or number that was never sent.
    pub(crate) unexpected: u64,
}

#[derive(Debug)]
struct SenderTally {
    sent: u64,
    seen: Vec<u64>,
    written: u64,
    duplicated: u64,
    out_of_order: u64,
    last: Option<u64>,
}

impl Tally {
    /// A tally for run `run` whose sender `i` sent messages `0..sent[i]`.
    pub(crate) fn new(run: u64, sent: &[u64]) -> Tally {
        let senders = sent
            .iter()
            .map(|&n| SenderTally {
                sent: n,
                seen: vec![0; usize::try_from(n.div_ceil(64)).unwrap_or(0)],
                written: 0,
                duplicated: 0,
                out_of_order: 0,
                last: None,
            })
            .collect();
        Tally { run, senders, other: 0, unexpected: 0 }
    }

    /// Counts one line (files are read in order, lines in file order).
    pub(crate) fn line(&mut self, line: &[u8]) {
        let Some((run, sender, seq)) = parse_mark(line).filter(|m| m.0 == self.run) else {
            self.other += 1;
            return;
        };
        debug_assert_eq!(run, self.run);
        let Some(t) = usize::try_from(sender).ok().and_then(|s| self.senders.get_mut(s)) else {
            self.unexpected += 1;
            return;
        };
        if seq >= t.sent {
            self.unexpected += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if t.seen[word] & bit != 0 {
            t.duplicated += 1;
            return;
        }
        t.seen[word] |= bit;
        t.written += 1;
        if t.last.is_some_and(|last| seq < last) {
            t.out_of_order += 1;
        }
        t.last = Some(t.last.map_or(seq, |last| last.max(seq)));
    }

    /// The per-sender result.
    pub(crate) fn result(&self) -> Vec<SenderCheck> {
        self.senders
            .iter()
            .map(|t| SenderCheck {
                sent: t.sent,
                written: t.written,
                missing: t.sent - t.written,
                duplicated: t.duplicated,
                out_of_order: t.out_of_order,
            })
            .collect()
    }
}

/// Every regular file under `dir`, sorted by path.
fn files_under(dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                todo.push(e.path());
            } else if meta.is_file() {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every file under `dir` into `tally`.
fn scan(dir: &Path, tally: &mut Tally) -> anyhow::Result<()> {
    let mut line = Vec::with_capacity(1024);
    for (path, _) in files_under(dir)? {
        let f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?
                == 0
            {
                break;
            }
            tally.line(&line);
        }
    }
    Ok(())
}

/// Waits until the files under `dir` have not grown for `settle` (at most `max`); returns when
/// they last grew (or `since` if they never did).
fn settle(dir: &Path, since: Instant, settle: Duration, max: Duration) -> anyhow::Result<Instant> {
    let end = Instant::now() + max;
    let size = || -> anyhow::Result<u64> {
        Ok(files_under(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .iter()
            .map(|f| f.1)
            .sum())
    };
    let (mut last, mut grew) = (size()?, since);
    loop {
        thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        let s = size()?;
        if s != last {
            (last, grew) = (s, now);
        } else if now.duration_since(grew.max(since)) >= settle || now >= end {
            return Ok(grew);
        }
    }
}

/// What one sender did.
#[derive(Debug, Default)]
struct SenderOut {
    sent: u64,
    errors: u64,
    first_error: Option<String>,
    /// The sender thread's CPU time.
    cpu: Duration,
}

/// This thread's CPU time.
pub(crate) fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// What a run found, for callers in this process (`iocp demo`).
#[derive(Clone, Debug, Default)]
pub(crate) struct SyslogOutcome {
    /// Every message sent without error and (with a check) every TCP message found once, in
    /// order.
    pub(crate) ok: bool,
    pub(crate) sent: u64,
    pub(crate) errors: u64,
    /// With a check: messages found, missing, found twice, out of order, not of this run.
    pub(crate) written: u64,
    pub(crate) missing: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    pub(crate) unexpected: u64,
    /// Messages found over the time from the first send to the last growth of the files.
    pub(crate) written_per_s: Option<f64>,
    /// The sender threads' CPU time (the generator's share of this process).
    pub(crate) sender_cpu: Duration,
}

impl SyslogArgs {
    /// A TCP run for `iocp demo`: `connections` senders flat out for `duration` or `count`
    /// messages in all, whichever comes first, checked in `dir` (settled after 300 ms).
    pub(crate) fn demo(
        tcp: SocketAddr,
        connections: usize,
        duration: Duration,
        count: u64,
        dir: PathBuf,
    ) -> SyslogArgs {
        SyslogArgs {
            tcp: Some(tcp),
            udp: None,
            connections,
            udp_senders: 0,
            count: Some(count),
            duration: Some(duration),
            rate: None,
            format: MsgFormat::Rfc5424,
            framing: Framing::Lf,
            size: 120,
            batch: 64,
            check_dir: Some(dir),
            settle: Duration::from_millis(300),
            settle_max: Duration::from_secs(10),
            latency: false,
            server_pid: None,
            json: true,
        }
    }
}

/// What every sender shares.
struct Shared {
    maker: Maker,
    framing: Framing,
    batch: usize,
    stop: AtomicBool,
    sent: AtomicU64,
    start: Instant,
    end: Option<Instant>,
}

/// How many of `want` messages a sender that has sent `sent` may send now at `rate` a second
/// (None: flat out); when none is due yet, it sleeps a little first and returns 0.
fn pace(shared: &Shared, sent: u64, rate: Option<f64>, want: u64) -> u64 {
    let Some(rate) = rate else { return want };
    let due = (shared.start.elapsed().as_secs_f64() * rate) as u64 + 1;
    if due > sent {
        return want.min(due - sent);
    }
    // Not yet due: sleep until the next message is (pacing, not synchronisation).
    let next = Duration::from_secs_f64(sent as f64 / rate);
    thread::sleep(next.saturating_sub(shared.start.elapsed()).min(Duration::from_millis(50)));
    0
}

/// Microseconds since the run's start (a message's `t=`).
fn sent_us(shared: &Shared) -> u64 {
    u64::try_from(shared.start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn time_up(shared: &Shared) -> bool {
    shared.stop.load(Ordering::Relaxed) || shared.end.is_some_and(|e| Instant::now() >= e)
}

fn tcp_sender(
    shared: &Shared,
    addr: SocketAddr,
    id: u32,
    quota: u64,
    rate: Option<f64>,
) -> SenderOut {
    let mut out = SenderOut::default();
    let fail = |out: &mut SenderOut, e: &dyn std::fmt::Display| {
        out.errors += 1;
        out.first_error.get_or_insert_with(|| format!("tcp sender {id}: {e}"));
    };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            fail(&mut out, &e);
            return out;
        }
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(shared.batch * (shared.maker.size + 80));
    while out.sent < quota && !time_up(shared) {
        let n = pace(shared, out.sent, rate, (quota - out.sent).min(shared.batch as u64));
        if n == 0 {
            continue;
        }
        buf.clear();
        let now = sent_us(shared);
        for seq in out.sent..out.sent + n {
            shared.maker.framed(shared.framing, id, seq, now, &mut buf);
        }
        if let Err(e) = s.write_all(&buf) {
            fail(&mut out, &e);
            return out;
        }
        out.sent += n;
        shared.sent.fetch_add(n, Ordering::Relaxed);
    }
    // Half-close and wait for the server's EOF: then it has read everything sent.
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !matches!(e.kind(), io::ErrorKind::ConnectionReset) {
                    fail(&mut out, &format!("waiting for the server to close: {e}"));
                }
                break;
            }
        }
    }
    out
}

fn udp_sender(
    shared: &Shared,
    addr: SocketAddr,
    id: u32,
    quota: u64,
    rate: Option<f64>,
) -> SenderOut {
    let mut out = SenderOut::default();
    let bind: SocketAddr =
        if addr.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { "[::1]:0".parse().expect("v6") };
    let s = match UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            out.errors += 1;
            out.first_error = Some(format!("udp sender {id}: {e}"));
            return out;
        }
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(shared.maker.size + 80);
    let mut seq = 0;
    while seq < quota && !time_up(shared) {
        let n = pace(shared, seq, rate, (quota - seq).min(64));
        for _ in 0..n {
            buf.clear();
            shared.maker.message(id, seq, sent_us(shared), &mut buf);
            match s.send(&buf) {
                Ok(_) => {
                    // Numbers are only given to datagrams the kernel took.
                    seq += 1;
                    out.sent += 1;
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert_with(|| format!("udp sender {id}: {e}"));
                    if out.errors > 1000 {
                        return out;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    out
}

/// The share of `total` of sender `i` of `n`.
fn share(total: u64, i: usize, n: usize) -> u64 {
    let (n64, i64) = (n as u64, i as u64);
    total / n64 + u64::from(i64 < total % n64)
}

/// One sender's row.
struct Row {
    proto: &'static str,
    out: SenderOut,
}

/// Runs `iocp bench syslog`: 0 when every message was sent without error and (with
/// `--check-dir`) every TCP message was found once and in order; 1 otherwise (UDP loss is
/// reported, not an error); 2 when it could not run.
pub(crate) fn cli(a: &SyslogArgs) -> ExitCode {
    match run(a) {
        Ok((text, outcome)) => {
            print!("{text}");
            if outcome.ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("iocp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the bench: the report (a table, or a JSON line with `--json`) and what it found.
pub(crate) fn run(a: &SyslogArgs) -> anyhow::Result<(String, SyslogOutcome)> {
    let tcp_n = if a.tcp.is_some() { a.connections } else { 0 };
    let udp_n = if a.udp.is_some() { a.udp_senders } else { 0 };
    let senders = tcp_n + udp_n;
    if senders == 0 {
        bail!(
            "give --tcp ADDR (with --connections > 0), --udp ADDR (with --udp-senders > 0) or both"
        );
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Some(r) = a.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be a positive number of messages per second");
    }
    let count = a.count.unwrap_or(if a.duration.is_some() { u64::MAX } else { 100_000 });
    if let Some(dir) = &a.check_dir
        && !dir.is_dir()
    {
        bail!("--check-dir {}: not a directory", dir.display());
    }
    if a.latency && a.check_dir.is_none() {
        bail!("--latency follows the files: give --check-dir DIR");
    }
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 40);
    let run_id = run_id % 1_000_000_000_000;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        maker: Maker::new(run_id, a.format, a.size),
        framing: a.framing,
        batch: a.batch,
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        start,
        end: a.duration.map(|d| start + d),
    });
    let server_cpu0 = a.server_pid.and_then(process_cpu);
    let gen_cpu0 = process_cpu(std::process::id());
    let per_rate = a.rate.map(|r| r / senders as f64);
    // With only --duration, a sender's quota is unbounded (the check sizes its bitmaps by what
    // was sent).
    let mut handles = Vec::with_capacity(senders);
    for i in 0..senders {
        let quota = if count == u64::MAX { u64::MAX } else { share(count, i, senders) };
        let shared = Arc::clone(&shared);
        let (addr, tcp) =
            if i < tcp_n { (a.tcp.expect("tcp"), true) } else { (a.udp.expect("udp"), false) };
        let id = u32::try_from(i).context("too many senders")?;
        let h = thread::Builder::new().name(format!("sender-{i}")).spawn(move || {
            let mut out = if tcp {
                tcp_sender(&shared, addr, id, quota, per_rate)
            } else {
                udp_sender(&shared, addr, id, quota, per_rate)
            };
            out.cpu = thread_cpu();
            out
        })?;
        handles.push((if tcp { "tcp" } else { "udp" }, h));
    }
    // --latency: follow the files from the start, until the check below has seen them settle.
    let follow_stop = Arc::new(AtomicBool::new(false));
    let follower = match (&a.check_dir, a.latency) {
        (Some(dir), true) => {
            let mut f = Follower::new(dir.clone(), run_id, start);
            let stop = Arc::clone(&follow_stop);
            Some(thread::Builder::new().name("follow".into()).spawn(move || {
                let mut result = Ok(());
                while !stop.load(Ordering::Relaxed) && result.is_ok() {
                    result = f.poll();
                    thread::sleep(Duration::from_millis(2));
                }
                result.and_then(|()| f.poll()).map(|()| f.hist)
            })?)
        }
        _ => None,
    };
    let bar = progress(!a.json, count, a.duration);
    while handles.iter().any(|(_, h)| !h.is_finished()) {
        thread::sleep(Duration::from_millis(50));
        let sent = shared.sent.load(Ordering::Relaxed);
        if count == u64::MAX {
            bar.set_position(start.elapsed().as_millis() as u64);
        } else {
            bar.set_position(sent);
        }
        bar.set_message(format!("{sent} sent"));
    }
    bar.finish_and_clear();
    let rows: Vec<Row> = handles
        .into_iter()
        .map(|(proto, h)| Row {
            proto,
            out: h.join().unwrap_or_else(|_| SenderOut {
                errors: 1,
                first_error: Some("sender thread panicked".into()),
                ..SenderOut::default()
            }),
        })
        .collect();
    let sent_at = Instant::now();
    let send_time = sent_at.duration_since(start);
    let gen_cpu = gen_cpu0.zip(process_cpu(std::process::id())).map(|(a, b)| b.saturating_sub(a));
    let sent: u64 = rows.iter().map(|r| r.out.sent).sum();
    let errors: u64 = rows.iter().map(|r| r.out.errors).sum();

    let check = match &a.check_dir {
        None => None,
        Some(dir) => {
            let grew = settle(dir, sent_at, a.settle, a.settle_max)?;
            let sent_per: Vec<u64> = rows.iter().map(|r| r.out.sent).collect();
            let mut tally = Tally::new(run_id, &sent_per);
            scan(dir, &mut tally)?;
            Some((grew.max(sent_at).duration_since(start), tally))
        }
    };
    let server_cpu =
        server_cpu0.zip(a.server_pid.and_then(process_cpu)).map(|(a, b)| b.saturating_sub(a));
    follow_stop.store(true, Ordering::Relaxed);
    let latency = match follower {
        None => None,
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow::anyhow!("the file follower panicked"))?
                .context("following the files for --latency")?,
        ),
    };
    let lat = |q: f64| latency.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q));

    let load = format!(
        "{}{}{}, {:?} {} B, {}",
        a.tcp.map_or(String::new(), |t| format!(
            "tcp {t} x{tcp_n} ({:?}, {} per write)",
            a.framing, a.batch
        )),
        if tcp_n > 0 && udp_n > 0 { " + " } else { "" },
        a.udp.map_or(String::new(), |u| format!("udp {u} x{udp_n}")),
        a.format,
        a.size,
        a.rate.map_or("flat out".into(), |r| format!("{r} msgs/s offered")),
    );
    let results = check.as_ref().map(|(_, t)| t.result());
    let sum = |f: fn(&SenderCheck) -> u64, proto: Option<&str>| -> u64 {
        results.as_ref().map_or(0, |rs| {
            rs.iter()
                .zip(&rows)
                .filter(|(_, row)| proto.is_none_or(|p| row.proto == p))
                .map(|(c, _)| f(c))
                .sum()
        })
    };
    let written = sum(|c| c.written, None);
    let missing = sum(|c| c.missing, None);
    let dups = sum(|c| c.duplicated, None);
    let ooo = sum(|c| c.out_of_order, None);
    let tcp_bad = sum(|c| c.missing + c.duplicated + c.out_of_order, Some("tcp"));
    let udp_sent: u64 = rows.iter().filter(|r| r.proto == "udp").map(|r| r.out.sent).sum();
    let udp_missing = sum(|c| c.missing, Some("udp"));
    let unexpected = check.as_ref().map_or(0, |(_, t)| t.unexpected);
    let ok = errors == 0 && tcp_bad == 0 && unexpected == 0;
    let outcome = SyslogOutcome {
        ok,
        sent,
        errors,
        written,
        missing,
        duplicated: dups,
        out_of_order: ooo,
        unexpected,
        written_per_s: None,
        sender_cpu: rows.iter().map(|r| r.out.cpu).sum(),
    };
    let rate_sent = sent as f64 / send_time.as_secs_f64().max(1e-9);
    let written_time = check.as_ref().map(|(t, _)| *t);
    let rate_written = written_time.map(|t| written as f64 / t.as_secs_f64().max(1e-9));
    let outcome = SyslogOutcome { written_per_s: rate_written, ..outcome };
    let pct = |n: u64, of: u64| if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 };
    let per_msg = |cpu: Option<Duration>, n: u64| {
        cpu.filter(|_| n > 0).map(|c| c.as_secs_f64() * 1e6 / n as f64)
    };
    let server_us = per_msg(server_cpu, if check.is_some() { written } else { sent });
    let gen_us = per_msg(gen_cpu, sent);

    if a.json {
        let opt = |x: Option<f64>| x.map_or(Json::Null, Json::num1);
        let mut fields = vec![
            ("bench", Json::str("syslog")),
            ("load", Json::str(load)),
            ("tcp_connections", Json::Int(tcp_n as u64)),
            ("udp_senders", Json::Int(udp_n as u64)),
            ("size", Json::Int(a.size as u64)),
            ("sent", Json::Int(sent)),
            ("errors", Json::Int(errors)),
            ("send_s", Json::Num(send_time.as_secs_f64())),
            ("sent_per_s", Json::num1(rate_sent)),
            ("gen_cpu_us_per_msg", opt(gen_us)),
            ("server_cpu_s", server_cpu.map_or(Json::Null, |c| Json::Num(c.as_secs_f64()))),
            (
                "server_cpu_us_per_msg",
                server_us.map_or(Json::Null, |x| Json::Num((x * 100.0).round() / 100.0)),
            ),
        ];
        if let Some((t, tally)) = &check {
            fields.extend([
                ("written", Json::Int(written)),
                ("missing", Json::Int(missing)),
                ("duplicated", Json::Int(dups)),
                ("out_of_order", Json::Int(ooo)),
                ("unexpected", Json::Int(tally.unexpected)),
                ("other_lines", Json::Int(tally.other)),
                ("written_s", Json::Num(t.as_secs_f64())),
                ("written_per_s", opt(rate_written)),
                ("udp_sent", Json::Int(udp_sent)),
                ("udp_missing", Json::Int(udp_missing)),
                ("udp_loss_pct", Json::Num(pct(udp_missing, udp_sent))),
                (
                    "senders",
                    Json::Arr(
                        tally
                            .result()
                            .iter()
                            .zip(&rows)
                            .map(|(c, r)| {
                                Json::Obj(vec![
                                    ("proto", Json::str(r.proto)),
                                    ("sent", Json::Int(c.sent)),
                                    ("written", Json::Int(c.written)),
                                    ("missing", Json::Int(c.missing)),
                                    ("duplicated", Json::Int(c.duplicated)),
                                    ("out_of_order", Json::Int(c.out_of_order)),
                                    ("errors", Json::Int(r.out.errors)),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ]);
        }
        if let Some(h) = &latency {
            let q = |x: Option<u64>| x.map_or(Json::Null, Json::Int);
            fields.push((
                "latency_us",
                Json::Obj(vec![
                    ("n", Json::Int(h.len())),
                    ("p50", q(lat(0.5))),
                    ("p99", q(lat(0.99))),
                    ("p999", q(lat(0.999))),
                    ("max", q(lat(1.0))),
                ]),
            ));
        }
        fields.push(("ok", Json::Bool(ok)));
        return Ok((format!("{}\n", Json::Obj(fields)), outcome));
    }

    let mut kv: Vec<Vec<String>> = vec![
        vec!["load".into(), load],
        vec![
            "sent".into(),
            format!("{sent} in {:.2} s ({rate_sent:.0} msgs/s accepted)", send_time.as_secs_f64()),
        ],
        vec!["send errors".into(), errors.to_string()],
    ];
    if let Some(e) = rows.iter().find_map(|r| r.out.first_error.clone()) {
        kv.push(vec!["first error".into(), e]);
    }
    if let (Some((t, tally)), Some(rw)) = (&check, rate_written) {
        kv.push(vec![
            "written".into(),
            format!("{written} by {:.2} s ({rw:.0} msgs/s written)", t.as_secs_f64()),
        ]);
        kv.push(vec![
            "missing".into(),
            format!(
                "{missing} ({:.3} %), duplicated {dups}, out of order {ooo}",
                pct(missing, sent)
            ),
        ]);
        if udp_sent > 0 {
            kv.push(vec![
                "udp loss".into(),
                format!("{udp_missing} of {udp_sent} ({:.3} %)", pct(udp_missing, udp_sent)),
            ]);
        }
        kv.push(vec![
            "other lines".into(),
            format!("{} (not this run's), {} unexpected", tally.other, tally.unexpected),
        ]);
    }
    if let Some(h) = &latency {
        let ms = |x: Option<u64>| x.map_or("-".into(), |us| format!("{:.2} ms", us as f64 / 1e3));
        kv.push(vec![
            "send→file".into(),
            format!(
                "p50 {}, p99 {}, p99.9 {}, max {} ({} lines)",
                ms(lat(0.5)),
                ms(lat(0.99)),
                ms(lat(0.999)),
                ms(lat(1.0)),
                h.len()
            ),
        ]);
    }
    if let Some(c) = server_cpu {
        kv.push(vec![
            "server cpu".into(),
            format!(
                "{:.2} s, {} per message",
                c.as_secs_f64(),
                server_us.map_or("-".into(), |u| format!("{u:.2} us"))
            ),
        ]);
    }
    if let Some(u) = gen_us {
        kv.push(vec!["generator cpu".into(), format!("{u:.2} us per message")]);
    }
    let mut text = table::render(None, &kv, &[Align::Left, Align::Left], "  ");
    if let Some(rs) = &results {
        // Senders with a problem first, then the rest; at most 16 rows.
        let mut order: Vec<usize> = (0..rs.len()).collect();
        order.sort_by_key(|&i| {
            let c = &rs[i];
            (c.missing + c.duplicated + c.out_of_order + rows[i].out.errors == 0, i)
        });
        let shown = order.len().min(16);
        let body: Vec<Vec<String>> = order[..shown]
            .iter()
            .map(|&i| {
                let c = &rs[i];
                vec![
                    i.to_string(),
                    rows[i].proto.into(),
                    c.sent.to_string(),
                    c.written.to_string(),
                    c.missing.to_string(),
                    c.duplicated.to_string(),
                    c.out_of_order.to_string(),
                    rows[i].out.errors.to_string(),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&table::render(
            Some(&["sender", "proto", "sent", "written", "missing", "dup", "order", "errors"]),
            &body,
            &[
                Align::Right,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
            "  ",
        ));
        if shown < order.len() {
            let rest = &order[shown..];
            let bad = rest.iter().filter(|&&i| rs[i].missing + rs[i].duplicated > 0).count();
            text.push_str(&format!("... {} more senders ({bad} with loss)\n", rest.len()));
        }
    }
    Ok((text, outcome))
}

fn progress(show: bool, count: u64, duration: Option<Duration>) -> ProgressBar {
    use std::io::IsTerminal as _;
    if !show || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (total, what) = if count == u64::MAX {
        (duration.map_or(0, |d| d.as_millis() as u64), "ms")
    } else {
        (count, "msgs")
    };
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!("syslog {{bar:30}} {{pos}}/{{len}} {what} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_numbers_and_size() {
        for format in [MsgFormat::Rfc5424, MsgFormat::Rfc3164] {
            let m = Maker::new(42, format, 120);
            let mut out = Vec::new();
            m.message(3, 7, 1_234, &mut out);
            assert_eq!(out.len(), 120, "{}", String::from_utf8_lossy(&out));
            assert_eq!(parse_mark(&out), Some((42, 3, 7)));
            assert_eq!(parse_sent_at(&out, 42), Some(1_234));
            assert_eq!(parse_sent_at(&out, 43), None, "another run's line");
            // A size smaller than the header: the message is just not padded.
            let mut short = Vec::new();
            Maker::new(42, format, 10).message(3, 123_456, 0, &mut short);
            assert_eq!(parse_mark(&short), Some((42, 3, 123_456)));
        }
        let m = Maker::new(1, MsgFormat::Rfc5424, 100);
        let mut lf = Vec::new();
        m.framed(Framing::Lf, 0, 1, 0, &mut lf);
        assert_eq!((lf.len(), lf.last()), (101, Some(&b'\n')));
        let mut oc = Vec::new();
        m.framed(Framing::Octet, 0, 1, 0, &mut oc);
        let (len, msg) = oc.split_at(oc.iter().position(|&b| b == b' ').expect("a length"));
        assert_eq!(std::str::from_utf8(len).expect("ascii").parse::<usize>(), Ok(msg.len() - 1));
        // JSON output quotes the line: the marker is still found.
        assert_eq!(parse_mark(br#"{"msg":"iocpbench r=5 s=1 n=2 xx"}"#), Some((5, 1, 2)));
        assert_eq!(parse_mark(b"iocpbench r=5 s=1"), None);
        assert_eq!(parse_mark(b"unrelated line"), None);
    }

    #[test]
    fn the_follower_times_whole_new_lines_of_its_run_only() {
        let dir = std::env::temp_dir().join(format!("iocp-follow-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).expect("mkdir");
        let m = Maker::new(7, MsgFormat::Rfc5424, 0);
        let mut f = Follower::new(dir.clone(), 7, Instant::now());
        let line = |run_maker: &Maker, seq| {
            let mut l = Vec::new();
            run_maker.message(0, seq, 0, &mut l);
            l.push(b'\n');
            l
        };
        let (a, b) = (line(&m, 0), line(&m, 1));
        let other = line(&Maker::new(8, MsgFormat::Rfc5424, 0), 0);
        let path = dir.join("sub").join("x.log");
        // One whole line and half of the next.
        let mut first = a.clone();
        first.extend_from_slice(&b[..10]);
        fs::write(&path, &first).expect("write");
        f.poll().expect("poll");
        assert_eq!(f.hist.len(), 1);
        // The rest of it, and a line of another run (not timed).
        let mut file = fs::OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&b[10..]).expect("append");
        file.write_all(&other).expect("append");
        f.poll().expect("poll");
        f.poll().expect("nothing new");
        assert_eq!(f.hist.len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn tally_counts_missing_duplicated_and_out_of_order() {
        let m = Maker::new(9, MsgFormat::Rfc3164, 0);
        let mut t = Tally::new(9, &[5, 3, 0]);
        let mut feed = |sender: u32, seq: u64| {
            let mut line = Vec::new();
            m.message(sender, seq, 0, &mut line);
            t.line(&line);
        };
        // Sender 0: 0 1 3 2 3 (4 missing, 3 twice, 2 late); sender 1: all three in order.
        for seq in [0, 1, 3, 2, 3] {
            feed(0, seq);
        }
        for seq in 0..3 {
            feed(1, seq);
        }
        feed(1, 3); // never sent
        feed(7, 0); // no such sender
        t.line(b"<13>Jan  1 00:00:00 h other: hello\n");
        t.line(b"iocpbench r=8 s=0 n=4 another run\n");
        let r = t.result();
        assert_eq!(
            r[0],
            SenderCheck { sent: 5, written: 4, missing: 1, duplicated: 1, out_of_order: 1 }
        );
        assert_eq!(
            r[1],
            SenderCheck { sent: 3, written: 3, missing: 0, duplicated: 0, out_of_order: 0 }
        );
        assert_eq!(r[2], SenderCheck::default());
        assert_eq!((t.unexpected, t.other), (2, 2));
    }

    #[test]
    fn shares_add_up() {
        let parts: Vec<u64> = (0..3).map(|i| share(10, i, 3)).collect();
        assert_eq!(parts, [4, 3, 3]);
        assert_eq!((0..7).map(|i| share(1_000_000, i, 7)).sum::<u64>(), 1_000_000);
    }
}
