//! A port spread over several io_uring rings (`PortBuilder::rings`): each thread starts its ops
//! on its own ring, and the port still behaves as one (one queue, exactly-once completions,
//! stream order per handle, cancel and close across rings). On epoll `rings` is ignored and the
//! same behaviour holds.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use iocp::{CompletionKey, CompletionPort, GetError, Payload};
use iocp_testkit::{backend_test, deadline, quiet, tcp_pair};

fn on_threads(n: usize, f: impl Fn(usize) + Sync) {
    thread::scope(|s| {
        for i in 0..n {
            let f = &f;
            s.spawn(move || f(i));
        }
    });
}

backend_test!(ops_started_on_many_threads_each_complete_once_on_one_queue, |b| {
    let port: CompletionPort<usize> = b.concurrency(4).rings(4).build().unwrap();
    let mut clients: Vec<TcpStream> = Vec::new();
    let mut handles = Vec::new();
    for i in 0..8 {
        let (client, server) = tcp_pair();
        clients.push(client);
        handles.push(port.associate(server, CompletionKey(i)).unwrap());
    }
    // Eight threads (rings taken in turn), one receive each.
    on_threads(8, |i| {
        handles[i].recv(Vec::with_capacity(16), i).unwrap();
    });
    // This thread waits (the poller watches every ring) while the data arrives.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&[i as u8]).unwrap();
    }
    let mut seen = [false; 8];
    for _ in 0..8 {
        let c = port.get(Some(deadline())).unwrap();
        let i = *c.context();
        assert!(!seen[i], "op {i} completed twice");
        seen[i] = true;
        assert_eq!(c.result().unwrap(), 1);
        assert_eq!(c.key(), CompletionKey(i as u64));
    }
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    assert_eq!(port.stats().in_flight, 0);
});

backend_test!(stream_order_holds_across_rings, |b| {
    let port: CompletionPort<usize> = b.concurrency(2).rings(2).build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    // Receives started from different threads (so different rings) queue behind each other
    // on the handle and complete in the order they were started.
    for i in 0..6 {
        let h = h.clone();
        thread::spawn(move || h.recv(Vec::with_capacity(1), i).unwrap()).join().unwrap();
    }
    client.write_all(b"abcdef").unwrap();
    for (i, want) in b"abcdef".iter().enumerate() {
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!(*c.context(), i);
        match c.payload() {
            Payload::Recv(buf) => assert_eq!(buf, &vec![*want]),
            other => panic!("not a receive: {other:?}"),
        }
    }
});

backend_test!(cancel_close_and_deadlines_reach_every_ring, |b| {
    let port: CompletionPort<usize> = b.concurrency(2).rings(2).build().unwrap();
    let (_c1, s1) = tcp_pair();
    let (_c2, s2) = tcp_pair();
    let (_c3, s3) = tcp_pair();
    let h1 = port.associate(s1, CompletionKey(1)).unwrap();
    let h2 = port.associate(s2, CompletionKey(2)).unwrap();
    let h3 = port.associate(s3, CompletionKey(3)).unwrap();
    // h1: a receive and a send-side op from two threads; h2: a timed receive; h3: a receive
    // left for the close.
    on_threads(2, |i| {
        if i == 0 {
            h1.recv(Vec::with_capacity(8), 10).unwrap();
            h3.recv(Vec::with_capacity(8), 30).unwrap();
        } else {
            h1.recv(Vec::with_capacity(8), 11).unwrap(); // queued behind 10
            h2.with_timeout(Duration::from_millis(50)).recv(Vec::with_capacity(8), 20).unwrap();
        }
    });
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(*c.context(), 20);
    assert_eq!(c.result().unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(h1.cancel_all().unwrap(), 2);
    let mut got: Vec<usize> = (0..2)
        .map(|_| {
            let c = port.get(Some(deadline())).unwrap();
            assert!(c.is_aborted());
            *c.context()
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [10, 11]);
    h3.close();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(*c.context(), 30);
    assert!(c.is_aborted());
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    // Ops pending on both rings at the port's close: the close returns and nothing leaks.
    on_threads(2, |i| {
        h2.recv(Vec::with_capacity(8), 40 + i).unwrap();
    });
    port.close();
});

backend_test!(case_38_io_outlives_the_thread_that_started_it, |b| {
    // One ring (the default) and several: the kernel cancels an exiting thread's requests, the
    // port starts them again.
    for rings in [1, 2] {
        let port: CompletionPort<u32> = b.clone().concurrency(2).rings(rings).build().unwrap();
        let (mut client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(1)).unwrap();
        let h2 = h.clone();
        thread::spawn(move || h2.recv(Vec::with_capacity(8), 38).unwrap()).join().unwrap();
        // The thread is gone; nothing is queued yet.
        assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
        client.write_all(b"late").unwrap();
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!(*c.context(), 38);
        assert_eq!(c.result().unwrap(), 4, "rings {rings}");
        match c.payload() {
            Payload::Recv(buf) => assert_eq!(buf, b"late"),
            other => panic!("not a receive: {other:?}"),
        }
    }
});
