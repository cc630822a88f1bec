//! From a received message to a file path and a line: parsing (RFC 5424 and RFC 3164 with
//! `syslog_loose`), the path template, and the text or JSON line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{SystemTime, UNIX_EPOCH};

use syslog_loose::{Message, ProcId, Protocol, Variant};

/// How a message is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The message's original text, one per line (LF, CR and NUL inside it written as
    /// `#012`, `#015`, `#000`, as rsyslog does).
    #[default]
    Text,
    /// One JSON object per line: the parsed fields and the original text.
    Json,
}

/// Where a message came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Input {
    fn as_str(self) -> &'static str {
        match self {
            Input::Tcp => "tcp",
            Input::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Host,
    App,
    Year,
    Month,
    Day,
    Hour,
    Facility,
    Severity,
    Input,
}

/// A file path template, relative to the output directory: literal text and fields in braces,
/// `{host}`, `{app}`, `{year}`, `{month}`, `{day}`, `{hour}` (the time received, UTC),
/// `{facility}`, `{severity}`, `{input}` (`tcp` or `udp`). Field values are made safe for a
/// path (only `A-Z a-z 0-9 . _ -`, never starting with a dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Default for Template {
    /// `{host}/{app}.log`.
    fn default() -> Self {
        Template {
            pieces: vec![
                Piece::Host,
                Piece::Lit("/".into()),
                Piece::App,
                Piece::Lit(".log".into()),
            ],
        }
    }
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// An unknown field, an unclosed brace, an absolute path, a `..` component or an empty
    /// template.
    pub fn parse(s: &str) -> Result<Template, String> {
        if s.is_empty() || s.starts_with('/') || s.ends_with('/') {
            return Err(format!("template {s:?}: must be a relative file path"));
        }
        if s.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            return Err(format!("template {s:?}: empty, '.' or '..' path component"));
        }
        let mut pieces = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end =
                        rest.find('}').ok_or_else(|| format!("template {s:?}: unclosed {{"))?;
                    pieces.push(match &rest[1..end] {
                        "host" => Piece::Host,
                        "app" => Piece::App,
                        "year" => Piece::Year,
                        "month" => Piece::Month,
                        "day" => Piece::Day,
                        "hour" => Piece::Hour,
                        "facility" => Piece::Facility,
                        "severity" => Piece::Severity,
                        "input" => Piece::Input,
                        f => return Err(format!("template {s:?}: unknown field {{{f}}}")),
                    });
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    pieces.push(Piece::Lit(rest[..i].to_string()));
                    rest = &rest[i..];
                }
                None => {
                    pieces.push(Piece::Lit(rest.to_string()));
                    rest = "";
                }
            }
        }
        if pieces.iter().any(|p| matches!(p, Piece::Lit(l) if l.contains('}'))) {
            return Err(format!("template {s:?}: stray }}"));
        }
        Ok(Template { pieces })
    }
}

/// The time a message was received, split for templates and stamps.
#[derive(Clone, Debug)]
pub struct Received {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    rfc3339: String,
}

impl Received {
    /// Now (UTC).
    pub fn now() -> Received {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Received::at(t.as_secs() as i64, t.subsec_micros())
    }

    fn at(secs: i64, micros: u32) -> Received {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let hour = (sod / 3600) as u32;
        let rfc3339 = format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{:02}:{:02}.{micros:06}Z",
            sod / 60 % 60,
            sod % 60
        );
        Received { year, month, day, hour, rfc3339 }
    }

    /// The year, for RFC 3164 timestamps that have none.
    fn year(&self) -> i32 {
        i32::try_from(self.year).unwrap_or(1970)
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses a message; `None` when it is not valid UTF-8 syslog with a priority.
fn parse(msg: &[u8], year: i32) -> Option<Message<&str>> {
    let s = std::str::from_utf8(msg).ok()?;
    // The parser is not ours: a panic in it makes the message malformed, not the server sick.
    let r = catch_unwind(AssertUnwindSafe(|| {
        syslog_loose::parse_message_with_year_exact_tz(
            s,
            |_| year,
            Some(chrono::Utc),
            Variant::Either,
        )
    }));
    let parsed =
        r.ok().and_then(Result::ok).filter(|m| m.facility.is_some() && m.severity.is_some());
    parsed.or_else(|| parse_bare(s))
}

/// The form with a priority and no timestamp or hostname, `<PRI>TAG: MSG` or
/// `<PRI>TAG[PID]: MSG` (Python's `logging.handlers.SysLogHandler`, many embedded senders),
/// which the exact parser refuses. A relay keeps such a message with its priority (RFC 3164
/// §4.3.3: it lacks the timestamp and hostname a relay would add); the TAG (at most 32
/// alphanumeric characters, §4.1.3) is the app. `None` without a valid priority.
fn parse_bare(s: &str) -> Option<Message<&str>> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>').filter(|&e| (1..=3).contains(&e))?;
    let pri: u8 = rest[..end].parse().ok().filter(|&p: &u8| p <= 191)?;
    let (facility, severity) = syslog_loose::decompose_pri(pri);
    let body = &rest[end + 1..];
    let tag_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
        .unwrap_or(body.len());
    let (mut appname, mut procid, mut msg) = (None, None, body);
    if (1..=32).contains(&tag_len) {
        let (tag, after) = body.split_at(tag_len);
        if let Some(m) = after.strip_prefix(':') {
            (appname, msg) = (Some(tag), m.strip_prefix(' ').unwrap_or(m));
        } else if let Some((pid, m)) = after.strip_prefix('[').and_then(|a| a.split_once("]:")) {
            let pid = pid.parse().map_or(ProcId::Name(pid), ProcId::PID);
            (appname, procid, msg) = (Some(tag), Some(pid), m.strip_prefix(' ').unwrap_or(m));
        }
    }
    Some(Message {
        protocol: Protocol::RFC3164,
        facility,
        severity,
        timestamp: None,
        hostname: None,
        appname,
        procid,
        msgid: None,
        structured_data: Vec::new(),
        msg,
    })
}

/// Appends `v` made safe as a path component (at most 64 bytes).
fn push_safe(out: &mut String, v: &str) {
    let start = out.len();
    for c in v.chars().take(64) {
        let ok = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        out.push(if ok { c } else { '_' });
    }
    if out.len() == start {
        out.push('-');
    } else if out.as_bytes()[start] == b'.' {
        out.replace_range(start..start + 1, "_");
    }
}

/// Appends the text form of `msg`: its bytes, with LF, CR and NUL escaped rsyslog-style.
fn push_text(line: &mut Vec<u8>, msg: &[u8]) {
    let mut rest = msg;
    while let Some(i) = rest.iter().position(|&b| matches!(b, b'\n' | b'\r' | b'\0')) {
        line.extend_from_slice(&rest[..i]);
        line.extend_from_slice(match rest[i] {
            b'\n' => b"#012",
            b'\r' => b"#015",
            _ => b"#000",
        });
        rest = &rest[i + 1..];
    }
    line.extend_from_slice(rest);
}

/// What a rendered message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// It did not parse (or the framing flagged it); it was written raw.
    pub malformed: bool,
}

/// Renders one message: its file path (relative) into `path`, its line into `line`
/// (appended, ending with LF).
#[allow(clippy::too_many_arguments)]
pub fn render(
    msg: &[u8],
    fault: Option<&str>,
    peer: Option<SocketAddr>,
    input: Input,
    rx: &Received,
    template: &Template,
    format: Format,
    path: &mut String,
    line: &mut Vec<u8>,
) -> Outcome {
    let parsed = if fault.is_none() { parse(msg, rx.year()) } else { None };
    let malformed = parsed.is_none();
    let peer_ip = peer.map(|p| p.ip().to_string());
    let host = parsed.as_ref().and_then(|m| m.hostname).or(peer_ip.as_deref()).unwrap_or("-");
    let app = match &parsed {
        Some(m) => m.appname.unwrap_or("-"),
        None => "malformed",
    };
    let facility = parsed.as_ref().and_then(|m| m.facility).map_or("-", |f| f.as_str());
    let severity = parsed.as_ref().and_then(|m| m.severity).map_or("-", |s| s.as_str());
    path.clear();
    for p in &template.pieces {
        match p {
            Piece::Lit(l) => path.push_str(l),
            Piece::Host => push_safe(path, host),
            Piece::App => push_safe(path, app),
            Piece::Year => {
                let _ = write!(path, "{:04}", rx.year);
            }
            Piece::Month => {
                let _ = write!(path, "{:02}", rx.month);
            }
            Piece::Day => {
                let _ = write!(path, "{:02}", rx.day);
            }
            Piece::Hour => {
                let _ = write!(path, "{:02}", rx.hour);
            }
            Piece::Facility => push_safe(path, facility),
            Piece::Severity => push_safe(path, severity),
            Piece::Input => path.push_str(input.as_str()),
        }
    }
    match format {
        Format::Text => push_text(line, msg),
        Format::Json => {
            let raw = String::from_utf8_lossy(msg);
            let mut o = serde_json::Map::new();
            let mut put = |k: &str, v: serde_json::Value| {
                o.insert(k.to_string(), v);
            };
            put("received", rx.rfc3339.as_str().into());
            put("input", input.as_str().into());
            if let Some(ip) = &peer {
                put("peer", ip.to_string().into());
            }
            if let Some(m) = &parsed {
                put("facility", facility.into());
                put("severity", severity.into());
                if let Some(t) = m.timestamp {
                    put("timestamp", t.to_rfc3339().into());
                }
                if let Some(h) = m.hostname {
                    put("host", h.into());
                }
                if let Some(a) = m.appname {
                    put("app", a.into());
                }
                if let Some(p) = &m.procid {
                    put("procid", p.to_string().into());
                }
                if let Some(id) = m.msgid {
                    put("msgid", id.into());
                }
                put("msg", m.msg.into());
            } else {
                put("malformed", fault.unwrap_or("unparsed").into());
            }
            put("raw", raw.as_ref().into());
            let _ = serde_json::to_writer(&mut *line, &serde_json::Value::Object(o));
        }
    }
    line.push(b'\n');
    Outcome { malformed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(msg: &[u8], t: &str, f: Format) -> (String, String, bool) {
        let rx = Received::at(1_764_694_800, 0); // 2025-12-02T17:00:00Z
        let (mut path, mut line) = (String::new(), Vec::new());
        let peer = Some(SocketAddr::from(([10, 0, 0, 1], 5000)));
        let o = render(
            msg,
            None,
            peer,
            Input::Tcp,
            &rx,
            &Template::parse(t).unwrap(),
            f,
            &mut path,
            &mut line,
        );
        (path, String::from_utf8(line).unwrap(), o.malformed)
    }

    #[test]
    fn rfc5424_and_3164_parse() {
        let m = b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 - hi";
        let (p, l, bad) = one(m, "{host}/{app}.log", Format::Text);
        assert_eq!((p.as_str(), bad), ("mymachine.example.com/evntslog.log", false));
        assert_eq!(l.as_bytes(), [&m[..], b"\n"].concat());
        let m = b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed";
        let (p, _, bad) = one(m, "{host}/{app}-{year}{month}{day}.log", Format::Text);
        assert_eq!((p.as_str(), bad), ("mymachine/su-20251202.log", false));
    }

    #[test]
    fn malformed_is_kept_raw() {
        let (p, l, bad) = one(b"no priority\rhere", "{host}/{app}.log", Format::Text);
        assert!(bad);
        assert_eq!(p, "10.0.0.1/malformed.log");
        assert_eq!(l, "no priority#015here\n");
        let (_, l, bad) = one(b"\xff\xfe<13>x", "{host}.log", Format::Json);
        assert!(bad);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["malformed"], "unparsed");
    }

    #[test]
    fn a_priority_without_timestamp_or_host_is_a_message() {
        // Python's SysLogHandler: `<PRI>ident: text` (UDP adds a NUL, trimmed before this).
        let (p, l, bad) = one(b"<14>pyapp: hello there", "{host}/{app}.log", Format::Text);
        assert!(!bad);
        assert_eq!(p, "10.0.0.1/pyapp.log");
        assert_eq!(l, "<14>pyapp: hello there\n");
        let (p, l, bad) = one(b"<11>daemon[42]: it broke", "{app}.log", Format::Json);
        assert!(!bad);
        assert_eq!(p, "daemon.log");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["msg"], "it broke", "{v}");
        assert_eq!(v["severity"], "err", "{v}");
        // No tag: the whole text is the message.
        let (p, _, bad) = one(b"<13>just words", "{app}.log", Format::Text);
        assert!(!bad);
        assert_eq!(p, "-.log");
        // Not a priority: still malformed.
        for m in [&b"<192>x: y"[..], b"<>x", b"<1234>x", b"<a>x"] {
            assert!(one(m, "{app}.log", Format::Text).2, "{:?}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn hostile_fields_stay_inside_the_directory() {
        let m = b"<13>1 2003-10-11T22:14:15Z ../../etc pass/wd - - - x";
        let (p, _, _) = one(m, "{host}/{app}.log", Format::Text);
        assert_eq!(p, "_._.._etc/pass_wd.log");
        assert!(!p.split('/').any(|c| c == ".."));
    }

    #[test]
    fn json_lines() {
        let m = b"<165>1 2003-10-11T22:14:15.003Z host app 42 ID47 - the \"msg\"";
        let (_, l, _) = one(m, "x.log", Format::Json);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["host"], "host");
        assert_eq!(v["procid"], "42");
        assert_eq!(v["msg"], "the \"msg\"");
        assert_eq!(v["received"], "2025-12-02T17:00:00.000000Z");
    }

    #[test]
    fn templates_are_checked() {
        assert!(Template::parse("{host}/{app}.log").is_ok());
        for bad in ["/abs", "../x", "a/../b", "{nope}", "{host", "a}b", "", "a//b", "dir/"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_424), (2025, 12, 2));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    /// Random bytes and mutated real messages through the parser and the template: no panic,
    /// one line each, and every path stays a relative path of safe components.
    #[test]
    fn fuzz_render() {
        let seeds: [&[u8]; 3] = [
            b"<165>1 2003-10-11T22:14:15.003Z host app 42 ID47 [x@1 a=\"b\"] msg",
            b"<34>Oct 11 22:14:15 mymachine su[12]: 'su root' failed",
            b"<13>1 - - - - - -",
        ];
        let mut rng = 0xdead_beef_cafe_f00du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let t = Template::parse("{host}/{app}-{facility}.{severity}.log").unwrap();
        let rx = Received::now();
        for round in 0..20_000 {
            let mut m = seeds[round % 3].to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % (m.len() + 1);
                match next() % 3 {
                    0 if at < m.len() => m[at] = next() as u8,
                    1 => m.insert(at, b"<>[]=\" /.:-1\xff"[(next() % 13) as usize]),
                    _ => m.truncate(at),
                }
            }
            if round % 5 == 0 {
                m = (0..next() % 200).map(|_| next() as u8).collect();
            }
            let (mut path, mut line) = (String::new(), Vec::new());
            for format in [Format::Text, Format::Json] {
                line.clear();
                render(&m, None, None, Input::Udp, &rx, &t, format, &mut path, &mut line);
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{m:?}");
                assert!(!path.starts_with('/'));
                assert!(path.split('/').all(|c| !c.is_empty() && !c.starts_with('.')), "{path}");
            }
        }
    }
}
