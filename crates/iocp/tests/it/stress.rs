//! Many threads and many operations at once: exactly one packet per operation, none lost.

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use iocp::{CompletionKey, CompletionPort, GetError};
use iocp_testkit::{backend_test, deadline, quiet, tcp_pair};

backend_test!(many_posters_and_getters_deliver_every_packet_once, |b| {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 20_000;
    let port: CompletionPort<u64> = b.concurrency(4).build().unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..4)
        .map(|i| {
            let (p, seen, count) = (port.clone(), seen.clone(), count.clone());
            thread::spawn(move || {
                let mut batch = Vec::new();
                let mut local = Vec::new();
                loop {
                    let r = if i % 2 == 0 {
                        p.get(Some(Duration::from_millis(500))).map(|c| batch.push(c))
                    } else {
                        p.get_many(&mut batch, 64, Some(Duration::from_millis(500))).map(|_| ())
                    };
                    match r {
                        Ok(()) => {
                            for c in batch.drain(..) {
                                local.push(*c.context());
                            }
                        }
                        Err(GetError::TimedOut)
                            if count.load(Ordering::Relaxed) as u64 >= PRODUCERS * PER =>
                        {
                            break;
                        }
                        Err(GetError::TimedOut) => {}
                        Err(GetError::Closed) => break,
                        Err(e) => panic!("{e}"),
                    }
                    count.fetch_add(local.len(), Ordering::Relaxed);
                    let mut s = seen.lock().unwrap();
                    for v in local.drain(..) {
                        assert!(s.insert(v), "packet {v} delivered twice");
                    }
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let port = port.clone();
            thread::spawn(move || {
                for i in 0..PER {
                    port.post(0, CompletionKey(p), p * PER + i).unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    for c in consumers {
        c.join().unwrap();
    }
    assert_eq!(seen.lock().unwrap().len() as u64, PRODUCERS * PER);
    let s = port.stats();
    assert_eq!((s.posted, s.dequeued, s.queued), (PRODUCERS * PER, PRODUCERS * PER, 0));
});

backend_test!(n_operations_on_n_sockets_give_exactly_n_packets_across_threads, |b| {
    const N: usize = 200;
    let port: CompletionPort<usize> = b.concurrency(4).build().unwrap();
    let mut clients = Vec::new();
    let mut handles = Vec::new();
    for i in 0..N {
        let (client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(i as u64)).unwrap();
        h.recv(Vec::with_capacity(32), i).unwrap();
        clients.push(client);
        handles.push(h);
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (p, seen) = (port.clone(), seen.clone());
            thread::spawn(move || {
                while let Ok(c) = p.get(Some(Duration::from_millis(500))) {
                    assert_eq!(c.result().unwrap(), 4);
                    seen.lock().unwrap().push(*c.context());
                }
            })
        })
        .collect();
    for c in &mut clients {
        c.write_all(b"ping").unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "exactly one packet per operation");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    assert_eq!(port.stats().in_flight, 0);
});

backend_test!(close_while_threads_wait_and_ops_pend, |b| {
    let port: CompletionPort<()> = b.concurrency(4).build().unwrap();
    let mut handles = Vec::new();
    let mut clients = Vec::new();
    for i in 0..16 {
        let (client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(i)).unwrap();
        h.recv(Vec::with_capacity(16), ()).unwrap();
        handles.push(h);
        clients.push(client);
    }
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let p = port.clone();
            thread::spawn(move || p.get(Some(deadline())).map(|_| ()))
        })
        .collect();
    iocp_testkit::eventually("4 waiters", || (port.stats().waiters == 4).then_some(()));
    port.close();
    for w in waiters {
        assert_eq!(w.join().unwrap(), Err(GetError::Closed));
    }
    // Operations refused after close; dropping everything frees nothing the kernel holds.
    assert!(handles[0].recv(Vec::with_capacity(1), ()).is_err());
    drop(handles);
});

backend_test!(port_dropped_with_operations_in_flight, |b| {
    for _ in 0..20 {
        let port: CompletionPort<Vec<u8>> = b.clone().build().unwrap();
        let (client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(1)).unwrap();
        h.recv(Vec::with_capacity(1 << 16), vec![0; 128]).unwrap();
        h.recv_ready(Vec::new()).unwrap();
        drop(port);
        drop(h);
        drop(client);
    }
});

backend_test!(tiny_cq_with_ten_thousand_operations_loses_nothing, |b| {
    const SOCKETS: usize = 10;
    const OPS: usize = 10_000;
    let port: CompletionPort<usize> = b.ring_entries(4).cq_entries(8).build().unwrap();
    let mut handles = Vec::new();
    let mut readers = Vec::new();
    for i in 0..SOCKETS {
        let (mut client, server) = tcp_pair();
        handles.push(port.associate(server, CompletionKey(i as u64)).unwrap());
        readers.push(thread::spawn(move || {
            use std::io::Read;
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            client.set_read_timeout(Some(deadline())).unwrap();
            while total < OPS / SOCKETS * 16 {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0);
                total += n;
            }
            total
        }));
    }
    for i in 0..OPS {
        handles[i % SOCKETS].send(vec![b'x'; 16], i).unwrap();
    }
    let mut seen = vec![false; OPS];
    for _ in 0..OPS {
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!(c.result().unwrap(), 16);
        assert!(!std::mem::replace(&mut seen[*c.context()], true), "duplicate");
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), OPS / SOCKETS * 16);
    }
    let s = port.stats();
    // On io_uring the 10,000 sends outnumber the CQ of 8: the kernel keeps the extra CQEs
    // (IORING_FEAT_NODROP) and none is dropped.
    assert_eq!((s.cq_overflow, s.in_flight, s.backlog), (0, 0, 0));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

// An echo server on a port whose SQ ring and CQ hold 64 entries each, with 5,000 connections
// open at once: the idle receives outnumber the CQ 80 to 1, yet every connection is accepted,
// echoes once and closes. (The in-flight count must not be bounded by the CQ: receives parked
// in the kernel would keep the re-posted accepts out of it for good.)
backend_test!(five_thousand_connections_on_a_64_entry_ring_and_cq, |b| {
    use std::io::Read;
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    use iocp::{Handle, Payload};

    const CONNS: usize = 5_000;
    const ACCEPTS: usize = 16;
    if !iocp_testkit::raise_fd_limit(2 * CONNS as u64 + 256) {
        return;
    }
    enum Ctx {
        Accept,
        Conn(Handle<Ctx>),
    }
    let port: Arc<CompletionPort<Ctx>> =
        Arc::new(b.ring_entries(64).cq_entries(64).build().unwrap());
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    sock.listen(1024).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let listener = port.associate(sock, CompletionKey(0)).unwrap();
    for _ in 0..ACCEPTS {
        listener.accept(Vec::new(), Ctx::Accept).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let closed = Arc::new(AtomicUsize::new(0));
    let (all_closed, all_closed_rx) = mpsc::channel::<()>();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (port, listener, stop) = (port.clone(), listener.clone(), stop.clone());
            let (errors, closed, all_closed) = (errors.clone(), closed.clone(), all_closed.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let Ok(mut c) = port.get(Some(Duration::from_millis(50))) else { continue };
                    let res = c.result();
                    let accepted = c.take_accepted();
                    match c.into_parts() {
                        (Ctx::Accept, _) => {
                            let sock = match (res, accepted.and_then(|a| a.into_parts().0)) {
                                (Ok(_), Some(s)) => s,
                                (r, _) => {
                                    errors.lock().unwrap().push(format!("accept: {r:?}"));
                                    continue;
                                }
                            };
                            let h = port.associate(sock, CompletionKey(1)).unwrap();
                            h.recv(Vec::with_capacity(64), Ctx::Conn(h.clone())).unwrap();
                            listener.accept(Vec::new(), Ctx::Accept).unwrap();
                        }
                        (Ctx::Conn(h), payload) => match (res, payload) {
                            (Ok(0), _) => {
                                h.close();
                                if closed.fetch_add(1, Ordering::AcqRel) + 1 == CONNS {
                                    all_closed.send(()).unwrap();
                                }
                            }
                            (Ok(_), Payload::Recv(buf)) => {
                                h.send(buf, Ctx::Conn(h.clone())).unwrap();
                            }
                            (Ok(_), Payload::Send(mut buf)) => {
                                buf.clear();
                                h.recv(buf, Ctx::Conn(h.clone())).unwrap();
                            }
                            (r, _) => {
                                errors.lock().unwrap().push(format!("connection: {r:?}"));
                                h.close();
                            }
                        },
                    }
                }
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let s = TcpStream::connect_timeout(&addr, deadline()).unwrap_or_else(|e| {
            panic!("connection {i} of {CONNS} was not accepted: {e} (stats {:?})", port.stats())
        });
        s.set_read_timeout(Some(deadline())).unwrap();
        clients.push(s);
    }
    // Every connection is open (and parked on a receive) before any sends.
    for (i, s) in clients.iter_mut().enumerate() {
        s.write_all(format!("hello {i:05}").as_bytes()).unwrap();
    }
    for (i, s) in clients.iter_mut().enumerate() {
        let want = format!("hello {i:05}");
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("echo {i}: {e}"));
        assert_eq!(got, want.as_bytes());
    }
    drop(clients);
    let done = all_closed_rx.recv_timeout(deadline());
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().unwrap();
    }
    assert!(done.is_ok(), "only {} of {CONNS} closes seen", closed.load(Ordering::Acquire));
    assert_eq!(*errors.lock().unwrap(), Vec::<String>::new());
    let s = port.stats();
    assert_eq!(s.cq_overflow, 0);
    assert_eq!(s.in_flight, ACCEPTS as u64, "only the posted accepts are left: {s:?}");
    listener.close();
});
