//! Import of hostile and broken DSL files: every one must come back as a clear error (or a
//! located diagnostic), never a panic, a hang or unbounded memory.

// A failed set-up step should stop the test with its message, like a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use flowgate_dsl::{Diagnostic, Document, DslError, MAX_DSL_BYTES};

const MINIMAL: &str = include_str!("data/minimal.yml");

/// A workflow DSL with the given node and edge lines (YAML flow mappings, one per line).
fn workflow(nodes: &[&str], edges: &[&str]) -> String {
    let mut text = String::from("app: {name: test, mode: workflow}\nkind: app\nversion: 0.6.0\nworkflow:\n  graph:\n    nodes:\n");
    for node in nodes {
        text.push_str(&format!("    - {node}\n"));
    }
    text.push_str(if edges.is_empty() { "    edges: []\n" } else { "    edges:\n" });
    for edge in edges {
        text.push_str(&format!("    - {edge}\n"));
    }
    text
}

const START: &str = "{id: start, data: {type: start, title: Start, variables: []}}";
const END: &str = "{id: end, data: {type: end, title: End, outputs: []}}";

fn errors(text: &str) -> Vec<Diagnostic> {
    Document::load(text).expect("loads").errors()
}

fn has_error<'a>(diagnostics: &'a [Diagnostic], code: &str) -> &'a Diagnostic {
    diagnostics.iter().find(|diagnostic| diagnostic.code == code).unwrap_or_else(|| panic!("no `{code}` in {diagnostics:#?}"))
}

#[test]
fn a_minimal_dsl_loads_without_findings() {
    let document = Document::load(MINIMAL).unwrap();
    assert!(document.diagnostics().is_empty(), "{:?}", document.diagnostics());
}

#[test]
fn the_console_json_wrapper_is_unwrapped() {
    let wrapped = serde_json::json!({ "data": MINIMAL }).to_string();
    let document = Document::load(&wrapped).unwrap();
    assert_eq!(document.app.name, "minimal");
    assert!(document.errors().is_empty());
}

#[test]
fn malformed_yaml_names_the_line() {
    let text = "app:\n  name: broken\n  mode: workflow\nworkflow: {graph: [unclosed\n";
    let error = Document::load(text).unwrap_err();
    let DslError::Yaml { line, .. } = &error else { panic!("expected a YAML error, got {error:?}") };
    assert!(line.is_some(), "no line in {error}");
    assert!(error.to_string().starts_with("invalid YAML at line"), "{error}");
}

#[test]
fn a_document_that_is_not_a_mapping_is_refused() {
    let error = Document::load("- just\n- a list\n").unwrap_err();
    assert_eq!(error.to_string(), "invalid DSL: the content must be a mapping, found a list");
    assert!(matches!(Document::load("   \n").unwrap_err(), DslError::NotMapping { .. }));
}

#[test]
fn an_alias_bomb_is_refused_quickly() {
    // "Billion laughs": nine levels of ten aliases each would expand to 10^9 strings.
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        let items = [previous.as_str(); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    let started = Instant::now();
    let error = Document::load(&text).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(matches!(error, DslError::Yaml { .. }), "{error}");
}

#[test]
fn files_above_ten_mebibytes_are_refused_before_parsing() {
    let mut text = MINIMAL.to_owned();
    text.push_str(&format!("# {}\n", "x".repeat(MAX_DSL_BYTES)));
    let error = Document::load(&text).unwrap_err();
    assert_eq!(error, DslError::TooLarge { size: text.len(), limit: MAX_DSL_BYTES });
    assert!(error.to_string().contains("the limit is 10485760 bytes"));
}

#[test]
fn a_large_legitimate_file_under_the_limit_loads() {
    // A 9 MB export (a long template) is still accepted.
    let big = "y".repeat(9 * 1024 * 1024);
    let text = workflow(
        &[
            START,
            &format!("{{id: tpl, data: {{type: template-transform, title: T, template: '{big}', variables: []}}}}"),
            "{id: end, data: {type: end, title: End, outputs: [{variable: out, value_selector: [tpl, output]}]}}",
        ],
        &["{source: start, target: tpl}", "{source: tpl, target: end}"],
    );
    assert!(errors(&text).is_empty());
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let text = format!("app: {}1{}\n", open.repeat(100_000), close.repeat(100_000));
        let error = Document::load(&text).unwrap_err();
        assert!(matches!(error, DslError::Yaml { .. } | DslError::TooDeep { .. }), "{error}");
    }
    let mut block = String::new();
    for depth in 0..5_000 {
        block.push_str(&format!("{}k:\n", "  ".repeat(depth)));
    }
    assert!(Document::load(&block).is_err());
}

#[test]
fn cycles_outside_loops_are_errors_naming_the_nodes() {
    let text = workflow(
        &[
            START,
            "{id: a, data: {type: template-transform, title: A, template: a, variables: []}}",
            "{id: b, data: {type: template-transform, title: B, template: b, variables: []}}",
            END,
        ],
        &["{source: start, target: a}", "{source: a, target: b}", "{source: b, target: a}", "{source: b, target: end}"],
    );
    let diagnostics = errors(&text);
    let cycle = has_error(&diagnostics, "cycle");
    assert!(cycle.message.contains("a -> b -> a"), "{cycle}");
}

#[test]
fn dangling_edges_name_the_missing_node_and_the_line() {
    let text =
        workflow(&[START, END], &["{source: start, target: end}", "{source: start, target: nowhere}", "{source: ghost, target: end}"]);
    let diagnostics = errors(&text);
    let target = has_error(&diagnostics, "unknown_edge_target");
    assert!(target.message.contains("nowhere"), "{target}");
    assert_eq!(target.line, Some(11), "{target}");
    let source = has_error(&diagnostics, "unknown_edge_source");
    assert!(source.message.contains("ghost"), "{source}");
    assert_eq!(source.line, Some(12), "{source}");
}

#[test]
fn a_missing_start_node_is_an_error() {
    let text = workflow(&[END], &[]);
    has_error(&errors(&text), "missing_start_node");
}

#[test]
fn unknown_node_types_name_the_node() {
    let text = workflow(
        &[START, "{id: mystery, data: {type: teleport, title: Mystery}}", END],
        &["{source: start, target: mystery}", "{source: mystery, target: end}"],
    );
    let diagnostics = errors(&text);
    let unknown = has_error(&diagnostics, "unknown_node_type");
    assert_eq!(unknown.node_id.as_deref(), Some("mystery"));
    assert!(unknown.to_string().contains("teleport"), "{unknown}");
    assert_eq!(unknown.line, Some(8));
}

#[test]
fn selectors_to_missing_nodes_name_the_node_and_field() {
    let text = workflow(
        &[START, "{id: end, data: {type: end, title: End, outputs: [{variable: out, value_selector: [vanished, text]}]}}"],
        &["{source: start, target: end}"],
    );
    let diagnostics = errors(&text);
    let selector = has_error(&diagnostics, "unknown_selector_node");
    assert_eq!(selector.node_id.as_deref(), Some("end"));
    assert!(selector.field.as_deref().is_some_and(|field| field == "data.outputs[0].value_selector"), "{selector}");
    assert!(selector.message.contains("vanished"), "{selector}");
}

#[test]
fn bad_operator_strings_name_the_node_and_field() {
    let text = workflow(
        &[
            START,
            "{id: check, data: {type: if-else, title: Check, cases: [{case_id: 'true', logical_operator: and, conditions: [{variable_selector: [sys, user_id], comparison_operator: resembles, value: x}]}]}}",
            END,
        ],
        &["{source: start, target: check}", "{source: check, target: end, sourceHandle: 'true'}"],
    );
    let diagnostics = errors(&text);
    let bad = diagnostics.iter().find(|diagnostic| diagnostic.node_id.as_deref() == Some("check")).expect("a finding for `check`");
    let shown = bad.to_string();
    assert!(shown.contains("resembles"), "{shown}");
    assert!(bad.field.as_deref().is_some_and(|field| field.contains("comparison_operator")), "{shown}");
}

#[test]
fn wrong_field_types_name_the_node_and_field() {
    let text = workflow(&[START, "{id: end, data: {type: end, title: End, outputs: 7}}"], &["{source: start, target: end}"]);
    let diagnostics = errors(&text);
    let bad = diagnostics.iter().find(|diagnostic| diagnostic.node_id.as_deref() == Some("end")).expect("a finding for `end`");
    assert_eq!(bad.field.as_deref(), Some("data.outputs"), "{bad}");
}

#[test]
fn notes_and_unknown_keys_survive_an_export_round_trip() {
    let text = workflow(
        &[
            START,
            "{id: note, type: custom-note, data: {type: '', title: '', text: remember me, theme: blue}}",
            "{id: end, data: {type: end, title: End, outputs: [], shiny_new_setting: 42}}",
        ],
        &["{source: start, target: end}"],
    );
    let document = Document::load(&text).unwrap();
    assert!(document.errors().is_empty(), "{:?}", document.errors());
    assert!(document.graph().unwrap().nodes.iter().all(|node| node.id != "note"), "notes are not executable nodes");
    let exported = Document::load(&document.export_yaml()).unwrap();
    assert_eq!(exported.raw(), document.raw());
    assert!(document.export_yaml().contains("shiny_new_setting: 42"));
    assert!(document.export_yaml().contains("remember me"));
}

#[test]
fn garbage_never_panics() {
    // A few shapes that have tripped YAML importers: tags, binary, odd scalars, wrong types at
    // every envelope level.
    let inputs = [
        "!!binary aGVsbG8=",
        "app: !!python/object:os.system {}",
        "\u{0}\u{1}\u{2}",
        "app: [1, 2]\nworkflow: 3",
        "app: {mode: workflow}\nworkflow: {graph: {nodes: 5, edges: 'x'}}",
        "app: {mode: workflow}\nworkflow: {graph: {nodes: [{id: [1], data: 3}], edges: [7]}}",
        "app: {mode: advanced-chat}\nversion: 99.0.0\nworkflow: {graph: {nodes: [], edges: []}}",
        "version: 0.1.0\napp: {mode: chat}",
        "{\"data\": 5}",
        "{\"data\": \"- not\\n- a mapping\"}",
        "app: &a {name: *a}",
    ];
    for input in inputs {
        if let Ok(document) = Document::load(input) {
            let _ = document.diagnostics();
            let _ = document.export_yaml();
        }
    }
}

/// A basic-editor app gets the graph Dify's converter would build: start (its form in the
/// newer shape), llm (`llm`) and answer, with the chat app's prompt rules kept for the engine.
#[test]
fn basic_editor_apps_load_as_a_start_llm_answer_graph() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/service/basic-apps/chat.yml")).unwrap();
    let document = Document::load(&text).unwrap();
    assert!(document.errors().is_empty(), "{:?}", document.errors());
    let workflow = document.workflow.as_ref().unwrap();
    let types: Vec<&str> = workflow.graph.nodes.iter().map(|node| node.node_type.as_str()).collect();
    assert_eq!(types, ["start", "llm", "answer"]);
    let start = &workflow.graph.nodes[0].raw;
    assert_eq!(start["variables"][0]["variable"], "persona");
    assert_eq!(start["variables"][0]["type"], "text-input");
    assert_eq!(
        workflow.app_prompt,
        Some(flowgate_dsl::AppPrompt::Simple { pre_prompt: "You are {{persona}}. Ignore {{unknown}}.".into() })
    );
    assert_eq!(workflow.features["opening_statement"], "Ahoy, matey!");
}

#[test]
fn basic_editor_app_problems_name_the_model_config_field() {
    let document = Document::load(
        "app: {mode: completion, name: x}\nmodel_config:\n  user_input_form: [{text-input: {variable: a}, paragraph: {variable: b}}]\nversion: 0.1.5\n",
    )
    .unwrap();
    let errors = document.errors();
    let fields: Vec<_> = errors.iter().map(|error| error.field.clone().unwrap_or_default()).collect();
    assert!(fields.contains(&"model_config.user_input_form[0]".to_owned()), "{errors:?}");
    assert!(fields.contains(&"model_config.model".to_owned()), "{errors:?}");

    let agent = Document::load(
        "app: {mode: agent-chat, name: x}\nmodel_config:\n  model: {provider: openai, name: gpt-4o}\n  agent_mode: {enabled: true, tools: [{tool_name: search, enabled: true}]}\n",
    )
    .unwrap();
    let warnings: Vec<_> = agent.diagnostics().into_iter().map(|diagnostic| diagnostic.message).collect();
    assert!(
        warnings.iter().any(|message| message.contains("not supported yet: agent tools (model_config.agent_mode.tools)")),
        "{warnings:?}"
    );
}

#[test]
fn an_extractor_parameter_of_an_unknown_type_names_the_node_and_field() {
    let extractor = "{id: pe, data: {type: parameter-extractor, title: PE, query: [start, q], model: {provider: openai, name: m, mode: chat}, parameters: [{name: a, type: string, description: a, required: true}, {name: b, type: file, description: b, required: false}]}}";
    let text = workflow(&[START, extractor, END], &["{source: start, target: pe}", "{source: pe, target: end}"]);
    let diagnostics = errors(&text);
    let found = has_error(&diagnostics, "invalid_parameter_type");
    // Dify's message, typo included.
    assert!(found.message.contains("type file is not allowd to use in Parameter Extractor node."), "{found}");
    assert_eq!(found.node_id.as_deref(), Some("pe"));
    assert_eq!(found.field.as_deref(), Some("data.parameters[1].type"));
    assert!(found.line.is_some(), "{found}");
}

/// A quoted scalar whose continuation lines sit no deeper than its key: YAML says no, PyYAML
/// (Dify's importer) reads it. The expected strings are what PyYAML 6's `yaml.safe_load` gives
/// for this file.
#[test]
fn quoted_scalars_continued_below_their_key_read_as_pyyaml_reads_them() {
    let text = include_str!("data/underindented_quoted_scalars.yml");
    let document = Document::load(text).unwrap_or_else(|error| panic!("PyYAML loads this file: {error}"));
    assert_eq!(document.app.description, "Summarise the ticket and say whether it is 'urgent' 'yes' or 'no'");
    let end = document.graph().and_then(|graph| graph.node("end")).expect("the end node");
    assert_eq!(end.title, "End of the 'line'");
    assert_eq!(document.node_line("end"), Some(18), "line numbers still point into the file as written");
    let wrapped = serde_json::json!({ "data": text }).to_string();
    assert_eq!(Document::load(&wrapped).unwrap().graph().unwrap().node("end").unwrap().title, "End of the 'line'");
}
