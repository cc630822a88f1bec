//! The chat page in a real browser: two headless Chromium pages on `iocp_server::chat`, one
//! sends, the other shows it; a screenshot is saved to `target/artifacts/chat.png`.
//!
//! Needs `chromium` (installed by `.ci/run`); skips with a `SKIP` line when it is missing,
//! unless `IOCP_REQUIRE_TOOLS=1`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use iocp_server::{ChatConfig, ChatHub, Server, ServerConfig};
use iocp_testkit::deadline;

fn require_tools() -> bool {
    std::env::var("IOCP_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!require_tools(), "IOCP_REQUIRE_TOOLS=1 but {why}");
    eprintln!("SKIP: {why}");
}

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
    /// Connects to the page target `n` (in the browser's list order) of the browser on `port`.
    fn connect(port: u16, skip: usize) -> Cdp {
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
            .filter(|t| t["type"] == "page")
            .nth(skip)
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

/// Polls `expr` on the page until it is true.
fn wait(cdp: &mut Cdp, expr: &str, what: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while cdp.eval(expr) != serde_json::Value::Bool(true) {
        let log = cdp.eval("document.body.innerText");
        assert!(Instant::now() < end, "{what}: page says {log}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_browser_pages_chat() {
    let Some(bin) = chromium() else {
        return skip("chromium is not installed (apt-get install chromium)");
    };
    let hub = ChatHub::new(ChatConfig::default());
    let cfg = ServerConfig {
        backend: iocp_testkit::env_backend(),
        threads: 2,
        grace: deadline(),
        ..ServerConfig::default()
    };
    let web = Server::start(hub.web(), cfg).unwrap();
    let url = format!("http://{}/", web.local_addr());
    let (browser, port) = launch(bin);
    let mut one = Cdp::connect(port, 0);
    one.call("Page.navigate", serde_json::json!({ "url": url }));
    wait(
        &mut one,
        "document.getElementById('status').textContent === 'connected'",
        "page 1 connects",
    );
    one.eval(
        "localStorage.clear(); document.getElementById('nick').value = 'ann'; \
              document.querySelector('#nickf button').click(); true",
    );
    wait(&mut one, "document.getElementById('me').textContent === 'ann'", "page 1 is ann");
    one.call("Target.createTarget", serde_json::json!({ "url": url }));
    let mut two = Cdp::connect(port, 0);
    if two.eval("location.href") != serde_json::Value::String(url.clone()) {
        two = Cdp::connect(port, 1);
    }
    wait(
        &mut two,
        "document.getElementById('status').textContent === 'connected'",
        "page 2 connects",
    );
    // Page 1 sees page 2 arrive (presence), then sends; page 2 shows it.
    wait(&mut one, "document.getElementById('members').innerText.includes('guest')", "presence");
    one.eval(
        "document.getElementById('text').value = 'hello from page one'; \
              document.getElementById('send').click(); true",
    );
    wait(
        &mut two,
        "document.getElementById('log').innerText.includes('<ann> hello from page one')",
        "page 2 shows the message",
    );
    let shot = two.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
    let png = data_encoding::BASE64.decode(shot["data"].as_str().unwrap().as_bytes()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chat.png"), &png).unwrap();
    eprintln!("chat screenshot: {}", dir.join("chat.png").display());
    assert_eq!(hub.stats().members, 2);
    drop(one);
    drop(two);
    drop(browser);
    let r = web.stop();
    assert_eq!(r.stats.panics, 0);
}
