//! The worker pool on both backends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use iocp::CompletionKey;
use iocp_server::{Pool, PoolConfig};
use iocp_testkit::{backend_test, deadline};

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + deadline();
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

backend_test!(every_packet_is_handled_once_by_some_worker, |b| {
    let port = Arc::new(b.concurrency(4).build::<u64>().unwrap());
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let (s, t) = (seen.clone(), threads.clone());
    let cfg = PoolConfig { threads: 4, batch: 8, ..PoolConfig::default() };
    let pool = Pool::start(port.clone(), &cfg, move |c| {
        assert!(s.lock().unwrap().insert(*c.context()), "handled twice");
        t.lock().unwrap().insert(thread::current().id());
    })
    .unwrap();
    assert_eq!(pool.threads(), 4);
    for i in 0..10_000u64 {
        port.post(0, CompletionKey(1), i).unwrap();
    }
    let r = pool.stop(deadline());
    assert!(r.drained);
    assert_eq!(r.handled, 10_000);
    assert_eq!(seen.lock().unwrap().len(), 10_000);
    assert!(port.is_closed(), "stop closes the port");
});

backend_test!(a_panicking_handler_is_counted_and_the_pool_goes_on, |b| {
    let port = Arc::new(b.build::<u32>().unwrap());
    let ok = Arc::new(AtomicUsize::new(0));
    let ok2 = ok.clone();
    let cfg = PoolConfig { threads: 2, batch: 1, ..PoolConfig::default() };
    let pool = Pool::start(port.clone(), &cfg, move |c| {
        assert!(*c.context() % 10 != 0, "boom {}", c.context());
        ok2.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    for i in 0..100u32 {
        port.post(0, CompletionKey(0), i).unwrap();
    }
    wait_until("90 handled, 10 panics", || ok.load(Ordering::SeqCst) == 90 && pool.panics() == 10);
    let r = pool.stop(deadline());
    assert_eq!((r.handled, r.panics), (100, 10));
    assert_eq!(ok.load(Ordering::SeqCst), 90, "both threads survived every panic");
});

backend_test!(stop_waits_for_pending_operations_then_joins, |b| {
    let port = Arc::new(b.clone().build::<u8>().unwrap());
    let (client, server) = iocp_testkit::tcp_pair();
    let h = port.associate(server, CompletionKey(3)).unwrap();
    h.recv(Vec::with_capacity(16), 1).unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let pool =
        Pool::start(port.clone(), &PoolConfig { threads: 2, ..PoolConfig::default() }, move |c| {
            g.store(c.bytes() + 1000, Ordering::SeqCst);
        })
        .unwrap();
    // Pending receive: stop waits for it; the peer's bytes complete it within the grace.
    let writer = thread::spawn(move || {
        use std::io::Write;
        let mut client = client;
        thread::sleep(Duration::from_millis(100));
        client.write_all(b"late").unwrap();
        client
    });
    let r = pool.stop(deadline());
    assert!(r.drained);
    assert_eq!(got.load(Ordering::SeqCst), 1004);
    drop(writer.join().unwrap());
    // And a stop whose grace runs out aborts what is pending and still joins.
    let port = Arc::new(b.build::<u8>().unwrap());
    let (_c2, s2) = iocp_testkit::tcp_pair();
    let h2 = port.associate(s2, CompletionKey(4)).unwrap();
    h2.recv(Vec::with_capacity(16), 2).unwrap();
    let pool =
        Pool::start(port, &PoolConfig { threads: 2, ..PoolConfig::default() }, |_| {}).unwrap();
    let t0 = Instant::now();
    let r = pool.stop(Duration::from_millis(50));
    assert!(!r.drained);
    assert!(t0.elapsed() < deadline());
    drop(h);
});
