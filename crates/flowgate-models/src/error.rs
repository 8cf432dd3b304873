//! Provider errors, classified once where the response is read so that routing, retries and
//! the HTTP edge decide from the class alone. Like pingora, each error says whether it came
//! from the upstream or from the request itself, and whether another try (another key, target
//! or model) can succeed.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// 429: this key or target is over its quota; `retry_after` when the upstream said.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, 529 and "overloaded" answers: the target is unwell right now.
    Overloaded,
    /// The prompt does not fit the model's context window.
    ContextTooLong,
    /// The provider refused the content.
    ContentPolicy,
    /// 401 and 403: a bad or unauthorised key.
    Auth,
    /// 400-class answers the same request would get again.
    BadRequest,
    /// No first token, or no complete answer, in time.
    Timeout,
    /// No connection, or one that broke.
    Connection,
    /// A response the adapter could not read.
    Protocol,
}

impl ErrorClass {
    /// Whether another key, target or model may succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Overloaded | Self::Timeout | Self::Connection | Self::Auth)
    }

    /// Whether the fault lies with the upstream (not with what the client sent).
    pub fn is_upstream(&self) -> bool {
        !matches!(self, Self::ContextTooLong | Self::ContentPolicy | Self::BadRequest)
    }

    /// A stable name for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::ContextTooLong => "context_too_long",
            Self::ContentPolicy => "content_policy",
            Self::Auth => "auth",
            Self::BadRequest => "bad_request",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Protocol => "protocol",
        }
    }
}

/// A failed model call. The message names the target and never carries a key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{target}: {class_name}: {message}", class_name = .class.as_str())]
pub struct ProviderError {
    pub class: ErrorClass,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Which target failed (`provider/model at host`).
    pub target: String,
    pub message: String,
}

impl ProviderError {
    pub fn new(class: ErrorClass, target: &str, message: impl Into<String>) -> Self {
        Self { class, status: None, target: target.to_owned(), message: message.into() }
    }

    /// Classifies an error answer from its status, headers and body (OpenAI's, Anthropic's and
    /// Gemini's error shapes all put a code or type and a message in JSON).
    pub fn from_response(target: &str, status: u16, retry_after: Option<&str>, body: &[u8]) -> Self {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let error = &json["error"];
        let code = [&error["code"], &error["type"], &error["status"]]
            .iter()
            .filter_map(|value| value.as_str())
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase();
        let message = error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        let lower = message.to_ascii_lowercase();
        let class = if status == 429 && !code.contains("insufficient_quota") {
            let retry_after = retry_after.and_then(parse_retry_after).or_else(|| retry_info(error));
            ErrorClass::RateLimited { retry_after }
        } else if status == 429 {
            ErrorClass::Auth
        } else if code.contains("context_length")
            || lower.contains("context length")
            || lower.contains("maximum context")
            || lower.contains("exceeds the maximum number of tokens")
        {
            ErrorClass::ContextTooLong
        } else if code.contains("content_policy") || code.contains("content_filter") || lower.contains("content management policy") {
            ErrorClass::ContentPolicy
        } else if status == 401 || status == 403 || lower.contains("api key not valid") || lower.contains("api key expired") {
            ErrorClass::Auth
        } else if status == 408 {
            ErrorClass::Timeout
        } else if status >= 500 || code.contains("overloaded") {
            ErrorClass::Overloaded
        } else {
            ErrorClass::BadRequest
        };
        Self { class, status: Some(status), target: target.to_owned(), message }
    }
}

/// Google's `RetryInfo` detail (`"retryDelay": "13s"`): Gemini says when to come back in the
/// body, not in a header.
fn retry_info(error: &serde_json::Value) -> Option<Duration> {
    error["details"].as_array()?.iter().find_map(|detail| parse_retry_after(detail["retryDelay"].as_str()?.strip_suffix('s')?))
}

/// `Retry-After` as seconds (fractions allowed) or an HTTP date is not worth parsing: a date
/// means "much later", which the caller caps anyway.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies_map_to_classes() {
        let openai = |code: &str, message: &str| {
            format!(r#"{{"error": {{"message": "{message}", "type": "invalid_request_error", "code": "{code}"}}}}"#)
        };
        let class = |status, retry: Option<&str>, body: &str| ProviderError::from_response("t", status, retry, body.as_bytes()).class;
        assert_eq!(
            class(429, Some("2"), &openai("rate_limit_exceeded", "slow down")),
            ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(2)) }
        );
        assert_eq!(
            class(429, None, &openai("insufficient_quota", "You exceeded your current quota")),
            ErrorClass::Auth,
            "no quota left is not a pause"
        );
        assert_eq!(
            class(400, None, &openai("context_length_exceeded", "This model's maximum context length is 8192 tokens")),
            ErrorClass::ContextTooLong
        );
        assert_eq!(class(400, None, &openai("content_policy_violation", "refused")), ErrorClass::ContentPolicy);
        assert_eq!(class(401, None, &openai("invalid_api_key", "Incorrect API key")), ErrorClass::Auth);
        assert_eq!(class(503, None, "upstream connect error"), ErrorClass::Overloaded);
        assert_eq!(
            class(529, None, r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#),
            ErrorClass::Overloaded
        );
        assert_eq!(class(400, None, &openai("invalid_value", "bad temperature")), ErrorClass::BadRequest);
        let google = |code: u16, status: &str, message: &str| {
            format!(
                r#"{{"error": {{"code": {code}, "message": "{message}", "status": "{status}", "details": [{{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13.5s"}}]}}}}"#
            )
        };
        assert_eq!(
            class(429, None, &google(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")),
            ErrorClass::RateLimited { retry_after: Some(Duration::from_millis(13_500)) }
        );
        assert_eq!(
            class(
                400,
                None,
                &google(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).")
            ),
            ErrorClass::ContextTooLong
        );
        assert_eq!(class(400, None, &google(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")), ErrorClass::Auth);
        assert!(ErrorClass::Overloaded.is_retryable() && !ErrorClass::BadRequest.is_retryable());
        assert!(!ErrorClass::ContextTooLong.is_upstream());
    }
}
