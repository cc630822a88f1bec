//! Starts the real HTTP server (`iocp_server::Http` on `iocp_server::Server`) for the HTTP
//! end-to-end suite, on the backend the current test selected with [`set_backend`]. The suite
//! uses only [`spawn`], [`spawn_with`], [`Options`] and [`TestServer::addr`]/[`TestServer::url`].

#![allow(dead_code, unreachable_pub)]

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use iocp::BackendChoice;
use iocp_http::{Config, Site};
use iocp_server::{Http, Server, ServerConfig};

thread_local! {
    static BACKEND: Cell<BackendChoice> = const { Cell::new(BackendChoice::Auto) };
}

/// The backend the servers this thread starts will use.
pub fn set_backend(b: BackendChoice) {
    BACKEND.with(|c| c.set(b));
}

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

/// A running server; dropping it stops it and joins every worker.
pub struct TestServer {
    addr: SocketAddr,
    server: Option<Server<Http>>,
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
        if let Some(s) = self.server.take() {
            let report = s.stop();
            // No test may make the server panic.
            if !std::thread::panicking() {
                assert_eq!(report.stats.panics, 0, "{report:?}");
                assert_eq!(report.pool.panics, 0, "{report:?}");
            }
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
    let site = Site::new(cfg).expect("test site");
    let server = Server::start(
        Http::new(site, true),
        ServerConfig {
            backend: BACKEND.with(Cell::get),
            threads: 2,
            request_timeout: Some(opts.head_timeout),
            idle_timeout: Some(opts.idle_timeout),
            linger: Duration::from_millis(500),
            grace: Duration::from_secs(2),
            ..ServerConfig::default()
        },
    )
    .expect("start the HTTP server");
    TestServer { addr: server.local_addr(), server: Some(server) }
}
