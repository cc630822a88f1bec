//! The HTTP static-file service: [`iocp_http::Site`] on the connection framework.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use iocp_http::{Body, CONTINUE, Parsed, Request, Response, Site, access_log_line};

use crate::server::{CloseReason, Io, Next, Service, TimeoutKind};

/// Responses to pipelined requests are gathered into one send up to this many bytes.
const GATHER_MAX: usize = 64 * 1024;

/// Serves a directory over HTTP/1.1 (see [`iocp_http`] for the protocol rules): parses the
/// requests in each connection's input, gathers the responses to pipelined requests into one
/// send, and sends file bodies zero-copy with `transmit_file` (the response head rides as the
/// transmit's head, so a file response is one operation). A partial request that does not
/// complete within the server's request timeout gets `408` and the connection closes; an idle
/// keep-alive connection is closed by the idle timeout.
#[derive(Debug)]
pub struct Http {
    site: Site,
    access_log: bool,
}

impl Http {
    /// Serves `site`; with `access_log`, every response is logged as a Combined Log Format
    /// line ([`iocp_http::access_log_line`]) in a `tracing` event with target `access`.
    pub fn new(site: Site, access_log: bool) -> Self {
        Http { site, access_log }
    }

    /// The site served.
    pub fn site(&self) -> &Site {
        &self.site
    }

    fn log(&self, conn: &HttpConn, req: Option<&Request>, resp: &Response) {
        if !self.access_log {
            return;
        }
        let peer = conn.peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
        let line = access_log_line(peer, req, resp, SystemTime::now());
        tracing::info!(target: "access", "{line}");
    }

    /// Parses and answers what the input holds; says what the connection does next.
    fn serve(&self, conn: &mut HttpConn, io: &mut Io) -> Next {
        loop {
            if io.output.len() >= GATHER_MAX {
                return Next::Send;
            }
            match self.site.parse(&io.input) {
                Parsed::Incomplete => break,
                Parsed::Continue => {
                    if !conn.continued {
                        conn.continued = true;
                        io.output.extend_from_slice(CONTINUE);
                    }
                    break;
                }
                Parsed::Request { req, consumed } => {
                    conn.continued = false;
                    io.consume(consumed);
                    let resp = self.site.respond(&req);
                    self.log(conn, Some(&req), &resp);
                    io.output.extend_from_slice(&resp.head);
                    if !resp.keep_alive {
                        // Nothing after this response is answered.
                        io.input.clear();
                        io.close_after_send = true;
                    }
                    match resp.body {
                        Body::Empty => {}
                        Body::Bytes { data, offset, len } => {
                            io.output.extend_from_slice(&data[offset..offset + len]);
                        }
                        Body::File { file, offset, len } => {
                            return Next::Transmit { file, offset, len };
                        }
                    }
                    if io.close_after_send {
                        return Next::Send;
                    }
                }
                Parsed::Error(resp) => {
                    self.log(conn, None, &resp);
                    io.input.clear();
                    io.close_after_send = true;
                    append_bodied(io, &resp);
                    return Next::Send;
                }
            }
        }
        if io.output.is_empty() { Next::Read } else { Next::Send }
    }
}

/// Appends a response without a file body (head, then any in-memory body) to the output.
fn append_bodied(io: &mut Io, resp: &Response) {
    io.output.extend_from_slice(&resp.head);
    if let Body::Bytes { data, offset, len } = &resp.body {
        io.output.extend_from_slice(&data[*offset..*offset + *len]);
    }
}

/// One HTTP connection's state.
#[derive(Debug)]
pub struct HttpConn {
    peer: Option<SocketAddr>,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
}

impl Service for Http {
    type Conn = HttpConn;

    fn open(&self, peer: Option<SocketAddr>) -> HttpConn {
        HttpConn { peer, continued: false }
    }

    fn on_read(&self, conn: &mut HttpConn, io: &mut Io) -> Next {
        self.serve(conn, io)
    }

    fn on_sent(&self, conn: &mut HttpConn, io: &mut Io) -> Next {
        self.serve(conn, io)
    }

    fn on_timeout(&self, conn: &mut HttpConn, io: &mut Io, kind: TimeoutKind) -> Next {
        match kind {
            TimeoutKind::Idle => Next::Close,
            TimeoutKind::Request => {
                let resp = self.site.timeout_response();
                self.log(conn, None, &resp);
                io.input.clear();
                io.output.clear();
                append_bodied(io, &resp);
                Next::Send
            }
        }
    }

    fn on_close(&self, _conn: HttpConn, _reason: CloseReason) {}
}
