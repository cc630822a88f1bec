//! The syslog collector (`iocp_server::syslog`) over real loopback sockets, on both backends:
//! numbered messages over TCP from several connections are all on disk after a graceful stop,
//! once each and in order per connection (through a queue small enough to pause readers);
//! UDP messages are written or counted as dropped; a full disk (a small tmpfs) holds the
//! messages and pauses the senders until space returns; rotation (by size and by time) and
//! reopen lose nothing; 1,000,000 numbered messages from 4 connections are all on disk after a
//! graceful stop; a UDP-only collector binds no TCP port (and a TCP-only one no UDP socket);
//! the syslog counters are in the Prometheus exposition (parsed by Python's
//! `prometheus_client`); `logger` (util-linux) is understood in its RFC 5424 and RFC 3164 forms
//! over both inputs.
//! Tools that are missing skip their test with a `SKIP` line unless `IOCP_REQUIRE_TOOLS=1`.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use iocp::BackendChoice;
use iocp_server::ServerConfig;
use iocp_server::syslog::{Collector, Format, SyslogConfig, SyslogStats, Template};
use iocp_testkit::{backend_test, deadline, wait_acked};

fn require_tools() -> bool {
    std::env::var("IOCP_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!require_tools(), "IOCP_REQUIRE_TOOLS=1 but {why}");
    eprintln!("SKIP: {why}");
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iocp-syslog-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn start(backend: BackendChoice, cfg: SyslogConfig) -> Collector {
    let server = ServerConfig { backend, threads: 2, grace: deadline(), ..ServerConfig::default() };
    Collector::start(cfg, server).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline();
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every file under `dir` (relative path -> contents), rotated ones included.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned());
            }
        }
    }
    out
}

/// A numbered RFC 5424 message from connection `c`.
fn numbered(c: usize, seq: usize) -> String {
    format!("<134>1 2026-12-02T17:00:00.000Z host{c} app{c} {c} - - conn={c} seq={seq}")
}

/// The `seq=` numbers of `text`'s lines, in file order.
fn seqs(text: &str) -> Vec<usize> {
    text.lines()
        .map(|l| l.rsplit_once("seq=").unwrap_or_else(|| panic!("no seq in {l:?}")).1)
        .map(|n| n.parse().unwrap())
        .collect()
}

fn send_numbered(addr: SocketAddr, c: usize, n: usize, octet: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(deadline() * 3)).unwrap();
    let mut buf = Vec::with_capacity(256 * 1024);
    for seq in 0..n {
        let m = numbered(c, seq);
        if octet {
            write!(buf, "{} {m}", m.len()).unwrap();
        } else {
            writeln!(buf, "{m}").unwrap();
        }
        if buf.len() > 200 * 1024 {
            s.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    s.write_all(&buf).unwrap();
    s
}

backend_test!(
    tcp_numbered_messages_all_on_disk_in_order,
    choice | c | {
        const CONNS: usize = 4;
        const PER: usize = 25_000;
        let dir = tempdir(&format!("tcp-{c:?}"));
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("{host}/{app}.log").unwrap(),
            // Small: the writer falls behind and connections pause and resume many times.
            queue_bytes: 64 * 1024,
            batch_bytes: 32 * 1024,
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        let addr = col.tcp_addr().unwrap();
        let senders: Vec<_> = (0..CONNS)
            .map(|i| std::thread::spawn(move || send_numbered(addr, i, PER, i % 2 == 0)))
            .collect();
        // The streams stay open. Once the collector's kernel has acknowledged every byte (the
        // senders' send queues are empty), a graceful stop must write all of it.
        let streams: Vec<TcpStream> = senders.into_iter().map(|t| t.join().unwrap()).collect();
        streams.iter().for_each(wait_acked);
        let report = col.stop();
        drop(streams);
        let s = report.stats;
        eprintln!("{s}\n{:?}", report.server);
        assert_eq!(s.tcp.received, (CONNS * PER) as u64, "{s}");
        assert_eq!(s.tcp.written, s.tcp.received, "{s}");
        assert_eq!(s.tcp.malformed, 0, "{s}");
        assert_eq!(s.lost, 0);
        let files = files(&dir);
        assert_eq!(files.len(), CONNS, "{:?}", files.keys());
        for i in 0..CONNS {
            let text = &files[&format!("host{i}/app{i}.log")];
            let got = seqs(text);
            assert_eq!(got.len(), PER, "connection {i}");
            assert!(got.iter().copied().eq(0..PER), "connection {i}: out of order or duplicated");
            assert_eq!(text.lines().next().unwrap(), numbered(i, 0), "text keeps the original");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
);

backend_test!(
    udp_messages_written_or_counted,
    choice | c | {
        const N: usize = 2_000;
        let dir = tempdir(&format!("udp-{c:?}"));
        let cfg = SyslogConfig {
            udp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("{input}.log").unwrap(),
            format: Format::Json,
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        let to = col.udp_addr().unwrap();
        let sock = UdpSocket::bind(loopback()).unwrap();
        for seq in 0..N {
            sock.send_to(numbered(0, seq).as_bytes(), to).unwrap();
        }
        sock.send_to(b"\xffnot syslog\n", to).unwrap();
        let accounted = |s: &SyslogStats| s.udp.received + s.udp.dropped + s.udp_kernel_drops;
        wait_for("every datagram accounted for", || accounted(&col.stats()) == N as u64 + 1);
        let s = col.stop().stats;
        eprintln!("{s}");
        assert_eq!(s.udp.written, s.udp.received);
        assert_eq!(s.udp.malformed, 1, "{s}");
        let text = &files(&dir)["udp.log"];
        assert_eq!(text.lines().count() as u64, s.udp.received);
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["raw"].is_string(), "{l}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
);

backend_test!(
    malformed_and_hostile_input_is_kept_and_counted,
    choice | c | {
        let dir = tempdir(&format!("bad-{c:?}"));
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            max_message: 1024,
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        let addr = col.tcp_addr().unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).unwrap();
            let len = (next() % 8000) as usize;
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            s.write_all(&junk).unwrap();
        }
        // The collector still works after that.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(format!("{}\n", numbered(7, 1)).as_bytes()).unwrap();
        drop(s);
        wait_for("the good message", || col.stats().tcp.parsed >= 1);
        let r = col.stop();
        let st = r.stats;
        eprintln!("{st}");
        assert_eq!(r.server.stats.panics, 0);
        assert!(st.tcp.malformed > 0, "{st}");
        assert_eq!(st.tcp.written, st.tcp.received);
        let files = files(&dir);
        assert!(files["host7/app7.log"].contains("seq=1"));
        for f in files.keys() {
            assert!(!f.contains(".."), "{f}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
);

backend_test!(
    rotation_and_reopen_lose_nothing,
    choice | c | {
        let dir = tempdir(&format!("rot-{c:?}"));
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("all.log").unwrap(),
            rotate_size: Some(8 * 1024),
            rotate_keep: 1000,
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        let addr = col.tcp_addr().unwrap();
        let s = send_numbered(addr, 0, 1000, false);
        wait_for("1000 written", || col.stats().tcp.written == 1000);
        // logrotate: move the file away, then SIGHUP (here: reopen).
        std::fs::rename(dir.join("all.log"), dir.join("moved.log")).unwrap();
        col.reopen();
        drop(s);
        let s2 = send_numbered(addr, 1, 10, false);
        wait_for("1010 written", || col.stats().tcp.written == 1010);
        drop(s2);
        let st = col.stop().stats;
        assert!(st.rotations > 0, "{st}");
        let files = files(&dir);
        let mut seqs0 = Vec::new();
        let mut n1 = 0;
        for text in files.values() {
            for l in text.lines() {
                assert!(l.len() < 8 * 1024);
                if l.contains("conn=0 ") {
                    seqs0.push(seqs(l)[0]);
                } else {
                    n1 += 1;
                }
            }
            assert!(text.len() <= 8 * 1024, "rotated at the limit");
        }
        seqs0.sort_unstable();
        assert!(seqs0.into_iter().eq(0..1000));
        assert_eq!(n1, 10);
        assert!(files.contains_key("all.log"), "reopened after the move: {:?}", files.keys());
        let _ = std::fs::remove_dir_all(&dir);
    }
);

/// Mounts a tmpfs of `size` at `dir`; false when this test cannot mount.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

backend_test!(
    full_disk_holds_messages_and_pauses_senders,
    choice | c | {
        let dir = tempdir(&format!("full-{c:?}"));
        if !mount_tmpfs(&dir, "256k") {
            let _ = std::fs::remove_dir_all(&dir);
            return skip("cannot mount a tmpfs (not root?) for the full-disk test");
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _guard = Unmount(dir.clone());
        // About 22 MB: far more than the disk, the queue and both sockets' buffers hold.
        const N: usize = 300_000;
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("all.log").unwrap(),
            queue_bytes: 128 * 1024,
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        let addr = col.tcp_addr().unwrap();
        let sender = std::thread::spawn(move || send_numbered(addr, 0, N, true));
        wait_for("a failed write", || col.stats().write_errors > 0);
        // The sender is held back: what was received stops growing while the disk is full.
        std::thread::sleep(Duration::from_millis(300));
        let a = col.stats();
        std::thread::sleep(Duration::from_millis(300));
        let b = col.stats();
        assert_eq!(a.tcp.received, b.tcp.received, "received while the disk was full: {b}");
        assert!(b.tcp.received < N as u64, "{b}");
        assert!(!sender.is_finished(), "the sender should be blocked by back-pressure");
        // Space returns.
        let ok = Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount");
        let stream = sender.join().unwrap();
        wait_for("every message written", || col.stats().tcp.written == N as u64);
        drop(stream);
        let st = col.stop().stats;
        eprintln!("{st}");
        assert_eq!(st.lost, 0);
        let text = std::fs::read_to_string(dir.join("all.log")).unwrap();
        assert!(seqs(&text).into_iter().eq(0..N), "none lost, none duplicated, in order");
    }
);

/// A collector with both inputs on loopback writing into `dir` by `template`, and its TCP and
/// UDP addresses.
fn start_tcp_udp(
    c: BackendChoice,
    dir: &Path,
    template: &str,
) -> (Collector, SocketAddr, SocketAddr) {
    let cfg = SyslogConfig {
        tcp: Some(loopback()),
        udp: Some(loopback()),
        dir: dir.to_path_buf(),
        template: Template::parse(template).unwrap(),
        ..SyslogConfig::default()
    };
    let col = start(c, cfg);
    let (tcp, udp) = (col.tcp_addr().unwrap(), col.udp_addr().unwrap());
    (col, tcp, udp)
}

fn logger() -> Option<PathBuf> {
    ["/usr/bin/logger", "/bin/logger"].iter().map(PathBuf::from).find(|p| p.exists())
}

backend_test!(
    logger_rfc5424_and_rfc3164_over_udp_and_tcp,
    choice | c | {
        let Some(logger) = logger() else {
            return skip("logger (util-linux) is not installed");
        };
        let dir = tempdir(&format!("logger-{c:?}"));
        let (col, tcp, udp) = start_tcp_udp(c, &dir, "{app}/{input}.log");
        let cases: [(&str, &[&str], SocketAddr); 5] = [
            ("u5424", &["--udp", "--rfc5424"], udp),
            ("u3164", &["--udp", "--rfc3164"], udp),
            ("t5424", &["--tcp", "--rfc5424"], tcp),
            ("t3164", &["--tcp", "--rfc3164"], tcp),
            ("t5424oc", &["--tcp", "--rfc5424", "--octet-count"], tcp),
        ];
        for (tag, flags, addr) in cases {
            let st = Command::new(&logger)
                .args(flags)
                .args(["-n", "127.0.0.1", "-P", &addr.port().to_string(), "-t", tag])
                .arg(format!("hello from {tag}"))
                .status()
                .unwrap();
            assert!(st.success(), "logger {flags:?}");
        }
        wait_for("five messages written", || {
            let s = col.stats();
            s.tcp.written + s.udp.written == 5
        });
        let st = col.stop().stats;
        eprintln!("{st}");
        assert_eq!(st.tcp.malformed + st.udp.malformed, 0, "{st}");
        let files = files(&dir);
        for (tag, flags, _) in cases {
            let input = if flags[0] == "--udp" { "udp" } else { "tcp" };
            let text = files
                .get(&format!("{tag}/{input}.log"))
                .unwrap_or_else(|| panic!("{tag}: no file in {:?}", files.keys()));
            assert!(text.contains(&format!("hello from {tag}")), "{tag}: {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
);

/// Python's standard `logging.handlers.SysLogHandler` as a sender: its UDP form (one
/// datagram per record, NUL-terminated) and its TCP form (LF-terminated through a formatter, as
/// Python users send to rsyslog).
const PY_SENDER: &str = r#"
import logging, logging.handlers, socket, sys
udp, tcp, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for kind, port, socktype in (("udp", udp, socket.SOCK_DGRAM), ("tcp", tcp, socket.SOCK_STREAM)):
    h = logging.handlers.SysLogHandler(address=("127.0.0.1", port), socktype=socktype)
    h.ident = "pyapp: "
    if kind == "tcp":
        h.append_nul = False
        h.setFormatter(logging.Formatter("%(message)s\n"))
    log = logging.getLogger(kind)
    log.setLevel(logging.INFO)
    log.addHandler(h)
    for i in range(n):
        log.info("py-%s-%d", kind, i)
    h.close()
"#;

backend_test!(
    python_syslog_handler_over_udp_and_tcp,
    choice | c | {
        if !Command::new("python3")
            .arg("-c")
            .arg("import logging.handlers")
            .status()
            .is_ok_and(|s| s.success())
        {
            return skip("python3 is not installed");
        }
        const N: u64 = 100;
        let dir = tempdir(&format!("python-{c:?}"));
        let (col, tcp, udp) = start_tcp_udp(c, &dir, "{input}.log");
        let st = Command::new("python3")
            .args(["-c", PY_SENDER, &udp.port().to_string(), &tcp.port().to_string()])
            .arg(N.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "the Python sender failed");
        wait_for("every Python record written", || {
            let s = col.stats();
            s.tcp.written == N && s.udp.written == N
        });
        let st = col.stop().stats;
        eprintln!("{st}");
        assert_eq!((st.tcp.received, st.udp.received, st.udp.dropped), (N, N, 0), "{st}");
        // `<14>pyapp: text` has no timestamp or hostname: still a message, not malformed.
        assert_eq!((st.tcp.parsed, st.udp.parsed), (N, N), "{st}");
        let files = files(&dir);
        for input in ["udp", "tcp"] {
            let text = files
                .get(&format!("{input}.log"))
                .unwrap_or_else(|| panic!("no {input}.log in {:?}", files.keys()));
            let lines: Vec<&str> = text.lines().collect();
            assert!(lines.iter().all(|l| l.contains("pyapp")), "{input}: {text}");
            let mut seqs: Vec<u64> = lines
                .iter()
                .map(|l| {
                    let tail = l.rsplit_once(&format!("py-{input}-")).expect("a record").1;
                    tail.trim_end_matches('\0').trim().parse().expect("its number")
                })
                .collect();
            if input == "udp" {
                // Datagrams are handled by either worker: once each, in no promised order.
                seqs.sort_unstable();
            }
            assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "{input}: {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
);

backend_test!(
    stop_on_a_full_disk_is_bounded_and_counts_the_loss,
    choice | c | {
        let dir = tempdir(&format!("fullstop-{c:?}"));
        if !mount_tmpfs(&dir, "64k") {
            let _ = std::fs::remove_dir_all(&dir);
            return skip("cannot mount a tmpfs (not root?) for the full-disk stop test");
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _guard = Unmount(dir.clone());
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("all.log").unwrap(),
            queue_bytes: 32 * 1024,
            flush_timeout: Duration::from_millis(500),
            ..SyslogConfig::default()
        };
        let server = ServerConfig {
            backend: c,
            threads: 2,
            grace: Duration::from_millis(500),
            ..ServerConfig::default()
        };
        let col = Collector::start(cfg, server).unwrap();
        let addr = col.tcp_addr().unwrap();
        let sender = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = Vec::new();
            for seq in 0..5_000 {
                writeln!(buf, "{}", numbered(0, seq)).unwrap();
            }
            let _ = s.write_all(&buf); // blocked by back-pressure, then reset by the stop
            s
        });
        wait_for("a failed write", || col.stats().write_errors > 0);
        let t0 = Instant::now();
        let st = col.stop().stats;
        let took = t0.elapsed();
        eprintln!("{st} (stop took {took:?})");
        assert!(took < Duration::from_secs(5), "the stop is bounded: {took:?}");
        assert!(st.lost > 0, "{st}");
        assert_eq!(
            st.tcp.written + st.lost,
            st.tcp.received,
            "every admitted message accounted: {st}"
        );
        let on_disk = std::fs::read_to_string(dir.join("all.log")).unwrap_or_default();
        // A batch given up may have landed in part (a head, perhaps a cut last line): counted
        // lost, as it was not written whole.
        let lines = on_disk.lines().count() as u64;
        assert!(
            lines >= st.tcp.written && lines <= st.tcp.written + st.lost,
            "{lines} lines: {st}"
        );
        drop(sender.join().unwrap());
    }
);

/// Checks that `text` holds connection `c`'s messages `0..n` once each, in order.
fn assert_all_in_order(text: &str, c: usize, n: usize) {
    let got = seqs(text);
    assert_eq!(got.len(), n, "connection {c}: {} lines, {n} sent", got.len());
    if let Some(i) = got.iter().enumerate().position(|(i, &s)| s != i) {
        panic!("connection {c}: line {i} holds seq {} (lost, duplicated or out of order)", got[i]);
    }
}

backend_test!(
    million_messages_all_on_disk_once_in_order_after_stop,
    choice | c | {
        // The issue's guarantee at full size (about 1.5 s per backend on 2 cores).
        const TOTAL: usize = 1_000_000;
        const CONNS: usize = 4;
        let (total, per) = (TOTAL, TOTAL / CONNS);
        let dir = tempdir(&format!("million-{c:?}"));
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("{host}/{app}.log").unwrap(),
            ..SyslogConfig::default()
        };
        let t0 = Instant::now();
        let col = start(c, cfg);
        let addr = col.tcp_addr().unwrap();
        let senders: Vec<_> = (0..CONNS)
            .map(|i| std::thread::spawn(move || send_numbered(addr, i, per, i % 2 == 1)))
            .collect();
        let streams: Vec<TcpStream> = senders.into_iter().map(|t| t.join().unwrap()).collect();
        // Every byte acknowledged by the collector's kernel, the connections still open: a
        // graceful stop must put all of it on disk.
        streams.iter().for_each(wait_acked);
        let sent_in = t0.elapsed();
        let report = col.stop();
        drop(streams);
        let s = report.stats;
        eprintln!("{total} messages: sent in {sent_in:?}, stopped after {:?}\n{s}", t0.elapsed());
        assert_eq!(s.tcp.received, total as u64, "{s}");
        assert_eq!((s.tcp.written, s.lost, s.tcp.malformed), (total as u64, 0, 0), "{s}");
        let files = files(&dir);
        assert_eq!(files.len(), CONNS, "{:?}", files.keys());
        for i in 0..CONNS {
            assert_all_in_order(&files[&format!("host{i}/app{i}.log")], i, per);
        }
        eprintln!("checked after {:?}", t0.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
);

/// `base`'s generations oldest first (`base.N` ... `base.1`, `base`), concatenated.
fn generations(dir: &Path, base: &str) -> (usize, String) {
    let files = files(dir);
    let mut n = 0;
    while files.contains_key(&format!("{base}.{}", n + 1)) {
        n += 1;
    }
    let mut text = String::new();
    for g in (1..=n).rev() {
        let t = &files[&format!("{base}.{g}")];
        assert!(t.ends_with('\n') && !t.is_empty(), "{base}.{g} holds whole lines");
        text.push_str(t);
    }
    text.push_str(files.get(base).map_or("", String::as_str));
    assert_eq!(files.len(), n + usize::from(files.contains_key(base)), "{:?}", files.keys());
    (n, text)
}

backend_test!(
    time_rotation_loses_nothing,
    choice | c | {
        let dir = tempdir(&format!("trot-{c:?}"));
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("all.log").unwrap(),
            rotate_time: Some(Duration::from_secs(1)),
            rotate_keep: 1000,
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        let mut s = TcpStream::connect(col.tcp_addr().unwrap()).unwrap();
        const ROUND: usize = 400;
        let mut sent = 0;
        let mut send_round = |s: &mut TcpStream| {
            let mut buf = Vec::new();
            for seq in sent..sent + ROUND {
                writeln!(buf, "{}", numbered(0, seq)).unwrap();
            }
            s.write_all(&buf).unwrap();
            sent += ROUND;
        };
        // Each round's file ages past the interval and is rotated; the next round starts a new
        // one. The directory is polled (with the deadline) for each rotated file.
        for round in 1..=2 {
            send_round(&mut s);
            let want = dir.join(format!("all.log.{round}"));
            wait_for(&format!("{} to appear", want.display()), || want.exists());
        }
        send_round(&mut s);
        wait_for("every message written", || col.stats().tcp.written == 3 * ROUND as u64);
        drop(s);
        let st = col.stop().stats;
        eprintln!("{st}");
        assert!(st.rotations >= 2, "{st}");
        assert_eq!(st.lost, 0);
        let (n, text) = generations(&dir, "all.log");
        assert!(n >= 2, "{n} rotated files");
        assert_all_in_order(&text, 0, 3 * ROUND);
        let _ = std::fs::remove_dir_all(&dir);
    }
);

backend_test!(
    udp_only_has_no_tcp_listener_and_tcp_only_no_udp_socket,
    choice | c | {
        let dir = tempdir(&format!("udponly-{c:?}"));
        let cfg = SyslogConfig {
            udp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("{input}.log").unwrap(),
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        assert_eq!(col.tcp_addr(), None, "a UDP-only collector binds no TCP port");
        let to = col.udp_addr().unwrap();
        let sock = UdpSocket::bind(loopback()).unwrap();
        for seq in 0..100 {
            sock.send_to(numbered(0, seq).as_bytes(), to).unwrap();
        }
        let accounted = |s: &SyslogStats| s.udp.received + s.udp.dropped + s.udp_kernel_drops;
        wait_for("every datagram accounted for", || accounted(&col.stats()) == 100);
        let r = col.stop();
        assert_eq!((r.server.stats.accepted, r.server.stats.refused), (0, 0));
        assert_eq!(r.stats.udp.written, r.stats.udp.received, "{}", r.stats);
        assert!(r.stats.udp.written > 0, "{}", r.stats);
        let files = files(&dir);
        assert_eq!(files["udp.log"].lines().count() as u64, r.stats.udp.written);

        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("{input}.log").unwrap(),
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        assert_eq!(col.udp_addr(), None, "a TCP-only collector binds no UDP socket");
        drop(send_numbered(col.tcp_addr().unwrap(), 0, 10, false));
        wait_for("ten written", || col.stats().tcp.written == 10);
        let _ = col.stop();
        assert!(
            Collector::start(
                SyslogConfig { dir: dir.clone(), ..SyslogConfig::default() },
                ServerConfig { backend: c, ..ServerConfig::default() }
            )
            .is_err_and(|e| e.to_string().contains("no input"))
        );
        assert!(
            Collector::start(
                SyslogConfig {
                    tcp: Some(loopback()),
                    dir: dir.clone(),
                    rotate_time: Some(Duration::ZERO),
                    ..SyslogConfig::default()
                },
                ServerConfig { backend: c, ..ServerConfig::default() }
            )
            .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
);

/// The exposition parsed by `prometheus_client.parser` (Python): `name{label="v",...}` → value
/// for every sample; `None` (after a `SKIP` line) without python3 and prometheus_client.
fn parse_exposition(text: &str) -> Option<BTreeMap<String, f64>> {
    use std::process::Stdio;
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
"#;
    let probe = Command::new("python3").args(["-c", "import prometheus_client"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("python3 with prometheus_client is not installed (pip install prometheus_client)");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (k, v) = line.rsplit_once(' ').unwrap();
        samples.insert(k.to_owned(), v.parse().unwrap());
    }
    Some(samples)
}

fn scrape(addr: SocketAddr) -> String {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(deadline())).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

backend_test!(
    metrics_expose_the_syslog_counters,
    choice | c | {
        let dir = tempdir(&format!("metrics-{c:?}"));
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            udp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("{input}.log").unwrap(),
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        let m = iocp_server::metrics::start(
            col.live_stats(),
            ServerConfig { backend: c, ..iocp_server::metrics::config(loopback()) },
        )
        .unwrap();
        let Some(before) = parse_exposition(&scrape(m.local_addr())) else { return };
        let v = |m: &BTreeMap<String, f64>, k: &str| {
            *m.get(k).unwrap_or_else(|| panic!("no sample {k} in {:#?}", m.keys()))
        };
        assert_eq!(v(&before, r#"iocp_syslog_received_total{input="tcp"}"#), 0.0);
        assert_eq!(v(&before, r#"iocp_syslog_written_total{input="udp"}"#), 0.0);
        drop(send_numbered(col.tcp_addr().unwrap(), 0, 50, false));
        let mut s = TcpStream::connect(col.tcp_addr().unwrap()).unwrap();
        s.write_all(b"\xff\xfe not syslog\n").unwrap();
        drop(s);
        let u = UdpSocket::bind(loopback()).unwrap();
        u.send_to(numbered(1, 0).as_bytes(), col.udp_addr().unwrap()).unwrap();
        wait_for("51 TCP and 1 UDP message written", || {
            let s = col.stats();
            s.tcp.written == 51 && s.udp.written + s.udp.dropped + s.udp_kernel_drops == 1
        });
        let after = parse_exposition(&scrape(m.local_addr())).unwrap();
        let st = col.stats();
        assert_eq!(v(&after, r#"iocp_syslog_received_total{input="tcp"}"#), 51.0);
        assert_eq!(v(&after, r#"iocp_syslog_parsed_total{input="tcp"}"#), 50.0);
        assert_eq!(v(&after, r#"iocp_syslog_malformed_total{input="tcp"}"#), 1.0);
        assert_eq!(v(&after, r#"iocp_syslog_written_total{input="tcp"}"#), 51.0);
        assert_eq!(v(&after, r#"iocp_syslog_written_total{input="udp"}"#), st.udp.written as f64);
        assert_eq!(v(&after, r#"iocp_syslog_dropped_total{input="udp"}"#), st.udp.dropped as f64);
        assert_eq!(
            v(&after, r#"iocp_syslog_received_bytes_total{input="tcp"}"#),
            st.tcp.bytes as f64
        );
        assert!(v(&after, "iocp_syslog_batches_total{}") >= 1.0);
        assert_eq!(v(&after, "iocp_syslog_written_bytes_total{}"), st.bytes_written as f64);
        assert_eq!(v(&after, "iocp_syslog_batch_messages_total{}"), st.batch_msgs as f64);
        assert!(after.contains_key("iocp_syslog_queued_bytes{}"));
        assert!(after.contains_key("iocp_syslog_udp_kernel_drops_total{}"));
        // The server's own metrics are still there.
        assert!(v(&after, "iocp_server_connections_accepted_total{}") >= 2.0);
        let _ = m.stop();
        let _ = col.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
);

backend_test!(
    a_cut_last_line_is_ended_before_writing_on,
    choice | c | {
        // What a kill -9 in the middle of a write can leave: a last line without its end.
        let dir = tempdir(&format!("cut-{c:?}"));
        std::fs::write(dir.join("all.log"), "a whole line\n<134>1 2026-12-02T17:00").unwrap();
        let cfg = SyslogConfig {
            tcp: Some(loopback()),
            dir: dir.clone(),
            template: Template::parse("all.log").unwrap(),
            ..SyslogConfig::default()
        };
        let col = start(c, cfg);
        drop(send_numbered(col.tcp_addr().unwrap(), 0, 2, false));
        wait_for("two written", || col.stats().tcp.written == 2);
        let _ = col.stop();
        let text = std::fs::read_to_string(dir.join("all.log")).unwrap();
        let want = format!(
            "a whole line\n<134>1 2026-12-02T17:00\n{}\n{}\n",
            numbered(0, 0),
            numbered(0, 1)
        );
        assert_eq!(text, want);
        let _ = std::fs::remove_dir_all(&dir);
    }
);

/// The fuzz corpus (`fuzz/corpus/syslog_input`, seeds for `cargo fuzz run syslog_input`)
/// through the input path, each file whole and with a byte flipped at every position: no
/// panic, every frame within the limit, every path inside the directory.
#[test]
fn the_fuzz_corpus_replays_without_a_fault() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/syslog_input");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        assert!(iocp_server::syslog::fuzzing::drive(&data) >= 1, "{}", path.display());
        for i in 0..data.len() {
            let mut m = data.clone();
            m[i] ^= 0x5a;
            iocp_server::syslog::fuzzing::drive(&m);
        }
        files += 1;
    }
    assert!(files >= 10, "the corpus is in {}", dir.display());
}
