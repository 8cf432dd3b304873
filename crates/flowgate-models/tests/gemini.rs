//! The Gemini adapter against the mock upstream, over real HTTP: requests become
//! `generateContent` / `streamGenerateContent?alt=sse` / `batchEmbedContents` calls and the
//! answers come back as the one response type, signed function calls included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use flowgate_mock_upstream::{Behaviour, GEMINI_THOUGHT_SIGNATURE, MockUpstream, StreamFailure};
use flowgate_models::config::GatewayConfig;
use flowgate_models::openai::text_messages;
use flowgate_models::{ChatRequest, ErrorClass, Gateway, GeminiTarget, StreamEvent, Timeouts, TokenUsage};
use serde_json::json;

fn target(mock: &MockUpstream) -> GeminiTarget {
    GeminiTarget::new(
        "gemini-mock",
        &format!("http://{}/v1beta", mock.address),
        "AIza-secret".into(),
        flowgate_models::http_client().unwrap(),
    )
}

fn request(text: &str) -> ChatRequest {
    let mut parameters = serde_json::Map::new();
    parameters.insert("max_tokens".into(), json!(50));
    parameters.insert("temperature".into(), json!(0.2));
    parameters.insert("stop".into(), json!(["END"]));
    parameters.insert("response_format".into(), json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}));
    parameters.insert("logit_bias".into(), json!({"50256": -100}));
    ChatRequest::chat("gemini-test".into(), text_messages(&[("system", "Be brief."), ("user", text)]), parameters)
}

#[tokio::test]
async fn a_request_becomes_a_generate_content_call_and_the_answer_comes_back() {
    let mock = MockUpstream::start().unwrap();
    mock.script("gemini-test", vec![Behaviour::reply("Short answer here.").reporting(11, 4)]);
    let answer = target(&mock).chat(&request("Question?"), Timeouts::default()).await.unwrap();
    assert_eq!(answer.content, "Short answer here.");
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    assert_eq!(answer.usage, Some(TokenUsage { prompt_tokens: 11, completion_tokens: 4, total_tokens: 15 }));
    let sent = &mock.received()[0];
    assert_eq!(sent.path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(sent.authorization.as_deref(), Some("AIza-secret"), "the key goes in x-goog-api-key, not the URL");
    assert_eq!(sent.body["systemInstruction"], json!({"parts": [{"text": "Be brief."}]}));
    assert_eq!(sent.body["contents"], json!([{"role": "user", "parts": [{"text": "Question?"}]}]));
    assert_eq!(
        sent.body["generationConfig"],
        json!({"maxOutputTokens": 50, "temperature": 0.2, "stopSequences": ["END"],
            "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}})
    );
    assert!(sent.body.get("logit_bias").is_none(), "parameters Gemini lacks are not sent");
}

#[tokio::test]
async fn a_stream_arrives_with_thoughts_and_usage() {
    let mock = MockUpstream::start().unwrap();
    mock.script("gemini-test", vec![Behaviour::reply("alpha beta").reasoning("Thinking.").reporting(3, 2)]);
    let mut stream = target(&mock).chat_stream(&request("Go"), Timeouts::default()).await.unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    assert_eq!(
        events,
        vec![
            StreamEvent::Reasoning("Thinking.".into()),
            StreamEvent::Text("alpha ".into()),
            StreamEvent::Text("beta".into()),
            StreamEvent::Finish("stop".into()),
            StreamEvent::Usage(TokenUsage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }),
        ]
    );
    assert_eq!(mock.received()[0].path, "/v1beta/models/gemini-test:streamGenerateContent");
}

/// A signed function call comes back as a tool call whose id carries the signature; sent back
/// on the next turn, the call goes out with its signature and the tool result as a
/// `functionResponse` naming the function.
#[tokio::test]
async fn a_function_call_keeps_its_thought_signature_across_turns() {
    let mock = MockUpstream::start().unwrap();
    mock.script(
        "gemini-test",
        vec![Behaviour::reply("").calling("extract_parameters", "{\"city\": \"Lyon\", \"n\": 3}"), Behaviour::reply("Done.")],
    );
    let target = target(&mock);
    let mut request = request("Where?");
    request.parameters.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "extract_parameters", "description": "d", "parameters": {"type": "object"}}}]),
    );
    let answer = target.chat_stream(&request, Timeouts::default()).await.unwrap().collect().await.unwrap();
    assert_eq!(answer.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(answer.tool_calls.len(), 1, "{answer:?}");
    let call = &answer.tool_calls[0];
    assert_eq!(call.function.name, "extract_parameters");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&call.function.arguments).unwrap(), json!({"city": "Lyon", "n": 3}));
    assert!(call.id.ends_with(&format!("__thought__{GEMINI_THOUGHT_SIGNATURE}")), "{}", call.id);
    let sent = &mock.received()[0].body;
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "extract_parameters", "description": "d", "parametersJsonSchema": {"type": "object"}}]}])
    );

    request.messages.push(
        serde_json::from_value(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]}))
        .unwrap(),
    );
    request.messages.push(serde_json::from_value(json!({"role": "tool", "content": "{\"ok\": true}", "tool_call_id": call.id})).unwrap());
    let answer = target.chat(&request, Timeouts::default()).await.unwrap();
    assert_eq!(answer.content, "Done.");
    let sent = &mock.received()[1].body;
    assert_eq!(
        sent["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "extract_parameters", "args": {"city": "Lyon", "n": 3}},
            "thoughtSignature": GEMINI_THOUGHT_SIGNATURE}]})
    );
    assert_eq!(
        sent["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "extract_parameters", "response": {"ok": true}}}]})
    );
}

#[tokio::test]
async fn quota_overload_and_cut_streams_are_classified() {
    let mock = MockUpstream::start().unwrap();
    mock.script(
        "gemini-test",
        vec![
            Behaviour::rate_limited("2"),
            Behaviour::error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            Behaviour::error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
            Behaviour::reply("x").failing(StreamFailure::BeforeFirstToken),
        ],
    );
    let target = target(&mock);
    let limited = target.chat(&request("a"), Timeouts::default()).await.unwrap_err();
    assert_eq!(limited.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(2)) }, "from RetryInfo in the body");
    let overloaded = target.chat(&request("a"), Timeouts::default()).await.unwrap_err();
    assert_eq!((overloaded.class.clone(), overloaded.status), (ErrorClass::Overloaded, Some(503)));
    let bad_key = target.chat(&request("a"), Timeouts::default()).await.unwrap_err();
    assert_eq!(bad_key.class, ErrorClass::Auth);
    assert!(!bad_key.to_string().contains("AIza-secret"), "{bad_key}");
    let cut = target.chat_stream(&request("a"), Timeouts::default()).await.err().unwrap();
    assert_eq!(cut.class, ErrorClass::Connection);
}

/// Through the gateway: `provider: gemini` in the models file, chat and embeddings in OpenAI's
/// shape.
#[tokio::test]
async fn the_gateway_serves_gemini_targets_for_chat_and_embeddings() {
    let mock = MockUpstream::start().unwrap();
    mock.script("gemini-test", vec![Behaviour::reply("Bonjour.")]);
    let yaml = format!(
        "models:\n  - name: g\n    targets:\n      - {{provider: gemini, model: gemini-test, base_url: 'http://{}/v1beta', api_keys: ['${{GEMINI_KEY}}']}}\n",
        mock.address
    );
    let config = GatewayConfig::parse(&yaml, &|name| (name == "GEMINI_KEY").then(|| "AIza-from-env".to_owned())).unwrap();
    let gateway = Arc::new(Gateway::new(config, &flowgate_models::http_client().unwrap()).unwrap());
    let served = gateway.chat("g", &request("Salut")).await.unwrap();
    assert_eq!(served.value.content, "Bonjour.");
    assert_eq!(served.target, format!("gemini/gemini-test@{}", mock.address));

    let embeddings = gateway.embeddings("g", &json!({"model": "g", "input": ["one", "two"], "dimensions": 4})).await.unwrap().value;
    assert_eq!(embeddings["object"], "list");
    assert_eq!(embeddings["data"].as_array().unwrap().len(), 2);
    assert_eq!(embeddings["data"][1]["index"], 1);
    assert_eq!(embeddings["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let sent = mock.received().last().unwrap().clone();
    assert_eq!(sent.path, "/v1beta/models/gemini-test:batchEmbedContents");
    assert_eq!(sent.authorization.as_deref(), Some("AIza-from-env"));
    assert_eq!(
        sent.body["requests"][0],
        json!({"model": "models/gemini-test", "content": {"parts": [{"text": "one"}]}, "outputDimensionality": 4})
    );
}

/// Every kind of file goes to Gemini as `inlineData` with its media type.
#[tokio::test]
async fn files_of_every_kind_become_inline_data() {
    let mock = MockUpstream::start().unwrap();
    mock.script("gemini-test", vec![Behaviour::reply("Seen.")]);
    let mut request = request("unused");
    request.messages[1] = serde_json::from_value(json!({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aW1n", "detail": "high"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERg=="}},
        {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
        {"type": "text", "text": "What is in these?"}]}))
    .unwrap();
    assert_eq!(target(&mock).chat(&request, Timeouts::default()).await.unwrap().content, "Seen.");
    assert_eq!(
        mock.received()[0].body["contents"][0]["parts"],
        json!([
            {"inlineData": {"mimeType": "image/png", "data": "aW1n"}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
            {"inlineData": {"mimeType": "audio/mp3", "data": "SUQz"}},
            {"inlineData": {"mimeType": "video/mp4", "data": "AAAA"}},
            {"text": "What is in these?"},
        ])
    );
}
