//! The Dify DSL: lenient import of every DSL version (0.1.0–0.7.x) and app mode, structural
//! validation with precise locations, and export.
//!
//! ```
//! let document = flowgate_dsl::Document::load(include_str!("../tests/data/minimal.yml")).unwrap();
//! assert!(document.errors().is_empty());
//! ```

mod document;
mod easy_ui;
mod error;
mod lenient;
pub mod nodes;
mod source;
pub mod template;
mod validate;

pub use document::{
    App, AppMode, DefaultValue, Document, EXPORT_VERSION, Edge, ErrorStrategy, Graph, Node, RetryConfig, VariableDecl, Workflow,
};
pub use easy_ui::{AppPrompt, RUNTIME_LLM_NODE};
pub use error::{Diagnostic, DslError, Severity};
pub use nodes::NodeData;
pub use source::MAX_DSL_BYTES;
pub use validate::{RESERVED_NAMESPACES, branch_handles, references};
