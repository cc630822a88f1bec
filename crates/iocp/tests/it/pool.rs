//! Registered receive buffers: receives that borrow a buffer only when data arrives.

use std::io::Write;

use iocp::{CompletionKey, CompletionPort, GetError, Payload};
use iocp_testkit::{backend_test, deadline, quiet, tcp_pair};

backend_test!(pooled_receive_lends_a_buffer_and_drop_returns_it, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let pool = port.buffer_pool(4, 1024).unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv_pooled(&pool, ()).unwrap();
    assert_eq!(pool.lent(), 0, "a waiting receive pins no buffer");
    client.write_all(b"pooled bytes").unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 12);
    let Payload::RecvPooled(Some(buf)) = std::mem::replace(c.payload_mut(), Payload::Posted) else {
        panic!("{c:?}")
    };
    assert_eq!(&buf[..], b"pooled bytes");
    assert_eq!(pool.lent(), 1);
    drop(buf);
    assert_eq!(pool.lent(), 0);
});

backend_test!(idle_connections_pin_no_buffer, |b| {
    let port: CompletionPort<usize> = b.build().unwrap();
    let pool = port.buffer_pool(8, 256).unwrap();
    let mut pairs = Vec::new();
    for i in 0..100 {
        let (client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(i as u64)).unwrap();
        h.recv_pooled(&pool, i).unwrap();
        pairs.push((client, h));
    }
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    assert_eq!(pool.lent(), 0);
    for (client, _) in pairs.iter_mut().take(5) {
        client.write_all(b"x").unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = port.get(Some(deadline())).unwrap();
        assert!(*c.context() < 5);
        held.push(std::mem::replace(c.payload_mut(), Payload::Posted));
    }
    assert_eq!(pool.lent(), 5);
    drop(held);
    assert_eq!(pool.lent(), 0);
});

backend_test!(exhausted_pool_fails_with_enobufs_and_keeps_the_data, |b| {
    let port: CompletionPort<usize> = b.build().unwrap();
    let pool = port.buffer_pool(1, 64).unwrap();
    let (mut c1, s1) = tcp_pair();
    let (mut c2, s2) = tcp_pair();
    let h1 = port.associate(s1, CompletionKey(1)).unwrap();
    let h2 = port.associate(s2, CompletionKey(2)).unwrap();
    h1.recv_pooled(&pool, 1).unwrap();
    c1.write_all(b"first").unwrap();
    let mut first = port.get(Some(deadline())).unwrap();
    assert_eq!(first.result().unwrap(), 5);
    // The only buffer is held: the next receive finds none when its data arrives.
    h2.recv_pooled(&pool, 2).unwrap();
    c2.write_all(b"second").unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((*c.context(), c.raw_os_error()), (2, Some(libc::ENOBUFS)));
    drop(std::mem::replace(first.payload_mut(), Payload::Posted));
    // With the buffer back, the data is still there to receive.
    h2.recv_pooled(&pool, 2).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    let Payload::RecvPooled(Some(buf)) = std::mem::replace(c.payload_mut(), Payload::Posted) else {
        panic!("{c:?}")
    };
    assert_eq!(&buf[..], b"second");
});

backend_test!(pool_of_another_port_is_refused, |b| {
    let port: CompletionPort<()> = b.clone().build().unwrap();
    let other: CompletionPort<()> = b.build().unwrap();
    let pool = other.buffer_pool(2, 64).unwrap();
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let e = h.recv_pooled(&pool, ()).unwrap_err();
    assert_eq!(e.error().kind(), std::io::ErrorKind::InvalidInput);
    assert!(port.buffer_pool(0, 64).is_err());
    assert!(port.buffer_pool(70_000, 64).is_err());
});

backend_test!(pooled_receive_sees_peer_close_as_zero_bytes, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let pool = port.buffer_pool(2, 64).unwrap();
    let (client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv_pooled(&pool, ()).unwrap();
    drop(client);
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 0);
    drop(c);
    assert_eq!(pool.lent(), 0);
});
