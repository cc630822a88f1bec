use std::os::unix::fs::FileExt as _;
use std::time::SystemTime;

use super::*;
use crate::{Config, Parsed, fuzzing};

/// A fresh sample docroot, removed on drop.
struct Root(fuzzing::TempDocroot);

impl Root {
    fn new() -> Root {
        Root(fuzzing::TempDocroot::new("unit").unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn site(&self) -> Site {
        Site::new(Config::new(self.path())).unwrap()
    }
}

/// Sends `GET path` with `extra` header lines (each ending in CRLF).
fn get(site: &Site, path: &str, extra: &str) -> Response {
    request(site, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
}

fn request(site: &Site, raw: &str) -> Response {
    match site.parse(raw.as_bytes()) {
        Parsed::Request { req, consumed } => {
            assert_eq!(consumed, raw.len());
            site.respond(&req)
        }
        other => panic!("{raw:?} did not parse: {other:?}"),
    }
}

fn header(resp: &Response, name: &str) -> Option<String> {
    let head = std::str::from_utf8(&resp.head).unwrap();
    head.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then(|| v.to_owned())
    })
}

fn body(resp: &Response) -> Vec<u8> {
    match &resp.body {
        Body::Empty => Vec::new(),
        Body::Bytes { data, offset, len } => data[*offset..*offset + *len].to_vec(),
        Body::File { file, offset, len } => {
            let mut out = vec![0; usize::try_from(*len).unwrap()];
            file.read_exact_at(&mut out, *offset).unwrap();
            out
        }
    }
}

#[test]
fn a_file_comes_with_its_headers() {
    let root = Root::new();
    let site = root.site();
    let r = get(&site, "/hello.txt?ignored=1", "");
    assert_eq!(r.status, 200);
    assert!(r.keep_alive);
    assert!(r.head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(header(&r, "Server").as_deref(), Some("iocp"));
    assert!(httpdate::parse_http_date(&header(&r, "Date").unwrap()).is_ok());
    assert_eq!(header(&r, "Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(header(&r, "Content-Length").as_deref(), Some("13"));
    assert_eq!(header(&r, "Accept-Ranges").as_deref(), Some("bytes"));
    assert_eq!(header(&r, "Connection"), None);
    assert_eq!(header(&r, "Vary"), None);
    let meta = fs::metadata(root.path().join("hello.txt")).unwrap();
    let lm = httpdate::parse_http_date(&header(&r, "Last-Modified").unwrap()).unwrap();
    let mtime = meta.modified().unwrap();
    assert!(mtime.duration_since(lm).unwrap() < Duration::from_secs(1));
    let etag = header(&r, "ETag").unwrap();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
    assert_eq!(body(&r), b"hello, world\n");
    assert!(matches!(r.body, Body::Bytes { .. }), "small files come from memory");
    assert_eq!(r.body_len(), 13);
    assert_eq!(
        header(&get(&site, "/sub/deeper/x.json", ""), "Content-Type").unwrap(),
        "application/json"
    );
    assert_eq!(
        header(&get(&site, "/big.bin", ""), "Content-Type").unwrap(),
        "application/octet-stream"
    );
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    let root = Root::new();
    let site = root.site();
    let g = get(&site, "/big.bin", "");
    let h = request(&site, "HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(h.status, 200);
    assert!(matches!(h.body, Body::Empty));
    assert_eq!(header(&h, "Content-Length").as_deref(), Some("307200"));
    assert_eq!(header(&h, "ETag"), header(&g, "ETag"));
    assert!(matches!(g.body, Body::File { offset: 0, len: 307_200, .. }), "large files go by file");
    assert_eq!(body(&g), fuzzing::big_bin());
    let missing = request(&site, "HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(missing.status, 404);
    assert!(matches!(missing.body, Body::Empty));
}

#[test]
fn empty_file_is_200_with_length_zero() {
    let root = Root::new();
    let r = get(&root.site(), "/empty.txt", "");
    assert_eq!((r.status, header(&r, "Content-Length").as_deref()), (200, Some("0")));
    assert!(matches!(r.body, Body::Empty));
}

#[test]
fn missing_is_404_and_other_methods_405_with_allow() {
    let root = Root::new();
    let site = root.site();
    let r = get(&site, "/missing.txt", "");
    assert_eq!(r.status, 404);
    assert!(r.keep_alive, "a 404 keeps the connection");
    assert_eq!(body(&r), b"404 Not Found\n");
    assert_eq!(get(&site, "/hello.txt/", "").status, 404);
    assert_eq!(get(&site, "/hello.txt/x", "").status, 404);
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "get", "BREW"] {
        let r = request(&site, &format!("{method} /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(header(&r, "Allow").as_deref(), Some("GET, HEAD"));
        assert!(r.keep_alive);
    }
}

#[test]
fn http10_keep_alive_is_said_and_close_is_said() {
    let root = Root::new();
    let site = root.site();
    let r = request(&site, "GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(header(&r, "Connection").as_deref(), Some("keep-alive"));
    assert!(r.keep_alive);
    let r = request(&site, "GET /hello.txt HTTP/1.0\r\n\r\n");
    assert_eq!(header(&r, "Connection").as_deref(), Some("close"));
    assert!(!r.keep_alive);
    let r = get(&site, "/hello.txt", "Connection: close\r\n");
    assert_eq!(header(&r, "Connection").as_deref(), Some("close"));
    assert!(!r.keep_alive);
    let t = site.timeout_response();
    assert_eq!((t.status, t.keep_alive), (408, false));
    assert_eq!(header(&t, "Connection").as_deref(), Some("close"));
}

#[test]
fn conditionals_give_304_and_if_none_match_wins() {
    let root = Root::new();
    let site = root.site();
    let r = get(&site, "/hello.txt", "");
    let etag = header(&r, "ETag").unwrap();
    let lm = header(&r, "Last-Modified").unwrap();
    let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let past = "Sun, 06 Nov 1994 08:49:37 GMT";
    let cases = [
        (format!("If-None-Match: {etag}\r\n"), 304),
        (format!("If-None-Match: \"x\", W/{etag}\r\n"), 304),
        ("If-None-Match: *\r\n".to_owned(), 304),
        ("If-None-Match: \"other\"\r\n".to_owned(), 200),
        (format!("If-Modified-Since: {lm}\r\n"), 304),
        (format!("If-Modified-Since: {future}\r\n"), 304),
        (format!("If-Modified-Since: {past}\r\n"), 200),
        ("If-Modified-Since: yesterday\r\n".to_owned(), 200),
        // If-None-Match wins either way.
        (format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {lm}\r\n"), 200),
        (format!("If-None-Match: {etag}\r\nIf-Modified-Since: {past}\r\n"), 304),
    ];
    for (extra, want) in cases {
        let r = get(&site, "/hello.txt", &extra);
        assert_eq!(r.status, want, "{extra}");
        if want == 304 {
            assert!(matches!(r.body, Body::Empty));
            assert_eq!(header(&r, "ETag").as_deref(), Some(etag.as_str()));
            assert_eq!(header(&r, "Content-Length"), None);
            assert!(r.keep_alive);
        }
    }
}

#[test]
fn single_ranges_give_206_and_bad_ones_416_or_200() {
    let root = Root::new();
    let site = root.site();
    let etag = header(&get(&site, "/hello.txt", ""), "ETag").unwrap();
    let lm = header(&get(&site, "/hello.txt", ""), "Last-Modified").unwrap();
    let ok = [
        ("bytes=0-4", "hello", "bytes 0-4/13"),
        ("bytes=7-", "world\n", "bytes 7-12/13"),
        ("bytes=-6", "world\n", "bytes 7-12/13"),
        ("bytes=-100", "hello, world\n", "bytes 0-12/13"),
        ("bytes=12-99", "\n", "bytes 12-12/13"),
        ("Bytes = 1-1", "e", "bytes 1-1/13"),
    ];
    for (range, want, cr) in ok {
        let r = get(&site, "/hello.txt", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(body(&r), want.as_bytes(), "{range}");
        assert_eq!(header(&r, "Content-Range").as_deref(), Some(cr), "{range}");
        assert_eq!(header(&r, "Content-Length").unwrap(), want.len().to_string());
    }
    for range in ["bytes=13-", "bytes=13-20", "bytes=-0", "bytes=99-"] {
        let r = get(&site, "/hello.txt", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(header(&r, "Content-Range").as_deref(), Some("bytes */13"));
    }
    for range in ["bytes=0-1,3-4", "items=0-1", "bytes=5-2", "bytes=x-", "bytes=-", "bytes"] {
        let r = get(&site, "/hello.txt", &format!("Range: {range}\r\n"));
        assert_eq!((r.status, body(&r).len()), (200, 13), "{range}");
    }
    let two = get(&site, "/hello.txt", "Range: bytes=0-1\r\nRange: bytes=3-4\r\n");
    assert_eq!(two.status, 200);
    // Ranges of a large (file-backed) body.
    let r = get(&site, "/big.bin", "Range: bytes=1000-1999\r\n");
    assert!(matches!(r.body, Body::File { offset: 1000, len: 1000, .. }));
    assert_eq!(get(&site, "/empty.txt", "Range: bytes=0-\r\n").status, 416);
    // If-Range: a match keeps the range, a stale validator gives the whole file.
    let ir = |v: &str| get(&site, "/hello.txt", &format!("Range: bytes=0-4\r\nIf-Range: {v}\r\n"));
    assert_eq!(ir(&etag).status, 206);
    assert_eq!(ir(&lm).status, 206);
    assert_eq!(ir("\"stale\"").status, 200);
    assert_eq!(ir(&format!("W/{etag}")).status, 200);
    assert_eq!(ir("Sun, 06 Nov 1994 08:49:37 GMT").status, 200);
}

#[test]
fn parse_range_edges() {
    assert_eq!(parse_range("bytes=0-0", 1), RangeSpec::Part(0, 0));
    assert_eq!(parse_range("bytes=0-18446744073709551615", 10), RangeSpec::Part(0, 9));
    assert_eq!(parse_range("bytes=99999999999999999999-", 10), RangeSpec::Whole);
    assert_eq!(parse_range("bytes=-5", 0), RangeSpec::Unsatisfiable);
    assert_eq!(parse_range("bytes=0-", 0), RangeSpec::Unsatisfiable);
    assert_eq!(parse_range("bytes=+1-2", 10), RangeSpec::Whole);
}

#[test]
fn directories_redirect_index_or_list() {
    let root = Root::new();
    let site = root.site();
    let r = get(&site, "/sub?x=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(header(&r, "Location").as_deref(), Some("/sub/?x=1"));
    let r = get(&site, "/with%20index", "");
    assert_eq!(header(&r, "Location").as_deref(), Some("/with%20index/"));
    let r = get(&site, "/with%20index/", "");
    assert_eq!((r.status, body(&r)), (200, b"<p>index</p>\n".to_vec()));
    assert_eq!(header(&r, "Content-Type").as_deref(), Some("text/html; charset=utf-8"));
    let r = get(&site, "/", "");
    assert_eq!(body(&r), b"<h1>home</h1>\n");
    let r = get(&site, "/sub/", "");
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "Content-Type").as_deref(), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(body(&r)).unwrap();
    assert!(html.contains("<a href=\"a%20%3C%26%3E%20b.txt\">a &lt;&amp;&gt; b.txt</a>"), "{html}");
    assert!(html.contains("<a href=\"deeper/\">deeper/</a>"), "{html}");
    assert_eq!(header(&r, "Content-Length").unwrap(), html.len().to_string());
    let r = get(&site, "/sub/a%20%3C%26%3E%20b.txt", "");
    assert_eq!(body(&r), b"odd name\n");

    let mut cfg = Config::new(root.path());
    cfg.listings = false;
    let quiet = Site::new(cfg).unwrap();
    assert_eq!(get(&quiet, "/sub/", "").status, 403);
    assert_eq!(get(&quiet, "/", "").status, 200, "index.html still served");
}

#[test]
fn gzip_sibling_is_served_when_accepted() {
    let root = Root::new();
    let site = root.site();
    let plain = get(&site, "/style.css", "");
    let gz = get(&site, "/style.css", "Accept-Encoding: br, gzip\r\n");
    assert_eq!(body(&plain), b"body { color: red }\n");
    assert_eq!(header(&plain, "Content-Encoding"), None);
    assert_eq!(header(&plain, "Vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(body(&gz), b"\x1f\x8b\x08\x00not really gzip");
    assert_eq!(header(&gz, "Content-Encoding").as_deref(), Some("gzip"));
    assert_eq!(header(&gz, "Vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(header(&gz, "Content-Type").as_deref(), Some("text/css; charset=utf-8"));
    let (e1, e2) = (header(&plain, "ETag").unwrap(), header(&gz, "ETag").unwrap());
    assert_ne!(e1, e2);
    assert!(e2.ends_with("-gz\""));
    let refused = get(&site, "/style.css", "Accept-Encoding: gzip;q=0\r\n");
    assert_eq!(header(&refused, "Content-Encoding"), None);
    // The gzip ETag validates the gzip variant only.
    let r = get(&site, "/style.css", &format!("Accept-Encoding: gzip\r\nIf-None-Match: {e2}\r\n"));
    assert_eq!(r.status, 304);
    assert_eq!(header(&r, "Vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(get(&site, "/style.css", &format!("If-None-Match: {e2}\r\n")).status, 200);
    // No sibling: no Vary, no encoding.
    let r = get(&site, "/hello.txt", "Accept-Encoding: gzip\r\n");
    assert_eq!((header(&r, "Vary"), header(&r, "Content-Encoding")), (None, None));
    let mut cfg = Config::new(root.path());
    cfg.precompressed = false;
    let off = Site::new(cfg).unwrap();
    let r = get(&off, "/style.css", "Accept-Encoding: gzip\r\n");
    assert_eq!((header(&r, "Vary"), header(&r, "Content-Encoding")), (None, None));
}

#[test]
fn traversal_and_escaping_symlinks_are_refused() {
    let root = Root::new();
    let site = root.site();
    for bad in
        ["/../etc/passwd", "/%2e%2e/etc/passwd", "/sub/..%2f..%2fetc", "/a\\b", "//etc/passwd"]
    {
        assert_eq!(get(&site, bad, "").status, 400, "{bad}");
    }
    assert_eq!(get(&site, "/escape/passwd", "").status, 404);
    assert_eq!(get(&site, "/escape/", "").status, 404);
    assert_eq!(get(&site, "/escape", "").status, 404);
    // A symlink that stays inside is fine, and one to a directory too.
    std::os::unix::fs::symlink(root.path().join("hello.txt"), root.path().join("sub/link.txt"))
        .unwrap();
    std::os::unix::fs::symlink("..", root.path().join("sub/deeper/up")).unwrap();
    assert_eq!(body(&get(&site, "/sub/link.txt", "")), b"hello, world\n");
    assert_eq!(get(&site, "/sub/deeper/up/", "").status, 200);
    // A symlink to a file outside the root.
    let outside = root.path().with_extension("outside");
    fs::write(&outside, b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.path().join("leak.txt")).unwrap();
    let r = get(&site, "/leak.txt", "");
    fs::remove_file(&outside).unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn a_fifo_is_refused_without_hanging() {
    let root = Root::new();
    let fifo = root.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: mkfifo unavailable");
        return;
    }
    assert_eq!(get(&root.site(), "/pipe", "").status, 403);
}

#[test]
fn the_cache_notices_changed_files() {
    let root = Root::new();
    let mut cfg = Config::new(root.path());
    cfg.revalidate = Duration::ZERO;
    let site = Site::new(cfg).unwrap();
    let file = root.path().join("change.txt");
    fs::write(&file, b"first").unwrap();
    let a = get(&site, "/change.txt", "");
    assert_eq!(body(&a), b"first");
    assert_eq!(body(&get(&site, "/change.txt", "")), b"first");
    // Same size, new content and mtime.
    fs::write(&file, b"again").unwrap();
    let f = File::options().write(true).open(&file).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(10)).unwrap();
    drop(f);
    let b = get(&site, "/change.txt", "");
    assert_eq!(body(&b), b"again");
    assert_ne!(header(&a, "ETag"), header(&b, "ETag"));
    // Replaced by rename (new inode).
    let tmp = root.path().join("change.tmp");
    fs::write(&tmp, b"third version").unwrap();
    fs::rename(&tmp, &file).unwrap();
    assert_eq!(body(&get(&site, "/change.txt", "")), b"third version");
    fs::remove_file(&file).unwrap();
    assert_eq!(get(&site, "/change.txt", "").status, 404);
}

#[test]
fn the_cache_stays_within_its_bounds() {
    let root = Root::new();
    for i in 0..20 {
        fs::write(root.path().join(format!("f{i}.txt")), vec![b'x'; 1000]).unwrap();
        fs::write(root.path().join(format!("g{i}.bin")), vec![b'y'; 5000]).unwrap();
    }
    let mut cfg = Config::new(root.path());
    cfg.cache_file_max = 2000;
    cfg.cache_total_max = 5000;
    cfg.cache_entries_max = 8;
    cfg.cache_open_files_max = 3;
    let site = Site::new(cfg).unwrap();
    for round in 0..2 {
        for i in 0..20 {
            let r = get(&site, &format!("/f{i}.txt"), "");
            assert_eq!(body(&r).len(), 1000, "round {round} file {i}");
            let r = get(&site, &format!("/g{i}.bin"), "");
            assert!(matches!(r.body, Body::File { .. }));
            assert_eq!(body(&r).len(), 5000, "round {round} file {i}");
            let (entries, bytes, files) = site.cache.usage();
            assert!(entries <= 8 && bytes <= 5000 && files <= 3, "{entries} {bytes} {files}");
            assert!(entries >= 2 && bytes >= 1000 && files >= 1, "still caching");
        }
    }
    // A cached entry is served again from the cache (same Arc).
    let a = get(&site, "/g19.bin", "");
    let b = get(&site, "/g19.bin", "");
    match (&a.body, &b.body) {
        (Body::File { file: x, .. }, Body::File { file: y, .. }) => assert!(Arc::ptr_eq(x, y)),
        _ => panic!("file bodies"),
    }
}

#[test]
fn a_site_needs_a_directory_root_and_a_clean_server_name() {
    let root = Root::new();
    assert!(Site::new(Config::new(root.path().join("hello.txt"))).is_err());
    assert!(Site::new(Config::new(root.path().join("missing"))).is_err());
    let mut cfg = Config::new(root.path());
    cfg.server = "evil\r\nX: y".to_owned();
    assert!(Site::new(cfg).is_err());
    let mut cfg = Config::new(root.path());
    cfg.server = "mine/2".to_owned();
    let site = Site::new(cfg).unwrap();
    assert_eq!(header(&get(&site, "/", ""), "Server").as_deref(), Some("mine/2"));
    assert_eq!(site.root(), fs::canonicalize(root.path()).unwrap());
}

#[test]
fn revalidation_waits_for_its_interval_then_notices() {
    let root = Root::new();
    let mut cfg = Config::new(root.path());
    cfg.revalidate = Duration::from_millis(200);
    let site = Site::new(cfg).unwrap();
    let file = root.path().join("later.txt");
    fs::write(&file, b"one").unwrap();
    let before = Instant::now();
    assert_eq!(body(&get(&site, "/later.txt", "")), b"one");
    fs::write(&file, b"two!").unwrap();
    let soon = get(&site, "/later.txt", "");
    if before.elapsed() < Duration::from_millis(150) {
        assert_eq!(body(&soon), b"one", "within the interval the entry is not re-checked");
    }
    // Past the interval (polled with a deadline) the change shows.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if body(&get(&site, "/later.txt", "")) == b"two!" {
            break;
        }
        assert!(Instant::now() < deadline, "the change never showed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(before.elapsed() >= Duration::from_millis(200));
}
