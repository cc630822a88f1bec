//! The metrics endpoint (`iocp_server::metrics`) in front of an echo server, on both backends:
//! the exposition parses with Prometheus's own Python parser and its counters move as a load
//! runs; `/health`, `/stats.json` and the event stream answer; and the dashboard, opened in
//! headless Chromium (driven over the DevTools protocol) during a load, shows data that matches
//! `/metrics`, with a screenshot saved to `target/artifacts/dashboard.png`.
//!
//! The parser test needs `python3` with `prometheus_client`, the dashboard test `chromium`:
//! each skips with a `SKIP` line when its tool is missing, unless `IOCP_REQUIRE_TOOLS=1` (set by
//! `.ci/run`, which installs both) turns the skip into a failure.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iocp::BackendChoice;
use iocp_server::metrics::{self, MetricsService};
use iocp_server::{Echo, Server, ServerConfig};
use iocp_testkit::{backend_test, deadline};

const MSG: usize = 64;

fn require_tools() -> bool {
    std::env::var("IOCP_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!require_tools(), "IOCP_REQUIRE_TOOLS=1 but {why}");
    eprintln!("SKIP: {why}");
}

fn start(backend: BackendChoice) -> (Server<Echo>, Server<MetricsService>) {
    let echo = Server::start(
        Echo,
        ServerConfig { backend, threads: 2, grace: deadline(), ..ServerConfig::default() },
    )
    .unwrap();
    let cfg = ServerConfig { backend, ..metrics::config(SocketAddr::from(([127, 0, 0, 1], 0))) };
    let m = metrics::start(echo.live_stats(), cfg).unwrap();
    (echo, m)
}

/// One GET over a fresh connection (the endpoint closes after each response): status, body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(deadline())).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Echo ping-pong: one connection sending `count` messages (or until `stop`), each read back
/// whole before the next.
fn echo_client(addr: SocketAddr, count: u64, stop: &AtomicBool, sent: &AtomicU64) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(deadline())).unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [7u8; MSG];
    let mut back = [0u8; MSG];
    let mut n = 0;
    while n < count && !stop.load(Ordering::Relaxed) {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    s
}

/// The exposition parsed by `prometheus_client.parser` (Python): `name{label="v",...}` → value
/// for every sample; `None` (after a `SKIP` line) without python3 and prometheus_client.
fn parse_exposition(text: &str) -> Option<BTreeMap<String, f64>> {
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

fn sample(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

backend_test!(
    exposition_parses_and_counters_move_under_load,
    choice | backend | {
        let (echo, m) = start(backend);
        let (status, before) = get(m.local_addr(), "/metrics");
        assert_eq!(status, 200);
        let Some(before) = parse_exposition(&before) else { return };
        assert_eq!(sample(&before, "iocp_server_connections_accepted_total{}"), 0.0);

        const CONNS: u64 = 3;
        const PER_CONN: u64 = 200;
        let stop = AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        let streams: Vec<TcpStream> = thread::scope(|s| {
            let hs: Vec<_> = (0..CONNS)
                .map(|_| s.spawn(|| echo_client(echo.local_addr(), PER_CONN, &stop, &sent)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = (CONNS * PER_CONN) as f64;
        // The clients have read every echo back, so every receive has completed and been
        // counted; a send's completion, though, may be reaped after its peer already read the
        // bytes (the worker that sent can be preempted between the two), so the last sends'
        // count can trail for a moment: scrape until it arrives (or the deadline).
        let end = Instant::now() + deadline();
        let after = loop {
            let (_, text) = get(m.local_addr(), "/metrics");
            let now = parse_exposition(&text).unwrap();
            let sent = sample(&now, "iocp_server_sent_bytes_total{}");
            if sent >= total * MSG as f64 || Instant::now() >= end {
                break now;
            }
            thread::sleep(Duration::from_millis(5));
        };
        let d = |k: &str| sample(&after, k) - sample(&before, k);
        assert_eq!(d("iocp_server_connections_accepted_total{}"), CONNS as f64);
        assert_eq!(sample(&after, "iocp_server_connections_active{}"), CONNS as f64);
        // Every byte sent was received and echoed (counted at completion, not at close), and
        // not one more.
        assert_eq!(d("iocp_server_received_bytes_total{}"), total * MSG as f64);
        assert_eq!(d("iocp_server_sent_bytes_total{}"), total * MSG as f64);
        // A message may arrive in more than one receive, never fewer.
        assert!(d("iocp_server_messages_total{}") >= total);
        // One callback in SERVICE_TIME_SAMPLING is timed (on_read and on_sent per message).
        let timed = d("iocp_server_service_seconds_count{}");
        let sampling = f64::from(metrics::SERVICE_TIME_SAMPLING);
        assert!(timed >= total / sampling && timed <= 2.0 * total, "{timed} timed for {total}");
        assert_eq!(
            sample(&after, "iocp_server_service_seconds_bucket{le=\"+Inf\"}"),
            sample(&after, "iocp_server_service_seconds_count{}")
        );
        assert!(d("iocp_port_dequeued_total{}") >= 2.0 * total);
        let workers: f64 = after
            .iter()
            .filter(|(k, _)| k.starts_with("iocp_pool_worker_packets_total{"))
            .map(|(_, v)| v)
            .sum();
        assert!(workers >= 2.0 * total, "per-worker packets {workers}");
        assert_eq!(sample(&after, "iocp_port_concurrency{}"), 2.0);
        assert_eq!(sample(&after, "iocp_port_cq_overflow_total{}"), 0.0);
        let kind = echo.backend().kind().to_string();
        assert_eq!(sample(&after, &format!("iocp_backend{{backend=\"{kind}\"}}")), 1.0);
        // In flight by kind: the posted accepts, and each open connection's receive (a parked
        // one's zero-byte receive counts as one) but for one being re-posted at this instant.
        let ops = |k: &str| sample(&after, &format!("iocp_port_in_flight_ops{{kind=\"{k}\"}}"));
        assert!(ops("accept") >= 1.0, "no accept in flight");
        assert!(ops("receive") >= (CONNS - 1) as f64, "receives in flight: {}", ops("receive"));
        assert_eq!(ops("file"), 0.0);
        let sqes = d("iocp_port_submitted_sqes_total{}");
        let enters = d("iocp_port_submit_enters_total{}");
        if kind == "io_uring" {
            // At least one SQE per message (its send), several per enter at best.
            assert!(
                sqes >= total && enters >= 1.0 && sqes >= enters,
                "{sqes} SQEs, {enters} enters"
            );
        } else {
            assert_eq!((sqes, enters), (0.0, 0.0));
        }
        assert_eq!(sample(&after, "iocp_port_pool_buffers{}"), 0.0);

        // Closing the clients: the closes are counted by reason.
        drop(streams);
        let end = Instant::now() + deadline();
        loop {
            let (_, text) = get(m.local_addr(), "/metrics");
            let now = parse_exposition(&text).unwrap();
            // (A snapshot reads its counters one after another, not at one instant.)
            if sample(&now, "iocp_server_connections_closed_total{reason=\"eof\"}") == CONNS as f64
                && sample(&now, "iocp_server_connections_active{}") == 0.0
            {
                break;
            }
            assert!(Instant::now() < end, "the closes were not counted: {now:#?}");
            thread::sleep(Duration::from_millis(20));
        }
        m.stop();
        echo.stop();
    }
);

backend_test!(
    health_stats_json_and_errors,
    choice | backend | {
        let (echo, m) = start(backend);
        assert_eq!(get(m.local_addr(), "/health"), (200, "ok\n".to_owned()));
        let (status, body) = get(m.local_addr(), "/stats.json");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["accepted"], 0);
        assert_eq!(v["port"]["concurrency"], 2);
        let (status, body) = get(m.local_addr(), "/");
        assert_eq!(status, 200);
        assert!(body.contains("EventSource(\"events\")"));
        assert_eq!(get(m.local_addr(), "/nope").0, 404);
        // A request that is not HTTP gets 400, not a hang.
        let mut s = TcpStream::connect(m.local_addr()).unwrap();
        s.set_read_timeout(Some(deadline())).unwrap();
        s.write_all(b"\x00\x01 nonsense\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 400 "), "{raw}");
        m.stop();
        echo.stop();
    }
);

backend_test!(
    event_stream_sends_one_snapshot_a_second,
    choice | backend | {
        let (echo, m) = start(backend);
        let mut s = TcpStream::connect(m.local_addr()).unwrap();
        s.set_read_timeout(Some(deadline())).unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 200 OK\r\n");
        let mut seen = false;
        while {
            line.clear();
            r.read_line(&mut line).unwrap() > 0 && line != "\r\n"
        } {
            seen |= line.eq_ignore_ascii_case("content-type: text/event-stream\r\n");
        }
        assert!(seen, "no text/event-stream content type");
        let mut at = Vec::new();
        while at.len() < 3 {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
            if let Some(data) = line.strip_prefix("data: ") {
                let v: serde_json::Value = serde_json::from_str(data).unwrap();
                assert!(v["uptime"].is_number());
                at.push(Instant::now());
            }
        }
        // Paced by the metrics server's idle timeout (1 s), not sent back to back.
        let gap = at[2] - at[1];
        assert!(gap >= Duration::from_millis(800), "events {gap:?} apart");
        drop(r);
        m.stop();
        echo.stop();
    }
);

/// A headless Chromium with the DevTools protocol on a free port, killed on drop.
struct Browser {
    child: Child,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Starts the browser; returns it and the port of its DevTools endpoint.
fn launch(bin: &str) -> (Browser, u16) {
    let profile = std::env::temp_dir().join(format!("iocp-chromium-{}", std::process::id()));
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            "--window-size=1100,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let browser = Browser { child, _profile: TempDir(profile) };
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                let port: u16 = rest.split('/').next().unwrap_or("").parse().unwrap_or(0);
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium did not print its DevTools address within 30 s");
    (browser, port)
}

/// One DevTools connection to a page target.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next: u64,
}

impl Cdp {
    fn connect(port: u16) -> Cdp {
        let body = ureq::get(format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let url = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("no page target")
            .to_owned();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), tcp).unwrap();
        Cdp { ws, next: 1 }
    }

    /// Sends a command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next;
        self.next += 1;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws.send(tungstenite::Message::text(msg.to_string())).unwrap();
        loop {
            let reply = self.ws.read().unwrap();
            let Ok(text) = reply.to_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }
}

const READ_PAGE: &str = r##"(() => {
  const v = (id) => Number(document.getElementById(id).getAttribute("data-value"));
  return {
    events: Number(document.body.getAttribute("data-events") || 0),
    points: Number(document.getElementById("c_messages").getAttribute("data-points")),
    paths: document.querySelectorAll("#c_messages path").length,
    status: document.getElementById("status").textContent,
    accepted: v("accepted"), active: v("active"), messages: v("messages"),
    bytes_in: v("bytes_in"), cq_overflow: v("cq_overflow"),
  };
})()"##;

#[test]
fn dashboard_in_headless_chromium_matches_metrics() {
    let Some(bin) = chromium() else {
        return skip("chromium is not installed (apt-get install chromium)");
    };
    let (echo, m) = start(iocp_testkit::env_backend());
    const CONNS: usize = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let addr = echo.local_addr();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            let (stop, sent, ready) = (stop.clone(), sent.clone(), ready_tx.clone());
            thread::spawn(move || {
                // Connect and report, then ping-pong until told to stop (bounded: 80 s).
                let mut s = echo_client(addr, 1, &stop, &sent);
                let _ = ready.send(());
                let t0 = Instant::now();
                let msg = [1u8; MSG];
                let mut back = [0u8; MSG];
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(80) {
                    s.write_all(&msg).unwrap();
                    s.read_exact(&mut back).unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                s
            })
        })
        .collect();
    for _ in 0..CONNS {
        ready_rx.recv_timeout(deadline()).unwrap();
    }

    let (browser, port) = launch(bin);
    let mut cdp = Cdp::connect(port);
    cdp.call("Page.enable", serde_json::json!({}));
    let url = format!("http://{}/", m.local_addr());
    cdp.call("Page.navigate", serde_json::json!({ "url": url }));
    // Wait until the charts have a few points (one a second after the first event); more with
    // IOCP_DASHBOARD_POINTS (for a screenshot with some history: the docs' one has 25).
    let points: Option<u64> =
        std::env::var("IOCP_DASHBOARD_POINTS").ok().and_then(|v| v.parse().ok());
    let points = points.unwrap_or(3).clamp(2, 50);
    let end = Instant::now() + Duration::from_secs(20 + points);
    let page = loop {
        let p = cdp.eval(READ_PAGE);
        if p["points"].as_u64().unwrap_or(0) >= points {
            break p;
        }
        assert!(Instant::now() < end, "the dashboard got no {points} points in time: {p}");
        thread::sleep(Duration::from_millis(100));
    };
    let shot = cdp.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
    // A phone's viewport: one column, nothing wider than the screen.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    );
    let phone_width = cdp.eval("document.documentElement.scrollWidth").as_u64().unwrap();
    let phone = cdp.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
    stop.store(true, Ordering::Relaxed);
    let streams: Vec<TcpStream> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let (_, text) = get(m.local_addr(), "/metrics");
    let metrics = parse_exposition(&text);

    assert_eq!(page["status"], "live", "{page}");
    assert!(page["paths"].as_u64().unwrap() >= 1, "{page}");
    // The tiles hold what the last event said: the same connections the server counts.
    assert_eq!(page["accepted"].as_u64().unwrap(), CONNS as u64, "{page}");
    assert_eq!(page["active"].as_u64().unwrap(), CONNS as u64, "{page}");
    assert_eq!(page["cq_overflow"].as_u64().unwrap(), 0, "{page}");
    let shown = page["messages"].as_u64().unwrap();
    assert!(shown > 0, "{page}");
    // The load went on after the page's last event: the counters only grew.
    let stats = echo.live_stats().snapshot();
    assert!(shown <= stats.messages, "{page} vs {}", stats.messages);
    assert!(page["bytes_in"].as_u64().unwrap() <= stats.bytes_in);
    if let Some(mx) = metrics {
        assert_eq!(sample(&mx, "iocp_server_connections_accepted_total{}"), CONNS as f64);
        assert_eq!(sample(&mx, "iocp_server_connections_active{}"), CONNS as f64);
        assert!(shown as f64 <= sample(&mx, "iocp_server_messages_total{}"));
    }

    assert!(phone_width <= 390, "the dashboard is {phone_width} px wide on a 390 px phone");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    for (shot, name) in [(shot, "dashboard.png"), (phone, "dashboard-phone.png")] {
        let png = data_encoding::BASE64.decode(shot["data"].as_str().unwrap().as_bytes()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = dir.join(name);
        std::fs::write(&path, &png).unwrap();
        eprintln!("dashboard screenshot: {}", path.display());
    }

    drop(cdp);
    drop(browser);
    drop(streams);
    m.stop();
    echo.stop();
}
