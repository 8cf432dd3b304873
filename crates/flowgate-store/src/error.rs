/// What can go wrong in the store, in terms the HTTP edge can map to a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Every connection is in use and none came free before the deadline: retry later (503).
    #[error("the database is busy: no connection came free within {0:?}")]
    Busy(std::time::Duration),
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
            other => Self::Database(other.to_string()),
        }
    }
}

impl From<object_store::Error> for StoreError {
    fn from(error: object_store::Error) -> Self {
        Self::Blob(error.to_string())
    }
}
