//! Files: read and write at offsets, append, end of file (cases 49, 50, 51).

use std::fs::{File, OpenOptions};
use std::io::Write;

use iocp::{APPEND, CompletionKey, CompletionPort, GetError};
use iocp_testkit::{backend_test, deadline, quiet};

fn temp_file(name: &str, data: &[u8]) -> (std::path::PathBuf, File) {
    let dir = std::env::temp_dir().join(format!("iocp-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}-{:?}", std::thread::current().id()));
    let mut f = File::create(&path).expect("create");
    f.write_all(data).expect("write");
    let f = OpenOptions::new().read(true).write(true).open(&path).expect("open");
    (path, f)
}

backend_test!(case_49_read_at_end_of_file_reports_eof, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (path, f) = temp_file("eof", &[1u8; 100]);
    let h = port.associate(f, CompletionKey(49)).unwrap();
    h.read_at(Vec::with_capacity(10), 100, ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert!(c.is_eof(), "{c:?}");
    assert_eq!(c.bytes(), 0);
    assert_eq!(c.result().unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    // A read that straddles the end returns what there is.
    h.read_at(Vec::with_capacity(10), 95, ()).unwrap();
    let c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.result().unwrap(), 5);
    std::fs::remove_file(path).unwrap();
});

backend_test!(case_50_append_writes_at_the_end, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (path, f) = temp_file("append", b"0123456789");
    let h = port.associate(f, CompletionKey(50)).unwrap();
    h.write_at(b"abc".to_vec(), APPEND, ()).unwrap();
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), 3);
    h.write_at(b"XY".to_vec(), 2, ()).unwrap();
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), 2);
    h.write_at(b"!".to_vec(), APPEND, ()).unwrap();
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), b"01XY456789abc!");
    std::fs::remove_file(path).unwrap();
});

backend_test!(case_51_concurrent_reads_at_different_offsets, |b| {
    let port: CompletionPort<u64> = b.build().unwrap();
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i / 4096) as u8).collect();
    let (path, f) = temp_file("concurrent", &data);
    let h = port.associate(f, CompletionKey(51)).unwrap();
    for page in 0..16u64 {
        h.read_at(Vec::with_capacity(4096), page * 4096, page).unwrap();
    }
    let mut seen = [false; 16];
    for _ in 0..16 {
        let mut c = port.get(Some(deadline())).unwrap();
        let page = *c.context();
        let buf = c.take_buf().unwrap();
        assert_eq!(buf.len(), 4096);
        assert!(buf.iter().all(|&x| x == page as u8), "page {page} holds the wrong data");
        assert!(!std::mem::replace(&mut seen[page as usize], true));
    }
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    std::fs::remove_file(path).unwrap();
});

backend_test!(large_write_then_read_round_trips, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (path, f) = temp_file("large", b"");
    let h = port.associate(f, CompletionKey(1)).unwrap();
    let data: Vec<u8> = (0..4 << 20).map(|i| (i % 241) as u8).collect();
    h.write_at(data.clone(), 4096, ()).unwrap();
    assert_eq!(port.get(Some(deadline())).unwrap().result().unwrap(), 4 << 20);
    h.read_at(Vec::with_capacity(4 << 20), 4096, ()).unwrap();
    let mut c = port.get(Some(deadline())).unwrap();
    assert_eq!(c.take_buf().unwrap(), data);
    std::fs::remove_file(path).unwrap();
});

backend_test!(file_handle_close_aborts_nothing_twice, |b| {
    let port: CompletionPort<()> = b.build().unwrap();
    let (path, f) = temp_file("close", &[0u8; 4096]);
    let h = port.associate(f, CompletionKey(1)).unwrap();
    for _ in 0..32 {
        h.read_at(Vec::with_capacity(128), 0, ()).unwrap();
    }
    h.close();
    // Each read completes once: either it ran before the close, or it was aborted.
    for _ in 0..32 {
        let c = port.get(Some(deadline())).unwrap();
        assert!(c.is_aborted() || c.result().unwrap() == 128, "{c:?}");
    }
    assert_eq!(port.get(Some(quiet())).unwrap_err(), GetError::TimedOut);
    std::fs::remove_file(path).unwrap();
});
