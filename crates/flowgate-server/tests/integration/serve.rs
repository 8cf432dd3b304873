//! `flowgate serve` end to end: apps imported by the CLI, served over the Service API, with the
//! run log readable afterwards. Expected outputs come from the conformance suite (graphon).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_server(data_dir: &Path) -> Server {
    let address = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["serve", "--listen", &address, "--data-dir", data_dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, address }
}

/// One HTTP/1.1 request; returns the status and the body.
fn http(address: &str, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let body = body.unwrap_or("");
    let auth = key.map(|key| format!("Authorization: Bearer {key}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_owned() };
    (status, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn import(data_dir: &Path, dsl: &str) -> Json {
    let output = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["apps", "import", dsl, "--data-dir", data_dir.to_str().unwrap()])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_workflow_runs_blocking_and_streaming_and_its_log_is_kept() {
    let data_dir = std::env::temp_dir().join(format!("flowgate-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let imported = import(&data_dir, "bench/workloads/bench10-noio.yml");
    let key = imported["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("app-"));
    let expected: Json =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("tests/conformance/expected/bench10-noio-long-path.json")).unwrap())
            .unwrap();
    let cases = std::fs::read_to_string(repo_root().join("tests/conformance/cases.jsonl")).unwrap();
    let case: Json =
        cases.lines().map(|line| serde_json::from_str::<Json>(line).unwrap()).find(|case| case["id"] == "bench10-noio-long-path").unwrap();
    let server = start_server(&data_dir);

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

    // The run log has the run with its inputs and outputs (written off the request path).
    let run_id = response["workflow_run_id"].as_str().unwrap();
    let mut logged = (0, String::new());
    for _ in 0..50 {
        logged = http(&server.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&key), None);
        if logged.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
}
