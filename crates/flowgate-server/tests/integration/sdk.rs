//! The published Dify SDKs, unchanged, against `flowgate serve` on SQLite and on PostgreSQL
//! (tests/service/*.py; each SDK in a virtualenv `scripts/sdk-python` creates).

use std::process::Command;

use serde_json::json;

use crate::harness::{Deployment, repo_root};

pub fn sdk_python(flavour: &str) -> String {
    let output = Command::new(repo_root().join("scripts/sdk-python")).arg(flavour).output().unwrap();
    assert!(output.status.success(), "cannot set up the {flavour} SDK: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn drive_with_sdks(deployment: &Deployment) {
    let key = |dsl: &str| deployment.import(dsl)["api_key"].as_str().unwrap().to_owned();
    let keys = json!({
        "workflow": key("bench/workloads/bench10-noio.yml"),
        "chat": key("tests/service/chatflow.yml"),
        "upload": key("tests/service/upload-workflow.yml"),
        "slow": key("tests/service/slow-workflow.yml"),
    });
    // The test's own file server runs on 127.0.0.1, which HTTP nodes may not reach by default.
    let server = deployment.serve(&["--allow-network", "127.0.0.1/32"]);
    for (flavour, script) in [("community", "tests/service/sdk_test.py"), ("official", "tests/service/official_sdk_test.py")] {
        let output = Command::new(sdk_python(flavour))
            .arg(repo_root().join(script))
            .env("FLOWGATE_URL", server.url())
            .env("FLOWGATE_KEYS", keys.to_string())
            .env("FLOWGATE_ROOT", repo_root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{script} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn published_sdks_work_against_sqlite() {
    drive_with_sdks(&Deployment::sqlite("sdk"));
}

#[test]
fn published_sdks_work_against_postgres() {
    drive_with_sdks(&Deployment::postgres("sdk"));
}

/// `dify-python-sdk` unchanged: every run is read the moment its answer arrives, on each server.
fn answered_runs_are_found_at_once(deployment: &Deployment, replicas: usize) {
    let key = deployment.import("bench/workloads/bench10-noio.yml")["api_key"].as_str().unwrap().to_owned();
    let servers: Vec<_> = (0..replicas).map(|_| deployment.serve(&[])).collect();
    let urls: Vec<String> = servers.iter().map(|server| server.url()).collect();
    let output = Command::new(sdk_python("community"))
        .arg(repo_root().join("tests/service/read_after_write_test.py"))
        .env("FLOWGATE_URLS", serde_json::to_string(&urls).unwrap())
        .env("FLOWGATE_KEY", key)
        .env("FLOWGATE_ROOT", repo_root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "read_after_write_test.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn answered_runs_are_found_at_once_on_sqlite() {
    answered_runs_are_found_at_once(&Deployment::sqlite("read-after-write"), 1);
}

#[test]
fn answered_runs_are_found_at_once_on_both_postgres_replicas() {
    answered_runs_are_found_at_once(&Deployment::postgres("read-after-write"), 2);
}
