//! Dify's `{{#node.var.path#}}` variable references inside text.
//!
//! The grammar is Dify's exactly: a first segment of 1–50 `[A-Za-z0-9_]` characters, then 1 to
//! 10 segments of `.` + `[A-Za-z_][A-Za-z0-9_]{0,29}`, wrapped in `{{#` and `#}}`. Anything else
//! (hyphenated node ids, `{{#sys#}}`, unclosed braces) is plain text.

/// One piece of a template: literal text or a variable reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Text(String),
    /// `path` is the reference without `{{#`/`#}}` (e.g. `node.text`), `selector` its segments.
    Variable {
        path: String,
        selector: Vec<String>,
    },
}

const MAX_FIRST_SEGMENT: usize = 50;
const MAX_SEGMENT: usize = 30;
const MAX_EXTRA_SEGMENTS: usize = 10;

/// Splits a template into literal and variable parts, in order. Empty literal parts are dropped,
/// as Dify's `re.split` + `filter(None, ...)` does.
pub fn parse(template: &str) -> Vec<TemplatePart> {
    let mut parts = Vec::new();
    let bytes = template.as_bytes();
    let mut text_start = 0;
    let mut cursor = 0;
    while let Some(offset) = find(&bytes[cursor..], b"{{#") {
        let start = cursor + offset;
        match match_reference(bytes, start) {
            Some((path_end, end)) => {
                if start > text_start {
                    parts.push(TemplatePart::Text(template[text_start..start].to_owned()));
                }
                let path = &template[start + 3..path_end];
                parts.push(TemplatePart::Variable { path: path.to_owned(), selector: path.split('.').map(str::to_owned).collect() });
                text_start = end;
                cursor = end;
            }
            None => cursor = start + 1,
        }
    }
    if text_start < template.len() {
        parts.push(TemplatePart::Text(template[text_start..].to_owned()));
    }
    parts
}

/// The selectors referenced by a template, in order of appearance.
pub fn selectors(template: &str) -> impl Iterator<Item = Vec<String>> {
    parse(template).into_iter().filter_map(|part| match part {
        TemplatePart::Variable { selector, .. } => Some(selector),
        TemplatePart::Text(_) => None,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// At `start` (pointing at `{{#`), returns (end of the path, end of the whole reference).
fn match_reference(bytes: &[u8], start: usize) -> Option<(usize, usize)> {
    let mut index = start + 3;
    let first = run_length(bytes, index, |byte| byte.is_ascii_alphanumeric() || byte == b'_');
    if first == 0 || first > MAX_FIRST_SEGMENT {
        return None;
    }
    index += first;
    let mut extra = 0;
    while bytes.get(index) == Some(&b'.') {
        let head = *bytes.get(index + 1)?;
        if !(head.is_ascii_alphabetic() || head == b'_') {
            return None;
        }
        let length = run_length(bytes, index + 1, |byte| byte.is_ascii_alphanumeric() || byte == b'_');
        if length > MAX_SEGMENT {
            return None;
        }
        index += 1 + length;
        extra += 1;
        if extra > MAX_EXTRA_SEGMENTS {
            return None;
        }
    }
    if extra == 0 || bytes.get(index..index + 3) != Some(b"#}}".as_slice()) {
        return None;
    }
    Some((index, index + 3))
}

fn run_length(bytes: &[u8], from: usize, accept: impl Fn(u8) -> bool) -> usize {
    bytes.get(from..).map_or(0, |rest| rest.iter().take_while(|byte| accept(**byte)).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(path: &str) -> TemplatePart {
        TemplatePart::Variable { path: path.into(), selector: path.split('.').map(Into::into).collect() }
    }

    fn text(value: &str) -> TemplatePart {
        TemplatePart::Text(value.into())
    }

    #[test]
    fn splits_text_and_variables_like_dify() {
        assert_eq!(
            parse("Hi {{#start.name#}}, env {{#env.API_KEY#}}{{#sys.query#}}!"),
            vec![text("Hi "), var("start.name"), text(", env "), var("env.API_KEY"), var("sys.query"), text("!")]
        );
    }

    #[test]
    fn rejects_forms_dify_does_not_treat_as_variables() {
        // Dify's test_variable_template_parser: these are not variables.
        for plain in ["{{#.x#}}", "{{#sys#}}", "{{#a.b#}", "{{#node-1.text#}}", "{{#a.1b#}}", "{{ #a.b# }}"] {
            assert_eq!(parse(plain), vec![text(plain)], "{plain}");
        }
    }

    #[test]
    fn honours_segment_limits() {
        let first = "a".repeat(50);
        assert_eq!(parse(&format!("{{{{#{first}.x#}}}}")), vec![var(&format!("{first}.x"))]);
        let too_long = "a".repeat(51);
        assert_eq!(parse(&format!("{{{{#{too_long}.x#}}}}")).len(), 1);
        assert!(matches!(parse(&format!("{{{{#{too_long}.x#}}}}"))[0], TemplatePart::Text(_)));
        let ten = format!("{{{{#n{}#}}}}", ".a".repeat(10));
        assert!(matches!(parse(&ten)[0], TemplatePart::Variable { .. }));
        let eleven = format!("{{{{#n{}#}}}}", ".a".repeat(11));
        assert!(matches!(parse(&eleven)[0], TemplatePart::Text(_)));
        let long_segment = format!("{{{{#n.{}#}}}}", "b".repeat(31));
        assert!(matches!(parse(&long_segment)[0], TemplatePart::Text(_)));
    }

    #[test]
    fn finds_a_reference_after_an_extra_brace() {
        assert_eq!(parse("{{{#a.b#}}}"), vec![text("{"), var("a.b"), text("}")]);
    }

    #[test]
    fn multibyte_text_survives() {
        assert_eq!(parse("你好{{#n.x#}}世界"), vec![text("你好"), var("n.x"), text("世界")]);
    }
}
