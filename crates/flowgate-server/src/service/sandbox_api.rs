//! dify-sandbox's API, served from flowgate's sandbox so an existing Dify can point
//! `CODE_EXECUTION_ENDPOINT` here: `POST /v1/sandbox/run` and `GET /v1/sandbox/dependencies`
//! (and a clear refusal for `POST /v1/sandbox/dependencies/update`), authenticated by `X-Api-Key` (`FLOWGATE_SANDBOX_API_KEY`), with dify-sandbox's response shapes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json_, json};

use flowgate_sandbox::Sandbox;

use super::Shared;

/// The sandbox that serves the API and the SHA-256 of the key that opens it.
pub struct SandboxApi {
    pub sandbox: Sandbox,
    pub key_hash: String,
}

fn failure(status: StatusCode, code: i64, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message, "data": null}))).into_response()
}

/// Why a caller may not use the API.
enum Refusal {
    Off,
    WrongKey,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Off => failure(StatusCode::NOT_FOUND, -404, "the sandbox API is off: set FLOWGATE_SANDBOX_API_KEY to serve it"),
            // dify-sandbox answers a wrong key with a bare 401.
            Self::WrongKey => StatusCode::UNAUTHORIZED.into_response(),
        }
    }
}

/// The API, when it is on and the caller has its key.
fn authorised<'a>(state: &'a Shared, headers: &HeaderMap) -> Result<&'a SandboxApi, Refusal> {
    let api = state.sandbox_api.as_ref().ok_or(Refusal::Off)?;
    let given = headers.get("x-api-key").and_then(|value| value.to_str().ok()).unwrap_or_default();
    if flowgate_store::token_hash(given) != api.key_hash {
        return Err(Refusal::WrongKey);
    }
    Ok(api)
}

/// `POST /v1/sandbox/run` `{language: python3|nodejs, code, preload?, enable_network?}`.
pub async fn run(State(state): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let api = match authorised(&state, &headers) {
        Ok(api) => api,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(Json_::Object(request)) = serde_json::from_slice::<Json_>(&body) else {
        return failure(StatusCode::BAD_REQUEST, -400, "the body must be a JSON object with language and code");
    };
    let text = |name: &str| request.get(name).and_then(Json_::as_str);
    let (Some(language), Some(code)) = (text("language"), text("code")) else {
        return failure(StatusCode::BAD_REQUEST, -400, "language and code are required");
    };
    if !matches!(language, "python3" | "nodejs") {
        return failure(StatusCode::BAD_REQUEST, -400, "unsupported language");
    }
    let network = request.get("enable_network").and_then(Json_::as_bool).unwrap_or(false);
    let data = match api.sandbox.run_script(language, code, text("preload").unwrap_or_default(), network).await {
        Ok(output) => {
            let error = if output.exit_code == 0 {
                String::new()
            } else {
                let mut error = format!("process exited with code {}", output.exit_code);
                if !output.stderr.is_empty() {
                    error.push('\n');
                    error.push_str(&output.stderr);
                }
                error
            };
            json!({"stdout": output.stdout, "stderr": output.stderr, "error": error, "exit_code": output.exit_code})
        }
        // Stopped by a limit: the run failed the way a killed process does.
        Err(error) => {
            json!({"stdout": "", "stderr": "", "error": format!("process exited with code -1\n{}", error.message), "exit_code": -1})
        }
    };
    (StatusCode::OK, Json(json!({"code": 0, "message": "success", "data": data}))).into_response()
}

/// `GET /v1/sandbox/dependencies?language=python3`: flowgate installs none of its own.
pub async fn dependencies(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorised(&state, &headers) {
        return refusal.into_response();
    }
    (StatusCode::OK, Json(json!({"code": 0, "message": "success", "data": {"dependencies": []}}))).into_response()
}

/// `POST /v1/sandbox/dependencies/update`: dify-sandbox installs the packages of its
/// `python-requirements.txt` here; flowgate's code imports what its interpreter has installed.
pub async fn update_dependencies(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorised(&state, &headers) {
        return refusal.into_response();
    }
    failure(
        StatusCode::NOT_IMPLEMENTED,
        -501,
        "not supported yet: installing Python packages at run time; code imports the packages installed for the interpreter flowgate runs",
    )
}
