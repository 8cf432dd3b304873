//! The engine's model port, served by the gateway: llm, question-classifier and
//! parameter-extractor nodes call models in-process, with the gateway's routing and fallback,
//! and their tokens stream to the run as they arrive.

use std::sync::Arc;

use base64::Engine as _;
use flowgate_engine::ports::{FilePort, ModelCall, ModelPort, ModelReply, PortError, PortErrorKind, TextSink, ToolInvocation};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::ErrorClass;
use crate::gateway::{Gateway, GatewayError};
use crate::limits::Caller;
use crate::types::{ChatRequest, ChatResponse, Content, FunctionCall, ImageUrl, Message, Part, StreamEvent, ToolCall};

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

/// The request for a node's call: Dify's completion parameters as the client would send them,
/// stop words, structured output as a JSON schema response format, images as parts.
async fn request_for(call: &ModelCall, files: Option<&Arc<dyn FilePort>>) -> Result<ChatRequest, PortError> {
    let mut messages = Vec::with_capacity(call.messages.len());
    for message in &call.messages {
        let images: Vec<_> = message.files.iter().filter(|file| file.kind == "image").collect();
        if message.files.len() > images.len() {
            return Err(PortError::new(PortErrorKind::InvalidRequest, "not supported yet: non-image files in an LLM prompt"));
        }
        let content = if images.is_empty() {
            Content::Text(message.content.clone())
        } else {
            let mut parts = vec![Part::Text { text: message.content.clone() }];
            for image in images {
                let url = match (&image.remote_url, files) {
                    (Some(url), _) if image.transfer_method == "remote_url" => url.clone(),
                    (_, Some(files)) => {
                        let bytes = files.read(image).await?;
                        let mime = image.mime_type.clone().unwrap_or_else(|| "image/png".into());
                        format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes))
                    }
                    (_, None) => return Err(PortError::new(PortErrorKind::InvalidRequest, "this image cannot be read here")),
                };
                parts.push(Part::ImageUrl { image_url: ImageUrl { url, detail: None } });
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
    // Dify keeps `response_format` as a bare name; OpenAI wants an object.
    if let Some(Value::String(format)) = parameters.get("response_format").cloned() {
        parameters.insert("response_format".into(), json!({"type": format}));
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
    Ok(ChatRequest { model: call.model.clone(), messages, parameters })
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
            let request = request_for(&call, files.as_ref()).await?;
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
                        reply.usage = gateway.account(&model, &target, &usage);
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
