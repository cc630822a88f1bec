//! Test helpers for iocp: the backend matrix, loopback pairs, deadlines.
//!
//! Every port-level test is written once with [`backend_test!`] and runs on epoll and on
//! io_uring. Without io_uring the io_uring case prints `SKIP io_uring: <why>` and passes, unless
//! `IOCP_REQUIRE_URING=1` is set (as `.ci/run` does), which turns the skip into a failure.
//! `IOCP_BACKEND=epoll` skips the io_uring cases and makes [`auto_builder`] choose epoll.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use iocp::{BackendChoice, BackendKind, PortBuilder};

/// How long any test waits for something that should happen: long enough for a loaded CI
/// machine, short enough that a hang fails fast.
pub fn deadline() -> Duration {
    Duration::from_secs(10)
}

/// A short wait for something that should *not* happen (a packet that must not arrive).
pub fn quiet() -> Duration {
    Duration::from_millis(200)
}

/// The backend selected by `IOCP_BACKEND` (read here, at the edge), default `Auto`.
pub fn env_backend() -> BackendChoice {
    match std::env::var("IOCP_BACKEND") {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("IOCP_BACKEND: {e}")),
        Err(_) => BackendChoice::Auto,
    }
}

/// The io_uring rings per port that `IOCP_RINGS` asks for (read here, at the edge), default 1;
/// 0 means one per thread of the concurrency limit ([`PortBuilder::rings`]).
pub fn env_rings() -> usize {
    match std::env::var("IOCP_RINGS") {
        Ok(v) => v.trim().parse().unwrap_or_else(|e| panic!("IOCP_RINGS={v:?}: {e}")),
        Err(_) => 1,
    }
}

/// A builder for the backend `IOCP_BACKEND` names (tests that do not care which), with the
/// rings `IOCP_RINGS` names.
pub fn auto_builder() -> PortBuilder {
    iocp::CompletionPort::<()>::builder().backend(env_backend()).rings(env_rings())
}

/// A builder for `kind`, or `None` (after printing why) when that case must be skipped.
///
/// # Panics
/// When io_uring is unavailable and `IOCP_REQUIRE_URING=1`.
pub fn builder_for(kind: BackendKind) -> Option<PortBuilder> {
    choice_for(kind).map(|c| iocp::CompletionPort::<()>::builder().backend(c).rings(env_rings()))
}

/// The [`BackendChoice`] that forces `kind`, or `None` (with a `SKIP` line) when it cannot
/// run here; for code that builds its own port (servers). Same rules as [`builder_for`].
///
/// # Panics
/// When io_uring is unavailable and `IOCP_REQUIRE_URING=1`.
pub fn choice_for(kind: BackendKind) -> Option<BackendChoice> {
    match kind {
        BackendKind::Epoll => Some(BackendChoice::Epoll),
        _ => {
            let require = std::env::var("IOCP_REQUIRE_URING").is_ok_and(|v| v == "1");
            if env_backend() == BackendChoice::Epoll {
                assert!(!require, "IOCP_REQUIRE_URING=1 contradicts IOCP_BACKEND=epoll");
                eprintln!("SKIP io_uring: IOCP_BACKEND=epoll");
                return None;
            }
            let report = iocp::probe();
            if report.kind() != BackendKind::Uring {
                assert!(
                    !require,
                    "IOCP_REQUIRE_URING=1 but io_uring is unavailable: {}",
                    report.reason()
                );
                eprintln!("SKIP io_uring: {}", report.reason());
                return None;
            }
            Some(BackendChoice::Uring)
        }
    }
}

/// `/proc/net/tcp`'s spelling of an IPv4 address and port (`0100007F:1F90`).
fn proc_net_addr(a: SocketAddr) -> Option<String> {
    let SocketAddr::V4(v4) = a else { return None };
    Some(format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()))
}

/// Bytes `s` has sent that its peer's kernel has not acknowledged (sent or not: the
/// `tx_queue` of `/proc/net/tcp`); IPv4 only. The line is the established socket with both
/// of `s`'s addresses: a TIME_WAIT socket of an earlier connection can share the local port
/// (with another peer), and its queue reads 0.
pub fn unacked(s: &TcpStream) -> Option<u64> {
    let local = proc_net_addr(s.local_addr().ok()?)?;
    let remote = proc_net_addr(s.peer_addr().ok()?)?;
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // 01: TCP_ESTABLISHED.
        if cols.get(1..4)? != [local.as_str(), remote.as_str(), "01"] {
            return None;
        }
        u64::from_str_radix(cols.get(4)?.split(':').next()?, 16).ok()
    })
}

/// Waits (up to [`deadline`]) until the peer's kernel has acknowledged everything `s` sent.
///
/// # Panics
/// When it has not by then, or the socket is not in `/proc/net/tcp` (not IPv4).
pub fn wait_acked(s: &TcpStream) {
    let end = Instant::now() + deadline();
    loop {
        let left = unacked(s);
        if left == Some(0) {
            return;
        }
        assert!(Instant::now() < end, "{:?}: {left:?} bytes never acknowledged", s.local_addr());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The backends available here, by name (`"epoll"`, `"uring"`), each with a preset builder;
/// io_uring is left out (with a `SKIP` line) when it is unavailable or `IOCP_BACKEND=epoll`.
/// For benchmarks and tools that run every backend.
pub fn available_backends() -> Vec<(&'static str, PortBuilder)> {
    [("epoll", BackendKind::Epoll), ("uring", BackendKind::Uring)]
        .into_iter()
        .filter_map(|(name, kind)| builder_for(kind).map(|b| (name, b)))
        .collect()
}

/// Writes a test once and runs it on both backends: expands to `mod $name { fn epoll(); fn
/// uring(); }`. The body gets a [`PortBuilder`] preset to the backend.
///
/// ```ignore
/// backend_test!(post_then_get, |b| {
///     let port = b.build::<u32>().unwrap();
///     port.post(1, CompletionKey(2), 3).unwrap();
///     assert_eq!(*port.get(Some(deadline())).unwrap().context(), 3);
/// });
/// ```
///
/// With `choice |c|`, the body gets the [`BackendChoice`] instead (for servers that build
/// their own port).
#[macro_export]
macro_rules! backend_test {
    ($name:ident, choice |$c:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn epoll() {
                if let Some($c) = $crate::choice_for(::iocp::BackendKind::Epoll) {
                    $body
                }
            }

            #[test]
            fn uring() {
                if let Some($c) = $crate::choice_for(::iocp::BackendKind::Uring) {
                    $body
                }
            }
        }
    };
    ($name:ident, |$b:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn epoll() {
                if let Some($b) = $crate::builder_for(::iocp::BackendKind::Epoll) {
                    $body
                }
            }

            #[test]
            fn uring() {
                if let Some($b) = $crate::builder_for(::iocp::BackendKind::Uring) {
                    $body
                }
            }
        }
    };
}

/// A listener on 127.0.0.1 with an ephemeral port.
pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A connected loopback TCP pair: (client, server side).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = listener();
    let client = TcpStream::connect(l.local_addr().expect("local_addr")).expect("connect");
    let (server, _) = l.accept().expect("accept");
    client.set_nodelay(true).ok();
    server.set_nodelay(true).ok();
    (client, server)
}

/// Closes `s` with a reset (SO_LINGER 0), as a crashing peer would.
pub fn reset(s: TcpStream) {
    let s = socket2::Socket::from(s);
    s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(s);
}

/// An address on loopback where nothing listens (bound then closed), for refused connects.
pub fn closed_addr() -> SocketAddr {
    let l = listener();
    l.local_addr().expect("local_addr")
}

/// Writes all of `data` to `s`.
pub fn send_all(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write_all");
}

/// Raises this process's soft limit on open files to its hard limit and checks it is at least
/// `need`. Returns false (after printing a `SKIP` line saying why) when the hard limit is too
/// low, so a test with thousands of sockets skips with a clear message instead of failing on
/// `EMFILE`.
pub fn raise_fd_limit(need: u64) -> bool {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum;
    if lim.current != hard {
        // Raising the soft limit up to the hard one needs no privilege.
        let _ = setrlimit(Resource::Nofile, Rlimit { current: hard, maximum: hard });
    }
    let now = getrlimit(Resource::Nofile).current;
    if now.is_some_and(|n| n < need) {
        eprintln!(
            "SKIP: needs {need} open files; RLIMIT_NOFILE hard limit is {} (raise it, e.g. \
             `ulimit -Hn {need}` as root)",
            hard.map_or("unlimited".to_string(), |h| h.to_string())
        );
        return false;
    }
    true
}

/// Polls `f` until it returns `Some`, or panics at the [`deadline`].
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}
