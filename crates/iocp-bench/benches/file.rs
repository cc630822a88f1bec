//! File I/O through the port, against the plain syscalls on the same file and thread count.
//!
//! - `read_at/<backend>/<size>`: one thread keeps 16 `read_at`s of `size` bytes in flight over a
//!   64 MiB file (sequential offsets, wrapping), taking completions with `get_many` and starting
//!   the next read for each. `read_at/pread/<size>`: one thread calling `pread` in a loop over the
//!   same offsets. Throughput is bytes per second; the file is in the page cache for both.
//! - `transmit/<backend>/<size>/transmit_file`: one `transmit_file` of a whole `size`-byte file to
//!   a loopback TCP socket, a reader thread draining the other end. `.../read_send`: the same
//!   bytes sent as a loop of `read_at` (64 KiB) then `send` through the same port: the copy
//!   through user space that TransmitFile avoids.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iocp::{CompletionKey, CompletionPort, TransmitRange};

const FILE_SIZE: u64 = 64 << 20;
const DEPTH: usize = 16;

fn make_file(name: &str, size: u64) -> (std::path::PathBuf, File) {
    let path = std::env::temp_dir().join(format!("iocp-bench-{}-{name}", std::process::id()));
    let f = File::create(&path).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut off = 0;
    while off < size {
        let n = chunk.len().min((size - off) as usize);
        f.write_all_at(&chunk[..n], off).unwrap();
        off += n as u64;
    }
    f.sync_all().unwrap();
    let f = File::open(&path).unwrap();
    (path, f)
}

fn read_at(c: &mut Criterion) {
    let (path, _) = make_file("read", FILE_SIZE);
    for size in [4096usize, 65536] {
        let mut g = c.benchmark_group("read_at");
        g.throughput(Throughput::Bytes(size as u64));
        g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        for (name, b) in iocp_testkit::available_backends() {
            let port: CompletionPort<u64> = b.concurrency(1).build().unwrap();
            let h = port.associate(File::open(&path).unwrap(), CompletionKey(1)).unwrap();
            let blocks = FILE_SIZE / size as u64;
            let mut next = 0u64;
            let mut out = Vec::with_capacity(DEPTH);
            g.bench_function(format!("{name}/{size}"), |bch| {
                bch.iter_custom(|iters| {
                    let start = Instant::now();
                    let mut started = 0u64;
                    let mut done = 0u64;
                    while started < iters.min(DEPTH as u64) {
                        h.read_at(Vec::with_capacity(size), (next % blocks) * size as u64, 0)
                            .unwrap();
                        next += 1;
                        started += 1;
                    }
                    while done < iters {
                        out.clear();
                        port.get_many(&mut out, DEPTH, Some(Duration::from_secs(10))).unwrap();
                        for mut comp in out.drain(..) {
                            assert_eq!(comp.result().unwrap(), size);
                            done += 1;
                            if started < iters {
                                let mut buf = comp.take_buf().unwrap();
                                buf.clear();
                                h.read_at(buf, (next % blocks) * size as u64, 0).unwrap();
                                next += 1;
                                started += 1;
                            }
                        }
                    }
                    start.elapsed()
                });
            });
        }
        let f = File::open(&path).unwrap();
        let blocks = FILE_SIZE / size as u64;
        let mut buf = vec![0u8; size];
        let mut next = 0u64;
        g.bench_function(format!("pread/{size}"), |bch| {
            bch.iter(|| {
                let n = f.read_at(&mut buf, (next % blocks) * size as u64).unwrap();
                next += 1;
                assert_eq!(n, size);
            });
        });
        g.finish();
    }
    std::fs::remove_file(path).unwrap();
}

/// Starts a thread that reads `total` bytes per round from `client`, `rounds` times.
fn drain(mut client: std::net::TcpStream) -> std::sync::mpsc::Sender<u64> {
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(total) = rx.recv() {
            let mut got = 0u64;
            while got < total {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0);
                got += n as u64;
            }
        }
    });
    tx
}

fn transmit(c: &mut Criterion) {
    for size in [64u64 << 10, 1 << 20] {
        let (path, _) = make_file(&format!("tx{size}"), size);
        let mut g = c.benchmark_group("transmit");
        g.throughput(Throughput::Bytes(size));
        g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        for (name, b) in iocp_testkit::available_backends() {
            let port: CompletionPort<u8> = b.concurrency(1).build().unwrap();
            let (client, server) = iocp_testkit::tcp_pair();
            let sock = port.associate(server, CompletionKey(1)).unwrap();
            let file = Arc::new(File::open(&path).unwrap());
            let fh = port.associate(File::open(&path).unwrap(), CompletionKey(2)).unwrap();
            let reader = drain(client);
            g.bench_function(format!("{name}/{}KiB/transmit_file", size >> 10), |bch| {
                bch.iter(|| {
                    reader.send(size).unwrap();
                    sock.transmit_file(file.clone(), TransmitRange::default(), 0).unwrap();
                    let comp = port.get(Some(Duration::from_secs(10))).unwrap();
                    assert_eq!(comp.result().unwrap() as u64, size);
                });
            });
            g.bench_function(format!("{name}/{}KiB/read_send", size >> 10), |bch| {
                bch.iter(|| {
                    reader.send(size).unwrap();
                    let mut off = 0u64;
                    let mut buf = Vec::with_capacity(64 << 10);
                    while off < size {
                        buf.clear();
                        fh.read_at(buf, off, 1).unwrap();
                        let mut r = port.get(Some(Duration::from_secs(10))).unwrap();
                        let n = r.result().unwrap();
                        buf = r.take_buf().unwrap();
                        sock.send(buf, 2).unwrap();
                        let mut s = port.get(Some(Duration::from_secs(10))).unwrap();
                        assert_eq!(s.result().unwrap(), n);
                        buf = s.take_buf().unwrap();
                        off += n as u64;
                    }
                });
            });
        }
        g.finish();
        std::fs::remove_file(path).unwrap();
    }
}

criterion_group!(benches, read_at, transmit);
criterion_main!(benches);
