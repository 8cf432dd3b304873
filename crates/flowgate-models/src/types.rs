//! The one request, response and stream type every provider adapter speaks. Its shape follows
//! OpenAI's chat completions (the format most clients and self-hosted servers use), so the
//! OpenAI-compatible adapter is a near pass-through and the others translate.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// system | user | assistant | tool
    pub role: String,
    #[serde(default)]
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn text(role: &str, text: &str) -> Self {
        Self { role: role.to_owned(), content: Content::Text(text.to_owned()), name: None, tool_calls: Vec::new(), tool_call_id: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
    /// An assistant message that only calls tools.
    Null(()),
}

impl Default for Content {
    fn default() -> Self {
        Self::Text(String::new())
    }
}

impl Content {
    /// The text of all text parts, joined.
    pub fn as_text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|part| match part {
                    Part::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(""),
            Self::Null(()) => String::new(),
        }
    }
}

/// A content part, in OpenAI's shapes: text, an image, audio, a file (a PDF, say) or a video
/// (vLLM's `video_url`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    InputAudio { input_audio: InputAudio },
    File { file: FilePart },
    VideoUrl { video_url: ImageUrl },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputAudio {
    /// Base64, no `data:` prefix.
    pub data: String,
    /// `mp3`, `wav`, …
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilePart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// A `data:` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_data: Option<String>,
    /// A file uploaded to the provider beforehand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
}

/// The media type and base64 data of a `data:` URL.
pub fn data_url_parts(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix("data:")?.split_once(";base64,")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    /// An `https://` URL or a `data:` URL.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// A chat request. `parameters` holds every generation parameter as the client gave it
/// (`temperature`, `max_tokens`, `tools`, `response_format`, `stop`, …): adapters translate the
/// ones their provider names differently and pass the rest through.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// The model name the target knows.
    pub model: String,
    pub messages: Vec<Message>,
    pub parameters: Map<String, Value>,
    /// A completion-mode model (Dify's `mode: completion`): the text of the messages is the
    /// `prompt` of a `/completions` call on OpenAI-compatible targets, as Dify's plugins send it;
    /// providers without that API get it as a chat.
    pub completion: bool,
}

impl ChatRequest {
    pub fn chat(model: String, messages: Vec<Message>, parameters: Map<String, Value>) -> Self {
        Self { model, messages, parameters, completion: false }
    }

    /// The completion prompt: the messages' text, joined.
    pub fn prompt(&self) -> String {
        self.messages.iter().map(|message| message.content.as_text()).collect::<Vec<_>>().join("\n")
    }
    /// The output cap the request sets: the larger of `max_tokens` and
    /// `max_completion_tokens` (a client that sets both must not get past a limit through the
    /// smaller one).
    pub fn max_output_tokens(&self) -> Option<u64> {
        let read = |name: &str| self.parameters.get(name).and_then(Value::as_u64);
        match (read("max_tokens"), read("max_completion_tokens")) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    pub content: String,
    /// Thinking text of reasoning models (`reasoning_content`), kept apart from the answer.
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Option<TokenUsage>,
}

impl ChatResponse {
    /// Adds one event of a streamed answer.
    pub fn add(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Text(text) => self.content.push_str(&text),
            StreamEvent::Reasoning(text) => self.reasoning.push_str(&text),
            StreamEvent::ToolCall { index, id, name, arguments } => self.add_tool_call_piece(index, id, name, &arguments),
            StreamEvent::Finish(reason) => self.finish_reason = Some(reason),
            StreamEvent::Usage(usage) => self.usage = Some(usage),
        }
    }

    /// Adds a streamed piece of the tool call at `index`: its id and name come with the first
    /// piece, its arguments in pieces.
    pub fn add_tool_call_piece(&mut self, index: usize, id: Option<String>, name: Option<String>, arguments: &str) {
        while self.tool_calls.len() <= index {
            self.tool_calls.push(ToolCall {
                id: String::new(),
                kind: "function".into(),
                function: FunctionCall { name: String::new(), arguments: String::new() },
            });
        }
        let call = &mut self.tool_calls[index];
        if let Some(id) = id {
            call.id = id;
        }
        if let Some(name) = name {
            call.function.name.push_str(&name);
        }
        call.function.arguments.push_str(arguments);
    }
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Answer text.
    Text(String),
    /// Thinking text.
    Reasoning(String),
    /// A piece of a tool call: the call at `index`, with its id and name on the first piece.
    ToolCall {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Finish(String),
    Usage(TokenUsage),
}
