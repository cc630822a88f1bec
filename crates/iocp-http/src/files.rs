//! Building the response to a request: path resolution, files, directories, conditionals and
//! ranges.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::cache::{Content, Entry, Stamp};
use crate::head::{Head, error_response};
use crate::path::Target;
use crate::{Body, Request, Response, Site, Version, listing, path};

/// What a path resolved to.
enum Resolved {
    File(Arc<Entry>),
    /// A directory asked for without its trailing slash.
    Redirect,
    /// A directory listing (HTML).
    Listing(Vec<u8>),
}

pub(crate) fn respond(site: &Site, req: &Request) -> Response {
    let head_only = req.method == "HEAD";
    let keep = req.keep_alive;
    if !head_only && req.method != "GET" {
        return error_response(site, 405, keep, false, &[("Allow", "GET, HEAD")]);
    }
    let target = match path::decode(&req.target) {
        Ok(t) => t,
        Err(status) => return error_response(site, status, keep, head_only, &[]),
    };
    let gzip = req.accept_gzip && site.cfg.precompressed;
    let now = Instant::now();
    let cached =
        site.cache.get(&target.decoded, gzip).filter(|e| e.is_fresh(now, site.cfg.revalidate));
    let resolved = match cached {
        Some(entry) => Resolved::File(entry),
        None => match resolve(site, &target, gzip) {
            Ok(Resolved::File(entry)) => {
                site.cache.insert(&target.decoded, gzip, Arc::clone(&entry));
                Resolved::File(entry)
            }
            Ok(other) => other,
            Err(status) => return error_response(site, status, keep, head_only, &[]),
        },
    };
    match resolved {
        Resolved::File(entry) => serve_file(site, req, &entry, head_only),
        Resolved::Redirect => {
            let location = format!("{}/{}", target.raw_path, target.query);
            error_response(site, 301, keep, head_only, &[("Location", &location)])
        }
        Resolved::Listing(html) => {
            let mut head = Head::new(site, 200);
            head.header("Content-Type", "text/html; charset=utf-8");
            head.header_num("Content-Length", html.len() as u64);
            head.header("Cache-Control", "no-cache");
            let body = bytes_body(html.into(), 0, head_only);
            Response { status: 200, head: head.finish(keep, http10(req)), body, keep_alive: keep }
        }
    }
}

fn http10(req: &Request) -> bool {
    req.version == Version::Http10
}

fn bytes_body(data: Arc<[u8]>, offset: usize, head_only: bool) -> Body {
    let len = data.len() - offset.min(data.len());
    if head_only || len == 0 { Body::Empty } else { Body::Bytes { data, offset, len } }
}

/// Resolves `target` under the root: canonicalize, check the prefix, open.
fn resolve(site: &Site, target: &Target<'_>, gzip: bool) -> Result<Resolved, u16> {
    let mut path = site.root.clone();
    path.extend(target.segments());
    let canon = inside(site, &path)?;
    let meta = fs::metadata(&canon).map_err(status_of)?;
    if meta.is_dir() {
        if !target.trailing_slash() {
            return Ok(Resolved::Redirect);
        }
        match open_entry(site, &canon.join("index.html"), gzip) {
            Ok(entry) => return Ok(Resolved::File(entry)),
            Err(404) => {}
            Err(status) => return Err(status),
        }
        if !site.cfg.listings {
            return Err(403);
        }
        return listing::render(&canon, &target.decoded).map(Resolved::Listing).map_err(status_of);
    }
    if !meta.is_file() {
        return Err(403);
    }
    if target.trailing_slash() {
        return Err(404);
    }
    open_entry(site, &canon, gzip).map(Resolved::File)
}

/// Canonicalizes `path` and checks that it lies under the root (`404` if not).
fn inside(site: &Site, path: &Path) -> Result<PathBuf, u16> {
    let canon = fs::canonicalize(path).map_err(status_of)?;
    if canon.starts_with(&site.root) { Ok(canon) } else { Err(404) }
}

/// Opens a regular file under the root without following a final symlink or blocking on a FIFO.
fn open_regular(site: &Site, path: &Path) -> Result<(PathBuf, File, fs::Metadata), u16> {
    let canon = inside(site, path)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&canon)
        .map_err(status_of)?;
    let meta = file.metadata().map_err(|_| 500u16)?;
    if meta.is_dir() {
        return Err(404);
    }
    if !meta.is_file() {
        return Err(403);
    }
    Ok((canon, file, meta))
}

/// Builds the cache entry for the file at `path` (or its `.gz` sibling when `gzip`).
fn open_entry(site: &Site, path: &Path, gzip: bool) -> Result<Arc<Entry>, u16> {
    let mut gz_name = OsString::from(path.as_os_str());
    gz_name.push(".gz");
    let gz_path = PathBuf::from(gz_name);
    let sibling = if site.cfg.precompressed { open_regular(site, &gz_path).ok() } else { None };
    let vary = sibling.is_some();
    let (canon, file, meta, gzip) = match sibling {
        Some((canon, file, meta)) if gzip => (canon, file, meta, true),
        _ => {
            let (canon, file, meta) = open_regular(site, path)?;
            (canon, file, meta, false)
        }
    };
    let stamp = Stamp::of(&meta);
    let content = if stamp.size() <= site.cfg.cache_file_max {
        let mut data = Vec::with_capacity(usize::try_from(stamp.size()).unwrap_or(0));
        (&file).take(stamp.size()).read_to_end(&mut data).map_err(|_| 500u16)?;
        if data.len() as u64 == stamp.size() {
            Content::Bytes(data.into())
        } else {
            // Changed while read: send from the file; the next lookup sees the new stamp.
            Content::File(Arc::new(file))
        }
    } else {
        Content::File(Arc::new(file))
    };
    let content_type = content_type(path);
    let mtime = UNIX_EPOCH + Duration::from_secs(u64::try_from(stamp.mtime_secs()).unwrap_or(0));
    Ok(Arc::new(Entry {
        canon,
        stamp,
        content,
        content_type,
        etag: stamp.etag(gzip),
        last_modified: httpdate::fmt_http_date(mtime),
        gzip,
        vary,
        resolved_at: Instant::now(),
        checked_ns: AtomicU64::new(0),
    }))
}

fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_raw().unwrap_or("application/octet-stream");
    if mime.starts_with("text/") || mime == "application/javascript" || mime == "image/svg+xml" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    }
}

fn status_of(err: io::Error) -> u16 {
    match err.kind() {
        io::ErrorKind::PermissionDenied => 403,
        _ if err.raw_os_error() == Some(libc::ELOOP) => 404,
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename => {
            404
        }
        _ => 500,
    }
}

/// Conditionals, then the range, then the head for a file entry.
fn serve_file(site: &Site, req: &Request, entry: &Entry, head_only: bool) -> Response {
    let keep = req.keep_alive;
    let size = entry.stamp.size();
    let mtime = entry.stamp.mtime_secs();
    let not_modified = match (&req.if_none_match, &req.if_modified_since) {
        (Some(inm), _) => etag_listed(inm, &entry.etag),
        (None, Some(ims)) => httpdate::parse_http_date(ims).is_ok_and(|t| mtime <= unix_secs(t)),
        (None, None) => false,
    };
    if not_modified {
        let mut head = Head::new(site, 304);
        head.header("ETag", &entry.etag).header("Last-Modified", &entry.last_modified);
        if entry.vary {
            head.header("Vary", "Accept-Encoding");
        }
        return Response {
            status: 304,
            head: head.finish(keep, http10(req)),
            body: Body::Empty,
            keep_alive: keep,
        };
    }
    let range = match &req.range {
        Some(spec) if if_range_holds(req.if_range.as_deref(), entry) => parse_range(spec, size),
        _ => RangeSpec::Whole,
    };
    let (status, offset, len) = match range {
        RangeSpec::Whole => (200, 0, size),
        RangeSpec::Part(first, last) => (206, first, last - first + 1),
        RangeSpec::Unsatisfiable => {
            let cr = format!("bytes */{size}");
            return error_response(site, 416, keep, head_only, &[("Content-Range", &cr)]);
        }
    };
    let mut head = Head::new(site, status);
    head.header("Content-Type", &entry.content_type)
        .header_num("Content-Length", len)
        .header("Last-Modified", &entry.last_modified)
        .header("ETag", &entry.etag)
        .header("Accept-Ranges", "bytes");
    if status == 206 {
        head.header("Content-Range", &format!("bytes {offset}-{}/{size}", offset + len - 1));
    }
    if entry.gzip {
        head.header("Content-Encoding", "gzip");
    }
    if entry.vary {
        head.header("Vary", "Accept-Encoding");
    }
    let body = if head_only || len == 0 {
        Body::Empty
    } else {
        match &entry.content {
            Content::Bytes(data) => {
                // A Bytes entry holds exactly `size` bytes and the range lies within it.
                let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
                let len = usize::try_from(len).unwrap_or(0).min(data.len() - offset);
                Body::Bytes { data: Arc::clone(data), offset, len }
            }
            Content::File(file) => Body::File { file: Arc::clone(file), offset, len },
        }
    };
    Response { status, head: head.finish(keep, http10(req)), body, keep_alive: keep }
}

fn unix_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `If-None-Match`: `*`, or a list of entity tags compared weakly (a `W/` prefix is ignored).
fn etag_listed(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// `If-Range`: absent, or the current strong ETag, or exactly the current `Last-Modified`.
fn if_range_holds(if_range: Option<&str>, entry: &Entry) -> bool {
    match if_range {
        None => true,
        Some(v) if v.starts_with('"') => v == entry.etag,
        Some(v) if v.starts_with("W/") => false,
        Some(v) => {
            httpdate::parse_http_date(v).is_ok_and(|t| unix_secs(t) == entry.stamp.mtime_secs())
        }
    }
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Serve it all (no range, a range we ignore, or several ranges).
    Whole,
    /// The inclusive byte range `first..=last`.
    Part(u64, u64),
    /// `416`.
    Unsatisfiable,
}

/// Parses a single `bytes=` range. Other units, bad syntax and multi-range requests give
/// [`RangeSpec::Whole`] (a server may ignore `Range`).
fn parse_range(spec: &str, size: u64) -> RangeSpec {
    let Some((unit, set)) = spec.split_once('=') else { return RangeSpec::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else { return RangeSpec::Whole };
    let num = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => RangeSpec::Whole,
        // "-n": the last n bytes.
        (true, false) => match num(last) {
            None => RangeSpec::Whole,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Part(size - n.min(size), size - 1),
        },
        // "a-": from a to the end.
        (false, true) => match num(first) {
            None => RangeSpec::Whole,
            Some(a) if a >= size => RangeSpec::Unsatisfiable,
            Some(a) => RangeSpec::Part(a, size - 1),
        },
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= size {
                    RangeSpec::Unsatisfiable
                } else {
                    RangeSpec::Part(a, b.min(size - 1))
                }
            }
            _ => RangeSpec::Whole,
        },
    }
}

#[cfg(test)]
mod tests;
