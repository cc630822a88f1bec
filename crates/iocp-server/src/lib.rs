//! Servers on the [`iocp`] completion port.
//!
//! - [`Pool`]: N worker threads draining a port, each completion handed to a handler that
//!   starts the next operation; panics caught and counted; a stop that drains and joins.
//! - [`Server`]: a TCP listener with pre-posted accepts (the AcceptEx pattern), per-connection
//!   state carried by each operation (the extended OVERLAPPED), idle / request / write
//!   timeouts, a connection limit, bounded buffering and a graceful stop, driven by a
//!   [`Service`] that speaks the protocol.
//! - [`Echo`]: the echo service.
//! - [`chat`]: a chat server (WebSocket, a browser page and a TCP line protocol) on the push
//!   path ([`Service::push`]).
//! - [`Http`]: the HTTP/1.1 static-file service ([`iocp_http::Site`] on the framework).
//! - [`syslog`]: a log collector (TCP and UDP syslog into files) on the framework.
//! - [`metrics`]: a server's, its pool's and its port's counters over HTTP (Prometheus
//!   `/metrics`, `/health`, a live dashboard on `/`), served by a [`Server`] of its own.
//!
//! ```no_run
//! use iocp_server::{Echo, Server, ServerConfig};
//! let server = Server::start(Echo, ServerConfig::default())?;
//! println!("echo on {}", server.local_addr());
//! let report = server.stop();
//! println!("{} connections", report.stats.accepted);
//! # Ok::<(), std::io::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod chat;
mod echo;
mod heap;
mod http;
pub mod metrics;
mod pool;
mod server;
mod signal;
pub mod syslog;

pub use chat::{Chat, ChatConfig, ChatHub, ChatStats};
pub use echo::Echo;
pub use http::{Http, HttpConn};
pub use metrics::{LiveStats, MetricsSnapshot};
pub use pool::{Pool, PoolConfig, PoolReport, cpus};
pub use server::{
    CloseReason, Io, Next, Outbox, PushConfig, PushError, Resumer, Server, ServerConfig,
    ServerReport, ServerStats, Service, SlowPolicy, TimeoutKind,
};
pub use signal::{StopSignal, on_hangup, wait_for_stop_signal};
