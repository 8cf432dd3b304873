//! The parameter extractor's prompts, word for word as graphon writes them
//! (`parameter_extractor/prompts.py` and the node's prompt builders): a function-call prompt
//! with an `extract_parameters` tool for models that can call tools, and a JSON prompt for the
//! rest (chat models get worked examples, completion models one long prompt). The strings are
//! Dify's exactly, typos included: models answer differently to different prompts.

use crate::ports::{ChatMessage, ToolDefinition, ToolInvocation};

pub const FUNCTION_NAME: &str = "extract_parameters";
const FUNCTION_DESCRIPTION: &str = "Extract parameters from the natural language text";

const FUNCTION_CALL_SYSTEM: &str = "You are a helpful assistant tasked with extracting structured information based on specific criteria provided. Follow the guidelines below to ensure consistency and accuracy.\n### Task\nAlways call the `extract_parameters` function with the correct parameters. Ensure that the information extraction is contextual and aligns with the provided criteria.\n### Memory\nHere is the chat history between the human and assistant, provided within <histories> tags:\n<histories>\n{histories}\n</histories>\n### Instructions:\nSome additional information is provided below. Always adhere to these instructions as closely as possible:\n<instruction>\n{instruction}\n</instruction>\nSteps:\n1. Review the chat history provided within the <histories> tags.\n2. Extract the relevant information based on the criteria given, output multiple values if there is multiple relevant information that match the criteria in the given text.\n3. Generate a well-formatted output using the defined functions and arguments.\n4. Use the `extract_parameters` function to create structured outputs with appropriate parameters.\n5. Do not include any XML tags in your output.\n### Example\nTo illustrate, if the task involves extracting a user's name and their request, your function call might look like this: Ensure your output follows a similar structure to examples.\n### Final Output\nProduce well-formatted function calls in json without XML tags, as shown in the example.";

const FUNCTION_CALL_USER: &str = "extract structured information from context inside <context></context> XML tags by calling the function extract_parameters with the correct parameters with structure inside <structure></structure> XML tags.\n<context>\n{content}\n</context>\n\n<structure>\n{structure}\n</structure>";

/// Each example: the question, the assistant's words, and the arguments it calls with.
const FUNCTION_CALL_EXAMPLES: [(&str, &str, &str); 2] = [
    (
        "What is the weather today in SF?",
        "I need always call the function with the correct parameters. In this case, I need to call the function with the location parameter.",
        "{\"location\": \"San Francisco\"}",
    ),
    (
        "I want to eat some apple pie.",
        "I need always call the function with the correct parameters. In this case, I need to call the function with the food parameter.",
        "{\"food\": \"apple pie\"}",
    ),
];
const FUNCTION_CALL_TOOL_REPLY: &str = "Great! You have called the function with the correct parameters.";
const FUNCTION_CALL_EXAMPLE_CLOSING: &str = "I have extracted the parameters, let's move on.";

const CHAT_SYSTEM: &str = "You should always follow the instructions and output a valid JSON object.\nThe structure of the JSON object you can found in the instructions.\n\n### Memory\nHere are the chat histories between human and assistant, inside <histories></histories> XML tags.\n<histories>\n{histories}\n</histories>\n\n### Instructions:\nSome extra information are provided below, you should always follow the instructions as possible as I can.\n<instructions>\n{instruction}\n</instructions>";

const CHAT_USER: &str = "### Structure\nHere is the structure of the JSON object, you should always follow the structure.\n<structure>\n{structure}\n</structure>\n\n### Text to be converted to JSON\nInside <text></text> XML tags, there is a text that you should convert to a JSON object.\n<text>\n{text}\n</text>";

/// Each example: the question, `json.dumps` of its schema, and of the answer.
const CHAT_EXAMPLES: [(&str, &str, &str); 2] = [
    (
        "What is the weather today in SF?",
        "{\"type\": \"object\", \"properties\": {\"location\": {\"type\": \"string\", \"description\": \"The location to get the weather information\", \"required\": true}}, \"required\": [\"location\"]}",
        "{\"location\": \"San Francisco\"}",
    ),
    (
        "I want to eat some apple pie.",
        "{\"type\": \"object\", \"properties\": {\"food\": {\"type\": \"string\", \"description\": \"The food to eat\", \"required\": true}}, \"required\": [\"food\"]}",
        "{\"food\": \"apple pie\"}",
    ),
];

const COMPLETION: &str = "### Instructions:\nSome extra information are provided below, I should always follow the instructions as possible as I can.\n<instructions>\n{instruction}\n</instructions>\n\n### Extract parameter Workflow\nI need to extract the following information from the input text. The <information to be extracted> tag specifies the 'type', 'description' and 'required' of the information to be extracted.\n<information to be extracted>\n{{ structure }}\n</information to be extracted>\n\nStep 1: Carefully read the input and understand the structure of the expected output.\nStep 2: Extract relevant parameters from the provided text based on the name and description of object.\nStep 3: Structure the extracted parameters to JSON object as specified in <structure>.\nStep 4: Ensure that the JSON object is properly formatted and valid. The output should not contain any XML tags. Only the JSON object should be outputted.\n\n### Memory\nHere are the chat histories between human and assistant, inside <histories></histories> XML tags.\n<histories>\n{histories}\n</histories>\n\n### Structure\nHere is the structure of the expected output, I should always follow the output structure.\n{{\u{3b3}\u{3b3}\u{3b3}\n  'properties1': 'relevant text extracted from input',\n  'properties2': 'relevant text extracted from input',\n}}\u{3b3}\u{3b3}\u{3b3}\n\n### Input Text\nInside <text></text> XML tags, there is a text that I should extract parameters and convert to a JSON object.\n<text>\n{text}\n</text>\n\n### Answer\nI should always output a valid JSON object. Output nothing other than the JSON object.\n```JSON";

/// Python's `str.format` with named fields: `{name}` is replaced in one pass (so braces in the
/// values stay as they are) and `{{`/`}}` become single braces.
fn format(template: &str, fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + fields.iter().map(|(_, value)| value.len()).sum::<usize>());
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let field = tail.strip_prefix('{').and_then(|after| after.find('}').map(|end| (&after[..end], &after[end + 1..])));
        match field.and_then(|(name, after)| fields.iter().find(|(field, _)| *field == name).map(|(_, value)| (*value, after))) {
            Some((value, after)) => {
                out.push_str(value);
                rest = after;
            }
            // The templates above name only fields they are given.
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A function-call prompt: system prompt, the worked examples (each a call, its tool result
/// and a closing word) before the user's turn, and the tool to call.
pub fn function_call(query: &str, schema_json: &str, instruction: &str, histories: &str) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(2 + 4 * FUNCTION_CALL_EXAMPLES.len());
    messages.push(ChatMessage::text("system", format(FUNCTION_CALL_SYSTEM, &[("histories", histories), ("instruction", instruction)])));
    for (question, words, arguments) in FUNCTION_CALL_EXAMPLES {
        let id = uuid::Uuid::new_v4().simple().to_string();
        messages.push(ChatMessage::text("user", question));
        messages.push(ChatMessage {
            tool_calls: vec![ToolInvocation { id: id.clone(), name: FUNCTION_NAME.into(), arguments: arguments.into() }],
            ..ChatMessage::text("assistant", words)
        });
        messages.push(ChatMessage { tool_call_id: Some(id), ..ChatMessage::text("tool", FUNCTION_CALL_TOOL_REPLY) });
        messages.push(ChatMessage::text("assistant", FUNCTION_CALL_EXAMPLE_CLOSING));
    }
    messages.push(ChatMessage::text("user", format(FUNCTION_CALL_USER, &[("content", query), ("structure", schema_json)])));
    messages
}

pub fn function_call_tool(schema: serde_json::Value) -> ToolDefinition {
    ToolDefinition { name: FUNCTION_NAME.into(), description: FUNCTION_DESCRIPTION.into(), parameters: schema }
}

/// A chat model's JSON prompt: system prompt, two worked examples, then the text.
pub fn chat(query: &str, schema_json: &str, instruction: &str, histories: &str) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(2 + 2 * CHAT_EXAMPLES.len());
    messages.push(ChatMessage::text("system", format(CHAT_SYSTEM, &[("histories", histories), ("instruction", instruction)])));
    for (question, schema, answer) in CHAT_EXAMPLES {
        messages.push(ChatMessage::text("user", format(CHAT_USER, &[("structure", schema), ("text", question)])));
        messages.push(ChatMessage::text("assistant", answer));
    }
    messages.push(ChatMessage::text("user", format(CHAT_USER, &[("structure", schema_json), ("text", query)])));
    messages
}

/// A completion model's one prompt. As in graphon, the schema is put in after formatting,
/// by replacing `{ structure }` wherever it appears, and the prompt then goes through the
/// completion-template step that puts the (here empty) memory text in place of `#histories#`
/// or before the prompt on a line of its own.
pub fn completion(query: &str, schema_json: &str, instruction: &str, histories: &str) -> Vec<ChatMessage> {
    let prompt = format(COMPLETION, &[("histories", histories), ("text", query), ("instruction", instruction)])
        .replace("{\u{3b3}\u{3b3}\u{3b3}", "")
        .replace("}\u{3b3}\u{3b3}\u{3b3}", "")
        .replace("{ structure }", schema_json);
    let prompt = if prompt.contains("#histories#") { prompt.replace("#histories#", "") } else { format!("\n{prompt}") };
    vec![ChatMessage::text("user", prompt)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_fills_fields_once_and_unescapes_braces() {
        assert_eq!(format("a {x} {{y}} {z}", &[("x", "{z}"), ("z", "1")]), "a {z} {y} 1");
        assert_eq!(format("{{ structure }}", &[]), "{ structure }");
    }
}
