//! The OpenAI-compatible endpoint: `POST /v1/chat/completions` (streaming and not),
//! `POST /v1/embeddings` and `GET /v1/models`, for any OpenAI client, authenticated with the
//! gateway keys of the models file (not app keys). Errors are OpenAI's
//! `{"error": {"message", "type", "param", "code"}}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};

use flowgate_models::limits::Caller;
use flowgate_models::metrics::Payer;
use flowgate_models::types::{ChatRequest, ChatResponse, Message, StreamEvent, TokenUsage};
use flowgate_models::{ErrorClass, Gateway, GatewayError};

use super::Shared;

/// An error in OpenAI's shape, with `Retry-After` when waiting helps.
struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    /// Our own limit: (its size, seconds until it has room), for `X-RateLimit-*`.
    limit: Option<(u64, Option<u64>)>,
}

fn error(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> OpenAiError {
    OpenAiError { status, kind, code, message: message.into(), retry_after: None, limit: None }
}

fn with_retry_after(mut error: OpenAiError, seconds: u64) -> OpenAiError {
    error.retry_after = Some(seconds.max(1));
    error
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(value) = self.retry_after.and_then(|seconds| HeaderValue::from_str(&seconds.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if let Some((limit, reset)) = self.limit {
            let headers = response.headers_mut();
            for (name, value) in [("x-ratelimit-limit", Some(limit)), ("x-ratelimit-remaining", Some(0)), ("x-ratelimit-reset", reset)] {
                if let Some(value) = value.and_then(|value| HeaderValue::from_str(&value.to_string()).ok()) {
                    headers.insert(name, value);
                }
            }
        }
        response
    }
}

/// A gateway failure as the client sees it: its own mistakes as 4xx with the upstream's
/// message, upstream trouble as 502/504, our limits as 429/503 with `Retry-After`.
fn gateway_error(failure: &GatewayError) -> OpenAiError {
    match failure {
        GatewayError::UnknownModel(model) => {
            error(StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found", format!("The model `{model}` does not exist"))
        }
        GatewayError::NoTarget { retry_after, .. } => with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, "server_error", "no_target_available", failure.to_string()),
            retry_after.as_secs_f64().ceil() as u64,
        ),
        GatewayError::Limited(refusal) => {
            let mut limited = error(StatusCode::TOO_MANY_REQUESTS, "requests", "rate_limit_exceeded", refusal.to_string());
            limited.limit = Some((refusal.limit, refusal.retry_after.map(|after| after.as_secs_f64().ceil() as u64)));
            limited.retry_after = refusal.retry_after.map(|after| (after.as_secs_f64().ceil() as u64).max(1));
            limited
        }
        GatewayError::Failed { last, .. } => match &last.class {
            ErrorClass::RateLimited { retry_after } => with_retry_after(
                error(StatusCode::TOO_MANY_REQUESTS, "requests", "rate_limit_exceeded", failure.to_string()),
                retry_after.map_or(1, |after| after.as_secs_f64().ceil() as u64),
            ),
            ErrorClass::ContextTooLong => error(StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded", &last.message),
            ErrorClass::ContentPolicy => error(StatusCode::BAD_REQUEST, "invalid_request_error", "content_policy_violation", &last.message),
            ErrorClass::BadRequest => error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", &last.message),
            ErrorClass::Timeout => error(StatusCode::GATEWAY_TIMEOUT, "server_error", "upstream_timeout", failure.to_string()),
            _ => error(StatusCode::BAD_GATEWAY, "server_error", "upstream_error", failure.to_string()),
        },
    }
}

/// The gateway and the key's name, if a models file is loaded and the request carries one of
/// its keys.
fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(Arc<Gateway>, String), OpenAiError> {
    let Some(gateway) = state.gateway.clone() else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "gateway_off",
            "The model gateway is off: start flowgate serve with --models FILE",
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    match state.gateway_keys.get(&flowgate_store::token_hash(token)) {
        Some(name) if !token.is_empty() => Ok((gateway, name.clone())),
        _ => Err(error(StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key", "Incorrect API key provided")),
    }
}

/// Which OpenAI API a request came in on: chat completions, or the legacy text completions
/// (`prompt` in, `choices[].text` out) that base-model clients use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

/// What the client asked for, split into the model, the request and the streaming options.
struct Parsed {
    model: String,
    request: ChatRequest,
    stream: bool,
    include_usage: bool,
}

fn parse(body: &[u8], api: Api) -> Result<Parsed, OpenAiError> {
    let bad = |message: String| error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", message);
    let value: Value = serde_json::from_slice(body).map_err(|problem| bad(format!("The request body is not valid JSON: {problem}")))?;
    let Value::Object(mut object) = value else { return Err(bad("The request body must be a JSON object".into())) };
    let model = match object.remove("model") {
        Some(Value::String(model)) if !model.is_empty() => model,
        _ => return Err(bad("you must provide a model parameter".into())),
    };
    let messages: Vec<Message> = match api {
        Api::Chat => match object.remove("messages") {
            Some(messages @ Value::Array(_)) => serde_json::from_value(messages).map_err(|problem| bad(format!("messages: {problem}")))?,
            _ => return Err(bad("messages: a non-empty array is required".into())),
        },
        // One prompt per request: a string, or an array holding one string.
        Api::Completions => match object.remove("prompt") {
            Some(Value::String(prompt)) => vec![Message::text("user", &prompt)],
            Some(Value::Array(prompts)) if prompts.len() == 1 && prompts[0].is_string() => {
                vec![Message::text("user", prompts[0].as_str().unwrap_or_default())]
            }
            Some(Value::Array(prompts)) if prompts.len() > 1 => {
                return Err(bad("not supported yet: several prompts in one completions request; send one request per prompt".into()));
            }
            _ => return Err(bad("prompt: a string is required (token arrays are not supported)".into())),
        },
    };
    if messages.is_empty() {
        return Err(bad("messages: a non-empty array is required".into()));
    }
    let stream = match object.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => stream,
        Some(_) => return Err(bad("stream: must be a boolean".into())),
    };
    let include_usage = object.remove("stream_options").is_some_and(|options| options["include_usage"] == json!(true));
    let parameters: Map<String, Value> = object;
    let mut request = ChatRequest::chat(model.clone(), messages, parameters);
    request.completion = api == Api::Completions;
    Ok(Parsed { model, request, stream, include_usage })
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

fn usage_json(usage: &TokenUsage) -> Value {
    json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens})
}

fn completion_json(id: &str, model: &str, answer: &ChatResponse) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.content, "refusal": null});
    if !answer.tool_calls.is_empty() {
        message["tool_calls"] = serde_json::to_value(&answer.tool_calls).unwrap_or(Value::Null);
        if answer.content.is_empty() {
            message["content"] = Value::Null;
        }
    }
    if !answer.reasoning.is_empty() {
        message["reasoning_content"] = json!(answer.reasoning);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": now_seconds(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": answer.finish_reason.as_deref().unwrap_or("stop")}],
        "usage": answer.usage.as_ref().map_or(Value::Null, usage_json),
    })
}

/// The legacy completions API's answer: the text as `choices[0].text`.
fn text_completion_json(id: &str, model: &str, answer: &ChatResponse) -> Value {
    json!({
        "id": id,
        "object": "text_completion",
        "created": now_seconds(),
        "model": model,
        "choices": [{"index": 0, "text": answer.content, "logprobs": null, "finish_reason": answer.finish_reason.as_deref().unwrap_or("stop")}],
        "usage": answer.usage.as_ref().map_or(Value::Null, usage_json),
    })
}

pub async fn chat_completions(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    answer(state, headers, body, Api::Chat).await
}

/// `POST /v1/completions`: a prompt for the model, asked on the upstream's completions API
/// where it has one (OpenAI-compatible servers), else as one user message.
pub async fn completions(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    answer(state, headers, body, Api::Completions).await
}

async fn answer(state: Shared, headers: HeaderMap, body: Bytes, api: Api) -> Response {
    let (gateway, key) = match authorize(&state, &headers) {
        Ok(authorized) => authorized,
        Err(failure) => return failure.into_response(),
    };
    gateway.metrics().key_used(&key);
    let parsed = match parse(&body, api) {
        Ok(parsed) => parsed,
        Err(failure) => return failure.into_response(),
    };
    let legacy = api == Api::Completions;
    let id = format!("{}-{}", if legacy { "cmpl" } else { "chatcmpl" }, uuid::Uuid::new_v4().simple());
    let whole_json = |id: &str, model: &str, answer: &ChatResponse| {
        if legacy { text_completion_json(id, model, answer) } else { completion_json(id, model, answer) }
    };
    let bypass = headers
        .get("x-flowgate-cache")
        .or_else(|| headers.get(header::CACHE_CONTROL))
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("bypass") || value.contains("no-cache") || value.contains("no-store"));
    // A cache hit costs nothing upstream, so it is not counted against limits.
    if !bypass && let Some(answer) = gateway.cached(&parsed.model, &parsed.request).await {
        let mut response = if parsed.stream {
            let writer = ChunkWriter { id, created: now_seconds(), model: parsed.model.clone(), legacy };
            sse_response(axum::body::Body::from(replay(&writer, &answer, parsed.include_usage)))
        } else {
            axum::Json(whole_json(&id, &parsed.model, &answer)).into_response()
        };
        response.headers_mut().insert("x-flowgate-cache", HeaderValue::from_static("hit"));
        return response;
    }
    let user = parsed.request.parameters.get("user").and_then(Value::as_str).map(str::to_owned);
    let key_name = key.clone();
    let caller = Caller { key: Some(key), app: None, user };
    let reservation = match gateway.admit(&parsed.model, &parsed.request, &caller).await {
        Ok(reservation) => reservation,
        Err(failure) => return gateway_error(&failure).into_response(),
    };
    if !parsed.stream {
        return match gateway.chat(&parsed.model, &parsed.request).await {
            Ok(served) => {
                if let Some(usage) = &served.value.usage {
                    gateway.account(&served.model, &served.target, usage, Payer { key: Some(&key_name), app: None });
                }
                reservation.settle(served.value.usage.map(|usage| usage.total_tokens)).await;
                gateway.remember(&parsed.model, &parsed.request, &served.value).await;
                axum::Json(whole_json(&id, &parsed.model, &served.value)).into_response()
            }
            Err(failure) => {
                reservation.settle(Some(0)).await;
                gateway_error(&failure).into_response()
            }
        };
    }
    let served = match gateway.chat_stream(&parsed.model, &parsed.request).await {
        Ok(served) => served,
        Err(failure) => {
            reservation.settle(Some(0)).await;
            return gateway_error(&failure).into_response();
        }
    };
    let forward = Forward {
        stream: Some(served.value),
        key: key_name,
        writer: ChunkWriter { id, created: now_seconds(), model: parsed.model.clone(), legacy },
        include_usage: parsed.include_usage,
        gateway,
        served_model: served.model,
        target: served.target,
        request: parsed.request,
        reservation: Some(reservation),
        used: None,
        whole: ChatResponse { model: parsed.model, ..ChatResponse::default() },
        complete: true,
        started: false,
    };
    let body = futures::stream::unfold(forward, |mut forward| async move {
        let bytes = forward.step().await?;
        Some((Ok::<_, Infallible>(bytes), forward))
    });
    sse_response(axum::body::Body::from_stream(body))
}

/// Writes OpenAI's `chat.completion.chunk` frames (typed, not through `serde_json::Value`: a
/// stream writes one per token).
struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    /// Legacy completions: `text_completion` chunks with `choices[].text`.
    legacy: bool,
}

#[derive(serde::Serialize)]
struct OutChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [OutChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a TokenUsage>,
}

/// A legacy completions chunk's choice.
#[derive(serde::Serialize)]
struct OutTextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct OutTextChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [OutTextChoice<'a>],
}

#[derive(serde::Serialize)]
struct OutChoice<'a> {
    index: u32,
    delta: OutDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(serde::Serialize, Default)]
struct OutDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[OutToolCall<'a>; 1]>,
}

#[derive(serde::Serialize)]
struct OutToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: OutFunction<'a>,
}

#[derive(serde::Serialize)]
struct OutFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl ChunkWriter {
    fn write(&self, out: &mut BytesMut, chunk: &OutChunk<'_>) {
        out.extend_from_slice(b"data: ");
        let mut writer = bytes::BufMut::writer(&mut *out);
        let _ = serde_json::to_writer(&mut writer, chunk);
        out.extend_from_slice(b"\n\n");
    }

    fn delta(&self, out: &mut BytesMut, delta: OutDelta<'_>, finish_reason: Option<&str>) {
        if self.legacy {
            // Text and the finish reason only: the legacy API has no roles, thoughts or tools.
            if delta.content.is_some_and(|text| !text.is_empty()) || finish_reason.is_some() {
                let choices = [OutTextChoice { index: 0, text: delta.content.unwrap_or_default(), logprobs: None, finish_reason }];
                let chunk =
                    OutTextChunk { id: &self.id, object: "text_completion", created: self.created, model: &self.model, choices: &choices };
                out.extend_from_slice(b"data: ");
                let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), &chunk);
                out.extend_from_slice(b"\n\n");
            }
            return;
        }
        let choices = [OutChoice { index: 0, delta, logprobs: None, finish_reason }];
        let chunk = OutChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choices,
            usage: None,
        };
        self.write(out, &chunk);
    }

    fn usage(&self, out: &mut BytesMut, usage: &TokenUsage) {
        let chunk = OutChunk {
            id: &self.id,
            object: if self.legacy { "text_completion" } else { "chat.completion.chunk" },
            created: self.created,
            model: &self.model,
            choices: &[],
            usage: Some(usage),
        };
        self.write(out, &chunk);
    }

    fn event(&self, out: &mut BytesMut, event: &StreamEvent, include_usage: bool) {
        match event {
            StreamEvent::Text(text) => self.delta(out, OutDelta { content: Some(text), ..OutDelta::default() }, None),
            StreamEvent::Reasoning(text) => self.delta(out, OutDelta { reasoning_content: Some(text), ..OutDelta::default() }, None),
            StreamEvent::ToolCall { index, id, name, arguments } => {
                let call = OutToolCall {
                    index: *index,
                    id: id.as_deref(),
                    kind: id.as_ref().map(|_| "function"),
                    function: OutFunction { name: name.as_deref(), arguments },
                };
                self.delta(out, OutDelta { tool_calls: Some([call]), ..OutDelta::default() }, None);
            }
            StreamEvent::Finish(reason) => self.delta(out, OutDelta::default(), Some(reason)),
            // Usage is always asked of the upstream; the client gets it only if it asked.
            StreamEvent::Usage(usage) if include_usage => self.usage(out, usage),
            StreamEvent::Usage(_) => {}
        }
    }
}

/// An upstream stream forwarded to an OpenAI client: each read's events leave together as
/// soon as they are parsed (no task or channel in between); at the end the token reservation
/// is settled and a complete answer is cached.
struct Forward {
    stream: Option<flowgate_models::ChatStream>,
    /// The gateway key's name, for its usage metrics.
    key: String,
    writer: ChunkWriter,
    include_usage: bool,
    gateway: Arc<Gateway>,
    served_model: String,
    target: String,
    request: ChatRequest,
    reservation: Option<flowgate_models::limits::Reservation>,
    used: Option<u64>,
    /// The answer as it streams, for the cache.
    whole: ChatResponse,
    complete: bool,
    started: bool,
}

impl Forward {
    fn note(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Usage(usage) => {
                self.used = Some(usage.total_tokens);
                self.gateway.account(&self.served_model, &self.target, usage, Payer { key: Some(&self.key), app: None });
            }
            StreamEvent::Text(text) => self.whole.content.push_str(text),
            StreamEvent::Reasoning(text) => self.whole.reasoning.push_str(text),
            StreamEvent::Finish(reason) => self.whole.finish_reason = Some(reason.clone()),
            // Tool calls are not replayed from the cache; such answers are not kept.
            StreamEvent::ToolCall { .. } => self.complete = false,
        }
    }

    /// The next bytes for the client, or `None` when the stream has ended.
    async fn step(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(512);
        if !self.started {
            self.started = true;
            self.writer.delta(&mut out, OutDelta { role: Some("assistant"), content: Some(""), ..OutDelta::default() }, None);
        }
        loop {
            let stream = self.stream.as_mut()?;
            match stream.next().await {
                Some(Ok(event)) => {
                    self.note(&event);
                    self.writer.event(&mut out, &event, self.include_usage);
                    let ready: Vec<StreamEvent> = self.stream.as_mut().map(|stream| stream.ready().collect()).unwrap_or_default();
                    for event in &ready {
                        self.note(event);
                        self.writer.event(&mut out, event, self.include_usage);
                    }
                }
                Some(Err(failure)) => {
                    // Tokens were already sent: the client learns of the failure in the stream.
                    self.complete = false;
                    let error = json!({"error": {"message": failure.to_string(), "type": "server_error", "param": null, "code": failure.class.as_str()}});
                    out.extend_from_slice(format!("data: {error}\n\n").as_bytes());
                    self.finish().await;
                }
                None => {
                    self.finish().await;
                    out.extend_from_slice(b"data: [DONE]\n\n");
                }
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
        }
    }

    async fn finish(&mut self) {
        // The upstream connection goes back to the pool (or closes) before the bookkeeping.
        self.stream = None;
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(self.used).await;
        }
        if self.complete {
            self.gateway.remember(&self.writer.model, &self.request, &self.whole).await;
        }
    }
}

impl Drop for Forward {
    /// A client that went away drops the body: the upstream call stops with it, and what it
    /// reserved is settled with what it used so far.
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let used = self.used;
            tokio::spawn(reservation.settle(used));
        }
    }
}

/// A cached answer as the stream it once was: the text in word-sized pieces, then the finish
/// reason, the (zero) usage if asked for, and `[DONE]`.
fn replay(writer: &ChunkWriter, answer: &ChatResponse, include_usage: bool) -> Bytes {
    let mut out = BytesMut::new();
    writer.delta(&mut out, OutDelta { role: Some("assistant"), content: Some(""), ..OutDelta::default() }, None);
    if !answer.reasoning.is_empty() {
        writer.delta(&mut out, OutDelta { reasoning_content: Some(&answer.reasoning), ..OutDelta::default() }, None);
    }
    for piece in answer.content.split_inclusive(char::is_whitespace) {
        writer.delta(&mut out, OutDelta { content: Some(piece), ..OutDelta::default() }, None);
    }
    writer.delta(&mut out, OutDelta::default(), Some(answer.finish_reason.as_deref().unwrap_or("stop")));
    if include_usage {
        writer.usage(&mut out, &TokenUsage::default());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out.freeze()
}

/// An event-stream response with the headers that keep proxies from buffering it.
fn sse_response(body: axum::body::Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    response
}

pub async fn embeddings(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (gateway, key) = match authorize(&state, &headers) {
        Ok(authorized) => authorized,
        Err(failure) => return failure.into_response(),
    };
    gateway.metrics().key_used(&key);
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", "The request body must be a JSON object")
                .into_response();
        }
    };
    let Some(model) = value["model"].as_str().map(str::to_owned) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", "you must provide a model parameter")
            .into_response();
    };
    if !(value["input"].is_string() || value["input"].is_array()) {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", "'input' is a required property")
            .into_response();
    }
    let characters = match &value["input"] {
        Value::String(text) => text.len(),
        other => other.to_string().len(),
    };
    let caller = Caller { key: Some(key), app: None, user: value["user"].as_str().map(str::to_owned) };
    let reservation = match gateway.admit_embeddings(&model, characters, &caller).await {
        Ok(reservation) => reservation,
        Err(failure) => return gateway_error(&failure).into_response(),
    };
    let result = gateway.embeddings(&model, &value).await;
    reservation.settle(Some(result.as_ref().map_or(0, |served| served.value["usage"]["total_tokens"].as_u64().unwrap_or(0)))).await;
    match result {
        Ok(served) => {
            let mut answer = served.value;
            answer["model"] = json!(model);
            axum::Json(answer).into_response()
        }
        Err(failure) => gateway_error(&failure).into_response(),
    }
}

/// A logical model of the models file as OpenAI describes a model.
fn model_object(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "flowgate"})
}

pub async fn models(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let gateway = match authorize(&state, &headers) {
        Ok((gateway, _)) => gateway,
        Err(failure) => return failure.into_response(),
    };
    let data: Vec<Value> = gateway.config().models.iter().map(|model| model_object(&model.name)).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{model}` (`client.models.retrieve`).
pub async fn model(State(state): State<Shared>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let gateway = match authorize(&state, &headers) {
        Ok((gateway, _)) => gateway,
        Err(failure) => return failure.into_response(),
    };
    if gateway.config().models.iter().any(|model| model.name == name) {
        axum::Json(model_object(&name)).into_response()
    } else {
        gateway_error(&GatewayError::UnknownModel(name)).into_response()
    }
}
