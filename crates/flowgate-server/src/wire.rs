//! Run events in the Service API's SSE payload shapes (Dify's `StreamResponse` objects).

use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::{Value as Json, json};

use flowgate_engine::event::{ContainerCompleted, NodeFinished, NodeInfo, RunEvent, RunSummary};
use flowgate_engine::value::{Map, MapRef, Value};

/// Which envelope events get: workflow apps carry `workflow_run_id`, chat apps carry the
/// conversation and message ids and turn answer text into `message` events.
#[derive(Debug, Clone)]
pub enum Envelope {
    Workflow,
    Chat {
        conversation_id: String,
        message_id: String,
    },
    /// Basic-editor apps (chat: with a conversation; completion: without) stream only
    /// `message` and `message_end`: their graph is flowgate's, not the user's. An agent app
    /// (`agent_thought` = its one thought's id) streams `agent_message` between two
    /// `agent_thought` events instead.
    Message {
        conversation_id: Option<String>,
        message_id: String,
        agent_thought: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct WireContext {
    pub task_id: String,
    pub run_id: String,
    pub user: String,
    pub end_user_id: String,
    pub envelope: Envelope,
}

fn map_json(map: &Map) -> Json {
    serde_json::to_value(MapRef(map)).unwrap_or(Json::Null)
}

fn is_container(info: &NodeInfo) -> bool {
    matches!(&*info.node_type, "iteration" | "loop")
}

impl WireContext {
    fn envelope(&self, event: &str, created_at: i64) -> serde_json::Map<String, Json> {
        let mut object = serde_json::Map::new();
        object.insert("event".into(), event.into());
        match &self.envelope {
            Envelope::Workflow => {
                object.insert("task_id".into(), self.task_id.clone().into());
                object.insert("workflow_run_id".into(), self.run_id.clone().into());
            }
            Envelope::Chat { conversation_id, message_id } => {
                object.insert("conversation_id".into(), conversation_id.clone().into());
                object.insert("message_id".into(), message_id.clone().into());
                object.insert("created_at".into(), created_at.into());
                object.insert("task_id".into(), self.task_id.clone().into());
                object.insert("workflow_run_id".into(), self.run_id.clone().into());
            }
            Envelope::Message { conversation_id, message_id, .. } => {
                if let Some(conversation_id) = conversation_id {
                    object.insert("conversation_id".into(), conversation_id.clone().into());
                }
                object.insert("message_id".into(), message_id.clone().into());
                object.insert("created_at".into(), created_at.into());
                object.insert("task_id".into(), self.task_id.clone().into());
            }
        }
        object
    }

    /// An agent app's thought (Dify's `AgentThoughtStreamResponse`): announced empty before the
    /// answer streams, and again with the answer as its thought when the model is done. Without
    /// tools there is one thought and nothing observed.
    fn agent_thought(&self, id: &str, thought: &str, created_at: i64) -> Bytes {
        let mut object = self.envelope("agent_thought", created_at);
        object.insert("id".into(), id.into());
        object.insert("position".into(), 1.into());
        object.insert("thought".into(), thought.into());
        object.insert("observation".into(), "".into());
        object.insert("tool".into(), "".into());
        object.insert("tool_labels".into(), json!({}));
        object.insert("tool_input".into(), "".into());
        object.insert("message_files".into(), json!([]));
        json_bytes(&Json::Object(object))
    }

    /// The closing `message_end` of a chat or basic-editor app's turn.
    fn message_end(&self, message_id: &str, summary: &RunSummary) -> Bytes {
        let mut object = self.envelope("message_end", summary.finished_at);
        object.insert("id".into(), message_id.into());
        object.insert("metadata".into(), json!({"usage": usage_json(summary), "retriever_resources": []}));
        object.insert("files".into(), json!([]));
        json_bytes(&Json::Object(object))
    }

    /// The events that end a failed turn: Dify sends `error` instead of `message_end`
    /// (after `workflow_finished` for a chatflow).
    pub fn failed_turn_events(&self, summary: &RunSummary, code: &str, message: &str, status: u16) -> Vec<Bytes> {
        let mut events = Vec::with_capacity(2);
        if matches!(self.envelope, Envelope::Chat { .. }) {
            events.push(self.frame(
                "workflow_finished",
                summary.finished_at,
                &WorkflowFinishedData { wire: self, summary, blocking: false },
            ));
        }
        events.push(self.error_event(code, message, status));
        events
    }

    fn with_data(&self, event: &str, created_at: i64, data: Json) -> Json {
        let mut object = self.envelope(event, created_at);
        object.insert("data".into(), data);
        Json::Object(object)
    }

    /// The SSE payloads (JSON text) for one run event: none, one, or — at the end of a chat
    /// run — two. The frequent events are written straight from the run's values; building a
    /// JSON tree first and printing it cost more than running the nodes.
    pub fn encode(&self, event: &RunEvent) -> Vec<Bytes> {
        if let Envelope::Message { message_id, agent_thought, .. } = &self.envelope {
            return match (event, agent_thought) {
                (RunEvent::WorkflowStarted { created_at, .. }, Some(thought)) => vec![self.agent_thought(thought, "", *created_at)],
                (RunEvent::TextChunk { text, .. }, _) => {
                    let kind = if agent_thought.is_some() { "agent_message" } else { "message" };
                    let mut object = self.envelope(kind, now());
                    object.insert("id".into(), message_id.clone().into());
                    object.insert("answer".into(), text.clone().into());
                    vec![json_bytes(&Json::Object(object))]
                }
                (RunEvent::WorkflowFinished(summary), Some(thought)) => {
                    vec![self.agent_thought(thought, &summary.answer, summary.finished_at), self.message_end(message_id, summary)]
                }
                (RunEvent::WorkflowFinished(summary), None) => vec![self.message_end(message_id, summary)],
                _ => Vec::new(),
            };
        }
        match event {
            RunEvent::WorkflowStarted { run_id, workflow_id, inputs, created_at } => vec![self.frame(
                "workflow_started",
                *created_at,
                &WorkflowStarted { id: run_id, workflow_id, inputs: MapRef(inputs), created_at: *created_at },
            )],
            RunEvent::NodeStarted(info) if is_container(info) => Vec::new(),
            RunEvent::NodeStarted(info) => vec![self.frame("node_started", info.created_at, &NodeStarted(info))],
            RunEvent::NodeFinished(finished) if is_container(&finished.info) => Vec::new(),
            RunEvent::NodeFinished(finished) => vec![self.frame("node_finished", finished.info.created_at, &NodeFinishedData(finished))],
            RunEvent::NodeRetry(finished) => vec![self.frame("node_retry", finished.info.created_at, &NodeFinishedData(finished))],
            RunEvent::TextChunk { text, selector } => {
                let selector: Vec<&str> = selector.iter().map(String::as_str).collect();
                match &self.envelope {
                    Envelope::Workflow => {
                        vec![json_bytes(&self.with_data("text_chunk", 0, json!({"text": text, "from_variable_selector": selector})))]
                    }
                    Envelope::Chat { message_id, .. } | Envelope::Message { message_id, .. } => {
                        let mut object = self.envelope("message", now());
                        object.insert("id".into(), message_id.clone().into());
                        object.insert("answer".into(), text.clone().into());
                        object.insert("from_variable_selector".into(), json!(selector));
                        vec![json_bytes(&Json::Object(object))]
                    }
                }
            }
            RunEvent::IterationStarted { info, inputs, length } => vec![json_bytes(&self.with_data(
                "iteration_started",
                info.created_at,
                container_started(info, inputs, json!({"iteration_length": length})),
            ))],
            RunEvent::LoopStarted { info, inputs, length } => vec![json_bytes(&self.with_data(
                "loop_started",
                info.created_at,
                container_started(info, inputs, json!({"loop_length": length})),
            ))],
            RunEvent::IterationNext { info, index } => {
                vec![json_bytes(&self.with_data("iteration_next", now(), container_next(info, *index, false)))]
            }
            RunEvent::LoopNext { info, index } => vec![json_bytes(&self.with_data("loop_next", now(), container_next(info, *index, true)))],
            RunEvent::IterationCompleted(completed) => {
                vec![json_bytes(&self.with_data("iteration_completed", now(), container_completed(completed)))]
            }
            RunEvent::LoopCompleted(completed) => {
                vec![json_bytes(&self.with_data("loop_completed", now(), container_completed(completed)))]
            }
            RunEvent::VariableUpdated { .. } => Vec::new(),
            RunEvent::WorkflowFinished(summary) => {
                let mut events = vec![self.frame(
                    "workflow_finished",
                    summary.finished_at,
                    &WorkflowFinishedData { wire: self, summary, blocking: false },
                )];
                if let Envelope::Chat { message_id, .. } = &self.envelope {
                    events.push(self.message_end(message_id, summary));
                }
                events
            }
        }
    }

    /// One event frame: `event`, the envelope's ids, then `data`.
    fn frame(&self, event: &'static str, created_at: i64, data: &impl Serialize) -> Bytes {
        let mut out = Vec::with_capacity(512);
        // Serialising plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &Frame { wire: self, event, created_at, data });
        Bytes::from(out)
    }

    /// The blocking answer of `POST /workflows/run`: `{task_id, workflow_run_id, data}`.
    pub fn blocking_response(&self, summary: &RunSummary) -> Bytes {
        let data = WorkflowFinishedData { wire: self, summary, blocking: true };
        let mut out = Vec::with_capacity(512);
        let _ = serde_json::to_writer(&mut out, &BlockingResponse { task_id: &self.task_id, workflow_run_id: &self.run_id, data });
        Bytes::from(out)
    }

    /// Dify's `error` stream event, which ends a stream.
    pub fn error_event(&self, code: &str, message: &str, status: u16) -> Bytes {
        let mut object = self.envelope("error", now());
        object.insert("code".into(), code.into());
        object.insert("message".into(), message.into());
        object.insert("status".into(), status.into());
        json_bytes(&Json::Object(object))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Token usage in `message_end` and a chat message's metadata: the run's model calls added up,
/// in Dify's `LLMUsage` shape (its `latency` is the models' time, not the run's).
pub fn usage_json(summary: &RunSummary) -> Json {
    serde_json::to_value(summary.usage.to_value()).unwrap_or(Json::Null)
}

fn json_bytes(value: &Json) -> Bytes {
    Bytes::from(value.to_string())
}

struct Frame<'a, D> {
    wire: &'a WireContext,
    event: &'static str,
    created_at: i64,
    data: &'a D,
}

impl<D: Serialize> Serialize for Frame<'_, D> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("event", self.event)?;
        match &self.wire.envelope {
            Envelope::Workflow => {
                map.serialize_entry("task_id", &self.wire.task_id)?;
                map.serialize_entry("workflow_run_id", &self.wire.run_id)?;
            }
            Envelope::Chat { conversation_id, message_id } => {
                map.serialize_entry("conversation_id", conversation_id)?;
                map.serialize_entry("message_id", message_id)?;
                map.serialize_entry("created_at", &self.created_at)?;
                map.serialize_entry("task_id", &self.wire.task_id)?;
                map.serialize_entry("workflow_run_id", &self.wire.run_id)?;
            }
            // Basic-editor apps send no workflow events; written for completeness.
            Envelope::Message { conversation_id, message_id, .. } => {
                if let Some(conversation_id) = conversation_id {
                    map.serialize_entry("conversation_id", conversation_id)?;
                }
                map.serialize_entry("message_id", message_id)?;
                map.serialize_entry("created_at", &self.created_at)?;
                map.serialize_entry("task_id", &self.wire.task_id)?;
            }
        }
        map.serialize_entry("data", self.data)?;
        map.end()
    }
}

#[derive(Serialize)]
struct BlockingResponse<'a> {
    task_id: &'a str,
    workflow_run_id: &'a str,
    data: WorkflowFinishedData<'a>,
}

struct WorkflowStarted<'a> {
    id: &'a str,
    workflow_id: &'a str,
    inputs: MapRef<'a>,
    created_at: i64,
}

impl Serialize for WorkflowStarted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("workflow_id", self.workflow_id)?;
        map.serialize_entry("inputs", &self.inputs)?;
        map.serialize_entry("created_at", &self.created_at)?;
        map.serialize_entry("reason", "initial")?;
        map.end()
    }
}

/// A map that may be absent, as JSON (`null` when absent).
struct OptionalMap<'a>(Option<&'a Map>);

impl Serialize for OptionalMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(map) => MapRef(map).serialize(serializer),
            None => serializer.serialize_none(),
        }
    }
}

/// The files in a node's outputs, as Dify lists them.
struct FilesIn<'a>(Option<&'a Map>);

impl Serialize for FilesIn<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut files = serializer.serialize_seq(None)?;
        for value in self.0.into_iter().flat_map(|outputs| outputs.values()) {
            match value {
                Value::File(file) => files.serialize_element(&MapRef(&file.to_map()))?,
                Value::Array(items) => {
                    for item in items.iter() {
                        if let Value::File(file) = item {
                            files.serialize_element(&MapRef(&file.to_map()))?;
                        }
                    }
                }
                _ => {}
            }
        }
        files.end()
    }
}

struct NodeStarted<'a>(&'a NodeInfo);

impl Serialize for NodeStarted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let info = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &*info.execution_id)?;
        map.serialize_entry("node_id", &*info.node_id)?;
        map.serialize_entry("node_type", &*info.node_type)?;
        map.serialize_entry("title", &*info.title)?;
        map.serialize_entry("index", &info.index)?;
        map.serialize_entry("predecessor_node_id", &())?;
        map.serialize_entry("inputs", &())?;
        map.serialize_entry("inputs_truncated", &false)?;
        map.serialize_entry("created_at", &info.created_at)?;
        map.serialize_entry("extras", &EmptyObject)?;
        map.serialize_entry("iteration_id", &info.scope.iteration.as_ref().map(|(id, _)| &**id))?;
        map.serialize_entry("loop_id", &info.scope.loop_round.as_ref().map(|(id, _)| &**id))?;
        map.serialize_entry("agent_strategy", &())?;
        map.end()
    }
}

struct NodeFinishedData<'a>(&'a NodeFinished);

impl Serialize for NodeFinishedData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let finished = self.0;
        let info = &finished.info;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &*info.execution_id)?;
        map.serialize_entry("node_id", &*info.node_id)?;
        map.serialize_entry("node_type", &*info.node_type)?;
        map.serialize_entry("title", &*info.title)?;
        map.serialize_entry("index", &info.index)?;
        map.serialize_entry("predecessor_node_id", &())?;
        map.serialize_entry("inputs", &OptionalMap(finished.inputs.as_deref()))?;
        map.serialize_entry("inputs_truncated", &false)?;
        map.serialize_entry("process_data", &OptionalMap(finished.process_data.as_deref()))?;
        map.serialize_entry("process_data_truncated", &false)?;
        map.serialize_entry("outputs", &OptionalMap(finished.outputs.as_deref()))?;
        map.serialize_entry("outputs_truncated", &false)?;
        map.serialize_entry("status", finished.status.as_str())?;
        map.serialize_entry("error", &finished.error)?;
        map.serialize_entry("elapsed_time", &finished.elapsed)?;
        map.serialize_entry("execution_metadata", &OptionalMap(finished.metadata.as_deref()))?;
        map.serialize_entry("created_at", &info.created_at)?;
        map.serialize_entry("finished_at", &finished.finished_at)?;
        map.serialize_entry("files", &FilesIn(finished.outputs.as_deref()))?;
        map.serialize_entry("iteration_id", &info.scope.iteration.as_ref().map(|(id, _)| &**id))?;
        map.serialize_entry("loop_id", &info.scope.loop_round.as_ref().map(|(id, _)| &**id))?;
        if let Some(index) = finished.retry_index {
            map.serialize_entry("retry_index", &index)?;
        }
        map.end()
    }
}

/// `workflow_finished`'s data; the blocking answer leaves out `created_by`,
/// `exceptions_count` and `files`, as Dify's does.
struct WorkflowFinishedData<'a> {
    wire: &'a WireContext,
    summary: &'a RunSummary,
    blocking: bool,
}

impl Serialize for WorkflowFinishedData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let summary = self.summary;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &*summary.run_id)?;
        map.serialize_entry("workflow_id", &*summary.workflow_id)?;
        map.serialize_entry("status", summary.status.as_str())?;
        map.serialize_entry("outputs", &MapRef(&summary.outputs))?;
        map.serialize_entry("error", &summary.error)?;
        map.serialize_entry("elapsed_time", &summary.elapsed)?;
        map.serialize_entry("total_tokens", &summary.usage.total_tokens)?;
        map.serialize_entry("total_steps", &summary.total_steps)?;
        if !self.blocking {
            map.serialize_entry("created_by", &CreatedBy { id: &self.wire.end_user_id, user: &self.wire.user })?;
        }
        map.serialize_entry("created_at", &summary.created_at)?;
        map.serialize_entry("finished_at", &summary.finished_at)?;
        if !self.blocking {
            map.serialize_entry("exceptions_count", &summary.exceptions_count)?;
            map.serialize_entry("files", &FilesIn(Some(&summary.outputs)))?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct CreatedBy<'a> {
    id: &'a str,
    user: &'a str,
}

struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_map(Some(0))?.end()
    }
}

fn container_started(info: &NodeInfo, inputs: &Map, metadata: Json) -> Json {
    json!({
        "id": &*info.node_id,
        "node_id": &*info.node_id,
        "node_type": &*info.node_type,
        "title": &*info.title,
        "created_at": info.created_at,
        "extras": {},
        "metadata": metadata,
        "inputs": map_json(inputs),
        "inputs_truncated": false,
    })
}

fn container_next(info: &NodeInfo, index: usize, is_loop: bool) -> Json {
    let mut data = json!({
        "id": &*info.node_id,
        "node_id": &*info.node_id,
        "node_type": &*info.node_type,
        "title": &*info.title,
        "index": index,
        "created_at": now(),
        "extras": {},
    });
    if is_loop && let Json::Object(object) = &mut data {
        object.insert("pre_loop_output".into(), json!({}));
    }
    data
}

fn container_completed(completed: &ContainerCompleted) -> Json {
    let info = &completed.info;
    json!({
        "id": &*info.node_id,
        "node_id": &*info.node_id,
        "node_type": &*info.node_type,
        "title": &*info.title,
        "outputs": map_json(&completed.outputs),
        "outputs_truncated": false,
        "created_at": info.created_at,
        "extras": {},
        "inputs": map_json(&completed.inputs),
        "inputs_truncated": false,
        "status": completed.status.as_str(),
        "error": completed.error,
        "elapsed_time": completed.elapsed,
        "total_tokens": completed.total_tokens,
        "execution_metadata": map_json(&completed.metadata),
        "finished_at": now(),
        "steps": completed.steps,
    })
}
