//! Connect/echo/close churn against `iocp serve echo` in its own process: every byte comes
//! back, and the server's RSS does not grow with the connections churned.
//!
//! - The CI-sized soak (`churn_keeps_rss_flat_*`): rounds of 2,000 connections for 60 s per
//!   backend. After a warm-up of [`WARM_ROUNDS`], RSS must grow by less than 32 bytes per further
//!   connection (the smallest glibc heap chunk: any per-connection heap leak is caught; the
//!   issue-11 epoll server grew by 5.7 KB per connection on a second round). The growth on the
//!   first round's RSS is printed, not asserted: in this debug build it measured +3.3 % on
//!   io_uring and +16.2 % on epoll (allocator fragmentation settling over the first rounds on
//!   a ~8 MB RSS), where the release benchmark stays within the issue's [`BOUND`].
//! - `the_server_allocates_from_one_arena_*`: the fix that brought the io_uring benchmark
//!   within the bound (one glibc arena, `--malloc-arenas`), checked in the server's maps.
//! - The benchmark (`soak_benchmark`, ignored; `bench/soak.sh`): the same at 5,000 connections
//!   for 10 minutes per backend (`IOCP_SOAK_SECS`, `IOCP_SOAK_CONNS`, `IOCP_SOAK_BACKENDS`),
//!   with a progress line every 10 s, a table at the end and the figures as JSON
//!   (`IOCP_SOAK_JSON`).
//!
//! The load generator is std's blocking sockets, one connection after another (not the iocp
//! library).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::server::{Rss, ServerProcess, field};
use iocp::BackendKind;
use iocp_testkit::{choice_for, deadline, raise_fd_limit};

/// Rounds before the baseline RSS for the per-connection bound is taken (the allocator's arenas
/// reach their working size).
const WARM_ROUNDS: usize = 5;
/// RSS after the churn against RSS after the first round: at most this much higher (issue 11).
const BOUND: f64 = 0.10;

struct Plan {
    /// Connections open at once in a round.
    conns: usize,
    /// Rounds are started until this much time has passed (at least `min_rounds`).
    soak: Duration,
    min_rounds: usize,
    /// Print a progress line this often (the benchmark).
    progress: Option<Duration>,
    /// Take a settled RSS sample this often (the benchmark): is any growth still going on?
    sample: Option<Duration>,
    close: Close,
}

/// What one soak measured.
struct Outcome {
    backend: String,
    close: Close,
    conns: usize,
    rounds: usize,
    churned: Duration,
    first: Rss,
    warm: Rss,
    last: Rss,
    cpu_ticks: u64,
    /// (round, settled RSS) taken along the way.
    samples: Vec<(usize, Rss)>,
}

impl Outcome {
    /// Growth of the total RSS on the first round's.
    fn growth(&self) -> f64 {
        self.last.total as f64 / self.first.total as f64 - 1.0
    }
    /// Growth of the anonymous RSS (what the server allocated) on the first round's.
    fn anon_growth(&self) -> f64 {
        self.last.anon as f64 / self.first.anon as f64 - 1.0
    }
    fn per_conn(&self) -> f64 {
        let after_warm = ((self.rounds - WARM_ROUNDS) * self.conns) as f64;
        self.last.total.saturating_sub(self.warm.total) as f64 / after_warm
    }
    fn connections(&self) -> u64 {
        (self.rounds * self.conns) as u64
    }
    fn line(&self) -> String {
        format!(
            "{} ({} close): {} rounds of {} connections in {:.0?}: RSS after the first round {} KiB, after \
             {WARM_ROUNDS} rounds {} KiB, after the churn {} KiB ({:+.1} % on the first round; \
             {:.1} B per connection after the warm-up); of which anonymous {} -> {} KiB ({:+.1} %), \
             file {} -> {} KiB; server CPU {:.1} µs per connection",
            self.backend,
            self.close.name(),
            self.rounds,
            self.conns,
            self.churned,
            self.first.total / 1024,
            self.warm.total / 1024,
            self.last.total / 1024,
            self.growth() * 100.0,
            self.per_conn(),
            self.first.anon / 1024,
            self.last.anon / 1024,
            self.anon_growth() * 100.0,
            self.first.file / 1024,
            self.last.file / 1024,
            self.cpu_ticks as f64 * 10_000.0 / self.connections() as f64,
        )
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend,
            "close": self.close.name(),
            "conns": self.conns,
            "rounds": self.rounds,
            "connections": self.connections(),
            "seconds": self.churned.as_secs_f64(),
            "rss_first": self.first.total,
            "rss_warm": self.warm.total,
            "rss_last": self.last.total,
            "growth_pct": self.growth() * 100.0,
            "anon_first": self.first.anon,
            "anon_last": self.last.anon,
            "anon_growth_pct": self.anon_growth() * 100.0,
            "file_first": self.first.file,
            "file_last": self.last.file,
            "bytes_per_conn_after_warmup": self.per_conn(),
            "server_cpu_ticks": self.cpu_ticks,
            "within_bound": self.growth() <= BOUND,
            "settled_rss_by_round": self.samples.iter().map(|(r, m)| (r, m.total)).collect::<Vec<_>>(),
            "settled_anon_by_round": self.samples.iter().map(|(r, m)| (r, m.anon)).collect::<Vec<_>>(),
        })
    }
}

/// The message of connection `i` in round `r`: 1 to 2,048 bytes, unique to (r, i).
fn message(r: usize, i: usize) -> Vec<u8> {
    let len = 1 + (i * 7919 + r * 104_729) % 2048;
    let tag = format!("{r:06}:{i:05}|");
    tag.bytes().cycle().take(len).collect()
}

/// How a round ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Close {
    /// Each client shuts down its sending side and reads the server's FIN (the server has seen
    /// the EOF and closed) before the round is over: the server holds at most `conns`
    /// connections at any time, the churn is "at `conns` connections".
    Handshake,
    /// Each client just closes; the next round connects while the server is still taking the
    /// closes in, so the server briefly holds more than `conns` (its peak grows with the
    /// overlap).
    Drop,
}

impl Close {
    fn name(self) -> &'static str {
        match self {
            Close::Handshake => "handshake",
            Close::Drop => "drop",
        }
    }
}

/// One round: `conns` connections each send their message and read it back, then all close.
/// Returns the bytes echoed.
fn round(addr: SocketAddr, r: usize, conns: usize, close: Close) -> u64 {
    let mut open = Vec::with_capacity(conns);
    for i in 0..conns {
        let s = TcpStream::connect_timeout(&addr, deadline())
            .unwrap_or_else(|e| panic!("round {r}: connection {i}: {e}"));
        s.set_read_timeout(Some(deadline())).expect("SO_RCVTIMEO");
        s.set_write_timeout(Some(deadline())).expect("SO_SNDTIMEO");
        open.push(s);
    }
    let mut bytes = 0;
    for (i, s) in open.iter_mut().enumerate() {
        s.write_all(&message(r, i)).unwrap_or_else(|e| panic!("round {r}: send {i}: {e}"));
    }
    for (i, s) in open.iter_mut().enumerate() {
        let want = message(r, i);
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("round {r}: echo {i}: {e}"));
        assert!(got == want, "round {r}: connection {i} got other bytes");
        bytes += want.len() as u64;
    }
    if close == Close::Handshake {
        for (i, s) in open.iter().enumerate() {
            s.shutdown(Shutdown::Write).unwrap_or_else(|e| panic!("round {r}: shutdown {i}: {e}"));
        }
        for (i, s) in open.iter_mut().enumerate() {
            let mut rest = [0u8; 16];
            let n = s.read(&mut rest).unwrap_or_else(|e| panic!("round {r}: FIN of {i}: {e}"));
            assert_eq!(n, 0, "round {r}: connection {i} got bytes after its echo");
        }
    }
    bytes
}

/// The server's RSS once it stops moving: the closes of a round have landed and the background
/// trim (at most once a second, after 32+ releases: `iocp-server`'s heap.rs) has run. Unchanged
/// for 1.5 s (longer than the trim period), within a deadline.
fn settled_rss(server: &ServerProcess) -> Rss {
    let end = Instant::now() + deadline();
    let mut last = server.rss_parts();
    let mut since = Instant::now();
    while Instant::now() < end && since.elapsed() < Duration::from_millis(1500) {
        thread::sleep(Duration::from_millis(100));
        let now = server.rss_parts();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Runs the churn on `backend`; `None` when that backend (or the descriptors) is not here.
fn soak(kind: BackendKind, backend: &str, plan: &Plan) -> Option<Outcome> {
    choice_for(kind)?;
    if !raise_fd_limit(plan.conns as u64 + 512) {
        return None;
    }
    let server = ServerProcess::start(&["--backend", backend, "--addr", "127.0.0.1:0"])
        .unwrap_or_else(|out| panic!("{backend}: the server did not start:\n{out}"));
    let started = Instant::now();
    let mut bytes = round(server.addr, 0, plan.conns, plan.close);
    let first = settled_rss(&server);
    let mut rounds = 1;
    while rounds < WARM_ROUNDS {
        bytes += round(server.addr, rounds, plan.conns, plan.close);
        rounds += 1;
    }
    let warm = settled_rss(&server);
    let mut shown = Instant::now();
    let mut sampled = Instant::now();
    let mut samples = vec![(1, first), (WARM_ROUNDS, warm)];
    while rounds < plan.min_rounds || started.elapsed() < plan.soak {
        bytes += round(server.addr, rounds, plan.conns, plan.close);
        rounds += 1;
        if plan.progress.is_some_and(|every| shown.elapsed() >= every) {
            shown = Instant::now();
            eprintln!(
                "[{backend}] {:>4.0} s of {:.0} s: round {rounds}, {} connections, RSS {} KiB",
                started.elapsed().as_secs_f64(),
                plan.soak.as_secs_f64(),
                rounds * plan.conns,
                server.rss() / 1024
            );
        }
        if plan.sample.is_some_and(|every| sampled.elapsed() >= every) {
            let rss = settled_rss(&server);
            sampled = Instant::now();
            samples.push((rounds, rss));
            eprintln!(
                "[{backend}] settled RSS after round {rounds}: {} KiB (anonymous {} KiB, file {} KiB)",
                rss.total / 1024,
                rss.anon / 1024,
                rss.file / 1024
            );
        }
    }
    let churned = started.elapsed();
    let last = settled_rss(&server);
    let cpu_ticks = server.cpu_ticks();
    let report = server.stop();
    let out = Outcome {
        backend: backend.to_string(),
        close: plan.close,
        conns: plan.conns,
        rounds,
        churned,
        first,
        warm,
        last,
        cpu_ticks,
        samples,
    };
    eprintln!("{}", out.line());
    assert_eq!(field(&report, "connections accepted"), out.connections(), "{report}");
    assert_eq!(field(&report, "bytes in"), bytes, "{report}");
    assert_eq!(field(&report, "bytes out"), bytes, "{report}");
    assert_eq!(field(&report, "errors"), 0, "{report}");
    Some(out)
}

/// The CI soak: 60 s of 2,000-connection rounds; the per-connection bound asserted.
fn ci_soak(kind: BackendKind, backend: &str) {
    let plan = Plan {
        conns: 2_000,
        soak: Duration::from_secs(60),
        min_rounds: 20,
        progress: None,
        sample: None,
        close: Close::Handshake,
    };
    let Some(out) = soak(kind, backend, &plan) else { return };
    assert!(
        out.per_conn() < 32.0,
        "{backend}: RSS grew {:.1} B per connection after the warm-up ({} KiB -> {} KiB)",
        out.per_conn(),
        out.warm.total / 1024,
        out.last.total / 1024
    );
}

#[test]
fn churn_keeps_rss_flat_epoll() {
    ci_soak(BackendKind::Epoll, "epoll");
}

#[test]
fn churn_keeps_rss_flat_uring() {
    ci_soak(BackendKind::Uring, "uring");
}

/// glibc's thread arenas in a process: each is a 64 MiB reservation (`HEAP_MAX_SIZE`) aligned
/// on 64 MiB, mapped read-write as far as it is used and `PROT_NONE` beyond, so its last,
/// anonymous `---p` mapping ends on a 64 MiB boundary. Thread stacks' guard pages are one page.
fn thread_arenas(pid: u32) -> usize {
    const HEAP_MAX: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("reading maps");
    maps.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let Some((a, b)) = f[0].split_once('-') else { return false };
            let hex = |x| u64::from_str_radix(x, 16).expect("a hex address in maps");
            let (a, b) = (hex(a), hex(b));
            f.len() == 5 && f[1] == "---p" && b % HEAP_MAX == 0 && b - a >= 1 << 20
        })
        .count()
}

/// The server after a few rounds of traffic on `backend` with `args`: how many thread arenas
/// glibc made (`MALLOC_ARENA_MAX` removed from its environment: the test sets the policy).
fn arenas_after_traffic(kind: BackendKind, backend: &str, args: &[&str]) -> Option<usize> {
    choice_for(kind)?;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_iocp"));
    cmd.args(["serve", "echo", "--threads", "2", "--backend", backend, "--addr", "127.0.0.1:0"])
        .args(args)
        .env_remove("MALLOC_ARENA_MAX");
    let server = ServerProcess::spawn(cmd)
        .unwrap_or_else(|out| panic!("{backend}: the server did not start:\n{out}"));
    for r in 0..3 {
        round(server.addr, r, 200, Close::Handshake);
    }
    Some(thread_arenas(server.child.id()))
}

/// The soak's fix (issue 11): `iocp serve` keeps glibc to one arena, so chunks freed on another
/// thread than their allocation's cannot fragment per-thread arenas. Without the cap the worker
/// threads each get an arena (checked with `--malloc-arenas 0`, glibc's default).
fn one_arena(kind: BackendKind, backend: &str) {
    let Some(capped) = arenas_after_traffic(kind, backend, &[]) else { return };
    assert_eq!(capped, 0, "{backend}: thread arenas with the default --malloc-arenas 1");
    let default = arenas_after_traffic(kind, backend, &["--malloc-arenas", "0"])
        .expect("the backend was there a moment ago");
    assert!(default >= 1, "{backend}: glibc's default made no thread arena: the probe is blind");
}

#[test]
fn the_server_allocates_from_one_arena_epoll() {
    one_arena(BackendKind::Epoll, "epoll");
}

#[test]
fn the_server_allocates_from_one_arena_uring() {
    one_arena(BackendKind::Uring, "uring");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The 10-minute benchmark (`bench/soak.sh`): one backend after the other, never both at once.
#[test]
#[ignore = "a 10-minute benchmark per backend: bench/soak.sh"]
fn soak_benchmark() {
    let plan = Plan {
        conns: env_or("IOCP_SOAK_CONNS", 5_000),
        soak: Duration::from_secs(env_or("IOCP_SOAK_SECS", 600)),
        min_rounds: WARM_ROUNDS + 1,
        progress: Some(Duration::from_secs(10)),
        sample: Some(Duration::from_secs(env_or("IOCP_SOAK_SAMPLE_SECS", 60))),
        close: match std::env::var("IOCP_SOAK_CLOSE").as_deref() {
            Err(_) | Ok("handshake") => Close::Handshake,
            Ok("drop") => Close::Drop,
            Ok(other) => panic!("IOCP_SOAK_CLOSE: {other:?} is neither handshake nor drop"),
        },
    };
    let backends = std::env::var("IOCP_SOAK_BACKENDS").unwrap_or_else(|_| "uring,epoll".into());
    let mut outs = Vec::new();
    for b in backends.split(',').map(str::trim) {
        let kind = match b {
            "uring" => BackendKind::Uring,
            "epoll" => BackendKind::Epoll,
            other => panic!("IOCP_SOAK_BACKENDS: unknown backend {other:?}"),
        };
        outs.extend(soak(kind, b, &plan));
    }
    println!();
    println!(
        "| backend | close | connections at once | rounds | connections | minutes | RSS after round 1 \
         | after {WARM_ROUNDS} rounds | after the churn | growth on round 1 | B/conn after \
         warm-up | anonymous RSS round 1 → end | anonymous growth | within {:.0} % |",
        BOUND * 100.0
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
    for o in &outs {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {} KiB | {} KiB | {} KiB | {:+.1} % | {:.2} | {} → {} KiB | {:+.1} % | {} |",
            o.backend,
            o.close.name(),
            o.conns,
            o.rounds,
            o.connections(),
            o.churned.as_secs_f64() / 60.0,
            o.first.total / 1024,
            o.warm.total / 1024,
            o.last.total / 1024,
            o.growth() * 100.0,
            o.per_conn(),
            o.first.anon / 1024,
            o.last.anon / 1024,
            o.anon_growth() * 100.0,
            if o.growth() <= BOUND { "yes" } else { "**no**" }
        );
    }
    let json = serde_json::Value::Array(outs.iter().map(Outcome::json).collect()).to_string();
    println!("{json}");
    if let Ok(path) = std::env::var("IOCP_SOAK_JSON") {
        std::fs::write(&path, &json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}
