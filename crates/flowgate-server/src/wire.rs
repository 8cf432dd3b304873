//! Run events in the Service API's SSE payload shapes (Dify's `StreamResponse` objects).

use std::sync::Arc;

use serde_json::{Value as Json, json};

use flowgate_engine::event::{ContainerCompleted, NodeFinished, NodeInfo, RunEvent, RunSummary};
use flowgate_engine::value::{Map, MapRef, Value};

/// Which envelope events get: workflow apps carry `workflow_run_id`, chat apps carry the
/// conversation and message ids and turn answer text into `message` events.
#[derive(Debug, Clone)]
pub enum Envelope {
    Workflow,
    Chat { conversation_id: String, message_id: String },
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

fn optional_map(map: &Option<Arc<Map>>) -> Json {
    map.as_deref().map_or(Json::Null, map_json)
}

/// Files found in a node's outputs (Dify's `fetch_files_from_node_outputs`).
pub fn files_in(outputs: Option<&Map>) -> Json {
    let mut files = Vec::new();
    if let Some(outputs) = outputs {
        for value in outputs.values() {
            match value {
                Value::File(file) => files.push(map_json(&file.to_map())),
                Value::Array(items) => {
                    files.extend(items.iter().filter_map(|item| match item {
                        Value::File(file) => Some(map_json(&file.to_map())),
                        _ => None,
                    }));
                }
                _ => {}
            }
        }
    }
    Json::Array(files)
}

fn scope_ids(info: &NodeInfo) -> (Json, Json) {
    let iteration = info.scope.iteration.as_ref().map_or(Json::Null, |(id, _)| Json::from(&**id));
    let loop_id = info.scope.loop_round.as_ref().map_or(Json::Null, |(id, _)| Json::from(&**id));
    (iteration, loop_id)
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
        }
        object
    }

    fn with_data(&self, event: &str, created_at: i64, data: Json) -> Json {
        let mut object = self.envelope(event, created_at);
        object.insert("data".into(), data);
        Json::Object(object)
    }

    /// The SSE payloads for one run event (none, one, or — at the end of a chat run — two).
    pub fn encode(&self, event: &RunEvent) -> Vec<Json> {
        match event {
            RunEvent::WorkflowStarted { run_id, workflow_id, inputs, created_at } => vec![self.with_data(
                "workflow_started",
                *created_at,
                json!({
                    "id": &**run_id,
                    "workflow_id": &**workflow_id,
                    "inputs": map_json(inputs),
                    "created_at": created_at,
                    "reason": "initial",
                }),
            )],
            RunEvent::NodeStarted(info) if is_container(info) => Vec::new(),
            RunEvent::NodeStarted(info) => {
                let (iteration_id, loop_id) = scope_ids(info);
                vec![self.with_data(
                    "node_started",
                    info.created_at,
                    json!({
                        "id": &*info.execution_id,
                        "node_id": &*info.node_id,
                        "node_type": &*info.node_type,
                        "title": &*info.title,
                        "index": info.index,
                        "predecessor_node_id": null,
                        "inputs": null,
                        "inputs_truncated": false,
                        "created_at": info.created_at,
                        "extras": {},
                        "iteration_id": iteration_id,
                        "loop_id": loop_id,
                        "agent_strategy": null,
                    }),
                )]
            }
            RunEvent::NodeFinished(finished) if is_container(&finished.info) => Vec::new(),
            RunEvent::NodeFinished(finished) => vec![self.with_data("node_finished", finished.info.created_at, node_finished(finished))],
            RunEvent::NodeRetry(finished) => vec![self.with_data("node_retry", finished.info.created_at, node_finished(finished))],
            RunEvent::TextChunk { text, selector } => {
                let selector: Vec<&str> = selector.iter().map(String::as_str).collect();
                match &self.envelope {
                    Envelope::Workflow => {
                        vec![self.with_data("text_chunk", 0, json!({"text": text, "from_variable_selector": selector}))]
                    }
                    Envelope::Chat { message_id, .. } => {
                        let mut object = self.envelope("message", now());
                        object.insert("id".into(), message_id.clone().into());
                        object.insert("answer".into(), text.clone().into());
                        object.insert("from_variable_selector".into(), json!(selector));
                        vec![Json::Object(object)]
                    }
                }
            }
            RunEvent::IterationStarted { info, inputs, length } => {
                vec![self.with_data(
                    "iteration_started",
                    info.created_at,
                    container_started(info, inputs, json!({"iteration_length": length})),
                )]
            }
            RunEvent::LoopStarted { info, inputs, length } => {
                vec![self.with_data("loop_started", info.created_at, container_started(info, inputs, json!({"loop_length": length})))]
            }
            RunEvent::IterationNext { info, index } => {
                vec![self.with_data("iteration_next", now(), container_next(info, *index, false))]
            }
            RunEvent::LoopNext { info, index } => {
                vec![self.with_data("loop_next", now(), container_next(info, *index, true))]
            }
            RunEvent::IterationCompleted(completed) => {
                vec![self.with_data("iteration_completed", now(), container_completed(completed))]
            }
            RunEvent::LoopCompleted(completed) => {
                vec![self.with_data("loop_completed", now(), container_completed(completed))]
            }
            RunEvent::VariableUpdated { .. } => Vec::new(),
            RunEvent::WorkflowFinished(summary) => {
                let mut events = vec![self.with_data("workflow_finished", summary.finished_at, self.workflow_finished(summary))];
                if let Envelope::Chat { message_id, .. } = &self.envelope {
                    let mut object = self.envelope("message_end", summary.finished_at);
                    object.insert("id".into(), message_id.clone().into());
                    object.insert("metadata".into(), json!({"usage": usage_json(summary), "retriever_resources": []}));
                    object.insert("files".into(), json!([]));
                    events.push(Json::Object(object));
                }
                events
            }
        }
    }

    /// Dify's `error` stream event, which ends a stream.
    pub fn error_event(&self, code: &str, message: &str, status: u16) -> Json {
        let mut object = self.envelope("error", now());
        object.insert("code".into(), code.into());
        object.insert("message".into(), message.into());
        object.insert("status".into(), status.into());
        Json::Object(object)
    }

    pub fn workflow_finished(&self, summary: &RunSummary) -> Json {
        json!({
            "id": &*summary.run_id,
            "workflow_id": &*summary.workflow_id,
            "status": summary.status.as_str(),
            "outputs": map_json(&summary.outputs),
            "error": summary.error,
            "elapsed_time": summary.elapsed,
            "total_tokens": summary.total_tokens,
            "total_steps": summary.total_steps,
            "created_by": {"id": self.end_user_id, "user": self.user},
            "created_at": summary.created_at,
            "finished_at": summary.finished_at,
            "exceptions_count": summary.exceptions_count,
            "files": files_in(Some(&summary.outputs)),
        })
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Token usage in `message_end` (prices are zero until the gateway reports them).
pub fn usage_json(summary: &RunSummary) -> Json {
    json!({
        "prompt_tokens": 0,
        "prompt_unit_price": "0.0",
        "prompt_price_unit": "0.0",
        "prompt_price": "0.0",
        "completion_tokens": 0,
        "completion_unit_price": "0.0",
        "completion_price_unit": "0.0",
        "completion_price": "0.0",
        "total_tokens": summary.total_tokens,
        "total_price": "0.0",
        "currency": "USD",
        "latency": summary.elapsed,
    })
}

fn node_finished(finished: &NodeFinished) -> Json {
    let info = &finished.info;
    let (iteration_id, loop_id) = scope_ids(info);
    let mut data = json!({
        "id": &*info.execution_id,
        "node_id": &*info.node_id,
        "node_type": &*info.node_type,
        "title": &*info.title,
        "index": info.index,
        "predecessor_node_id": null,
        "inputs": optional_map(&finished.inputs),
        "inputs_truncated": false,
        "process_data": optional_map(&finished.process_data),
        "process_data_truncated": false,
        "outputs": optional_map(&finished.outputs),
        "outputs_truncated": false,
        "status": finished.status.as_str(),
        "error": finished.error,
        "elapsed_time": finished.elapsed,
        "execution_metadata": optional_map(&finished.metadata),
        "created_at": info.created_at,
        "finished_at": finished.finished_at,
        "files": files_in(finished.outputs.as_deref()),
        "iteration_id": iteration_id,
        "loop_id": loop_id,
    });
    if let (Some(index), Json::Object(object)) = (finished.retry_index, &mut data) {
        object.insert("retry_index".into(), index.into());
    }
    data
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
