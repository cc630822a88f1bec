//! `iocp bench echo`: ping-pong over many connections, every byte of every echo checked.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::bail;

use super::args::CommonArgs;
use super::plan::{Next, Plan, Session};
use super::report::{Fault, Recorder, Report};
use super::run::run;
use crate::json::Json;

/// An echo load: C connections each sending `size`-byte messages, `pipeline` in flight.
#[derive(Clone, Debug)]
pub(crate) struct EchoLoad {
    /// Connections, timing and threads.
    pub(crate) plan: Plan,
    /// Bytes per message.
    pub(crate) size: usize,
    /// Messages in flight per connection.
    pub(crate) pipeline: usize,
}

impl EchoLoad {
    /// Validates the command line.
    pub(crate) fn new(
        addr: SocketAddr,
        size: usize,
        pipeline: usize,
        common: &CommonArgs,
    ) -> anyhow::Result<EchoLoad> {
        if size == 0 || size > 16 << 20 {
            bail!("--size must be 1 B to 16 MiB");
        }
        if pipeline == 0 || pipeline > 1024 {
            bail!("--pipeline must be 1 to 1024");
        }
        Ok(EchoLoad { plan: Plan::new(addr, common)?, size, pipeline })
    }
}

/// Runs an echo load. With `progress`, a bar on stderr while it runs (only on a terminal).
///
/// # Errors
///
/// When the run cannot happen at all (no threads, no epoll, not one connection made). Failed
/// connections and bad echoes are counted in the report: see [`Totals::failed`](super::report::Totals::failed).
pub(crate) fn run_echo(load: &EchoLoad, progress: bool) -> anyhow::Result<Report> {
    let (size, pipeline, active) = (load.size, load.pipeline, load.plan.active);
    // An idle connection (scale mode) is a session with nothing in flight: it never sends.
    let make = |i| EchoSession::new(i, size, if i < active { pipeline } else { 0 });
    let totals = run(&load.plan, make, progress, "echo")?;
    let mut what = format!("echo, {size} B messages, {pipeline} in flight per connection");
    if active < load.plan.connections {
        what += &format!("; {active} of {} connections active", load.plan.connections);
    }
    Ok(Report {
        bench: "echo",
        unit: ("msg", "msgs"),
        load: what,
        fields: vec![
            ("size", Json::Int(size as u64)),
            ("pipeline", Json::Int(pipeline as u64)),
            ("active", Json::Int(active as u64)),
        ],
        status_classes: false,
        totals,
    })
}

/// Distinct message contents per connection: message `m` is `pattern[m % SHIFTS..][..size]`.
const SHIFTS: usize = 256;

/// One echo connection: what was sent and when, and how far the echo has come back.
struct EchoSession {
    size: usize,
    pipeline: usize,
    /// Pseudo-random bytes, different per connection, `size + SHIFTS` long.
    pattern: Vec<u8>,
    /// Send times of the messages in flight, oldest first.
    in_flight: VecDeque<Instant>,
    /// Messages sent so far.
    sent: usize,
    /// Messages fully echoed so far.
    received: usize,
    /// Bytes of the oldest in-flight message already echoed.
    pos: usize,
}

impl EchoSession {
    fn new(conn: usize, size: usize, pipeline: usize) -> EchoSession {
        // xorshift64*, seeded by the connection: a mixed-up connection shows as a bad echo.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (conn as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let pattern = (0..size + SHIFTS)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect();
        EchoSession {
            size,
            pipeline,
            pattern,
            in_flight: VecDeque::with_capacity(pipeline),
            sent: 0,
            received: 0,
            pos: 0,
        }
    }

    fn message(&self, m: usize) -> &[u8] {
        let shift = m % SHIFTS;
        &self.pattern[shift..shift + self.size]
    }

    fn send(&mut self, now: Instant, tx: &mut Vec<u8>) {
        let shift = self.sent % SHIFTS;
        tx.extend_from_slice(&self.pattern[shift..shift + self.size]);
        self.in_flight.push_back(now);
        self.sent += 1;
    }
}

impl Session for EchoSession {
    fn start(&mut self, now: Instant, tx: &mut Vec<u8>) {
        self.in_flight.clear();
        self.pos = 0;
        self.received = self.sent;
        for _ in 0..self.pipeline {
            self.send(now, tx);
        }
    }

    fn on_data(
        &mut self,
        mut data: &[u8],
        now: Instant,
        rec: &mut Recorder,
        tx: &mut Vec<u8>,
    ) -> Result<Next, Fault> {
        while !data.is_empty() {
            let Some(&sent_at) = self.in_flight.front() else {
                return Err(Fault::BadReply); // more bytes than were sent
            };
            let expect = &self.message(self.received)[self.pos..];
            let k = expect.len().min(data.len());
            if data[..k] != expect[..k] {
                return Err(Fault::BadReply);
            }
            data = &data[k..];
            self.pos += k;
            if self.pos == self.size {
                self.pos = 0;
                self.received += 1;
                self.in_flight.pop_front();
                rec.done(sent_at, now, self.size as u64);
                self.send(now, tx);
            }
        }
        Ok(Next::Continue)
    }

    fn waiting(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// An echo server never closes on its own: a close is an error even on an idle (scale
    /// mode) connection, never a reconnect.
    fn on_close(&self) -> Result<Next, Fault> {
        Err(Fault::Closed)
    }

    fn recv_capacity(&self) -> usize {
        (self.size * self.pipeline).clamp(4096, 64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{EchoSession, Recorder, Session};
    use crate::load::report::Fault;

    fn recorder(now: Instant) -> Recorder {
        Recorder::new((now, now + Duration::from_secs(60)))
    }

    #[test]
    fn an_echo_split_anywhere_completes_each_message_once() {
        let now = Instant::now();
        let mut s = EchoSession::new(3, 10, 2);
        let mut tx = Vec::new();
        s.start(now, &mut tx);
        assert_eq!(tx.len(), 20);
        let mut rec = recorder(now);
        let echo = tx.clone();
        let mut next = Vec::new();
        for chunk in echo.chunks(3) {
            s.on_data(chunk, now, &mut rec, &mut next).expect("a faithful echo");
        }
        assert_eq!(rec.msgs, 2);
        assert_eq!(next.len(), 20, "each completed message sends the next one");
        assert_ne!(next[..10], echo[..10], "messages differ");
        assert!(s.waiting());
    }

    #[test]
    fn a_garbled_or_extra_byte_is_a_bad_reply() {
        let now = Instant::now();
        let mut s = EchoSession::new(0, 4, 1);
        let mut tx = Vec::new();
        s.start(now, &mut tx);
        let mut bad = tx.clone();
        bad[2] ^= 1;
        let mut rec = recorder(now);
        assert_eq!(s.on_data(&bad, now, &mut rec, &mut Vec::new()), Err(Fault::BadReply));
        assert_eq!(rec.msgs, 0);
    }

    #[test]
    fn another_connections_bytes_are_a_bad_reply() {
        let now = Instant::now();
        let (mut a, mut b) = (EchoSession::new(1, 64, 1), EchoSession::new(2, 64, 1));
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        a.start(now, &mut ta);
        b.start(now, &mut tb);
        let mut rec = recorder(now);
        assert_eq!(a.on_data(&tb, now, &mut rec, &mut Vec::new()), Err(Fault::BadReply));
    }
}
