//! Shared argument parsing for the peer echo servers: `--addr A --threads N`.

use std::net::SocketAddr;

/// What every peer server takes on its command line.
#[derive(Debug)]
pub struct Args {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Worker threads (tokio) or threads with a runtime each (monoio).
    pub threads: usize,
}

/// Parses `--addr A` (default 127.0.0.1:7000) and `--threads N` (default: CPUs), exiting with
/// status 2 and a message on anything else.
pub fn args() -> Args {
    let mut addr: SocketAddr = "127.0.0.1:7000".parse().expect("a valid default address");
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next();
        let ok = match (flag.as_str(), value) {
            ("--addr", Some(v)) => v.parse().map(|a| addr = a).is_ok(),
            ("--threads", Some(v)) => v.parse().map(|n: usize| threads = n.max(1)).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!("usage: {} [--addr IP:PORT] [--threads N]", env!("CARGO_PKG_NAME"));
            std::process::exit(2);
        }
    }
    Args { addr, threads }
}
