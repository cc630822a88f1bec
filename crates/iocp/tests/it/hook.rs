//! The completion hook (`CompletionPort::on_complete`) and `reap`: the moment an operation
//! completes, seen with no thread dequeuing (what libiocp needs for `HasOverlappedIoCompleted`,
//! `GetOverlappedResult` and OVERLAPPED events).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iocp::{CompletionKey, CompletionPort, Delivery, GetError, Payload};
use iocp_testkit::{backend_test, deadline, quiet, tcp_pair};

backend_test!(hook_sees_each_io_completion_once_and_may_change_it, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    port.on_complete(move |c| {
        s.fetch_add(1, Ordering::SeqCst);
        *c.context_mut() += 100;
        Delivery::Queue
    })
    .unwrap();
    assert_eq!(
        port.on_complete(|_| Delivery::Queue).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), 1).unwrap();
    h.send(b"out".to_vec(), 2).unwrap();
    port.post(0, CompletionKey(9), 3).unwrap();
    client.write_all(b"in").unwrap();
    let mut got: Vec<u32> =
        (0..3).map(|_| *port.get(Some(deadline())).unwrap().context()).collect();
    got.sort_unstable();
    // The two I/O completions passed the hook once each; the posted packet did not.
    assert_eq!(got, vec![3, 101, 102]);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(hook_that_drops_a_completion_queues_nothing_and_counts_it, |b| {
    let port: CompletionPort<&'static str> = b.build().unwrap();
    port.on_complete(|c| if *c.context() == "silent" { Delivery::Drop } else { Delivery::Queue })
        .unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), "silent").unwrap();
    client.write_all(b"x").unwrap();
    h.send(b"y".to_vec(), "loud").unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(*c.context(), "loud");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    // Both completed (the stats count the dropped one), one was dequeued.
    let st = port.stats();
    assert_eq!((st.io_completions, st.dequeued, st.in_flight), (2, 1, 0));
});

backend_test!(reap_sees_a_completion_while_nobody_dequeues, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let hooked = Arc::new(AtomicUsize::new(0));
    let hk = hooked.clone();
    port.on_complete(move |_| {
        hk.fetch_add(1, Ordering::SeqCst);
        Delivery::Queue
    })
    .unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), 7).unwrap();
    // Nothing arrived yet: a zero-timeout reap finds nothing.
    assert_eq!(port.reap(Some(Duration::ZERO)), 0);
    let writer = thread::spawn(move || {
        client.write_all(b"late").unwrap();
        client
    });
    // Blocks in the kernel until the data comes (bounded by the deadline).
    let end = Instant::now() + deadline();
    let mut n = 0;
    while n == 0 && Instant::now() < end {
        n = port.reap(Some(deadline()));
    }
    assert_eq!(n, 1);
    assert_eq!(hooked.load(Ordering::SeqCst), 1, "the hook ran at reap time, not at dequeue");
    let _client = writer.join().unwrap();
    // Queued, not dequeued: a get takes it at once, and the hook does not run again.
    let mut c = port.get(Some(Duration::ZERO)).unwrap();
    assert_eq!((*c.context(), c.take_buf().unwrap()), (7, b"late".to_vec()));
    assert_eq!(hooked.load(Ordering::SeqCst), 1);
});

backend_test!(reap_hands_what_it_reaps_to_a_blocked_get, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), 5).unwrap();
    client.write_all(b"z").unwrap();
    // Whichever of the two polls, the blocked get receives the packet exactly once.
    let p = port.clone();
    let getter = thread::spawn(move || p.get(Some(deadline())).map(|c| *c.context()));
    let end = Instant::now() + deadline();
    while !getter.is_finished() && Instant::now() < end {
        port.reap(Some(Duration::from_millis(20)));
    }
    assert_eq!(getter.join().unwrap(), Ok(5));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(a_panicking_hook_still_queues_the_completion, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    port.on_complete(|c| {
        if *c.context() == 13 {
            panic!("hook failure (expected by the test)");
        }
        Delivery::Queue
    })
    .unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), 13).unwrap();
    client.write_all(b"p").unwrap();
    // The poll path raises the panic to the get caller after queueing what it reaped; a later
    // get receives the packet, unchanged by the hook.
    let end = Instant::now() + deadline();
    let c = loop {
        let p = port.clone();
        match thread::spawn(move || p.get(Some(deadline()))).join() {
            Ok(r) => break r.unwrap(),
            Err(_) => assert!(Instant::now() < end, "no packet after the hook's panic"),
        }
    };
    assert_eq!(*c.context(), 13);
    assert!(matches!(c.payload(), Payload::Recv(_)));
    // The port still serves.
    port.post(1, CompletionKey(2), 1).unwrap();
    assert_eq!(port.get(Some(deadline())).unwrap().bytes(), 1);
});
