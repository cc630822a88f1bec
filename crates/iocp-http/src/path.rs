//! Turning a request target into a safe path under the root, or a `400`.

/// A request target that passed every check: decoded segments with nothing that can climb.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// The decoded path (`/a b/c/`), the cache key and the listing title.
    pub(crate) decoded: String,
    /// The path as sent (still encoded, no query), for a `Location`.
    pub(crate) raw_path: &'a str,
    /// The query as sent, with its `?`, or `""`.
    pub(crate) query: &'a str,
}

impl Target<'_> {
    /// The decoded segments: non-empty, none of them `.` or `..`, none holding `/`.
    pub(crate) fn segments(&self) -> impl Iterator<Item = &str> {
        self.decoded.split('/').filter(|s| !s.is_empty())
    }

    /// Whether the path ends with `/` (the root always does).
    pub(crate) fn trailing_slash(&self) -> bool {
        self.decoded.ends_with('/')
    }
}

/// Checks and decodes `target`; the error is always `400`.
pub(crate) fn decode(target: &str) -> Result<Target<'_>, u16> {
    const BAD: u16 = 400;
    let path = strip_authority(target);
    let (path, query) = match path.find(['?', '#']) {
        Some(i) => {
            let query = &path[i..];
            let query = query.find('#').map_or(query, |j| &query[..j]);
            (&path[..i], if query.starts_with('?') { query } else { "" })
        }
        None => (path, ""),
    };
    if !path.starts_with('/') || path.contains('\\') || path.contains("//") {
        return Err(BAD);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex).ok_or(BAD)?;
            let lo = bytes.get(i + 2).copied().and_then(hex).ok_or(BAD)?;
            let d = hi << 4 | lo;
            if d == b'/' || d == b'\\' || d.is_ascii_control() {
                return Err(BAD);
            }
            out.push(d);
            i += 3;
        } else {
            if b.is_ascii_control() {
                return Err(BAD);
            }
            out.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| BAD)?;
    // Empty segments are only the leading one and a trailing one ("//" was refused above).
    if decoded.split('/').any(|s| s == "." || s == "..") {
        return Err(BAD);
    }
    Ok(Target { decoded, raw_path: path, query })
}

/// `http://host/p` (absolute-form, which servers must accept) becomes `/p`.
fn strip_authority(target: &str) -> &str {
    let lower_starts = |p: &str| target.get(..p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p));
    let rest = if lower_starts("http://") {
        &target[7..]
    } else if lower_starts("https://") {
        &target[8..]
    } else {
        return target;
    };
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "/",
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_paths_decode() {
        let t = decode("/a%20b/%C3%A9t%c3%a9.txt?q=1#f").unwrap();
        assert_eq!(t.decoded, "/a b/été.txt");
        assert_eq!(t.raw_path, "/a%20b/%C3%A9t%c3%a9.txt");
        assert_eq!(t.query, "?q=1");
        assert_eq!(t.segments().collect::<Vec<_>>(), ["a b", "été.txt"]);
        assert!(!t.trailing_slash());
        let root = decode("/").unwrap();
        assert!(root.trailing_slash());
        assert_eq!(root.segments().count(), 0);
        assert!(decode("/dir/").unwrap().trailing_slash());
        assert_eq!(decode("/.well-known/x..y/...").unwrap().decoded, "/.well-known/x..y/...");
    }

    #[test]
    fn absolute_form_drops_the_authority() {
        assert_eq!(decode("http://example.com/x/y?z").unwrap().decoded, "/x/y");
        assert_eq!(decode("HTTPS://h").unwrap().decoded, "/");
    }

    #[test]
    fn traversal_and_odd_bytes_are_refused() {
        for bad in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/a/./b",
            "/.",
            "/%2e%2e/etc/passwd",
            "/%2E%2e/",
            "/.%2e/x",
            "/a/%2e",
            "/a%2fb",
            "/a%2F..%2Fb",
            "/a\\b",
            "/a%5cb",
            "/..\\x",
            "/a%00b",
            "/a%0ab",
            "//etc/passwd",
            "/a//b",
            "etc/passwd",
            "*",
            "",
            "/%",
            "/%4",
            "/%zz",
            "/%c3",
            "/%ff%fe",
            "http://h/../x",
        ] {
            assert_eq!(decode(bad), Err(400), "{bad:?}");
        }
    }
}
