//! Differential conformance against graphon, Dify's engine.
//!
//! Each line of `tests/conformance/cases.jsonl` names a DSL, its inputs and the mocked answers
//! of model/tool nodes. `tests/conformance/expected/<id>.json` holds what graphon produced for
//! it (regenerate with `tests/conformance/regenerate.sh`). This test runs the same case on
//! flowgate and compares status, outputs, streamed answer, error, the node-event sequence and
//! the final conversation variables. Code nodes run in flowgate's own sandbox (the zygote pool
//! with every protection on), against graphon running the same code in plain Python.
//!
//! Optional case fields: `skip` (keys not compared), `event_order: "per-node"` (events compared
//! per node instead of globally), `flowgate_dsl` (the DSL flowgate runs instead of `dsl`),
//! `python: "packages"` (code runs with an interpreter that has the packages teams install into
//! their sandbox, `scripts/sdk-python sandbox-packages`); each comes with a `why`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value as Json, json};

use flowgate_dsl::{AppMode, Document};
use flowgate_egress::{EgressClient, IpPolicy};
use flowgate_engine::event::NodeStatus;
use flowgate_engine::inputs::RunRequest;
use flowgate_engine::mock::MockPorts;
use flowgate_engine::value::MapRef;
use flowgate_engine::{Engine, Limits, Plan, Ports, RunEvent, Value};

use crate::fixture_address;

/// The address the DSLs and cases use for the HTTP fixture when expectations are generated.
const GENERATION_ADDRESS: &str = "127.0.0.1:18731";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

fn event_name(event: &RunEvent) -> Option<String> {
    let entry = |name: &str, id: &str| Some(format!("{name}:{id}"));
    match event {
        RunEvent::NodeStarted(info) => entry("NodeRunStartedEvent", &info.node_id),
        RunEvent::NodeFinished(finished) => {
            let name = match finished.status {
                NodeStatus::Succeeded => "NodeRunSucceededEvent",
                NodeStatus::Failed => "NodeRunFailedEvent",
                NodeStatus::Exception => "NodeRunExceptionEvent",
                NodeStatus::Retry => "NodeRunRetryEvent",
            };
            entry(name, &finished.info.node_id)
        }
        RunEvent::NodeRetry(finished) => entry("NodeRunRetryEvent", &finished.info.node_id),
        RunEvent::IterationStarted { info, .. } => entry("NodeRunIterationStartedEvent", &info.node_id),
        RunEvent::IterationNext { info, index } => Some(format!("NodeRunIterationNextEvent:{}:{index}", info.node_id)),
        RunEvent::IterationCompleted(completed) => {
            let name =
                if completed.status == NodeStatus::Succeeded { "NodeRunIterationSucceededEvent" } else { "NodeRunIterationFailedEvent" };
            entry(name, &completed.info.node_id)
        }
        RunEvent::LoopStarted { info, .. } => entry("NodeRunLoopStartedEvent", &info.node_id),
        RunEvent::LoopNext { info, index } => Some(format!("NodeRunLoopNextEvent:{}:{index}", info.node_id)),
        RunEvent::LoopCompleted(completed) => {
            let name = if completed.status == NodeStatus::Succeeded { "NodeRunLoopSucceededEvent" } else { "NodeRunLoopFailedEvent" };
            entry(name, &completed.info.node_id)
        }
        RunEvent::VariableUpdated { node_id, .. } => entry("NodeRunVariableUpdatedEvent", node_id),
        _ => None,
    }
}

/// Rewrites the fixture address of generation time to the one this test bound.
fn localize(value: &Json, address: &str) -> Json {
    match value {
        Json::String(text) => Json::String(text.replace(GENERATION_ADDRESS, address)),
        Json::Array(items) => Json::Array(items.iter().map(|item| localize(item, address)).collect()),
        Json::Object(map) => Json::Object(map.iter().map(|(key, item)| (key.clone(), localize(item, address))).collect()),
        other => other.clone(),
    }
}

async fn run_case(case: &Json, address: &str, sandbox: &Arc<dyn flowgate_engine::ports::CodePort>) -> Json {
    let root = repo_root();
    // A case may run flowgate on a variant of the oracle's DSL (e.g. a legacy node type that
    // graphon no longer loads but Dify maps onto the same node) and compare it with graphon's
    // result for the original.
    let dsl = case.get("flowgate_dsl").unwrap_or(&case["dsl"]);
    let dsl_path = root.join(dsl.as_str().expect("dsl path"));
    let text = std::fs::read_to_string(&dsl_path).unwrap_or_else(|error| panic!("{}: {error}", dsl_path.display()));
    let text = text.replace(GENERATION_ADDRESS, address);
    let document = match Document::load(&text) {
        Ok(document) => document,
        Err(error) => return json!({"status": "load-failed", "error": error.to_string()}),
    };
    let plan = match Plan::compile(&document) {
        Ok(plan) => Arc::new(plan),
        Err(error) => return json!({"status": "load-failed", "error": error.to_string()}),
    };
    let egress = EgressClient::new(IpPolicy::from_allow_list("127.0.0.1").expect("policy")).expect("client");
    let mocks = case.get("mocks").and_then(Json::as_object).cloned().unwrap_or_default();
    let base = Ports { http: Some(Arc::new(egress)), code: Some(sandbox.clone()), ..Ports::default() };
    let mocked_code = MockPorts::new(mocks.clone());
    let mut ports = MockPorts::new(mocks.clone()).ports(base.clone());
    // Code nodes run for real unless the case mocks them, as in the oracle.
    ports.code = Some(Arc::new(CodeRouter { mocks: mocks.clone(), mocked: mocked_code, real: sandbox.clone() }));
    let limits = case.get("limits").map_or_else(Limits::default, |limits| Limits {
        max_steps: limits.get("max_steps").and_then(Json::as_u64).unwrap_or(500),
        max_time: Duration::from_secs(limits.get("max_time").and_then(Json::as_u64).unwrap_or(1200)),
    });
    let engine = Engine::new(ports).with_limits(limits);
    let inputs = localize(case.get("inputs").unwrap_or(&json!({})), address);
    let conversation = case
        .get("conversation")
        .and_then(Json::as_object)
        .map(|map| map.iter().map(|(key, value)| (key.clone(), Value::from(value))).collect())
        .unwrap_or_default();
    let chat = document.app.mode == AppMode::AdvancedChat;
    let request = RunRequest {
        inputs: inputs.as_object().map(flowgate_engine::value::map_from_json).unwrap_or_default(),
        query: case.get("query").and_then(Json::as_str).map(str::to_owned),
        user_id: "oracle-user".into(),
        app_id: "oracle-app".into(),
        workflow_id: "oracle-workflow".into(),
        run_id: Some("oracle-run".into()),
        conversation_id: chat.then(|| "oracle-conversation".into()),
        dialogue_count: chat.then_some(1),
        conversation_variables: conversation,
        ..RunRequest::default()
    };
    let mut events: Vec<RunEvent> = Vec::new();
    let summary = match engine.run(&plan, request, &mut events, None).await {
        Ok(summary) => summary,
        // The oracle reports rejected inputs as a failure to load the run.
        Err(error) => return json!({"status": "load-failed", "error": error.message}),
    };
    let names: Vec<String> = events.iter().filter_map(event_name).collect();
    json!({
        "status": summary.status.as_str(),
        "outputs": serde_json::to_value(MapRef(&summary.outputs)).expect("outputs"),
        "answer": summary.answer,
        "error": summary.error,
        "events": names,
        "conversation_variables": serde_json::to_value(MapRef(&summary.conversation_variables)).expect("conversation"),
    })
}

/// Mocked code nodes answer from the mocks; the others run in Python.
struct CodeRouter {
    mocks: serde_json::Map<String, Json>,
    mocked: MockPorts,
    real: Arc<dyn flowgate_engine::ports::CodePort>,
}

impl flowgate_engine::ports::CodePort for CodeRouter {
    fn execute(
        &self,
        call: flowgate_engine::ports::CodeCall,
    ) -> futures::future::BoxFuture<'static, Result<flowgate_engine::Map, flowgate_engine::ports::PortError>> {
        if self.mocks.contains_key(&*call.context.node_id) {
            flowgate_engine::ports::CodePort::execute(&self.mocked, call)
        } else {
            self.real.execute(call)
        }
    }
}

/// For branches that run concurrently in flowgate (real I/O), events only keep their order
/// per node: the same events, and for every node the same sequence.
fn same_per_node(want: &Json, got: &Json) -> bool {
    let group = |events: &Json| {
        let mut by_node: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
        for event in events.as_array().into_iter().flatten().filter_map(Json::as_str) {
            let node = event.split(':').nth(1).unwrap_or_default().to_owned();
            by_node.entry(node).or_default().push(event.to_owned());
        }
        by_node
    };
    group(want) == group(got)
}

fn cases() -> Vec<Json> {
    let path = repo_root().join("tests/conformance/cases.jsonl");
    std::fs::read_to_string(&path)
        .expect("cases.jsonl")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("case line"))
        .collect()
}

/// A sandbox with every protection required, running `python` (default: `python3`).
async fn start_sandbox(name: &str, python: Option<PathBuf>) -> Arc<dyn flowgate_engine::ports::CodePort> {
    let scratch = std::env::temp_dir().join(format!("flowgate-conformance-{name}-{}", std::process::id()));
    let mut config = flowgate_sandbox::SandboxConfig::new(scratch);
    config.isolation = flowgate_sandbox::IsolationPolicy::Required;
    // The JavaScript workers are the flowgate binary's, not this test's.
    config.javascript_worker = flowgate_sandbox::WorkerCommand {
        program: env!("CARGO_BIN_EXE_flowgate").into(),
        args: vec![flowgate_sandbox::JAVASCRIPT_WORKER_ARG.into()],
    };
    if let Some(python) = python {
        config.python = python;
    }
    Arc::new(flowgate_sandbox::Sandbox::start(config).await.expect("sandbox"))
}

fn packages_python() -> PathBuf {
    let output = std::process::Command::new(repo_root().join("scripts/sdk-python")).arg("sandbox-packages").output().expect("sdk-python");
    assert!(output.status.success(), "cannot set up the sandbox packages: {}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8(output.stdout).expect("path").trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowgate_matches_graphon_on_every_case() {
    let address = fixture_address().await;
    let plain = start_sandbox("code", None).await;
    let mut with_packages = None;
    let cases = cases();
    assert!(cases.len() >= 60, "the suite must keep at least 60 cases, has {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let id = case["id"].as_str().expect("case id");
        let expected_path = repo_root().join(format!("tests/conformance/expected/{id}.json"));
        let expected: Json = match std::fs::read_to_string(&expected_path) {
            Ok(text) => serde_json::from_str(&text).expect("expected JSON"),
            Err(_) => {
                failures.push(format!("{id}: no expectation (run tests/conformance/regenerate.sh)"));
                continue;
            }
        };
        let expected = localize(&expected, &address);
        let sandbox = if case.get("python").and_then(Json::as_str) == Some("packages") {
            if with_packages.is_none() {
                with_packages = Some(start_sandbox("packages", Some(packages_python())).await);
            }
            with_packages.as_ref().expect("started above")
        } else {
            &plain
        };
        let actual = run_case(case, &address, sandbox).await;
        let mut differences = Vec::new();
        for key in ["status", "outputs", "answer", "error", "events", "conversation_variables"] {
            if case.get("skip").and_then(Json::as_array).is_some_and(|skip| skip.iter().any(|item| item == key)) {
                continue;
            }
            let (want, got) = (expected.get(key).unwrap_or(&Json::Null), actual.get(key).unwrap_or(&Json::Null));
            let per_node = key == "events" && case.get("event_order").and_then(Json::as_str) == Some("per-node");
            let same = if per_node { same_per_node(want, got) } else { want == got };
            if !same {
                differences.push(format!("  {key}:\n    graphon:  {want}\n    flowgate: {got}"));
            }
        }
        if !differences.is_empty() {
            failures.push(format!("{id}:\n{}", differences.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ from graphon:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
