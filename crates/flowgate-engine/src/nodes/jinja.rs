//! Jinja2 templates (template-transform nodes, jinja2 prompts) rendered with minijinja, made to
//! read like Python's Jinja2: values print as Python prints them (`True`, `['a', 'b']`,
//! `{'k': 1}`), undefined variables render empty, Python string/dict methods work, and
//! `tojson` sorts keys and escapes HTML characters as Jinja2 does.

use std::sync::OnceLock;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value as JinjaValue};

use crate::pyfmt;
use crate::value::{Map, MapRef, Value, map_with_capacity};

/// How much work one render may do before it is stopped (a guard against runaway loops).
const FUEL: u64 = 50_000_000;
const TEMPLATE_NAME: &str = "template";

fn base_environment() -> &'static Environment<'static> {
    static BASE: OnceLock<Environment<'static>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(FUEL));
        env.set_formatter(|out, _state, value| {
            if value.is_undefined() {
                return Ok(());
            }
            match value.as_str() {
                Some(text) if value.kind() == ValueKind::String => out.write_str(text).map_err(Error::from),
                _ => out.write_str(&pyfmt::py_str(&to_value(value))).map_err(Error::from),
            }
        });
        env.add_filter("tojson", tojson);
        env.add_filter("string", |value: JinjaValue| pyfmt::py_str(&to_value(&value)));
        env
    })
}

/// A template compiled once and rendered many times.
#[derive(Debug)]
pub struct JinjaTemplate {
    env: Environment<'static>,
    /// Set when the template does not parse; rendering reports it.
    error: Option<String>,
}

impl JinjaTemplate {
    pub fn compile(source: &str) -> Self {
        let mut env = base_environment().clone();
        let error = env.add_template_owned(TEMPLATE_NAME, normalize_newlines(source)).err().map(describe);
        Self { env, error }
    }

    pub fn render(&self, variables: &Map) -> Result<String, String> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let template = self.env.get_template(TEMPLATE_NAME).map_err(describe)?;
        template.render(JinjaValue::from(minijinja::value::Serde(MapRef(variables)))).map_err(describe)
    }
}

/// Jinja2's lexer turns every `\r\n` and lone `\r` of a template into `\n` (its default
/// `newline_sequence`); minijinja keeps them as written.
fn normalize_newlines(source: &str) -> String {
    if source.contains('\r') { source.replace("\r\n", "\n").replace('\r', "\n") } else { source.to_owned() }
}

fn describe(error: Error) -> String {
    let kind = match error.kind() {
        ErrorKind::UndefinedError => "UndefinedError",
        ErrorKind::SyntaxError => "TemplateSyntaxError",
        ErrorKind::InvalidOperation | ErrorKind::NonPrimitive | ErrorKind::NonKey => "TypeError",
        ErrorKind::UnknownFilter | ErrorKind::UnknownFunction | ErrorKind::UnknownTest | ErrorKind::UnknownMethod => {
            "TemplateAssertionError"
        }
        ErrorKind::OutOfFuel => "TemplateRuntimeError",
        _ => "TemplateError",
    };
    let detail = error.detail().map(str::to_owned).unwrap_or_else(|| error.kind().to_string());
    match error.line() {
        Some(line) => format!("{kind}: {detail} (line {line})"),
        None => format!("{kind}: {detail}"),
    }
}

/// A minijinja value as a flowgate value (for Python-style printing).
pub fn to_value(value: &JinjaValue) -> Value {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => Value::None,
        ValueKind::Bool => Value::Bool(value.is_true()),
        ValueKind::Number if value.is_integer() => value.as_i64().map_or_else(|| Value::str(value.to_string()), Value::Int),
        ValueKind::Number => f64::try_from(value.clone()).map_or_else(|_| Value::str(value.to_string()), Value::Float),
        ValueKind::String => Value::str(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => match value.try_iter() {
            Ok(items) => Value::array(items.map(|item| to_value(&item)).collect()),
            Err(_) => Value::str(value.to_string()),
        },
        ValueKind::Map => {
            let Ok(keys) = value.try_iter() else {
                return Value::str(value.to_string());
            };
            let mut map = map_with_capacity(value.len().unwrap_or(0));
            for key in keys {
                let item = value.get_item(&key).unwrap_or_default();
                let key = key.as_str().map_or_else(|| pyfmt::py_str(&to_value(&key)), str::to_owned);
                map.insert(key.into(), to_value(&item));
            }
            Value::object(map)
        }
        _ => Value::str(value.to_string()),
    }
}

/// Jinja2's `tojson`: `json.dumps(value, sort_keys=True)` with `<`, `>`, `&` and `'` escaped.
fn tojson(_state: &State, value: JinjaValue, kwargs: Kwargs) -> Result<JinjaValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let sorted = sort_keys(to_value(&value));
    let json = match indent {
        Some(width) => pyfmt::json_dumps(&sorted, Some(width)),
        None => pyfmt::json_dumps_ascii(&sorted),
    };
    let escaped = json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026").replace('\'', "\\u0027");
    Ok(JinjaValue::from_safe_string(escaped))
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().map(|(key, item)| (key.clone(), sort_keys(item.clone()))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::array(items.iter().cloned().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::map_of;

    fn render(source: &str, variables: Map) -> String {
        JinjaTemplate::compile(source).render(&variables).unwrap()
    }

    // Jinja2: `Template("a\r\nb\rc{{ x }}").render(x="\r\n")` is "a\nb\nc\r\n" (values keep theirs).
    #[test]
    fn template_newlines_are_normalised_as_jinja2_does() {
        assert_eq!(render("a\r\nb\rc{{ x }}", map_of([("x", Value::str("\r\n"))])), "a\nb\nc\r\n");
    }

    #[test]
    fn prints_values_as_python_does() {
        let variables = map_of([
            ("items", Value::array(vec![Value::str("a"), Value::Int(1), Value::Bool(true), Value::None])),
            ("obj", Value::object(map_of([("k", Value::Float(1.0))]))),
            ("flag", Value::Bool(false)),
        ]);
        assert_eq!(render("{{ items }}|{{ obj }}|{{ flag }}|{{ missing }}", variables), "['a', 1, True, None]|{'k': 1.0}|False|");
    }

    #[test]
    fn python_methods_and_loops_work() {
        let variables = map_of([("text", Value::str(" a,b ")), ("d", Value::object(map_of([("x", Value::Int(1))])))]);
        assert_eq!(render("{{ text.strip().split(',') }}", variables.clone()), "['a', 'b']");
        assert_eq!(render("{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}", variables), "x=1");
    }

    #[test]
    fn tojson_matches_jinja2() {
        let variables = map_of([("v", Value::object(map_of([("b", Value::str("<é>")), ("a", Value::Int(1))])))]);
        assert_eq!(render("{{ v | tojson }}", variables), r#"{"a": 1, "b": "\u003c\u00e9\u003e"}"#);
    }

    #[test]
    fn a_single_trailing_newline_is_dropped_like_jinja2() {
        assert_eq!(render("line\n", Map::default()), "line");
    }
}
