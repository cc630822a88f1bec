//! `iocp bench syslog` against `iocp serve syslog` (on the backend IOCP_BACKEND names, so CI
//! covers both): a few thousand numbered messages over TCP in both framings and formats are all
//! in the files, once and in order; UDP at a low rate is counted; the server stops cleanly.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::iocp;
use iocp_testkit::deadline;

/// A running `iocp serve syslog`; killed if the test fails.
struct Collector {
    child: Child,
    tcp: SocketAddr,
    udp: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Collector {
    fn start(dir: &Path) -> Collector {
        Collector::start_with(dir, &[])
    }

    fn start_with(dir: &Path, extra: &[&str]) -> Collector {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iocp"))
            .args(["serve", "syslog", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
            .args(["--threads", "2", "--template", "{app}.log"])
            .args(extra)
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
        let mut c = Collector {
            child,
            tcp: ([0, 0, 0, 0], 0).into(),
            udp: ([0, 0, 0, 0], 0).into(),
            lines,
        };
        loop {
            let line = c.lines.recv_timeout(deadline()).expect("the collector's address line");
            // iocp syslog: tcp 127.0.0.1:PORT udp 127.0.0.1:PORT -> DIR; ...
            if let Some(rest) = line.strip_prefix("iocp syslog: tcp ") {
                let w: Vec<&str> = rest.split_whitespace().collect();
                c.tcp = w[0].parse().expect("a TCP address");
                c.udp = w[2].parse().expect("a UDP address");
                return c;
            }
        }
    }

    /// SIGTERM; the exit status must be success and the stop report printed.
    fn stop(mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let end = Instant::now() + deadline();
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < end, "the collector did not stop within {:?}", deadline());
            let _ = self.lines.recv_timeout(Duration::from_millis(50));
        }
        assert!(self.child.wait().expect("wait").success(), "the collector failed");
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
    let dir = std::env::temp_dir().join(format!("iocp-syslog-bench-{}-{what}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the output directory");
    dir
}

fn bench(args: &[&str]) -> Value {
    let run = iocp(args, Duration::from_secs(60));
    let line = run.stdout.lines().last().unwrap_or_default().to_owned();
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", run.stdout, run.stderr));
    assert!(run.status.code().is_some_and(|c| c <= 1), "{:?}: {}", run.status, run.stderr);
    v
}

fn int(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

#[test]
fn every_tcp_message_is_written_once_and_in_order() {
    let dir = tmp_dir("tcp");
    let col = Collector::start(&dir);
    let (tcp, udp) = (col.tcp.to_string(), col.udp.to_string());
    let pid = col.child.id().to_string();
    let d = dir.to_str().expect("a UTF-8 path");
    let common = ["--json", "--check-dir", d, "--settle", "300ms", "--server-pid", &pid];
    for (format, framing) in [("rfc5424", "lf"), ("rfc3164", "octet")] {
        let mut args = vec!["bench", "syslog", "--tcp", &tcp, "-c", "3", "--count", "3000"];
        args.extend(["--format", format, "--framing", framing, "--batch", "16"]);
        args.extend(common);
        let v = bench(&args);
        assert_eq!(
            (int(&v, "sent"), int(&v, "written"), int(&v, "missing")),
            (3000, 3000, 0),
            "{format} {framing}: {v}"
        );
        assert_eq!((int(&v, "duplicated"), int(&v, "out_of_order")), (0, 0), "{v}");
        assert_eq!((int(&v, "errors"), int(&v, "unexpected")), (0, 0), "{v}");
        assert_eq!(v["ok"], Value::Bool(true), "{v}");
        let senders = v["senders"].as_array().expect("senders");
        assert_eq!(senders.len(), 3);
        assert!(senders.iter().all(|s| s["written"] == 1000), "{v}");
        assert!(v["server_cpu_us_per_msg"].is_number(), "{v}");
    }
    // UDP at a rate a loopback socket keeps up with: every datagram is accounted for.
    let mut args = vec!["bench", "syslog", "--udp", &udp, "--udp-senders", "2"];
    args.extend(["--count", "1000", "--rate", "5000"]);
    args.extend(common);
    let v = bench(&args);
    assert_eq!(int(&v, "sent"), 1000, "{v}");
    assert_eq!(int(&v, "written") + int(&v, "missing"), 1000, "{v}");
    assert!(int(&v, "written") >= 900, "most datagrams at 5000/s arrive: {v}");
    assert_eq!((int(&v, "duplicated"), int(&v, "udp_sent")), (0, 1000), "{v}");
    // The first run's lines are still there, told apart by their run number.
    assert!(int(&v, "other_lines") >= 6000, "{v}");
    col.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--latency` against a collector that fsyncs every batch: every line written is timed from
/// its send, and the figures are sane.
#[test]
fn latency_times_every_line_with_fsync_batch() {
    let dir = tmp_dir("latency");
    let col = Collector::start_with(&dir, &["--fsync", "batch"]);
    let tcp = col.tcp.to_string();
    let d = dir.to_str().expect("a UTF-8 path");
    let args = ["bench", "syslog", "--tcp", &tcp, "-c", "2", "--count", "2000", "--rate", "4000"];
    let v = bench(
        &[&args[..], &["--json", "--check-dir", d, "--settle", "300ms", "--latency"]].concat(),
    );
    assert_eq!((int(&v, "written"), int(&v, "missing")), (2000, 0), "{v}");
    let lat = &v["latency_us"];
    assert_eq!(int(lat, "n"), 2000, "every line timed once: {v}");
    let (p50, p99, max) = (int(lat, "p50"), int(lat, "p99"), int(lat, "max"));
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{v}");
    assert!(max < 10_000_000, "a line took more than 10 s to reach its file: {v}");
    col.stop();
    let _ = std::fs::remove_dir_all(&dir);
    // Without --check-dir there is nothing to follow: a clear error.
    let run = iocp(&["bench", "syslog", "--tcp", &tcp, "--latency"], deadline());
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--check-dir"), "{}", run.stderr);
}

#[test]
fn a_missing_server_is_an_error_not_a_hang() {
    let dir = tmp_dir("none");
    let d = dir.to_str().expect("a UTF-8 path");
    // A port nothing listens on: every sender fails to connect; exit 1, within the deadline.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let args = ["bench", "syslog", "--tcp", &addr, "-c", "2", "--count", "10"];
    let run =
        iocp(&[&args[..], &["--json", "--check-dir", d, "--settle", "100ms"]].concat(), deadline());
    assert_eq!(run.status.code(), Some(1), "{}{}", run.stdout, run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!((int(&v, "sent"), int(&v, "errors")), (0, 2), "{v}");
    let bad = iocp(&["bench", "syslog", "--count", "10"], deadline());
    assert_eq!(bad.status.code(), Some(2), "no input given: {}", bad.stderr);
    assert!(bad.stderr.contains("--tcp"), "{}", bad.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
