//! Network bytes: the HTTP fuzz corpus, mutations of it and random byte streams, each sent
//! over its own loopback connection to a running `Http` server in pieces split at random
//! (seeded) points, 10,000 connections per backend. No input may panic the server
//! (`stats.panics == 0`, checked when the server stops) or hang a connection (each ends, with
//! the server's close, within [`PER_CONN`]); random bytes get a 4xx/5xx or a bare close; and
//! the server still serves a valid request afterwards. `iocp-http`'s robustness tests drive the
//! same corpus through the parser in-process; this drives it through the server's sockets.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iocp_testkit::backend_test;

/// Connections per backend.
const CONNS: usize = 10_000;
/// Client threads.
const CLIENTS: usize = 4;
/// The longest one connection may take, from connect to the server's close. Well under the
/// test server's 5 s request and idle timeouts, so a server that stops answering (rather than
/// one that closes as it should) is caught, not rescued by a timeout.
const PER_CONN: Duration = Duration::from_secs(3);
/// The whole run, per backend.
const TOTAL: Duration = Duration::from_secs(60);

fn corpus() -> Vec<(String, Vec<u8>)> {
    iocp_http::fuzzing::corpus().expect("fuzz/corpus/http_request is readable")
}

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What one connection sends, and what it may get back.
enum Input {
    /// A corpus file as it is: any well-formed response(s), or a close.
    Seed(usize),
    /// A corpus file mutated: any well-formed response(s), or a close.
    Mutated(Vec<u8>),
    /// Random bytes: a 4xx/5xx response, or a close.
    Random(Vec<u8>),
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[(String, Vec<u8>)]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            2 => {
                let (_, other) = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let to = (from + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..to].iter().copied());
            }
            3 => data.truncate(at),
            _ => {
                let n = rng.below(8);
                data.splice(at..at, std::iter::repeat_with(|| rng.next() as u8).take(n));
            }
        }
    }
}

/// Connection `i` of the run: the corpus twice over, then mutations and random bytes.
fn input(i: usize, seed: u64, seeds: &[(String, Vec<u8>)]) -> Input {
    if i < 2 * seeds.len() {
        return Input::Seed(i % seeds.len());
    }
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
    if i.is_multiple_of(2) {
        let mut d = seeds[rng.below(seeds.len())].1.clone();
        mutate(&mut rng, &mut d, seeds);
        Input::Mutated(d)
    } else {
        let n = rng.below(600);
        Input::Random((0..n).map(|_| rng.next() as u8).collect())
    }
}

/// Sends `data` in random pieces, half-closes, and reads until the server closes. Returns what
/// came back. Panics (naming `what`) if the connection outlives [`PER_CONN`].
fn exchange(addr: SocketAddr, data: &[u8], rng: &mut Rng, what: &str) -> Vec<u8> {
    let start = Instant::now();
    let mut sock = TcpStream::connect_timeout(&addr, PER_CONN)
        .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(PER_CONN)).unwrap();
    sock.set_write_timeout(Some(PER_CONN)).unwrap();
    let mut rest = data;
    let mut closed = false;
    while !rest.is_empty() {
        // Mostly small pieces (headers split anywhere), sometimes a large one.
        let n = if rng.below(4) == 0 { rng.below(rest.len()) + 1 } else { rng.below(16) + 1 };
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        match sock.write_all(piece) {
            Ok(()) => rest = tail,
            // The server answered and closed before reading it all: that is a close.
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                closed = true;
                break;
            }
            Err(e) => panic!("{what}: send after {:?}: {e}", start.elapsed()),
        }
    }
    if !closed {
        // The peer may already have reset the connection.
        let _ = sock.shutdown(Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: no close from the server after {:?} ({} bytes back): {e}",
                start.elapsed(),
                got.len()
            ),
        }
        assert!(start.elapsed() < PER_CONN, "{what}: still open after {:?}", start.elapsed());
    }
    assert!(start.elapsed() < PER_CONN, "{what}: took {:?}", start.elapsed());
    got
}

/// The status of the first response in `got`, if there is one; panics if `got` does not start
/// with a status line.
fn first_status(got: &[u8], what: &str) -> Option<u16> {
    if got.is_empty() {
        return None;
    }
    let line_end = got.windows(2).position(|w| w == b"\r\n");
    let line = String::from_utf8_lossy(&got[..line_end.unwrap_or(got.len().min(64))]);
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    assert!(status.is_some(), "{what}: the reply does not start with a status line: {line:?}");
    status
}

#[derive(Default)]
struct Tally {
    seeds: usize,
    mutated: usize,
    random: usize,
    closed_silently: usize,
    errors: usize,
    ok: usize,
}

fn run(seed: u64, addr: SocketAddr, seeds: &Arc<Vec<(String, Vec<u8>)>>, client: usize) -> Tally {
    let mut t = Tally::default();
    let mut rng = Rng::new(seed ^ 0xc11e47 ^ client as u64);
    for i in (client..CONNS).step_by(CLIENTS) {
        let inp = input(i, seed, seeds);
        let (data, what) = match &inp {
            Input::Seed(k) => (&seeds[*k].1[..], format!("corpus {}", seeds[*k].0)),
            Input::Mutated(d) => (&d[..], format!("seed {seed:#x} connection {i} (mutated)")),
            Input::Random(d) => (&d[..], format!("seed {seed:#x} connection {i} (random)")),
        };
        let got = exchange(addr, data, &mut rng, &what);
        let status = first_status(&got, &what);
        match &inp {
            Input::Seed(_) => t.seeds += 1,
            Input::Mutated(_) => t.mutated += 1,
            Input::Random(d) => {
                t.random += 1;
                assert!(
                    status.is_none_or(|s| s >= 400),
                    "{what}: random bytes got {status:?} ({} bytes sent: {:?})",
                    d.len(),
                    String::from_utf8_lossy(&d[..d.len().min(80)])
                );
            }
        }
        match status {
            None => t.closed_silently += 1,
            Some(s) if s >= 400 => t.errors += 1,
            Some(_) => t.ok += 1,
        }
    }
    t
}

backend_test!(
    corpus_mutations_and_random_bytes_over_sockets,
    choice | backend | {
        support::set_backend(backend);
        let root = iocp_http::fuzzing::TempDocroot::new("netbytes").unwrap();
        let server = support::spawn(root.path());
        let addr = server.addr();
        let seeds = Arc::new(corpus());
        assert!(seeds.len() >= 30, "the seed corpus is there ({} files)", seeds.len());
        let seed = std::env::var("IOCP_HTTP_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_0b17e5_u64);
        let start = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let seeds = seeds.clone();
                std::thread::spawn(move || run(seed, addr, &seeds, c))
            })
            .collect();
        let mut t = Tally::default();
        for c in clients {
            let r = c.join().unwrap_or_else(|_| panic!("a client failed (seed {seed:#x})"));
            t.seeds += r.seeds;
            t.mutated += r.mutated;
            t.random += r.random;
            t.closed_silently += r.closed_silently;
            t.errors += r.errors;
            t.ok += r.ok;
        }
        let took = start.elapsed();
        eprintln!(
            "{backend:?}: {} connections in {took:?}: {} corpus, {} mutated, {} random; \
             {} answered 2xx/1xx/3xx first, {} 4xx/5xx, {} closed without a response",
            t.seeds + t.mutated + t.random,
            t.seeds,
            t.mutated,
            t.random,
            t.ok,
            t.errors,
            t.closed_silently
        );
        assert_eq!(t.seeds + t.mutated + t.random, CONNS);
        assert!(t.ok > 100, "valid requests still reach the file-serving path ({})", t.ok);
        assert!(took < TOTAL, "took {took:?}");
        // The server still serves a valid request.
        let mut rng = Rng::new(seed);
        let got = exchange(addr, b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n", &mut rng, "after");
        assert_eq!(first_status(&got, "after"), Some(200));
        assert!(got.ends_with(b"\r\n\r\nhello, world\n"), "{:?}", String::from_utf8_lossy(&got));
        // Dropping the server stops it and asserts `stats.panics == 0` and no pool panics.
        drop(server);
    }
);
