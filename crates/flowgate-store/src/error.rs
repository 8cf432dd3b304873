/// What can go wrong in the store, in terms the HTTP edge can map to a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Every connection is in use and none came free before the deadline: retry later (503).
    #[error("the database is busy: no connection came free within {0:?}")]
    Busy(std::time::Duration),
    /// The database cannot be reached (refused, reset, timed out): retry later (503).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The disk holding the database is full (SQLite's `SQLITE_FULL`, PostgreSQL's `53100`).
    #[error("the disk holding the database is full: {0}")]
    DiskFull(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("blob storage error: {0}")]
    Blob(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn from_sqlx(error: sqlx::Error, acquire_timeout: std::time::Duration) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => Self::Busy(acquire_timeout),
            sqlx::Error::RowNotFound => Self::NotFound("row"),
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => {
                Self::Unavailable(error.to_string())
            }
            sqlx::Error::Database(ref database) if matches!(database.code().as_deref(), Some("13" | "53100")) => {
                Self::DiskFull(error.to_string())
            }
            // Connection-level failures PostgreSQL reports itself: shutting down, too many
            // connections, cannot connect now.
            sqlx::Error::Database(ref database)
                if database.code().is_some_and(|code| code.starts_with("57P") || code.starts_with("08") || code == "53300") =>
            {
                Self::Unavailable(error.to_string())
            }
            other => Self::Database(other.to_string()),
        }
    }

    /// Whether the database could not be reached (rather than refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Busy(_))
    }
}

impl From<object_store::Error> for StoreError {
    fn from(error: object_store::Error) -> Self {
        Self::Blob(error.to_string())
    }
}
