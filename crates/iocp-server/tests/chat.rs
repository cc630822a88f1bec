//! The chat server end to end: WebSocket clients (tungstenite) and TCP line clients on one
//! hub, on both backends.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use iocp::BackendChoice;
use iocp_server::{Chat, ChatConfig, ChatHub, Server, ServerConfig};
use iocp_testkit::{backend_test, deadline};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

struct Pair {
    web: Server<Chat>,
    tcp: Server<Chat>,
    hub: ChatHub,
}

fn start(c: BackendChoice, cfg: ChatConfig) -> Pair {
    let hub = ChatHub::new(cfg);
    let sc = ServerConfig {
        backend: c,
        threads: 2,
        grace: deadline(),
        linger: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let web = Server::start(hub.web(), sc.clone()).unwrap();
    let tcp = Server::start(hub.tcp(), sc).unwrap();
    Pair { web, tcp, hub }
}

impl Pair {
    fn stop(self) {
        for r in [self.web.stop(), self.tcp.stop()] {
            assert_eq!(r.stats.panics, 0, "{r:?}");
            assert_eq!(r.pool.panics, 0, "{r:?}");
        }
    }
    fn wait_members(&self, n: u64) {
        let end = Instant::now() + deadline();
        while self.hub.stats().members != n {
            assert!(Instant::now() < end, "members: {:?}", self.hub.stats());
            thread::sleep(Duration::from_millis(2));
        }
    }
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(deadline())).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}/ws").as_str(), tcp).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Reads events until one of type `ty` (returned); the others are skipped.
fn expect(ws: &mut Ws, ty: &str) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
            Message::Close(f) => panic!("closed while waiting for {ty}: {f:?}"),
            _ => {}
        }
    }
}

struct Line {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

fn tcp(addr: SocketAddr) -> Line {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(deadline())).unwrap();
    Line { r: BufReader::new(s.try_clone().unwrap()), w: s }
}

impl Line {
    fn say(&mut self, l: &str) {
        self.w.write_all(format!("{l}\n").as_bytes()).unwrap();
    }
    /// Reads lines until one containing `needle`.
    fn expect(&mut self, needle: &str) -> String {
        loop {
            let mut l = String::new();
            assert!(self.r.read_line(&mut l).unwrap() > 0, "EOF waiting for {needle:?}");
            if l.contains(needle) {
                return l;
            }
        }
    }
}

backend_test!(
    websocket_and_tcp_clients_talk_to_each_other,
    choice | c | {
        let p = start(c, ChatConfig::default());
        let mut a = ws(p.web.local_addr());
        assert!(expect(&mut a, "welcome")["nick"].as_str().unwrap().starts_with("guest"));
        send(&mut a, json!({"type": "nick", "nick": "ann"}));
        assert_eq!(expect(&mut a, "welcome")["nick"], "ann");
        let mut b = tcp(p.tcp.local_addr());
        b.expect("* welcome");
        b.say("/nick bob");
        b.expect("you are bob");
        let j = expect(&mut a, "join");
        assert_eq!(j["room"], "lobby");
        expect(&mut a, "nick");
        // TCP → WebSocket, to the room.
        b.say("hello from tcp");
        let m = expect(&mut a, "msg");
        assert_eq!(
            (&m["from"], &m["text"], &m["room"]),
            (&json!("bob"), &json!("hello from tcp"), &json!("lobby"))
        );
        assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
        // WebSocket → TCP.
        send(&mut a, json!({"type": "msg", "text": "hello from ws"}));
        assert!(b.expect("hello from ws").contains("#lobby <ann> hello from ws"));
        // Private messages, both ways.
        b.say("/msg ann psst");
        let pm = expect(&mut a, "pm");
        assert_eq!(
            (&pm["from"], &pm["to"], &pm["text"]),
            (&json!("bob"), &json!("ann"), &json!("psst"))
        );
        send(&mut a, json!({"type": "pm", "to": "BOB", "text": "hi bob"}));
        b.expect("*ann -> bob* hi bob");
        // Rooms and presence.
        b.say("/join rust");
        b.expect("you are in #rust");
        send(&mut a, json!({"type": "join", "room": "#Rust"}));
        let joined = expect(&mut a, "joined");
        assert_eq!(joined["members"], json!(["ann", "bob"]));
        b.expect("* ann joined");
        send(&mut a, json!({"type": "rooms"}));
        let rooms = expect(&mut a, "rooms");
        assert_eq!(
            rooms["rooms"],
            json!([{"name": "lobby", "members": 2}, {"name": "rust", "members": 2}])
        );
        send(&mut a, json!({"type": "leave", "room": "rust"}));
        b.expect("#rust * ann left");
        drop(a);
        b.expect("#lobby * ann left");
        p.wait_members(1);
        drop(b);
        p.wait_members(0);
        p.stop();
    }
);

backend_test!(
    history_is_replayed_on_join_and_bounded,
    choice | c | {
        let p = start(c, ChatConfig { history: 5, ..ChatConfig::default() });
        let mut a = tcp(p.tcp.local_addr());
        a.say("/join hist");
        a.expect("you are in #hist");
        for i in 0..8 {
            a.say(&format!("m{i}"));
            a.expect(&format!("> m{i}"));
        }
        let mut b = ws(p.web.local_addr());
        send(&mut b, json!({"type": "join", "room": "hist"}));
        expect(&mut b, "joined");
        for i in 3..8 {
            let m = expect(&mut b, "msg");
            assert_eq!(m["text"], format!("m{i}"));
            assert_eq!(m["room"], "hist");
        }
        // Then live: nothing else from the history.
        a.say("live");
        assert_eq!(expect(&mut b, "msg")["text"], "live");
        p.stop();
    }
);

backend_test!(
    nicknames_are_unique_and_validated,
    choice | c | {
        let p = start(c, ChatConfig::default());
        let mut a = ws(p.web.local_addr());
        expect(&mut a, "welcome"); // the guest name
        send(&mut a, json!({"type": "nick", "nick": "Zed"}));
        assert_eq!(expect(&mut a, "welcome")["nick"], "Zed");
        let mut b = tcp(p.tcp.local_addr());
        b.say("/nick zed");
        b.expect("! nick_taken");
        b.say("/nick 9lives");
        b.expect("! bad_nick");
        send(&mut a, json!({"type": "nick"}));
        assert_eq!(expect(&mut a, "error")["code"], "bad_command");
        a.send(Message::text("not json")).unwrap();
        assert_eq!(expect(&mut a, "error")["code"], "bad_json");
        b.say("/frobnicate");
        b.expect("! bad_command");
        // The name frees when its owner leaves.
        drop(a);
        p.wait_members(1);
        b.say("/nick zed");
        b.expect("you are zed");
        p.stop();
    }
);

backend_test!(
    rate_limit_refuses_then_closes_with_1008,
    choice | c | {
        let p = start(c, ChatConfig { rate: 1.0, burst: 3.0, ..ChatConfig::default() });
        let mut a = ws(p.web.local_addr());
        for i in 0..40 {
            // Written without waiting: the server sees a burst.
            a.write(Message::text(json!({"type": "msg", "text": format!("x{i}")}).to_string()))
                .unwrap();
        }
        a.flush().unwrap();
        let mut limited = 0;
        let code = loop {
            match a.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["code"] == "rate_limited" {
                        limited += 1;
                    }
                }
                Ok(Message::Close(f)) => break f.map(|f| f.code),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(code, Some(CloseCode::Policy));
        assert!(limited >= 20, "{limited}");
        assert!(p.hub.stats().rate_limited >= 20);
        p.stop();
    }
);

backend_test!(
    bad_frames_get_close_codes,
    choice | c | {
        let p = start(c, ChatConfig { max_frame: 1000, ..ChatConfig::default() });
        // Too big: 1009.
        let mut a = ws(p.web.local_addr());
        expect(&mut a, "welcome");
        a.send(Message::text("x".repeat(5000))).unwrap();
        let code = loop {
            match a.read().unwrap() {
                Message::Close(f) => break f.map(|f| f.code),
                _ => continue,
            }
        };
        assert_eq!(code, Some(CloseCode::Size));
        // An unmasked client frame (raw bytes after a real handshake): 1002.
        let mut raw = TcpStream::connect(p.web.local_addr()).unwrap();
        raw.set_read_timeout(Some(deadline())).unwrap();
        raw.write_all(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .unwrap();
        raw.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
        let mut got = Vec::new();
        let _ = raw.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
        let close = got.windows(2).rposition(|w| w[0] == 0x88).unwrap();
        assert_eq!(u16::from_be_bytes([got[close + 2], got[close + 3]]), 1002);
        assert!(p.hub.stats().bad_input >= 2);
        p.stop();
    }
);

backend_test!(
    graceful_stop_sends_1001_after_what_was_queued,
    choice | c | {
        let p = start(c, ChatConfig::default());
        let mut a = ws(p.web.local_addr());
        let mut b = tcp(p.tcp.local_addr());
        expect(&mut a, "welcome");
        b.expect("* welcome");
        p.wait_members(2);
        b.say("before the stop");
        expect(&mut a, "msg");
        b.expect("before the stop");
        p.stop();
        let code = loop {
            match a.read() {
                Ok(Message::Close(f)) => break f.map(|f| f.code),
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        };
        assert_eq!(code, Some(CloseCode::Away));
        b.expect("* server shutting down");
    }
);

backend_test!(
    the_page_is_served_at_root,
    choice | c | {
        let p = start(c, ChatConfig::default());
        let mut s = TcpStream::connect(p.web.local_addr()).unwrap();
        s.set_read_timeout(Some(deadline())).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        p.stop();
    }
);
