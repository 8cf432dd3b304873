//! One JSON POST to a provider, with the deadline and the error classification every adapter
//! shares.

use serde_json::Value;
use tokio::time::Instant;

use crate::error::{ErrorClass, ProviderError};

/// Sends `body` and returns the response if its status is a success; otherwise the error the
/// status and body classify to.
pub(crate) async fn post_json(
    request: reqwest::RequestBuilder,
    label: &str,
    body: &Value,
    deadline: Instant,
) -> Result<reqwest::Response, ProviderError> {
    let payload = serde_json::to_vec(body).unwrap_or_default();
    let request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(payload);
    let response = tokio::time::timeout_at(deadline, request.send())
        .await
        .map_err(|_| ProviderError::new(ErrorClass::Timeout, label, "no response in time"))?
        .map_err(|error| transport_error(label, &error))?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let body = tokio::time::timeout_at(deadline, response.bytes()).await.ok().and_then(Result::ok).unwrap_or_default();
    Err(ProviderError::from_response(label, status, retry_after.as_deref(), &body))
}

/// The whole body of a successful response, as JSON.
pub(crate) async fn read_json(response: reqwest::Response, label: &str, deadline: Instant) -> Result<Value, ProviderError> {
    let body = tokio::time::timeout_at(deadline, response.bytes())
        .await
        .map_err(|_| ProviderError::new(ErrorClass::Timeout, label, "the answer did not complete in time"))?
        .map_err(|error| transport_error(label, &error))?;
    serde_json::from_slice(&body)
        .map_err(|error| ProviderError::new(ErrorClass::Protocol, label, format!("the answer is not JSON: {error}")))
}

fn transport_error(label: &str, error: &reqwest::Error) -> ProviderError {
    let class = if error.is_timeout() { ErrorClass::Timeout } else { ErrorClass::Connection };
    // reqwest's message names the URL, which holds no secret (keys go in headers).
    ProviderError::new(class, label, error.to_string())
}
