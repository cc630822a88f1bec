//! The HTTP/1.1 static-file logic of `iocp serve http`: request parsing, path safety, file
//! metadata, conditional and range requests, directory listings and a small-file cache. No
//! socket I/O happens here; a connection loop (the completion-port server) owns the sockets and
//! calls into a shared [`Site`].
//!
//! # Using it from a connection loop
//!
//! One [`Site`] is built at startup and shared (it is `Send + Sync`) by every worker. For each
//! connection the loop keeps a receive buffer of at least [`Config::max_head`] bytes and does:
//!
//! 1. Receive into the buffer, then call [`Site::parse`] on the unconsumed bytes:
//!    - [`Parsed::Incomplete`]: receive more. While a request is partly received the loop runs
//!      a head timer (slowloris); when it fires, send [`Site::timeout_response`] and close.
//!    - [`Parsed::Continue`]: the client sent `Expect: 100-continue` and its (small) body is not
//!      here yet. Send [`CONTINUE`] once for this request, then receive more.
//!    - [`Parsed::Request`]: call [`Site::respond`], send the [`Response`], drop `consumed`
//!      bytes from the front of the buffer and call `parse` again on the rest (pipelining).
//!    - [`Parsed::Error`]: send that response, then close the connection.
//! 2. Send a [`Response`]: `head` followed by the [`Body`]. `Body::Bytes` goes out with the head
//!    in one send; `Body::File` goes out with `transmit_file` (the head as the transmit head).
//!    The `Arc<File>` may be shared by many responses at once (the cache keeps it open), so it
//!    must only be read at explicit offsets (`sendfile` with an offset does), never through the
//!    file position. If the file shrank meanwhile the transmit fails: close the connection.
//! 3. When [`Response::keep_alive`] is false, close after the response is sent. Close
//!    lingeringly (shut down the write side, then drain and discard what the client still sends
//!    for a short while): closing a socket with unread bytes sends a reset, which can destroy
//!    the error response before the client reads it.
//! 4. For an access log, [`Request`] has the method, target, version, `User-Agent` and `Referer`,
//!    and [`Response`] the status and [`Response::body_len`]; [`access_log_line`] formats them
//!    as a Combined Log Format line. A [`Parsed::Error`] has no request.
//!
//! A blocking sketch of that loop (no timers; `tests/support/mod.rs` has a complete one):
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use iocp_http::{Body, Config, Parsed, Response, Site};
//!
//! fn send(sock: &mut TcpStream, resp: &Response) -> std::io::Result<()> {
//!     sock.write_all(&resp.head)?;
//!     match &resp.body {
//!         Body::Empty => Ok(()),
//!         Body::Bytes { data, offset, len } => sock.write_all(&data[*offset..*offset + *len]),
//!         Body::File { .. } => todo!("transmit_file(file, offset, len) in the real server"),
//!     }
//! }
//!
//! let site = Site::new(Config::new("/srv/www"))?;
//! let (mut sock, _) = std::net::TcpListener::bind("127.0.0.1:8080")?.accept()?;
//! let (mut buf, mut chunk, mut continued) = (Vec::new(), [0u8; 4096], false);
//! loop {
//!     match site.parse(&buf) {
//!         Parsed::Request { req, consumed } => {
//!             let resp = site.respond(&req);
//!             send(&mut sock, &resp)?;
//!             buf.drain(..consumed);
//!             continued = false;
//!             if !resp.keep_alive { break; }
//!             continue;
//!         }
//!         Parsed::Error(resp) => { send(&mut sock, &resp)?; break; }
//!         Parsed::Continue if !continued => {
//!             sock.write_all(iocp_http::CONTINUE)?;
//!             continued = true;
//!         }
//!         Parsed::Continue | Parsed::Incomplete => {}
//!     }
//!     let n = sock.read(&mut chunk)?;
//!     if n == 0 { break; }
//!     buf.extend_from_slice(&chunk[..n]);
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Protocol decisions
//!
//! - HTTP/1.1 connections stay open unless the client sends `Connection: close`; HTTP/1.0 ones
//!   only when the client asks with `Connection: keep-alive`. Responses always say `HTTP/1.1`.
//! - `GET` and `HEAD` are served; every other method gets `405` with `Allow: GET, HEAD`.
//! - Request head larger than [`Config::max_head`] (or more than 100 header fields): `431`.
//!   Request target longer than [`Config::max_uri`]: `414`. Anything httparse rejects (bare
//!   `LF` line ends are accepted, obsolete line folding is not), a missing `Host` on HTTP/1.1,
//!   two `Host` fields, or a bad or conflicting `Content-Length`: `400`. These close.
//! - Request bodies: a `Content-Length` body that fits with its head in [`Config::max_head`]
//!   is waited for and discarded (the request is then answered normally and the connection can
//!   stay open); a larger one gets `413` and the connection closes. Any `Transfer-Encoding` on a
//!   request gets `501` and closes (no chunked request bodies; this also rules out
//!   `Content-Length`/`Transfer-Encoding` smuggling). A method other than GET/HEAD whose body
//!   is not fully here gets its `405` at once and closes.
//! - `Expect: 100-continue` with a body still to come yields [`Parsed::Continue`]; an unknown
//!   expectation gets `417`.
//! - Range: one `bytes=` range gives `206` with `Content-Range`, an unsatisfiable one `416`
//!   with `Content-Range: bytes */size`. A multi-range request is served whole with `200`
//!   (allowed by RFC 9110 §14.2, and much simpler than multipart/byteranges). `If-Range` with a
//!   stale validator also gives `200` whole.
//! - Conditionals: `If-None-Match` (weak comparison, `*` allowed) wins over
//!   `If-Modified-Since`; a match gives `304`.
//! - ETags are strong: `"inode-size-mtime_ns"` in hex, with `-gz` appended for the gzip
//!   sibling.
//! - `If-Match` and `If-Unmodified-Since` are ignored (they guard writes; this server has none).
//! - The request target's query string is ignored (but kept in a `301` to the slash form).
//!   Absolute-form targets (`http://host/path`) are accepted and their authority ignored.
//! - A missing file is `404`; a permission error or a path that is neither a regular file nor
//!   a directory (FIFO, socket, device) is `403`; another I/O error is `500`.
//! - Directory listings (`Cache-Control: no-cache`) list directories first, then files, by
//!   name; names that are not UTF-8 are left out (no request could name them).
//!
//! # Security
//!
//! The path is percent-decoded strictly (a bad escape or invalid UTF-8 is `400`), then refused
//! with `400` when it holds a `.` or `..` segment (encoded or not), an empty segment (`//`), an
//! encoded `/` (`%2f`), a backslash or a control character such as NUL (raw or encoded), or
//! does not start with `/`. The surviving path is
//! joined to the canonical root, canonicalized, and must still lie under the root: a symlink
//! that leads outside gives `404`, like a missing file. Only regular files are opened (with
//! `O_NONBLOCK | O_NOFOLLOW`, so a FIFO swapped in cannot hang a worker).
//!
//! # Implementation
//!
//! [`Site::respond`] looks the decoded path up in a cache first. An entry is trusted when it was
//! fully resolved (canonicalize + open) less than a second ago and a `stat` of its canonical
//! path still shows the same device, inode, size and mtime (that `stat` is skipped when one
//! succeeded within [`Config::revalidate`]); otherwise the path is resolved again. The full
//! resolution every second also notices a new `.gz` sibling, a new `index.html`, or a symlink
//! changed along the path. Files
//! up to [`Config::cache_file_max`] bytes are kept in memory as `Arc<[u8]>` (bounded in total by
//! [`Config::cache_total_max`]); larger ones keep their open `Arc<File>`, so a hot large file is
//! served with one `stat` and no `open`. The `Date` header is formatted once per second per
//! thread.

#![forbid(unsafe_code)]

mod cache;
mod date;
mod files;
mod head;
mod listing;
mod log;
mod parse;
mod path;
#[cfg(test)]
mod robustness;

#[doc(hidden)]
pub mod fuzzing;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use head::reason;
pub use log::access_log_line;

/// What the connection loop sends when [`Parsed::Continue`] asks it to (once per request).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a [`Site`] serves its directory.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Config {
    /// The document root; canonicalized by [`Site::new`].
    pub root: PathBuf,
    /// The largest request head (request line + headers + a discarded body) in bytes; a larger
    /// one gets `431` (or `413` for a body). The loop's receive buffer must hold this much.
    pub max_head: usize,
    /// The longest request target in bytes; a longer one gets `414`.
    pub max_uri: usize,
    /// Files up to this size are cached in memory.
    pub cache_file_max: u64,
    /// The total bytes of file data the cache may hold.
    pub cache_total_max: u64,
    /// The most cache entries.
    pub cache_entries_max: usize,
    /// The most cache entries for files over [`Config::cache_file_max`], each of which holds
    /// an open file descriptor (keep it well under `RLIMIT_NOFILE`).
    pub cache_open_files_max: usize,
    /// The `Server` header value.
    pub server: String,
    /// How long a cache entry is served without a `stat` to check that its file is unchanged
    /// (`Duration::ZERO`: a `stat` on every request). A `stat` costs about 2 µs here, most of a
    /// cache hit's cost; a file changed on disk is served stale for at most this long.
    pub revalidate: Duration,
    /// Serve an HTML listing for a directory without `index.html` (else `403`).
    pub listings: bool,
    /// Serve `NAME.gz` with `Content-Encoding: gzip` when it exists and the client accepts gzip.
    pub precompressed: bool,
}

impl Config {
    /// The defaults for serving `root`: 8 KiB heads, 4 KiB targets, files up to 256 KiB cached
    /// in memory within 64 MiB, 1024 cache entries of which at most 128 hold an open file,
    /// revalidated every 100 ms, `Server: iocp`, listings and `.gz` siblings on.
    pub fn new(root: impl Into<PathBuf>) -> Config {
        Config {
            root: root.into(),
            max_head: 8192,
            max_uri: 4096,
            cache_file_max: 256 * 1024,
            cache_total_max: 64 * 1024 * 1024,
            cache_entries_max: 1024,
            cache_open_files_max: 128,
            revalidate: Duration::from_millis(100),
            server: "iocp".to_owned(),
            listings: true,
            precompressed: true,
        }
    }
}

/// A served directory, shared by every worker: the configuration, the canonical root and the
/// file cache.
pub struct Site {
    cfg: Config,
    root: PathBuf,
    server_line: Vec<u8>,
    cache: cache::Cache,
}

impl fmt::Debug for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Site").field("root", &self.root).field("cfg", &self.cfg).finish()
    }
}

impl Site {
    /// Opens `cfg.root` (canonicalized) for serving.
    ///
    /// # Errors
    ///
    /// The root cannot be canonicalized or is not a directory; or `cfg.server` holds a control
    /// character.
    pub fn new(cfg: Config) -> io::Result<Site> {
        let root = std::fs::canonicalize(&cfg.root)?;
        if !std::fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "the root is not a directory",
            ));
        }
        if cfg.server.bytes().any(|b| b.is_ascii_control()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad Server header value"));
        }
        let server_line = format!("Server: {}\r\n", cfg.server).into_bytes();
        let cache = cache::Cache::new(cache::Limits {
            bytes: cfg.cache_total_max,
            entries: cfg.cache_entries_max,
            files: cfg.cache_open_files_max,
        });
        Ok(Site { cfg, root, server_line, cache })
    }

    /// The configuration this site was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The canonical document root.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Parses the request at the start of `buf`. With pipelining, call it again on the bytes
    /// after `consumed`. Looks at no more than [`Config::max_head`] bytes; never panics.
    pub fn parse(&self, buf: &[u8]) -> Parsed {
        parse::parse(self, buf)
    }

    /// Builds the response to `req`: resolves the path, reads metadata, opens the file or takes
    /// it from the cache. Never panics; I/O errors become `403`/`404`/`500` responses.
    pub fn respond(&self, req: &Request) -> Response {
        files::respond(self, req)
    }

    /// The `408` a connection loop sends to a client that took too long to send its request
    /// head, before closing.
    pub fn timeout_response(&self) -> Response {
        self.error(408, false)
    }

    /// A bodied error response with `status`; `Connection: close` unless `keep_alive`.
    fn error(&self, status: u16, keep_alive: bool) -> Response {
        head::error_response(self, status, keep_alive, false, &[])
    }
}

/// What [`Site::parse`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole request yet: receive more bytes (the head timer keeps running).
    Incomplete,
    /// The request expects `100 Continue` before sending its body: send [`CONTINUE`] once for
    /// this request, then receive more and parse again (from the same start).
    Continue,
    /// A whole request (head and any discarded body) of `consumed` bytes.
    Request {
        /// The request.
        req: Request,
        /// How many bytes of the buffer it took.
        consumed: usize,
    },
    /// A request that cannot be served: send this response, then close.
    Error(Response),
}

/// The HTTP version of a request.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

impl Version {
    /// `"HTTP/1.0"` or `"HTTP/1.1"` (for a log line).
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// A parsed request: what [`Site::respond`] needs, plus what a combined-log line needs.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method, as sent (`GET`, `HEAD`, ...).
    pub method: String,
    /// The request target, as sent (still percent-encoded, with its query).
    pub target: String,
    /// The protocol version.
    pub version: Version,
    /// The `User-Agent` header, if any (for the access log).
    pub user_agent: Option<String>,
    /// The `Referer` header, if any (for the access log).
    pub referer: Option<String>,
    /// Whether the connection may stay open after the response (version + `Connection`).
    pub keep_alive: bool,
    pub(crate) if_none_match: Option<String>,
    pub(crate) if_modified_since: Option<String>,
    pub(crate) if_range: Option<String>,
    pub(crate) range: Option<String>,
    pub(crate) accept_gzip: bool,
}

/// A response: the head bytes and the body to send after them.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line and headers, ending with the blank line.
    pub head: Vec<u8>,
    /// What follows the head (always [`Body::Empty`] for `HEAD`, `304` and `1xx`).
    pub body: Body,
    /// False when the connection must be closed after this response.
    pub keep_alive: bool,
}

impl Response {
    /// The body bytes this response sends (the `%b` of a combined-log line).
    pub fn body_len(&self) -> u64 {
        match &self.body {
            Body::Empty => 0,
            Body::Bytes { len, .. } => *len as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// The body of a [`Response`].
#[derive(Clone, Debug)]
pub enum Body {
    /// Nothing after the head.
    Empty,
    /// `len` bytes of `data` from `offset` (a cached file, a listing, an error page).
    Bytes {
        /// The bytes (shared with the cache).
        data: Arc<[u8]>,
        /// Where the body starts in `data`.
        offset: usize,
        /// The body length.
        len: usize,
    },
    /// `len` bytes of `file` from `offset`: send them with `transmit_file`.
    File {
        /// The open file (shared with the cache; only read with explicit offsets).
        file: Arc<File>,
        /// Where the body starts in the file.
        offset: u64,
        /// The body length.
        len: u64,
    },
}

/// Pins the auto traits the connection loop relies on.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Site>();
    assert_send_sync::<Response>();
    assert_send_sync::<Request>();
};
