//! Ports: the traits through which nodes reach the outside world. The engine defines them;
//! other crates implement them (the SSRF-safe HTTP client, the model gateway, the sandbox).

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::decimal::Decimal;
use crate::value::{File, Map, Value};

/// Who is asking: enough for an implementation to attribute, limit and log a call.
#[derive(Debug, Clone)]
pub struct PortContext {
    pub node_id: Arc<str>,
    pub node_type: Arc<str>,
    pub title: Arc<str>,
    pub run_id: Arc<str>,
    pub app_id: Arc<str>,
    pub user_id: Arc<str>,
}

#[cfg(test)]
impl PortContext {
    /// A context naming nothing, for tests of what a call carries.
    pub(crate) fn blank() -> Self {
        let blank: Arc<str> = Arc::from("");
        Self {
            node_id: blank.clone(),
            node_type: blank.clone(),
            title: blank.clone(),
            run_id: blank.clone(),
            app_id: blank.clone(),
            user_id: blank,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortErrorKind {
    /// Refused by policy (an address the SSRF guard blocks, a limit).
    Refused,
    Timeout,
    Connection,
    TooLarge,
    InvalidRequest,
    Upstream,
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub kind: PortErrorKind,
    pub message: String,
}

impl PortError {
    pub fn new(kind: PortErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// Streams text to the engine while a node runs (model tokens, tool text).
pub type TextSink = Arc<dyn Fn(&str) + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, Clone)]
pub enum HttpBody {
    None,
    Bytes { content: Bytes, content_type: Option<String> },
    Form(Vec<(String, String)>),
    Multipart(Vec<MultipartField>),
}

#[derive(Debug, Clone)]
pub struct MultipartField {
    pub name: String,
    pub value: MultipartValue,
}

#[derive(Debug, Clone)]
pub enum MultipartValue {
    Text(String),
    File { filename: String, content_type: String, content: Bytes },
}

#[derive(Debug, Clone)]
pub struct HttpTimeouts {
    pub connect: std::time::Duration,
    pub read: std::time::Duration,
    pub write: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: HttpBody,
    pub timeouts: HttpTimeouts,
    pub verify_tls: bool,
    /// The response body may not exceed this many bytes.
    pub max_response_bytes: usize,
    /// Headers that carry credentials set by the node's authorization (besides `Authorization`
    /// and cookies): dropped when a redirect leaves the origin.
    pub credential_headers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

pub trait HttpPort: Send + Sync {
    fn send(&self, request: HttpRequest) -> BoxFuture<'static, Result<HttpResponse, PortError>>;
}

// ---------------------------------------------------------------------------------------------
// files (content of uploaded and remote files)

pub trait FilePort: Send + Sync {
    /// The content of an uploaded, tool-made or remote file.
    fn read(&self, file: &File) -> BoxFuture<'static, Result<Bytes, PortError>>;
    /// Keeps bytes a node produced (an HTTP response that is a file) and describes them.
    fn store(&self, content: Bytes, mime_type: &str, filename: &str) -> BoxFuture<'static, Result<File, PortError>>;
}

// ---------------------------------------------------------------------------------------------
// models

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// system | user | assistant | tool
    pub role: String,
    pub content: String,
    /// Sent before the text, as Dify puts a message's files first.
    pub files: Vec<File>,
    /// An assistant message's calls of the request's tools.
    pub tool_calls: Vec<ToolInvocation>,
    /// A tool message: the call it answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.to_owned(), content: content.into(), files: Vec::new(), tool_calls: Vec::new(), tool_call_id: None }
    }
}

/// A function the model may call: its name, what it does, and its arguments' JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// One call of a tool, as the model wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInvocation {
    pub id: String,
    pub name: String,
    /// JSON text, unparsed: models write invalid JSON too.
    pub arguments: String,
}

#[derive(Debug, Clone)]
pub struct ModelCall {
    pub context: PortContext,
    pub provider: String,
    pub model: String,
    /// chat | completion
    pub mode: String,
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub messages: Vec<ChatMessage>,
    pub stop: Vec<String>,
    pub json_schema: Option<serde_json::Value>,
    pub tools: Vec<ToolDefinition>,
    /// How closely images are looked at (`low` | `high`), when the node says.
    pub image_detail: Option<String>,
}

/// Token usage and price, in Dify's `LLMUsage` shape. Prices are `tokens × unit price × price
/// unit` (the unit is the price's token count, `0.000001` for a price per million tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub prompt_unit_price: Decimal,
    pub prompt_price_unit: Decimal,
    pub prompt_price: Decimal,
    pub completion_tokens: i64,
    pub completion_unit_price: Decimal,
    pub completion_price_unit: Decimal,
    pub completion_price: Decimal,
    pub total_tokens: i64,
    pub total_price: Decimal,
    pub currency: String,
    pub latency: f64,
}

impl Default for Usage {
    /// Dify's `LLMUsage.empty_usage()`.
    fn default() -> Self {
        Self {
            prompt_tokens: 0,
            prompt_unit_price: Decimal::default(),
            prompt_price_unit: Decimal::default(),
            prompt_price: Decimal::default(),
            completion_tokens: 0,
            completion_unit_price: Decimal::default(),
            completion_price_unit: Decimal::default(),
            completion_price: Decimal::default(),
            total_tokens: 0,
            total_price: Decimal::default(),
            currency: "USD".into(),
            latency: 0.0,
        }
    }
}

impl Usage {
    /// Dify's `LLMUsage.plus`: a usage with no tokens yet is replaced whole by the other, and
    /// the sum keeps the other's unit prices and currency.
    pub fn plus(&self, other: &Usage) -> Usage {
        if self.total_tokens == 0 {
            return other.clone();
        }
        Usage {
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            prompt_unit_price: other.prompt_unit_price,
            prompt_price_unit: other.prompt_price_unit,
            prompt_price: self.prompt_price.plus(other.prompt_price),
            completion_tokens: self.completion_tokens + other.completion_tokens,
            completion_unit_price: other.completion_unit_price,
            completion_price_unit: other.completion_price_unit,
            completion_price: self.completion_price.plus(other.completion_price),
            total_tokens: self.total_tokens + other.total_tokens,
            total_price: self.total_price.plus(other.total_price),
            currency: other.currency.clone(),
            latency: self.latency + other.latency,
        }
    }

    /// The usage mapping Dify puts in node outputs and `message_end`; prices are
    /// `str(Decimal)`.
    pub fn to_value(&self) -> Value {
        let price = |amount: Decimal| Value::from(amount.to_string());
        Value::object(crate::value::map_of([
            ("prompt_tokens", Value::Int(self.prompt_tokens)),
            ("prompt_unit_price", price(self.prompt_unit_price)),
            ("prompt_price_unit", price(self.prompt_price_unit)),
            ("prompt_price", price(self.prompt_price)),
            ("completion_tokens", Value::Int(self.completion_tokens)),
            ("completion_unit_price", price(self.completion_unit_price)),
            ("completion_price_unit", price(self.completion_price_unit)),
            ("completion_price", price(self.completion_price)),
            ("total_tokens", Value::Int(self.total_tokens)),
            ("total_price", price(self.total_price)),
            ("currency", Value::str(self.currency.as_str())),
            ("latency", Value::Float((self.latency * 1000.0).round() / 1000.0)),
        ]))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ModelReply {
    pub text: String,
    pub reasoning_content: String,
    pub usage: Usage,
    pub finish_reason: Option<String>,
    pub structured_output: Option<Value>,
    pub tool_calls: Vec<ToolInvocation>,
}

pub trait ModelPort: Send + Sync {
    /// Runs one model call; text deltas go to `stream` as they arrive.
    fn invoke(&self, call: ModelCall, stream: TextSink) -> BoxFuture<'static, Result<ModelReply, PortError>>;

    /// Whether the model a DSL names can be offered tools (Dify's `tool-call` model feature):
    /// the parameter extractor asks through a function call only then.
    fn calls_tools(&self, provider: &str, model: &str) -> bool {
        let _ = (provider, model);
        false
    }

    /// The model's context window in tokens, when known: memory is trimmed to fit it, as
    /// Dify trims to the model schema's `context_size`.
    fn context_size(&self, provider: &str, model: &str) -> Option<u64> {
        let _ = (provider, model);
        None
    }
}

// ---------------------------------------------------------------------------------------------
// code

#[derive(Debug, Clone)]
pub struct CodeCall {
    pub context: PortContext,
    /// python3 | javascript
    pub language: String,
    pub code: String,
    pub inputs: Map,
}

pub trait CodePort: Send + Sync {
    /// Runs `main(**inputs)` (Python) or `main(inputs)` (JavaScript) and returns its mapping.
    fn execute(&self, call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>>;
}

// ---------------------------------------------------------------------------------------------
// tools, agents, knowledge

#[derive(Debug, Clone)]
pub struct ToolCall {
    pub context: PortContext,
    pub provider_id: String,
    pub provider_type: String,
    pub provider_name: String,
    pub tool_name: String,
    pub configurations: Map,
    pub parameters: Map,
}

/// What a tool or agent produced, in Dify's output shape.
#[derive(Debug, Clone, Default)]
pub struct ToolOutput {
    pub text: String,
    pub files: Vec<Value>,
    pub json: Vec<Value>,
    /// Extra variables the tool declares.
    pub variables: Map,
    pub usage: Option<Usage>,
}

pub trait ToolPort: Send + Sync {
    fn invoke(&self, call: ToolCall, stream: TextSink) -> BoxFuture<'static, Result<ToolOutput, PortError>>;
}

#[derive(Debug, Clone)]
pub struct AgentCall {
    pub context: PortContext,
    pub strategy_provider: String,
    pub strategy: String,
    pub parameters: Map,
}

pub trait AgentPort: Send + Sync {
    fn invoke(&self, call: AgentCall, stream: TextSink) -> BoxFuture<'static, Result<ToolOutput, PortError>>;
}

#[derive(Debug, Clone)]
pub struct KnowledgeQuery {
    pub context: PortContext,
    pub query: String,
    pub dataset_ids: Vec<String>,
    /// The node's retrieval settings as written in the DSL.
    pub settings: serde_json::Value,
}

pub trait KnowledgePort: Send + Sync {
    /// Returns Dify's `result` items (`{metadata, title, content, ...}`).
    fn retrieve(&self, query: KnowledgeQuery) -> BoxFuture<'static, Result<Vec<Value>, PortError>>;
}

/// The ports available to a run. A node whose port is missing fails with a clear error.
#[derive(Clone, Default)]
pub struct Ports {
    pub http: Option<Arc<dyn HttpPort>>,
    pub files: Option<Arc<dyn FilePort>>,
    pub model: Option<Arc<dyn ModelPort>>,
    pub code: Option<Arc<dyn CodePort>>,
    pub tool: Option<Arc<dyn ToolPort>>,
    pub agent: Option<Arc<dyn AgentPort>>,
    pub knowledge: Option<Arc<dyn KnowledgePort>>,
}

impl Ports {
    pub fn has(&self, capability: crate::nodes::Capability) -> bool {
        use crate::nodes::Capability;
        match capability {
            Capability::Http => self.http.is_some(),
            Capability::Files => self.files.is_some(),
            Capability::Model => self.model.is_some(),
            Capability::Code => self.code.is_some(),
            Capability::Tool => self.tool.is_some(),
            Capability::Agent => self.agent.is_some(),
            Capability::Knowledge => self.knowledge.is_some(),
        }
    }
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("http", &self.http.is_some())
            .field("files", &self.files.is_some())
            .field("model", &self.model.is_some())
            .field("code", &self.code.is_some())
            .field("tool", &self.tool.is_some())
            .field("agent", &self.agent.is_some())
            .field("knowledge", &self.knowledge.is_some())
            .finish()
    }
}
