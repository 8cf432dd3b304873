//! Routing, fallback, cooldowns and key rotation through real HTTP to mock upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate_mock_upstream::{Behaviour, EngineMetrics, MockUpstream, StreamFailure};
use flowgate_models::config::GatewayConfig;
use flowgate_models::openai::text_messages;
use flowgate_models::{ChatRequest, ErrorClass, Gateway, GatewayError, StreamEvent};

fn gateway(yaml: &str) -> Arc<Gateway> {
    let config = GatewayConfig::parse(yaml, &|name| Some(format!("key-{name}"))).unwrap();
    Arc::new(Gateway::new(config, &flowgate_models::http_client().unwrap()).unwrap())
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::chat(String::new(), text_messages(&[("user", text)]), Default::default())
}

fn target(mock: &MockUpstream, model: &str, extra: &str) -> String {
    format!("      - {{provider: openai_compatible, model: {model}, base_url: '{}'{extra}}}\n", mock.base_url())
}

#[tokio::test]
async fn weighted_round_robin_splits_by_weight() {
    let (a, b) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
    let gateway =
        gateway(&format!("models:\n  - name: m\n    targets:\n{}{}", target(&a, "x", ", weight: 1"), target(&b, "x", ", weight: 3")));
    for _ in 0..40 {
        gateway.chat("m", &ask("hi")).await.unwrap();
    }
    assert_eq!((a.requests_for("x"), b.requests_for("x")), (10, 30));
}

#[tokio::test]
async fn an_overloaded_target_is_skipped_and_cooled_down() {
    let (a, b) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
    a.script("x", vec![Behaviour::error(503, "", "overloaded")]);
    let gateway = gateway(&format!("models:\n  - name: m\n    targets:\n{}{}", target(&a, "x", ""), target(&b, "x", "")));
    for _ in 0..10 {
        let served = gateway.chat("m", &ask("hi")).await.unwrap();
        assert_eq!(served.value.content, "Hello from the mock upstream.");
        assert!(served.target.contains(&b.address), "{}", served.target);
    }
    assert_eq!(a.requests_for("x"), 1, "after one 503 the target is left alone for its cooldown");
}

#[tokio::test]
async fn a_429_cools_the_key_until_retry_after_and_the_next_key_is_used_without_waiting() {
    let mock = MockUpstream::start().unwrap();
    // The first request (key 1) is limited for 30 s; everything after succeeds.
    mock.script("x", vec![Behaviour::rate_limited("30"), Behaviour::reply("ok")]);
    let gateway = gateway(&format!("models:\n  - name: m\n    targets:\n{}", target(&mock, "x", ", api_keys: ['${ONE}', '${TWO}']")));
    let started = Instant::now();
    for _ in 0..6 {
        assert_eq!(gateway.chat("m", &ask("hi")).await.unwrap().value.content, "ok");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "nobody slept for Retry-After");
    let keys: Vec<String> = mock.received().iter().map(|request| request.authorization.clone().unwrap()).collect();
    assert_eq!(keys[0], "Bearer key-ONE");
    assert!(keys[1..].iter().all(|key| key == "Bearer key-TWO"), "the limited key rests: {keys:?}");
}

#[tokio::test]
async fn keys_rotate() {
    let mock = MockUpstream::start().unwrap();
    let gateway = gateway(&format!("models:\n  - name: m\n    targets:\n{}", target(&mock, "x", ", api_keys: ['${ONE}', '${TWO}']")));
    for _ in 0..4 {
        gateway.chat("m", &ask("hi")).await.unwrap();
    }
    let keys: Vec<String> = mock.received().iter().map(|request| request.authorization.clone().unwrap()).collect();
    assert_eq!(keys, ["Bearer key-ONE", "Bearer key-TWO", "Bearer key-ONE", "Bearer key-TWO"]);
}

#[tokio::test]
async fn fallback_models_serve_when_every_target_fails_and_for_long_prompts() {
    let (main, backup) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
    main.script("down", vec![Behaviour::error(502, "", "bad gateway")]);
    main.script("small", vec![Behaviour::error(400, "context_length_exceeded", "maximum context length is 8192 tokens")]);
    let yaml = format!(
        "models:\n  - name: primary\n    targets:\n{}    fallbacks: [backup]\n  - name: short\n    targets:\n{}{}    fallbacks: [backup]\n  - name: backup\n    targets:\n{}",
        target(&main, "down", ""),
        target(&main, "small", ""),
        target(&main, "small", ""),
        target(&backup, "big", "")
    );
    let gateway = gateway(&yaml);
    let served = gateway.chat("primary", &ask("hi")).await.unwrap();
    assert_eq!((served.model.as_str(), served.attempts), ("backup", 2));
    let served = gateway.chat("short", &ask("a very long prompt")).await.unwrap();
    assert_eq!(served.model, "backup");
    assert_eq!(main.requests_for("small"), 1, "a context error skips the model's other targets (same window)");
}

#[tokio::test]
async fn a_bad_request_is_final() {
    let (a, b) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
    a.script("x", vec![Behaviour::error(400, "invalid_value", "temperature must be at most 2")]);
    b.script("x", vec![Behaviour::error(400, "invalid_value", "temperature must be at most 2")]);
    let gateway = gateway(&format!("models:\n  - name: m\n    targets:\n{}{}", target(&a, "x", ""), target(&b, "x", "")));
    let error = gateway.chat("m", &ask("hi")).await.err().unwrap();
    assert!(matches!(&error, GatewayError::Failed { last, attempts: 1 } if last.class == ErrorClass::BadRequest), "{error}");
    assert_eq!(a.requests_for("x") + b.requests_for("x"), 1);
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_token_falls_back_one_that_fails_after_does_not() {
    let (a, b) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
    a.script("x", vec![Behaviour::reply("lost").failing(StreamFailure::BeforeFirstToken)]);
    b.script("x", vec![Behaviour::reply("from b")]);
    let gateway = gateway(&format!(
        "models:\n  - name: m\n    routing: least_in_flight\n    targets:\n{}{}",
        target(&a, "x", ""),
        target(&b, "x", "")
    ));
    // Between two idle targets the choice is random: serve until `a` has been tried once (its
    // stream fails before the first token and `b` answers instead), then `a` cools down and
    // serves nothing more.
    let mut streams = 0;
    while a.requests_for("x") == 0 && streams < 64 {
        let mut served = gateway.chat_stream("m", &ask("hi")).await.unwrap();
        assert_eq!(served.value.next().await.unwrap().unwrap(), StreamEvent::Text("from ".into()));
        streams += 1;
    }
    for _ in 0..3 {
        let mut served = gateway.chat_stream("m", &ask("hi")).await.unwrap();
        assert_eq!(served.value.next().await.unwrap().unwrap(), StreamEvent::Text("from ".into()));
    }
    assert_eq!(a.requests_for("x"), 1);

    let c = MockUpstream::start().unwrap();
    c.script("y", vec![Behaviour::reply("one two three").failing(StreamFailure::AfterTokens(1))]);
    let gateway = self::gateway(&format!("models:\n  - name: m\n    targets:\n{}{}", target(&c, "y", ""), target(&b, "y", "")));
    let mut served = gateway.chat_stream("m", &ask("hi")).await.unwrap();
    assert!(served.target.contains(&c.address));
    assert_eq!(served.value.next().await.unwrap().unwrap(), StreamEvent::Text("one ".into()));
    assert_eq!(
        served.value.next().await.unwrap().unwrap_err().class,
        ErrorClass::Connection,
        "the client already has tokens: no silent switch"
    );
}

#[tokio::test]
async fn least_in_flight_and_latency_prefer_the_faster_target() {
    for routing in ["least_in_flight", "latency"] {
        let (slow, fast) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
        slow.script("x", vec![Behaviour::reply("slow").latency(Duration::from_millis(150))]);
        let gateway = gateway(&format!(
            "models:\n  - name: m\n    routing: {routing}\n    targets:\n{}{}",
            target(&slow, "x", ""),
            target(&fast, "x", "")
        ));
        let mut calls = Vec::new();
        for _ in 0..60 {
            let gateway = gateway.clone();
            calls.push(tokio::spawn(async move { gateway.chat("m", &ask("hi")).await.unwrap() }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for call in calls {
            call.await.unwrap();
        }
        let (to_slow, to_fast) = (slow.requests_for("x"), fast.requests_for("x"));
        assert!(to_fast >= 45, "{routing}: slow {to_slow}, fast {to_fast}");
    }
}

#[tokio::test]
async fn prefix_affinity_keeps_a_conversation_on_one_target_and_spreads_others() {
    let mocks: Vec<MockUpstream> = (0..3).map(|_| MockUpstream::start().unwrap()).collect();
    let targets: String = mocks.iter().map(|mock| target(mock, "x", "")).collect();
    let gateway = gateway(&format!("models:\n  - name: m\n    routing: prefix_affinity\n    targets:\n{targets}"));
    let which = |served: &flowgate_models::Served<_>| mocks.iter().position(|mock| served.target.contains(&mock.address)).unwrap();
    let mut homes = std::collections::HashSet::new();
    for conversation in 0..12 {
        let system = format!("You are assistant number {conversation}. Long shared system prompt.");
        let mut request = ChatRequest {
            model: String::new(),
            messages: text_messages(&[("system", &system), ("user", "first question")]),
            parameters: Default::default(),
            completion: false,
        };
        let home = which(&gateway.chat("m", &request).await.unwrap());
        homes.insert(home);
        for turn in 0..4 {
            request.messages.push(flowgate_models::Message::text("assistant", "an answer"));
            request.messages.push(flowgate_models::Message::text("user", &format!("follow-up {turn}")));
            assert_eq!(which(&gateway.chat("m", &request).await.unwrap()), home, "conversation {conversation} turn {turn}");
        }
    }
    assert!(homes.len() >= 2, "different conversations spread over targets: {homes:?}");
}

#[tokio::test]
async fn engine_metrics_routing_avoids_the_queued_engine() {
    let (busy, idle) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
    busy.set_metrics(EngineMetrics { requests_running: 8.0, requests_waiting: 12.0, kv_cache_usage: 0.95 });
    idle.set_metrics(EngineMetrics { requests_running: 1.0, requests_waiting: 0.0, kv_cache_usage: 0.2 });
    let extra = |mock: &MockUpstream| format!(", metrics_url: 'http://{}/metrics'", mock.address);
    let gateway = gateway(&format!(
        "models:\n  - name: m\n    routing: engine_metrics\n    targets:\n{}{}",
        target(&busy, "x", &extra(&busy)),
        target(&idle, "x", &extra(&idle))
    ));
    let scraper = gateway.start_scraper(flowgate_models::http_client().unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        gateway.chat("m", &ask("hi")).await.unwrap();
    }
    assert_eq!((busy.requests_for("x"), idle.requests_for("x")), (0, 20));
    // When the queue moves, so does the traffic.
    busy.set_metrics(EngineMetrics::default());
    idle.set_metrics(EngineMetrics { requests_running: 8.0, requests_waiting: 30.0, kv_cache_usage: 0.99 });
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..10 {
        gateway.chat("m", &ask("hi")).await.unwrap();
    }
    assert_eq!(busy.requests_for("x"), 10);
    scraper.abort();
}

#[tokio::test]
async fn azure_deployments_get_their_url_and_header() {
    let mock = MockUpstream::start().unwrap();
    let yaml = format!(
        "models:\n  - name: m\n    targets:\n      - {{provider: azure, model: gpt-4o, deployment: prod-4o, api_version: '2024-10-21', base_url: 'http://{}', api_keys: ['${{AZ}}']}}\n",
        mock.address
    );
    gateway(&yaml).chat("m", &ask("hi")).await.unwrap();
    let sent = &mock.received()[0];
    assert_eq!(sent.path, "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21");
    assert_eq!(sent.authorization.as_deref(), Some("key-AZ"));
}

#[tokio::test]
async fn when_every_target_cools_down_the_error_says_when_to_retry() {
    let mock = MockUpstream::start().unwrap();
    mock.script("x", vec![Behaviour::rate_limited("20")]);
    let gateway = gateway(&format!("models:\n  - name: m\n    targets:\n{}", target(&mock, "x", "")));
    let first = gateway.chat("m", &ask("hi")).await.err().unwrap();
    assert!(matches!(first.class(), Some(ErrorClass::RateLimited { .. })), "{first}");
    match gateway.chat("m", &ask("hi")).await.err().unwrap() {
        GatewayError::NoTarget { retry_after, .. } => assert!(retry_after > Duration::from_secs(15), "{retry_after:?}"),
        other => panic!("{other}"),
    }
    assert_eq!(mock.requests_for("x"), 1, "a cooled-down key is not called");
}

#[tokio::test]
async fn the_in_process_cache_keeps_answers_of_caching_models_only() {
    let mock = MockUpstream::start().unwrap();
    let gateway = gateway(&format!(
        "models:\n  - name: cached\n    cache: {{ttl_seconds: 1}}\n    targets:\n{}  - name: fresh\n    targets:\n{}",
        target(&mock, "x", ""),
        target(&mock, "x", "")
    ));
    for model in ["cached", "fresh"] {
        assert!(gateway.cached(model, &ask("q")).await.is_none());
        let served = gateway.chat(model, &ask("q")).await.unwrap();
        gateway.remember(model, &ask("q"), &served.value).await;
    }
    let hit = gateway.cached("cached", &ask("q")).await.expect("a caching model keeps its answer");
    assert_eq!(hit.content, "Hello from the mock upstream.");
    assert_eq!(hit.usage.unwrap().total_tokens, 0, "a cached answer used no upstream tokens");
    assert!(gateway.cached("fresh", &ask("q")).await.is_none(), "models opt in");
    assert!(gateway.cached("cached", &ask("another question")).await.is_none());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(gateway.cached("cached", &ask("q")).await.is_none(), "entries expire after their TTL");
}
