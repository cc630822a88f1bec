//! A minimal JSON writer: enough for the one-line reports, without a dependency.

use std::fmt::{self, Write as _};

/// A JSON value. Object keys are static: every report has a fixed shape.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An unsigned integer.
    Int(u64),
    /// A number; non-finite values are written as `null`.
    Num(f64),
    /// A string.
    Str(String),
    /// An object, keys in the given order.
    Obj(Vec<(&'static str, Json)>),
    /// An array.
    Arr(Vec<Json>),
}

impl Json {
    /// A string value.
    pub(crate) fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A number rounded to one decimal place.
    pub(crate) fn num1(x: f64) -> Json {
        Json::Num((x * 10.0).round() / 10.0)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Int(n) => write!(f, "{n}"),
            // `f64`'s Display never uses an exponent, so it is valid JSON.
            Json::Num(x) if x.is_finite() => write!(f, "{x}"),
            Json::Num(_) => f.write_str("null"),
            Json::Str(s) => quote(f, s),
            Json::Obj(fields) => {
                f.write_char('{')?;
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    quote(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_char('}')
            }
            Json::Arr(items) => {
                f.write_char('[')?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_char(']')
            }
        }
    }
}

fn quote(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for ch in s.chars() {
        match ch {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if u32::from(c) < 0x20 => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn writes_objects_and_escapes_strings() {
        let v = Json::Obj(vec![
            ("s", Json::str("a\"b\\c\nd\u{1}µ")),
            ("n", Json::Null),
            ("b", Json::Bool(true)),
            ("i", Json::Int(42)),
            ("x", Json::num1(1234.56)),
            ("inf", Json::Num(f64::INFINITY)),
            ("o", Json::Obj(vec![])),
            ("a", Json::Arr(vec![Json::Int(1), Json::Obj(vec![("k", Json::Null)])])),
        ]);
        assert_eq!(
            v.to_string(),
            r#"{"s":"a\"b\\c\nd\u0001µ","n":null,"b":true,"i":42,"x":1234.6,"inf":null,"o":{},"a":[1,{"k":null}]}"#
        );
    }

    #[test]
    fn large_numbers_have_no_exponent() {
        assert_eq!(Json::Num(1e21).to_string(), "1000000000000000000000");
    }
}
