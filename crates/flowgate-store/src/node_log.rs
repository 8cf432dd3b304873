//! The packed node log: a run's node executions that finished within one recorder batch,
//! stored as one `run_nodes` row holding a JSON array (LZ4-compressed when it is not tiny).
//!
//! One row per run instead of one per node is what lets the log keep up with thousands of
//! runs a second (a tenth of the rows and index entries, a twentieth of the bound
//! parameters). Each entry holds its small payloads inline and names the others by hash (they
//! live in `payloads`; see [`crate::payload`]).

use serde::Serialize;

use crate::error::StoreError;
use crate::payload::PayloadRef;
use crate::recorder::NodeRecord;
use crate::runs::NodeExecution;

/// Arrays smaller than this are stored uncompressed.
const COMPRESS_FROM: usize = 256;

/// Builds one segment: the node executions of one run finished within one batch.
pub(crate) struct SegmentBuilder {
    pub seq: i64,
    pub nodes: usize,
    json: Vec<u8>,
}

/// A segment ready to be written.
pub(crate) struct Segment {
    pub seq: i64,
    pub nodes: usize,
    pub codec: &'static str,
    pub data: Vec<u8>,
}

impl SegmentBuilder {
    pub fn new(seq: i64) -> Self {
        Self { seq, nodes: 0, json: Vec::with_capacity(1024) }
    }

    /// Appends node executions written by [`write_entry`] (comma-separated), `count` of them.
    pub fn push_entries(&mut self, entries: &[u8], count: usize) {
        if count == 0 {
            return;
        }
        self.json.push(if self.nodes == 0 { b'[' } else { b',' });
        self.json.extend_from_slice(entries);
        self.nodes += count;
    }

    pub fn finish(mut self) -> Segment {
        self.json.push(b']');
        let (codec, data) =
            if self.json.len() < COMPRESS_FROM { ("raw", self.json) } else { ("lz4", lz4_flex::compress_prepend_size(&self.json)) };
        Segment { seq: self.seq, nodes: self.nodes, codec, data }
    }
}

/// Writes one node execution, with its inputs, process data, outputs and metadata, as an
/// element of the packed array (preceded by a comma when `out` holds elements already).
pub(crate) fn write_entry(out: &mut Vec<u8>, record: &NodeRecord, payloads: &[Option<PayloadRef>; 4]) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"id\":");
    string(out, &record.id);
    out.extend_from_slice(b",\"index\":");
    number(out, record.index);
    out.extend_from_slice(b",\"node_id\":");
    string(out, &record.node_id);
    out.extend_from_slice(b",\"node_type\":");
    string(out, &record.node_type);
    out.extend_from_slice(b",\"title\":");
    string(out, &record.title);
    out.extend_from_slice(b",\"status\":");
    string(out, record.status);
    out.extend_from_slice(b",\"error\":");
    match &record.error {
        Some(error) => string(out, error),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"elapsed_time\":");
    number(out, record.elapsed);
    for (name, payload) in ["inputs", "process_data", "outputs", "execution_metadata"].iter().zip(payloads) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match payload {
            None => out.extend_from_slice(b"null"),
            Some(PayloadRef::Inline(envelope)) => out.extend_from_slice(envelope),
            Some(PayloadRef::Stored(hash)) => {
                out.push(b'"');
                out.extend_from_slice(&hash.hex());
                out.push(b'"');
            }
        }
    }
    out.extend_from_slice(b",\"created_at\":");
    number(out, record.created_at);
    out.extend_from_slice(b",\"finished_at\":");
    number(out, record.finished_at);
    out.push(b'}');
}

fn string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

fn number(out: &mut Vec<u8>, value: impl Serialize) {
    let _ = serde_json::to_writer(out, &value);
}

/// The node executions of a stored segment, their payload fields as stored: a hash (string)
/// naming a stored payload, an envelope (object) kept inline, or null.
pub(crate) fn decode(codec: &str, data: &[u8]) -> Result<Vec<NodeExecution>, StoreError> {
    let json = crate::payload::open(codec, data)?;
    serde_json::from_slice(&json).map_err(|error| StoreError::Corrupt(format!("node log: {error}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::payload::PayloadHash;

    fn record(index: u64, title: &str) -> NodeRecord {
        NodeRecord {
            id: Arc::from(format!("exec-{index}")),
            index,
            node_id: Arc::from(format!("node-{index}")),
            node_type: Arc::from("code"),
            title: Arc::from(title),
            status: "failed",
            error: Some("boom \"quoted\"".into()),
            elapsed: 0.25,
            inputs: None,
            process_data: None,
            outputs: None,
            metadata: None,
            created_at: 100,
            finished_at: 101,
        }
    }

    #[test]
    fn segments_round_trip_small_and_compressed() {
        for count in [1, 40] {
            let mut builder = SegmentBuilder::new(3);
            let payloads = if count == 1 {
                [None, None, None, None]
            } else {
                [Some(PayloadRef::Stored(PayloadHash([0xaa; 32]))), None, Some(PayloadRef::Inline(br#"{"v":{"a":1}}"#.to_vec())), None]
            };
            // Entries arrive in more than one piece when a run's nodes finish over several batches.
            let half = count / 2;
            for range in [0..half, half..count] {
                let mut entries = Vec::new();
                for index in range.clone() {
                    write_entry(&mut entries, &record(index, "Ünïcode title"), &payloads);
                }
                builder.push_entries(&entries, range.count());
            }
            let segment = builder.finish();
            assert_eq!((segment.seq, segment.nodes), (3, count as usize));
            if count > 1 {
                assert_eq!(segment.codec, "lz4");
                assert!(segment.data.len() < 40 * 200, "{} bytes: repeated keys compress", segment.data.len());
            }
            let nodes = decode(segment.codec, &segment.data).unwrap();
            assert_eq!(nodes.len(), count as usize);
            let last = nodes.last().unwrap();
            assert_eq!(last.index, count as i64 - 1);
            assert_eq!(last.title, "Ünïcode title");
            assert_eq!(last.error.as_deref(), Some("boom \"quoted\""));
            if count > 1 {
                assert_eq!(last.inputs, Some(serde_json::Value::from("aa".repeat(32))));
                assert_eq!(last.outputs, Some(serde_json::json!({"v": {"a": 1}})));
            } else {
                assert_eq!(last.inputs, None);
            }
            assert_eq!(last.process_data, None);
            assert_eq!((last.created_at, last.finished_at), (100, Some(101)));
        }
    }

    #[test]
    fn a_damaged_segment_is_reported_not_panicked_on() {
        assert!(matches!(decode("raw", b"[{\"id\": 1"), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode("lz4", b"\xff\xff\xff\x7f"), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode("zstd", b"[]"), Err(StoreError::Corrupt(_))));
    }
}
