//! Model-backed nodes (llm, question-classifier, parameter-extractor). Prompts are rendered
//! here; the call itself goes through the model port, which streams tokens back.

use std::sync::Arc;

use flowgate_dsl::AppPrompt;
use flowgate_dsl::nodes::{ExtractedParameter, LlmData, ModelConfig, ParameterExtractorData, PromptTemplate, QuestionClassifierData};

use super::app_prompt::{self, AppPromptRules};
use super::jinja::JinjaTemplate;
use super::{Capability, Exec, NodeCtx, NodeResult, bound_inputs, compile_bindings};
use super::{classifier_prompt, extractor_prompt, memory};
use crate::plan::SelectorResolver;
use crate::pool::{Pool, Selector, Slot};
use crate::ports::{ChatMessage, ModelCall, ModelPort, ModelReply, TextSink, Usage};
use crate::template::{Render, TextTemplate};
use crate::value::{Map, SegType, Value, key, map_of, map_with_capacity};

#[derive(Debug)]
enum MessageText {
    Basic(TextTemplate),
    Jinja(Box<JinjaTemplate>),
}

#[derive(Debug)]
struct PromptPart {
    role: String,
    text: MessageText,
    /// Whether the text contains `{{#context#}}`.
    uses_context: bool,
}

#[derive(Debug, Clone)]
struct ModelSettings {
    provider: String,
    name: String,
    mode: String,
    parameters: serde_json::Map<String, serde_json::Value>,
}

impl ModelSettings {
    fn from(config: &ModelConfig) -> Self {
        Self {
            provider: config.provider.clone(),
            name: config.name.clone(),
            mode: if config.mode.is_empty() { "chat".into() } else { config.mode.clone() },
            parameters: config.completion_params.clone(),
        }
    }

    /// Dify's `calculate_rest_token` before the prompt is counted: the context size less the
    /// output cap (`max_tokens`); `None` when the context size is unknown.
    fn token_budget(&self, port: &dyn ModelPort) -> Option<i64> {
        let context = i64::try_from(port.context_size(&self.provider, &self.name)?).unwrap_or(i64::MAX);
        // Dify's Gemini models call the output cap `max_output_tokens`.
        let max_tokens = ["max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|name| self.parameters.get(*name).and_then(serde_json::Value::as_i64))
            .unwrap_or(0);
        Some(context.saturating_sub(max_tokens))
    }

    fn call(&self, ctx: &NodeCtx<'_>, messages: Vec<ChatMessage>, json_schema: Option<serde_json::Value>) -> ModelCall {
        self.call_with_stop(ctx, messages, json_schema, None)
    }

    /// `stop` replaces the model's `completion_params.stop` when given.
    fn call_with_stop(
        &self,
        ctx: &NodeCtx<'_>,
        messages: Vec<ChatMessage>,
        json_schema: Option<serde_json::Value>,
        stop: Option<Vec<String>>,
    ) -> ModelCall {
        let stop = stop.unwrap_or_else(|| {
            self.parameters
                .get("stop")
                .and_then(serde_json::Value::as_array)
                .map(|items| items.iter().filter_map(|item| item.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        });
        let mut parameters = self.parameters.clone();
        parameters.remove("stop");
        ModelCall {
            context: ctx.port_context(),
            provider: self.provider.clone(),
            model: self.name.clone(),
            mode: self.mode.clone(),
            parameters,
            messages,
            stop,
            json_schema,
            tools: Vec::new(),
            image_detail: None,
        }
    }
}

const CONTEXT_PLACEHOLDER: &str = "{{#context#}}";

#[derive(Debug)]
pub struct LlmNode {
    model: ModelSettings,
    prompt: Vec<PromptPart>,
    jinja_bindings: Vec<(Arc<str>, Selector)>,
    context: Option<Selector>,
    separate_reasoning: bool,
    structured_output: Option<serde_json::Value>,
    /// With memory on, the user's turn: `memory.query_prompt_template` (or `sys.query`).
    query: Option<TextTemplate>,
    /// With memory on, how many earlier turns go into the prompt.
    memory_turns: usize,
    /// A basic-editor chat app's prompt rules, which replace the template above.
    app_prompt: Option<AppPromptRules>,
    /// With vision on, where the files for the model are (`sys.files` unless configured).
    vision_files: Option<Selector>,
    /// `vision.configs.detail`, for every image in the prompt.
    image_detail: String,
    /// Chat templates pass the files their variables hold; a completion template only text.
    template_files: bool,
}

/// Dify's history limit when a node's memory window is off (`TokenBufferMemory`).
const MEMORY_TURNS_UNWINDOWED: usize = 500;

/// The window of a node with memory: `window.size` turns when enabled, else Dify's 500.
fn memory_turns(memory: Option<&serde_json::Value>) -> usize {
    let Some(window) = memory.and_then(|memory| memory.get("window")) else { return MEMORY_TURNS_UNWINDOWED };
    let enabled = window.get("enabled").and_then(serde_json::Value::as_bool).unwrap_or(false);
    let size = window.get("size").and_then(serde_json::Value::as_u64).filter(|size| *size > 0);
    match (enabled, size) {
        (true, Some(size)) => (size as usize).min(MEMORY_TURNS_UNWINDOWED),
        _ => MEMORY_TURNS_UNWINDOWED,
    }
}

/// The classifier and the extractor read `memory.window.size` turns whether or not the window
/// is switched on (graphon passes the size as the message limit), else TokenBufferMemory's 500.
fn histories_memory_turns(memory: Option<&serde_json::Value>) -> Option<usize> {
    let memory = memory.filter(|memory| memory.is_object())?;
    let size = memory.pointer("/window/size").and_then(serde_json::Value::as_u64).filter(|size| *size > 0);
    Some(size.map_or(MEMORY_TURNS_UNWINDOWED, |size| (size as usize).min(MEMORY_TURNS_UNWINDOWED)))
}

/// The classifier's and the extractor's prompt, `build` given its `<histories>` text: the
/// latest `turns` of the conversation (nothing without memory), trimmed to the tokens the
/// prompt leaves of `budget`, as graphon sizes them with the prompt built without history.
fn with_histories(
    ctx: &NodeCtx<'_>,
    turns: Option<usize>,
    budget: Option<i64>,
    build: impl Fn(&str) -> Vec<ChatMessage>,
) -> Vec<ChatMessage> {
    let Some(turns) = turns else { return build("") };
    let limit = budget.map(|budget| (budget - memory::estimate_tokens(&build(""))).max(0));
    let history = memory::history_messages(&ctx.run.history, turns, limit);
    build(&memory::history_text(&history, "Human", "Assistant"))
}

/// Dify's `query_prompt_template` of a node with memory; empty means the user's query itself.
fn memory_query(memory: Option<&serde_json::Value>) -> Option<String> {
    let memory = memory.filter(|memory| memory.is_object())?;
    let template = memory.get("query_prompt_template").and_then(serde_json::Value::as_str).unwrap_or_default();
    Some(if template.is_empty() { "{{#sys.query#}}".to_owned() } else { template.to_owned() })
}

impl LlmNode {
    pub fn compile(data: &LlmData, resolver: &SelectorResolver<'_>) -> Self {
        let messages = match &data.prompt_template {
            PromptTemplate::Chat(messages) => messages.clone(),
            PromptTemplate::Completion(message) => {
                vec![flowgate_dsl::nodes::PromptMessage { role: "user".into(), ..message.clone() }]
            }
        };
        let prompt = messages
            .iter()
            .map(|message| {
                let jinja = message.edition_type.as_deref() == Some("jinja2");
                let source = if jinja { message.jinja2_text.clone().unwrap_or_default() } else { message.text.clone() };
                PromptPart {
                    role: if message.role.is_empty() { "user".into() } else { message.role.clone() },
                    uses_context: source.contains(CONTEXT_PLACEHOLDER),
                    text: if jinja {
                        MessageText::Jinja(Box::new(JinjaTemplate::compile(&source)))
                    } else {
                        MessageText::Basic(TextTemplate::compile(&source, resolver))
                    },
                }
            })
            .collect();
        Self {
            model: ModelSettings::from(&data.model),
            prompt,
            jinja_bindings: compile_bindings(&data.prompt_config.jinja2_variables, resolver),
            context: data
                .context
                .enabled
                .then(|| data.context.variable_selector.as_ref().map(|selector| resolver.selector(selector)))
                .flatten(),
            separate_reasoning: data.reasoning_format.as_deref() == Some("separated"),
            structured_output: data
                .structured_output_switch_on
                .then(|| data.structured_output.clone().and_then(|output| output.get("schema").cloned().or(Some(output))))
                .flatten(),
            query: memory_query(data.memory.as_ref()).map(|template| TextTemplate::compile(&template, resolver)),
            memory_turns: memory_turns(data.memory.as_ref()),
            app_prompt: None,
            vision_files: data.vision.enabled.then(|| {
                let default = ["sys".to_owned(), "files".to_owned()];
                let selector = data.vision.configs.as_ref().and_then(|configs| configs.variable_selector.as_deref());
                resolver.selector(selector.filter(|selector| !selector.is_empty()).unwrap_or(&default))
            }),
            image_detail: data
                .vision
                .configs
                .as_ref()
                .and_then(|configs| configs.detail.clone())
                .filter(|detail| !detail.is_empty())
                .unwrap_or_else(|| "high".into()),
            template_files: matches!(data.prompt_template, PromptTemplate::Chat(_)),
        }
    }

    /// Builds the prompt with a chat app's rules instead of the template; `inputs` holds the
    /// app's inputs (the start node's outputs). An agent app keeps the model's stop words.
    pub fn use_app_prompt(&mut self, prompt: AppPrompt, inputs: Slot, agent: bool) {
        self.app_prompt = Some(AppPromptRules::new(prompt, self.model.mode != "completion", inputs, agent));
    }

    /// How many earlier turns the node reads, when it has memory.
    pub fn memory_turns(&self) -> Option<usize> {
        if self.app_prompt.is_some() {
            return Some(app_prompt::HISTORY_TURNS);
        }
        self.query.as_ref().map(|_| self.memory_turns)
    }

    /// The prompt as graphon builds it: the template's messages, then, when the node has
    /// memory, the conversation's latest turns and the user's turn; messages that render empty
    /// are left out. Errors carry Dify's error type.
    ///
    /// Files go to the model as graphon sends them: a file variable in a basic template becomes
    /// a message of its own (same role) after the message's text, and with vision on the
    /// vision files go first into the last message when it is the user's (else in a user
    /// message of their own).
    fn messages(
        &self,
        pool: &Pool,
        history: &[crate::inputs::PastTurn],
        budget: Option<i64>,
    ) -> Result<Vec<ChatMessage>, (String, &'static str)> {
        let context = self.context.as_ref().and_then(|selector| pool.get(selector)).map(|value| context_text(&value));
        let jinja_inputs = bound_inputs(&self.jinja_bindings, pool);
        let mut messages = Vec::with_capacity(self.prompt.len());
        // Whether the last message is one graphon builds with a content list (the template's
        // and the query's), which vision files join; history messages are plain text.
        let mut last_takes_files = false;
        for part in &self.prompt {
            match &part.text {
                MessageText::Basic(template) => {
                    let mut content = template.render(pool, Render::Text);
                    if part.uses_context {
                        content = content.replace(CONTEXT_PLACEHOLDER, context.as_deref().unwrap_or(""));
                    }
                    let files = if self.template_files { prompt_files(template, pool) } else { Vec::new() };
                    last_takes_files |= push_with_files(&mut messages, &part.role, content, files);
                }
                // A Jinja message is kept even when it renders empty (until the last step).
                MessageText::Jinja(template) => {
                    let content = template.render(&jinja_inputs).map_err(|error| (error, "TemplateRenderError"))?;
                    messages.push(ChatMessage::text(&part.role, content));
                    last_takes_files = true;
                }
            }
        }
        if let Some(query) = &self.query {
            // graphon sizes the history before counting the prompt: the budget is all it gets.
            let past = memory::history_messages(history, self.memory_turns, budget.map(|budget| budget.max(0)));
            last_takes_files &= past.is_empty();
            messages.extend(past);
            let text = query.render(pool, Render::Text);
            if !text.is_empty() {
                let files = if self.template_files { prompt_files(query, pool) } else { Vec::new() };
                last_takes_files |= push_with_files(&mut messages, "user", text, files);
            }
        }
        let vision_files = self.vision_files.as_ref().and_then(|selector| pool.get(selector)).map(|value| files_of(&value, false));
        if let Some(files) = vision_files.filter(|files| !files.is_empty()) {
            match messages.last_mut() {
                Some(last) if last.role == "user" && last_takes_files => {
                    last.files.splice(0..0, files);
                }
                _ => messages.push(ChatMessage { files, ..ChatMessage::text("user", String::new()) }),
            }
        }
        messages.retain(|message| !message.content.is_empty() || !message.files.is_empty());
        if messages.is_empty() {
            return Err((
                "No prompt found in the LLM configuration. Please ensure a prompt is properly configured before proceeding.".into(),
                "NoPromptFoundError",
            ));
        }
        Ok(messages)
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let Some(port) = ctx.ports.model.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Model));
        };
        let (messages, stop) = match &self.app_prompt {
            Some(rules) => {
                let continues = matches!(ctx.pool.variable(Slot::Sys, "dialogue_count"), Some(Value::Int(count)) if *count > 1);
                let built = rules.build(ctx.pool, &ctx.run.history, continues, self.model.token_budget(port.as_ref()));
                (built.messages, built.stop)
            }
            None => match self.messages(ctx.pool, &ctx.run.history, self.model.token_budget(port.as_ref())) {
                Ok(messages) => (messages, None),
                Err((error, error_type)) => return Exec::Done(NodeResult::failed(error, error_type)),
            },
        };
        let inputs = prompt_inputs(&self.model, &messages);
        let mut call = self.model.call_with_stop(ctx, messages, self.structured_output.clone(), stop);
        if self.app_prompt.is_none() {
            call.image_detail = Some(self.image_detail.clone());
        }
        let chunks = ctx.chunks.clone();
        let selector: Arc<[String]> = Arc::from(vec![ctx.node.id.to_string(), "text".to_owned()]);
        let stream_selector = selector.clone();
        let stream_chunks = chunks.clone();
        let stream: TextSink = Arc::new(move |text: &str| stream_chunks.send(&stream_selector, text, false));
        let separate_reasoning = self.separate_reasoning;
        let structured = self.structured_output.is_some();
        Exec::Pending(Box::pin(async move {
            let result = port.invoke(call, stream).await;
            chunks.send(&selector, "", true);
            match result {
                Err(error) => NodeResult { inputs: Some(Arc::new(inputs)), ..NodeResult::failed(error.message, "LLMNodeError") },
                Ok(reply) => {
                    let outputs = llm_outputs(reply.clone(), separate_reasoning, structured);
                    NodeResult {
                        inputs: Some(Arc::new(inputs)),
                        metadata: Some(Arc::new(usage_metadata(&reply.usage))),
                        usage: Some(Box::new(reply.usage)),
                        ..NodeResult::succeeded(outputs)
                    }
                }
            }
        }))
    }
}

/// The files a value holds (a file or an array of files); with `prompt_kinds`, only the kinds
/// a prompt template passes on (image, video, audio, document).
fn files_of(value: &Value, prompt_kinds: bool) -> Vec<crate::value::File> {
    let wanted = |file: &crate::value::File| !prompt_kinds || matches!(file.kind.as_str(), "image" | "video" | "audio" | "document");
    match value {
        Value::File(file) if wanted(file) => vec![(**file).clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::File(file) if wanted(file) => Some((**file).clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The files a basic template refers to, in order.
fn prompt_files(template: &TextTemplate, pool: &Pool) -> Vec<crate::value::File> {
    template.resolved_values(pool).iter().flat_map(|value| files_of(value, true)).collect()
}

/// graphon's `handle_list_messages` for a basic template: the text when there is any, then
/// the files as a message of their own. Whether it added a message.
fn push_with_files(messages: &mut Vec<ChatMessage>, role: &str, content: String, files: Vec<crate::value::File>) -> bool {
    let before = messages.len();
    if !content.is_empty() {
        messages.push(ChatMessage::text(role, content));
    }
    if !files.is_empty() {
        messages.push(ChatMessage { files, ..ChatMessage::text(role, String::new()) });
    }
    messages.len() > before
}

fn context_text(value: &Value) -> String {
    match value {
        Value::Str(text) => text.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(map) => map.get("content").map(Value::to_text).unwrap_or_else(|| item.to_text()),
                other => other.to_text(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_text(),
    }
}

fn prompt_inputs(model: &ModelSettings, messages: &[ChatMessage]) -> Map {
    let prompts = messages
        .iter()
        .map(|message| Value::object(map_of([("role", Value::str(message.role.as_str())), ("text", Value::str(message.content.as_str()))])))
        .collect();
    map_of([
        ("model_provider", Value::str(model.provider.as_str())),
        ("model_name", Value::str(model.name.as_str())),
        ("prompts", Value::array(prompts)),
    ])
}

pub(crate) fn usage_metadata(usage: &Usage) -> Map {
    map_of([
        ("total_tokens", Value::Int(usage.total_tokens)),
        ("total_price", Value::from(usage.total_price.to_string())),
        ("currency", Value::str(usage.currency.as_str())),
    ])
}

/// Splits `<think>…</think>` out of the text when the node asks for separated reasoning.
fn llm_outputs(reply: ModelReply, separate_reasoning: bool, structured: bool) -> Map {
    let (text, reasoning) = if separate_reasoning && reply.reasoning_content.is_empty() {
        split_think(&reply.text)
    } else {
        (reply.text.clone(), reply.reasoning_content.clone())
    };
    let mut outputs = map_with_capacity(5);
    outputs.insert(key("text"), Value::from(text.clone()));
    outputs.insert(key("reasoning_content"), Value::from(reasoning));
    outputs.insert(key("usage"), reply.usage.to_value());
    outputs.insert(key("finish_reason"), reply.finish_reason.map_or(Value::None, Value::from));
    if structured {
        let parsed = reply.structured_output.or_else(|| serde_json::from_str::<serde_json::Value>(text.trim()).ok().map(Value::from));
        outputs.insert(key("structured_output"), parsed.unwrap_or_else(|| Value::object(Map::default())));
    }
    outputs
}

fn split_think(text: &str) -> (String, String) {
    let mut visible = String::new();
    let mut reasoning = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        visible.push_str(&rest[..start]);
        let after = &rest[start + "<think>".len()..];
        match after.find("</think>") {
            Some(end) => {
                reasoning.push_str(after[..end].trim());
                rest = &after[end + "</think>".len()..];
            }
            None => {
                reasoning.push_str(after.trim());
                rest = "";
            }
        }
    }
    visible.push_str(rest);
    (visible.trim_start().to_owned(), reasoning)
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Class {
    id: Arc<str>,
    name: TextTemplate,
    label: String,
}

#[derive(Debug)]
pub struct QuestionClassifierNode {
    model: ModelSettings,
    query: Selector,
    classes: Vec<Class>,
    instruction: TextTemplate,
    /// With memory on, how many earlier turns the prompt's histories hold.
    memory_turns: Option<usize>,
}

impl QuestionClassifierNode {
    pub fn compile(data: &QuestionClassifierData, resolver: &SelectorResolver<'_>) -> Self {
        Self {
            model: ModelSettings::from(&data.model),
            query: resolver.selector(&data.query_variable_selector),
            classes: data
                .classes
                .iter()
                .enumerate()
                .map(|(index, class)| Class {
                    id: Arc::from(class.id.as_str()),
                    name: TextTemplate::compile(&class.name, resolver),
                    label: if class.label.is_empty() { format!("CLASS {}", index + 1) } else { class.label.clone() },
                })
                .collect(),
            instruction: TextTemplate::compile(data.instruction.as_deref().unwrap_or(""), resolver),
            memory_turns: histories_memory_turns(data.memory.as_ref()),
        }
    }

    pub fn memory_turns(&self) -> Option<usize> {
        self.memory_turns
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let Some(port) = ctx.ports.model.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Model));
        };
        let query = ctx.pool.get(&self.query).map(|value| value.to_text()).unwrap_or_default();
        let classes: Vec<(Arc<str>, String, String)> =
            self.classes.iter().map(|class| (class.id.clone(), class.name.render(ctx.pool, Render::Text), class.label.clone())).collect();
        if classes.is_empty() {
            return Exec::Done(NodeResult::failed("the question classifier has no classes", "ValueError"));
        }
        let instruction = self.instruction.render(ctx.pool, Render::Text);
        let categories: Vec<Value> = classes
            .iter()
            .map(|(id, name, _)| {
                Value::object(map_of([("category_id", Value::Str(id.clone())), ("category_name", Value::from(name.clone()))]))
            })
            .collect();
        let categories_json = crate::pyfmt::json_dumps(&Value::array(categories), None);
        let completion = self.model.mode == "completion";
        let messages = with_histories(ctx, self.memory_turns, self.model.token_budget(port.as_ref()), |histories| {
            if completion {
                classifier_prompt::completion_messages(&query, &categories_json, &instruction, histories)
            } else {
                classifier_prompt::messages(&query, &categories_json, &instruction, histories)
            }
        });
        let call = self.model.call(ctx, messages, None);
        let inputs = map_of([("query", Value::from(query))]);
        Exec::Pending(Box::pin(async move {
            let discard: TextSink = Arc::new(|_: &str| {});
            let reply = match port.invoke(call, discard).await {
                Ok(reply) => reply,
                Err(error) => {
                    return NodeResult::failed(error.message, "LLMNodeError").with_inputs(inputs);
                }
            };
            let metadata = Arc::new(usage_metadata(&reply.usage));
            let (id, name, label) = match resolve_category(&classes, &reply.text) {
                Ok(category) => category,
                Err(error) => {
                    return NodeResult { metadata: Some(metadata), ..NodeResult::failed(error, "ValueError").with_inputs(inputs) };
                }
            };
            let outputs = map_of([
                ("class_name", Value::from(name)),
                ("class_label", Value::from(label)),
                ("class_id", Value::Str(id.clone())),
                ("usage", reply.usage.to_value()),
            ]);
            NodeResult {
                handle: Some(id),
                metadata: Some(metadata),
                usage: Some(Box::new(reply.usage)),
                ..NodeResult::succeeded(outputs).with_inputs(inputs)
            }
        }))
    }
}

/// Dify: the model answers JSON with `category_id`; an unknown id falls back to the first
/// class, and text without any JSON fails the node.
fn resolve_category(classes: &[(Arc<str>, String, String)], text: &str) -> Result<(Arc<str>, String, String), String> {
    let (first_id, first_name, first_label) = classes[0].clone();
    let cleaned = strip_think(text);
    let parsed = parse_json_markdown(&cleaned)?;
    let object = match parsed {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Array(items) if items.len() == 1 && items[0].is_object() => items[0].as_object().cloned().unwrap_or_default(),
        other => {
            return Err(format!("got invalid return object. obj:{}", crate::pyfmt::py_str(&Value::from(&other))));
        }
    };
    if !object.contains_key("category_name") || !object.contains_key("category_id") {
        return Ok((first_id, first_name, first_label));
    }
    let wanted = object.get("category_id").and_then(serde_json::Value::as_str).unwrap_or_default();
    Ok(classes.iter().find(|(id, _, _)| &**id == wanted).cloned().unwrap_or((first_id, first_name, first_label)))
}

fn strip_think(text: &str) -> String {
    if !text.contains("<think") {
        return text.to_owned();
    }
    split_think(text).0
}

/// Dify's `parse_json_markdown`: the first JSON object or array in the text, with or without a
/// code fence.
fn parse_json_markdown(text: &str) -> Result<serde_json::Value, String> {
    let text = text.trim();
    let mut start = None;
    for marker in ["```json", "```", "``", "`", "{", "["] {
        if let Some(index) = text.find(marker) {
            start = Some(if marker == "{" || marker == "[" { index } else { index + marker.len() });
            break;
        }
    }
    let mut end = None;
    if let Some(start) = start {
        for marker in ["```", "``", "`", "}", "]"] {
            if let Some(index) = text[start..].rfind(marker).map(|index| index + start) {
                end = Some(if marker == "}" || marker == "]" { index + 1 } else { index });
                break;
            }
        }
    }
    match (start, end) {
        (Some(start), Some(end)) if start < end => {
            crate::pyfmt::json_loads(text[start..end].trim()).map_err(|error| format!("got invalid json object. error: {error}"))
        }
        _ => Err("could not find json block in the output.".into()),
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Parameter {
    name: Arc<str>,
    kind: SegType,
    options: Option<Vec<String>>,
    description: String,
    required: bool,
}

#[derive(Debug)]
pub struct ParameterExtractorNode {
    model: ModelSettings,
    query: Selector,
    parameters: Arc<[Parameter]>,
    instruction: TextTemplate,
    /// `reasoning_mode: function_call`: ask through a tool call when the model can make one.
    function_call: bool,
    /// With memory on, how many earlier turns the prompt's histories hold.
    memory_turns: Option<usize>,
}

/// Dify's parameter types; legacy `bool` means `boolean` and `select` means `string`.
/// Others are refused when the DSL loads.
fn parameter_type(parameter: &ExtractedParameter) -> SegType {
    match parameter.kind.as_str() {
        "bool" | "boolean" => SegType::Boolean,
        "number" => SegType::Number,
        "array[string]" => SegType::ArrayString,
        "array[number]" => SegType::ArrayNumber,
        "array[object]" => SegType::ArrayObject,
        "array[boolean]" => SegType::ArrayBoolean,
        _ => SegType::String,
    }
}

impl ParameterExtractorNode {
    pub fn compile(data: &ParameterExtractorData, resolver: &SelectorResolver<'_>) -> Self {
        Self {
            model: ModelSettings::from(&data.model),
            query: resolver.selector(&data.query),
            parameters: data
                .parameters
                .iter()
                .map(|parameter| Parameter {
                    name: Arc::from(parameter.name.as_str()),
                    kind: parameter_type(parameter),
                    options: parameter.options.clone().filter(|options| !options.is_empty()),
                    description: parameter.description.clone(),
                    required: parameter.required,
                })
                .collect(),
            instruction: TextTemplate::compile(data.instruction.as_deref().unwrap_or(""), resolver),
            function_call: data.reasoning_mode.as_deref() == Some("function_call"),
            memory_turns: histories_memory_turns(data.memory.as_ref()),
        }
    }

    pub fn memory_turns(&self) -> Option<usize> {
        self.memory_turns
    }

    /// graphon's `get_parameter_json_schema`, keys in its order.
    fn schema(&self) -> Value {
        let mut properties = map_with_capacity(self.parameters.len());
        let mut required = Vec::new();
        for parameter in self.parameters.iter() {
            let mut schema = map_of([("description", Value::from(parameter.description.clone()))]);
            match parameter.kind.element() {
                Some(element) => {
                    schema.insert(key("type"), Value::str("array"));
                    schema.insert(key("items"), Value::object(map_of([("type", Value::str(element.as_str()))])));
                }
                None => {
                    schema.insert(key("type"), Value::str(parameter.kind.as_str()));
                }
            }
            if let Some(options) = &parameter.options {
                schema.insert(key("enum"), Value::array(options.iter().map(|option| Value::from(option.clone())).collect()));
            }
            properties.insert(parameter.name.clone(), Value::object(schema));
            if parameter.required {
                required.push(Value::Str(parameter.name.clone()));
            }
        }
        Value::object(map_of([
            ("type", Value::str("object")),
            ("properties", Value::object(properties)),
            ("required", Value::array(required)),
        ]))
    }

    pub fn run(&self, ctx: &NodeCtx<'_>) -> Exec {
        let Some(port) = ctx.ports.model.clone() else {
            return Exec::Done(ctx.missing_port(Capability::Model));
        };
        let query = ctx.pool.get(&self.query).map(|value| value.to_text()).unwrap_or_default();
        let inputs = map_of([("query", Value::from(query.clone()))]);
        let calls_tools = port.calls_tools(&self.model.provider, &self.model.name);
        let completion = self.model.mode == "completion";
        if calls_tools && completion {
            // graphon sizes every prompt of a tool-calling model with the function-call
            // template, which exists for chat models only.
            return Exec::Done(NodeResult::failed("Model mode completion not support.", "WorkflowNodeError").with_inputs(inputs));
        }
        let instruction = self.instruction.render(ctx.pool, Render::Text);
        let schema = self.schema();
        let schema_json = crate::pyfmt::json_dumps_ascii(&schema);
        let mut tools = Vec::new();
        let function_call = self.function_call && calls_tools;
        if function_call {
            tools.push(extractor_prompt::function_call_tool(schema.to_json()));
        }
        let messages = with_histories(ctx, self.memory_turns, self.model.token_budget(port.as_ref()), |histories| {
            if function_call {
                extractor_prompt::function_call(&query, &schema_json, &instruction, histories)
            } else if completion {
                extractor_prompt::completion(&query, &schema_json, &instruction, histories)
            } else {
                extractor_prompt::chat(&query, &schema_json, &instruction, histories)
            }
        });
        let messages =
            messages.into_iter().map(|message| ChatMessage { content: render_references(ctx, &message.content), ..message }).collect();
        let mut call = self.model.call(ctx, messages, None);
        call.tools = tools;
        let parameters = self.parameters.clone();
        Exec::Pending(Box::pin(async move {
            let discard: TextSink = Arc::new(|_: &str| {});
            let reply = match port.invoke(call, discard).await {
                Ok(reply) => reply,
                Err(error) => {
                    let outputs = map_of([
                        ("__is_success", Value::Int(0)),
                        ("__reason", Value::str("Failed to invoke model")),
                        ("__error", Value::from(error.message.clone())),
                    ]);
                    return NodeResult {
                        outputs: Arc::new(outputs),
                        ..NodeResult::failed(error.message, "LLMNodeError").with_inputs(inputs)
                    };
                }
            };
            let (result, mut error) = match reply.tool_calls.first() {
                Some(tool_call) => (first_json_object(&tool_call.arguments).unwrap_or_default(), None),
                None => match first_json_object(&reply.text) {
                    Some(result) => (result, None),
                    None => (
                        default_result(&parameters),
                        Some("Failed to extract result from function call or text response, using empty result.".to_owned()),
                    ),
                },
            };
            if let Err(message) = validate_parameters(&parameters, &result) {
                error = Some(message);
            }
            let mut outputs = map_with_capacity(parameters.len() + 3);
            outputs.insert(key("__is_success"), Value::Int(i64::from(error.is_none())));
            outputs.insert(key("__reason"), error.map_or(Value::None, Value::from));
            outputs.insert(key("__usage"), reply.usage.to_value());
            for parameter in parameters.iter() {
                outputs.insert(parameter.name.clone(), transform_parameter(parameter.kind, result.get(&*parameter.name)));
            }
            NodeResult {
                metadata: Some(Arc::new(usage_metadata(&reply.usage))),
                usage: Some(Box::new(reply.usage)),
                ..NodeResult::succeeded(outputs).with_inputs(inputs)
            }
        }))
    }
}

/// graphon renders the finished prompt texts as templates once more, so a `{{#node.var#}}` in
/// the query or in an instruction's value is filled in too.
fn render_references(ctx: &NodeCtx<'_>, text: &str) -> String {
    if !text.contains("{{#") {
        return text.to_owned();
    }
    TextTemplate::compile(text, &ctx.plan.resolver()).render(ctx.pool, Render::Text)
}

/// graphon's `extract_json`: from an opening bracket, the text up to the bracket that closes
/// it, counting brackets only (not strings), or up to a mismatched one.
fn bracketed(text: &str) -> Option<&str> {
    let mut stack = Vec::new();
    for (index, byte) in text.bytes().enumerate() {
        match byte {
            b'{' | b'[' => stack.push(byte),
            b'}' | b']' => {
                let opening = if byte == b'}' { b'{' } else { b'[' };
                match stack.last() {
                    None => return Some(&text[..index]),
                    Some(last) if *last == opening => {
                        stack.pop();
                        if stack.is_empty() {
                            return Some(&text[..=index]);
                        }
                    }
                    Some(_) => return Some(&text[..index]),
                }
            }
            _ => {}
        }
    }
    None
}

/// The first JSON object in the text, found as graphon does: each opening bracket in turn,
/// cut with [`bracketed`], parsed as Python's `json.loads` would, kept if it is a mapping.
fn first_json_object(text: &str) -> Option<Map> {
    for (index, byte) in text.bytes().enumerate() {
        if byte != b'{' && byte != b'[' {
            continue;
        }
        let Some(candidate) = bracketed(&text[index..]).filter(|candidate| !candidate.is_empty()) else { continue };
        if let Ok(serde_json::Value::Object(map)) = crate::pyfmt::json_loads(candidate) {
            return Some(crate::value::map_from_json(&map));
        }
    }
    None
}

fn default_result(parameters: &[Parameter]) -> Map {
    let mut result = Map::default();
    for parameter in parameters {
        let value = match parameter.kind {
            SegType::Number => Value::Int(0),
            SegType::Boolean => Value::Bool(false),
            SegType::String => Value::str(""),
            _ => continue,
        };
        result.insert(parameter.name.clone(), value);
    }
    result
}

fn validate_parameters(parameters: &[Parameter], result: &Map) -> Result<(), String> {
    if parameters.len() != result.len() {
        return Err("Invalid number of parameters".into());
    }
    for Parameter { name, kind, options, required, .. } in parameters {
        if *required && !result.contains_key(&**name) {
            return Err(format!("Parameter {name} is required"));
        }
        let value = result.get(&**name).cloned().unwrap_or_default();
        if !python_accepts(*kind, &value) {
            return Err(format!(
                "Invalid value for parameter {name}, expected segment type: {}, actual_type: {}, python_type: {}, value: {}",
                kind.as_str(),
                value.seg_type().as_str(),
                crate::pyfmt::python_type_name(&value),
                crate::pyfmt::py_str(&value)
            ));
        }
        if *kind == SegType::String
            && let Some(options) = options
            && !value.as_str().is_some_and(|text| options.iter().any(|option| option == text))
        {
            return Err(format!("Invalid `select` value for parameter {name}"));
        }
    }
    Ok(())
}

/// graphon's `SegmentType.is_valid`, which checks with `isinstance`: a Python bool is an int,
/// so booleans pass as numbers.
fn python_accepts(kind: SegType, value: &Value) -> bool {
    let number_like = |value: &Value| matches!(value, Value::Int(_) | Value::Float(_) | Value::Bool(_));
    match (kind, value) {
        (SegType::Number, value) => number_like(value),
        (SegType::ArrayNumber, Value::Array(items)) => items.iter().all(number_like),
        _ => kind.accepts(value),
    }
}

/// graphon's `_transform_number`: booleans count as 0/1, a string is a float when it has a
/// dot and an int otherwise; anything else does not convert.
fn to_number(value: &Value) -> Option<Value> {
    match value {
        Value::Bool(flag) => Some(Value::Int(i64::from(*flag))),
        Value::Int(_) | Value::Float(_) => Some(value.clone()),
        Value::Str(text) if text.contains('.') => crate::pyfmt::parse_float(text).ok().map(Value::Float),
        Value::Str(text) => crate::pyfmt::parse_int(text).ok().map(Value::Int),
        _ => None,
    }
}

/// The value as graphon's `_transform_result` leaves it: converted to the parameter's type
/// where it can be, else the type's default (array items that do not convert are dropped).
fn transform_parameter(kind: SegType, value: Option<&Value>) -> Value {
    let converted = value.and_then(|value| match kind {
        SegType::Number => to_number(value),
        SegType::Boolean => match value {
            Value::Bool(_) => Some(value.clone()),
            Value::Int(int) => Some(Value::Bool(*int != 0)),
            _ => None,
        },
        SegType::String => matches!(value, Value::Str(_)).then(|| value.clone()),
        array if array.is_array() => match value {
            Value::Array(items) => Some(Value::array(
                items
                    .iter()
                    .filter_map(|item| match array.element() {
                        Some(SegType::Number) => to_number(item),
                        Some(SegType::String) => matches!(item, Value::Str(_)).then(|| item.clone()),
                        Some(SegType::Object) => matches!(item, Value::Object(_)).then(|| item.clone()),
                        Some(SegType::Boolean) => matches!(item, Value::Bool(_)).then(|| item.clone()),
                        _ => None,
                    })
                    .collect(),
            )),
            _ => None,
        },
        _ => None,
    });
    converted.unwrap_or_else(|| match kind {
        SegType::Number => Value::Int(0),
        SegType::Boolean => Value::Bool(false),
        SegType::String => Value::str(""),
        _ => Value::array(Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_window_limits_turns_as_dify_does() {
        let memory = |value: serde_json::Value| memory_turns(Some(&value));
        assert_eq!(memory(serde_json::json!({"window": {"enabled": true, "size": 2}})), 2);
        // Off, missing or empty: TokenBufferMemory's limit of 500 messages.
        assert_eq!(memory(serde_json::json!({"window": {"enabled": false, "size": 2}})), 500);
        assert_eq!(memory(serde_json::json!({"window": {"enabled": true, "size": 0}})), 500);
        assert_eq!(memory(serde_json::json!({"query_prompt_template": ""})), 500);
        assert_eq!(memory(serde_json::json!({"window": {"enabled": true, "size": 9000}})), 500);
        assert_eq!(memory_query(Some(&serde_json::json!({"query_prompt_template": ""}))).as_deref(), Some("{{#sys.query#}}"));
        assert_eq!(memory_query(Some(&serde_json::Value::Null)), None);
    }
}
