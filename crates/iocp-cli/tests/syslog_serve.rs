//! `iocp serve syslog` as a process, on each backend (`--backend`, io_uring skipped when
//! unavailable or with IOCP_BACKEND=epoll): `kill -9` in the middle of a stream from two TCP
//! connections leaves each connection's messages on disk as an in-order prefix, none
//! duplicated, no line corrupted (at most each file's last line cut, as docs/DESIGN.md §7.6
//! says), and a restart ends the cut line before writing on; with only `--udp` the process
//! has no TCP socket at all, with only `--tcp` no UDP socket; neither is a clear error.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::iocp;
use iocp::BackendKind;
use iocp_testkit::{choice_for, deadline};

/// The backends to run on here, by `--backend` name.
fn backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if choice_for(BackendKind::Uring).is_some() {
        v.push("uring");
    }
    v.push("epoll");
    v
}

/// A running `iocp serve syslog`; killed if the test fails.
struct Collector {
    child: Child,
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    lines: mpsc::Receiver<String>,
}

impl Collector {
    fn start(backend: &str, dir: &Path, args: &[&str]) -> Collector {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iocp"))
            .args(["serve", "syslog", "--threads", "2", "--backend", backend])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning iocp serve syslog");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut c = Collector { child, tcp: None, udp: None, lines };
        loop {
            let line = c.lines.recv_timeout(deadline()).expect("the collector's address line");
            // iocp syslog: tcp ADDR|- udp ADDR|- -> DIR; ...
            if let Some(rest) = line.strip_prefix("iocp syslog: tcp ") {
                let w: Vec<&str> = rest.split_whitespace().collect();
                c.tcp = w[0].parse().ok();
                c.udp = w[2].parse().ok();
                return c;
            }
        }
    }

    /// SIGTERM; the exit status must be success.
    fn stop(mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let end = Instant::now() + deadline();
        let mut said = Vec::new();
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < end, "the collector did not stop within {:?}", deadline());
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                said.push(line);
            }
        }
        // What it printed on the way out, so a failure says why.
        // The reader ends at the pipe's end.
        while let Ok(line) = self.lines.recv_timeout(deadline()) {
            said.push(line);
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "the collector failed: {status:?}; it said: {said:#?}");
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tmp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iocp-syslog-serve-{}-{what}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the output directory");
    dir
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline();
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A numbered RFC 5424 message from connection `c`.
fn numbered(c: usize, seq: u64) -> String {
    format!("<134>1 2026-12-02T17:00:00.000Z host{c} app{c} {c} - - conn={c} seq={seq}")
}

/// Sends numbered messages on a new connection until a write fails or `stop` is set; returns
/// how many the kernel took.
fn sender(addr: SocketAddr, c: usize, stop: Arc<AtomicBool>) -> u64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_write_timeout(Some(deadline())).expect("timeout");
    let mut buf = Vec::new();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) && seq < 50_000_000 {
        buf.clear();
        for n in seq..seq + 64 {
            writeln!(buf, "{}", numbered(c, n)).expect("formatting");
        }
        if s.write_all(&buf).is_err() {
            break;
        }
        seq += 64;
    }
    seq
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The `seq=` numbers of the whole lines of connection `c`'s file, and its cut last line if
/// any. Every whole line must be one of that connection's messages, exactly.
fn read_numbered(text: &str, c: usize) -> (Vec<u64>, Option<String>) {
    let mut lines: Vec<&str> = text.split('\n').collect();
    let cut = lines.pop().filter(|l| !l.is_empty()).map(str::to_owned);
    let seqs = lines
        .iter()
        .map(|l| {
            let seq: u64 = l
                .rsplit_once("seq=")
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or_else(|| panic!("connection {c}: a corrupt line {l:?}"));
            assert_eq!(*l, numbered(c, seq), "connection {c}: a corrupt line");
            seq
        })
        .collect();
    (seqs, cut)
}

#[test]
fn kill_9_leaves_an_in_order_prefix_per_connection_and_no_corrupt_line() {
    for backend in backends() {
        let dir = tmp_dir(&format!("kill9-{backend}"));
        let args = ["--tcp", "127.0.0.1:0", "--fsync", "batch", "--template", "{host}.log"];
        let col = Collector::start(backend, &dir, &args);
        let addr = col.tcp.expect("a TCP address");
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..2)
            .map(|c| {
                let stop = stop.clone();
                thread::spawn(move || sender(addr, c, stop))
            })
            .collect();
        // Mid-stream: both files have grown past a few thousand messages.
        let paths: Vec<PathBuf> = (0..2).map(|c| dir.join(format!("host{c}.log"))).collect();
        wait_for("both files past 300 kB", || paths.iter().all(|p| file_len(p) > 300_000));
        let mut col = col;
        col.child.kill().expect("kill -9");
        let status = col.child.wait().expect("wait");
        assert!(!status.success(), "killed: {status:?}");
        // The sockets are gone with the process: the senders' writes fail.
        let end = Instant::now() + deadline();
        while senders.iter().any(|s| !s.is_finished()) && Instant::now() < end {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let sent: Vec<u64> = senders.into_iter().map(|s| s.join().expect("sender")).collect();
        let mut on_disk = Vec::new();
        for (c, p) in paths.iter().enumerate() {
            let text = std::fs::read_to_string(p).expect("reading the file");
            let (seqs, cut) = read_numbered(&text, c);
            // In order, none lost in the middle, none twice: 0, 1, 2, ... k-1.
            if let Some(i) = seqs.iter().enumerate().position(|(i, &s)| s != i as u64) {
                panic!("{backend}: connection {c}: line {i} holds seq {}", seqs[i]);
            }
            let k = seqs.len() as u64;
            assert!(
                k > 0 && k <= sent[c] + 64,
                "{backend}: connection {c}: {k} on disk, {} sent",
                sent[c]
            );
            if let Some(cut) = &cut {
                assert!(
                    numbered(c, k).starts_with(cut.as_str()),
                    "{backend}: connection {c}: the last line is cut and not the next message: \
                     {cut:?}"
                );
            }
            eprintln!(
                "{backend}: connection {c}: sent {} (taken by the kernel), {k} on disk after \
                 kill -9{}",
                sent[c],
                if cut.is_some() { ", the last line cut" } else { "" }
            );
            on_disk.push((k, cut.is_some()));
        }
        // A restart writes on after what is there; a cut last line is ended first.
        let col = Collector::start(backend, &dir, &args);
        let mut s = TcpStream::connect(col.tcp.expect("a TCP address")).expect("connect");
        for c in 0..2 {
            writeln!(s, "{}", numbered(c, 1_000_000_000)).expect("write");
        }
        drop(s);
        wait_for("the messages after the restart", || {
            paths.iter().all(|p| {
                std::fs::read_to_string(p)
                    .is_ok_and(|t| t.ends_with(&format!("seq={}\n", 1_000_000_000)))
            })
        });
        col.stop();
        for (c, p) in paths.iter().enumerate() {
            let text = std::fs::read_to_string(p).expect("reading the file");
            let lines: Vec<&str> = text.lines().collect();
            let (k, cut) = on_disk[c];
            let whole = usize::try_from(k).expect("usize");
            assert_eq!(lines.len(), whole + usize::from(cut) + 1, "{backend}: connection {c}");
            assert_eq!(lines[lines.len() - 1], numbered(c, 1_000_000_000), "a line of its own");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The inodes of the sockets process `pid` has open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("reading /proc/PID/fd") {
        let Ok(target) = std::fs::read_link(e.expect("an fd entry").path()) else { continue };
        let t = target.to_string_lossy();
        if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            out.insert(n.parse().expect("an inode"));
        }
    }
    out
}

/// How many of `inodes` are sockets in `/proc/net/{proto}` and `/proc/net/{proto}6`.
fn sockets_in(proto: &str, inodes: &HashSet<u64>) -> usize {
    [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

#[test]
fn udp_only_binds_no_tcp_port_and_tcp_only_no_udp_socket() {
    for backend in backends() {
        let dir = tmp_dir(&format!("udponly-{backend}"));
        let col = Collector::start(backend, &dir, &["--udp", "127.0.0.1:0", "--template", "u.log"]);
        assert_eq!(col.tcp, None, "{backend}: the address line names no TCP input");
        let inodes = socket_inodes(col.child.id());
        assert_eq!(
            sockets_in("tcp", &inodes),
            0,
            "{backend}: a TCP socket in a UDP-only collector"
        );
        assert_eq!(sockets_in("udp", &inodes), 1, "{backend}: the UDP input");
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for seq in 0..20 {
            u.send_to(numbered(0, seq).as_bytes(), col.udp.expect("a UDP address")).expect("send");
        }
        // Loopback at this rate loses nothing; the file is polled until all are there.
        let file = dir.join("u.log");
        wait_for("20 datagrams written", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() == 20)
        });
        col.stop();

        let col = Collector::start(backend, &dir, &["--tcp", "127.0.0.1:0", "--template", "t.log"]);
        assert_eq!(col.udp, None, "{backend}: the address line names no UDP input");
        let inodes = socket_inodes(col.child.id());
        assert_eq!(
            sockets_in("udp", &inodes),
            0,
            "{backend}: a UDP socket in a TCP-only collector"
        );
        assert_eq!(sockets_in("tcp", &inodes), 1, "{backend}: the TCP listener");
        let mut s = TcpStream::connect(col.tcp.expect("a TCP address")).expect("connect");
        writeln!(s, "{}", numbered(0, 0)).expect("write");
        drop(s);
        let file = dir.join("t.log");
        wait_for("the TCP message written", || {
            std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() == 1)
        });
        col.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
    let dir = tmp_dir("noinput");
    let d = dir.to_str().expect("a UTF-8 path");
    let run = iocp(&["serve", "syslog", "--dir", d], deadline());
    assert!(!run.status.success(), "no input must fail");
    assert!(run.stderr.contains("no input: give --tcp ADDR, --udp ADDR or both"), "{}", run.stderr);
    let run = iocp(
        &["serve", "syslog", "--tcp", "127.0.0.1:0", "--rotate-time", "0s", "--dir", d],
        deadline(),
    );
    assert_eq!(run.status.code(), Some(2), "a zero --rotate-time is a usage error: {}", run.stderr);
    assert!(run.stderr.contains("--rotate-time"), "{}", run.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
