//! Giving freed connection buffers back to the kernel.
//!
//! A parked or closed connection frees its buffers, but the C allocator keeps freed chunks in
//! its arenas: the process's RSS would stay at its busiest. A background thread asks glibc to
//! return free pages (`malloc_trim`) at most once per second, and only after enough buffers
//! were released since the last time, so a busy server never pays for it on its hot path.
//! The trim itself is [`iocp::trim_heap`] (the core fences in all unsafe code).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Buffers released since the last trim before a trim is worth its arena walk.
const RELEASED_BEFORE_TRIM: u64 = 32;
const PERIOD: Duration = Duration::from_secs(1);

struct Inner {
    released: AtomicU64,
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The background trimmer of one server.
pub(crate) struct Reclaimer {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Reclaimer {
    pub(crate) fn start() -> io::Result<Self> {
        let inner = Arc::new(Inner {
            released: AtomicU64::new(0),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let bg = inner.clone();
        let thread = std::thread::Builder::new().name("iocp-reclaim".into()).spawn(move || {
            let mut stopped = bg.stopped.lock();
            while !*stopped {
                let _ = bg.wake.wait_for(&mut stopped, PERIOD);
                if *stopped {
                    break;
                }
                if bg.released.load(Ordering::Relaxed) >= RELEASED_BEFORE_TRIM {
                    bg.released.store(0, Ordering::Relaxed);
                    drop(stopped);
                    iocp::trim_heap();
                    stopped = bg.stopped.lock();
                }
            }
        })?;
        Ok(Reclaimer { inner, thread: Mutex::new(Some(thread)) })
    }

    /// A connection released its buffers (it parked or closed).
    pub(crate) fn note_released(&self) {
        self.inner.released.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops and joins the thread. Idempotent.
    pub(crate) fn stop(&self) {
        *self.inner.stopped.lock() = true;
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        self.stop();
    }
}
