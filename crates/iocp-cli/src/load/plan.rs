//! The shape of a run ([`Plan`]) and what a protocol does on one connection ([`Session`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::args::{CommonArgs, Engine};
use super::report::{Fault, Recorder};

/// The shape of one run, whatever the protocol.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// Connections in all.
    pub(crate) connections: usize,
    /// Measured window.
    pub(crate) duration: Duration,
    /// Warm-up before the window.
    pub(crate) warmup: Duration,
    /// Generator threads.
    pub(crate) threads: usize,
    /// Per-reply deadline.
    pub(crate) timeout: Duration,
    /// A process whose CPU time over the window is reported per message.
    pub(crate) server_pid: Option<u32>,
    /// The generator's I/O loop.
    pub(crate) engine: Engine,
}

impl Plan {
    /// A plan for in-process use (the demo): `connections` to `addr`, measured for `duration`
    /// after `warmup`, one generator thread on the epoll engine, a 5 s reply timeout.
    pub(crate) fn basic(
        addr: SocketAddr,
        connections: usize,
        duration: Duration,
        warmup: Duration,
    ) -> Plan {
        Plan {
            addr,
            connections: connections.max(1),
            duration: duration.max(Duration::from_millis(1)),
            warmup,
            threads: 1,
            timeout: Duration::from_secs(5),
            server_pid: None,
            engine: Engine::Epoll,
        }
    }

    /// A plan from the command line, validated.
    pub(super) fn new(addr: SocketAddr, a: &CommonArgs) -> anyhow::Result<Plan> {
        if a.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if a.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if a.duration.is_zero() {
            bail!("--duration must be positive");
        }
        Ok(Plan {
            addr,
            connections: a.connections,
            duration: a.duration,
            warmup: a.warmup,
            threads: a.threads.min(a.connections),
            timeout: a.timeout.max(Duration::from_millis(10)),
            server_pid: a.server_pid,
            engine: a.engine,
        })
    }
}

/// What a protocol does on one connection. The engine owns the socket; the session owns the
/// protocol state and says what to send.
pub(crate) trait Session: Send + 'static {
    /// The connection is up: append the first request(s) to `tx`, stamped `now`.
    fn start(&mut self, now: Instant, tx: &mut Vec<u8>);
    /// `data` arrived. Record each completed exchange in `rec` and append what to send next
    /// to `tx`. An error is a protocol fault (garbled reply and the like).
    fn on_data(
        &mut self,
        data: &[u8],
        now: Instant,
        rec: &mut Recorder,
        tx: &mut Vec<u8>,
    ) -> Result<Next, Fault>;
    /// Whether a reply is owed (so a close or a silence is an error).
    fn waiting(&self) -> bool;
    /// The receive buffer a completion-based engine keeps per connection.
    fn recv_capacity(&self) -> usize {
        16 * 1024
    }
}

/// What the engine does after [`Session::on_data`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Next {
    /// Keep going on this connection.
    Continue,
    /// The server asked to close (`Connection: close`): connect again and start over.
    Reconnect,
}
