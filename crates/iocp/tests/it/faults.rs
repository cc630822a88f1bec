//! Fault injection (`iocp::fault`): syscalls made to fail at chosen points. For each point:
//! every started op completes exactly once, the failed op carries the injected error (or the
//! failure is retried where the design says so), the port keeps serving, and nothing leaks
//! (buffers come back in the payload, pooled buffers return to the pool, fds are closed).
//!
//! Plans are per thread; each test submits and polls on its own thread, so it sees every call.
//! Leaks of fds are checked through the peer (it reads EOF once the handle is closed), not by
//! counting /proc/self/fd, which the tests running in parallel change at any moment.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use iocp::fault::{self, Point};
use iocp::{BackendKind, Completion, CompletionKey, CompletionPort, GetError, OpId, Payload};
use iocp_testkit::{backend_test, deadline, listener, quiet, tcp_pair};

/// The ops a test started and the packets it got: each started op completes once, no other.
#[derive(Default)]
struct Ledger {
    started: HashSet<OpId>,
    done: HashSet<OpId>,
}

impl Ledger {
    fn start(&mut self, id: OpId) -> OpId {
        assert!(self.started.insert(id), "op id {id:?} handed out twice");
        id
    }

    fn take(&mut self, port: &CompletionPort<u32>) -> Completion<u32> {
        let c = port.get(Some(deadline())).expect("a started op completes");
        assert!(self.started.contains(&c.op()), "packet for an op never started: {:?}", c.op());
        assert!(self.done.insert(c.op()), "op {:?} completed twice", c.op());
        c
    }

    /// Every started op has completed, and no further packet arrives.
    fn settled(&self, port: &CompletionPort<u32>) {
        assert_eq!(self.done, self.started, "every started op completed exactly once");
        assert_eq!(
            port.get(Some(quiet())).expect_err("quiet"),
            GetError::TimedOut,
            "no extra packet"
        );
        let s = port.stats();
        assert_eq!(s.in_flight, 0, "nothing left in flight: {s:?}");
    }
}

/// The port still serves: a fresh receive on a fresh socket pair completes with its data.
fn serves(port: &CompletionPort<u32>, ledger: &mut Ledger) {
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(999)).expect("associate");
    ledger.start(h.recv(Vec::with_capacity(16), 999).expect("recv"));
    client.write_all(b"still").expect("write");
    let mut c = ledger.take(port);
    assert_eq!(c.result().expect("the fresh receive succeeds"), 5);
    assert_eq!(c.take_buf().expect("its buffer"), b"still");
    h.close();
    drop(h); // the fd closes with the last reference
    peer_sees_eof(&mut client);
}

/// The peer reads EOF: the handle's fd is closed (not leaked, not kept by a stray dup).
fn peer_sees_eof(client: &mut TcpStream) {
    client.set_read_timeout(Some(deadline())).expect("timeout");
    let mut rest = Vec::new();
    let start = Instant::now();
    loop {
        let mut buf = [0u8; 64 * 1024];
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("peer read: {e} (after {:?}, the fd is still open?)", start.elapsed()),
        }
    }
}

backend_test!(accept_emfile_enfile_enomem_fail_one_accept_and_lose_no_connection, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, CompletionKey(1)).unwrap();
    let mut ledger = Ledger::default();
    for (i, errno) in [libc::EMFILE, libc::ENFILE, libc::ENOMEM].into_iter().enumerate() {
        fault::clear();
        let mut client = TcpStream::connect(addr).unwrap();
        fault::fail_nth(Point::Accept, 1, errno);
        let failed = ledger.start(lh.accept(Vec::new(), 1).unwrap());
        let c = ledger.take(&port);
        assert_eq!((c.op(), c.raw_os_error()), (failed, Some(errno)), "round {i}");
        assert_eq!(fault::fired(Point::Accept), 1);
        // The connection is still in the listen queue: the next accept takes it.
        ledger.start(lh.accept(Vec::new(), 2).unwrap());
        let mut c = ledger.take(&port);
        assert_eq!((*c.context(), c.result().ok()), (2, Some(0)), "round {i}");
        let s = c.take_accepted().unwrap().take_socket().unwrap();
        let h = port.associate(s, CompletionKey(2)).unwrap();
        client.write_all(b"hi").unwrap();
        ledger.start(h.recv(Vec::with_capacity(8), 3).unwrap());
        assert_eq!(ledger.take(&port).result().unwrap(), 2);
        h.close();
        drop(h); // the fd closes with the last reference
        peer_sees_eof(&mut client);
    }
    ledger.settled(&port);
    serves(&port, &mut ledger);
    lh.close();
    drop(lh);
    ledger.settled(&port);
});

backend_test!(accept_multi_emfile_ends_it_once_and_the_next_one_gets_the_connection, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, CompletionKey(1)).unwrap();
    let mut ledger = Ledger::default();
    let mut client = TcpStream::connect(addr).unwrap();
    fault::fail_nth(Point::Accept, 1, libc::EMFILE);
    let multi = ledger.start(lh.accept_multi(1).unwrap());
    let c = ledger.take(&port);
    assert_eq!((c.op(), c.raw_os_error()), (multi, Some(libc::EMFILE)));
    assert_eq!(fault::fired(Point::Accept), 1);
    ledger.settled(&port);
    // A new repeating accept takes the connection the failed one left queued; its packets
    // carry its op id (one per connection), so they are counted apart from the ledger.
    let again = lh.accept_multi(2).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.result().ok()), (again, Some(0)));
    let s = c.take_accepted().unwrap().take_socket().unwrap();
    drop(s);
    peer_sees_eof(&mut client);
    lh.close();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.is_aborted()), (again, true), "close ends the repeating accept once");
    ledger.settled(&port);
    serves(&port, &mut ledger);
});

backend_test!(recv_enomem_fails_one_receive_returns_its_buffer_and_keeps_the_data, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let mut ledger = Ledger::default();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    client.write_all(b"data").unwrap();
    fault::fail_nth(Point::Recv, 1, libc::ENOMEM);
    let failed = ledger.start(h.recv(Vec::with_capacity(64), 1).unwrap());
    let mut c = ledger.take(&port);
    assert_eq!((c.op(), c.raw_os_error(), c.bytes()), (failed, Some(libc::ENOMEM), 0));
    let buf = c.take_buf().expect("the buffer comes back with the failure");
    assert_eq!((buf.len(), buf.capacity()), (0, 64));
    assert_eq!(fault::fired(Point::Recv), 1);
    // The bytes were not consumed: the next receive gets them.
    ledger.start(h.recv(buf, 2).unwrap());
    let mut c = ledger.take(&port);
    assert_eq!(c.take_buf().unwrap(), b"data");
    // Receives queued behind a failing one still run, in order.
    fault::fail_nth(Point::Recv, 1, libc::ENOMEM);
    let f = ledger.start(h.recv(Vec::with_capacity(8), 3).unwrap());
    let ok = ledger.start(h.recv(Vec::with_capacity(8), 4).unwrap());
    client.write_all(b"more").unwrap();
    let first = ledger.take(&port);
    assert_eq!((first.op(), first.raw_os_error()), (f, Some(libc::ENOMEM)));
    let mut second = ledger.take(&port);
    assert_eq!((second.op(), second.take_buf().unwrap()), (ok, b"more".to_vec()));
    h.close();
    drop(h); // the fd closes with the last reference
    peer_sees_eof(&mut client);
    ledger.settled(&port);
    serves(&port, &mut ledger);
    ledger.settled(&port);
});

backend_test!(recv_pooled_enobufs_fails_without_lending_a_buffer, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let pool = port.buffer_pool(2, 256).unwrap();
    let mut ledger = Ledger::default();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    client.write_all(b"pooled").unwrap();
    fault::fail_nth(Point::RecvPooled, 1, libc::ENOBUFS);
    let failed = ledger.start(h.recv_pooled(&pool, 1).unwrap());
    let c = ledger.take(&port);
    assert_eq!((c.op(), c.raw_os_error()), (failed, Some(libc::ENOBUFS)));
    assert!(matches!(c.payload(), Payload::RecvPooled(None)), "no buffer lent: {c:?}");
    assert_eq!(pool.lent(), 0);
    assert_eq!(fault::fired(Point::RecvPooled), 1);
    // The data waits for the next pooled receive.
    ledger.start(h.recv_pooled(&pool, 2).unwrap());
    let mut c = ledger.take(&port);
    assert_eq!(c.result().unwrap(), 6);
    let Payload::RecvPooled(Some(buf)) = std::mem::replace(c.payload_mut(), Payload::Posted) else {
        panic!("{c:?}")
    };
    assert_eq!(&buf[..], b"pooled");
    drop(buf);
    assert_eq!(pool.lent(), 0, "the buffer went back to the pool");
    h.close();
    drop(h); // the fd closes with the last reference
    peer_sees_eof(&mut client);
    ledger.settled(&port);
    serves(&port, &mut ledger);
});

backend_test!(send_reset_after_a_partial_send_reports_the_bytes_sent_and_the_buffer, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let mut ledger = Ledger::default();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    // Far more than the socket buffers hold: the first send stage is partial, the op goes on
    // with the rest, and that second send stage is reset.
    let len = 32 << 20;
    fault::fail_nth(Point::Send, 2, libc::ECONNRESET);
    let id = ledger.start(h.send(vec![7u8; len], 1).unwrap());
    // The peer reads nothing until the reset, so the first stage is partial on both backends.
    let mut c = ledger.take(&port);
    assert_eq!((c.op(), c.raw_os_error()), (id, Some(libc::ECONNRESET)));
    assert_eq!(fault::fired(Point::Send), 1, "the second stage was reached and reset");
    let sent = c.bytes();
    assert!(sent > 0 && sent < len, "the partial count is reported: {sent}");
    let buf = c.take_buf().expect("the buffer comes back with the failure");
    assert_eq!(buf.len(), len);
    h.close();
    drop(h); // the fd closes with the last reference
    // The peer got exactly the bytes reported, then EOF (the fd was closed).
    client.set_read_timeout(Some(deadline())).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), sent, "bytes() matches what the peer received");
    ledger.settled(&port);
    serves(&port, &mut ledger);
});

backend_test!(connect_failure_completes_once_and_a_fresh_connect_works, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let mut ledger = Ledger::default();
    let l = listener();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    fault::fail_nth(Point::Connect, 1, libc::ECONNREFUSED);
    let id = ledger.start(h.connect(addr, b"hello".to_vec(), 1).unwrap());
    let mut c = ledger.take(&port);
    assert_eq!((c.op(), c.raw_os_error(), c.bytes()), (id, Some(libc::ECONNREFUSED), 0));
    assert_eq!(c.take_buf().unwrap(), b"hello", "the initial data comes back");
    assert_eq!(fault::fired(Point::Connect), 1);
    assert_eq!(l.accept().unwrap_err().kind(), ErrorKind::WouldBlock, "no connection was made");
    h.close();
    drop(h); // the fd closes with the last reference
    ledger.settled(&port);
    // A fresh socket connects, sending its initial data, and the listener gets it.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h = port.associate(s, CompletionKey(2)).unwrap();
    ledger.start(h.connect(addr, b"hello".to_vec(), 2).unwrap());
    assert_eq!(ledger.take(&port).result().unwrap(), 5);
    l.set_nonblocking(false).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    h.close();
    drop(h); // the fd closes with the last reference
    peer_sees_eof(&mut peer);
    ledger.settled(&port);
    serves(&port, &mut ledger);
});

backend_test!(enter_eagain_and_ebusy_are_retried_not_surfaced, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let uring = port.backend().kind() == BackendKind::Uring;
    let mut ledger = Ledger::default();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    client.write_all(b"ping").unwrap();
    // The submit's enter fails (the SQE stays in the ring), and so does the poller's first
    // enter: both are retried, and neither the submit nor `get` reports an error.
    fault::fail_nth(Point::Enter, 1, libc::EAGAIN);
    fault::fail_nth(Point::Enter, 2, libc::EBUSY);
    let r = ledger.start(h.recv(Vec::with_capacity(8), 1).unwrap());
    let s = ledger.start(h.send(b"pong".to_vec(), 2).unwrap());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut c = ledger.take(&port);
        assert!(c.result().is_ok(), "an enter failure surfaced: {c:?}");
        if c.op() == r {
            assert_eq!(c.take_buf().unwrap(), b"ping");
        }
        seen.push(c.op());
    }
    seen.sort();
    let mut want = vec![r, s];
    want.sort();
    assert_eq!(seen, want);
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    assert_eq!(fault::fired(Point::Enter), if uring { 2 } else { 0 });
    h.close();
    drop(h); // the fd closes with the last reference
    peer_sees_eof(&mut client);
    ledger.settled(&port);
    serves(&port, &mut ledger);
});

backend_test!(a_full_sq_ring_backlogs_ops_and_every_one_completes_once, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let uring = port.backend().kind() == BackendKind::Uring;
    let mut ledger = Ledger::default();
    let mut pairs = Vec::new();
    fault::fail_always(Point::SqPush, libc::EBUSY);
    for i in 0..8u32 {
        let (client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(u64::from(i))).unwrap();
        ledger.start(h.recv(Vec::with_capacity(8), i).unwrap());
        pairs.push((client, h));
    }
    if uring {
        assert_eq!(port.stats().backlog, 8, "every refused SQE waits in the backlog");
    }
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    fault::clear();
    for (client, _) in &mut pairs {
        client.write_all(b"x").unwrap();
    }
    let mut ctx = HashSet::new();
    for _ in 0..8 {
        let c = ledger.take(&port);
        assert_eq!(c.result().unwrap(), 1);
        assert!(ctx.insert(*c.context()));
    }
    assert_eq!(port.stats().backlog, 0);
    for (mut client, h) in pairs {
        h.close();
        drop(h); // the fd closes with the last reference
        peer_sees_eof(&mut client);
    }
    ledger.settled(&port);
    serves(&port, &mut ledger);
});

/// The state letter of thread `tid` of this process (`S`: asleep in the kernel).
fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // "tid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The sleeping poller's one `get`: the op, its errno (0 on success) and its bytes.
type Polled = Result<(OpId, i32, usize), GetError>;

/// Starts a thread that polls `port` once (up to the test deadline) and returns once that
/// thread is asleep in the kernel, waiting: the other threads' submissions must wake it.
fn sleeping_poller(
    port: &CompletionPort<u32>,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<Polled>) {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    let port = port.clone();
    let poller = std::thread::spawn(move || {
        tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).expect("report tid");
        let c = port.get(Some(deadline()));
        tx.send(c.map(|c| (c.op(), c.raw_os_error().unwrap_or(0), c.bytes())))
            .expect("report packet");
    });
    let tid = tid_rx.recv().expect("the poller's tid");
    iocp_testkit::eventually("the poller to sleep", || {
        (thread_state(tid) == Some('S')).then_some(())
    });
    (poller, rx)
}

backend_test!(a_failed_submit_enter_does_not_strand_the_op_while_the_poller_sleeps, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let (poller, rx) = sleeping_poller(&port);
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    client.write_all(b"ping").unwrap();
    // This thread's submit enter fails once (EAGAIN): the SQE sits in the ring while the
    // poller sleeps. It must still start and complete well before the poller's own deadline.
    fault::fail_nth(Point::Enter, 1, libc::EAGAIN);
    let id = h.recv(Vec::with_capacity(8), 1).unwrap();
    let got = rx.recv_timeout(deadline() / 3).expect("the op completed while the poller slept");
    assert_eq!(got, Ok((id, 0, 4)));
    let uring = port.backend().kind() == BackendKind::Uring;
    assert_eq!(fault::fired(Point::Enter), u64::from(uring), "the submit's enter failed");
    poller.join().unwrap();
    h.close();
    drop(h);
    peer_sees_eof(&mut client);
});

backend_test!(a_refused_sqe_is_not_stranded_while_the_poller_sleeps, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let (poller, rx) = sleeping_poller(&port);
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    client.write_all(b"ping").unwrap();
    // The SQ ring refuses this thread's SQE once: it goes to the backlog, which only the
    // poller retries, and the poller is asleep.
    fault::fail_nth(Point::SqPush, 1, libc::EBUSY);
    let id = h.recv(Vec::with_capacity(8), 1).unwrap();
    let got = rx.recv_timeout(deadline() / 3).expect("the op completed while the poller slept");
    assert_eq!(got, Ok((id, 0, 4)));
    let uring = port.backend().kind() == BackendKind::Uring;
    assert_eq!(fault::fired(Point::SqPush), u64::from(uring), "the SQE was refused");
    poller.join().unwrap();
    assert_eq!(port.stats().backlog, 0);
    h.close();
    drop(h);
    peer_sees_eof(&mut client);
});

backend_test!(a_refused_cancel_is_not_stranded_while_the_poller_sleeps, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    // A receive with no data: in the kernel until cancelled.
    let id = h.recv(Vec::with_capacity(8), 1).unwrap();
    let (poller, rx) = sleeping_poller(&port);
    // The ring refuses the cancel's SQE once: it waits in the backlog, which only the
    // poller retries.
    fault::fail_nth(Point::SqPush, 1, libc::EBUSY);
    h.cancel(id).unwrap();
    let got =
        rx.recv_timeout(deadline() / 3).expect("the cancel took effect while the poller slept");
    assert_eq!(got, Ok((id, libc::ECANCELED, 0)));
    let uring = port.backend().kind() == BackendKind::Uring;
    assert_eq!(fault::fired(Point::SqPush), u64::from(uring), "the cancel's SQE was refused");
    poller.join().unwrap();
    assert_eq!(port.stats().backlog, 0);
    h.close();
    drop(h);
    peer_sees_eof(&mut client);
});
