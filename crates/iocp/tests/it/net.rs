//! Socket operations through the port (iocp-semantics §15 cases 18-22, 29, 30, 52-58).

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;

use iocp::{CompletionKey, CompletionPort, GetError, Payload};
use iocp_testkit::{backend_test, closed_addr, deadline, listener, quiet, reset, tcp_pair};

fn errno(c: &iocp::Completion<impl Sized>) -> Option<i32> {
    c.raw_os_error()
}

backend_test!(case_18_data_already_waiting_gives_exactly_one_packet, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    client.write_all(b"hello").unwrap();
    // The bytes are waiting before the receive starts (a blocking peek, with a deadline).
    server.set_read_timeout(Some(deadline())).unwrap();
    assert_eq!(server.peek(&mut [0u8; 8]).unwrap(), 5);
    let h = port.associate(server, CompletionKey(3)).unwrap();
    h.recv(Vec::with_capacity(64), 11).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.bytes(), *c.context()), (CompletionKey(3), 5, 11));
    assert_eq!(c.take_buf().unwrap(), b"hello");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(case_19_peer_closed_gives_one_packet_with_zero_bytes, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (client, server) = tcp_pair();
    drop(client);
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 0);
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

// Deviation (docs/DESIGN.md): Windows fails these synchronously with no packet; here every
// accepted start yields one packet, and the kernel's error arrives in it.
backend_test!(case_20_reset_peer_fails_recv_and_send_in_their_packets, |b| {
    let port: CompletionPort<&'static str> = b.build().unwrap();
    let (client, server) = tcp_pair();
    reset(client);
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), "recv").unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((*c.context(), errno(&c)), ("recv", Some(libc::ECONNRESET)));
    h.send(vec![1; 16], "send").unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(*c.context(), "send");
    assert!(matches!(errno(&c), Some(libc::EPIPE | libc::ECONNRESET)), "{c:?}");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(case_21_recv_on_unconnected_socket_fails_with_enotconn, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(16), ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(errno(&c), Some(libc::ENOTCONN));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(case_22_n_receives_on_n_sockets_give_n_packets, |b| {
    const N: u64 = 32;
    let port: CompletionPort<u64> = b.build().unwrap();
    let mut clients = Vec::new();
    let mut handles = Vec::new();
    for i in 0..N {
        let (client, server) = tcp_pair();
        let h = port.associate(server, CompletionKey(i)).unwrap();
        h.recv(Vec::with_capacity(8), i).unwrap();
        clients.push(client);
        handles.push(h);
    }
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    let mut seen = HashSet::new();
    for _ in 0..N {
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!(c.bytes(), 1);
        assert_eq!(c.key().0, *c.context(), "each packet carries its own handle's key");
        assert!(seen.insert(*c.context()), "duplicate packet for op {}", c.context());
    }
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(case_29_pending_recv_then_peer_reset_fails_with_econnreset, |b| {
    let port: CompletionPort<u8> = b.build().unwrap();
    let (client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(29)).unwrap();
    h.recv(Vec::with_capacity(16), 7).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    reset(client);
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.bytes(), *c.context()), (CompletionKey(29), 0, 7));
    assert_eq!(errno(&c), Some(libc::ECONNRESET));
    assert_eq!(c.take_buf().unwrap().capacity(), 16, "the buffer comes back with the failure");
});

backend_test!(case_30_connect_refused_fails_with_econnrefused, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let h = port.associate(s, CompletionKey(30)).unwrap();
    h.connect(closed_addr(), Vec::new(), ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.bytes(), errno(&c)), (CompletionKey(30), 0, Some(libc::ECONNREFUSED)));
});

backend_test!(case_52_accept_arrives_with_the_listener_key, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, CompletionKey(125)).unwrap();
    // Without an initial receive: completes on connect, bytes 0.
    lh.accept(Vec::new(), ()).unwrap();
    let _c1 = TcpStream::connect(addr).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.result().unwrap()), (CompletionKey(125), 0));
    let acc = c.take_accepted().unwrap();
    let sock = acc.socket().unwrap();
    let accept_key = port.associate(sock.try_clone().unwrap(), CompletionKey(236));
    assert!(accept_key.is_ok());
    // With an initial receive: completes only when data arrived, bytes = 1.
    lh.accept(Vec::with_capacity(64), ()).unwrap();
    let mut c2 = TcpStream::connect(addr).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut, "no data yet");
    c2.write_all(b"!").unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.result().unwrap()), (CompletionKey(125), 1));
    assert_eq!(c.take_accepted().unwrap().data(), b"!");
});

backend_test!(case_53_accept_reports_local_and_peer_addresses, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, CompletionKey(1)).unwrap();
    lh.accept(Vec::new(), ()).unwrap();
    let client = TcpStream::connect(addr).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    let acc = c.take_accepted().unwrap();
    assert_eq!(acc.peer_addr().unwrap().as_socket().unwrap(), client.local_addr().unwrap());
    assert_eq!(acc.local_addr().unwrap().as_socket().unwrap(), client.peer_addr().unwrap());
});

backend_test!(case_54_connect_with_initial_send, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let h = port.associate(s, CompletionKey(54)).unwrap();
    h.connect(addr, b"one".to_vec(), ()).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.result().unwrap()), (CompletionKey(54), 3));
    assert_eq!(c.take_buf().unwrap(), b"one");
    let (mut peer, _) = l.accept().unwrap();
    let mut got = [0u8; 3];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"one");
    // Deviation: an unbound socket also connects (Linux binds it implicitly).
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h2 = port.associate(s, CompletionKey(55)).unwrap();
    h2.connect(addr, Vec::new(), ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.result().unwrap()), (CompletionKey(55), 0));
});

backend_test!(case_56_scatter_receive_fills_buffers_in_order, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.recv_vectored(vec![Vec::with_capacity(2), Vec::with_capacity(3), Vec::with_capacity(5)], ())
        .unwrap();
    client.write_all(b"0123456789").unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 10);
    let bufs = c.take_bufs().unwrap();
    assert_eq!(bufs, vec![b"01".to_vec(), b"234".to_vec(), b"56789".to_vec()]);
});

backend_test!(gather_send_sends_every_buffer_in_order, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.send_vectored(vec![b"ab".to_vec(), Vec::new(), b"cde".to_vec()], ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 5);
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcde");
});

backend_test!(case_58_zero_byte_receive_completes_on_readable_and_on_close, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let raw = server.try_clone().unwrap();
    let h = port.associate(server, CompletionKey(58)).unwrap();
    h.recv_ready(()).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    client.write_all(b"12345").unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.result().unwrap()), (CompletionKey(58), 0));
    assert!(matches!(c.payload(), Payload::Ready));
    // The data is still there for a plain non-blocking read.
    let mut buf = [0u8; 16];
    let n = rustix::net::recv(&raw, &mut buf, rustix::net::RecvFlags::DONTWAIT).unwrap().0;
    assert_eq!(&buf[..n], b"12345");
    // Graceful close: the zero-byte receive completes too, and recv then reads 0.
    h.recv_ready(()).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 0);
    let n = rustix::net::recv(&raw, &mut buf, rustix::net::RecvFlags::DONTWAIT).unwrap().0;
    assert_eq!(n, 0);
});

backend_test!(large_send_completes_whole_while_the_peer_reads_slowly, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let data: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let expect = data.clone();
    h.send(data, ()).unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        while got.len() < expect.len() {
            let n = client.read(&mut chunk).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == expect, "bytes arrived in order, none lost");
    });
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 8 << 20);
    reader.join().unwrap();
});

backend_test!(echo_round_trips_keep_buffers_and_contexts, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(9)).unwrap();
    for i in 0..200u32 {
        h.recv(Vec::with_capacity(64), i).unwrap();
        let msg = format!("message {i}");
        client.write_all(msg.as_bytes()).unwrap();
        let mut c = port.get(Some(deadline())).unwrap();
        assert_eq!(*c.context(), i);
        let buf = c.take_buf().unwrap();
        assert_eq!(buf, msg.as_bytes());
        h.send(buf, i + 1000).unwrap();
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!((*c.context(), c.bytes()), (i + 1000, msg.len()));
        let mut back = vec![0u8; msg.len()];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
});

backend_test!(refused_start_hands_buffers_back_and_yields_no_packet, |b| {
    let port: CompletionPort<u8> = b.build().unwrap();
    let (_client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let err = h.recv(Vec::with_capacity(0), 1).unwrap_err();
    assert_eq!(err.error().kind(), ErrorKind::InvalidInput);
    let (_, ctx, payload) = err.into_parts();
    assert_eq!(ctx, 1);
    assert!(matches!(payload, Payload::Recv(_)));
    h.close();
    let err = h.send(b"late".to_vec(), 2).unwrap_err();
    assert_eq!(err.error().kind(), ErrorKind::BrokenPipe);
    assert!(matches!(err.into_parts().2, Payload::Send(ref v) if v == b"late"));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(case_36_close_aborts_pending_recv_send_and_accept_once_each, |b| {
    let port: CompletionPort<&'static str> = b.build().unwrap();
    let (_client, server) = tcp_pair();
    let l = port.associate(listener(), CompletionKey(125)).unwrap();
    l.accept(Vec::with_capacity(16), "accept").unwrap();
    let h = port.associate(server, CompletionKey(7)).unwrap();
    h.recv(Vec::with_capacity(16), "recv").unwrap();
    h.recv_ready("ready").unwrap();
    // A send the peer never reads: it fills the socket buffers and stays pending.
    h.send(vec![0u8; 32 << 20], "send").unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    h.close();
    l.close();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let c = port.get(Some(deadline())).unwrap();
        assert!(c.is_aborted(), "{c:?}");
        if *c.context() == "send" {
            assert!(c.bytes() < 32 << 20, "a pending send reports what it had moved");
        } else {
            assert_eq!(c.bytes(), 0);
        }
        let want_key = if *c.context() == "accept" { 125 } else { 7 };
        assert_eq!(c.key(), CompletionKey(want_key));
        seen.push(*c.context());
    }
    seen.sort_unstable();
    assert_eq!(seen, vec!["accept", "ready", "recv", "send"]);
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    assert_eq!(port.stats().in_flight, 0);
});

backend_test!(many_outstanding_sends_on_one_socket_keep_stream_order, |b| {
    const N: usize = 40;
    const LEN: usize = 256 << 10;
    let port: CompletionPort<usize> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    for i in 0..N {
        h.send(vec![i as u8; LEN], i).unwrap();
    }
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; N * LEN];
        client.set_read_timeout(Some(deadline())).unwrap();
        client.read_exact(&mut got).unwrap();
        for (i, chunk) in got.chunks(LEN).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "send {i} interleaved with another");
        }
    });
    let mut order = Vec::new();
    for _ in 0..N {
        let c = port.get(Some(deadline())).unwrap();
        assert_eq!(c.result().unwrap(), LEN);
        order.push(*c.context());
    }
    reader.join().unwrap();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "sends complete in the order they started");
});

backend_test!(many_outstanding_receives_fill_in_start_order, |b| {
    const N: usize = 50;
    let port: CompletionPort<usize> = b.build().unwrap();
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    for i in 0..N {
        h.recv(Vec::with_capacity(100), i).unwrap();
    }
    let data: Vec<u8> = (0..N * 100).map(|i| (i % 253) as u8).collect();
    let mut bufs = vec![Vec::new(); N];
    let mut received = 0;
    let mut written = 0;
    while received < data.len() {
        if written < data.len() {
            let end = (written + 700).min(data.len());
            client.write_all(&data[written..end]).unwrap();
            written = end;
        }
        let mut c = port.get(Some(deadline())).unwrap();
        received += c.result().unwrap();
        let i = *c.context();
        bufs[i] = c.take_buf().unwrap();
        if received < data.len() && bufs.iter().filter(|b| b.is_empty()).count() == 0 {
            break;
        }
    }
    // Concatenated in start order, the buffers hold exactly the stream's prefix.
    let joined: Vec<u8> = bufs.concat();
    assert_eq!(&joined[..], &data[..joined.len()], "receives filled out of order");
});

backend_test!(accept_multi_takes_every_connection_until_cancelled, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, CompletionKey(9)).unwrap();
    // Two connections already wait before the op starts; more come after.
    let mut clients = vec![TcpStream::connect(addr).unwrap(), TcpStream::connect(addr).unwrap()];
    let op = lh.accept_multi(7).unwrap();
    for _ in 0..18 {
        clients.push(TcpStream::connect(addr).unwrap());
    }
    let mut peers = HashSet::new();
    for _ in 0..20 {
        let mut c = port.get(Some(deadline())).unwrap();
        assert_eq!(
            (c.key(), c.op(), *c.context(), c.result().unwrap()),
            (CompletionKey(9), op, 7, 0)
        );
        let acc = c.take_accepted().unwrap();
        assert!(acc.socket().is_some());
        assert!(peers.insert(acc.peer_addr().unwrap().as_socket().unwrap()));
    }
    let want: HashSet<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    assert_eq!(peers, want, "every client accepted exactly once");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    // Cancel ends it with one last, aborted packet.
    lh.cancel(op).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.is_aborted()), (op, true));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    let _late = TcpStream::connect(addr).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut, "no accept after cancel");
});

backend_test!(accept_multi_ends_when_the_listener_closes, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let lh = port.associate(listener(), CompletionKey(1)).unwrap();
    let op = lh.accept_multi(()).unwrap();
    lh.close();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.op(), c.is_aborted()), (op, true));
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});
