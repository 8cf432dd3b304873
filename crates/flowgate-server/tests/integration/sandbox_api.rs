//! dify-sandbox compatibility in both directions, over real HTTP: flowgate serving
//! `POST /v1/sandbox/run` to a caller that speaks as Dify's `CodeExecutor` does (the runner
//! scripts below are Dify's own `Python3TemplateTransformer` and `NodeJsTemplateTransformer`
//! output), and a second flowgate using the first as its `CODE_EXECUTION_ENDPOINT`.

use serde_json::{Value as Json, json};

use crate::harness::{Deployment, http};

const KEY: &str = "sandbox-test-key";

/// Dify's Python runner for `def main(a, b): return {"sum": a + b, "text": "é"}` and inputs
/// `{"a": 2, "b": 3}` (base64 of their JSON).
const DIFY_PYTHON_RUNNER: &str = "def main(a: int, b: int) -> dict:\n    return {\"sum\": a + b, \"text\": \"\u{e9}\"}\n\nimport json\nfrom base64 import b64decode\n\n# decode and prepare input dict\ninputs_obj = json.loads(b64decode('eyJhIjogMiwgImIiOiAzfQ==').decode('utf-8'))\n\n# execute main function\noutput_obj = main(**inputs_obj)\n\n# convert output to json and print\noutput_json = json.dumps(output_obj, indent=4)\nresult = f'''<<RESULT>>{output_json}<<RESULT>>'''\nprint(result)\n";

/// Dify's Node runner for `function main({a, b}) { return {sum: a + b} }` with the same inputs.
const DIFY_NODE_RUNNER: &str = "// declare main function\nfunction main({a, b}) { return {sum: a + b} }\n\n// decode and prepare input object\nvar inputs_obj = JSON.parse(Buffer.from('eyJhIjogMiwgImIiOiAzfQ==', 'base64').toString('utf-8'))\n\n// execute main function\nvar output_obj = main(inputs_obj)\n\n// convert output to json and print\nvar output_json = JSON.stringify(output_obj)\nvar result = `<<RESULT>>${output_json}<<RESULT>>`\nconsole.log(result)\n";

fn run(address: &str, key: &str, body: &Json) -> (u16, String) {
    let (status, _, body) =
        crate::harness::request_with_headers(address, "POST", "/v1/sandbox/run", &[("X-Api-Key", key)], &body.to_string());
    (status, body)
}

#[test]
fn flowgate_serves_the_dify_sandbox_api_and_uses_one_as_its_backend() {
    let sandbox_host = Deployment::sqlite("sandbox-api");
    let server = sandbox_host.serve_with_env(&[], &[("FLOWGATE_SANDBOX_API_KEY", KEY)]);

    let (status, body) =
        run(&server.address, KEY, &json!({"language": "python3", "code": DIFY_PYTHON_RUNNER, "preload": "", "enable_network": true}));
    assert_eq!(status, 200, "{body}");
    let answer: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["message"], "success");
    assert_eq!(answer["data"]["error"], "");
    assert_eq!(answer["data"]["exit_code"], 0);
    // json.dumps(indent=4) between the markers, as Dify's runner prints it.
    assert_eq!(answer["data"]["stdout"], "<<RESULT>>{\n    \"sum\": 5,\n    \"text\": \"\\u00e9\"\n}<<RESULT>>\n");

    let (status, body) =
        run(&server.address, KEY, &json!({"language": "nodejs", "code": DIFY_NODE_RUNNER, "preload": "", "enable_network": true}));
    assert_eq!(status, 200, "{body}");
    let answer: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["data"]["stdout"], "<<RESULT>>{\"sum\":5}<<RESULT>>\n", "{answer}");

    let failing = "def main():\n    raise ValueError('bad input')\n\nmain()\n";
    let (_, body) = run(&server.address, KEY, &json!({"language": "python3", "code": failing}));
    let answer: Json = serde_json::from_str(&body).unwrap();
    let error = answer["data"]["error"].as_str().unwrap();
    assert!(error.starts_with("process exited with code 1\nTraceback (most recent call last):"), "{error}");
    assert!(error.trim_end().ends_with("ValueError: bad input"), "{error}");
    assert_eq!(answer["data"]["exit_code"], 1);

    let (status, body) = run(&server.address, "wrong", &json!({"language": "python3", "code": "print(1)"}));
    assert_eq!((status, body.as_str()), (401, ""));
    let (status, body) = run(&server.address, KEY, &json!({"language": "ruby", "code": "puts 1"}));
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["code"], -400);
    let (status, _, body) = crate::harness::request_with_headers(
        &server.address,
        "POST",
        "/v1/sandbox/dependencies/update",
        &[("X-Api-Key", KEY)],
        r#"{"language": "python3"}"#,
    );
    assert_eq!(status, 501, "{body}");
    let refused: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(refused["code"], -501);
    assert!(refused["message"].as_str().unwrap().starts_with("not supported yet: installing Python packages"), "{refused}");

    // A second flowgate runs its code nodes on the first one, through Dify's protocol.
    let client = Deployment::sqlite("sandbox-client");
    let app = client.import("tests/service/code-workflow.yml")["api_key"].as_str().unwrap().to_owned();
    let endpoint = format!("http://{}", server.address);
    let remote = client.serve_with_env(&[], &[("CODE_EXECUTION_ENDPOINT", endpoint.as_str()), ("CODE_EXECUTION_API_KEY", KEY)]);
    let (status, response) = http(&remote.address, "POST", "/v1/workflows/run", Some(&app), Some(r#"{"inputs": {"n": 7}, "user": "u"}"#));
    assert_eq!(status, 200, "{response}");
    let response: Json = serde_json::from_str(&response).unwrap();
    assert_eq!(response["data"]["status"], "succeeded", "{response}");
    assert_eq!(response["data"]["outputs"]["square"], 49);
    assert_eq!(response["data"]["outputs"]["network"], "PermissionError", "the serving sandbox keeps code off the network");

    // One server at a time on an embedded database.
    drop(remote);
    let wrong = client.serve_with_env(&[], &[("CODE_EXECUTION_ENDPOINT", endpoint.as_str()), ("CODE_EXECUTION_API_KEY", "wrong")]);
    let (_, response) = http(&wrong.address, "POST", "/v1/workflows/run", Some(&app), Some(r#"{"inputs": {"n": 7}, "user": "u"}"#));
    let response: Json = serde_json::from_str(&response).unwrap();
    assert_eq!(response["data"]["status"], "failed");
    assert!(response["data"]["error"].as_str().unwrap().contains("Failed to execute code, got status code 401"), "{response}");
}
