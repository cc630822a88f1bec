//! A completion in the poller's hands (reaped from the kernel, not yet queued) is still counted:
//! in flight until it is queued, so [`CompletionPort::stats`] never shows it nowhere and
//! [`CompletionPort::is_idle`] never reads idle under it. Before, the drivers dropped it from
//! their in-flight count as they reaped it and the port queued it only later: a `Pool::stop`
//! that polled the counters in that window closed the port under it and the completion was
//! lost (CI caught `stop_waits_for_pending_operations_then_joins` doing so once).
//!
//! `iocp::fault::delay_reaped` holds every poller in that hand-over, process wide: this file is
//! its own test binary so that nothing else runs under it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use iocp::{Completion, CompletionKey, CompletionPort, GetError, Handle, Payload, PortBuilder};
use iocp_testkit::{backend_test, deadline, tcp_pair};

/// A port from `b` whose pollers hold every reaped completion 200 ms before queueing it.
fn held_port(b: PortBuilder) -> Arc<CompletionPort<u32>> {
    iocp::fault::delay_reaped(Duration::from_millis(200));
    Arc::new(b.build().unwrap())
}

/// A connected pair whose server side has a receive pending (context 7).
fn pending_receive(port: &CompletionPort<u32>) -> (TcpStream, Handle<u32>) {
    let (client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), 7).unwrap();
    (client, h)
}

type Got = thread::JoinHandle<Result<Completion<u32>, GetError>>;

/// Sends `ping` to the receive and dequeues its completion on a thread of its own, which sets
/// the flag once its `get` has returned (it still counts as running then: it has not called
/// `get` again).
fn ping_and_get(port: &Arc<CompletionPort<u32>>, mut client: TcpStream) -> (Arc<AtomicBool>, Got) {
    client.write_all(b"ping").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (p, d) = (port.clone(), done.clone());
    let getter = thread::spawn(move || {
        let c = p.get(Some(deadline()));
        d.store(true, Ordering::SeqCst);
        drop(client);
        c
    });
    (done, getter)
}

backend_test!(a_completion_the_poller_holds_is_counted_and_the_port_is_not_idle, |b| {
    let port = held_port(b);
    assert!(port.is_idle(), "a new port is idle: {:?}", port.stats());
    let (client, h) = pending_receive(&port);
    assert!(!port.is_idle(), "a receive is pending: {:?}", port.stats());
    let (done, getter) = ping_and_get(&port, client);
    let mut samples = 0u64;
    loop {
        let (s, idle) = (port.stats(), port.is_idle());
        // Read after the counters: while it is false, the receive was in flight, on its way,
        // queued or in the getter's hands (running) when they were read.
        if done.load(Ordering::SeqCst) {
            break;
        }
        assert!(
            s.in_flight + s.queued + s.running > 0,
            "after {samples} samples the receive is counted nowhere: {s:?}"
        );
        assert!(!idle, "after {samples} samples the port reads idle under the receive: {s:?}");
        samples += 1;
    }
    let c = getter.join().unwrap().expect("the receive's completion");
    assert_eq!((*c.context(), c.bytes()), (7, 4));
    assert!(matches!(c.payload(), Payload::Recv(b) if b == b"ping"), "{:?}", c.payload());
    // The hold lasted 200 ms: the loop sampled it many times, not just its edges.
    assert!(samples > 10, "only {samples} samples");
    // (The hold stays on: the other backend's case may be running beside this one.)
    drop(h);
});

// The same hand-over, seen by kind: the held completion is `reaped`, not any kind. Before,
// epoll counted it as a file operation (the remainder of its in-flight count) and io_uring
// not at all (its kinds summed below `stats().in_flight`).
backend_test!(a_completion_the_poller_holds_counts_as_reaped_by_kind, |b| {
    let port = held_port(b);
    let (client, h) = pending_receive(&port);
    let k = port.in_flight_by_kind();
    assert_eq!((k.receive, k.reaped, k.total()), (1, 0, 1), "pending: {k:?}");
    let (done, getter) = ping_and_get(&port, client);
    let mut held = 0u64;
    while !done.load(Ordering::SeqCst) {
        let k = port.in_flight_by_kind();
        assert_eq!(k.file, 0, "no file operation exists: {k:?}");
        assert!(k.total() <= 1, "one operation: {k:?}");
        if k.reaped == 1 {
            held += 1;
        }
    }
    let c = getter.join().unwrap().expect("the receive's completion");
    assert_eq!((*c.context(), c.bytes()), (7, 4));
    // The hold lasted 200 ms: the receive was seen as reaped many times.
    assert!(held > 10, "the held receive was counted as reaped {held} times");
    assert_eq!(port.in_flight_by_kind().total(), 0, "{:?}", port.in_flight_by_kind());
    drop(h);
});
