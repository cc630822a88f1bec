//! Scale: thousands of connections to `iocp serve echo` running in its own process (so its RSS
//! is the server's alone), on each backend; and `--reuseport`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::server::{ServerProcess, field};
use iocp::BackendKind;
use iocp_testkit::{choice_for, deadline, raise_fd_limit};

/// Opens `n` connections, each sends one 64-byte message and reads it back, all kept open.
fn connect_and_echo(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect_timeout(&addr, deadline())
            .unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"));
        s.set_read_timeout(Some(deadline())).expect("SO_RCVTIMEO");
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&message(i)).expect("send");
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut got = [0u8; 64];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("echo on connection {i}: {e}"));
        assert_eq!(got, message(i), "connection {i} got someone else's bytes");
    }
    conns
}

fn message(i: usize) -> [u8; 64] {
    let mut m = [b'.'; 64];
    m[..8].copy_from_slice(format!("{i:08}").as_bytes());
    m
}

const CONNS: usize = 5_000;

/// 5,000 concurrent connections to the echo server (each echoes once, then all idle, then all
/// close): every byte comes back, and an idle connection costs the server process < 1 KiB of
/// RSS (the issue-12 server held a 16 KiB receive buffer per idle connection: 8.8 KB RSS).
fn five_thousand_idle_connections(kind: BackendKind, backend: &str) {
    if choice_for(kind).is_none() {
        return;
    }
    // Client and server each hold CONNS descriptors; the child inherits the raised limit.
    if !raise_fd_limit(CONNS as u64 + 512) {
        return;
    }
    let started = Instant::now();
    let server =
        ServerProcess::start(&["--backend", backend, "--addr", "127.0.0.1:0", "--park-after", "0"])
            .unwrap_or_else(|out| panic!("the server did not start:\n{out}"));
    // Warm up (threads, rings, allocator arenas), so the baseline is a running server's.
    drop(connect_and_echo(server.addr, 200));
    let warm = Instant::now() + deadline();
    let mut base = server.rss();
    // Let the warm-up's closes land before taking the baseline (RSS settles within a moment).
    while Instant::now() < warm {
        thread::sleep(Duration::from_millis(100));
        let now = server.rss();
        if now == base {
            break;
        }
        base = now;
    }
    let conns = connect_and_echo(server.addr, CONNS);
    // `--park-after 0`: a connection parks without buffers as soon as it waits (the default
    // keeps them for 1 s, and what the allocator keeps of freed buffers is in DESIGN 5.2). The
    // echoes' buffers are freed as the last replies go out: watch RSS settle (bounded wait).
    let busy = server.rss();
    let parked_by = Instant::now() + deadline();
    let mut idle = busy;
    while idle.saturating_sub(base) / CONNS as u64 >= 1024 && Instant::now() < parked_by {
        thread::sleep(Duration::from_millis(50));
        idle = server.rss();
    }
    eprintln!("{backend}: RSS right after the echoes {} KiB", busy / 1024);
    let per_conn = idle.saturating_sub(base) / CONNS as u64;
    eprintln!(
        "{backend}: {CONNS} idle connections: RSS {} KiB -> {} KiB, {per_conn} B per connection",
        base / 1024,
        idle / 1024
    );
    assert!(per_conn < 1024, "{backend}: {per_conn} B of server RSS per idle connection");
    drop(conns);
    let report = server.stop();
    let total = CONNS as u64 + 200;
    assert_eq!(field(&report, "connections accepted"), total, "{report}");
    assert_eq!(field(&report, "bytes in"), total * 64, "{report}");
    assert_eq!(field(&report, "bytes out"), total * 64, "{report}");
    assert_eq!(field(&report, "errors"), 0, "{report}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn five_thousand_idle_connections_epoll() {
    five_thousand_idle_connections(BackendKind::Epoll, "epoll");
}

#[test]
fn five_thousand_idle_connections_uring() {
    five_thousand_idle_connections(BackendKind::Uring, "uring");
}

/// `--reuseport`: two server processes listen on one address and the kernel spreads the
/// connections across both; without it the second cannot bind.
#[test]
fn reuseport_lets_two_processes_share_a_port() {
    let first = ServerProcess::start(&["--reuseport", "--addr", "127.0.0.1:0"])
        .unwrap_or_else(|out| panic!("the first server did not start:\n{out}"));
    let addr = first.addr.to_string();
    let refused = ServerProcess::start(&["--addr", &addr]);
    assert!(
        refused.as_ref().is_err_and(|out| out.contains("in use")),
        "a second server without --reuseport must fail to bind: {:?}",
        refused.map(|s| s.addr)
    );
    let second = ServerProcess::start(&["--reuseport", "--addr", &addr])
        .unwrap_or_else(|out| panic!("the second server did not start:\n{out}"));
    // SO_REUSEPORT hashes each connection's 4-tuple: 200 source ports all landing on one of two
    // listeners has probability 2^-199.
    drop(connect_and_echo(first.addr, 200));
    let (a, b) = (first.stop(), second.stop());
    let (na, nb) = (field(&a, "connections accepted"), field(&b, "connections accepted"));
    assert_eq!(na + nb, 200, "{a}\n{b}");
    assert!(na > 0 && nb > 0, "both processes must serve: {na} and {nb}");
}
