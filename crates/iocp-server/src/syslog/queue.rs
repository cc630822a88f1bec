//! The bounded queue between the inputs and the file writer.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::render::Input;
use crate::server::Resumer;

/// Lines bound for one file, in arrival order.
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) path: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) msgs: u64,
}

/// What one input step (a TCP read, a datagram) produced: parts in arrival order.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) input: Input,
    pub(crate) parts: Vec<Part>,
    pub(crate) bytes: usize,
}

impl Chunk {
    pub(crate) fn new(input: Input) -> Chunk {
        Chunk { input, parts: Vec::new(), bytes: 0 }
    }

    /// Adds a rendered line for `path` (merged with the last part when it is the same file).
    pub(crate) fn push(&mut self, path: &str, line: &[u8]) {
        self.bytes += line.len();
        if let Some(last) = self.parts.last_mut()
            && last.path == path
        {
            last.bytes.extend_from_slice(line);
            last.msgs += 1;
            return;
        }
        self.parts.push(Part { path: path.to_string(), bytes: line.to_vec(), msgs: 1 });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

struct State {
    chunks: VecDeque<Chunk>,
    /// Bytes queued or taken by the writer and not yet written.
    bytes: usize,
    closed: bool,
}

/// A queue bounded in bytes. A chunk that does not fit is refused (the TCP input pauses, the
/// UDP input counts a drop), except into an empty queue, so any chunk gets through.
pub(crate) struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    cap: usize,
    /// An input was refused and waits for room.
    wanted: AtomicBool,
    resumer: OnceLock<Resumer>,
}

impl Queue {
    pub(crate) fn new(cap: usize) -> Queue {
        Queue {
            state: Mutex::new(State { chunks: VecDeque::new(), bytes: 0, closed: false }),
            ready: Condvar::new(),
            cap: cap.max(1),
            wanted: AtomicBool::new(false),
            resumer: OnceLock::new(),
        }
    }

    pub(crate) fn set_resumer(&self, r: Resumer) {
        let _ = self.resumer.set(r);
    }

    /// Bytes queued and unwritten.
    pub(crate) fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Whether a chunk of `n` bytes would be admitted now. When not, the caller is noted as
    /// waiting (the writer resumes paused connections once it frees room).
    pub(crate) fn has_room(&self, n: usize) -> bool {
        self.wanted.store(true, Ordering::SeqCst);
        let s = self.state.lock();
        let ok = s.bytes == 0 || s.bytes + n <= self.cap;
        drop(s);
        ok
    }

    /// Queues `chunk`, or hands it back when it does not fit (`force` admits it anyway: a
    /// closing connection's last bytes).
    pub(crate) fn push(&self, chunk: Chunk, force: bool) -> Result<(), Chunk> {
        let mut s = self.state.lock();
        if !force && s.bytes != 0 && s.bytes + chunk.bytes > self.cap {
            drop(s);
            self.wanted.store(true, Ordering::SeqCst);
            return Err(chunk);
        }
        s.bytes += chunk.bytes;
        s.chunks.push_back(chunk);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The writer: takes queued chunks up to about `max` bytes, waiting up to `wait` for the
    /// first. Empty and `true` once the queue is closed and drained.
    pub(crate) fn take(&self, max: usize, wait: Duration, out: &mut Vec<Chunk>) -> bool {
        let mut s = self.state.lock();
        if s.chunks.is_empty() && !s.closed {
            self.ready.wait_for(&mut s, wait);
        }
        let mut taken = 0;
        while let Some(c) = s.chunks.pop_front() {
            taken += c.bytes;
            out.push(c);
            if taken >= max {
                break;
            }
        }
        out.is_empty() && s.closed
    }

    /// The writer wrote `n` bytes: room for them again; resumes paused inputs.
    pub(crate) fn release(&self, n: usize) {
        {
            let mut s = self.state.lock();
            s.bytes = s.bytes.saturating_sub(n);
        }
        if self.wanted.swap(false, Ordering::SeqCst)
            && let Some(r) = self.resumer.get()
        {
            r.resume();
        }
    }

    /// No more chunks will come: the writer drains and ends.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}
