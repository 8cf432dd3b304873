//! Google's Gemini API (`generateContent`, `streamGenerateContent`, `batchEmbedContents`),
//! translated to and from the one request/response/stream type.
//!
//! Gemini's function calls carry no ids, and its thinking models sign each call: the signature
//! must come back with the call on the next turn or the request is refused. The ids given to
//! clients therefore carry the signature (`call_…__thought__<signature>`), so a conversation
//! that goes through an OpenAI client and back keeps it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::error::{ErrorClass, ProviderError};
use crate::openai::Timeouts;
use crate::stream::{ChatStream, Dialect, StreamState};
use crate::transport::{post_json, read_json};
use crate::types::{ChatRequest, ChatResponse, Content, FilePart, Message, Part, StreamEvent, TokenUsage, data_url_parts};

/// Between a tool call's id and the thought signature it carries.
const SIGNATURE_SEPARATOR: &str = "__thought__";

/// What Google documents for a function call the model did not make (worked examples,
/// history from another model): it passes the signature check.
const UNSIGNED_CALL: &str = "skip_thought_signature_validator";

#[derive(Clone)]
pub struct GeminiTarget {
    label: String,
    /// Up to the API version: `https://generativelanguage.googleapis.com/v1beta`.
    base_url: String,
    api_key: String,
    client: reqwest::Client,
}

impl GeminiTarget {
    pub fn new(label: &str, base_url: &str, api_key: String, client: reqwest::Client) -> Self {
        Self { label: label.to_owned(), base_url: base_url.trim_end_matches('/').to_owned(), api_key, client }
    }

    async fn send(&self, model: &str, method: &str, body: &Value, deadline: Instant) -> Result<reqwest::Response, ProviderError> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let request = self.client.post(format!("{}/models/{model}:{method}", self.base_url)).header("x-goog-api-key", &self.api_key);
        post_json(request, &self.label, body, deadline).await
    }

    pub async fn chat(&self, request: &ChatRequest, timeouts: Timeouts) -> Result<ChatResponse, ProviderError> {
        let deadline = Instant::now() + timeouts.total;
        let body = body(request).map_err(|message| ProviderError::new(ErrorClass::BadRequest, &self.label, message))?;
        let response = self.send(&request.model, "generateContent", &body, deadline).await?;
        let json = read_json(response, &self.label, deadline).await?;
        let mut state = StreamState::default();
        let mut events = VecDeque::new();
        parse_chunk(&self.label, &json, &mut state, &mut events)?;
        let mut answer = ChatResponse {
            id: json["responseId"].as_str().unwrap_or_default().to_owned(),
            model: json["modelVersion"].as_str().unwrap_or(&request.model).to_owned(),
            ..ChatResponse::default()
        };
        events.into_iter().for_each(|event| answer.add(event));
        Ok(answer)
    }

    pub async fn chat_stream(&self, request: &ChatRequest, timeouts: Timeouts) -> Result<ChatStream, ProviderError> {
        let started = Instant::now();
        let deadline = started + timeouts.total;
        let first_token_deadline = (started + timeouts.first_token).min(deadline);
        let body = body(request).map_err(|message| ProviderError::new(ErrorClass::BadRequest, &self.label, message))?;
        let response = self.send(&request.model, "streamGenerateContent?alt=sse", &body, first_token_deadline).await?;
        ChatStream::start(&self.label, response, Dialect::Gemini, first_token_deadline, deadline).await
    }

    /// An OpenAI embeddings request (`input` a string or strings, `dimensions`) through
    /// `batchEmbedContents`, answered in OpenAI's shape. Gemini reports no token counts for
    /// embeddings; usage is estimated at a token per four characters.
    pub async fn embeddings(&self, body: &Value, timeouts: Timeouts) -> Result<Value, ProviderError> {
        let model = body["model"].as_str().unwrap_or_default();
        let model = model.strip_prefix("models/").unwrap_or(model);
        let inputs: Vec<String> = match &body["input"] {
            Value::String(text) => vec![text.clone()],
            Value::Array(items) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(|item| item.as_str().map(str::to_owned)).collect()
            }
            _ => {
                return Err(ProviderError::new(
                    ErrorClass::BadRequest,
                    &self.label,
                    "Gemini embeds text only: `input` must be a string or an array of strings",
                ));
            }
        };
        let requests: Vec<Value> = inputs
            .iter()
            .map(|text| {
                let mut request = json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
                if let Some(dimensions) = body.get("dimensions").filter(|value| value.is_u64()) {
                    request["outputDimensionality"] = dimensions.clone();
                }
                request
            })
            .collect();
        let deadline = Instant::now() + timeouts.total;
        let response = self.send(model, "batchEmbedContents", &json!({"requests": requests}), deadline).await?;
        let json = read_json(response, &self.label, deadline).await?;
        let Some(embeddings) = json["embeddings"].as_array() else {
            return Err(ProviderError::new(ErrorClass::Protocol, &self.label, "the answer has no embeddings"));
        };
        let data: Vec<Value> = embeddings
            .iter()
            .enumerate()
            .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding["values"]}))
            .collect();
        let tokens: usize = inputs.iter().map(|text| text.chars().count().div_ceil(4)).sum();
        Ok(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    }
}

/// A part for an image or video: inline data from a `data:` URL, else a file by URI.
fn media_part(url: &str) -> Value {
    if let Some((mime_type, data)) = data_url_parts(url) {
        return json!({"inlineData": {"mimeType": mime_type, "data": data}});
    }
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    let mime_type = match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mov") => "video/quicktime",
        _ => "image/jpeg",
    };
    json!({"fileData": {"mimeType": mime_type, "fileUri": url}})
}

/// Gemini reads every kind of file as inline data with its media type.
fn file_part(file: &FilePart) -> Result<Value, String> {
    let name = file.filename.as_deref().unwrap_or("a file");
    match file.file_data.as_deref().and_then(data_url_parts) {
        Some((mime_type, data)) => Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}})),
        None => Err(format!("Gemini needs the content of {name}, not an OpenAI file id")),
    }
}

fn parts_of(content: &Content) -> Result<Vec<Value>, String> {
    Ok(match content {
        Content::Text(text) if text.is_empty() => Vec::new(),
        Content::Text(text) => vec![json!({"text": text})],
        Content::Parts(parts) => parts
            .iter()
            .map(|part| match part {
                Part::Text { text } => Ok(json!({"text": text})),
                Part::ImageUrl { image_url: url } | Part::VideoUrl { video_url: url } => Ok(media_part(&url.url)),
                Part::InputAudio { input_audio } => {
                    Ok(json!({"inlineData": {"mimeType": format!("audio/{}", input_audio.format), "data": input_audio.data}}))
                }
                Part::File { file } => file_part(file),
            })
            .collect::<Result<_, _>>()?,
        Content::Null(()) => Vec::new(),
    })
}

/// The function a tool result answers: the call with its id among the earlier messages.
fn called_function<'a>(messages: &'a [Message], id: &str) -> Option<&'a str> {
    messages.iter().rev().flat_map(|message| &message.tool_calls).find(|call| call.id == id).map(|call| call.function.name.as_str())
}

/// A tool result as Gemini's `functionResponse.response`, which must be an object.
fn tool_response(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(object @ Value::Object(_)) => object,
        Ok(other) => json!({"result": other}),
        Err(_) => json!({"result": text}),
    }
}

/// The generateContent request for `request`: system messages become `systemInstruction`,
/// assistant turns `model` turns, tool calls `functionCall` parts (signed), tool results
/// `functionResponse` parts, OpenAI's parameters `generationConfig`, tools
/// `functionDeclarations`.
fn body(request: &ChatRequest) -> Result<Value, String> {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for (at, message) in request.messages.iter().enumerate() {
        let (role, parts) = match message.role.as_str() {
            "system" | "developer" => {
                system.extend(parts_of(&message.content)?);
                continue;
            }
            "tool" => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let name = called_function(&request.messages[..at], id).unwrap_or(id);
                ("user", vec![json!({"functionResponse": {"name": name, "response": tool_response(&message.content.as_text())}})])
            }
            "assistant" => {
                let mut parts = parts_of(&message.content)?;
                for (index, call) in message.tool_calls.iter().enumerate() {
                    let args: Value = serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({}));
                    let mut part = json!({"functionCall": {"name": call.function.name, "args": args}});
                    // Of parallel calls only the first is signed.
                    match call.id.split_once(SIGNATURE_SEPARATOR) {
                        Some((_, signature)) => part["thoughtSignature"] = json!(signature),
                        None if index == 0 => part["thoughtSignature"] = json!(UNSIGNED_CALL),
                        None => {}
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            _ => ("user", parts_of(&message.content)?),
        };
        if parts.is_empty() {
            continue;
        }
        // Parallel tool results must arrive as one turn; consecutive same-role turns merge.
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["parts"].as_array_mut() {
                    existing.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    if let Some(cap) = request.max_output_tokens() {
        config.insert("maxOutputTokens".into(), json!(cap));
    }
    let mut thinking = Map::new();
    for (name, value) in &request.parameters {
        match name.as_str() {
            "temperature" | "seed" => {
                config.insert(name.clone(), value.clone());
            }
            "top_p" => {
                config.insert("topP".into(), value.clone());
            }
            "top_k" => {
                config.insert("topK".into(), value.clone());
            }
            "presence_penalty" => {
                config.insert("presencePenalty".into(), value.clone());
            }
            "frequency_penalty" => {
                config.insert("frequencyPenalty".into(), value.clone());
            }
            "stop" => {
                let stops = if value.is_string() { json!([value]) } else { value.clone() };
                config.insert("stopSequences".into(), stops);
            }
            // Dify's Gemini parameters, and OpenAI's effort levels as Google's own
            // OpenAI-compatible endpoint maps them.
            "thinking_budget" => {
                thinking.insert("thinkingBudget".into(), value.clone());
            }
            "include_thoughts" => {
                thinking.insert("includeThoughts".into(), value.clone());
            }
            "reasoning_effort" => {
                let budget = match value.as_str() {
                    Some("none") => Some(0),
                    Some("minimal" | "low") => Some(1024),
                    Some("medium") => Some(8192),
                    Some("high") => Some(24_576),
                    _ => None,
                };
                if let Some(budget) = budget {
                    thinking.entry("thinkingBudget").or_insert(json!(budget));
                }
            }
            "response_format" => match value["type"].as_str() {
                Some("json_object") => {
                    config.insert("responseMimeType".into(), json!("application/json"));
                }
                Some("json_schema") => {
                    config.insert("responseMimeType".into(), json!("application/json"));
                    config.insert("responseJsonSchema".into(), value["json_schema"]["schema"].clone());
                }
                _ => {}
            },
            "tools" => {
                let declarations: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|tool| {
                        let function = &tool["function"];
                        let mut declaration = json!({"name": function["name"], "description": function["description"]});
                        if function["parameters"].is_object() {
                            declaration["parametersJsonSchema"] = function["parameters"].clone();
                        }
                        declaration
                    })
                    .collect();
                body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
            }
            "tool_choice" => {
                let calling = match value {
                    Value::String(mode) if mode == "required" => Some(json!({"mode": "ANY"})),
                    Value::String(mode) if mode == "auto" => Some(json!({"mode": "AUTO"})),
                    Value::String(mode) if mode == "none" => Some(json!({"mode": "NONE"})),
                    Value::Object(_) => Some(json!({"mode": "ANY", "allowedFunctionNames": [value["function"]["name"]]})),
                    _ => None,
                };
                if let Some(calling) = calling {
                    body.insert("toolConfig".into(), json!({"functionCallingConfig": calling}));
                }
            }
            // Everything else (n, logit_bias, user, …) has no Gemini equivalent.
            _ => {}
        }
    }
    if !thinking.is_empty() {
        config.insert("thinkingConfig".into(), Value::Object(thinking));
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(body))
}

fn finish_reason(reason: &str, called_tools: bool) -> String {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => "content_filter",
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
    .to_owned()
}

/// A fresh id for a function call (Gemini gives none), unique within the process.
fn call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.subsec_nanos()).unwrap_or(0);
    format!("call_{:08x}{:06x}", nanos, NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff)
}

/// One `GenerateContentResponse` (a whole answer, or one chunk of a stream) into events.
pub(crate) fn parse_chunk(
    label: &str,
    chunk: &Value,
    state: &mut StreamState,
    pending: &mut VecDeque<StreamEvent>,
) -> Result<(), ProviderError> {
    if chunk["error"].is_object() {
        let status = chunk["error"]["code"].as_u64().and_then(|code| u16::try_from(code).ok()).unwrap_or(500);
        return Err(ProviderError::from_response(label, status, None, chunk.to_string().as_bytes()));
    }
    let candidate = &chunk["candidates"][0];
    if !candidate.is_object() {
        if let Some(reason) = chunk["promptFeedback"]["blockReason"].as_str() {
            return Err(ProviderError::new(ErrorClass::ContentPolicy, label, format!("the prompt was blocked ({reason})")));
        }
        return Ok(());
    }
    for part in candidate["content"]["parts"].as_array().into_iter().flatten() {
        if let Some(text) = part["text"].as_str().filter(|text| !text.is_empty()) {
            let event =
                if part["thought"] == json!(true) { StreamEvent::Reasoning(text.to_owned()) } else { StreamEvent::Text(text.to_owned()) };
            pending.push_back(event);
        } else if let Some(call) = part["functionCall"].as_object() {
            let id = match part["thoughtSignature"].as_str() {
                Some(signature) => format!("{}{SIGNATURE_SEPARATOR}{signature}", call_id()),
                None => call_id(),
            };
            let index = state.tool_blocks.len();
            state.tool_blocks.push((0, index));
            pending.push_back(StreamEvent::ToolCall {
                index,
                id: Some(id),
                name: call.get("name").and_then(Value::as_str).map(str::to_owned),
                arguments: call.get("args").map_or_else(|| "{}".to_owned(), Value::to_string),
            });
        }
    }
    if let Some(reason) = candidate["finishReason"].as_str()
        && !state.finished
    {
        if reason == "MALFORMED_FUNCTION_CALL" {
            return Err(ProviderError::new(ErrorClass::Protocol, label, "the model wrote a malformed function call"));
        }
        state.finished = true;
        pending.push_back(StreamEvent::Finish(finish_reason(reason, !state.tool_blocks.is_empty())));
        // Every chunk repeats the usage so far; the finishing one has it all. Thinking tokens
        // are output tokens (billed as such), as in OpenAI's `completion_tokens`.
        let usage = &chunk["usageMetadata"];
        let prompt = usage["promptTokenCount"].as_u64().unwrap_or(0);
        let completion = usage["candidatesTokenCount"].as_u64().unwrap_or(0) + usage["thoughtsTokenCount"].as_u64().unwrap_or(0);
        let total = usage["totalTokenCount"].as_u64().unwrap_or(prompt + completion).max(prompt + completion);
        pending.push_back(StreamEvent::Usage(TokenUsage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FunctionCall, ToolCall};

    #[test]
    fn a_conversation_with_tool_calls_becomes_gemini_contents() {
        let mut assistant = Message::text("assistant", "");
        assistant.content = Content::Null(());
        assistant.tool_calls = vec![
            ToolCall {
                id: format!("call_1{SIGNATURE_SEPARATOR}c2lnbmVk"),
                kind: "function".into(),
                function: FunctionCall { name: "weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
            },
            ToolCall {
                id: "call_2".into(),
                kind: "function".into(),
                function: FunctionCall { name: "time".into(), arguments: r#"{"zone":"CET"}"#.into() },
            },
        ];
        let mut weather = Message::text("tool", r#"{"celsius": 21}"#);
        weather.tool_call_id = Some(format!("call_1{SIGNATURE_SEPARATOR}c2lnbmVk"));
        let mut time = Message::text("tool", "12:00");
        time.tool_call_id = Some("call_2".into());
        let mut parameters = Map::new();
        parameters.insert("max_tokens".into(), json!(64));
        parameters.insert("top_p".into(), json!(0.5));
        parameters.insert("stop".into(), json!("END"));
        parameters.insert("tool_choice".into(), json!({"type": "function", "function": {"name": "weather"}}));
        parameters.insert("reasoning_effort".into(), json!("low"));
        parameters.insert("include_thoughts".into(), json!(true));
        let request = ChatRequest {
            model: "gemini-2.5-flash".into(),
            messages: vec![Message::text("system", "Be brief."), Message::text("user", "Weather and time?"), assistant, weather, time],
            parameters,
            completion: false,
        };
        let body = body(&request).unwrap();
        assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "Be brief."}]}));
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather and time?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmVk"},
                    {"functionCall": {"name": "time", "args": {"zone": "CET"}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "weather", "response": {"celsius": 21}}},
                    {"functionResponse": {"name": "time", "response": {"result": "12:00"}}},
                ]},
            ])
        );
        assert_eq!(
            body["generationConfig"],
            json!({"maxOutputTokens": 64, "topP": 0.5, "stopSequences": ["END"], "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}})
        );
        assert_eq!(body["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}));
    }

    #[test]
    fn a_blocked_prompt_and_a_safety_stop_are_content_policy() {
        let mut state = StreamState::default();
        let mut pending = VecDeque::new();
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}});
        let error = parse_chunk("gemini", &blocked, &mut state, &mut pending).unwrap_err();
        assert_eq!(error.class, ErrorClass::ContentPolicy);
        let stopped = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "I"}]}, "finishReason": "SAFETY"}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1, "thoughtsTokenCount": 4, "totalTokenCount": 14}});
        parse_chunk("gemini", &stopped, &mut state, &mut pending).unwrap();
        assert_eq!(
            Vec::from(pending),
            vec![
                StreamEvent::Text("I".into()),
                StreamEvent::Finish("content_filter".into()),
                StreamEvent::Usage(TokenUsage { prompt_tokens: 9, completion_tokens: 5, total_tokens: 14 }),
            ]
        );
    }
}
