//! The fuzz corpus replayed on stable, and a randomised test (random bytes and mutations of
//! valid requests) so CI exercises the request path without nightly.

use std::time::{Duration, Instant};

use crate::{Site, fuzzing};

/// The longest one input may take through parse and respond (a generous bound: ~1 ms is usual).
const PER_INPUT: Duration = Duration::from_secs(2);

fn corpus() -> Vec<(String, Vec<u8>)> {
    fuzzing::corpus().expect("fuzz/corpus/http_request is readable")
}

fn timed(site: &Site, data: &[u8], what: &str) -> Vec<u16> {
    let start = Instant::now();
    let statuses = fuzzing::drive(site, data);
    assert!(start.elapsed() < PER_INPUT, "{what} took {:?}", start.elapsed());
    statuses
}

#[test]
fn corpus_replays_without_panics() {
    let root = fuzzing::TempDocroot::new("robust").unwrap();
    let site = fuzzing::site(root.path()).unwrap();
    let corpus = corpus();
    assert!(corpus.len() >= 30, "the seed corpus is there ({} files)", corpus.len());
    for (name, data) in &corpus {
        timed(&site, data, name);
    }
    // A few seeds pin their outcome, so a replay that silently stops parsing is noticed.
    let expect = |name: &str, want: &[u16]| {
        let (_, data) = corpus.iter().find(|(n, _)| n == name).expect(name);
        assert_eq!(timed(&site, data, name), want, "{name}");
    };
    expect("get_file", &[200]);
    expect("pipelined", &[200, 200, 200]);
    expect("traversal_encoded", &[400]);
    expect("symlink_out", &[404]);
    expect("long_uri", &[414]);
    expect("big_head", &[431]);
    expect("chunked", &[501]);
    expect("expect", &[100]);
    expect("post_body", &[405, 200]);
    expect("range_unsat", &[416]);
}

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
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

/// Bytes that matter to the parser, more likely than others.
const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"%",
    b"%2e",
    b"%2f",
    b"%00",
    b"..",
    b"/",
    b"\\",
    b"\0",
    b",",
    b"=",
    b"-",
    b"\"",
    b"?",
    b"#",
    b"%ff",
    b"Range: bytes=",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"If-None-Match: *\r\n",
    b"Accept-Encoding: gzip\r\n",
    b"Connection: close\r\n",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"99999999999999999999",
];

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[(String, Vec<u8>)]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            3 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                data.splice(at..at, piece.iter().copied());
            }
            4 => {
                // Splice in a chunk of another seed.
                let (_, other) = &others[rng.below(others.len())];
                let from = rng.below(other.len());
                let to = (from + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..to].iter().copied());
            }
            5 => data.truncate(at),
            _ => {
                let n = rng.below(8);
                data.splice(at..at, std::iter::repeat_with(|| rng.next() as u8).take(n));
            }
        }
    }
}

#[test]
fn random_bytes_and_mutated_requests_never_panic_or_hang() {
    let root = fuzzing::TempDocroot::new("robust").unwrap();
    let site = fuzzing::site(root.path()).unwrap();
    let seeds = corpus();
    let seed =
        std::env::var("IOCP_HTTP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x1bad_5eed);
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let mut served = 0usize;
    for round in 0..20_000 {
        let data = if round % 5 == 0 {
            let n = rng.below(300);
            (0..n).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut d = seeds[rng.below(seeds.len())].1.clone();
            mutate(&mut rng, &mut d, &seeds);
            d
        };
        let statuses = timed(&site, &data, &format!("seed {seed:#x} round {round}"));
        served += statuses.iter().filter(|&&s| s == 200 || s == 206).count();
    }
    assert!(served > 100, "mutations still reach the file-serving path ({served})");
    assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
}
