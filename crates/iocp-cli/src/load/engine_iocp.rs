//! The `--engine iocp` generator loop: the same sessions driven through an `iocp`
//! [`CompletionPort`] (dogfood), one port per generator thread, one send and one receive in
//! flight per connection, completions taken with `get_many`.
//!
//! Kept beside the epoll loop so the two can be measured against each other (see the module
//! docs of `load`); the epoll loop is the default because it is independent of the code under
//! test.

use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use iocp::{BackendChoice, CompletionKey, CompletionPort, GetError, Handle, PortBuilder};

use super::report::Fault;
use super::{CONNECT_BUDGET, Next, Plan, Recorder, Session, ThreadOut, connect, thread_cpu};

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

impl<S: Session> PConn<S> {
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

    fn close(&mut self) {
        if let Some(h) = self.handle.take() {
            h.close();
        }
        self.generation = self.generation.wrapping_add(1);
        self.sending = false;
        self.tx.clear();
    }
}

fn conn_id(i: usize) -> u32 {
    u32::try_from(i).expect("invariant: fewer than 2^32 connections")
}

/// The `--engine iocp` twin of `worker`.
pub(super) fn worker_iocp<S: Session>(
    plan: &Plan,
    sessions: Vec<S>,
    ready: &mpsc::Sender<()>,
    start: &mpsc::Receiver<(Instant, Instant)>,
    progress: &AtomicU64,
    backend: BackendChoice,
) -> anyhow::Result<ThreadOut> {
    let port: CompletionPort<Op> =
        PortBuilder::new().concurrency(1).backend(backend).build().context("a port")?;
    let mut faults = [0u64; Fault::COUNT];
    let mut conns: Vec<PConn<S>> = Vec::with_capacity(sessions.len());
    let connect_deadline = Instant::now() + CONNECT_BUDGET;
    let mut connected = 0;
    for (i, session) in sessions.into_iter().enumerate() {
        let limit =
            Duration::from_secs(2).min(connect_deadline.saturating_duration_since(Instant::now()));
        let handle = match connect(plan.addr, limit) {
            Ok(s) => Some(port.associate(s, CompletionKey(i as u64)).context("associate")?),
            Err(f) => {
                faults[f as usize] += 1;
                None
            }
        };
        connected += u64::from(handle.is_some());
        conns.push(PConn {
            handle,
            generation: 0,
            session,
            tx: Vec::new(),
            spare: Vec::new(),
            sending: false,
            last_progress: Instant::now(),
        });
    }
    let _ = ready.send(());
    let Ok(window) = start.recv_timeout(CONNECT_BUDGET * 2) else {
        bail!("the run was abandoned before it started");
    };

    let mut rec = Recorder::new(window);
    let now = Instant::now();
    let mut live = 0usize;
    for (i, c) in conns.iter_mut().enumerate() {
        if c.handle.is_none() {
            continue;
        }
        c.session.start(now, &mut c.tx);
        c.last_progress = now;
        let cap = c.session.recv_capacity();
        match c.arm_recv(i, Vec::with_capacity(cap)).and_then(|()| c.pump(i)) {
            Ok(()) => live += 1,
            Err(f) => {
                faults[f as usize] += 1;
                c.close();
            }
        }
    }

    let mut out = Vec::with_capacity(256);
    let mut cpu0 = None;
    let mut last_scan = now;
    let mut reconnects = 0u64;
    loop {
        let now = Instant::now();
        if cpu0.is_none() && now >= window.0 {
            cpu0 = Some(thread_cpu());
        }
        if now >= window.1 || live == 0 {
            break;
        }
        if now.duration_since(last_scan) >= Duration::from_millis(100) {
            last_scan = now;
            for c in &mut conns {
                if c.handle.is_some()
                    && c.session.waiting()
                    && now.duration_since(c.last_progress) > plan.timeout
                {
                    faults[Fault::Timeout as usize] += 1;
                    c.close();
                    live -= 1;
                }
            }
        }
        let edge = if now < window.0 { window.0 } else { window.1 };
        let wait = (edge - now).clamp(Duration::from_millis(1), Duration::from_millis(100));
        out.clear();
        match port.get_many(&mut out, 256, Some(wait)) {
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
                Ok(0) if c.session.waiting() => Err(Fault::Closed),
                Ok(0) => Ok(Next::Reconnect),
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
            match outcome {
                Ok(Next::Continue) => {}
                Ok(Next::Reconnect) => {
                    c.close();
                    if now >= window.1 {
                        live -= 1; // the run is over: no point connecting again
                        continue;
                    }
                    reconnects += 1;
                    let limit = plan.timeout.min(Duration::from_secs(2));
                    let restarted = connect(plan.addr, limit).and_then(|s| {
                        let h =
                            port.associate(s, CompletionKey(i as u64)).map_err(|_| Fault::Io)?;
                        c.handle = Some(h);
                        c.last_progress = now;
                        c.session.start(now, &mut c.tx);
                        let cap = c.session.recv_capacity();
                        c.arm_recv(i, Vec::with_capacity(cap)).and_then(|()| c.pump(i))
                    });
                    if let Err(f) = restarted {
                        faults[f as usize] += 1;
                        c.close();
                        live -= 1;
                    }
                }
                Err(f) => {
                    faults[f as usize] += 1;
                    c.close();
                    live -= 1;
                }
            }
        }
        if rec.progress > 0 {
            progress.fetch_add(rec.progress, Ordering::Relaxed);
            rec.progress = 0;
        }
    }
    let cpu = cpu0.map_or(Duration::ZERO, |c0| thread_cpu().saturating_sub(c0));
    for c in &mut conns {
        c.close();
    }
    port.close();
    Ok(ThreadOut { rec, faults, connected, reconnects, cpu })
}
