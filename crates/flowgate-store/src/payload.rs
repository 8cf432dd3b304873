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
use std::fmt;

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
/// Hashes remembered as stored; forgotten wholesale past this (they are re-written
/// idempotently).
const STORED_MEMO: usize = 200_000;
/// A stored payload's expiry is pushed forward only when it would lapse this much earlier.
const EXPIRY_SLACK: i64 = 86_400;
/// Node payloads whose envelope is shorter than this are kept inline in the node log instead of
/// being stored by hash: a reference (64 hex digits, plus a `payloads` row) would cost as much
/// as the value, and hashing every small map of every node was most of what logging a run
/// cost. Shared and large values are always stored by hash.
pub const INLINE_BELOW: usize = 512;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A payload's SHA-256; stored and shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadHash(pub [u8; 32]);

impl PayloadHash {
    fn of(bytes: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        Self(hash)
    }

    /// The hex digits, without allocating.
    pub fn hex(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (index, byte) in self.0.iter().enumerate() {
            text[index * 2] = DIGITS[usize::from(byte >> 4)];
            text[index * 2 + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        text
    }
}

impl fmt::Display for PayloadHash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits are ASCII.
        formatter.write_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}

impl fmt::Debug for PayloadHash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl serde::Serialize for PayloadHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}

/// How a node's payload is kept: inline (the envelope's JSON) or by hash.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadRef {
    Inline(Vec<u8>),
    Stored(PayloadHash),
}

/// A payload that has to be written (new, or its expiry must move forward). Its envelope is
/// compressed only then: most payloads of a busy app were stored by an earlier run.
#[derive(Debug, Clone)]
pub struct NewPayload {
    pub hash: PayloadHash,
    pub expires_at: i64,
    envelope: Vec<u8>,
}

/// A payload as it is written.
#[derive(Debug, Clone)]
pub struct StoredPayload {
    pub hash: PayloadHash,
    pub expires_at: i64,
    /// Uncompressed size of the envelope.
    pub size: usize,
    pub codec: &'static str,
    pub bytes: Bytes,
    /// Whether the bytes belong in the blob store (`payloads/<hash>`).
    pub in_blob: bool,
}

impl NewPayload {
    /// Compresses the envelope for storage.
    pub fn seal(self) -> StoredPayload {
        let size = self.envelope.len();
        let (codec, bytes) = if size < COMPRESS_FROM {
            ("raw", Bytes::from(self.envelope))
        } else {
            ("lz4", Bytes::from(lz4_flex::compress_prepend_size(&self.envelope)))
        };
        let in_blob = bytes.len() >= BLOB_FROM;
        StoredPayload { hash: self.hash, expires_at: self.expires_at, size, codec, bytes, in_blob }
    }
}

#[derive(Debug, Clone, Copy)]
enum PathPart<'v> {
    Key(&'v str),
    Index(usize),
}

impl PartialEq for PathPart<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Key(a), Self::Key(b)) => a == b,
            (Self::Index(a), Self::Index(b)) => a == b,
            _ => false,
        }
    }
}

/// Payload hashes stored (or handed out to be stored), with the expiry they were stored with;
/// shared by every run's encoder, so content one run stored is not written again by the next.
#[derive(Default)]
pub struct StoredSet {
    hashes: std::sync::Mutex<FastMap<PayloadHash, i64>>,
}

impl StoredSet {
    fn stored_until(&self, hash: PayloadHash, expires_at: i64) -> bool {
        self.hashes.lock().is_ok_and(|hashes| hashes.get(&hash).is_some_and(|stored| *stored + EXPIRY_SLACK >= expires_at))
    }

    /// Whether a payload has to be written for a run kept until `expires_at`; if so it is
    /// remembered as stored from now on.
    fn needs_writing(&self, hash: PayloadHash, expires_at: i64) -> bool {
        let Ok(mut hashes) = self.hashes.lock() else { return true };
        if hashes.get(&hash).is_some_and(|stored| *stored + EXPIRY_SLACK >= expires_at) {
            return false;
        }
        if hashes.len() >= STORED_MEMO {
            hashes.clear();
        }
        hashes.insert(hash, expires_at);
        true
    }
}

/// Encodes one run's payloads: it remembers the large values it encoded (by identity, so a
/// table that sixty nodes pass along is serialised once) and consults the shared
/// [`StoredSet`] so what is stored already is not written again.
#[derive(Default)]
pub struct PayloadEncoder {
    /// Pointer of a shared large value → its hash. The entry keeps the value alive so the
    /// pointer cannot be reused by another value while it is remembered; the run holds these
    /// values anyway, and the encoder lives no longer than the run.
    by_identity: FastMap<usize, (Value, PayloadHash)>,
    order: VecDeque<usize>,
    stored: std::sync::Arc<StoredSet>,
    /// The envelope being written, reused from one payload to the next.
    buffer: Vec<u8>,
}

struct Encoding<'e, 'v> {
    encoder: &'e mut PayloadEncoder,
    expires_at: i64,
    out: Vec<u8>,
    path: Vec<PathPart<'v>>,
    refs: Vec<(Vec<PathPart<'v>>, PayloadHash)>,
    new_payloads: &'e mut Vec<NewPayload>,
}

impl PayloadEncoder {
    pub fn new(stored: std::sync::Arc<StoredSet>) -> Self {
        Self { stored, ..Self::default() }
    }

    /// Encodes a map (node inputs, outputs…) that must be kept until `expires_at` and returns
    /// its hash; what has to be written for it (the envelope and any large values inside it,
    /// unless stored already) is appended to `new_payloads`.
    pub fn encode_map(&mut self, map: &Map, expires_at: i64, new_payloads: &mut Vec<NewPayload>) -> PayloadHash {
        match self.encode(map, expires_at, new_payloads, 0) {
            PayloadRef::Stored(hash) => hash,
            // Nothing is shorter than zero bytes.
            PayloadRef::Inline(envelope) => PayloadHash::of(&envelope),
        }
    }

    /// Like [`Self::encode_map`], for a node's payload: small envelopes come back inline.
    pub fn encode_node_map(&mut self, map: &Map, expires_at: i64, new_payloads: &mut Vec<NewPayload>) -> PayloadRef {
        self.encode(map, expires_at, new_payloads, INLINE_BELOW)
    }

    fn encode(&mut self, map: &Map, expires_at: i64, new_payloads: &mut Vec<NewPayload>, inline_below: usize) -> PayloadRef {
        let mut out = std::mem::take(&mut self.buffer);
        out.clear();
        out.extend_from_slice(b"{\"v\":");
        let mut encoding = Encoding { encoder: self, expires_at, out, path: Vec::new(), refs: Vec::new(), new_payloads };
        encoding.write_map(map);
        encoding.finish(inline_below)
    }

    fn remembered(&self, value: &Value) -> Option<PayloadHash> {
        identity(value).and_then(|pointer| self.by_identity.get(&pointer)).map(|(_, hash)| *hash)
    }

    fn remember(&mut self, value: &Value, hash: PayloadHash) {
        let Some(pointer) = identity(value) else { return };
        if self.by_identity.insert(pointer, (value.clone(), hash)).is_none() {
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

impl<'v> Encoding<'_, 'v> {
    fn finish(mut self, inline_below: usize) -> PayloadRef {
        let mut out = std::mem::take(&mut self.out);
        write_refs(&mut out, &self.refs);
        out.push(b'}');
        let kept = if out.len() < inline_below {
            PayloadRef::Inline(out.clone())
        } else {
            let hash = PayloadHash::of(&out);
            if self.encoder.stored.needs_writing(hash, self.expires_at) {
                self.new_payloads.push(NewPayload { hash, expires_at: self.expires_at, envelope: out.clone() });
            }
            PayloadRef::Stored(hash)
        };
        self.encoder.buffer = out;
        kept
    }

    fn write_map(&mut self, map: &'v Map) {
        self.out.push(b'{');
        for (index, (key, value)) in map.iter().enumerate() {
            if index > 0 {
                self.out.push(b',');
            }
            write_json_string(&mut self.out, key);
            self.out.push(b':');
            self.path.push(PathPart::Key(key));
            self.write_value(value);
            self.path.pop();
        }
        self.out.push(b'}');
    }

    /// Writes a value, cutting it out as a shared payload when it is large.
    fn write_value(&mut self, value: &'v Value) {
        // A value seen before is referenced without serialising it again, unless its payload
        // must be written again (to keep it as long as this run).
        if let Some(hash) = self.encoder.remembered(value)
            && self.encoder.stored.stored_until(hash, self.expires_at)
        {
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
                    self.write_value(item);
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
        if self.out.len() - start < LARGE_VALUE || identity(value).is_none() {
            return;
        }
        // Large: store the value on its own. References recorded inside it move with it.
        let depth = self.path.len();
        let (inner, outer): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.refs).into_iter().partition(|(path, _)| path.len() > depth && path[..depth] == self.path[..]);
        self.refs = outer;
        let inner: Vec<_> = inner.into_iter().map(|(path, hash)| (path[depth..].to_vec(), hash)).collect();
        let mut envelope = Vec::with_capacity(self.out.len() - start + 16);
        envelope.extend_from_slice(b"{\"v\":");
        envelope.extend_from_slice(&self.out[start..]);
        self.out.truncate(start);
        write_refs(&mut envelope, &inner);
        envelope.push(b'}');
        let hash = PayloadHash::of(&envelope);
        if self.encoder.stored.needs_writing(hash, self.expires_at) {
            self.new_payloads.push(NewPayload { hash, expires_at: self.expires_at, envelope });
        }
        self.encoder.remember(value, hash);
        self.reference(hash);
    }

    fn reference(&mut self, hash: PayloadHash) {
        self.out.extend_from_slice(b"null");
        self.refs.push((self.path.clone(), hash));
    }
}

fn write_json_string(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(out, text);
}

/// Appends `,"r":[[path…, hash], …]` when there are references.
fn write_refs(out: &mut Vec<u8>, refs: &[(Vec<PathPart<'_>>, PayloadHash)]) {
    if refs.is_empty() {
        return;
    }
    out.extend_from_slice(b",\"r\":[");
    for (index, (path, hash)) in refs.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for part in path {
            match part {
                PathPart::Key(key) => write_json_string(out, key),
                PathPart::Index(index) => out.extend_from_slice(index.to_string().as_bytes()),
            }
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(&hash.hex());
        out.push(b'"');
        out.push(b']');
    }
    out.push(b']');
}

/// Decompresses a stored envelope.
pub(crate) fn open(codec: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    match codec {
        "raw" => Ok(bytes.to_vec()),
        "lz4" => {
            // LZ4 expands at most ~255×: a larger stated size is damage, not a reason to allocate it.
            let stated = bytes.get(..4).map_or(0, |size| u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize);
            if stated > bytes.len().saturating_mul(255) + 64 {
                return Err(StoreError::Corrupt(format!("payload: compressed {} bytes cannot hold {stated}", bytes.len())));
            }
            lz4_flex::decompress_size_prepended(bytes).map_err(|error| StoreError::Corrupt(format!("payload: {error}")))
        }
        other => Err(StoreError::Corrupt(format!("unknown payload codec {other}"))),
    }
}

/// A reference inside an envelope: the JSON path of a hole and the hash of what fills it.
pub(crate) type Reference = (Vec<Json>, String);

/// An envelope read back: its value with holes, and the references that fill them.
pub(crate) fn parse_envelope(bytes: &[u8]) -> Result<(Json, Vec<Reference>), StoreError> {
    let envelope: Json = serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt(format!("payload: {error}")))?;
    split_envelope(envelope)
}

/// An envelope already parsed (as the node log holds small ones inline).
pub(crate) fn split_envelope(envelope: Json) -> Result<(Json, Vec<Reference>), StoreError> {
    let Json::Object(mut envelope) = envelope else {
        return Err(StoreError::Corrupt("payload: an envelope must be an object".into()));
    };
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

    fn decode(payloads: &[NewPayload], hash: PayloadHash) -> Json {
        let payload = payloads.iter().find(|payload| payload.hash == hash).expect("payload written").clone().seal();
        let (mut value, refs) = parse_envelope(&open(payload.codec, &payload.bytes).unwrap()).unwrap();
        for (path, reference) in refs {
            let reference = payloads.iter().find(|payload| payload.hash.to_string() == reference).expect("referenced payload").hash;
            place(&mut value, &path, decode(payloads, reference));
        }
        value
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        assert_eq!(PayloadHash::of(b"abc").to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(serde_json::to_string(&PayloadHash::of(b"")).unwrap().len(), 66);
    }

    #[test]
    fn small_payloads_round_trip_as_one_envelope() {
        let mut encoder = PayloadEncoder::default();
        let mut written = Vec::new();
        let map = map_of([("a", Value::Int(1)), ("b", Value::str("x\"y")), ("c", Value::array(vec![Value::Bool(true), Value::None]))]);
        let hash = encoder.encode_map(&map, 100, &mut written);
        assert_eq!(written.len(), 1);
        assert_eq!(decode(&written, hash), serde_json::json!({"a": 1, "b": "x\"y", "c": [true, null]}));
    }

    #[test]
    fn small_node_payloads_stay_inline_and_large_ones_are_stored() {
        let mut encoder = PayloadEncoder::default();
        let mut written = Vec::new();
        let small = map_of([("result", Value::Bool(true))]);
        assert_eq!(encoder.encode_node_map(&small, 100, &mut written), PayloadRef::Inline(br#"{"v":{"result":true}}"#.to_vec()));
        assert!(written.is_empty());
        let table = Value::str("row,".repeat(2_000));
        // The map's envelope is small but the table inside it is stored, and referenced inline.
        let PayloadRef::Inline(envelope) = encoder.encode_node_map(&map_of([("output", table)]), 100, &mut written) else {
            panic!("a one-reference envelope is small");
        };
        assert_eq!(written.len(), 1);
        let (value, refs) = parse_envelope(&envelope).unwrap();
        assert_eq!(value, serde_json::json!({"output": null}));
        assert_eq!(refs, vec![(vec![Json::from("output")], written[0].hash.to_string())]);
        let medium = map_of([("text", Value::str("m".repeat(INLINE_BELOW)))]);
        assert!(matches!(encoder.encode_node_map(&medium, 100, &mut written), PayloadRef::Stored(_)));
        assert_eq!(written.len(), 2);
    }

    #[test]
    fn a_payload_already_stored_is_not_written_again_unless_it_would_expire_too_soon() {
        let mut encoder = PayloadEncoder::default();
        let map = map_of([("a", Value::Int(1))]);
        let mut written = Vec::new();
        let first = encoder.encode_map(&map, 1_000_000, &mut written);
        assert_eq!(encoder.encode_map(&map, 1_000_000 + EXPIRY_SLACK, &mut written), first);
        assert_eq!(written.len(), 1, "the same content within the expiry slack is stored once");
        encoder.encode_map(&map, 1_000_001 + EXPIRY_SLACK, &mut written);
        assert_eq!(written.len(), 2, "a later expiry is written again to move it forward");
        assert_eq!(written[1].expires_at, 1_000_001 + EXPIRY_SLACK);
    }

    #[test]
    fn a_large_shared_value_is_stored_once_and_referenced() {
        let table = Value::str("row,".repeat(50_000));
        let mut encoder = PayloadEncoder::default();
        let mut written = Vec::new();
        let first = encoder.encode_map(&map_of([("output", table.clone())]), 100, &mut written);
        let second = encoder.encode_map(&map_of([("master", table.clone()), ("sku", Value::str("SKU1"))]), 100, &mut written);
        // The table once, plus two small envelopes that point at it.
        assert_eq!(written.len(), 3);
        assert!(written.iter().filter(|payload| payload.envelope.len() > LARGE_VALUE).count() == 1);
        assert_eq!(decode(&written, first)["output"], Json::String("row,".repeat(50_000)));
        assert_eq!(decode(&written, second)["master"].as_str().map(str::len), Some(200_000));
        // A different Arc with the same content hashes the same.
        let mut again = Vec::new();
        PayloadEncoder::default().encode_map(&map_of([("output", Value::str("row,".repeat(50_000)))]), 100, &mut again);
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
        let hash = PayloadEncoder::default().encode_map(&outer, 100, &mut written);
        let decoded = decode(&written, hash);
        assert_eq!(decoded["list"][2]["big"].as_str().map(str::len), Some(LARGE_VALUE * 2));
        assert_eq!(decoded["list"][3], "tail");
        assert_eq!(decoded["k"], 1.5);
        let arc_count = Arc::strong_count(match &big {
            Value::Str(text) => text,
            _ => unreachable!(),
        });
        assert!(arc_count >= 2, "the encoder keeps remembered values alive");
    }

    #[test]
    fn a_damaged_compressed_payload_is_an_error_not_a_huge_allocation() {
        assert!(matches!(open("lz4", b"\xff\xff\xff\x7f\x00"), Err(StoreError::Corrupt(_))));
    }
}
