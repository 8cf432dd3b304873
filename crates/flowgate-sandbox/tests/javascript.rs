//! JavaScript code nodes: Dify's calling convention, and the same abuse as for Python — each
//! attempt refused or stopped with a clear error, the next execution normal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use flowgate_engine::ports::{CodePort, PortErrorKind};
use flowgate_engine::value::{Map, Value};
use flowgate_sandbox::Sandbox;

fn call(code: &str, inputs: &[(&str, Value)]) -> flowgate_engine::ports::CodeCall {
    common::call_as("app", "javascript", code, inputs)
}

fn config(tag: &str, workers: usize) -> flowgate_sandbox::SandboxConfig {
    let mut config = common::config(&format!("js-{tag}"));
    config.timeout = Duration::from_secs(1);
    config.memory_bytes = 128 * 1024 * 1024;
    config.workers = workers;
    config
}

async fn sandbox(tag: &str) -> Sandbox {
    Sandbox::start(config(tag, 2)).await.unwrap()
}

async fn run(sandbox: &Sandbox, code: &str) -> Result<Map, (PortErrorKind, String)> {
    sandbox.execute(call(code, &[])).await.map_err(|error| (error.kind, error.message))
}

async fn still_healthy(sandbox: &Sandbox) {
    let outputs = run(sandbox, "function main() { return {result: 6 * 7}; }").await.unwrap();
    assert_eq!(outputs.get("result"), Some(&Value::Int(42)));
}

#[tokio::test]
async fn main_gets_one_object_of_inputs_as_difys_wrapper_passes_it() {
    let sandbox = sandbox("main").await;
    let code = "function main({count, text}) {\n  const data = JSON.parse(text);\n  console.log('ignored');\n  return {total: count + data.xs.reduce((a, b) => a + b, 0), keys: Object.keys(data).sort(), half: 0.5};\n}";
    let outputs =
        sandbox.execute(call(code, &[("count", Value::Int(1)), ("text", Value::str(r#"{"xs": [1, 2], "b": 0}"#))])).await.unwrap();
    assert_eq!(outputs.get("total"), Some(&Value::Int(4)));
    assert_eq!(outputs.get("keys"), Some(&Value::array(vec![Value::str("b"), Value::str("xs")])));
    assert_eq!(outputs.get("half"), Some(&Value::Float(0.5)));
    // An arrow function assigned to a constant works too, as it does in Dify's Node wrapper.
    let outputs = run(&sandbox, "const main = () => ({result: 'arrow'});").await.unwrap();
    assert_eq!(outputs.get("result"), Some(&Value::str("arrow")));
}

#[tokio::test]
async fn errors_name_the_exception_and_where_it_happened() {
    let sandbox = sandbox("errors").await;
    let (_, message) = run(&sandbox, "function main() {\n  return {x: missing + 1};\n}").await.unwrap_err();
    assert!(message.starts_with("ReferenceError: missing is not defined"), "{message}");
    assert!(message.contains("at main (eval_script:2:"), "the user's own line: {message}");
    let (_, message) = run(&sandbox, "function main() { throw 'plain'; }").await.unwrap_err();
    assert_eq!(message, "Uncaught \"plain\"");
    let (_, message) = run(&sandbox, "function main() { return [1]; }").await.unwrap_err();
    assert_eq!(message, "Result must be a dict, got list");
    let (_, message) = run(&sandbox, "function main() {}").await.unwrap_err();
    assert_eq!(message, "Result must be a dict, got undefined");
}

#[tokio::test]
async fn no_file_network_or_process_apis_exist() {
    let sandbox = sandbox("apis").await;
    for probe in ["require('fs')", "process.env", "fetch('http://127.0.0.1')", "Deno", "std.open('/etc/shadow')"] {
        let code = format!("function main() {{ return {{result: {probe}}}; }}");
        let (_, message) = run(&sandbox, &code).await.unwrap_err();
        assert!(message.starts_with("ReferenceError"), "{probe}: {message}");
    }
    still_healthy(&sandbox).await;
}

#[tokio::test]
async fn endless_loops_memory_bombs_and_deep_recursion_are_stopped() {
    let sandbox = sandbox("bombs").await;
    let started = Instant::now();
    let (kind, message) = run(&sandbox, "function main() { while (true) {} }").await.unwrap_err();
    assert_eq!(kind, PortErrorKind::Timeout, "{message}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopped after {:?}", started.elapsed());
    let (kind, message) =
        run(&sandbox, "function main() { const blocks = []; while (true) { blocks.push(new Array(1e6).fill(1)); } }").await.unwrap_err();
    assert_eq!(kind, PortErrorKind::TooLarge, "{message}");
    let (_, message) =
        run(&sandbox, "function f(n) { return f(n + 1) + 1; }\nfunction main() { return {result: f(0)}; }").await.unwrap_err();
    assert!(message.starts_with("RangeError: Maximum call stack size exceeded"), "{message}");
    still_healthy(&sandbox).await;
}

#[tokio::test]
async fn executions_never_see_each_others_globals() {
    let sandbox = sandbox("state").await;
    assert!(run(&sandbox, "globalThis.leak = 'secret';\nfunction main() { return {}; }").await.is_ok());
    let outputs = run(&sandbox, "function main() { return {result: typeof globalThis.leak}; }").await.unwrap();
    assert_eq!(outputs.get("result"), Some(&Value::str("undefined")));
}

#[tokio::test]
async fn five_hundred_concurrent_executions_all_succeed() {
    let sandbox = sandbox("concurrency").await;
    let code = "function main({n}) { const data = JSON.parse(JSON.stringify({n, xs: [...Array(50).keys()]})); return {result: data.n * 2 + data.xs.reduce((a, b) => a + b, 0)}; }";
    let runs = (0..500).map(|n| {
        let sandbox = sandbox.clone();
        async move { (n, sandbox.execute(call(code, &[("n", Value::Int(n))])).await) }
    });
    for (n, result) in futures::future::join_all(runs).await {
        let outputs = result.unwrap_or_else(|error| panic!("execution {n} failed: {error:?}"));
        assert_eq!(outputs.get("result"), Some(&Value::Int(n * 2 + 1225)));
    }
}

/// A built-in that runs long cannot be interrupted inside QuickJS: the worker is killed at the
/// deadline and replaced, and executions in other workers go on meanwhile.
#[tokio::test]
async fn long_built_ins_are_stopped_at_the_deadline_and_block_no_one_else() {
    let sandbox = Sandbox::start(config("built-ins", 2)).await.unwrap();
    for code in [
        "function main() { return {result: Array.prototype.join.call({length: 2 ** 53 - 1}, '')}; }",
        "function main() { return {result: new Array(1e9).join('').length}; }",
        "function main() { return {result: Array.prototype.indexOf.call({length: 2 ** 53 - 1}, 1)}; }",
    ] {
        let started = Instant::now();
        let stuck = sandbox.execute(call(code, &[]));
        let others = async {
            // Another app's node, ten times, while the first holds its worker.
            for n in 0..10 {
                let outputs = sandbox
                    .execute(common::call_as(
                        "other-app",
                        "javascript",
                        "function main({n}) { return {result: n + 1}; }",
                        &[("n", Value::Int(n))],
                    ))
                    .await
                    .unwrap();
                assert_eq!(outputs.get("result"), Some(&Value::Int(n + 1)));
            }
            started.elapsed()
        };
        let (stuck, others_took) = tokio::join!(stuck, others);
        let error = stuck.unwrap_err();
        assert_eq!(error.kind, PortErrorKind::Timeout, "{code}: {error:?}");
        assert_eq!(error.message, "Code execution timed out after 1 s and was stopped.", "{code}");
        assert!(started.elapsed() < Duration::from_secs(3), "{code}: stopped after {:?}", started.elapsed());
        assert!(others_took < Duration::from_secs(1), "{code}: the other app waited {others_took:?}");
    }
    still_healthy(&sandbox).await;
}

/// With one worker, a stuck execution holds the others back only until its deadline.
#[tokio::test]
async fn with_one_worker_a_stuck_execution_holds_others_only_until_its_deadline() {
    let sandbox = Sandbox::start(config("one-worker", 1)).await.unwrap();
    let started = Instant::now();
    let stuck = sandbox.execute(call("function main() { return {result: new Array(1e9).join('').length}; }", &[]));
    let next = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let outputs = sandbox.execute(call("function main() { return {result: 'next'}; }", &[])).await.unwrap();
        assert_eq!(outputs.get("result"), Some(&Value::str("next")));
        started.elapsed()
    };
    let (stuck, next_done) = tokio::join!(stuck, next);
    assert_eq!(stuck.unwrap_err().kind, PortErrorKind::Timeout);
    assert!(next_done < Duration::from_secs(3), "the next execution waited {next_done:?}");
}

/// The workers run as nobody in namespaces of their own, under seccomp, with no new privileges.
#[tokio::test]
async fn workers_are_locked_down() {
    let sandbox = sandbox("locked").await;
    still_healthy(&sandbox).await;
    let pids = sandbox.javascript_pids().await;
    assert!(!pids.is_empty());
    for pid in pids {
        assert_eq!(common::uids_of(pid), "65534 65534 65534 65534");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.lines().any(|line| line.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]), "{status}");
        assert!(status.lines().any(|line| line.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]), "{status}");
        for namespace in ["user", "net", "ipc", "mnt"] {
            let own = std::fs::read_link(format!("/proc/{pid}/ns/{namespace}")).unwrap();
            assert_ne!(own, std::fs::read_link(format!("/proc/self/ns/{namespace}")).unwrap(), "{namespace}");
        }
    }
}
