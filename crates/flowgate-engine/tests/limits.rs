//! Dify's run limits, end to end through the engine: the step limit is covered by the
//! conformance suite (graphon's exact message); the time limit depends on the clock, so it is
//! checked here against the message format Dify uses (`Maximum execution time exceeded:
//! 1201.23s > 1200s`, prefixed `Aborted: ` when reported as the run's error).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use flowgate_dsl::Document;
use flowgate_engine::event::Discard;
use flowgate_engine::ports::{CodeCall, CodePort, PortError};
use flowgate_engine::{Engine, Limits, Map, Plan, Ports, RunRequest, RunStatus};

/// A code runner that takes longer than any limit in these tests.
struct Slow;

impl CodePort for Slow {
    fn execute(&self, _call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Map::default())
        })
    }
}

const SLOW_WORKFLOW: &str = r#"
app: {name: slow, mode: workflow}
kind: app
version: 0.6.0
workflow:
  graph:
    nodes:
    - {id: start, data: {type: start, title: Start, variables: []}}
    - {id: slow, data: {type: code, title: Slow, code_language: python3, code: "def main():\n    return {}", variables: [], outputs: {}}}
    - {id: end, data: {type: end, title: End, outputs: []}}
    edges:
    - {source: start, target: slow}
    - {source: slow, target: end}
"#;

#[tokio::test]
async fn a_run_past_its_time_limit_fails_with_dify_s_message_without_waiting_for_the_node() {
    let plan = Arc::new(Plan::compile(&Document::load(SLOW_WORKFLOW).unwrap()).unwrap());
    let ports = Ports { code: Some(Arc::new(Slow)), ..Ports::default() };
    let engine = Engine::new(ports).with_limits(Limits { max_steps: 500, max_time: Duration::from_secs(1) });
    let started = Instant::now();
    let summary = engine.run(&plan, RunRequest::default(), &mut Discard, None).await.unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    let error = summary.error.unwrap();
    let rest = error.strip_prefix("Aborted: Maximum execution time exceeded: ").unwrap_or_else(|| panic!("{error}"));
    let (elapsed_text, limit) = rest.split_once("s > ").unwrap();
    assert_eq!(limit, "1s");
    assert_eq!(elapsed_text.split('.').nth(1).map(str::len), Some(2), "two decimals: {error}");
    let elapsed: f64 = elapsed_text.parse().unwrap();
    assert!((1.0..2.0).contains(&elapsed), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "the slow node is not waited for");
}
