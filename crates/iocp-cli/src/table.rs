//! Aligned plain-text tables.

/// How a column is aligned.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// Renders `rows` in columns padded to the widest cell (counted in characters), separated by
/// `sep`; with a `header`, a rule line follows it. Every line ends with a newline; trailing
/// spaces are trimmed.
pub(crate) fn render(
    header: Option<&[&str]>,
    rows: &[Vec<String>],
    align: &[Align],
    sep: &str,
) -> String {
    let ncols =
        header.map(<[&str]>::len).into_iter().chain(rows.iter().map(Vec::len)).max().unwrap_or(0);
    let mut width = vec![0usize; ncols];
    let cells = header
        .map(|h| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .into_iter()
        .chain(rows.iter().cloned());
    for row in cells {
        for (w, cell) in width.iter_mut().zip(&row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                s.push_str(sep);
            }
            let pad = width[i].saturating_sub(cell.chars().count());
            let right = align.get(i).copied().unwrap_or(Align::Left) == Align::Right;
            if right {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let mut s = s.trim_end().to_owned();
        s.push('\n');
        s
    };
    let mut out = String::new();
    if let Some(h) = header {
        let h: Vec<String> = h.iter().map(|s| (*s).to_owned()).collect();
        out.push_str(&line(&h));
        let rule_sep: String = sep.chars().map(|c| if c == '|' { '+' } else { '-' }).collect();
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&rule.join(&rule_sep));
        out.push('\n');
    }
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// Formats an integer with `,` between thousands: `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Align, render, thousands};

    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["epoll".to_owned(), "5".to_owned()],
            vec!["io_uring".to_owned(), "1,234".to_owned()],
        ];
        let t = render(Some(&["backend", "n/s"]), &rows, &[Align::Left, Align::Right], " | ");
        assert_eq!(t, "backend  |   n/s\n---------+------\nepoll    |     5\nio_uring | 1,234\n");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
