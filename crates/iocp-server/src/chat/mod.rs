//! A real-time chat server on the push path ([`Service::push`]): WebSocket and a browser page
//! on one HTTP port, a line protocol on plain TCP, rooms, private messages, presence and
//! history. Both transports share one [`ChatHub`]; their clients talk to each other.
//!
//! ```no_run
//! use iocp_server::{ChatConfig, ChatHub, Server, ServerConfig};
//! let hub = ChatHub::new(ChatConfig::default());
//! let web = Server::start(hub.web(), ServerConfig::default())?; // page at /, WebSocket at /ws
//! let tcp = Server::start(hub.tcp(), ServerConfig::default())?; // `nc` works
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Protocol
//!
//! Every connection gets a guest nickname (`guestN`) and joins the default room (`lobby`) at
//! once; a member may be in several rooms, the last joined is its *current* room.
//!
//! | WebSocket (JSON text frames) | TCP line | what |
//! |---|---|---|
//! | `{"type":"nick","nick":"ann"}` | `/nick ann` | take a nickname (unique, case-insensitive; 1-24 of `A-Za-z0-9_-`, a letter first) |
//! | `{"type":"join","room":"rust"}` | `/join rust` | join a room (1-32 of `a-z0-9_-`; a leading `#` is dropped) |
//! | `{"type":"leave","room":"rust"}` | `/leave [rust]` | leave a room (default: the current one) |
//! | `{"type":"rooms"}` | `/rooms` | list rooms with member counts |
//! | `{"type":"who","room":"rust"}` | `/who [rust]` | list a room's members |
//! | `{"type":"msg","room":"rust","text":"hi"}` (room optional) | `hi` or `/say rust hi` | a message to a room |
//! | `{"type":"pm","to":"bob","text":"hi"}` | `/msg bob hi` | a private message |
//! | `{"type":"quit"}` | `/quit` | close |
//!
//! The server sends events (JSON objects with a `type`, or lines on TCP): `welcome {nick}`,
//! `joined {room, members}` followed by the room's history (the last
//! [`ChatConfig::history`] `msg` events, replayed as they were sent), `msg {room, from, text,
//! ts}`, `pm {from, to, text, ts}`, presence `join`/`leave {room, nick, ts}` (in rooms of at
//! most [`ChatConfig::presence_max`] members) and
//! `nick {room, old, new, ts}`, `left`, `rooms`, `members` (`joined` and `members` list at most 256 names, sorted), and `error {code, message}` for a
//! refused command (codes in [`ProtoError::code`]). `ts` is the server's time in milliseconds
//! since the Unix epoch (TCP lines show it as `HH:MM:SS` UTC).
//!
//! # Limits
//! - Messages: at most [`ChatConfig::max_text`] bytes of text; a WebSocket message at most
//!   [`ChatConfig::max_frame`] bytes (beyond: close 1009), a TCP line at most
//!   [`ChatConfig::max_line`] bytes (beyond: an error line and a close).
//! - Rate: a token bucket per connection ([`ChatConfig::rate`] per second, bursts of
//!   [`ChatConfig::burst`]); over it, the command is refused with `rate_limited`, and after
//!   [`STRIKES`] refusals in a row the connection is closed (WebSocket close 1008).
//! - WebSocket rules (masking, fragmentation, control frames, UTF-8, close handshake) are
//!   tungstenite's ([`tungstenite::protocol::WebSocketContext`] over the connection's
//!   buffers): a protocol error closes with 1002, invalid UTF-8 with 1007, an oversized
//!   message with 1009, a JSON command that is not understood gets an `error` event. Only
//!   whole frames are handed to it (a partial frame waits in the input), and between
//!   messages the context is dropped: an idle client holds none of tungstenite's memory.
//!   So a frame must arrive whole within the server's request timeout
//!   ([`ServerConfig::request_timeout`](crate::ServerConfig::request_timeout), 10 s by
//!   default; a frame trickled in slower closes with 1008 "frame too slow"), and a frame of
//!   [`ChatConfig::max_frame`] bytes must fit in
//!   [`ServerConfig::max_input`](crate::ServerConfig::max_input) (16 KiB into 64 KiB by
//!   default).
//! - Idle: after the server's idle timeout a WebSocket client is pinged; a second idle timeout
//!   without any frame closes it (1001). A TCP client idle that long is told and closed.
//! - Slow clients: each connection's outgoing queue is bounded ([`ChatConfig::push`]); a
//!   client that does not read is dropped (or skips to the newest), never stalling a room.
//! - Stop: WebSocket clients get a close frame 1001 (going away), TCP clients a line; what was
//!   queued before is delivered first.
//!
//! A message is encoded once per transport (a WebSocket frame and a line), and the same shared
//! buffer is queued to every member.

mod hub;
pub mod proto;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use crate::metrics::{ExtraKind, ExtraMetric};
use crate::server::{CloseReason, Io, Next, Outbox, PushConfig, Service, TimeoutKind};
use hub::{Hub, Kind, Member};
pub use proto::{Command, Event, ProtoError};

/// Refused commands in a row (rate limit) that close the connection.
pub const STRIKES: u32 = 20;

/// The page served at `/`.
const PAGE: &str = include_str!("page.html");

/// The most bytes of an HTTP request head on the web port.
const MAX_HEAD: usize = 8 * 1024;

/// How the chat behaves.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// The room every client starts in.
    pub default_room: String,
    /// Messages kept per room and replayed on join.
    pub history: usize,
    /// Most bytes of a message's text.
    pub max_text: usize,
    /// Most bytes of a WebSocket message (frames reassembled).
    pub max_frame: usize,
    /// Most bytes of a TCP line.
    pub max_line: usize,
    /// Commands per second a connection may send (token refill rate).
    pub rate: f64,
    /// Commands a connection may send at once (bucket size).
    pub burst: f64,
    /// Rooms on the server.
    pub max_rooms: usize,
    /// Rooms one member may be in.
    pub max_rooms_per_member: usize,
    /// Join and leave events are sent only in rooms of at most this many members (the joiner
    /// or leaver counted): in a room of thousands each join is a message to all of them, and
    /// thousands joining are millions of messages. `usize::MAX` (the default): always.
    pub presence_max: usize,
    /// Each connection's outgoing queue.
    pub push: PushConfig,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            default_room: "lobby".into(),
            history: 50,
            max_text: 2000,
            max_frame: 16 * 1024,
            max_line: 4 * 1024,
            rate: 20.0,
            burst: 40.0,
            max_rooms: 1000,
            max_rooms_per_member: 20,
            presence_max: usize::MAX,
            push: PushConfig { max_messages: 512, max_bytes: 512 * 1024, ..PushConfig::default() },
        }
    }
}

/// Counters of a chat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChatStats {
    /// Members (connections with a nickname) now.
    pub members: u64,
    /// Room and private messages accepted.
    pub messages: u64,
    /// Events queued to members (a room message counts once per member).
    pub deliveries: u64,
    /// Events not queued (the member was closing or being dropped as slow).
    pub undelivered: u64,
    /// Commands refused by the rate limit.
    pub rate_limited: u64,
    /// Bad commands, frames or requests.
    pub bad_input: u64,
}

impl ChatStats {
    /// The counters as metric families for a metrics endpoint (`iocp_chat_*`).
    pub fn metrics(&self) -> Vec<ExtraMetric> {
        let counter =
            |name: &str, help: &str, v: u64| ExtraMetric::single(name, help, ExtraKind::Counter, v);
        vec![
            ExtraMetric::single(
                "chat_members",
                "Members (connections with a nickname) now.",
                ExtraKind::Gauge,
                self.members,
            ),
            counter("chat_messages", "Room and private messages accepted.", self.messages),
            counter(
                "chat_deliveries",
                "Events queued to members (a room message counts once per member).",
                self.deliveries,
            ),
            counter(
                "chat_undelivered",
                "Events not queued (the member was closing or being dropped as slow).",
                self.undelivered,
            ),
            counter("chat_rate_limited", "Commands refused by the rate limit.", self.rate_limited),
            counter("chat_bad_input", "Bad commands, frames or requests.", self.bad_input),
        ]
    }
}

/// The chat's shared state; [`ChatHub::web`] and [`ChatHub::tcp`] make the two services.
#[derive(Clone, Debug)]
pub struct ChatHub {
    hub: Arc<Hub>,
}

impl ChatHub {
    /// A chat with `cfg`.
    pub fn new(cfg: ChatConfig) -> Self {
        ChatHub { hub: Arc::new(Hub::new(cfg)) }
    }

    /// The HTTP service: the page at `/`, WebSocket upgrades at `/ws`.
    pub fn web(&self) -> Chat {
        Chat { hub: self.hub.clone(), kind: Kind::Ws }
    }

    /// The line-protocol service for plain TCP.
    pub fn tcp(&self) -> Chat {
        Chat { hub: self.hub.clone(), kind: Kind::Tcp }
    }

    /// The counters now.
    pub fn stats(&self) -> ChatStats {
        let c = &self.hub.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        ChatStats {
            members: self.hub.member_count() as u64,
            messages: l(&c.messages),
            deliveries: l(&c.deliveries),
            undelivered: l(&c.undelivered),
            rate_limited: l(&c.rate_limited),
            bad_input: l(&c.bad_input),
        }
    }
}

/// A chat service on one transport (see [`ChatHub`]).
#[derive(Clone, Debug)]
pub struct Chat {
    hub: Arc<Hub>,
    kind: Kind,
}

impl Chat {
    /// The hub this service belongs to.
    pub fn hub(&self) -> ChatHub {
        ChatHub { hub: self.hub.clone() }
    }
}

/// Where a connection is in its protocol.
enum Phase {
    /// The web port before an upgrade: HTTP requests. The outbox waits here for the
    /// upgrade, which hands it to the member (one copy per connection, not two).
    Http(Outbox),
    /// A WebSocket.
    Ws(Ws),
    /// The line protocol.
    Tcp,
    /// Closing: input is ignored.
    Done,
}

/// A WebSocket's protocol state. tungstenite's context (its read buffer, 512 bytes, and
/// itself, ~250) exists only while the connection is inside a message: `on_ws` hands it whole
/// frames only (a partial one waits in the connection's input), so once it has read them and
/// no fragmented message is open it holds nothing, and it is dropped. A fresh one is made for
/// the next frame. An idle member then costs no tungstenite memory at all.
struct Ws {
    ctx: Option<Box<WebSocketContext>>,
    /// A data frame without FIN was handed over and its final continuation not yet: the
    /// context holds the message so far and must stay.
    fragment_open: bool,
}

/// How much of `input` is whole frames (a prefix), and whether a fragmented message is open
/// after them (`open`: before them). A frame tungstenite will refuse (a bad header, one over
/// `max_frame`) counts the rest of the input as whole, so that it sees and refuses it.
fn whole_frames(input: &[u8], max_frame: usize, mut open: bool) -> (usize, bool) {
    use tungstenite::protocol::frame::FrameHeader;
    let mut at = 0usize;
    while at < input.len() {
        let mut cur = io::Cursor::new(&input[at..]);
        match FrameHeader::parse(&mut cur) {
            Ok(Some((h, len))) => {
                if len > max_frame as u64 {
                    return (input.len(), open);
                }
                let end = (at as u64).saturating_add(cur.position()).saturating_add(len);
                if end > input.len() as u64 {
                    break;
                }
                match h.opcode {
                    OpCode::Data(Data::Continue) => open = open && !h.is_final,
                    OpCode::Data(_) => open = !h.is_final,
                    OpCode::Control(_) => {}
                }
                at = end as usize;
            }
            Ok(None) => break,
            Err(_) => return (input.len(), open),
        }
    }
    (at, open)
}

/// Milliseconds on a process-wide monotonic clock, cut to 32 bits: only differences are
/// used (`wrapping_sub`), which are right for gaps under 49 days. A connection silent for
/// longer finds its bucket refilled by the gap modulo 49 days, never by more than `burst`.
fn clock_ms() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// One chat connection.
pub struct ChatConn {
    phase: Phase,
    member: Option<Arc<Member>>,
    /// The rate limit's bucket (an `f32`: a burst is at most millions of messages).
    tokens: f32,
    /// When the bucket was last refilled ([`clock_ms`]).
    refilled: u32,
    strikes: u32,
    /// A ping was sent for idleness and nothing came since.
    pinged: bool,
    keep_after_timeout: bool,
}

impl std::fmt::Debug for ChatConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatConn").field("member", &self.member).finish_non_exhaustive()
    }
}

/// The connection's buffers as a stream for tungstenite: reads drain the input, writes append
/// to the output.
struct Wire<'i, 'o> {
    input: &'i [u8],
    output: &'o mut Vec<u8>,
}

impl Read for Wire<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for Wire<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn http_response(status: &str, ctype: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: \
         no-store\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Chat {
    fn bad(&self) {
        self.hub.counters.bad_input.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a token; false when the bucket is empty.
    fn allow(&self, conn: &mut ChatConn) -> bool {
        let cfg = &self.hub.cfg;
        let now = clock_ms();
        let dt = f64::from(now.wrapping_sub(conn.refilled)) / 1000.0;
        conn.refilled = now;
        conn.tokens = (f64::from(conn.tokens) + dt * cfg.rate).min(cfg.burst) as f32;
        if conn.tokens >= 1.0 {
            conn.tokens -= 1.0;
            conn.strikes = 0;
            true
        } else {
            conn.strikes += 1;
            false
        }
    }

    /// Runs one command; `Next::Close` style outcomes are returned as `true` (close).
    fn command(&self, conn: &mut ChatConn, cmd: Result<Command, ProtoError>) -> bool {
        let Some(m) = conn.member.clone() else { return false };
        let cmd = match cmd {
            Ok(Command::Quit) => return true,
            Ok(c) => c,
            Err(e) => {
                self.bad();
                self.hub.tell(&m, &Event::Error(e));
                return false;
            }
        };
        if !matches!(cmd, Command::Help) && !self.allow(conn) {
            self.hub.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            self.hub.tell(
                &m,
                &Event::Error(ProtoError::new("rate_limited", "too many messages: slow down")),
            );
            return conn.strikes >= STRIKES;
        }
        let r = match cmd {
            Command::Nick(n) => self.hub.nick(&m, &n),
            Command::Join(r) => self.hub.join(&m, &r),
            Command::Leave(r) => self.hub.leave(&m, r.as_deref()),
            Command::Rooms => {
                self.hub.rooms(&m);
                Ok(())
            }
            Command::Who(r) => self.hub.who(&m, r.as_deref()),
            Command::Say { room, text } => self.hub.say(&m, room.as_deref(), text),
            Command::Pm { to, text } => self.hub.pm(&m, &to, text),
            Command::Help => {
                self.hub.tell(&m, &Event::Info(proto::HELP.to_owned()));
                Ok(())
            }
            Command::Quit => Ok(()),
        };
        if let Err(e) = r {
            self.hub.tell(&m, &Event::Error(e));
        }
        false
    }

    fn rate_close(&self, conn: &ChatConn) -> bool {
        conn.strikes >= STRIKES
    }

    /// Closes a WebSocket with `code` (the close frame is the last thing sent).
    fn ws_close(&self, conn: &mut ChatConn, io: &mut Io, code: CloseCode, reason: &str) -> Next {
        if let Phase::Ws(ws) = &mut conn.phase {
            let ctx = self.ws_context(ws);
            let mut wire = Wire { input: &[], output: &mut io.output };
            let frame = CloseFrame { code, reason: reason.to_owned().into() };
            if ctx.close(&mut wire, Some(frame)).is_err() || ctx.flush(&mut wire).is_err() {
                io.output.extend_from_slice(&proto::ws_close(code, reason));
            }
        }
        conn.phase = Phase::Done;
        io.input.clear();
        io.close_after_send = true;
        Next::Send
    }

    fn on_http(&self, conn: &mut ChatConn, io: &mut Io) -> Next {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(&io.input) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if io.input.len() <= MAX_HEAD => return Next::Send,
                Ok(httparse::Status::Partial) => {
                    self.bad();
                    return self.http_fail(conn, io, "431 Request Header Fields Too Large");
                }
                Err(_) => {
                    self.bad();
                    return self.http_fail(conn, io, "400 Bad Request");
                }
            };
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
            };
            let has_token = |name: &str, token: &str| {
                header(name)
                    .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            };
            let path = req.path.unwrap_or("/").split('?').next().unwrap_or("/");
            if req.method != Some("GET") && req.method != Some("HEAD") {
                return self.http_fail(conn, io, "405 Method Not Allowed");
            }
            match path {
                "/" | "/index.html" => {
                    let body: &[u8] =
                        if req.method == Some("HEAD") { b"" } else { PAGE.as_bytes() };
                    io.output.extend_from_slice(&http_response(
                        "200 OK",
                        "text/html; charset=utf-8",
                        body,
                        false,
                    ));
                    io.consume(n);
                }
                "/ws" => {
                    let upgrade =
                        has_token("upgrade", "websocket") && has_token("connection", "upgrade");
                    let key = header("sec-websocket-key");
                    if !upgrade || key.is_none() {
                        self.bad();
                        return self.http_fail(conn, io, "400 Bad Request");
                    }
                    if header("sec-websocket-version") != Some("13") {
                        self.bad();
                        io.output.extend_from_slice(
                            b"HTTP/1.1 426 Upgrade Required\r\nsec-websocket-version: 13\r\n\
                              content-length: 0\r\nconnection: close\r\n\r\n",
                        );
                        io.input.clear();
                        conn.phase = Phase::Done;
                        io.close_after_send = true;
                        return Next::Send;
                    }
                    let accept = tungstenite::handshake::derive_accept_key(
                        key.unwrap_or_default().as_bytes(),
                    );
                    io.output.extend_from_slice(
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                             connection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    io.consume(n);
                    let ws = Phase::Ws(Ws { ctx: None, fragment_open: false });
                    if let Phase::Http(outbox) = std::mem::replace(&mut conn.phase, ws) {
                        // The 101 goes out before the welcome.
                        let head = Bytes::from(std::mem::take(&mut io.output));
                        let _ = outbox.push(head);
                        conn.member = Some(self.hub.enter(Kind::Ws, outbox));
                    }
                    return self.on_ws(conn, io);
                }
                _ => {
                    io.output.extend_from_slice(&http_response(
                        "404 Not Found",
                        "text/plain",
                        b"not found\n",
                        false,
                    ));
                    io.consume(n);
                }
            }
        }
    }

    fn http_fail(&self, conn: &mut ChatConn, io: &mut Io, status: &str) -> Next {
        io.output.extend_from_slice(&http_response(status, "text/plain", status.as_bytes(), true));
        io.input.clear();
        conn.phase = Phase::Done;
        io.close_after_send = true;
        Next::Send
    }

    /// The connection's tungstenite context, made if it has none (see [`Ws`]).
    fn ws_context<'a>(&self, ws: &'a mut Ws) -> &'a mut WebSocketContext {
        ws.ctx.get_or_insert_with(|| {
            let cfg = WebSocketConfig::default()
                .read_buffer_size(512)
                .write_buffer_size(0)
                .max_message_size(Some(self.hub.cfg.max_frame))
                .max_frame_size(Some(self.hub.cfg.max_frame));
            Box::new(WebSocketContext::new(Role::Server, Some(cfg)))
        })
    }

    fn on_ws(&self, conn: &mut ChatConn, io: &mut Io) -> Next {
        let mut input = std::mem::take(&mut io.input);
        let Phase::Ws(ws) = &conn.phase else { return Next::Send };
        // Whole frames go to tungstenite; a partial one stays in the input for the next read.
        let (whole, open) = whole_frames(&input, self.hub.cfg.max_frame, ws.fragment_open);
        if whole == 0 {
            io.input = input; // only part of a frame so far
            return Next::Send;
        }
        let tail = input.split_off(whole);
        let mut rest: &[u8] = &input;
        while let Phase::Ws(ws) = &mut conn.phase {
            if rest.is_empty() && ws.ctx.is_none() {
                break; // nothing for a context to do
            }
            let ctx = self.ws_context(ws);
            let mut wire = Wire { input: rest, output: &mut io.output };
            let r = ctx.read(&mut wire);
            rest = wire.input;
            match r {
                Ok(Message::Text(t)) => {
                    let cmd = proto::parse_json(t.as_bytes(), self.hub.cfg.max_text);
                    if self.command(conn, cmd) {
                        let code = if self.rate_close(conn) {
                            CloseCode::Policy
                        } else {
                            CloseCode::Normal
                        };
                        let why = if code == CloseCode::Policy { "rate limit" } else { "bye" };
                        return self.ws_close(conn, io, code, why);
                    }
                }
                Ok(Message::Binary(b)) => {
                    // Binary frames carry the same JSON.
                    let cmd = proto::parse_json(&b, self.hub.cfg.max_text);
                    if self.command(conn, cmd) {
                        return self.ws_close(conn, io, CloseCode::Normal, "bye");
                    }
                }
                Ok(Message::Close(_)) => {
                    // tungstenite queued the reply; flush it and close after it.
                    let mut wire = Wire { input: &[], output: &mut io.output };
                    let _ = ctx.flush(&mut wire);
                    conn.phase = Phase::Done;
                    io.close_after_send = true;
                    return Next::Send;
                }
                Ok(_) => {} // ping (answered by tungstenite), pong, raw frames
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    conn.phase = Phase::Done;
                    io.close_after_send = true;
                    return Next::Send;
                }
                Err(e) => {
                    self.bad();
                    let (code, why) = match &e {
                        tungstenite::Error::Capacity(_) => (CloseCode::Size, "message too big"),
                        tungstenite::Error::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8"),
                        _ => (CloseCode::Protocol, "protocol error"),
                    };
                    tracing::debug!(error = %e, "websocket error");
                    return self.ws_close(conn, io, code, why);
                }
            }
        }
        if let Phase::Ws(ws) = &mut conn.phase {
            if let Some(ctx) = ws.ctx.as_mut() {
                let mut wire = Wire { input: &[], output: &mut io.output };
                let _ = ctx.flush(&mut wire);
            }
            // Every whole frame was read: unless a fragmented message is open, the context
            // holds nothing now.
            ws.fragment_open = open;
            if !open {
                ws.ctx = None;
            }
            io.input = tail;
        }
        Next::Send
    }

    fn on_tcp(&self, conn: &mut ChatConn, io: &mut Io) -> Next {
        let max = self.hub.cfg.max_line;
        while let Some(end) = io.input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = io.input.drain(..=end).collect();
            if line.len() > max + 1 {
                return self.tcp_close(conn, io, "! too_long: a line is too long");
            }
            let cmd = match std::str::from_utf8(&line) {
                Ok(s) => proto::parse_line(s, self.hub.cfg.max_text),
                Err(_) => Err(ProtoError::new("bad_utf8", "a line must be UTF-8")),
            };
            if self.command(conn, cmd) {
                let msg = if self.rate_close(conn) { "! rate_limited: bye" } else { "* bye" };
                return self.tcp_close(conn, io, msg);
            }
            if matches!(conn.phase, Phase::Done) {
                break;
            }
        }
        if io.input.len() > max {
            self.bad();
            return self.tcp_close(conn, io, "! too_long: a line is too long");
        }
        Next::Read
    }

    fn tcp_close(&self, conn: &mut ChatConn, io: &mut Io, msg: &str) -> Next {
        io.output.extend_from_slice(msg.as_bytes());
        io.output.push(b'\n');
        io.input.clear();
        conn.phase = Phase::Done;
        io.close_after_send = true;
        Next::Send
    }
}

impl Service for Chat {
    type Conn = ChatConn;

    fn open(&self, peer: Option<SocketAddr>) -> ChatConn {
        self.open_push(peer, Outbox::detached())
    }

    fn push(&self) -> Option<PushConfig> {
        Some(self.hub.cfg.push)
    }

    fn open_push(&self, _peer: Option<SocketAddr>, outbox: Outbox) -> ChatConn {
        let (phase, tcp) = match self.kind {
            Kind::Tcp => (Phase::Tcp, Some(outbox)),
            Kind::Ws => (Phase::Http(outbox), None),
        };
        let mut conn = ChatConn {
            phase,
            member: None,
            tokens: self.hub.cfg.burst as f32,
            refilled: clock_ms(),
            strikes: 0,
            pinged: false,
            keep_after_timeout: false,
        };
        if let Some(outbox) = tcp {
            conn.member = Some(self.hub.enter(Kind::Tcp, outbox));
        }
        conn
    }

    fn on_read(&self, conn: &mut ChatConn, io: &mut Io) -> Next {
        conn.pinged = false;
        match conn.phase {
            Phase::Http(_) => self.on_http(conn, io),
            Phase::Ws(_) => self.on_ws(conn, io),
            Phase::Tcp => self.on_tcp(conn, io),
            Phase::Done => {
                io.input.clear();
                Next::Read
            }
        }
    }

    fn on_timeout(&self, conn: &mut ChatConn, io: &mut Io, kind: TimeoutKind) -> Next {
        conn.keep_after_timeout = false;
        match (&mut conn.phase, kind) {
            (Phase::Ws(ws), TimeoutKind::Idle) if !conn.pinged => {
                let ctx = self.ws_context(ws);
                let mut wire = Wire { input: &[], output: &mut io.output };
                if ctx.write(&mut wire, Message::Ping(Bytes::from_static(b"idle"))).is_ok()
                    && ctx.flush(&mut wire).is_ok()
                {
                    conn.pinged = true;
                    conn.keep_after_timeout = true;
                }
                if !ws.fragment_open {
                    ws.ctx = None;
                }
                Next::Send
            }
            // A frame begun and not finished within the request timeout.
            (Phase::Ws(_), TimeoutKind::Request) => {
                self.ws_close(conn, io, CloseCode::Policy, "frame too slow")
            }
            (Phase::Ws(_), _) => self.ws_close(conn, io, CloseCode::Away, "idle timeout"),
            (Phase::Tcp, _) => self.tcp_close(conn, io, "* idle timeout: bye"),
            _ => Next::Close,
        }
    }

    fn keeps_open_after_timeout(&self, conn: &ChatConn) -> bool {
        conn.keep_after_timeout
    }

    fn on_close(&self, conn: ChatConn, _reason: CloseReason) {
        if let Some(m) = conn.member {
            self.hub.exit(&m);
        }
    }

    fn stopping(&self) {
        let bye = match self.kind {
            Kind::Ws => proto::ws_close(CloseCode::Away, "server shutting down"),
            Kind::Tcp => Bytes::from_static(b"* server shutting down\n"),
        };
        for m in self.hub.members_of(self.kind) {
            let _ = m.outbox.push_last(bye.clone());
        }
    }
}

#[cfg(test)]
mod tests;
