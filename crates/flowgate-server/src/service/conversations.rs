//! Conversations of chatflows: list, delete, rename, and conversation variables.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json_, json};

use flowgate_engine::pyfmt::py_str;
use flowgate_engine::value::Value;
use flowgate_store::{Conversation, ConversationOrder, ConversationVariable, StoreError};

use super::chat::{conversation_for, generated_name, model_made_name, require_chat_app};
use super::{Body, Params, Shared, required_user};
use crate::api_error::ApiError;

fn conversation_json(conversation: &Conversation, introduction: &str) -> Json_ {
    json!({
        "id": conversation.id,
        "name": conversation.name,
        "inputs": conversation.inputs,
        "status": conversation.status,
        "introduction": introduction,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    })
}

async fn introduction(state: &Shared, app: &flowgate_store::App) -> String {
    match state.current(app).await {
        Ok((_, compiled)) => compiled.features.get("opening_statement").and_then(Json_::as_str).unwrap_or_default().to_owned(),
        Err(_) => String::new(),
    }
}

/// `GET /conversations?user&last_id&limit&sort_by`.
pub async fn list(State(state): State<Shared>, headers: HeaderMap, params: Params) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    let user = params.user()?;
    let limit = params.int("limit", 20, 1..=100)?;
    let order = match params.text("sort_by") {
        None => ConversationOrder::UpdatedDesc,
        Some(text) => ConversationOrder::parse(text).ok_or_else(|| {
            ApiError::invalid_param("sort_by must be one of created_at, -created_at, updated_at, -updated_at").with_param("sort_by")
        })?,
    };
    let end_user_id = state.end_user(&app.id, user).await?;
    let last_id = params.text("last_id");
    let (conversations, has_more) =
        state.store.conversations(&app.id, &end_user_id, last_id, limit, order).await.map_err(|error| match error {
            StoreError::NotFound(_) => ApiError::not_found("Last Conversation Not Exists."),
            other => other.into(),
        })?;
    let introduction = introduction(&state, &app).await;
    let data: Vec<Json_> = conversations.iter().map(|conversation| conversation_json(conversation, &introduction)).collect();
    Ok(Json(json!({"limit": limit, "has_more": has_more, "data": data})))
}

/// `DELETE /conversations/{id}` `{user}` → 204.
pub async fn remove(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    let user = required_user(&body)?;
    let end_user_id = state.end_user(&app.id, &user).await?;
    let conversation = conversation_for(&state, &app, &end_user_id, &conversation_id).await?;
    state.store.delete_conversation(&conversation).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /conversations/{id}/name` `{name?, auto_generate, user}`.
pub async fn rename(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    Body(body): Body,
) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    let user = required_user(&body)?;
    let auto_generate = match body.get("auto_generate") {
        None | Some(Json_::Null) => false,
        Some(Json_::Bool(flag)) => *flag,
        Some(_) => return Err(ApiError::invalid_param("auto_generate must be a boolean").with_param("auto_generate")),
    };
    let end_user_id = state.end_user(&app.id, &user).await?;
    let conversation = conversation_for(&state, &app, &end_user_id, &conversation_id).await?;
    let name = if auto_generate {
        let (first, _) = state.store.messages(&conversation.id, None, 1000).await?;
        let query = first.first().map(|message| message.query.clone()).unwrap_or_default();
        if state.engine.ports().model.is_some() {
            // As in Dify, a failed model call keeps the name the conversation has.
            model_made_name(&state, &app, &end_user_id, &conversation.id, &query).await.unwrap_or_else(|| conversation.name.clone())
        } else {
            generated_name(&query)
        }
    } else {
        match body.get("name") {
            Some(Json_::String(name)) if !name.trim().is_empty() => name.trim().to_owned(),
            _ => return Err(ApiError::invalid_param("name is required when auto_generate is false").with_param("name")),
        }
    };
    let renamed = state.store.rename_conversation(&conversation, &name).await?;
    Ok(Json(conversation_json(&renamed, &introduction(&state, &app).await)))
}

/// Dify's exposed type names: integers and floats are both `number`.
fn exposed_type(value_type: &str) -> &str {
    match value_type {
        "integer" | "float" => "number",
        other => other,
    }
}

/// Dify returns a variable's value as Python's `str(value)`.
fn variable_json(variable: &ConversationVariable) -> Json_ {
    let value = match &variable.value {
        Json_::Null => Json_::Null,
        Json_::String(text) => Json_::String(text.clone()),
        other => Json_::String(py_str(&Value::from(other))),
    };
    json!({
        "id": variable.id,
        "name": variable.name,
        "value_type": exposed_type(&variable.value_type),
        "value": value,
        "description": variable.description,
        "created_at": variable.created_at,
        "updated_at": variable.updated_at,
    })
}

/// `GET /conversations/{id}/variables?user&last_id&limit&variable_name`.
pub async fn variables(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    params: Params,
) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    let user = params.user()?;
    let limit = params.int("limit", 20, 1..=100)?;
    let end_user_id = state.end_user(&app.id, user).await?;
    let conversation = conversation_for(&state, &app, &end_user_id, &conversation_id).await?;
    let mut variables = state.store.conversation_variables(&conversation.id).await?;
    if let Some(name) = params.text("variable_name") {
        variables.retain(|variable| variable.name.eq_ignore_ascii_case(name));
    }
    if let Some(last_id) = params.text("last_id") {
        let position = variables
            .iter()
            .position(|variable| variable.id == last_id)
            .ok_or_else(|| ApiError::not_found("Conversation Variable Not Exists."))?;
        variables.drain(..=position);
    }
    let has_more = variables.len() as i64 > limit;
    variables.truncate(limit as usize);
    Ok(Json(json!({"limit": limit, "has_more": has_more, "data": variables.iter().map(variable_json).collect::<Vec<_>>()})))
}

/// Whether a JSON value fits a conversation variable's declared type (Dify's
/// `SegmentType.is_valid`, with integers accepted as numbers).
fn fits(value_type: &str, value: &Json_) -> bool {
    let number = |value: &Json_| value.is_number();
    match value_type {
        "string" | "secret" => value.is_string(),
        "number" | "integer" | "float" => number(value),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array[string]" => value.as_array().is_some_and(|items| items.iter().all(Json_::is_string)),
        "array[number]" => value.as_array().is_some_and(|items| items.iter().all(number)),
        "array[object]" => value.as_array().is_some_and(|items| items.iter().all(Json_::is_object)),
        "array[boolean]" => value.as_array().is_some_and(|items| items.iter().all(Json_::is_boolean)),
        "array[any]" | "array" => value.is_array(),
        _ => true,
    }
}

fn json_type_name(value: &Json_) -> &'static str {
    match value {
        Json_::Null => "none",
        Json_::Bool(_) => "boolean",
        Json_::Number(_) => "number",
        Json_::String(_) => "string",
        Json_::Array(_) => "array[any]",
        Json_::Object(_) => "object",
    }
}

/// `PUT /conversations/{id}/variables/{variable_id}` `{value, user}`.
pub async fn update_variable(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((conversation_id, variable_id)): Path<(String, String)>,
    Body(body): Body,
) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    let user = required_user(&body)?;
    let value = body.get("value").cloned().ok_or_else(|| ApiError::invalid_param("value is required").with_param("value"))?;
    let end_user_id = state.end_user(&app.id, &user).await?;
    let conversation = conversation_for(&state, &app, &end_user_id, &conversation_id).await?;
    let variables = state.store.conversation_variables(&conversation.id).await?;
    let mut variable = variables
        .into_iter()
        .find(|variable| variable.id == variable_id)
        .ok_or_else(|| ApiError::not_found("Conversation Variable Not Exists."))?;
    if !fits(&variable.value_type, &value) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "Type mismatch: variable '{}' expects {}, but got {} type",
                variable.name,
                exposed_type(&variable.value_type),
                json_type_name(&value)
            ),
        ));
    }
    variable.value = value;
    variable.updated_at = flowgate_store::now();
    state.store.save_conversation_variables(&conversation.id, std::slice::from_ref(&variable)).await?;
    Ok(Json(variable_json(&variable)))
}
