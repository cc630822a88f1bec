//! `iocp serve echo --metrics ADDR` and `iocp bench echo --metrics URL` end to end: the bench
//! prints what the server's endpoint saw during the run, and the endpoint serves the
//! Prometheus exposition, the health check and the dashboard.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// `iocp serve echo` on free ports, stopped with SIGTERM on drop.
struct Serve {
    child: Child,
    echo: String,
    metrics: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn serve_echo() -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iocp"))
        .args(["serve", "echo", "--addr", "127.0.0.1:0", "--threads", "2"])
        .args(["--metrics", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning iocp serve");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut echo, mut metrics) = (None, None);
    while echo.is_none() || metrics.is_none() {
        let line = rx.recv_timeout(LIMIT).expect("iocp serve printed no addresses");
        if let Some(rest) = line.strip_prefix("iocp echo: listening on ") {
            echo = rest.split(' ').next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("iocp: metrics on http://") {
            metrics = rest.split('/').next().map(str::to_owned);
        }
    }
    Serve { child, echo: echo.unwrap_or_default(), metrics: metrics.unwrap_or_default() }
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn bench_prints_what_the_servers_metrics_endpoint_saw() {
    let server = serve_echo();
    assert!(get(&server.metrics, "/health").ends_with("\r\n\r\nok\n"));
    assert!(get(&server.metrics, "/").contains("<title>iocp server</title>"));
    let before = get(&server.metrics, "/metrics");
    assert!(before.contains("\niocp_server_messages_total 0\n"), "{before}");

    let url = format!("http://{}", server.metrics);
    let run = common::iocp(
        &["bench", "echo", "--addr", &server.echo, "-c", "2", "-d", "500ms", "--warmup", "0s"],
        LIMIT,
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!run.stdout.contains("server, from"), "no --metrics, no server section");
    let run = common::iocp(
        &["bench", "echo", "--addr", &server.echo, "-c", "2", "-d", "500ms", "--warmup", "0s"]
            .into_iter()
            .chain(["--metrics", &url])
            .collect::<Vec<_>>(),
        LIMIT,
    );
    assert!(run.status.success(), "{}", run.stderr);
    let out = &run.stdout;
    assert!(out.contains(&format!("server, from {url}/metrics")), "{out}");
    // This run's two connections, counted by the server during the run.
    let conns = out.lines().find(|l| l.starts_with("connections accepted")).expect("{out}");
    // (Active at the end depends on whether the server has seen the bench's closes yet.)
    let value = conns.rsplit("  ").next().unwrap_or("");
    assert!(value.trim().starts_with("2 / 0 / "), "{out}");
    assert!(out.contains("port running / concurrency"), "{out}");
    let msgs: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("messages"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a messages line");
    assert!(msgs > 0.0, "{out}");
    let after = get(&server.metrics, "/metrics");
    assert!(after.contains("\niocp_server_connections_accepted_total 4\n"), "{after}");

    // A URL where nothing listens is a clear error before the run.
    let run = common::iocp(
        &["bench", "echo", "--addr", &server.echo, "-d", "100ms", "--metrics", "127.0.0.1:1"],
        LIMIT,
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--metrics"), "{}", run.stderr);
}
