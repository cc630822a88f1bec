//! The chat protocol: commands (JSON on WebSocket, `/command` lines on TCP), events and their
//! two encodings, and the name rules. Pure functions: no I/O, no state.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

/// The most bytes of a nickname.
pub const MAX_NICK: usize = 24;
/// The most bytes of a room name.
pub const MAX_ROOM: usize = 32;

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Take a nickname.
    Nick(String),
    /// Join a room (and make it the current one).
    Join(String),
    /// Leave a room (the current one when `None`).
    Leave(Option<String>),
    /// List the rooms.
    Rooms,
    /// List a room's members (the current room when `None`).
    Who(Option<String>),
    /// Say something in a room (the current room when `None`).
    Say {
        /// The room.
        room: Option<String>,
        /// The text.
        text: String,
    },
    /// A private message.
    Pm {
        /// The recipient's nickname.
        to: String,
        /// The text.
        text: String,
    },
    /// The command list (TCP).
    Help,
    /// Close the connection.
    Quit,
}

/// A command that could not be parsed or is not allowed: an error event with a stable code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoError {
    /// Machine-readable: `bad_json`, `bad_command`, `bad_nick`, `nick_taken`, `bad_room`,
    /// `not_in_room`, `no_such_nick`, `too_long`, `empty`, `rate_limited`, `too_many_rooms`.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ProtoError {
    /// An error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ProtoError { code, message: message.into() }
    }
}

/// Checks a nickname: 1 to [`MAX_NICK`] bytes of ASCII letters, digits, `_` and `-`, starting
/// with a letter.
pub fn valid_nick(nick: &str) -> Result<(), ProtoError> {
    let ok = !nick.is_empty()
        && nick.len() <= MAX_NICK
        && nick.starts_with(|c: char| c.is_ascii_alphabetic())
        && nick.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ProtoError::new(
            "bad_nick",
            format!(
                "a nickname is 1 to {MAX_NICK} letters, digits, '_' or '-', starting with a letter"
            ),
        ))
    }
}

/// Normalises a room name (a leading `#` dropped, lower case) and checks it: 1 to
/// [`MAX_ROOM`] bytes of ASCII letters, digits, `_` and `-`.
pub fn room_name(raw: &str) -> Result<String, ProtoError> {
    let name = raw.strip_prefix('#').unwrap_or(raw).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= MAX_ROOM
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(name)
    } else {
        Err(ProtoError::new(
            "bad_room",
            format!("a room name is 1 to {MAX_ROOM} letters, digits, '_' or '-'"),
        ))
    }
}

fn text_of(s: &str, max: usize) -> Result<String, ProtoError> {
    let t = s.trim_end_matches(['\r', '\n']);
    if t.trim().is_empty() {
        return Err(ProtoError::new("empty", "empty message"));
    }
    if t.len() > max {
        return Err(ProtoError::new("too_long", format!("a message is at most {max} bytes")));
    }
    // Control characters (other than tab) would break the line protocol's framing.
    Ok(t.chars().map(|c| if c.is_control() && c != '\t' { ' ' } else { c }).collect())
}

/// Parses a WebSocket client's JSON command (`{"type": "...", ...}`); texts longer than
/// `max_text` bytes are refused.
pub fn parse_json(data: &[u8], max_text: usize) -> Result<Command, ProtoError> {
    let v: Value = serde_json::from_slice(data)
        .map_err(|e| ProtoError::new("bad_json", format!("not JSON: {e}")))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let need = |k: &str| {
        field(k).ok_or_else(|| ProtoError::new("bad_command", format!("missing string \"{k}\"")))
    };
    let ty = field("type")
        .ok_or_else(|| ProtoError::new("bad_command", "a command is {\"type\": \"...\", ...}"))?;
    let room = || field("room").map(str::to_owned);
    Ok(match ty {
        "nick" => Command::Nick(need("nick")?.to_owned()),
        "join" => Command::Join(need("room")?.to_owned()),
        "leave" => Command::Leave(room()),
        "rooms" => Command::Rooms,
        "who" => Command::Who(room()),
        "msg" | "say" => Command::Say { room: room(), text: text_of(need("text")?, max_text)? },
        "pm" => Command::Pm { to: need("to")?.to_owned(), text: text_of(need("text")?, max_text)? },
        "quit" => Command::Quit,
        other => {
            return Err(ProtoError::new("bad_command", format!("unknown command type {other:?}")));
        }
    })
}

/// Parses a TCP client's line (without its line end): `/command args` or text for the current
/// room.
pub fn parse_line(line: &str, max_text: usize) -> Result<Command, ProtoError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(cmd) = line.strip_prefix('/') else {
        return Ok(Command::Say { room: None, text: text_of(line, max_text)? });
    };
    let (name, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
    let rest = rest.trim_start();
    let arg = |what: &str| {
        let a = rest.split_whitespace().next();
        a.map(str::to_owned)
            .ok_or_else(|| ProtoError::new("bad_command", format!("usage: /{name} {what}")))
    };
    let opt = || rest.split_whitespace().next().map(str::to_owned);
    Ok(match name.to_ascii_lowercase().as_str() {
        "nick" => Command::Nick(arg("NICK")?),
        "join" => Command::Join(arg("ROOM")?),
        "leave" | "part" => Command::Leave(opt()),
        "rooms" | "list" => Command::Rooms,
        "who" | "names" => Command::Who(opt()),
        "say" => {
            let (room, text) = rest.split_once(' ').ok_or_else(|| {
                ProtoError::new("bad_command", "usage: /say ROOM TEXT".to_owned())
            })?;
            Command::Say { room: Some(room.to_owned()), text: text_of(text, max_text)? }
        }
        "msg" | "pm" => {
            let (to, text) = rest.split_once(' ').ok_or_else(|| {
                ProtoError::new("bad_command", "usage: /msg NICK TEXT".to_owned())
            })?;
            Command::Pm { to: to.to_owned(), text: text_of(text, max_text)? }
        }
        "me" => Command::Say { room: None, text: text_of(&format!("* {rest}"), max_text)? },
        "help" => Command::Help,
        "quit" => Command::Quit,
        other => {
            return Err(ProtoError::new(
                "bad_command",
                format!("unknown command /{other} (try /help)"),
            ));
        }
    })
}

/// The TCP command list.
pub const HELP: &str = "* commands: /nick NICK, /join ROOM, /leave [ROOM], /rooms, /who [ROOM], \
                        /say ROOM TEXT, /msg NICK TEXT, /me TEXT, /quit; other lines go to the \
                        current room";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn hms(ts: u64) -> String {
    let s = (ts / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Something the server tells clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The connection's first event: its nickname.
    Welcome {
        /// The nickname given.
        nick: String,
    },
    /// A message to a room.
    Msg {
        /// The room.
        room: String,
        /// The sender.
        from: String,
        /// The text.
        text: String,
        /// Server time, ms since the epoch.
        ts: u64,
    },
    /// A private message (to both ends).
    Pm {
        /// The sender.
        from: String,
        /// The recipient.
        to: String,
        /// The text.
        text: String,
        /// Server time.
        ts: u64,
    },
    /// Someone joined a room.
    Join {
        /// The room.
        room: String,
        /// Who.
        nick: String,
        /// Server time.
        ts: u64,
    },
    /// Someone left a room.
    Leave {
        /// The room.
        room: String,
        /// Who.
        nick: String,
        /// Server time.
        ts: u64,
    },
    /// Someone in a room changed nickname.
    Nick {
        /// The room.
        room: String,
        /// Before.
        old: String,
        /// After.
        new: String,
        /// Server time.
        ts: u64,
    },
    /// The answer to a join (before the room's history): who is there.
    Joined {
        /// The room.
        room: String,
        /// Members' nicknames.
        members: Vec<String>,
    },
    /// The answer to a leave.
    Left {
        /// The room.
        room: String,
    },
    /// The rooms and their member counts.
    Rooms(Vec<(String, usize)>),
    /// A room's members.
    Members {
        /// The room.
        room: String,
        /// Nicknames.
        members: Vec<String>,
    },
    /// A refused command.
    Error(ProtoError),
    /// Text for people (help).
    Info(String),
}

impl Event {
    /// The JSON form (WebSocket).
    pub fn to_json(&self) -> Value {
        match self {
            Event::Welcome { nick } => json!({"type": "welcome", "nick": nick}),
            Event::Msg { room, from, text, ts } => {
                json!({"type": "msg", "room": room, "from": from, "text": text, "ts": ts})
            }
            Event::Pm { from, to, text, ts } => {
                json!({"type": "pm", "from": from, "to": to, "text": text, "ts": ts})
            }
            Event::Join { room, nick, ts } => {
                json!({"type": "join", "room": room, "nick": nick, "ts": ts})
            }
            Event::Leave { room, nick, ts } => {
                json!({"type": "leave", "room": room, "nick": nick, "ts": ts})
            }
            Event::Nick { room, old, new, ts } => {
                json!({"type": "nick", "room": room, "old": old, "new": new, "ts": ts})
            }
            Event::Joined { room, members } => {
                json!({"type": "joined", "room": room, "members": members})
            }
            Event::Left { room } => json!({"type": "left", "room": room}),
            Event::Rooms(list) => {
                let rooms: Vec<Value> =
                    list.iter().map(|(n, c)| json!({"name": n, "members": c})).collect();
                json!({"type": "rooms", "rooms": rooms})
            }
            Event::Members { room, members } => {
                json!({"type": "members", "room": room, "members": members})
            }
            Event::Error(e) => json!({"type": "error", "code": e.code, "message": e.message}),
            Event::Info(text) => json!({"type": "info", "text": text}),
        }
    }

    /// The WebSocket text frame carrying [`Event::to_json`].
    pub fn to_ws(&self) -> Bytes {
        match self.listing() {
            Some((kind, room, names)) => encode_listing(true, kind, room, names),
            None => ws_text(self.to_json().to_string()),
        }
    }

    /// [`Event::to_line`] as bytes.
    pub fn to_tcp(&self) -> Bytes {
        match self.listing() {
            Some((kind, room, names)) => encode_listing(false, kind, room, names),
            None => Bytes::from(self.to_line()),
        }
    }

    /// A member listing's kind, room and names, which [`encode_listing`] writes directly.
    fn listing(&self) -> Option<(Listing, &str, impl Iterator<Item = &str> + Clone)> {
        let (kind, room, members) = match self {
            Event::Joined { room, members } => (Listing::Joined, room, members),
            Event::Members { room, members } => (Listing::Members, room, members),
            _ => return None,
        };
        Some((kind, room.as_str(), members.iter().map(String::as_str)))
    }

    /// The line form (TCP), with its line end.
    pub fn to_line(&self) -> String {
        let mut s = String::new();
        let _ = match self {
            Event::Welcome { nick } => {
                write!(s, "* welcome, you are {nick} (/help lists the commands)")
            }
            Event::Msg { room, from, text, ts } => {
                write!(s, "[{}] #{room} <{from}> {text}", hms(*ts))
            }
            Event::Pm { from, to, text, ts } => write!(s, "[{}] *{from} -> {to}* {text}", hms(*ts)),
            Event::Join { room, nick, ts } => write!(s, "[{}] #{room} * {nick} joined", hms(*ts)),
            Event::Leave { room, nick, ts } => write!(s, "[{}] #{room} * {nick} left", hms(*ts)),
            Event::Nick { room, old, new, ts } => {
                write!(s, "[{}] #{room} * {old} is now {new}", hms(*ts))
            }
            Event::Joined { room, members } => {
                write!(s, "* you are in #{room} with: {}", members.join(" "))
            }
            Event::Left { room } => write!(s, "* you left #{room}"),
            Event::Rooms(list) => {
                let l: Vec<String> = list.iter().map(|(n, c)| format!("#{n} ({c})")).collect();
                write!(s, "* rooms: {}", l.join(" "))
            }
            Event::Members { room, members } => write!(s, "* #{room}: {}", members.join(" ")),
            Event::Error(e) => write!(s, "! {}: {}", e.code, e.message),
            Event::Info(text) => write!(s, "{text}"),
        };
        s.push('\n');
        s
    }
}

/// Which member listing [`encode_listing`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// The answer to a join ([`Event::Joined`]).
    Joined,
    /// The answer to `who` ([`Event::Members`]).
    Members,
}

/// A member listing encoded for one transport (a WebSocket text frame when `ws`, else a line),
/// byte for byte what [`Event::Joined`] / [`Event::Members`] with these names encode to, but
/// written straight from `names` into one buffer of its final size: no copy of the names, no
/// JSON tree, no second transport's form. A join to a big room sends a listing of hundreds of
/// names to one member; building it the general way made ~500 short-lived allocations per join
/// among the new connection's long-lived ones, and the holes they left stayed in the server's
/// RSS (BENCHMARKS.md "Chat: memory per idle WebSocket client").
pub fn encode_listing<'a, I>(ws: bool, listing: Listing, room: &str, names: I) -> Bytes
where
    I: Iterator<Item = &'a str> + Clone,
{
    let (count, chars) = names.clone().fold((0usize, 0usize), |(n, c), x| (n + 1, c + x.len()));
    if ws {
        let ty = match listing {
            Listing::Joined => "joined",
            Listing::Members => "members",
        };
        // {"members":["a","b"],"room":"r","type":"joined"}: the keys in serde_json's order.
        ws_text_with(40 + room.len() + chars + 3 * count, |out| {
            out.extend_from_slice(b"{\"members\":[");
            for (i, n) in names.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, n);
            }
            out.extend_from_slice(b"],\"room\":");
            json_str(out, room);
            out.extend_from_slice(b",\"type\":\"");
            out.extend_from_slice(ty.as_bytes());
            out.extend_from_slice(b"\"}");
        })
    } else {
        let mut s = String::with_capacity(24 + room.len() + chars + count + 1);
        let _ = match listing {
            Listing::Joined => write!(s, "* you are in #{room} with: "),
            Listing::Members => write!(s, "* #{room}: "),
        };
        for (i, n) in names.enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(n);
        }
        s.push('\n');
        Bytes::from(s)
    }
}

/// `s` as a JSON string (quoted, escaped as serde_json escapes).
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The largest WebSocket header a server writes (no mask: 2 bytes and an 8-byte length).
const MAX_WS_HEADER: usize = 10;

/// A WebSocket text frame whose payload `fill` writes, in one buffer: the payload goes after
/// room for the largest header, and the header is then written just before it.
fn ws_text_with(payload_hint: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(MAX_WS_HEADER + payload_hint);
    out.resize(MAX_WS_HEADER, 0);
    fill(&mut out);
    let len = (out.len() - MAX_WS_HEADER) as u64;
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    let start = MAX_WS_HEADER - header.len(len);
    // Writing the header into exactly its length of slice cannot fail.
    let _ = header.format(len, &mut &mut out[start..MAX_WS_HEADER]);
    Bytes::from(out).slice(start..)
}

/// An event encoded once for each transport, shared by every recipient.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// A WebSocket text frame (unmasked, as a server sends).
    pub ws: Bytes,
    /// A line.
    pub tcp: Bytes,
}

impl Encoded {
    /// Encodes `ev` for both transports.
    pub fn new(ev: &Event) -> Self {
        Encoded { ws: ev.to_ws(), tcp: ev.to_tcp() }
    }
}

/// A complete WebSocket text frame carrying `text`, formatted by tungstenite's codec.
pub fn ws_text(text: String) -> Bytes {
    ws_frame(Frame::message(text.into_bytes(), OpCode::Data(Data::Text), true))
}

/// A complete WebSocket close frame with `code` and `reason`.
pub fn ws_close(code: CloseCode, reason: &str) -> Bytes {
    ws_frame(Frame::close(Some(CloseFrame { code, reason: reason.to_owned().into() })))
}

fn ws_frame(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    // Writing to a Vec cannot fail.
    let _ = frame.format(&mut out);
    Bytes::from(out)
}
