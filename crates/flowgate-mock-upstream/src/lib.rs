//! A mock LLM upstream: OpenAI chat completions and embeddings, Anthropic messages, Gemini's
//! generateContent (streamed and not) and batchEmbedContents, and a `/metrics` endpoint like
//! vLLM's, over real HTTP. Each model name follows a script of
//! behaviours (one per request, the last repeated): latency before the response head, time to
//! the first token, errors with the provider's own status and body, 429 with `Retry-After`, and
//! streams that die before or after their first token. The gateway's tests drive it in-process;
//! the benchmark runs the binary.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

/// How a stream ends early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFailure {
    /// The connection drops after the response head, before any token.
    BeforeFirstToken,
    /// The connection drops after this many tokens.
    AfterTokens(usize),
}

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub status: u16,
    /// The provider's error code (`rate_limit_exceeded`, `context_length_exceeded`, …) for
    /// error statuses.
    pub error_code: String,
    pub error_message: String,
    pub retry_after: Option<String>,
    /// Before the response head.
    pub latency: Duration,
    /// Streams: after the head, before the first token.
    pub first_token: Duration,
    pub between_tokens: Duration,
    /// The answer; each word with its following whitespace is one token (and one stream chunk).
    /// `None` echoes the last user message.
    pub reply: Option<String>,
    pub reasoning: Option<String>,
    /// A tool call after the answer text: the function's name and its arguments (JSON text,
    /// streamed in two pieces).
    pub tool_call: Option<(String, String)>,
    pub stream_failure: Option<StreamFailure>,
    /// The (prompt, completion) token counts to report instead of counting words.
    pub usage: Option<(u64, u64)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            status: 200,
            error_code: String::new(),
            error_message: String::new(),
            retry_after: None,
            latency: Duration::ZERO,
            first_token: Duration::ZERO,
            between_tokens: Duration::ZERO,
            reply: Some("Hello from the mock upstream.".to_owned()),
            reasoning: None,
            tool_call: None,
            stream_failure: None,
            usage: None,
        }
    }
}

impl Behaviour {
    pub fn reply(text: &str) -> Self {
        Self { reply: Some(text.to_owned()), ..Self::default() }
    }

    /// Answers with the last user message.
    pub fn echo() -> Self {
        Self { reply: None, ..Self::default() }
    }

    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self { status, error_code: code.to_owned(), error_message: message.to_owned(), ..Self::default() }
    }

    /// 429 with `Retry-After: seconds`.
    pub fn rate_limited(seconds: &str) -> Self {
        Self { retry_after: Some(seconds.to_owned()), ..Self::error(429, "rate_limit_exceeded", "Rate limit reached for requests") }
    }

    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn first_token(mut self, wait: Duration) -> Self {
        self.first_token = wait;
        self
    }

    pub fn between_tokens(mut self, wait: Duration) -> Self {
        self.between_tokens = wait;
        self
    }

    pub fn reasoning(mut self, text: &str) -> Self {
        self.reasoning = Some(text.to_owned());
        self
    }

    pub fn calling(mut self, name: &str, arguments: &str) -> Self {
        self.tool_call = Some((name.to_owned(), arguments.to_owned()));
        self
    }

    /// Reports these token counts, as a real model's tokenizer would.
    pub fn reporting(mut self, prompt_tokens: u64, completion_tokens: u64) -> Self {
        self.usage = Some((prompt_tokens, completion_tokens));
        self
    }

    pub fn failing(mut self, failure: StreamFailure) -> Self {
        self.stream_failure = Some(failure);
        self
    }
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub model: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// Gauges served at `/metrics` under vLLM's names.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineMetrics {
    pub requests_running: f64,
    pub requests_waiting: f64,
    pub kv_cache_usage: f64,
}

#[derive(Default)]
struct Scripts {
    by_model: HashMap<String, VecDeque<Behaviour>>,
    fallback: Behaviour,
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<Scripts>,
    /// Kept for tests; the benchmark's mock sends millions of requests and keeps none.
    record: bool,
    received: Mutex<Vec<Received>>,
    metrics: Mutex<EngineMetrics>,
}

impl Shared {
    fn next(&self, model: &str) -> Behaviour {
        let Ok(mut scripts) = self.scripts.lock() else { return Behaviour::default() };
        let fallback = scripts.fallback.clone();
        match scripts.by_model.get_mut(model) {
            Some(steps) if steps.len() > 1 => steps.pop_front().unwrap_or(fallback),
            Some(steps) => steps.front().cloned().unwrap_or(fallback),
            None => fallback,
        }
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: &Value) {
        self.record_for(body["model"].as_str().unwrap_or_default(), path, headers, body);
    }

    /// Records a request whose model is not in its body (Gemini names it in the path).
    fn record_for(&self, model: &str, path: &str, headers: &HeaderMap, body: &Value) {
        if !self.record {
            return;
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .or_else(|| headers.get("x-api-key"))
            .or_else(|| headers.get("api-key"))
            .or_else(|| headers.get("x-goog-api-key"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let model = model.to_owned();
        if let Ok(mut received) = self.received.lock() {
            received.push(Received { path: path.to_owned(), model, authorization, body: body.clone() });
        }
    }
}

/// A handle to a mock serving on its own thread; it stops when the process ends.
#[derive(Clone)]
pub struct MockUpstream {
    pub address: String,
    shared: Arc<Shared>,
}

impl MockUpstream {
    /// Serves on 127.0.0.1 on a free port, on a thread of its own.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared { record: true, ..Shared::default() });
        let app = router(shared.clone());
        std::thread::Builder::new().name("mock-upstream".into()).spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else { return };
            runtime.block_on(async move {
                if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                    let _ = axum::serve(without_delay(listener), app).await;
                }
            });
        })?;
        Ok(Self { address, shared })
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI client is given.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Requests for `model` follow `steps` in order; the last step repeats.
    pub fn script(&self, model: &str, steps: Vec<Behaviour>) {
        if let Ok(mut scripts) = self.shared.scripts.lock() {
            scripts.by_model.insert(model.to_owned(), steps.into());
        }
    }

    /// What models without a script get.
    pub fn set_default(&self, behaviour: Behaviour) {
        if let Ok(mut scripts) = self.shared.scripts.lock() {
            scripts.fallback = behaviour;
        }
    }

    pub fn set_metrics(&self, metrics: EngineMetrics) {
        if let Ok(mut current) = self.shared.metrics.lock() {
            *current = metrics;
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().map(|received| received.clone()).unwrap_or_default()
    }

    pub fn requests_for(&self, model: &str) -> usize {
        self.received().iter().filter(|request| request.model == model).count()
    }
}

/// The mock's routes over `shared`, for the binary and for [`MockUpstream::start`].
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/openai/deployments/{deployment}/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1beta/models/{call}", post(gemini))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves the mock on `listener` until the process ends; every model gets `behaviour`.
pub async fn serve(listener: tokio::net::TcpListener, behaviour: Behaviour) -> std::io::Result<()> {
    let shared = Arc::new(Shared::default());
    if let Ok(mut scripts) = shared.scripts.lock() {
        scripts.fallback = behaviour;
    }
    axum::serve(without_delay(listener), router(shared)).await
}

/// Every stream chunk leaves at once, as a real server's should: without TCP_NODELAY the second
/// small write waits for the client's delayed ACK (40 ms).
fn without_delay(listener: tokio::net::TcpListener) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    })
}

/// Waits, unless there is nothing to wait for (a zero sleep still waits for the timer's next
/// tick, a millisecond).
async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// The answer cut into tokens: each word with the whitespace after it, so the pieces join back
/// into exactly the text.
fn tokens_of(text: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    for piece in text.split_inclusive(char::is_whitespace) {
        match tokens.last_mut() {
            Some(last) if piece.trim().is_empty() => last.push_str(piece),
            _ => tokens.push(piece.to_owned()),
        }
    }
    tokens
}

fn message_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|part| part["text"].as_str()).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

/// Prompt tokens as the mock counts them: a token per four characters of message text.
fn prompt_tokens(body: &Value) -> u64 {
    let mut characters = message_text(&body["system"]).chars().count();
    for message in body["messages"].as_array().into_iter().flatten() {
        characters += message_text(&message["content"]).chars().count();
    }
    characters.div_ceil(4) as u64
}

fn last_user_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|message| message["role"] == "user"))
        .map(|message| message_text(&message["content"]))
        .unwrap_or_default()
}

enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

fn error_response(behaviour: &Behaviour, wire: Wire) -> Response {
    let status = StatusCode::from_u16(behaviour.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match wire {
        Wire::OpenAi => json!({"error": {
            "message": behaviour.error_message,
            "type": if status == StatusCode::TOO_MANY_REQUESTS { "requests" } else { "invalid_request_error" },
            "param": null,
            "code": behaviour.error_code,
        }}),
        Wire::Anthropic => json!({"type": "error", "error": {"type": behaviour.error_code, "message": behaviour.error_message}}),
        // Google's errors carry the status name; a 429 says when to come back in RetryInfo,
        // not in a header.
        Wire::Gemini => {
            let mut error = json!({"code": behaviour.status, "message": behaviour.error_message, "status": behaviour.error_code});
            if let Some(seconds) = &behaviour.retry_after {
                error["details"] = json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{seconds}s")}]);
            }
            return (status, axum::Json(json!({"error": error}))).into_response();
        }
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = behaviour.retry_after.as_deref().and_then(|value| HeaderValue::from_str(value).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, seconds);
    }
    response
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})),
    )
        .into_response()
}

/// An SSE body fed by a task that follows the behaviour's timing and failure.
fn event_stream(frames: Vec<Bytes>, tokens_at: usize, behaviour: Behaviour) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let cut = |what: &str| Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, what.to_owned()));
        if behaviour.stream_failure == Some(StreamFailure::BeforeFirstToken) {
            pause(behaviour.first_token).await;
            let _ = sender.send(cut("stream cut before the first token")).await;
            return;
        }
        let mut tokens_sent = 0;
        for (index, frame) in frames.into_iter().enumerate() {
            if index == tokens_at {
                pause(behaviour.first_token).await;
            } else if index > tokens_at {
                pause(behaviour.between_tokens).await;
            }
            if index >= tokens_at {
                if let Some(StreamFailure::AfterTokens(limit)) = behaviour.stream_failure
                    && tokens_sent >= limit
                {
                    // The tokens reach the client first (the server drops unflushed output
                    // when its body fails), as when a real upstream dies mid-answer.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = sender.send(cut("stream cut after some tokens")).await;
                    return;
                }
                tokens_sent += 1;
            }
            if sender.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    let body = futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The id of the mock's tool calls.
pub const TOOL_CALL_ID: &str = "call_mock_1";

/// The text split in two at a character boundary near its middle.
fn halves(text: &str) -> (&str, &str) {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    text.split_at(middle)
}

fn sse(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn anthropic_sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// OpenAI's legacy completions API, which vLLM and others serve for base models: `prompt` in,
/// `choices[0].text` out.
async fn completions(State(shared): State<Arc<Shared>>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return bad_request("We could not parse the JSON body of your request.") };
    shared.record(&uri.to_string(), &headers, &body);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let Some(prompt_text) = body["prompt"].as_str() else {
        return bad_request("you must provide a model parameter and a prompt");
    };
    if model.is_empty() || body.get("messages").is_some() {
        return bad_request("Unrecognized request argument supplied: messages");
    }
    let behaviour = shared.next(&model);
    pause(behaviour.latency).await;
    if behaviour.status != 200 {
        return error_response(&behaviour, Wire::OpenAi);
    }
    let reply = behaviour.reply.clone().unwrap_or_else(|| prompt_text.to_owned());
    let tokens = tokens_of(&reply);
    let (prompt, completion) = behaviour.usage.unwrap_or((prompt_text.chars().count().div_ceil(4) as u64, tokens.len() as u64));
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let id = format!("cmpl-mock-{}", now_seconds());
    let created = now_seconds();
    let choice = |text: &str, finish: Value| json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish});
    if body["stream"] != json!(true) {
        return axum::Json(json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice(&reply, json!("stop"))], "usage": usage}))
        .into_response();
    }
    let chunk =
        |choices: Value| sse(&json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices}));
    let mut frames: Vec<Bytes> = tokens.iter().map(|token| chunk(json!([choice(token, Value::Null)]))).collect();
    frames.push(chunk(json!([choice("", json!("stop"))])));
    if body["stream_options"]["include_usage"] == json!(true) {
        frames
            .push(sse(&json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage})));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    event_stream(frames, 0, behaviour)
}

async fn chat_completions(State(shared): State<Arc<Shared>>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return bad_request("We could not parse the JSON body of your request.") };
    shared.record(&uri.to_string(), &headers, &body);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model.is_empty() || !body["messages"].is_array() {
        return bad_request("you must provide a model parameter and messages");
    }
    let behaviour = shared.next(&model);
    pause(behaviour.latency).await;
    if behaviour.status != 200 {
        return error_response(&behaviour, Wire::OpenAi);
    }
    let reply = behaviour.reply.clone().unwrap_or_else(|| last_user_message(&body));
    let tokens = tokens_of(&reply);
    let (prompt, completion) = behaviour.usage.unwrap_or((prompt_tokens(&body), tokens.len() as u64));
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let id = format!("chatcmpl-mock-{}", now_seconds());
    let created = now_seconds();
    let finish = if behaviour.tool_call.is_some() { "tool_calls" } else { "stop" };
    if body["stream"] != json!(true) {
        let mut message = json!({"role": "assistant", "content": reply});
        if let Some(reasoning) = &behaviour.reasoning {
            message["reasoning_content"] = json!(reasoning);
        }
        if let Some((name, arguments)) = &behaviour.tool_call {
            message["tool_calls"] = json!([{"id": TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": arguments}}]);
            if reply.is_empty() {
                message["content"] = Value::Null;
            }
        }
        return axum::Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        sse(&json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
    };
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let tokens_at = frames.len();
    if let Some(reasoning) = &behaviour.reasoning {
        frames.extend(tokens_of(reasoning).into_iter().map(|token| chunk(json!({"reasoning_content": token}), Value::Null)));
    }
    frames.extend(tokens.iter().map(|token| chunk(json!({"content": token}), Value::Null)));
    if let Some((name, arguments)) = &behaviour.tool_call {
        frames.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        let (first, second) = halves(arguments);
        for piece in [first, second] {
            frames.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), Value::Null));
        }
    }
    frames.push(chunk(json!({}), json!(finish)));
    if body["stream_options"]["include_usage"] == json!(true) {
        frames.push(sse(
            &json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}),
        ));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    event_stream(frames, tokens_at, behaviour)
}

async fn anthropic_messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "invalid JSON"}})),
        )
            .into_response();
    };
    shared.record("/v1/messages", &headers, &body);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model.is_empty() || !body["max_tokens"].is_u64() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}})),
        )
            .into_response();
    }
    let behaviour = shared.next(&model);
    pause(behaviour.latency).await;
    if behaviour.status != 200 {
        return error_response(&behaviour, Wire::Anthropic);
    }
    let reply = behaviour.reply.clone().unwrap_or_else(|| last_user_message(&body));
    let tokens = tokens_of(&reply);
    let (prompt, completion) = behaviour.usage.unwrap_or((prompt_tokens(&body), tokens.len() as u64));
    let id = format!("msg_mock_{}", now_seconds());
    let stop_reason = if behaviour.tool_call.is_some() { "tool_use" } else { "end_turn" };
    if body["stream"] != json!(true) {
        let mut content = vec![json!({"type": "text", "text": reply})];
        if let Some((name, arguments)) = &behaviour.tool_call {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            content.push(json!({"type": "tool_use", "id": TOOL_CALL_ID, "name": name, "input": input}));
        }
        return axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }))
        .into_response();
    }
    let mut frames = vec![
        anthropic_sse(
            "message_start",
            &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": prompt, "output_tokens": 1}}}),
        ),
        anthropic_sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    let tokens_at = frames.len();
    frames.extend(tokens.iter().map(|token| {
        anthropic_sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}}),
        )
    }));
    frames.push(anthropic_sse("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    if let Some((name, arguments)) = &behaviour.tool_call {
        frames.push(anthropic_sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": TOOL_CALL_ID, "name": name, "input": {}}}),
        ));
        let (first, second) = halves(arguments);
        for piece in [first, second] {
            frames.push(anthropic_sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        frames.push(anthropic_sse("content_block_stop", &json!({"type": "content_block_stop", "index": 1})));
    }
    frames.push(anthropic_sse(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": completion}}),
    ));
    frames.push(anthropic_sse("message_stop", &json!({"type": "message_stop"})));
    event_stream(frames, tokens_at, behaviour)
}

async fn embeddings(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return bad_request("We could not parse the JSON body of your request.") };
    shared.record("/v1/embeddings", &headers, &body);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let behaviour = shared.next(&model);
    pause(behaviour.latency).await;
    if behaviour.status != 200 {
        return error_response(&behaviour, Wire::OpenAi);
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().map(|item| item.as_str().map(str::to_owned).unwrap_or_else(|| item.to_string())).collect(),
        _ => return bad_request("'input' is a required property"),
    };
    let dimensions = body["dimensions"].as_u64().unwrap_or(8).clamp(1, 4096) as usize;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embedding_of(text, dimensions)}))
        .collect();
    let prompt: u64 = inputs.iter().map(|text| text.chars().count().div_ceil(4) as u64).sum();
    axum::Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}))
        .into_response()
}

/// A deterministic unit vector for `text` (FNV-1a seeded per dimension).
fn embedding_of(text: &str, dimensions: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..dimensions)
        .map(|dimension| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ dimension as u64;
            for byte in text.bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            (hash % 2_000_001) as f64 / 1_000_000.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|value| value * value).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    raw.iter().map(|value| value / norm).collect()
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let names: Vec<String> = shared.scripts.lock().map(|scripts| scripts.by_model.keys().cloned().collect()).unwrap_or_default();
    let data: Vec<Value> = names.iter().map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "mock"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let metrics = shared.metrics.lock().map(|metrics| *metrics).unwrap_or_default();
    let text = format!(
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"mock\"}} {}\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"mock\"}} {}\n\
         # HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:gpu_cache_usage_perc gauge\n\
         vllm:gpu_cache_usage_perc{{model_name=\"mock\"}} {}\n",
        metrics.requests_running, metrics.requests_waiting, metrics.kv_cache_usage
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The signature the mock puts on its function calls, as Gemini's thinking models do.
pub const GEMINI_THOUGHT_SIGNATURE: &str = "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ==";

fn gemini_error(status: StatusCode, name: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": status.as_u16(), "message": message, "status": name}}))).into_response()
}

/// The text of Gemini `parts`.
fn parts_text(parts: &Value) -> String {
    parts.as_array().into_iter().flatten().filter_map(|part| part["text"].as_str()).collect()
}

/// `POST /v1beta/models/{model}:{method}`: generateContent, streamGenerateContent (`alt=sse`
/// gives SSE, else one JSON array) and batchEmbedContents.
async fn gemini(
    State(shared): State<Arc<Shared>>,
    Path(call): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, method)) = call.split_once(':') else {
        return gemini_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found.");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return gemini_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    shared.record_for(model, uri.path(), &headers, &body);
    if headers.get("x-goog-api-key").is_none() && !uri.query().unwrap_or_default().contains("key=") {
        return gemini_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        );
    }
    if method == "batchEmbedContents" {
        return gemini_embeddings(&shared, model, &body).await;
    }
    if !matches!(method, "generateContent" | "streamGenerateContent") {
        return gemini_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found.");
    }
    let Some(contents) = body["contents"].as_array().filter(|contents| !contents.is_empty()) else {
        return gemini_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified");
    };
    let behaviour = shared.next(model);
    pause(behaviour.latency).await;
    if behaviour.status != 200 {
        return error_response(&behaviour, Wire::Gemini);
    }
    let reply = behaviour.reply.clone().unwrap_or_else(|| {
        contents.iter().rev().find(|content| content["role"] == "user").map(|content| parts_text(&content["parts"])).unwrap_or_default()
    });
    let tokens = tokens_of(&reply);
    let characters: usize = contents.iter().map(|content| parts_text(&content["parts"]).chars().count()).sum::<usize>()
        + parts_text(&body["systemInstruction"]["parts"]).chars().count();
    let (prompt, completion) = behaviour.usage.unwrap_or((characters.div_ceil(4) as u64, tokens.len() as u64));
    let usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion});
    let call_part = behaviour.tool_call.as_ref().map(|(name, arguments)| {
        let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": GEMINI_THOUGHT_SIGNATURE})
    });
    let chunk = |parts: Vec<Value>, last: bool| {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        let mut chunk = json!({"candidates": [], "modelVersion": model, "responseId": "mock-response"});
        if last {
            candidate["finishReason"] = json!("STOP");
            chunk["usageMetadata"] = usage.clone();
        } else {
            chunk["usageMetadata"] = json!({"promptTokenCount": prompt, "totalTokenCount": prompt});
        }
        chunk["candidates"] = json!([candidate]);
        chunk
    };
    if method == "generateContent" {
        let mut parts = Vec::new();
        if let Some(reasoning) = &behaviour.reasoning {
            parts.push(json!({"text": reasoning, "thought": true}));
        }
        if !reply.is_empty() || call_part.is_none() {
            parts.push(json!({"text": reply}));
        }
        parts.extend(call_part);
        return axum::Json(chunk(parts, true)).into_response();
    }
    let mut chunks: Vec<Value> = Vec::new();
    if let Some(reasoning) = &behaviour.reasoning {
        chunks.push(chunk(vec![json!({"text": reasoning, "thought": true})], false));
    }
    let tokens_at = chunks.len();
    let mut pieces: Vec<Vec<Value>> = tokens.iter().map(|token| vec![json!({"text": token})]).collect();
    if let Some(part) = call_part {
        pieces.push(vec![part]);
    }
    if pieces.is_empty() {
        pieces.push(vec![json!({"text": ""})]);
    }
    let count = pieces.len();
    chunks.extend(pieces.into_iter().enumerate().map(|(index, parts)| chunk(parts, index + 1 == count)));
    if !uri.query().unwrap_or_default().contains("alt=sse") {
        return axum::Json(Value::Array(chunks)).into_response();
    }
    // Google ends each event with CRLF CRLF and closes the stream without an end marker.
    let frames = chunks.iter().map(|chunk| Bytes::from(format!("data: {chunk}\r\n\r\n"))).collect();
    event_stream(frames, tokens_at, behaviour)
}

async fn gemini_embeddings(shared: &Shared, model: &str, body: &Value) -> Response {
    let behaviour = shared.next(model);
    pause(behaviour.latency).await;
    if behaviour.status != 200 {
        return error_response(&behaviour, Wire::Gemini);
    }
    let Some(requests) = body["requests"].as_array() else {
        return gemini_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "* BatchEmbedContentsRequest.requests: requests is not specified",
        );
    };
    let embeddings: Vec<Value> = requests
        .iter()
        .map(|request| {
            let dimensions = request["outputDimensionality"].as_u64().unwrap_or(8).clamp(1, 4096) as usize;
            json!({"values": embedding_of(&parts_text(&request["content"]["parts"]), dimensions)})
        })
        .collect();
    axum::Json(json!({"embeddings": embeddings})).into_response()
}
