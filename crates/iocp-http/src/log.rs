//! The access log line (Combined Log Format, as Apache and nginx write it).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Request, Response};

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// One Combined Log Format line, without the newline:
/// `127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /a HTTP/1.1" 200 13 "referer" "agent"`.
///
/// `req` is `None` for a [`Parsed::Error`](crate::Parsed::Error) (the request line is then
/// `-`). Quotes, backslashes, control and non-ASCII bytes inside quoted fields are written as
/// `\xHH`, so a client cannot forge log lines. Times are UTC.
pub fn access_log_line(
    peer: IpAddr,
    req: Option<&Request>,
    resp: &Response,
    at: SystemTime,
) -> String {
    let mut line = String::with_capacity(160);
    let _ = write!(line, "{peer} - - [");
    clf_time(&mut line, at);
    line.push_str("] \"");
    match req {
        Some(r) => {
            escape_into(&mut line, &r.method);
            line.push(' ');
            escape_into(&mut line, &r.target);
            line.push(' ');
            line.push_str(r.version.as_str());
        }
        None => line.push('-'),
    }
    let _ = write!(line, "\" {} {} \"", resp.status, resp.body_len());
    escape_into(&mut line, req.and_then(|r| r.referer.as_deref()).unwrap_or("-"));
    line.push_str("\" \"");
    escape_into(&mut line, req.and_then(|r| r.user_agent.as_deref()).unwrap_or("-"));
    line.push('"');
    line
}

fn escape_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000`
fn clf_time(out: &mut String, at: SystemTime) {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let month = MONTHS[usize::try_from(m - 1).unwrap_or(0).min(11)];
    let _ = write!(
        out,
        "{d:02}/{month}/{y}:{:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31): Howard Hinnant's `civil_from_days`,
/// for non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Body, Version};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates_convert() {
        let mut s = String::new();
        clf_time(&mut s, at(971_186_136));
        assert_eq!(s, "10/Oct/2000:13:55:36 +0000");
        s.clear();
        clf_time(&mut s, at(1_709_164_800));
        assert_eq!(s, "29/Feb/2024:00:00:00 +0000");
        s.clear();
        clf_time(&mut s, at(0));
        assert_eq!(s, "01/Jan/1970:00:00:00 +0000");
        // Every day for 300 years agrees with httpdate's calendar.
        for day in (0..110_000u64).step_by(7) {
            let (y, m, d) = civil_from_days(day);
            let http = httpdate::fmt_http_date(at(day * 86_400));
            let want = format!("{d:02} {} {y}", MONTHS[(m - 1) as usize]);
            assert!(http.contains(&want), "{http} vs {want}");
        }
    }

    #[test]
    fn a_line_escapes_what_the_client_sent() {
        let req = Request {
            method: "GET".to_owned(),
            target: "/a\"b\\c".to_owned(),
            version: Version::Http11,
            user_agent: Some("ua\u{e9}\"x".to_owned()),
            referer: None,
            keep_alive: true,
            if_none_match: None,
            if_modified_since: None,
            if_range: None,
            range: None,
            accept_gzip: false,
        };
        let data: std::sync::Arc<[u8]> = vec![0u8; 13].into();
        let resp = Response {
            status: 200,
            head: Vec::new(),
            body: Body::Bytes { data, offset: 0, len: 13 },
            keep_alive: true,
        };
        let line =
            access_log_line("127.0.0.1".parse().unwrap(), Some(&req), &resp, at(971_186_136));
        assert_eq!(
            line,
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a\\x22b\\x5Cc HTTP/1.1\" 200 13 \
             \"-\" \"ua\\xC3\\xA9\\x22x\""
        );
        let err = Response { status: 400, head: Vec::new(), body: Body::Empty, keep_alive: false };
        let line = access_log_line("::1".parse().unwrap(), None, &err, at(0));
        assert_eq!(line, "::1 - - [01/Jan/1970:00:00:00 +0000] \"-\" 400 0 \"-\" \"-\"");
    }
}
