//! The shape of a run ([`Plan`]) and what a protocol does on one connection ([`Session`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::args::{CommonArgs, Engine};
use super::report::{Fault, Recorder};
use super::run::CONNECT_BUDGET;

/// The shape of one run, whatever the protocol.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// Connections in all.
    pub(crate) connections: usize,
    /// How many of them send (echo `--active`): connections `0..active`; the rest connect
    /// and stay idle.
    pub(crate) active: usize,
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
    /// How long the connect phase may take in all, per generator thread.
    pub(crate) connect_budget: Duration,
    /// Connects per second in all (`--rate`); `None`: as fast as they go.
    pub(crate) connect_rate: Option<f64>,
    /// Connections per source address when there are more than the ephemeral ports of one:
    /// connection `i` then binds to 127.0.0.(2 + i / n) before connecting. `None`: no bind.
    pub(crate) per_source: Option<usize>,
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
            active: connections.max(1),
            duration: duration.max(Duration::from_millis(1)),
            warmup,
            threads: 1,
            timeout: Duration::from_secs(5),
            server_pid: None,
            engine: Engine::Epoll,
            connect_budget: CONNECT_BUDGET,
            connect_rate: None,
            per_source: None,
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
            active: a.connections,
            duration: a.duration,
            warmup: a.warmup,
            threads: a.threads.min(a.connections),
            timeout: a.timeout.max(Duration::from_millis(10)),
            server_pid: a.server_pid,
            engine: a.engine,
            connect_budget: CONNECT_BUDGET,
            connect_rate: None,
            per_source: per_source(addr, a.connections, ephemeral_ports()),
        })
    }

    /// Scale mode (`--ramp`, `--rate R`): the connect phase may take up to a minute (or, at
    /// `R` connects/s, the time they need and 10 s more), paced at `rate` when given.
    pub(super) fn ramp(&mut self, rate: Option<f64>) -> anyhow::Result<()> {
        let budget = match rate {
            Some(r) if !(r.is_finite() && r >= 1.0) => bail!("--rate must be at least 1"),
            Some(r) => {
                let need = self.connections as f64 / r;
                if need > 3600.0 {
                    bail!("--rate {r} would take {need:.0} s to open {}", self.connections);
                }
                Duration::from_secs_f64(need) + Duration::from_secs(10)
            }
            None => SCALE_CONNECT_BUDGET,
        };
        self.connect_budget = budget;
        self.connect_rate = rate;
        Ok(())
    }

    /// The address connection `i` binds to before connecting, if any.
    pub(crate) fn source(&self, i: usize) -> Option<SocketAddr> {
        let n = self.per_source?;
        let k = u8::try_from(2 + i / n).ok()?;
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)), 0))
    }
}

/// The connect phase's budget in scale mode without `--rate`.
const SCALE_CONNECT_BUDGET: Duration = Duration::from_secs(60);

/// How many local ports `connect` may pick from (`ip_local_port_range`); 28,232 (Linux's
/// default) if unreadable.
fn ephemeral_ports() -> usize {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let parse = |s: &str| -> Option<usize> {
        let mut it = s.split_whitespace().map(|x| x.parse::<usize>().ok());
        let (lo, hi) = (it.next()??, it.next()??);
        hi.checked_sub(lo).map(|d| d + 1)
    };
    range.as_deref().and_then(parse).unwrap_or(28_232)
}

/// Connections per 127.0.0.x source address, when `connections` to a loopback IPv4 `addr`
/// would use more than 80 % of the `ports` one source has (then a bound socket takes its port
/// from half the range: Linux leaves the other half to `connect`).
fn per_source(addr: SocketAddr, connections: usize, ports: usize) -> Option<usize> {
    let loopback = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
    (loopback && connections > ports * 4 / 5).then(|| (ports * 2 / 5).max(1))
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
    /// The server closed the connection: an error while a reply is owed, else (HTTP's
    /// `Connection: close` done) connect again.
    fn on_close(&self) -> Result<Next, Fault> {
        if self.waiting() { Err(Fault::Closed) } else { Ok(Next::Reconnect) }
    }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::{Plan, per_source};

    #[test]
    fn many_loopback_connections_spread_over_source_addresses() {
        let lo: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        assert_eq!(per_source(lo, 1000, 28_232), None);
        assert_eq!(per_source("10.0.0.1:7000".parse().expect("addr"), 40_000, 28_232), None);
        let n = per_source(lo, 40_000, 28_232).expect("spread");
        let mut plan = Plan::basic(lo, 40_000, Duration::from_secs(1), Duration::ZERO);
        plan.per_source = Some(n);
        assert_eq!(plan.source(0).map(|a| a.to_string()), Some("127.0.0.2:0".to_owned()));
        assert_eq!(plan.source(n).map(|a| a.to_string()), Some("127.0.0.3:0".to_owned()));
        assert_eq!(plan.source(39_999).map(|a| a.ip()), plan.source(3 * n).map(|a| a.ip()));
    }
}
