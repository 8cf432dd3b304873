//! `flowgate serve` end to end: apps imported by the CLI, served over the Service API, with the
//! run log readable afterwards. Expected outputs come from the conformance suite (graphon).

use serde_json::Value as Json;

use crate::harness::{Deployment, http, repo_root};

#[test]
fn a_workflow_runs_blocking_and_streaming_and_its_log_is_kept() {
    let deployment = Deployment::sqlite("serve");
    let imported = deployment.import("bench/workloads/bench10-noio.yml");
    let key = imported["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("app-"));
    let expected: Json =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("tests/conformance/expected/bench10-noio-long-path.json")).unwrap())
            .unwrap();
    let cases = std::fs::read_to_string(repo_root().join("tests/conformance/cases.jsonl")).unwrap();
    let case: Json =
        cases.lines().map(|line| serde_json::from_str::<Json>(line).unwrap()).find(|case| case["id"] == "bench10-noio-long-path").unwrap();
    let server = deployment.serve(&[]);

    let body = serde_json::json!({"inputs": case["inputs"], "user": "alice"}).to_string();
    let (status, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&body));
    assert_eq!(status, 200, "{response}");
    let response: Json = serde_json::from_str(&response).unwrap();
    assert_eq!(response["data"]["status"], "succeeded");
    assert_eq!(response["data"]["outputs"], expected["outputs"]);
    assert_eq!(response["data"]["workflow_id"], imported["workflow_id"]);

    let streaming = serde_json::json!({"inputs": case["inputs"], "user": "alice", "response_mode": "streaming"}).to_string();
    let (status, stream) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&streaming));
    assert_eq!(status, 200);
    let events: Vec<Json> =
        stream.split("\n\n").filter_map(|frame| frame.strip_prefix("data: ")).map(|data| serde_json::from_str(data).unwrap()).collect();
    assert_eq!(events.first().unwrap()["event"], "workflow_started");
    let finished = events.last().unwrap();
    assert_eq!(finished["event"], "workflow_finished");
    assert_eq!(finished["data"]["outputs"], expected["outputs"]);
    assert_eq!(events.iter().filter(|event| event["event"] == "node_finished").count(), expected["events"].as_array().unwrap().len() / 2);

    // The run log has the run with its inputs and outputs, read right after the answer.
    let run_id = response["workflow_run_id"].as_str().unwrap();
    let logged = http(&server.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&key), None);
    assert_eq!(logged.0, 200, "{}", logged.1);
    let logged: Json = serde_json::from_str(&logged.1).unwrap();
    assert_eq!(logged["status"], "succeeded");
    assert_eq!(logged["outputs"], expected["outputs"]);
    let inputs: Json = serde_json::from_str(logged["inputs"].as_str().unwrap()).unwrap();
    assert_eq!(inputs["text"], case["inputs"]["text"]);

    // Dify's errors.
    let (status, body) = http(&server.address, "POST", "/v1/workflows/run", Some("app-wrong"), Some(&body));
    assert_eq!((status, serde_json::from_str::<Json>(&body).unwrap()["code"].clone()), (401, Json::from("unauthorized")));
    let (status, body) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(r#"{"inputs": {}}"#));
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["code"], "invalid_param");
    let (status, _) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some("{not json"));
    assert_eq!(status, 400);
    let (status, body) = http(&server.address, "GET", "/v1/workflows/run/00000000-0000-0000-0000-000000000000", Some(&key), None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(http(&server.address, "GET", "/ready", None, None).0, 200);
}

/// Code nodes run in the sandbox `serve` starts: the result comes back, the server's own
/// environment (its admin token here) is not visible and sockets are refused.
#[test]
fn code_nodes_run_in_the_sandbox_without_the_servers_secrets() {
    let deployment = Deployment::sqlite("serve-code");
    let key = deployment.import("tests/service/code-workflow.yml")["api_key"].as_str().unwrap().to_owned();
    let server = deployment.serve_with_env(&[], &[("FLOWGATE_ADMIN_TOKEN", "a-secret-admin-token-of-enough-length")]);
    let body = r#"{"inputs": {"n": 12}, "user": "coder"}"#;
    let (status, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(body));
    assert_eq!(status, 200, "{response}");
    let response: Json = serde_json::from_str(&response).unwrap();
    assert_eq!(response["data"]["status"], "succeeded", "{response}");
    let outputs = &response["data"]["outputs"];
    assert_eq!(outputs["square"], 144);
    assert_eq!(outputs["environment"], serde_json::json!(["HOME", "LANG", "PATH", "TMPDIR"]));
    assert_eq!(outputs["network"], "PermissionError");
}

/// The escape suite through the Service API: a code node of one app attacks the server that runs
/// it (its limits, signals, /proc, System V memory, a child that outlives its pipe). Each attack
/// is refused; afterwards the server answers /health at once, keeps its limits and runs another
/// app's code node.
#[test]
fn hostile_code_leaves_the_server_and_other_apps_alone() {
    let deployment = Deployment::sqlite("serve-hostile");
    let hostile = deployment.import("tests/service/hostile-code.yml")["api_key"].as_str().unwrap().to_owned();
    let other = deployment.import("tests/service/code-workflow.yml")["api_key"].as_str().unwrap().to_owned();
    let server = deployment.serve(&["--code-timeout", "3"]);
    let pid = server.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    for (attack, expected) in [
        ("lower the server's open files", "PermissionError"),
        ("lower the server's CPU time", "PermissionError"),
        ("kill the server", "PermissionError"),
        ("stop the server", "PermissionError"),
        ("shared memory for the next app", "PermissionError"),
        ("fork", "PermissionError"),
        ("read the server's environment", "FileNotFoundError"),
        ("close the result pipe and stay", "failed"),
    ] {
        let body = serde_json::json!({"inputs": {"attack": attack, "target": pid}, "user": "attacker"}).to_string();
        let (status, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&hostile), Some(&body));
        assert_eq!(status, 200, "{attack}: {response}");
        let response: Json = serde_json::from_str(&response).unwrap();
        if expected == "failed" {
            assert_eq!(response["data"]["status"], "failed", "{attack}: {response}");
            assert!(response["data"]["error"].as_str().unwrap().contains("closed the sandbox's result pipe"), "{attack}: {response}");
        } else {
            assert_eq!(response["data"]["outputs"]["outcome"], expected, "{attack}: {response}");
        }
        let started = std::time::Instant::now();
        assert_eq!(http(&server.address, "GET", "/health", None, None).0, 200, "{attack}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{attack}: /health took {:?}", started.elapsed());
        assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap(), limits, "{attack} changed the server's limits");
        let (status, response) =
            http(&server.address, "POST", "/v1/workflows/run", Some(&other), Some(r#"{"inputs": {"n": 3}, "user": "neighbour"}"#));
        assert_eq!(status, 200, "{attack}: {response}");
        let response: Json = serde_json::from_str(&response).unwrap();
        assert_eq!(response["data"]["outputs"]["square"], 9, "after {attack}: {response}");
    }
}

#[test]
fn code_nodes_read_the_shared_folders_and_start_with_the_preloaded_modules() {
    let deployment = Deployment::sqlite("serve-code-shared");
    let key = deployment.import("tests/service/code-shared-folder.yml")["api_key"].as_str().unwrap().to_owned();
    let shared = deployment.data_dir.join("upload_files");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("a.csv"), "city,total\n").unwrap();
    std::fs::write(shared.join("b.csv"), "").unwrap();
    let server =
        deployment.serve_with_env(&["--code-preload", "email.parser, wave"], &[("FLOWGATE_CODE_READ_PATHS", shared.to_str().unwrap())]);
    let body = serde_json::json!({"inputs": {"folder": shared}, "user": "coder"}).to_string();
    let (status, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&body));
    assert_eq!(status, 200, "{response}");
    let response: Json = serde_json::from_str(&response).unwrap();
    assert_eq!(response["data"]["status"], "succeeded", "{response}");
    let outputs = &response["data"]["outputs"];
    assert_eq!(outputs["files"], serde_json::json!(["a.csv", "b.csv"]));
    assert_eq!(outputs["first"], "city,total\n");
    // A read path is bound read-only into the sandbox: writing is refused as on a read-only disk.
    assert_eq!(outputs["write"], "OSError");
    assert_eq!(outputs["preloaded"], serde_json::json!(["email.parser", "wave"]));
    assert!(!shared.join("written.txt").exists());

    // Without the settings the folder is out of reach and nothing extra is imported.
    drop(server);
    let server = deployment.serve(&[]);
    let (_, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&body));
    let response: Json = serde_json::from_str(&response).unwrap();
    assert_eq!(response["data"]["status"], "failed", "{response}");
    assert!(response["data"]["error"].as_str().unwrap().contains("FileNotFoundError"), "{response}");
}

#[test]
fn dify_routes_not_served_yet_say_so_by_name() {
    let deployment = Deployment::sqlite("unsupported-routes");
    let key = deployment.import("bench/workloads/bench2.yml")["api_key"].as_str().unwrap().to_owned();
    let server = deployment.serve(&[]);
    let routes = [
        ("POST", "/v1/audio-to-text", "speech to text"),
        ("POST", "/v1/text-to-audio", "text to speech"),
        ("GET", "/v1/files/0b9c0f3e-0000-4000-8000-000000000001/preview?user=u", "file previews"),
        ("GET", "/v1/end-users/0b9c0f3e-0000-4000-8000-000000000001", "end-user lookup"),
        ("GET", "/v1/apps/annotations?page=1", "annotations"),
        ("DELETE", "/v1/apps/annotations/0b9c0f3e-0000-4000-8000-000000000001", "annotations"),
        ("POST", "/v1/apps/annotation-reply/enable", "annotation replies"),
        ("GET", "/v1/workflow/task-1/events?user=u", "human input"),
        ("POST", "/v1/datasets/ds-1/document/create-by-text", "the knowledge (dataset) API"),
    ];
    for (method, path, feature) in routes {
        let (status, body) = http(&server.address, method, path, Some(&key), Some("{}"));
        let body: Json = serde_json::from_str(&body).unwrap();
        assert_eq!((status, body["code"].as_str()), (501, Some("not_supported")), "{method} {path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("not supported yet: {feature}")), "{method} {path}: {message}");
    }
    // The server's log goes to a file here: plain text, no terminal colour codes.
    let log = std::fs::read_dir(&deployment.data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|entry| entry.file_name().to_string_lossy().starts_with("serve-"))
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap())
        .unwrap();
    assert!(log.contains("flowgate serving") && !log.contains('\u{1b}'), "{log}");
    let (status, _) = http(&server.address, "GET", "/v1/no-such-route", Some(&key), None);
    assert_eq!(status, 404, "a path Dify does not have stays a 404");
    // A known path with the wrong method: Flask's 405 in Dify's error shape, not an empty body.
    let (status, body) = http(&server.address, "GET", "/v1/workflows/run", Some(&key), None);
    let body: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 405, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"code": "method_not_allowed", "message": "The method is not allowed for the requested URL.", "status": 405})
    );
}
