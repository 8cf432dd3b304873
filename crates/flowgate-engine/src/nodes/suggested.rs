//! Dify's suggested questions after an answer (`GET /messages/{id}/suggested`): the app's
//! feature `suggested_questions_after_answer` asks a model for three questions the user may
//! ask next, from the conversation's latest turns. The prompt, the model parameters and the
//! parsing of the answer follow Dify's `LLMGenerator` and
//! `SuggestedQuestionsAfterAnswerOutputParser`.

use std::collections::HashMap;

use serde_json::{Map as JsonMap, Value as Json};

use crate::inputs::PastTurn;
use crate::ports::{ChatMessage, ModelCall, PortContext};

use super::app_prompt::format;
use super::memory::{history_messages, history_text};

/// Dify's `DEFAULT_SUGGESTED_QUESTIONS_AFTER_ANSWER_INSTRUCTION_PROMPT`.
const DEFAULT_INSTRUCTION: &str = "Please help me predict the three most likely questions that human would ask, \
and keep each question under 20 characters.\n\
MAKE SURE your output is the SAME language as the Assistant's latest response. \
The output must be an array in JSON format following the specified schema:\n\
[\"question1\",\"question2\",\"question3\"]\n";

/// The conversation's messages the prompt sees, and the tokens they may take
/// (`get_history_prompt_text(max_token_limit=3000, message_limit=3)`).
pub const HISTORY_MESSAGES: usize = 3;
const HISTORY_TOKENS: i64 = 3000;

/// The model call for the questions after the conversation's latest `history` (oldest first,
/// at most [`HISTORY_MESSAGES`] of them), as the feature's settings ask for it: the feature's
/// `model` with its `completion_params` when it names one, else the default model (an empty
/// provider and model resolve to the models file's `default`) with Dify's default tuning.
pub fn model_call(feature: &Json, history: &[PastTurn], context: PortContext) -> ModelCall {
    let history = &history[history.len().saturating_sub(HISTORY_MESSAGES)..];
    // A message still being answered is not part of the history (TokenBufferMemory drops it).
    let history = match history.split_last() {
        Some((last, earlier)) if last.answer.is_empty() => earlier,
        _ => history,
    };
    let messages = history_messages(history, HISTORY_MESSAGES, Some(HISTORY_TOKENS));
    let instruction = match feature.get("prompt").and_then(Json::as_str).filter(|prompt| !prompt.trim().is_empty()) {
        Some(prompt) => format!("{prompt}\nYou must output a JSON array like [\"question1\", \"question2\", \"question3\"]."),
        None => DEFAULT_INSTRUCTION.to_owned(),
    };
    let variables = HashMap::from([
        ("histories".to_owned(), history_text(&messages, "Human", "Assistant")),
        ("format_instructions".to_owned(), instruction),
    ]);
    let prompt = format("{{histories}}\n{{format_instructions}}\nquestions:\n", &variables);
    let configured = feature.get("model").filter(|model| {
        let named = |key: &str| model.get(key).and_then(Json::as_str).is_some_and(|value| !value.is_empty());
        named("provider") && named("name")
    });
    let (provider, model, parameters, stop) = match configured {
        Some(model) => {
            let (parameters, stop) = configured_parameters(model.get("completion_params"));
            let text = |key: &str| model.get(key).and_then(Json::as_str).unwrap_or_default().to_owned();
            (text("provider"), text("name"), parameters, stop)
        }
        None => {
            let mut parameters = JsonMap::new();
            parameters.insert("max_tokens".into(), Json::from(256));
            parameters.insert("temperature".into(), Json::from(0.0));
            (String::new(), String::new(), parameters, Vec::new())
        }
    };
    ModelCall {
        context,
        provider,
        model,
        mode: "chat".into(),
        parameters,
        messages: vec![ChatMessage::text("user", prompt)],
        stop,
        json_schema: None,
        tools: Vec::new(),
        image_detail: None,
    }
}

/// `_normalize_completion_params`: `stop` is taken out (when it is a list of strings), and
/// token limits of zero or less are dropped, which some providers reject.
fn configured_parameters(params: Option<&Json>) -> (JsonMap<String, Json>, Vec<String>) {
    let mut parameters = params.and_then(Json::as_object).cloned().unwrap_or_default();
    let stop = match parameters.remove("stop") {
        Some(Json::Array(items)) if items.iter().all(Json::is_string) => {
            items.into_iter().filter_map(|item| item.as_str().map(str::to_owned)).collect()
        }
        _ => Vec::new(),
    };
    for key in ["max_tokens", "max_output_tokens"] {
        if parameters.get(key).and_then(Json::as_f64).is_some_and(|limit| limit <= 0.0) {
            parameters.remove(key);
        }
    }
    (parameters, stop)
}

/// The questions in a model's answer: the first `[…]` after any reasoning, as JSON, its
/// strings kept. Anything else gives no questions, as in Dify.
pub fn questions(text: &str) -> Vec<String> {
    let stripped = strip_reasoning(text);
    let Some(open) = stripped.find('[') else { return Vec::new() };
    let Some(length) = stripped[open..].find(']') else { return Vec::new() };
    match serde_json::from_str::<Json>(stripped[open..=open + length].trim()) {
        Ok(Json::Array(items)) => items.into_iter().filter_map(|item| item.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// `_strip_reasoning_blocks`: closed `<think>…</think>` blocks go; an unclosed one goes up
/// to the first `[` after it, or with everything after it when it has none.
fn strip_reasoning(text: &str) -> String {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    let find = |haystack: &str, needle: &str, from: usize| {
        haystack.get(from..).and_then(|rest| rest.to_ascii_lowercase().find(needle)).map(|at| at + from)
    };
    let mut stripped = String::with_capacity(text.len());
    let mut position = 0;
    while let Some(open) = find(text, OPEN, position) {
        let Some(close) = find(text, CLOSE, open + OPEN.len()) else { break };
        stripped.push_str(&text[position..open]);
        position = close + CLOSE.len();
    }
    stripped.push_str(&text[position..]);
    while let Some(open) = find(&stripped, OPEN, 0) {
        let tail = &stripped[open + OPEN.len()..];
        stripped = match tail.find('[') {
            Some(array) => {
                let rest = tail[array..].to_owned();
                return rest.trim().to_owned();
            }
            None => stripped[..open].to_owned(),
        };
    }
    stripped.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(query: &str, answer: &str) -> PastTurn {
        PastTurn { query: query.into(), answer: answer.into() }
    }

    // Dify's own cases (api/tests/unit_tests/core/llm_generator/output_parser) and more, each
    // checked against the parser's Python.
    #[test]
    fn answers_are_parsed_as_difys_output_parser_parses_them() {
        let expected = vec!["What is Dify?", "How to build an app?", "Why use RAG?"];
        assert_eq!(questions("questions:\n[\"What is Dify?\", \"How to build an app?\", \"Why use RAG?\"]"), expected);
        let closed = "<think>\nRelevant tokens are [MASK] and probabilities [0.2, 0.8]. Ignore [\"bad question from reasoning\"].\n</think>\n[\"What is Dify?\", \"How to build an app?\", \"Why use RAG?\"]";
        assert_eq!(questions(closed), expected);
        let unclosed = "<think>Analyzing [\"What is Dify?\", \"How to build an app?\", \"Why use RAG?\"]";
        assert_eq!(questions(unclosed), expected);
        assert_eq!(questions("<THINK>only thoughts, no questions"), Vec::<String>::new());
        assert_eq!(questions("x <think>a</think> <THINK>b [\"q\"] <think>c</think>"), Vec::<String>::new());
        assert_eq!(questions("[\"one\", 2, null, \"three\"]"), vec!["one", "three"]);
        assert_eq!(questions("I cannot help with that."), Vec::<String>::new());
        assert_eq!(questions("[not json]"), Vec::<String>::new());
        // The first `]` ends the array, as the non-greedy `\[.*?\]` does.
        assert_eq!(questions("[\"a]b\", \"c\"]"), Vec::<String>::new());
    }

    #[test]
    fn the_prompt_is_the_latest_turns_then_difys_instruction() {
        let context = PortContext::blank();
        let history = [turn("first?", "one"), turn("second?", "two"), turn("third {{x}}?", "three <|endoftext|>"), turn("now?", "")];
        let call = model_call(&serde_json::json!({"enabled": true}), &history, context.clone());
        let expected =
            format!("Human: second?\nAssistant: two\nHuman: third {{x}}?\nAssistant: three \n{DEFAULT_INSTRUCTION}\nquestions:\n");
        assert_eq!(call.messages.len(), 1);
        assert_eq!(call.messages[0].role, "user");
        assert_eq!(call.messages[0].content, expected);
        assert_eq!((call.provider.as_str(), call.model.as_str()), ("", ""), "the default model");
        assert_eq!(Json::Object(call.parameters), serde_json::json!({"max_tokens": 256, "temperature": 0.0}));

        let feature = serde_json::json!({
            "enabled": true,
            "prompt": "Three follow-ups, in French.",
            "model": {"provider": "langgenius/openai/openai", "name": "gpt-4o-mini", "completion_params": {"temperature": 0.7, "max_tokens": 0, "stop": ["\n\n"]}},
        });
        let call = model_call(&feature, &history[..1], context);
        assert_eq!(
            call.messages[0].content,
            "Human: first?\nAssistant: one\nThree follow-ups, in French.\nYou must output a JSON array like [\"question1\", \"question2\", \"question3\"].\nquestions:\n"
        );
        assert_eq!((call.provider.as_str(), call.model.as_str()), ("langgenius/openai/openai", "gpt-4o-mini"));
        assert_eq!(Json::Object(call.parameters), serde_json::json!({"temperature": 0.7}));
        assert_eq!(call.stop, vec!["\n\n"]);
    }
}
