//! Run inputs: Dify's input-form validation and coercion, and the variables a run starts with
//! (system, environment, conversation, and the start node's inputs).

use std::collections::HashMap;
use std::sync::Arc;

use flowgate_dsl::AppMode;
use flowgate_dsl::nodes::{InputType, InputVariable};

use crate::plan::Plan;
use crate::pool::{Pool, Slot};
use crate::run::{RunContext, RunStart};
use crate::value::{File, Map, Value, key, map_with_capacity};

/// An input the start form rejects; the message is Dify's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    /// The input variable concerned.
    pub variable: String,
    pub message: String,
}

/// Turns a file input mapping (`{"transfer_method": ..., ...}`) into a file.
pub type FileResolver<'a> = &'a dyn Fn(&Map) -> Result<File, String>;

/// Everything a run is started with.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The request's `inputs`, as parsed from its JSON (see [`Value`]'s `Deserialize`).
    pub inputs: Map,
    /// The user's message (chat apps).
    pub query: Option<String>,
    /// `sys.files`.
    pub files: Vec<File>,
    /// The API's `user` (Dify's end-user session id).
    pub user_id: String,
    pub app_id: String,
    pub workflow_id: String,
    /// Generated when absent.
    pub run_id: Option<String>,
    pub conversation_id: Option<String>,
    /// The number of this conversation's turns including the current one.
    pub dialogue_count: Option<i64>,
    /// Persisted conversation variable values (by name), replacing the declared defaults.
    pub conversation_variables: HashMap<String, Value>,
    /// Unix seconds for `sys.timestamp`; the current time when absent.
    pub timestamp: Option<i64>,
    /// The conversation's earlier turns, oldest first, for model nodes with memory (shared
    /// with the run, not copied).
    pub history: Arc<[PastTurn]>,
}

/// One earlier turn of a conversation: what the user asked and what the app answered.
#[derive(Debug, Clone)]
pub struct PastTurn {
    pub query: String,
    pub answer: String,
}

/// Validates and coerces inputs against the start form, as Dify's `_prepare_user_inputs`.
/// Values are shared with `inputs`, never copied: a large text input costs nothing per node.
pub fn prepare_inputs(variables: &[InputVariable], inputs: &Map, resolve_file: Option<FileResolver<'_>>) -> Result<Map, InputError> {
    let mut prepared = map_with_capacity(variables.len());
    for variable in variables {
        let value = validate_input(variable, inputs.get(variable.variable.as_str()), resolve_file)?;
        prepared.insert(Arc::from(variable.variable.as_str()), value);
    }
    Ok(prepared)
}

fn error(variable: &InputVariable, message: String) -> InputError {
    InputError { variable: variable.variable.clone(), message }
}

fn validate_input(variable: &InputVariable, value: Option<&Value>, resolve_file: Option<FileResolver<'_>>) -> Result<Value, InputError> {
    let name = &variable.variable;
    let value = match value {
        None | Some(Value::None) => {
            if variable.required {
                return Err(error(variable, format!("{name} is required in input form")));
            }
            match &variable.default {
                serde_json::Value::Null => return Ok(Value::None),
                default => Value::from(default),
            }
        }
        Some(value) => value.clone(),
    };
    let kind = variable.kind;
    if matches!(kind, InputType::File | InputType::FileList) && !variable.required && value.as_str() == Some("") {
        return Ok(Value::None);
    }
    if matches!(kind, InputType::TextInput | InputType::Select | InputType::Paragraph) && !matches!(value, Value::Str(_)) {
        return Err(error(variable, format!("(type '{}') {name} in input form must be a string", kind.as_str())));
    }
    let value = match kind {
        InputType::Number => {
            return match &value {
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => Ok(value),
                Value::Str(text) if text.trim().is_empty() => Ok(Value::None),
                Value::Str(text) => {
                    let parsed = if text.contains('.') {
                        crate::pyfmt::parse_float(text).map(Value::Float)
                    } else {
                        crate::pyfmt::parse_int(text).map(Value::Int)
                    };
                    parsed.map_err(|_| error(variable, format!("{name} in input form must be a valid number")))
                }
                other => Err(error(
                    variable,
                    format!(
                        "expected value type int, float or str, got {}, value: {}",
                        crate::pyfmt::python_type_name(other),
                        crate::pyfmt::py_str(other)
                    ),
                )),
            };
        }
        InputType::Select => {
            let text = value.as_str().unwrap_or_default();
            if !variable.options.iter().any(|option| option == text) {
                return Err(error(
                    variable,
                    format!(
                        "{name} in input form must be one of the following: {}",
                        crate::value::python_list_of_strings(&variable.options)
                    ),
                ));
            }
            value
        }
        InputType::TextInput | InputType::Paragraph => {
            if let Some(max) = variable.max_length.filter(|max| *max > 0)
                && value.as_str().map_or(0, |text| text.chars().count()) as i64 > max
            {
                return Err(error(variable, format!("{name} in input form must be less than {max} characters")));
            }
            value
        }
        InputType::File => {
            let Value::Object(mapping) = &value else {
                return Err(error(variable, format!("{name} in input form must be a file")));
            };
            return resolve(variable, mapping, resolve_file).map(|file| Value::File(Arc::new(file)));
        }
        InputType::FileList => {
            let Some(items) = value.as_array().filter(|items| items.iter().all(|item| matches!(item, Value::Object(_)))) else {
                return Err(error(variable, format!("{name} in input form must be a list of files")));
            };
            if let Some(max) = variable.max_length.filter(|max| *max > 0)
                && items.len() as i64 > max
            {
                return Err(error(variable, format!("{name} in input form must be less than {max} files")));
            }
            let files = items
                .iter()
                .filter_map(|item| if let Value::Object(mapping) = item { Some(mapping) } else { None })
                .map(|mapping| resolve(variable, mapping, resolve_file).map(|file| Value::File(Arc::new(file))))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Value::array(files));
        }
        InputType::Checkbox => match &value {
            Value::Str(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Value::Bool(true),
                "false" | "0" | "no" | "off" => Value::Bool(false),
                _ => value,
            },
            Value::Int(1) => Value::Bool(true),
            Value::Int(0) => Value::Bool(false),
            Value::Float(number) if *number == 1.0 => Value::Bool(true),
            Value::Float(number) if *number == 0.0 => Value::Bool(false),
            _ => value,
        },
        InputType::JsonObject => {
            let empty = match &value {
                Value::Object(map) => map.is_empty(),
                Value::Str(text) => text.is_empty(),
                Value::Array(items) => items.is_empty(),
                Value::Bool(flag) => !flag,
                Value::Int(number) => *number == 0,
                Value::Float(number) => *number == 0.0,
                Value::None => true,
                Value::File(_) => false,
            };
            if !empty && !matches!(value, Value::Object(_)) {
                return Err(error(variable, format!("{name} in input form must be a dict")));
            }
            value
        }
        InputType::ExternalDataTool => value,
    };
    // Dify drops NUL characters from text inputs.
    if let Value::Str(text) = &value
        && memchr::memchr(0, text.as_bytes()).is_some()
    {
        return Ok(Value::from(text.replace('\0', "")));
    }
    if matches!(value, Value::Array(_) | Value::Object(_)) && !matches!(kind, InputType::JsonObject) {
        return Err(error(
            variable,
            format!("Invalid input type for {}", crate::value::python_list_of_strings(std::slice::from_ref(name))),
        ));
    }
    Ok(value)
}

fn resolve(variable: &InputVariable, mapping: &Map, resolve_file: Option<FileResolver<'_>>) -> Result<File, InputError> {
    match resolve_file {
        Some(resolve) => resolve(mapping).map_err(|message| error(variable, message)),
        None => default_file_resolver(mapping).map_err(|message| error(variable, message)),
    }
}

/// Resolves remote-URL files without any storage (what the CLI can do on its own).
pub fn default_file_resolver(mapping: &Map) -> Result<File, String> {
    let text = |key: &str| mapping.get(key).and_then(Value::as_str).map(str::to_owned);
    let transfer_method = text("transfer_method").ok_or("file input needs a transfer_method")?;
    match transfer_method.as_str() {
        "remote_url" => {
            let url = text("url").or_else(|| text("remote_url")).ok_or("remote_url files need a url")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err("Invalid file url".into());
            }
            let filename = url.split('?').next().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
            let extension = filename.rsplit_once('.').map(|(_, extension)| format!(".{}", extension.to_ascii_lowercase()));
            let mime_type = mime_guess::from_path(&filename).first_raw().map(str::to_owned);
            Ok(File {
                id: None,
                kind: text("type").unwrap_or_else(|| file_kind(extension.as_deref()).to_owned()),
                transfer_method,
                remote_url: Some(url.clone()),
                related_id: None,
                filename: Some(filename),
                extension,
                mime_type,
                size: -1,
                url: Some(url),
            })
        }
        other => Err(format!("not supported yet: {other} files without a file store")),
    }
}

/// Dify's file type by extension.
pub fn file_kind(extension: Option<&str>) -> &'static str {
    let extension = extension.unwrap_or_default().trim_start_matches('.').to_ascii_lowercase();
    match extension.as_str() {
        "jpg" | "jpeg" | "png" | "webp" | "gif" | "svg" => "image",
        "mp3" | "m4a" | "wav" | "amr" | "mpga" => "audio",
        "mp4" | "mov" | "mpeg" | "webm" => "video",
        "txt" | "markdown" | "md" | "mdx" | "pdf" | "html" | "htm" | "xlsx" | "xls" | "vtt" | "properties" | "doc" | "docx" | "csv"
        | "eml" | "msg" | "pptx" | "xml" | "epub" | "ppt" => "document",
        _ => "custom",
    }
}

/// The `sys.*` variables a run may carry (see [`build_start`]).
pub const SYSTEM_VARIABLES: [&str; 9] =
    ["files", "user_id", "app_id", "workflow_id", "workflow_run_id", "timestamp", "query", "conversation_id", "dialogue_count"];

/// Seeds a run's pool and builds `workflow_started.inputs`.
pub fn build_start(plan: &Plan, inputs: Map, request: &RunRequest) -> RunStart {
    let run_id: Arc<str> = Arc::from(request.run_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()));
    let context = Arc::new(RunContext {
        run_id: run_id.clone(),
        app_id: Arc::from(request.app_id.as_str()),
        workflow_id: Arc::from(request.workflow_id.as_str()),
        user_id: Arc::from(request.user_id.as_str()),
        history: request.history.clone(),
    });
    let mut pool = Pool::new(plan.nodes.len());
    let files = Value::array(request.files.iter().cloned().map(|file| Value::File(Arc::new(file))).collect());
    let timestamp = request.timestamp.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
    });
    let mut system: Vec<(&'static str, Value)> = vec![
        ("files", files.clone()),
        ("user_id", Value::str(request.user_id.as_str())),
        ("app_id", Value::str(request.app_id.as_str())),
        ("workflow_id", Value::str(request.workflow_id.as_str())),
        ("workflow_run_id", Value::Str(run_id)),
        ("timestamp", Value::Int(timestamp)),
    ];
    if plan.mode == AppMode::AdvancedChat || request.query.is_some() {
        system.push(("query", Value::from(request.query.clone().unwrap_or_default())));
    }
    if let Some(conversation_id) = &request.conversation_id {
        system.push(("conversation_id", Value::str(conversation_id.as_str())));
    }
    if plan.mode == AppMode::AdvancedChat || request.dialogue_count.is_some() {
        system.push(("dialogue_count", Value::Int(request.dialogue_count.unwrap_or(1))));
    }
    let mut started_inputs = map_with_capacity(inputs.len() + system.len());
    started_inputs.extend(inputs.iter().map(|(name, value)| (name.clone(), value.clone())));
    for (name, value) in system {
        if name != "conversation_id" {
            started_inputs.insert(plan.namespaced_keys.of(Slot::Sys, name), value.clone());
        }
        pool.set(Slot::Sys, key(name), value);
    }
    pool.set(Slot::UserInput, key("files"), files);
    for variable in &plan.environment {
        pool.set(Slot::Env, variable.name.clone(), variable.value.clone());
        if let Some(value_type) = variable.value_type {
            pool.declare(Slot::Env, variable.name.clone(), value_type);
        }
    }
    for variable in &plan.conversation {
        let value = request.conversation_variables.get(&*variable.name).cloned().unwrap_or_else(|| variable.value.clone());
        pool.set(Slot::Conversation, variable.name.clone(), value);
        if let Some(value_type) = variable.value_type {
            pool.declare(Slot::Conversation, variable.name.clone(), value_type);
        }
    }
    for (name, value) in inputs.iter() {
        pool.set(Slot::Node(plan.root), name.clone(), value.clone());
    }
    RunStart { context, pool, started_inputs: Arc::new(started_inputs) }
}
