//! Text exactly as Python would write it: `str()`, `repr()`, `json.dumps(..., ensure_ascii=False)`.
//!
//! Answers, HTTP bodies and prompts in Dify are built from these, so `True`, `1.0`, `1e-05`,
//! `[1, 2]` and `{'a': 1}` must come out byte for byte.

use std::fmt::Write as _;

use crate::value::{File, Value};

/// `str(value)`.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::Str(text) => text.to_string(),
        other => {
            let mut out = String::new();
            write_py_repr(&mut out, other, true);
            out
        }
    }
}

/// `repr(value)`; `top` is unused for now but keeps room for `str` vs `repr` of containers.
pub fn write_py_repr(out: &mut String, value: &Value, _top: bool) {
    match value {
        Value::None => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int(int) => {
            let _ = write!(out, "{int}");
        }
        Value::Float(float) => write_float_repr(out, *float),
        Value::Str(text) => write_str_repr(out, text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_py_repr(out, item, false);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_str_repr(out, key);
                out.push_str(": ");
                write_py_repr(out, item, false);
            }
            out.push('}');
        }
        Value::File(file) => write_file_repr(out, file),
    }
}

fn write_file_repr(out: &mut String, file: &File) {
    write_py_repr(out, &Value::object(file.to_map()), false);
}

/// `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from 1e16 up.
pub fn write_float_repr(out: &mut String, float: f64) {
    if float.is_nan() {
        out.push_str("nan");
        return;
    }
    if float.is_infinite() {
        out.push_str(if float > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if float == 0.0 {
        out.push_str(if float.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Rust's `{:e}` yields the shortest round-trip digits, e.g. "1.2345e4" or "-5e-7".
    let scientific = format!("{float:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exponent) {
        if exponent >= 0 {
            let integer_digits = exponent as usize + 1;
            if digits.len() <= integer_digits {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', integer_digits - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..integer_digits]);
                out.push('.');
                out.push_str(&digits[integer_digits..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs());
    }
}

pub fn float_repr(float: f64) -> String {
    let mut out = String::new();
    write_float_repr(&mut out, float);
    out
}

/// `repr(str)`: single quotes unless the text has a single quote and no double quote.
pub fn write_str_repr(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if ch == quote => {
                out.push('\\');
                out.push(ch);
            }
            ch if is_printable(ch) => out.push(ch),
            ch => {
                let code = ch as u32;
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else if code < 0x10000 {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for the characters that occur in practice: controls, format
/// characters, separators other than the ASCII space, and private-use code points are not.
fn is_printable(ch: char) -> bool {
    let code = ch as u32;
    !matches!(code,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad | 0x034f | 0x061c | 0x115f | 0x1160 | 0x1680 | 0x180e
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000 | 0x3164
        | 0xd800..=0xf8ff | 0xfeff | 0xffa0 | 0xfff0..=0xfffb | 0xfffe | 0xffff
        | 0x1d173..=0x1d17a | 0xe0000..=0xe0fff | 0xf0000..=0x10ffff)
}

/// `json.dumps(value, ensure_ascii=False)` with Python's separators; `indent` as in Python
/// (`Some(2)` gives `",\n  "` between items and `": "` after keys).
pub fn json_dumps(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_json(&mut out, value, indent, 0, false);
    out
}

/// `json.dumps(value)` with the default `ensure_ascii=True`.
pub fn json_dumps_ascii(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value, None, 0, true);
    out
}

fn write_json(out: &mut String, value: &Value, indent: Option<usize>, level: usize, ascii: bool) {
    match value {
        Value::None => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Int(int) => {
            let _ = write!(out, "{int}");
        }
        Value::Float(float) if float.is_nan() => out.push_str("NaN"),
        Value::Float(float) if float.is_infinite() => out.push_str(if *float > 0.0 { "Infinity" } else { "-Infinity" }),
        Value::Float(float) => write_float_repr(out, *float),
        Value::Str(text) => write_json_str(out, text, ascii),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                separator(out, index, indent, level + 1);
                write_json(out, item, indent, level + 1, ascii);
            }
            closing(out, indent, level);
            out.push(']');
        }
        Value::Object(map) => write_json_map(out, map.iter().map(|(key, value)| (&**key, value)), map.is_empty(), indent, level, ascii),
        Value::File(file) => {
            let map = file.to_map();
            write_json_map(out, map.iter().map(|(key, value)| (&**key, value)), false, indent, level, ascii);
        }
    }
}

fn write_json_map<'a>(
    out: &mut String,
    entries: impl Iterator<Item = (&'a str, &'a Value)>,
    empty: bool,
    indent: Option<usize>,
    level: usize,
    ascii: bool,
) {
    if empty {
        out.push_str("{}");
        return;
    }
    out.push('{');
    for (index, (key, item)) in entries.enumerate() {
        separator(out, index, indent, level + 1);
        write_json_str(out, key, ascii);
        out.push_str(": ");
        write_json(out, item, indent, level + 1, ascii);
    }
    closing(out, indent, level);
    out.push('}');
}

fn separator(out: &mut String, index: usize, indent: Option<usize>, level: usize) {
    match indent {
        None => {
            if index > 0 {
                out.push_str(", ");
            }
        }
        Some(width) => {
            if index > 0 {
                out.push(',');
            }
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width * level));
        }
    }
}

fn closing(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(width) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', width * level));
    }
}

pub fn write_json_str(out: &mut String, text: &str, ascii: bool) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ch if (ch as u32) < 0x20 || (ascii && (ch as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
}

/// What Python's `type(value)` prints for the value as Dify holds it.
pub fn python_type_name(value: &Value) -> &'static str {
    match value {
        Value::None => "<class 'NoneType'>",
        Value::Bool(_) => "<class 'bool'>",
        Value::Int(_) => "<class 'int'>",
        Value::Float(_) => "<class 'float'>",
        Value::Str(_) => "<class 'str'>",
        Value::Array(_) => "<class 'list'>",
        Value::Object(_) => "<class 'dict'>",
        Value::File(_) => "<class 'File'>",
    }
}

/// `json.loads`: the value, or Python's `JSONDecodeError` message (`Expecting value: line 1
/// column 5 (char 4)`) for the common kinds of error.
pub fn json_loads(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|error| {
        let description = error.to_string();
        let kind = if error.is_eof() {
            "Expecting value"
        } else if description.starts_with("expected `,`") {
            "Expecting ',' delimiter"
        } else if description.starts_with("expected `:`") {
            "Expecting ':' delimiter"
        } else if description.starts_with("key must be a string") {
            "Expecting property name enclosed in double quotes"
        } else if description.starts_with("trailing characters") {
            "Extra data"
        } else if description.starts_with("invalid escape") {
            "Invalid \\escape"
        } else if description.starts_with("control character") {
            "Invalid control character at"
        } else {
            "Expecting value"
        };
        // Python points at the offending character, which for a truncated document is its end.
        let (line, column, position) = if error.is_eof() {
            let position = text.chars().count();
            let last_line = text.rsplit('\n').next().unwrap_or(text);
            (text.matches('\n').count() + 1, last_line.chars().count() + 1, position)
        } else {
            let line_start: usize = text.split_inclusive('\n').take(error.line().saturating_sub(1)).map(|line| line.chars().count()).sum();
            (error.line(), error.column(), line_start + error.column().saturating_sub(1))
        };
        format!("{kind}: line {line} column {column} (char {position})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Value, map_of};

    #[test]
    fn floats_read_like_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (-2.5, "-2.5"),
            (1.5e-7, "1.5e-07"),
            (1.23456, "1.23456"),
            (100.0, "100.0"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
            (2.5e300, "2.5e+300"),
        ];
        for (float, expected) in cases {
            assert_eq!(float_repr(float), expected, "{float}");
        }
    }

    #[test]
    fn containers_read_like_python_str() {
        let value = Value::array(vec![
            Value::Int(1),
            Value::Float(2.0),
            Value::Bool(true),
            Value::None,
            Value::str("it's"),
            Value::object(map_of([("a", Value::str("x\ny"))])),
        ]);
        assert_eq!(py_str(&value), r#"[1, 2.0, True, None, "it's", {'a': 'x\ny'}]"#);
        assert_eq!(py_str(&Value::str("plain")), "plain");
        assert_eq!(py_str(&Value::array(vec![Value::str("\u{a0}é\u{1}")])), r"['\xa0é\x01']");
    }

    #[test]
    fn json_dumps_matches_python() {
        let value = Value::object(map_of([
            ("name", Value::str("日本\"q\"")),
            ("list", Value::array(vec![Value::Int(1), Value::Float(0.5)])),
            ("empty", Value::array(vec![])),
            ("nested", Value::object(map_of([]))),
        ]));
        assert_eq!(json_dumps(&value, None), r#"{"name": "日本\"q\"", "list": [1, 0.5], "empty": [], "nested": {}}"#);
        assert_eq!(
            json_dumps(&value, Some(2)),
            "{\n  \"name\": \"日本\\\"q\\\"\",\n  \"list\": [\n    1,\n    0.5\n  ],\n  \"empty\": [],\n  \"nested\": {}\n}"
        );
        assert_eq!(json_dumps_ascii(&Value::str("é😀")), r#""\u00e9\ud83d\ude00""#);
    }
}

/// Python `int(text)`: surrounding whitespace, a sign, and single underscores between digits
/// are allowed; anything else is `invalid literal for int() with base 10: '...'`.
pub fn parse_int(text: &str) -> Result<i64, String> {
    let error = || format!("invalid literal for int() with base 10: {}", str_repr(text));
    let cleaned = strip_number_underscores(text.trim()).ok_or_else(error)?;
    let digits = cleaned.strip_prefix(['+', '-']).unwrap_or(&cleaned);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(error());
    }
    cleaned.parse::<i64>().map_err(|_| error())
}

/// Python `float(text)`, including `inf`, `nan` and underscores between digits.
pub fn parse_float(text: &str) -> Result<f64, String> {
    let error = || format!("could not convert string to float: {}", str_repr(text));
    let trimmed = text.trim();
    let unsigned = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed).to_ascii_lowercase();
    if matches!(unsigned.as_str(), "inf" | "infinity" | "nan") {
        return trimmed.to_ascii_lowercase().replace("infinity", "inf").parse::<f64>().map_err(|_| error());
    }
    let cleaned = strip_number_underscores(trimmed).ok_or_else(error)?;
    let valid = !cleaned.is_empty()
        && cleaned.bytes().all(|byte| byte.is_ascii_digit() || matches!(byte, b'+' | b'-' | b'.' | b'e' | b'E'))
        && cleaned.bytes().any(|byte| byte.is_ascii_digit());
    if !valid {
        return Err(error());
    }
    cleaned.parse::<f64>().map_err(|_| error())
}

fn strip_number_underscores(text: &str) -> Option<String> {
    if !text.contains('_') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    for (index, byte) in bytes.iter().enumerate() {
        if *byte == b'_' {
            let before = index.checked_sub(1).and_then(|i| bytes.get(i)).is_some_and(u8::is_ascii_digit);
            let after = bytes.get(index + 1).is_some_and(u8::is_ascii_digit);
            if !(before && after) {
                return None;
            }
        }
    }
    Some(text.replace('_', ""))
}

pub fn str_repr(text: &str) -> String {
    let mut out = String::new();
    write_str_repr(&mut out, text);
    out
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn int_and_float_parse_like_python() {
        assert_eq!(parse_int(" 22 "), Ok(22));
        assert_eq!(parse_int("-1_000"), Ok(-1000));
        assert_eq!(parse_int("22.5"), Err("invalid literal for int() with base 10: '22.5'".into()));
        assert!(parse_int("1__0").is_err());
        assert_eq!(parse_float("1e3"), Ok(1000.0));
        assert_eq!(parse_float(" .5 "), Ok(0.5));
        assert_eq!(parse_float("-Infinity"), Ok(f64::NEG_INFINITY));
        assert_eq!(parse_float("abc"), Err("could not convert string to float: 'abc'".into()));
    }
}
