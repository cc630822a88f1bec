//! The `Date` header value, formatted at most once per second per thread.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

thread_local! {
    static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to `out`.
pub(crate) fn append_now(out: &mut Vec<u8>) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1 = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            cached.0 = secs;
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_an_imf_fixdate_of_now() {
        let mut out = Vec::new();
        append_now(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), 29, "{text}");
        assert!(text.ends_with(" GMT"));
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap();
        assert!(age < Duration::from_secs(2));
        // Cached: a second call within the same second gives the same text.
        let mut again = Vec::new();
        append_now(&mut again);
        assert!(
            again == text.as_bytes()
                || httpdate::parse_http_date(std::str::from_utf8(&again).unwrap()).unwrap()
                    > parsed
        );
    }
}
