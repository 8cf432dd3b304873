//! Apps made in Dify's basic editor (modes `chat`, `agent-chat`, `completion`) carry a
//! `model_config` instead of a graph. They run as a small graph built from it — start → llm →
//! answer (chat) or end (completion) — the way Dify's `WorkflowConverter` builds one, so the
//! run log, streaming, stop and usage work as for every other app.
//!
//! Completion apps run exactly that graph, as Dify does since it moved them onto its workflow
//! engine. Chat apps still build their prompt with Dify's app prompt rules (a system prompt
//! from `pre_prompt`, the conversation, then the query), which the graph's llm node cannot
//! express; [`AppPrompt`] carries them to the engine.

use serde_json::{Map, Value, json};

use crate::document::{AppMode, Workflow};
use crate::error::{Diagnostic, DslError};
use crate::lenient;
use crate::source::LineIndex;

/// How a chat app builds its prompt (Dify's `SimplePromptTransform` / `AdvancedPromptTransform`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppPrompt {
    /// `prompt_type: simple`: `pre_prompt` with `{{variable}}` slots.
    Simple { pre_prompt: String },
    /// `prompt_type: advanced` with a chat model: `chat_prompt_config.prompt`, as (role, text).
    AdvancedChat { messages: Vec<(String, String)> },
    /// `prompt_type: advanced` with a completion model: `completion_prompt_config`; the
    /// conversation fills `{{#histories#}}` only when the config names the two roles' prefixes
    /// (user, assistant).
    AdvancedCompletion { text: String, role_prefix: Option<(String, String)> },
}

/// Id of the runtime graph's model node (Dify's converter names it `llm`).
pub const RUNTIME_LLM_NODE: &str = "llm";

/// The runtime workflow of a `model_config` app.
pub(crate) fn runtime_workflow(
    mode: AppMode,
    config: &Map<String, Value>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<Workflow, DslError> {
    let mut unsupported = Vec::new();
    let variables = start_variables(config.get("user_input_form"), &mut unsupported, diagnostics);
    note_unsupported(mode, config, &mut unsupported);

    let model = config.get("model").and_then(Value::as_object);
    if model.is_none() {
        diagnostics.push(Diagnostic::error("missing_model", "the app has no model").field("model_config.model"));
    }
    let model = model.cloned().unwrap_or_default();
    let text = |map: &Map<String, Value>, key: &str| map.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let model_mode = match text(&model, "mode").as_str() {
        "completion" => "completion",
        _ => "chat",
    };
    let completion_params = model.get("completion_params").and_then(Value::as_object).cloned().unwrap_or_default();
    let advanced = text(config, "prompt_type") == "advanced";
    let pre_prompt = text(config, "pre_prompt");
    let variable_names: Vec<String> =
        variables.iter().filter_map(|variable| variable.get("variable").and_then(Value::as_str).map(str::to_owned)).collect();
    let to_selectors = |template: &str| {
        variable_names
            .iter()
            .fold(template.to_owned(), |template, name| template.replace(&format!("{{{{{name}}}}}"), &format!("{{{{#start.{name}#}}}}")))
    };

    let chat_messages = || -> Vec<(String, String)> {
        let messages = lookup(config, &["chat_prompt_config", "prompt"]).and_then(Value::as_array).cloned().unwrap_or_default();
        messages
            .iter()
            .filter_map(Value::as_object)
            .map(|message| {
                let role = text(message, "role");
                (if role.is_empty() { "user".to_owned() } else { role }, text(message, "text"))
            })
            .collect()
    };
    let completion_config = config.get("completion_prompt_config").and_then(Value::as_object).cloned().unwrap_or_default();
    let completion_text = completion_config.get("prompt").and_then(Value::as_object).map(|prompt| text(prompt, "text")).unwrap_or_default();
    let role_prefix = completion_config
        .get("conversation_histories_role")
        .and_then(Value::as_object)
        .map(|roles| (text(roles, "user_prefix"), text(roles, "assistant_prefix")));
    // The graph's prompt, as Dify's converter writes it for a completion app.
    let simple_template = if pre_prompt.is_empty() { String::new() } else { format!("{pre_prompt}\n") };
    let prompt_template = match (model_mode, advanced) {
        ("chat", false) if simple_template.is_empty() => json!([]),
        ("chat", false) => json!([{"role": "user", "text": to_selectors(&simple_template)}]),
        ("chat", true) => {
            Value::Array(chat_messages().into_iter().map(|(role, text)| json!({"role": role, "text": to_selectors(&text)})).collect())
        }
        (_, false) => json!({"text": to_selectors(&simple_template)}),
        (_, true) => json!({"text": to_selectors(&completion_text).replace("{{#query#}}", "{{#sys.query#}}")}),
    };
    let app_prompt = mode.is_chat().then(|| match (model_mode, advanced) {
        (_, false) => AppPrompt::Simple { pre_prompt: pre_prompt.clone() },
        ("chat", true) => AppPrompt::AdvancedChat { messages: chat_messages() },
        (_, true) => AppPrompt::AdvancedCompletion { text: completion_text.clone(), role_prefix: role_prefix.clone() },
    });

    let llm = json!({
        "id": RUNTIME_LLM_NODE,
        "data": {
            "title": "LLM",
            "type": "llm",
            "model": {
                "provider": text(&model, "provider"),
                "name": text(&model, "name"),
                "mode": model_mode,
                "completion_params": completion_params,
            },
            "prompt_template": prompt_template,
            "context": {"enabled": false},
            "vision": {"enabled": false},
        },
    });
    let last = if mode.is_chat() {
        json!({"id": "answer", "data": {"title": "ANSWER", "type": "answer", "answer": "{{#llm.text#}}"}})
    } else {
        json!({"id": "end", "data": {"title": "END", "type": "end", "outputs": [{"variable": "result", "value_selector": ["llm", "text"]}]}})
    };
    let last_id = if mode.is_chat() { "answer" } else { "end" };
    let mut graph = Map::new();
    graph.insert("nodes".into(), json!([{"id": "start", "data": {"title": "START", "type": "start", "variables": variables}}, llm, last]));
    graph.insert(
        "edges".into(),
        json!([
            {"id": "start-llm", "source": "start", "target": RUNTIME_LLM_NODE},
            {"id": format!("llm-{last_id}"), "source": RUNTIME_LLM_NODE, "target": last_id},
        ]),
    );
    let graph = crate::document::read_graph(&graph, &LineIndex::default(), diagnostics)?;
    Ok(Workflow {
        graph,
        features: Value::Object(config.clone()),
        environment_variables: Vec::new(),
        conversation_variables: Vec::new(),
        app_prompt,
        unsupported,
    })
}

/// The start form from `user_input_form`, Dify's older shape: `[{"text-input": {...}}, ...]`.
fn start_variables(form: Option<&Value>, unsupported: &mut Vec<String>, diagnostics: &mut Vec<Diagnostic>) -> Vec<Value> {
    let items = match form {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            diagnostics.push(
                Diagnostic::error("invalid_user_input_form", format!("must be a list, found {}", lenient::kind(other)))
                    .field("model_config.user_input_form"),
            );
            return Vec::new();
        }
    };
    let mut variables = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let field = format!("model_config.user_input_form[{index}]");
        let Some((kind, Value::Object(spec))) = item.as_object().filter(|item| item.len() == 1).and_then(|item| item.iter().next()) else {
            diagnostics.push(
                Diagnostic::error("invalid_user_input_form", "must be a mapping with one key, the input type (e.g. `text-input`)")
                    .field(field),
            );
            continue;
        };
        if kind == "external_data_tool" {
            unsupported.push(format!("external data tools ({field})"));
            continue;
        }
        let mut variable = spec.clone();
        variable.insert("type".into(), Value::String(kind.clone()));
        variables.push(Value::Object(variable));
    }
    variables
}

fn lookup<'a>(config: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(config.get(*first)?, |value, key| value.get(*key))
}

fn enabled(config: &Map<String, Value>, key: &str) -> bool {
    config.get(key).and_then(|feature| feature.get("enabled")).and_then(Value::as_bool).unwrap_or(false)
}

/// Parts of a `model_config` flowgate cannot run yet; running such an app is refused naming them.
fn note_unsupported(mode: AppMode, config: &Map<String, Value>, unsupported: &mut Vec<String>) {
    let has_items = |path: &[&str]| lookup(config, path).and_then(Value::as_array).is_some_and(|items| !items.is_empty());
    if has_items(&["dataset_configs", "datasets", "datasets"]) {
        unsupported.push("knowledge retrieval (model_config.dataset_configs)".into());
    }
    let external_tools = config.get("external_data_tools").and_then(Value::as_array);
    if external_tools.is_some_and(|tools| tools.iter().any(|tool| tool.get("enabled").and_then(Value::as_bool).unwrap_or(true))) {
        unsupported.push("external data tools (model_config.external_data_tools)".into());
    }
    if enabled(config, "sensitive_word_avoidance") {
        unsupported.push("content moderation (model_config.sensitive_word_avoidance)".into());
    }
    // Dify's agent config skips tools that are not enabled.
    let enabled_tools = lookup(config, &["agent_mode", "tools"])
        .and_then(Value::as_array)
        .is_some_and(|tools| tools.iter().any(|tool| tool.get("enabled").and_then(Value::as_bool).unwrap_or(false)));
    if mode == AppMode::AgentChat && enabled_tools {
        unsupported.push("agent tools (model_config.agent_mode.tools)".into());
    }
}
