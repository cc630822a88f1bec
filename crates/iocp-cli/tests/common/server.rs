//! A `iocp serve ...` child process: its address, its stderr lines, its RSS and CPU time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use iocp_testkit::deadline;

/// A running `iocp serve ...`; killed if the test fails.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// stderr lines after the "listening" line, with the time each was read.
    pub lines: mpsc::Receiver<(Instant, String)>,
}

impl ServerProcess {
    /// Starts `iocp serve echo --threads 2 ARGS` and waits for its "listening on ADDR" line;
    /// `Err` holds what it printed if it exited instead.
    pub fn start(args: &[&str]) -> Result<Self, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iocp"));
        cmd.args(["serve", "echo", "--threads", "2"]).args(args);
        Self::spawn(cmd)
    }

    /// Runs `cmd` (an `iocp serve ...` command line, maybe behind a shell) with `RUST_LOG=warn`
    /// and no `IOCP_BACKEND`, and waits for its "listening on ADDR" line.
    pub fn spawn(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd
            .env_remove("IOCP_BACKEND")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning iocp");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let mut seen = String::new();
        loop {
            match lines.recv_timeout(deadline()) {
                Ok((_, line)) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest.split_whitespace().next().expect("an address");
                        let addr = addr.parse().expect("a socket address");
                        return Ok(ServerProcess { child, addr, lines });
                    }
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    seen.push_str(&format!("({e:?}; exit: {status:?})"));
                    return Err(seen);
                }
            }
        }
    }

    /// VmRSS of the server process, in bytes.
    /// RSS split as the kernel counts it: anonymous pages (heap, stacks: what the server
    /// allocated) and file pages (the binary's and libraries' code and data, faulted in as code
    /// paths first run). Bytes.
    #[allow(dead_code)] // used by the soak only
    pub fn rss_parts(&self) -> Rss {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading /proc/PID/status");
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{key} in /proc/PID/status"))
                * 1024
        };
        Rss { total: kb("VmRSS:"), anon: kb("RssAnon:"), file: kb("RssFile:") }
    }

    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading /proc/PID/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    /// User + system CPU time of the server process so far, in clock ticks (USER_HZ: 100 a
    /// second on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("reading /proc/PID/stat");
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime 14, stime 15.
        let after = &stat[stat.rfind(')').expect("(comm) in /proc/PID/stat") + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let n = |i: usize| f[i - 3].parse::<u64>().expect("a number in /proc/PID/stat");
        n(14) + n(15)
    }

    /// Sends SIGTERM and returns the stop report line (`iocp: stopped: ...`).
    pub fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let end = Instant::now() + deadline();
        let report = loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, line)) if line.starts_with("iocp: stopped:") => break line,
                Ok(_) => continue,
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("the server printed no stop report within {:?}", deadline());
                }
            }
        };
        let status = self.child.wait().expect("waiting for the server");
        assert!(status.success(), "the server exited with {status}");
        report
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The number before `what` in a stop report (`... 5000 connections accepted, ...`).
pub fn field(report: &str, what: &str) -> u64 {
    let at = report.find(what).unwrap_or_else(|| panic!("no {what:?} in {report:?}"));
    let num = report[..at].trim_end().rsplit([' ', ',', ':']).next().expect("a number");
    num.parse().unwrap_or_else(|_| panic!("no number before {what:?} in {report:?}"))
}

/// Resident memory of a process, bytes ([`ServerProcess::rss_parts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // used by the soak only
pub struct Rss {
    pub total: u64,
    pub anon: u64,
    pub file: u64,
}
