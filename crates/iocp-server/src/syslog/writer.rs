//! The file writer: one thread taking batches from the queue (group commit: whatever queued
//! while the last batch was written goes in the next one), one overlapped append per file per
//! batch on a completion port of its own, fsync by policy, size and time rotation, reopen on
//! request.
//! A failed write (a full disk) keeps its bytes and retries: the queue stays full, so TCP
//! inputs pause and UDP inputs count drops, until space returns.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use iocp::{APPEND, CompletionKey, CompletionPort, Handle, Payload};

use super::queue::Chunk;
use super::{Counters, Fsync, Inner};

/// How long the writer waits for the queue before looking at its timers.
const TICK: Duration = Duration::from_millis(50);
/// A failing write is retried after this, doubling up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// One "cannot write" error line per this period while writes keep failing.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

struct OpenFile {
    handle: Handle<usize>,
    size: u64,
    dirty: bool,
    /// When this collector opened it (the age [`super::SyslogConfig::rotate_time`] measures).
    opened: Instant,
}

pub(crate) struct Writer {
    inner: Arc<Inner>,
    port: CompletionPort<usize>,
    files: HashMap<String, OpenFile>,
    last_sync: Instant,
    last_age_check: Instant,
    failing_since: Option<Instant>,
    last_error_log: Option<Instant>,
}

impl Writer {
    pub(crate) fn new(inner: Arc<Inner>, backend: iocp::BackendChoice) -> io::Result<Writer> {
        let port = CompletionPort::<usize>::builder().backend(backend).concurrency(1).build()?;
        Ok(Writer {
            inner,
            port,
            files: HashMap::new(),
            last_sync: Instant::now(),
            last_age_check: Instant::now(),
            failing_since: None,
            last_error_log: None,
        })
    }

    /// Runs until the queue is closed and drained (or, stopping with writes failing, until the
    /// flush deadline passes: what is left is counted as lost and logged).
    pub(crate) fn run(mut self) {
        let mut chunks = Vec::new();
        loop {
            chunks.clear();
            let done = self.inner.queue.take(self.inner.cfg.batch_bytes, TICK, &mut chunks);
            if self.inner.reopen.swap(false, Ordering::SeqCst) {
                self.close_all();
                tracing::info!("syslog: files reopened");
            }
            if let Some(age) = self.inner.cfg.rotate_time
                && self.last_age_check.elapsed() >= TICK.min(age)
            {
                self.last_age_check = Instant::now();
                self.rotate_aged(age);
            }
            if !chunks.is_empty() {
                self.write_batch(&chunks);
            }
            if self.inner.cfg.fsync == Fsync::Interval
                && self.last_sync.elapsed() >= self.inner.cfg.fsync_interval
            {
                self.sync_all();
            }
            if done {
                break;
            }
        }
        self.sync_all();
        self.close_all();
    }

    fn close_all(&mut self) {
        for (_, f) in self.files.drain() {
            f.handle.close();
        }
    }

    /// Time rotation: every open file older than `age` (and not empty) is closed and rotated;
    /// the next message for it starts a new file.
    fn rotate_aged(&mut self, age: Duration) {
        let aged: Vec<String> = self
            .files
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= age)
            .map(|(p, _)| p.clone())
            .collect();
        for path in aged {
            if self.files.get(&path).is_some_and(|f| f.size == 0) {
                if let Some(f) = self.files.get_mut(&path) {
                    f.opened = Instant::now();
                }
                continue;
            }
            if let Err(e) = self.rotate_file(&path) {
                // The file stays closed; the next message reopens it (and it is tried again
                // when that one ages).
                tracing::warn!(file = %path, error = %e, "syslog: time rotation failed");
            }
        }
    }

    /// Closes `path` (syncing it first unless the policy is [`Fsync::None`]) and renames it
    /// and its older generations (`f` -> `f.1` -> `f.2` ...).
    fn rotate_file(&mut self, path: &str) -> io::Result<()> {
        if let Some(f) = self.files.remove(path) {
            if f.dirty
                && self.inner.cfg.fsync != Fsync::None
                && let Err(e) = rustix::fs::fdatasync(&f.handle)
            {
                tracing::warn!(error = %e, "syslog: fdatasync failed");
            }
            f.handle.close();
        }
        rotate(&self.inner.cfg.dir.join(path), self.inner.cfg.rotate_keep)?;
        self.inner.counters.rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sync_all(&mut self) {
        self.last_sync = Instant::now();
        for f in self.files.values_mut().filter(|f| f.dirty) {
            f.dirty = false;
            if let Err(e) = rustix::fs::fdatasync(&f.handle) {
                tracing::warn!(error = %e, "syslog: fdatasync failed");
            }
        }
    }

    fn write_batch(&mut self, chunks: &[Chunk]) {
        // Group by file, keeping each file's lines in arrival order.
        let mut order: Vec<(String, Vec<u8>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut bytes = 0;
        for part in chunks.iter().flat_map(|c| &c.parts) {
            bytes += part.bytes.len();
            match index.get(part.path.as_str()) {
                Some(&i) => order[i].1.extend_from_slice(&part.bytes),
                None => {
                    index.insert(&part.path, order.len());
                    order.push((part.path.clone(), part.bytes.clone()));
                }
            }
        }
        drop(index);
        let written = self.write_all(order);
        let c = &self.inner.counters;
        if written {
            for chunk in chunks {
                let msgs: u64 = chunk.parts.iter().map(|p| p.msgs).sum();
                c.input(chunk.input).written.fetch_add(msgs, Ordering::Relaxed);
                c.batch_msgs.fetch_add(msgs, Ordering::Relaxed);
            }
            c.batches.fetch_add(1, Ordering::Relaxed);
            c.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
            if self.inner.cfg.fsync == Fsync::Batch {
                self.sync_all();
            }
        } else {
            for chunk in chunks {
                let msgs: u64 = chunk.parts.iter().map(|p| p.msgs).sum();
                c.lost.fetch_add(msgs, Ordering::Relaxed);
            }
        }
        self.inner.queue.release(chunks.iter().map(|c| c.bytes).sum());
    }

    /// Writes every group, retrying failures until they succeed; false if it gave up (stopping
    /// past the flush deadline).
    fn write_all(&mut self, mut todo: Vec<(String, Vec<u8>)>) -> bool {
        let mut retry = RETRY_MIN;
        let mut give_up_at: Option<Instant> = None;
        loop {
            let (failed, rest) = self.write_round(todo);
            if failed.is_empty() && !rest.is_empty() {
                // Rotation cut some files' bytes: the rest goes to the new files.
                todo = rest;
                continue;
            }
            if failed.is_empty() {
                if let Some(since) = self.failing_since.take() {
                    tracing::warn!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "syslog: writing resumed"
                    );
                    self.last_error_log = None;
                }
                return true;
            }
            let now = Instant::now();
            self.failing_since.get_or_insert(now);
            if self.inner.queue_closed() {
                let at = *give_up_at.get_or_insert(now + self.inner.cfg.flush_timeout);
                if now >= at {
                    let n: usize = failed.iter().map(|(_, b, _)| b.len()).sum();
                    tracing::error!(
                        bytes = n,
                        "syslog: stopping and the files still cannot be written: giving up on \
                         the rest (counted as lost)"
                    );
                    return false;
                }
            }
            if self.last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY) {
                self.last_error_log = Some(now);
                let (path, bytes, err) = &failed[0];
                let held: usize = failed.iter().map(|(_, b, _)| b.len()).sum();
                tracing::error!(
                    file = %path,
                    error = %err,
                    held_bytes = held,
                    queued_bytes = self.inner.queue.bytes(),
                    pending_bytes = bytes.len(),
                    "syslog: cannot write; holding the messages and retrying (TCP senders are \
                     paused, UDP messages are dropped and counted until it succeeds)"
                );
            }
            self.inner.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(retry);
            retry = (retry * 2).min(RETRY_MAX);
            todo = failed.into_iter().map(|(p, b, _)| (p, b)).chain(rest).collect();
        }
    }

    /// One overlapped append per group, all in flight at once. Returns the groups that
    /// failed (with the bytes still to write, in order) and the groups' bytes held back by
    /// rotation (for the next round, once the head is written).
    #[allow(clippy::type_complexity)]
    fn write_round(
        &mut self,
        todo: Vec<(String, Vec<u8>)>,
    ) -> (Vec<(String, Vec<u8>, io::Error)>, Vec<(String, Vec<u8>)>) {
        let mut failed = Vec::new();
        let mut rest = Vec::new();
        // Per submitted write: its file, the file's size before it, the bytes held back.
        let mut in_flight: Vec<Option<(String, u64, Vec<u8>)>> = Vec::new();
        let mut outstanding = 0;
        for (path, mut buf) in todo {
            let tail = match self.open(&path).and_then(|()| self.cut(&path, &mut buf)) {
                Ok(t) => t,
                Err(e) => {
                    failed.push((path, buf, e));
                    continue;
                }
            };
            let Some(f) = self.files.get(&path) else { continue };
            let i = in_flight.len();
            let start = f.size;
            match f.handle.write_at(buf, APPEND, i) {
                Ok(_) => {
                    in_flight.push(Some((path, start, tail)));
                    outstanding += 1;
                }
                Err(e) => {
                    let (err, _, payload) = e.into_parts();
                    let mut buf = match payload {
                        Payload::Write(b) => b,
                        _ => Vec::new(),
                    };
                    buf.extend_from_slice(&tail);
                    in_flight.push(None);
                    if let Some(f) = self.files.remove(&path) {
                        f.handle.close();
                    }
                    failed.push((path, buf, err));
                }
            }
        }
        while outstanding > 0 {
            let c = match self.port.get(Some(Duration::from_secs(60))) {
                Ok(c) => c,
                Err(e) => {
                    // The port cannot fail while this thread owns it; if it does, what is in
                    // flight is unknowable: stop waiting, report it.
                    tracing::error!(error = ?e, "syslog: the writer's port failed");
                    break;
                }
            };
            outstanding -= 1;
            let res = c.result();
            let (i, payload) = c.into_parts();
            let Some((path, start, tail)) = in_flight.get_mut(i).and_then(Option::take) else {
                continue;
            };
            let buf = match payload {
                Payload::Write(b) => b,
                _ => Vec::new(),
            };
            match res {
                Ok(n) => {
                    if let Some(f) = self.files.get_mut(&path) {
                        f.size = start + n as u64;
                        f.dirty = true;
                    }
                    if !tail.is_empty() {
                        rest.push((path, tail));
                    }
                }
                Err(e) => {
                    // Part of it may have landed (a short write before ENOSPC): keep only what
                    // did not, so nothing is written twice.
                    let landed = self
                        .files
                        .get(&path)
                        .and_then(|f| rustix::fs::fstat(&f.handle).ok())
                        .map_or(0, |st| (st.st_size as u64).saturating_sub(start));
                    let landed = usize::try_from(landed).unwrap_or(usize::MAX).min(buf.len());
                    if let Some(f) = self.files.get_mut(&path) {
                        f.size = start + landed as u64;
                        f.dirty = true;
                    }
                    let mut left = buf[landed..].to_vec();
                    left.extend_from_slice(&tail);
                    failed.push((path, left, e));
                }
            }
        }
        (failed, rest)
    }

    /// Opens the file for `path` (creating directories) unless it is open.
    fn open(&mut self, path: &str) -> io::Result<()> {
        if self.files.contains_key(path) {
            return Ok(());
        }
        let full = self.inner.cfg.dir.join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file: File = OpenOptions::new().create(true).append(true).open(&full)?;
        let mut size = file.metadata()?.len();
        if size > 0 && !ends_with_newline(&full, size) {
            // A line cut by a crash in the middle of a write (kill -9, power loss): end it, so
            // that the next message starts a line of its own. The cut line stays as it is.
            file.write_all(b"\n")?;
            size += 1;
            tracing::warn!(
                file = %full.display(),
                "syslog: the file ended in a cut line (a crash in the middle of a write?): \
                 ended it with a newline"
            );
        }
        let handle = self.port.associate(OwnedFd::from(file), CompletionKey(1))?;
        self.files.insert(
            path.to_string(),
            OpenFile { handle, size, dirty: false, opened: Instant::now() },
        );
        Ok(())
    }

    /// With a size limit: keeps in `buf` the whole lines that fit the (open) file, rotating it
    /// first when not even one does, and returns the rest. A single line longer than the
    /// limit goes alone into a fresh file.
    fn cut(&mut self, path: &str, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
        let Some(limit) = self.inner.cfg.rotate_size else { return Ok(Vec::new()) };
        loop {
            let size = self.files.get(path).map_or(0, |f| f.size);
            let len = buf.len() as u64;
            if size + len <= limit {
                return Ok(Vec::new());
            }
            let room = usize::try_from(limit.saturating_sub(size)).unwrap_or(usize::MAX);
            if let Some(i) = buf[..room.min(buf.len())].iter().rposition(|&b| b == b'\n') {
                return Ok(buf.split_off(i + 1));
            }
            if size == 0 {
                let end = buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |i| i + 1);
                return Ok(buf.split_off(end));
            }
            self.rotate_file(path)?;
            self.open(path)?;
        }
    }
}

/// Whether the file of `size` bytes at `path` ends with a newline (true when it cannot be
/// read: nothing is added then).
fn ends_with_newline(path: &Path, size: u64) -> bool {
    use std::os::unix::fs::FileExt as _;
    let mut last = [0u8];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut last, size - 1))
        .map_or(true, |()| last[0] == b'\n')
}

/// `f` becomes `f.1`, `f.1` becomes `f.2`..., `f.{keep}` is removed.
fn rotate(f: &Path, keep: u32) -> io::Result<()> {
    let keep = keep.max(1);
    let nth = |n: u32| -> PathBuf {
        let mut s = f.as_os_str().to_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    };
    let _ = fs::remove_file(nth(keep));
    for n in (1..keep).rev() {
        let _ = fs::rename(nth(n), nth(n + 1));
    }
    fs::rename(f, nth(1))
}

impl Counters {
    fn input(&self, i: super::Input) -> &super::InputCounters {
        match i {
            super::Input::Tcp => &self.tcp,
            super::Input::Udp => &self.udp,
        }
    }
}
