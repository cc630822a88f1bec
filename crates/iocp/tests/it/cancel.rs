//! Cancel, close and deadlines (iocp-semantics §8; cases 31, 32, 34, 36).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use iocp::{CompletionKey, CompletionPort, GetError, Payload};
use iocp_testkit::{backend_test, deadline, listener, quiet, tcp_pair};

/// Reads what is waiting on `s` (up to `max` bytes) within a short time.
fn drain(s: &mut TcpStream, max: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("test helper");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while out.len() < max {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

backend_test!(case_31_cancel_one_pending_receive, |b| {
    let port: CompletionPort<u8> = b.build().unwrap();
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(31)).unwrap();
    let r = h.recv(Vec::with_capacity(64), 1).unwrap();
    let other = h.recv_ready(2).unwrap();
    h.cancel(r).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.key(), c.bytes(), *c.context()), (r, CompletionKey(31), 0, 1));
    assert!(c.is_aborted());
    assert_eq!(c.raw_os_error(), Some(libc::ECANCELED));
    assert_eq!(c.take_buf().unwrap().capacity(), 64, "the buffer comes back");
    // Nothing left to cancel under that id: NotFound, and no packet.
    assert_eq!(h.cancel(r).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    // The other operation is untouched.
    h.cancel(other).unwrap();
    assert_eq!(*port.get(Some(deadline())).unwrap().context(), 2);
});

backend_test!(case_31_cancelling_nothing_reports_not_found, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    assert_eq!(h.cancel_all().unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(h.cancel(iocp::OpId(12345)).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(case_32_cancel_all_from_another_thread, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let h2 = h.clone();
    thread::spawn(move || {
        h2.recv(Vec::with_capacity(8), ()).unwrap();
        h2.send(Vec::new(), ()).unwrap();
    })
    .join()
    .unwrap();
    // The empty send completes; the receive stays pending.
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), 0);
    let canceller = thread::spawn(move || h.cancel_all().unwrap());
    assert_eq!(canceller.join().unwrap(), 1);
    let c = port.get(Some(deadline())).unwrap();
    assert!(c.is_aborted());
});

backend_test!(case_34_closing_a_listener_aborts_its_accept_with_its_key, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let l = port.associate(listener(), CompletionKey(125)).unwrap();
    l.accept(Vec::new(), ()).unwrap();
    l.close();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.bytes(), c.is_aborted()), (CompletionKey(125), 0, true));
    assert!(matches!(c.payload(), Payload::Accept(a) if a.socket().is_none()));
});

/// A thread that waits in `get` all the time (so a poller is in the kernel while the test
/// races), forwarding each packet.
fn getter<C: Send + 'static>(
    port: &CompletionPort<C>,
) -> (mpsc::Receiver<iocp::Completion<C>>, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let p = port.clone();
    let t = thread::spawn(move || {
        while let Ok(c) = p.get(Some(deadline())) {
            if tx.send(c).is_err() {
                break;
            }
        }
    });
    (rx, t)
}

backend_test!(cancel_racing_completion_loses_no_byte, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (rx, t) = getter(&port);
    let (mut aborted, mut completed) = (0, 0);
    for round in 0..1000u32 {
        let (mut client, server) = tcp_pair();
        let raw = server.try_clone().unwrap();
        let h = port.associate(server, CompletionKey(u64::from(round))).unwrap();
        let op = h.recv(Vec::with_capacity(16), ()).unwrap();
        // Vary who wins: the data, the cancel, or a close race between the two.
        let cancel_first = round % 3 == 0;
        if !cancel_first {
            client.write_all(b"z").unwrap();
            for _ in 0..(round % 50) * 40 {
                std::hint::spin_loop();
            }
        }
        let cancel = h.cancel(op);
        if cancel_first {
            client.write_all(b"z").unwrap();
        }
        let mut c = rx.recv_timeout(deadline()).unwrap();
        assert_eq!(c.op(), op);
        let buf = c.take_buf().expect("the buffer always comes back");
        if c.is_aborted() {
            aborted += 1;
            assert!(cancel.is_ok());
            assert_eq!((c.bytes(), buf.len()), (0, 0));
            // The byte was not consumed: it is still in the socket.
            let mut raw = raw;
            assert_eq!(drain(&mut raw, 1), b"z", "round {round}: a cancelled receive lost data");
        } else {
            completed += 1;
            assert_eq!((c.result().unwrap(), &buf[..]), (1, &b"z"[..]));
        }
        assert!(rx.recv_timeout(Duration::from_millis(1)).is_err(), "one packet per op");
    }
    assert_eq!(aborted + completed, 1000);
    eprintln!("cancel race: {aborted} aborted, {completed} completed");
    port.close();
    t.join().unwrap();
});

backend_test!(cancelled_send_reports_the_bytes_it_moved, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let len = 32 << 20;
    let op = h.send(vec![7u8; len], ()).unwrap();
    // The peer does not read: the send fills the socket buffers and stalls part-way.
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    h.cancel(op).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert!(c.is_aborted(), "{c:?}");
    let moved = c.bytes();
    assert!(moved > 0 && moved < len, "moved {moved}");
    // Exactly the reported bytes reached the peer: none lost, none unaccounted for.
    assert_eq!(drain(&mut client, len).len(), moved);
});

backend_test!(deadline_expires_with_timed_out_and_keeps_the_data, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let mut raw = server.try_clone().unwrap();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.with_timeout(Duration::from_millis(100)).recv(Vec::with_capacity(16), ()).unwrap();
    let t0 = std::time::Instant::now();
    let mut c = port.get(Some(deadline())).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(90), "expired early: {:?}", t0.elapsed());
    assert_eq!(c.raw_os_error(), Some(libc::ETIMEDOUT));
    assert_eq!(c.result().unwrap_err().kind(), ErrorKind::TimedOut);
    assert_eq!(c.take_buf().unwrap().capacity(), 16);
    client.write_all(b"late").unwrap();
    assert_eq!(drain(&mut raw, 4), b"late");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    assert_eq!(port.stats().in_flight, 0);
});

backend_test!(deadline_fires_while_a_thread_waits_without_timeout, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let (tx, rx) = mpsc::channel();
    let p = port.clone();
    let waiter = thread::spawn(move || tx.send(p.get(None).map(|c| c.raw_os_error())).unwrap());
    iocp_testkit::eventually("the waiter to block", || (port.stats().waiters == 1).then_some(()));
    // Armed after the poller went to sleep with no timeout: it must be woken to honour it.
    h.with_timeout(Duration::from_millis(50)).recv_ready(()).unwrap();
    assert_eq!(rx.recv_timeout(deadline()).unwrap(), Ok(Some(libc::ETIMEDOUT)));
    waiter.join().unwrap();
});

backend_test!(deadline_racing_data_completes_exactly_once, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (rx, t) = getter(&port);
    let (mut timed_out, mut got) = (0, 0);
    for round in 0..200u64 {
        let (mut client, server) = tcp_pair();
        let raw = server.try_clone().unwrap();
        let h = port.associate(server, CompletionKey(round)).unwrap();
        let start = std::time::Instant::now();
        h.with_timeout(Duration::from_millis(2)).recv(Vec::with_capacity(8), ()).unwrap();
        // Aim the write at the deadline, a little before or after it.
        let aim = Duration::from_micros(1600 + (round % 9) * 100);
        while start.elapsed() < aim {
            std::hint::spin_loop();
        }
        client.write_all(b"d").unwrap();
        let c = rx.recv_timeout(deadline()).unwrap();
        if c.raw_os_error() == Some(libc::ETIMEDOUT) {
            timed_out += 1;
            let mut raw = raw;
            assert_eq!(drain(&mut raw, 1), b"d", "a timed-out receive lost data");
        } else {
            got += 1;
            assert_eq!(c.result().unwrap(), 1);
        }
        assert!(rx.recv_timeout(Duration::from_millis(1)).is_err(), "one packet per op");
    }
    eprintln!("deadline race: {timed_out} timed out, {got} got data");
    port.close();
    t.join().unwrap();
});

backend_test!(no_stale_completion_lands_on_a_reused_fd, |b| {
    let port: CompletionPort<&'static str> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let (mut old_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), "old").unwrap();
    let old_fd = h.as_raw_fd();
    h.close();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((*c.context(), c.is_aborted()), ("old", true));
    drop(c);
    drop(h);
    // New sockets until one gets the old fd number (other tests run in parallel and may take
    // it first: then this round proves nothing and says so).
    let mut keep = Vec::new();
    let reused = loop {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if s.as_raw_fd() == old_fd {
            break Some(s);
        }
        keep.push(s);
        if keep.len() == 64 {
            break None;
        }
    };
    let Some(s) = reused else {
        eprintln!("fd {old_fd} was taken by another test; nothing to check");
        return;
    };
    s.connect(&addr.into()).unwrap();
    let (mut new_peer, _) = l.accept().unwrap();
    let h2 = port.associate(s, CompletionKey(2)).unwrap();
    h2.recv(Vec::with_capacity(16), "new").unwrap();
    let _ = old_client.write_all(b"stale");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut, "a stale packet arrived");
    new_peer.write_all(b"fresh").unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((*c.context(), c.key()), ("new", CompletionKey(2)));
    assert_eq!(c.take_buf().unwrap(), b"fresh");
});
