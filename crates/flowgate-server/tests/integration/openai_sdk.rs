//! The OpenAI-compatible endpoint driven by OpenAI's Python SDK, unchanged
//! (tests/service/openai_sdk_test.py), through `flowgate serve --models FILE` to mock upstreams
//! over HTTP.

use std::process::Command;

use flowgate_mock_upstream::{Behaviour, MockUpstream};

use crate::harness::{Deployment, repo_root};

const GATEWAY_KEY: &str = "fg-test-gateway-key-0123456789";

#[test]
fn the_openai_sdk_works_against_the_gateway() {
    let (primary, backup) = (MockUpstream::start().unwrap(), MockUpstream::start().unwrap());
    primary.script("main-up", vec![Behaviour::reply("The mock says hello.")]);
    primary.script("flaky-up", vec![Behaviour::error(503, "", "Service Unavailable")]);
    backup.script("flaky-up", vec![Behaviour::reply("Served by the backup.")]);
    primary.script("limited-up", vec![Behaviour::rate_limited("7")]);
    let target = |mock: &MockUpstream, model: &str| {
        format!(
            "      - {{provider: openai_compatible, model: {model}, base_url: '{}', api_keys: ['${{UPSTREAM_KEY}}']}}\n",
            mock.base_url()
        )
    };
    let models = format!(
        "models:\n  - name: main\n    pricing: {{input: 0, output: '1', unit: 0.000001}}\n    targets:\n{}  - name: flaky\n    targets:\n{}{}  - name: limited\n    targets:\n{}gateway_keys:\n  - {{name: tests, key: '${{TEST_GATEWAY_KEY}}'}}\n",
        target(&primary, "main-up"),
        target(&primary, "flaky-up"),
        target(&backup, "flaky-up"),
        target(&primary, "limited-up"),
    );
    let deployment = Deployment::sqlite("openai");
    std::fs::create_dir_all(&deployment.data_dir).unwrap();
    let models_file = deployment.data_dir.join("models.yaml");
    std::fs::write(&models_file, models).unwrap();
    let server = deployment.serve_with_env(
        &["--models", models_file.to_str().unwrap()],
        &[("TEST_GATEWAY_KEY", GATEWAY_KEY), ("UPSTREAM_KEY", "sk-upstream-secret")],
    );

    let python = Command::new(repo_root().join("scripts/sdk-python")).arg("openai").output().unwrap();
    assert!(python.status.success(), "cannot set up the openai SDK: {}", String::from_utf8_lossy(&python.stderr));
    let output = Command::new(String::from_utf8(python.stdout).unwrap().trim())
        .arg(repo_root().join("tests/service/openai_sdk_test.py"))
        .env("FLOWGATE_URL", server.url())
        .env("FLOWGATE_GATEWAY_KEY", GATEWAY_KEY)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openai_sdk_test.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The upstream got the secret from the environment, and our key never left flowgate.
    let sent = primary.received();
    assert!(sent.iter().all(|request| request.authorization.as_deref() == Some("Bearer sk-upstream-secret")));
    assert!(sent.iter().any(|request| request.body["stream_options"]["include_usage"] == true), "usage is always asked of the upstream");
    assert_eq!(primary.requests_for("flaky-up"), 1, "the failing target cooled down after its first 503");

    // What the calls did, in /metrics.
    let (status, metrics) = crate::harness::http(&server.address, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let has = |line: &str| assert!(metrics.lines().any(|candidate| candidate == line), "missing `{line}` in:\n{metrics}");
    let target = |mock: &MockUpstream, model: &str| format!("openai_compatible/{model}@{}", mock.address);
    has(&format!("flowgate_gateway_attempts_total{{model=\"flaky\",target=\"{}\",result=\"overloaded\"}} 1", target(&primary, "flaky-up")));
    has(&format!("flowgate_gateway_attempts_total{{model=\"flaky\",target=\"{}\",result=\"ok\"}} 3", target(&backup, "flaky-up")));
    has(&format!(
        "flowgate_gateway_attempts_total{{model=\"limited\",target=\"{}\",result=\"rate_limited\"}} 1",
        target(&primary, "limited-up")
    ));
    has("flowgate_gateway_requests_total{model=\"flaky\",outcome=\"ok\"} 3");
    has("flowgate_gateway_requests_total{model=\"limited\",outcome=\"error\"} 1");
    // Three chat and two text completions of `main`, 4 completion tokens each (usage is asked
    // of the upstream even when the client did not ask for it).
    has(&format!("flowgate_gateway_tokens_total{{model=\"main\",target=\"{}\",direction=\"completion\"}} 20", target(&primary, "main-up")));
    assert_eq!(
        sent.iter().filter(|request| request.path == "/v1/completions").count(),
        2,
        "text completions use the upstream's completions API"
    );
    assert!(metrics.contains("flowgate_gateway_first_token_seconds_count{model=\"main\""), "{metrics}");
    assert!(metrics.contains("flowgate_gateway_key_requests_total{key=\"tests\"}"), "{metrics}");
    // Spend from `main`'s pricing (a dollar per million completion tokens: 20 tokens), per
    // model and target and per gateway key; the key's tokens count every model it called.
    has(&format!("flowgate_gateway_cost_total{{model=\"main\",target=\"{}\",currency=\"USD\"}} 0.00002", target(&primary, "main-up")));
    has("flowgate_gateway_key_cost_total{key=\"tests\",currency=\"USD\"} 0.00002");
    let key_completion = metrics
        .lines()
        .find_map(|line| line.strip_prefix("flowgate_gateway_key_tokens_total{key=\"tests\",direction=\"completion\"} "))
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no key tokens in:\n{metrics}"));
    assert!(key_completion > 20, "main's 20 and the other models' completion tokens: {key_completion}");
}

#[test]
fn two_servers_share_one_rate_limit_through_redis() {
    let mock = MockUpstream::start().unwrap();
    let rule = format!("shared-{}", uuid::Uuid::new_v4().simple());
    let models = format!(
        "models:\n  - name: main\n    targets:\n      - {{provider: openai_compatible, model: up, base_url: '{}'}}\n\
         gateway_keys:\n  - {{name: tests, key: '{GATEWAY_KEY}'}}\n\
         limits:\n  backend: redis\n  redis_url: redis://127.0.0.1:6379\n  on_redis_error: deny\n  rules:\n\
         \x20   - {{name: {rule}, limit_by: key, requests_per_minute: 12}}\n",
        mock.base_url()
    );
    let deployment = Deployment::postgres("limits");
    std::fs::create_dir_all(&deployment.data_dir).unwrap();
    let models_file = deployment.data_dir.join("models.yaml");
    std::fs::write(&models_file, models).unwrap();
    let servers =
        [deployment.serve(&["--models", models_file.to_str().unwrap()]), deployment.serve(&["--models", models_file.to_str().unwrap()])];
    let body = r#"{"model": "main", "messages": [{"role": "user", "content": "hi"}]}"#;
    let mut passed = 0;
    for attempt in 0..40 {
        let server = &servers[attempt % 2];
        let (status, head, response) =
            crate::harness::request(&server.address, "POST", "/v1/chat/completions", Some(GATEWAY_KEY), "application/json", body);
        match status {
            200 => passed += 1,
            429 => {
                assert!(head.contains("retry-after: "), "{head}");
                assert!(head.contains("x-ratelimit-limit: 12"), "{head}");
                assert!(response.contains("rate_limit_exceeded"), "{response}");
            }
            other => panic!("{other}: {response}"),
        }
    }
    assert_eq!(passed, 12, "across both servers, exactly the limit passes");
    let rejected: u64 = servers
        .iter()
        .map(|server| {
            let (_, metrics) = crate::harness::http(&server.address, "GET", "/metrics", None, None);
            let line = format!("flowgate_gateway_limit_rejections_total{{rule=\"{rule}\"}} ");
            metrics.lines().find_map(|candidate| candidate.strip_prefix(&line)).map_or(0, |count| count.parse().unwrap())
        })
        .sum();
    assert_eq!(rejected, 28, "each refusal is counted once, by the server that refused it");
    assert_eq!(mock.requests_for("up"), 12, "refused calls never reach the upstream");
}

#[test]
fn a_bad_models_file_stops_the_server_naming_the_line() {
    let deployment = Deployment::sqlite("badmodels");
    std::fs::create_dir_all(&deployment.data_dir).unwrap();
    let models_file = deployment.data_dir.join("models.yaml");
    std::fs::write(
        &models_file,
        "models:\n  - name: main\n    targets:\n      - {provider: openai, model: x, api_keys: ['${NOT_SET_ANYWHERE}']}\n",
    )
    .unwrap();
    let output =
        deployment.flowgate().args(["serve", "--listen", "127.0.0.1:0", "--models", models_file.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 4") && stderr.contains("NOT_SET_ANYWHERE is not set"), "{stderr}");
}

#[test]
fn answers_are_cached_shared_through_redis_replayed_as_streams_and_bypassable() {
    let mock = MockUpstream::start().unwrap();
    mock.script("up", vec![Behaviour::reply("A cached answer, word by word.")]);
    let models = format!(
        "models:\n  - name: main\n    cache: {{ttl_seconds: 60}}\n    targets:\n      - {{provider: openai_compatible, model: up, base_url: '{}'}}\n\
         gateway_keys:\n  - {{name: tests, key: '{GATEWAY_KEY}'}}\n\
         cache: {{backend: redis, redis_url: 'redis://127.0.0.1:6379'}}\n",
        mock.base_url()
    );
    let deployment = Deployment::postgres("cache");
    std::fs::create_dir_all(&deployment.data_dir).unwrap();
    let models_file = deployment.data_dir.join("models.yaml");
    std::fs::write(&models_file, models).unwrap();
    let (first, second) =
        (deployment.serve(&["--models", models_file.to_str().unwrap()]), deployment.serve(&["--models", models_file.to_str().unwrap()]));
    // A question no earlier run asked, so the shared Redis has no answer for it yet.
    let question = format!("question {}", uuid::Uuid::new_v4());
    let body = |extra: &str| format!(r#"{{"model": "main", "messages": [{{"role": "user", "content": "{question}"}}]{extra}}}"#);
    let call = |address: &str, body: &str| {
        crate::harness::request(address, "POST", "/v1/chat/completions", Some(GATEWAY_KEY), "application/json", body)
    };

    let (status, head, answer) = call(&first.address, &body(r#", "temperature": 0.5"#));
    assert_eq!(status, 200, "{answer}");
    assert!(!head.contains("x-flowgate-cache: hit"));
    // The other server answers from the shared cache, reporting no upstream usage.
    let (status, head, answer) = call(&second.address, &body(r#", "temperature": 0.5, "user": "someone else""#));
    assert_eq!(status, 200);
    assert!(head.contains("x-flowgate-cache: hit"), "{head}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "A cached answer, word by word.");
    assert_eq!(answer["usage"]["total_tokens"], 0);
    assert_eq!(mock.requests_for("up"), 1);

    // Streamed, the cached answer comes back as a stream.
    let (status, head, stream) = call(&second.address, &body(r#", "temperature": 0.5, "stream": true"#));
    assert_eq!(status, 200);
    assert!(head.contains("text/event-stream") && head.contains("x-flowgate-cache: hit"), "{head}");
    let pieces: Vec<serde_json::Value> = stream
        .split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let text: String = pieces.iter().filter_map(|piece| piece["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "A cached answer, word by word.");
    assert!(pieces.len() > 4, "in pieces, not one chunk");
    assert!(stream.trim_end().ends_with("data: [DONE]"));

    // Another parameter is another request; the bypass header skips the cache.
    assert!(!call(&first.address, &body(r#", "temperature": 0.7"#)).1.contains("x-flowgate-cache: hit"));
    let bypass = crate::harness::request_with_headers(
        &first.address,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &format!("Bearer {GATEWAY_KEY}")), ("x-flowgate-cache", "bypass")],
        &body(r#", "temperature": 0.5"#),
    );
    assert_eq!(bypass.0, 200);
    assert!(!bypass.1.contains("x-flowgate-cache: hit"));
    assert_eq!(mock.requests_for("up"), 3);
}

/// A chatflow's answer reports the tokens the upstream counted (`metadata.usage`, in Dify's
/// `LLMUsage` shape), both in the blocking answer and in the stream's `message_end`.
#[test]
fn chat_answers_report_the_upstreams_token_usage() {
    let mock = MockUpstream::start().unwrap();
    mock.script("chat-up", vec![Behaviour::reply("The mock says hello."), Behaviour::reply("Hello again, from the mock.")]);
    let models = format!(
        "models:\n  - name: main\n    targets:\n      - {{provider: openai_compatible, model: chat-up, base_url: '{}'}}\ndefault: main\n",
        mock.base_url()
    );
    let deployment = Deployment::sqlite("usage");
    std::fs::create_dir_all(&deployment.data_dir).unwrap();
    let models_file = deployment.data_dir.join("models.yaml");
    std::fs::write(&models_file, models).unwrap();
    let app = deployment.import(repo_root().join("tests/corpus/dify-fixtures/basic_chatflow.yml").to_str().unwrap());
    let key = app["api_key"].as_str().unwrap().to_owned();
    let server = deployment.serve(&["--models", models_file.to_str().unwrap()]);
    // The mock counts a prompt token per four characters of message text and a completion
    // token per word of its reply.
    let prompt_tokens_sent = |index: usize| -> i64 {
        let body = &mock.received()[index].body;
        let characters: usize =
            body["messages"].as_array().unwrap().iter().map(|message| message["content"].as_str().unwrap_or("").chars().count()).sum();
        characters.div_ceil(4) as i64
    };

    let body = r#"{"query": "Say hello", "inputs": {}, "user": "usage-tester", "response_mode": "blocking"}"#;
    let (status, answer) = crate::harness::http(&server.address, "POST", "/v1/chat-messages", Some(&key), Some(body));
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["answer"], "The mock says hello.");
    let usage = &answer["metadata"]["usage"];
    assert_eq!(usage["completion_tokens"], 4, "{usage}");
    assert_eq!(usage["prompt_tokens"], prompt_tokens_sent(0), "{usage}");
    assert_eq!(usage["total_tokens"], prompt_tokens_sent(0) + 4, "{usage}");
    assert_eq!(usage["currency"], "USD");
    // The chatflow's LLM node has an empty system prompt and memory with the query template
    // '{{#sys.query#}}\n\n{{#userinput.files#}}': graphon drops the empty message and sends
    // the user's turn rendered from the template (no files: their text is empty).
    assert_eq!(mock.received()[0].body["messages"], serde_json::json!([{"role": "user", "content": "Say hello\n\n"}]));

    let body = serde_json::json!({
        "query": "Again", "inputs": {}, "user": "usage-tester", "response_mode": "streaming",
        "conversation_id": answer["conversation_id"],
    })
    .to_string();
    let (status, stream) = crate::harness::http(&server.address, "POST", "/v1/chat-messages", Some(&key), Some(&body));
    assert_eq!(status, 200, "{stream}");
    let end: serde_json::Value = stream
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap())
        .find(|event| event["event"] == "message_end")
        .unwrap_or_else(|| panic!("no message_end in:\n{stream}"));
    // The node's memory (window off) puts the conversation's earlier turn before this one:
    // the user's query as asked and the answer given (Dify's TokenBufferMemory).
    assert_eq!(
        mock.received()[1].body["messages"],
        serde_json::json!([
            {"role": "user", "content": "Say hello"},
            {"role": "assistant", "content": "The mock says hello."},
            {"role": "user", "content": "Again\n\n"},
        ])
    );
    let usage = &end["metadata"]["usage"];
    assert_eq!(usage["completion_tokens"], 5, "{usage}");
    assert_eq!(usage["prompt_tokens"], prompt_tokens_sent(1), "{usage}");
}
