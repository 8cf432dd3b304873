//! A dify-sandbox backend for teams that already run one: code nodes are wrapped with Dify's own
//! runner scripts and sent to `POST {endpoint}/v1/sandbox/run`, exactly as Dify's
//! `CodeExecutor` sends them, and the `<<RESULT>>` the script prints is read back.

use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use serde_json::{Value as Json, json};

use flowgate_engine::ports::{CodeCall, CodePort, PortError, PortErrorKind};
use flowgate_engine::value::{Map, MapRef};

/// Dify's `CODE_EXECUTION_*_TIMEOUT` defaults.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Dify's Python runner (`Python3TemplateTransformer`).
pub fn python_runner(code: &str, inputs_base64: &str) -> String {
    format!(
        "{code}\n\nimport json\nfrom base64 import b64decode\n\n# decode and prepare input dict\n\
         inputs_obj = json.loads(b64decode('{inputs_base64}').decode('utf-8'))\n\n# execute main function\n\
         output_obj = main(**inputs_obj)\n\n# convert output to json and print\n\
         output_json = json.dumps(output_obj, indent=4)\nresult = f'''<<RESULT>>{{output_json}}<<RESULT>>'''\nprint(result)\n"
    )
}

/// Dify's Node runner (`NodeJsTemplateTransformer`).
pub fn javascript_runner(code: &str, inputs_base64: &str) -> String {
    format!(
        "// declare main function\n{code}\n\n// decode and prepare input object\n\
         var inputs_obj = JSON.parse(Buffer.from('{inputs_base64}', 'base64').toString('utf-8'))\n\n\
         // execute main function\nvar output_obj = main(inputs_obj)\n\n// convert output to json and print\n\
         var output_json = JSON.stringify(output_obj)\nvar result = `<<RESULT>>${{output_json}}<<RESULT>>`\nconsole.log(result)\n"
    )
}

/// What lies between the first and the last `<<RESULT>>` (Dify's greedy, dot-all match).
pub fn result_between_markers(stdout: &str) -> Option<&str> {
    const MARKER: &str = "<<RESULT>>";
    let start = stdout.find(MARKER)? + MARKER.len();
    let end = stdout.rfind(MARKER)?;
    (end >= start).then(|| &stdout[start..end])
}

#[derive(Clone)]
pub struct DifySandbox {
    client: reqwest::Client,
    url: String,
    api_key: String,
}

impl DifySandbox {
    pub fn new(endpoint: &str, api_key: &str) -> Result<Self, String> {
        // Whichever component installs the provider first, ring is the one used.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot build the sandbox HTTP client: {error}"))?;
        Ok(Self { client, url: format!("{}/v1/sandbox/run", endpoint.trim_end_matches('/')), api_key: api_key.to_owned() })
    }

    async fn run(&self, language: &str, code: String) -> Result<String, PortError> {
        let body = json!({"language": language, "code": code, "preload": "", "enable_network": true});
        let unavailable = |message: String| PortError::new(PortErrorKind::Connection, message);
        let response = self.client.post(&self.url).header("X-Api-Key", &self.api_key).json(&body).send().await.map_err(|error| {
            unavailable(format!(
                "Failed to execute code, which is likely a network issue, please check if the sandbox service is running. ( Error: {error} )"
            ))
        })?;
        match response.status().as_u16() {
            200 => {}
            503 => return Err(unavailable("Code execution service is unavailable".into())),
            status => {
                return Err(unavailable(format!(
                    "Failed to execute code, got status code {status}, please check if the sandbox service is running"
                )));
            }
        }
        let answer: Json = response.json().await.map_err(|_| PortError::new(PortErrorKind::Upstream, "Failed to parse response"))?;
        if answer.get("code").and_then(Json::as_i64) != Some(0) {
            let message = answer.get("message").and_then(Json::as_str).unwrap_or("the sandbox refused the code");
            return Err(PortError::new(PortErrorKind::Upstream, message.to_owned()));
        }
        let data = answer.get("data").cloned().unwrap_or(Json::Null);
        if let Some(error) = data.get("error").and_then(Json::as_str).filter(|error| !error.is_empty()) {
            return Err(PortError::new(PortErrorKind::Other, error.to_owned()));
        }
        Ok(data.get("stdout").and_then(Json::as_str).unwrap_or_default().to_owned())
    }
}

impl CodePort for DifySandbox {
    fn execute(&self, call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        let sandbox = self.clone();
        Box::pin(async move {
            let inputs = serde_json::to_string(&MapRef(&call.inputs))
                .map_err(|error| PortError::new(PortErrorKind::InvalidRequest, error.to_string()))?;
            let inputs = base64::engine::general_purpose::STANDARD.encode(inputs);
            let (language, runner) = match call.language.as_str() {
                "python3" => ("python3", python_runner(&call.code, &inputs)),
                "javascript" => ("nodejs", javascript_runner(&call.code, &inputs)),
                other => return Err(PortError::new(PortErrorKind::InvalidRequest, format!("Unsupported code language: {other}"))),
            };
            let stdout = sandbox.run(language, runner).await?;
            let result = result_between_markers(&stdout)
                .ok_or_else(|| PortError::new(PortErrorKind::Other, "Failed to parse result: no result tag found in response."))?;
            crate::result::outputs(result).map_err(|message| PortError::new(PortErrorKind::Other, message))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_is_what_lies_between_the_outer_markers() {
        assert_eq!(result_between_markers("noise <<RESULT>>{\"a\": 1}<<RESULT>>\n"), Some("{\"a\": 1}"));
        assert_eq!(result_between_markers("<<RESULT>>x<<RESULT>>y<<RESULT>>"), Some("x<<RESULT>>y"));
        assert_eq!(result_between_markers("<<RESULT>> only one"), None);
        assert_eq!(result_between_markers("nothing"), None);
    }
}
