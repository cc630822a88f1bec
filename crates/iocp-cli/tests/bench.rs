//! `iocp bench echo|http` against tiny in-test servers: counts check out, a dying server gives
//! errors and exit 1 within its deadline (never a hang), and `--json` is one parseable line.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::{Run, iocp};

/// The one JSON line of a `--json` run.
fn json_line(run: &Run) -> Value {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line; stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

fn int(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// A thread-per-connection echo server counting connections, connections that sent anything
/// (`talkers`) and bytes. Setting `kill` makes every connection close (reset, if unread bytes
/// remain) and stops accepting.
struct EchoServer {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    talkers: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    kill: Arc<AtomicBool>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (conns, talkers, bytes, kill) = Default::default();
        let server = EchoServer { addr, conns, talkers, bytes, kill };
        let (conns, bytes, kill) =
            (Arc::clone(&server.conns), Arc::clone(&server.bytes), Arc::clone(&server.kill));
        let talkers = Arc::clone(&server.talkers);
        listener.set_nonblocking(true).expect("nonblocking listener");
        thread::spawn(move || {
            // Polls so that it notices `kill`; the test process ends it otherwise.
            while !kill.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        conns.fetch_add(1, Ordering::SeqCst);
                        let (bytes, kill) = (Arc::clone(&bytes), Arc::clone(&kill));
                        let talkers = Arc::clone(&talkers);
                        thread::spawn(move || echo(s, &talkers, &bytes, &kill));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        server
    }
}

fn echo(mut s: TcpStream, talkers: &AtomicU64, bytes: &AtomicU64, kill: &AtomicBool) {
    s.set_nonblocking(false).expect("blocking socket");
    s.set_nodelay(true).expect("nodelay");
    // A short read timeout only so that the thread notices `kill`.
    s.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
    let mut buf = [0u8; 16 * 1024];
    let mut talked = false;
    while !kill.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if !std::mem::replace(&mut talked, true) {
                    talkers.fetch_add(1, Ordering::SeqCst);
                }
                bytes.fetch_add(n as u64, Ordering::SeqCst);
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn echo_counts_add_up() {
    echo_counts_add_up_on("epoll");
}

#[test]
fn echo_counts_add_up_on_the_iocp_engines() {
    echo_counts_add_up_on("iocp-epoll");
    if iocp::probe().uring().is_ok() {
        echo_counts_add_up_on("iocp");
    } else {
        eprintln!("SKIP --engine iocp: io_uring unavailable");
    }
}

fn echo_counts_add_up_on(engine: &str) {
    let server = EchoServer::start();
    let addr = server.addr.to_string();
    let args = [
        "bench",
        "echo",
        "--addr",
        &addr,
        "-c",
        "8",
        "-s",
        "100",
        "--pipeline",
        "3",
        "-t",
        "2",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--engine",
        engine,
        "--json",
    ];
    let run = iocp(&args, Duration::from_secs(30));
    assert!(run.status.success(), "status {}; stderr:\n{}", run.status, run.stderr);
    let v = json_line(&run);
    assert_eq!(v["bench"], "echo");
    assert_eq!(v["engine"], engine);
    assert_eq!(int(&v, "connections"), 8);
    assert_eq!(int(&v, "connected"), 8);
    assert_eq!(int(&v, "errors"), 0, "{v}");
    assert_eq!(server.conns.load(Ordering::SeqCst), 8);
    let msgs = int(&v, "msgs");
    assert!(msgs > 100, "only {msgs} messages in a second: {v}");
    assert_eq!(int(&v, "bytes"), msgs * 100);
    // The server saw every measured message, plus the warm-up and those still in flight.
    let seen = server.bytes.load(Ordering::SeqCst);
    assert!(seen >= msgs * 100, "server echoed {seen} bytes, generator counted {msgs} msgs");
    let lat = &v["latency_us"];
    let (p50, p99, max) = (lat["p50"].as_f64(), lat["p99"].as_f64(), lat["max"].as_f64());
    assert!(p50 > Some(0.0) && p50 <= p99 && p99 <= max, "latency {lat}");
    assert!(v["gen_cpu_us_per_msg"].as_f64() > Some(0.0), "{v}");
}

#[test]
fn echo_prints_a_table() {
    let server = EchoServer::start();
    let addr = server.addr.to_string();
    let args = ["bench", "echo", "--addr", &addr, "-c", "2", "-d", "300ms", "--warmup", "0s"];
    let run = iocp(&args, Duration::from_secs(30));
    assert!(run.status.success(), "status {}; stderr:\n{}", run.status, run.stderr);
    for row in ["msgs/s ", "latency µs ", "errors ", "generator CPU µs/msg "] {
        assert!(run.stdout.contains(row), "no {row:?} row in:\n{}", run.stdout);
    }
}

#[test]
fn echo_server_dying_mid_run_gives_errors_not_a_hang() {
    let server = EchoServer::start();
    let addr = server.addr.to_string();
    let kill = Arc::clone(&server.kill);
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(700));
        kill.store(true, Ordering::SeqCst);
    });
    // A 20 s run with a 1 s reply timeout: the server is gone after 0.7 s, so every
    // connection fails and the run ends early.
    let args = [
        "bench",
        "echo",
        "--addr",
        &addr,
        "-c",
        "4",
        "-d",
        "20s",
        "--warmup",
        "200ms",
        "--timeout",
        "1s",
        "--json",
    ];
    let run = iocp(&args, Duration::from_secs(30));
    killer.join().expect("killer thread");
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(run.took < Duration::from_secs(8), "took {:?}", run.took);
    let v = json_line(&run);
    assert_eq!(int(&v, "errors"), 4, "one error per connection: {v}");
    let kinds = &v["error_kinds"];
    let failures = ["closed", "reset", "timeout"].iter().map(|k| int(kinds, k)).sum::<u64>();
    assert_eq!(failures, 4, "{kinds}");
}

/// Scale mode (issue 12 item 3): every connection connects, only `--active` of them send, and
/// the report has the connect time and the server's RSS per connection.
#[test]
fn echo_scale_mode_connects_all_and_only_the_active_ones_send() {
    echo_scale_mode_on("epoll");
    echo_scale_mode_on("iocp-epoll");
    if iocp::probe().uring().is_ok() {
        echo_scale_mode_on("iocp");
    } else {
        eprintln!("SKIP --engine iocp: io_uring unavailable");
    }
}

fn echo_scale_mode_on(engine: &str) {
    let server = EchoServer::start();
    let addr = server.addr.to_string();
    // The "server" whose memory is measured is this test process (it runs the echo threads).
    let pid = std::process::id().to_string();
    let args = [
        "bench",
        "echo",
        "--addr",
        &addr,
        "-c",
        "200",
        "--active",
        "20",
        "--ramp",
        "-t",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "200ms",
        "--engine",
        engine,
        "--server-pid",
        &pid,
        "--json",
    ];
    let run = iocp(&args, Duration::from_secs(60));
    assert!(run.status.success(), "status {}; stderr:\n{}", run.status, run.stderr);
    let v = json_line(&run);
    assert_eq!(v["engine"], engine);
    assert_eq!((int(&v, "connected"), int(&v, "active"), int(&v, "errors")), (200, 20, 0), "{v}");
    assert_eq!(server.conns.load(Ordering::SeqCst), 200);
    assert_eq!(server.talkers.load(Ordering::SeqCst), 20, "only the active connections send");
    assert!(int(&v, "msgs") > 20, "{v}");
    let connect = &v["connect_us"];
    let (p99, max) = (connect["p99"].as_f64(), connect["max"].as_f64());
    assert!(p99 > Some(0.0) && p99 <= max, "{v}");
    assert!(v["connect_s"].as_f64() > Some(0.0), "{v}");
    assert!(int(&v, "server_rss_before") > 0 && int(&v, "server_rss_after") > 0, "{v}");
    assert!(v["server_rss_per_conn"].is_number(), "{v}");
}

/// `--rate` paces the connects: 100 at 500/s on one thread take at least 99/500 s.
#[test]
fn echo_connect_rate_paces_the_connects() {
    let server = EchoServer::start();
    let addr = server.addr.to_string();
    let args = [
        "bench", "echo", "--addr", &addr, "-c", "100", "--active", "0", "--rate", "500", "-d",
        "100ms", "--warmup", "0s", "--json",
    ];
    let run = iocp(&args, Duration::from_secs(60));
    // No active connection completes no message: a failed run (exit 1), but a full report.
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    let v = json_line(&run);
    assert_eq!((int(&v, "connected"), int(&v, "errors")), (100, 0), "{v}");
    let took = v["connect_s"].as_f64().unwrap_or(0.0);
    assert!(took >= 0.19, "100 connects at 500/s took {took} s: {v}");
    assert_eq!(server.talkers.load(Ordering::SeqCst), 0);
    let bad = ["bench", "echo", "--addr", &addr, "-c", "10", "--active", "11"];
    let run = iocp(&bad, Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("--active 11 is more than --connections 10"), "{}", run.stderr);
}

/// An echo server that closes an idle connection is at fault: the close counts as an error
/// (`closed`), never as an HTTP-style reconnect (which hid a server's connection limit).
#[test]
fn echo_idle_connections_closed_by_the_server_are_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    thread::spawn(move || {
        for s in listener.incoming() {
            drop(s); // accept and close at once
        }
    });
    let args = [
        "bench", "echo", "--addr", &addr, "-c", "3", "--active", "0", "-d", "300ms", "--warmup",
        "0s", "--json",
    ];
    let run = iocp(&args, Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    let v = json_line(&run);
    assert_eq!(int(&v["error_kinds"], "closed"), 3, "{v}");
    assert_eq!(int(&v, "reconnects"), 0, "{v}");
}

/// An address where nothing listens (bound, then closed again).
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Not one connection made: a clear error and exit 2, no report of zeros that reads like a
/// result (issue 13 item 4).
fn assert_no_connection_error(run: &Run, addr: &str, tried: usize) {
    assert_eq!(run.status.code(), Some(2), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "no report expected, got:\n{}", run.stdout);
    let want = format!("no connection to {addr} could be made ({tried} tried");
    assert!(run.stderr.contains(&want), "stderr lacks {want:?}:\n{}", run.stderr);
    assert!(run.stderr.contains(&format!("connect_refused {tried}")), "{}", run.stderr);
}

#[test]
fn echo_without_a_server_fails_fast_with_a_clear_error() {
    let addr = dead_addr().to_string();
    for json in [true, false] {
        let mut args = vec!["bench", "echo", "--addr", &addr, "-c", "3", "-d", "10s"];
        if json {
            args.push("--json");
        }
        let run = iocp(&args, Duration::from_secs(30));
        assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
        assert_no_connection_error(&run, &addr, 3);
    }
}

#[test]
fn http_without_a_server_fails_fast_with_a_clear_error() {
    let addr = dead_addr().to_string();
    let url = format!("http://{addr}/");
    let args = ["bench", "http", "--url", &url, "-c", "2", "-t", "2", "-d", "10s", "--json"];
    let run = iocp(&args, Duration::from_secs(30));
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
    assert_no_connection_error(&run, &addr, 2);
}

/// A thread-per-connection HTTP/1.1 responder: every request (head up to the empty line) gets
/// `response`. Counts requests.
fn http_server(response: &'static [u8]) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&requests);
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let count = Arc::clone(&count);
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        count.fetch_add(1, Ordering::SeqCst);
                        if s.write_all(response).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, requests)
}

#[test]
fn http_counts_requests_and_statuses() {
    const BODY_LEN: u64 = 1000;
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let response = RESPONSE.get_or_init(|| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY_LEN}\r\nServer: t\r\n\r\n")
            .into_bytes();
        r.extend(std::iter::repeat_n(b'x', BODY_LEN as usize));
        r
    });
    let (addr, requests) = http_server(response);
    let url = format!("http://{addr}/file");
    let args =
        ["bench", "http", "--url", &url, "-c", "4", "-d", "1s", "--warmup", "200ms", "--json"];
    let run = iocp(&args, Duration::from_secs(30));
    assert!(run.status.success(), "status {}; stderr:\n{}", run.status, run.stderr);
    let v = json_line(&run);
    assert_eq!(v["bench"], "http");
    assert_eq!(int(&v, "errors"), 0, "{v}");
    let n = int(&v, "requests");
    assert!(n > 100, "only {n} requests: {v}");
    assert_eq!(int(&v["status"], "2xx"), n);
    assert_eq!(int(&v, "bytes"), n * response.len() as u64);
    assert!(requests.load(Ordering::SeqCst) >= n);
}

#[test]
fn http_chunked_responses_are_errors() {
    let (addr, _) = http_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    let url = format!("http://{addr}/");
    let args = ["bench", "http", "--url", &url, "-c", "2", "-d", "500ms", "--json"];
    let run = iocp(&args, Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    let v = json_line(&run);
    assert_eq!(int(&v["error_kinds"], "chunked"), 2, "{v}");
}

#[test]
fn http_connection_close_reconnects() {
    let (addr, _) =
        http_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let url = format!("http://{addr}/missing");
    let args = ["bench", "http", "--url", &url, "-c", "2", "-d", "500ms", "--warmup", "0s"];
    let run = iocp(&args, Duration::from_secs(30));
    assert!(run.status.success(), "status {}; stderr:\n{}\n{}", run.status, run.stdout, run.stderr);
    assert!(run.stdout.contains("status ") && run.stdout.contains("404: "), "{}", run.stdout);
    assert!(run.stdout.contains("reconnects "), "{}", run.stdout);
}
