//! The epoll backend's read-readiness cache (DESIGN.md §3.6.1): after a receive found nothing
//! (`EAGAIN`) or a TCP receive filled less than its buffer, the next read-side op waits for
//! the next readable event without trying its syscall. These tests check that no data, no end
//! of stream and no datagram is ever missed for it (on both backends: io_uring has no cache
//! and must behave the same), and that on epoll the syscall is really skipped.

use std::io::Write;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use iocp::fault::{self, Point};
use iocp::{BackendKind, Completion, CompletionKey, CompletionPort, GetError};
use iocp_testkit::{backend_test, deadline, quiet, tcp_pair};

fn recv_done(port: &CompletionPort<u32>, ctx: u32) -> Completion<u32> {
    let c = port.get(Some(deadline())).expect("the receive completes");
    assert_eq!(*c.context(), ctx, "{c:?}");
    c
}

backend_test!(a_receive_after_a_short_read_gets_the_next_bytes_whenever_they_come, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut peer, s) = tcp_pair();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    // A seeded walk over the orders that matter: the next bytes written before the receive
    // is started (the cache says idle, but an event is on its way) or after it (the receive
    // waits for that event), in sizes that fill the buffer or not.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..400u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 1 + (x % 4096) as usize;
        let msg: Vec<u8> = (0..n).map(|i| (i as u32 ^ round) as u8).collect();
        let before = x & 2 == 0;
        if before {
            peer.write_all(&msg).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < n {
            h.recv(Vec::with_capacity(4096), round).unwrap();
            if !before && got.is_empty() {
                peer.write_all(&msg).unwrap();
            }
            let mut c = recv_done(&port, round);
            let k = c.result().unwrap();
            assert!(k > 0, "round {round}: end of stream before the bytes");
            got.extend_from_slice(&c.take_buf().unwrap());
        }
        assert_eq!(got, msg, "round {round}");
    }
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
});

backend_test!(the_end_of_a_stream_is_seen_after_a_short_read, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    for fin_first in [true, false] {
        let (mut peer, s) = tcp_pair();
        let h = port.associate(s, CompletionKey(1)).unwrap();
        peer.write_all(b"last words").unwrap();
        h.recv(Vec::with_capacity(4096), 1).unwrap();
        let mut c = recv_done(&port, 1);
        assert_eq!(c.take_buf().unwrap(), b"last words");
        // The FIN arrives before the next receive starts, or while it waits.
        if fin_first {
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            wait_for_fin(&h);
        }
        h.recv(Vec::with_capacity(4096), 2).unwrap();
        if !fin_first {
            peer.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let c = recv_done(&port, 2);
        assert_eq!(c.result().unwrap(), 0, "fin_first {fin_first}: EOF, once");
    }
});

backend_test!(data_and_end_in_one_event_leave_the_end_to_read, |b| {
    // A receive waits; the last bytes and the FIN arrive together and are reported in one
    // event, whose handling runs the receive: it reads the bytes, less than its buffer. That
    // short read must not mark the socket drained (the end is still to read, and no event
    // will come for it again).
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut peer, s) = tcp_pair();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(4096), 1).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    peer.write_all(b"bye").unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for_fin(&h);
    let mut c = recv_done(&port, 1);
    assert_eq!(c.take_buf().unwrap(), b"bye");
    h.recv(Vec::with_capacity(4096), 2).unwrap();
    let c = recv_done(&port, 2);
    assert_eq!(c.result().unwrap(), 0, "EOF");
});

/// Waits (without reading, up to the deadline) until poll(2) reports `event` on `fd`.
fn wait_for(fd: &impl AsRawFd, event: libc::c_short, what: &str) {
    let mut fds = [libc::pollfd { fd: fd.as_raw_fd(), events: event, revents: 0 }];
    // SAFETY: one valid pollfd, for the duration of the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 1, deadline().as_millis() as i32) };
    assert!(r == 1 && fds[0].revents & event != 0, "{what}");
}

/// Waits until the peer's FIN is at the socket (POLLRDHUP).
fn wait_for_fin(fd: &impl AsRawFd) {
    wait_for(fd, libc::POLLRDHUP, "the FIN arrived");
}

backend_test!(a_short_datagram_does_not_hide_the_next_one, |b| {
    // A datagram shorter than the buffer says nothing of the next: a plain receive on a UDP
    // socket must not mark it drained.
    let port: CompletionPort<u32> = b.build().unwrap();
    let (a, peer) =
        (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
    let a_addr = a.local_addr().unwrap();
    let h = port.associate(a, CompletionKey(1)).unwrap();
    // The receive waits first, so that one readiness event reports both datagrams: after it
    // nothing more will be reported.
    h.recv(Vec::with_capacity(64), 1).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    peer.send_to(b"first", a_addr).unwrap();
    peer.send_to(b"second one", a_addr).unwrap();
    // Both are queued at the socket: loopback delivers within send_to (checked for the first
    // with FIONREAD, the size of the datagram at the head; should the second come later, it
    // brings its own event and the test is only weaker).
    iocp_testkit::eventually("both datagrams queued", || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let r = unsafe { libc::ioctl(h.as_raw_fd(), libc::FIONREAD, &mut n) };
        (r == 0 && n > 0).then_some(())
    });
    let mut c = recv_done(&port, 1);
    assert_eq!(c.take_buf().unwrap(), b"first");
    h.recv(Vec::with_capacity(64), 2).unwrap();
    let mut c = recv_done(&port, 2);
    assert_eq!(c.take_buf().unwrap(), b"second one", "the queued datagram, with no new send");
});

backend_test!(epoll_skips_the_receive_it_knows_would_block, |b| {
    let port: CompletionPort<u32> = b.build().unwrap();
    let uring = port.backend().kind() == BackendKind::Uring;
    let (mut peer, s) = tcp_pair();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    fault::clear();
    peer.write_all(b"ping").unwrap();
    iocp_testkit::wait_acked(&peer);
    h.recv(Vec::with_capacity(4096), 1).unwrap();
    let mut c = recv_done(&port, 1);
    assert_eq!(c.take_buf().unwrap(), b"ping");
    // The socket is drained (4 bytes into a 4 KiB buffer). The next receive, started on this
    // thread, makes no syscall on epoll (io_uring prepares its SQE: one call).
    let before = fault::calls(Point::Recv);
    h.recv(Vec::with_capacity(4096), 2).unwrap();
    let at_start = fault::calls(Point::Recv) - before;
    assert_eq!(at_start, u64::from(uring), "calls at the start (uring {uring})");
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    peer.write_all(b"pong").unwrap();
    let mut c = recv_done(&port, 2);
    assert_eq!(c.take_buf().unwrap(), b"pong");
    fault::clear();
});

backend_test!(a_disconnect_after_a_short_read_sends_its_fin_at_once, |b| {
    // A disconnect's first stage is its shutdown: it must not wait for the socket to become
    // readable, although a short read has just marked it drained (the peer, waiting for our
    // FIN, sends nothing more).
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut peer, s) = tcp_pair();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    peer.write_all(b"request").unwrap();
    h.recv(Vec::with_capacity(4096), 1).unwrap();
    let mut c = recv_done(&port, 1);
    assert_eq!(c.take_buf().unwrap(), b"request");
    h.disconnect(false, 2).unwrap();
    peer.set_read_timeout(Some(deadline())).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut peer, &mut rest).expect("our FIN arrives");
    assert!(rest.is_empty());
    drop(peer);
    let c = recv_done(&port, 2);
    assert!(c.result().is_ok(), "{c:?}");
});

backend_test!(urgent_data_does_not_strand_the_bytes_behind_it, |b| {
    // TCP urgent data stops a receive short before the urgent byte, with bytes behind it and
    // no further event: the event that reported it (EPOLLPRI) must turn the short-read rule
    // off, so that the next receive reads them.
    let port: CompletionPort<u32> = b.build().unwrap();
    let (mut peer, s) = tcp_pair();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    h.recv(Vec::with_capacity(4096), 1).unwrap();
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    // SAFETY: a valid buffer of 3 bytes on a connected socket.
    let r = unsafe { libc::send(peer.as_raw_fd(), b"abc".as_ptr().cast(), 3, libc::MSG_OOB) };
    assert_eq!(r, 3);
    peer.write_all(b"de").unwrap();
    wait_for(&h, libc::POLLPRI, "the urgent data arrived");
    iocp_testkit::wait_acked(&peer);
    let mut got = Vec::new();
    let mut ctx = 1;
    loop {
        let mut c = recv_done(&port, ctx);
        got.extend_from_slice(&c.take_buf().unwrap());
        if got.ends_with(b"de") {
            break;
        }
        assert!(got.len() < 5, "got {got:?}");
        ctx += 1;
        h.recv(Vec::with_capacity(4096), ctx).unwrap();
    }
    // The urgent byte is out of band (SO_OOBINLINE is off): the stream reads "ab" then "de".
    assert_eq!(got, b"abde");
});
