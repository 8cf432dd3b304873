//! Anthropic's Messages API, translated to and from the one request/response/stream type.

use std::collections::VecDeque;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use base64::Engine as _;

use crate::error::{ErrorClass, ProviderError};
use crate::openai::Timeouts;
use crate::stream::{ChatStream, Dialect, StreamState};
use crate::transport::{post_json, read_json};
use crate::types::{ChatRequest, ChatResponse, Content, FilePart, FunctionCall, Part, StreamEvent, TokenUsage, ToolCall, data_url_parts};

/// Anthropic requires `max_tokens`; this is the cap when the client set none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// Dify's default `thinking_budget` when a node switches thinking on.
const THINKING_BUDGET: u64 = 1024;
const API_VERSION: &str = "2023-06-01";

#[derive(Clone)]
pub struct AnthropicTarget {
    label: String,
    /// `https://api.anthropic.com` or a compatible server; `/v1/messages` is appended.
    base_url: String,
    api_key: String,
    client: reqwest::Client,
}

impl AnthropicTarget {
    pub fn new(label: &str, base_url: &str, api_key: String, client: reqwest::Client) -> Self {
        let base_url = base_url.trim_end_matches('/').trim_end_matches("/v1").to_owned();
        Self { label: label.to_owned(), base_url, api_key, client }
    }

    async fn send(&self, body: &Value, deadline: Instant) -> Result<reqwest::Response, ProviderError> {
        let request = self
            .client
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION);
        post_json(request, &self.label, body, deadline).await
    }

    /// A request Anthropic cannot take, refused before it is sent.
    fn refused(&self, message: String) -> ProviderError {
        ProviderError::new(ErrorClass::BadRequest, &self.label, message)
    }

    pub async fn chat(&self, request: &ChatRequest, timeouts: Timeouts) -> Result<ChatResponse, ProviderError> {
        let deadline = Instant::now() + timeouts.total;
        let response = self.send(&body(request, false).map_err(|message| self.refused(message))?, deadline).await?;
        let json = read_json(response, &self.label, deadline).await?;
        let mut answer = ChatResponse {
            id: json["id"].as_str().unwrap_or_default().to_owned(),
            model: json["model"].as_str().unwrap_or(&request.model).to_owned(),
            finish_reason: json["stop_reason"].as_str().map(finish_reason),
            ..ChatResponse::default()
        };
        for block in json["content"].as_array().into_iter().flatten() {
            match block["type"].as_str() {
                Some("text") => answer.content.push_str(block["text"].as_str().unwrap_or_default()),
                Some("thinking") => answer.reasoning.push_str(block["thinking"].as_str().unwrap_or_default()),
                Some("tool_use") => answer.tool_calls.push(ToolCall {
                    id: block["id"].as_str().unwrap_or_default().to_owned(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: block["name"].as_str().unwrap_or_default().to_owned(),
                        arguments: block["input"].to_string(),
                    },
                }),
                _ => {}
            }
        }
        let input = json["usage"]["input_tokens"].as_u64().unwrap_or(0);
        let output = json["usage"]["output_tokens"].as_u64().unwrap_or(0);
        answer.usage = Some(TokenUsage { prompt_tokens: input, completion_tokens: output, total_tokens: input + output });
        Ok(answer)
    }

    pub async fn chat_stream(&self, request: &ChatRequest, timeouts: Timeouts) -> Result<ChatStream, ProviderError> {
        let started = Instant::now();
        let deadline = started + timeouts.total;
        let first_token_deadline = (started + timeouts.first_token).min(deadline);
        let response = self.send(&body(request, true).map_err(|message| self.refused(message))?, first_token_deadline).await?;
        ChatStream::start(&self.label, response, Dialect::Anthropic, first_token_deadline, deadline).await
    }
}

fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
    .to_owned()
}

/// An image part as Anthropic takes it: base64 from a `data:` URL, else by URL.
fn image_block(url: &str) -> Value {
    if let Some((media_type, data)) = data_url_parts(url) {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// A file part as a `document` block: PDFs as base64, plain text as text; Anthropic reads no
/// other kind.
fn document_block(file: &FilePart) -> Result<Value, String> {
    let name = file.filename.as_deref().unwrap_or("a file");
    match file.file_data.as_deref().and_then(data_url_parts) {
        Some(("application/pdf", data)) => {
            Ok(json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}))
        }
        Some((media_type, data)) if media_type.starts_with("text/") => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| format!("{name} is not valid base64"))?;
            let text = String::from_utf8_lossy(&bytes);
            Ok(json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}))
        }
        Some((media_type, _)) => Err(format!("Anthropic reads PDF and text documents, not {media_type} ({name})")),
        None => Err(format!("Anthropic needs the content of {name}, not a file id")),
    }
}

fn content_blocks(content: &Content) -> Result<Vec<Value>, String> {
    Ok(match content {
        Content::Text(text) if text.is_empty() => Vec::new(),
        Content::Text(text) => vec![json!({"type": "text", "text": text})],
        Content::Parts(parts) => parts
            .iter()
            .map(|part| match part {
                Part::Text { text } => Ok(json!({"type": "text", "text": text})),
                Part::ImageUrl { image_url } => Ok(image_block(&image_url.url)),
                Part::File { file } => document_block(file),
                Part::InputAudio { .. } => Err("Anthropic models take no audio input".to_owned()),
                Part::VideoUrl { .. } => Err("Anthropic models take no video input".to_owned()),
            })
            .collect::<Result<_, _>>()?,
        Content::Null(()) => Vec::new(),
    })
}

/// The Messages request for `request`: system messages lifted to `system`, tool results as
/// user `tool_result` blocks, tool calls as `tool_use` blocks, OpenAI's parameter names mapped.
fn body(request: &ChatRequest, stream: bool) -> Result<Value, String> {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role.as_str() {
            "system" | "developer" => {
                system.push(message.content.as_text());
                continue;
            }
            "tool" => (
                "user",
                vec![
                    json!({"type": "tool_result", "tool_use_id": message.tool_call_id.clone().unwrap_or_default(), "content": message.content.as_text()}),
                ],
            ),
            "assistant" => {
                let mut blocks = content_blocks(&message.content)?;
                for call in &message.tool_calls {
                    let input: Value = serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": input}));
                }
                ("assistant", blocks)
            }
            _ => ("user", content_blocks(&message.content)?),
        };
        // Anthropic wants turns to alternate; consecutive same-role messages are merged.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(content) = last["content"].as_array_mut() {
                    content.extend(blocks);
                }
            }
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("max_tokens".into(), json!(request.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS)));
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    for (name, value) in &request.parameters {
        match name.as_str() {
            "temperature" | "top_p" | "top_k" | "metadata" => {
                body.insert(name.clone(), value.clone());
            }
            "stop" => {
                let stops = if value.is_string() { json!([value]) } else { value.clone() };
                body.insert("stop_sequences".into(), stops);
            }
            "tools" => {
                let tools: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|tool| {
                        let function = &tool["function"];
                        json!({"name": function["name"], "description": function["description"], "input_schema": function["parameters"]})
                    })
                    .collect();
                body.insert("tools".into(), Value::Array(tools));
            }
            "tool_choice" => {
                let choice = match value {
                    Value::String(mode) if mode == "required" => Some(json!({"type": "any"})),
                    Value::String(mode) if mode == "auto" => Some(json!({"type": "auto"})),
                    Value::String(mode) if mode == "none" => Some(json!({"type": "none"})),
                    Value::Object(_) => Some(json!({"type": "tool", "name": value["function"]["name"]})),
                    _ => None,
                };
                if let Some(choice) = choice {
                    body.insert("tool_choice".into(), choice);
                }
            }
            // Extended thinking: Anthropic's own object, or Dify's switch with its budget.
            "thinking" => match value {
                Value::Object(_) => {
                    body.insert("thinking".into(), value.clone());
                }
                Value::Bool(true) => {
                    let budget = request.parameters.get("thinking_budget").and_then(Value::as_u64).unwrap_or(THINKING_BUDGET);
                    body.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
                }
                _ => {}
            },
            // OpenAI's effort levels, as LiteLLM maps them to a thinking budget.
            "reasoning_effort" if !request.parameters.contains_key("thinking") => {
                let budget = match value.as_str() {
                    Some("minimal" | "low") => Some(1024),
                    Some("medium") => Some(2048),
                    Some("high") => Some(4096),
                    _ => None,
                };
                if let Some(budget) = budget {
                    body.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
                }
            }
            // Everything else (penalties, seed, response_format, n, …) has no Anthropic equivalent.
            _ => {}
        }
    }
    // The thinking budget comes out of `max_tokens`, which must stay above it: without a cap of
    // the client's, the default cap is left for the answer.
    if request.max_output_tokens().is_none()
        && let Some(budget) = body.get("thinking").and_then(|thinking| thinking["budget_tokens"].as_u64())
    {
        body.insert("max_tokens".into(), json!(budget + DEFAULT_MAX_TOKENS));
    }
    body.insert("stream".into(), json!(stream));
    Ok(Value::Object(body))
}

/// One event of an Anthropic stream into events.
pub(crate) fn parse_event(
    label: &str,
    event: &str,
    data: &Value,
    state: &mut StreamState,
    pending: &mut VecDeque<StreamEvent>,
) -> Result<(), ProviderError> {
    let kind = data["type"].as_str().unwrap_or(event);
    match kind {
        "message_start" => state.input_tokens = data["message"]["usage"]["input_tokens"].as_u64().unwrap_or(0),
        "content_block_start" if data["content_block"]["type"] == "tool_use" => {
            let index = state.tool_blocks.len();
            state.tool_blocks.push((data["index"].as_u64().unwrap_or(0), index));
            pending.push_back(StreamEvent::ToolCall {
                index,
                id: data["content_block"]["id"].as_str().map(str::to_owned),
                name: data["content_block"]["name"].as_str().map(str::to_owned),
                arguments: String::new(),
            });
        }
        "content_block_delta" => {
            let delta = &data["delta"];
            match delta["type"].as_str() {
                Some("text_delta") => pending.push_back(StreamEvent::Text(delta["text"].as_str().unwrap_or_default().to_owned())),
                Some("thinking_delta") => {
                    pending.push_back(StreamEvent::Reasoning(delta["thinking"].as_str().unwrap_or_default().to_owned()))
                }
                Some("input_json_delta") => {
                    let block = data["index"].as_u64().unwrap_or(0);
                    if let Some((_, index)) = state.tool_blocks.iter().find(|(at, _)| *at == block) {
                        pending.push_back(StreamEvent::ToolCall {
                            index: *index,
                            id: None,
                            name: None,
                            arguments: delta["partial_json"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                }
                _ => {}
            }
        }
        "message_delta" => {
            if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                state.finished = true;
                pending.push_back(StreamEvent::Finish(finish_reason(reason)));
            }
            if let Some(output) = data["usage"]["output_tokens"].as_u64() {
                let input = data["usage"]["input_tokens"].as_u64().unwrap_or(state.input_tokens);
                pending.push_back(StreamEvent::Usage(TokenUsage {
                    prompt_tokens: input,
                    completion_tokens: output,
                    total_tokens: input + output,
                }));
            }
        }
        "message_stop" => state.done = true,
        "error" => {
            let status = match data["error"]["type"].as_str() {
                Some("overloaded_error") => 529,
                Some("rate_limit_error") => 429,
                _ => 500,
            };
            return Err(ProviderError::from_response(label, status, None, data.to_string().as_bytes()));
        }
        _ => {}
    }
    Ok(())
}
