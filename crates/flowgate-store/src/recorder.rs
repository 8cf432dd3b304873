//! The run recorder: takes run events off the request path and writes them in batches.
//!
//! Runs hand the recorder their start, each finished node and their end. One background task
//! encodes payloads (see [`crate::payload`]) and writes everything that arrived in the last few
//! milliseconds in one transaction, so a busy server makes one commit per batch, not several
//! per run. A run that starts and ends within one batch is written as a single row.
//!
//! What is written follows the app's [`LogDetail`]: everything (`full`), rows without payloads
//! (`metadata`), rows without payloads unless the run failed (`errors`), or nothing (`none`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use flowgate_engine::event::{ContainerCompleted, NodeFinished, NodeStatus, RunSummary};
use flowgate_engine::value::Map;
use tokio::sync::{mpsc, oneshot};

use crate::apps::LogDetail;
use crate::db::{Store, write};
use crate::error::StoreError;
use crate::payload::{EncodedPayload, PayloadEncoder};

/// How a run's log starts.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub id: String,
    pub app_id: String,
    pub version_id: String,
    pub task_id: String,
    pub end_user_id: Option<String>,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub created_from: String,
    pub detail: LogDetail,
    pub retention_days: i64,
    pub inputs: Arc<Map>,
    pub instance_id: String,
    pub created_at: i64,
}

/// A finished node (or iteration/loop container) as the run log keeps it.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub id: Arc<str>,
    pub index: u64,
    pub node_id: Arc<str>,
    pub node_type: Arc<str>,
    pub title: Arc<str>,
    pub status: &'static str,
    pub error: Option<String>,
    pub elapsed: f64,
    pub inputs: Option<Arc<Map>>,
    pub process_data: Option<Arc<Map>>,
    pub outputs: Option<Arc<Map>>,
    pub metadata: Option<Arc<Map>>,
    pub created_at: i64,
    pub finished_at: i64,
}

impl NodeRecord {
    pub fn from_finished(event: &NodeFinished) -> Self {
        Self {
            id: event.info.execution_id.clone(),
            index: event.info.index,
            node_id: event.info.node_id.clone(),
            node_type: event.info.node_type.clone(),
            title: event.info.title.clone(),
            status: status_name(event.status),
            error: event.error.clone(),
            elapsed: event.elapsed,
            inputs: event.inputs.clone(),
            process_data: event.process_data.clone(),
            outputs: event.outputs.clone(),
            metadata: event.metadata.clone(),
            created_at: event.info.created_at,
            finished_at: event.finished_at,
        }
    }

    pub fn from_container(event: &ContainerCompleted, finished_at: i64) -> Self {
        Self {
            id: event.info.execution_id.clone(),
            index: event.info.index,
            node_id: event.info.node_id.clone(),
            node_type: event.info.node_type.clone(),
            title: event.info.title.clone(),
            status: status_name(event.status),
            error: event.error.clone(),
            elapsed: event.elapsed,
            inputs: Some(event.inputs.clone()),
            process_data: None,
            outputs: Some(event.outputs.clone()),
            metadata: Some(event.metadata.clone()),
            created_at: event.info.created_at,
            finished_at,
        }
    }
}

fn status_name(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Succeeded => "succeeded",
        NodeStatus::Failed => "failed",
        NodeStatus::Exception => "exception",
        NodeStatus::Retry => "retry",
    }
}

enum Op {
    Started(Box<RunStart>),
    Node { run_id: Arc<str>, record: Box<NodeRecord> },
    Finished { run_id: Arc<str>, summary: Box<RunSummary> },
    Flush(oneshot::Sender<()>),
}

/// Handle to the recorder task; clone it freely.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Op>,
    stats: Arc<RecorderStats>,
}

/// What the recorder is doing, for metrics and admission control.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Operations handed over and not yet written.
    pub backlog: AtomicUsize,
    pub batches: AtomicU64,
    pub rows_written: AtomicU64,
    pub write_errors: AtomicU64,
}

/// The longest a batch waits to fill up.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// The most operations in one transaction.
const BATCH_SIZE: usize = 4096;

impl Recorder {
    /// Starts the recorder task on the current runtime.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(RecorderStats::default());
        tokio::spawn(run(store, rx, stats.clone()));
        Self { tx, stats }
    }

    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    fn send(&self, op: Op) {
        self.stats.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(op).is_err() {
            self.stats.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn run_started(&self, start: RunStart) {
        self.send(Op::Started(Box::new(start)));
    }

    pub fn node_finished(&self, run_id: Arc<str>, record: NodeRecord) {
        self.send(Op::Node { run_id, record: Box::new(record) });
    }

    pub fn run_finished(&self, run_id: Arc<str>, summary: RunSummary) {
        self.send(Op::Finished { run_id, summary: Box::new(summary) });
    }

    /// Waits until everything handed over so far is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done));
        let _ = wait.await;
    }
}

/// A run being recorded: what has to stay in memory between its start and its end.
struct OpenRun {
    detail: LogDetail,
    expires_at: i64,
    /// Written as a `running` row already (its end becomes an update).
    row_written: bool,
    start: Option<Box<RunStart>>,
    /// Nodes held back until the run's end decides whether they are kept (`errors`).
    held_nodes: Vec<NodeRecord>,
}

/// One transaction's worth of rows.
#[derive(Default)]
struct Batch {
    payloads: Vec<EncodedPayload>,
    payload_expiry: HashMap<String, i64>,
    run_inserts: Vec<RunRow>,
    run_updates: Vec<RunRow>,
    nodes: Vec<NodeRow>,
    flushes: Vec<oneshot::Sender<()>>,
    ops: usize,
}

struct RunRow {
    id: String,
    start: Option<Box<RunStart>>,
    status: String,
    detail: &'static str,
    inputs_hash: Option<String>,
    outputs_hash: Option<String>,
    error: Option<String>,
    elapsed: f64,
    total_tokens: i64,
    total_steps: i64,
    exceptions: i64,
    finished_at: Option<i64>,
    expires_at: i64,
}

struct NodeRow {
    run_id: Arc<str>,
    record: NodeRecord,
    hashes: [Option<String>; 4],
}

struct Writer {
    store: Store,
    encoder: PayloadEncoder,
    open: HashMap<Arc<str>, OpenRun>,
    /// Payload hashes known to be stored, with the expiry they were stored with.
    stored: HashMap<String, i64>,
}

/// Remembered stored hashes; forgotten wholesale past this (they are re-written idempotently).
const STORED_MEMO: usize = 200_000;
/// A stored payload's expiry is pushed forward only when it would lapse this much earlier.
const EXPIRY_SLACK: i64 = 86_400;

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Op>, stats: Arc<RecorderStats>) {
    let mut writer = Writer { store, encoder: PayloadEncoder::default(), open: HashMap::new(), stored: HashMap::new() };
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        writer.take(first, &mut batch);
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.ops < BATCH_SIZE && batch.flushes.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(op)) => writer.take(op, &mut batch),
                Ok(None) | Err(_) => break,
            }
        }
        // Whatever else is already waiting goes in too.
        while batch.ops < BATCH_SIZE {
            match rx.try_recv() {
                Ok(op) => writer.take(op, &mut batch),
                Err(_) => break,
            }
        }
        writer.write_running_rows(&mut batch);
        let ops = batch.ops;
        let rows = batch.run_inserts.len() + batch.run_updates.len() + batch.nodes.len();
        let flushes = std::mem::take(&mut batch.flushes);
        match writer.write(batch).await {
            Ok(()) => {
                stats.rows_written.fetch_add(rows as u64, Ordering::Relaxed);
            }
            Err(error) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, rows, "the run log could not be written");
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.backlog.fetch_sub(ops, Ordering::Relaxed);
        for done in flushes {
            let _ = done.send(());
        }
    }
}

impl Writer {
    fn take(&mut self, op: Op, batch: &mut Batch) {
        batch.ops += 1;
        match op {
            Op::Flush(done) => batch.flushes.push(done),
            Op::Started(start) => {
                if start.detail == LogDetail::None {
                    return;
                }
                let expires_at = start.created_at + start.retention_days.max(1) * 86_400;
                self.open.insert(
                    Arc::from(start.id.as_str()),
                    OpenRun { detail: start.detail, expires_at, row_written: false, start: Some(start), held_nodes: Vec::new() },
                );
            }
            Op::Node { run_id, record } => {
                let Some(open) = self.open.get_mut(&run_id) else { return };
                match open.detail {
                    LogDetail::Full => {
                        let expires_at = open.expires_at;
                        let hashes = self.encode_node(&record, expires_at, batch);
                        batch.nodes.push(NodeRow { run_id, record: *record, hashes });
                    }
                    LogDetail::Metadata => batch.nodes.push(NodeRow { run_id, record: *record, hashes: Default::default() }),
                    LogDetail::Errors => open.held_nodes.push(*record),
                    LogDetail::None => {}
                }
            }
            Op::Finished { run_id, summary } => {
                let Some(mut open) = self.open.remove(&run_id) else { return };
                let failed = summary.status.as_str() != "succeeded";
                let keep_payloads = open.detail == LogDetail::Full || (open.detail == LogDetail::Errors && failed);
                for record in std::mem::take(&mut open.held_nodes) {
                    let hashes = if keep_payloads { self.encode_node(&record, open.expires_at, batch) } else { Default::default() };
                    batch.nodes.push(NodeRow { run_id: run_id.clone(), record, hashes });
                }
                let inputs_hash =
                    if keep_payloads { open.start.as_ref().map(|start| self.encode(&start.inputs, open.expires_at, batch)) } else { None };
                let outputs_hash = keep_payloads.then(|| self.encode(&summary.outputs, open.expires_at, batch));
                let row = RunRow {
                    id: run_id.to_string(),
                    status: summary.status.as_str().to_owned(),
                    detail: open.detail.as_str(),
                    inputs_hash,
                    outputs_hash,
                    error: summary.error.clone(),
                    elapsed: summary.elapsed,
                    total_tokens: summary.total_tokens,
                    total_steps: summary.total_steps as i64,
                    exceptions: i64::from(summary.exceptions_count),
                    finished_at: Some(summary.finished_at),
                    expires_at: open.expires_at,
                    start: None,
                };
                if open.row_written {
                    batch.run_updates.push(row);
                } else {
                    batch.run_inserts.push(RunRow { start: open.start.take(), ..row });
                }
            }
        }
    }

    /// Runs still going when a batch is written get their `running` row now, so a crash
    /// leaves a trace; a run that starts and ends within one batch is written once.
    fn write_running_rows(&mut self, batch: &mut Batch) {
        let pending: Vec<(Arc<str>, Box<RunStart>, LogDetail, i64)> = self
            .open
            .iter_mut()
            .filter(|(_, open)| !open.row_written)
            .filter_map(|(id, open)| {
                open.row_written = true;
                open.start.clone().map(|start| (id.clone(), start, open.detail, open.expires_at))
            })
            .collect();
        for (run_id, start, detail, expires_at) in pending {
            let inputs_hash = (detail == LogDetail::Full).then(|| self.encode(&start.inputs, expires_at, batch));
            batch.run_inserts.push(RunRow {
                id: run_id.to_string(),
                status: "running".into(),
                detail: detail.as_str(),
                inputs_hash,
                outputs_hash: None,
                error: None,
                elapsed: 0.0,
                total_tokens: 0,
                total_steps: 0,
                exceptions: 0,
                finished_at: None,
                expires_at,
                start: Some(start),
            });
        }
    }

    fn encode(&mut self, map: &Map, expires_at: i64, batch: &mut Batch) -> String {
        let mut fresh = Vec::new();
        let hash = self.encoder.encode_map(map, &mut fresh);
        for payload in fresh {
            self.queue_payload(payload, expires_at, batch);
        }
        hash
    }

    fn encode_node(&mut self, record: &NodeRecord, expires_at: i64, batch: &mut Batch) -> [Option<String>; 4] {
        let mut encode = |map: &Option<Arc<Map>>| map.as_ref().map(|map| self.encode(map, expires_at, batch));
        [encode(&record.inputs), encode(&record.process_data), encode(&record.outputs), encode(&record.metadata)]
    }

    fn queue_payload(&mut self, payload: EncodedPayload, expires_at: i64, batch: &mut Batch) {
        if let Some(stored) = self.stored.get(&payload.hash)
            && *stored + EXPIRY_SLACK >= expires_at
        {
            return;
        }
        match batch.payload_expiry.get_mut(&payload.hash) {
            Some(expiry) => *expiry = (*expiry).max(expires_at),
            None => {
                batch.payload_expiry.insert(payload.hash.clone(), expires_at);
                batch.payloads.push(payload);
            }
        }
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StoreError> {
        // Large payloads go to the blob store before the rows that point at them.
        for payload in batch.payloads.iter().filter(|payload| payload.in_blob) {
            self.store.blobs.put(&format!("payloads/{}", payload.hash), payload.bytes.clone()).await?;
        }
        let store = &self.store;
        write!(store, |pool| {
            let mut tx = pool.begin().await.map_err(|error| store.error(error))?;
            for payload in &batch.payloads {
                let expires_at = batch.payload_expiry.get(&payload.hash).copied().unwrap_or_default();
                sqlx::query(
                    "INSERT INTO payloads (hash, size, codec, data, blob_key, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (hash) DO UPDATE SET expires_at = excluded.expires_at WHERE payloads.expires_at < excluded.expires_at",
                )
                .bind(&payload.hash)
                .bind(payload.size as i64)
                .bind(payload.codec)
                .bind((!payload.in_blob).then(|| payload.bytes.to_vec()))
                .bind(payload.in_blob.then(|| format!("payloads/{}", payload.hash)))
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(|error| store.error(error))?;
            }
            for row in &batch.run_inserts {
                let Some(start) = &row.start else { continue };
                sqlx::query(
                    "INSERT INTO workflow_runs (id, app_id, version_id, task_id, end_user_id, conversation_id, message_id, created_from, \
                     status, detail, inputs_hash, outputs_hash, error, elapsed_time, total_tokens, total_steps, exceptions_count, \
                     instance_id, created_at, finished_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
                )
                .bind(&row.id)
                .bind(&start.app_id)
                .bind(&start.version_id)
                .bind(&start.task_id)
                .bind(&start.end_user_id)
                .bind(&start.conversation_id)
                .bind(&start.message_id)
                .bind(&start.created_from)
                .bind(&row.status)
                .bind(row.detail)
                .bind(&row.inputs_hash)
                .bind(&row.outputs_hash)
                .bind(&row.error)
                .bind(row.elapsed)
                .bind(row.total_tokens)
                .bind(row.total_steps)
                .bind(row.exceptions)
                .bind(&start.instance_id)
                .bind(start.created_at)
                .bind(row.finished_at)
                .bind(row.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(|error| store.error(error))?;
            }
            for row in &batch.nodes {
                let record = &row.record;
                sqlx::query(
                    "INSERT INTO node_executions (id, run_id, position, node_id, node_type, title, status, error, elapsed_time, \
                     inputs_hash, process_data_hash, outputs_hash, metadata_hash, created_at, finished_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&*record.id)
                .bind(&*row.run_id)
                .bind(record.index as i64)
                .bind(&*record.node_id)
                .bind(&*record.node_type)
                .bind(&*record.title)
                .bind(record.status)
                .bind(&record.error)
                .bind(record.elapsed)
                .bind(&row.hashes[0])
                .bind(&row.hashes[1])
                .bind(&row.hashes[2])
                .bind(&row.hashes[3])
                .bind(record.created_at)
                .bind(record.finished_at)
                .execute(&mut *tx)
                .await
                .map_err(|error| store.error(error))?;
            }
            for row in &batch.run_updates {
                sqlx::query(
                    "UPDATE workflow_runs SET status = $2, outputs_hash = $3, inputs_hash = COALESCE($4, inputs_hash), error = $5, \
                     elapsed_time = $6, total_tokens = $7, total_steps = $8, exceptions_count = $9, finished_at = $10 WHERE id = $1",
                )
                .bind(&row.id)
                .bind(&row.status)
                .bind(&row.outputs_hash)
                .bind(&row.inputs_hash)
                .bind(&row.error)
                .bind(row.elapsed)
                .bind(row.total_tokens)
                .bind(row.total_steps)
                .bind(row.exceptions)
                .bind(row.finished_at)
                .execute(&mut *tx)
                .await
                .map_err(|error| store.error(error))?;
            }
            tx.commit().await.map_err(|error| store.error(error))
        })?;
        if self.stored.len() > STORED_MEMO {
            self.stored.clear();
        }
        for (hash, expires_at) in batch.payload_expiry {
            self.stored.insert(hash, expires_at);
        }
        Ok(())
    }
}
