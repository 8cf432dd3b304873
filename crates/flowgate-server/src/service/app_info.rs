//! What clients ask about an app: `/parameters`, `/info`, `/site`, `/meta`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value as Json_, json};

use super::Shared;
use crate::api_error::ApiError;

/// `GET /parameters`: the features block with Dify's defaults, and the start form in Dify's
/// old structure (`[{"text-input": {...}}, ...]`).
pub async fn parameters(State(state): State<Shared>, headers: HeaderMap) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let (_, compiled) = state.current(&app).await?;
    let features = &compiled.features;
    let feature = |name: &str, default: Json_| features.get(name).filter(|value| !value.is_null()).cloned().unwrap_or(default);
    let disabled = || json!({"enabled": false});
    let user_input_form: Vec<Json_> = compiled
        .start_variables
        .as_array()
        .map(|variables| {
            variables
                .iter()
                .filter_map(|variable| {
                    let kind = variable.get("type").and_then(Json_::as_str)?;
                    Some(json!({kind: variable}))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({
        "opening_statement": feature("opening_statement", Json_::Null),
        "suggested_questions": feature("suggested_questions", json!([])),
        "suggested_questions_after_answer": feature("suggested_questions_after_answer", disabled()),
        "speech_to_text": feature("speech_to_text", disabled()),
        "text_to_speech": feature("text_to_speech", disabled()),
        "retriever_resource": feature("retriever_resource", disabled()),
        "annotation_reply": feature("annotation_reply", disabled()),
        "more_like_this": feature("more_like_this", disabled()),
        "user_input_form": user_input_form,
        "sensitive_word_avoidance": feature("sensitive_word_avoidance", json!({"enabled": false, "type": "", "configs": []})),
        "file_upload": feature("file_upload", json!({"image": {"enabled": false, "number_limits": 3, "detail": "high", "transfer_methods": ["remote_url", "local_file"]}})),
        "system_parameters": {
            "image_file_size_limit": 10,
            "video_file_size_limit": 100,
            "audio_file_size_limit": 50,
            "file_size_limit": 15,
            "workflow_file_upload_limit": 10,
        },
    })))
}

/// `GET /info`.
pub async fn info(State(state): State<Shared>, headers: HeaderMap) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    Ok(Json(json!({"name": app.name, "description": app.description, "tags": [], "mode": app.mode, "author_name": ""})))
}

/// `GET /site`: flowgate has no web app, so the site is the app's own name and icon.
pub async fn site(State(state): State<Shared>, headers: HeaderMap) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    Ok(Json(json!({
        "title": app.name,
        "chat_color_theme": null,
        "chat_color_theme_inverted": false,
        "icon_type": app.icon_type,
        "icon": app.icon,
        "icon_background": app.icon_background,
        "icon_url": null,
        "description": app.description,
        "copyright": null,
        "privacy_policy": null,
        "custom_disclaimer": "",
        "default_language": "en-US",
        "show_workflow_steps": true,
        "use_icon_as_answer_icon": false,
    })))
}

/// `GET /meta`: tool icons; flowgate serves none.
pub async fn meta(State(state): State<Shared>, headers: HeaderMap) -> Result<Json<Json_>, ApiError> {
    state.app_for_key(&headers).await?;
    Ok(Json(json!({"tool_icons": {}})))
}
