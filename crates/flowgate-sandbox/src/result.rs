//! What a code node's `main` returned, as Dify reads it from its sandbox.

use flowgate_engine::value::{Map, Value};

/// Dify's `transform_response`: the JSON must be an object; strings written in scientific
/// notation (`1.5e+10`, as some Python floats print) become numbers again.
pub fn outputs(json_text: &str) -> Result<Map, String> {
    let parsed: serde_json::Value =
        serde_json::from_str(json_text).map_err(|error| format!("Failed to parse JSON response from code execution: {error}"))?;
    let serde_json::Value::Object(_) = &parsed else {
        return Err(format!("Result must be a dict, got {}", python_type(&parsed)));
    };
    match Value::from(restore_scientific(parsed)) {
        Value::Object(map) => Ok(map.as_ref().clone()),
        _ => Err("Result must be a dict".into()),
    }
}

fn python_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "NoneType",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(number) if number.is_f64() => "float",
        serde_json::Value::Number(_) => "int",
        serde_json::Value::String(_) => "str",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "dict",
    }
}

fn restore_scientific(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::String(text) if is_scientific(&text) => match text.parse::<f64>() {
            Ok(number) => serde_json::Number::from_f64(number).map_or(serde_json::Value::String(text), serde_json::Value::Number),
            Err(_) => serde_json::Value::String(text),
        },
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(restore_scientific).collect()),
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.into_iter().map(|(key, value)| (key, restore_scientific(value))).collect())
        }
        other => other,
    }
}

/// `^-?\d+\.?\d*e[+-]\d+$`, case-insensitive.
fn is_scientific(text: &str) -> bool {
    let text = text.strip_prefix('-').unwrap_or(text);
    let Some((mantissa, exponent)) = text.split_once(['e', 'E']) else { return false };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    let exponent_digits = exponent.strip_prefix(['+', '-']).filter(|rest| !rest.is_empty());
    !whole.is_empty() && digits(whole) && digits(fraction) && exponent_digits.is_some_and(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scientific_strings_follow_difys_pattern() {
        for yes in ["1e+10", "-1.5E-3", "2.e+1", "10.25e+02"] {
            assert!(is_scientific(yes), "{yes}");
        }
        for no in ["1e10", ".5e+1", "e+1", "1.5", "abc", "1e+", "--1e+1", "1.2.3e+4"] {
            assert!(!is_scientific(no), "{no}");
        }
    }

    #[test]
    fn outputs_must_be_an_object() {
        assert_eq!(outputs("[1]").unwrap_err(), "Result must be a dict, got list");
        let map = outputs(r#"{"a": "1.5e+3", "b": ["2E-1"], "c": "1e5"}"#).unwrap();
        assert_eq!(map.get("a"), Some(&Value::Float(1500.0)));
        assert_eq!(map.get("b"), Some(&Value::array(vec![Value::Float(0.2)])));
        assert_eq!(map.get("c"), Some(&Value::str("1e5")));
    }
}
