//! The push path (full-duplex connections with a bounded outgoing queue of shared buffers),
//! through a broadcast service over real loopback sockets, on both backends.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iocp::BackendChoice;
use iocp_server::{
    Io, Next, Outbox, PushConfig, Server, ServerConfig, ServerStats, Service, SlowPolicy,
};
use iocp_testkit::{backend_test, deadline};
use parking_lot::Mutex;

/// Every line a connection sends goes to every connection (itself included); `quit` gets a
/// private `goodbye` and a close; the server's stop sends `bye` to everyone.
struct Broadcast {
    members: Mutex<HashMap<u64, Outbox>>,
    push: PushConfig,
    /// The most bytes seen queued on one outbox (the bound under test).
    max_queued: AtomicUsize,
}

impl Broadcast {
    fn new(push: PushConfig) -> Self {
        Broadcast { members: Mutex::new(HashMap::new()), push, max_queued: AtomicUsize::new(0) }
    }

    fn send_all(&self, msg: &[u8]) {
        let buf = Bytes::copy_from_slice(msg);
        let members: Vec<Outbox> = self.members.lock().values().cloned().collect();
        for m in members {
            let _ = m.push(buf.clone());
            self.max_queued.fetch_max(m.queued_bytes(), Ordering::Relaxed);
        }
    }
}

impl Service for Broadcast {
    type Conn = Outbox;

    fn open(&self, _peer: Option<SocketAddr>) -> Outbox {
        Outbox::detached()
    }

    fn push(&self) -> Option<PushConfig> {
        Some(self.push)
    }

    fn open_push(&self, _peer: Option<SocketAddr>, outbox: Outbox) -> Outbox {
        self.members.lock().insert(outbox.id(), outbox.clone());
        outbox
    }

    fn on_read(&self, _conn: &mut Outbox, io: &mut Io) -> Next {
        while let Some(end) = io.input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = io.input.drain(..=end).collect();
            if line == b"quit\n" {
                io.input.clear();
                io.output.extend_from_slice(b"goodbye\n");
                io.close_after_send = true;
                return Next::Send;
            }
            self.send_all(&line);
        }
        Next::Read
    }

    fn on_close(&self, conn: Outbox, _reason: iocp_server::CloseReason) {
        self.members.lock().remove(&conn.id());
    }

    fn stopping(&self) {
        for m in self.members.lock().values() {
            let _ = m.push_last(Bytes::from_static(b"bye\n"));
        }
    }
}

fn config(backend: BackendChoice) -> ServerConfig {
    ServerConfig {
        backend,
        threads: 2,
        grace: deadline(),
        linger: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(deadline())).unwrap();
    s.set_write_timeout(Some(deadline())).unwrap();
    s
}

fn wait_for(server: &Server<Broadcast>, what: &str, f: impl Fn(&Server<Broadcast>) -> bool) {
    let end = Instant::now() + deadline();
    while !f(server) {
        assert!(Instant::now() < end, "timed out waiting for {what}: {:?}", server.stats());
        thread::sleep(Duration::from_millis(2));
    }
}

fn members(n: usize) -> impl Fn(&Server<Broadcast>) -> bool {
    move |s| s.service().members.lock().len() == n
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

fn read_to_end(s: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} after {} bytes", out.len()),
        }
    }
}

fn stats(server: Server<Broadcast>) -> ServerStats {
    let r = server.stop();
    assert_eq!(r.stats.panics, 0, "{r:?}");
    assert_eq!(r.pool.panics, 0, "{r:?}");
    r.stats
}

backend_test!(
    fan_out_while_every_connection_keeps_reading,
    choice | c | {
        let server = Server::start(Broadcast::new(PushConfig::default()), config(c)).unwrap();
        let clients: Vec<TcpStream> = (0..4).map(|_| connect(server.local_addr())).collect();
        wait_for(&server, "4 members", members(4));
        let mut readers: Vec<BufReader<TcpStream>> =
            clients.iter().map(|c| BufReader::new(c.try_clone().unwrap())).collect();
        // Every client sends while all the others' pushes flow to it: 4 × 200 lines each.
        let senders: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.try_clone().unwrap();
                thread::spawn(move || {
                    for n in 0..200 {
                        c.write_all(format!("{i}:{n}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for r in &mut readers {
            let mut next = [0usize; 4];
            for _ in 0..800 {
                let line = read_line(r);
                let (who, n) = line.trim_end().split_once(':').unwrap();
                let (who, n): (usize, usize) = (who.parse().unwrap(), n.parse().unwrap());
                // Each sender's lines arrive in order, none lost or repeated.
                assert_eq!(n, next[who], "line {line:?}");
                next[who] += 1;
            }
            assert_eq!(next, [200; 4]);
        }
        for s in senders {
            s.join().unwrap();
        }
        drop(readers);
        drop(clients);
        wait_for(&server, "members gone", members(0));
        let st = stats(server);
        assert_eq!(st.slow_drops, 0);
        assert_eq!(st.accepted, 4);
    }
);

backend_test!(
    a_push_from_a_foreign_thread_is_delivered,
    choice | c | {
        let server = Server::start(Broadcast::new(PushConfig::default()), config(c)).unwrap();
        let a = connect(server.local_addr());
        let mut r = BufReader::new(a.try_clone().unwrap());
        wait_for(&server, "1 member", members(1));
        // The test thread is not a worker: the send is kicked through a posted packet.
        for i in 0..100 {
            server.service().send_all(format!("from outside {i}\n").as_bytes());
        }
        for i in 0..100 {
            assert_eq!(read_line(&mut r), format!("from outside {i}\n"));
        }
        drop(a);
        stats(server);
    }
);

/// Fills the slow client's socket buffers and then its queue.
fn flood(server: &Server<Broadcast>, fast: &mut BufReader<TcpStream>, stop: impl Fn() -> bool) {
    let line = format!("{}\n", "x".repeat(1000));
    let end = Instant::now() + deadline();
    let mut fast_w = fast.get_ref().try_clone().unwrap();
    while !stop() {
        assert!(Instant::now() < end, "flood: {:?}", server.stats());
        fast_w.write_all(line.as_bytes()).unwrap();
        // The fast client reads everything it is sent (its own lines come back).
        assert_eq!(read_line(fast).len(), line.len());
    }
}

backend_test!(
    a_client_that_does_not_read_is_dropped_with_bounded_memory,
    choice | c | {
        let push = PushConfig { max_messages: 64, max_bytes: 32 * 1024, ..PushConfig::default() };
        let server = Server::start(Broadcast::new(push), config(c)).unwrap();
        let slow = connect(server.local_addr());
        slow.set_nonblocking(true).unwrap();
        let fast = connect(server.local_addr());
        let mut fast = BufReader::new(fast);
        wait_for(&server, "2 members", members(2));
        flood(&server, &mut fast, || server.stats().slow_drops >= 1);
        wait_for(&server, "the slow member gone", members(1));
        // The queue never held more than its bound.
        assert!(server.service().max_queued.load(Ordering::Relaxed) <= 32 * 1024);
        // The room goes on for the fast client.
        fast.get_ref().write_all(b"still here\n").unwrap();
        assert_eq!(read_line(&mut fast), "still here\n");
        let st = stats(server);
        assert_eq!(st.slow_drops, 1, "{st:?}");
        drop(slow);
    }
);

backend_test!(
    keep_newest_skips_instead_of_dropping,
    choice | c | {
        let push = PushConfig {
            max_messages: 16,
            max_bytes: 16 * 1024,
            policy: SlowPolicy::KeepNewest,
            ..PushConfig::default()
        };
        let server = Server::start(Broadcast::new(push), config(c)).unwrap();
        let slow = connect(server.local_addr());
        let fast = connect(server.local_addr());
        let mut fast = BufReader::new(fast);
        wait_for(&server, "2 members", members(2));
        flood(&server, &mut fast, || server.stats().push_skipped >= 50);
        assert_eq!(server.stats().slow_drops, 0);
        assert_eq!(server.service().members.lock().len(), 2);
        assert!(server.service().max_queued.load(Ordering::Relaxed) <= 16 * 1024);
        // The slow client, reading at last, gets whole lines (skips are whole buffers) and
        // the newest: a marker sent now arrives after at most the queue's worth of old lines.
        fast.get_ref().write_all(b"marker\n").unwrap();
        assert_eq!(read_line(&mut fast), "marker\n");
        let mut slow_r = BufReader::new(slow);
        let mut seen = 0;
        loop {
            let line = read_line(&mut slow_r);
            if line == "marker\n" {
                break;
            }
            assert_eq!(line.len(), 1001, "a whole line");
            seen += 1;
        }
        assert!(seen < 10_000, "{seen}");
        stats(server);
    }
);

backend_test!(
    close_after_a_private_reply_delivers_it_first,
    choice | c | {
        let server = Server::start(Broadcast::new(PushConfig::default()), config(c)).unwrap();
        let mut a = connect(server.local_addr());
        wait_for(&server, "1 member", members(1));
        a.write_all(b"hello\nquit\n").unwrap();
        assert_eq!(read_to_end(&mut a), b"hello\ngoodbye\n");
        wait_for(&server, "member gone", members(0));
        stats(server);
    }
);

backend_test!(
    graceful_stop_delivers_the_goodbyes,
    choice | c | {
        let server = Server::start(Broadcast::new(PushConfig::default()), config(c)).unwrap();
        let mut clients: Vec<TcpStream> = (0..5).map(|_| connect(server.local_addr())).collect();
        wait_for(&server, "5 members", members(5));
        clients[0].write_all(b"last words\n").unwrap();
        // Everyone has it before the stop (a push racing the stop's last push is refused).
        for c in &clients {
            let mut r = BufReader::new(c.try_clone().unwrap());
            assert_eq!(read_line(&mut r), "last words\n");
            assert!(r.buffer().is_empty());
        }
        let st = stats(server);
        assert_eq!(st.closed, 5, "{st:?}");
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(read_to_end(c), b"bye\n", "client {i}");
        }
    }
);

/// A connection's states alive: a connection lost in a reference cycle never drops its state.
struct Flood {
    live: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<iocp_server::CloseReason>>>,
}

struct FloodConn {
    outbox: Outbox,
    live: Arc<AtomicUsize>,
}

impl Drop for FloodConn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Each `flood` line pushes 32 MiB to the connection itself (more than loopback buffers hold,
/// so a client that does not read keeps a send in flight).
impl Service for Flood {
    type Conn = FloodConn;

    fn open(&self, _peer: Option<SocketAddr>) -> FloodConn {
        self.open_push(None, Outbox::detached())
    }

    fn push(&self) -> Option<PushConfig> {
        Some(PushConfig { max_messages: 1024, max_bytes: 64 << 20, ..PushConfig::default() })
    }

    fn open_push(&self, _peer: Option<SocketAddr>, outbox: Outbox) -> FloodConn {
        self.live.fetch_add(1, Ordering::SeqCst);
        FloodConn { outbox, live: self.live.clone() }
    }

    fn on_read(&self, conn: &mut FloodConn, io: &mut Io) -> Next {
        if io.input.contains(&b'\n') {
            io.input.clear();
            for _ in 0..512 {
                conn.outbox.push(Bytes::from(vec![b'x'; 64 << 10])).unwrap();
            }
        }
        Next::Read
    }

    fn on_close(&self, _conn: FloodConn, reason: iocp_server::CloseReason) {
        self.closed.lock().push(reason);
    }
}

backend_test!(
    a_connection_parked_for_its_drain_when_the_grace_ends_is_closed_not_leaked,
    choice | c | {
        let live = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let flood = Flood { live: live.clone(), closed: closed.clone() };
        let cfg = ServerConfig { grace: Duration::from_millis(300), ..config(c) };
        let server = Server::start(flood, cfg).unwrap();
        let mut client = connect(server.local_addr());
        client.write_all(b"flood\n").unwrap();
        // The flood has started; then the client stops reading and ends its side: the
        // connection's receive ends while its send waits for a reader, so it parks for the
        // drain, which the grace cuts short.
        let mut first = [0u8; 1];
        client.read_exact(&mut first).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let r = server.stop();
        assert_eq!(r.stats.active, 0, "{:?}", r.stats);
        assert_eq!(r.stats.closed, 1, "{:?}", r.stats);
        assert_eq!(live.load(Ordering::SeqCst), 0, "the parked connection leaked: {:?}", r.stats);
        assert_eq!(*closed.lock(), [iocp_server::CloseReason::Stopped]);
        drop(client);
    }
);

/// Pauses every connection at its first read ([`Next::Pause`]) and never resumes it; keeps
/// each connection's outbox so the test can push to it.
struct PauseAndKeep {
    reads: AtomicUsize,
    outboxes: Mutex<Vec<Outbox>>,
    closed: Mutex<Vec<iocp_server::CloseReason>>,
}

impl Service for PauseAndKeep {
    type Conn = ();

    fn open(&self, _peer: Option<SocketAddr>) {}

    fn push(&self) -> Option<PushConfig> {
        Some(PushConfig::default())
    }

    fn open_push(&self, _peer: Option<SocketAddr>, outbox: Outbox) {
        self.outboxes.lock().push(outbox);
    }

    fn on_read(&self, _conn: &mut (), io: &mut Io) -> Next {
        io.input.clear();
        self.reads.fetch_add(1, Ordering::SeqCst);
        Next::Pause
    }

    fn on_close(&self, _conn: (), reason: iocp_server::CloseReason) {
        self.closed.lock().push(reason);
    }
}

backend_test!(
    a_paused_connection_whose_send_fails_is_closed_without_a_resume,
    choice | c | {
        let svc = PauseAndKeep {
            reads: AtomicUsize::new(0),
            outboxes: Mutex::new(Vec::new()),
            closed: Mutex::new(Vec::new()),
        };
        let server = Server::start(svc, config(c)).unwrap();
        let client = connect(server.local_addr());
        (&client).write_all(b"pause me\n").unwrap();
        wait_for_paused(&server);
        // The peer resets the connection: the paused connection has no receive posted to see
        // it; the next send fails.
        socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        let outbox = server.service().outboxes.lock()[0].clone();
        let end = Instant::now() + deadline();
        while server.service().closed.lock().is_empty() {
            assert!(
                Instant::now() < end,
                "the paused connection stayed open after its send failed: {:?}",
                server.stats()
            );
            let _ = outbox.push(Bytes::from(vec![b'x'; 64 * 1024]));
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(*server.service().closed.lock(), [iocp_server::CloseReason::Error]);
        let s = server.stats();
        assert_eq!((s.active, s.closed), (0, 1), "{s:?}");
        server.stop();
    }
);

/// Waits until the service has paused its one connection (its first read was handled).
fn wait_for_paused(server: &Server<PauseAndKeep>) {
    let end = Instant::now() + deadline();
    while server.service().reads.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < end, "no connection: {:?}", server.stats());
        thread::sleep(Duration::from_millis(1));
    }
}

thread_local! {
    /// Set while `PushFromInside::on_read` pushes (as a chat pushes to a room under its lock).
    static PUSHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The first connection pauses at its first read; any later connection's read pushes a burst
/// to the first one's outbox from inside the service (a worker's stack, as a chat room does),
/// which overflows its two-message queue once the socket buffers are full: a slow drop.
struct PushFromInside {
    outboxes: Mutex<Vec<Outbox>>,
    closed: Mutex<Vec<(iocp_server::CloseReason, bool)>>,
}

impl Service for PushFromInside {
    /// Whether this is the first connection.
    type Conn = bool;

    fn open(&self, _peer: Option<SocketAddr>) -> bool {
        false
    }

    fn push(&self) -> Option<PushConfig> {
        Some(PushConfig { max_messages: 2, policy: SlowPolicy::Drop, ..PushConfig::default() })
    }

    fn open_push(&self, _peer: Option<SocketAddr>, outbox: Outbox) -> bool {
        let mut all = self.outboxes.lock();
        all.push(outbox);
        all.len() == 1
    }

    fn on_read(&self, first: &mut bool, io: &mut Io) -> Next {
        io.input.clear();
        if *first {
            return Next::Pause;
        }
        let target = self.outboxes.lock()[0].clone();
        PUSHING.with(|p| p.set(true));
        // Far more than the loopback socket buffers hold (the peer never reads): the queue
        // fills behind the send in flight and the push that finds it full drops the connection.
        let chunk = Bytes::from(vec![b'y'; 256 * 1024]);
        for _ in 0..1024 {
            if target.push(chunk.clone()).is_err() {
                break;
            }
        }
        PUSHING.with(|p| p.set(false));
        Next::Read
    }

    fn on_close(&self, _first: bool, reason: iocp_server::CloseReason) {
        // `true`: called from inside the pushing callback (under its locks): must not happen.
        self.closed.lock().push((reason, PUSHING.with(std::cell::Cell::get)));
    }
}

backend_test!(
    a_paused_connection_dropped_as_slow_from_inside_a_push_is_closed_on_its_own_stack,
    choice | c | {
        let svc =
            PushFromInside { outboxes: Mutex::new(Vec::new()), closed: Mutex::new(Vec::new()) };
        let server = Server::start(svc, config(c)).unwrap();
        // The paused one: its client never reads.
        let slow = connect(server.local_addr());
        (&slow).write_all(b"pause me\n").unwrap();
        let end = Instant::now() + deadline();
        while server.service().outboxes.lock().is_empty() {
            assert!(Instant::now() < end, "no first connection");
            thread::sleep(Duration::from_millis(1));
        }
        let pusher = connect(server.local_addr());
        (&pusher).write_all(b"flood\n").unwrap();
        while server.service().closed.lock().is_empty() {
            assert!(
                Instant::now() < end,
                "the paused connection was not closed after its slow drop: {:?}",
                server.stats()
            );
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(*server.service().closed.lock(), [(iocp_server::CloseReason::Slow, false)]);
        assert_eq!(server.stats().slow_drops, 1);
        drop((slow, pusher));
        server.stop();
    }
);

/// Each `flood` line pushes more than the queue holds to the connection itself, inside
/// `on_read`: the connection is dropped as slow while its callback runs, so its next receive
/// is refused (the drop closed the handle). Closes are recorded with their reasons.
struct SelfFlood {
    closed: Arc<Mutex<Vec<iocp_server::CloseReason>>>,
}

impl Service for SelfFlood {
    type Conn = Outbox;

    fn open(&self, _peer: Option<SocketAddr>) -> Outbox {
        Outbox::detached()
    }

    fn push(&self) -> Option<PushConfig> {
        Some(PushConfig { max_messages: 4, max_bytes: 1 << 20, ..PushConfig::default() })
    }

    fn open_push(&self, _peer: Option<SocketAddr>, outbox: Outbox) -> Outbox {
        outbox
    }

    fn on_read(&self, conn: &mut Outbox, io: &mut Io) -> Next {
        if io.input.contains(&b'\n') {
            io.input.clear();
            for _ in 0..64 {
                // The fifth and later fail: the queue is full, the connection is dropped.
                let _ = conn.push(Bytes::from(vec![b'x'; 64 << 10]));
            }
        }
        Next::Read
    }

    fn on_close(&self, _conn: Outbox, reason: iocp_server::CloseReason) {
        self.closed.lock().push(reason);
    }
}

backend_test!(
    a_connection_dropped_as_slow_inside_its_own_callback_is_closed_as_slow,
    choice | c | {
        let closed = Arc::new(Mutex::new(Vec::new()));
        let server = Server::start(SelfFlood { closed: closed.clone() }, config(c)).unwrap();
        let mut client = connect(server.local_addr());
        client.write_all(b"flood\n").unwrap();
        // The server closes the connection: what it sent before, then the end (or a reset).
        let _ = read_to_end(&mut client);
        let end = Instant::now() + deadline();
        while closed.lock().is_empty() {
            assert!(Instant::now() < end, "never closed: {:?}", server.stats());
            thread::sleep(Duration::from_millis(2));
        }
        let r = server.stop();
        // Before: refused receive, counted as an I/O error and closed with `Error`.
        assert_eq!(*closed.lock(), [iocp_server::CloseReason::Slow], "{:?}", r.stats);
        assert_eq!((r.stats.slow_drops, r.stats.io_errors), (1, 0), "{:?}", r.stats);
        drop(client);
    }
);
