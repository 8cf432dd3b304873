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
