//! Files: `POST /files/upload`, file inputs of runs (`local_file` uploads and `remote_url`
//! links), and the engine's file port over the blob store.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{Value as Json_, json};

use flowgate_dsl::nodes::InputVariable;
use flowgate_egress::EgressClient;
use flowgate_engine::inputs::{default_file_resolver, file_kind, prepare_inputs};
use flowgate_engine::ports::{FilePort, PortError, PortErrorKind};
use flowgate_engine::value::{File, Map, Value, map_from_json};
use flowgate_store::{App, Store, UploadFile};

use super::Shared;
use crate::api_error::ApiError;

/// Dify's default upload limits (`UPLOAD_FILE_SIZE_LIMIT` and friends), in MB.
fn size_limit_mb(kind: &str) -> usize {
    match kind {
        "image" => 10,
        "video" => 100,
        "audio" => 50,
        _ => 15,
    }
}

/// The largest remote file a node may read.
const MAX_REMOTE_BYTES: usize = 100 * 1024 * 1024;

fn upload_key(id: &str) -> String {
    format!("uploads/{id}")
}

fn tool_file_key(id: &str) -> String {
    format!("tool-files/{id}")
}

/// `POST /files/upload` (multipart `file` and `user`) → 201 with the file's record.
pub async fn upload(
    State(state): State<Shared>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let no_file = || ApiError::new(StatusCode::BAD_REQUEST, "no_file_uploaded", "Please upload your file.");
    let mut multipart = multipart.map_err(|_| no_file())?;
    let mut user = None;
    let mut file: Option<(String, Option<String>, Bytes)> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(file_too_large(None)),
            Err(error) => return Err(ApiError::invalid_param(format!("The multipart body cannot be read: {}", error.body_text()))),
        };
        match field.name() {
            Some("user") => user = field.text().await.ok(),
            Some("file") => {
                if file.is_some() {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, "too_many_files", "Only one file is allowed."));
                }
                let name = field.file_name().map(str::to_owned);
                let mime_type = field.content_type().map(str::to_owned);
                let content = field.bytes().await.map_err(|error| {
                    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        file_too_large(None)
                    } else {
                        ApiError::invalid_param(format!("The file cannot be read: {}", error.body_text()))
                    }
                })?;
                let Some(name) = name.filter(|name| !name.is_empty()) else {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "filename_not_exists_error",
                        "The specified filename does not exist.",
                    ));
                };
                file = Some((name, mime_type, content));
            }
            _ => {}
        }
    }
    let (name, mime_type, content) = file.ok_or_else(no_file)?;
    let user = user.filter(|user| !user.is_empty()).ok_or_else(|| ApiError::invalid_param("user is required").with_param("user"))?;
    let extension = name.rsplit_once('.').map(|(_, extension)| extension.to_ascii_lowercase()).unwrap_or_default();
    let kind = file_kind(Some(&extension));
    let limit_mb = size_limit_mb(kind);
    if content.len() > limit_mb * 1024 * 1024 {
        return Err(file_too_large(Some(limit_mb)));
    }
    let mime_type = mime_type
        .filter(|mime| !mime.is_empty() && mime != "application/octet-stream")
        .or_else(|| mime_guess::from_ext(&extension).first_raw().map(str::to_owned))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let end_user_id = state.end_user(&app.id, &user).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let record = UploadFile {
        id: id.clone(),
        app_id: app.id.clone(),
        end_user_id: end_user_id.clone(),
        name: name.clone(),
        size: content.len() as i64,
        extension: extension.clone(),
        mime_type: mime_type.clone(),
        blob_key: upload_key(&id),
        created_at: flowgate_store::now(),
    };
    state.store.add_upload(&record, content).await?;
    let body = json!({
        "id": record.id,
        "name": record.name,
        "size": record.size,
        "extension": record.extension,
        "mime_type": record.mime_type,
        "created_by": end_user_id,
        "created_at": record.created_at,
        "preview_url": null,
        "source_url": null,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn file_too_large(limit_mb: Option<usize>) -> ApiError {
    let message = match limit_mb {
        Some(limit) => format!("File size exceeded. The limit for this type of file is {limit} MB."),
        None => "File size exceeded.".to_owned(),
    };
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", message)
}

/// A run's inputs, validated against the start form, and its `sys.files`.
pub struct ResolvedInputs {
    pub inputs: Map,
    pub files: Vec<File>,
}

/// Validates inputs and `files` against the start form, looking up uploaded files first (the
/// engine's validation is synchronous; the lookups are not).
pub async fn resolve_inputs(
    state: &Shared,
    app: &App,
    variables: &[InputVariable],
    inputs: &serde_json::Map<String, Json_>,
    files: Option<&Json_>,
) -> Result<ResolvedInputs, ApiError> {
    let mut upload_ids = Vec::new();
    for value in inputs.values() {
        collect_upload_ids(value, &mut upload_ids);
    }
    if let Some(files) = files {
        collect_upload_ids(files, &mut upload_ids);
    }
    let mut uploads = HashMap::new();
    for id in upload_ids {
        if uploads.contains_key(&id) {
            continue;
        }
        match state.store.upload(&app.id, &id).await {
            Ok(upload) => {
                uploads.insert(id, upload);
            }
            Err(flowgate_store::StoreError::NotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let resolver = |mapping: &Map| resolve_file(mapping, &uploads);
    let inputs =
        prepare_inputs(variables, &map_from_json(inputs), Some(&resolver)).map_err(|error| ApiError::invalid_param(error.message))?;
    let files = match files {
        None | Some(Json_::Null) => Vec::new(),
        Some(Json_::Array(items)) => items
            .iter()
            .map(|item| match Value::from(item) {
                Value::Object(mapping) => resolve_file(&mapping, &uploads),
                _ => Err("each entry of files must be an object".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| ApiError::invalid_param(message).with_param("files"))?,
        Some(_) => return Err(ApiError::invalid_param("files must be a list").with_param("files")),
    };
    Ok(ResolvedInputs { inputs, files })
}

fn collect_upload_ids(value: &Json_, ids: &mut Vec<String>) {
    match value {
        Json_::Object(mapping) if mapping.get("transfer_method").and_then(Json_::as_str) == Some("local_file") => {
            if let Some(id) = mapping.get("upload_file_id").and_then(Json_::as_str) {
                ids.push(id.to_owned());
            }
        }
        Json_::Array(items) => items.iter().for_each(|item| collect_upload_ids(item, ids)),
        _ => {}
    }
}

fn resolve_file(mapping: &Map, uploads: &HashMap<String, UploadFile>) -> Result<File, String> {
    let text = |key: &str| mapping.get(key).and_then(Value::as_str).map(str::to_owned);
    match text("transfer_method").as_deref() {
        Some("local_file") => {
            let id = text("upload_file_id").ok_or("local_file files need an upload_file_id")?;
            let upload = uploads.get(&id).ok_or_else(|| format!("Invalid upload file id: {id}"))?;
            let extension = (!upload.extension.is_empty()).then(|| format!(".{}", upload.extension));
            Ok(File {
                id: Some(upload.id.clone()),
                kind: text("type").unwrap_or_else(|| file_kind(extension.as_deref()).to_owned()),
                transfer_method: "local_file".into(),
                remote_url: None,
                related_id: Some(upload.id.clone()),
                filename: Some(upload.name.clone()),
                extension,
                mime_type: Some(upload.mime_type.clone()),
                size: upload.size,
                url: None,
            })
        }
        _ => default_file_resolver(mapping),
    }
}

/// The engine's file port for `serve`: uploads and node-made files live in the blob store
/// (local folder or S3), remote files come through the SSRF-safe client.
pub struct StoreFiles {
    store: Store,
    egress: EgressClient,
}

impl StoreFiles {
    pub fn new(store: Store, egress: EgressClient) -> Arc<Self> {
        Arc::new(Self { store, egress })
    }
}

impl FilePort for StoreFiles {
    fn read(&self, file: &File) -> BoxFuture<'static, Result<Bytes, PortError>> {
        let store = self.store.clone();
        let egress = self.egress.clone();
        let file = file.clone();
        Box::pin(async move {
            let key = match (file.transfer_method.as_str(), file.related_id.as_deref()) {
                ("local_file", Some(id)) => Some(upload_key(id)),
                ("tool_file", Some(id)) => Some(tool_file_key(id)),
                _ => None,
            };
            if let Some(key) = key {
                return store
                    .blobs()
                    .get(&key)
                    .await
                    .map_err(|error| PortError::new(PortErrorKind::Other, format!("cannot read the stored file: {error}")));
            }
            match file.remote_url.as_deref().or(file.url.as_deref()) {
                Some(url) => egress.fetch(url, MAX_REMOTE_BYTES).await,
                None => Err(PortError::new(PortErrorKind::InvalidRequest, "the file has neither a stored copy nor a URL")),
            }
        })
    }

    fn store(&self, content: Bytes, mime_type: &str, filename: &str) -> BoxFuture<'static, Result<File, PortError>> {
        let store = self.store.clone();
        let mime_type = mime_type.to_owned();
        let filename = filename.to_owned();
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let size = content.len() as i64;
            store
                .blobs()
                .put(&tool_file_key(&id), content)
                .await
                .map_err(|error| PortError::new(PortErrorKind::Other, format!("cannot store the file: {error}")))?;
            Ok(crate::files::tool_file(id, size, mime_type, filename, None))
        })
    }
}
