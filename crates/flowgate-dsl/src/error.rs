use std::fmt;

/// A DSL that cannot be read at all: nothing else can be said about it.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DslError {
    #[error("the DSL is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid YAML{}: {message}", at_line(*line, *column))]
    Yaml { message: String, line: Option<u32>, column: Option<u32> },
    #[error("the document nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("invalid DSL: the content must be a mapping, found {found}")]
    NotMapping { found: &'static str },
    #[error("invalid DSL: field `{field}` {message}")]
    Envelope { field: &'static str, message: String },
}

fn at_line(line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding about a loaded DSL, located as precisely as the document allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable machine-readable identifier, e.g. `unknown_edge_target`.
    pub code: &'static str,
    pub node_id: Option<String>,
    pub field: Option<String>,
    pub line: Option<u32>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Error, code, node_id: None, field: None, line: None, message: message.into() }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(code, message) }
    }

    pub fn node(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn line(mut self, line: Option<u32>) -> Self {
        self.line = line.or(self.line);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote_location = false;
        if let Some(node_id) = &self.node_id {
            write!(f, "node '{node_id}'")?;
            wrote_location = true;
        }
        if let Some(field) = &self.field {
            write!(f, "{}field `{field}`", if wrote_location { " " } else { "" })?;
            wrote_location = true;
        }
        if let Some(line) = self.line {
            write!(f, "{}(line {line})", if wrote_location { " " } else { "" })?;
            wrote_location = true;
        }
        if wrote_location {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}
