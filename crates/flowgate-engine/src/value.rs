//! Runtime values with Python's type distinctions (int vs float, bool vs int, ordered dicts).
//!
//! Values are shared, not copied: strings, lists, objects and files sit behind `Arc`, so a large
//! table passed through many nodes exists once in memory.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::ser::{SerializeMap, SerializeSeq};

use crate::pyfmt;

pub type Map = IndexMap<Arc<str>, Value, foldhash::fast::RandomState>;

pub fn new_map() -> Map {
    Map::default()
}

pub fn map_with_capacity(capacity: usize) -> Map {
    Map::with_capacity_and_hasher(capacity, foldhash::fast::RandomState::default())
}

#[derive(Debug, Clone, Default)]
pub enum Value {
    #[default]
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Arc<str>),
    Array(Arc<Vec<Value>>),
    Object(Arc<Map>),
    File(Arc<File>),
}

/// Dify's segment types, as far as the engine needs them (declared variable types, node
/// output types, array element kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegType {
    None,
    String,
    Number,
    Integer,
    Float,
    Boolean,
    Object,
    Secret,
    File,
    ArrayAny,
    ArrayString,
    ArrayNumber,
    ArrayObject,
    ArrayBoolean,
    ArrayFile,
}

impl SegType {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "none" => Self::None,
            "string" => Self::String,
            "number" => Self::Number,
            "integer" => Self::Integer,
            "float" => Self::Float,
            "boolean" => Self::Boolean,
            "object" => Self::Object,
            "secret" => Self::Secret,
            "file" => Self::File,
            "array[any]" | "array" => Self::ArrayAny,
            "array[string]" => Self::ArrayString,
            "array[number]" => Self::ArrayNumber,
            "array[object]" => Self::ArrayObject,
            "array[boolean]" => Self::ArrayBoolean,
            "array[file]" => Self::ArrayFile,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Float => "float",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Secret => "secret",
            Self::File => "file",
            Self::ArrayAny => "array[any]",
            Self::ArrayString => "array[string]",
            Self::ArrayNumber => "array[number]",
            Self::ArrayObject => "array[object]",
            Self::ArrayBoolean => "array[boolean]",
            Self::ArrayFile => "array[file]",
        }
    }

    pub fn is_array(self) -> bool {
        matches!(self, Self::ArrayAny | Self::ArrayString | Self::ArrayNumber | Self::ArrayObject | Self::ArrayBoolean | Self::ArrayFile)
    }

    pub fn element(self) -> Option<Self> {
        Some(match self {
            Self::ArrayString => Self::String,
            Self::ArrayNumber => Self::Number,
            Self::ArrayObject => Self::Object,
            Self::ArrayBoolean => Self::Boolean,
            Self::ArrayFile => Self::File,
            _ => return None,
        })
    }

    /// Whether `value` fits this declared type (numbers accept int and float, as Dify does).
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Self::None, Value::None) => true,
            (Self::String | Self::Secret, Value::Str(_)) => true,
            (Self::Number, Value::Int(_) | Value::Float(_)) => true,
            (Self::Integer, Value::Int(_)) => true,
            (Self::Float, Value::Float(_)) => true,
            (Self::Boolean, Value::Bool(_)) => true,
            (Self::Object, Value::Object(_)) => true,
            (Self::File, Value::File(_)) => true,
            (Self::ArrayAny, Value::Array(_)) => true,
            (array, Value::Array(items)) if array.is_array() => {
                let Some(element) = array.element() else {
                    return false;
                };
                items.iter().all(|item| element.accepts(item))
            }
            _ => false,
        }
    }
}

impl Value {
    pub fn str(text: impl Into<Arc<str>>) -> Self {
        Self::Str(text.into())
    }

    pub fn array(items: Vec<Value>) -> Self {
        Self::Array(Arc::new(items))
    }

    pub fn object(map: Map) -> Self {
        Self::Object(Arc::new(map))
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Self::Object(map) => Some(map),
            _ => None,
        }
    }

    /// The segment type Dify would infer for this value (`build_segment`).
    pub fn seg_type(&self) -> SegType {
        match self {
            Self::None => SegType::None,
            Self::Bool(_) => SegType::Boolean,
            Self::Int(_) => SegType::Integer,
            Self::Float(_) => SegType::Float,
            Self::Str(_) => SegType::String,
            Self::Object(_) => SegType::Object,
            Self::File(_) => SegType::File,
            Self::Array(items) => array_type(items),
        }
    }

    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Self::None => false,
            Self::Bool(flag) => *flag,
            Self::Int(int) => *int != 0,
            Self::Float(float) => *float != 0.0,
            Self::Str(text) => !text.is_empty(),
            Self::Array(items) => !items.is_empty(),
            Self::Object(map) => !map.is_empty(),
            Self::File(_) => true,
        }
    }

    /// Python `==` (so `1 == 1.0` and `True == 1`, dicts compare without regard to order).
    pub fn py_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Self::None, Self::None) => true,
            (Self::Str(a), Self::Str(b)) => a == b,
            (Self::Array(a), Self::Array(b)) => a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.py_eq(y)),
            (Self::Object(a), Self::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(key, value)| b.get(key).is_some_and(|other| value.py_eq(other)))
            }
            (Self::File(a), Self::File(b)) => a == b,
            (a, b) => match (a.as_number(), b.as_number()) {
                (Some(x), Some(y)) => x.eq_number(y),
                _ => false,
            },
        }
    }

    /// Numbers, with Python's bool-is-an-int rule.
    pub fn as_number(&self) -> Option<Number> {
        match self {
            Self::Bool(flag) => Some(Number::Int(i64::from(*flag))),
            Self::Int(int) => Some(Number::Int(*int)),
            Self::Float(float) => Some(Number::Float(*float)),
            _ => None,
        }
    }

    /// Dify's `Segment.text`: how a value reads inside plain text (HTTP bodies, conditions).
    pub fn to_text(&self) -> String {
        match self {
            Self::None | Self::File(_) => String::new(),
            Self::Str(text) => text.to_string(),
            Self::Object(_) => pyfmt::json_dumps(self, None),
            Self::Array(items) if items.is_empty() => String::new(),
            Self::Array(items) => match array_type(items) {
                SegType::ArrayString => pyfmt::json_dumps(self, None),
                SegType::ArrayFile => String::new(),
                _ => pyfmt::py_str(self),
            },
            other => pyfmt::py_str(other),
        }
    }

    /// Dify's `Segment.markdown`: how a value reads in an answer.
    pub fn to_markdown(&self) -> String {
        match self {
            Self::None => String::new(),
            Self::Str(text) => text.to_string(),
            Self::Object(_) => pyfmt::json_dumps(self, Some(2)),
            Self::File(file) => file.markdown(),
            Self::Array(items) if array_type(items) == SegType::ArrayFile && !items.is_empty() => items
                .iter()
                .filter_map(|item| match item {
                    Self::File(file) => Some(file.markdown()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Self::Array(items) => {
                let mut out = String::new();
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push('\n');
                    }
                    out.push_str("- ");
                    out.push_str(&pyfmt::py_str(item));
                }
                out
            }
            other => pyfmt::py_str(other),
        }
    }

    /// A short description for error messages.
    pub fn kind_name(&self) -> &'static str {
        self.seg_type().as_str()
    }
}

/// Dify's type inference for lists: uniform element types give typed arrays, mixed ints and
/// floats give `array[number]`, anything else `array[any]` (including empty lists).
pub fn array_type(items: &[Value]) -> SegType {
    let mut kind: Option<SegType> = None;
    for item in items {
        let item_type = match item {
            Value::Array(_) => SegType::ArrayAny,
            other => other.seg_type(),
        };
        match kind {
            None => kind = Some(item_type),
            Some(existing) if existing == item_type => {}
            Some(existing) => {
                let numeric = |kind: SegType| matches!(kind, SegType::Integer | SegType::Float | SegType::Number);
                if numeric(existing) && numeric(item_type) {
                    kind = Some(SegType::Number);
                } else {
                    return SegType::ArrayAny;
                }
            }
        }
    }
    match kind {
        None | Some(SegType::ArrayAny | SegType::None) => SegType::ArrayAny,
        Some(SegType::String) => SegType::ArrayString,
        Some(SegType::Integer | SegType::Float | SegType::Number) => SegType::ArrayNumber,
        Some(SegType::Boolean) => SegType::ArrayBoolean,
        Some(SegType::Object) => SegType::ArrayObject,
        Some(SegType::File) => SegType::ArrayFile,
        Some(_) => SegType::ArrayAny,
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Self::Int(int) => int as f64,
            Self::Float(float) => float,
        }
    }

    pub fn eq_number(self, other: Number) -> bool {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a == b,
            (a, b) => a.as_f64() == b.as_f64(),
        }
    }

    pub fn partial_cmp(self, other: Number) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            Self::Int(int) => Value::Int(int),
            Self::Float(float) => Value::Float(float),
        }
    }
}

/// A file reference as Dify's `File` model carries it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    pub id: Option<String>,
    /// image | document | audio | video | custom
    pub kind: String,
    /// remote_url | local_file | tool_file | datasource_file
    pub transfer_method: String,
    pub remote_url: Option<String>,
    /// The backing record (upload or tool file) for non-remote files.
    pub related_id: Option<String>,
    pub filename: Option<String>,
    /// With the leading dot, e.g. `.png`.
    pub extension: Option<String>,
    pub mime_type: Option<String>,
    pub size: i64,
    /// Where the file can be fetched from (signed URL for stored files, the remote URL otherwise).
    pub url: Option<String>,
}

pub const FILE_MODEL_IDENTITY: &str = "__dify__file__";

impl File {
    pub fn markdown(&self) -> String {
        let url = self.url.clone().unwrap_or_default();
        if self.kind == "image" {
            format!("![{}]({url})", self.filename.clone().unwrap_or_default())
        } else {
            format!("[{}]({url})", self.filename.clone().unwrap_or_else(|| url.clone()))
        }
    }

    /// `File.to_dict()`.
    pub fn to_map(&self) -> Map {
        let text = |value: &Option<String>| value.as_ref().map_or(Value::None, |text| Value::str(text.as_str()));
        let mut map = map_with_capacity(12);
        map.insert("dify_model_identity".into(), Value::str(FILE_MODEL_IDENTITY));
        map.insert("id".into(), text(&self.id));
        map.insert("type".into(), Value::str(self.kind.as_str()));
        map.insert("transfer_method".into(), Value::str(self.transfer_method.as_str()));
        map.insert("remote_url".into(), text(&self.remote_url));
        map.insert("reference".into(), text(&self.related_id));
        map.insert("filename".into(), text(&self.filename));
        map.insert("extension".into(), text(&self.extension));
        map.insert("mime_type".into(), text(&self.mime_type));
        map.insert("size".into(), Value::Int(self.size));
        map.insert("related_id".into(), text(&self.related_id));
        map.insert("url".into(), text(&self.url));
        map
    }

    /// A file attribute as selectors and list filters read it (`[node, file, "name"]`).
    pub fn attribute(&self, name: &str) -> Option<Value> {
        let text = |value: &Option<String>| value.as_ref().map_or(Value::None, |text| Value::str(text.as_str()));
        Some(match name {
            "type" => Value::str(self.kind.as_str()),
            "size" => Value::Int(self.size),
            "name" => text(&self.filename),
            "mime_type" => text(&self.mime_type),
            "transfer_method" => Value::str(self.transfer_method.as_str()),
            "url" => text(&self.url.clone().or_else(|| self.remote_url.clone())),
            "extension" => text(&self.extension),
            "related_id" => text(&self.related_id),
            _ => return None,
        })
    }

    /// Reads a file from its `to_dict()` shape (or a Service API file mapping already resolved).
    pub fn from_map(map: &Map) -> Option<Self> {
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
        let transfer_method = text("transfer_method")?;
        Some(Self {
            id: text("id"),
            kind: text("type").unwrap_or_else(|| "custom".into()),
            transfer_method,
            remote_url: text("remote_url"),
            related_id: text("related_id").or_else(|| text("reference")),
            filename: text("filename"),
            extension: text("extension"),
            mime_type: text("mime_type"),
            size: match map.get("size") {
                Some(Value::Int(size)) => *size,
                _ => -1,
            },
            url: text("url"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// conversions

impl From<&serde_json::Value> for Value {
    fn from(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Self::None,
            serde_json::Value::Bool(flag) => Self::Bool(*flag),
            serde_json::Value::Number(number) => number_value(number),
            serde_json::Value::String(text) => Self::str(text.as_str()),
            serde_json::Value::Array(items) => Self::array(items.iter().map(Value::from).collect()),
            serde_json::Value::Object(map) => Self::object(map_from_json(map)),
        }
    }
}

pub fn map_from_json(map: &serde_json::Map<String, serde_json::Value>) -> Map {
    let mut out = map_with_capacity(map.len());
    for (key, item) in map {
        out.insert(Arc::from(key.as_str()), Value::from(item));
    }
    out
}

/// Reads JSON (or any self-describing format) straight into engine values, so a request body
/// is copied once, into the values a run shares, instead of going through `serde_json::Value`.
impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Value, E> {
        Ok(Value::Bool(flag))
    }

    fn visit_i64<E>(self, int: i64) -> Result<Value, E> {
        Ok(Value::Int(int))
    }

    fn visit_u64<E>(self, int: u64) -> Result<Value, E> {
        Ok(i64::try_from(int).map_or(Value::Float(int as f64), Value::Int))
    }

    fn visit_f64<E>(self, float: f64) -> Result<Value, E> {
        Ok(Value::Float(float))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value, E> {
        Ok(Value::str(text))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = map_with_capacity(access.size_hint().unwrap_or(0).min(4096));
        while let Some(key) = access.next_key_seed(KeyVisitor)? {
            map.insert(key, access.next_value()?);
        }
        Ok(Value::object(map))
    }
}

/// Object keys go straight from the input into an `Arc<str>`.
struct KeyVisitor;

impl<'de> serde::de::DeserializeSeed<'de> for KeyVisitor {
    type Value = Arc<str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Arc<str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyVisitor {
    type Value = Arc<str>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Arc<str>, E> {
        Ok(Arc::from(key))
    }
}

impl From<serde_json::Value> for Value {
    fn from(value: serde_json::Value) -> Self {
        Self::from(&value)
    }
}

fn number_value(number: &serde_json::Number) -> Value {
    if let Some(int) = number.as_i64() { Value::Int(int) } else { Value::Float(number.as_f64().unwrap_or(f64::NAN)) }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::str(text)
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Str(Arc::from(text))
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Self {
        Self::Bool(flag)
    }
}

impl From<i64> for Value {
    fn from(int: i64) -> Self {
        Self::Int(int)
    }
}

impl From<Map> for Value {
    fn from(map: Map) -> Self {
        Self::object(map)
    }
}

impl Value {
    /// A plain JSON value (files become their `to_dict()` mapping).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.serialize_none(),
            Self::Bool(flag) => serializer.serialize_bool(*flag),
            Self::Int(int) => serializer.serialize_i64(*int),
            Self::Float(float) => serializer.serialize_f64(*float),
            Self::Str(text) => serializer.serialize_str(text),
            Self::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(map) => serialize_map(map, serializer),
            Self::File(file) => serialize_map(&file.to_map(), serializer),
        }
    }
}

fn serialize_map<S: serde::Serializer>(map: &Map, serializer: S) -> Result<S::Ok, S::Error> {
    let mut out = serializer.serialize_map(Some(map.len()))?;
    for (key, value) in map {
        out.serialize_entry(&**key, value)?;
    }
    out.end()
}

/// A `Map` serialized as a JSON object.
pub struct MapRef<'a>(pub &'a Map);

impl serde::Serialize for MapRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_map(self.0, serializer)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        pyfmt::write_py_repr(&mut out, self, true);
        let _ = f.write_str(&out);
        Ok(())
    }
}

/// Builds a `Map` from pairs; handy for node outputs.
pub fn map_of<const N: usize>(pairs: [(&'static str, Value); N]) -> Map {
    let mut map = map_with_capacity(N);
    for (name, value) in pairs {
        map.insert(key(name), value);
    }
    map
}

/// A map key or name the engine writes on every run (`output`, `actual_value`, …), allocated
/// once per thread instead of once per use.
pub fn key(name: &'static str) -> Arc<str> {
    thread_local! {
        static KEYS: std::cell::RefCell<HashMap<(usize, usize), Arc<str>, foldhash::fast::FixedState>> = Default::default();
    }
    KEYS.with(|keys| keys.borrow_mut().entry((name.as_ptr() as usize, name.len())).or_insert_with(|| Arc::from(name)).clone())
}

/// A selector written as Dify's error messages print it: `['node', 'var']`.
pub fn python_list_of_strings(parts: &[String]) -> String {
    let mut out = String::from("[");
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        pyfmt::write_str_repr(&mut out, part);
    }
    out.push(']');
    out
}

/// Equality for tests and caches: Python equality plus the same inferred type, so `1` and
/// `1.0` differ (their JSON differs too).
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.py_eq(other) && self.seg_type() == other.seg_type()
    }
}
