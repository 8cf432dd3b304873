//! What operators rely on: rate and concurrency limits answering Dify's 429s, request-size
//! limits, bad input refused with nothing written, Prometheus metrics, runs cut off by a
//! `kill -9` marked failed after a restart while everything else survives, a graceful shutdown
//! that lets runs finish, 503 with `Retry-After` when the database pool is exhausted, and a
//! failed migration that stops the process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::harness::{Deployment, http};

/// An HTTP endpoint that answers after `delay`, for runs that must still be going.
pub(crate) fn slow_endpoint(delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer);
                std::thread::sleep(delay);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate");
            });
        }
    });
    format!("http://{address}/slow")
}

/// Starts a streaming run and returns the open connection and its run id, once the run has begun.
pub(crate) fn start_streaming(address: &str, key: &str, body: &Json) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST /v1/workflows/run HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 4096];
    while !seen.contains("\"node_started\"") || !seen.contains("\"fetch\"") {
        assert!(Instant::now() < deadline, "the run did not start: {seen}");
        let read = stream.read(&mut buffer).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    let run_id = seen.split("\"workflow_run_id\":\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().to_owned();
    (stream, run_id)
}

fn error_code(body: &str) -> Json {
    serde_json::from_str::<Json>(body).map(|body| body["code"].clone()).unwrap_or(Json::Null)
}

fn logged_runs(address: &str, key: &str) -> i64 {
    let (status, body) = http(address, "GET", "/v1/workflows/logs?limit=100", Some(key), None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Json>(&body).unwrap()["total"].as_i64().unwrap()
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn limits_bad_input_and_metrics() {
    let deployment = Deployment::sqlite("operations");
    let app = deployment.import("bench/workloads/bench2.yml");
    let key = app["api_key"].as_str().unwrap().to_owned();
    let slow = deployment.import("tests/service/slow-workflow.yml");
    let slow_key = slow["api_key"].as_str().unwrap().to_owned();
    let server = deployment.serve(&["--allow-network", "127.0.0.1/32", "--max-body-bytes", "4096"]);
    let run = json!({"inputs": {"text": "hi", "n": 1}, "user": "ops"}).to_string();
    assert_eq!(http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&run)).0, 200);

    // Bad input: Dify's codes, and no run recorded for any of them.
    let refused = [
        (json!({"inputs": {"text": "hi", "n": 1}}).to_string(), 400, "invalid_param"),
        (json!({"inputs": {"text": "hi"}, "user": "ops"}).to_string(), 400, "invalid_param"),
        (json!({"inputs": {"text": 5, "n": 1}, "user": "ops"}).to_string(), 400, "invalid_param"),
        (json!({"inputs": {"text": "hi", "n": 1}, "user": "ops", "response_mode": "fast"}).to_string(), 400, "invalid_param"),
        ("{\"inputs\": ".to_owned(), 400, "bad_request"),
        (json!({"inputs": {"text": "x".repeat(5000), "n": 1}, "user": "ops"}).to_string(), 413, "request_entity_too_large"),
    ];
    for (body, status, code) in refused {
        let (got, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&body));
        assert_eq!((got, error_code(&response)), (status, Json::from(code)), "{body:.80} → {response}");
    }
    let (status, response) = http(&server.address, "POST", "/v1/chat-messages", Some(&key), Some(&run));
    assert_eq!((status, error_code(&response)), (400, Json::from("not_chat_app")));
    assert_eq!(logged_runs(&server.address, &key), 1, "refused requests must not be recorded");

    // Per-key rate: a policy set with the CLI while the server runs applies at once.
    let policy = deployment
        .flowgate()
        .args(["apps", "policy", app["app_id"].as_str().unwrap(), "--limits", r#"{"per_key": {"requests_per_hour": 3}}"#])
        .output()
        .unwrap();
    assert!(policy.status.success(), "{}", String::from_utf8_lossy(&policy.stderr));
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..3 {
        assert_eq!(http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&run)).0, 200);
    }
    let (status, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&key), Some(&run));
    assert_eq!((status, error_code(&response)), (429, Json::from("too_many_requests")), "{response}");
    let second_key = deployment.flowgate().args(["keys", "create", app["app_id"].as_str().unwrap()]).output().unwrap();
    let second_key: Json = serde_json::from_slice(&second_key.stdout).unwrap();
    let second_key = second_key["api_key"].as_str().unwrap();
    assert_eq!(http(&server.address, "POST", "/v1/workflows/run", Some(second_key), Some(&run)).0, 200, "keys are limited apart");
    let bad_policy =
        deployment.flowgate().args(["apps", "policy", app["app_id"].as_str().unwrap(), "--limits", r#"{"rpm": 3}"#]).output().unwrap();
    assert_eq!(bad_policy.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_policy.stderr).contains("rpm"));

    // Concurrency: one run at a time, a short line; the second run is refused while the first waits.
    let limited = deployment
        .flowgate()
        .args(["apps", "policy", slow["app_id"].as_str().unwrap(), "--limits", r#"{"max_concurrent_runs": 1, "queue_timeout_ms": 300}"#])
        .output()
        .unwrap();
    assert!(limited.status.success());
    std::thread::sleep(Duration::from_millis(50));
    let slow_run = json!({"inputs": {"url": slow_endpoint(Duration::from_secs(3))}, "user": "ops", "response_mode": "streaming"});
    let (_first, _) = start_streaming(&server.address, &slow_key, &slow_run);
    let (status, response) = http(&server.address, "POST", "/v1/workflows/run", Some(&slow_key), Some(&slow_run.to_string()));
    assert_eq!((status, error_code(&response)), (429, Json::from("rate_limit_error")), "{response}");

    let (status, metrics) = http(&server.address, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(metrics.contains("flowgate_http_requests_total{method=\"POST\",route=\"/v1/workflows/run\",status=\"429\"} 2"), "{metrics}");
    assert!(metrics.contains(&format!(
        "flowgate_run_duration_seconds_count{{app_id=\"{}\",status=\"succeeded\"}} 5",
        app["app_id"].as_str().unwrap()
    )));
    assert!(metrics.contains("flowgate_node_duration_seconds_count{node_type=\"start\"}"));
    assert!(metrics.contains("flowgate_runs_in_progress 1"));
    assert!(metrics.contains("flowgate_recorder_backlog "));
}

fn killed_runs_fail_after_restart(deployment: &Deployment) {
    let quick = deployment.import("bench/workloads/bench2.yml");
    let quick_key = quick["api_key"].as_str().unwrap().to_owned();
    let slow = deployment.import("tests/service/slow-workflow.yml");
    let slow_key = slow["api_key"].as_str().unwrap().to_owned();
    let options = ["--allow-network", "127.0.0.1/32", "--instance-timeout", "3"];
    let mut server = deployment.serve(&options);
    let run = json!({"inputs": {"text": "kept", "n": 2}, "user": "ops"}).to_string();
    let (status, body) = http(&server.address, "POST", "/v1/workflows/run", Some(&quick_key), Some(&run));
    assert_eq!(status, 200, "{body}");
    let kept: Json = serde_json::from_str(&body).unwrap();
    let slow_run = json!({"inputs": {"url": slow_endpoint(Duration::from_secs(30))}, "user": "ops", "response_mode": "streaming"});
    let (_stream, run_id) = start_streaming(&server.address, &slow_key, &slow_run);
    // Once the client has the run's id, the run can be looked up.
    let (status, body) = http(&server.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&slow_key), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["status"], "running", "{body}");
    server.child.kill().unwrap(); // SIGKILL: no shutdown code runs
    server.child.wait().unwrap();

    let server = deployment.serve(&options);
    let read_run = || {
        let (status, body) = http(&server.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&slow_key), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Json>(&body).unwrap()
    };
    let failed = if deployment.database_url.is_none() {
        // Embedded: no other process can own the run, so the restart fails it before serving.
        read_run()
    } else {
        // Cluster: another replica fails it once its owner missed heartbeats for --instance-timeout.
        wait_for("the cut-off run to be marked failed", || Some(read_run()).filter(|run| run["status"] == "failed"))
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("stopped before it finished"), "{failed}");
    let (status, body) =
        http(&server.address, "GET", &format!("/v1/workflows/run/{}", kept["workflow_run_id"].as_str().unwrap()), Some(&quick_key), None);
    assert_eq!(status, 200);
    let survived: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (survived["status"].clone(), survived["outputs"].clone()),
        (kept["data"]["status"].clone(), kept["data"]["outputs"].clone())
    );
}

#[test]
fn kill_9_sqlite() {
    killed_runs_fail_after_restart(&Deployment::sqlite("kill"));
}

#[test]
fn kill_9_postgres() {
    killed_runs_fail_after_restart(&Deployment::postgres("kill"));
}

/// Reads a streaming response to its end.
pub(crate) fn read_to_end(mut stream: TcpStream, seen: String) -> String {
    let mut rest = Vec::new();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = stream.read_to_end(&mut rest);
    seen + &String::from_utf8_lossy(&rest)
}

#[test]
fn a_graceful_shutdown_lets_runs_finish() {
    let deployment = Deployment::sqlite("shutdown");
    let slow = deployment.import("tests/service/slow-workflow.yml");
    let key = slow["api_key"].as_str().unwrap().to_owned();
    let mut server = deployment.serve(&["--allow-network", "127.0.0.1/32", "--shutdown-grace", "20"]);
    let slow_run = json!({"inputs": {"url": slow_endpoint(Duration::from_secs(2))}, "user": "ops", "response_mode": "streaming"});
    let (stream, run_id) = start_streaming(&server.address, &key, &slow_run);
    let terminated = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(terminated.success());

    // The run in progress finishes and its client gets the whole stream.
    let events = read_to_end(stream, String::new());
    assert!(events.contains("\"event\":\"workflow_finished\""), "{events}");
    assert!(events.contains("\"status\":\"succeeded\""), "{events}");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "a graceful shutdown exits 0: {status}");

    // The run is in the log as succeeded, not failed by crash recovery.
    let server = deployment.serve(&[]);
    let (status, body) = http(&server.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&key), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["status"], "succeeded", "{body}");
}

#[test]
fn an_exhausted_database_pool_answers_503_with_retry_after() {
    let deployment = Deployment::postgres("pool");
    let first = deployment.import("bench/workloads/bench2.yml");
    let second = deployment.import("bench/workloads/bench2.yml");
    let server = deployment.serve(&["--max-connections", "1", "--acquire-timeout-ms", "300"]);
    let database_url = deployment.database_url.clone().unwrap();

    // Another client holds a lock on the apps table: the server's one connection waits on it
    // inside the first request, and the second request finds no connection.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut locker = runtime.block_on(async {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&database_url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
        sqlx::query("LOCK TABLE apps IN ACCESS EXCLUSIVE MODE").execute(&mut connection).await.unwrap();
        connection
    });
    let address = server.address.clone();
    let first_key = first["api_key"].as_str().unwrap().to_owned();
    let waiting = std::thread::spawn(move || http(&address, "GET", "/v1/info", Some(&first_key), None));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (status, head, body) =
        crate::harness::request(&server.address, "GET", "/v1/info", second["api_key"].as_str(), "application/json", "");
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(started.elapsed() < Duration::from_secs(3), "the request waited up to the pool deadline, not forever");
    assert!(!body.contains("too many clients"), "{body}");

    runtime.block_on(async { sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap() });
    let (status, body) = waiting.join().unwrap();
    assert_eq!(status, 200, "the request that held the connection completes once the lock is gone: {body}");
    assert_eq!(http(&server.address, "GET", "/v1/info", second["api_key"].as_str(), None).0, 200, "and the pool recovers");
}

#[test]
fn a_failed_migration_stops_the_process_with_a_non_zero_exit() {
    let deployment = Deployment::sqlite("migration");
    let migrated = deployment.flowgate().arg("migrate").output().unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    // Forget that the latest migration ran: running it again fails (its index exists).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", deployment.data_dir.join("flowgate.db").display());
        let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)")
            .execute(&mut connection)
            .await
            .unwrap();
    });
    for command in [&["migrate"][..], &["serve", "--listen", "127.0.0.1:0"][..]] {
        let output = deployment.flowgate().args(command).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(stderr.contains("migration") && stderr.contains("messages_running"), "{command:?} names the failed migration: {stderr}");
    }
}
