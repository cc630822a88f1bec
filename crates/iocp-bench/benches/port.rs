//! Port queue benchmarks: post→get throughput with P producers and C consumers, and batch
//! dequeue (`get_many(64)`), each measured against crossbeam-channel (unbounded) in the same run
//! and through the same harness.
//!
//! - `post_get/<impl>/<P>x<C>`: P producer threads each send `TOTAL / P` items; C consumer
//!   threads dequeue until all of them are received. The threads live in a pool for the whole
//!   benchmark; one iteration is one round of `TOTAL` items, timed from releasing the pool to the
//!   last consumer finishing. The last producer to finish sends C stop pills (FIFO: they come
//!   after every item), so no consumer waits on a timeout.
//! - `batch64/<impl>`: 4 × 64 items are queued (not timed), then drained in 4 batches into a
//!   reused `Vec`, each by one `get_many(64)` (iocp) or 64 `try_recv` (crossbeam), single
//!   threaded; only the drain (including clearing the `Vec`, which drops the packets) is timed.
//!   Four batches per timed section amortise the two clock reads (~30 ns each here) while the
//!   queued packets (256 × 96 bytes for iocp) still fit in L1.
//! - `batch64_post_drain/<impl>`: the same, with the 256 posts/sends timed too.
//!
//! `<impl>` is `iocp-epoll`, `iocp-uring` (when io_uring is available) or `crossbeam`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use iocp::{CompletionKey, CompletionPort};

/// Items per post_get iteration (split evenly among the producers).
const TOTAL: usize = 20_000;
/// The value that tells a consumer to stop.
const PILL: u64 = u64::MAX;
/// Batch size of the batch benchmarks.
const BATCH: usize = 64;
/// Batches drained per batch iteration (amortises the timer reads, ~30 ns each here).
const ROUNDS: usize = 4;

/// What a post_get round needs from a queue: an unbounded MPMC FIFO of `u64`.
trait Queue: Clone + Send + 'static {
    fn send(&self, v: u64);
    fn recv(&self) -> u64;
}

#[derive(Clone)]
struct Port(CompletionPort<u64>);

impl Queue for Port {
    fn send(&self, v: u64) {
        self.0.post(0, CompletionKey(1), v).unwrap();
    }
    fn recv(&self) -> u64 {
        self.0.get(None).unwrap().into_context()
    }
}

#[derive(Clone)]
struct Channel(crossbeam_channel::Sender<u64>, crossbeam_channel::Receiver<u64>);

impl Queue for Channel {
    fn send(&self, v: u64) {
        self.0.send(v).unwrap();
    }
    fn recv(&self) -> u64 {
        self.1.recv().unwrap()
    }
}

/// P producers and C consumers kept alive across iterations; `round` runs one iteration.
struct Pool {
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new<Q: Queue>(q: Q, producers: usize, consumers: usize) -> Pool {
        let n = producers + consumers + 1;
        let start = Arc::new(Barrier::new(n));
        let done = Arc::new(Barrier::new(n));
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicUsize::new(0));
        let per = TOTAL / producers;
        let mut threads = Vec::new();
        for p in 0..producers {
            let (q, start, done, stop, finished) =
                (q.clone(), start.clone(), done.clone(), stop.clone(), finished.clone());
            threads.push(std::thread::spawn(move || {
                loop {
                    start.wait();
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let base = (p * per) as u64;
                    for i in 0..per as u64 {
                        q.send(base + i);
                    }
                    // The last producer of the round sends one pill per consumer.
                    if finished.fetch_add(1, Ordering::AcqRel) + 1 == producers {
                        finished.store(0, Ordering::Relaxed);
                        for _ in 0..consumers {
                            q.send(PILL);
                        }
                    }
                    done.wait();
                }
            }));
        }
        for _ in 0..consumers {
            let (q, start, done, stop) = (q.clone(), start.clone(), done.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                loop {
                    start.wait();
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let mut sum = 0u64;
                    loop {
                        let v = q.recv();
                        if v == PILL {
                            break;
                        }
                        sum = sum.wrapping_add(v);
                    }
                    black_box(sum);
                    done.wait();
                }
            }));
        }
        Pool { start, done, stop, threads }
    }

    /// One round of `TOTAL` items; returns its wall time.
    fn round(&self) -> Duration {
        let t = Instant::now();
        self.start.wait();
        self.done.wait();
        t.elapsed()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.start.wait();
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

fn post_get(c: &mut Criterion) {
    let mut g = c.benchmark_group("post_get");
    g.throughput(Throughput::Elements(TOTAL as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    for (p, k) in [(1, 1), (2, 2), (4, 4)] {
        let case = format!("{p}x{k}");
        // Interleave the implementations within each case so drift hits all of them alike.
        for (name, b) in iocp_testkit::available_backends() {
            let port: CompletionPort<u64> = b.concurrency(k).build().unwrap();
            let pool = Pool::new(Port(port), p, k);
            g.bench_function(format!("iocp-{name}/{case}"), |bch| {
                bch.iter_custom(|iters| (0..iters).map(|_| pool.round()).sum())
            });
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = Pool::new(Channel(tx, rx), p, k);
        g.bench_function(format!("crossbeam/{case}"), |bch| {
            bch.iter_custom(|iters| (0..iters).map(|_| pool.round()).sum())
        });
    }
    g.finish();
}

fn batch(c: &mut Criterion) {
    for (group, timed_fill) in [("batch64", false), ("batch64_post_drain", true)] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements((BATCH * ROUNDS) as u64));
        for (name, b) in iocp_testkit::available_backends() {
            let port: CompletionPort<u64> = b.concurrency(1).build().unwrap();
            let mut out = Vec::with_capacity(BATCH);
            g.bench_function(format!("iocp-{name}"), |bch| {
                bch.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        for i in 0..(BATCH * ROUNDS) as u64 {
                            port.post(0, CompletionKey(1), i).unwrap();
                        }
                        let t = if timed_fill { t } else { Instant::now() };
                        for _ in 0..ROUNDS {
                            let n = port.get_many(&mut out, BATCH, Some(Duration::ZERO)).unwrap();
                            assert_eq!(n, BATCH);
                            black_box(&out);
                            // Dropping the packets is part of the drain (a Vec of u64 for
                            // crossbeam has nothing to drop).
                            out.clear();
                        }
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
        let (tx, rx) = crossbeam_channel::unbounded::<u64>();
        let mut out: Vec<u64> = Vec::with_capacity(BATCH);
        g.bench_function("crossbeam", |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    for i in 0..(BATCH * ROUNDS) as u64 {
                        tx.send(i).unwrap();
                    }
                    let t = if timed_fill { t } else { Instant::now() };
                    for _ in 0..ROUNDS {
                        while out.len() < BATCH {
                            match rx.try_recv() {
                                Ok(v) => out.push(v),
                                Err(_) => break,
                            }
                        }
                        assert_eq!(out.len(), BATCH);
                        black_box(&out);
                        out.clear();
                    }
                    total += t.elapsed();
                }
                total
            })
        });
        g.finish();
    }
}

criterion_group!(benches, post_get, batch);
criterion_main!(benches);
