//! The `flowgate` command line: exact output forms and exit statuses other tools rely on.
//! Expected results come from the conformance suite's graphon expectations, not from flowgate.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn flowgate(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_flowgate")).args(args).current_dir(repo_root()).output().unwrap();
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A conformance case and graphon's result for it.
fn case(id: &str) -> (Json, Json) {
    let root = repo_root();
    let cases = std::fs::read_to_string(root.join("tests/conformance/cases.jsonl")).unwrap();
    let case: Json =
        cases.lines().map(|line| serde_json::from_str::<Json>(line).unwrap()).find(|case| case["id"] == id).expect("case exists");
    let expected = std::fs::read_to_string(root.join(format!("tests/conformance/expected/{id}.json"))).unwrap();
    (case, serde_json::from_str(&expected).unwrap())
}

/// `flowgate run` arguments for a conformance case.
fn run_args(case: &Json) -> Vec<String> {
    let mut args = vec!["run".to_owned(), case["dsl"].as_str().unwrap().to_owned()];
    args.extend(["--inputs".to_owned(), case.get("inputs").cloned().unwrap_or(Json::Object(Default::default())).to_string()]);
    if let Some(query) = case.get("query").and_then(Json::as_str) {
        args.extend(["--query".to_owned(), query.to_owned()]);
    }
    if let Some(mocks) = case.get("mocks") {
        args.extend(["--mocks".to_owned(), mocks.to_string()]);
    }
    args
}

fn last_json_line(stdout: &str) -> Json {
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("the last line is JSON")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const DANGLING: &str = "app: {name: broken, mode: workflow}\nkind: app\nversion: 0.6.0\nworkflow:\n  graph:\n    nodes:\n    - {id: start, data: {type: start, title: Start, variables: []}}\n    - {id: end, data: {type: end, title: End, outputs: []}}\n    edges:\n    - {source: start, target: nowhere}\n";

#[test]
fn check_prints_one_line_per_file_and_fails_if_any_file_fails() {
    let broken = temp_file("broken.yml", DANGLING);
    let ok = "crates/flowgate-dsl/tests/data/minimal.yml";
    let tool = "tests/corpus/dify-fixtures/chatflow_time_tool_static_output_workflow.yml";
    let output = flowgate(&["check", ok, broken.to_str().unwrap(), tool]);
    assert_eq!(output.code, 1, "{}", output.stdout);
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines[0], format!("ok {ok}"));
    let broken_line = format!("error {}: ", broken.display());
    let error = lines.iter().find(|line| line.starts_with(&broken_line)).expect("an error line for the broken file");
    assert!(error.contains("nowhere"), "{error}");
    assert!(lines.contains(&format!("ok {tool}").as_str()), "{lines:?}");
    // A tool node parses and validates; that it cannot run yet is a warning, not an error.
    assert!(lines.iter().any(|line| line.starts_with(&format!("warning {tool}: node ")) && line.contains("tool")), "{lines:?}");
    assert!(lines.iter().all(|line| line.starts_with("ok ") || line.starts_with("error ") || line.starts_with("warning ")));

    let output = flowgate(&["check", ok, tool]);
    assert_eq!(output.code, 0, "{}", output.stdout);
}

#[test]
fn check_reports_unreadable_and_unparsable_files() {
    let garbage = temp_file("garbage.yml", "app: [unclosed\n");
    let output = flowgate(&["check", "no/such/file.yml", garbage.to_str().unwrap()]);
    assert_eq!(output.code, 1);
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert!(lines[0].starts_with("error no/such/file.yml: cannot read the file"), "{lines:?}");
    assert!(lines[1].starts_with(&format!("error {}: invalid YAML at line", garbage.display())), "{lines:?}");
}

#[test]
fn run_prints_the_result_graphon_produces() {
    let (case, expected) = case("bench2");
    let args = run_args(&case);
    let output = flowgate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(output.stdout.lines().count(), 1, "without --events only the result is printed");
    let result = last_json_line(&output.stdout);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["outputs"], expected["outputs"]);
    assert_eq!(result["error"], Json::Null);
    assert!(result.get("answer").is_none(), "workflow results carry no answer");
}

#[test]
fn a_failed_run_exits_1_with_the_error() {
    let (case, expected) = case("ifelse-missing-variable");
    let args = run_args(&case);
    let output = flowgate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(output.code, 1);
    let result = last_json_line(&output.stdout);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"], expected["error"]);
}

#[test]
fn a_partially_succeeded_run_exits_0() {
    let (case, expected) = case("list-operator-serial-default-value");
    assert_eq!(expected["status"], "partial-succeeded");
    let args = run_args(&case);
    let output = flowgate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(output.code, 0, "{}", output.stderr);
    let result = last_json_line(&output.stdout);
    assert_eq!(result["status"], "partial-succeeded");
    assert_eq!(result["outputs"], expected["outputs"]);
}

#[test]
fn usage_dsl_and_input_errors_exit_2() {
    let bad_json = flowgate(&["run", "bench/workloads/bench2.yml", "--inputs", "{not json"]);
    assert_eq!(bad_json.code, 2);
    assert!(bad_json.stderr.contains("--inputs is not valid JSON"), "{}", bad_json.stderr);

    let broken = temp_file("broken-run.yml", DANGLING);
    let bad_dsl = flowgate(&["run", broken.to_str().unwrap()]);
    assert_eq!(bad_dsl.code, 2);
    assert!(bad_dsl.stderr.contains("nowhere"), "{}", bad_dsl.stderr);

    let (case, expected) = case("start-inputs-missing-required");
    let args = run_args(&case);
    let missing = flowgate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains(expected["error"].as_str().unwrap()), "{}", missing.stderr);

    let unknown_flag = flowgate(&["run", "bench/workloads/bench2.yml", "--no-such-flag"]);
    assert_eq!(unknown_flag.code, 2);
}

#[test]
fn events_come_first_as_service_api_payloads() {
    let (case, expected) = case("stream-order-short");
    let mut args = run_args(&case);
    args.push("--events".into());
    let output = flowgate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(output.code, 0, "{}", output.stderr);
    let lines: Vec<Json> = output.stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let (result, events) = lines.split_last().unwrap();
    let names: Vec<&str> = events.iter().map(|event| event["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"workflow_started"));
    assert_eq!(names.last(), Some(&"message_end"));
    assert_eq!(names[names.len() - 2], "workflow_finished");
    let conversation = &events[0]["conversation_id"];
    assert!(events.iter().all(|event| &event["conversation_id"] == conversation && event["task_id"].is_string()));
    let streamed: String =
        events.iter().filter(|event| event["event"] == "message").map(|event| event["answer"].as_str().unwrap()).collect();
    assert_eq!(streamed, expected["answer"].as_str().unwrap());
    assert_eq!(result["answer"], expected["answer"]);
    let started = events.iter().filter(|event| event["event"] == "node_started").count();
    let finished = events.iter().filter(|event| event["event"] == "node_finished").count();
    assert_eq!(started, finished);
    assert_eq!(started, expected["events"].as_array().unwrap().len() / 2);
}

#[test]
fn serve_help_names_the_settings_read_only_from_the_environment() {
    let help = flowgate(&["serve", "--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    for setting in ["FLOWGATE_ADMIN_TOKEN", "FLOWGATE_SANDBOX_API_KEY", "CODE_EXECUTION_API_KEY", "FLOWGATE_LOG"] {
        assert!(help.stdout.contains(setting), "`serve --help` does not mention {setting}:\n{}", help.stdout);
    }
    assert!(help.stdout.contains("every network"), "the help says the default address listens on every interface:\n{}", help.stdout);
}
