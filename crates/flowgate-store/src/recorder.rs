//! The run recorder: takes run events off the request path and writes them in batches.
//!
//! A run hands its [`RunRecording`] its start, each finished node and its end. The recording
//! encodes them on the run's own thread, right away (payloads by content, see
//! [`crate::payload`]; node entries for the packed node log, see [`crate::node_log`]): the
//! values are hot in cache there and are freed by the thread that allocated them, which moving
//! them to another thread made several times dearer. The recorder thread gathers whatever
//! arrived while the last batch was being written into the next one (group commit), and the
//! writing task writes each batch in one transaction, so a busy server makes one commit per
//! batch, not several per run. A run that ends before it is half a second old is written as a
//! single row; a longer one gets a `running` row first, so a crash leaves a trace.
//!
//! [`RunRecording::run_finished`] answers when the run's row and final state are committed:
//! the server acknowledges a run (a blocking answer, `workflow_finished`, `message_end`) only
//! then, so every read API shows it at once, on every replica. A batch that fails is written
//! again, in order, until it is in; meanwhile [`Recorder::health`] reports the run log as
//! failing (new runs are refused, `/ready` fails), and nothing is ever dropped.
//!
//! What is written follows the app's [`LogDetail`]: everything (`full`), rows without payloads
//! (`metadata`), rows without payloads unless the run failed (`errors`), or nothing (`none`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowgate_engine::event::{ContainerCompleted, NodeFinished, NodeStatus, RunSummary};
use flowgate_engine::value::Map;
use tokio::sync::{mpsc, oneshot};

use crate::apps::LogDetail;
use crate::db::{Store, write};
use crate::error::StoreError;
use crate::node_log::{self, Segment, SegmentBuilder};
use crate::payload::{NewPayload, PayloadEncoder, PayloadHash, StoredPayload, StoredSet};

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

/// A run's row as its start describes it.
struct StartRow {
    app_id: String,
    version_id: String,
    task_id: String,
    end_user_id: Option<String>,
    conversation_id: Option<String>,
    message_id: Option<String>,
    created_from: String,
    instance_id: String,
    created_at: i64,
}

/// How a run's row ends.
struct EndRow {
    status: &'static str,
    error: Option<String>,
    elapsed: f64,
    total_tokens: i64,
    total_steps: i64,
    exceptions: i64,
    finished_at: i64,
    /// Set when the inputs are kept only now (`errors` and the run failed).
    inputs_hash: Option<PayloadHash>,
    outputs_hash: Option<PayloadHash>,
}

enum Op {
    Started {
        run_id: Arc<str>,
        detail: LogDetail,
        expires_at: i64,
        start: Box<StartRow>,
        inputs_hash: Option<PayloadHash>,
    },
    /// Node-log entries (see [`node_log::write_entry`]) of `count` node executions.
    Nodes {
        run_id: Arc<str>,
        entries: Vec<u8>,
        count: usize,
    },
    /// Payloads a run's entries or rows refer to.
    Payloads(Vec<NewPayload>),
    /// The run's `running` row is wanted now (its id is about to be shown to a client).
    Announce {
        run_id: Arc<str>,
        committed: oneshot::Sender<Result<(), RunLogError>>,
    },
    Finished {
        run_id: Arc<str>,
        end: Box<EndRow>,
        committed: oneshot::Sender<Result<(), RunLogError>>,
    },
    Flush(oneshot::Sender<()>),
}

/// Why the run log does not take writes now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunLogError {
    #[error("the disk holding the run log is full")]
    DiskFull,
    #[error("the run log cannot be written: {0}")]
    Failing(String),
    #[error("the run log has stopped")]
    Stopped,
}

/// Resolves when a run's row and final state are committed (or the run log has stopped).
pub struct Committed(oneshot::Receiver<Result<(), RunLogError>>);

impl Committed {
    pub async fn wait(self) -> Result<(), RunLogError> {
        self.0.await.unwrap_or(Err(RunLogError::Stopped))
    }

    /// Nothing to wait for (a run the app keeps no log of).
    pub fn now() -> Self {
        let (done, wait) = oneshot::channel();
        let _ = done.send(Ok(()));
        Self(wait)
    }
}

/// Handle to the recorder; clone it freely.
#[derive(Clone)]
pub struct Recorder {
    tx: std::sync::mpsc::Sender<Op>,
    stats: Arc<RecorderStats>,
    stored: Arc<StoredSet>,
}

/// What the recorder is doing, for metrics and admission control.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Operations handed over and not yet written.
    pub backlog: AtomicUsize,
    pub batches: AtomicU64,
    pub rows_written: AtomicU64,
    pub write_errors: AtomicU64,
    /// Woken after every batch, for whoever waits for the backlog to shrink.
    pub batch_done: tokio::sync::Notify,
    /// Set while a batch cannot be written (it is being tried again).
    failing: AtomicBool,
    last_error: Mutex<Option<RunLogError>>,
}

impl RecorderStats {
    fn failed(&self, error: RunLogError) {
        self.failing.store(true, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed)
            && let Ok(mut last) = self.last_error.lock()
        {
            *last = None;
        }
    }
}

/// The most operations in one transaction.
const BATCH_SIZE: usize = 4096;
/// While the writer is busy, how often the gatherer looks whether it is free for the next
/// batch (the batch keeps filling meanwhile).
const WRITER_BUSY_POLL: Duration = Duration::from_micros(500);
/// A run still going after this long gets its `running` row (a shorter one is written once).
const RUNNING_ROW_AFTER: Duration = Duration::from_millis(500);
/// How long a failed batch waits before it is written again, doubling up to the last.
const RETRY_DELAYS: [Duration; 6] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Rows per multi-row INSERT. A batch is cut into statements of these sizes only, so the
/// databases see a handful of distinct statements, each prepared once per connection and
/// reused, instead of a new one to parse for every batch. 21 columns × 256 rows stays far
/// below both databases' limit on bound parameters (SQLite 32,766; PostgreSQL 65,535).
const STATEMENT_ROWS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// `rows` cut into chunks of the sizes in [`STATEMENT_ROWS`], largest first.
fn statement_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = STATEMENT_ROWS.into_iter().find(|size| *size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

impl Recorder {
    /// Starts the recorder: batching on a thread of its own, writing on the current runtime.
    pub fn start(store: Store) -> Result<Self, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(RecorderStats::default());
        let stored = Arc::new(StoredSet::default());
        let (batches, pending) = mpsc::channel(1);
        let writer_idle = Arc::new(AtomicBool::new(true));
        let idle = writer_idle.clone();
        std::thread::Builder::new()
            .name("flowgate-recorder".into())
            .spawn(move || gather_batches(&rx, &batches, &idle))
            .map_err(|error| StoreError::Config(format!("cannot start the run recorder: {error}")))?;
        tokio::spawn(write_batches(store, pending, stats.clone(), writer_idle));
        Ok(Self { tx, stats, stored })
    }

    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    /// Whether the run log takes writes: an error while a batch is being tried again.
    pub fn health(&self) -> Result<(), RunLogError> {
        if !self.stats.failing.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = self.stats.last_error.lock().ok().and_then(|last| last.clone());
        Err(last.unwrap_or_else(|| RunLogError::Failing("a batch is being written again".into())))
    }

    fn send(&self, op: Op) {
        self.stats.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(op).is_err() {
            self.stats.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Starts recording a run; `None` when its app keeps no run log.
    pub fn run_started(&self, start: RunStart) -> Option<RunRecording> {
        if start.detail == LogDetail::None {
            return None;
        }
        let run_id: Arc<str> = Arc::from(start.id.as_str());
        let expires_at = start.created_at + start.retention_days.max(1) * 86_400;
        let mut recording = RunRecording {
            recorder: self.clone(),
            run_id: run_id.clone(),
            detail: start.detail,
            expires_at,
            encoder: PayloadEncoder::new(self.stored.clone()),
            held: Vec::new(),
            held_inputs: None,
        };
        let inputs_hash = match start.detail {
            LogDetail::Full => Some(recording.encode(&start.inputs)),
            LogDetail::Errors => {
                recording.held_inputs = Some(start.inputs.clone());
                None
            }
            LogDetail::Metadata | LogDetail::None => None,
        };
        let row = StartRow {
            app_id: start.app_id,
            version_id: start.version_id,
            task_id: start.task_id,
            end_user_id: start.end_user_id,
            conversation_id: start.conversation_id,
            message_id: start.message_id,
            created_from: start.created_from,
            instance_id: start.instance_id,
            created_at: start.created_at,
        };
        self.send(Op::Started { run_id, detail: start.detail, expires_at, start: Box::new(row), inputs_hash });
        Some(recording)
    }

    /// Waits until everything handed over so far is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done));
        let _ = wait.await;
    }
}

/// One run being recorded, owned by the run.
pub struct RunRecording {
    recorder: Recorder,
    run_id: Arc<str>,
    detail: LogDetail,
    expires_at: i64,
    encoder: PayloadEncoder,
    /// `errors`: nodes and inputs held until the run's end decides whether payloads are kept.
    held: Vec<NodeRecord>,
    held_inputs: Option<Arc<Map>>,
}

impl RunRecording {
    /// Encodes a map the run log keeps, handing over whatever payloads have to be written.
    fn encode(&mut self, map: &Map) -> PayloadHash {
        let mut fresh = Vec::new();
        let hash = self.encoder.encode_map(map, self.expires_at, &mut fresh);
        if !fresh.is_empty() {
            self.recorder.send(Op::Payloads(fresh));
        }
        hash
    }

    /// Writes a node's entry, with its payloads when `with_payloads`.
    fn write_entry(&mut self, entries: &mut Vec<u8>, record: &NodeRecord, with_payloads: bool, fresh: &mut Vec<NewPayload>) {
        let payloads = if with_payloads {
            let mut encode = |map: &Option<Arc<Map>>| map.as_ref().map(|map| self.encoder.encode_node_map(map, self.expires_at, fresh));
            [encode(&record.inputs), encode(&record.process_data), encode(&record.outputs), encode(&record.metadata)]
        } else {
            Default::default()
        };
        node_log::write_entry(entries, record, &payloads);
    }

    pub fn node_finished(&mut self, record: NodeRecord) {
        if self.detail == LogDetail::Errors {
            self.held.push(record);
            return;
        }
        let mut entries = Vec::with_capacity(512);
        let mut fresh = Vec::new();
        self.write_entry(&mut entries, &record, self.detail == LogDetail::Full, &mut fresh);
        if !fresh.is_empty() {
            self.recorder.send(Op::Payloads(fresh));
        }
        self.recorder.send(Op::Nodes { run_id: self.run_id.clone(), entries, count: 1 });
    }

    /// Writes the run's `running` row at once instead of after [`RUNNING_ROW_AFTER`]: for a
    /// streamed run, whose id the client sees in `workflow_started` and may look up at once.
    pub fn announce(&mut self) -> Committed {
        let (committed, wait) = oneshot::channel();
        self.recorder.send(Op::Announce { run_id: self.run_id.clone(), committed });
        Committed(wait)
    }

    /// Hands the run's end over; the answer resolves once it is committed.
    pub fn run_finished(mut self, summary: &RunSummary) -> Committed {
        let failed = summary.status.as_str() != "succeeded";
        let keep_payloads = self.detail == LogDetail::Full || (self.detail == LogDetail::Errors && failed);
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            let mut entries = Vec::with_capacity(512 * held.len());
            let mut fresh = Vec::new();
            for record in &held {
                self.write_entry(&mut entries, record, keep_payloads, &mut fresh);
            }
            if !fresh.is_empty() {
                self.recorder.send(Op::Payloads(fresh));
            }
            self.recorder.send(Op::Nodes { run_id: self.run_id.clone(), entries, count: held.len() });
        }
        let inputs_hash = match self.held_inputs.take() {
            Some(inputs) if keep_payloads => Some(self.encode(&inputs)),
            _ => None,
        };
        let outputs_hash = keep_payloads.then(|| self.encode(&summary.outputs));
        let end = EndRow {
            status: summary.status.as_str(),
            error: summary.error.clone(),
            elapsed: summary.elapsed,
            total_tokens: summary.usage.total_tokens,
            total_steps: summary.total_steps as i64,
            exceptions: i64::from(summary.exceptions_count),
            finished_at: summary.finished_at,
            inputs_hash,
            outputs_hash,
        };
        let (committed, wait) = oneshot::channel();
        self.recorder.send(Op::Finished { run_id: self.run_id.clone(), end: Box::new(end), committed });
        Committed(wait)
    }
}

/// A run being recorded, as the recorder thread keeps it between its start and its end.
struct OpenRun {
    detail: LogDetail,
    expires_at: i64,
    /// Written as a `running` row already (its end becomes an update).
    row_written: bool,
    start: Option<Box<StartRow>>,
    inputs_hash: Option<PayloadHash>,
    /// The sequence number of the run's next node-log segment.
    next_segment: i64,
    /// When the recorder thread saw the run start.
    opened: Instant,
}

/// One transaction's worth of rows.
#[derive(Default)]
struct Batch {
    payloads: Vec<StoredPayload>,
    /// Where each payload of the batch is in `payloads` (a hash is written once per batch).
    payload_index: HashMap<PayloadHash, usize>,
    run_inserts: Vec<RunRow>,
    run_updates: Vec<RunRow>,
    /// Node executions by run while the batch fills up.
    open_segments: HashMap<Arc<str>, SegmentBuilder>,
    /// Node-log segments ready to be written.
    segments: Vec<(Arc<str>, Segment)>,
    flushes: Vec<oneshot::Sender<()>>,
    /// The runs whose end this batch commits, waiting to hear it did.
    commits: Vec<oneshot::Sender<Result<(), RunLogError>>>,
    ops: usize,
}

impl Batch {
    fn add_payload(&mut self, payload: NewPayload) {
        match self.payload_index.get(&payload.hash) {
            Some(&index) => self.payloads[index].expires_at = self.payloads[index].expires_at.max(payload.expires_at),
            None => {
                self.payload_index.insert(payload.hash, self.payloads.len());
                self.payloads.push(payload.seal());
            }
        }
    }

    /// Closes the batch's node-log segments (compressed here, off the writing stage).
    fn seal_segments(&mut self) {
        for (run_id, segment) in self.open_segments.drain() {
            self.segments.push((run_id, segment.finish()));
        }
    }
}

struct RunRow {
    id: Arc<str>,
    start: Option<Box<StartRow>>,
    status: &'static str,
    detail: &'static str,
    inputs_hash: Option<PayloadHash>,
    outputs_hash: Option<PayloadHash>,
    error: Option<String>,
    elapsed: f64,
    total_tokens: i64,
    total_steps: i64,
    exceptions: i64,
    finished_at: Option<i64>,
    expires_at: i64,
}

/// The recorder thread's state: runs between their start and their end.
#[derive(Default)]
struct Gatherer {
    open: HashMap<Arc<str>, OpenRun>,
}

impl Gatherer {
    /// When the earliest open run without a row is due its `running` row.
    fn next_running_row(&self) -> Option<Instant> {
        self.open.values().filter(|open| !open.row_written).map(|open| open.opened + RUNNING_ROW_AFTER).min()
    }
}

fn gather_batches(rx: &std::sync::mpsc::Receiver<Op>, batches: &mpsc::Sender<Batch>, writer_idle: &AtomicBool) {
    let mut gatherer = Gatherer::default();
    let mut batch = Batch::default();
    loop {
        // Group commit: the batch is handed over only when the writer is free, and until then
        // it takes in every run that ends, so a run waits for at most the write in progress
        // and its own. While the writer is busy this thread sleeps between looks instead of
        // waiting on the channel, so handing an operation over never has to wake it (a system
        // call per operation). With nothing to write, it waits for work; while runs are open,
        // no longer than until the first of them is due a `running` row.
        let pending = batch.ops > 0 || !batch.run_inserts.is_empty();
        let mut disconnected = false;
        if !pending {
            let first = match gatherer.next_running_row() {
                None => rx.recv().map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            match first {
                Ok(op) => gatherer.take(op, &mut batch),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
            }
        } else if !writer_idle.load(Ordering::Acquire) {
            std::thread::sleep(WRITER_BUSY_POLL);
        }
        while !disconnected && batch.ops < BATCH_SIZE {
            match rx.try_recv() {
                Ok(op) => gatherer.take(op, &mut batch),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => disconnected = true,
            }
        }
        if !writer_idle.load(Ordering::Acquire) && !disconnected {
            continue;
        }
        gatherer.write_running_rows(&mut batch);
        if batch.ops > 0 || !batch.run_inserts.is_empty() {
            batch.seal_segments();
            writer_idle.store(false, Ordering::Release);
            if batches.blocking_send(std::mem::take(&mut batch)).is_err() {
                return;
            }
        }
        if disconnected {
            return;
        }
    }
}

/// What a failed write says to the server.
fn run_log_error(error: &StoreError) -> RunLogError {
    match error {
        StoreError::DiskFull(_) => RunLogError::DiskFull,
        other => RunLogError::Failing(other.to_string()),
    }
}

/// The second stage: writes batches in order, one transaction each, each until it is in.
async fn write_batches(store: Store, mut pending: mpsc::Receiver<Batch>, stats: Arc<RecorderStats>, idle: Arc<AtomicBool>) {
    while let Some(mut batch) = pending.recv().await {
        let ops = batch.ops;
        let rows = batch.run_inserts.len() + batch.run_updates.len() + batch.segments.len();
        let mut attempt = 0;
        loop {
            match write(&store, &batch).await {
                Ok(()) => break,
                Err(error) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    let reported = run_log_error(&error);
                    if attempt == 0 || attempt % 10 == 0 {
                        tracing::error!(%error, rows, attempt, "the run log could not be written; trying again (new runs are refused meanwhile)");
                    }
                    stats.failed(reported);
                    tokio::time::sleep(RETRY_DELAYS[attempt.min(RETRY_DELAYS.len() - 1)]).await;
                    attempt += 1;
                }
            }
        }
        // The gatherer may hand over the next batch while this one's waiters are told.
        idle.store(true, Ordering::Release);
        if attempt > 0 {
            tracing::info!(attempts = attempt + 1, "the run log is written again");
        }
        stats.recovered();
        stats.rows_written.fetch_add(rows as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.backlog.fetch_sub(ops, Ordering::Relaxed);
        stats.batch_done.notify_waiters();
        for committed in std::mem::take(&mut batch.commits) {
            let _ = committed.send(Ok(()));
        }
        for done in std::mem::take(&mut batch.flushes) {
            let _ = done.send(());
        }
        // Dropped here, after the waiters were told: freeing a large batch is not their wait.
        drop(batch);
    }
}

impl Gatherer {
    fn take(&mut self, op: Op, batch: &mut Batch) {
        batch.ops += 1;
        match op {
            Op::Flush(done) => batch.flushes.push(done),
            Op::Payloads(payloads) => {
                for payload in payloads {
                    batch.add_payload(payload);
                }
            }
            Op::Started { run_id, detail, expires_at, start, inputs_hash } => {
                self.open.insert(
                    run_id,
                    OpenRun {
                        detail,
                        expires_at,
                        row_written: false,
                        start: Some(start),
                        inputs_hash,
                        next_segment: 0,
                        opened: Instant::now(),
                    },
                );
            }
            Op::Nodes { run_id, entries, count } => {
                let Some(open) = self.open.get_mut(&run_id) else { return };
                let segment = batch.open_segments.entry(run_id).or_insert_with(|| {
                    open.next_segment += 1;
                    SegmentBuilder::new(open.next_segment - 1)
                });
                segment.push_entries(&entries, count);
            }
            Op::Announce { run_id, committed } => {
                batch.commits.push(committed);
                if let Some(open) = self.open.get_mut(&run_id)
                    && !open.row_written
                {
                    open.row_written = true;
                    batch.run_inserts.push(open.running_row(run_id));
                }
            }
            Op::Finished { run_id, end, committed } => {
                batch.commits.push(committed);
                let Some(mut open) = self.open.remove(&run_id) else { return };
                let row = RunRow {
                    id: run_id,
                    start: None,
                    status: end.status,
                    detail: open.detail.as_str(),
                    inputs_hash: end.inputs_hash.or(open.inputs_hash),
                    outputs_hash: end.outputs_hash,
                    error: end.error,
                    elapsed: end.elapsed,
                    total_tokens: end.total_tokens,
                    total_steps: end.total_steps,
                    exceptions: end.exceptions,
                    finished_at: Some(end.finished_at),
                    expires_at: open.expires_at,
                };
                if open.row_written {
                    batch.run_updates.push(row);
                } else {
                    batch.run_inserts.push(RunRow { start: open.start.take(), ..row });
                }
            }
        }
    }

    /// Runs going for [`RUNNING_ROW_AFTER`] get their `running` row now, so a crash leaves a
    /// trace and a client asking about a long run finds it; a shorter run is written once.
    fn write_running_rows(&mut self, batch: &mut Batch) {
        let due = Instant::now() - RUNNING_ROW_AFTER;
        for (run_id, open) in self.open.iter_mut().filter(|(_, open)| !open.row_written && open.opened <= due) {
            open.row_written = true;
            batch.run_inserts.push(open.running_row(run_id.clone()));
        }
    }
}

impl OpenRun {
    /// The run's first row, while it is still going.
    fn running_row(&mut self, id: Arc<str>) -> RunRow {
        RunRow {
            id,
            start: self.start.take(),
            status: "running",
            detail: self.detail.as_str(),
            inputs_hash: self.inputs_hash,
            outputs_hash: None,
            error: None,
            elapsed: 0.0,
            total_tokens: 0,
            total_steps: 0,
            exceptions: 0,
            finished_at: None,
            expires_at: self.expires_at,
        }
    }
}

async fn write(store: &Store, batch: &Batch) -> Result<(), StoreError> {
    // Large payloads go to the blob store before the rows that point at them.
    for payload in batch.payloads.iter().filter(|payload| payload.in_blob) {
        store.blobs.put(&format!("payloads/{}", payload.hash), payload.bytes.clone()).await?;
    }
    write!(store, |pool| {
        let mut connection = pool.acquire().await.map_err(|error| store.error(error))?;
        let written: Result<(), StoreError> = async {
            let mut tx = sqlx::Connection::begin(&mut *connection).await.map_err(|error| store.error(error))?;
            // Multi-row statements: one round trip per few hundred rows instead of one per row is
            // what lets the log keep up with thousands of runs a second.
            for chunk in statement_chunks(&batch.payloads) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO payloads (hash, size, codec, data, blob_key, expires_at) ");
                insert.push_values(chunk, |mut values, payload| {
                    values
                        .push_bind(payload.hash.to_string())
                        .push_bind(payload.size as i64)
                        .push_bind(payload.codec)
                        .push_bind((!payload.in_blob).then(|| payload.bytes.to_vec()))
                        .push_bind(payload.in_blob.then(|| format!("payloads/{}", payload.hash)))
                        .push_bind(payload.expires_at);
                });
                insert.push(
                    " ON CONFLICT (hash) DO UPDATE SET expires_at = excluded.expires_at WHERE payloads.expires_at < excluded.expires_at",
                );
                insert.build().execute(&mut *tx).await.map_err(|error| store.error(error))?;
            }
            let run_inserts: Vec<(&RunRow, &StartRow)> =
                batch.run_inserts.iter().filter_map(|row| row.start.as_deref().map(|start| (row, start))).collect();
            for chunk in statement_chunks(&run_inserts) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO workflow_runs (id, app_id, version_id, task_id, end_user_id, conversation_id, message_id, created_from, \
                     status, detail, inputs_hash, outputs_hash, error, elapsed_time, total_tokens, total_steps, exceptions_count, \
                     instance_id, created_at, finished_at, expires_at) ",
                );
                insert.push_values(chunk, |mut values, (row, start)| {
                    values
                        .push_bind(&*row.id)
                        .push_bind(start.app_id.as_str())
                        .push_bind(start.version_id.as_str())
                        .push_bind(start.task_id.as_str())
                        .push_bind(start.end_user_id.as_deref())
                        .push_bind(start.conversation_id.as_deref())
                        .push_bind(start.message_id.as_deref())
                        .push_bind(start.created_from.as_str())
                        .push_bind(row.status)
                        .push_bind(row.detail)
                        .push_bind(row.inputs_hash.map(|hash| hash.to_string()))
                        .push_bind(row.outputs_hash.map(|hash| hash.to_string()))
                        .push_bind(row.error.as_deref())
                        .push_bind(row.elapsed)
                        .push_bind(row.total_tokens)
                        .push_bind(row.total_steps)
                        .push_bind(row.exceptions)
                        .push_bind(start.instance_id.as_str())
                        .push_bind(start.created_at)
                        .push_bind(row.finished_at)
                        .push_bind(row.expires_at);
                });
                insert.build().execute(&mut *tx).await.map_err(|error| store.error(error))?;
            }
            for chunk in statement_chunks(&batch.segments) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO run_nodes (run_id, seq, nodes, codec, data) ");
                insert.push_values(chunk, |mut values, (run_id, segment)| {
                    values
                        .push_bind(&**run_id)
                        .push_bind(segment.seq)
                        .push_bind(segment.nodes as i64)
                        .push_bind(segment.codec)
                        .push_bind(segment.data.as_slice());
                });
                insert.push(" ON CONFLICT (run_id, seq) DO NOTHING");
                insert.build().execute(&mut *tx).await.map_err(|error| store.error(error))?;
            }
            for row in &batch.run_updates {
                sqlx::query(
                    "UPDATE workflow_runs SET status = $2, outputs_hash = $3, inputs_hash = COALESCE($4, inputs_hash), error = $5, \
                     elapsed_time = $6, total_tokens = $7, total_steps = $8, exceptions_count = $9, finished_at = $10 WHERE id = $1",
                )
                .bind(&*row.id)
                .bind(row.status)
                .bind(row.outputs_hash.map(|hash| hash.to_string()))
                .bind(row.inputs_hash.map(|hash| hash.to_string()))
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
        }
        .await;
        if written.is_err() {
            // A connection whose transaction failed (a full disk, a lost server) may be left
            // inside it, holding SQLite's write lock: it is closed, and the next try opens
            // another.
            let _ = connection.close().await;
        }
        written
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_statements_of_a_few_fixed_sizes() {
        let rows: Vec<usize> = (0..343).collect();
        let sizes: Vec<usize> = statement_chunks(&rows).map(<[usize]>::len).collect();
        assert_eq!(sizes, [256, 64, 16, 4, 2, 1]);
        let flattened: Vec<usize> = statement_chunks(&rows).flatten().copied().collect();
        assert_eq!(flattened, rows);
        assert_eq!(statement_chunks::<usize>(&[]).count(), 0);
    }
}
