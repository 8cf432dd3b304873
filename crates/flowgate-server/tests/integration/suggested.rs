//! What the app asks a model for itself, through `flowgate serve --models` in front of the mock
//! upstream: suggested questions after an answer (`GET /v1/messages/{id}/suggested`), whose
//! expected prompt below is the one Dify's `LLMGenerator.generate_suggested_questions_after_answer`
//! builds (the latest three turns as `Human:`/`Assistant:` lines, Dify's instruction, then
//! `questions:`), and a conversation's generated name (`POST /v1/conversations/{id}/name`,
//! Dify's `generate_conversation_name`).

use flowgate_mock_upstream::{Behaviour, MockUpstream};
use serde_json::{Value, json};

use crate::basic_apps::models_file;
use crate::harness::{Deployment, http, repo_root};

const DIFY_INSTRUCTION: &str = "Please help me predict the three most likely questions that human would ask, and keep each question under 20 characters.\nMAKE SURE your output is the SAME language as the Assistant's latest response. The output must be an array in JSON format following the specified schema:\n[\"question1\",\"question2\",\"question3\"]\n";

#[test]
fn questions_after_an_answer_are_asked_of_the_default_model_as_dify_asks() {
    let mock = MockUpstream::start().unwrap();
    mock.script(
        "up",
        vec![
            Behaviour::reply("<think>They might ask [more]</think>\n[\"Why so?\", \"What next?\", 3, \"Where?\"]"),
            Behaviour::error(400, "invalid_request_error", "the model refused the prompt"),
            Behaviour::reply("Sorry, I have no questions."),
        ],
    );
    let deployment = Deployment::sqlite("suggested");
    let models_file = models_file(&deployment, &mock);
    let import = |file: &str| {
        deployment.import(repo_root().join("tests/service").join(file).to_str().unwrap())["api_key"].as_str().unwrap().to_owned()
    };
    let (key, disabled_key) = (import("suggested-chatflow.yml"), import("chatflow.yml"));
    let server = deployment.serve(&["--models", models_file.to_str().unwrap()]);
    let chat = |key: &str, body: Value| {
        let (status, answer) = http(&server.address, "POST", "/v1/chat-messages", Some(key), Some(&body.to_string()));
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str::<Value>(&answer).unwrap()
    };
    let suggested = |key: &str, message_id: &str, user: &str| {
        let (status, body) = http(&server.address, "GET", &format!("/v1/messages/{message_id}/suggested?user={user}"), Some(key), None);
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };

    let mut conversation = Value::String(String::new());
    let mut last = Value::Null;
    for query in ["q1", "q2", "q3", "q4"] {
        last =
            chat(&key, json!({"query": query, "inputs": {}, "user": "ada", "conversation_id": conversation, "response_mode": "blocking"}));
        conversation = last["conversation_id"].clone();
    }
    let message_id = last["message_id"].as_str().unwrap().to_owned();
    assert!(mock.received().is_empty(), "the chatflow itself calls no model");

    let (status, body) = suggested(&key, &message_id, "ada");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"result": "success", "data": ["Why so?", "What next?", "Where?"]}), "reasoning dropped, non-strings skipped");
    let request = &mock.received()[0].body;
    let prompt = format!(
        "Human: q2\nAssistant: Answer to q2\nHuman: q3\nAssistant: Answer to q3\nHuman: q4\nAssistant: Answer to q4\n{DIFY_INSTRUCTION}\nquestions:\n"
    );
    assert_eq!(request["messages"], json!([{"role": "user", "content": prompt}]));
    assert_eq!(request["max_tokens"], 256, "{request}");
    assert_eq!(request["temperature"], 0.0, "{request}");

    // A failing model and an answer without a list give no questions, as in Dify.
    for _ in 0..2 {
        assert_eq!(suggested(&key, &message_id, "ada"), (200, json!({"result": "success", "data": []})));
    }
    assert_eq!(mock.received().len(), 3);

    // Someone else's message, or no message at all, is not found; nothing is asked.
    for (message, user) in [(message_id.as_str(), "mallory"), ("00000000-0000-4000-8000-000000000000", "ada"), ("nope", "ada")] {
        let (status, body) = suggested(&key, message, user);
        assert_eq!((status, &body["code"], &body["message"]), (404, &json!("not_found"), &json!("Message Not Exists.")), "{body}");
    }
    let (status, body) = suggested(&key, &message_id, "");
    assert_eq!((status, &body["code"]), (400, &json!("invalid_param")), "{body}");

    // An app without the feature refuses, as Dify does.
    let other = chat(&disabled_key, json!({"query": "hi", "inputs": {"topic": "t"}, "user": "ada", "response_mode": "blocking"}));
    let (status, body) = suggested(&disabled_key, other["message_id"].as_str().unwrap(), "ada");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "app_suggested_questions_after_answer_disabled");
    assert_eq!(mock.received().len(), 3, "a refused request asks no model");
}

#[test]
fn a_generated_conversation_name_is_the_models_output_or_the_name_it_had() {
    let mock = MockUpstream::start().unwrap();
    mock.script(
        "up",
        vec![
            Behaviour::reply(
                "```json\n{\"Language Type\": \"English\", \"Your Reasoning\": \"soup\", \"Your Output\": \"Cold soup 🍲\"}\n```",
            ),
            Behaviour::error(400, "invalid_request_error", "the model refused the prompt"),
        ],
    );
    let deployment = Deployment::sqlite("conversation-name");
    let models_file = models_file(&deployment, &mock);
    let key = deployment.import(repo_root().join("tests/service/suggested-chatflow.yml").to_str().unwrap())["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = deployment.serve(&["--models", models_file.to_str().unwrap()]);
    let body = json!({"query": "My soup\nis cold", "inputs": {}, "user": "ada", "response_mode": "blocking"});
    let (status, answer) = http(&server.address, "POST", "/v1/chat-messages", Some(&key), Some(&body.to_string()));
    assert_eq!(status, 200, "{answer}");
    let conversation = serde_json::from_str::<Value>(&answer).unwrap()["conversation_id"].as_str().unwrap().to_owned();
    let rename = || {
        let body = json!({"auto_generate": true, "user": "ada"}).to_string();
        let (status, body) = http(&server.address, "POST", &format!("/v1/conversations/{conversation}/name"), Some(&key), Some(&body));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["name"].clone()
    };
    assert_eq!(rename(), "Cold soup 🍲");
    let prompt = mock.received()[0].body["messages"][0]["content"].as_str().unwrap().to_owned();
    assert!(prompt.starts_with("You are asked to generate a concise chat title by decomposing the user’s input"), "{prompt}");
    assert!(prompt.ends_with("\"Your Output\": \"<Intention + Subject>\"\n}\n\nUser Input:\nMy soup is cold\n"), "{prompt}");
    assert_eq!(mock.received()[0].body["max_tokens"], 500);
    // A failed call keeps the name, as in Dify.
    assert_eq!(rename(), "Cold soup 🍲");
    assert_eq!(mock.received().len(), 2);
}
