//! Per-app and per-key request rates and per-app concurrent runs, as an app's `limits` policy
//! sets them (`flowgate apps policy APP_ID --limits JSON`).
//!
//! Rates are counted in fixed windows per server process: with N replicas behind a balancer an
//! app gets up to N times its rate. Concurrent runs wait in FIFO order for a free slot up to
//! `queue_timeout_ms`, then get Dify's 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api_error::ApiError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub requests_per_second: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
}

impl Rates {
    fn windows(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        [(1, self.requests_per_second), (60, self.requests_per_minute), (3600, self.requests_per_hour)]
            .into_iter()
            .filter_map(|(seconds, limit)| limit.map(|limit| (seconds, limit)))
    }
}

/// An app's `limits` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLimits {
    #[serde(flatten)]
    pub app: Rates,
    /// The same rates, applied to each API key of the app separately.
    #[serde(default)]
    pub per_key: Rates,
    pub max_concurrent_runs: Option<u32>,
    /// How long a run waits for a slot when `max_concurrent_runs` are running (default 30 s).
    pub queue_timeout_ms: Option<u64>,
}

impl AppLimits {
    /// Reads a policy, naming what is wrong with it.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        if value.is_null() {
            return Ok(Self::default());
        }
        let limits: Self = serde_json::from_value(value.clone()).map_err(|error| format!("limits: {error}"))?;
        if limits.max_concurrent_runs == Some(0) {
            return Err("limits: max_concurrent_runs must be at least 1".into());
        }
        Ok(limits)
    }
}

#[derive(Default)]
pub struct Limiter {
    /// (scope, window seconds) → (window number, requests counted in it).
    windows: Mutex<HashMap<(String, u64), (u64, u64)>>,
    /// App id → (its concurrency limit, the slots).
    slots: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

impl Limiter {
    /// Counts a request against the app's and the key's rates; 429 `too_many_requests` with
    /// `Retry-After` when a window is full (the request is then not counted).
    pub fn admit(&self, app_id: &str, key_scope: &str, limits: &AppLimits) -> Result<(), ApiError> {
        let scopes = [(app_id, &limits.app), (key_scope, &limits.per_key)];
        if scopes.iter().all(|(_, rates)| rates.windows().next().is_none()) {
            return Ok(());
        }
        let now = unix_seconds();
        let Ok(mut windows) = self.windows.lock() else { return Ok(()) };
        if windows.len() > 100_000 {
            windows.retain(|(_, seconds), (number, _)| *number == now / *seconds);
        }
        for (scope, rates) in scopes {
            for (seconds, limit) in rates.windows() {
                let number = now / seconds;
                let count =
                    windows.get(&(scope.to_owned(), seconds)).filter(|(current, _)| *current == number).map_or(0, |(_, count)| *count);
                if count >= limit {
                    let retry_after = (number + 1) * seconds - now;
                    return Err(ApiError {
                        retry_after: Some(retry_after.max(1)),
                        ..ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "too_many_requests",
                            format!("Too many requests: at most {limit} per {}. Please try again later.", window_name(seconds)),
                        )
                    });
                }
            }
        }
        for (scope, rates) in scopes {
            for (seconds, _) in rates.windows() {
                let number = now / seconds;
                let entry = windows.entry((scope.to_owned(), seconds)).or_insert((number, 0));
                if entry.0 != number {
                    *entry = (number, 0);
                }
                entry.1 += 1;
            }
        }
        Ok(())
    }

    /// A slot to run in, waiting in line for up to the app's queue timeout; `None` when the app
    /// has no concurrency limit.
    pub async fn run_slot(&self, app_id: &str, limits: &AppLimits) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let Some(max) = limits.max_concurrent_runs else { return Ok(None) };
        let semaphore = {
            let Ok(mut slots) = self.slots.lock() else { return Ok(None) };
            let entry = slots.entry(app_id.to_owned()).or_insert_with(|| (max, Arc::new(Semaphore::new(max as usize))));
            if entry.0 != max {
                // A new limit starts a new line; runs holding old slots finish undisturbed.
                *entry = (max, Arc::new(Semaphore::new(max as usize)));
            }
            entry.1.clone()
        };
        let wait = Duration::from_millis(limits.queue_timeout_ms.unwrap_or(30_000));
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!(
                        "Too many requests. Please try again later. The current maximum concurrent requests allowed for {app_id} is {max}."
                    ),
                )
            }),
        }
    }
}

fn window_name(seconds: u64) -> &'static str {
    match seconds {
        1 => "second",
        60 => "minute",
        _ => "hour",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_name_mistakes() {
        let limits = AppLimits::parse(
            &serde_json::json!({"requests_per_minute": 5, "per_key": {"requests_per_second": 1}, "max_concurrent_runs": 2}),
        )
        .unwrap();
        assert_eq!(limits.app.requests_per_minute, Some(5));
        assert_eq!(limits.per_key.requests_per_second, Some(1));
        assert!(AppLimits::parse(&serde_json::json!({"requests_per_day": 5})).unwrap_err().contains("requests_per_day"));
        assert!(AppLimits::parse(&serde_json::json!({"max_concurrent_runs": 0})).is_err());
        assert_eq!(AppLimits::parse(&serde_json::json!({})).unwrap(), AppLimits::default());
    }

    #[test]
    fn a_full_window_answers_429_with_retry_after_and_keys_are_counted_apart() {
        let limiter = Limiter::default();
        let limits = AppLimits { per_key: Rates { requests_per_hour: Some(2), ..Rates::default() }, ..AppLimits::default() };
        limiter.admit("app", "key-a", &limits).unwrap();
        limiter.admit("app", "key-a", &limits).unwrap();
        let refused = limiter.admit("app", "key-a", &limits).unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.code), (429, "too_many_requests"));
        assert!(refused.retry_after.is_some_and(|seconds| (1..=3600).contains(&seconds)));
        limiter.admit("app", "key-b", &limits).unwrap();
    }

    #[tokio::test]
    async fn concurrent_runs_wait_in_line_then_get_429() {
        let limiter = Limiter::default();
        let limits = AppLimits { max_concurrent_runs: Some(1), queue_timeout_ms: Some(50), ..AppLimits::default() };
        let first = limiter.run_slot("app", &limits).await.unwrap();
        let refused = limiter.run_slot("app", &limits).await.unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.code), (429, "rate_limit_error"));
        let waiting = {
            let limits = AppLimits { queue_timeout_ms: Some(2_000), ..limits.clone() };
            async move { limiter.run_slot("app", &limits).await.map(|slot| slot.is_some()) }
        };
        let release = async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
        };
        let (waited, ()) = tokio::join!(waiting, release);
        assert!(waited.unwrap(), "the queued run gets the slot when it frees up");
    }
}
