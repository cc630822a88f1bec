//! End-to-end: `iocp serve http` (the `Http` service on the completion-port server), on both
//! backends, over loopback sockets, with raw requests, ureq and (if installed) curl. The server
//! comes from `support`, so this suite does not depend on how it is implemented.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use iocp_testkit::backend_test;
use support::{Options, TestServer, spawn, spawn_with};

/// The bound on every wait in this file.
const DEADLINE: Duration = Duration::from_secs(5);

/// A sample docroot (see `iocp_http::fuzzing::sample_docroot`), removed on drop.
struct Root(iocp_http::fuzzing::TempDocroot);

impl Root {
    fn new() -> Root {
        Root(iocp_http::fuzzing::TempDocroot::new("e2e").unwrap())
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

fn setup() -> (Root, TestServer) {
    let root = Root::new();
    let server = spawn(root.path());
    (root, server)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(DEADLINE))
        .build()
        .new_agent()
}

fn hdr(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// One response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let sock = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.set_write_timeout(Some(DEADLINE)).unwrap();
    sock
}

/// Reads one response (with a `Content-Length` body unless `head`, 1xx or 304).
fn read_response(sock: &mut TcpStream, pending: &mut Vec<u8>, head: bool) -> Raw {
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(sock, pending);
    };
    let text = String::from_utf8(pending[..end - 4].to_vec()).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    pending.drain(..end);
    let mut raw = Raw { status, headers, body: Vec::new() };
    if !head && status >= 200 && status != 304 {
        let len: usize = raw.header("Content-Length").unwrap().parse().unwrap();
        while pending.len() < len {
            fill(sock, pending);
        }
        raw.body = pending.drain(..len).collect();
    }
    raw
}

fn fill(sock: &mut TcpStream, pending: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = sock.read(&mut chunk).expect("read before the deadline");
    assert!(n > 0, "connection closed early; have {:?}", String::from_utf8_lossy(pending));
    pending.extend_from_slice(&chunk[..n]);
}

/// Asserts that the server closes the connection (EOF) before the deadline.
fn assert_closed(sock: &mut TcpStream, pending: &[u8]) {
    assert!(pending.is_empty(), "unexpected bytes {:?}", String::from_utf8_lossy(pending));
    let mut rest = Vec::new();
    match sock.read_to_end(&mut rest) {
        Ok(_) => {
            assert!(rest.is_empty(), "bytes after close: {:?}", String::from_utf8_lossy(&rest))
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Sends `request` on a new connection and reads one response.
fn raw(addr: SocketAddr, request: &[u8]) -> (Raw, TcpStream, Vec<u8>) {
    let mut sock = connect(addr);
    sock.write_all(request).unwrap();
    let mut pending = Vec::new();
    let head = request.starts_with(b"HEAD ");
    let r = read_response(&mut sock, &mut pending, head);
    (r, sock, pending)
}

backend_test!(
    get_serves_a_file_with_its_headers,
    choice | backend | {
        support::set_backend(backend);
        let (root, server) = setup();
        let mut resp = agent().get(server.url("/hello.txt")).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(hdr(&resp, "content-type").as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(hdr(&resp, "content-length").as_deref(), Some("13"));
        assert_eq!(hdr(&resp, "server").as_deref(), Some("iocp"));
        assert!(hdr(&resp, "date").is_some_and(|d| httpdate_ok(&d)));
        assert!(hdr(&resp, "last-modified").is_some_and(|d| httpdate_ok(&d)));
        assert!(hdr(&resp, "etag").is_some_and(|e| e.starts_with('"')));
        assert_eq!(resp.body_mut().read_to_vec().unwrap(), b"hello, world\n");
        // A large file goes out as a file body.
        let mut big = agent().get(server.url("/big.bin")).call().unwrap();
        assert_eq!(
            big.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap(),
            iocp_http::fuzzing::big_bin()
        );
        drop(root);
    }
);

fn httpdate_ok(s: &str) -> bool {
    s.len() == 29 && s.ends_with(" GMT")
}

backend_test!(
    head_has_headers_and_no_body,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let resp = agent().head(server.url("/big.bin")).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(hdr(&resp, "content-length").as_deref(), Some("307200"));
        // Raw: the next response on the same connection starts right after the head.
        let (r, mut sock, mut pending) =
            raw(server.addr(), b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!((r.status, r.header("Content-Length")), (200, Some("13")));
        sock.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = read_response(&mut sock, &mut pending, false);
        assert_eq!(r.body, b"hello, world\n");
    }
);

backend_test!(
    keep_alive_serves_many_requests_on_one_connection,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let mut sock = connect(server.addr());
        let mut pending = Vec::new();
        for i in 0..20 {
            sock.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let r = read_response(&mut sock, &mut pending, false);
            assert_eq!((r.status, r.body.as_slice()), (200, b"hello, world\n".as_slice()), "#{i}");
            assert_eq!(r.header("Connection"), None);
        }
        sock.write_all(b"GET /style.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let r = read_response(&mut sock, &mut pending, false);
        assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
        assert_closed(&mut sock, &pending);
    }
);

backend_test!(
    pipelined_requests_are_answered_in_order,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let mut sock = connect(server.addr());
        let batch = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n\
                  HEAD /style.css HTTP/1.1\r\nHost: t\r\n\r\n\
                  GET /sub/deeper/x.json HTTP/1.1\r\nHost: t\r\n\r\n\
                  GET /missing HTTP/1.1\r\nHost: t\r\n\r\n\
                  GET /big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n\
                  GET /empty.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        // Byte by byte for the first part, then the rest at once: framing must not depend on
        // segment boundaries.
        for b in &batch[..40] {
            sock.write_all(std::slice::from_ref(b)).unwrap();
        }
        sock.write_all(&batch[40..]).unwrap();
        let mut pending = Vec::new();
        let a = read_response(&mut sock, &mut pending, false);
        let b = read_response(&mut sock, &mut pending, true);
        let c = read_response(&mut sock, &mut pending, false);
        let d = read_response(&mut sock, &mut pending, false);
        let e = read_response(&mut sock, &mut pending, false);
        let f = read_response(&mut sock, &mut pending, false);
        assert_eq!((a.status, a.body.as_slice()), (200, b"hello, world\n".as_slice()));
        assert_eq!((b.status, b.header("Content-Length")), (200, Some("20")));
        assert_eq!((c.status, c.body.as_slice()), (200, b"{}\n".as_slice()));
        assert_eq!(d.status, 404);
        assert_eq!((e.status, e.body.as_slice()), (206, &iocp_http::fuzzing::big_bin()[..10]));
        assert_eq!((f.status, f.body.len()), (200, 0));
        assert_closed(&mut sock, &pending);
    }
);

backend_test!(
    http10_closes_unless_asked_to_keep_alive,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let (r, mut sock, pending) = raw(server.addr(), b"GET /hello.txt HTTP/1.0\r\n\r\n");
        assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
        assert_closed(&mut sock, &pending);
        let (r, mut sock, mut pending) =
            raw(server.addr(), b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!((r.status, r.header("Connection")), (200, Some("keep-alive")));
        sock.write_all(b"GET /style.css HTTP/1.0\r\n\r\n").unwrap();
        let r = read_response(&mut sock, &mut pending, false);
        assert_eq!(r.body, b"body { color: red }\n");
        assert_closed(&mut sock, &pending);
    }
);

backend_test!(
    ranges_give_206_416_or_the_whole_file,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let a = agent();
        let mut r = a.get(server.url("/hello.txt")).header("Range", "bytes=7-11").call().unwrap();
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(hdr(&r, "content-range").as_deref(), Some("bytes 7-11/13"));
        assert_eq!(r.body_mut().read_to_vec().unwrap(), b"world");
        let mut r = a.get(server.url("/big.bin")).header("Range", "bytes=-3").call().unwrap();
        assert_eq!(hdr(&r, "content-range").as_deref(), Some("bytes 307197-307199/307200"));
        assert_eq!(r.body_mut().read_to_vec().unwrap(), &iocp_http::fuzzing::big_bin()[307_197..]);
        // A range in the middle of a large (file-backed) body: the offset must be honoured.
        let mut r =
            a.get(server.url("/big.bin")).header("Range", "bytes=100000-165535").call().unwrap();
        assert_eq!(r.status().as_u16(), 206);
        let got = r.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap();
        assert_eq!(got, &iocp_http::fuzzing::big_bin()[100_000..165_536]);
        let r = a.get(server.url("/hello.txt")).header("Range", "bytes=50-").call().unwrap();
        assert_eq!(r.status().as_u16(), 416);
        assert_eq!(hdr(&r, "content-range").as_deref(), Some("bytes */13"));
        let mut r =
            a.get(server.url("/hello.txt")).header("Range", "bytes=0-1,5-6").call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.body_mut().read_to_vec().unwrap().len(), 13);
    }
);

backend_test!(
    conditional_requests_give_304,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let a = agent();
        let first = a.get(server.url("/hello.txt")).call().unwrap();
        let etag = hdr(&first, "etag").unwrap();
        let lm = hdr(&first, "last-modified").unwrap();
        let r = a.get(server.url("/hello.txt")).header("If-None-Match", &etag).call().unwrap();
        assert_eq!(r.status().as_u16(), 304);
        assert_eq!(hdr(&r, "etag").as_deref(), Some(etag.as_str()));
        let r = a.get(server.url("/hello.txt")).header("If-Modified-Since", &lm).call().unwrap();
        assert_eq!(r.status().as_u16(), 304);
        let r = a
            .get(server.url("/hello.txt"))
            .header("If-None-Match", "\"nope\"")
            .header("If-Modified-Since", &lm)
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "If-None-Match wins");
        // Raw, on one connection: a 304 has no body, so the next response follows directly.
        let req = format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n");
        let (r, mut sock, mut pending) = raw(server.addr(), req.as_bytes());
        assert_eq!(r.status, 304);
        sock.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut sock, &mut pending, false).body, b"hello, world\n");
    }
);

backend_test!(
    directories_redirect_serve_index_or_list,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let a = agent();
        let r = a.get(server.url("/sub")).call().unwrap();
        assert_eq!(r.status().as_u16(), 301);
        assert_eq!(hdr(&r, "location").as_deref(), Some("/sub/"));
        let mut r = a.get(server.url("/sub/")).call().unwrap();
        assert_eq!(hdr(&r, "content-type").as_deref(), Some("text/html; charset=utf-8"));
        let html = r.body_mut().read_to_string().unwrap();
        assert!(
            html.contains("<a href=\"a%20%3C%26%3E%20b.txt\">a &lt;&amp;&gt; b.txt</a>"),
            "{html}"
        );
        assert!(html.contains("<a href=\"deeper/\">deeper/</a>"), "{html}");
        let mut r = a.get(server.url("/sub/a%20%3C%26%3E%20b.txt")).call().unwrap();
        assert_eq!(r.body_mut().read_to_vec().unwrap(), b"odd name\n", "the listed link works");
        let mut r = a.get(server.url("/with%20index/")).call().unwrap();
        assert_eq!(r.body_mut().read_to_vec().unwrap(), b"<p>index</p>\n");
        let mut r = a.get(server.url("/")).call().unwrap();
        assert_eq!(r.body_mut().read_to_vec().unwrap(), b"<h1>home</h1>\n");
    }
);

backend_test!(
    precompressed_sibling_is_served_to_gzip_clients,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let a = agent();
        let mut r =
            a.get(server.url("/style.css")).header("Accept-Encoding", "gzip").call().unwrap();
        assert_eq!(hdr(&r, "content-encoding").as_deref(), Some("gzip"));
        assert_eq!(hdr(&r, "vary").as_deref(), Some("Accept-Encoding"));
        assert_eq!(r.body_mut().read_to_vec().unwrap(), b"\x1f\x8b\x08\x00not really gzip");
        let mut r = a.get(server.url("/style.css")).call().unwrap();
        assert_eq!(hdr(&r, "content-encoding"), None);
        assert_eq!(r.body_mut().read_to_vec().unwrap(), b"body { color: red }\n");
    }
);

backend_test!(
    traversal_attempts_never_leave_the_root,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let targets = [
            "/../../../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
            "/sub/..%2f..%2f..%2fetc/passwd",
            "/..%5c..%5cetc/passwd",
            "/..\\..\\etc\\passwd",
            "//etc/passwd",
            "/escape/passwd",
            "/escape/",
            "/hello.txt%00.html",
            "/%c0%ae%c0%ae/etc/passwd",
            "http://t/../etc/passwd",
        ];
        for target in targets {
            let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
            let (r, ..) = raw(server.addr(), req.as_bytes());
            assert!(matches!(r.status, 400 | 404), "{target}: {}", r.status);
            assert!(!String::from_utf8_lossy(&r.body).contains("root:"), "{target}");
        }
    }
);

backend_test!(
    limits_and_refusals_answer_then_close,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(5000));
        let big_head = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n", "p".repeat(9000));
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
            (b"GARBAGE\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
            (long_uri.into_bytes(), 414),
            (big_head.into_bytes(), 431),
            (
                b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    .to_vec(),
                501,
            ),
            (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec(), 413),
            (b"GET / HTTP/1.1\r\nHost: t\r\nExpect: something\r\n\r\n".to_vec(), 417),
            (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\nabc".to_vec(), 405),
        ];
        for (req, want) in cases {
            let (r, mut sock, pending) = raw(server.addr(), &req);
            assert_eq!(r.status, want, "{:?}", String::from_utf8_lossy(&req[..req.len().min(60)]));
            assert_eq!(r.header("Connection"), Some("close"));
            assert_closed(&mut sock, &pending);
        }
        // A method we do not serve, with its whole (small) body: 405 with Allow, and the
        // connection goes on.
        let (r, mut sock, mut pending) = raw(
            server.addr(),
            b"DELETE /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nxy",
        );
        assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
        sock.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut sock, &mut pending, false).status, 200);
    }
);

backend_test!(
    expect_100_continue_is_answered,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let mut sock = connect(server.addr());
        sock.write_all(
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
        let mut pending = Vec::new();
        let r = read_response(&mut sock, &mut pending, false);
        assert_eq!(r.status, 100);
        sock.write_all(b"hel").unwrap();
        sock.write_all(b"lo").unwrap();
        let r = read_response(&mut sock, &mut pending, false);
        assert_eq!((r.status, r.body.as_slice()), (200, b"hello, world\n".as_slice()));
        assert!(pending.is_empty(), "exactly one 100 Continue");
    }
);

backend_test!(
    slowloris_gets_408_and_is_closed,
    choice | backend | {
        support::set_backend(backend);
        let root = Root::new();
        let opts = Options { head_timeout: Duration::from_millis(600), ..Options::default() };
        let server = spawn_with(root.path(), opts);
        let mut sock = connect(server.addr());
        let start = Instant::now();
        sock.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n").unwrap();
        // Trickle a header byte every 100 ms: progress must not extend the head timer.
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while start.elapsed() < DEADLINE {
            match sock.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let _ = sock.write_all(b"X");
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{e}"),
            }
        }
        let elapsed = start.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(elapsed >= Duration::from_millis(550), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "closed after the 408 ({elapsed:?})");
    }
);

backend_test!(
    an_idle_keep_alive_connection_is_closed_quietly,
    choice | backend | {
        support::set_backend(backend);
        let root = Root::new();
        let opts = Options { idle_timeout: Duration::from_millis(300), ..Options::default() };
        let server = spawn_with(root.path(), opts);
        let mut sock = connect(server.addr());
        sock.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut pending = Vec::new();
        assert_eq!(read_response(&mut sock, &mut pending, false).status, 200);
        let start = Instant::now();
        assert_closed(&mut sock, &pending);
        assert!(start.elapsed() < Duration::from_secs(3));
    }
);

backend_test!(
    curl_interoperates,
    choice | backend | {
        support::set_backend(backend);
        let Ok(version) = std::process::Command::new("curl").arg("--version").output() else {
            eprintln!("SKIP: curl is not installed");
            return;
        };
        assert!(version.status.success());
        let (_root, server) = setup();
        // Two URLs in one invocation: curl reuses the kept-alive connection.
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http1.1", "--max-time", "5", "-v"])
            .arg(server.url("/hello.txt"))
            .arg(server.url("/sub/deeper/x.json"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, b"hello, world\n{}\n");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("< HTTP/1.1 200 OK"), "{log}");
        assert!(log.to_ascii_lowercase().contains("re-us"), "connection reused: {log}");
        // A range, and a HEAD.
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "-r", "0-4"])
            .arg(server.url("/hello.txt"))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"hello");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "-I"])
            .arg(server.url("/big.bin"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(head.contains("content-length: 307200"), "{head}");
    }
);

backend_test!(
    many_connections_at_once,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let addr = server.addr();
                std::thread::spawn(move || {
                    let mut sock = connect(addr);
                    let mut pending = Vec::new();
                    for _ in 0..25 {
                        sock.write_all(b"GET /style.css HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                        let r = read_response(&mut sock, &mut pending, false);
                        assert_eq!(r.body, b"body { color: red }\n");
                    }
                    sock.shutdown(Shutdown::Write).unwrap();
                    assert_closed(&mut sock, &pending);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
);

backend_test!(
    listings_can_be_turned_off_giving_403,
    choice | backend | {
        support::set_backend(backend);
        let root = Root::new();
        let opts = Options { configure: |cfg| cfg.listings = false, ..Options::default() };
        let server = spawn_with(root.path(), opts);
        let (r, ..) = raw(server.addr(), b"GET /sub/ HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 403);
        let (r, ..) = raw(server.addr(), b"GET /with%20index/ HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, b"<p>index</p>\n".as_slice()));
    }
);

backend_test!(
    a_burst_of_pipelined_requests_in_one_write,
    choice | backend | {
        support::set_backend(backend);
        let (_root, server) = setup();
        let mut sock = connect(server.addr());
        let mut batch = Vec::new();
        for i in 0..200 {
            let (method, path) = match i % 4 {
                0 => ("GET", "/hello.txt"),
                1 => ("HEAD", "/big.bin"),
                2 => ("GET", "/sub/deeper/x.json"),
                _ => ("GET", "/nope"),
            };
            batch.extend_from_slice(
                format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
        }
        batch.extend_from_slice(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        sock.write_all(&batch).unwrap();
        let mut pending = Vec::new();
        for i in 0..200 {
            let r = read_response(&mut sock, &mut pending, i % 4 == 1);
            let want = match i % 4 {
                0 => (200, b"hello, world\n".as_slice()),
                1 => (200, b"".as_slice()),
                2 => (200, b"{}\n".as_slice()),
                _ => (404, b"404 Not Found\n".as_slice()),
            };
            assert_eq!((r.status, r.body.as_slice()), want, "response {i}");
        }
        let last = read_response(&mut sock, &mut pending, false);
        assert_eq!(last.body, iocp_http::fuzzing::big_bin());
        assert_closed(&mut sock, &pending);
    }
);
