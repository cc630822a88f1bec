//! The server framework and the echo service over real loopback sockets, on both backends.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iocp::BackendChoice;
use iocp_server::{
    CloseReason, Echo, Io, Next, Server, ServerConfig, ServerStats, Service, TimeoutKind,
};
use iocp_testkit::{backend_test, deadline};

fn config(backend: BackendChoice) -> ServerConfig {
    ServerConfig { backend, threads: 2, grace: deadline(), ..ServerConfig::default() }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(deadline())).unwrap();
    s.set_write_timeout(Some(deadline())).unwrap();
    s
}

/// Reads until end of stream (or reset); returns the bytes read.
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} after {} bytes", out.len()),
        }
    }
}

fn wait_stats(server: &Server<impl Service>, what: &str, f: impl Fn(&ServerStats) -> bool) {
    let end = Instant::now() + deadline();
    loop {
        let s = server.stats();
        if f(&s) {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {s:?}");
        thread::yield_now();
        thread::sleep(Duration::from_millis(1));
    }
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

backend_test!(
    echo_random_sizes_many_connections,
    choice | c | {
        let server = Server::start(Echo, config(c)).unwrap();
        let addr = server.local_addr();
        let clients: Vec<_> = (0..8u64)
            .map(|t| {
                thread::spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                    let mut conns: Vec<TcpStream> = (0..16).map(|_| connect(addr)).collect();
                    let mut total = 0u64;
                    for round in 0..20 {
                        for (i, s) in conns.iter_mut().enumerate() {
                            let len = 1 + (rng.next() % 32768) as usize;
                            let msg: Vec<u8> = (0..len).map(|j| (j + i + round) as u8).collect();
                            s.write_all(&msg).unwrap();
                            let mut back = vec![0u8; len];
                            s.read_exact(&mut back).unwrap();
                            assert_eq!(back, msg, "echo differs (len {len})");
                            total += len as u64;
                        }
                    }
                    total
                })
            })
            .collect();
        let total: u64 = clients.into_iter().map(|h| h.join().unwrap()).sum();
        wait_stats(&server, "all closed", |s| s.closed == 128);
        let r = server.stop();
        assert_eq!(r.stats.accepted, 128);
        assert_eq!(r.stats.bytes_in, total);
        assert_eq!(r.stats.bytes_out, total);
        assert_eq!(r.stats.io_errors, 0);
        assert!(r.pool.drained);
    }
);

backend_test!(
    connections_over_the_limit_are_refused_and_counted,
    choice | c | {
        let server = Server::start(Echo, ServerConfig { max_connections: 2, ..config(c) }).unwrap();
        let addr = server.local_addr();
        let mut kept: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
        for s in &mut kept {
            s.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
        }
        let mut third = connect(addr);
        // Accepted by the kernel, then closed by the server: end of stream, nothing echoed.
        let _ = third.write_all(b"x");
        assert!(read_to_end(&mut third).is_empty());
        wait_stats(&server, "refused", |s| s.refused == 1);
        // The kept connections still work.
        kept[0].write_all(b"still").unwrap();
        let mut b = [0u8; 5];
        kept[0].read_exact(&mut b).unwrap();
        assert_eq!(&b, b"still");
        drop(kept);
        // A slot freed: a new connection is served.
        wait_stats(&server, "closed", |s| s.closed == 2);
        let mut again = connect(addr);
        again.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        again.read_exact(&mut b).unwrap();
        let r = server.stop();
        assert_eq!(r.stats.refused, 1);
        assert_eq!(r.stats.accepted, 3);
    }
);

backend_test!(
    idle_connections_are_closed,
    choice | c | {
        let cfg = ServerConfig { idle_timeout: Some(Duration::from_millis(200)), ..config(c) };
        let server = Server::start(Echo, cfg).unwrap();
        let mut s = connect(server.local_addr());
        s.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        let t0 = Instant::now();
        assert!(read_to_end(&mut s).is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(150), "closed too early: {:?}", t0.elapsed());
        wait_stats(&server, "idle timeout", |s| s.idle_timeouts == 1 && s.closed == 1);
        server.stop();
    }
);

backend_test!(
    an_idle_connection_parks_without_buffers_and_keeps_its_idle_deadline,
    choice | c | {
        // Its first wait parks at once; later ones keep the buffers for `park_after`, then
        // park on a zero-byte receive; data after that is still read, and the idle timeout
        // counts from the last message, not the park.
        let cfg = ServerConfig {
            idle_timeout: Some(Duration::from_millis(400)),
            park_after: Some(Duration::from_millis(50)),
            ..config(c)
        };
        let server = Server::start(Echo, cfg).unwrap();
        let mut s = connect(server.local_addr());
        for (round, msg) in [&b"first"[..], b"second message"].into_iter().enumerate() {
            wait_stats(&server, "the connection to park", |st| st.parks == round as u64);
            s.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        let t0 = Instant::now();
        wait_stats(&server, "the connection to park again", |st| st.parks == 2);
        assert!(read_to_end(&mut s).is_empty());
        let idle = t0.elapsed();
        assert!(idle >= Duration::from_millis(350), "closed {idle:?} after the last message");
        wait_stats(&server, "idle timeout", |st| st.idle_timeouts == 1 && st.closed == 1);
        assert_eq!(server.stats().parks, 2, "one park per idle period");
        server.stop();
    }
);

backend_test!(
    a_zero_idle_timeout_counts_as_an_idle_timeout,
    choice | c | {
        // Issue 11: a zero idle timeout was counted as a request timeout.
        let cfg = ServerConfig { idle_timeout: Some(Duration::ZERO), ..config(c) };
        let server = Server::start(Echo, cfg).unwrap();
        let mut s = connect(server.local_addr());
        assert!(read_to_end(&mut s).is_empty());
        wait_stats(&server, "idle timeout", |s| s.idle_timeouts == 1 && s.closed == 1);
        assert_eq!(server.stats().request_timeouts, 0);
        server.stop();
    }
);

backend_test!(
    a_busy_connection_does_not_park,
    choice | c | {
        let cfg = ServerConfig { park_after: Some(Duration::from_secs(30)), ..config(c) };
        let server = Server::start(Echo, cfg).unwrap();
        let mut s = connect(server.local_addr());
        for i in 0..200u32 {
            let msg = i.to_le_bytes();
            s.write_all(&msg).unwrap();
            let mut back = [0u8; 4];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        // Only its first wait (after the first message) parks, at once: from then on it
        // keeps its buffers between messages.
        assert_eq!(server.stats().parks, 1);
        let parked_at_once =
            Server::start(Echo, ServerConfig { park_after: Some(Duration::ZERO), ..config(c) })
                .unwrap();
        let mut s2 = connect(parked_at_once.local_addr());
        s2.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s2.read_exact(&mut b).unwrap();
        // The new connection took no buffer until its byte came (no park: it had none to
        // release); after its echo it parked at once.
        wait_stats(&parked_at_once, "parks at once", |st| st.parks >= 1);
        assert_eq!(parked_at_once.stats().parks, 1);
        drop((s, s2));
        server.stop();
        parked_at_once.stop();
    }
);

backend_test!(
    graceful_stop_echoes_every_byte_received,
    choice | c | {
        let server = Server::start(Echo, config(c)).unwrap();
        let addr = server.local_addr();
        let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
        // Every connection is served (an echo came back), then sends more without reading.
        for s in &mut conns {
            s.write_all(b"first").unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
        }
        let sent: Vec<Vec<u8>> =
            (0..20).map(|i| (0..20_000).map(|j| (i * 7 + j) as u8).collect()).collect();
        for (s, data) in conns.iter_mut().zip(&sent) {
            s.write_all(data).unwrap();
        }
        let readers: Vec<_> =
            conns.into_iter().map(|mut s| thread::spawn(move || read_to_end(&mut s))).collect();
        let r = server.stop();
        for (h, data) in readers.into_iter().zip(&sent) {
            let got = h.join().unwrap();
            assert_eq!(got.len(), data.len(), "bytes lost in the stop");
            assert_eq!(&got, data);
        }
        assert!(r.pool.drained, "{r:?}");
        assert_eq!(r.stats.closed, 20);
        assert_eq!(r.stats.active, 0);
    }
);

/// Panics on input starting with `panic`, echoes the rest.
struct Fragile;
impl Service for Fragile {
    type Conn = ();
    fn open(&self, _: Option<SocketAddr>) {}
    fn on_read(&self, _: &mut (), io: &mut Io) -> Next {
        assert!(!io.input.starts_with(b"panic"), "asked to panic");
        std::mem::swap(&mut io.input, &mut io.output);
        Next::Send
    }
}

backend_test!(
    a_panicking_service_closes_its_connection_and_the_server_goes_on,
    choice | c | {
        let server = Server::start(Fragile, config(c)).unwrap();
        let addr = server.local_addr();
        let mut good = connect(addr);
        let mut bad = connect(addr);
        bad.write_all(b"panic now").unwrap();
        assert!(read_to_end(&mut bad).is_empty());
        wait_stats(&server, "panic counted", |s| s.panics == 1 && s.closed == 1);
        for _ in 0..3 {
            good.write_all(b"alive").unwrap();
            let mut b = [0u8; 5];
            good.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"alive");
        }
        let r = server.stop();
        assert_eq!(r.stats.panics, 1);
        assert_eq!(r.pool.panics, 0, "caught by the server, not the pool");
    }
);

backend_test!(
    a_peer_that_does_not_read_is_cut_off,
    choice | c | {
        let cfg = ServerConfig { write_timeout: Some(Duration::from_millis(300)), ..config(c) };
        let server = Server::start(Echo, cfg).unwrap();
        let mut s = connect(server.local_addr());
        s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        // Write without ever reading: the server's echo fills our receive buffer, its send waits,
        // it stops reading, our send buffer fills. Then the write timeout closes the connection.
        let chunk = vec![7u8; 65536];
        let mut written = 0usize;
        let end = Instant::now() + deadline();
        let failed = loop {
            assert!(Instant::now() < end, "the server kept reading {written} bytes");
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => break e,
            }
            if server.stats().write_timeouts == 1 {
                break std::io::Error::other("timed out");
            }
        };
        wait_stats(&server, "write timeout", |s| s.write_timeouts == 1 && s.closed == 1);
        assert!(written < 64 << 20, "server buffered without bound: {written} ({failed})");
        server.stop();
    }
);

/// Answers complete lines with their length; a partial line waits for the request timeout.
struct Lines {
    timeouts: Arc<AtomicU64>,
}
impl Service for Lines {
    type Conn = ();
    fn open(&self, _: Option<SocketAddr>) {}
    fn on_read(&self, _: &mut (), io: &mut Io) -> Next {
        while let Some(i) = io.input.iter().position(|&b| b == b'\n') {
            io.output.extend_from_slice(format!("{i}\n").as_bytes());
            io.consume(i + 1);
        }
        if io.output.is_empty() { Next::Read } else { Next::Send }
    }
    fn on_timeout(&self, _: &mut (), io: &mut Io, kind: TimeoutKind) -> Next {
        if kind == TimeoutKind::Request {
            self.timeouts.fetch_add(1, Ordering::SeqCst);
            io.output.extend_from_slice(b"timeout\n");
            Next::Send
        } else {
            Next::Close
        }
    }
    fn on_close(&self, _: (), reason: CloseReason) {
        assert_ne!(reason, CloseReason::Error);
    }
}

backend_test!(
    a_slow_request_gets_the_service_answer_then_close,
    choice | c | {
        let timeouts = Arc::new(AtomicU64::new(0));
        let cfg = ServerConfig { request_timeout: Some(Duration::from_millis(300)), ..config(c) };
        let server = Server::start(Lines { timeouts: timeouts.clone() }, cfg).unwrap();
        let mut s = connect(server.local_addr());
        s.write_all(b"abc\nde").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"3\n");
        // Trickle bytes of the partial line: the deadline counts from its first byte.
        let t0 = Instant::now();
        s.write_all(b"f").unwrap();
        let rest = read_to_end(&mut s);
        assert_eq!(rest, b"timeout\n");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(timeouts.load(Ordering::SeqCst), 1);
        wait_stats(&server, "request timeout", |s| s.request_timeouts == 1 && s.closed == 1);
        server.stop();
    }
);

backend_test!(
    pipelined_lines_are_answered_in_order,
    choice | c | {
        let timeouts = Arc::new(AtomicU64::new(0));
        let server = Server::start(Lines { timeouts }, config(c)).unwrap();
        let mut s = connect(server.local_addr());
        let mut expect = String::new();
        let mut req = Vec::new();
        for i in 0..500 {
            req.extend(std::iter::repeat_n(b'x', i % 37));
            req.push(b'\n');
            expect.push_str(&format!("{}\n", i % 37));
        }
        s.write_all(&req).unwrap();
        let mut got = vec![0u8; expect.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), expect);
        server.stop();
    }
);

#[test]
fn a_forced_uring_backend_that_cannot_run_is_an_error_not_a_fallback() {
    if iocp::probe().kind() == iocp::BackendKind::Uring {
        eprintln!("SKIP: io_uring runs here");
        return;
    }
    let e = Server::start(Echo, config(BackendChoice::Uring)).unwrap_err();
    assert!(!e.to_string().is_empty());
}

/// Pauses every connection once it has 5 bytes of input and never resumes: what it received
/// stays unconsumed.
struct NeverResumes {
    paused: Arc<AtomicU64>,
    unread: Arc<AtomicU64>,
    closes: Arc<AtomicU64>,
    stopped: Arc<AtomicU64>,
}

impl Service for NeverResumes {
    type Conn = ();
    fn open(&self, _peer: Option<SocketAddr>) -> Self::Conn {}
    fn on_read(&self, _conn: &mut (), io: &mut Io) -> Next {
        if io.input.len() < 5 {
            return Next::Read;
        }
        self.paused.fetch_add(1, Ordering::SeqCst);
        Next::Pause
    }
    fn on_resume(&self, _conn: &mut (), _io: &mut Io) -> Next {
        Next::Pause
    }
    fn on_unread(&self, _conn: &mut (), input: &[u8], _reason: CloseReason) {
        self.unread.fetch_add(input.len() as u64, Ordering::SeqCst);
    }
    fn on_close(&self, _conn: (), reason: CloseReason) {
        self.closes.fetch_add(1, Ordering::SeqCst);
        if reason == CloseReason::Stopped {
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

backend_test!(
    connections_still_paused_when_the_grace_ends_are_closed_once_with_their_input,
    choice | c | {
        let svc = NeverResumes {
            paused: Arc::default(),
            unread: Arc::default(),
            closes: Arc::default(),
            stopped: Arc::default(),
        };
        let (paused, unread) = (svc.paused.clone(), svc.unread.clone());
        let (closes, stopped) = (svc.closes.clone(), svc.stopped.clone());
        let cfg = ServerConfig { grace: Duration::from_millis(200), ..config(c) };
        let server = Server::start(svc, cfg).unwrap();
        let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(server.local_addr())).collect();
        for s in &mut clients {
            s.write_all(b"hello").unwrap();
        }
        // Every connection has read its input and paused.
        let t0 = Instant::now();
        while paused.load(Ordering::SeqCst) < 3 {
            assert!(t0.elapsed() < deadline(), "input not read: {:?}", server.stats());
            thread::yield_now();
        }
        let r = server.stop();
        // Before: the paused connections were dropped at the end of the grace, without
        // on_unread or on_close.
        assert_eq!(closes.load(Ordering::SeqCst), 3, "{:?}", r.stats);
        assert_eq!(stopped.load(Ordering::SeqCst), 3);
        assert_eq!(unread.load(Ordering::SeqCst), 15);
        assert_eq!(r.stats.closed, 3);
    }
);
