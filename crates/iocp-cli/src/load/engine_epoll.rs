//! The default generator loop: a hand-rolled, non-blocking, level-triggered epoll loop
//! (rustix), one per generator thread. Per readable event one `read` into a thread-wide
//! buffer, the session checks the bytes and queues the next request, and one `write` sends it
//! (EPOLLOUT is armed only while a write is short). It does not use the `iocp` library.

use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use anyhow::Context as _;
use rustix::event::epoll;

use super::plan::{Next, Session};
use super::report::Fault;
use super::run::{Link, ThreadOut, Worker};

const IN: epoll::EventFlags = epoll::EventFlags::IN;

/// One connection as the engine sees it.
struct Conn<S> {
    sock: Option<TcpStream>,
    session: S,
    tx: Vec<u8>,
    tx_off: usize,
    want_out: bool,
    last_progress: Instant,
}

impl<S: Session> Link for Conn<S> {
    type Io = OwnedFd;

    /// Registers the socket as `i` and sends the session's first requests.
    fn open(
        &mut self,
        ep: &OwnedFd,
        i: usize,
        sock: TcpStream,
        now: Instant,
    ) -> anyhow::Result<Result<(), Fault>> {
        let data = epoll::EventData::new_u64(i as u64);
        epoll::add(ep, sock.as_fd(), data, IN).context("epoll_ctl add")?;
        self.sock = Some(sock);
        self.tx.clear();
        self.tx_off = 0;
        self.want_out = false;
        self.last_progress = now;
        self.session.start(now, &mut self.tx);
        Ok(self.flush(ep, i))
    }

    fn close(&mut self, ep: &OwnedFd) {
        if let Some(sock) = self.sock.take() {
            let _ = epoll::delete(ep, sock.as_fd());
        }
    }

    fn is_open(&self) -> bool {
        self.sock.is_some()
    }

    fn waiting(&self) -> (bool, Instant) {
        (self.session.waiting(), self.last_progress)
    }
}

impl<S> Conn<S> {
    /// Writes what `tx` holds; arms EPOLLOUT while the socket is full, disarms it once drained.
    fn flush(&mut self, ep: &impl AsFd, i: usize) -> Result<(), Fault> {
        let Some(sock) = &self.sock else { return Ok(()) };
        while self.tx_off < self.tx.len() {
            match (&*sock).write(&self.tx[self.tx_off..]) {
                Ok(0) => return Err(Fault::Closed),
                Ok(n) => self.tx_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.want_out {
                        self.want_out = true;
                        let data = epoll::EventData::new_u64(i as u64);
                        epoll::modify(ep, sock.as_fd(), data, IN | epoll::EventFlags::OUT)
                            .map_err(|_| Fault::Io)?;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::from_io(&e)),
            }
        }
        self.tx.clear();
        self.tx_off = 0;
        if self.want_out {
            self.want_out = false;
            let data = epoll::EventData::new_u64(i as u64);
            epoll::modify(ep, sock.as_fd(), data, IN).map_err(|_| Fault::Io)?;
        }
        Ok(())
    }
}

/// One generator thread on the epoll loop.
pub(super) fn worker<S: Session>(mut w: Worker<'_>, sessions: Vec<S>) -> anyhow::Result<ThreadOut> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?;
    let mut socks = Vec::with_capacity(sessions.len());
    let mut conns = w.connect_all(sessions, |_, session, sock| {
        socks.push(sock);
        Ok(Conn {
            sock: None,
            session,
            tx: Vec::new(),
            tx_off: 0,
            want_out: false,
            last_progress: Instant::now(),
        })
    })?;
    let mut rec = w.start()?;
    w.open_all(&ep, &mut conns, socks, Instant::now())?;

    let mut events = Vec::with_capacity(256);
    let mut rbuf = vec![0u8; 256 * 1024];
    while let Some(tick) = w.tick() {
        if tick.scan {
            w.expire(&ep, &mut conns);
        }
        let ts = rustix::time::Timespec { tv_sec: 0, tv_nsec: i64::from(tick.wait.subsec_nanos()) };
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        let now = Instant::now();
        for ev in &events {
            let (flags, data) = (ev.flags, ev.data);
            let i = usize::try_from(data.u64()).unwrap_or(usize::MAX);
            let Some(c) = conns.get_mut(i) else { continue };
            if c.sock.is_none() {
                continue; // dropped earlier in this batch
            }
            let mut outcome = Ok(Next::Continue);
            if flags.contains(epoll::EventFlags::OUT) {
                outcome = c.flush(&ep, i).map(|()| Next::Continue);
            }
            if outcome.is_ok()
                && flags.intersects(IN | epoll::EventFlags::ERR | epoll::EventFlags::HUP)
            {
                let Some(sock) = &c.sock else { continue };
                outcome = match (&*sock).read(&mut rbuf) {
                    Ok(0) => c.session.on_close(),
                    Ok(n) => {
                        c.last_progress = now;
                        match c.session.on_data(&rbuf[..n], now, &mut rec, &mut c.tx) {
                            Ok(next) => c.flush(&ep, i).map(|()| next),
                            Err(f) => Err(f),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Next::Continue),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Next::Continue),
                    Err(e) => Err(Fault::from_io(&e)),
                };
            }
            w.settle(&ep, c, i, outcome, now)?;
        }
        w.publish(&mut rec);
    }
    Ok(w.finish(rec))
}
