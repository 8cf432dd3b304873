//! A code port that runs Python with Dify's calling convention in a plain `python3` process.
//! For tests only: it is what graphon's oracle does for code nodes, and it has no isolation.

use std::process::Stdio;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use flowgate_engine::ports::{CodeCall, CodePort, PortError, PortErrorKind};
use flowgate_engine::value::{Map, MapRef, Value};

pub struct LocalPython;

fn program(call: &CodeCall) -> String {
    format!(
        "{code}\n\nimport json as __json, os as __os\n__inputs = __json.loads(__os.environ['FLOWGATE_INPUTS'])\n__output = main(**__inputs)\nprint('<<RESULT>>' + __json.dumps(__output) + '<<RESULT>>')\n",
        code = call.code
    )
}

impl CodePort for LocalPython {
    fn execute(&self, call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        Box::pin(async move {
            if call.language != "python3" {
                return Err(PortError::new(
                    PortErrorKind::InvalidRequest,
                    format!("the test runner only runs python3, not {}", call.language),
                ));
            }
            let inputs = serde_json::to_string(&MapRef(&call.inputs)).unwrap_or_else(|_| "{}".into());
            let mut child = tokio::process::Command::new("python3")
                .arg("-")
                .env("FLOWGATE_INPUTS", inputs)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|error| PortError::new(PortErrorKind::Other, error.to_string()))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(program(&call).as_bytes())
                    .await
                    .map_err(|error| PortError::new(PortErrorKind::Other, error.to_string()))?;
            }
            let output = child.wait_with_output().await.map_err(|error| PortError::new(PortErrorKind::Other, error.to_string()))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("the code failed");
                return Err(PortError::new(PortErrorKind::Other, last.to_owned()));
            }
            let result =
                stdout.split("<<RESULT>>").nth(1).ok_or_else(|| PortError::new(PortErrorKind::Other, "no result in the output"))?;
            match serde_json::from_str::<serde_json::Value>(result) {
                Ok(json @ serde_json::Value::Object(_)) => match Value::from(json) {
                    Value::Object(map) => Ok(map.as_ref().clone()),
                    _ => Err(PortError::new(PortErrorKind::Other, "the result is not a mapping")),
                },
                Ok(_) => Err(PortError::new(PortErrorKind::Other, "the result is not a mapping")),
                Err(error) => Err(PortError::new(PortErrorKind::Other, error.to_string())),
            }
        })
    }
}

pub fn port() -> Arc<dyn CodePort> {
    Arc::new(LocalPython)
}
