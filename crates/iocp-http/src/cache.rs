//! The file cache: resolved paths with their open file or (small files) their bytes.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

/// How long a resolution (canonicalize, prefix check, open, `.gz` sibling) is trusted before it
/// is done again; within it, a `stat` of the canonical path revalidates the entry.
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
}

impl Entry {
    fn bytes(&self) -> u64 {
        match &self.content {
            Content::Bytes(b) => b.len() as u64,
            Content::File(_) => 0,
        }
    }

    /// Whether this entry may be served without resolving again: resolved within [`TRUST`]
    /// and the canonical path still shows the same file version.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.resolved_at) < TRUST
            && std::fs::metadata(&self.canon)
                .is_ok_and(|m| m.is_file() && Stamp::of(&m) == self.stamp)
    }
}

/// The cache: one map for identity responses and one for gzip ones, keyed by decoded path.
#[derive(Debug)]
pub(crate) struct Cache {
    inner: RwLock<Inner>,
    max_bytes: u64,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Inner {
    maps: [HashMap<String, Arc<Entry>>; 2],
    bytes: u64,
}

impl Cache {
    pub(crate) fn new(max_bytes: u64, max_entries: usize) -> Cache {
        Cache { inner: RwLock::new(Inner::default()), max_bytes, max_entries }
    }

    pub(crate) fn get(&self, path: &str, gzip: bool) -> Option<Arc<Entry>> {
        self.inner.read().maps[usize::from(gzip)].get(path).cloned()
    }

    /// Inserts (or replaces) an entry, evicting arbitrary others to stay within the bounds.
    pub(crate) fn insert(&self, path: &str, gzip: bool, entry: Arc<Entry>) {
        if self.max_entries == 0 || entry.bytes() > self.max_bytes {
            return;
        }
        let mut inner = self.inner.write();
        let added = entry.bytes();
        if let Some(old) = inner.maps[usize::from(gzip)].insert(path.to_owned(), entry) {
            inner.bytes -= old.bytes();
        }
        inner.bytes += added;
        while inner.bytes > self.max_bytes
            || inner.maps[0].len() + inner.maps[1].len() > self.max_entries
        {
            // Evict from the bigger map first, any key but the one just added.
            let first = usize::from(inner.maps[1].len() > inner.maps[0].len());
            let own = usize::from(gzip);
            let victim = [first, 1 - first].into_iter().find_map(|m| {
                inner.maps[m].keys().find(|k| !(m == own && *k == path)).map(|k| (m, k.clone()))
            });
            let Some((which, victim)) = victim else { break };
            if let Some(old) = inner.maps[which].remove(&victim) {
                inner.bytes -= old.bytes();
            }
        }
    }

    /// The number of entries and the bytes of file data held.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, u64) {
        let inner = self.inner.read();
        (inner.maps[0].len() + inner.maps[1].len(), inner.bytes)
    }
}
