//! fd exhaustion at the server: `iocp serve echo|http` under `ulimit -n 256` and 1,000
//! connection attempts, on each backend. The server logs EMFILE at most about once a second
//! (not once per failed accept), keeps serving the connections it holds, does not spin, and
//! accepts again once descriptors free up.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::ServerProcess;
use iocp::BackendKind;
use iocp_testkit::{choice_for, deadline, raise_fd_limit};

const FD_LIMIT: u32 = 256;
const ATTEMPTS: usize = 1_000;
/// How long the storm's connections are held while the server is out of descriptors.
const HOLD: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq)]
enum Svc {
    Echo,
    Http,
}

fn docroot(backend: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("iocp-exhaustion-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the docroot");
    std::fs::write(dir.join("hello.txt"), b"hello").expect("writing hello.txt");
    dir
}

/// One exchange on `s`: an echo round trip, or `GET /hello.txt` and its whole response: a 200,
/// or (`short`: the server may be out of descriptors, and opening the file needs one) a 5xx.
fn exchange(svc: Svc, s: &mut TcpStream, what: &str, short: bool) {
    match svc {
        Svc::Echo => {
            let msg = b"ping-through-the-storm";
            s.write_all(msg).unwrap_or_else(|e| panic!("{what}: send: {e}"));
            let mut got = [0u8; 22];
            s.read_exact(&mut got).unwrap_or_else(|e| panic!("{what}: echo: {e}"));
            assert_eq!(&got, msg, "{what}: wrong echo");
        }
        Svc::Http => {
            s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap_or_else(|e| panic!("{what}: send: {e}"));
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap_or_else(|e| panic!("{what}: response head: {e}"));
                got.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
            let ok = head.starts_with("http/1.1 200");
            assert!(ok || (short && head.starts_with("http/1.1 5")), "{what}: {head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{what}: no content-length: {head}"));
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).unwrap_or_else(|e| panic!("{what}: body: {e}"));
            if ok {
                assert_eq!(body, b"hello", "{what}");
            }
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, deadline()).expect("connecting");
    s.set_read_timeout(Some(deadline())).expect("SO_RCVTIMEO");
    s
}

fn is_emfile(line: &str) -> bool {
    line.contains("Too many open files") || line.contains("os error 24")
}

fn storm(kind: BackendKind, backend: &str, svc: Svc) {
    if choice_for(kind).is_none() {
        return;
    }
    // The client holds every attempt open; the server's limit is lowered in its own shell.
    if !raise_fd_limit(ATTEMPTS as u64 + 256) {
        return;
    }
    let root = docroot(&format!("{backend}-{}", if svc == Svc::Echo { "echo" } else { "http" }));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_iocp"))
        .arg("serve");
    match svc {
        Svc::Echo => cmd.arg("echo"),
        Svc::Http => cmd.args(["http", "--root"]).arg(&root),
    };
    cmd.args(["--threads", "2", "--backend", backend, "--addr", "127.0.0.1:0"]);
    let server = ServerProcess::spawn(cmd)
        .unwrap_or_else(|out| panic!("{backend}: the server did not start:\n{out}"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id()))
        .expect("reading /proc/PID/limits");
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).expect("a NOFILE line");
    assert!(nofile.contains(&FD_LIMIT.to_string()), "{backend}: the limit applies: {nofile}");

    // An established connection, used again during the storm.
    let mut first = connect(server.addr);
    exchange(svc, &mut first, "before the storm", false);

    let started = Instant::now();
    let cpu_before = server.cpu_ticks();
    // The kernel completes the handshakes (listen backlog 1,024) whether or not the server can
    // accept them: about FD_LIMIT are accepted, the rest wait in the backlog.
    let storm: Vec<TcpStream> = (0..ATTEMPTS).map(|_| connect(server.addr)).collect();
    // A connection the server accepted before it ran out still works during the storm.
    exchange(svc, &mut first, "during the storm", true);
    // Hold the storm (the server stays out of descriptors with a full backlog), then check
    // that the server neither spun nor logged per failed accept.
    let hold_end = Instant::now() + HOLD;
    let mut emfile = Vec::new();
    loop {
        let left = hold_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match server.lines.recv_timeout(left) {
            Ok((at, line)) if is_emfile(&line) => emfile.push((at, line)),
            Ok(_) => {}
            Err(_) => {}
        }
    }
    exchange(svc, &mut first, "at the end of the storm", true);
    let wall = started.elapsed();
    let cpu = (server.cpu_ticks() - cpu_before) as f64 / 100.0;
    let share = cpu / wall.as_secs_f64();
    assert!(share < 0.5, "{backend}: the server used {cpu:.2} s of CPU in {wall:?}: it spins");

    // Descriptors free up: the storm closes, the server drains its backlog and accepts again.
    drop(storm);
    let mut again = connect(server.addr);
    exchange(svc, &mut again, "after the storm", false);
    drop((first, again));
    // The lines logged while the backlog drained count too.
    let wall = started.elapsed();
    emfile.extend(server.lines.try_iter().filter(|(_, l)| is_emfile(l)));
    eprintln!(
        "{backend}: {ATTEMPTS} attempts, {:?} held: server CPU {cpu:.2} s ({:.0} % of a core)",
        HOLD,
        share * 100.0
    );
    eprintln!("{backend}: {} EMFILE log lines in {wall:?}", emfile.len());
    assert!(
        !emfile.is_empty(),
        "{backend}: the server never ran out of descriptors (or never said)"
    );
    // About one a second: a line when the condition starts and at most one per further second.
    let allowed = wall.as_secs() as usize + 2;
    assert!(
        emfile.len() <= allowed,
        "{backend}: {} EMFILE log lines in {wall:?} (at most {allowed}): first {:?}",
        emfile.len(),
        emfile.iter().take(5).map(|(_, l)| l).collect::<Vec<_>>()
    );
    let gaps: Vec<Duration> = emfile.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(500)),
        "{backend}: EMFILE lines closer than a second apart: {gaps:?}"
    );
    let report = server.stop();
    eprintln!("{backend}: {report}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn echo_fd_exhaustion_epoll() {
    storm(BackendKind::Epoll, "epoll", Svc::Echo);
}

#[test]
fn echo_fd_exhaustion_uring() {
    storm(BackendKind::Uring, "uring", Svc::Echo);
}

#[test]
fn http_fd_exhaustion_epoll() {
    storm(BackendKind::Epoll, "epoll", Svc::Http);
}

#[test]
fn http_fd_exhaustion_uring() {
    storm(BackendKind::Uring, "uring", Svc::Http);
}
