//! Model nodes through the gateway: the conformance cases whose model answers were mocked for
//! graphon run here with the same answers coming from a mock upstream over HTTP (the llm,
//! question-classifier and parameter-extractor nodes call the gateway, which calls the mock),
//! and must give graphon's result.

use std::sync::Arc;

use flowgate_dsl::{AppMode, Document};
use flowgate_engine::inputs::RunRequest;
use flowgate_engine::value::MapRef;
use flowgate_engine::{Engine, Plan, Ports};
use flowgate_mock_upstream::{Behaviour, MockUpstream};
use flowgate_models::config::GatewayConfig;
use flowgate_models::{Gateway, GatewayPort};
use serde_json::{Value as Json, json};

use crate::harness::repo_root;

/// Cases whose model calls happen one after another, in the order their answers are listed.
const CASES: &[(&str, &[&str])] = &[
    ("fixture-basic-llm-chat-workflow", &["llm_node"]),
    ("fixture-basic-chatflow", &["llm"]),
    ("classify-billing-extract-prompt", &["classify", "extract"]),
    ("classify-no-json", &["classify"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_nodes_through_the_gateway_match_graphon() {
    let cases = std::fs::read_to_string(repo_root().join("tests/conformance/cases.jsonl")).unwrap();
    for (id, order) in CASES {
        let case: Json = cases.lines().map(|line| serde_json::from_str::<Json>(line).unwrap()).find(|case| case["id"] == *id).unwrap();
        let expected: Json =
            serde_json::from_str(&std::fs::read_to_string(repo_root().join(format!("tests/conformance/expected/{id}.json"))).unwrap())
                .unwrap();
        let mock = MockUpstream::start().unwrap();
        let answers: Vec<Behaviour> = order.iter().map(|node| Behaviour::reply(case["mocks"][*node].as_str().unwrap())).collect();
        mock.script("upstream-model", answers);
        let yaml = format!(
            "models:\n  - name: main\n    targets:\n      - {{provider: openai_compatible, model: upstream-model, base_url: '{}'}}\ndefault: main\n",
            mock.base_url()
        );
        let gateway =
            Arc::new(Gateway::new(GatewayConfig::parse(&yaml, &|_| None).unwrap(), &flowgate_models::http_client().unwrap()).unwrap());
        let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway, None))), ..Ports::default() };
        let document = Document::load(&std::fs::read_to_string(repo_root().join(case["dsl"].as_str().unwrap())).unwrap()).unwrap();
        let plan = Arc::new(Plan::compile(&document).unwrap());
        let chat = document.app.mode == AppMode::AdvancedChat;
        let request = RunRequest {
            inputs: case.get("inputs").and_then(Json::as_object).map(flowgate_engine::value::map_from_json).unwrap_or_default(),
            query: case.get("query").and_then(Json::as_str).map(str::to_owned),
            user_id: "oracle-user".into(),
            conversation_id: chat.then(|| "oracle-conversation".into()),
            dialogue_count: chat.then_some(1),
            ..RunRequest::default()
        };
        let mut events = Vec::new();
        let summary = Engine::new(ports).run(&plan, request, &mut events, None).await.unwrap();
        let mut outputs = serde_json::to_value(MapRef(&summary.outputs)).unwrap();
        let mut want = expected["outputs"].clone();
        // Usage comes from the upstream (the mock counts tokens; graphon's mock reported none).
        for value in [&mut outputs, &mut want] {
            strip_usage(value);
        }
        assert_eq!(summary.status.as_str(), expected["status"], "{id}: {:?}", summary.error);
        assert_eq!(outputs, want, "{id}");
        assert_eq!(json!(summary.answer), expected["answer"], "{id}");
        assert_eq!(mock.received().len(), order.len(), "{id}: one upstream call per model node");
        assert_eq!(mock.received()[0].body["stream"], true, "{id}: model nodes stream");
        // The run's usage (message_end's `metadata.usage`) adds up what the upstream reported
        // for each model node.
        let node_usage = |field: &str| -> i64 {
            events
                .iter()
                .filter_map(|event| match event {
                    flowgate_engine::RunEvent::NodeFinished(finished) => finished.outputs.clone(),
                    _ => None,
                })
                .map(|outputs| {
                    let outputs = serde_json::to_value(MapRef(&outputs)).unwrap();
                    let usage = if outputs["usage"].is_object() { &outputs["usage"] } else { &outputs["__usage"] };
                    usage[field].as_i64().unwrap_or(0)
                })
                .sum()
        };
        if summary.status == flowgate_engine::RunStatus::Succeeded {
            assert!(summary.usage.prompt_tokens > 0 && summary.usage.completion_tokens > 0, "{id}: {:?}", summary.usage);
        }
        assert_eq!(summary.usage.prompt_tokens, node_usage("prompt_tokens"), "{id}");
        assert_eq!(summary.usage.completion_tokens, node_usage("completion_tokens"), "{id}");
        assert_eq!(summary.usage.total_tokens, summary.usage.prompt_tokens + summary.usage.completion_tokens, "{id}");
    }
}

fn strip_usage(value: &mut Json) {
    match value {
        Json::Object(map) => {
            map.remove("usage");
            map.values_mut().for_each(strip_usage);
        }
        Json::Array(items) => items.iter_mut().for_each(strip_usage),
        _ => {}
    }
}
