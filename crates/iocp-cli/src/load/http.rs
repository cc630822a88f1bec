//! `iocp bench http`: a keep-alive GET loop per connection, with a small strict response parser.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Instant;

use anyhow::{Context as _, bail};

use super::args::CommonArgs;
use super::plan::{Next, Plan, Session};
use super::report::{Fault, Recorder, Report};
use super::run::run;
use crate::json::Json;

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// An HTTP load: C connections each GETting one URL in a loop over keep-alive.
#[derive(Clone, Debug)]
pub(crate) struct HttpLoad {
    /// Connections, timing and threads.
    pub(crate) plan: Plan,
    /// The URL as given.
    pub(crate) url: String,
    /// The request sent every time.
    pub(crate) request: Vec<u8>,
}

impl HttpLoad {
    /// Parses `http://host[:port]/path` and builds the request.
    pub(crate) fn new(url: &str, common: &CommonArgs) -> anyhow::Result<HttpLoad> {
        let (addr, _, _) = parse_url(url)?;
        HttpLoad::with_plan(url, Plan::new(addr, common)?)
    }

    /// An HTTP load on `url` with a given plan (the demo: [`Plan::basic`]); the plan's address
    /// is replaced by the URL's.
    ///
    /// # Errors
    ///
    /// When the URL is not `http://host[:port]/path` or the host does not resolve.
    pub(crate) fn with_plan(url: &str, mut plan: Plan) -> anyhow::Result<HttpLoad> {
        let (addr, host, path) = parse_url(url)?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: iocp-bench\r\n\r\n");
        plan.addr = addr;
        Ok(HttpLoad { plan, url: url.to_owned(), request: request.into() })
    }
}

/// Splits an `http://` URL into the address to connect to, the Host header and the path.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs are supported: {url:?}");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        bail!("not a usable URL: {url:?}");
    }
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    Ok((addr, authority.to_owned(), path.to_owned()))
}

/// Runs an HTTP load. With `progress`, a bar on stderr while it runs (only on a terminal).
///
/// # Errors
///
/// When the run cannot happen at all (not one connection made, …). Failed connections, malformed responses and
/// chunked bodies are counted in the report: see [`Totals::failed`](super::report::Totals::failed).
pub(crate) fn run_http(load: &HttpLoad, progress: bool) -> anyhow::Result<Report> {
    let request = load.request.clone();
    let totals = run(&load.plan, |_| HttpSession::new(request.clone()), progress, "http")?;
    Ok(Report {
        bench: "http",
        unit: ("req", "requests"),
        load: format!("http GET {}", load.url),
        fields: vec![("url", Json::str(load.url.clone()))],
        status_classes: true,
        totals,
    })
}

/// Where a response stands.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum State {
    /// Collecting the head into `head`.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
}

/// A parsed response head.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Head {
    status: u16,
    length: u64,
    close: bool,
}

/// One keep-alive connection: one GET in flight at a time.
struct HttpSession {
    request: Vec<u8>,
    head: Vec<u8>,
    state: State,
    sent_at: Option<Instant>,
    /// Bytes of the response so far (head and body).
    got: u64,
    status: u16,
    close: bool,
}

impl HttpSession {
    fn new(request: Vec<u8>) -> HttpSession {
        HttpSession {
            request,
            head: Vec::with_capacity(512),
            state: State::Head,
            sent_at: None,
            got: 0,
            status: 0,
            close: false,
        }
    }

    fn send(&mut self, now: Instant, tx: &mut Vec<u8>) {
        tx.extend_from_slice(&self.request);
        self.sent_at = Some(now);
        self.state = State::Head;
        self.head.clear();
        self.got = 0;
    }
}

impl Session for HttpSession {
    fn start(&mut self, now: Instant, tx: &mut Vec<u8>) {
        self.send(now, tx);
    }

    fn on_data(
        &mut self,
        mut data: &[u8],
        now: Instant,
        rec: &mut Recorder,
        tx: &mut Vec<u8>,
    ) -> Result<Next, Fault> {
        while !data.is_empty() {
            let Some(sent_at) = self.sent_at else {
                return Err(Fault::BadReply); // bytes nobody asked for
            };
            match self.state {
                State::Head => {
                    // Search only where the end of the head can newly appear.
                    let from = self.head.len().saturating_sub(3);
                    let take = data.len().min(MAX_HEAD + 4 - self.head.len());
                    self.head.extend_from_slice(&data[..take]);
                    let Some(end) = find_head_end(&self.head[from..]).map(|e| e + from) else {
                        if self.head.len() > MAX_HEAD {
                            return Err(Fault::BadReply);
                        }
                        self.got += take as u64;
                        data = &data[take..];
                        continue;
                    };
                    let head = parse_head(&self.head[..end])?;
                    // Bytes of this chunk past the head belong to the body.
                    let used = end - (self.head.len() - take);
                    self.got += used as u64;
                    data = &data[used..];
                    self.status = head.status;
                    self.close = head.close;
                    self.state = State::Body(head.length);
                }
                State::Body(_) => {}
            }
            if let State::Body(left) = self.state {
                let k = (data.len() as u64).min(left);
                data = &data[usize::try_from(k).unwrap_or(data.len())..];
                self.got += k;
                if left > k {
                    self.state = State::Body(left - k);
                    continue;
                }
                // The response is complete.
                rec.done(sent_at, now, self.got);
                rec.status(now, self.status);
                self.sent_at = None;
                if self.close {
                    return if data.is_empty() {
                        Ok(Next::Reconnect)
                    } else {
                        Err(Fault::BadReply)
                    };
                }
                self.send(now, tx);
            }
        }
        Ok(Next::Continue)
    }

    fn waiting(&self) -> bool {
        self.sent_at.is_some()
    }

    fn recv_capacity(&self) -> usize {
        64 * 1024
    }
}

/// The index just past `\r\n\r\n`, if present.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a response head (status line and headers, ending in an empty line).
fn parse_head(head: &[u8]) -> Result<Head, Fault> {
    let text = std::str::from_utf8(head).map_err(|_| Fault::BadReply)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or(Fault::BadReply)?;
    let (version, rest) = status_line.split_once(' ').ok_or(Fault::BadReply)?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Fault::BadReply);
    }
    let code = rest.get(..3).ok_or(Fault::BadReply)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || rest.get(3..4).is_some_and(|s| s != " ") {
        return Err(Fault::BadReply);
    }
    let status: u16 = code.parse().map_err(|_| Fault::BadReply)?;
    if !(100..=599).contains(&status) {
        return Err(Fault::BadReply);
    }
    let mut length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(Fault::BadReply)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| Fault::BadReply)?;
            if length.is_some_and(|l| l != n) {
                return Err(Fault::BadReply);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Fault::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    // 1xx, 204 and 304 have no body; anything else needs a length (no read-to-close here).
    let length = match (status, length) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(Fault::BadReply),
    };
    Ok(Head { status, length, close })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Fault, Head, HttpSession, Next, Recorder, Session, parse_head, parse_url};

    #[test]
    fn parses_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nServer: x\r\n\r\n");
        assert_eq!(h, Ok(Head { status: 200, length: 12, close: false }));
        let h =
            parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length:0\r\nConnection: close\r\n\r\n");
        assert_eq!(h, Ok(Head { status: 404, length: 0, close: true }));
        let h = parse_head(b"HTTP/1.0 304 Not Modified\r\n\r\n");
        assert_eq!(h, Ok(Head { status: 304, length: 0, close: true }));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked), Err(Fault::Chunked));
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..], // no length
            b"HTTP/2 200 OK\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 20 OK\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(Fault::BadReply), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parses_urls() {
        let (addr, host, path) = parse_url("http://127.0.0.1:8080/a/b.txt").expect("valid");
        assert_eq!(
            (addr.to_string(), host.as_str(), path.as_str()),
            ("127.0.0.1:8080".to_owned(), "127.0.0.1:8080", "/a/b.txt")
        );
        let (addr, _, path) = parse_url("http://127.0.0.1").expect("valid");
        assert_eq!((addr.port(), path.as_str()), (80, "/"));
        assert!(parse_url("https://127.0.0.1/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn responses_split_anywhere_complete_once_each() {
        let now = Instant::now();
        let mut rec = Recorder::new((now, now + Duration::from_secs(60)));
        let mut s = HttpSession::new(b"GET / HTTP/1.1\r\n\r\n".to_vec());
        let mut tx = Vec::new();
        s.start(now, &mut tx);
        let one = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let two: Vec<u8> = one.iter().chain(one.iter()).copied().collect();
        // Two responses back to back, cut at every byte: each completes exactly once.
        for cut in 0..two.len() {
            let mut s = HttpSession::new(b"GET / HTTP/1.1\r\n\r\n".to_vec());
            let mut rec2 = Recorder::new((now, now + Duration::from_secs(60)));
            let mut tx = Vec::new();
            s.start(now, &mut tx);
            let (a, b) = two.split_at(cut);
            for part in [a, b] {
                assert_eq!(
                    s.on_data(part, now, &mut rec2, &mut tx),
                    Ok(Next::Continue),
                    "cut {cut}"
                );
            }
            assert_eq!(rec2.msgs, 2, "cut {cut}");
            assert_eq!(rec2.bytes, two.len() as u64, "cut {cut}");
        }
        let closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
        assert_eq!(s.on_data(closing, now, &mut rec, &mut tx), Ok(Next::Reconnect));
        assert_eq!(rec.statuses[200], 1);
        assert!(!s.waiting());
    }
}
