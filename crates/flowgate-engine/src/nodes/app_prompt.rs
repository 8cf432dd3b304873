//! The prompt of a chat app made in Dify's basic editor (`chat` mode), built the way Dify's
//! app runner builds it (`SimplePromptTransform`, `AdvancedPromptTransform`): `{{variable}}`
//! slots filled from the app's inputs, the conversation so far, then the user's query. The
//! rules differ from the llm node's in ways users see (the system prompt is left out when the
//! query is empty, unknown slots become `{name}`, completion models get a `Human:` transcript),
//! so they are kept apart from it.

use std::collections::HashMap;

use flowgate_dsl::AppPrompt;

use super::memory;
use crate::inputs::PastTurn;
use crate::pool::{Pool, Slot};
use crate::ports::ChatMessage;
use crate::pyfmt::py_str;
use crate::value::{File, Value};

/// Dify's `common_chat.json` rules (the prompt file every provider but Baichuan uses).
const HISTORIES_PROMPT: &str = "Here is the chat histories between human and assistant, inside <histories></histories> XML tags.\n\n<histories>\n{{#histories#}}\n</histories>\n\n";
const QUERY_PROMPT: &str = "\n\nHuman: {{#query#}}\n\nAssistant: ";
const COMPLETION_STOPS: [&str; 2] = ["\nHuman:", "</histories>"];
/// Earlier turns a chat app reads (`TokenBufferMemory`'s message limit).
pub const HISTORY_TURNS: usize = 500;

#[derive(Debug)]
pub struct AppPromptRules {
    prompt: AppPrompt,
    chat_model: bool,
    inputs: Slot,
    /// Agent apps (function calling) send the model's own stop words.
    agent: bool,
}

/// The messages to send, and the stop words when the rules replace the model's own.
pub struct BuiltPrompt {
    pub messages: Vec<ChatMessage>,
    pub stop: Option<Vec<String>>,
}

impl AppPromptRules {
    pub fn new(prompt: AppPrompt, chat_model: bool, inputs: Slot, agent: bool) -> Self {
        Self { prompt, chat_model, inputs, agent }
    }

    /// `conversation` is whether the turn continues a conversation: Dify reads memory (and
    /// writes a completion model's histories block, empty or not) only then. With a token
    /// `budget` (the model's context less its output cap), the history is trimmed to what the
    /// prompt without it leaves, as Dify's `_calculate_rest_token` sizes it.
    pub fn build(&self, pool: &Pool, history: &[PastTurn], conversation: bool, budget: Option<i64>) -> BuiltPrompt {
        let limit = budget.filter(|_| !history.is_empty()).map(|budget| {
            let bare = self.build_with(pool, &[], conversation);
            (budget - memory::estimate_tokens(&bare.messages)).max(0)
        });
        self.build_with(pool, &memory::history_messages(history, HISTORY_TURNS, limit), conversation)
    }

    fn build_with(&self, pool: &Pool, history: &[ChatMessage], conversation: bool) -> BuiltPrompt {
        let query = pool.variable(Slot::Sys, "query").map(Value::to_text).unwrap_or_default();
        let files = user_files(pool);
        // The simple rules format every input with `str()` (a missing one reads "None"); the
        // advanced ones fill a missing one with nothing.
        let inputs = |keys: Vec<String>, simple: bool| -> HashMap<String, String> {
            keys.into_iter()
                .filter_map(|key| {
                    let value = pool.variable(self.inputs, &key)?;
                    let text = if !simple && matches!(value, Value::None) { String::new() } else { py_str(value) };
                    Some((key, text))
                })
                .collect()
        };
        match (&self.prompt, self.chat_model) {
            (AppPrompt::Simple { pre_prompt }, true) => {
                let template = if pre_prompt.is_empty() { String::new() } else { format!("{pre_prompt}\n") };
                let prompt = format(&template, &inputs(variable_keys(pre_prompt), true));
                let mut messages = Vec::new();
                if !prompt.is_empty() && !query.is_empty() {
                    messages.push(message("system", prompt.clone(), Vec::new()));
                }
                messages.extend(history.iter().cloned());
                messages.push(message("user", if query.is_empty() { prompt } else { query }, files));
                // A chat app sends no stop words here, not even the model's; an agent app does.
                BuiltPrompt { messages, stop: if self.agent { None } else { Some(Vec::new()) } }
            }
            (AppPrompt::Simple { pre_prompt }, false) => {
                let mut template = if pre_prompt.is_empty() { String::new() } else { format!("{pre_prompt}\n") };
                let mut variables = inputs(variable_keys(pre_prompt), true);
                if conversation {
                    template.push_str(HISTORIES_PROMPT);
                    variables.insert("#histories#".into(), memory::history_text(history, "Human", "Assistant"));
                }
                template.push_str(QUERY_PROMPT);
                variables.insert("#query#".into(), query);
                let stop = COMPLETION_STOPS.iter().map(|stop| (*stop).to_owned()).collect();
                BuiltPrompt { messages: vec![message("user", format(&template, &variables), files)], stop: Some(stop) }
            }
            (AppPrompt::AdvancedChat { messages: template }, _) => {
                let mut messages = Vec::with_capacity(template.len() + history.len() + 1);
                for (role, text) in template {
                    let mut variables = inputs(variable_keys(text), false);
                    if has_key(text, "#context#") {
                        variables.insert("#context#".into(), String::new());
                    }
                    let content = format(text, &variables);
                    match role.as_str() {
                        "system" if content.is_empty() => {}
                        "system" | "user" | "assistant" => messages.push(message(role, content, Vec::new())),
                        _ => {}
                    }
                }
                if conversation {
                    messages.extend(history.iter().cloned());
                    messages.push(message("user", query, files));
                } else if !files.is_empty() && query.is_empty() {
                    // The files go with the last message when it is the user's.
                    match messages.last_mut() {
                        Some(last) if last.role == "user" => last.files = files,
                        _ => messages.push(message("user", String::new(), files)),
                    }
                } else if !query.is_empty() || !files.is_empty() {
                    messages.push(message("user", query, files));
                }
                BuiltPrompt { messages, stop: None }
            }
            (AppPrompt::AdvancedCompletion { text, role_prefix }, _) => {
                let mut variables = inputs(variable_keys(text), false);
                if has_key(text, "#context#") {
                    variables.insert("#context#".into(), String::new());
                }
                if let (true, Some((user_prefix, assistant_prefix))) = (conversation, role_prefix)
                    && has_key(text, "#histories#")
                {
                    variables.insert("#histories#".into(), memory::history_text(history, user_prefix, assistant_prefix));
                }
                if !query.is_empty() && has_key(text, "#query#") {
                    variables.insert("#query#".into(), query);
                }
                BuiltPrompt { messages: vec![message("user", format(text, &variables), files)], stop: None }
            }
        }
    }
}

fn message(role: &str, content: String, files: Vec<File>) -> ChatMessage {
    ChatMessage { files, ..ChatMessage::text(role, content) }
}

fn user_files(pool: &Pool) -> Vec<File> {
    match pool.variable(Slot::Sys, "files") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::File(file) => Some((**file).clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A slot key at `text`'s start — `{{name}}` with Dify's name rule (a letter or `_`, then up to
/// 29 letters, digits or `_`), or `{{#histories#}}`, `{{#query#}}`, `{{#context#}}` — and the
/// slot's length in bytes.
fn slot_at(text: &str) -> Option<(&str, usize)> {
    let inner = text.strip_prefix("{{")?;
    let end = inner.find("}}")?;
    let key = &inner[..end];
    let special = matches!(key, "#histories#" | "#query#" | "#context#");
    let mut chars = key.chars();
    let named = chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && key.len() <= 30
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_');
    (special || named).then_some((key, end + 4))
}

/// Replaces every slot, scanning left to right as Python's `re.sub` does.
fn replace_slots(text: &str, mut replacement: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find("{{") {
        out.push_str(&rest[..position]);
        rest = &rest[position..];
        match slot_at(rest) {
            Some((key, length)) => {
                out.push_str(&replacement(key));
                rest = &rest[length..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn variable_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    replace_slots(text, |key| {
        keys.push(key.to_owned());
        String::new()
    });
    keys
}

fn has_key(text: &str, wanted: &str) -> bool {
    variable_keys(text).iter().any(|key| key == wanted)
}

/// `PromptTemplateParser.format`: a slot with a value takes it (with any slots inside the value
/// turned into `{name}`, so user text cannot inject slots); a slot without one becomes `{name}`;
/// then `<|…|>` special tokens are removed.
pub(super) fn format(template: &str, variables: &HashMap<String, String>) -> String {
    let filled = replace_slots(template, |key| match variables.get(key) {
        Some(value) => replace_slots(value, |inner| format!("{{{inner}}}")),
        None => format!("{{{key}}}"),
    });
    strip_special_tokens(&filled)
}

/// Removes `<|…|>` within one line, as `re.sub(r"<\|.*?\|>", "", …)`.
fn strip_special_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find("<|") {
        let after = &rest[position + 2..];
        let line_end = after.find('\n').unwrap_or(after.len());
        match after[..line_end].find("|>") {
            Some(close) => {
                out.push_str(&rest[..position]);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str(&rest[..position + 1]);
                rest = &rest[position + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
    }

    // Expected strings worked out from Dify's PromptTemplateParser (its regex and re.sub).
    #[test]
    fn slots_are_filled_as_difys_template_parser_fills_them() {
        let variables = vars(&[("name", "Ada {{role}}"), ("_x1", "1")]);
        assert_eq!(format("Hi {{name}}, {{_x1}}!", &variables), "Hi Ada {role}, 1!");
        assert_eq!(format("{{missing}} and {{#query#}}", &variables), "{missing} and {#query#}");
        assert_eq!(format("{{{name}}}", &variables), "{Ada {role}}");
        assert_eq!(format("{{not a key}} {{1x}}", &variables), "{{not a key}} {{1x}}");
        assert_eq!(format("a<|endoftext|>b <|x\n|> c", &variables), "ab <|x\n|> c");
        let long = "a".repeat(31);
        assert_eq!(format(&format!("{{{{{long}}}}}"), &variables), format!("{{{{{long}}}}}"));
    }

    #[test]
    fn keys_are_listed_in_order() {
        assert_eq!(variable_keys("{{a}} {{#context#}} {{b c}} {{a}}"), vec!["a", "#context#", "a"]);
    }
}
