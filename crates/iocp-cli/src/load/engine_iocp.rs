//! The `--engine iocp` generator loop: the same sessions driven through an `iocp`
//! [`CompletionPort`] (dogfood), one port per generator thread, one send and one receive in
//! flight per connection, completions taken with `get_many`.
//!
//! Kept beside the epoll loop so the two can be measured against each other (see the module
//! docs of `load`); the epoll loop is the default because it is independent of the code under
//! test.

use std::mem;
use std::net::TcpStream;
use std::time::Instant;

use anyhow::{Context as _, bail};
use iocp::{BackendChoice, CompletionKey, CompletionPort, GetError, Handle, PortBuilder};

use super::plan::{Next, Session};
use super::report::Fault;
use super::run::{Link, ThreadOut, Worker};

/// Which operation a completion finishes, on which connection and which incarnation of it.
#[derive(Clone, Copy, Debug)]
struct Op {
    conn: u32,
    generation: u32,
    send: bool,
}

struct PConn<S> {
    handle: Option<Handle<Op>>,
    generation: u32,
    session: S,
    /// Queued by the session, not yet handed to a send.
    tx: Vec<u8>,
    /// An idle send buffer, reused.
    spare: Vec<u8>,
    sending: bool,
    last_progress: Instant,
}

impl<S: Session> Link for PConn<S> {
    type Io = CompletionPort<Op>;

    /// Associates the socket as `i`, posts a receive and sends the session's first requests.
    fn open(
        &mut self,
        port: &CompletionPort<Op>,
        i: usize,
        sock: TcpStream,
        now: Instant,
    ) -> anyhow::Result<Result<(), Fault>> {
        let h = port.associate(sock, CompletionKey(i as u64)).context("associate")?;
        self.handle = Some(h);
        self.last_progress = now;
        self.session.start(now, &mut self.tx);
        let cap = self.session.recv_capacity();
        Ok(self.arm_recv(i, Vec::with_capacity(cap)).and_then(|()| self.pump(i)))
    }

    fn close(&mut self, _port: &CompletionPort<Op>) {
        if let Some(h) = self.handle.take() {
            h.close();
        }
        self.generation = self.generation.wrapping_add(1);
        self.sending = false;
        self.tx.clear();
    }

    fn is_open(&self) -> bool {
        self.handle.is_some()
    }

    fn waiting(&self) -> (bool, Instant) {
        (self.session.waiting(), self.last_progress)
    }
}

impl<S> PConn<S> {
    /// Starts a send of what is queued, unless one is in flight.
    fn pump(&mut self, i: usize) -> Result<(), Fault> {
        if self.sending || self.tx.is_empty() {
            return Ok(());
        }
        let Some(h) = &self.handle else { return Ok(()) };
        let mut buf = mem::take(&mut self.spare);
        buf.clear();
        mem::swap(&mut buf, &mut self.tx);
        let op = Op { conn: conn_id(i), generation: self.generation, send: true };
        h.send(buf, op).map_err(|_| Fault::Io)?;
        self.sending = true;
        Ok(())
    }

    fn arm_recv(&mut self, i: usize, buf: Vec<u8>) -> Result<(), Fault> {
        let Some(h) = &self.handle else { return Ok(()) };
        let op = Op { conn: conn_id(i), generation: self.generation, send: false };
        h.recv(buf, op).map_err(|_| Fault::Io)?;
        Ok(())
    }
}

fn conn_id(i: usize) -> u32 {
    u32::try_from(i).expect("invariant: fewer than 2^32 connections")
}

/// One generator thread on an iocp port with `backend`.
pub(super) fn worker<S: Session>(
    mut w: Worker<'_>,
    sessions: Vec<S>,
    backend: BackendChoice,
) -> anyhow::Result<ThreadOut> {
    let port: CompletionPort<Op> =
        PortBuilder::new().concurrency(1).backend(backend).build().context("a port")?;
    let mut socks = Vec::with_capacity(sessions.len());
    let mut conns = w.connect_all(sessions, |_, session, sock| {
        socks.push(sock);
        Ok(PConn {
            handle: None,
            generation: 0,
            session,
            tx: Vec::new(),
            spare: Vec::new(),
            sending: false,
            last_progress: Instant::now(),
        })
    })?;
    let mut rec = w.start()?;
    w.open_all(&port, &mut conns, socks, Instant::now())?;

    let mut out = Vec::with_capacity(256);
    while let Some(tick) = w.tick() {
        if tick.scan {
            w.expire(&port, &mut conns);
        }
        out.clear();
        match port.get_many(&mut out, 256, Some(tick.wait)) {
            Ok(_) | Err(GetError::TimedOut) => {}
            Err(e) => bail!("the generator's port failed: {e}"),
        }
        let now = Instant::now();
        for mut done in out.drain(..) {
            let op = *done.context();
            let i = op.conn as usize;
            let Some(c) = conns.get_mut(i) else { continue };
            if c.handle.is_none() || c.generation != op.generation {
                continue; // a completion of a connection already closed
            }
            let buf = done.take_buf().unwrap_or_default();
            let outcome = match done.result() {
                Err(e) => Err(Fault::from_io(&e)),
                Ok(n) if op.send => {
                    c.sending = false;
                    if n < buf.len() {
                        // A short send: queue the rest in front of anything newer.
                        let mut rest = buf[n..].to_vec();
                        rest.extend_from_slice(&c.tx);
                        c.tx = rest;
                    } else {
                        c.spare = buf;
                    }
                    c.pump(i).map(|()| Next::Continue)
                }
                Ok(0) => c.session.on_close(),
                Ok(_) => {
                    c.last_progress = now;
                    let mut buf = buf;
                    match c.session.on_data(&buf, now, &mut rec, &mut c.tx) {
                        Ok(next) => {
                            buf.clear();
                            c.arm_recv(i, buf).and_then(|()| c.pump(i)).map(|()| next)
                        }
                        Err(f) => Err(f),
                    }
                }
            };
            w.settle(&port, c, i, outcome, now)?;
        }
        w.publish(&mut rec);
    }
    for c in &mut conns {
        c.close(&port);
    }
    port.close();
    Ok(w.finish(rec))
}
