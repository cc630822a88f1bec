//! Regressions from issue 11 ("six confirmed correctness bugs"): each test failed before its
//! fix. Every wait has a deadline.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use iocp::{CompletionKey, CompletionPort, GetError, Handle, OpId, Payload, PortBuilder};
use iocp_testkit::{backend_test, deadline, eventually, listener, quiet, tcp_pair};

/// xorshift64*: a seeded generator without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

// Bug 1: a plain accept that completes on the listener freed the box holding accept_multi's
// clone function (io_uring: the poller panicked in reap and the port went dead; epoll: every
// later connection was accepted and closed with no packet).
backend_test!(accept_multi_keeps_its_clone_after_a_plain_accept_completes, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, CompletionKey(3)).unwrap();
    let plain = lh.accept(Vec::new(), 1).unwrap();
    let multi = lh.accept_multi(2).unwrap();
    let mut clients = Vec::new();
    // Connect until the plain accept has taken one (the kernel picks which op gets which).
    let mut multi_seen = 0;
    loop {
        clients.push(TcpStream::connect(addr).unwrap());
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!(c.result().unwrap(), 0);
        if c.op() == plain {
            assert_eq!(*c.context(), 1);
            break;
        }
        assert_eq!((c.op(), *c.context()), (multi, 2));
        multi_seen += 1;
        assert!(multi_seen < 20, "the plain accept never took a connection");
    }
    // Every later connection is the repeating accept's, with a clone of its context.
    for _ in 0..3 {
        clients.push(TcpStream::connect(addr).unwrap());
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!((c.op(), *c.context(), c.result().unwrap()), (multi, 2, 0));
    }
    lh.cancel(multi).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.is_aborted()), (multi, true));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

/// A context whose `Clone` panics (value 666), to inject a panic into the poll path.
#[derive(Debug)]
struct Boom(u32);
impl Clone for Boom {
    fn clone(&self) -> Self {
        assert!(self.0 != 666, "Boom::clone panics (injected by the test)");
        Boom(self.0)
    }
}

/// A port (2 threads) whose listener has a repeating accept with a `Boom(666)` context (the
/// next connection to `addr` panics in the poll path) and a connected pair whose server side
/// has a receive pending (context 7, key 2).
struct Doomed {
    port: CompletionPort<Boom>,
    lh: Handle<Boom>,
    multi: OpId,
    addr: SocketAddr,
    client: TcpStream,
    h: Handle<Boom>,
}

#[allow(clippy::unwrap_used)] // a test helper outside #[test] fns
fn doomed(b: PortBuilder) -> Doomed {
    let port: CompletionPort<Boom> = b.concurrency(2).build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, CompletionKey(1)).unwrap();
    let multi = lh.accept_multi(Boom(666)).unwrap();
    let (client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(2)).unwrap();
    h.recv(Vec::with_capacity(16), Boom(7)).unwrap();
    Doomed { port, lh, multi, addr, client, h }
}

// Bug 1, second part: a panic inside the poll path (here a user `Clone` run by the driver while
// it accepts) left `polling` set with nobody polling: the port was dead for I/O.
backend_test!(a_panic_in_the_poll_path_hands_the_polling_on, |b| {
    let Doomed { port, lh, multi, addr, mut client, h: _h } = doomed(b);
    let p2 = port.clone();
    let poller =
        thread::spawn(move || catch_unwind(AssertUnwindSafe(|| p2.get(Some(deadline())))).is_err());
    eventually("the poller waits", || (port.stats().waiters == 1).then_some(()));
    let _doomed = TcpStream::connect(addr).unwrap();
    assert!(poller.join().unwrap(), "the Clone's panic reaches the thread that ran it");
    // The port keeps serving: another thread polls and gets the receive.
    client.write_all(b"alive").unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.context().0, c.result().unwrap()), (CompletionKey(2), 7, 5));
    // The repeating accept is still pending, exactly once: cancel ends it with its context.
    lh.cancel(multi).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.is_aborted(), c.context().0), (multi, true, 666));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

// Bug 3 (and the "tiny deadlines under two pollers" suite case): a deadline that expired
// before the op reached the driver was lost, and the op never completed.
backend_test!(tiny_deadlines_always_fire_under_two_pollers, |b| {
    let port: CompletionPort<u32> = b.concurrency(2).build().unwrap();
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let (tx, rx) = mpsc::channel();
    let pollers: Vec<_> = (0..2)
        .map(|_| {
            let (port, tx) = (port.clone(), tx.clone());
            thread::spawn(move || {
                loop {
                    match port.get(Some(deadline())) {
                        Ok(c) => tx.send((c.op(), c.raw_os_error(), Instant::now())).unwrap(),
                        Err(GetError::Closed) => return,
                        Err(e) => panic!("no packet: {e:?}"),
                    }
                }
            })
        })
        .collect();
    let mut rng = Rng(0x5eed_0011);
    let slack = Duration::from_secs(2);
    for i in 0..4000 {
        let d = Duration::from_nanos(rng.next() % 50_001);
        let t0 = Instant::now();
        let id = h.with_timeout(d).recv(Vec::with_capacity(8), i).unwrap();
        let (op, err, at) = rx
            .recv_timeout(d + slack)
            .unwrap_or_else(|_| panic!("op {i} (deadline {d:?}) never completed"));
        assert_eq!((op, err), (id, Some(libc::ETIMEDOUT)), "op {i}");
        assert!(at - t0 < d + slack, "op {i}: {:?} for a {d:?} deadline", at - t0);
    }
    port.close();
    for p in pollers {
        p.join().unwrap();
    }
});

// Bug 5: with as many self-re-posting work items as threads, no thread polled the kernel: I/O
// completions and deadlines starved.
backend_test!(reposted_work_does_not_starve_io_or_deadlines, |b| {
    let port: CompletionPort<u32> = b.concurrency(2).build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let (_client2, server2) = tcp_pair();
    let h2 = port.associate(server2, CompletionKey(2)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (port, tx, stop) = (port.clone(), tx.clone(), stop.clone());
            thread::spawn(move || {
                loop {
                    match port.get(Some(deadline())) {
                        Ok(c) if c.key() == CompletionKey(0) => {
                            if !stop.load(Ordering::Relaxed) {
                                let _ = port.post(0, CompletionKey(0), 0);
                            }
                        }
                        Ok(c) => tx.send((c.key(), c.raw_os_error(), Instant::now())).unwrap(),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for _ in 0..4 {
        port.post(0, CompletionKey(0), 0).unwrap();
    }
    eventually("the posts circulate", || (port.stats().dequeued > 1000).then_some(()));
    let bound = Duration::from_secs(2);
    h.recv(Vec::with_capacity(8), 1).unwrap();
    let t0 = Instant::now();
    client.write_all(b"x").unwrap();
    let (key, err, at) = rx.recv_timeout(bound).expect("an I/O completion starved");
    assert_eq!((key, err), (CompletionKey(1), None));
    eprintln!("I/O completion after {:?} of re-posted work", at - t0);
    let t0 = Instant::now();
    h2.with_timeout(Duration::from_millis(10)).recv(Vec::with_capacity(8), 2).unwrap();
    let (key, err, at) = rx.recv_timeout(bound).expect("a 10 ms deadline starved");
    assert_eq!((key, err), (CompletionKey(2), Some(libc::ETIMEDOUT)));
    assert!(at - t0 >= Duration::from_millis(10));
    eprintln!("10 ms deadline fired after {:?} of re-posted work", at - t0);
    stop.store(true, Ordering::Relaxed);
    port.close();
    for w in workers {
        w.join().unwrap();
    }
});

// Bug 6: `Instant + Duration::MAX` panicked in `get` and in `with_timeout`.
backend_test!(huge_timeouts_mean_no_timeout, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    port.post(1, CompletionKey(1), 1).unwrap();
    assert_eq!(*port.get(Some(Duration::MAX)).unwrap().context(), 1);
    let p2 = port.clone();
    let waiter = thread::spawn(move || p2.get(Some(Duration::MAX)).map(|c| *c.context()));
    eventually("the waiter blocks", || (port.stats().waiters == 1).then_some(()));
    port.post(0, CompletionKey(1), 2).unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(2));
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(2)).unwrap();
    let op = h.with_timeout(Duration::MAX).recv(Vec::with_capacity(8), 3).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    h.cancel(op).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.raw_os_error()), (op, Some(libc::ECANCELED)));
});

// A start racing the port's close: it is refused, or it completes (or is dropped with the
// closed port); never queued where nobody drains it (its context and the handle leaked).
backend_test!(a_start_racing_port_close_never_leaks_its_op, |b| {
    for round in 0..300 {
        let port: CompletionPort<Arc<()>> = b.clone().build().unwrap();
        let token = Arc::new(());
        let (_client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(1)).unwrap();
        let (h2, t2) = (h.clone(), token.clone());
        let starter = thread::spawn(move || {
            for _ in 0..64 {
                if h2.recv(Vec::with_capacity(8), t2.clone()).is_err() {
                    break;
                }
            }
        });
        thread::yield_now();
        port.close();
        starter.join().unwrap();
        drop(h);
        drop(port);
        assert_eq!(Arc::strong_count(&token), 1, "round {round}: an op outlived its port");
    }
});

// epoll reported ENOBUFS for a pooled receive on a connection whose peer had gone while every
// buffer was lent out; the end of the stream needs no buffer.
backend_test!(pooled_receive_reports_eof_even_with_the_pool_exhausted, |b| {
    let port: CompletionPort<usize> = b.build().unwrap();
    let pool = port.buffer_pool(1, 64).unwrap();
    let (mut c1, s1) = tcp_pair();
    let (c2, s2) = tcp_pair();
    let h1 = port.associate(s1, CompletionKey(1)).unwrap();
    let h2 = port.associate(s2, CompletionKey(2)).unwrap();
    h1.recv_pooled(&pool, 1).unwrap();
    c1.write_all(b"x").unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((*c.context(), c.result().unwrap()), (1, 1));
    let held = std::mem::replace(c.payload_mut(), Payload::Posted);
    assert_eq!(pool.lent(), 1, "the only buffer is lent out");
    drop(c2);
    h2.recv_pooled(&pool, 2).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(*c.context(), 2);
    assert_eq!(c.result().unwrap(), 0, "end of stream, not ENOBUFS: {c:?}");
    drop(held);
});

/// Packets to ops: every op of `pending` completes exactly once (a repeating accept: any
/// number of connection packets, then exactly one last packet that ends it).
struct Ledger {
    pending: std::collections::HashSet<iocp::OpId>,
    multi: std::collections::HashSet<iocp::OpId>,
    starts: u64,
    ends: u64,
}

impl Ledger {
    fn new() -> Self {
        Ledger { pending: Default::default(), multi: Default::default(), starts: 0, ends: 0 }
    }
    fn started(&mut self, op: iocp::OpId, multi: bool) {
        self.starts += 1;
        assert!(self.pending.insert(op), "op id {op:?} reused");
        if multi {
            self.multi.insert(op);
        }
    }
    fn packet(&mut self, c: &iocp::Completion<u64>, step: usize) {
        if self.multi.contains(&c.op()) && c.result().is_ok() {
            return; // one connection of a repeating accept
        }
        assert!(self.pending.remove(&c.op()), "step {step}: a second packet for {c:?}");
        self.multi.remove(&c.op());
        self.ends += 1;
    }
    fn drain(&mut self, port: &CompletionPort<u64>, step: usize) {
        while let Ok(c) = port.get(Some(Duration::ZERO)) {
            self.packet(&c, step);
        }
    }
    fn finish(&mut self, port: &CompletionPort<u64>) {
        let end = Instant::now() + deadline();
        while !self.pending.is_empty() {
            assert!(Instant::now() < end, "ops never completed: {:?}", self.pending);
            if let Ok(c) = port.get(Some(Duration::from_millis(50))) {
                self.packet(&c, usize::MAX);
            }
        }
        assert_eq!(self.starts, self.ends, "packets = successful starts");
        eprintln!("{} ops started, each completed once", self.starts);
        let extra = port.get(Some(quiet()));
        assert!(matches!(extra, Err(GetError::TimedOut)), "an extra packet: {extra:?}");
    }
}

// Suite: accept + accept_multi + cancel + close on one listener, in a seeded random order.
backend_test!(operation_mix_on_one_listener, |b| {
    let port: CompletionPort<u64> = b.build().unwrap();
    let mut rng = Rng(0x11_57e4);
    let mut ledger = Ledger::new();
    let mut l = port.associate(listener(), CompletionKey(1)).unwrap();
    let mut addr = socket2::SockRef::from(&l).local_addr().unwrap().as_socket().unwrap();
    let mut clients: Vec<TcpStream> = Vec::new();
    let mut multi_on: Option<iocp::OpId> = None;
    for step in 0..10_000 {
        match rng.next() % 100 {
            0..30 => {
                let initial =
                    if rng.next().is_multiple_of(4) { Vec::with_capacity(8) } else { Vec::new() };
                if let Ok(op) = l.accept(initial, step) {
                    ledger.started(op, false);
                }
            }
            30..35 if multi_on.is_none_or(|op| !ledger.pending.contains(&op)) => {
                if let Ok(op) = l.accept_multi(step) {
                    ledger.started(op, true);
                    multi_on = Some(op);
                }
            }
            35..70 if clients.len() < 48 => {
                let mut s = TcpStream::connect(addr).unwrap();
                if rng.next().is_multiple_of(2) {
                    let _ = s.write_all(b"hi");
                }
                clients.push(s);
            }
            70..85 => {
                let ops: Vec<_> = ledger.pending.iter().copied().collect();
                if !ops.is_empty() {
                    let _ = l.cancel(ops[(rng.next() as usize) % ops.len()]);
                }
            }
            85..88 => {
                // Close the listener: every pending op completes once; start over on a new one.
                l.close();
                clients.clear();
                l = port.associate(listener(), CompletionKey(1)).unwrap();
                addr = socket2::SockRef::from(&l).local_addr().unwrap().as_socket().unwrap();
            }
            _ => {
                clients.clear();
            }
        }
        ledger.drain(&port, step as usize);
    }
    l.close();
    ledger.finish(&port);
});

// Suite: recv + send + cancel + deadline on one socket, in a seeded random order.
backend_test!(operation_mix_on_one_socket, |b| {
    let port: CompletionPort<u64> = b.build().unwrap();
    let mut rng = Rng(0x50_c4e7);
    let mut ledger = Ledger::new();
    let (mut client, server) = tcp_pair();
    client.set_nonblocking(true).unwrap();
    let h = port.associate(server, CompletionKey(2)).unwrap();
    let mut scratch = vec![0u8; 1 << 16];
    for step in 0..10_000u64 {
        match rng.next() % 100 {
            0..25 if ledger.pending.len() < 32 => {
                let buf = Vec::with_capacity(1 + (rng.next() % 64) as usize);
                let r = match rng.next() % 3 {
                    0 => h.with_timeout(Duration::from_micros(rng.next() % 200)).recv(buf, step),
                    _ => h.recv(buf, step),
                };
                ledger.started(r.unwrap(), false);
            }
            25..45 if ledger.pending.len() < 32 => {
                let buf = vec![7u8; 1 + (rng.next() % 32) as usize];
                let r = match rng.next() % 4 {
                    0 => h.with_timeout(Duration::from_micros(rng.next() % 200)).send(buf, step),
                    _ => h.send(buf, step),
                };
                ledger.started(r.unwrap(), false);
            }
            45..65 => {
                let n = 1 + (rng.next() % 16) as usize;
                let _ = client.write(&scratch[..n]);
            }
            65..80 => {
                let _ = std::io::Read::read(&mut client, &mut scratch);
            }
            80..95 => {
                let ops: Vec<_> = ledger.pending.iter().copied().collect();
                if !ops.is_empty() {
                    let _ = h.cancel(ops[(rng.next() as usize) % ops.len()]);
                }
            }
            _ => {
                let _ = h.cancel_all();
            }
        }
        ledger.drain(&port, step as usize);
    }
    h.close();
    ledger.finish(&port);
});

// A user `Clone` that panics in a repeating accept is raised at the end of the driver's wait,
// after the rest of the batch was reaped. The port then queued that batch but did not settle
// it: an operation that completed in the same poll stayed counted in flight forever, and a
// graceful stop (`is_idle`) waited out its whole grace.
backend_test!(a_panic_in_the_poll_path_leaves_nothing_counted_in_flight, |b| {
    let Doomed { port, lh, multi, addr, mut client, h } = doomed(b);
    // Both ready before anyone polls: one poll reaps the receive and the doomed accept.
    client.write_all(b"alive").unwrap();
    let _doomed = TcpStream::connect(addr).unwrap();
    let mut got_recv = false;
    let end = Instant::now() + deadline();
    while !got_recv {
        assert!(Instant::now() < end, "the receive never came: {:?}", port.stats());
        match catch_unwind(AssertUnwindSafe(|| port.get(Some(quiet())))) {
            Ok(Ok(c)) => {
                assert_eq!((c.key(), c.context().0, c.result().unwrap()), (CompletionKey(2), 7, 5));
                got_recv = true;
            }
            Ok(Err(GetError::TimedOut)) | Err(_) => {}
            Ok(Err(e)) => panic!("{e:?}"),
        }
    }
    lh.cancel(multi).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.is_aborted()), (multi, true));
    // Both operations are done and dequeued (settled before the packets could be taken):
    // nothing is in flight.
    assert_eq!(port.stats().in_flight, 0, "{:?}", port.stats());
    drop(h);
});
