//! The HTML listing of a directory without `index.html`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters is encoded in a link.
const LINK: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The most entries listed (the rest are counted, not shown).
const MAX_ENTRIES: usize = 10_000;

/// Renders the listing of `dir`, titled with the decoded request path `shown`. Names that are
/// not UTF-8 are left out, since no request could name them.
pub(crate) fn render(dir: &Path, shown: &str) -> std::io::Result<Vec<u8>> {
    let mut names: Vec<(String, bool)> = Vec::new();
    let mut left_out = 0usize;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            left_out += 1;
            continue;
        };
        if names.len() >= MAX_ENTRIES {
            left_out += 1;
            continue;
        }
        // Follows symlinks, like a request would; a dangling one is listed as a file.
        let is_dir = fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
        names.push((name, is_dir));
    }
    names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let title = escape(shown);
    let mut html = String::with_capacity(256 + names.len() * 96);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>Index of {title}</title>\
         </head>\n<body>\n<h1>Index of {title}</h1>\n<ul>\n"
    );
    if shown != "/" {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (name, is_dir) in &names {
        let slash = if *is_dir { "/" } else { "" };
        let _ = writeln!(
            html,
            "<li><a href=\"{}{slash}\">{}{slash}</a></li>",
            utf8_percent_encode(name, LINK),
            escape(name)
        );
    }
    html.push_str("</ul>\n");
    if left_out > 0 {
        let _ = writeln!(html, "<p>{left_out} more entries not shown.</p>");
    }
    html.push_str("</body>\n</html>\n");
    Ok(html.into_bytes())
}

/// Escapes text for HTML element content and quoted attributes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_the_five() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn listing_escapes_names_and_encodes_links() {
        let dir = std::env::temp_dir().join(format!("iocp-http-listing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub dir")).unwrap();
        fs::write(dir.join("<b>&x\".txt"), b"").unwrap();
        fs::write(dir.join("a?b#c%d.txt"), b"").unwrap();
        let html = String::from_utf8(render(&dir, "/<t>/").unwrap()).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(html.contains("<title>Index of /&lt;t&gt;/</title>"), "{html}");
        assert!(html.contains("<a href=\"sub%20dir/\">sub dir/</a>"), "{html}");
        assert!(html.contains("<a href=\"%3Cb%3E%26x%22.txt\">&lt;b&gt;&amp;x&quot;.txt</a>"));
        assert!(html.contains("<a href=\"a%3Fb%23c%25d.txt\">a?b#c%d.txt</a>"), "{html}");
        assert!(html.contains("<a href=\"../\">"));
        // Directories first.
        assert!(html.find("sub%20dir").unwrap() < html.find("a%3Fb").unwrap());
    }
}
