//! A tokio + tokio-tungstenite broadcast chat server, written the way their docs show: one
//! task per WebSocket connection, a `tokio::sync::broadcast` channel per room (a message is
//! encoded once and the same `Utf8Bytes` goes to every subscriber), and each connection's
//! subscriptions merged with `tokio_stream::StreamMap`.
//!
//! It speaks the subset of `iocp serve chat`'s JSON protocol that `iocp bench chat` uses:
//! every connection gets `welcome` and starts in `lobby`; `{"type":"join","room":R}` answers
//! `joined`, `{"type":"leave","room":R}` answers `left`, `{"type":"msg","room":R,"text":T}`
//! sends `{"type":"msg","room","from","text","ts"}` to every member of R (the sender too).
//! No presence events, history, nicknames or rate limits. A subscriber that falls more than
//! `CAPACITY` messages behind skips to the newest (broadcast's `Lagged`), like
//! `iocp serve chat --slow skip`.
//!
//! With `TOKIO_CHAT_FEED=1` a connection gathers what its rooms already hold (up to 64 messages)
//! with `feed` and flushes once, instead of one `send` (a write) per message: the variant
//! bench/compare-chat.sh runs as `tokio-feed`, to show what that costs the plain version.
//!
//!   tokio-chat [--addr 127.0.0.1:8090] [--threads N]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages a room's channel holds for its slowest subscriber.
const CAPACITY: usize = 512;

type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>>;

fn main() -> std::io::Result<()> {
    let args = iocp_bench_peers::args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await?;
        eprintln!("tokio-chat: listening on {} with {} workers", args.addr, args.threads);
        let rooms: Rooms = Arc::default();
        let guests = Arc::new(AtomicU64::new(1));
        let feed = std::env::var("TOKIO_CHAT_FEED").is_ok_and(|v| v == "1");
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (sock, _) = match accepted {
                        Ok(a) => a,
                        Err(e) => { eprintln!("tokio-chat: accept: {e}"); continue; }
                    };
                    let _ = sock.set_nodelay(true);
                    let nick = format!("guest{}", guests.fetch_add(1, Ordering::Relaxed));
                    tokio::spawn(client(sock, rooms.clone(), nick, feed));
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}

fn subscribe(rooms: &Rooms, room: &str) -> BroadcastStream<Utf8Bytes> {
    let mut rooms = rooms.lock().expect("rooms lock");
    let tx = rooms.entry(room.to_owned()).or_insert_with(|| broadcast::channel(CAPACITY).0);
    BroadcastStream::new(tx.subscribe())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn event(v: Value) -> Message {
    Message::text(v.to_string())
}

async fn client(sock: TcpStream, rooms: Rooms, nick: String, feed: bool) {
    let Ok(ws) = tokio_tungstenite::accept_async(sock).await else { return };
    let (mut tx, mut rx) = ws.split();
    let mut subs = StreamMap::new();
    subs.insert("lobby".to_owned(), subscribe(&rooms, "lobby"));
    if tx.send(event(json!({"type": "welcome", "nick": nick}))).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            incoming = rx.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue, // pings are answered by tungstenite
                };
                let reply = command(&text, &rooms, &nick, &mut subs);
                if let Some(r) = reply
                    && tx.send(r).await.is_err()
                {
                    return;
                }
            }
            Some((_, msg)) = subs.next(), if !subs.is_empty() => {
                match msg {
                    Ok(text) if feed => {
                        if tx.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                        // What is already there goes in the same write.
                        for _ in 0..63 {
                            match subs.next().now_or_never() {
                                Some(Some((_, Ok(t)))) => {
                                    if tx.feed(Message::Text(t)).await.is_err() {
                                        return;
                                    }
                                }
                                Some(Some((_, Err(BroadcastStreamRecvError::Lagged(_))))) => {}
                                _ => break,
                            }
                        }
                        if tx.flush().await.is_err() {
                            return;
                        }
                    }
                    Ok(text) => {
                        if tx.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    Err(BroadcastStreamRecvError::Lagged(_)) => {} // skipped to the newest
                }
            }
        }
    }
}

/// Runs one command; the answer to send, if any.
fn command(
    text: &str,
    rooms: &Rooms,
    nick: &str,
    subs: &mut StreamMap<String, BroadcastStream<Utf8Bytes>>,
) -> Option<Message> {
    let error = |code: &str, message: &str| {
        Some(event(json!({"type": "error", "code": code, "message": message})))
    };
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return error("bad_json", "not JSON");
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    match field("type") {
        Some("join") => {
            let room = field("room")?.trim_start_matches('#').to_ascii_lowercase();
            if !subs.contains_key(&room) {
                subs.insert(room.clone(), subscribe(rooms, &room));
            }
            Some(event(json!({"type": "joined", "room": room, "members": []})))
        }
        Some("leave") => {
            let room = field("room")?.trim_start_matches('#').to_ascii_lowercase();
            subs.remove(&room);
            Some(event(json!({"type": "left", "room": room})))
        }
        Some("msg") | Some("say") => {
            let (Some(room), Some(text)) = (field("room"), field("text")) else {
                return error("bad_command", "msg needs room and text");
            };
            let room = room.trim_start_matches('#').to_ascii_lowercase();
            if !subs.contains_key(&room) {
                return error("not_in_room", "join the room first");
            }
            let ev =
                json!({"type": "msg", "room": room, "from": nick, "text": text, "ts": now_ms()});
            let tx = rooms.lock().expect("rooms lock").get(&room).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(Utf8Bytes::from(ev.to_string()));
            }
            None
        }
        _ => error("bad_command", "unknown command"),
    }
}
