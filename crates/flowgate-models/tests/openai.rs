//! The OpenAI-compatible adapter against the mock upstream, over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowgate_mock_upstream::{Behaviour, MockUpstream, StreamFailure};
use flowgate_models::openai::text_messages;
use flowgate_models::{ChatRequest, ErrorClass, OpenAiTarget, StreamEvent, Timeouts, TokenUsage};
use serde_json::json;

fn target(mock: &MockUpstream) -> OpenAiTarget {
    OpenAiTarget::new("mock", &mock.base_url(), Some("sk-test-secret".into()), flowgate_models::http_client().unwrap())
}

fn request(model: &str, text: &str) -> ChatRequest {
    let mut parameters = serde_json::Map::new();
    parameters.insert("temperature".into(), json!(0.2));
    parameters.insert("max_tokens".into(), json!(64));
    ChatRequest::chat(model.into(), text_messages(&[("system", "Be brief."), ("user", text)]), parameters)
}

#[tokio::test]
async fn a_blocking_answer_comes_back_with_usage_and_the_request_goes_out_whole() {
    let mock = MockUpstream::start().unwrap();
    mock.script("gpt-test", vec![Behaviour::reply("Four words of answer.").reasoning("thinking hard")]);
    let answer = target(&mock).chat(&request("gpt-test", "What is it?"), Timeouts::default()).await.unwrap();
    assert_eq!(answer.content, "Four words of answer.");
    assert_eq!(answer.reasoning, "thinking hard");
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    // "Be brief." (9) + "What is it?" (11) characters: 20 / 4 = 5 prompt tokens.
    assert_eq!(answer.usage, Some(TokenUsage { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 }));
    let sent = &mock.received()[0];
    assert_eq!(sent.authorization.as_deref(), Some("Bearer sk-test-secret"));
    assert_eq!(sent.body["temperature"], json!(0.2));
    assert_eq!(sent.body["max_tokens"], json!(64));
    assert_eq!(sent.body["stream"], json!(false));
    assert_eq!(sent.body["messages"][1], json!({"role": "user", "content": "What is it?"}));
}

#[tokio::test]
async fn a_stream_arrives_token_by_token_with_usage_asked_for() {
    let mock = MockUpstream::start().unwrap();
    mock.script("gpt-test", vec![Behaviour::reply("one two three").between_tokens(Duration::from_millis(5))]);
    let mut stream = target(&mock).chat_stream(&request("gpt-test", "count"), Timeouts::default()).await.unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    assert_eq!(
        events,
        vec![
            StreamEvent::Text("one ".into()),
            StreamEvent::Text("two ".into()),
            StreamEvent::Text("three".into()),
            StreamEvent::Finish("stop".into()),
            StreamEvent::Usage(TokenUsage { prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 }),
        ]
    );
    assert_eq!(mock.received()[0].body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn upstream_errors_are_classified() {
    let mock = MockUpstream::start().unwrap();
    mock.script("limited", vec![Behaviour::rate_limited("7")]);
    mock.script("down", vec![Behaviour::error(503, "", "Service Unavailable")]);
    mock.script("small", vec![Behaviour::error(400, "context_length_exceeded", "This model's maximum context length is 4096 tokens.")]);
    mock.script("refused", vec![Behaviour::error(401, "invalid_api_key", "Incorrect API key provided")]);
    let target = target(&mock);
    let class = |model: &'static str| {
        let target = target.clone();
        async move { target.chat(&request(model, "hi"), Timeouts::default()).await.unwrap_err() }
    };
    let limited = class("limited").await;
    assert_eq!(limited.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(7)) });
    assert_eq!(limited.status, Some(429));
    assert_eq!(class("down").await.class, ErrorClass::Overloaded);
    assert_eq!(class("small").await.class, ErrorClass::ContextTooLong);
    let refused = class("refused").await;
    assert_eq!(refused.class, ErrorClass::Auth);
    assert!(!refused.to_string().contains("sk-test-secret"), "errors never carry the key: {refused}");
}

#[tokio::test]
async fn a_stream_that_dies_before_its_first_token_fails_at_the_start() {
    let mock = MockUpstream::start().unwrap();
    mock.script("flaky", vec![Behaviour::reply("never sent").failing(StreamFailure::BeforeFirstToken)]);
    let error = target(&mock).chat_stream(&request("flaky", "hi"), Timeouts::default()).await.err().unwrap();
    assert_eq!(error.class, ErrorClass::Connection);
    assert!(error.class.is_retryable());
}

#[tokio::test]
async fn a_stream_that_dies_after_tokens_delivers_them_then_the_error() {
    let mock = MockUpstream::start().unwrap();
    mock.script("flaky", vec![Behaviour::reply("a b c d e").failing(StreamFailure::AfterTokens(2))]);
    let mut stream = match target(&mock).chat_stream(&request("flaky", "hi"), Timeouts::default()).await {
        Ok(stream) => stream,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(stream.next().await.unwrap().unwrap(), StreamEvent::Text("a ".into()));
    assert_eq!(stream.next().await.unwrap().unwrap(), StreamEvent::Text("b ".into()));
    assert_eq!(stream.next().await.unwrap().unwrap_err().class, ErrorClass::Connection);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn first_token_and_total_timeouts_are_separate() {
    let mock = MockUpstream::start().unwrap();
    mock.script("slow-start", vec![Behaviour::reply("late").first_token(Duration::from_millis(400))]);
    mock.script("slow-body", vec![Behaviour::reply("a b c d e f").between_tokens(Duration::from_millis(100))]);
    let target = target(&mock);
    let timeouts = Timeouts { first_token: Duration::from_millis(150), total: Duration::from_millis(300) };
    let started = std::time::Instant::now();
    let error = target.chat_stream(&request("slow-start", "hi"), timeouts).await.err().unwrap();
    assert_eq!(error.class, ErrorClass::Timeout);
    assert!(started.elapsed() < Duration::from_millis(380), "gave up at the first-token deadline: {:?}", started.elapsed());

    // The first token is quick, the whole answer is not.
    let mut stream = target.chat_stream(&request("slow-body", "hi"), timeouts).await.unwrap();
    let mut failure = None;
    while let Some(event) = stream.next().await {
        if let Err(error) = event {
            failure = Some(error);
        }
    }
    assert_eq!(failure.unwrap().class, ErrorClass::Timeout);
}

#[tokio::test]
async fn embeddings_pass_through() {
    let mock = MockUpstream::start().unwrap();
    let answer =
        target(&mock).embeddings(&json!({"model": "embed", "input": ["a", "b"], "dimensions": 4}), Timeouts::default()).await.unwrap();
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert_eq!(answer["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let norm: f64 = answer["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-9, "a unit vector, as OpenAI's are");
}

/// A completion-mode model is asked on `/completions` with the prompt as text, as Dify's
/// plugins ask base models; streamed and not, its text comes back as the answer.
#[tokio::test]
async fn a_completion_model_is_asked_on_the_completions_api() {
    let mock = MockUpstream::start().unwrap();
    mock.script("base-model", vec![Behaviour::reply("Once upon a time").reporting(6, 4), Behaviour::reply("the end")]);
    let mut request =
        ChatRequest::chat("base-model".into(), text_messages(&[("user", "Human: Tell a story\nAssistant: ")]), Default::default());
    request.completion = true;
    request.parameters.insert("stop".into(), json!(["\nHuman:"]));
    let target = target(&mock);
    let answer = target.chat(&request, Timeouts::default()).await.unwrap();
    assert_eq!(answer.content, "Once upon a time");
    assert_eq!(answer.usage, Some(TokenUsage { prompt_tokens: 6, completion_tokens: 4, total_tokens: 10 }));
    let mut stream = target.chat_stream(&request, Timeouts::default()).await.unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    assert_eq!(events[..3], [StreamEvent::Text("the ".into()), StreamEvent::Text("end".into()), StreamEvent::Finish("stop".into())]);
    assert!(matches!(events[3], StreamEvent::Usage(_)), "{events:?}");
    for sent in mock.received() {
        assert_eq!(sent.path, "/v1/completions");
        assert_eq!(sent.body["prompt"], "Human: Tell a story\nAssistant: ");
        assert_eq!(sent.body["stop"], json!(["\nHuman:"]));
        assert!(sent.body.get("messages").is_none());
    }
}
