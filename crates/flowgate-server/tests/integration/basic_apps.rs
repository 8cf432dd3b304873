//! The basic editor's apps (modes `chat`, `agent-chat` and `completion`, which carry a `model_config` and no
//! graph) served through `flowgate serve --models` in front of the mock upstream and driven by
//! Dify's official SDK. The prompts that reach the model are checked against Dify's rules:
//! `SimplePromptTransform` and `AdvancedPromptTransform` for chat apps (with the
//! `common_chat.json` prompt file), and the graph Dify's `WorkflowConverter` builds for
//! completion apps. Each expected body below was worked out by hand from those sources.

use std::process::Command;

use flowgate_mock_upstream::{Behaviour, MockUpstream};
use serde_json::json;

use crate::harness::{Deployment, repo_root};

const REPLIES: [&str; 9] = [
    "Arr, ahoy.",
    "Buried deep.",
    "Hello.",
    "Hello again.",
    "Bonjour to you.",
    "Bonjour",
    "Au revoir, mon ami",
    "Happy to help with Rust.",
    "Still here.",
];

/// A models file whose one logical model (the default) is the mock's model `up`.
pub(crate) fn models_file(deployment: &Deployment, mock: &MockUpstream) -> std::path::PathBuf {
    std::fs::create_dir_all(&deployment.data_dir).unwrap();
    let path = deployment.data_dir.join("models.yaml");
    std::fs::write(
        &path,
        format!(
            "models:\n  - name: main\n    targets:\n      - {{provider: openai_compatible, model: up, base_url: '{}'}}\ndefault: main\n",
            mock.base_url()
        ),
    )
    .unwrap();
    path
}

#[test]
fn basic_editor_apps_send_difys_prompts_and_answer_over_the_service_api() {
    let mock = MockUpstream::start().unwrap();
    mock.script("up", REPLIES.iter().map(|reply| Behaviour::reply(reply)).collect());
    let deployment = Deployment::sqlite("basic-apps");
    let models_file = models_file(&deployment, &mock);
    let key = |file: &str| {
        let path = repo_root().join("tests/service/basic-apps").join(file);
        deployment.import(path.to_str().unwrap())["api_key"].as_str().unwrap().to_owned()
    };
    let keys = json!({
        "chat": key("chat.yml"),
        "transcript": key("chat-completion-model.yml"),
        "expert": key("chat-advanced.yml"),
        "completion": key("completion.yml"),
        "agent": key("agent.yml"),
    });
    let server = deployment.serve(&["--models", models_file.to_str().unwrap()]);
    let python = crate::sdk::sdk_python("official");
    let output = Command::new(python)
        .arg(repo_root().join("tests/service/basic_apps_sdk_test.py"))
        .env("FLOWGATE_URL", server.url())
        .env("FLOWGATE_KEYS", keys.to_string())
        .env("FLOWGATE_REPLIES", json!(REPLIES).to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "basic_apps_sdk_test.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let paths: Vec<String> = mock.received().into_iter().map(|request| request.path).collect();
    let received: Vec<serde_json::Value> = mock.received().into_iter().map(|request| request.body).collect();
    assert_eq!(received.len(), REPLIES.len(), "one model call per answer: {received:#?}");
    let messages = |index: usize| received[index]["messages"].clone();
    // A completion-mode model's one prompt, sent to `/completions`.
    let prompt = |index: usize| {
        assert_eq!(paths[index], "/v1/completions", "call {index}");
        received[index]["prompt"].clone()
    };
    let stop = |index: usize| received[index].get("stop").cloned();

    // Simple prompt, chat model: pre_prompt + "\n" as the system message, `{{persona}}` from the
    // inputs (slots inside the value defused to `{x}`), an unfilled slot left as `{unknown}`;
    // no stop words at all, not even the model's `completion_params.stop`.
    let system = json!({"role": "system", "content": "You are a pirate {x}. Ignore {unknown}.\n"});
    assert_eq!(messages(0), json!([system, {"role": "user", "content": "Ahoy"}]));
    assert_eq!(stop(0), None);
    // The second turn keeps the conversation's first inputs and puts the earlier turn between.
    assert_eq!(
        messages(1),
        json!([
            system,
            {"role": "user", "content": "Ahoy"},
            {"role": "assistant", "content": REPLIES[0]},
            {"role": "user", "content": "Where is it?"},
        ])
    );

    // Simple prompt, completion model: one prompt on the completions API, the query in
    // common_chat.json's query_prompt, its stop words; from the second turn on, the histories
    // block.
    assert_eq!(prompt(2), json!("Be brief.\n\n\nHuman: Hi\n\nAssistant: "));
    assert_eq!(stop(2), Some(json!(["\nHuman:", "</histories>"])));
    let second = format!(
        "Be brief.\nHere is the chat histories between human and assistant, inside <histories></histories> XML tags.\n\n\
         <histories>\nHuman: Hi\nAssistant: {}\n</histories>\n\n\n\nHuman: Again\n\nAssistant: ",
        REPLIES[2]
    );
    assert_eq!(prompt(3), json!(second));

    // Expert mode, chat model: the messages as written (a missing input is empty, an empty
    // context is empty, `<|...|>` special tokens are removed), then the query; the model's stop.
    assert_eq!(
        messages(4),
        json!([
            {"role": "system", "content": "Answer in . Context: ."},
            {"role": "assistant", "content": "Understood."},
            {"role": "user", "content": "Bonjour"},
        ])
    );
    assert_eq!(stop(4), Some(json!(["END"])));

    // Completion app: the converter's llm node, pre_prompt + "\n" as the user's message.
    assert_eq!(messages(5), json!([{"role": "user", "content": "Translate to French: hello\n"}]));
    assert_eq!(received[5]["max_tokens"], 64);
    assert_eq!(messages(6), json!([{"role": "user", "content": "Translate to French: bye\n"}]));

    // Agent app, function calling, its tool switched off: the chat app's prompt (the rendered
    // system prompt, the query), but the model's own stop words; the next turn carries the
    // conversation (the query, and the answer the agent thought).
    let system = json!({"role": "system", "content": "You help with Rust.\n"});
    assert_eq!(messages(7), json!([system, {"role": "user", "content": "Hi agent"}]));
    assert_eq!(stop(7), Some(json!(["END"])));
    assert_eq!(received[7].get("tools"), None, "no tools are offered");
    assert_eq!(
        messages(8),
        json!([system, {"role": "user", "content": "Hi agent"}, {"role": "assistant", "content": REPLIES[7]}, {"role": "user", "content": "And again"}])
    );
}

/// An app using what flowgate cannot run yet imports with a warning and is refused when run,
/// naming the feature.
#[test]
fn basic_editor_apps_with_unsupported_features_are_refused_by_name() {
    let deployment = Deployment::sqlite("basic-apps-unsupported");
    let dir = deployment.data_dir.join("dsl");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("moderated.yml");
    std::fs::write(
        &file,
        "app: {mode: chat, name: moderated}\nmodel_config:\n  model: {provider: openai, name: gpt-4o, mode: chat}\n  pre_prompt: hi\n  \
         sensitive_word_avoidance: {enabled: true, type: keywords, configs: {keywords: bad}}\nversion: 0.1.5\n",
    )
    .unwrap();
    let key = deployment.import(file.to_str().unwrap())["api_key"].as_str().unwrap().to_owned();
    let server = deployment.serve(&[]);
    let body = r#"{"query": "hi", "inputs": {}, "user": "u"}"#;
    let (status, answer) = crate::harness::http(&server.address, "POST", "/v1/chat-messages", Some(&key), Some(body));
    assert_eq!(status, 400, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["code"], "app_unavailable");
    assert!(
        answer["message"].as_str().unwrap().contains("not supported yet: content moderation (model_config.sensitive_word_avoidance)"),
        "{answer}"
    );
}

/// A question classifier with memory writes the conversation into its system prompt's
/// `<histories>` (graphon's prompt, word for word), from the second turn on.
#[test]
fn a_question_classifier_with_memory_sees_the_conversation() {
    let mock = MockUpstream::start().unwrap();
    mock.script(
        "up",
        vec![
            Behaviour::reply(r#"{"keywords": ["soup"], "category_id": "food", "category_name": "Food"}"#),
            Behaviour::reply(r#"{"keywords": ["waiter"], "category_id": "service", "category_name": "Service"}"#),
        ],
    );
    let deployment = Deployment::sqlite("classifier-memory");
    let models_file = models_file(&deployment, &mock);
    let key = deployment.import(repo_root().join("tests/service/classifier-chatflow.yml").to_str().unwrap())["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = deployment.serve(&["--models", models_file.to_str().unwrap()]);
    let ask = |body: String| {
        let (status, answer) = crate::harness::http(&server.address, "POST", "/v1/chat-messages", Some(&key), Some(&body));
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()
    };
    let first = ask(json!({"query": "My soup is cold", "inputs": {}, "user": "diner"}).to_string());
    assert_eq!(first["answer"], "Sorry about the food.");
    let second =
        ask(json!({"query": "And the waiter ignored us", "inputs": {}, "user": "diner", "conversation_id": first["conversation_id"]})
            .to_string());
    assert_eq!(second["answer"], "Sorry about the service.");

    let received = mock.received();
    let system = |index: usize| received[index].body["messages"][0]["content"].as_str().unwrap().to_owned();
    assert!(system(0).contains("<histories>\n\n</histories>"), "turn 1 has no history: {}", system(0));
    assert!(
        system(1).contains("<histories>\nHuman: My soup is cold\nAssistant: Sorry about the food.\n</histories>"),
        "turn 2 sees turn 1: {}",
        system(1)
    );
    // Two worked examples precede the question, as in graphon's prompt.
    assert_eq!(received[1].body["messages"].as_array().unwrap().len(), 6);
    let question = received[1].body["messages"][5]["content"].as_str().unwrap();
    assert!(question.starts_with("\n    {\"input_text\": [\"And the waiter ignored us\"],"), "{question}");
}
