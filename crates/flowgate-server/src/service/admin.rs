//! The management API, `/admin/v1`: apps, versions, keys, policies and the run log, for the
//! people who operate flowgate. Authenticated with `Authorization: Bearer $FLOWGATE_ADMIN_TOKEN`;
//! without that variable the API is off. Described by `/admin/v1/openapi.json`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value as Json_, json};

use super::{Params, Shared, too_large};
use crate::api_error::ApiError;
use crate::manage::{self, ManageError, PolicyChange};

/// The OpenAPI 3.1 description of this API, served as written.
const OPENAPI: &str = include_str!("admin_openapi.json");

/// Admin tokens shorter than this are refused at start: the API can delete every app.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi))
        .route("/admin/v1/apps", get(list_apps).post(import_app))
        .route("/admin/v1/apps/{app_id}", get(get_app).delete(delete_app))
        .route("/admin/v1/apps/{app_id}/versions", post(publish_version))
        .route("/admin/v1/apps/{app_id}/export", get(export_app))
        .route("/admin/v1/apps/{app_id}/policy", get(get_policy).patch(set_policy))
        .route("/admin/v1/apps/{app_id}/keys", get(list_keys).post(create_key))
        .route("/admin/v1/apps/{app_id}/keys/{key_id}", delete(revoke_key))
        .route("/admin/v1/apps/{app_id}/runs", get(list_runs))
        .route("/admin/v1/apps/{app_id}/runs/{run_id}", get(get_run))
}

impl From<ManageError> for ApiError {
    fn from(error: ManageError) -> Self {
        match error {
            ManageError::InvalidDsl(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_dsl", error.to_string()),
            ManageError::InvalidPolicy(message) => Self::invalid_param(message),
            ManageError::Store(error) => error.into(),
        }
    }
}

fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token_hash else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_api_disabled",
            "The management API is off; start the server with FLOWGATE_ADMIN_TOKEN set to enable it.",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization header must be provided and start with 'Bearer'"))?;
    // Comparing digests keeps the comparison's timing independent of the token's characters.
    if flowgate_store::token_hash(presented.trim()) == *expected { Ok(()) } else { Err(ApiError::unauthorized("Admin token is invalid.")) }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_apps(State(state): State<Shared>, headers: HeaderMap) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers)?;
    let apps = state.store.apps().await?;
    Ok(Json(json!({"data": apps.iter().map(manage::app_json).collect::<Vec<_>>()})))
}

/// A DSL in a request body: the YAML itself, or JSON `{"dsl": "...", "name": "..."}`.
struct DslUpload {
    dsl: String,
    name: Option<String>,
}

impl<S: Send + Sync> FromRequest<S> for DslUpload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        let bytes = Bytes::from_request(request, state).await.map_err(|error| {
            if error.status() == StatusCode::PAYLOAD_TOO_LARGE { too_large() } else { ApiError::invalid_param(error.body_text()) }
        })?;
        if is_json {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Upload {
                dsl: String,
                name: Option<String>,
            }
            let upload: Upload = serde_json::from_slice(&bytes)
                .map_err(|error| ApiError::invalid_param(format!("expected {{\"dsl\": \"<YAML>\", \"name\": \"...\"}}: {error}")))?;
            return Ok(Self { dsl: upload.dsl, name: upload.name });
        }
        let dsl = String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::invalid_param("the DSL must be UTF-8 text"))?;
        if dsl.trim().is_empty() {
            return Err(ApiError::invalid_param("the request body must be a DSL export (YAML)"));
        }
        Ok(Self { dsl, name: None })
    }
}

async fn import_app(State(state): State<Shared>, headers: HeaderMap, params: Params, upload: DslUpload) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let name = upload.name.or_else(|| params.text("name").map(str::to_owned));
    let imported = manage::import(&state.store, &upload.dsl, name, None).await?;
    Ok((StatusCode::CREATED, Json(imported.to_json())).into_response())
}

async fn publish_version(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    params: Params,
    upload: DslUpload,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let name = upload.name.or_else(|| params.text("name").map(str::to_owned));
    let imported = manage::import(&state.store, &upload.dsl, name, Some(&app_id)).await?;
    state.apps.remove(&app_id);
    Ok((StatusCode::CREATED, Json(imported.to_json())).into_response())
}

async fn get_app(State(state): State<Shared>, headers: HeaderMap, Path(app_id): Path<String>) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(manage::app_details(&state.store, &app_id).await?))
}

async fn delete_app(State(state): State<Shared>, headers: HeaderMap, Path(app_id): Path<String>) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    state.store.delete_app(&app_id).await?;
    state.apps.remove(&app_id);
    state.keys.clear();
    Ok(StatusCode::NO_CONTENT)
}

async fn export_app(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let dsl = manage::export(&state.store, &app_id, params.text("workflow_id")).await?;
    let mut response = ([(header::CONTENT_TYPE, "application/yaml; charset=utf-8")], dsl).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{app_id}.yml\"")) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

async fn get_policy(State(state): State<Shared>, headers: HeaderMap, Path(app_id): Path<String>) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(manage::policy_json(&state.store.app(&app_id).await?)))
}

async fn set_policy(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    super::Body(body): super::Body,
) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers)?;
    let change: PolicyChange = serde_json::from_value(Json_::Object(body)).map_err(|error| ApiError::invalid_param(error.to_string()))?;
    let app = manage::set_policy(&state.store, &app_id, change).await?;
    state.apps.remove(&app_id);
    Ok(Json(manage::policy_json(&app)))
}

async fn list_keys(State(state): State<Shared>, headers: HeaderMap, Path(app_id): Path<String>) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers)?;
    state.store.app(&app_id).await?;
    let keys = state.store.keys(&app_id).await?;
    Ok(Json(json!({"data": keys.iter().map(manage::key_json).collect::<Vec<_>>()})))
}

async fn create_key(State(state): State<Shared>, headers: HeaderMap, Path(app_id): Path<String>) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let (key, token) = state.store.create_key(&app_id).await?;
    let mut value = manage::key_json(&key);
    value["api_key"] = token.into();
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

async fn revoke_key(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((app_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    manage::revoke_key(&state.store, &app_id, &key_id).await?;
    state.keys.clear();
    Ok(StatusCode::NO_CONTENT)
}

async fn list_runs(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    params: Params,
) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers)?;
    state.store.app(&app_id).await?;
    let query = super::workflows::log_query(&params)?;
    let page = state.store.runs(&app_id, &query).await?;
    Ok(Json(json!({
        "page": page.page,
        "limit": page.limit,
        "total": page.total,
        "has_more": page.has_more,
        "data": page.data.iter().map(manage::run_summary_json).collect::<Vec<_>>(),
    })))
}

async fn get_run(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((app_id, run_id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(manage::run_details(&state.store, &app_id, &run_id).await?))
}
