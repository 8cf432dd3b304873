//! The Anthropic adapter against the mock upstream, over real HTTP: the request is translated
//! to the Messages API and the answer back to the one response type.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowgate_mock_upstream::{Behaviour, MockUpstream, StreamFailure};
use flowgate_models::openai::text_messages;
use flowgate_models::{AnthropicTarget, ChatRequest, ErrorClass, StreamEvent, Timeouts, TokenUsage};
use serde_json::json;

fn target(mock: &MockUpstream) -> AnthropicTarget {
    AnthropicTarget::new(
        "claude-mock",
        &format!("http://{}", mock.address),
        "sk-ant-secret".into(),
        flowgate_models::http_client().unwrap(),
    )
}

fn request(text: &str) -> ChatRequest {
    let mut parameters = serde_json::Map::new();
    parameters.insert("max_completion_tokens".into(), json!(100));
    parameters.insert("max_tokens".into(), json!(50));
    parameters.insert("stop".into(), json!("END"));
    parameters.insert("presence_penalty".into(), json!(0.5));
    ChatRequest::chat("claude-test".into(), text_messages(&[("system", "Be brief."), ("user", text)]), parameters)
}

#[tokio::test]
async fn a_request_becomes_a_messages_call_and_the_answer_comes_back() {
    let mock = MockUpstream::start().unwrap();
    mock.script("claude-test", vec![Behaviour::reply("Short answer here.")]);
    let answer = target(&mock).chat(&request("Question?"), Timeouts::default()).await.unwrap();
    assert_eq!(answer.content, "Short answer here.");
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    assert_eq!(answer.usage, Some(TokenUsage { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 }));
    let sent = &mock.received()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.authorization.as_deref(), Some("sk-ant-secret"), "the key goes in x-api-key");
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Question?"}]}]));
    assert_eq!(sent.body["max_tokens"], 100, "the larger of max_tokens and max_completion_tokens");
    assert_eq!(sent.body["stop_sequences"], json!(["END"]));
    assert!(sent.body.get("presence_penalty").is_none(), "parameters Anthropic lacks are not sent");
}

#[tokio::test]
async fn a_stream_arrives_with_usage() {
    let mock = MockUpstream::start().unwrap();
    mock.script("claude-test", vec![Behaviour::reply("alpha beta")]);
    let mut stream = target(&mock).chat_stream(&request("Go"), Timeouts::default()).await.unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    assert_eq!(
        events,
        vec![
            StreamEvent::Text("alpha ".into()),
            StreamEvent::Text("beta".into()),
            StreamEvent::Finish("stop".into()),
            StreamEvent::Usage(TokenUsage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }),
        ]
    );
}

#[tokio::test]
async fn overloaded_and_cut_streams_are_retryable() {
    let mock = MockUpstream::start().unwrap();
    mock.script(
        "claude-test",
        vec![Behaviour::error(529, "overloaded_error", "Overloaded"), Behaviour::reply("x").failing(StreamFailure::BeforeFirstToken)],
    );
    let target = target(&mock);
    let overloaded = target.chat(&request("a"), Timeouts::default()).await.unwrap_err();
    assert_eq!((overloaded.class.clone(), overloaded.status), (ErrorClass::Overloaded, Some(529)));
    let cut = target.chat_stream(&request("a"), Timeouts::default()).await.err().unwrap();
    assert_eq!(cut.class, ErrorClass::Connection);
    assert!(overloaded.class.is_retryable() && cut.class.is_retryable());
}

/// A tool call streamed as a `tool_use` block with its input in `input_json_delta` pieces
/// comes back as one call with the whole arguments, and the tool messages of the request go
/// out as Anthropic's `tool_use` and `tool_result` blocks.
#[tokio::test]
async fn a_streamed_tool_use_block_becomes_a_tool_call() {
    let mock = MockUpstream::start().unwrap();
    mock.script("claude-test", vec![Behaviour::reply("").calling("extract_parameters", "{\"city\": \"Lyon\", \"n\": 3}")]);
    let mut request = request("Where?");
    request.messages.push(
        serde_json::from_value(json!({"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "extract_parameters", "arguments": "{\"city\": \"SF\"}"}}]}))
        .unwrap(),
    );
    request.messages.push(serde_json::from_value(json!({"role": "tool", "content": "ok", "tool_call_id": "call_1"})).unwrap());
    request.parameters.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "extract_parameters", "description": "d", "parameters": {"type": "object"}}}]),
    );
    let answer = target(&mock).chat_stream(&request, Timeouts::default()).await.unwrap().collect().await.unwrap();
    assert_eq!(answer.tool_calls.len(), 1, "{answer:?}");
    assert_eq!(answer.tool_calls[0].id, flowgate_mock_upstream::TOOL_CALL_ID);
    assert_eq!(answer.tool_calls[0].function.name, "extract_parameters");
    assert_eq!(answer.tool_calls[0].function.arguments, "{\"city\": \"Lyon\", \"n\": 3}");
    assert_eq!(answer.finish_reason.as_deref(), Some("tool_calls"));
    let sent = &mock.received()[0].body;
    assert_eq!(sent["tools"], json!([{"name": "extract_parameters", "description": "d", "input_schema": {"type": "object"}}]));
    assert_eq!(
        sent["messages"][1]["content"][1],
        json!({"type": "tool_use", "id": "call_1", "name": "extract_parameters", "input": {"city": "SF"}})
    );
    assert_eq!(sent["messages"][2]["content"][0], json!({"type": "tool_result", "tool_use_id": "call_1", "content": "ok"}));
}

/// Files in a prompt: a PDF becomes a base64 `document` block, a text file a text document;
/// audio, which Anthropic cannot read, is refused before anything is sent.
#[tokio::test]
async fn documents_become_document_blocks_and_audio_is_refused_here() {
    let mock = MockUpstream::start().unwrap();
    mock.script("claude-test", vec![Behaviour::reply("Read.")]);
    let mut request = request("unused");
    request.messages[1] = serde_json::from_value(json!({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aW1n", "detail": "low"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERg=="}},
        {"type": "file", "file": {"filename": "n.txt", "file_data": "data:text/plain;base64,bm90ZXM="}},
        {"type": "text", "text": "Read these."}]}))
    .unwrap();
    let target = target(&mock);
    assert_eq!(target.chat(&request, Timeouts::default()).await.unwrap().content, "Read.");
    assert_eq!(
        mock.received()[0].body["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aW1n"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERg=="}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
            {"type": "text", "text": "Read these."},
        ])
    );
    request.messages[1] = serde_json::from_value(
        json!({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}}]}),
    )
    .unwrap();
    let refused = target.chat(&request, Timeouts::default()).await.unwrap_err();
    assert_eq!(refused.class, ErrorClass::BadRequest);
    assert!(refused.message.contains("no audio"), "{refused}");
    assert_eq!(mock.received().len(), 1, "nothing was sent for the refused request");
}

/// Extended thinking: Dify's `thinking` switch with its `thinking_budget` becomes Anthropic's
/// `thinking` object, and OpenAI's `reasoning_effort` a budget.
#[tokio::test]
async fn thinking_parameters_become_a_thinking_budget() {
    let mock = MockUpstream::start().unwrap();
    mock.script("claude-test", vec![Behaviour::reply("Thought about it.")]);
    let target = target(&mock);
    let mut dify = request("Think");
    dify.parameters.insert("thinking".into(), json!(true));
    dify.parameters.insert("thinking_budget".into(), json!(2048));
    target.chat(&dify, Timeouts::default()).await.unwrap();
    let mut openai = request("Think");
    openai.parameters.insert("reasoning_effort".into(), json!("high"));
    target.chat(&openai, Timeouts::default()).await.unwrap();
    let sent = mock.received();
    assert_eq!(sent[0].body["thinking"], json!({"type": "enabled", "budget_tokens": 2048}));
    assert!(sent[0].body.get("thinking_budget").is_none());
    assert_eq!(sent[1].body["thinking"], json!({"type": "enabled", "budget_tokens": 4096}));
    assert_eq!(sent[1].body["max_tokens"], 100, "the client's cap stays");
    let mut uncapped = ChatRequest::chat("claude-test".into(), text_messages(&[("user", "Think")]), serde_json::Map::new());
    uncapped.parameters.insert("reasoning_effort".into(), json!("high"));
    target.chat(&uncapped, Timeouts::default()).await.unwrap();
    assert_eq!(mock.received()[2].body["max_tokens"], 4096 + 4096, "the budget comes on top of the default cap");
}
