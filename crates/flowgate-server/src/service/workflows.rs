//! Workflow apps: `POST /workflows/run`, `POST /workflows/{id}/run`, `GET /workflows/run/{id}`,
//! `GET /workflows/logs`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json_, json};

use flowgate_engine::RunRequest;
use flowgate_store::{LogQuery, StoreError};

use super::launch::{Launch, Launched, launch};
use super::{Body, Params, ServedApp, Shared, files, is_uuid, required_user, streaming_mode};
use crate::api_error::ApiError;
use crate::wire::{Envelope, WireContext};

fn not_workflow_app() -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "not_workflow_app", "Please check if your Workflow app mode matches the right API route.")
}

pub async fn run(State(state): State<Shared>, headers: HeaderMap, Body(body): Body) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    if app.mode != "workflow" {
        return Err(not_workflow_app());
    }
    let version_id = app.current_version_id.clone().ok_or_else(|| ApiError::not_found("Workflow not found."))?;
    start(state, app, version_id, body).await
}

pub async fn run_version(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(workflow_id): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    if app.mode != "workflow" {
        return Err(not_workflow_app());
    }
    if !is_uuid(&workflow_id) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "workflow_id_format_error", "Invalid workflow_id format."));
    }
    let version = state.store.version(&workflow_id).await.map_err(|_| ApiError::not_found("Workflow not found."))?;
    if version.app_id != app.id {
        return Err(ApiError::not_found("Workflow not found."));
    }
    start(state, app, workflow_id, body).await
}

async fn start(state: Shared, app: Arc<ServedApp>, version_id: String, body: serde_json::Map<String, Json_>) -> Result<Response, ApiError> {
    let Some(Json_::Object(inputs)) = body.get("inputs") else {
        return Err(ApiError::invalid_param("inputs is required and must be an object").with_param("inputs"));
    };
    let user = required_user(&body)?;
    let streaming = streaming_mode(&body)?;
    let compiled = state.compiled(&version_id).await?;
    let resolved = files::resolve_inputs(&state, &app, &compiled.plan.start_variables, inputs, body.get("files")).await?;
    let slot = state.run_slot(&app).await?;
    let end_user_id = state.end_user(&app.id, &user).await?;
    let run_id = flowgate_store::new_id();
    let task_id = flowgate_store::new_id();
    let wire = WireContext {
        task_id: task_id.clone(),
        run_id: run_id.clone(),
        user: user.clone(),
        end_user_id: end_user_id.clone(),
        envelope: Envelope::Workflow,
    };
    let request = RunRequest {
        user_id: user,
        app_id: app.id.clone(),
        workflow_id: version_id.clone(),
        run_id: Some(run_id.clone()),
        files: resolved.files,
        ..RunRequest::default()
    };
    let launched = launch(
        &state,
        Launch {
            app,
            version_id,
            plan: compiled.plan.clone(),
            prepared: resolved.inputs,
            request,
            wire: wire.clone(),
            end_user_id,
            streaming,
            turn: None,
            slot,
        },
    );
    let handle = match launched {
        Launched::Stream(response) => return Ok(response),
        Launched::Blocking(handle) => handle,
    };
    let summary = handle.await.map_err(|_| ApiError::internal())??;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], wire.blocking_response(&summary)).into_response())
}

/// `GET /workflows/run/{id}`: `inputs` is the stored inputs as a JSON string, as Dify returns it.
pub async fn get_run(State(state): State<Shared>, headers: HeaderMap, Path(run_id): Path<String>) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let run = state.store.run(&app.id, &run_id).await.map_err(|error| match error {
        StoreError::NotFound(_) => ApiError::not_found("Workflow run not found."),
        other => other.into(),
    })?;
    Ok(Json(json!({
        "id": run.id,
        "workflow_id": run.version_id,
        "status": run.status,
        "inputs": run.inputs.map_or_else(|| "{}".to_owned(), |inputs| inputs.to_string()),
        "outputs": run.outputs.unwrap_or_else(|| json!({})),
        "error": run.error,
        "total_steps": run.total_steps,
        "total_tokens": run.total_tokens,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "elapsed_time": run.elapsed_time,
    })))
}

/// `GET /workflows/logs`.
/// The filters of `GET /v1/workflows/logs`, shared with the management API's run listing.
pub fn log_query(params: &Params) -> Result<LogQuery, ApiError> {
    let status = match params.text("status") {
        None => None,
        Some(status @ ("succeeded" | "failed" | "stopped" | "partial-succeeded" | "running")) => Some(status.to_owned()),
        Some(_) => return Err(ApiError::invalid_param("status must be one of succeeded, failed, stopped").with_param("status")),
    };
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        params
            .text(name)
            .map(|text| {
                parse_iso8601(text).ok_or_else(|| ApiError::invalid_param(format!("{name} must be an ISO 8601 time")).with_param(name))
            })
            .transpose()
    };
    Ok(LogQuery {
        keyword: params.text("keyword").map(str::to_owned),
        status,
        created_before: time("created_at__before")?,
        created_after: time("created_at__after")?,
        end_user_session_id: params.text("created_by_end_user_session_id").map(str::to_owned),
        page: params.int("page", 1, 1..=99_999)?,
        limit: params.int("limit", 20, 1..=100)?,
    })
}

pub async fn logs(State(state): State<Shared>, headers: HeaderMap, params: Params) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let query = log_query(&params)?;
    if params.text("created_by_account").is_some() {
        // Runs started through the Service API are never made by a console account.
        return Ok(Json(json!({"page": query.page, "limit": query.limit, "total": 0, "has_more": false, "data": []})));
    }
    let page = state.store.runs(&app.id, &query).await?;
    let mut labels: HashMap<String, String> = HashMap::new();
    let mut data = Vec::with_capacity(page.data.len());
    for run in page.data {
        if !labels.contains_key(&run.version_id) {
            let label = state.store.version(&run.version_id).await.map(|version| version.version).unwrap_or_default();
            labels.insert(run.version_id.clone(), label);
        }
        data.push(json!({
            "id": run.id,
            "workflow_run": {
                "id": run.id,
                "version": labels.get(&run.version_id),
                "status": run.status,
                "error": run.error,
                "elapsed_time": run.elapsed_time,
                "total_tokens": run.total_tokens,
                "total_steps": run.total_steps,
                "created_at": run.created_at,
                "finished_at": run.finished_at,
                "exceptions_count": run.exceptions_count,
            },
            "created_from": run.created_from,
            "created_by_role": "end_user",
            "created_by_account": null,
            "created_by_end_user": run.end_user_id.as_ref().map(|id| json!({
                "id": id,
                "type": "service_api",
                "is_anonymous": false,
                "session_id": run.end_user_session_id,
            })),
            "created_at": run.created_at,
        }));
    }
    Ok(Json(json!({"page": page.page, "limit": page.limit, "total": page.total, "has_more": page.has_more, "data": data})))
}

/// Unix seconds of an ISO 8601 time (`2026-11-22T09:30:00`, with optional fraction and
/// `Z` / `±HH:MM`; no zone means UTC, as Dify reads it).
pub fn parse_iso8601(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_at_checked(10)?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (mut seconds, zone) = if rest.is_empty() {
        (0, "")
    } else {
        let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
        let clock_end = rest.find(|ch: char| !(ch.is_ascii_digit() || ch == ':' || ch == '.')).unwrap_or(rest.len());
        let (clock, zone) = rest.split_at(clock_end);
        let clock = clock.split('.').next()?;
        let mut parts = clock.split(':');
        let hour: i64 = parts.next()?.parse().ok()?;
        let minute: i64 = parts.next().unwrap_or("0").parse().ok()?;
        let second: i64 = parts.next().unwrap_or("0").parse().ok()?;
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        (hour * 3600 + minute * 60 + second, zone)
    };
    match zone {
        "" | "Z" | "z" => {}
        zone => {
            let sign = match zone.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let offset = zone[1..].replace(':', "");
            if offset.len() != 4 {
                return None;
            }
            let hours: i64 = offset[..2].parse().ok()?;
            let minutes: i64 = offset[2..].parse().ok()?;
            seconds -= sign * (hours * 3600 + minutes * 60);
        }
    }
    Some(days_from_civil(year, month, day) * 86_400 + seconds)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_iso8601;

    #[test]
    fn iso8601_times_parse_to_unix_seconds() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_iso8601("2000-02-29T00:00:00"), Some(951_782_400));
        assert_eq!(parse_iso8601("2026-11-22T09:30:00.123+01:00"), Some(1_795_339_800 - 3600));
        assert_eq!(parse_iso8601("2026-11-22"), Some(1_795_305_600));
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(parse_iso8601("2026-13-01T00:00:00"), None);
    }
}
