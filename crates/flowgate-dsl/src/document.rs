use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::easy_ui::AppPrompt;
use crate::error::{Diagnostic, DslError};
use crate::lenient;
use crate::nodes::{self, NodeData};
use crate::source::{self, LineIndex};

/// The newest DSL version flowgate knows; exports it writes carry Dify 1.13's version.
pub const SUPPORTED_MAJOR_MINOR: (u64, u64) = (0, 7);
pub const EXPORT_VERSION: &str = "0.6.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppMode {
    Workflow,
    AdvancedChat,
    Chat,
    AgentChat,
    Completion,
}

impl AppMode {
    pub fn parse(mode: &str) -> Option<Self> {
        Some(match mode {
            "workflow" => Self::Workflow,
            "advanced-chat" => Self::AdvancedChat,
            "chat" => Self::Chat,
            "agent-chat" => Self::AgentChat,
            "completion" => Self::Completion,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workflow => "workflow",
            Self::AdvancedChat => "advanced-chat",
            Self::Chat => "chat",
            Self::AgentChat => "agent-chat",
            Self::Completion => "completion",
        }
    }

    /// Workflow and advanced-chat apps carry a graph; the others a `model_config`, from which
    /// loading builds the graph they run.
    pub fn has_graph(self) -> bool {
        matches!(self, Self::Workflow | Self::AdvancedChat)
    }

    pub fn is_chat(self) -> bool {
        matches!(self, Self::AdvancedChat | Self::Chat | Self::AgentChat)
    }
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub mode: AppMode,
    pub description: String,
    pub icon: String,
    pub icon_type: String,
    pub icon_background: String,
    pub use_icon_as_answer_icon: bool,
}

/// An environment or conversation variable declared by the workflow.
#[derive(Debug, Clone)]
pub struct VariableDecl {
    pub id: String,
    pub name: String,
    pub value_type: String,
    pub value: Value,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub graph: Graph,
    pub features: Value,
    pub environment_variables: Vec<VariableDecl>,
    pub conversation_variables: Vec<VariableDecl>,
    /// A chat app's prompt rules, when the graph was built from its `model_config`.
    pub app_prompt: Option<AppPrompt>,
    /// What the app uses that flowgate cannot run yet; running it is refused naming these.
    pub unsupported: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStrategy {
    FailBranch,
    DefaultValue,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RetryConfig {
    pub enabled: bool,
    pub max_retries: u32,
    pub interval_ms: u64,
}

/// One entry of `default_value`, already converted to its declared type the way Dify does.
#[derive(Debug, Clone)]
pub struct DefaultValue {
    pub key: String,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// `data.type`, e.g. `if-else`.
    pub node_type: String,
    pub title: String,
    pub version: String,
    /// The iteration or loop this node lives in, if any.
    pub container: Option<String>,
    pub error_strategy: Option<ErrorStrategy>,
    pub default_values: Vec<DefaultValue>,
    pub retry: RetryConfig,
    pub data: NodeData,
    /// The node's `data` mapping as written.
    pub raw: Value,
    pub line: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub source_handle: String,
    pub line: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    index: HashMap<String, usize>,
}

impl Graph {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|&position| &self.nodes[position])
    }

    /// Nodes whose direct container is `container` (`None` = the top level), in file order.
    pub fn scope(&self, container: Option<&str>) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |node| node.container.as_deref() == container)
    }

    /// The node a top-level run starts from: the first start/trigger/datasource node in file
    /// order, as Dify picks it.
    pub fn root(&self) -> Option<&Node> {
        self.scope(None).find(|node| is_root_type(&node.node_type))
    }
}

pub(crate) fn is_root_type(node_type: &str) -> bool {
    matches!(node_type, "start" | "datasource") || node_type.starts_with("trigger-")
}

/// A loaded DSL: typed view, the original document, and what loading found.
#[derive(Debug, Clone)]
pub struct Document {
    pub version: String,
    pub kind: String,
    pub app: App,
    pub workflow: Option<Workflow>,
    pub model_config: Option<Value>,
    raw: Value,
    text: String,
    lines: LineIndex,
    pub(crate) load_diagnostics: Vec<Diagnostic>,
}

impl Document {
    /// Reads a DSL export: YAML, or the console's `{"data": "<yaml>"}` JSON wrapper.
    pub fn load(text: &str) -> Result<Self, DslError> {
        let decoded = source::decode(text)?;
        let Value::Object(root) = decoded.value else {
            return Err(DslError::NotMapping { found: lenient::kind(&decoded.value) });
        };
        let mut diagnostics = Vec::new();

        let version = match root.get("version") {
            None | Some(Value::Null) => "0.1.0".to_owned(),
            Some(Value::String(version)) => version.clone(),
            Some(other) => {
                return Err(DslError::Envelope {
                    field: "version",
                    message: format!("must be a quoted string such as '0.6.0', found {} ({other})", lenient::kind(other)),
                });
            }
        };
        check_version(&version, &mut diagnostics)?;
        let kind = match root.get("kind") {
            Some(Value::String(kind)) if kind == "app" => kind.clone(),
            _ => "app".to_owned(),
        };

        let app = read_app(root.get("app"))?;
        let (workflow, model_config) = if app.mode.has_graph() {
            let Some(Value::Object(workflow)) = root.get("workflow") else {
                return Err(DslError::Envelope {
                    field: "workflow",
                    message: "is missing: workflow and advanced-chat apps need a `workflow` mapping".into(),
                });
            };
            (Some(read_workflow(workflow, &decoded.lines, &mut diagnostics)?), None)
        } else {
            match root.get("model_config") {
                Some(Value::Object(config)) => {
                    let workflow = crate::easy_ui::runtime_workflow(app.mode, config, &mut diagnostics)?;
                    (Some(workflow), Some(Value::Object(config.clone())))
                }
                _ => {
                    return Err(DslError::Envelope {
                        field: "model_config",
                        message: format!("is missing: {} apps need a `model_config` mapping", app.mode.as_str()),
                    });
                }
            }
        };

        Ok(Self {
            version,
            kind,
            app,
            workflow,
            model_config,
            raw: Value::Object(root),
            text: decoded.yaml_text,
            lines: decoded.lines,
            load_diagnostics: diagnostics,
        })
    }

    /// The whole document as imported (unknown keys included).
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The YAML text the document was read from.
    pub fn source_text(&self) -> &str {
        &self.text
    }

    pub fn graph(&self) -> Option<&Graph> {
        self.workflow.as_ref().map(|workflow| &workflow.graph)
    }

    pub fn node_line(&self, id: &str) -> Option<u32> {
        self.lines.node(id)
    }

    /// The document as a YAML export, as Dify writes one (`kind: app`, keys as imported).
    pub fn export_yaml(&self) -> String {
        let mut raw = self.raw.clone();
        if let Value::Object(map) = &mut raw {
            map.insert("kind".into(), Value::String("app".into()));
            map.entry("version").or_insert_with(|| Value::String(self.version.clone()));
        }
        serde_saphyr::to_string(&raw).unwrap_or_else(|_| self.text.clone())
    }
}

fn check_version(version: &str, diagnostics: &mut Vec<Diagnostic>) -> Result<(), DslError> {
    let parts: Vec<_> = version.split('.').map(str::parse::<u64>).collect();
    let numbers: Option<Vec<u64>> = parts.into_iter().map(Result::ok).collect();
    let Some(numbers) = numbers.filter(|numbers| (2..=3).contains(&numbers.len())) else {
        return Err(DslError::Envelope { field: "version", message: format!("'{version}' is not a version number") });
    };
    let (major, minor) = (numbers[0], numbers[1]);
    if (major, minor) > SUPPORTED_MAJOR_MINOR {
        diagnostics.push(Diagnostic::warning(
            "newer_dsl_version",
            format!(
                "DSL version {version} is newer than the newest supported ({}.{}.x); it may use features flowgate does not know",
                SUPPORTED_MAJOR_MINOR.0, SUPPORTED_MAJOR_MINOR.1
            ),
        ));
    }
    Ok(())
}

fn read_app(value: Option<&Value>) -> Result<App, DslError> {
    let Some(Value::Object(app)) = value else {
        return Err(DslError::Envelope { field: "app", message: "is missing: every DSL needs an `app` mapping".into() });
    };
    let text = |key: &str| match app.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    };
    let mode_text = match app.get("mode") {
        Some(Value::String(mode)) => mode.clone(),
        None | Some(Value::Null) => {
            return Err(DslError::Envelope { field: "app.mode", message: "is missing".into() });
        }
        Some(other) => {
            return Err(DslError::Envelope { field: "app.mode", message: format!("must be a string, found {}", lenient::kind(other)) });
        }
    };
    let mode = AppMode::parse(&mode_text).ok_or_else(|| DslError::Envelope {
        field: "app.mode",
        message: format!("'{mode_text}' is not an app mode (expected workflow, advanced-chat, chat, agent-chat or completion)"),
    })?;
    let icon_type = match text("icon_type").as_str() {
        kind @ ("emoji" | "image" | "link") => kind.to_owned(),
        _ => "emoji".to_owned(),
    };
    Ok(App {
        name: text("name"),
        mode,
        description: text("description"),
        icon: text("icon"),
        icon_type,
        icon_background: text("icon_background"),
        use_icon_as_answer_icon: matches!(app.get("use_icon_as_answer_icon"), Some(Value::Bool(true))),
    })
}

fn read_workflow(workflow: &Map<String, Value>, lines: &LineIndex, diagnostics: &mut Vec<Diagnostic>) -> Result<Workflow, DslError> {
    let Some(Value::Object(graph)) = workflow.get("graph") else {
        return Err(DslError::Envelope { field: "workflow.graph", message: "is missing or not a mapping".into() });
    };
    let graph = read_graph(graph, lines, diagnostics)?;
    let environment_variables = read_variables(workflow.get("environment_variables"), "environment_variables", diagnostics);
    let conversation_variables = read_variables(workflow.get("conversation_variables"), "conversation_variables", diagnostics);
    Ok(Workflow {
        graph,
        features: workflow.get("features").cloned().unwrap_or(Value::Object(Map::new())),
        environment_variables,
        conversation_variables,
        app_prompt: None,
        unsupported: Vec::new(),
    })
}

fn read_variables(value: Option<&Value>, field: &'static str, diagnostics: &mut Vec<Diagnostic>) -> Vec<VariableDecl> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            diagnostics.push(
                Diagnostic::error("invalid_variables", format!("must be a list, found {}", lenient::kind(other)))
                    .field(format!("workflow.{field}")),
            );
            return Vec::new();
        }
    };
    let mut variables = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let location = format!("workflow.{field}[{index}]");
        let Value::Object(item) = item else {
            diagnostics.push(Diagnostic::error("invalid_variables", "must be a mapping").field(location));
            continue;
        };
        let name = match item.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => {
                diagnostics.push(Diagnostic::error("invalid_variables", "has no `name`").field(location));
                continue;
            }
        };
        let text = |key: &str| item.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let value_type = text("value_type");
        let value = item.get("value").cloned().unwrap_or(Value::Null);
        if value.is_null() && value_type != "secret" {
            diagnostics.push(
                Diagnostic::warning("variable_without_value", format!("variable '{name}' has no value; it starts empty"))
                    .field(location.clone()),
            );
        }
        variables.push(VariableDecl { id: text("id"), name, value_type, value, description: text("description") });
    }
    variables
}

pub(crate) fn read_graph(graph: &Map<String, Value>, lines: &LineIndex, diagnostics: &mut Vec<Diagnostic>) -> Result<Graph, DslError> {
    let raw_nodes = match graph.get("nodes") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(nodes)) => nodes,
        Some(other) => {
            return Err(DslError::Envelope {
                field: "workflow.graph.nodes",
                message: format!("must be a list, found {}", lenient::kind(other)),
            });
        }
    };
    let raw_edges = match graph.get("edges") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(edges)) => edges,
        Some(other) => {
            return Err(DslError::Envelope {
                field: "workflow.graph.edges",
                message: format!("must be a list, found {}", lenient::kind(other)),
            });
        }
    };

    // Sticky notes are canvas-only; Dify drops them before validation.
    let node_maps: Vec<(usize, &Map<String, Value>)> = raw_nodes
        .iter()
        .enumerate()
        .filter_map(|(index, node)| match node {
            Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("custom-note") => None,
            Value::Object(map) => Some((index, map)),
            other => {
                diagnostics.push(
                    Diagnostic::error("invalid_node", format!("must be a mapping, found {}", lenient::kind(other)))
                        .field(format!("workflow.graph.nodes[{index}]")),
                );
                None
            }
        })
        .collect();

    let ids: HashMap<String, &Map<String, Value>> =
        node_maps.iter().filter_map(|(_, map)| id_of(map.get("id")).map(|id| (id, *map))).collect();

    let mut nodes = Vec::with_capacity(node_maps.len());
    for (index, map) in &node_maps {
        if let Some(node) = read_node(*index, map, &ids, lines, diagnostics) {
            nodes.push(node);
        }
    }

    let mut edges = Vec::with_capacity(raw_edges.len());
    for (index, edge) in raw_edges.iter().enumerate() {
        let line = lines.edge(index);
        let location = format!("workflow.graph.edges[{index}]");
        let Value::Object(edge) = edge else {
            diagnostics.push(Diagnostic::error("invalid_edge", "must be a mapping").field(location).line(line));
            continue;
        };
        let (Some(source), Some(target)) = (id_of(edge.get("source")), id_of(edge.get("target"))) else {
            diagnostics.push(Diagnostic::error("invalid_edge", "needs string `source` and `target` node ids").field(location).line(line));
            continue;
        };
        let source_handle = match edge.get("sourceHandle") {
            None | Some(Value::Null) => "source".to_owned(),
            Some(Value::String(handle)) => handle.clone(),
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Bool(flag)) => flag.to_string(),
            Some(other) => {
                diagnostics.push(
                    Diagnostic::error("invalid_edge", format!("`sourceHandle` must be a string, found {}", lenient::kind(other)))
                        .field(location)
                        .line(line),
                );
                continue;
            }
        };
        let id = match edge.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => format!("edge_{index}"),
        };
        edges.push(Edge { id, source, target, source_handle, line });
    }

    let mut index = HashMap::with_capacity(nodes.len());
    for (position, node) in nodes.iter().enumerate() {
        index.entry(node.id.clone()).or_insert(position);
    }
    Ok(Graph { nodes, edges, index })
}

fn id_of(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    }
}

fn read_node(
    index: usize,
    map: &Map<String, Value>,
    ids: &HashMap<String, &Map<String, Value>>,
    lines: &LineIndex,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Node> {
    let Some(id) = id_of(map.get("id")) else {
        diagnostics.push(Diagnostic::error("invalid_node", "has no `id`").field(format!("workflow.graph.nodes[{index}]")));
        return None;
    };
    let line = lines.node(&id);
    let Some(Value::Object(data)) = map.get("data") else {
        diagnostics.push(Diagnostic::error("invalid_node", "has no `data` mapping").node(&id).line(line));
        return None;
    };
    let node_type = match data.get("type") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
        _ => {
            diagnostics.push(Diagnostic::error("invalid_node", "has no `data.type`").node(&id).field("data.type").line(line));
            return None;
        }
    };
    let raw = Value::Object(data.clone());
    let version = match data.get("version") {
        Some(Value::String(version)) => version.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => "1".to_owned(),
    };
    let title = data.get("title").and_then(Value::as_str).unwrap_or_default().to_owned();

    let container = match resolve_container(&id, map, ids) {
        Ok(container) => container,
        Err(message) => {
            diagnostics.push(Diagnostic::error("invalid_container", message).node(&id).line(line));
            None
        }
    };

    let error_strategy = match data.get("error_strategy") {
        None | Some(Value::Null) => None,
        Some(Value::String(strategy)) if strategy == "fail-branch" => Some(ErrorStrategy::FailBranch),
        Some(Value::String(strategy)) if strategy == "default-value" => Some(ErrorStrategy::DefaultValue),
        Some(Value::String(strategy)) if strategy.is_empty() || strategy == "none" => None,
        Some(other) => {
            diagnostics.push(
                Diagnostic::warning(
                    "unknown_error_strategy",
                    format!("error strategy {other} is not one of fail-branch, default-value; a failure will stop the run"),
                )
                .node(&id)
                .field("data.error_strategy")
                .line(line),
            );
            None
        }
    };
    let default_values = read_default_values(data.get("default_value"), &id, line, diagnostics);
    let retry = read_retry(data.get("retry_config"));

    let node_data = match nodes::parse_node_data(&node_type, &version, &raw) {
        Ok(Some(node_data)) => node_data,
        Ok(None) => {
            diagnostics.push(
                Diagnostic::error("unknown_node_type", format!("unknown node type '{node_type}'")).node(&id).field("data.type").line(line),
            );
            NodeData::Invalid
        }
        Err(error) => {
            let field = if error.field.is_empty() { "data".to_owned() } else { format!("data.{}", error.field) };
            diagnostics.push(
                Diagnostic::error("invalid_node_data", format!("invalid {node_type} node: {}", error.message))
                    .node(&id)
                    .field(field)
                    .line(line),
            );
            NodeData::Invalid
        }
    };

    Some(Node { id, node_type, title, version, container, error_strategy, default_values, retry, data: node_data, raw, line })
}

/// Which container owns a node: `data.container_id`, else React Flow's `parentId`, else the
/// legacy `iteration_id`/`loop_id` (when both are given, the inner one).
fn resolve_container(id: &str, map: &Map<String, Value>, ids: &HashMap<String, &Map<String, Value>>) -> Result<Option<String>, String> {
    let candidates = container_candidates(map);
    match candidates.as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(only.clone())),
        [first, second, ..] => {
            let first_inside_second = owned_by(first, second, ids);
            let second_inside_first = owned_by(second, first, ids);
            match (first_inside_second, second_inside_first) {
                (true, false) => Ok(Some(first.clone())),
                (false, true) => Ok(Some(second.clone())),
                _ => Err(format!(
                    "node '{id}' names two containers ('{first}' and '{second}') and neither contains the other; set data.container_id"
                )),
            }
        }
    }
}

fn container_candidates(map: &Map<String, Value>) -> Vec<String> {
    let data = map.get("data").and_then(Value::as_object);
    if let Some(Value::String(container)) = data.and_then(|data| data.get("container_id")) {
        return if container.is_empty() { Vec::new() } else { vec![container.clone()] };
    }
    if let Some(parent) = id_of(map.get("parentId")) {
        return vec![parent];
    }
    let mut candidates = Vec::new();
    for field in ["iteration_id", "loop_id"] {
        if let Some(owner) = id_of(data.and_then(|data| data.get(field)))
            && !candidates.contains(&owner)
        {
            candidates.push(owner);
        }
    }
    candidates
}

fn owned_by(inner: &str, outer: &str, ids: &HashMap<String, &Map<String, Value>>) -> bool {
    let mut pending = vec![inner.to_owned()];
    let mut visited = std::collections::HashSet::new();
    while let Some(current) = pending.pop() {
        if !visited.insert(current.clone()) {
            continue;
        }
        let Some(map) = ids.get(&current) else {
            continue;
        };
        for owner in container_candidates(map) {
            if owner == outer {
                return true;
            }
            pending.push(owner);
        }
    }
    false
}

fn read_default_values(value: Option<&Value>, node_id: &str, line: Option<u32>, diagnostics: &mut Vec<Diagnostic>) -> Vec<DefaultValue> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    let mut values = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let field = format!("data.default_value[{index}]");
        let key = item.get("key").and_then(Value::as_str).unwrap_or_default().to_owned();
        let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let raw = item.get("value").cloned().unwrap_or(Value::Null);
        match convert_default_value(kind, raw) {
            Ok(value) => values.push(DefaultValue { key, value }),
            Err(message) => diagnostics.push(Diagnostic::error("invalid_default_value", message).node(node_id).field(field).line(line)),
        }
    }
    values
}

/// Dify's `DefaultValue` validation: strings stay strings, numbers are parsed from text, JSON
/// types are parsed from text, and element types are checked.
fn convert_default_value(kind: &str, value: Value) -> Result<Value, String> {
    let parse_json = |text: &str| serde_json::from_str::<Value>(text).map_err(|_| format!("Invalid JSON format for value: {text}"));
    let value = match (kind, value) {
        ("string", value) => return Ok(value),
        ("array[file]", value) => return Ok(value),
        ("number", Value::String(text)) => {
            let number: f64 = text.trim().parse().map_err(|_| format!("Cannot convert to number: {text}"))?;
            serde_json::Number::from_f64(number).map(Value::Number).ok_or_else(|| format!("Cannot convert to number: {text}"))?
        }
        ("object" | "array[number]" | "array[string]" | "array[object]", Value::String(text)) => parse_json(&text)?,
        ("number" | "object" | "array[number]" | "array[string]" | "array[object]", value) => value,
        (other, _) => return Err(format!("Unsupported type: {other}")),
    };
    let element_ok = |check: fn(&Value) -> bool| match &value {
        Value::Array(items) => items.iter().all(check),
        _ => false,
    };
    let ok = match kind {
        "number" => value.is_number(),
        "object" => value.is_object(),
        "array[number]" => element_ok(Value::is_number),
        "array[string]" => element_ok(Value::is_string),
        "array[object]" => element_ok(Value::is_object),
        _ => true,
    };
    if ok { Ok(value) } else { Err(format!("value {value} does not match type {kind}")) }
}

fn read_retry(value: Option<&Value>) -> RetryConfig {
    let Some(Value::Object(config)) = value else {
        return RetryConfig::default();
    };
    let number = |key: &str| match config.get(key) {
        Some(Value::Number(number)) => number.as_u64().or_else(|| number.as_f64().map(|float| float.max(0.0) as u64)),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    };
    RetryConfig {
        enabled: matches!(config.get("retry_enabled"), Some(Value::Bool(true))),
        max_retries: number("max_retries").unwrap_or(0).min(u64::from(u32::MAX)) as u32,
        interval_ms: number("retry_interval").unwrap_or(0),
    }
}
