//! Worker threads draining a completion port.

use std::any::Any;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use iocp::{Completion, CompletionPort, GetError};

/// How a [`Pool`] runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Worker threads; 0 means one per CPU.
    pub threads: usize,
    /// Most completions a worker dequeues at once (`get_many`); 1 dequeues one at a time.
    pub batch: usize,
    /// Thread name prefix (`{name}-{i}`).
    pub name: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { threads: 0, batch: 32, name: "iocp-worker".into() }
    }
}

/// The number of CPUs this process may run on (at least 1).
pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a stopped pool did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolReport {
    /// Completions handed to the handler.
    pub handled: u64,
    /// Handler calls that panicked (each caught, logged and counted).
    pub panics: u64,
    /// True when the port drained (nothing queued, in flight or running) before the grace
    /// period ended; false when the stop closed the port on pending operations.
    pub drained: bool,
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    panics: AtomicU64,
}

/// Packets each worker handled: one counter per worker, each on its own cache line (a worker
/// only writes its own), read by a metrics scrape.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    per_worker: Vec<PaddedCounter>,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedCounter(AtomicU64);

impl WorkerCounters {
    /// Packets handled by each worker, in worker order.
    pub(crate) fn handled_per_worker(&self) -> Vec<u64> {
        self.per_worker.iter().map(|c| c.0.load(Ordering::Relaxed)).collect()
    }
}

/// N threads that dequeue completions from one port and hand each to a handler: the IOCP
/// worker pattern.
///
/// The port's concurrency limit decides how many of them run at once (set it when building
/// the port; threads above the limit wait until a running one blocks in
/// [`iocp::blocking`] or returns to the port). A handler that panics is caught: the
/// panic is logged and counted, the completion (and what its context owned) is dropped, and the
/// worker goes on. [`Pool::stop`] waits for the port to drain, closes it and joins every thread.
#[derive(Debug)]
pub struct Pool<C: Send + 'static> {
    port: Arc<CompletionPort<C>>,
    workers: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    worker_counters: Arc<WorkerCounters>,
}

impl<C: Send + 'static> Pool<C> {
    /// Starts the workers. Each calls `handler` for every completion it dequeues; the handler
    /// starts the next operations itself (through the handles its contexts hold).
    ///
    /// # Errors
    /// A thread could not be spawned (the threads already started are stopped first).
    pub fn start<F>(
        port: Arc<CompletionPort<C>>,
        config: &PoolConfig,
        handler: F,
    ) -> io::Result<Self>
    where
        F: Fn(Completion<C>) + Send + Sync + 'static,
    {
        let threads = if config.threads == 0 { cpus() } else { config.threads };
        let batch = config.batch.max(1);
        let handler = Arc::new(handler);
        let counters = Arc::new(Counters::default());
        let worker_counters = Arc::new(WorkerCounters {
            per_worker: (0..threads).map(|_| PaddedCounter::default()).collect(),
        });
        let mut pool = Pool {
            port: port.clone(),
            workers: Vec::with_capacity(threads),
            counters,
            worker_counters,
        };
        for i in 0..threads {
            let port = port.clone();
            let handler = handler.clone();
            let counters = pool.counters.clone();
            let mine = pool.worker_counters.clone();
            let spawned = thread::Builder::new()
                .name(format!("{}-{i}", config.name))
                .spawn(move || worker(&port, batch, &*handler, &counters, &mine.per_worker[i].0));
            match spawned {
                Ok(h) => pool.workers.push(h),
                Err(e) => {
                    pool.stop(Duration::ZERO);
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// The port the workers drain.
    pub fn port(&self) -> &Arc<CompletionPort<C>> {
        &self.port
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Handler panics so far.
    pub fn panics(&self) -> u64 {
        self.counters.panics.load(Ordering::Relaxed)
    }

    /// Packets each worker has handled so far, in worker order.
    pub fn handled_per_worker(&self) -> Vec<u64> {
        self.worker_counters.handled_per_worker()
    }

    pub(crate) fn worker_counters(&self) -> Arc<WorkerCounters> {
        self.worker_counters.clone()
    }

    /// Stops the pool: waits up to `grace` for the port to drain (no packet queued, no operation
    /// in flight, no worker inside the handler), then closes the port, which aborts whatever is
    /// still pending and wakes every worker, and joins them all.
    ///
    /// The caller first makes the work end (a server stops accepting and lets its connections
    /// finish); the pool does not know what its handlers would start next. "Drained" is
    /// [`CompletionPort::is_idle`]: nothing in flight (a completion a poller has reaped and
    /// not yet queued still counts), nothing queued, no worker in the handler, and no start
    /// while it looked. A server's own idea of done (every connection closed) is more than
    /// that: [`Server::stop`](crate::Server::stop) waits on its accounting first.
    pub fn stop(mut self, grace: Duration) -> PoolReport {
        let drained = wait_drained(&self.port, grace);
        self.port.close();
        for w in self.workers.drain(..) {
            // A worker thread cannot panic (the handler's panics are caught), so join only
            // fails if the thread was killed some other way; nothing more to do then.
            let _ = w.join();
        }
        PoolReport {
            handled: self.counters.handled.load(Ordering::Relaxed),
            panics: self.counters.panics.load(Ordering::Relaxed),
            drained,
        }
    }
}

impl<C: Send + 'static> Drop for Pool<C> {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.port.close();
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

/// Polls the port until it is idle or `grace` passes. Shutdown only: a few lock
/// acquisitions per millisecond.
fn wait_drained<C: Send + 'static>(port: &CompletionPort<C>, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        if port.is_idle() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn worker<C: Send + 'static>(
    port: &CompletionPort<C>,
    batch: usize,
    handler: &(dyn Fn(Completion<C>) + Send + Sync),
    counters: &Counters,
    mine: &AtomicU64,
) {
    let mut out = Vec::with_capacity(batch);
    loop {
        let got = if batch == 1 {
            port.get(None).map(|c| out.push(c))
        } else {
            port.get_many(&mut out, batch, None).map(drop)
        };
        match got {
            Ok(()) => {}
            Err(GetError::Closed) => return,
            Err(e) => {
                // Without a timeout, get only fails when the port closes.
                tracing::error!(error = %e, "worker: get failed");
                return;
            }
        }
        counters.handled.fetch_add(out.len() as u64, Ordering::Relaxed);
        mine.fetch_add(out.len() as u64, Ordering::Relaxed);
        // The operations the handlers start go to the kernel together when the batch ends.
        let _batch = port.submit_batch();
        for c in out.drain(..) {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| handler(c))) {
                counters.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(panic = panic_message(&*payload), "worker: handler panicked");
            }
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}
