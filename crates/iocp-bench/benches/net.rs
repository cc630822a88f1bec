//! Loopback TCP benchmarks on each iocp backend (epoll, and io_uring when available).
//!
//! - `net_echo/<backend>/threaded`: a client (the bench thread, a blocking std socket) writes 64
//!   bytes and reads the 64-byte echo; the server is a thread running a port loop on an
//!   associated `Handle`: `recv` completes → `send` it back → `send` completes → next `recv`.
//!   One iteration is one round trip. `net_echo/std/threaded` is the same with a blocking std
//!   server thread (`read` → `write_all`), as a reference for the loopback and wake-up cost.
//! - `net_echo/<backend>/inline`: the same round trip driven from one thread (client write, `get`
//!   the recv, start the send, `get` it, client read): the port's own overhead, without
//!   cross-thread wake-ups.
//! - `net_accept/<backend>/{no-data,data64}`: an `accept` is started, a std client connects
//!   (and for `data64` writes 64 bytes, which the accept's initial receive must collect), and the
//!   bench thread `get`s the accept completion. Both ends close with a reset (SO_LINGER 0) so no
//!   TIME_WAIT piles up; closing is inside the timed loop, the same for every case.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iocp::{CompletionKey, CompletionPort, Handle, PortBuilder};

/// Message size of the echo and of the accept's initial data.
const MSG: usize = 64;
const RECV: u8 = 1;
const SEND: u8 = 2;
const ACCEPT: u8 = 3;

/// Handles one completion of the echo loop; returns false when the peer closed.
fn echo_step(h: &Handle<u8>, mut c: iocp::Completion<u8>) -> bool {
    let n = c.result().unwrap();
    let mut buf = c.take_buf().unwrap();
    match *c.context() {
        RECV if n == 0 => false,
        RECV => {
            h.send(buf, SEND).unwrap();
            true
        }
        SEND => {
            buf.clear();
            h.recv(buf, RECV).unwrap();
            true
        }
        other => panic!("unexpected context {other}"),
    }
}

/// An iocp echo server on its own thread; it ends when the client closes.
fn iocp_server(b: PortBuilder) -> (TcpStream, JoinHandle<()>) {
    let (client, server) = iocp_testkit::tcp_pair();
    let port: CompletionPort<u8> = b.concurrency(1).build().unwrap();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let t = std::thread::spawn(move || {
        h.recv(Vec::with_capacity(MSG), RECV).unwrap();
        while echo_step(&h, port.get(None).unwrap()) {}
    });
    (client, t)
}

/// A blocking std echo server on its own thread (reference).
fn std_server() -> (TcpStream, JoinHandle<()>) {
    let (client, mut server) = iocp_testkit::tcp_pair();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; MSG];
        loop {
            let n = server.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            server.write_all(&buf[..n]).unwrap();
        }
    });
    (client, t)
}

fn round_trips(client: &mut TcpStream, iters: u64) -> Duration {
    let msg = [7u8; MSG];
    let mut back = [0u8; MSG];
    let t = Instant::now();
    for _ in 0..iters {
        client.write_all(&msg).unwrap();
        client.read_exact(&mut back).unwrap();
    }
    t.elapsed()
}

fn echo(c: &mut Criterion) {
    let mut g = c.benchmark_group("net_echo");
    g.throughput(Throughput::Elements(1));
    for (name, b) in iocp_testkit::available_backends() {
        let (mut client, server) = iocp_server(b.clone());
        g.bench_function(format!("{name}/threaded"), |bch| {
            bch.iter_custom(|iters| round_trips(&mut client, iters))
        });
        drop(client);
        server.join().unwrap();

        // Inline: one thread plays both sides.
        let (mut client, server) = iocp_testkit::tcp_pair();
        let port: CompletionPort<u8> = b.concurrency(1).build().unwrap();
        let h = port.associate(server, CompletionKey(1)).unwrap();
        let msg = [7u8; MSG];
        let mut back = [0u8; MSG];
        let mut buf = Vec::with_capacity(MSG);
        g.bench_function(format!("{name}/inline"), |bch| {
            bch.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    h.recv(std::mem::take(&mut buf), RECV).unwrap();
                    client.write_all(&msg).unwrap();
                    let mut got = 0;
                    while got < MSG {
                        // Loopback delivers 64 bytes at once; loop anyway for short receives.
                        let mut r = port.get(None).unwrap();
                        got += r.result().unwrap();
                        buf = r.take_buf().unwrap();
                        if got < MSG {
                            h.recv(std::mem::take(&mut buf), RECV).unwrap();
                        }
                    }
                    h.send(std::mem::take(&mut buf), SEND).unwrap();
                    let mut s = port.get(None).unwrap();
                    assert_eq!(s.result().unwrap(), MSG);
                    buf = s.take_buf().unwrap();
                    buf.clear();
                    client.read_exact(&mut back).unwrap();
                }
                t.elapsed()
            })
        });
    }
    let (mut client, server) = std_server();
    g.bench_function("std/threaded", |bch| {
        bch.iter_custom(|iters| round_trips(&mut client, iters))
    });
    drop(client);
    server.join().unwrap();
    g.finish();
}

fn accept(c: &mut Criterion) {
    let mut g = c.benchmark_group("net_accept");
    g.throughput(Throughput::Elements(1));
    let msg = [7u8; MSG];
    for (name, b) in iocp_testkit::available_backends() {
        let port: CompletionPort<u8> = b.concurrency(1).build().unwrap();
        let l: TcpListener = iocp_testkit::listener();
        let addr = l.local_addr().unwrap();
        let lh = port.associate(l, CompletionKey(2)).unwrap();
        for (case, cap) in [("no-data", 0), ("data64", MSG)] {
            g.bench_function(format!("{name}/{case}"), |bch| {
                bch.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        lh.accept(Vec::with_capacity(cap), ACCEPT).unwrap();
                        let mut client = TcpStream::connect(addr).unwrap();
                        if cap > 0 {
                            client.write_all(&msg).unwrap();
                        }
                        let mut done = port.get(None).unwrap();
                        assert_eq!(done.result().unwrap(), cap);
                        let mut acc = done.take_accepted().unwrap();
                        assert_eq!(acc.data().len(), cap);
                        let s = acc.take_socket().unwrap();
                        iocp_testkit::reset(client);
                        s.set_linger(Some(Duration::ZERO)).unwrap();
                        drop(s);
                    }
                    t.elapsed()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, echo, accept);
criterion_main!(benches);
