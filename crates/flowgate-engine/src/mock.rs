//! Scripted ports for dry runs (`flowgate run --mocks`) and conformance tests: each model,
//! tool, agent, knowledge or code node answers with what a mocks document says for its id.
//!
//! The mocks document is the one Dify's graphon oracle takes (`{node_id: value}`):
//! - model nodes: a string (the model's text, streamed word by word) or `{"text": ...,
//!   "structured_output": ...}`;
//! - tool, agent, knowledge and code nodes: the node's outputs as a mapping;
//! - any node: `{"__fail__": "message"}` makes the call fail with that message.
//!
//! Without an entry, models answer `[mock llm <id>]` (question classifiers pick the first
//! class, parameter extractors get type defaults), tools `[mock tool <id>]`, agents
//! `[mock agent <id>]`, knowledge bases an empty result; code nodes fail.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value as Json;

use crate::ports::{
    AgentCall, AgentPort, CodeCall, CodePort, KnowledgePort, KnowledgeQuery, ModelCall, ModelPort, ModelReply, PortError, PortErrorKind,
    Ports, TextSink, ToolCall, ToolOutput, ToolPort, Usage,
};
use crate::value::{Map, Value, key};

#[derive(Debug, Clone, Default)]
pub struct MockPorts {
    mocks: Arc<serde_json::Map<String, Json>>,
}

/// `'a b c'` → `['a ', 'b ', 'c']`: how mocked text is chunked when it streams.
pub fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        current.push(ch);
        if ch == ' ' || ch == '\n' {
            pieces.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

impl MockPorts {
    pub fn new(mocks: serde_json::Map<String, Json>) -> Self {
        Self { mocks: Arc::new(mocks) }
    }

    fn entry(&self, node_id: &str) -> Option<&Json> {
        self.mocks.get(node_id)
    }

    fn failure(&self, node_id: &str) -> Option<PortError> {
        let message = self.entry(node_id)?.get("__fail__")?;
        let message = message.as_str().map_or_else(|| message.to_string(), str::to_owned);
        Some(PortError::new(PortErrorKind::Upstream, message))
    }

    /// The mocked outputs for a stub node (without control keys).
    fn outputs(&self, node_id: &str) -> Option<Map> {
        let Json::Object(map) = self.entry(node_id)? else {
            return None;
        };
        Some(
            map.iter()
                .filter(|(key, _)| !key.starts_with("__"))
                .map(|(key, value)| (Arc::from(key.as_str()), Value::from(value)))
                .collect(),
        )
    }

    /// Ports for every capability a mock can stand in for.
    pub fn ports(self, base: Ports) -> Ports {
        let shared = Arc::new(self);
        Ports {
            model: Some(shared.clone()),
            tool: Some(shared.clone()),
            agent: Some(shared.clone()),
            knowledge: Some(shared.clone()),
            code: Some(shared),
            ..base
        }
    }
}

fn stream_text(stream: &TextSink, text: &str) {
    for piece in split_words(text) {
        stream(&piece);
    }
}

/// The parameter schema an extractor's prompt carries in its last message (between the tags
/// Dify's chat and completion prompts put it in).
fn extractor_schema(call: &ModelCall) -> Option<Json> {
    let text = &call.messages.last()?.content;
    [("<structure>\n", "\n</structure>"), ("<information to be extracted>\n", "\n</information to be extracted>")].iter().find_map(
        |(open, close)| {
            let start = text.find(open)? + open.len();
            let end = start + text[start..].find(close)?;
            serde_json::from_str(&text[start..end]).ok()
        },
    )
}

fn default_for_schema(schema: &Json) -> Json {
    let mut result = serde_json::Map::new();
    if let Some(Json::Object(properties)) = schema.get("properties") {
        for (name, property) in properties {
            let value = match property.get("type").and_then(Json::as_str).unwrap_or("string") {
                "number" | "integer" => Json::from(0),
                "boolean" => Json::Bool(false),
                "array" => Json::Array(Vec::new()),
                "object" => Json::Object(serde_json::Map::new()),
                _ => Json::from("mock"),
            };
            result.insert(name.clone(), value);
        }
    }
    Json::Object(result)
}

impl ModelPort for MockPorts {
    fn invoke(&self, call: ModelCall, stream: TextSink) -> BoxFuture<'static, Result<ModelReply, PortError>> {
        let node_id = call.context.node_id.to_string();
        if let Some(error) = self.failure(&node_id) {
            return Box::pin(async move { Err(error) });
        }
        let entry = self.entry(&node_id).cloned();
        let text = match &entry {
            Some(Json::String(text)) => text.clone(),
            Some(Json::Object(map)) if map.contains_key("text") => match &map["text"] {
                Json::String(text) => text.clone(),
                other => other.to_string(),
            },
            _ => match &*call.context.node_type {
                "parameter-extractor" => {
                    extractor_schema(&call).map_or_else(|| "{}".to_owned(), |schema| default_for_schema(&schema).to_string())
                }
                "question-classifier" => "{}".to_owned(),
                _ => format!("[mock llm {node_id}]"),
            },
        };
        let structured_output = match &entry {
            Some(Json::Object(map)) => map.get("structured_output").map(Value::from),
            _ => None,
        };
        Box::pin(async move {
            stream_text(&stream, &text);
            Ok(ModelReply {
                text,
                reasoning_content: String::new(),
                usage: Usage::default(),
                finish_reason: Some("stop".into()),
                structured_output,
                tool_calls: Vec::new(),
            })
        })
    }
}

fn tool_output(mocks: &MockPorts, node_id: &str, default_text: String, stream: &TextSink) -> ToolOutput {
    let mut outputs = mocks.outputs(node_id).unwrap_or_else(|| {
        let mut map = Map::default();
        map.insert(key("text"), Value::from(default_text));
        map
    });
    let text = match outputs.shift_remove("text") {
        Some(Value::Str(text)) => text.to_string(),
        Some(other) => other.to_text(),
        None => String::new(),
    };
    stream_text(stream, &text);
    let list = |value: Option<Value>| value.and_then(|value| value.as_array().map(<[Value]>::to_vec)).unwrap_or_default();
    let files = list(outputs.shift_remove("files"));
    let json = list(outputs.shift_remove("json"));
    ToolOutput { text, files, json, variables: outputs, usage: None }
}

impl ToolPort for MockPorts {
    fn invoke(&self, call: ToolCall, stream: TextSink) -> BoxFuture<'static, Result<ToolOutput, PortError>> {
        let node_id = call.context.node_id.to_string();
        let result = match self.failure(&node_id) {
            Some(error) => Err(error),
            None => Ok(tool_output(self, &node_id, format!("[mock tool {node_id}]"), &stream)),
        };
        Box::pin(async move { result })
    }
}

impl AgentPort for MockPorts {
    fn invoke(&self, call: AgentCall, stream: TextSink) -> BoxFuture<'static, Result<ToolOutput, PortError>> {
        let node_id = call.context.node_id.to_string();
        let result = match self.failure(&node_id) {
            Some(error) => Err(error),
            None => Ok(tool_output(self, &node_id, format!("[mock agent {node_id}]"), &stream)),
        };
        Box::pin(async move { result })
    }
}

impl KnowledgePort for MockPorts {
    fn retrieve(&self, query: KnowledgeQuery) -> BoxFuture<'static, Result<Vec<Value>, PortError>> {
        let node_id = query.context.node_id.to_string();
        let result = match self.failure(&node_id) {
            Some(error) => Err(error),
            None => Ok(self
                .outputs(&node_id)
                .and_then(|mut outputs| outputs.shift_remove("result"))
                .and_then(|result| result.as_array().map(<[Value]>::to_vec))
                .unwrap_or_default()),
        };
        Box::pin(async move { result })
    }
}

impl CodePort for MockPorts {
    fn execute(&self, call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        let node_id = call.context.node_id.to_string();
        let result = match (self.failure(&node_id), self.outputs(&node_id)) {
            (Some(error), _) => Err(error),
            (None, Some(outputs)) => Ok(outputs),
            (None, None) => {
                Err(PortError::new(PortErrorKind::Other, format!("no mock for code node '{node_id}'; add its outputs to the mocks")))
            }
        };
        Box::pin(async move { result })
    }
}
