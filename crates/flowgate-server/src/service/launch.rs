//! Starting a run for the Service API: the run log, the stop handle, the SSE stream, and for
//! chatflows the turn's message and conversation variables. The client hears the run has ended
//! (the blocking answer, `workflow_finished`, `message_end`) only once its row and final state
//! and the turn are committed, so its next call sees them on any replica; if they cannot be
//! stored, it hears that instead (503), never a success the log does not hold.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::Response;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use serde_json::{Value as Json, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use flowgate_engine::plan::DeclaredVariable;
use flowgate_engine::{Map, Plan, RunControl, RunEvent, RunRequest, RunSummary};
use flowgate_store::ConversationVariable;
use flowgate_store::recorder::{Committed, NodeRecord, RunStart};

use super::{ServedApp, Shared, Task};
use crate::api_error::ApiError;
use crate::wire::WireContext;

const PING_EVERY: Duration = Duration::from_secs(10);
/// The longest a finished run waits for its row to be committed before the client is told the
/// run log cannot store it (the row is still written once the log recovers).
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// How often a run waiting for its commit checks that the run log is still writing.
const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(20);
/// The most bytes of events sent as one chunk.
const MAX_CHUNK: usize = 64 * 1024;

/// A chatflow turn: what to save when its run ends.
pub struct Turn {
    pub conversation_id: String,
    pub message_id: String,
    pub declared: Vec<DeclaredVariable>,
    /// An agent app's thought id, kept with the message so `GET /messages` can list it.
    pub agent_thought: Option<String>,
}

pub struct Launch {
    pub app: Arc<ServedApp>,
    pub version_id: String,
    pub plan: Arc<Plan>,
    pub prepared: Map,
    pub request: RunRequest,
    pub wire: WireContext,
    pub end_user_id: String,
    pub streaming: bool,
    pub turn: Option<Turn>,
    /// The app's concurrency slot, released when the run ends.
    pub slot: Option<OwnedSemaphorePermit>,
}

pub enum Launched {
    /// The run's events as they happen; the run goes on if the client leaves.
    Stream(Response),
    /// The run, to be awaited by a blocking request: its summary once it is stored.
    Blocking(JoinHandle<Result<RunSummary, ApiError>>),
}

/// Starts the run on its own task.
pub fn launch(state: &Shared, launch: Launch) -> Launched {
    let Launch { app, version_id, plan, prepared, request, wire, end_user_id, streaming, turn, slot } = launch;
    let run_id = wire.run_id.clone();
    // `None` when the app keeps no run log: then logging costs nothing.
    let mut recording = state.recorder.run_started(RunStart {
        id: run_id.clone(),
        app_id: app.id.clone(),
        version_id,
        task_id: wire.task_id.clone(),
        end_user_id: Some(end_user_id),
        conversation_id: turn.as_ref().map(|turn| turn.conversation_id.clone()),
        message_id: turn.as_ref().map(|turn| turn.message_id.clone()),
        created_from: "service-api".into(),
        detail: app.log_detail,
        retention_days: app.retention_days,
        inputs: Arc::new(prepared.clone()),
        instance_id: state.instance_id.clone(),
        created_at: flowgate_store::now(),
    });
    // A streamed run's id reaches the client in `workflow_started`: its row is committed first,
    // so looking the run up right away finds it.
    let announced = if streaming { recording.as_mut().map(|recording| recording.announce()) } else { None };
    let control = RunControl::new();
    if let Ok(mut tasks) = state.tasks.lock() {
        let (ended, _) = tokio::sync::watch::channel(false);
        tasks.insert(wire.task_id.clone(), Task { app_id: app.id.clone(), control: control.clone(), ended });
    }
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Bytes>();
    let app_id = app.id.clone();
    let state = state.clone();
    let handle = tokio::spawn(async move {
        let metrics = &state.metrics;
        // The closing events wait until the turn is saved.
        let mut closing = Vec::new();
        let mut announce_failed = false;
        if let Some(announced) = announced
            && let Err(error) = wait_committed(&state, announced, "started").await
        {
            // The client hears why; the run ends at once as stopped, which is logged once the
            // run log recovers.
            let _ = events_tx.send(wire.error_event(error.code, &error.message, error.status.as_u16()));
            announce_failed = true;
            control.stop();
        }
        let mut sink = |event: RunEvent| {
            match &event {
                RunEvent::NodeFinished(finished) => {
                    metrics.node_finished(&finished.info.node_type, finished.elapsed);
                    if let Some(recording) = &mut recording {
                        recording.node_finished(NodeRecord::from_finished(finished));
                    }
                }
                RunEvent::IterationCompleted(completed) | RunEvent::LoopCompleted(completed) => {
                    if let Some(recording) = &mut recording {
                        recording.node_finished(NodeRecord::from_container(completed, flowgate_store::now()));
                    }
                }
                _ => {}
            }
            if streaming && !announce_failed {
                let payloads = wire.encode(&event);
                if matches!(event, RunEvent::WorkflowFinished(_)) {
                    closing = payloads;
                } else {
                    for payload in payloads {
                        let _ = events_tx.send(payload);
                    }
                }
            }
        };
        let summary = state.engine.run_prepared(&plan, prepared, &request, &mut sink, Some(&control)).await;
        let committed = recording.map_or_else(Committed::now, |recording| recording.run_finished(&summary));
        // The run first, then the turn: an answered message never points at a run the log
        // does not hold, even if the process dies between the two.
        let mut stored = wait_committed(&state, committed, "finished").await;
        if let Some(turn) = &turn {
            stored = stored.and(save_turn(&state, turn, &request, &summary).await);
            if summary.status == flowgate_engine::RunStatus::Failed && streaming && !announce_failed {
                closing = wire.failed_turn_events(&summary, "invalid_param", &run_failed_message(&summary), 400);
            }
        }
        if let Err(error) = &stored
            && streaming
            && !announce_failed
        {
            closing = vec![wire.error_event(error.code, &error.message, error.status.as_u16())];
        }
        for payload in closing {
            let _ = events_tx.send(payload);
        }
        if let Ok(mut tasks) = state.tasks.lock()
            && let Some(task) = tasks.remove(&wire.task_id)
        {
            let _ = task.ended.send(true);
        }
        drop(slot);
        state.metrics.run_finished(&app_id, summary.status.as_str(), summary.elapsed);
        stored.map(|()| summary)
    });
    if streaming { Launched::Stream(sse_response(events_rx)) } else { Launched::Blocking(handle) }
}

pub fn run_failed_message(summary: &RunSummary) -> String {
    format!("Run failed: {}", summary.error.as_deref().unwrap_or_default())
}

/// The run's row committed, or why the client cannot be told the run is stored.
async fn wait_committed(state: &Shared, committed: Committed, stage: &str) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
    let committed = committed.wait();
    tokio::pin!(committed);
    // While the run log is failing, the client hears so at once instead of after COMMIT_WAIT.
    let reason = loop {
        tokio::select! {
            result = &mut committed => match result {
                Ok(()) => return Ok(()),
                Err(error) => break error.to_string(),
            },
            () = tokio::time::sleep(HEALTH_CHECK_EVERY) => {
                if let Err(error) = state.recorder.health() {
                    break error.to_string();
                }
                if tokio::time::Instant::now() >= deadline {
                    break "the run log did not commit it in time".to_owned();
                }
            }
        }
    };
    // Debug only: in an outage this is every run; the run log reports the failure itself.
    tracing::debug!(%reason, stage, "a run could not be stored in time; its client gets 503");
    Err(ApiError::unavailable(
        format!("The run {stage} but could not be stored: {reason}. It is written once the run log recovers; please retry shortly."),
        2,
    ))
}

/// Saves the turn's answer and conversation variables.
async fn save_turn(state: &Shared, turn: &Turn, request: &RunRequest, summary: &RunSummary) -> Result<(), ApiError> {
    let now = flowgate_store::now();
    let variables: Vec<ConversationVariable> = turn
        .declared
        .iter()
        .map(|declared| ConversationVariable {
            id: declared.id.clone(),
            name: declared.name.to_string(),
            value_type: declared.value_type_name.clone(),
            value: summary
                .conversation_variables
                .get(&*declared.name)
                .or_else(|| request.conversation_variables.get(&*declared.name))
                .map_or(Json::Null, |value| serde_json::to_value(value).unwrap_or(Json::Null)),
            description: declared.description.clone(),
            created_at: now,
            updated_at: now,
        })
        .collect();
    let error = (summary.status == flowgate_engine::RunStatus::Failed).then(|| run_failed_message(summary));
    let mut metadata = json!({"usage": crate::wire::usage_json(summary), "retriever_resources": []});
    if let (Some(thought), Some(object)) = (&turn.agent_thought, metadata.as_object_mut()) {
        object.insert("agent_thought_id".into(), thought.clone().into());
    }
    let saved =
        state.store.end_turn(&turn.message_id, &summary.answer, error.as_deref(), &metadata, &turn.conversation_id, &variables).await;
    saved.map_err(|error| {
        tracing::error!(%error, message_id = %turn.message_id, "could not save a chat turn");
        ApiError::from(error)
    })
}

/// Dify's SSE framing: `data: {json}\n\n` per event, and `event: ping\n\n` after ten seconds
/// without one. Whatever the run has produced when the connection is ready to write goes out
/// as one chunk: one write instead of one per event, and nothing ever waits to be batched.
pub fn sse_response(mut events: mpsc::UnboundedReceiver<Bytes>) -> Response {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let stream = futures::stream::poll_fn(move |context| {
        let mut chunk = BytesMut::new();
        let mut ended = false;
        while chunk.len() < MAX_CHUNK {
            match events.poll_recv(context) {
                Poll::Ready(Some(payload)) => {
                    chunk.extend_from_slice(b"data: ");
                    chunk.extend_from_slice(&payload);
                    chunk.extend_from_slice(b"\n\n");
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !chunk.is_empty() {
            ping.reset();
            return Poll::Ready(Some(Ok::<_, Infallible>(chunk.freeze())));
        }
        if ended {
            return Poll::Ready(None);
        }
        match ping.poll_tick(context) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Bytes::from_static(b"event: ping\n\n")))),
            Poll::Pending => Poll::Pending,
        }
    });
    let mut response = Response::new(axum::body::Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    response
}
