//! Model nodes through the gateway: the conformance cases whose model answers were mocked for
//! graphon run here with the same answers coming from a mock upstream over HTTP (the llm,
//! question-classifier and parameter-extractor nodes call the gateway, which calls the mock),
//! and must give graphon's result.

use std::sync::Arc;

use flowgate_dsl::{AppMode, Document};
use flowgate_engine::inputs::{PastTurn, RunRequest};
use flowgate_engine::value::MapRef;
use flowgate_engine::{Engine, Plan, Ports};
use flowgate_mock_upstream::{Behaviour, MockUpstream};
use flowgate_models::config::GatewayConfig;
use flowgate_models::{Gateway, GatewayPort};
use serde_json::{Value as Json, json};

use crate::harness::repo_root;

/// A gateway whose one logical model (the default) is the mock's `upstream-model`, with extra
/// model settings (`tool_calls: false`, `pricing: …`) as YAML lines.
fn gateway_to(mock: &MockUpstream, settings: &str) -> Arc<Gateway> {
    let yaml = format!(
        "models:\n  - name: main\n{settings}    targets:\n      - {{provider: openai_compatible, model: upstream-model, base_url: '{}'}}\ndefault: main\n",
        mock.base_url()
    );
    Arc::new(Gateway::new(GatewayConfig::parse(&yaml, &|_| None).unwrap(), &flowgate_models::http_client().unwrap()).unwrap())
}

/// The cases of `tests/conformance/model-prompts/<file>`, each with what graphon recorded for it.
fn model_prompt_cases(file: &str) -> Vec<(Json, Json)> {
    let folder = repo_root().join("tests/conformance/model-prompts");
    let cases: Vec<Json> = serde_json::from_str(&std::fs::read_to_string(folder.join(file)).unwrap()).unwrap();
    assert!(!cases.is_empty(), "{file} has no cases");
    cases
        .into_iter()
        .map(|case| {
            let path = folder.join(format!("expected/{}.json", case["id"].as_str().unwrap()));
            let expected = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            (case, expected)
        })
        .collect()
}

/// A case's `history`: `[[query, answer], …]`.
fn past_turns(case: &Json) -> Vec<PastTurn> {
    case["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|turn| PastTurn { query: turn[0].as_str().unwrap().into(), answer: turn[1].as_str().unwrap().into() })
        .collect()
}

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
        let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway_to(&mock, ""), None))), ..Ports::default() };
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

/// The parameter extractor through the gateway, against graphon's own prompts: every request
/// the mock upstream receives (messages, tool calls and their ids' pairing, tools, stop) must
/// be the prompt graphon built for the same node, conversation and model, and the node
/// outputs graphon's for the same replies. `tests/conformance/model_prompts.py` recorded them;
/// the models file's `tool_calls` plays the model's `tool-call` feature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_extractor_prompts_are_graphons() {
    let folder = repo_root().join("tests/conformance/model-prompts");
    for (case, expected) in model_prompt_cases("cases.json") {
        let case = &case;
        let id = case["id"].as_str().unwrap();
        let calls = expected["calls"].as_array().unwrap();
        let mock = MockUpstream::start().unwrap();
        let answers = calls
            .iter()
            .map(|call| {
                let reply = &case["replies"][call["node_id"].as_str().unwrap()];
                let behaviour = Behaviour::reply(reply["text"].as_str().unwrap());
                match reply.get("tool_call") {
                    Some(tool) => behaviour.calling(tool["name"].as_str().unwrap(), tool["arguments"].as_str().unwrap()),
                    None => behaviour,
                }
            })
            .collect();
        mock.script("upstream-model", answers);
        let gateway = gateway_to(&mock, &format!("    tool_calls: {}\n", case["tool_calls"]));
        let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway, None))), ..Ports::default() };
        let document = Document::load(&std::fs::read_to_string(folder.join(case["dsl"].as_str().unwrap())).unwrap()).unwrap();
        let plan = Arc::new(Plan::compile(&document).unwrap());
        let history = past_turns(case);
        let request = RunRequest {
            inputs: flowgate_engine::value::map_from_json(case["inputs"].as_object().unwrap()),
            query: case["query"].as_str().map(str::to_owned),
            user_id: "oracle-user".into(),
            conversation_id: Some("oracle-conversation".into()),
            dialogue_count: Some(history.len() as i64 + 1),
            history: history.into(),
            ..RunRequest::default()
        };
        let mut events = Vec::new();
        let summary = Engine::new(ports).run(&plan, request, &mut events, None).await.unwrap();
        let status = match expected["status"].as_str().unwrap() {
            "partial-succeeded" => flowgate_engine::RunStatus::PartialSucceeded,
            _ => flowgate_engine::RunStatus::Succeeded,
        };
        assert_eq!(summary.status, status, "{id}: {:?}", summary.error);
        assert_eq!(json!(summary.answer), expected["answer"], "{id}");

        let received = mock.received();
        assert_eq!(received.len(), calls.len(), "{id}: one upstream call per extractor that asks");
        for (call, request) in calls.iter().zip(&received) {
            let node = call["node_id"].as_str().unwrap();
            if request.path.ends_with("/chat/completions") {
                assert_eq!(same_ids(&request.body["messages"]), same_ids(&wire_messages(&call["messages"])), "{id}: {node}: messages");
            } else {
                // A completion-mode model: graphon's one user message is the prompt.
                assert_eq!(request.path, "/v1/completions", "{id}: {node}");
                let [message] = call["messages"].as_array().unwrap().as_slice() else { panic!("{id}: {node}: one message") };
                assert_eq!((&message["role"], &request.body["prompt"]), (&json!("user"), &message["content"]), "{id}: {node}: prompt");
            }
            let tools: Vec<Json> =
                call["tools"].as_array().unwrap().iter().map(|tool| json!({"type": "function", "function": tool})).collect();
            assert_eq!(request.body.get("tools").cloned().unwrap_or(json!([])), json!(tools), "{id}: {node}: tools");
            assert_eq!(request.body.get("stop").cloned().unwrap_or(json!([])), call["stop"], "{id}: {node}: stop");
        }

        for (node, want) in expected["nodes"].as_object().unwrap() {
            let finished = events
                .iter()
                .find_map(|event| match event {
                    flowgate_engine::RunEvent::NodeFinished(finished) if &*finished.info.node_id == node => Some(finished),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{id}: {node} did not finish"));
            let mut outputs = serde_json::to_value(MapRef(finished.outputs.as_deref().unwrap())).unwrap();
            let mut want_outputs = want["outputs"].clone();
            // Usage comes from the upstream (the mock counts tokens; graphon's mock reported none).
            for value in [&mut outputs, &mut want_outputs] {
                value.as_object_mut().unwrap().remove("__usage");
            }
            assert_eq!(outputs, want_outputs, "{id}: {node}: outputs");
            assert_eq!(json!(finished.error), want["error"], "{id}: {node}: error");
        }
    }
}

/// graphon's recorded messages as OpenAI's wire writes them.
fn wire_messages(messages: &Json) -> Json {
    let messages = messages.as_array().unwrap().iter().map(|message| {
        let mut wire = json!({"role": message["role"], "content": message["content"]});
        if let Some(calls) = message.get("tool_calls") {
            wire["tool_calls"] = calls
                .as_array()
                .unwrap()
                .iter()
                .map(|call| json!({"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}))
                .collect();
        }
        if let Some(id) = message.get("tool_call_id") {
            wire["tool_call_id"] = id.clone();
        }
        wire
    });
    Json::Array(messages.collect())
}

/// Tool call ids are random (uuid4 in graphon too): each becomes its order of first use, so
/// the comparison still checks that a tool message answers the call before it.
fn same_ids(messages: &Json) -> Json {
    let mut seen: Vec<String> = Vec::new();
    let mut rename = |id: &Json| {
        let id = id.as_str().unwrap().to_owned();
        let index = seen.iter().position(|known| *known == id).unwrap_or_else(|| {
            seen.push(id);
            seen.len() - 1
        });
        json!(format!("id-{index}"))
    };
    let mut messages = messages.clone();
    for message in messages.as_array_mut().unwrap() {
        if let Some(calls) = message.get_mut("tool_calls").and_then(Json::as_array_mut) {
            for call in calls {
                call["id"] = rename(&call["id"]);
            }
        }
        if let Some(id) = message.get("tool_call_id").cloned() {
            message["tool_call_id"] = rename(&id);
        }
    }
    messages
}

/// Prices from the models file's `pricing`, as Dify computes and prints them: each call's
/// `tokens × unit price × unit`, quantized to seven places; the run's usage (message_end's
/// `metadata.usage`) adds the calls with `LLMUsage.plus`. Every expected string is what
/// CPython's `decimal` prints for the same sums (`str((1033 * Decimal("2.5") *
/// Decimal("0.000001")).quantize(Decimal("0.0000001"), rounding=ROUND_HALF_UP))` and so on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_are_difys_for_the_tokens_the_upstream_reports() {
    let mock = MockUpstream::start().unwrap();
    mock.script(
        "upstream-model",
        vec![
            Behaviour::reply("{\"category_id\": \"billing\", \"category_name\": \"Billing and refunds\"}").reporting(1033, 135),
            Behaviour::reply("{\"amount\": 12.5, \"currency\": \"EUR\", \"items\": [\"mug\"]}").reporting(412, 7),
        ],
    );
    let gateway = gateway_to(&mock, "    pricing: {input: '2.5', output: 10, unit: 0.000001, currency: USD}\n");
    let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway.clone(), None))), ..Ports::default() };
    let document =
        Document::load(&std::fs::read_to_string(repo_root().join("tests/conformance/dsl/classifier-extractor.yml")).unwrap()).unwrap();
    let plan = Arc::new(Plan::compile(&document).unwrap());
    let request = RunRequest {
        inputs: flowgate_engine::value::map_from_json(json!({"question": "I want a refund for my mug"}).as_object().unwrap()),
        user_id: "price-user".into(),
        app_id: "app-prices".into(),
        ..RunRequest::default()
    };
    let mut events = Vec::new();
    let summary = Engine::new(ports).run(&plan, request, &mut events, None).await.unwrap();
    assert_eq!(summary.status, flowgate_engine::RunStatus::Succeeded, "{:?}", summary.error);

    let finished = |node: &str| {
        events
            .iter()
            .find_map(|event| match event {
                flowgate_engine::RunEvent::NodeFinished(finished) if &*finished.info.node_id == node => Some(finished.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{node} did not finish"))
    };
    let classify = finished("classify");
    let usage = serde_json::to_value(MapRef(classify.outputs.as_deref().unwrap())).unwrap()["usage"].clone();
    assert_eq!(
        [&usage["prompt_unit_price"], &usage["prompt_price_unit"], &usage["prompt_price"]],
        [&json!("2.5"), &json!("0.000001"), &json!("0.0025825")]
    );
    assert_eq!([&usage["completion_unit_price"], &usage["completion_price"]], [&json!("10"), &json!("0.0013500")]);
    assert_eq!([&usage["total_tokens"], &usage["total_price"], &usage["currency"]], [&json!(1168), &json!("0.0039325"), &json!("USD")]);
    let metadata = serde_json::to_value(MapRef(classify.metadata.as_deref().unwrap())).unwrap();
    assert_eq!([&metadata["total_tokens"], &metadata["total_price"]], [&json!(1168), &json!("0.0039325")]);
    let extract = finished("extract");
    let usage = serde_json::to_value(MapRef(extract.outputs.as_deref().unwrap())).unwrap()["__usage"].clone();
    assert_eq!(
        [&usage["prompt_price"], &usage["completion_price"], &usage["total_price"]],
        [&json!("0.0010300"), &json!("0.0000700"), &json!("0.0011000")]
    );

    let run = serde_json::to_value(summary.usage.to_value()).unwrap();
    assert_eq!([&run["prompt_tokens"], &run["completion_tokens"], &run["total_tokens"]], [&json!(1445), &json!(142), &json!(1587)]);
    assert_eq!(
        [&run["prompt_price"], &run["completion_price"], &run["total_price"]],
        [&json!("0.0036125"), &json!("0.0014200"), &json!("0.0050325")]
    );

    let mut metrics = String::new();
    gateway.metrics().render(&mut metrics);
    let cost = metrics.lines().find(|line| line.starts_with("flowgate_gateway_cost_total{")).unwrap_or_default();
    let host = mock.base_url().trim_start_matches("http://").trim_end_matches("/v1").to_owned();
    assert_eq!(
        cost,
        format!(
            "flowgate_gateway_cost_total{{model=\"main\",target=\"openai_compatible/upstream-model@{host}\",currency=\"USD\"}} 0.0050325"
        ),
        "{metrics}"
    );
    // Charged to the app whose nodes made the calls.
    for line in [
        "flowgate_gateway_app_cost_total{app=\"app-prices\",currency=\"USD\"} 0.0050325",
        "flowgate_gateway_app_tokens_total{app=\"app-prices\",direction=\"completion\"} 142",
        "flowgate_gateway_app_tokens_total{app=\"app-prices\",direction=\"prompt\"} 1445",
    ] {
        assert!(metrics.lines().any(|candidate| candidate == line), "missing `{line}` in:\n{metrics}");
    }
}

/// Serves a case's file bytes by URL, as the server's file store and egress would.
struct CaseFiles(std::collections::HashMap<String, Vec<u8>>);

impl flowgate_engine::ports::FilePort for CaseFiles {
    fn read(
        &self,
        file: &flowgate_engine::File,
    ) -> futures::future::BoxFuture<'static, Result<bytes::Bytes, flowgate_engine::ports::PortError>> {
        let bytes = file.remote_url.as_ref().and_then(|url| self.0.get(url)).cloned();
        Box::pin(async move {
            bytes.map(bytes::Bytes::from).ok_or_else(|| {
                flowgate_engine::ports::PortError::new(flowgate_engine::ports::PortErrorKind::Other, "no such file in the case")
            })
        })
    }

    fn store(
        &self,
        _content: bytes::Bytes,
        _mime_type: &str,
        _filename: &str,
    ) -> futures::future::BoxFuture<'static, Result<flowgate_engine::File, flowgate_engine::ports::PortError>> {
        Box::pin(async { Err(flowgate_engine::ports::PortError::new(flowgate_engine::ports::PortErrorKind::Other, "read only")) })
    }
}

/// graphon's prompt content as OpenAI's chat completions carry it (what Dify's OpenAI plugin
/// sends): images as `image_url` data URLs with their detail, documents as `file`, audio as
/// `input_audio`, videos as `video_url`.
fn openai_content(content: &Json) -> Json {
    let Some(items) = content.as_array() else { return content.clone() };
    let parts = items.iter().map(|item| {
        let data_url = || format!("data:{};base64,{}", item["mime_type"].as_str().unwrap(), item["base64_data"].as_str().unwrap());
        match item["type"].as_str().unwrap() {
            "text" => json!({"type": "text", "text": item["text"]}),
            "image" => json!({"type": "image_url", "image_url": {"url": data_url(), "detail": item["detail"]}}),
            "document" => json!({"type": "file", "file": {"filename": item["filename"], "file_data": data_url()}}),
            "audio" => json!({"type": "input_audio", "input_audio": {"data": item["base64_data"], "format": item["format"]}}),
            "video" => json!({"type": "video_url", "video_url": {"url": data_url()}}),
            other => panic!("unknown content type {other}"),
        }
    });
    Json::Array(parts.collect())
}

/// llm nodes with files, against graphon's own prompts (`vision-cases.json`): a file variable
/// in a chat template becomes a message of its own after the text; with vision on, the vision
/// files go first into the user's turn (or a user message of their own after an assistant
/// message) with the node's detail; files of kinds the model's `features` leave out (audio
/// here) are dropped. Every request the mock upstream receives must carry graphon's messages in
/// OpenAI's content parts, the files' bytes inlined as base64 (Dify's default send format).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_prompts_with_files_are_graphons() {
    let folder = repo_root().join("tests/conformance/model-prompts");
    for (case, expected) in model_prompt_cases("vision-cases.json") {
        let case = &case;
        let id = case["id"].as_str().unwrap();
        let calls = expected["calls"].as_array().unwrap();
        let mock = MockUpstream::start().unwrap();
        let answers =
            calls.iter().map(|call| Behaviour::reply(case["replies"][call["node_id"].as_str().unwrap()]["text"].as_str().unwrap()));
        mock.script("upstream-model", answers.collect());
        let gateway = gateway_to(&mock, &format!("    features: {}\n", case["features"]));
        let bytes =
            case["file_bytes"].as_object().unwrap().iter().map(|(url, text)| (url.clone(), text.as_str().unwrap().as_bytes().to_vec()));
        let files: Arc<dyn flowgate_engine::ports::FilePort> = Arc::new(CaseFiles(bytes.collect()));
        let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway, Some(files.clone())))), files: Some(files), ..Ports::default() };
        let document = Document::load(&std::fs::read_to_string(folder.join(case["dsl"].as_str().unwrap())).unwrap()).unwrap();
        let plan = Arc::new(Plan::compile(&document).unwrap());
        let history = past_turns(case);
        let sys_files = case["sys_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|spec| {
                flowgate_engine::inputs::default_file_resolver(&flowgate_engine::value::map_from_json(spec.as_object().unwrap())).unwrap()
            })
            .collect();
        let request = RunRequest {
            inputs: flowgate_engine::value::map_from_json(case["inputs"].as_object().unwrap()),
            query: case["query"].as_str().map(str::to_owned),
            files: sys_files,
            user_id: "oracle-user".into(),
            conversation_id: Some("oracle-conversation".into()),
            dialogue_count: Some(history.len() as i64 + 1),
            history: history.into(),
            ..RunRequest::default()
        };
        let mut events = Vec::new();
        let summary = Engine::new(ports).run(&plan, request, &mut events, None).await.unwrap();
        assert_eq!(summary.status.as_str(), expected["status"], "{id}: {:?}", summary.error);
        assert_eq!(json!(summary.answer), expected["answer"], "{id}");
        let received = mock.received();
        assert_eq!(received.len(), calls.len(), "{id}: one upstream call per llm node");
        for (call, request) in calls.iter().zip(&received) {
            let node = call["node_id"].as_str().unwrap();
            let want: Vec<Json> = call["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|message| json!({"role": message["role"], "content": openai_content(&message["content"])}))
                .collect();
            assert_eq!(request.body["messages"], json!(want), "{id}: {node}: messages");
        }
        // The bytes really are the files' (not a URL the upstream would have to fetch):
        // base64 of "photo-png-bytes".
        let first_image = &received[0].body["messages"][2]["content"][0]["image_url"]["url"];
        assert_eq!(first_image, "data:image/png;base64,cGhvdG8tcG5nLWJ5dGVz", "{id}");
    }
}

const MEMORY_CHATFLOW: &str = "\
app: {name: memory trim, mode: advanced-chat}
kind: app
version: 0.3.0
workflow:
  graph:
    edges:
    - {id: a, source: start, sourceHandle: source, target: llm, targetHandle: target}
    - {id: b, source: llm, sourceHandle: source, target: answer, targetHandle: target}
    nodes:
    - {id: start, data: {type: start, title: Start, variables: []}}
    - id: llm
      data:
        type: llm
        title: LLM
        model: {provider: openai, name: gpt-4o, mode: chat, completion_params: {max_tokens: 100}}
        prompt_template: [{role: system, text: Be brief.}]
        memory: {window: {enabled: false, size: 10}}
        context: {enabled: false, variable_selector: []}
        vision: {enabled: false}
    - {id: answer, data: {type: answer, title: Answer, answer: '{{#llm.text#}}'}}
";

/// With the models file's `context_size`, an llm node's memory is trimmed as Dify's
/// `TokenBufferMemory` trims it: the history may take the context less `max_tokens`, and the
/// oldest messages go one at a time (so the history can start with an answer) until it fits.
/// Each question below is 40 ASCII characters (3 + 10 estimated tokens), each answer 2 (3 + 1),
/// plus 3 for the whole: 71 tokens for the four turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_trimmed_to_the_models_context_size() {
    let history: Vec<PastTurn> = (1..=4).map(|n| PastTurn { query: format!("q{n}{}", "x".repeat(38)), answer: format!("a{n}") }).collect();
    let plan = Arc::new(Plan::compile(&Document::load(MEMORY_CHATFLOW).unwrap()).unwrap());
    // (context size, the history messages sent): no size, no trimming; 154 leaves 54 tokens
    // (q1 and a1 go); 150 leaves 50 (q2 goes too).
    let cases: [(Option<u64>, &[&str]); 3] = [
        (None, &["q1", "a1", "q2", "a2", "q3", "a3", "q4", "a4"]),
        (Some(154), &["q2", "a2", "q3", "a3", "q4", "a4"]),
        (Some(150), &["a2", "q3", "a3", "q4", "a4"]),
    ];
    for (context_size, kept) in cases {
        let mock = MockUpstream::start().unwrap();
        mock.script("upstream-model", vec![Behaviour::reply("ok")]);
        let settings = context_size.map(|size| format!("    context_size: {size}\n")).unwrap_or_default();
        let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway_to(&mock, &settings), None))), ..Ports::default() };
        let request = RunRequest {
            query: Some("now".into()),
            user_id: "u".into(),
            conversation_id: Some("c".into()),
            dialogue_count: Some(5),
            history: history.clone().into(),
            ..RunRequest::default()
        };
        let summary = Engine::new(ports).run(&plan, request, &mut Vec::new(), None).await.unwrap();
        assert_eq!(summary.answer, "ok", "{context_size:?}: {:?}", summary.error);
        let messages = mock.received()[0].body["messages"].as_array().unwrap().clone();
        let sent: Vec<String> =
            messages[1..messages.len() - 1].iter().map(|message| message["content"].as_str().unwrap()[..2].to_owned()).collect();
        assert_eq!(sent, kept, "{context_size:?}");
        assert_eq!(messages[0]["content"], "Be brief.");
        assert_eq!(messages.last().unwrap()["content"], "now", "the user's turn is never trimmed");
    }

    // A Gemini model's cap (`max_output_tokens` in Dify) counts the same, and reaches every
    // upstream under OpenAI's name.
    let gemini = MEMORY_CHATFLOW.replace(
        "{provider: openai, name: gpt-4o, mode: chat, completion_params: {max_tokens: 100}}",
        "{provider: langgenius/gemini/google, name: gemini-2.5-flash, mode: chat, completion_params: {max_output_tokens: 100}}",
    );
    let plan = Arc::new(Plan::compile(&Document::load(&gemini).unwrap()).unwrap());
    let mock = MockUpstream::start().unwrap();
    mock.script("upstream-model", vec![Behaviour::reply("ok")]);
    let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway_to(&mock, "    context_size: 154\n"), None))), ..Ports::default() };
    let request = RunRequest {
        query: Some("now".into()),
        user_id: "u".into(),
        conversation_id: Some("c".into()),
        dialogue_count: Some(5),
        history: history.into(),
        ..RunRequest::default()
    };
    Engine::new(ports).run(&plan, request, &mut Vec::new(), None).await.unwrap();
    let body = &mock.received()[0].body;
    assert_eq!((body["max_tokens"].clone(), body.get("max_output_tokens")), (json!(100), None));
    assert_eq!(body["messages"].as_array().unwrap().len(), 1 + 6 + 1, "q1 and a1 trimmed, as with max_tokens");
}

/// Dify's `response_format: json_schema` with the schema as JSON text in `json_schema` reaches
/// the model as OpenAI's one `response_format` object, as Dify's OpenAI plugin builds it; a
/// missing schema fails the node with the plugin's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_response_format_is_sent_as_openais_object() {
    let params = |completion_params: &str| {
        MEMORY_CHATFLOW.replace("completion_params: {max_tokens: 100}", &format!("completion_params: {completion_params}"))
    };
    let run = |dsl: String| async move {
        let mock = MockUpstream::start().unwrap();
        mock.script("upstream-model", vec![Behaviour::reply("{\"ok\": true}")]);
        let ports = Ports { model: Some(Arc::new(GatewayPort::new(gateway_to(&mock, ""), None))), ..Ports::default() };
        let plan = Arc::new(Plan::compile(&Document::load(&dsl).unwrap()).unwrap());
        let request =
            RunRequest { query: Some("now".into()), user_id: "u".into(), conversation_id: Some("c".into()), ..RunRequest::default() };
        let summary = Engine::new(ports).run(&plan, request, &mut Vec::new(), None).await.unwrap();
        (summary, mock.received())
    };
    let (summary, sent) =
        run(params(r#"{response_format: json_schema, json_schema: '{"name": "answer", "schema": {"type": "object"}, "strict": true}'}"#))
            .await;
    assert_eq!(summary.answer, "{\"ok\": true}", "{:?}", summary.error);
    assert_eq!(
        sent[0].body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}})
    );
    assert!(sent[0].body.get("json_schema").is_none(), "the text form is not sent on");

    let (summary, sent) = run(params("{response_format: json_object}")).await;
    assert_eq!(summary.answer, "{\"ok\": true}");
    assert_eq!(sent[0].body["response_format"], json!({"type": "json_object"}));

    let (summary, sent) = run(params("{response_format: json_schema}")).await;
    assert_eq!(summary.status, flowgate_engine::RunStatus::Failed);
    assert!(
        summary.error.as_deref().unwrap_or_default().contains("Must define JSON Schema when the response format is json_schema"),
        "{:?}",
        summary.error
    );
    assert!(sent.is_empty(), "nothing was sent");
}
