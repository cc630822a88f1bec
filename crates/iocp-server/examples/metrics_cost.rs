//! What reading the counters costs: one `CompletionPort::stats()` call, one metrics snapshot
//! and one `/metrics` render, each timed while the port carries about 100k packets/s (a
//! paced post→get loop on two threads). A micro-measure, not a benchmark: it runs ~3 s.
//!
//! `cargo run --release -p iocp-server --example metrics_cost`

#![allow(clippy::unwrap_used, reason = "an example: a failed unwrap is a clear failure")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iocp::{CompletionKey, CompletionPort};
use iocp_server::{Echo, Server, ServerConfig};

const RATE: u64 = 100_000;

/// Times one call of `f`, in µs.
fn once<T>(f: impl FnOnce() -> T) -> f64 {
    let t0 = Instant::now();
    std::hint::black_box(f());
    t0.elapsed().as_secs_f64() * 1e6
}

/// Median and p99.
fn summary(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn main() {
    let server =
        Server::start(Echo, ServerConfig { threads: 2, ..ServerConfig::default() }).unwrap();
    let port = Arc::new(CompletionPort::<u64>::builder().concurrency(2).build().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    // A paced producer (posts in 1 ms batches of RATE/1000) and a consumer.
    let (p, s) = (port.clone(), stop.clone());
    let producer = thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while !s.load(Ordering::Relaxed) {
            let due = start.elapsed().as_micros() as u64 * RATE / 1_000_000;
            while sent < due {
                p.post(0, CompletionKey(1), sent).unwrap();
                sent += 1;
            }
            thread::sleep(Duration::from_micros(500));
        }
        sent
    });
    let (p, s) = (port.clone(), stop.clone());
    let consumer = thread::spawn(move || {
        let mut got = 0u64;
        while !s.load(Ordering::Relaxed) {
            if p.get(Some(Duration::from_millis(10))).is_ok() {
                got += 1;
            }
        }
        got
    });
    thread::sleep(Duration::from_millis(300));
    let live = server.live_stats();
    let snap = live.snapshot();
    // Spread over 2 s of load (one round every 200 µs), so the calls meet the port busy.
    let (mut stats, mut snapshot, mut render, mut json) = (vec![], vec![], vec![], vec![]);
    let t0 = Instant::now();
    let mut i = 0u32;
    while t0.elapsed() < Duration::from_secs(2) {
        stats.push(once(|| port.stats()));
        if i.is_multiple_of(4) {
            snapshot.push(once(|| live.snapshot()));
        }
        if i.is_multiple_of(8) {
            render.push(once(|| snap.to_prometheus()));
            json.push(once(|| snap.to_json()));
        }
        i += 1;
        thread::sleep(Duration::from_micros(200));
    }
    let secs = t0.elapsed().as_secs_f64();
    let (stats, snapshot, render, json) =
        (summary(stats), summary(snapshot), summary(render), summary(json));
    stop.store(true, Ordering::Relaxed);
    let sent = producer.join().unwrap();
    let got = consumer.join().unwrap();
    println!("port load: {sent} packets posted, {got} dequeued (~{RATE}/s paced)");
    println!("measured for {secs:.2} s; median / p99 in µs:");
    println!("  CompletionPort::stats()          {:.3} / {:.3}", stats.0, stats.1);
    println!("  LiveStats::snapshot()            {:.3} / {:.3}", snapshot.0, snapshot.1);
    println!("  MetricsSnapshot::to_prometheus() {:.3} / {:.3}", render.0, render.1);
    println!("  MetricsSnapshot::to_json()       {:.3} / {:.3}", json.0, json.1);
    println!("  /metrics body: {} bytes", snap.to_prometheus().len());
    // What the metrics add per echo message on the hot path, uncontended: relaxed adds for
    // bytes in, the message and bytes out, and for one callback in SERVICE_TIME_SAMPLING two
    // clock reads and two adds (the histogram bucket and the time sum).
    let (a, b, c, d) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    const N: u32 = 1_000_000;
    let t0 = Instant::now();
    for i in 0..N {
        a.fetch_add(64, Ordering::Relaxed);
        b.fetch_add(1, Ordering::Relaxed);
        a.fetch_add(64, Ordering::Relaxed);
        if i.is_multiple_of(iocp_server::metrics::SERVICE_TIME_SAMPLING) {
            let t = Instant::now();
            let ns = std::hint::black_box(t.elapsed()).as_nanos() as u64;
            c.fetch_add(1, Ordering::Relaxed);
            d.fetch_add(ns, Ordering::Relaxed);
        }
    }
    let per = t0.elapsed().as_secs_f64() * 1e9 / f64::from(N);
    println!("  hot-path additions per message (uncontended): {per:.1} ns");
    let t0 = Instant::now();
    for _ in 0..N {
        std::hint::black_box(Instant::now());
    }
    let clock = t0.elapsed().as_secs_f64() * 1e9 / f64::from(N);
    println!("    of which one clock read: {clock:.1} ns");
    server.stop();
}
