//! UDP: WSARecvFrom / WSASendTo (case 57).

use std::net::UdpSocket;

use iocp::{CompletionKey, CompletionPort, GetError, Payload};
use iocp_testkit::{backend_test, deadline, quiet};

fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind udp")
}

backend_test!(recv_from_reports_the_sender_and_send_to_reaches_it, |b| {
    let port: CompletionPort<u8> = b.build().unwrap();
    let (a, peer) = (udp(), udp());
    let a_addr = a.local_addr().unwrap();
    let h = port.associate(a, CompletionKey(57)).unwrap();
    h.recv_from(Vec::with_capacity(64), 1).unwrap();
    peer.send_to(b"datagram", a_addr).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), c.result().unwrap(), *c.context()), (CompletionKey(57), 8, 1));
    let Payload::RecvFrom(buf, Some(from)) = c.payload() else { panic!("{c:?}") };
    assert_eq!(&buf[..], b"datagram");
    assert_eq!(from.as_socket().unwrap(), peer.local_addr().unwrap());
    let _ = c.take_buf();
    // And back: one datagram to the sender.
    h.send_to(b"reply".to_vec(), peer.local_addr().unwrap(), 2).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.result().unwrap(), *c.context()), (5, 2));
    peer.set_read_timeout(Some(deadline())).unwrap();
    let mut got = [0u8; 16];
    let (n, src) = peer.recv_from(&mut got).unwrap();
    assert_eq!((&got[..n], src), (&b"reply"[..], a_addr));
});

backend_test!(case_57_datagram_larger_than_the_buffer_fails_with_emsgsize, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (a, peer) = (udp(), udp());
    let a_addr = a.local_addr().unwrap();
    let h = port.associate(a, CompletionKey(1)).unwrap();
    h.recv_from(Vec::with_capacity(10), ()).unwrap();
    let big: Vec<u8> = (0..100u8).collect();
    peer.send_to(&big, a_addr).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.raw_os_error(), Some(libc::EMSGSIZE));
    assert_eq!(c.bytes(), 10, "the bytes that fit were copied");
    assert_eq!(c.take_buf().unwrap(), &big[..10]);
    // The rest was discarded: the next datagram is a new one.
    h.recv_from(Vec::with_capacity(10), ()).unwrap();
    peer.send_to(b"next", a_addr).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.take_buf().unwrap(), b"next");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(many_datagrams_each_complete_once_in_order, |b| {
    let port: CompletionPort<usize> = b.build().unwrap();
    let (a, peer) = (udp(), udp());
    let a_addr = a.local_addr().unwrap();
    let h = port.associate(a, CompletionKey(1)).unwrap();
    for i in 0..100 {
        h.recv_from(Vec::with_capacity(16), i).unwrap();
    }
    for i in 0..100u32 {
        peer.send_to(&i.to_le_bytes(), a_addr).unwrap();
    }
    for i in 0..100 {
        let mut c = port.get(Some(deadline())).unwrap();
        assert_eq!(*c.context(), i, "receives complete in the order they were started");
        assert_eq!(c.take_buf().unwrap(), (i as u32).to_le_bytes());
    }
});
