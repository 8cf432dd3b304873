//! Persistence for flowgate: one store over SQLite (embedded mode) or PostgreSQL (cluster
//! mode), chosen by configuration alone, with the same SQL and the same behaviour.
//!
//! - apps, their published versions and API keys;
//! - workflow runs and node executions, whose payloads are stored once per distinct content
//!   (see [`payload`]) and written in batches off the request path (see [`recorder`]);
//! - conversations, messages, conversation variables, feedback and uploaded files;
//! - blobs (large payloads, uploads) in a local folder or an S3-compatible bucket;
//! - retention: a purge that deletes in small batches, so it never locks the tables it cleans.

mod apps;
pub mod blobs;
mod chat;
mod circuit;
mod db;
mod error;
mod node_log;
pub mod payload;
pub mod recorder;
mod retention;
mod runs;
mod watch;

pub use apps::{ApiKey, App, AppVersion, LogDetail, NewApp, iso8601, token_hash};
pub use chat::{Conversation, ConversationOrder, ConversationVariable, Feedback, Message, NewMessage, UploadFile};
pub use db::{Backend, Store, StoreConfig};
pub use error::StoreError;
pub use retention::PurgeReport;
pub use runs::{LogQuery, NodeExecution, RunPage, WorkflowRun};
pub use watch::ConfigWatch;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// A new id. Time-ordered (UUIDv7), so rows created in the same second still sort in the
/// order they were made (messages of a conversation, conversations of a user).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
