//! A conversation's name, made by a model from its first query, as Dify's
//! `LLMGenerator.generate_conversation_name` makes it: the model is asked for a JSON object
//! whose `Your Output` is the name; anything unusable falls back to the query.

use serde_json::{Map as JsonMap, Value as Json};

use crate::ports::{ChatMessage, ModelCall, PortContext};

/// Dify's `CONVERSATION_TITLE_PROMPT`; the query follows it.
const TITLE_PROMPT: &str =
    "You are asked to generate a concise chat title by decomposing the user’s input into two parts: “Intention” and “Subject”.

1. Detect Input Language
Automatically identify the language of the user’s input (e.g. English, Chinese, Italian, Español, Arabic, Japanese, French, and etc.).

2. Generate Title
- Combine Intention + Subject into a single, as-short-as-possible phrase.
- The title must be natural, friendly, and in the same language as the input.
- If the input is a direct question to the model, you may add an emoji at the end.

3. Output Format
Return **only** a valid JSON object with these exact keys and no additional text:
{
\"Language Type\": \"<Detected language>\",
\"Your Reasoning\": \"<Brief explanation in that language>\",
\"Your Output\": \"<Intention + Subject>\"
}

User Input:
";

/// The query as the prompt carries it: a long one keeps its first and last 300 characters,
/// and newlines become spaces.
fn prompt_query(query: &str) -> String {
    let characters: Vec<char> = query.chars().collect();
    let shortened = if characters.len() > 2000 {
        let head: String = characters[..300].iter().collect();
        let tail: String = characters[characters.len() - 300..].iter().collect();
        format!("{head}...[TRUNCATED]...{tail}")
    } else {
        query.to_owned()
    };
    shortened.replace('\n', " ")
}

/// The call to the default model (an empty provider and model resolve to the models file's
/// `default`) with Dify's parameters.
pub fn model_call(query: &str, context: PortContext) -> ModelCall {
    let mut parameters = JsonMap::new();
    parameters.insert("max_tokens".into(), Json::from(500));
    parameters.insert("temperature".into(), Json::from(1));
    ModelCall {
        context,
        provider: String::new(),
        model: String::new(),
        mode: "chat".into(),
        parameters,
        messages: vec![ChatMessage::text("user", format!("{TITLE_PROMPT}{}\n", prompt_query(query)))],
        stop: Vec::new(),
        json_schema: None,
        tools: Vec::new(),
        image_detail: None,
    }
}

/// The name in the model's `answer`: its `Your Output`, else the query; cut to 75 characters
/// and an ellipsis. Dify repairs JSON it cannot parse (`json_repair`); flowgate reads the
/// outermost `{…}` of such an answer, which covers the usual cases (a fenced block, text
/// around the object).
pub fn name(answer: &str, query: &str) -> String {
    let output = if answer.trim().is_empty() { None } else { your_output(answer) };
    let name = output.unwrap_or_else(|| prompt_query(query));
    let name = name.trim();
    if name.chars().count() > 75 { format!("{}...", name.chars().take(75).collect::<String>()) } else { name.to_owned() }
}

fn your_output(answer: &str) -> Option<String> {
    let parsed = serde_json::from_str::<Json>(answer).ok().or_else(|| {
        let start = answer.find('{')?;
        let end = answer.rfind('}')?;
        serde_json::from_str::<Json>(answer.get(start..=end)?).ok()
    })?;
    let output = parsed.get("Your Output")?.as_str()?.trim();
    (!output.is_empty()).then(|| output.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_models_output_else_the_query() {
        let answer =
            r#"{"Language Type": "English", "Your Reasoning": "a question about soup", "Your Output": "  Cold soup complaint 🍲 "}"#;
        assert_eq!(name(answer, "My soup is cold"), "Cold soup complaint 🍲");
        let fenced = format!("```json\n{answer}\n```");
        assert_eq!(name(&fenced, "My soup is cold"), "Cold soup complaint 🍲");
        assert_eq!(name("", "My soup\nis cold"), "My soup is cold");
        assert_eq!(name("[\"not an object\"]", " q "), "q");
        assert_eq!(name(r#"{"Your Output": ""}"#, "q"), "q");
        assert_eq!(name(r#"{"Your Output": 3}"#, "q"), "q");
        let long = "名".repeat(80);
        assert_eq!(name(&format!(r#"{{"Your Output": "{long}"}}"#), "q"), format!("{}...", "名".repeat(75)));
    }

    #[test]
    fn the_prompt_carries_the_query_shortened_and_on_one_line() {
        let context = PortContext::blank();
        let call = model_call("two\nlines", context.clone());
        assert!(call.messages[0].content.ends_with("User Input:\ntwo lines\n"), "{}", call.messages[0].content);
        assert_eq!(Json::Object(call.parameters), serde_json::json!({"max_tokens": 500, "temperature": 1}));
        let long = format!("{}{}{}", "a".repeat(300), "b".repeat(1500), "c".repeat(300));
        let call = model_call(&long, context);
        let expected = format!("User Input:\n{}...[TRUNCATED]...{}\n", "a".repeat(300), "c".repeat(300));
        assert!(call.messages[0].content.ends_with(&expected));
    }
}
