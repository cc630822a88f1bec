//! The load generator behind `iocp bench echo`, `iocp bench http` and `iocp bench chat`.
//!
//! # Implementation
//!
//! Each generator thread owns a share of the connections and drives them from one hand-rolled,
//! non-blocking, level-triggered epoll loop (rustix): per readable event one `read` into a
//! thread-wide buffer, the protocol [`Session`] checks the bytes and queues the next request, and
//! one `write` sends it (EPOLLOUT is armed only while a write is short). That is two syscalls per
//! message plus a share of an `epoll_wait`, with no allocation, lock or wake-up on the path, so the
//! generator stays cheap beside the server it measures (the machine has 2 cores for both), and it
//! does not use the `iocp` library: a bug in the code under test cannot skew the peers' numbers.
//! Each report carries the generator's own CPU time per message (its threads' CPU clocks over the
//! measured window), so a reader can see how much of the machine it took.
//!
//! A run: connect (bounded by [`run::CONNECT_BUDGET`]), warm up (messages not counted), measure, stop.
//! Every wait has a deadline: connects time out, a connection that gets no reply for `timeout`
//! is counted as an error and dropped, and the loop ends at the end of the window, so a dead
//! server gives errors and a non-zero exit, never a hang.
//!
//! # Where things are
//!
//! | file | what |
//! |---|---|
//! | `args.rs` | the command line (`BenchCommand`, `CommonArgs`, `Engine`) and the exit status |
//! | `plan.rs` | [`Plan`] (the shape of a run) and the [`Session`] trait a protocol implements |
//! | `run.rs` | threads, connect phase, window, progress bar, CPU clocks, merge; `Worker`, the bookkeeping every engine shares |
//! | `engine_epoll.rs`, `engine_iocp.rs` | one file per I/O loop: only how bytes move |
//! | `report.rs` | `Recorder` (per thread), `Totals` (merged), `Report` (table and JSON) |
//! | `echo.rs`, `http.rs` | one file per protocol: its load, its session, its report fields |
//! | `chat.rs` | `bench chat`: its own threads and epoll loop (rate-driven WebSocket clients, not request/reply), its report |
//! | `syslog.rs` | `bench syslog`: its own std-thread senders (blocking sockets) and the file check |
//!
//! A new protocol is one file with a `Session` and a `run_*` that fills a `Report`, plus its
//! arguments in `args.rs`; a new engine is one file with a `worker(Worker, sessions)` and a
//! line in `run::run`.

mod args;
mod chat;
mod echo;
mod engine_epoll;
mod engine_iocp;
mod http;
mod plan;
mod report;
mod run;
mod server_metrics;
mod syslog;

pub(crate) use args::{BenchCommand, cli, parse_duration};
pub(crate) use chat::{ChatArgs, run_chat};
pub(crate) use run::process_cpu;
// The in-process entry points for `iocp demo`: run_echo(&EchoLoad, progress) and
// run_http(&HttpLoad, progress), each giving a Report.
pub(crate) use echo::{EchoLoad, run_echo};
pub(crate) use http::{HttpLoad, run_http};
pub(crate) use plan::Plan;
pub(crate) use syslog::{SyslogArgs as SyslogLoad, run as run_syslog, thread_cpu};

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::thread;
    use std::time::Duration;

    use super::{EchoLoad, Plan, run_echo};

    /// The demo's way in: a plan built in code, no progress bar, a report back.
    #[test]
    fn run_echo_in_process() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for s in listener.incoming().take(3) {
                let mut s = s.expect("accept");
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let plan = Plan::basic(addr, 3, Duration::from_millis(300), Duration::ZERO);
        let load = EchoLoad { plan, size: 32, pipeline: 2 };
        let report = run_echo(&load, false).expect("a run");
        assert_eq!(report.totals.errors(), 0, "{}", report.table());
        assert_eq!(report.totals.connected, 3);
        assert!(report.rate() > 0.0 && report.p99_us() > 0.0, "{}", report.table());
        assert!(report.json().starts_with(r#"{"bench":"echo","#));
    }

    /// When one source address's ports would run short, connection `i` binds to
    /// 127.0.0.(2 + i / per_source) before connecting: the server sees those addresses.
    #[test]
    fn connections_spread_over_source_addresses() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for s in listener.incoming().take(4) {
                let mut s = s.expect("accept");
                let _ = tx.send(s.peer_addr().expect("peer").ip().to_string());
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut plan = Plan::basic(addr, 4, Duration::from_millis(100), Duration::ZERO);
        plan.per_source = Some(2);
        let report = run_echo(&EchoLoad { plan, size: 16, pipeline: 1 }, false).expect("a run");
        assert_eq!((report.totals.connected, report.totals.errors()), (4, 0), "{}", report.table());
        let mut peers: Vec<String> =
            (0..4).map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("a peer")).collect();
        peers.sort();
        assert_eq!(peers, ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]);
    }
}
