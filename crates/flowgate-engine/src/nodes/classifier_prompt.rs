//! The question classifier's prompt, word for word as graphon writes it
//! (`question_classifier/template_prompts.py`): a system prompt with the conversation so far,
//! two worked examples, then the question. Models answer differently to different prompts, so
//! these strings are Dify's exactly, typos included.

use crate::ports::ChatMessage;

const SYSTEM: &str = "\n### Job Description',\nYou are a text classification engine that analyzes text data and assigns categories based on user input or automatically determined categories.\n### Task\nYour task is to assign one categories ONLY to the input text and only one category may be assigned returned in the output.\nAdditionally, you need to extract the key words from the text that are related to the classification.\n### Format\nThe input text is in the variable input_text. Categories are specified as a category list with two filed category_id and category_name in the variable categories. Classification instructions may be included to improve the classification accuracy.\n### Constraint\nDO NOT include anything other than the JSON array in your response.\n### Memory\nHere are the chat histories between human and assistant, inside <histories></histories> XML tags.\n<histories>\n{histories}\n</histories>\n";

const USER_1: &str = "\n    {\"input_text\": [\"I recently had a great experience with your company. The service was prompt and the staff was very friendly.\"],\n    \"categories\": [{\"category_id\":\"f5660049-284f-41a7-b301-fd24176a711c\",\"category_name\":\"Customer Service\"},{\"category_id\":\"8d007d06-f2c9-4be5-8ff6-cd4381c13c60\",\"category_name\":\"Satisfaction\"},{\"category_id\":\"5fbbbb18-9843-466d-9b8e-b9bfbb9482c8\",\"category_name\":\"Sales\"},{\"category_id\":\"23623c75-7184-4a2e-8226-466c2e4631e4\",\"category_name\":\"Product\"}],\n    \"classification_instructions\": [\"classify the text based on the feedback provided by customer\"]}\n";

const ASSISTANT_1: &str = "\n```json\n    {\"keywords\": [\"recently\", \"great experience\", \"company\", \"service\", \"prompt\", \"staff\", \"friendly\"],\n    \"category_id\": \"f5660049-284f-41a7-b301-fd24176a711c\",\n    \"category_name\": \"Customer Service\"}\n```\n";

const USER_2: &str = "\n    {\"input_text\": [\"bad service, slow to bring the food\"],\n    \"categories\": [{\"category_id\":\"80fb86a0-4454-4bf5-924c-f253fdd83c02\",\"category_name\":\"Food Quality\"},{\"category_id\":\"f6ff5bc3-aca0-4e4a-8627-e760d0aca78f\",\"category_name\":\"Experience\"},{\"category_id\":\"cc771f63-74e7-4c61-882e-3eda9d8ba5d7\",\"category_name\":\"Price\"}],\n    \"classification_instructions\": []}\n";

const ASSISTANT_2: &str = "\n```json\n    {\"keywords\": [\"bad service\", \"slow\", \"food\", \"tip\", \"terrible\", \"waitresses\"],\n    \"category_id\": \"f6ff5bc3-aca0-4e4a-8627-e760d0aca78f\",\n    \"category_name\": \"Experience\"}\n```\n";

/// A completion-mode model's one prompt; `{histories}`, `{input_text}`, `{categories}` and
/// `{classification_instructions}` are filled in.
const COMPLETION: &str = "\n### Job Description\nYou are a text classification engine that analyzes text data and assigns categories based on user input or automatically determined categories.\n### Task\nYour task is to assign one categories ONLY to the input text and only one category may be assigned returned in the output.\nAdditionally, you need to extract the key words from the text that are related to the classification.\n### Format\nThe input text is in the variable input_text. Categories are specified as a category list  with two filed category_id and category_name in the variable categories. Classification instructions may be included to improve the classification accuracy.\n### Constraint\nDO NOT include anything other than the JSON array in your response.\n### Example\nHere is the chat example between human and assistant, inside <example></example> XML tags.\n<example>\nUser:{\"input_text\": [\"I recently had a great experience with your company. The service was prompt and the staff was very friendly.\"], \"categories\": [{\"category_id\":\"f5660049-284f-41a7-b301-fd24176a711c\",\"category_name\":\"Customer Service\"},{\"category_id\":\"8d007d06-f2c9-4be5-8ff6-cd4381c13c60\",\"category_name\":\"Satisfaction\"},{\"category_id\":\"5fbbbb18-9843-466d-9b8e-b9bfbb9482c8\",\"category_name\":\"Sales\"},{\"category_id\":\"23623c75-7184-4a2e-8226-466c2e4631e4\",\"category_name\":\"Product\"}], \"classification_instructions\": [\"classify the text based on the feedback provided by customer\"]}\nAssistant:{\"keywords\": [\"recently\", \"great experience\", \"company\", \"service\", \"prompt\", \"staff\", \"friendly\"],\"category_id\": \"f5660049-284f-41a7-b301-fd24176a711c\",\"category_name\": \"Customer Service\"}\nUser:{\"input_text\": [\"bad service, slow to bring the food\"], \"categories\": [{\"category_id\":\"80fb86a0-4454-4bf5-924c-f253fdd83c02\",\"category_name\":\"Food Quality\"},{\"category_id\":\"f6ff5bc3-aca0-4e4a-8627-e760d0aca78f\",\"category_name\":\"Experience\"},{\"category_id\":\"cc771f63-74e7-4c61-882e-3eda9d8ba5d7\",\"category_name\":\"Price\"}], \"classification_instructions\": []}\nAssistant:{\"keywords\": [\"bad service\", \"slow\", \"food\", \"tip\", \"terrible\", \"waitresses\"],\"category_id\": \"f6ff5bc3-aca0-4e4a-8627-e760d0aca78f\",\"category_name\": \"Experience\"}\n</example>\n### Memory\nHere are the chat histories between human and assistant, inside <histories></histories> XML tags.\n<histories>\n{histories}\n</histories>\n### User Input\n{\"input_text\" : [\"{input_text}\"], \"categories\" : {categories},\"classification_instruction\" : [\"{classification_instructions}\"]}\n### Assistant Output\n";

fn message(role: &str, content: String) -> ChatMessage {
    ChatMessage::text(role, content)
}

/// The chat-model prompt: `categories_json` is `json.dumps` of the categories.
pub fn messages(query: &str, categories_json: &str, instruction: &str, histories: &str) -> Vec<ChatMessage> {
    let question = format!(
        "\n    {{\"input_text\": [\"{query}\"],\n    \"categories\": {categories_json},\n    \"classification_instructions\": [\"{instruction}\"]}}\n"
    );
    vec![
        message("system", SYSTEM.replace("{histories}", histories)),
        message("user", USER_1.to_owned()),
        message("assistant", ASSISTANT_1.to_owned()),
        message("user", USER_2.to_owned()),
        message("assistant", ASSISTANT_2.to_owned()),
        message("user", question),
    ]
}

/// The completion-model prompt: one user message.
pub fn completion_messages(query: &str, categories_json: &str, instruction: &str, histories: &str) -> Vec<ChatMessage> {
    let prompt = COMPLETION
        .replace("{histories}", histories)
        .replace("{input_text}", query)
        .replace("{categories}", categories_json)
        .replace("{classification_instructions}", instruction);
    vec![message("user", prompt)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture is graphon's own prompt strings, formatted by graphon's code for one input.
    #[test]
    fn the_prompt_is_graphons_word_for_word() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!("../../tests/data/question-classifier-prompt.json")).unwrap();
        let text = |key: &str| fixture[key].as_str().unwrap().to_owned();
        let categories = crate::value::Value::from(&fixture["categories"]);
        let built = messages(&text("query"), &crate::pyfmt::json_dumps(&categories, None), &text("instruction"), &text("histories"));
        let expected = fixture["messages"].as_array().unwrap();
        assert_eq!(built.len(), expected.len());
        for (message, want) in built.iter().zip(expected) {
            assert_eq!(message.role, want["role"].as_str().unwrap());
            assert_eq!(message.content, want["text"].as_str().unwrap());
        }
        let completion =
            completion_messages(&text("query"), &crate::pyfmt::json_dumps(&categories, None), &text("instruction"), &text("histories"));
        assert_eq!(completion.len(), 1);
        assert_eq!(completion[0].content, fixture["completion_prompt"].as_str().unwrap());
        let turns = [crate::inputs::PastTurn { query: "hello".into(), answer: "hi there".into() }];
        let histories = super::super::memory::history_text(&super::super::memory::history_messages(&turns, 1, None), "Human", "Assistant");
        assert_eq!(histories, text("histories"));
    }
}
