//! Memory per idle connection: user-space RSS growth when N idle loopback TCP connections are
//! associated with a port and each has one receive posted (zero-byte, pooled, or a plain 4 KiB
//! receive for contrast), on each backend.
//!
//! `cargo run --release -p iocp-bench --bin idle-memory -- [N] [--json]`
//!
//! Method: all N socket pairs are created first (their kernel memory is not in RSS, and the fds
//! are plain integers); then RSS is read from /proc/self/statm, the N server sockets are
//! associated and their receives started, and RSS is read again. The difference divided by N is
//! what the port, the handle and the pending operation cost per connection, including the
//! `Vec` slot that keeps each `Handle`. A pool's buffers are allocated before the first reading
//! (they are shared, not per connection) and reported separately.

#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use iocp::{BackendChoice, BackendKind, CompletionKey, CompletionPort};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let resident: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    resident * 4096
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    ZeroByte,
    Pooled,
    Recv4K,
}

/// Accepts `n` connections from a client process (so that the two ends' fds are split across
/// two processes: 10,000 connections need more fds than one process may have here).
fn servers(n: usize) -> (std::process::Child, Vec<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("IDLE_MEMORY_CLIENTS", format!("{addr} {n}"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let servers = (0..n).map(|_| l.accept().unwrap().0).collect();
    (child, servers)
}

/// The client process: connects `n` times, then holds the connections until stdin closes.
fn clients(spec: &str) {
    let (addr, n) = spec.split_once(' ').unwrap();
    let n: usize = n.parse().unwrap();
    let conns: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut buf = [0u8; 1];
    let _ = std::io::Read::read(&mut std::io::stdin(), &mut buf);
    drop(conns);
}

fn measure(kind: BackendKind, mode: Mode, n: usize) -> (f64, u64) {
    let choice =
        if kind == BackendKind::Uring { BackendChoice::Uring } else { BackendChoice::Epoll };
    let (mut client_proc, servers) = servers(n);
    let port: CompletionPort<u32> =
        iocp::PortBuilder::new().backend(choice).cq_entries(65536).build().unwrap();
    let pool = match mode {
        Mode::Pooled => Some(port.buffer_pool(1024, 4096).unwrap()),
        _ => None,
    };
    let mut handles = Vec::with_capacity(n);
    let before = rss_bytes();
    for (i, s) in servers.into_iter().enumerate() {
        let h = port.associate(s, CompletionKey(i as u64)).unwrap();
        match mode {
            Mode::ZeroByte => h.recv_ready(0).map(drop).unwrap(),
            Mode::Pooled => h.recv_pooled(pool.as_ref().unwrap(), 0).map(drop).unwrap(),
            Mode::Recv4K => h.recv(Vec::with_capacity(4096), 0).map(drop).unwrap(),
        }
        handles.push(h);
    }
    // Let io_uring take the SQEs (they are submitted at once; this only settles the backlog).
    let _ = port.get(Some(Duration::from_millis(50)));
    let after = rss_bytes();
    let stats = port.stats();
    assert_eq!(stats.in_flight, n as u64, "every receive must still be pending");
    drop(handles);
    drop(client_proc.stdin.take());
    let _ = client_proc.wait();
    ((after.saturating_sub(before)) as f64 / n as f64, stats.backlog)
}

fn main() {
    if let Ok(spec) = std::env::var("IDLE_MEMORY_CLIENTS") {
        clients(&spec);
        return;
    }
    if let Ok(which) = std::env::var("IDLE_MEMORY_CHILD") {
        let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
        let (k, m) = which.split_once('/').unwrap();
        let kind = if k == "Uring" { BackendKind::Uring } else { BackendKind::Epoll };
        let mode = match m {
            "ZeroByte" => Mode::ZeroByte,
            "Pooled" => Mode::Pooled,
            _ => Mode::Recv4K,
        };
        let (per_conn, backlog) = measure(kind, mode, n);
        println!("{per_conn} {backlog}");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let mut kinds = vec![BackendKind::Epoll];
    if iocp::probe().kind() == BackendKind::Uring {
        kinds.insert(0, BackendKind::Uring);
    }
    if !json {
        println!(
            "{n} idle connections, one receive posted on each; user-space RSS growth per connection"
        );
        println!("{:<9} {:<22} {:>14} {:>9}", "backend", "receive", "bytes/conn", "backlog");
    }
    for kind in kinds {
        for mode in [Mode::ZeroByte, Mode::Pooled, Mode::Recv4K] {
            // Fresh measurements run in a child process so one mode's freed memory does not
            // hide the next mode's growth.
            let (per_conn, backlog): (f64, u64) = {
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .arg(n.to_string())
                    .env("IDLE_MEMORY_CHILD", format!("{kind:?}/{mode:?}"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let mut it = line.split_whitespace();
                (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
            };
            let label = match mode {
                Mode::ZeroByte => "zero-byte (recv_ready)",
                Mode::Pooled => "pooled (recv_pooled)",
                Mode::Recv4K => "recv, 4 KiB buffer",
            };
            if json {
                println!(
                    "{{\"backend\":\"{kind}\",\"receive\":\"{mode:?}\",\"connections\":{n},\"bytes_per_conn\":{per_conn:.0},\"backlog\":{backlog}}}"
                );
            } else {
                println!("{:<9} {:<22} {:>14.0} {:>9}", kind.to_string(), label, per_conn, backlog);
            }
        }
    }
}
