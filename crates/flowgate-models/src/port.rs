//! The engine's model port, served by the gateway: llm, question-classifier and
//! parameter-extractor nodes call models in-process, with the gateway's routing and fallback,
//! and their tokens stream to the run as they arrive.

use std::sync::Arc;

use base64::Engine as _;
use flowgate_engine::ports::{FilePort, ModelCall, ModelPort, ModelReply, PortError, PortErrorKind, TextSink, ToolInvocation};
use flowgate_engine::value::File;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::config::Features;
use crate::error::ErrorClass;
use crate::gateway::{Gateway, GatewayError};
use crate::limits::Caller;
use crate::metrics::Payer;
use crate::types::{
    ChatRequest, ChatResponse, Content, FilePart, FunctionCall, ImageUrl, InputAudio, Message, Part, StreamEvent, ToolCall,
};

pub struct GatewayPort {
    gateway: Arc<Gateway>,
    /// Reads uploaded images for vision prompts.
    files: Option<Arc<dyn FilePort>>,
}

impl GatewayPort {
    pub fn new(gateway: Arc<Gateway>, files: Option<Arc<dyn FilePort>>) -> Self {
        Self { gateway, files }
    }
}

fn port_error(error: &GatewayError) -> PortError {
    let kind = match error.class() {
        Some(ErrorClass::Timeout) => PortErrorKind::Timeout,
        Some(ErrorClass::Connection) => PortErrorKind::Connection,
        Some(ErrorClass::BadRequest | ErrorClass::ContextTooLong | ErrorClass::ContentPolicy) => PortErrorKind::InvalidRequest,
        Some(_) => PortErrorKind::Upstream,
        None => PortErrorKind::Refused,
    };
    let kind = match error {
        GatewayError::Limited(_) => PortErrorKind::Refused,
        _ => kind,
    };
    PortError::new(kind, error.to_string())
}

/// A file as a content part, the way Dify's model plugins send it: its content inlined as
/// base64 (Dify's default `MULTIMODAL_SEND_FORMAT`) — images as `image_url`, audio as
/// `input_audio`, documents as `file`, videos as `video_url`. A remote file is fetched (through
/// the egress checks) when files can be read here, else passed by URL.
async fn file_part(file: &File, files: Option<&Arc<dyn FilePort>>, detail: Option<&str>) -> Result<Part, PortError> {
    let name = file.filename.clone().unwrap_or_default();
    if !matches!(file.kind.as_str(), "image" | "audio" | "video" | "document") {
        // graphon's `to_prompt_message_content` for a kind no model reads.
        return Ok(Part::Text { text: format!("[Unsupported file type: {name} ({})]", file.kind) });
    }
    let mime = file.mime_type.clone().filter(|mime| !mime.is_empty()).unwrap_or_else(|| "application/octet-stream".into());
    let format = file.extension.as_deref().unwrap_or_default().trim_start_matches('.').to_owned();
    let (data_url, base64) = match (files, file.remote_url.as_deref()) {
        (Some(files), _) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(files.read(file).await?);
            (format!("data:{mime};base64,{encoded}"), Some(encoded))
        }
        (None, Some(url)) if file.transfer_method == "remote_url" => (url.to_owned(), None),
        (None, _) => return Err(PortError::new(PortErrorKind::InvalidRequest, format!("file {name} cannot be read here"))),
    };
    Ok(match file.kind.as_str() {
        "image" => Part::ImageUrl { image_url: ImageUrl { url: data_url, detail: Some(detail.unwrap_or("low").to_owned()) } },
        "audio" => match base64 {
            Some(data) => Part::InputAudio { input_audio: InputAudio { data, format } },
            None => return Err(PortError::new(PortErrorKind::InvalidRequest, format!("audio file {name} cannot be read here"))),
        },
        "video" => Part::VideoUrl { video_url: ImageUrl { url: data_url, detail: None } },
        _ => Part::File { file: FilePart { filename: file.filename.clone(), file_data: Some(data_url), file_id: None } },
    })
}

/// The request for a node's call: Dify's completion parameters as the client would send them,
/// stop words, structured output as a JSON schema response format, each message's files
/// (those the model's `features` read) before its text.
async fn request_for(call: &ModelCall, files: Option<&Arc<dyn FilePort>>, features: Features) -> Result<ChatRequest, PortError> {
    let mut messages = Vec::with_capacity(call.messages.len());
    for message in &call.messages {
        let readable: Vec<&File> = message.files.iter().filter(|file| features.reads(&file.kind)).collect();
        let content = if readable.is_empty() {
            if message.content.is_empty() && !message.files.is_empty() {
                // Every file was left out, as Dify's `_filter_prompt_messages` drops them.
                continue;
            }
            Content::Text(message.content.clone())
        } else {
            let mut parts = Vec::with_capacity(readable.len() + 1);
            for file in readable {
                parts.push(file_part(file, files, call.image_detail.as_deref()).await?);
            }
            if !message.content.is_empty() {
                parts.push(Part::Text { text: message.content.clone() });
            }
            Content::Parts(parts)
        };
        let tool_calls = message
            .tool_calls
            .iter()
            .map(|call| ToolCall {
                id: call.id.clone(),
                kind: "function".into(),
                function: FunctionCall { name: call.name.clone(), arguments: call.arguments.clone() },
            })
            .collect();
        messages.push(Message { role: message.role.clone(), content, name: None, tool_calls, tool_call_id: message.tool_call_id.clone() });
    }
    let mut parameters = call.parameters.clone();
    // Dify's Gemini models name their output cap `max_output_tokens`; every adapter reads
    // OpenAI's name (and an OpenAI server would refuse the other).
    if let Some(cap) = parameters.remove("max_output_tokens") {
        parameters.entry("max_tokens").or_insert(cap);
    }
    // Dify keeps `response_format` as a bare name, and a `json_schema` format's schema as JSON
    // text in `json_schema`; OpenAI wants one object (Dify's OpenAI plugin builds the same).
    let schema_text = parameters.remove("json_schema");
    if let Some(Value::String(format)) = parameters.get("response_format").cloned() {
        let response_format = if format == "json_schema" {
            let schema = match schema_text {
                Some(Value::String(text)) if !text.trim().is_empty() => serde_json::from_str::<Value>(&text)
                    .map_err(|_| PortError::new(PortErrorKind::InvalidRequest, format!("not correct json_schema format: {text}")))?,
                Some(object @ Value::Object(_)) => object,
                _ => {
                    return Err(PortError::new(
                        PortErrorKind::InvalidRequest,
                        "Must define JSON Schema when the response format is json_schema",
                    ));
                }
            };
            json!({"type": "json_schema", "json_schema": schema})
        } else {
            json!({"type": format})
        };
        parameters.insert("response_format".into(), response_format);
    }
    if let Some(schema) = &call.json_schema {
        parameters.insert("response_format".into(), json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}));
    }
    if !call.stop.is_empty() {
        parameters.insert("stop".into(), json!(call.stop));
    }
    if !call.tools.is_empty() {
        let tools: Vec<Value> = call
            .tools
            .iter()
            .map(|tool| json!({"type": "function", "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters}}))
            .collect();
        parameters.insert("tools".into(), Value::Array(tools));
    }
    Ok(ChatRequest { model: call.model.clone(), messages, parameters, completion: call.mode == "completion" })
}

fn invocations(calls: &[ToolCall]) -> Vec<ToolInvocation> {
    calls
        .iter()
        .map(|call| ToolInvocation { id: call.id.clone(), name: call.function.name.clone(), arguments: call.function.arguments.clone() })
        .collect()
}

impl ModelPort for GatewayPort {
    fn calls_tools(&self, provider: &str, model: &str) -> bool {
        let config = self.gateway.config();
        config.resolve(provider, model).and_then(|name| config.model(name)).is_some_and(|model| model.tool_calls)
    }

    fn context_size(&self, provider: &str, model: &str) -> Option<u64> {
        let config = self.gateway.config();
        config.resolve(provider, model).and_then(|name| config.model(name)).and_then(|model| model.context_size)
    }

    fn invoke(&self, call: ModelCall, sink: TextSink) -> BoxFuture<'static, Result<ModelReply, PortError>> {
        let gateway = self.gateway.clone();
        let files = self.files.clone();
        Box::pin(async move {
            let Some(model) = gateway.config().resolve(&call.provider, &call.model).map(str::to_owned) else {
                return Err(PortError::new(
                    PortErrorKind::InvalidRequest,
                    format!(
                        "no model is configured for provider `{}` model `{}`: add a `dify` mapping or a `default` to the models file",
                        call.provider, call.model
                    ),
                ));
            };
            let features = gateway.config().model(&model).map(|config| config.features).unwrap_or_default();
            let request = request_for(&call, files.as_ref(), features).await?;
            if request.messages.is_empty() {
                return Err(PortError::new(
                    PortErrorKind::InvalidRequest,
                    "No prompt found in the LLM configuration. Please ensure a prompt is properly configured before proceeding.",
                ));
            }
            if let Some(answer) = gateway.cached(&model, &request).await {
                sink(&answer.content);
                return Ok(ModelReply {
                    tool_calls: invocations(&answer.tool_calls),
                    text: answer.content,
                    reasoning_content: answer.reasoning,
                    finish_reason: answer.finish_reason,
                    ..ModelReply::default()
                });
            }
            let caller = Caller { key: None, app: Some(call.context.app_id.to_string()), user: Some(call.context.user_id.to_string()) };
            let reservation = gateway.admit(&model, &request, &caller).await.map_err(|error| port_error(&error))?;
            let started = std::time::Instant::now();
            let served = match gateway.chat_stream(&model, &request).await {
                Ok(served) => served,
                Err(error) => {
                    // Nothing was spent upstream.
                    reservation.settle(Some(0)).await;
                    return Err(port_error(&error));
                }
            };
            let target = served.target;
            let mut stream = served.value;
            let mut reply = ModelReply::default();
            let mut used = None;
            let mut whole = ChatResponse::default();
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        reservation.settle(used).await;
                        return Err(PortError::new(PortErrorKind::Upstream, error.to_string()));
                    }
                };
                match event {
                    StreamEvent::Text(text) => {
                        sink(&text);
                        reply.text.push_str(&text);
                    }
                    StreamEvent::Reasoning(text) => reply.reasoning_content.push_str(&text),
                    StreamEvent::Finish(reason) => {
                        whole.finish_reason = Some(reason.clone());
                        reply.finish_reason = Some(reason);
                    }
                    StreamEvent::Usage(usage) => {
                        used = Some(usage.total_tokens);
                        reply.usage = gateway.account(
                            &model,
                            &target,
                            &usage,
                            Payer { key: None, app: caller.app.as_deref().filter(|app| !app.is_empty()) },
                        );
                    }
                    StreamEvent::ToolCall { index, id, name, arguments } => whole.add_tool_call_piece(index, id, name, &arguments),
                }
            }
            reply.tool_calls = invocations(&whole.tool_calls);
            reservation.settle(used).await;
            whole.content.clone_from(&reply.text);
            whole.reasoning.clone_from(&reply.reasoning_content);
            gateway.remember(&model, &request, &whole).await;
            reply.usage.latency = started.elapsed().as_secs_f64();
            Ok(reply)
        })
    }
}
