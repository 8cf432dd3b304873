//! The scheduler: runs a plan to completion, emitting events as it goes.
//!
//! One ready queue serves every frame (the top-level graph, each iteration item, each loop
//! round), first in first out, exactly as Dify's engine orders work with one worker. Nodes that
//! finish synchronously are processed at once; nodes waiting on I/O run concurrently while the
//! queue keeps draining. Joins, skip propagation, branch handles, error strategies, retries,
//! containers and limits follow Dify's engine.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc};

use flowgate_dsl::ErrorStrategy;
use flowgate_dsl::nodes::ErrorHandleMode;

use crate::condition::process_conditions;
use crate::event::{ContainerCompleted, EventSink, NodeFinished, NodeInfo, NodeStatus, RunEvent, RunStatus, RunSummary, Scope};
use crate::nodes::containers::constant_loop_value;
use crate::nodes::{self, IterationSpec, LoopSpec, NodeCtx, NodeKind, NodeResult};
use crate::plan::{ExecType, Plan};
use crate::pool::{Pool, Slot};
use crate::ports::{Ports, Usage};
use crate::stream::{Emitted, ResponseFilter, View};
use crate::value::{Map, Value, key, map_of, map_with_capacity};

/// Dify's `WORKFLOW_MAX_EXECUTION_STEPS` and `WORKFLOW_MAX_EXECUTION_TIME`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_steps: u64,
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_steps: 500, max_time: Duration::from_secs(1200) }
    }
}

/// Identity of a run, visible to nodes and ports.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub run_id: Arc<str>,
    pub app_id: Arc<str>,
    pub workflow_id: Arc<str>,
    pub user_id: Arc<str>,
    pub history: Arc<[crate::inputs::PastTurn]>,
}

/// Stops a run from outside (Dify's "stop" endpoints).
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
struct ControlInner {
    stopped: AtomicBool,
    notify: Notify,
}

impl RunControl {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    async fn stopped(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Unknown,
    Taken,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeState {
    Unknown,
    Taken,
    Skipped,
}

/// Text a running node streams (model tokens); routed to answer streaming.
#[derive(Debug)]
pub struct Chunk {
    selector: Arc<[String]>,
    text: String,
    is_final: bool,
}

#[derive(Clone)]
pub struct ChunkSink {
    tx: mpsc::UnboundedSender<Chunk>,
}

impl ChunkSink {
    pub fn send(&self, selector: &Arc<[String]>, text: &str, is_final: bool) {
        let _ = self.tx.send(Chunk { selector: selector.clone(), text: text.to_owned(), is_final });
    }
}

/// What a run starts with: the pool already holds inputs, system, environment and conversation
/// variables (see [`crate::inputs`]).
pub struct RunStart {
    pub context: Arc<RunContext>,
    pub pool: Pool,
    /// `workflow_started.data.inputs`: the user inputs plus `sys.*`.
    pub started_inputs: Arc<Map>,
}

pub(crate) async fn execute(
    plan: &Arc<Plan>,
    ports: &Ports,
    limits: Limits,
    start: RunStart,
    sink: &mut dyn EventSink,
    control: Option<&RunControl>,
) -> RunSummary {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut runner = Runner {
        plan,
        ports,
        limits,
        context: start.context.clone(),
        sink,
        frames: Vec::new(),
        invocations: Vec::new(),
        queue: VecDeque::new(),
        inflight: FuturesUnordered::new(),
        chunk_tx: tx,
        chunk_rx: rx,
        filter: ResponseFilter::new(&plan.response),
        steps: 0,
        next_index: 0,
        next_frame_uid: 0,
        exceptions: 0,
        usage: Usage::default(),
        started: Instant::now(),
        started_unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default(),
        outcome: None,
        answer: String::new(),
        emitted: Vec::new(),
    };
    runner.run(start, control).await
}

enum FrameKind {
    Root,
    IterationItem { invocation: usize, index: usize },
    LoopRound { invocation: usize, index: usize },
}

struct Execution {
    info: NodeInfo,
    started: Instant,
    retries: u32,
}

struct Frame {
    uid: u64,
    kind: FrameKind,
    parent: Option<usize>,
    pool: Pool,
    node_states: Vec<NodeState>,
    edge_states: Vec<EdgeState>,
    unfinished: u32,
    errors: Vec<String>,
    /// Merged outputs of this frame's answer/end nodes.
    outputs: Map,
    usage: Usage,
    scope: Scope,
    reached_break: bool,
    started: Instant,
    executions: Vec<Option<Execution>>,
    steps: u64,
}

enum Invocation {
    Iteration(IterationRun),
    Loop(LoopRun),
}

struct IterationRun {
    frame: usize,
    node: u32,
    items: Arc<Vec<Value>>,
    outputs: BTreeMap<usize, Value>,
    scheduled: usize,
    completed: usize,
    errors: Vec<String>,
    resume_pending: bool,
    durations: Map,
    usage: Usage,
}

struct LoopRun {
    frame: usize,
    node: u32,
    completed: usize,
    outputs: Map,
    inputs: Map,
    reached_break: bool,
    durations: Map,
    variable_map: Map,
    usage: Usage,
}

enum Task {
    Start { frame: usize, node: u32 },
    Resume { invocation: usize, resume: Resume },
}

enum Resume {
    IterationItems(Vec<usize>),
    LoopRound(usize),
    Finished(Box<ContainerOutcome>),
}

struct ContainerOutcome {
    outputs: Map,
    inputs: Map,
    metadata: Map,
    steps: usize,
    error: Option<String>,
}

enum Wake {
    Node { frame: usize, uid: u64, node: u32, result: NodeResult },
    Retry { frame: usize, uid: u64, node: u32 },
}

enum Outcome {
    Failed(String),
    Stopped,
}

struct Runner<'a> {
    plan: &'a Arc<Plan>,
    ports: &'a Ports,
    limits: Limits,
    context: Arc<RunContext>,
    sink: &'a mut dyn EventSink,
    frames: Vec<Option<Frame>>,
    invocations: Vec<Option<Invocation>>,
    queue: VecDeque<Task>,
    inflight: FuturesUnordered<BoxFuture<'static, Wake>>,
    chunk_tx: mpsc::UnboundedSender<Chunk>,
    chunk_rx: mpsc::UnboundedReceiver<Chunk>,
    filter: ResponseFilter,
    /// Nodes started in every frame (the step limit counts these).
    steps: u64,
    next_index: u64,
    next_frame_uid: u64,
    exceptions: u32,
    usage: Usage,
    started: Instant,
    /// Wall-clock time at `started`; event timestamps derive from it, one clock read each.
    started_unix: Duration,
    outcome: Option<Outcome>,
    answer: String,
    emitted: Vec<Emitted>,
}

const ROOT: usize = 0;

impl Runner<'_> {
    async fn run(&mut self, start: RunStart, control: Option<&RunControl>) -> RunSummary {
        self.sink.emit(RunEvent::WorkflowStarted {
            run_id: self.context.run_id.clone(),
            workflow_id: self.context.workflow_id.clone(),
            inputs: start.started_inputs.clone(),
            created_at: self.unix_at(self.started),
        });
        let root = self.new_frame(FrameKind::Root, None, start.pool, Scope::default());
        debug_assert_eq!(root, ROOT);
        self.with_view(|filter, view, out| filter.start(view, out));
        self.flush_text();
        self.enqueue(ROOT, self.plan.root);

        let deadline = tokio::time::Instant::now() + self.limits.max_time;
        loop {
            if self.outcome.is_some() {
                break;
            }
            if control.is_some_and(RunControl::is_stopped) {
                self.outcome = Some(Outcome::Stopped);
                break;
            }
            if let Some(task) = self.queue.pop_front() {
                self.run_task(task);
                continue;
            }
            if self.inflight.is_empty() {
                break;
            }
            let stop = async {
                match control {
                    Some(control) => control.stopped().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = stop => self.outcome = Some(Outcome::Stopped),
                () = tokio::time::sleep_until(deadline) => {
                    self.outcome = Some(Outcome::Failed(self.time_limit_error()));
                }
                Some(wake) = self.inflight.next() => {
                    self.drain_chunks();
                    self.on_wake(wake);
                }
                Some(chunk) = self.chunk_rx.recv() => self.on_chunk(chunk),
            }
        }
        self.finish()
    }

    fn finish(&mut self) -> RunSummary {
        self.drain_chunks();
        self.with_view(|filter, view, out| filter.flush(view, out));
        self.flush_text();
        let (status, error) = match self.outcome.take() {
            Some(Outcome::Failed(error)) => (RunStatus::Failed, Some(error)),
            Some(Outcome::Stopped) => (RunStatus::Stopped, Some("Workflow execution stopped by user".to_owned())),
            None if self.exceptions > 0 => (RunStatus::PartialSucceeded, None),
            None => (RunStatus::Succeeded, None),
        };
        let root = self.frames.get_mut(ROOT).and_then(Option::take);
        let (outputs, conversation_variables, total_steps) = match root {
            Some(frame) => {
                let conversation: Map = frame.pool.entries(Slot::Conversation).map(|(key, value)| (key.clone(), value.clone())).collect();
                (frame.outputs, conversation, frame.steps)
            }
            None => (Map::default(), Map::default(), 0),
        };
        let summary = RunSummary {
            run_id: self.context.run_id.clone(),
            workflow_id: self.context.workflow_id.clone(),
            status,
            outputs: Arc::new(outputs),
            error,
            elapsed: self.started.elapsed().as_secs_f64(),
            usage: self.usage.clone(),
            total_steps,
            exceptions_count: self.exceptions,
            created_at: self.unix_at(self.started),
            finished_at: self.unix_at(Instant::now()),
            answer: std::mem::take(&mut self.answer),
            conversation_variables: Arc::new(conversation_variables),
        };
        self.sink.emit(RunEvent::WorkflowFinished(Box::new(summary.clone())));
        summary
    }

    // -----------------------------------------------------------------------------------------
    // frames and the queue

    fn new_frame(&mut self, kind: FrameKind, parent: Option<usize>, pool: Pool, scope: Scope) -> usize {
        let node_count = self.plan.nodes.len();
        self.next_frame_uid += 1;
        let frame = Frame {
            uid: self.next_frame_uid,
            kind,
            parent,
            pool,
            node_states: vec![NodeState::Unknown; node_count],
            edge_states: vec![EdgeState::Unknown; self.plan.edges.len()],
            unfinished: 0,
            errors: Vec::new(),
            outputs: Map::default(),
            usage: Usage::default(),
            scope,
            reached_break: false,
            started: Instant::now(),
            executions: (0..node_count).map(|_| None).collect(),
            steps: 0,
        };
        match self.frames.iter().position(Option::is_none) {
            Some(slot) => {
                self.frames[slot] = Some(frame);
                slot
            }
            None => {
                self.frames.push(Some(frame));
                self.frames.len() - 1
            }
        }
    }

    fn frame(&mut self, index: usize) -> Option<&mut Frame> {
        self.frames.get_mut(index).and_then(Option::as_mut)
    }

    fn enqueue(&mut self, frame: usize, node: u32) {
        if let Some(state) = self.frame(frame) {
            state.node_states[node as usize] = NodeState::Taken;
            state.unfinished += 1;
        }
        self.queue.push_back(Task::Start { frame, node });
    }

    fn run_task(&mut self, task: Task) {
        match task {
            Task::Start { frame, node } => self.start_node(frame, node),
            Task::Resume { invocation, resume } => self.resume(invocation, resume),
        }
    }

    // -----------------------------------------------------------------------------------------
    // events

    fn with_view(&mut self, action: impl FnOnce(&mut ResponseFilter, &View<'_>, &mut Vec<Emitted>)) {
        let Some(Some(root)) = self.frames.get(ROOT) else {
            return;
        };
        let view = View { plan: self.plan, pool: &root.pool, node_states: &root.node_states, edge_states: &root.edge_states };
        action(&mut self.filter, &view, &mut self.emitted);
    }

    fn flush_text(&mut self) {
        for (text, selector) in self.emitted.drain(..) {
            if text.is_empty() {
                continue;
            }
            self.answer.push_str(&text);
            self.sink.emit(RunEvent::TextChunk { text, selector });
        }
    }

    fn drain_chunks(&mut self) {
        while let Ok(chunk) = self.chunk_rx.try_recv() {
            self.on_chunk(chunk);
        }
    }

    fn on_chunk(&mut self, chunk: Chunk) {
        self.with_view(|filter, view, out| filter.chunk(&chunk.selector, &chunk.text, chunk.is_final, view, out));
        self.flush_text();
    }

    fn node_info(&mut self, frame: usize, node: u32, now: Instant) -> NodeInfo {
        self.next_index += 1;
        let plan_node = self.plan.node(node);
        let scope = self.frame(frame).map(|state| state.scope.clone()).unwrap_or_default();
        NodeInfo {
            execution_id: crate::ids::execution_id(),
            node_id: plan_node.id.clone(),
            node_type: plan_node.node_type.clone(),
            title: plan_node.title.clone(),
            index: self.next_index,
            scope,
            created_at: self.unix_at(now),
        }
    }

    /// Records a node start (counted as a step) and emits `NodeStarted`.
    fn begin_execution(&mut self, frame: usize, node: u32) -> NodeInfo {
        let now = Instant::now();
        let info = self.node_info(frame, node, now);
        self.steps += 1;
        if let Some(state) = self.frame(frame) {
            state.steps += 1;
            state.executions[node as usize] = Some(Execution { info: info.clone(), started: now, retries: 0 });
        }
        self.sink.emit(RunEvent::NodeStarted(info.clone()));
        info
    }

    /// Unix seconds at `instant`, from the run's one wall-clock reading.
    fn unix_at(&self, instant: Instant) -> i64 {
        (self.started_unix + instant.saturating_duration_since(self.started)).as_secs() as i64
    }

    fn finished_event(&mut self, frame: usize, node: u32, status: NodeStatus, result: &NodeResult) -> Option<Box<NodeFinished>> {
        let now = Instant::now();
        let finished_at = self.unix_at(now);
        let state = self.frame(frame)?;
        let execution = if status == NodeStatus::Retry {
            let execution = state.executions[node as usize].as_ref()?;
            Execution { info: execution.info.clone(), started: execution.started, retries: execution.retries }
        } else {
            state.executions[node as usize].take()?
        };
        let mut metadata = result.metadata.as_deref().cloned().unwrap_or_default();
        if let Some((id, index)) = &execution.info.scope.iteration {
            metadata.insert(key("iteration_id"), Value::Str(id.clone()));
            metadata.insert(key("iteration_index"), Value::Int(*index as i64));
        }
        if let Some((id, index)) = &execution.info.scope.loop_round {
            metadata.insert(key("loop_id"), Value::Str(id.clone()));
            metadata.insert(key("loop_index"), Value::Int(*index as i64));
        }
        if status == NodeStatus::Exception
            && let Some(strategy) = self.plan.node(node).error_strategy
        {
            let name = match strategy {
                ErrorStrategy::FailBranch => "fail-branch",
                ErrorStrategy::DefaultValue => "default-value",
            };
            metadata.insert(key("error_strategy"), Value::str(name));
        }
        Some(Box::new(NodeFinished {
            info: execution.info,
            status,
            inputs: result.inputs.clone(),
            process_data: result.process_data.clone(),
            outputs: Some(result.outputs.clone()),
            error: result.failure.as_ref().map(|failure| failure.error.clone()),
            error_type: result.failure.as_ref().map(|failure| failure.error_type.clone()),
            elapsed: now.duration_since(execution.started).as_secs_f64(),
            metadata: (!metadata.is_empty()).then(|| Arc::new(metadata)),
            finished_at,
            retry_index: (status == NodeStatus::Retry).then_some(execution.retries),
        }))
    }

    // -----------------------------------------------------------------------------------------
    // running nodes

    fn start_node(&mut self, frame: usize, node: u32) {
        let plan = self.plan.clone();
        let plan_node = plan.node(node);
        match &plan_node.kind {
            // The synthetic start of an item or round: no events, no step.
            NodeKind::IterationStart | NodeKind::LoopStart => {
                self.complete(frame, node, NodeResult::default(), NodeStatus::Succeeded, false);
                return;
            }
            NodeKind::Iteration(spec) => return self.start_iteration(frame, node, spec),
            NodeKind::Loop(spec) => return self.start_loop(frame, node, spec),
            _ => {}
        }
        let is_retry = self.frame(frame).is_some_and(|state| state.executions[node as usize].is_some());
        if !is_retry {
            self.begin_execution(frame, node);
        }
        let Some(state) = self.frames.get(frame).and_then(Option::as_ref) else {
            return;
        };
        let uid = state.uid;
        let ctx = NodeCtx {
            plan: &plan,
            index: node,
            node: plan_node,
            pool: &state.pool,
            ports: self.ports,
            run: &self.context,
            chunks: ChunkSink { tx: self.chunk_tx.clone() },
        };
        match nodes::execute(ctx) {
            nodes::Exec::Done(result) => {
                self.drain_chunks();
                self.on_result(frame, node, result);
            }
            nodes::Exec::Pending(mut future) => {
                // Nodes that finish without waiting (mocked models, cached answers) keep the
                // queue's order, exactly like a single engine worker would.
                let waker = futures::task::noop_waker();
                let mut context = Context::from_waker(&waker);
                match future.as_mut().poll(&mut context) {
                    Poll::Ready(result) => {
                        self.drain_chunks();
                        self.on_result(frame, node, result);
                    }
                    Poll::Pending => self.inflight.push(Box::pin(async move {
                        let result = future.await;
                        Wake::Node { frame, uid, node, result }
                    })),
                }
            }
        }
    }

    fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Node { frame, uid, node, result } => {
                if self.frame(frame).is_some_and(|state| state.uid == uid) {
                    self.on_result(frame, node, result);
                }
            }
            Wake::Retry { frame, uid, node } => {
                if self.frame(frame).is_some_and(|state| state.uid == uid) {
                    self.queue.push_back(Task::Start { frame, node });
                }
            }
        }
    }

    fn on_result(&mut self, frame: usize, node: u32, mut result: NodeResult) {
        let plan = self.plan.clone();
        let plan_node = plan.node(node);
        let Some(failure) = result.failure.clone() else {
            let updates = std::mem::take(&mut result.updates);
            self.apply_updates(frame, node, updates);
            self.complete(frame, node, result, NodeStatus::Succeeded, true);
            return;
        };
        // Every failed attempt counts towards a partial success, as in Dify: retried attempts,
        // failures handled by an error strategy and failures inside iterations alike.
        self.exceptions += 1;
        // Retry first, then the error strategy, else the failure stops the frame.
        let retries = self.frame(frame).and_then(|state| state.executions[node as usize].as_ref()).map_or(0, |execution| execution.retries);
        if plan_node.kind.retryable() && plan_node.retry.enabled && retries < plan_node.retry.max_retries {
            if let Some(execution) = self.frame(frame).and_then(|state| state.executions[node as usize].as_mut()) {
                execution.retries += 1;
            }
            if let Some(event) = self.finished_event(frame, node, NodeStatus::Retry, &result) {
                self.sink.emit(RunEvent::NodeRetry(event));
            }
            let interval = Duration::from_millis(plan_node.retry.interval_ms);
            if interval.is_zero() {
                self.queue.push_back(Task::Start { frame, node });
            } else if let Some(uid) = self.frame(frame).map(|state| state.uid) {
                self.inflight.push(Box::pin(async move {
                    tokio::time::sleep(interval).await;
                    Wake::Retry { frame, uid, node }
                }));
            }
            return;
        }
        let error_fields = |mut outputs: Map| {
            outputs.insert(key("error_message"), Value::from(failure.error.clone()));
            outputs.insert(key("error_type"), Value::from(failure.error_type.clone()));
            outputs
        };
        match plan_node.error_strategy {
            Some(ErrorStrategy::FailBranch) => {
                result.outputs = Arc::new(error_fields(map_with_capacity(2)));
                result.handle = Some(key("fail-branch"));
                self.complete(frame, node, result, NodeStatus::Exception, true);
            }
            Some(ErrorStrategy::DefaultValue) => {
                result.outputs = Arc::new(error_fields(plan_node.default_values.clone()));
                result.handle = None;
                self.complete(frame, node, result, NodeStatus::Exception, false);
            }
            None => {
                if let Some(event) = self.finished_event(frame, node, NodeStatus::Failed, &result) {
                    self.sink.emit(RunEvent::NodeFinished(event));
                }
                if frame == ROOT {
                    self.outcome = Some(Outcome::Failed(failure.error));
                    return;
                }
                if let Some(state) = self.frame(frame) {
                    state.errors.push(failure.error);
                    state.unfinished = state.unfinished.saturating_sub(1);
                }
                self.check_limits();
                self.maybe_complete_frame(frame);
            }
        }
    }

    /// A node succeeded (or failed into its error strategy): store its outputs, follow its
    /// edges, report it.
    fn complete(&mut self, frame: usize, node: u32, result: NodeResult, status: NodeStatus, follow_branch: bool) {
        let plan = self.plan.clone();
        let plan_node = plan.node(node);
        let visible = !matches!(plan_node.kind, NodeKind::IterationStart | NodeKind::LoopStart);
        let Some(state) = self.frame(frame) else {
            return;
        };
        if let Some(usage) = &result.usage {
            state.usage = state.usage.plus(usage);
        }
        if !result.outputs.is_empty() {
            state.pool.store_outputs(Slot::Node(node), &result.outputs);
        }
        let branch = follow_branch && plan_node.exec == ExecType::Branch;
        let handle = result.handle.clone().unwrap_or_else(|| key("source"));
        let (ready, taken) = advance(&plan, state, node, branch.then_some(&*handle));
        if plan_node.exec == ExecType::Response {
            merge_response_outputs(&mut state.outputs, &result.outputs);
        }
        state.unfinished = state.unfinished.saturating_sub(1);
        for target in ready {
            self.enqueue(frame, target);
        }
        if frame == ROOT {
            for edge in taken {
                self.with_view(|filter, view, out| filter.edge_taken(edge, view, out));
            }
        }
        self.with_view(|filter, view, out| filter.node_completed(view, out));
        self.flush_text();
        if let Some(usage) = &result.usage {
            self.usage = self.usage.plus(usage);
        }
        if visible && let Some(event) = self.finished_event(frame, node, status, &result) {
            self.sink.emit(RunEvent::NodeFinished(event));
        }
        if matches!(plan_node.kind, NodeKind::LoopEnd) {
            self.mark_loop_break(frame, plan_node.loop_owner);
        }
        if status == NodeStatus::Succeeded && visible {
            self.check_limits();
        }
        self.maybe_complete_frame(frame);
    }

    fn check_limits(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        if self.steps > self.limits.max_steps {
            self.outcome =
                Some(Outcome::Failed(format!("Aborted: Maximum execution steps exceeded: {} > {}", self.steps, self.limits.max_steps)));
        } else if self.started.elapsed() > self.limits.max_time {
            self.outcome = Some(Outcome::Failed(self.time_limit_error()));
        }
    }

    /// Dify aborts the run with this reason and reports it as the run's error.
    fn time_limit_error(&self) -> String {
        format!(
            "Aborted: Maximum execution time exceeded: {:.2}s > {}s",
            self.started.elapsed().as_secs_f64(),
            self.limits.max_time.as_secs()
        )
    }

    /// Writes assigner results into the frame's pool; loops carry writes back to their parent
    /// frame when the variable exists there (iterations keep them local), as Dify does.
    fn apply_updates(&mut self, frame: usize, node: u32, updates: Vec<nodes::VariableUpdate>) {
        let node_id = self.plan.node(node).id.clone();
        for update in updates {
            let slot = update.selector.slot;
            let name = update.selector.name.clone();
            let mut current = frame;
            if let Some(state) = self.frame(current) {
                state.pool.set(slot, name.clone(), update.value.clone());
            }
            while let Some(state) = self.frames.get(current).and_then(Option::as_ref) {
                let (FrameKind::LoopRound { .. }, Some(parent)) = (&state.kind, state.parent) else {
                    break;
                };
                let Some(parent_state) = self.frame(parent) else {
                    break;
                };
                if !parent_state.pool.contains(slot, &name) {
                    break;
                }
                parent_state.pool.set(slot, name.clone(), update.value.clone());
                current = parent;
            }
            self.sink.emit(RunEvent::VariableUpdated {
                node_id: node_id.clone(),
                selector: Arc::from(update.selector.variable_parts().to_vec()),
                value: update.value,
            });
        }
    }

    fn mark_loop_break(&mut self, frame: usize, loop_node: Option<u32>) {
        let Some(loop_node) = loop_node else { return };
        let mut current = Some(frame);
        while let Some(index) = current {
            let Some(state) = self.frames.get(index).and_then(Option::as_ref) else {
                return;
            };
            if let FrameKind::LoopRound { invocation, .. } = state.kind
                && matches!(self.invocations.get(invocation), Some(Some(Invocation::Loop(run))) if run.node == loop_node)
            {
                if let Some(state) = self.frame(index) {
                    state.reached_break = true;
                }
                return;
            }
            current = state.parent;
        }
    }

    fn maybe_complete_frame(&mut self, frame: usize) {
        let Some(state) = self.frames.get(frame).and_then(Option::as_ref) else {
            return;
        };
        if frame == ROOT || state.unfinished > 0 || self.outcome.is_some() {
            return;
        }
        let Some(state) = self.frames[frame].take() else {
            return;
        };
        match state.kind {
            FrameKind::IterationItem { invocation, index } => self.complete_iteration_item(invocation, index, state),
            FrameKind::LoopRound { invocation, index } => self.complete_loop_round(invocation, index, state),
            FrameKind::Root => {}
        }
    }

    // -----------------------------------------------------------------------------------------
    // containers

    fn fail_container(&mut self, frame: usize, node: u32, error: String) {
        self.on_result(frame, node, NodeResult::failed(error, "WorkflowNodeError"));
    }

    fn child_scope(&mut self, frame: usize, node: u32, index: usize, iteration: bool) -> Scope {
        let mut scope = self.frame(frame).map(|state| state.scope.clone()).unwrap_or_default();
        let id = self.plan.node(node).id.clone();
        if iteration {
            scope.iteration = Some((id, index));
        } else {
            scope.loop_round = Some((id, index));
        }
        scope
    }

    fn container_info(&mut self, frame: usize, node: u32) -> Option<NodeInfo> {
        self.frame(frame).and_then(|state| state.executions[node as usize].as_ref()).map(|execution| execution.info.clone())
    }

    fn start_iteration(&mut self, frame: usize, node: u32, spec: &IterationSpec) {
        let info = self.begin_execution(frame, node);
        let Some(state) = self.frame(frame) else {
            return;
        };
        let Some(value) = state.pool.get(&spec.iterator) else {
            let message = format!("iterator variable {} not found", spec.iterator.display());
            return self.fail_container(frame, node, message);
        };
        let items = match &value {
            Value::None => Vec::new(),
            Value::Array(items) => items.to_vec(),
            other => {
                let message = format!("invalid iterator value: {}, please provide a list.", crate::pyfmt::py_str(other));
                return self.on_result(frame, node, NodeResult::failed(message, "TypeError"));
            }
        };
        if items.is_empty() {
            let inputs = Arc::new(map_of([("iterator_selector", Value::array(Vec::new()))]));
            self.sink.emit(RunEvent::IterationStarted { info: info.clone(), inputs: inputs.clone(), length: 0 });
            let outputs = Arc::new(map_of([("output", Value::array(Vec::new()))]));
            self.sink.emit(RunEvent::IterationCompleted(Box::new(ContainerCompleted {
                info,
                inputs: inputs.clone(),
                outputs: outputs.clone(),
                status: NodeStatus::Succeeded,
                error: None,
                elapsed: 0.0,
                steps: 0,
                metadata: Arc::new(Map::default()),
                total_tokens: 0,
            })));
            let result = NodeResult { inputs: Some(inputs), outputs, ..NodeResult::default() };
            return self.complete(frame, node, result, NodeStatus::Succeeded, false);
        }
        let items = Arc::new(items);
        let inputs = Arc::new(map_of([("iterator_selector", Value::Array(items.clone()))]));
        self.sink.emit(RunEvent::IterationStarted { info: info.clone(), inputs, length: items.len() });
        let first_batch: Vec<usize> = (0..spec.parallelism.min(items.len())).collect();
        for &index in &first_batch {
            self.sink.emit(RunEvent::IterationNext { info: info.clone(), index });
        }
        let invocation = self.invocations.len();
        self.invocations.push(Some(Invocation::Iteration(IterationRun {
            frame,
            node,
            items,
            outputs: BTreeMap::new(),
            scheduled: 0,
            completed: 0,
            errors: Vec::new(),
            resume_pending: false,
            durations: Map::default(),
            usage: Usage::default(),
        })));
        self.schedule_iteration_items(invocation, first_batch);
    }

    fn iteration(&mut self, invocation: usize) -> Option<&mut IterationRun> {
        match self.invocations.get_mut(invocation) {
            Some(Some(Invocation::Iteration(run))) => Some(run),
            _ => None,
        }
    }

    fn iteration_spec(&self, node: u32) -> Option<&IterationSpec> {
        match &self.plan.node(node).kind {
            NodeKind::Iteration(spec) => Some(spec),
            _ => None,
        }
    }

    fn schedule_iteration_items(&mut self, invocation: usize, indexes: Vec<usize>) {
        let Some(run) = self.iteration(invocation) else {
            return;
        };
        run.resume_pending = false;
        if self.finish_failed_iteration_if_ready(invocation) {
            return;
        }
        for index in indexes {
            let Some(run) = self.iteration(invocation) else {
                return;
            };
            run.scheduled = run.scheduled.max(index + 1);
            let (parent, node, item) = (run.frame, run.node, run.items[index].clone());
            let Some(start) = self.iteration_spec(node).and_then(|spec| spec.start) else {
                return;
            };
            let scope = self.child_scope(parent, node, index, true);
            let Some(parent_state) = self.frame(parent) else {
                return;
            };
            let mut pool = parent_state.pool.clone();
            pool.set(Slot::Node(node), key("index"), Value::Int(index as i64));
            pool.set(Slot::Node(node), key("item"), item);
            let child = self.new_frame(FrameKind::IterationItem { invocation, index }, Some(parent), pool, scope);
            self.enqueue(child, start);
        }
        self.request_iteration_items(invocation);
    }

    fn request_iteration_items(&mut self, invocation: usize) {
        let Some(run) = self.iteration(invocation) else {
            return;
        };
        let node = run.node;
        if run.resume_pending || run.scheduled >= run.items.len() {
            return;
        }
        let parallelism = self.iteration_spec(node).map_or(1, |spec| spec.parallelism);
        let Some(run) = self.iteration(invocation) else {
            return;
        };
        let active = run.scheduled - run.completed;
        let capacity = parallelism.saturating_sub(active);
        if capacity == 0 {
            return;
        }
        let end = run.items.len().min(run.scheduled + capacity);
        let indexes: Vec<usize> = (run.scheduled..end).collect();
        run.resume_pending = true;
        self.queue.push_back(Task::Resume { invocation, resume: Resume::IterationItems(indexes) });
    }

    fn finish_failed_iteration_if_ready(&mut self, invocation: usize) -> bool {
        let Some(run) = self.iteration(invocation) else {
            return true;
        };
        let Some(error) = run.errors.first().cloned() else {
            return false;
        };
        if run.completed < run.scheduled || run.resume_pending {
            return true;
        }
        run.resume_pending = true;
        let outcome = self.iteration_outcome(invocation, Some(error));
        self.queue.push_back(Task::Resume { invocation, resume: Resume::Finished(Box::new(outcome)) });
        true
    }

    fn iteration_outcome(&mut self, invocation: usize, error: Option<String>) -> ContainerOutcome {
        let Some(run) = self.iteration(invocation) else {
            return ContainerOutcome { outputs: Map::default(), inputs: Map::default(), metadata: Map::default(), steps: 0, error };
        };
        let ordered: Vec<Value> = run.outputs.values().cloned().collect();
        let node = run.node;
        let steps = run.items.len();
        let inputs = map_of([("iterator_selector", Value::Array(run.items.clone()))]);
        let metadata = map_of([
            ("total_tokens", Value::Int(run.usage.total_tokens)),
            ("total_price", Value::from(run.usage.total_price.to_string())),
            ("currency", Value::str(run.usage.currency.as_str())),
            ("iteration_duration_map", Value::object(run.durations.clone())),
        ]);
        let flatten = self.iteration_spec(node).is_some_and(|spec| spec.flatten);
        let output = if flatten { flatten_outputs(ordered) } else { ordered };
        ContainerOutcome { outputs: map_of([("output", Value::array(output))]), inputs, metadata, steps, error }
    }

    fn complete_iteration_item(&mut self, invocation: usize, index: usize, frame: Frame) {
        let mode = self.iteration(invocation).map(|run| run.node).and_then(|node| self.iteration_spec(node)).map(|spec| spec.error_mode);
        let output_selector =
            self.iteration(invocation).map(|run| run.node).and_then(|node| self.iteration_spec(node)).map(|spec| spec.output.clone());
        let Some(run) = self.iteration(invocation) else {
            return;
        };
        run.durations.insert(Arc::from(index.to_string()), Value::Float(frame.started.elapsed().as_secs_f64()));
        run.usage = run.usage.plus(&frame.usage);
        run.completed += 1;
        let parent = run.frame;
        let last = index + 1 == run.items.len();
        if let Some(error) = frame.errors.first().cloned() {
            match mode.unwrap_or_default() {
                ErrorHandleMode::Terminated => {
                    run.errors.push(error);
                    self.finish_failed_iteration_if_ready(invocation);
                    return;
                }
                ErrorHandleMode::ContinueOnError => {
                    run.outputs.insert(index, Value::None);
                }
                ErrorHandleMode::RemoveAbnormalOutput => {}
            }
        } else {
            let output = output_selector.and_then(|selector| frame.pool.get(&selector)).unwrap_or(Value::None);
            run.outputs.insert(index, output);
            if last && let Some(parent_state) = self.frame(parent) {
                for (key, value) in frame.outputs.iter() {
                    merge_response_output(&mut parent_state.outputs, key, value);
                }
            }
        }
        self.continue_or_complete_iteration(invocation);
    }

    fn continue_or_complete_iteration(&mut self, invocation: usize) {
        if self.finish_failed_iteration_if_ready(invocation) {
            return;
        }
        let Some(run) = self.iteration(invocation) else {
            return;
        };
        if run.completed >= run.items.len() {
            let outcome = self.iteration_outcome(invocation, None);
            self.queue.push_back(Task::Resume { invocation, resume: Resume::Finished(Box::new(outcome)) });
            return;
        }
        self.request_iteration_items(invocation);
    }

    fn start_loop(&mut self, frame: usize, node: u32, spec: &LoopSpec) {
        let info = self.begin_execution(frame, node);
        let mut inputs = map_of([("loop_count", Value::Int(spec.count))]);
        for variable in &spec.variables {
            let Some(state) = self.frame(frame) else {
                return;
            };
            let value = match &variable.source {
                nodes::containers::LoopVariableSource::Constant(value) => match constant_loop_value(variable.var_type, value) {
                    Ok(value) => value,
                    Err(error) => return self.fail_container(frame, node, error),
                },
                nodes::containers::LoopVariableSource::Variable(selector) => match state.pool.get(selector) {
                    Some(value) => value,
                    None => {
                        return self.fail_container(frame, node, format!("Invalid value for loop variable {}", variable.label));
                    }
                },
                nodes::containers::LoopVariableSource::Invalid => {
                    return self.fail_container(frame, node, format!("Invalid value for loop variable {}", variable.label));
                }
            };
            state.pool.set(Slot::Node(node), variable.label.clone(), value.clone());
            if let Some(var_type) = variable.var_type {
                state.pool.declare(Slot::Node(node), variable.label.clone(), var_type);
            }
            inputs.insert(variable.label.clone(), value);
        }
        self.sink.emit(RunEvent::LoopStarted { info, inputs: Arc::new(inputs.clone()), length: spec.count });
        let invocation = self.invocations.len();
        self.invocations.push(Some(Invocation::Loop(LoopRun {
            frame,
            node,
            completed: 0,
            outputs: Map::default(),
            inputs,
            reached_break: false,
            durations: Map::default(),
            variable_map: Map::default(),
            usage: Usage::default(),
        })));
        self.start_loop_round(invocation, 0);
    }

    fn loop_run(&mut self, invocation: usize) -> Option<&mut LoopRun> {
        match self.invocations.get_mut(invocation) {
            Some(Some(Invocation::Loop(run))) => Some(run),
            _ => None,
        }
    }

    fn start_loop_round(&mut self, invocation: usize, index: usize) {
        let plan = self.plan.clone();
        let Some(run) = self.loop_run(invocation) else {
            return;
        };
        let (parent, node) = (run.frame, run.node);
        let NodeKind::Loop(spec) = &plan.node(node).kind else {
            return;
        };
        let Some(parent_state) = self.frame(parent) else {
            return;
        };
        // Dify checks the break conditions before every round, ignoring errors here.
        let reached = !spec.break_conditions.is_empty()
            && process_conditions(&spec.break_conditions, spec.operator, &parent_state.pool).is_ok_and(|check| check.final_result);
        if reached {
            let Some(run) = self.loop_run(invocation) else {
                return;
            };
            run.reached_break = true;
            let outcome = self.loop_outcome(invocation, 0, None);
            self.queue.push_back(Task::Resume { invocation, resume: Resume::Finished(Box::new(outcome)) });
            return;
        }
        let Some(start) = spec.start else { return };
        let mut pool = parent_state.pool.clone();
        for member in &spec.members {
            pool.clear(Slot::Node(*member));
        }
        let scope = self.child_scope(parent, node, index, false);
        let child = self.new_frame(FrameKind::LoopRound { invocation, index }, Some(parent), pool, scope);
        self.enqueue(child, start);
    }

    fn loop_outcome(&mut self, invocation: usize, steps: usize, error: Option<String>) -> ContainerOutcome {
        let Some(run) = self.loop_run(invocation) else {
            return ContainerOutcome { outputs: Map::default(), inputs: Map::default(), metadata: Map::default(), steps, error };
        };
        let reason = if error.is_some() {
            "error"
        } else if run.reached_break {
            "loop_break"
        } else {
            "loop_completed"
        };
        let metadata = map_of([
            ("total_tokens", Value::Int(run.usage.total_tokens)),
            ("total_price", Value::from(run.usage.total_price.to_string())),
            ("currency", Value::str(run.usage.currency.as_str())),
            ("loop_duration_map", Value::object(run.durations.clone())),
            ("loop_variable_map", Value::object(run.variable_map.clone())),
            ("completed_reason", Value::str(reason)),
        ]);
        let outputs = if error.is_some() { Map::default() } else { run.outputs.clone() };
        ContainerOutcome { outputs, inputs: run.inputs.clone(), metadata, steps, error }
    }

    fn complete_loop_round(&mut self, invocation: usize, index: usize, frame: Frame) {
        let plan = self.plan.clone();
        let Some(run) = self.loop_run(invocation) else {
            return;
        };
        let (parent, node) = (run.frame, run.node);
        let NodeKind::Loop(spec) = &plan.node(node).kind else {
            return;
        };
        run.completed += 1;
        run.durations.insert(Arc::from(index.to_string()), Value::Float(frame.started.elapsed().as_secs_f64()));
        run.usage = run.usage.plus(&frame.usage);
        let mut values = Map::default();
        for variable in &spec.variables {
            match frame.pool.variable(Slot::Node(node), &variable.label) {
                Some(value) => {
                    values.insert(variable.label.clone(), value.clone());
                }
                None => {
                    let outcome =
                        self.loop_outcome(invocation, spec.count as usize, Some(format!("loop variable {} is missing", variable.label)));
                    self.queue.push_back(Task::Resume { invocation, resume: Resume::Finished(Box::new(outcome)) });
                    return;
                }
            }
        }
        let Some(run) = self.loop_run(invocation) else {
            return;
        };
        run.variable_map.insert(Arc::from(index.to_string()), Value::object(values.clone()));
        for (key, value) in values {
            run.outputs.insert(key, value);
        }
        run.outputs.insert(key("loop_round"), Value::Int(index as i64 + 1));
        let completed = run.completed;
        if frame.errors.is_empty()
            && let Some(parent_state) = self.frame(parent)
        {
            for (key, value) in frame.outputs.iter() {
                merge_response_output(&mut parent_state.outputs, key, value);
            }
        }
        if let Some(error) = frame.errors.first().cloned() {
            let outcome = self.loop_outcome(invocation, spec.count as usize, Some(error));
            self.queue.push_back(Task::Resume { invocation, resume: Resume::Finished(Box::new(outcome)) });
            return;
        }
        let mut reached = frame.reached_break;
        if !reached && !spec.break_conditions.is_empty() {
            match process_conditions(&spec.break_conditions, spec.operator, &frame.pool) {
                Ok(check) => reached = check.final_result,
                Err(error) => {
                    let outcome = self.loop_outcome(invocation, spec.count as usize, Some(error));
                    self.queue.push_back(Task::Resume { invocation, resume: Resume::Finished(Box::new(outcome)) });
                    return;
                }
            }
        }
        let Some(run) = self.loop_run(invocation) else {
            return;
        };
        if reached {
            run.reached_break = true;
        }
        if run.reached_break || completed as i64 >= spec.count {
            let outcome = self.loop_outcome(invocation, spec.count as usize, None);
            self.queue.push_back(Task::Resume { invocation, resume: Resume::Finished(Box::new(outcome)) });
        } else {
            self.queue.push_back(Task::Resume { invocation, resume: Resume::LoopRound(completed) });
        }
    }

    fn resume(&mut self, invocation: usize, resume: Resume) {
        let Some(Some(container)) = self.invocations.get(invocation) else {
            return;
        };
        let (frame, node, is_iteration) = match container {
            Invocation::Iteration(run) => (run.frame, run.node, true),
            Invocation::Loop(run) => (run.frame, run.node, false),
        };
        let Some(info) = self.container_info(frame, node) else {
            return;
        };
        match resume {
            Resume::IterationItems(indexes) => {
                for &index in &indexes {
                    self.sink.emit(RunEvent::IterationNext { info: info.clone(), index });
                }
                self.schedule_iteration_items(invocation, indexes);
            }
            Resume::LoopRound(index) => {
                self.sink.emit(RunEvent::LoopNext { info, index });
                self.start_loop_round(invocation, index);
            }
            Resume::Finished(mut outcome) => {
                self.invocations[invocation] = None;
                if !is_iteration && outcome.error.is_none() {
                    // The parent pool holds the loop variables as the last round left them.
                    if let Some(state) = self.frame(frame) {
                        for (key, value) in outcome.outputs.iter_mut() {
                            if let Some(current) = state.pool.variable(Slot::Node(node), key) {
                                *value = current.clone();
                            }
                        }
                    }
                }
                let total_tokens = match outcome.metadata.get("total_tokens") {
                    Some(Value::Int(tokens)) => *tokens,
                    _ => 0,
                };
                let elapsed = self
                    .frame(frame)
                    .and_then(|state| state.executions[node as usize].as_ref())
                    .map_or(0.0, |execution| execution.started.elapsed().as_secs_f64());
                let completed = Box::new(ContainerCompleted {
                    info,
                    inputs: Arc::new(outcome.inputs.clone()),
                    outputs: Arc::new(outcome.outputs.clone()),
                    status: if outcome.error.is_some() { NodeStatus::Failed } else { NodeStatus::Succeeded },
                    error: outcome.error.clone(),
                    elapsed,
                    steps: outcome.steps,
                    metadata: Arc::new(outcome.metadata.clone()),
                    total_tokens,
                });
                self.sink.emit(if is_iteration { RunEvent::IterationCompleted(completed) } else { RunEvent::LoopCompleted(completed) });
                let result = NodeResult {
                    inputs: Some(Arc::new(outcome.inputs)),
                    metadata: Some(Arc::new(outcome.metadata)),
                    ..match outcome.error {
                        Some(error) => NodeResult::failed(error, "WorkflowNodeError"),
                        None => NodeResult::succeeded(outcome.outputs),
                    }
                };
                self.on_result(frame, node, result);
            }
        }
    }
}

/// Dify's `flatten_output`: when every non-null item output is a list, concatenate them.
fn flatten_outputs(outputs: Vec<Value>) -> Vec<Value> {
    let present: Vec<&Value> = outputs.iter().filter(|output| !output.is_none()).collect();
    if present.is_empty() || !present.iter().all(|output| matches!(output, Value::Array(_))) {
        return outputs;
    }
    let mut flattened = Vec::new();
    for output in outputs {
        if let Value::Array(items) = output {
            flattened.extend(items.iter().cloned());
        }
    }
    flattened
}

/// Response outputs accumulate: `answer` texts concatenate, other keys are replaced.
fn merge_response_outputs(target: &mut Map, outputs: &Map) {
    for (key, value) in outputs {
        merge_response_output(target, key, value);
    }
}

fn merge_response_output(target: &mut Map, key: &Arc<str>, value: &Value) {
    if &**key == "answer"
        && let Some(Value::Str(existing)) = target.get("answer")
        && !existing.is_empty()
    {
        let joined = format!("{existing}{}", crate::pyfmt::py_str(value));
        target.insert(key.clone(), Value::from(joined));
        return;
    }
    target.insert(key.clone(), value.clone());
}

/// Marks a finished node's outgoing edges and returns the nodes that became ready (in the
/// order Dify enqueues them) and the edges taken. Branches take the edges of their handle and
/// skip the rest, propagating skips to nodes that can no longer run.
fn advance(plan: &Plan, frame: &mut Frame, node: u32, branch: Option<&str>) -> (Vec<u32>, Vec<u32>) {
    let mut ready = Vec::new();
    let mut taken = Vec::new();
    let outgoing = &plan.node(node).outgoing;
    match branch {
        Some(handle) => {
            for &edge in outgoing.iter().filter(|&&edge| &*plan.edges[edge as usize].handle != handle) {
                skip_edge(plan, frame, edge, &mut ready);
            }
            for &edge in outgoing.iter().filter(|&&edge| &*plan.edges[edge as usize].handle == handle) {
                take_edge(plan, frame, edge, &mut ready, &mut taken);
            }
        }
        None => {
            for &edge in outgoing {
                take_edge(plan, frame, edge, &mut ready, &mut taken);
            }
        }
    }
    (ready, taken)
}

fn take_edge(plan: &Plan, frame: &mut Frame, edge: u32, ready: &mut Vec<u32>, taken: &mut Vec<u32>) {
    frame.edge_states[edge as usize] = EdgeState::Taken;
    taken.push(edge);
    let target = plan.edges[edge as usize].target;
    if is_ready(plan, frame, target) {
        ready.push(target);
    }
}

fn is_ready(plan: &Plan, frame: &Frame, node: u32) -> bool {
    let incoming = &plan.node(node).incoming;
    if incoming.is_empty() {
        return true;
    }
    let mut any_taken = false;
    for &edge in incoming {
        match frame.edge_states[edge as usize] {
            EdgeState::Unknown => return false,
            EdgeState::Taken => any_taken = true,
            EdgeState::Skipped => {}
        }
    }
    any_taken
}

fn skip_edge(plan: &Plan, frame: &mut Frame, edge: u32, ready: &mut Vec<u32>) {
    // Iterative to keep deep skip chains off the call stack.
    let mut pending = vec![edge];
    while let Some(edge) = pending.pop() {
        frame.edge_states[edge as usize] = EdgeState::Skipped;
        let target = plan.edges[edge as usize].target;
        let incoming = &plan.node(target).incoming;
        let mut has_unknown = false;
        let mut has_taken = false;
        for &incoming_edge in incoming {
            match frame.edge_states[incoming_edge as usize] {
                EdgeState::Unknown => has_unknown = true,
                EdgeState::Taken => has_taken = true,
                EdgeState::Skipped => {}
            }
        }
        if has_unknown {
            continue;
        }
        if has_taken {
            ready.push(target);
            continue;
        }
        frame.node_states[target as usize] = NodeState::Skipped;
        // Depth-first in edge order, as Dify recurses.
        pending.extend(plan.node(target).outgoing.iter().rev().copied());
    }
}
