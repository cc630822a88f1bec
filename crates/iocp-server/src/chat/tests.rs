//! The parsers and the per-connection protocol handling, fed random and garbage input.

#![allow(clippy::unwrap_used)]

use super::*;
use std::time::Duration;

/// xorshift64*: deterministic noise without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const SEEDS: &[&str] = &[
    "/nick ann",
    "/join rust",
    "/leave",
    "/rooms",
    "/who",
    "/msg ann hi",
    "/say rust x",
    "/me waves",
    "hello",
    "/quit",
    "/help",
    "/nick",
    "/msg",
    "/join ###",
    "\u{0}\u{1}",
    "/NICK Bob",
];

const JSON_SEEDS: &[&str] = &[
    r#"{"type":"nick","nick":"ann"}"#,
    r#"{"type":"join","room":"rust"}"#,
    r#"{"type":"msg","text":"hi"}"#,
    r#"{"type":"pm","to":"ann","text":"hi"}"#,
    r#"{"type":"rooms"}"#,
    r#"{"type":1}"#,
    r#"[1,2,3]"#,
    r#"{"type":"msg","text":null}"#,
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..(rng.next() % 4) {
        let at = if v.is_empty() { 0 } else { (rng.next() as usize) % v.len() };
        match rng.next() % 3 {
            0 if !v.is_empty() => v[at] = rng.next() as u8,
            1 => v.insert(at, rng.next() as u8),
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn command_parsers_never_panic_on_garbage() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..20_000 {
        let data = if i % 3 == 0 {
            let n = (rng.next() % 64) as usize;
            rng.bytes(n)
        } else if i % 3 == 1 {
            mutate(&mut rng, SEEDS[i % SEEDS.len()].as_bytes())
        } else {
            mutate(&mut rng, JSON_SEEDS[i % JSON_SEEDS.len()].as_bytes())
        };
        let _ = proto::parse_json(&data, 100);
        let line = std::str::from_utf8(&data).ok().map(|s| proto::parse_line(s, 100));
        if let Some(Ok(Command::Say { text, .. } | Command::Pm { text, .. })) = line {
            // Control characters were replaced: they cannot break the line framing.
            assert!(text.len() <= 100 + 4 * 2);
            assert!(!text.contains('\n'));
        }
    }
}

#[test]
fn parsers_understand_the_documented_commands() {
    assert_eq!(proto::parse_line("/nick ann\r", 10), Ok(Command::Nick("ann".into())));
    assert_eq!(
        proto::parse_line("/msg bob hi there", 100),
        Ok(Command::Pm { to: "bob".into(), text: "hi there".into() })
    );
    assert_eq!(proto::parse_line("hi", 100), Ok(Command::Say { room: None, text: "hi".into() }));
    assert_eq!(proto::parse_line("/bogus", 100).unwrap_err().code, "bad_command");
    assert_eq!(proto::parse_line("x".repeat(11).as_str(), 10).unwrap_err().code, "too_long");
    assert_eq!(
        proto::parse_json(br#"{"type":"msg","room":"a","text":"t"}"#, 10),
        Ok(Command::Say { room: Some("a".into()), text: "t".into() })
    );
    assert_eq!(proto::parse_json(b"{", 10).unwrap_err().code, "bad_json");
    assert!(proto::valid_nick("ann-1").is_ok());
    assert!(proto::valid_nick("1ann").is_err());
    assert!(proto::valid_nick(&"a".repeat(25)).is_err());
    assert_eq!(proto::room_name("#Rust").unwrap(), "rust");
    assert!(proto::room_name("a b").is_err());
}

/// The listing written straight from the names is byte for byte the general encoding (the
/// JSON tree through tungstenite's frame, and the line), for every WebSocket length format
/// (7-bit, 16-bit, 64-bit) and for names that need escaping.
#[test]
fn a_listing_written_directly_is_the_general_encoding() {
    use proto::{Listing, encode_listing, ws_text};
    let many: Vec<String> = (0..20_000).map(|i| format!("guest{i}")).collect();
    let sets: Vec<Vec<String>> = vec![
        vec![],
        vec!["ann".into()],
        (0..20).map(|i| format!("n{i}")).collect(), // 126..65535 bytes: a 16-bit length
        many,                                       // over 65,535: a 64-bit length
        vec!["q\"uote".into(), "back\\slash".into(), "tab\tnl\n".into(), "é✓".into()],
    ];
    for names in sets {
        for room in ["lobby", "r\"x"] {
            let joined = Event::Joined { room: room.into(), members: names.clone() };
            let members = Event::Members { room: room.into(), members: names.clone() };
            for (ev, kind) in [(joined, Listing::Joined), (members, Listing::Members)] {
                let it = names.iter().map(String::as_str);
                let ws = encode_listing(true, kind, room, it.clone());
                assert_eq!(
                    ws,
                    ws_text(ev.to_json().to_string()),
                    "{kind:?} {room} {}",
                    names.len()
                );
                assert_eq!(ws, ev.to_ws());
                let tcp = encode_listing(false, kind, room, it);
                assert_eq!(tcp, ev.to_line().as_bytes(), "{kind:?} {room} {}", names.len());
                assert_eq!(tcp, ev.to_tcp());
            }
        }
    }
}

/// A web connection after its upgrade, on a detached outbox (nothing is sent anywhere).
fn upgraded(chat: &Chat) -> (ChatConn, Io) {
    let mut conn = chat.open(None);
    let mut io = Io::default();
    io.input.extend_from_slice(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    );
    let _ = chat.on_read(&mut conn, &mut io);
    assert!(matches!(conn.phase, Phase::Ws(_)));
    (conn, io)
}

fn masked(payload: &[u8], opcode: u8) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    let key = [1u8, 2, 3, 4];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[test]
fn websocket_handling_never_panics_on_garbage_frames() {
    let hub = ChatHub::new(ChatConfig { rate: 1e9, burst: 1e9, ..ChatConfig::default() });
    let chat = hub.web();
    let mut rng = Rng(42);
    for i in 0..3_000 {
        let (mut conn, mut io) = upgraded(&chat);
        let mut data = Vec::new();
        for _ in 0..(1 + rng.next() % 4) {
            let seed = JSON_SEEDS[(rng.next() as usize) % JSON_SEEDS.len()].as_bytes();
            let frame = masked(&mutate(&mut rng, seed), [1u8, 2, 8, 9, 10][i % 5]);
            data.extend(if rng.next().is_multiple_of(3) {
                mutate(&mut rng, &frame)
            } else {
                frame
            });
        }
        // Fed whole or in random pieces.
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            let n = 1 + (rng.next() as usize) % rest.len();
            io.input.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            let _ = chat.on_read(&mut conn, &mut io);
            io.output.clear();
        }
        chat.on_close(conn, CloseReason::Eof);
    }
    assert_eq!(hub.stats().members, 0);
}

#[test]
fn unmasked_and_oversized_frames_get_their_close_codes() {
    let hub = ChatHub::new(ChatConfig { max_frame: 100, ..ChatConfig::default() });
    let chat = hub.web();
    let close_code = |out: &[u8]| {
        // A server close frame: 0x88, length, then the code.
        assert_eq!(out[0], 0x88, "{out:?}");
        u16::from_be_bytes([out[2], out[3]])
    };
    let (mut conn, mut io) = upgraded(&chat);
    io.input.extend_from_slice(&[0x81, 0x02, b'h', b'i']); // unmasked from a client
    let _ = chat.on_read(&mut conn, &mut io);
    assert_eq!(close_code(&io.output), 1002);
    assert!(io.close_after_send);
    let (mut conn, mut io) = upgraded(&chat);
    io.input.extend_from_slice(&[0x81, 0x80 | 126, 0x01, 0x00, 0, 0, 0, 0]); // 256 bytes
    let _ = chat.on_read(&mut conn, &mut io);
    assert_eq!(close_code(&io.output), 1009);
    let (mut conn, mut io) = upgraded(&chat);
    io.input.extend_from_slice(&masked(&[0xff, 0xfe], 1)); // text that is not UTF-8
    let _ = chat.on_read(&mut conn, &mut io);
    assert_eq!(close_code(&io.output), 1007);
}

#[test]
fn http_requests_get_answers() {
    let chat = ChatHub::new(ChatConfig::default()).web();
    let mut conn = chat.open(None);
    let mut io = Io::default();
    io.input.extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET /nope HTTP/1.1\r\n\r\n");
    assert!(matches!(chat.on_read(&mut conn, &mut io), Next::Send));
    let out = String::from_utf8_lossy(&io.output);
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("<title>iocp chat</title>"));
    assert!(out.contains("HTTP/1.1 404 Not Found"));
    let mut conn = chat.open(None);
    let mut io = Io::default();
    io.input.extend_from_slice(
        b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
        sec-websocket-key: x\r\nsec-websocket-version: 8\r\n\r\n",
    );
    let _ = chat.on_read(&mut conn, &mut io);
    assert!(String::from_utf8_lossy(&io.output).starts_with("HTTP/1.1 426"));
    let mut conn = chat.open(None);
    let mut io = Io::default();
    io.input.extend_from_slice(b"\x00\x01garbage\r\n\r\n");
    let _ = chat.on_read(&mut conn, &mut io);
    assert!(String::from_utf8_lossy(&io.output).starts_with("HTTP/1.1 400"));
}

/// Presence is sent only in rooms up to `presence_max` members: the second member's join
/// reaches nobody with a cap of 1, both members without one (events counted as undelivered:
/// the outboxes are detached).
#[test]
fn presence_events_stop_at_presence_max() {
    let sent = |presence_max| {
        let hub = Hub::new(ChatConfig { presence_max, ..ChatConfig::default() });
        let (a, b) =
            (hub.enter(Kind::Ws, Outbox::detached()), hub.enter(Kind::Ws, Outbox::detached()));
        let n = hub.counters.undelivered.load(Ordering::Relaxed);
        hub.exit(&b);
        let after_leave = hub.counters.undelivered.load(Ordering::Relaxed) - n;
        hub.exit(&a);
        (n, after_leave)
    };
    // Each: welcome + joined; the joins: A's to A, B's to A and B; B's leave to A.
    assert_eq!(sent(usize::MAX), (7, 1));
    // A cap of 1: only A's own join (a room of 1); B's leave leaves a room of 1, below the cap.
    assert_eq!(sent(1), (5, 0));
    assert_eq!(sent(0), (4, 0));
}

/// A masked client frame with the FIN bit as given.
fn masked_fin(payload: &[u8], opcode: u8, fin: bool) -> Vec<u8> {
    let mut f = masked(payload, opcode);
    if !fin {
        f[0] &= 0x7f;
    }
    f
}

fn ws_ctx_held(conn: &ChatConn) -> bool {
    match &conn.phase {
        Phase::Ws(ws) => ws.ctx.is_some(),
        _ => panic!("not a WebSocket"),
    }
}

fn nick_of(conn: &ChatConn) -> String {
    conn.member.as_ref().unwrap().nick()
}

/// Issue 15 (memory per idle client): between messages a WebSocket holds no tungstenite
/// context; inside a fragmented message it does, and the message still arrives whole.
#[test]
fn an_idle_websocket_holds_no_tungstenite_context() {
    let chat = ChatHub::new(ChatConfig::default()).web();
    let (mut conn, mut io) = upgraded(&chat);
    assert!(!ws_ctx_held(&conn), "made at the upgrade");
    io.input.extend_from_slice(&masked(br#"{"type":"nick","nick":"ann"}"#, 1));
    let _ = chat.on_read(&mut conn, &mut io);
    assert_eq!(nick_of(&conn), "ann");
    assert!(!ws_ctx_held(&conn), "kept after a whole message");
    assert!(io.input.is_empty());
    // A text message in two fragments with a ping between them: held until the last one.
    let json = br#"{"type":"nick","nick":"bob"}"#;
    io.input.extend_from_slice(&masked_fin(&json[..10], 1, false));
    io.input.extend_from_slice(&masked(b"p", 9));
    let _ = chat.on_read(&mut conn, &mut io);
    assert!(ws_ctx_held(&conn), "dropped inside a fragmented message");
    assert_eq!(nick_of(&conn), "ann");
    io.input.extend_from_slice(&masked_fin(&json[10..], 0, true));
    let _ = chat.on_read(&mut conn, &mut io);
    assert_eq!(nick_of(&conn), "bob");
    assert!(!ws_ctx_held(&conn));
    chat.on_close(conn, CloseReason::Eof);
}

/// A frame that arrives a byte at a time waits in the input, whole frames only go to
/// tungstenite, and the command runs once its last byte is in.
#[test]
fn a_frame_split_anywhere_is_read_once_whole() {
    let chat = ChatHub::new(ChatConfig::default()).web();
    let (mut conn, mut io) = upgraded(&chat);
    let mut data = masked(br#"{"type":"nick","nick":"cy"}"#, 1);
    data.extend_from_slice(&masked(br#"{"type":"nick","nick":"dee"}"#, 1));
    let first = masked(br#"{"type":"nick","nick":"cy"}"#, 1).len();
    for (i, b) in data.iter().enumerate() {
        io.input.push(*b);
        let _ = chat.on_read(&mut conn, &mut io);
        assert!(!ws_ctx_held(&conn));
        if i + 1 == first {
            assert_eq!(nick_of(&conn), "cy");
            assert!(io.input.is_empty());
        } else if i + 1 < data.len() {
            assert!(!io.input.is_empty(), "byte {i}: a partial frame was consumed");
        }
    }
    assert_eq!(nick_of(&conn), "dee");
    assert!(io.input.is_empty());
    chat.on_close(conn, CloseReason::Eof);
}

#[test]
fn whole_frames_counts_complete_frames_and_fragments() {
    let a = masked(b"hi", 1);
    let b = masked_fin(b"x", 2, false);
    let mut input = a.clone();
    input.extend_from_slice(&b);
    input.extend_from_slice(&[0x81, 0x85]); // a header without its mask and payload
    assert_eq!(whole_frames(&input, 1000, false), (a.len() + b.len(), true));
    assert_eq!(whole_frames(&input[..a.len() - 1], 1000, false), (0, false));
    // A continuation with FIN closes the fragmented message; a control frame changes nothing.
    let mut more = masked(b"p", 9);
    more.extend_from_slice(&masked_fin(b"y", 0, true));
    assert_eq!(whole_frames(&more, 1000, true), (more.len(), false));
    // What tungstenite refuses is passed on with everything after it: a frame over the limit
    // (close 1009) as soon as its header is in, a header with a reserved opcode (1002).
    assert_eq!(whole_frames(&[0x81, 0x80 | 126, 0x01, 0x00, 0, 0, 0, 0], 100, false), (8, false));
    assert_eq!(whole_frames(&[0x83, 0x80, 0, 0, 0, 0, 0x81], 100, false), (7, false));
}

/// `joined`/`members` list the first names in order without sorting them all: the same
/// list as sorting every name and keeping the first ones.
#[test]
fn first_nicks_is_the_sorted_prefix() {
    let hub = Hub::new(ChatConfig { presence_max: 0, ..ChatConfig::default() });
    let ms: Vec<Arc<hub::Member>> =
        (0..700).map(|_| hub.enter(Kind::Ws, Outbox::detached())).collect();
    // Names out of insertion order, with ties broken by the rest of the name.
    for (i, m) in ms.iter().enumerate() {
        *m.nick.lock() = format!("n{}x{i}", (i * 7919) % 701).into();
    }
    let mut all: Vec<String> = ms.iter().map(|m| m.nick()).collect();
    all.sort();
    for n in [0, 1, 5, 256, 700, 1000] {
        let want: Vec<String> = all.iter().take(n).cloned().collect();
        let got: Vec<String> =
            hub::first_nicks(ms.iter(), n).into_iter().map(|x| x.0.to_string()).collect();
        assert_eq!(got, want, "n = {n}");
    }
    for m in &ms {
        hub.exit(m);
    }
}

/// A room's listing (what `joined` and `who` send: the first 256 names) follows joins, leaves
/// and renames without looking at every member each time; after every step of a random
/// sequence over rooms of up to 400 it is what sorting all the names gives.
#[test]
fn room_listings_follow_joins_leaves_and_renames() {
    let hub = Hub::new(ChatConfig { presence_max: 0, history: 0, ..ChatConfig::default() });
    let mut rng = Rng(7);
    let mut ms: Vec<Arc<hub::Member>> = Vec::new();
    for step in 0..4000 {
        match rng.next() % 10 {
            0..=3 if ms.len() < 400 => ms.push(hub.enter(Kind::Ws, Outbox::detached())),
            4 if !ms.is_empty() => {
                let m = ms.swap_remove((rng.next() as usize) % ms.len());
                hub.exit(&m);
            }
            5..=7 if !ms.is_empty() => {
                // Renames into and out of the first names ("a..." sorts before "guest...").
                let m = &ms[(rng.next() as usize) % ms.len()];
                let first = if rng.next().is_multiple_of(2) { 'a' } else { 'z' };
                let _ = hub.nick(m, &format!("{first}{}", rng.next() % 1000));
            }
            8 if !ms.is_empty() => {
                let _ = hub.join(&ms[(rng.next() as usize) % ms.len()], "side");
            }
            9 if !ms.is_empty() => {
                let _ = hub.leave(&ms[(rng.next() as usize) % ms.len()], Some("side"));
            }
            _ => {}
        }
        if step % 7 == 0 {
            hub.check_listings();
        }
    }
    hub.check_listings();
    for m in &ms {
        hub.exit(m);
    }
}

/// A join racing the leave of a room's last member lands in the room the table holds: a room
/// the leave took out of the table after the join looked it up is marked, and the join looks
/// again. (Before, the joiner sat alone in a room no one else could find.)
#[test]
fn a_join_racing_the_last_leave_lands_in_the_tables_room() {
    let hub = Arc::new(Hub::new(ChatConfig { presence_max: 0, ..ChatConfig::default() }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (hub, stop) = (hub.clone(), stop.clone());
        std::thread::spawn(move || {
            let a = hub.enter(Kind::Ws, Outbox::detached());
            while !stop.load(Ordering::Relaxed) {
                let _ = hub.join(&a, "x");
                let _ = hub.leave(&a, Some("x"));
            }
            hub.exit(&a);
        })
    };
    let b = hub.enter(Kind::Ws, Outbox::detached());
    let end = Instant::now() + Duration::from_millis(1500);
    let mut rounds = 0u64;
    let mut lost = 0u64;
    while Instant::now() < end {
        hub.join(&b, "x").unwrap();
        if !hub.in_room(&b, "x") {
            lost += 1;
        }
        hub.leave(&b, Some("x")).unwrap();
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert_eq!(lost, 0, "{lost} of {rounds} joins landed in a room the table no longer had");
}

/// A frame begun and left unfinished past the request timeout closes with 1008; an idle
/// timeout with nothing pending pings first.
#[test]
fn a_frame_left_unfinished_closes_with_1008_at_the_request_timeout() {
    let chat = ChatHub::new(ChatConfig::default()).web();
    let (mut conn, mut io) = upgraded(&chat);
    io.output.clear();
    let frame = masked(br#"{"type":"nick","nick":"eve"}"#, 1);
    io.input.extend_from_slice(&frame[..5]);
    let _ = chat.on_read(&mut conn, &mut io);
    assert_eq!(io.input.len(), 5, "the partial frame waits in the input");
    assert!(io.output.is_empty());
    let _ = chat.on_timeout(&mut conn, &mut io, TimeoutKind::Request);
    assert_eq!(io.output[0], 0x88, "{:?}", io.output);
    assert_eq!(u16::from_be_bytes([io.output[2], io.output[3]]), 1008);
    assert!(io.close_after_send);
    let (mut conn, mut io) = upgraded(&chat);
    io.output.clear();
    let _ = chat.on_timeout(&mut conn, &mut io, TimeoutKind::Idle);
    assert_eq!(io.output[0], 0x89, "a ping: {:?}", io.output);
    assert!(!ws_ctx_held(&conn), "the ping's context is not kept");
}
