//! The file cache: resolved paths with their open file or (small files) their bytes.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

/// How long a resolution (canonicalize, prefix check, open, `.gz` sibling) is trusted before it
/// is done again; within it, a `stat` of the canonical path revalidates the entry (at most once
/// per [`Config::revalidate`](crate::Config::revalidate)).
pub(crate) const TRUST: Duration = Duration::from_secs(1);

/// What identifies one version of a file: a change of any of these invalidates an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    pub(crate) fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The Unix mtime in whole seconds (what `Last-Modified` can say).
    pub(crate) fn mtime_secs(&self) -> i64 {
        self.mtime
    }

    /// `"ino-size-mtime_ns"` in hex, plus `-gz` for the gzip variant: strong, and distinct
    /// per version and per encoding.
    pub(crate) fn etag(&self, gzip: bool) -> String {
        let ns = i128::from(self.mtime) * 1_000_000_000 + i128::from(self.mtime_nsec);
        let gz = if gzip { "-gz" } else { "" };
        format!("\"{:x}-{:x}-{:x}{gz}\"", self.ino, self.size, ns)
    }
}

/// The body source of a file entry.
#[derive(Debug)]
pub(crate) enum Content {
    /// The whole file, in memory.
    Bytes(Arc<[u8]>),
    /// The open file (sent with transmit_file).
    File(Arc<File>),
}

/// One resolved, servable file version.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The canonical path that was opened (the `.gz` sibling for a gzip entry).
    pub(crate) canon: PathBuf,
    pub(crate) stamp: Stamp,
    pub(crate) content: Content,
    pub(crate) content_type: String,
    pub(crate) etag: String,
    pub(crate) last_modified: String,
    /// Served as `Content-Encoding: gzip`.
    pub(crate) gzip: bool,
    /// A `.gz` sibling exists, so responses vary on `Accept-Encoding`.
    pub(crate) vary: bool,
    /// When the resolution was done.
    pub(crate) resolved_at: Instant,
    /// When a `stat` last confirmed the entry, in nanoseconds after `resolved_at`.
    pub(crate) checked_ns: AtomicU64,
}

impl Entry {
    fn bytes(&self) -> u64 {
        match &self.content {
            Content::Bytes(b) => b.len() as u64,
            Content::File(_) => 0,
        }
    }

    /// Whether this entry may be served without resolving again: resolved within [`TRUST`],
    /// and the canonical path still shows the same file version (checked by a `stat` unless
    /// one did within `revalidate`).
    pub(crate) fn is_fresh(&self, now: Instant, revalidate: Duration) -> bool {
        let age = now.saturating_duration_since(self.resolved_at);
        if age >= TRUST {
            return false;
        }
        let age_ns = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
        let checked = self.checked_ns.load(Ordering::Relaxed);
        if age_ns.saturating_sub(checked) < u64::try_from(revalidate.as_nanos()).unwrap_or(u64::MAX)
        {
            return true;
        }
        let same = std::fs::metadata(&self.canon)
            .is_ok_and(|m| m.is_file() && Stamp::of(&m) == self.stamp);
        if same {
            self.checked_ns.fetch_max(age_ns, Ordering::Relaxed);
        }
        same
    }
}

/// The cache: one map for identity responses and one for gzip ones, keyed by decoded path.
#[derive(Debug)]
pub(crate) struct Cache {
    inner: RwLock<Inner>,
    limits: Limits,
}

/// The bounds of a [`Cache`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Total bytes of in-memory file data.
    pub(crate) bytes: u64,
    /// Entries of either kind.
    pub(crate) entries: usize,
    /// Entries holding an open file.
    pub(crate) files: usize,
}

#[derive(Debug, Default)]
struct Inner {
    maps: [HashMap<String, Arc<Entry>>; 2],
    bytes: u64,
    files: usize,
}

impl Inner {
    fn account(&mut self, entry: &Entry, add: bool) {
        let (bytes, files) = match &entry.content {
            Content::Bytes(b) => (b.len() as u64, 0),
            Content::File(_) => (0, 1),
        };
        if add {
            self.bytes += bytes;
            self.files += files;
        } else {
            self.bytes -= bytes;
            self.files -= files;
        }
    }
}

impl Cache {
    pub(crate) fn new(limits: Limits) -> Cache {
        Cache { inner: RwLock::new(Inner::default()), limits }
    }

    pub(crate) fn get(&self, path: &str, gzip: bool) -> Option<Arc<Entry>> {
        self.inner.read().maps[usize::from(gzip)].get(path).cloned()
    }

    /// Inserts (or replaces) an entry, evicting arbitrary others to stay within the limits.
    pub(crate) fn insert(&self, path: &str, gzip: bool, entry: Arc<Entry>) {
        let lim = self.limits;
        let is_file = matches!(entry.content, Content::File(_));
        if lim.entries == 0 || entry.bytes() > lim.bytes || is_file && lim.files == 0 {
            return;
        }
        let mut inner = self.inner.write();
        inner.account(&entry, true);
        if let Some(old) = inner.maps[usize::from(gzip)].insert(path.to_owned(), entry) {
            inner.account(&old, false);
        }
        loop {
            // Which kind of entry must go: one holding bytes, one holding a file, or any.
            let want: fn(&Entry) -> bool = if inner.bytes > lim.bytes {
                |e| e.bytes() > 0
            } else if inner.files > lim.files {
                |e| matches!(e.content, Content::File(_))
            } else if inner.maps[0].len() + inner.maps[1].len() > lim.entries {
                |_| true
            } else {
                break;
            };
            // Any such entry but the one just added.
            let own = usize::from(gzip);
            let victim = [0, 1].into_iter().find_map(|m| {
                inner.maps[m]
                    .iter()
                    .find(|(k, e)| !(m == own && *k == path) && want(e))
                    .map(|(k, _)| (m, k.clone()))
            });
            let Some((which, victim)) = victim else { break };
            if let Some(old) = inner.maps[which].remove(&victim) {
                inner.account(&old, false);
            }
        }
    }

    /// The number of entries, the bytes of file data and the open files held.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, u64, usize) {
        let inner = self.inner.read();
        (inner.maps[0].len() + inner.maps[1].len(), inner.bytes, inner.files)
    }
}
