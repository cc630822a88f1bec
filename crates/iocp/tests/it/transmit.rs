//! TransmitFile and DisconnectEx (case 55).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread;

use iocp::{CompletionKey, CompletionPort, Payload, TransmitRange};
use iocp_testkit::{backend_test, deadline, listener, tcp_pair};

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("iocp-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{name}-{:?}", thread::current().id()))
}

fn read_n(s: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(deadline())).expect("timeout");
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).expect("read_exact");
    got
}

backend_test!(transmit_file_sends_head_range_and_tail_as_one_operation, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let path = temp_path("tx");
    let body: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &body).unwrap();
    let file = Arc::new(File::open(&path).unwrap());
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let range = TransmitRange {
        offset: 1000,
        len: Some(2 << 20),
        head: b"HEAD".to_vec(),
        tail: b"TAIL".to_vec(),
    };
    h.transmit_file(file, range, ()).unwrap();
    let total = 4 + (2 << 20) + 4;
    let reader = thread::spawn(move || read_n(&mut client, total));
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), total);
    let Payload::TransmitFile(t) = c.payload() else { panic!("{c:?}") };
    assert_eq!((&t.head[..], &t.tail[..]), (&b"HEAD"[..], &b"TAIL"[..]));
    let got = reader.join().unwrap();
    assert_eq!(&got[..4], b"HEAD");
    assert!(got[4..total - 4] == body[1000..1000 + (2 << 20)], "file range corrupted");
    assert_eq!(&got[total - 4..], b"TAIL");
    std::fs::remove_file(path).unwrap();
});

backend_test!(transmit_file_whole_file_and_bad_range, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let path = temp_path("txall");
    std::fs::write(&path, b"hello file").unwrap();
    let file = Arc::new(File::open(&path).unwrap());
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    h.transmit_file(file.clone(), TransmitRange::default(), ()).unwrap();
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), 10);
    assert_eq!(read_n(&mut client, 10), b"hello file");
    let bad = TransmitRange { offset: 5, len: Some(100), ..TransmitRange::default() };
    let e = h.transmit_file(file, bad, ()).unwrap_err();
    assert_eq!(e.error().kind(), std::io::ErrorKind::InvalidInput);
    std::fs::remove_file(path).unwrap();
});

backend_test!(transmit_file_across_the_4_gib_boundary_of_a_sparse_file, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let path = temp_path("sparse");
    let f = File::create(&path).unwrap();
    let four_gib: u64 = 1 << 32;
    f.set_len(four_gib + (1 << 20)).unwrap();
    // Markers on both sides of the boundary; the rest is a hole (zeros).
    f.write_all_at(b"BEFORE", four_gib - 6).unwrap();
    f.write_all_at(b"AFTER", four_gib).unwrap();
    drop(f);
    let file = Arc::new(File::open(&path).unwrap());
    let (mut client, server) = tcp_pair();
    let h = port.associate(server, CompletionKey(1)).unwrap();
    let len = 256 << 10;
    let range =
        TransmitRange { offset: four_gib - 128 * 1024, len: Some(len), ..TransmitRange::default() };
    h.transmit_file(file, range, ()).unwrap();
    let reader = thread::spawn(move || read_n(&mut client, len as usize));
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), len as usize);
    let got = reader.join().unwrap();
    let at = 128 * 1024;
    assert_eq!(&got[at - 6..at], b"BEFORE");
    assert_eq!(&got[at..at + 5], b"AFTER");
    assert!(got[..at - 6].iter().all(|&x| x == 0) && got[at + 5..].iter().all(|&x| x == 0));
    std::fs::remove_file(path).unwrap();
});

backend_test!(case_55_disconnect_with_reuse_then_connect_again, |b| {
    let port: CompletionPort<&'static str> = b.build().unwrap();
    let l1 = listener();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h = port.associate(s, CompletionKey(55)).unwrap();
    h.connect(l1.local_addr().unwrap(), b"hi".to_vec(), "connect").unwrap();
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), 2);
    let (mut peer, _) = l1.accept().unwrap();
    assert_eq!(read_n(&mut peer, 2), b"hi");
    h.disconnect(true, "disconnect").unwrap();
    // The peer sees our FIN, then closes its side; the disconnect completes.
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(peer);
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((*c.context(), c.result().unwrap()), ("disconnect", 0));
    assert!(matches!(c.payload(), Payload::Disconnect));
    // The same socket (same handle, same key) connects again.
    let l2 = listener();
    h.connect(l2.local_addr().unwrap(), b"again".to_vec(), "reconnect").unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!((c.key(), *c.context(), c.result().unwrap()), (CompletionKey(55), "reconnect", 5));
    let (mut peer2, _) = l2.accept().unwrap();
    assert_eq!(read_n(&mut peer2, 5), b"again");
    peer2.write_all(b"ok").unwrap();
});

backend_test!(disconnect_on_an_unconnected_socket_fails_in_its_packet, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h = port.associate(s, CompletionKey(1)).unwrap();
    h.disconnect(false, ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.raw_os_error(), Some(libc::ENOTCONN));
});
