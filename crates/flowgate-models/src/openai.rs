//! OpenAI's chat completions and embeddings, and every server that speaks them (vLLM, SGLang,
//! Ollama, LM Studio, DeepSeek, SiliconFlow, OpenRouter, Azure OpenAI deployments).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::{ErrorClass, ProviderError};
use crate::types::{ChatRequest, ChatResponse, FunctionCall, Message, StreamEvent, TokenUsage, ToolCall};

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
    api_key: Option<String>,
    client: reqwest::Client,
}

/// An SSE event stream can hold a frame this large at most; a longer one is a broken upstream.
const MAX_FRAME: usize = 4 * 1024 * 1024;

impl OpenAiTarget {
    pub fn new(label: &str, base_url: &str, api_key: Option<String>, client: reqwest::Client) -> Self {
        Self { label: label.to_owned(), base_url: base_url.trim_end_matches('/').to_owned(), api_key, client }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(request.model));
        body.insert("messages".into(), serde_json::to_value(&request.messages).unwrap_or(Value::Null));
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
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let mut builder =
            self.client.post(format!("{}{path}", self.base_url)).header(reqwest::header::CONTENT_TYPE, "application/json").body(payload);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = tokio::time::timeout_at(deadline, builder.send())
            .await
            .map_err(|_| ProviderError::new(ErrorClass::Timeout, &self.label, "no response in time"))?
            .map_err(|error| self.transport_error(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let body = tokio::time::timeout_at(deadline, response.bytes()).await.ok().and_then(Result::ok).unwrap_or_default();
        Err(ProviderError::from_response(&self.label, status, retry_after.as_deref(), &body))
    }

    fn transport_error(&self, error: &reqwest::Error) -> ProviderError {
        let class = if error.is_timeout() { ErrorClass::Timeout } else { ErrorClass::Connection };
        // reqwest's message names the URL, which holds no secret (keys go in a header).
        ProviderError::new(class, &self.label, error.to_string())
    }

    pub async fn chat(&self, request: &ChatRequest, timeouts: Timeouts) -> Result<ChatResponse, ProviderError> {
        let deadline = Instant::now() + timeouts.total;
        let response = self.send("/chat/completions", &self.body(request, false), deadline).await?;
        let body = tokio::time::timeout_at(deadline, response.bytes())
            .await
            .map_err(|_| ProviderError::new(ErrorClass::Timeout, &self.label, "the answer did not complete in time"))?
            .map_err(|error| self.transport_error(&error))?;
        let json: Value = serde_json::from_slice(&body)
            .map_err(|error| ProviderError::new(ErrorClass::Protocol, &self.label, format!("the answer is not JSON: {error}")))?;
        let choice = &json["choices"][0];
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
        let response = self.send("/chat/completions", &self.body(request, true), first_token_deadline).await?;
        let mut stream = ChatStream {
            label: self.label.clone(),
            body: response.bytes_stream().boxed(),
            buffer: BytesMut::new(),
            pending: VecDeque::new(),
            deadline,
            done: false,
            finished: false,
        };
        match tokio::time::timeout_at(first_token_deadline, stream.fill()).await {
            Err(_) => Err(ProviderError::new(ErrorClass::Timeout, &self.label, "no first token in time")),
            Ok(Err(error)) => Err(error),
            Ok(Ok(())) => Ok(stream),
        }
    }

    /// Embeddings for `input` (a string or an array of strings), as the upstream returned them.
    pub async fn embeddings(&self, body: &Value, timeouts: Timeouts) -> Result<Value, ProviderError> {
        let deadline = Instant::now() + timeouts.total;
        let response = self.send("/embeddings", body, deadline).await?;
        let body = tokio::time::timeout_at(deadline, response.bytes())
            .await
            .map_err(|_| ProviderError::new(ErrorClass::Timeout, &self.label, "the answer did not complete in time"))?
            .map_err(|error| self.transport_error(&error))?;
        serde_json::from_slice(&body)
            .map_err(|error| ProviderError::new(ErrorClass::Protocol, &self.label, format!("the answer is not JSON: {error}")))
    }
}

/// A streamed answer: events in order, then `None`.
pub struct ChatStream {
    label: String,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: BytesMut,
    pending: VecDeque<StreamEvent>,
    deadline: Instant,
    done: bool,
    /// A finish reason arrived: the answer is complete even if `[DONE]` never does.
    finished: bool,
}

impl ChatStream {
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        if self.pending.is_empty() && !self.done {
            match tokio::time::timeout_at(self.deadline, self.fill()).await {
                Err(_) => {
                    self.done = true;
                    return Some(Err(ProviderError::new(ErrorClass::Timeout, &self.label, "the stream did not complete in time")));
                }
                Ok(Err(error)) => {
                    self.done = true;
                    return Some(Err(error));
                }
                Ok(Ok(())) => {}
            }
        }
        self.pending.pop_front().map(Ok)
    }

    /// Reads until at least one event is pending or the stream ends.
    async fn fill(&mut self) -> Result<(), ProviderError> {
        while self.pending.is_empty() && !self.done {
            while let Some(frame) = take_frame(&mut self.buffer) {
                self.parse_frame(&frame)?;
            }
            if !self.pending.is_empty() || self.done {
                break;
            }
            if self.buffer.len() > MAX_FRAME {
                return Err(ProviderError::new(ErrorClass::Protocol, &self.label, "an SSE frame longer than 4 MiB"));
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(error)) => {
                    return Err(ProviderError::new(ErrorClass::Connection, &self.label, format!("the stream broke: {error}")));
                }
                None => {
                    // Some servers close without `[DONE]` after the finish reason: complete.
                    // A stream that ends before its finish reason is broken.
                    self.done = true;
                    if !self.finished {
                        return Err(ProviderError::new(ErrorClass::Connection, &self.label, "the stream ended before the answer finished"));
                    }
                }
            }
        }
        Ok(())
    }

    fn parse_frame(&mut self, frame: &str) -> Result<(), ProviderError> {
        let data: String = frame
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect::<Vec<_>>()
            .join("\n");
        if data.is_empty() {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(&data)
            .map_err(|error| ProviderError::new(ErrorClass::Protocol, &self.label, format!("a stream chunk is not JSON: {error}")))?;
        if chunk["error"].is_object() {
            let body = chunk.to_string();
            return Err(ProviderError::from_response(&self.label, 500, None, body.as_bytes()));
        }
        if let Some(choice) = chunk["choices"].get(0) {
            let delta = &choice["delta"];
            if let Some(text) = delta["reasoning_content"].as_str().or(delta["reasoning"].as_str()).filter(|text| !text.is_empty()) {
                self.pending.push_back(StreamEvent::Reasoning(text.to_owned()));
            }
            if let Some(text) = delta["content"].as_str().filter(|text| !text.is_empty()) {
                self.pending.push_back(StreamEvent::Text(text.to_owned()));
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                self.pending.push_back(StreamEvent::ToolCall {
                    index: call["index"].as_u64().unwrap_or(0) as usize,
                    id: call["id"].as_str().map(str::to_owned),
                    name: call["function"]["name"].as_str().map(str::to_owned),
                    arguments: call["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
                });
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finished = true;
                self.pending.push_back(StreamEvent::Finish(reason.to_owned()));
            }
        }
        if let Ok(usage) = serde_json::from_value::<TokenUsage>(chunk["usage"].clone()) {
            self.pending.push_back(StreamEvent::Usage(usage));
        }
        Ok(())
    }

    /// Reads the rest of the stream into one response (for callers that need the whole answer).
    pub async fn collect(mut self) -> Result<ChatResponse, ProviderError> {
        let mut response = ChatResponse::default();
        while let Some(event) = self.next().await {
            match event? {
                StreamEvent::Text(text) => response.content.push_str(&text),
                StreamEvent::Reasoning(text) => response.reasoning.push_str(&text),
                StreamEvent::ToolCall { index, id, name, arguments } => {
                    while response.tool_calls.len() <= index {
                        response.tool_calls.push(ToolCall {
                            id: String::new(),
                            kind: "function".into(),
                            function: FunctionCall { name: String::new(), arguments: String::new() },
                        });
                    }
                    let call = &mut response.tool_calls[index];
                    if let Some(id) = id {
                        call.id = id;
                    }
                    if let Some(name) = name {
                        call.function.name.push_str(&name);
                    }
                    call.function.arguments.push_str(&arguments);
                }
                StreamEvent::Finish(reason) => response.finish_reason = Some(reason),
                StreamEvent::Usage(usage) => response.usage = Some(usage),
            }
        }
        Ok(response)
    }
}

/// Takes one complete SSE frame (up to a blank line) off the front of `buffer`.
fn take_frame(buffer: &mut BytesMut) -> Option<String> {
    let end = buffer
        .windows(2)
        .position(|pair| pair == b"\n\n")
        .map(|at| (at, 2))
        .or_else(|| buffer.windows(4).position(|quad| quad == b"\r\n\r\n").map(|at| (at, 4)))?;
    let frame = buffer.split_to(end.0 + end.1);
    Some(String::from_utf8_lossy(&frame[..end.0]).replace('\r', ""))
}

/// A message list from plain (role, text) pairs, for callers that have no richer content.
pub fn text_messages(pairs: &[(&str, &str)]) -> Vec<Message> {
    pairs.iter().map(|(role, text)| Message::text(role, text)).collect()
}
