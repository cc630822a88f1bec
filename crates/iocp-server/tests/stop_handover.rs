//! A graceful stop while completions are in the poller's hands: reaped from the kernel, not yet
//! queued (what a preempted poller looks like on a loaded machine). The port's counters read
//! "nothing in flight, nothing queued, nobody running" there, before in-flight counts lasted
//! until a completion is queued; neither `Server::stop` nor `Pool::stop` may take that for
//! "done" and close the port under them.
//!
//! `iocp::fault::delay_reaped` holds every poller in that hand-over, process wide: this file is
//! its own test binary so that nothing else runs under it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iocp::{BackendChoice, CompletionKey};
use iocp_server::{CloseReason, Io, Next, Pool, PoolConfig, Server, ServerConfig, Service};
use iocp_testkit::{backend_test, deadline, wait_acked};
use parking_lot::Mutex;

/// Counts the bytes it is given (and consumes them); records how each connection closed.
/// Each connection pauses after its first read and is resumed only by the stop, so at the stop
/// most of what was sent waits in the kernel.
#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    pauses: AtomicU64,
    closes: Mutex<Vec<CloseReason>>,
}

struct Shared(Arc<Tally>);

impl Service for Shared {
    /// Whether the connection has paused once.
    type Conn = bool;
    fn open(&self, _: Option<SocketAddr>) -> bool {
        false
    }
    fn on_read(&self, paused: &mut bool, io: &mut Io) -> Next {
        self.0.bytes.fetch_add(io.input.len() as u64, Ordering::SeqCst);
        io.input.clear();
        if std::mem::replace(paused, true) {
            return Next::Read;
        }
        self.0.pauses.fetch_add(1, Ordering::SeqCst);
        Next::Pause
    }
    fn on_close(&self, _: bool, reason: CloseReason) {
        self.0.closes.lock().push(reason);
    }
}

const CONNS: usize = 4;
const EACH: usize = 64 * 1024;

fn stop_reads_everything_sent(c: BackendChoice) {
    // Every poll that reaps something holds it 20 ms before queueing it.
    iocp::fault::delay_reaped(Duration::from_millis(20));
    let tally = Arc::new(Tally::default());
    let cfg = ServerConfig {
        backend: c,
        threads: 2,
        grace: deadline(),
        read_buffer: 4096,
        park_after: None,
        ..ServerConfig::default()
    };
    let server = Server::start(Shared(tally.clone()), cfg).unwrap();
    let addr = server.local_addr();
    let payload = vec![b'x'; EACH];
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for s in &mut conns {
        s.set_write_timeout(Some(deadline())).unwrap();
        s.write_all(&payload).unwrap();
    }
    // Everything sent is in the server's kernel (acknowledged), most of it not read yet.
    conns.iter().for_each(wait_acked);
    let end = Instant::now() + deadline();
    while tally.pauses.load(Ordering::SeqCst) < CONNS as u64 {
        assert!(Instant::now() < end, "the connections never paused: {:?}", server.stats());
        thread::sleep(Duration::from_millis(1));
    }
    let read_before = tally.bytes.load(Ordering::SeqCst);
    let r = server.stop();
    let total = (CONNS * EACH) as u64;
    assert!(read_before < total, "the server read everything before the stop ({read_before})");
    assert_eq!(tally.bytes.load(Ordering::SeqCst), total, "bytes lost in the stop: {r:?}");
    let closes = tally.closes.lock().clone();
    assert_eq!(closes, vec![CloseReason::Eof; CONNS], "each connection read to its end: {r:?}");
    assert_eq!((r.stats.closed, r.stats.active), (CONNS as u64, 0), "{r:?}");
    drop(conns);
}

backend_test!(
    a_stop_while_the_poller_holds_completions_loses_nothing,
    choice | c | {
        stop_reads_everything_sent(c);
    }
);

// `Pool::stop` waited on the port's counters: with the receive's completion held by the poller
// they read idle, the stop closed the port and the completion was dropped (the handler never
// saw it; CI caught `pool::stop_waits_for_pending_operations_then_joins` once).
backend_test!(a_pool_stop_while_the_poller_holds_a_completion_delivers_it, |b| {
    iocp::fault::delay_reaped(Duration::from_millis(100));
    let port = Arc::new(b.build::<u8>().unwrap());
    let (mut client, server) = iocp_testkit::tcp_pair();
    let h = port.associate(server, CompletionKey(3)).unwrap();
    h.recv(Vec::with_capacity(16), 1).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let pool =
        Pool::start(port.clone(), &PoolConfig { threads: 2, ..PoolConfig::default() }, move |c| {
            g.store(c.bytes() as u64 + 1000, Ordering::SeqCst);
        })
        .unwrap();
    // The bytes are in the server's kernel before the stop: the poller reaps them and holds
    // the completion 100 ms while the stop looks.
    client.write_all(b"late").unwrap();
    wait_acked(&client);
    let r = pool.stop(deadline());
    assert!(r.drained, "{r:?}");
    assert_eq!(got.load(Ordering::SeqCst), 1004, "the completion was lost in the stop: {r:?}");
    drop(h);
});
