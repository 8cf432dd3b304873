//! Deserializers that accept the loose shapes real exports contain.
//!
//! Dify validates with pydantic in lax mode, and exports from different versions disagree on
//! details: numbers where strings are expected, `null` where a list is expected, booleans as
//! strings. These helpers accept what Dify accepts (and a little more) and fall back to the
//! field's default for `null`.

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::Value;

pub fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => String::new(),
        value => scalar_to_string(value).map_err(serde::de::Error::custom)?,
    })
}

pub fn opt_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        value => scalar_to_string(value).map(Some).map_err(serde::de::Error::custom),
    }
}

fn scalar_to_string(value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        other => Err(format!("expected a string, found {}", kind(&other))),
    }
}

pub fn boolean<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(opt_boolean(deserializer)?.unwrap_or(false))
}

pub fn opt_boolean<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    let flag = match &value {
        Value::Null => return Ok(None),
        Value::Bool(flag) => *flag,
        Value::Number(number) if number.as_i64() == Some(0) => false,
        Value::Number(number) if number.as_i64() == Some(1) => true,
        Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "y" | "t" => true,
            "false" | "0" | "no" | "off" | "n" | "f" | "" => false,
            _ => {
                return Err(serde::de::Error::custom(format!("expected a boolean, found {text:?}")));
            }
        },
        other => {
            return Err(serde::de::Error::custom(format!("expected a boolean, found {}", kind(other))));
        }
    };
    Ok(Some(flag))
}

pub fn opt_int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    match &value {
        Value::Null => Ok(None),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                Ok(Some(int))
            } else if let Some(float) = number.as_f64().filter(|float| float.fract() == 0.0 && float.abs() < 9.0e15) {
                Ok(Some(float as i64))
            } else {
                Err(serde::de::Error::custom(format!("expected an integer, found {number}")))
            }
        }
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text) => {
            text.trim().parse::<i64>().map(Some).map_err(|_| serde::de::Error::custom(format!("expected an integer, found {text:?}")))
        }
        other => Err(serde::de::Error::custom(format!("expected an integer, found {}", kind(other)))),
    }
}

/// A variable selector: a list of path segments. Numeric segments (unquoted node ids) are
/// turned into strings; `null` is an empty selector.
pub fn selector<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(opt_selector(deserializer)?.unwrap_or_default())
}

pub fn opt_selector<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::Array(items) => {
            items.into_iter().map(|item| scalar_to_string(item).map_err(serde::de::Error::custom)).collect::<Result<Vec<_>, _>>().map(Some)
        }
        other => Err(serde::de::Error::custom(format!("expected a selector (a list of strings), found {}", kind(&other)))),
    }
}

pub fn selectors<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    struct Item(#[serde(deserialize_with = "selector")] Vec<String>);
    let items: Option<Vec<Item>> = Option::deserialize(deserializer)?;
    Ok(items.unwrap_or_default().into_iter().map(|item| item.0).collect())
}

/// A list that may be written as `null`.
pub fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A value that may be written as `null`, meaning "use the default".
pub fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
