//! What the CLI test files share: running the `iocp` binary with a deadline.

#![allow(dead_code, unreachable_pub)] // each test file uses part of it

pub mod server;

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished run printed.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs the `iocp` binary with `args` (without `IOCP_BACKEND`, so the demo's default is the
/// one tested), killing it (and failing) if it runs past `limit`.
pub fn iocp(args: &[&str], limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_iocp"))
        .args(args)
        .env_remove("IOCP_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning iocp");
    // Drain both pipes on their own threads, so a full pipe cannot stall the child.
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).expect("reading iocp output");
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = start + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for iocp") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iocp {args:?} ran longer than {limit:?}; killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        took: start.elapsed(),
    }
}
