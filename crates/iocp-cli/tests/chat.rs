//! `iocp serve chat` end to end in its own process: the page on the web port, two `nc`-style
//! line clients talking, and the goodbye on SIGTERM; `iocp bench chat` against it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::iocp;
use common::server::{ServerProcess, field};
use iocp_testkit::deadline;

/// The body of `GET path` from a metrics endpoint.
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(deadline())).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn line_client(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(deadline())).expect("timeout");
    (BufReader::new(s.try_clone().expect("clone")), s)
}

fn expect(r: &mut BufReader<TcpStream>, needle: &str) -> String {
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).expect("read") > 0, "EOF waiting for {needle:?}");
        if l.contains(needle) {
            return l;
        }
    }
}

#[test]
fn serve_chat_runs_both_transports_and_says_goodbye() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iocp"));
    cmd.args(["serve", "chat", "--addr", "127.0.0.1:0", "--tcp", "127.0.0.1:0"]).args([
        "--threads",
        "2",
        "--history",
        "3",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let server = ServerProcess::spawn(cmd).expect("iocp serve chat starts");
    let (mut tcp, mut metrics) = (None, None);
    while tcp.is_none() || metrics.is_none() {
        let (_, line) = server.lines.recv_timeout(deadline()).expect("the tcp and metrics lines");
        if let Some(rest) = line.split("line protocol on tcp ").nth(1) {
            let addr = rest.split_whitespace().next().expect("addr");
            tcp = Some(addr.parse::<SocketAddr>().expect("an address"));
        }
        if let Some(rest) = line.strip_prefix("iocp: metrics on http://") {
            metrics = rest.split('/').next().map(str::to_owned);
        }
    }
    let (tcp, metrics) = (tcp.expect("tcp"), metrics.expect("metrics"));
    // The page.
    let mut web = TcpStream::connect(server.addr).expect("connect");
    web.set_read_timeout(Some(deadline())).expect("timeout");
    web.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    let mut buf = vec![0; 4096];
    let n = web.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    // Two line clients.
    let (mut ra, mut a) = line_client(tcp);
    expect(&mut ra, "* welcome");
    a.write_all(b"/nick ann\nearly words\n").expect("write");
    expect(&mut ra, "<ann> early words");
    let (mut rb, mut b) = line_client(tcp);
    expect(&mut rb, "* welcome");
    // The history came with the join.
    expect(&mut rb, "<ann> early words");
    b.write_all(b"/msg ann hi ann\n").expect("write");
    expect(&mut ra, "-> ann* hi ann");
    // The metrics endpoint shows the chat's counters and the line-protocol server's.
    let text = get(&metrics, "/metrics");
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
        let line = line.unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"));
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a value")
    };
    assert_eq!(value("iocp_chat_members"), 2.0);
    assert_eq!(value("iocp_chat_messages_total"), 2.0);
    assert!(value("iocp_chat_deliveries_total") >= 2.0);
    assert_eq!(value("iocp_chat_tcp_connections_active"), 2.0);
    assert_eq!(value("iocp_chat_tcp_connections_accepted_total"), 2.0);
    let report = server.stop();
    assert!(field(&report, "connections accepted") >= 1, "{report}");
    expect(&mut ra, "* server shutting down");
    expect(&mut rb, "* server shutting down");
}

/// `iocp bench chat`: a few WebSocket clients in a few rooms for a second; every message sent
/// in the window reaches every member of its room, nothing is dropped, and the server's CPU
/// per delivery is reported. On both server backends (auto: io_uring where it works).
#[test]
fn bench_chat_delivers_everything_it_owes() {
    for backend in ["auto", "epoll"] {
        bench_chat_delivers_everything_on(backend);
    }
}

fn bench_chat_delivers_everything_on(backend: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iocp"));
    cmd.args(["serve", "chat", "--addr", "127.0.0.1:0", "--threads", "2", "--backend", backend]);
    let server = ServerProcess::spawn(cmd).expect("iocp serve chat starts");
    let url = format!("ws://{}/ws", server.addr);
    let pid = server.child.id().to_string();
    let run = iocp(
        &[
            "bench",
            "chat",
            "--url",
            &url,
            "-c",
            "12",
            "-r",
            "3",
            "--rate",
            "5",
            "-d",
            "1s",
            "--warmup",
            "300ms",
            "-t",
            "2",
            "--timeout",
            "5s",
            "--server-pid",
            &pid,
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{backend}: {:?}", (run.status, &run.stdout, &run.stderr));
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("one JSON line");
    let int = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert_eq!((int("connected"), int("ready")), (12, 12), "{v}");
    assert!(int("sent") > 0, "{v}");
    // Rooms of 4: each message is owed to its 4 members, the sender too.
    assert_eq!(int("expected"), int("sent") * 4, "{v}");
    assert_eq!(int("deliveries"), int("expected"), "{v}");
    assert_eq!((int("drops"), int("clients_dropped"), int("server_errors")), (0, 0, 0), "{v}");
    assert!(v["latency_us"]["p99"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(v["server_cpu_us_per_delivery"].as_f64().is_some(), "{v}");
    drop(server);
}

/// Nothing listening: a clear error and exit status 2, quickly.
#[test]
fn bench_chat_without_a_server_fails_fast() {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let url = format!("ws://{port}/ws");
    let run = iocp(
        &["bench", "chat", "--url", &url, "-c", "3", "-r", "1", "-d", "1s", "--timeout", "2s"],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("no client could connect"), "{}", run.stderr);
}
