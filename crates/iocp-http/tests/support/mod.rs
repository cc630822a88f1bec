//! A small test-only server on top of `Site`: one std thread per connection, a read timeout
//! for the head timer (408) and for idle keep-alive connections (silent close). The suite only
//! uses [`spawn`], [`spawn_with`], [`Options`] and [`TestServer::addr`]/[`TestServer::url`], so
//! this module can be swapped for one that starts the completion-port server.

#![allow(dead_code, unreachable_pub)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iocp_http::{Body, Config, Parsed, Response, Site};

/// How a test server behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// From the first byte of a request to its complete head (slowloris): then 408 and close.
    pub head_timeout: Duration,
    /// How long a kept-alive connection may sit with no bytes: then a silent close.
    pub idle_timeout: Duration,
    /// Adjusts the site configuration (limits, listings, ...).
    pub configure: fn(&mut Config),
}

impl Default for Options {
    fn default() -> Options {
        Options {
            head_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            configure: |_| {},
        }
    }
}

/// A served connection: a clone of its socket (to wake it on stop) and its thread.
struct Conn {
    sock: TcpStream,
    thread: JoinHandle<()>,
}

/// A running server; dropping it stops it and joins every thread.
pub struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Conn>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestServer {
    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().expect("conns lock"));
        for conn in &conns {
            let _ = conn.sock.shutdown(Shutdown::Both); // wakes a blocked read
        }
        for conn in conns {
            let _ = conn.thread.join();
        }
    }
}

/// Serves `root` with the default options.
pub fn spawn(root: &Path) -> TestServer {
    spawn_with(root, Options::default())
}

/// Serves `root` on 127.0.0.1 (an ephemeral port).
pub fn spawn_with(root: &Path, opts: Options) -> TestServer {
    let mut cfg = Config::new(root);
    (opts.configure)(&mut cfg);
    let site = Arc::new(Site::new(cfg).expect("test site"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let acceptor = {
        let (stop, conns) = (Arc::clone(&stop), Arc::clone(&conns));
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(sock) = sock else { continue };
                let Ok(handle) = sock.try_clone() else { continue };
                let (site, opts) = (Arc::clone(&site), opts.clone());
                let t = std::thread::spawn(move || {
                    let closer = sock.try_clone();
                    let _ = serve(&site, sock, &opts);
                    // `conns` holds a clone of the fd, so dropping ours would not close the
                    // connection: shut it down explicitly.
                    if let Ok(s) = closer {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                });
                conns.lock().expect("conns lock").push(Conn { sock: handle, thread: t });
            }
        })
    };
    TestServer { addr, stop, conns, acceptor: Some(acceptor) }
}

/// One connection: parse, respond, pipeline, keep-alive, head and idle timers.
fn serve(site: &Site, mut sock: TcpStream, opts: &Options) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(site.config().max_head);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut head_deadline: Option<Instant> = None;
    let mut continued = false;
    loop {
        let parsed = if buf.is_empty() { Parsed::Incomplete } else { site.parse(&buf) };
        match parsed {
            Parsed::Request { req, consumed } => {
                let resp = site.respond(&req);
                send(&mut sock, &resp)?;
                buf.drain(..consumed);
                continued = false;
                head_deadline = None;
                if !resp.keep_alive {
                    return close(sock);
                }
                continue;
            }
            Parsed::Error(resp) => {
                send(&mut sock, &resp)?;
                return close(sock);
            }
            Parsed::Continue if !continued => {
                sock.write_all(iocp_http::CONTINUE)?;
                continued = true;
            }
            Parsed::Continue | Parsed::Incomplete => {}
        }
        let now = Instant::now();
        if !buf.is_empty() && head_deadline.is_none() {
            head_deadline = Some(now + opts.head_timeout);
        }
        let wait = head_deadline.map_or(opts.idle_timeout, |d| d.saturating_duration_since(now));
        if wait.is_zero() {
            send(&mut sock, &site.timeout_response())?;
            return close(sock);
        }
        sock.set_read_timeout(Some(wait))?;
        match sock.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                head_deadline.get_or_insert(Instant::now() + opts.head_timeout);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if head_deadline.is_some() {
                    send(&mut sock, &site.timeout_response())?;
                    return close(sock);
                }
                return Ok(()); // idle keep-alive connection: close silently
            }
            Err(e) => return Err(e),
        }
    }
}

fn send(sock: &mut TcpStream, resp: &Response) -> io::Result<()> {
    match &resp.body {
        Body::Empty => sock.write_all(&resp.head),
        Body::Bytes { data, offset, len } => {
            let mut out = Vec::with_capacity(resp.head.len() + len);
            out.extend_from_slice(&resp.head);
            out.extend_from_slice(&data[*offset..*offset + *len]);
            sock.write_all(&out)
        }
        Body::File { file, offset, len } => {
            sock.write_all(&resp.head)?;
            let mut chunk = vec![0u8; 64 * 1024];
            let (mut at, end) = (*offset, *offset + *len);
            while at < end {
                let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(chunk.len());
                let n = file.read_at(&mut chunk[..want], at)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
                }
                sock.write_all(&chunk[..n])?;
                at += n as u64;
            }
            Ok(())
        }
    }
}

/// A lingering close: stop sending, then drain what the client still sends for a moment, so
/// closing with unread bytes does not reset the connection before the client reads our reply.
fn close(mut sock: TcpStream) -> io::Result<()> {
    sock.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        match sock.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}
