//! What operators do to the store, shared by the CLI (`flowgate apps …`, `keys …`, `runs …`)
//! and the management API (`/admin/v1`), so both accept the same input, check it the same way
//! and print the same JSON.

use serde_json::{Value as Json, json};

use flowgate_dsl::Document;
use flowgate_store::{ApiKey, App, AppVersion, LogDetail, NewApp, NodeExecution, Store, StoreError, WorkflowRun, iso8601};

use crate::limits::AppLimits;

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The DSL does not load or validate; one message per problem, each naming its place.
    #[error("invalid DSL: {}", .0.join("; "))]
    InvalidDsl(Vec<String>),
    /// A policy field is out of range or unknown.
    #[error("{0}")]
    InvalidPolicy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A DSL export checked and turned into an app to import.
pub fn parse_dsl(text: &str, name: Option<String>) -> Result<NewApp, ManageError> {
    let document = Document::load(text).map_err(|error| ManageError::InvalidDsl(vec![error.to_string()]))?;
    let errors = document.errors();
    if !errors.is_empty() {
        return Err(ManageError::InvalidDsl(errors.iter().map(ToString::to_string).collect()));
    }
    let app = &document.app;
    let present = |text: &str| Some(text.to_owned()).filter(|text| !text.is_empty());
    Ok(NewApp {
        name: name.filter(|name| !name.trim().is_empty()).unwrap_or_else(|| app.name.clone()),
        mode: app.mode.as_str().to_owned(),
        description: app.description.clone(),
        icon_type: present(&app.icon_type),
        icon: present(&app.icon),
        icon_background: present(&app.icon_background),
        dsl: document.export_yaml(),
    })
}

/// The result of an import: the app, the version it published, and for a new app its first key.
pub struct Imported {
    pub app: App,
    pub version: AppVersion,
    pub key: Option<(ApiKey, String)>,
}

impl Imported {
    /// `{"app_id", "api_key", "workflow_id", "version"}`; `api_key` only for a new app (the
    /// CLI's documented output, which scripts parse).
    pub fn to_json(&self) -> Json {
        let mut value = json!({"app_id": self.app.id, "workflow_id": self.version.id, "version": self.version.version});
        if let Some((key, token)) = &self.key {
            value["api_key"] = token.clone().into();
            value["key_id"] = key.id.clone().into();
        }
        value
    }
}

/// Imports a DSL as a new app with a first API key, or with `app_id` as that app's new
/// published version (earlier versions stay addressable by their `workflow_id`).
pub async fn import(store: &Store, text: &str, name: Option<String>, app_id: Option<&str>) -> Result<Imported, ManageError> {
    let new_app = parse_dsl(text, name)?;
    match app_id {
        Some(app_id) => {
            let (app, version) = store.publish_version(app_id, new_app).await?;
            Ok(Imported { app, version, key: None })
        }
        None => {
            let (app, version) = store.create_app(new_app).await?;
            let key = store.create_key(&app.id).await?;
            Ok(Imported { app, version, key: Some(key) })
        }
    }
}

/// A change to an app's run-log detail, retention and limits; absent fields keep their value.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    pub log_detail: Option<String>,
    pub retention_days: Option<i64>,
    pub limits: Option<Json>,
}

pub async fn set_policy(store: &Store, app_id: &str, change: PolicyChange) -> Result<App, ManageError> {
    let detail = change
        .log_detail
        .as_deref()
        .map(|text| {
            LogDetail::parse(text)
                .ok_or_else(|| ManageError::InvalidPolicy(format!("log_detail must be full, metadata, errors or none, not {text:?}")))
        })
        .transpose()?;
    if let Some(days) = change.retention_days
        && !(1..=36_500).contains(&days)
    {
        return Err(ManageError::InvalidPolicy(format!("retention_days must be between 1 and 36500, not {days}")));
    }
    if let Some(limits) = &change.limits {
        AppLimits::parse(limits).map_err(ManageError::InvalidPolicy)?;
    }
    let app = store.app(app_id).await?;
    Ok(store
        .set_app_policy(
            app_id,
            detail.unwrap_or(app.log_detail),
            change.retention_days.unwrap_or(app.retention_days),
            change.limits.as_ref().unwrap_or(&app.limits),
        )
        .await?)
}

pub fn policy_json(app: &App) -> Json {
    json!({"app_id": app.id, "log_detail": app.log_detail, "retention_days": app.retention_days, "limits": app.limits})
}

pub fn app_json(app: &App) -> Json {
    json!({
        "id": app.id,
        "name": app.name,
        "mode": app.mode,
        "description": app.description,
        "icon_type": app.icon_type,
        "icon": app.icon,
        "icon_background": app.icon_background,
        "workflow_id": app.current_version_id,
        "log_detail": app.log_detail,
        "retention_days": app.retention_days,
        "limits": app.limits,
        "created_at": iso8601(app.created_at),
        "updated_at": iso8601(app.updated_at),
    })
}

pub fn version_json(app: &App, version: &AppVersion) -> Json {
    json!({
        "workflow_id": version.id,
        "version": version.version,
        "current": app.current_version_id.as_deref() == Some(version.id.as_str()),
        "created_at": iso8601(version.created_at),
    })
}

/// An app with its published versions, oldest first.
pub async fn app_details(store: &Store, app_id: &str) -> Result<Json, ManageError> {
    let app = store.app(app_id).await?;
    let versions = store.versions(app_id).await?;
    let mut value = app_json(&app);
    value["versions"] = versions.iter().map(|version| version_json(&app, version)).collect();
    Ok(value)
}

/// The DSL of an app's current version, or of `workflow_id` (one of its versions).
pub async fn export(store: &Store, app_id: &str, workflow_id: Option<&str>) -> Result<String, ManageError> {
    let app = store.app(app_id).await?;
    let version_id = workflow_id.or(app.current_version_id.as_deref()).ok_or(StoreError::NotFound("workflow"))?;
    let version = store.version(version_id).await?;
    if version.app_id != app.id {
        return Err(StoreError::NotFound("workflow").into());
    }
    Ok(version.dsl)
}

pub fn key_json(key: &ApiKey) -> Json {
    json!({
        "id": key.id,
        "app_id": key.app_id,
        "token_hint": key.token_hint,
        "created_at": iso8601(key.created_at),
        "revoked_at": key.revoked_at.map(iso8601),
    })
}

/// Revokes a key of an app; a key of another app is "not found".
pub async fn revoke_key(store: &Store, app_id: &str, key_id: &str) -> Result<(), ManageError> {
    let keys = store.keys(app_id).await?;
    if !keys.iter().any(|key| key.id == key_id) {
        return Err(StoreError::NotFound("api key").into());
    }
    Ok(store.revoke_key(key_id).await?)
}

pub fn run_json(run: &WorkflowRun) -> Json {
    json!({
        "id": run.id,
        "workflow_id": run.version_id,
        "task_id": run.task_id,
        "status": run.status,
        "created_from": run.created_from,
        "end_user": run.end_user_session_id,
        "conversation_id": run.conversation_id,
        "message_id": run.message_id,
        "log_detail": run.detail,
        "inputs": run.inputs,
        "outputs": run.outputs,
        "error": run.error,
        "elapsed_time": run.elapsed_time,
        "total_tokens": run.total_tokens,
        "total_steps": run.total_steps,
        "exceptions_count": run.exceptions_count,
        "created_at": iso8601(run.created_at),
        "finished_at": run.finished_at.map(iso8601),
    })
}

/// A run as listings show it: without its inputs and outputs, which only a single run's view
/// reads from the payload store.
pub fn run_summary_json(run: &WorkflowRun) -> Json {
    let mut value = run_json(run);
    if let Json::Object(map) = &mut value {
        map.remove("inputs");
        map.remove("outputs");
    }
    value
}

pub fn node_execution_json(execution: &NodeExecution) -> Json {
    json!({
        "id": execution.id,
        "index": execution.index,
        "node_id": execution.node_id,
        "node_type": execution.node_type,
        "title": execution.title,
        "status": execution.status,
        "error": execution.error,
        "elapsed_time": execution.elapsed_time,
        "inputs": execution.inputs,
        "process_data": execution.process_data,
        "outputs": execution.outputs,
        "execution_metadata": execution.execution_metadata,
        "created_at": iso8601(execution.created_at),
        "finished_at": execution.finished_at.map(iso8601),
    })
}

/// A run of an app with its node executions in start order.
pub async fn run_details(store: &Store, app_id: &str, run_id: &str) -> Result<Json, ManageError> {
    let run = store.run(app_id, run_id).await?;
    let executions = store.node_executions(run_id).await?;
    let mut value = run_json(&run);
    value["node_executions"] = executions.iter().map(node_execution_json).collect();
    Ok(value)
}
