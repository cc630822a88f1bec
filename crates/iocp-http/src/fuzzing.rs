//! Shared by the fuzz target and the corpus-replay test: a sample docroot and a driver that
//! feeds bytes through parse and respond. Not part of the supported API.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Body, Config, Parsed, Site};

/// The HTTP fuzz corpus (`fuzz/corpus/http_request` at the workspace root), sorted by file
/// name: `(name, bytes)` per input. Replayed in-process by this crate's tests and over real
/// sockets by the server's.
///
/// # Errors
///
/// The corpus directory or a file in it cannot be read.
pub fn corpus() -> io::Result<Vec<(String, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/http_request");
    let mut files = Vec::new();
    for e in fs::read_dir(&dir)? {
        let p = e?.path();
        if p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            Ok((p.file_name().unwrap_or_default().to_string_lossy().into_owned(), fs::read(&p)?))
        })
        .collect()
}

/// Fills `dir` with a small docroot: files of a few sizes, a `.gz` sibling, a directory with
/// an index, one without, odd names, and a symlink that leaves the root.
///
/// # Errors
///
/// Any file system error while writing.
pub fn sample_docroot(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir.join("sub/deeper"))?;
    fs::create_dir_all(dir.join("with index"))?;
    fs::write(dir.join("index.html"), b"<h1>home</h1>\n")?;
    fs::write(dir.join("hello.txt"), b"hello, world\n")?;
    fs::write(dir.join("empty.txt"), b"")?;
    fs::write(dir.join("big.bin"), big_bin())?;
    fs::write(dir.join("style.css"), b"body { color: red }\n")?;
    fs::write(dir.join("style.css.gz"), b"\x1f\x8b\x08\x00not really gzip")?;
    fs::write(dir.join("sub/a <&> b.txt"), b"odd name\n")?;
    fs::write(dir.join("sub/deeper/x.json"), b"{}\n")?;
    fs::write(dir.join("with index/index.html"), b"<p>index</p>\n")?;
    let escape = dir.join("escape");
    if fs::symlink_metadata(&escape).is_err() {
        std::os::unix::fs::symlink("/etc", &escape)?;
    }
    Ok(())
}

/// The content of the sample `big.bin` (300 KiB, over the in-memory cache limit): byte `i` is
/// `i % 251`, so a body sent from a wrong offset shows.
pub fn big_bin() -> Vec<u8> {
    (0..300 * 1024).map(|i: u32| (i % 251) as u8).collect()
}

/// A [`sample_docroot`] in a fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDocroot {
    path: PathBuf,
}

impl TempDocroot {
    /// Makes `$TMPDIR/iocp-http-<tag>-<pid>-<n>` and fills it.
    ///
    /// # Errors
    ///
    /// Any file system error while writing.
    pub fn new(tag: &str) -> io::Result<TempDocroot> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("iocp-http-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        let root = TempDocroot { path };
        sample_docroot(&root.path)?;
        Ok(root)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDocroot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A site on `dir` with the default configuration.
///
/// # Errors
///
/// As [`Site::new`].
pub fn site(dir: &Path) -> io::Result<Site> {
    Site::new(Config::new(dir))
}

/// Runs `data` through the site as one connection would: parse, respond, then the rest of
/// the buffer (pipelining), until the bytes run out or the connection would close. Checks the
/// invariants every response must keep; panics (as a fuzz finding) when one is broken.
/// Returns the statuses.
pub fn drive(site: &Site, data: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut rest = data;
    // Every request consumes at least one byte, so this ends.
    loop {
        match site.parse(rest) {
            Parsed::Incomplete => break,
            Parsed::Continue => {
                statuses.push(100);
                break;
            }
            Parsed::Error(resp) => {
                check(&resp);
                assert!(!resp.keep_alive, "a parse error must close");
                statuses.push(resp.status);
                break;
            }
            Parsed::Request { req, consumed } => {
                assert!(consumed > 0 && consumed <= rest.len(), "consumed {consumed}");
                let resp = site.respond(&req);
                check(&resp);
                statuses.push(resp.status);
                rest = &rest[consumed..];
                if !resp.keep_alive {
                    break;
                }
            }
        }
    }
    statuses
}

/// The invariants of any response head and body.
fn check(resp: &crate::Response) {
    assert!((100..600).contains(&resp.status));
    assert!(resp.head.starts_with(b"HTTP/1.1 "), "status line");
    assert!(resp.head.ends_with(b"\r\n\r\n"), "head end");
    let head = &resp.head[..resp.head.len() - 4];
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.contains(&b'\r'), "bare CR in head");
        assert!(!line.is_empty(), "blank line inside head");
    }
    let length = head
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Content-Length: "))
        .and_then(|v| std::str::from_utf8(v.strip_suffix(b"\r").unwrap_or(v)).ok())
        .and_then(|v| v.parse::<u64>().ok());
    if resp.body_len() > 0 {
        assert_eq!(length, Some(resp.body_len()), "Content-Length matches the body");
    }
    match &resp.body {
        Body::Bytes { data, offset, len } => {
            assert!(offset.checked_add(*len).is_some_and(|end| end <= data.len()), "bytes range");
            // The sample docroot's `escape` symlink points at /etc: nothing from there (the
            // password file, or a listing of it) may ever be served.
            let leaked = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
            assert!(
                !leaked(b"root:x:0:0") && !leaked(b"href=\"passwd\""),
                "content from outside the root"
            );
        }
        Body::File { file, offset, len } => {
            let size = file.metadata().map_or(u64::MAX, |m| m.len());
            assert!(offset.checked_add(*len).is_some_and(|end| end <= size), "file range");
        }
        Body::Empty => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn bytes_response(body: &[u8]) -> crate::Response {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let data: Arc<[u8]> = body.into();
        let len = data.len();
        crate::Response {
            status: 200,
            head: head.into_bytes(),
            body: Body::Bytes { data, offset: 0, len },
            keep_alive: true,
        }
    }

    #[test]
    fn check_accepts_a_sound_response() {
        check(&bytes_response(b"fine"));
    }

    #[test]
    #[should_panic(expected = "content from outside the root")]
    fn check_catches_a_leak() {
        check(&bytes_response(b"root:x:0:0:root:/root:/bin/sh"));
    }

    #[test]
    #[should_panic(expected = "Content-Length matches the body")]
    fn check_catches_a_wrong_length() {
        let mut r = bytes_response(b"fine");
        r.head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec();
        check(&r);
    }
}
