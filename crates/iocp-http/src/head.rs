//! Writing response heads, and the small bodied error responses.

use std::sync::Arc;

use crate::{Body, Response, Site, date};

/// The reason phrase for the statuses this crate sends (`""` for others).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "",
    }
}

/// A response head under construction: status line, `Server`, `Date`, then what the caller
/// adds, then `Connection` and the blank line from [`Head::finish`].
pub(crate) struct Head {
    buf: Vec<u8>,
}

impl Head {
    pub(crate) fn new(site: &Site, status: u16) -> Head {
        let mut buf = Vec::with_capacity(320);
        buf.extend_from_slice(b"HTTP/1.1 ");
        push_num(&mut buf, u64::from(status));
        buf.push(b' ');
        buf.extend_from_slice(reason(status).as_bytes());
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(&site.server_line);
        buf.extend_from_slice(b"Date: ");
        date::append_now(&mut buf);
        buf.extend_from_slice(b"\r\n");
        Head { buf }
    }

    /// Adds `name: value`. Values come from this crate or from validated request bytes, never
    /// holding CR or LF.
    pub(crate) fn header(&mut self, name: &str, value: &str) -> &mut Head {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Adds `name: n`.
    pub(crate) fn header_num(&mut self, name: &str, n: u64) -> &mut Head {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        push_num(&mut self.buf, n);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Ends the head. HTTP/1.1 keeps connections open by default, so only `close` is said,
    /// except that an HTTP/1.0 client which asked for keep-alive is told `keep-alive`.
    pub(crate) fn finish(mut self, keep_alive: bool, http10: bool) -> Vec<u8> {
        if !keep_alive {
            self.buf.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            self.buf.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        self.buf.extend_from_slice(b"\r\n");
        self.buf
    }
}

fn push_num(buf: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// A plain-text error response (`404 Not Found\n`), with `extra` headers; no body for `HEAD`.
pub(crate) fn error_response(
    site: &Site,
    status: u16,
    keep_alive: bool,
    head_only: bool,
    extra: &[(&str, &str)],
) -> Response {
    let text: Arc<[u8]> = format!("{status} {}\n", reason(status)).into_bytes().into();
    let mut head = Head::new(site, status);
    head.header("Content-Type", "text/plain; charset=utf-8");
    head.header_num("Content-Length", text.len() as u64);
    for (name, value) in extra {
        head.header(name, value);
    }
    let len = text.len();
    let body = if head_only { Body::Empty } else { Body::Bytes { data: text, offset: 0, len } };
    Response { status, head: head.finish(keep_alive, false), body, keep_alive }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_like_display() {
        for n in [0u64, 7, 10, 99, 1000, 123_456_789, u64::MAX] {
            let mut out = Vec::new();
            push_num(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn every_sent_status_has_a_reason() {
        for s in
            [100, 200, 206, 301, 304, 400, 403, 404, 405, 408, 413, 414, 416, 417, 431, 500, 501]
        {
            assert!(!reason(s).is_empty(), "{s}");
        }
    }
}
