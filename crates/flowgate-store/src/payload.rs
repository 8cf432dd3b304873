//! Run-log payloads, stored by content.
//!
//! A payload (a run's inputs, a node's outputs, …) is written as an envelope
//! `{"v": value, "r": [[path…, hash], …]}`: every large value inside it (≥ [`LARGE_VALUE`]
//! bytes of JSON) is cut out, stored as a payload of its own and referenced by its SHA-256 at
//! its JSON path. A 374 KB table that sixty nodes pass along is therefore stored once per
//! distinct content, however many nodes and runs carry it, and each node's row only points at
//! it. Envelopes are compressed with LZ4 and kept in the database, or in the blob store when
//! they are large.
//!
//! Values in a run are shared `Arc`s: the encoder remembers the hash of each large value it
//! has seen by identity, so the same table is serialised and hashed once, not once per node.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use flowgate_engine::value::{Map, Value};
use serde_json::Value as Json;

use crate::error::StoreError;

/// Values whose JSON is at least this long are stored separately and shared.
pub const LARGE_VALUE: usize = 4 * 1024;
/// Envelopes smaller than this are stored uncompressed.
const COMPRESS_FROM: usize = 256;
/// Compressed envelopes larger than this go to the blob store instead of the database.
const BLOB_FROM: usize = 256 * 1024;
/// Large values remembered by identity.
const IDENTITY_MEMO: usize = 4096;

/// One payload ready to be written.
#[derive(Debug, Clone)]
pub struct EncodedPayload {
    pub hash: String,
    /// Uncompressed size of the envelope.
    pub size: usize,
    pub codec: &'static str,
    pub bytes: Bytes,
    /// Whether the bytes belong in the blob store (`payloads/<hash>`).
    pub in_blob: bool,
}

#[derive(Debug, Clone)]
enum PathPart {
    Key(std::sync::Arc<str>),
    Index(usize),
}

/// Encodes payloads, remembering large values it already encoded.
#[derive(Default)]
pub struct PayloadEncoder {
    /// Pointer of a shared large value → its hash. The entry keeps the value alive so the
    /// pointer cannot be reused by another value while it is remembered.
    by_identity: HashMap<usize, (Value, String)>,
    order: VecDeque<usize>,
}

struct Encoding<'a> {
    encoder: &'a mut PayloadEncoder,
    out: Vec<u8>,
    path: Vec<PathPart>,
    refs: Vec<(Vec<PathPart>, String)>,
    new_payloads: &'a mut Vec<EncodedPayload>,
}

impl PayloadEncoder {
    /// Encodes a map (node inputs, outputs…) and returns its hash; new payloads (the envelope
    /// and any large values not seen before) are appended to `new_payloads`.
    pub fn encode_map(&mut self, map: &Map, new_payloads: &mut Vec<EncodedPayload>) -> String {
        let mut encoding = Encoding { encoder: self, out: Vec::with_capacity(256), path: Vec::new(), refs: Vec::new(), new_payloads };
        encoding.write_map(map);
        encoding.finish()
    }

    pub fn encode_value(&mut self, value: &Value, new_payloads: &mut Vec<EncodedPayload>) -> String {
        let mut encoding = Encoding { encoder: self, out: Vec::with_capacity(256), path: Vec::new(), refs: Vec::new(), new_payloads };
        encoding.write_value(value, false);
        encoding.finish()
    }

    fn remembered(&self, value: &Value) -> Option<&str> {
        identity(value).and_then(|pointer| self.by_identity.get(&pointer)).map(|(_, hash)| hash.as_str())
    }

    fn remember(&mut self, value: &Value, hash: &str) {
        let Some(pointer) = identity(value) else { return };
        if self.by_identity.insert(pointer, (value.clone(), hash.to_owned())).is_none() {
            self.order.push_back(pointer);
        }
        while self.order.len() > IDENTITY_MEMO {
            if let Some(oldest) = self.order.pop_front() {
                self.by_identity.remove(&oldest);
            }
        }
    }
}

fn identity(value: &Value) -> Option<usize> {
    match value {
        Value::Str(text) => Some(text.as_ptr() as usize),
        Value::Array(items) => Some(std::sync::Arc::as_ptr(items) as usize),
        Value::Object(map) => Some(std::sync::Arc::as_ptr(map) as usize),
        _ => None,
    }
}

impl Encoding<'_> {
    fn finish(mut self) -> String {
        let body = std::mem::take(&mut self.out);
        let envelope = envelope(&body, &self.refs);
        let payload = seal(envelope);
        let hash = payload.hash.clone();
        self.new_payloads.push(payload);
        hash
    }

    fn write_map(&mut self, map: &Map) {
        self.out.push(b'{');
        for (index, (key, value)) in map.iter().enumerate() {
            if index > 0 {
                self.out.push(b',');
            }
            write_json_string(&mut self.out, key);
            self.out.push(b':');
            self.path.push(PathPart::Key(key.clone()));
            self.write_value(value, true);
            self.path.pop();
        }
        self.out.push(b'}');
    }

    /// Writes a value, cutting it out as a shared payload when it is large (never the root).
    fn write_value(&mut self, value: &Value, may_extract: bool) {
        if may_extract && let Some(hash) = self.encoder.remembered(value) {
            let hash = hash.to_owned();
            self.reference(hash);
            return;
        }
        let start = self.out.len();
        match value {
            Value::Array(items) => {
                self.out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        self.out.push(b',');
                    }
                    self.path.push(PathPart::Index(index));
                    self.write_value(item, true);
                    self.path.pop();
                }
                self.out.push(b']');
            }
            Value::Object(map) => self.write_map(map),
            Value::Str(text) => write_json_string(&mut self.out, text),
            scalar => {
                // Scalars and files: serde's output is exact and small.
                let _ = serde_json::to_writer(&mut self.out, scalar);
            }
        }
        if !may_extract || self.out.len() - start < LARGE_VALUE || identity(value).is_none() {
            return;
        }
        // Large: store the value on its own. References recorded inside it move with it.
        let inner_refs: Vec<(Vec<PathPart>, String)> = {
            let depth = self.path.len();
            let (inner, outer): (Vec<_>, Vec<_>) = std::mem::take(&mut self.refs)
                .into_iter()
                .partition(|(path, _)| path.len() > depth && path[..depth].iter().zip(&self.path).all(|(a, b)| same_part(a, b)));
            self.refs = outer;
            inner.into_iter().map(|(path, hash)| (path[depth..].to_vec(), hash)).collect()
        };
        let body = self.out.split_off(start);
        let payload = seal(envelope(&body, &inner_refs));
        let hash = payload.hash.clone();
        self.new_payloads.push(payload);
        self.encoder.remember(value, &hash);
        self.reference(hash);
    }

    fn reference(&mut self, hash: String) {
        self.out.extend_from_slice(b"null");
        self.refs.push((self.path.clone(), hash));
    }
}

fn same_part(a: &PathPart, b: &PathPart) -> bool {
    match (a, b) {
        (PathPart::Key(a), PathPart::Key(b)) => a == b,
        (PathPart::Index(a), PathPart::Index(b)) => a == b,
        _ => false,
    }
}

fn write_json_string(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(out, text);
}

fn envelope(body: &[u8], refs: &[(Vec<PathPart>, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(body);
    if !refs.is_empty() {
        out.extend_from_slice(b",\"r\":[");
        for (index, (path, hash)) in refs.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.push(b'[');
            for part in path {
                match part {
                    PathPart::Key(key) => write_json_string(&mut out, key),
                    PathPart::Index(index) => out.extend_from_slice(index.to_string().as_bytes()),
                }
                out.push(b',');
            }
            write_json_string(&mut out, hash);
            out.push(b']');
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// Hashes and compresses an envelope.
fn seal(envelope: Vec<u8>) -> EncodedPayload {
    let digest = ring::digest::digest(&ring::digest::SHA256, &envelope);
    let hash: String = digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
    let size = envelope.len();
    let (codec, bytes) = if size < COMPRESS_FROM {
        ("raw", Bytes::from(envelope))
    } else {
        ("lz4", Bytes::from(lz4_flex::compress_prepend_size(&envelope)))
    };
    let in_blob = bytes.len() >= BLOB_FROM;
    EncodedPayload { hash, size, codec, bytes, in_blob }
}

/// Decompresses a stored envelope.
pub(crate) fn open(codec: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    match codec {
        "raw" => Ok(bytes.to_vec()),
        "lz4" => lz4_flex::decompress_size_prepended(bytes).map_err(|error| StoreError::Corrupt(format!("payload: {error}"))),
        other => Err(StoreError::Corrupt(format!("unknown payload codec {other}"))),
    }
}

/// A reference inside an envelope: the JSON path of a hole and the hash of what fills it.
pub(crate) type Reference = (Vec<Json>, String);

/// An envelope read back: its value with holes, and the references that fill them.
pub(crate) fn parse_envelope(bytes: &[u8]) -> Result<(Json, Vec<Reference>), StoreError> {
    let mut envelope: serde_json::Map<String, Json> =
        serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt(format!("payload: {error}")))?;
    let value = envelope.remove("v").unwrap_or(Json::Null);
    let mut refs = Vec::new();
    if let Some(Json::Array(items)) = envelope.remove("r") {
        for item in items {
            let Json::Array(mut parts) = item else { continue };
            let Some(Json::String(hash)) = parts.pop() else { continue };
            refs.push((parts, hash));
        }
    }
    Ok((value, refs))
}

/// Puts `value` at `path` inside `target`.
pub(crate) fn place(target: &mut Json, path: &[Json], value: Json) {
    let Some((last, parents)) = path.split_last() else {
        *target = value;
        return;
    };
    let mut current = target;
    for part in parents {
        let next = match (current, part) {
            (Json::Object(map), Json::String(key)) => map.get_mut(key),
            (Json::Array(items), Json::Number(index)) => index.as_u64().and_then(|index| items.get_mut(index as usize)),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return,
        }
    }
    match (current, last) {
        (Json::Object(map), Json::String(key)) => {
            map.insert(key.clone(), value);
        }
        (Json::Array(items), Json::Number(index)) => {
            if let Some(slot) = index.as_u64().and_then(|index| items.get_mut(index as usize)) {
                *slot = value;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flowgate_engine::value::map_of;

    use super::*;

    fn decode(payloads: &[EncodedPayload], hash: &str) -> Json {
        let payload = payloads.iter().find(|payload| payload.hash == hash).expect("payload written");
        let (mut value, refs) = parse_envelope(&open(payload.codec, &payload.bytes).unwrap()).unwrap();
        for (path, hash) in refs {
            place(&mut value, &path, decode(payloads, &hash));
        }
        value
    }

    #[test]
    fn small_payloads_round_trip_as_one_envelope() {
        let mut encoder = PayloadEncoder::default();
        let mut written = Vec::new();
        let map = map_of([("a", Value::Int(1)), ("b", Value::str("x\"y")), ("c", Value::array(vec![Value::Bool(true), Value::None]))]);
        let hash = encoder.encode_map(&map, &mut written);
        assert_eq!(written.len(), 1);
        assert_eq!(decode(&written, &hash), serde_json::json!({"a": 1, "b": "x\"y", "c": [true, null]}));
    }

    #[test]
    fn a_large_shared_value_is_stored_once_and_referenced() {
        let table = Value::str("row,".repeat(50_000));
        let mut encoder = PayloadEncoder::default();
        let mut written = Vec::new();
        let first = encoder.encode_map(&map_of([("output", table.clone())]), &mut written);
        let second = encoder.encode_map(&map_of([("master", table.clone()), ("sku", Value::str("SKU1"))]), &mut written);
        // The table once, plus two small envelopes that point at it.
        assert_eq!(written.len(), 3);
        assert!(written.iter().filter(|payload| payload.size > LARGE_VALUE).count() == 1);
        assert_eq!(decode(&written, &first)["output"], Json::String("row,".repeat(50_000)));
        assert_eq!(decode(&written, &second)["master"].as_str().map(str::len), Some(200_000));
        // A different Arc with the same content hashes the same.
        let mut again = Vec::new();
        PayloadEncoder::default().encode_map(&map_of([("output", Value::str("row,".repeat(50_000)))]), &mut again);
        assert!(again.iter().any(|payload| payload.hash == written[0].hash));
    }

    #[test]
    fn nested_large_values_keep_their_inner_references() {
        let big = Value::str("z".repeat(LARGE_VALUE * 2));
        let inner = Value::object(map_of([("big", big.clone()), ("n", Value::Int(2))]));
        let mut items = vec![inner.clone(); 3];
        items.push(Value::str("tail"));
        let outer = map_of([("list", Value::array(items)), ("k", Value::Float(1.5))]);
        let mut written = Vec::new();
        let hash = PayloadEncoder::default().encode_map(&outer, &mut written);
        let decoded = decode(&written, &hash);
        assert_eq!(decoded["list"][2]["big"].as_str().map(str::len), Some(LARGE_VALUE * 2));
        assert_eq!(decoded["list"][3], "tail");
        assert_eq!(decoded["k"], 1.5);
        let arc_count = Arc::strong_count(match &big {
            Value::Str(text) => text,
            _ => unreachable!(),
        });
        assert!(arc_count >= 2, "the encoder keeps remembered values alive");
    }
}
