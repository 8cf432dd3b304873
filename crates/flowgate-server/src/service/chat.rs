//! Chat and completion messages: `POST /chat-messages` (chatflows and basic-editor chat apps),
//! `POST /completion-messages`, `GET /messages`, feedback.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json_, json};

use flowgate_engine::nodes::{conversation_name, suggested};
use flowgate_engine::ports::{ModelCall, ModelPort, PortContext};
use flowgate_engine::value::Value;
use flowgate_engine::{PastTurn, RunRequest, RunStatus};
use flowgate_store::{App, Conversation, Message, NewMessage, StoreError};

use super::launch::{Launch, Launched, Turn, launch, run_failed_message};
use super::{Body, Params, Shared, files, is_uuid, required_user, streaming_mode};
use crate::api_error::ApiError;
use crate::wire::{Envelope, WireContext};

pub fn conversation_not_found() -> ApiError {
    ApiError::not_found("Conversation Not Exists.")
}

/// Chat routes serve chatflows (advanced-chat) and the basic editor's chat apps.
pub fn require_chat_app(app: &App) -> Result<(), ApiError> {
    match app.mode.as_str() {
        "advanced-chat" | "chat" | "agent-chat" => Ok(()),
        _ => Err(ApiError::new(StatusCode::BAD_REQUEST, "not_chat_app", "Please check if your app mode matches the right API route.")),
    }
}

/// A conversation's name when the client asks for one to be generated at its first message.
/// Dify asks a model in the background and falls back to the query; flowgate uses the query
/// (`POST /conversations/{id}/name` with `auto_generate` asks the model).
pub fn generated_name(query: &str) -> String {
    let name = query.trim();
    if name.chars().count() > 75 { format!("{}...", name.chars().take(75).collect::<String>()) } else { name.to_owned() }
}

/// Which route a message came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completion,
}

/// `POST /chat-messages`.
pub async fn send(State(state): State<Shared>, headers: HeaderMap, Body(body): Body) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    send_message(state, app, body, Route::Chat).await
}

/// `POST /completion-messages`: a completion app's one-off answer. Dify still files each one
/// under a conversation of its own, which clients never see.
pub async fn send_completion(State(state): State<Shared>, headers: HeaderMap, Body(body): Body) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    if app.mode != "completion" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_completion_app",
            "Please check if your Completion app mode matches the right API route.",
        ));
    }
    send_message(state, app, body, Route::Completion).await
}

async fn send_message(
    state: Shared,
    app: Arc<super::ServedApp>,
    body: serde_json::Map<String, Json_>,
    route: Route,
) -> Result<Response, ApiError> {
    let query = match (body.get("query"), route) {
        (Some(Json_::String(query)), _) => query.replace('\0', ""),
        (None | Some(Json_::Null), Route::Completion) => String::new(),
        (Some(_), _) => return Err(ApiError::invalid_param("query must be a string").with_param("query")),
        (None, Route::Chat) => return Err(ApiError::invalid_param("query is required").with_param("query")),
    };
    let Some(Json_::Object(request_inputs)) = body.get("inputs") else {
        return Err(ApiError::invalid_param("inputs is required and must be an object").with_param("inputs"));
    };
    let user = required_user(&body)?;
    let streaming = streaming_mode(&body)?;
    let conversation_id = match (body.get("conversation_id"), route) {
        (_, Route::Completion) | (None | Some(Json_::Null), _) => None,
        (Some(Json_::String(id)), _) if id.is_empty() => None,
        (Some(Json_::String(id)), _) if is_uuid(id) => Some(id.clone()),
        (Some(_), _) => return Err(ApiError::invalid_param("conversation_id must be a UUID").with_param("conversation_id")),
    };
    let auto_generate_name = match (body.get("auto_generate_name"), route) {
        (_, Route::Completion) => false,
        (None | Some(Json_::Null), _) => true,
        (Some(Json_::Bool(flag)), _) => *flag,
        (Some(_), _) => return Err(ApiError::invalid_param("auto_generate_name must be a boolean").with_param("auto_generate_name")),
    };
    let version_id = match (body.get("workflow_id"), route) {
        (_, Route::Completion) | (None | Some(Json_::Null), _) => {
            app.current_version_id.clone().ok_or_else(|| ApiError::not_found("Workflow not found."))?
        }
        (Some(Json_::String(id)), _) if is_uuid(id) => {
            let version = state.store.version(id).await.map_err(|_| ApiError::not_found("Workflow not found."))?;
            if version.app_id != app.id {
                return Err(ApiError::not_found("Workflow not found."));
            }
            version.id
        }
        (Some(_), _) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "workflow_id_format_error", "Invalid workflow_id format.")),
    };
    let compiled = state.compiled(&version_id).await?;
    let mode = app.mode.clone();
    let agent_thought = (mode == "agent-chat").then(flowgate_store::new_id);
    let end_user_id = state.end_user(&app.id, &user).await?;
    let existing = match &conversation_id {
        Some(id) => Some(state.store.conversation(&app.id, &end_user_id, id).await.map_err(|error| match error {
            StoreError::NotFound(_) => conversation_not_found(),
            other => other.into(),
        })?),
        None => None,
    };
    // Later turns run with the inputs the conversation started with, as in Dify.
    let inputs_json = match &existing {
        Some(conversation) => conversation.inputs.as_object().cloned().unwrap_or_default(),
        None => request_inputs.clone(),
    };
    let resolved = files::resolve_inputs(&state, &app, &compiled.plan.start_variables, &inputs_json, body.get("files")).await?;
    let slot = state.run_slot(&app).await?;
    let (conversation, persisted) = match existing {
        Some(conversation) => {
            let persisted = state.store.conversation_variables(&conversation.id).await?;
            (conversation, persisted)
        }
        None => {
            let name = if auto_generate_name { generated_name(&query) } else { "New conversation".to_owned() };
            let conversation = state.store.create_conversation(&app.id, &end_user_id, &name, &Json_::Object(inputs_json.clone())).await?;
            (conversation, Vec::new())
        }
    };
    // Earlier turns, read before this one is added, for model nodes with memory.
    let history = match (&conversation_id, compiled.plan.memory_turns()) {
        (Some(_), Some(turns)) => {
            let (messages, _) = state.store.messages(&conversation.id, None, turns as i64).await?;
            messages.into_iter().map(|message| PastTurn { query: message.query, answer: message.answer }).collect()
        }
        _ => Arc::from(Vec::new()),
    };
    let conversation_variables: HashMap<String, Value> =
        persisted.into_iter().map(|variable| (variable.name, Value::from(&variable.value))).collect();
    let run_id = flowgate_store::new_id();
    let task_id = flowgate_store::new_id();
    let message_id = flowgate_store::new_id();
    let dialogue_count = state
        .store
        .begin_turn(&NewMessage {
            id: message_id.clone(),
            app_id: app.id.clone(),
            conversation_id: conversation.id.clone(),
            end_user_id: end_user_id.clone(),
            workflow_run_id: Some(run_id.clone()),
            inputs: Json_::Object(inputs_json),
            query: query.clone(),
            files: body.get("files").filter(|files| files.is_array()).cloned().unwrap_or_else(|| json!([])),
        })
        .await?;
    let wire = WireContext {
        task_id: task_id.clone(),
        run_id: run_id.clone(),
        user: user.clone(),
        end_user_id: end_user_id.clone(),
        envelope: match (route, app.mode.as_str()) {
            (Route::Completion, _) => Envelope::Message { conversation_id: None, message_id: message_id.clone(), agent_thought: None },
            (Route::Chat, "advanced-chat") => Envelope::Chat { conversation_id: conversation.id.clone(), message_id: message_id.clone() },
            (Route::Chat, _) => Envelope::Message {
                conversation_id: Some(conversation.id.clone()),
                message_id: message_id.clone(),
                agent_thought: agent_thought.clone(),
            },
        },
    };
    let request = RunRequest {
        query: Some(query),
        files: resolved.files,
        user_id: user,
        app_id: app.id.clone(),
        workflow_id: version_id.clone(),
        run_id: Some(run_id),
        conversation_id: Some(conversation.id.clone()),
        dialogue_count: Some(dialogue_count),
        conversation_variables,
        history,
        ..RunRequest::default()
    };
    let turn = Turn {
        conversation_id: conversation.id.clone(),
        message_id: message_id.clone(),
        declared: compiled.conversation_variables().to_vec(),
        agent_thought,
    };
    let launched = launch(
        &state,
        Launch {
            app,
            version_id,
            plan: compiled.plan.clone(),
            prepared: resolved.inputs,
            request,
            wire,
            end_user_id,
            streaming,
            turn: Some(turn),
            slot,
        },
    );
    let handle = match launched {
        Launched::Stream(response) => return Ok(response),
        Launched::Blocking(handle) => handle,
    };
    let summary = handle.await.map_err(|_| ApiError::internal())??;
    if summary.status == RunStatus::Failed {
        return Err(ApiError::invalid_param(run_failed_message(&summary)));
    }
    let mut answer = json!({
        "event": "message",
        "task_id": task_id,
        "id": message_id,
        "message_id": message_id,
        "conversation_id": conversation.id,
        "mode": mode,
        "answer": summary.answer,
        "metadata": {"usage": crate::wire::usage_json(&summary), "retriever_resources": []},
        "created_at": summary.created_at,
    });
    if route == Route::Completion
        && let Some(answer) = answer.as_object_mut()
    {
        answer.remove("conversation_id");
    }
    Ok(Json(answer).into_response())
}

/// An agent app's message has one thought (no tools): the answer the model gave.
fn agent_thoughts(message: &Message) -> Json_ {
    match message.metadata.get("agent_thought_id").and_then(Json_::as_str) {
        Some(id) => json!([{
            "id": id,
            "chain_id": null,
            "message_id": message.id,
            "position": 1,
            "thought": message.answer,
            "tool": "",
            "tool_labels": {},
            "tool_input": "",
            "created_at": message.created_at,
            "observation": "",
            "files": [],
        }]),
        None => json!([]),
    }
}

fn message_json(message: &Message) -> Json_ {
    json!({
        "id": message.id,
        "conversation_id": message.conversation_id,
        "parent_message_id": message.parent_message_id,
        "inputs": message.inputs,
        "query": message.query,
        "answer": message.answer,
        "message_files": [],
        "feedback": message.feedback_rating.as_ref().map(|rating| json!({"rating": rating})),
        "retriever_resources": [],
        "created_at": message.created_at,
        "agent_thoughts": agent_thoughts(message),
        "status": message.status,
        "error": message.error,
    })
}

/// `GET /messages?conversation_id&user&first_id&limit`: the newest page first, each page in
/// chronological order.
pub async fn messages(State(state): State<Shared>, headers: HeaderMap, params: Params) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    let user = params.user()?;
    let conversation_id = params
        .text("conversation_id")
        .filter(|id| is_uuid(id))
        .ok_or_else(|| ApiError::invalid_param("conversation_id is required and must be a UUID").with_param("conversation_id"))?;
    let limit = params.int("limit", 20, 1..=100)?;
    let end_user_id = state.end_user(&app.id, user).await?;
    let conversation = conversation_for(&state, &app, &end_user_id, conversation_id).await?;
    let (messages, has_more) =
        state.store.messages(&conversation.id, params.text("first_id"), limit).await.map_err(|error| match error {
            StoreError::NotFound(_) => ApiError::not_found("First Message Not Exists."),
            other => other.into(),
        })?;
    Ok(Json(json!({"limit": limit, "has_more": has_more, "data": messages.iter().map(message_json).collect::<Vec<_>>()})))
}

pub async fn conversation_for(state: &Shared, app: &App, end_user_id: &str, id: &str) -> Result<Conversation, ApiError> {
    if !is_uuid(id) {
        return Err(conversation_not_found());
    }
    state.store.conversation(&app.id, end_user_id, id).await.map_err(|error| match error {
        StoreError::NotFound(_) => conversation_not_found(),
        other => other.into(),
    })
}

/// `POST /messages/{id}/feedbacks` `{rating: like|dislike|null, user, content?}`.
pub async fn feedback(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(message_id): Path<String>,
    Body(body): Body,
) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let user = required_user(&body)?;
    let rating = match body.get("rating") {
        None | Some(Json_::Null) => None,
        Some(Json_::String(rating)) if rating == "like" || rating == "dislike" => Some(rating.clone()),
        Some(_) => return Err(ApiError::invalid_param("rating must be like, dislike or null").with_param("rating")),
    };
    let content = match body.get("content") {
        None | Some(Json_::Null) => None,
        Some(Json_::String(content)) => Some(content.clone()),
        Some(_) => return Err(ApiError::invalid_param("content must be a string").with_param("content")),
    };
    let end_user_id = state.end_user(&app.id, &user).await?;
    let message = users_message(&state, &app, &end_user_id, &message_id).await?;
    state.store.set_feedback(&message, &end_user_id, rating.as_deref(), content.as_deref()).await?;
    Ok(Json(json!({"result": "success"})))
}

/// The app's message `message_id`, when it is the end user's.
async fn users_message(state: &Shared, app: &App, end_user_id: &str, message_id: &str) -> Result<Message, ApiError> {
    let not_found = || ApiError::not_found("Message Not Exists.");
    if !is_uuid(message_id) {
        return Err(not_found());
    }
    let message = state.store.message(&app.id, message_id).await.map_err(|error| match error {
        StoreError::NotFound(_) => not_found(),
        other => other.into(),
    })?;
    if message.end_user_id != end_user_id {
        return Err(not_found());
    }
    Ok(message)
}

/// `GET /messages/{id}/suggested?user=`: three questions the user may ask next, asked of a
/// model as Dify asks them (`flowgate_engine::nodes::suggested`). As in Dify, a model that is
/// missing, fails, or answers something unreadable gives no questions rather than an error;
/// the reason is logged for the operator.
pub async fn suggested(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(message_id): Path<String>,
    params: Params,
) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    require_chat_app(&app)?;
    let user = params.user()?;
    let end_user_id = state.end_user(&app.id, user).await?;
    let message = users_message(&state, &app, &end_user_id, &message_id).await?;
    let (_, compiled) = state.current(&app).await?;
    let feature = compiled.features.get("suggested_questions_after_answer").cloned().unwrap_or(Json_::Null);
    if !suggestions_enabled(&app.mode, feature.get("enabled")) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "app_suggested_questions_after_answer_disabled",
            "Function Suggested questions after answer disabled.",
        ));
    }
    let questions = match state.engine.ports().model.clone() {
        None => {
            tracing::warn!(app = %app.id, "suggested questions need a model: start the server with --models");
            Vec::new()
        }
        Some(model) => {
            let limit = suggested::HISTORY_MESSAGES as i64;
            let (latest, _) = state.store.messages(&message.conversation_id, None, limit).await?;
            let history: Vec<PastTurn> =
                latest.into_iter().map(|message| PastTurn { query: message.query, answer: message.answer }).collect();
            let run_id = message.workflow_run_id.as_deref().unwrap_or(message.id.as_str());
            let context = app_call_context(&app, &end_user_id, "suggested_questions", "Suggested questions", run_id);
            let call = suggested::model_call(&feature, &history, context);
            ask_model(model.as_ref(), &app, call, "suggested questions").await.map(|text| suggested::questions(&text)).unwrap_or_default()
        }
    };
    Ok(Json(json!({"result": "success", "data": questions})))
}

/// Who a model call made for the app itself (not by a node) is for, in metrics and limits.
fn app_call_context(app: &App, end_user_id: &str, purpose: &str, title: &str, run_id: &str) -> PortContext {
    PortContext {
        node_id: Arc::from(purpose),
        node_type: Arc::from(purpose),
        title: Arc::from(title),
        run_id: Arc::from(run_id),
        app_id: Arc::from(app.id.as_str()),
        user_id: Arc::from(end_user_id),
    }
}

/// A conversation's name made by the default model from its first query, as Dify makes it
/// (`flowgate_engine::nodes::conversation_name`); `None` without a model or when the call fails
/// (logged), where Dify keeps the name it had.
pub async fn model_made_name(state: &Shared, app: &App, end_user_id: &str, conversation_id: &str, query: &str) -> Option<String> {
    let model = state.engine.ports().model.clone()?;
    let context = app_call_context(app, end_user_id, "conversation_name", "Conversation name", conversation_id);
    let call = conversation_name::model_call(query, context);
    ask_model(model.as_ref(), app, call, "conversation name").await.map(|text| conversation_name::name(&text, query))
}

/// Dify's limit on one suggested-questions call (the naming call is held to it too).
const APP_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The text of a model call the app makes for itself, or `None` (logged, naming `purpose`)
/// when it fails or takes longer than [`APP_CALL_TIMEOUT`].
async fn ask_model(model: &dyn ModelPort, app: &App, call: ModelCall, purpose: &str) -> Option<String> {
    match tokio::time::timeout(APP_CALL_TIMEOUT, model.invoke(call, Arc::new(|_: &str| {}))).await {
        Ok(Ok(reply)) => Some(reply.text),
        Ok(Err(error)) => {
            tracing::warn!(app = %app.id, %error, "{purpose}: the model call failed");
            None
        }
        Err(_) => {
            tracing::warn!(app = %app.id, "{purpose}: the model took longer than {APP_CALL_TIMEOUT:?}");
            None
        }
    }
}

/// Whether the feature is on: chatflows go by the truthiness of `enabled`; the basic editor's
/// apps are off only for an explicit `false` (or no setting), as Dify has always read them.
fn suggestions_enabled(mode: &str, enabled: Option<&Json_>) -> bool {
    match mode {
        "advanced-chat" => match enabled {
            None | Some(Json_::Null) => false,
            Some(Json_::Bool(value)) => *value,
            Some(Json_::Number(number)) => number.as_f64().is_some_and(|value| value != 0.0),
            Some(Json_::String(text)) => !text.is_empty(),
            Some(Json_::Array(items)) => !items.is_empty(),
            Some(Json_::Object(fields)) => !fields.is_empty(),
        },
        _ => !matches!(enabled, None | Some(Json_::Bool(false))),
    }
}

/// `GET /app/feedbacks?page&limit`.
pub async fn app_feedbacks(State(state): State<Shared>, headers: HeaderMap, params: Params) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let page = params.int("page", 1, 1..=99_999)?;
    let limit = params.int("limit", 20, 1..=101)?;
    let feedbacks = state.store.feedbacks(&app.id, page, limit).await?;
    let naive = |seconds: i64| flowgate_store::iso8601(seconds).trim_end_matches('Z').to_owned();
    let data: Vec<Json_> = feedbacks
        .iter()
        .map(|feedback| {
            json!({
                "id": feedback.id,
                "app_id": feedback.app_id,
                "conversation_id": feedback.conversation_id,
                "message_id": feedback.message_id,
                "rating": feedback.rating,
                "content": feedback.content,
                "from_source": "api",
                "from_end_user_id": feedback.end_user_id,
                "from_account_id": null,
                "created_at": naive(feedback.created_at),
                "updated_at": naive(feedback.updated_at),
            })
        })
        .collect();
    Ok(Json(json!({"data": data})))
}
