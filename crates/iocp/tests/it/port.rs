//! Port basics, posting, closing and the concurrency rules (iocp-semantics §15 cases 1-9, 39-45).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use iocp::{CompletionKey, CompletionPort, GetError, Payload};
use iocp_testkit::{backend_test, deadline, eventually, quiet};

backend_test!(case_01_empty_port_times_out_never_early, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    assert_eq!(port.get(Some(Duration::ZERO)).unwrap_err(), GetError::TimedOut);
    let t0 = Instant::now();
    assert_eq!(port.get(Some(Duration::from_millis(300))).unwrap_err(), GetError::TimedOut);
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(300), "returned early after {waited:?}");
});

backend_test!(case_02_post_then_get_returns_the_posted_values, |b| {
    let port: CompletionPort<usize> = b.build().unwrap();
    port.post(7, CompletionKey(0xABC), 0x1234).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.bytes(), c.key(), *c.context()), (7, CompletionKey(0xABC), 0x1234));
    assert!(matches!(c.payload(), Payload::Posted));
    assert_eq!(c.result().unwrap(), 7);
});

backend_test!(case_03_post_with_empty_values_is_still_a_packet, |b| {
    let port: CompletionPort<Option<u8>> = b.build().unwrap();
    port.post(0, CompletionKey(0), None).unwrap();
    let c = port.get(Some(Duration::ZERO)).expect("a packet, not a timeout");
    assert_eq!((c.bytes(), c.key(), *c.context()), (0, CompletionKey(0), None));
});

backend_test!(case_04_single_consumer_fifo, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    for k in 1..=1000 {
        port.post(0, CompletionKey(k), ()).unwrap();
    }
    for k in 1..=1000 {
        assert_eq!(port.get(Some(deadline())).unwrap().key(), CompletionKey(k));
    }
    assert_eq!(port.get(Some(Duration::ZERO)).unwrap_err(), GetError::TimedOut);
});

backend_test!(case_05_get_many_returns_in_post_order, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    port.post(1, CompletionKey(1), ()).unwrap();
    port.post(2, CompletionKey(2), ()).unwrap();
    let mut out = Vec::new();
    assert_eq!(port.get_many(&mut out, 2, Some(Duration::ZERO)).unwrap(), 2);
    assert_eq!(out.iter().map(|c| c.key().0).collect::<Vec<_>>(), vec![1, 2]);
    out.clear();
    port.post(1, CompletionKey(1), ()).unwrap();
    port.post(2, CompletionKey(2), ()).unwrap();
    assert_eq!(port.get_many(&mut out, 1, Some(Duration::ZERO)).unwrap(), 1);
    assert_eq!(port.get_many(&mut out, 1, Some(Duration::ZERO)).unwrap(), 1);
    assert_eq!(out.iter().map(|c| c.key().0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(port.get_many(&mut out, 1, Some(Duration::ZERO)).unwrap_err(), GetError::TimedOut);
    assert_eq!(port.get_many(&mut out, 0, Some(Duration::ZERO)).unwrap(), 0);
});

backend_test!(case_07_close_wakes_a_blocked_waiter_with_closed, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let p2 = port.clone();
    // GQCS(INFINITE): the result comes through a channel, so a missed wake-up fails the test at
    // the deadline instead of hanging it.
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || tx.send(p2.get(None).map(|_| ())).unwrap());
    eventually("the waiter to block", || (port.stats().waiters == 1).then_some(()));
    port.close();
    assert_eq!(rx.recv_timeout(deadline()).unwrap(), Err(GetError::Closed));
    waiter.join().unwrap();
    assert_eq!(port.get(Some(Duration::ZERO)).unwrap_err(), GetError::Closed);
    assert!(port.post(0, CompletionKey(0), ()).is_err());
});

backend_test!(case_07_close_wakes_every_waiter, |b| {
    let port: CompletionPort<()> = b.concurrency(4).build().unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let p = port.clone();
            thread::spawn(move || p.get(Some(Duration::from_secs(30))).map(|_| ()))
        })
        .collect();
    eventually("4 waiters", || (port.stats().waiters == 4).then_some(()));
    port.close();
    for w in waiters {
        assert_eq!(w.join().unwrap(), Err(GetError::Closed));
    }
});

backend_test!(case_09_post_then_close_still_delivers_to_the_waiter, |b| {
    for _ in 0..50 {
        let port: CompletionPort<u32> = b.clone().build().unwrap();
        let p2 = port.clone();
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || tx.send(p2.get(None).map(|c| *c.context())).unwrap());
        eventually("the waiter to block", || (port.stats().waiters == 1).then_some(()));
        port.post(1, CompletionKey(9), 42).unwrap();
        port.close();
        assert_eq!(rx.recv_timeout(deadline()).unwrap(), Ok(42));
        waiter.join().unwrap();
    }
});

backend_test!(dropping_the_last_port_clone_closes_it, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let l = port.associate(iocp_testkit::listener(), CompletionKey(1)).unwrap();
    drop(port);
    let err = l.accept(Vec::new(), ()).unwrap_err();
    assert_eq!(err.error().kind(), std::io::ErrorKind::BrokenPipe);
});

backend_test!(case_39_concurrency_one_spinning_thread_blocks_second, |b| {
    let port: CompletionPort<()> = b.concurrency(1).build().unwrap();
    port.post(1, CompletionKey(1), ()).unwrap();
    port.post(2, CompletionKey(2), ()).unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s) = (port.clone(), stop.clone());
    // A dequeues packet 1 and keeps running (it never calls get again, never blocks visibly).
    let a = thread::spawn(move || {
        let c = p.get(Some(deadline())).unwrap();
        got_tx.send(c.key()).unwrap();
        while !s.load(Ordering::Relaxed) {
            std::hint::spin_loop();
            thread::yield_now();
        }
    });
    assert_eq!(got_rx.recv_timeout(deadline()).unwrap(), CompletionKey(1));
    // B must time out although packet 2 is queued.
    let p = port.clone();
    let b_result = thread::spawn(move || p.get(Some(Duration::from_millis(500))).map(|c| c.key()))
        .join()
        .unwrap();
    assert_eq!(b_result, Err(GetError::TimedOut));
    assert_eq!(port.stats().queued, 1);
    stop.store(true, Ordering::Relaxed);
    a.join().unwrap();
});

backend_test!(case_40_visible_block_releases_a_waiter, |b| {
    let port: CompletionPort<()> = b.concurrency(1).build().unwrap();
    port.post(1, CompletionKey(1), ()).unwrap();
    let (p, p2) = (port.clone(), port.clone());
    let (a_has, a_has_rx) = mpsc::channel();
    let (b_got_tx, b_got_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let a = thread::spawn(move || {
        let c = p.get(Some(deadline())).unwrap();
        assert_eq!(c.key(), CompletionKey(1));
        a_has.send(()).unwrap();
        // A blocks visibly until the test releases it.
        let _guard = iocp::blocking();
        release_rx.recv_timeout(deadline()).unwrap();
    });
    a_has_rx.recv_timeout(deadline()).unwrap();
    let bt = thread::spawn(move || {
        let c = p2.get(Some(deadline())).map(|c| c.key());
        b_got_tx.send(c).unwrap();
    });
    eventually("B to block", || (port.stats().waiters == 1).then_some(()));
    port.post(2, CompletionKey(2), ()).unwrap();
    // B gets packet 2 while A is still blocked.
    assert_eq!(b_got_rx.recv_timeout(deadline()).unwrap(), Ok(CompletionKey(2)));
    release_tx.send(()).unwrap();
    a.join().unwrap();
    bt.join().unwrap();
});

backend_test!(case_41_waiters_are_released_lifo, |b| {
    let port: CompletionPort<()> = b.concurrency(4).build().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for i in 1..=3 {
        let (p, tx) = (port.clone(), tx.clone());
        threads.push(thread::spawn(move || {
            let r = p.get(Some(deadline())).map(|c| c.key());
            tx.send((i, r)).unwrap();
        }));
        eventually("the waiter to block", || (port.stats().waiters == i).then_some(()));
    }
    port.post(0, CompletionKey(77), ()).unwrap();
    let (who, what) = rx.recv_timeout(deadline()).unwrap();
    assert_eq!((who, what), (3, Ok(CompletionKey(77))), "the latest waiter (T3) must get it");
    assert!(rx.recv_timeout(quiet()).is_err(), "T1 and T2 stay blocked");
    port.close();
    for t in threads {
        t.join().unwrap();
    }
    let rest: Vec<_> = rx.try_iter().map(|(_, r)| r).collect();
    assert_eq!(rest, vec![Err(GetError::Closed), Err(GetError::Closed)]);
});

backend_test!(case_42_running_thread_keeps_getting_packets, |b| {
    let port: CompletionPort<()> = b.concurrency(1).build().unwrap();
    port.post(0, CompletionKey(100), ()).unwrap();
    let first = port.get(Some(deadline())).unwrap();
    assert_eq!(first.key(), CompletionKey(100));
    // A (this thread) is running. B waits.
    let p = port.clone();
    let bt = thread::spawn(move || p.get(Some(Duration::from_secs(2))).map(|c| c.key()));
    eventually("B to block", || (port.stats().waiters == 1).then_some(()));
    for k in 1..=5 {
        port.post(0, CompletionKey(k), ()).unwrap();
    }
    for k in 1..=5 {
        assert_eq!(port.get(Some(deadline())).unwrap().key(), CompletionKey(k));
    }
    // B never got one: it was not released while A kept running.
    assert_eq!(bt.join().unwrap(), Err(GetError::TimedOut));
});

backend_test!(case_43_concurrency_zero_means_cpus, |b| {
    let port: CompletionPort<()> = b.concurrency(0).build().unwrap();
    let cpus = thread::available_parallelism().unwrap().get();
    assert_eq!(port.concurrency(), cpus);
    for k in 0..=cpus as u64 {
        port.post(0, CompletionKey(k), ()).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(cpus + 1));
    let spinners: Vec<_> = (0..cpus)
        .map(|_| {
            let (p, s, st) = (port.clone(), stop.clone(), started.clone());
            thread::spawn(move || {
                let _c = p.get(Some(deadline())).unwrap();
                st.wait();
                while !s.load(Ordering::Relaxed) {
                    thread::yield_now();
                }
            })
        })
        .collect();
    started.wait();
    let p = port.clone();
    let extra =
        thread::spawn(move || p.get(Some(Duration::from_millis(500))).map(|_| ())).join().unwrap();
    assert_eq!(extra, Err(GetError::TimedOut));
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
});

backend_test!(case_45_thread_back_from_timeout_counts_as_running, |b| {
    let port: CompletionPort<()> = b.concurrency(1).build().unwrap();
    let (p, p2) = (port.clone(), port.clone());
    let (a_timed_out, a_timed_out_rx) = mpsc::channel();
    let (go_block, go_block_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let a = thread::spawn(move || {
        assert_eq!(p.get(Some(Duration::from_millis(10))).unwrap_err(), GetError::TimedOut);
        a_timed_out.send(()).unwrap();
        go_block_rx.recv_timeout(deadline()).unwrap();
        let _g = iocp::blocking();
        done_rx.recv_timeout(deadline()).unwrap();
    });
    a_timed_out_rx.recv_timeout(deadline()).unwrap();
    port.post(0, CompletionKey(5), ()).unwrap();
    let (b_tx, b_rx) = mpsc::channel();
    let bt = thread::spawn(move || b_tx.send(p2.get(Some(deadline())).map(|c| c.key())).unwrap());
    // A, back from its timeout, counts as running: B stays blocked.
    assert!(b_rx.recv_timeout(quiet()).is_err());
    // A blocks visibly: B gets the packet.
    go_block.send(()).unwrap();
    assert_eq!(b_rx.recv_timeout(deadline()).unwrap(), Ok(CompletionKey(5)));
    done_tx.send(()).unwrap();
    a.join().unwrap();
    bt.join().unwrap();
});

backend_test!(thread_exit_gives_its_running_slot_back, |b| {
    let port: CompletionPort<()> = b.concurrency(1).build().unwrap();
    port.post(0, CompletionKey(1), ()).unwrap();
    port.post(0, CompletionKey(2), ()).unwrap();
    let p = port.clone();
    thread::spawn(move || {
        p.get(Some(deadline())).unwrap();
    })
    .join()
    .unwrap();
    // The thread that ran packet 1 exited: packet 2 is available to another thread.
    assert_eq!(port.get(Some(deadline())).unwrap().key(), CompletionKey(2));
});

backend_test!(case_44_get_on_another_port_releases_the_first, |b| {
    let x: CompletionPort<()> = b.clone().concurrency(1).build().unwrap();
    let y: CompletionPort<()> = b.concurrency(1).build().unwrap();
    x.post(0, CompletionKey(1), ()).unwrap();
    let (x2, y2) = (x.clone(), y.clone());
    let (a_has, a_has_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let a = thread::spawn(move || {
        x2.get(Some(deadline())).unwrap();
        a_has.send(()).unwrap();
        go_rx.recv_timeout(deadline()).unwrap();
        // A moves to port Y: its slot on X is given back.
        let _ = y2.get(Some(Duration::from_millis(100)));
    });
    a_has_rx.recv_timeout(deadline()).unwrap();
    x.post(0, CompletionKey(2), ()).unwrap();
    let x3 = x.clone();
    let (b_tx, b_rx) = mpsc::channel();
    let bt = thread::spawn(move || b_tx.send(x3.get(Some(deadline())).map(|c| c.key())).unwrap());
    assert!(b_rx.recv_timeout(quiet()).is_err(), "B must wait while A holds X's only slot");
    go.send(()).unwrap();
    assert_eq!(b_rx.recv_timeout(deadline()).unwrap(), Ok(CompletionKey(2)));
    a.join().unwrap();
    bt.join().unwrap();
});

backend_test!(stats_count_posts_and_dequeues, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    for _ in 0..10 {
        port.post(0, CompletionKey(0), ()).unwrap();
    }
    let mut out = Vec::new();
    port.get_many(&mut out, 64, Some(deadline())).unwrap();
    let s = port.stats();
    assert_eq!((s.posted, s.dequeued, s.queued, s.cq_overflow), (10, 10, 0, 0));
});

#[test]
fn concurrent_posters_and_getters_lose_nothing_smoke() {
    let port: CompletionPort<u64> = iocp_testkit::auto_builder().concurrency(4).build().unwrap();
    let total = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let (p, t) = (port.clone(), total.clone());
            thread::spawn(move || {
                while let Ok(c) = p.get(Some(deadline())) {
                    if *c.context() == u64::MAX {
                        break;
                    }
                    t.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..10_000 {
        port.post(0, CompletionKey(0), i).unwrap();
    }
    port.post(0, CompletionKey(0), u64::MAX).unwrap();
    port.post(0, CompletionKey(0), u64::MAX).unwrap();
    for c in consumers {
        c.join().unwrap();
    }
    assert_eq!(total.load(Ordering::Relaxed), 10_000);
}

backend_test!(a_submit_batch_starts_its_operations_when_it_drops, |b| {
    use std::io::Read;
    let port: CompletionPort<usize> = b.build().unwrap();
    let mut pairs = Vec::new();
    for i in 0..8 {
        let (client, server) = iocp_testkit::tcp_pair();
        client.set_nonblocking(true).unwrap();
        pairs.push((client, port.associate(server, CompletionKey(i)).unwrap()));
    }
    let batch = port.submit_batch();
    for (i, (_, h)) in pairs.iter().enumerate() {
        h.send(vec![i as u8; 100], i).unwrap();
    }
    if port.backend().kind() == iocp::BackendKind::Uring {
        // Nothing entered the ring yet: no byte has left.
        let mut buf = [0u8; 1];
        let e = pairs[0].0.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
    drop(batch);
    let mut seen = [false; 8];
    for _ in 0..8 {
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!(c.result().unwrap(), 100);
        seen[*c.context()] = true;
    }
    assert!(seen.iter().all(|&s| s));
    for (i, (client, _)) in pairs.iter_mut().enumerate() {
        client.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 100];
        client.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == i as u8));
    }
});

backend_test!(stats_while_the_poller_reaps_never_deadlocks, |b| {
    // `stats` once took the SQ lock, then the CQ lock; the poller's reap takes them the other
    // way round. Hammer both for a while; a deadlock fails the test at the deadline.
    use std::io::{Read, Write};
    let port = Arc::new(b.concurrency(2).build::<usize>().unwrap());
    let (mut client, server) = iocp_testkit::tcp_pair();
    client.set_read_timeout(Some(deadline())).unwrap();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let (tx, rx) = mpsc::channel();
    let p = port.clone();
    let worker = thread::spawn(move || {
        let mut n = 0usize;
        h.recv(Vec::with_capacity(64), 0).unwrap();
        while n < 3000 {
            let mut c = p.get(Some(deadline())).unwrap();
            let buf = c.take_buf().unwrap();
            match c.result().unwrap() {
                0 => break,
                _ if !buf.is_empty() && c.context() % 2 == 0 => {
                    h.send(buf, n * 2 + 1).unwrap();
                }
                _ => {
                    let mut next = buf;
                    next.clear();
                    next.reserve_exact(64);
                    h.recv(next, n * 2 + 2).unwrap();
                }
            }
            n += 1;
        }
        tx.send(()).unwrap();
    });
    let p = port.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let poller = thread::spawn(move || {
        let mut calls = 0u64;
        while !s2.load(Ordering::Relaxed) {
            let _ = p.stats();
            calls += 1;
        }
        calls
    });
    let mut buf = [0u8; 8];
    for i in 0..1500u64 {
        client.write_all(&i.to_le_bytes()).unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf), i);
    }
    drop(client);
    rx.recv_timeout(deadline()).expect("the worker finished (no deadlock)");
    stop.store(true, Ordering::Relaxed);
    assert!(poller.join().unwrap() > 0);
    worker.join().unwrap();
});
