//! The management API (`/admin/v1`) and the CLI forms of the same operations, on SQLite and
//! PostgreSQL: apps imported, versioned, exported and deleted, keys issued and revoked, policies
//! set, runs browsed; each change seen by the Service API. Run outputs are checked against the
//! conformance suite's graphon results.

use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::harness::{Deployment, conformance_case, http, repo_root, request};

const TOKEN: &str = "test-admin-token-0123456789";
const V1_DSL: &str = "tests/corpus/dify-fixtures/simple_passthrough_workflow.yml";
const V2_DSL: &str = "tests/corpus/dify-fixtures/conditional_hello_branching_workflow.yml";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap()
}

fn parse(body: &str) -> Json {
    serde_json::from_str(body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

fn admin(address: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Json) {
    let (status, body) = http(address, method, path, Some(TOKEN), body);
    (status, if body.is_empty() { Json::Null } else { parse(&body) })
}

fn import_yaml(address: &str, path: &str, yaml: &str) -> (u16, Json) {
    let (status, _, body) = request(address, "POST", path, Some(TOKEN), "application/yaml", yaml);
    (status, parse(&body))
}

fn run(address: &str, path: &str, key: &str, inputs: &Json) -> (u16, Json) {
    let body = json!({"inputs": inputs, "user": "ops"}).to_string();
    let (status, body) = http(address, "POST", path, Some(key), Some(&body));
    (status, parse(&body))
}

/// Polls until `check` holds (changes reach a running server within its one-second caches).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within 5 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn manage_apps_over_http(deployment: &Deployment) {
    let server = deployment.serve_with_env(&[], &[("FLOWGATE_ADMIN_TOKEN", TOKEN)]);
    let address = server.address.as_str();

    // Without the token, or with a wrong one: 401 in Dify's error shape.
    let (status, body) = http(address, "GET", "/admin/v1/apps", None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(parse(&body)["code"], "unauthorized");
    let (status, _) = http(address, "GET", "/admin/v1/apps", Some("wrong-token-but-long-enough"), None);
    assert_eq!(status, 401);

    // A DSL that does not validate: 400 naming the problem, and no app written.
    let broken = read(V1_DSL).replace("type: start", "type: no-such-node-type");
    let (status, error) = import_yaml(address, "/admin/v1/apps", &broken);
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["code"], "invalid_dsl");
    assert!(error["message"].as_str().unwrap().contains("no-such-node-type"), "{error}");
    let (_, apps) = admin(address, "GET", "/admin/v1/apps", None);
    assert_eq!(apps["data"], json!([]));

    // Import as YAML: a new app with its first key, runnable at once.
    let (status, first) = import_yaml(address, "/admin/v1/apps?name=Ops%20app", &read(V1_DSL));
    assert_eq!(status, 201, "{first}");
    let app_id = first["app_id"].as_str().unwrap().to_owned();
    let key = first["api_key"].as_str().unwrap().to_owned();
    let v1 = first["workflow_id"].as_str().unwrap().to_owned();
    let (v1_inputs, v1_outputs) = conformance_case("fixture-simple-passthrough");
    let (status, result) = run(address, "/v1/workflows/run", &key, &v1_inputs);
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["data"]["outputs"], v1_outputs);

    // A new version (JSON form): the app now runs it; the first version stays addressable.
    let body = json!({"dsl": read(V2_DSL)}).to_string();
    let (status, second) = admin(address, "POST", &format!("/admin/v1/apps/{app_id}/versions"), Some(&body));
    assert_eq!(status, 201, "{second}");
    assert!(second.get("api_key").is_none(), "a new version issues no key: {second}");
    let v2 = second["workflow_id"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let (v2_inputs, v2_outputs) = conformance_case("fixture-conditional-hello-true");
    eventually("the new version serving", || run(address, "/v1/workflows/run", &key, &v2_inputs).1["data"]["outputs"] == v2_outputs);
    let (status, pinned) = run(address, &format!("/v1/workflows/{v1}/run"), &key, &v1_inputs);
    assert_eq!(status, 200, "{pinned}");
    assert_eq!(pinned["data"]["outputs"], v1_outputs);
    assert_eq!(pinned["data"]["workflow_id"], v1.as_str());

    let (status, details) = admin(address, "GET", &format!("/admin/v1/apps/{app_id}"), None);
    assert_eq!(status, 200);
    assert_eq!(details["workflow_id"], v2.as_str());
    let versions: Vec<(Json, Json)> = details["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| (version["workflow_id"].clone(), version["current"].clone()))
        .collect();
    assert_eq!(versions, vec![(json!(v1), json!(false)), (json!(v2), json!(true))]);

    // A new version of another mode is refused, and the app is unchanged.
    let chatflow = json!({"dsl": read("tests/service/chatflow.yml")}).to_string();
    let (status, conflict) = admin(address, "POST", &format!("/admin/v1/apps/{app_id}/versions"), Some(&chatflow));
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(admin(address, "GET", &format!("/admin/v1/apps/{app_id}"), None).1["versions"].as_array().unwrap().len(), 2);

    // Export: the current version by default, any version by workflow_id; an export imports
    // again as an app that behaves the same.
    let (status, head, exported_v1) =
        request(address, "GET", &format!("/admin/v1/apps/{app_id}/export?workflow_id={v1}"), Some(TOKEN), "text/plain", "");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/yaml"), "{head}");
    let (status, copy) = import_yaml(address, "/admin/v1/apps", &exported_v1);
    assert_eq!(status, 201, "{copy}");
    let (_, copied) = run(address, "/v1/workflows/run", copy["api_key"].as_str().unwrap(), &v1_inputs);
    assert_eq!(copied["data"]["outputs"], v1_outputs);
    let (_, _, exported_current) = request(address, "GET", &format!("/admin/v1/apps/{app_id}/export"), Some(TOKEN), "text/plain", "");
    assert!(exported_current.contains("kind: app"));
    assert_ne!(exported_current, exported_v1);

    // Keys: issued (shown once), listed as hints, revoked; a revoked key stops working.
    let (status, issued) = admin(address, "POST", &format!("/admin/v1/apps/{app_id}/keys"), None);
    assert_eq!(status, 201, "{issued}");
    let second_key = issued["api_key"].as_str().unwrap().to_owned();
    assert!(second_key.starts_with("app-"));
    assert_eq!(http(address, "GET", "/v1/info", Some(&second_key), None).0, 200);
    let (_, keys) = admin(address, "GET", &format!("/admin/v1/apps/{app_id}/keys"), None);
    let keys = keys["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|listed| !listed.to_string().contains(&second_key) && !listed.to_string().contains(&key)));
    let (status, _) = admin(
        address,
        "DELETE",
        &format!("/admin/v1/apps/{}/keys/{}", copy["app_id"].as_str().unwrap(), issued["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 404, "a key is revoked only through its own app");
    let (status, _) = admin(address, "DELETE", &format!("/admin/v1/apps/{app_id}/keys/{}", issued["id"].as_str().unwrap()), None);
    assert_eq!(status, 204);
    eventually("the revoked key refused", || http(address, "GET", "/v1/info", Some(&second_key), None).0 == 401);
    assert_eq!(http(address, "GET", "/v1/info", Some(&key), None).0, 200, "the other key still works");

    // Policy: read, changed, with unknown fields and bad values refused by name.
    let (status, policy) = admin(address, "GET", &format!("/admin/v1/apps/{app_id}/policy"), None);
    assert_eq!(status, 200);
    assert_eq!((policy["log_detail"].clone(), policy["retention_days"].clone()), (json!("full"), json!(30)));
    let (status, error) = admin(address, "PATCH", &format!("/admin/v1/apps/{app_id}/policy"), Some(r#"{"retention": 3}"#));
    assert_eq!(status, 400);
    assert!(error["message"].as_str().unwrap().contains("retention"), "{error}");
    let (status, error) = admin(address, "PATCH", &format!("/admin/v1/apps/{app_id}/policy"), Some(r#"{"log_detail": "most"}"#));
    assert_eq!(status, 400);
    assert!(error["message"].as_str().unwrap().contains("log_detail"), "{error}");
    let (status, error) =
        admin(address, "PATCH", &format!("/admin/v1/apps/{app_id}/policy"), Some(r#"{"limits": {"requests_per_sec": 1}}"#));
    assert_eq!(status, 400);
    assert!(error["message"].as_str().unwrap().contains("requests_per_sec"), "{error}");
    let (status, policy) = admin(
        address,
        "PATCH",
        &format!("/admin/v1/apps/{app_id}/policy"),
        Some(r#"{"retention_days": 7, "limits": {"per_key": {"requests_per_minute": 2}}}"#),
    );
    assert_eq!(status, 200, "{policy}");
    assert_eq!(policy["retention_days"], 7);
    assert_eq!(policy["log_detail"], "full", "fields not given keep their value");
    // The limit applies to the very next requests: two a minute per key, then 429.
    let statuses: Vec<u16> = (0..3).map(|_| http(address, "GET", "/v1/info", Some(&key), None).0).collect();
    assert_eq!(statuses, vec![200, 200, 429]);

    // Runs: listed newest first; one run with its node executions and their payloads.
    let (status, runs) = admin(address, "GET", &format!("/admin/v1/apps/{app_id}/runs?status=succeeded&limit=100"), None);
    assert_eq!(status, 200, "{runs}");
    let pinned_run = pinned["workflow_run_id"].as_str().unwrap();
    assert!(runs["data"].as_array().unwrap().iter().any(|run| run["id"] == pinned_run), "{runs}");
    let (status, detail) = admin(address, "GET", &format!("/admin/v1/apps/{app_id}/runs/{pinned_run}"), None);
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["workflow_id"], v1.as_str());
    assert_eq!(detail["outputs"], v1_outputs);
    let executions = detail["node_executions"].as_array().unwrap();
    assert_eq!(executions.first().unwrap()["node_type"], "start");
    assert_eq!(executions.first().unwrap()["inputs"]["query"], v1_inputs["query"]);
    assert_eq!(executions.last().unwrap()["node_type"], "end");
    assert_eq!(executions.last().unwrap()["outputs"], v1_outputs);
    let (status, _) = admin(address, "GET", &format!("/admin/v1/apps/{}/runs/{pinned_run}", copy["app_id"].as_str().unwrap()), None);
    assert_eq!(status, 404, "a run is found only under its own app");

    // Delete: the app is gone, and so is its keys' access.
    let (status, _) = admin(address, "DELETE", &format!("/admin/v1/apps/{app_id}"), None);
    assert_eq!(status, 204);
    assert_eq!(admin(address, "GET", &format!("/admin/v1/apps/{app_id}"), None).0, 404);
    eventually("the deleted app's key refused", || http(address, "GET", "/v1/info", Some(&key), None).0 == 401);
    let (_, apps) = admin(address, "GET", "/admin/v1/apps", None);
    assert_eq!(apps["data"].as_array().unwrap().len(), 1);
}

#[test]
fn management_api_on_sqlite() {
    manage_apps_over_http(&Deployment::sqlite("admin"));
}

#[test]
fn management_api_on_postgres() {
    manage_apps_over_http(&Deployment::postgres("admin"));
}

/// Every operation the OpenAPI document lists is served (not the 404 of unknown paths, not 405),
/// and without `FLOWGATE_ADMIN_TOKEN` the API is off with a clear error.
#[test]
fn the_openapi_document_matches_the_routes() {
    let deployment = Deployment::sqlite("openapi");
    let server = deployment.serve_with_env(&[], &[("FLOWGATE_ADMIN_TOKEN", TOKEN)]);
    let (status, document) = http(&server.address, "GET", "/admin/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    let document = parse(&document);
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    let unknown_path = http(&server.address, "GET", "/admin/v1/no-such-thing", Some(TOKEN), None);
    assert_eq!(unknown_path.0, 404);
    for (path, operations) in paths {
        let concrete = path.replace("{app_id}", "missing-app").replace("{key_id}", "missing-key").replace("{run_id}", "missing-run");
        for method in operations.as_object().unwrap().keys() {
            let (status, body) = http(&server.address, &method.to_uppercase(), &concrete, Some(TOKEN), Some("{}"));
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(status != 404 || body != unknown_path.1, "{method} {path} is documented but answers like an unknown path: {body}");
            for response in operations[method]["responses"].as_object().unwrap().keys() {
                assert!(response.parse::<u16>().is_ok(), "{method} {path}: response {response}");
            }
        }
    }
    drop(server);

    let server = deployment.serve(&[]);
    let (status, body) = http(&server.address, "GET", "/admin/v1/apps", Some(TOKEN), None);
    assert_eq!(status, 403);
    assert_eq!(parse(&body)["code"], "admin_api_disabled");
    drop(server);

    let short = deployment.flowgate().args(["serve", "--listen", "127.0.0.1:0"]).env("FLOWGATE_ADMIN_TOKEN", "short").output().unwrap();
    assert_eq!(short.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&short.stderr).contains("FLOWGATE_ADMIN_TOKEN"));
}

/// The CLI forms act on the same database: export, get, delete, keys list/revoke, runs.
#[test]
fn cli_manages_the_same_store() {
    let deployment = Deployment::sqlite("admin-cli");
    let imported = deployment.import(V1_DSL);
    let app_id = imported["app_id"].as_str().unwrap();
    let cli = |args: &[&str]| {
        let output = deployment.flowgate().args(args).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    let (code, stdout, _) = cli(&["apps", "import", V2_DSL, "--app", app_id]);
    assert_eq!(code, Some(0));
    let v2 = parse(&stdout)["workflow_id"].as_str().unwrap().to_owned();
    let (code, stdout, _) = cli(&["apps", "get", app_id]);
    assert_eq!(code, Some(0));
    assert_eq!(parse(&stdout)["workflow_id"], v2.as_str());

    let (code, exported, _) = cli(&["apps", "export", app_id, "--workflow-id", imported["workflow_id"].as_str().unwrap()]);
    assert_eq!(code, Some(0));
    let file = deployment.data_dir.join("exported.yml");
    std::fs::create_dir_all(&deployment.data_dir).unwrap();
    std::fs::write(&file, &exported).unwrap();
    let (code, stdout, stderr) = cli(&["apps", "import", file.to_str().unwrap(), "--name", "Copy"]);
    assert_eq!(code, Some(0), "{stderr}");
    let copy = parse(&stdout);

    // A key revoked from the CLI is refused by a running server at once (it reads the
    // database's change counter as soon as the database files move).
    let server = deployment.serve(&[]);
    let key = copy["api_key"].as_str().unwrap();
    let (inputs, outputs) = conformance_case("fixture-simple-passthrough");
    let (status, result) = run(&server.address, "/v1/workflows/run", key, &inputs);
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["data"]["outputs"], outputs);
    let run_id = result["workflow_run_id"].as_str().unwrap().to_owned();
    let copy_id = copy["app_id"].as_str().unwrap();
    let (code, stdout, _) = cli(&["keys", "list", copy_id]);
    assert_eq!(code, Some(0));
    let listed: Vec<Json> = stdout.lines().map(parse).collect();
    assert_eq!(listed.len(), 1);
    assert!(!stdout.contains(key));
    let (code, _, stderr) = cli(&["keys", "revoke", copy_id, listed[0]["id"].as_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let revoked = Instant::now();
    while http(&server.address, "GET", "/v1/info", Some(key), None).0 != 401 {
        assert!(revoked.elapsed() < Duration::from_millis(100), "the revoked key still worked 100 ms after the CLI revoked it");
        std::thread::sleep(Duration::from_millis(2));
    }

    // Runs: the run above with its node executions (stored before its answer was sent).
    assert!(cli(&["runs", "list", copy_id]).1.contains(&run_id), "the answered run is listed at once");
    let (code, stdout, _) = cli(&["runs", "get", copy_id, &run_id]);
    assert_eq!(code, Some(0));
    let detail = parse(&stdout);
    assert_eq!(detail["outputs"], outputs);
    assert!(detail["node_executions"].as_array().unwrap().len() >= 2);

    // Bad input names what is wrong and exits 2; an unknown app exits 1.
    let (code, _, stderr) = cli(&["apps", "policy", app_id, "--log-detail", "most"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("log_detail"), "{stderr}");
    let (code, _, stderr) = cli(&["apps", "delete", "no-such-app"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not found"), "{stderr}");
    let (code, _, _) = cli(&["apps", "delete", app_id]);
    assert_eq!(code, Some(0));
    let (_, stdout, _) = cli(&["apps", "list"]);
    assert_eq!(stdout.lines().count(), 1);
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Waits three seconds and checks the server used under 1% of a core meanwhile (reading the
/// change counter every 10 ms and waking the run-log thread every 20 ms cost 2–3%).
fn assert_idles_cheaply(server: &crate::harness::Server) {
    std::thread::sleep(Duration::from_millis(500));
    let (pid, started) = (server.child.id(), Instant::now());
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let idle = (cpu_seconds(pid) - before) / started.elapsed().as_secs_f64();
    assert!(idle < 0.01, "an idle server used {:.1}% of a core", idle * 100.0);
}

/// The embedded server too: it looks at the database files' size and time every 10 ms and
/// reads the counter only when they moved (a key revoked from the CLI is refused within 100 ms:
/// `cli_manages_the_same_store`).
#[test]
fn an_idle_embedded_server_costs_next_to_nothing() {
    let deployment = Deployment::sqlite("admin-idle");
    deployment.import(V1_DSL);
    assert_idles_cheaply(&deployment.serve(&[]));
}

/// Two replicas on one PostgreSQL: a key revoked through one is refused by the other at once
/// (the trigger's NOTIFY reaches it), and an idle replica costs next to nothing while it waits
/// (it no longer reads the change counter a hundred times a second).
#[test]
fn replicas_see_a_revoked_key_at_once_and_idle_cheaply() {
    let deployment = Deployment::postgres("admin-replicas");
    let imported = deployment.import(V1_DSL);
    let (app_id, key) = (imported["app_id"].as_str().unwrap(), imported["api_key"].as_str().unwrap());
    let first = deployment.serve_with_env(&[], &[("FLOWGATE_ADMIN_TOKEN", TOKEN)]);
    let second = deployment.serve(&[]);
    assert_eq!(http(&second.address, "GET", "/v1/info", Some(key), None).0, 200);

    assert_idles_cheaply(&second);

    let (_, keys) = admin(&first.address, "GET", &format!("/admin/v1/apps/{app_id}/keys"), None);
    let id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(admin(&first.address, "DELETE", &format!("/admin/v1/apps/{app_id}/keys/{id}"), None).0, 204);
    let revoked = Instant::now();
    while http(&second.address, "GET", "/v1/info", Some(key), None).0 != 401 {
        assert!(revoked.elapsed() < Duration::from_millis(100), "the other replica still took the key 100 ms after it was revoked");
        std::thread::sleep(Duration::from_millis(2));
    }
}
