//! Turning the bytes of an export into a JSON value, safely.
//!
//! Dify exports are PyYAML dumps; the console's export API wraps them as `{"data": "<yaml>"}`.
//! Untrusted input goes through serde-saphyr with budgets, so alias bombs and absurd nesting
//! are refused with an error instead of exhausting memory.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::DslError;

/// Dify refuses DSL files above 10 MiB (`DSL_MAX_SIZE`); so do we.
pub const MAX_DSL_BYTES: usize = 10 * 1024 * 1024;

/// Deeper documents than this are not DSL exports (real ones stay under 20 levels); refusing
/// them keeps recursion bounded.
const MAX_DEPTH: usize = 64;

/// The YAML deserializer recurses once per nesting level with large frames (about 20 KiB each
/// in debug builds), more than a 2 MiB async worker stack holds at the depth limit. Parsing
/// runs on its own thread with this much stack, which also contains any parser panic.
const PARSER_STACK_BYTES: usize = 32 * 1024 * 1024;

/// The decoded document plus what is needed to point at lines of the original text.
pub(crate) struct Decoded {
    pub value: Value,
    /// The YAML text the value came from (the inner text when the input was a JSON wrapper).
    pub yaml_text: String,
    pub lines: LineIndex,
}

pub(crate) fn decode(text: &str) -> Result<Decoded, DslError> {
    if text.len() > MAX_DSL_BYTES {
        return Err(DslError::TooLarge { size: text.len(), limit: MAX_DSL_BYTES });
    }
    std::thread::scope(|scope| {
        let parser = std::thread::Builder::new()
            .name("dsl-parser".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || decode_on_this_thread(text))
            .map_err(|error| DslError::Yaml { message: format!("cannot start the DSL parser: {error}"), line: None, column: None })?;
        parser
            .join()
            .unwrap_or_else(|_| Err(DslError::Yaml { message: "the YAML parser failed on this document".into(), line: None, column: None }))
    })
}

fn decode_on_this_thread(text: &str) -> Result<Decoded, DslError> {
    let trimmed = text.trim_start_matches('\u{feff}');
    let (value, parsed_text) = parse_yaml(trimmed)?;
    // The console export API wraps the YAML in a JSON object with a single `data` string.
    if let Value::Object(map) = &value
        && map.len() == 1
        && let Some(Value::String(inner)) = map.get("data")
    {
        let (inner_value, parsed_inner) = parse_yaml(inner)?;
        let lines = LineIndex::build(&parsed_inner);
        return Ok(Decoded { value: inner_value, yaml_text: inner.clone(), lines });
    }
    let lines = LineIndex::build(&parsed_text);
    Ok(Decoded { value, yaml_text: trimmed.to_owned(), lines })
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = 10_000;
    budget.max_nodes = 2_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // PyYAML (which writes Dify exports) reads `y`, `n` and the like as strings, and quotes
    // `yes`/`no`/`on`/`off` when they are strings; only true/false are booleans here.
    options.strict_booleans = true;
    // PyYAML keeps the last of duplicate keys; so does Dify's importer.
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::LastWins;
    options.alias_limits.max_total_replayed_events = 200_000;
    options
}

/// PyYAML, which reads exports into Dify, does not check how far a quoted scalar's continuation
/// lines are indented; YAML (and granit, the scanner under serde-saphyr) wants them deeper than
/// the enclosing block. Real exports that Dify imports have such lines, so each one the scanner
/// reports is moved one column past the line above and the text parsed again. A continuation
/// line's leading blanks are folded away, so the value is the one PyYAML reads. Documents with
/// more such lines than this are refused (each costs a parse).
const MAX_REINDENTED_LINES: usize = 32;

/// The value, and the text it was parsed from (the input with any continuation lines moved
/// right; same lines, so line numbers still point into the input).
fn parse_yaml(text: &str) -> Result<(Value, Cow<'_, str>), DslError> {
    if text.trim().is_empty() {
        return Err(DslError::NotMapping { found: "an empty document" });
    }
    let mut text = Cow::Borrowed(text);
    let mut reindented = 0;
    loop {
        match serde_saphyr::from_str_with_options::<Value>(&text, options()) {
            Ok(value) => {
                check_depth(&value, 0)?;
                return Ok((value, text));
            }
            Err(error) => match quoted_continuation_line(&error).and_then(|line| reindent(&text, line)) {
                Some(fixed) if reindented < MAX_REINDENTED_LINES => {
                    reindented += 1;
                    text = Cow::Owned(fixed);
                }
                _ => return Err(yaml_error(error)),
            },
        }
    }
}

/// The line (1-based) of a quoted scalar's continuation that the scanner found under-indented.
fn quoted_continuation_line(error: &serde_saphyr::Error) -> Option<usize> {
    use serde_saphyr::MessageFormatter as _;
    let message = first_line(&serde_saphyr::DefaultMessageFormatter.format_message(error));
    if strip_location(&message) != "invalid indentation in multiline quoted scalar" {
        return None;
    }
    usize::try_from(error.location()?.line()).ok().filter(|line| *line >= 2)
}

/// The text with `line` indented one space past the closest non-blank line above it; `None`
/// when it already is (then the fault is something else and the error stands).
fn reindent(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let indent = |line: &str| line.len() - line.trim_start_matches(' ').len();
    let target = lines.get(line - 1)?;
    let above = lines[..line - 1].iter().rev().find(|candidate| !candidate.trim().is_empty())?;
    let missing = (indent(above) + 1).checked_sub(indent(target)).filter(|missing| *missing > 0)?;
    let mut fixed = String::with_capacity(text.len() + missing);
    for (index, current) in lines.iter().enumerate() {
        if index == line - 1 {
            fixed.extend(std::iter::repeat_n(' ', missing));
        }
        fixed.push_str(current);
    }
    Some(fixed)
}

fn yaml_error(error: serde_saphyr::Error) -> DslError {
    use serde_saphyr::MessageFormatter as _;
    use serde_saphyr::budget::BudgetBreach;
    let (line, column) = error
        .location()
        .map(|location| (u32::try_from(location.line()).ok(), u32::try_from(location.column()).ok()))
        .unwrap_or((None, None));
    let mut cause = &error;
    while let serde_saphyr::Error::AliasError { error, .. } | serde_saphyr::Error::WithSnippet { error, .. } = cause {
        cause = error;
    }
    let message = match cause {
        serde_saphyr::Error::Budget { breach: BudgetBreach::Depth { .. }, .. } => return DslError::TooDeep { limit: MAX_DEPTH },
        serde_saphyr::Error::Budget { breach: BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. }, .. }
        | serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayCounterOverflow { .. }
        | serde_saphyr::Error::AliasExpansionLimitExceeded { .. } => {
            "too many alias references (`*name`): the document would expand far beyond its size".to_owned()
        }
        serde_saphyr::Error::Budget { breach, .. } => format!("the document exceeds an import limit ({breach:?})"),
        other => first_line(&serde_saphyr::DefaultMessageFormatter.format_message(other)),
    };
    // The scanner's own bound on nested flow collections (`[[[…`) is the same fault.
    if strip_location(&message) == "recursion limit exceeded" {
        return DslError::TooDeep { limit: MAX_DEPTH };
    }
    DslError::Yaml { message: strip_location(&message).to_owned(), line, column }
}

/// Scanner messages carry their own `error: line L column C: ` prefix; ours says it once.
fn strip_location(message: &str) -> &str {
    let Some(rest) = message.strip_prefix("error: line ") else { return message };
    rest.split_once(": ").map_or(message, |(_, text)| text)
}

fn first_line(message: &str) -> String {
    message.lines().find(|line| !line.trim().is_empty()).unwrap_or(message).trim().to_owned()
}

fn check_depth(value: &Value, depth: usize) -> Result<(), DslError> {
    if depth > MAX_DEPTH {
        return Err(DslError::TooDeep { limit: MAX_DEPTH });
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| check_depth(item, depth + 1)),
        Value::Object(map) => map.values().try_for_each(|item| check_depth(item, depth + 1)),
        _ => Ok(()),
    }
}

/// Line numbers of graph nodes and edges in the YAML text, so errors can say "line N".
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    nodes: HashMap<String, u32>,
    edges: Vec<u32>,
}

impl LineIndex {
    fn build(yaml_text: &str) -> Self {
        // A second, shallow parse that records where each node and edge mapping starts.
        #[derive(Deserialize)]
        struct Probe {
            workflow: Option<WorkflowProbe>,
        }
        #[derive(Deserialize)]
        struct WorkflowProbe {
            graph: Option<GraphProbe>,
        }
        #[derive(Deserialize)]
        struct GraphProbe {
            #[serde(default)]
            nodes: Vec<serde_saphyr::Spanned<NodeProbe>>,
            #[serde(default)]
            edges: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
        }
        #[derive(Deserialize)]
        struct NodeProbe {
            id: Option<serde_json::Value>,
        }
        let Ok(probe) = serde_saphyr::from_str_with_options::<Probe>(yaml_text, options()) else {
            return Self::default();
        };
        let Some(graph) = probe.workflow.and_then(|workflow| workflow.graph) else {
            return Self::default();
        };
        let mut nodes = HashMap::new();
        for node in graph.nodes {
            let id = match node.value.id {
                Some(Value::String(id)) => id,
                Some(Value::Number(number)) => number.to_string(),
                _ => continue,
            };
            if let Ok(line) = u32::try_from(node.referenced.line()) {
                nodes.entry(id).or_insert(line);
            }
        }
        let edges = graph.edges.iter().map(|edge| u32::try_from(edge.referenced.line()).unwrap_or(0)).collect();
        Self { nodes, edges }
    }

    pub fn node(&self, id: &str) -> Option<u32> {
        self.nodes.get(id).copied()
    }

    pub fn edge(&self, index: usize) -> Option<u32> {
        self.edges.get(index).copied()
    }
}
