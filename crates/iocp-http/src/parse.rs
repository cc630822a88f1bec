//! Request parsing: httparse plus the limits and header rules of the crate docs.

use crate::head::error_response;
use crate::{Parsed, Request, Site, Version};

/// The most header fields a request may carry (more is `431`).
const MAX_HEADERS: usize = 100;
/// Room for the method and version around the target when guessing `414` from a partial line.
const LINE_SLACK: usize = 32;

pub(crate) fn parse(site: &Site, buf: &[u8]) -> Parsed {
    let cfg = &site.cfg;
    let window = &buf[..buf.len().min(cfg.max_head)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut raw = httparse::Request::new(&mut headers);
    let head_len = match raw.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let start = window.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(0);
            let line = window[start..].iter().position(|&b| b == b'\n').unwrap_or(window.len());
            if line > cfg.max_uri + LINE_SLACK {
                return fail(site, 414);
            }
            if window.len() >= cfg.max_head {
                return fail(site, 431);
            }
            return Parsed::Incomplete;
        }
        Err(httparse::Error::TooManyHeaders) => return fail(site, 431),
        Err(_) => return fail(site, 400),
    };
    let (Some(method), Some(target), Some(version)) = (raw.method, raw.path, raw.version) else {
        return fail(site, 400);
    };
    if target.len() > cfg.max_uri {
        return fail(site, 414);
    }
    let version = if version == 0 { Version::Http10 } else { Version::Http11 };

    let mut req = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        user_agent: None,
        referer: None,
        keep_alive: false,
        if_none_match: None,
        if_modified_since: None,
        if_range: None,
        range: None,
        accept_gzip: false,
    };
    let mut hosts = 0;
    let (mut close, mut keep) = (false, false);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for h in raw.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim(token);
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_length(value) else { return fail(site, 400) };
            if content_length.is_some_and(|m| m != n) {
                return fail(site, 400);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if !trim(value).eq_ignore_ascii_case(b"100-continue") {
                return fail(site, 417);
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case("user-agent") {
            req.user_agent = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case("referer") {
            req.referer = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            req.if_none_match = text(value);
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            req.if_modified_since = text(value);
        } else if name.eq_ignore_ascii_case("if-range") {
            req.if_range = text(value);
        } else if name.eq_ignore_ascii_case("range") {
            if req.range.is_some() {
                // Two Range fields: as good as a multi-range request, served whole.
                req.range = Some(",".to_owned());
            } else {
                req.range = text(value);
            }
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            req.accept_gzip = accepts_gzip(value);
        }
    }
    if version == Version::Http11 && hosts != 1 || hosts > 1 {
        return fail(site, 400);
    }
    req.keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep && !close,
    };
    if chunked {
        return fail(site, 501);
    }
    let servable = req.method == "GET" || req.method == "HEAD";
    let body = content_length.unwrap_or(0);
    let total = usize::try_from(body).ok().and_then(|b| b.checked_add(head_len));
    let Some(total) = total.filter(|&t| t <= cfg.max_head) else {
        return if servable { fail(site, 413) } else { not_allowed(site) };
    };
    if buf.len() < total {
        return if !servable {
            not_allowed(site)
        } else if expect_continue {
            Parsed::Continue
        } else {
            Parsed::Incomplete
        };
    }
    Parsed::Request { req, consumed: total }
}

fn fail(site: &Site, status: u16) -> Parsed {
    Parsed::Error(error_response(site, status, false, false, &[]))
}

fn not_allowed(site: &Site) -> Parsed {
    Parsed::Error(error_response(site, 405, false, false, &[("Allow", "GET, HEAD")]))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A header value as text, or `None` when it is not UTF-8 (then the header is ignored).
fn text(value: &[u8]) -> Option<String> {
    std::str::from_utf8(trim(value)).ok().map(str::to_owned)
}

/// `Content-Length`: 1 to 19 ASCII digits.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Whether an `Accept-Encoding` value admits gzip: `gzip` (or `x-gzip`) with a non-zero `q`,
/// or `*` with a non-zero `q` when gzip is not listed.
pub(crate) fn accepts_gzip(value: &[u8]) -> bool {
    let mut gzip: Option<bool> = None;
    let mut star: Option<bool> = None;
    for item in value.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let coding = trim(parts.next().unwrap_or_default());
        let mut allowed = true;
        for param in parts {
            let param = trim(param);
            if let Some(q) = param.strip_prefix(b"q=").or_else(|| param.strip_prefix(b"Q=")) {
                allowed = !is_zero_q(q);
            }
        }
        if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            gzip = Some(gzip.unwrap_or(false) || allowed);
        } else if coding == b"*" {
            star = Some(allowed);
        }
    }
    gzip.or(star).unwrap_or(false)
}

/// `q=0`, `q=0.`, `q=0.000`: a qvalue of zero.
fn is_zero_q(q: &[u8]) -> bool {
    match q {
        [b'0'] => true,
        [b'0', b'.', rest @ ..] => rest.iter().all(|&b| b == b'0'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn site() -> Site {
        Site::new(Config::new(std::env::temp_dir())).unwrap()
    }

    fn status(p: &Parsed) -> Option<u16> {
        match p {
            Parsed::Error(r) => Some(r.status),
            _ => None,
        }
    }

    fn request(p: Parsed) -> (Request, usize) {
        match p {
            Parsed::Request { req, consumed } => (req, consumed),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn a_simple_get_parses_with_its_log_fields() {
        let s = site();
        let raw =
            b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/1\r\nReferer: http://r/\r\n\r\n";
        let (req, n) = request(s.parse(raw));
        assert_eq!(n, raw.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/a%20b?x=1");
        assert_eq!(req.version, Version::Http11);
        assert_eq!(req.user_agent.as_deref(), Some("ua/1"));
        assert_eq!(req.referer.as_deref(), Some("http://r/"));
        assert!(req.keep_alive);
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let s = site();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n";
        for end in 0..raw.len() {
            assert!(matches!(s.parse(&raw[..end]), Parsed::Incomplete), "prefix {end}");
        }
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let s = site();
        let raw = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3";
        let (a, n) = request(s.parse(raw));
        assert_eq!(a.target, "/1");
        let (b, m) = request(s.parse(&raw[n..]));
        assert_eq!((b.method.as_str(), b.target.as_str()), ("HEAD", "/2"));
        assert!(matches!(s.parse(&raw[n + m..]), Parsed::Incomplete));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let s = site();
        let cases: [(&[u8], bool); 6] = [
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, Close\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false),
        ];
        for (raw, keep) in cases {
            let (req, _) = request(s.parse(raw));
            assert_eq!(req.keep_alive, keep, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn malformed_heads_are_400() {
        let s = site();
        let cases: [&[u8]; 9] = [
            b"GET\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n", // no Host
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        ];
        for raw in cases {
            let p = s.parse(raw);
            assert_eq!(status(&p), Some(400), "{}", String::from_utf8_lossy(raw));
            let Parsed::Error(r) = p else { unreachable!() };
            assert!(!r.keep_alive);
            assert!(r.head.windows(19).any(|w| w == b"Connection: close\r\n"));
        }
    }

    #[test]
    fn a_head_over_max_head_is_431_and_too_many_headers_too() {
        let s = site();
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        while raw.len() <= 8192 {
            raw.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert_eq!(status(&s.parse(&raw)), Some(431));
        let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for _ in 0..MAX_HEADERS {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&s.parse(&many)), Some(431));
    }

    #[test]
    fn a_long_target_is_414_whole_or_partial() {
        let s = site();
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(5000));
        assert_eq!(status(&s.parse(long.as_bytes())), Some(414));
        let partial = format!("GET /{}", "a".repeat(4200));
        assert_eq!(status(&s.parse(partial.as_bytes())), Some(414));
        let ok = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(4000));
        assert!(matches!(s.parse(ok.as_bytes()), Parsed::Request { .. }));
    }

    #[test]
    fn bodies_small_are_consumed_large_refused_chunked_not_implemented() {
        let s = site();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET";
        let (_, n) = request(s.parse(raw));
        assert_eq!(n, raw.len() - 3);
        assert!(matches!(s.parse(&raw[..raw.len() - 6]), Parsed::Incomplete));
        let big = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n";
        assert_eq!(status(&s.parse(big)), Some(413));
        let huge = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n";
        assert_eq!(status(&s.parse(huge)), Some(413));
        let te = b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(status(&s.parse(te)), Some(501));
        let smuggle =
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(&s.parse(smuggle)), Some(501));
    }

    #[test]
    fn other_methods_with_pending_bodies_get_405_at_once() {
        let s = site();
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc";
        let p = s.parse(raw);
        assert_eq!(status(&p), Some(405));
        let Parsed::Error(r) = p else { unreachable!() };
        assert!(r.head.windows(18).any(|w| w == b"Allow: GET, HEAD\r\n"));
        // With the whole (small) body here, the request is parsed; respond() says 405.
        let whole = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        let (req, n) = request(s.parse(whole));
        assert_eq!((req.method.as_str(), n), ("POST", whole.len()));
    }

    #[test]
    fn expect_continue_asks_for_a_continue_and_others_are_417() {
        let s = site();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(s.parse(raw), Parsed::Continue));
        let mut whole = raw.to_vec();
        whole.extend_from_slice(b"body");
        let (_, n) = request(s.parse(&whole));
        assert_eq!(n, whole.len());
        let no_body = b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n";
        assert!(matches!(s.parse(no_body), Parsed::Request { .. }));
        let odd = b"GET / HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n";
        assert_eq!(status(&s.parse(odd)), Some(417));
    }

    #[test]
    fn accept_encoding_rules() {
        assert!(accepts_gzip(b"gzip"));
        assert!(accepts_gzip(b"deflate, gzip;q=0.5"));
        assert!(accepts_gzip(b"GZIP"));
        assert!(accepts_gzip(b"x-gzip"));
        assert!(accepts_gzip(b"*"));
        assert!(!accepts_gzip(b"gzip;q=0"));
        assert!(!accepts_gzip(b"gzip; q=0.000"));
        assert!(!accepts_gzip(b"*, gzip;q=0"));
        assert!(!accepts_gzip(b"br, deflate"));
        assert!(!accepts_gzip(b"identity"));
        assert!(!accepts_gzip(b""));
        assert!(!accepts_gzip(b"*;q=0"));
    }

    #[test]
    fn bare_lf_line_ends_are_accepted() {
        let s = site();
        let (req, n) = request(s.parse(b"GET /lf HTTP/1.1\nHost: h\n\nrest"));
        assert_eq!((req.target.as_str(), n), ("/lf", 26));
    }

    #[test]
    fn leading_blank_lines_are_skipped() {
        let s = site();
        let (req, n) = request(s.parse(b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert_eq!((req.target.as_str(), n), ("/x", 32));
    }
}
