//! OpenAI's chat completions and embeddings, and every server that speaks them (vLLM, SGLang,
//! Ollama, LM Studio, DeepSeek, SiliconFlow, OpenRouter, Azure OpenAI deployments).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::{ErrorClass, ProviderError};
use crate::stream::{ChatStream, Dialect, StreamState};
use crate::transport::{post_json, read_json};
use crate::types::{ChatRequest, ChatResponse, Message, StreamEvent, TokenUsage, ToolCall};

/// How long a call may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Streams: from sending the request to the first token.
    pub first_token: Duration,
    /// The whole call.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { first_token: Duration::from_secs(60), total: Duration::from_secs(600) }
    }
}

/// One OpenAI-compatible endpoint with one key.
#[derive(Clone)]
pub struct OpenAiTarget {
    /// For errors and metrics: `name (host)`, never the key.
    label: String,
    /// Up to and including `/v1` (OpenAI) or the server's equivalent.
    base_url: String,
    /// Azure's `?api-version=…`; empty elsewhere.
    query: String,
    api_key: Option<String>,
    /// Azure takes the key in `api-key`; everyone else as a bearer token.
    key_header: Option<&'static str>,
    client: reqwest::Client,
}

impl OpenAiTarget {
    pub fn new(label: &str, base_url: &str, api_key: Option<String>, client: reqwest::Client) -> Self {
        Self {
            label: label.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            query: String::new(),
            api_key,
            key_header: None,
            client,
        }
    }

    /// An Azure OpenAI deployment: `{endpoint}/openai/deployments/{deployment}/…?api-version=…`.
    pub fn azure(label: &str, endpoint: &str, deployment: &str, api_version: &str, api_key: String, client: reqwest::Client) -> Self {
        Self {
            label: label.to_owned(),
            base_url: format!("{}/openai/deployments/{deployment}", endpoint.trim_end_matches('/')),
            query: format!("?api-version={api_version}"),
            api_key: Some(api_key),
            key_header: Some("api-key"),
            client,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(request.model));
        if request.completion {
            body.insert("prompt".into(), json!(request.prompt()));
        } else {
            body.insert("messages".into(), serde_json::to_value(&request.messages).unwrap_or(Value::Null));
        }
        for (name, value) in &request.parameters {
            if !matches!(name.as_str(), "model" | "messages" | "stream" | "stream_options") {
                body.insert(name.clone(), value.clone());
            }
        }
        body.insert("stream".into(), json!(stream));
        if stream {
            // Usage only comes when asked for; the gateway needs it for limits and metrics.
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Value::Object(body)
    }

    async fn send(&self, path: &str, body: &Value, deadline: Instant) -> Result<reqwest::Response, ProviderError> {
        let mut request = self.client.post(format!("{}{path}{}", self.base_url, self.query));
        request = match (&self.api_key, self.key_header) {
            (Some(key), Some(header)) => request.header(header, key),
            (Some(key), None) => request.bearer_auth(key),
            (None, _) => request,
        };
        post_json(request, &self.label, body, deadline).await
    }

    pub async fn chat(&self, request: &ChatRequest, timeouts: Timeouts) -> Result<ChatResponse, ProviderError> {
        let deadline = Instant::now() + timeouts.total;
        let response = self.send(path(request), &self.body(request, false), deadline).await?;
        let json = read_json(response, &self.label, deadline).await?;
        let choice = &json["choices"][0];
        if request.completion {
            let Some(text) = choice["text"].as_str() else {
                return Err(ProviderError::new(ErrorClass::Protocol, &self.label, "the answer has no choices[0].text"));
            };
            return Ok(ChatResponse {
                id: json["id"].as_str().unwrap_or_default().to_owned(),
                model: json["model"].as_str().unwrap_or(&request.model).to_owned(),
                content: text.to_owned(),
                finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
                usage: serde_json::from_value(json["usage"].clone()).ok(),
                ..ChatResponse::default()
            });
        }
        let message = &choice["message"];
        if !message.is_object() {
            return Err(ProviderError::new(ErrorClass::Protocol, &self.label, "the answer has no choices[0].message"));
        }
        let tool_calls: Vec<ToolCall> = serde_json::from_value(message["tool_calls"].clone()).unwrap_or_default();
        Ok(ChatResponse {
            id: json["id"].as_str().unwrap_or_default().to_owned(),
            model: json["model"].as_str().unwrap_or(&request.model).to_owned(),
            content: message["content"].as_str().unwrap_or_default().to_owned(),
            reasoning: message["reasoning_content"].as_str().or(message["reasoning"].as_str()).unwrap_or_default().to_owned(),
            tool_calls,
            finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
            usage: serde_json::from_value(json["usage"].clone()).ok(),
        })
    }

    /// Starts a streamed answer and waits for its first event, so that a target that fails
    /// before its first token fails here, where the caller can still try another.
    pub async fn chat_stream(&self, request: &ChatRequest, timeouts: Timeouts) -> Result<ChatStream, ProviderError> {
        let started = Instant::now();
        let deadline = started + timeouts.total;
        let first_token_deadline = (started + timeouts.first_token).min(deadline);
        let response = self.send(path(request), &self.body(request, true), first_token_deadline).await?;
        ChatStream::start(&self.label, response, Dialect::OpenAi, first_token_deadline, deadline).await
    }

    /// Embeddings for `input` (a string or an array of strings), as the upstream returned them.
    pub async fn embeddings(&self, body: &Value, timeouts: Timeouts) -> Result<Value, ProviderError> {
        let deadline = Instant::now() + timeouts.total;
        let response = self.send("/embeddings", body, deadline).await?;
        read_json(response, &self.label, deadline).await
    }
}

/// Chat models answer on `/chat/completions`, completion models on `/completions`.
fn path(request: &ChatRequest) -> &'static str {
    if request.completion { "/completions" } else { "/chat/completions" }
}

/// A stream chunk as OpenAI-compatible servers send it; only what the gateway reads, borrowed
/// from the frame (a chunk arrives per token, so this is the hot path of every stream).
#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default, borrow)]
    delta: Delta<'a>,
    /// A `/completions` stream's text.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize, Default)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Vec<ToolCallDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: usize,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: FunctionDelta<'a>,
}

#[derive(serde::Deserialize, Default)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// More tool calls than any model makes in one answer.
const MAX_TOOL_CALLS: usize = 1024;

pub(crate) enum ChunkError {
    Json(serde_json::Error),
    Provider(ProviderError),
}

/// One chunk of an OpenAI stream (`data:` JSON) into events.
pub(crate) fn parse_chunk(label: &str, data: &str, state: &mut StreamState, pending: &mut VecDeque<StreamEvent>) -> Result<(), ChunkError> {
    let chunk: Chunk<'_> = serde_json::from_str(data).map_err(ChunkError::Json)?;
    if chunk.error.is_some() {
        return Err(ChunkError::Provider(ProviderError::from_response(label, 500, None, data.as_bytes())));
    }
    if let Some(choice) = chunk.choices.into_iter().next() {
        let delta = choice.delta;
        if let Some(text) = delta.reasoning_content.or(delta.reasoning).filter(|text| !text.is_empty()) {
            pending.push_back(StreamEvent::Reasoning(text.into_owned()));
        }
        if let Some(text) = delta.content.or(choice.text).filter(|text| !text.is_empty()) {
            pending.push_back(StreamEvent::Text(text.into_owned()));
        }
        for call in delta.tool_calls {
            // The index says where the call goes in the answer: an absurd one must not make
            // the answer allocate that many calls.
            if call.index >= MAX_TOOL_CALLS {
                let message =
                    format!("a stream chunk's tool call index {} is above the {MAX_TOOL_CALLS} calls an answer may have", call.index);
                return Err(ChunkError::Provider(ProviderError::new(ErrorClass::Protocol, label, message)));
            }
            pending.push_back(StreamEvent::ToolCall {
                index: call.index,
                id: call.id.map(Cow::into_owned),
                name: call.function.name.map(Cow::into_owned),
                arguments: call.function.arguments.map(Cow::into_owned).unwrap_or_default(),
            });
        }
        if let Some(reason) = choice.finish_reason {
            state.finished = true;
            pending.push_back(StreamEvent::Finish(reason.into_owned()));
        }
    }
    if let Some(usage) = chunk.usage {
        pending.push_back(StreamEvent::Usage(usage));
    }
    Ok(())
}

/// A message list from plain (role, text) pairs, for callers that have no richer content.
pub fn text_messages(pairs: &[(&str, &str)]) -> Vec<Message> {
    pairs.iter().map(|(role, text)| Message::text(role, text)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: &str) -> Result<Vec<StreamEvent>, String> {
        let (mut state, mut pending) = (StreamState::default(), VecDeque::new());
        match parse_chunk("t", data, &mut state, &mut pending) {
            Ok(()) => Ok(pending.into_iter().collect()),
            Err(ChunkError::Json(error)) => Err(error.to_string()),
            Err(ChunkError::Provider(error)) => Err(format!("{}: {}", error.class.as_str(), error.message)),
        }
    }

    #[test]
    fn a_tool_call_index_no_answer_can_have_is_a_protocol_error() {
        let chunk = |index: &str| {
            format!(r#"{{"choices":[{{"delta":{{"tool_calls":[{{"index":{index},"function":{{"arguments":"{{}}"}}}}]}}}}]}}"#)
        };
        let events = parse(&chunk("1023")).unwrap();
        assert!(matches!(events.as_slice(), [StreamEvent::ToolCall { index: 1023, .. }]), "{events:?}");
        // Without the check, collecting this answer would push 2^64 empty calls.
        let error = parse(&chunk("18446744073709551615")).unwrap_err();
        assert_eq!(error, "protocol: a stream chunk's tool call index 18446744073709551615 is above the 1024 calls an answer may have");
    }
}
