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
        "models:\n  - name: main\n    targets:\n{}  - name: flaky\n    targets:\n{}{}  - name: limited\n    targets:\n{}gateway_keys:\n  - {{name: tests, key: '${{TEST_GATEWAY_KEY}}'}}\n",
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
    let deployment = Deployment::sqlite("limits");
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
