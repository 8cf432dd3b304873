//! Connections and migrations. Both databases run the same SQL (portable types, `$n`
//! placeholders, which SQLite accepts too); the [`read!`] and [`write!`] macros expand each
//! query once per backend so every statement runs on its native driver.

use std::borrow::Cow;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::blobs::Blobs;
use crate::error::StoreError;

/// Where the store keeps its data.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` for cluster mode; `None` for the embedded SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// The embedded database and, without `blob_url`, the blobs live here.
    pub data_dir: PathBuf,
    /// `s3://bucket/prefix` for S3-compatible storage; `None` for `data_dir/blobs`.
    pub blob_url: Option<String>,
    /// The most connections open at once (PostgreSQL, and SQLite readers).
    pub max_connections: u32,
    /// How long a query waits for a free connection before the store reports [`StoreError::Busy`].
    pub acquire_timeout: Duration,
}

impl StoreConfig {
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self { database_url: None, data_dir: data_dir.into(), blob_url: None, max_connections: 10, acquire_timeout: Duration::from_secs(5) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Db {
    /// SQLite allows one writer at a time; one writer connection makes writers queue in the
    /// pool instead of failing with `database is locked`, while readers run in parallel (WAL).
    Sqlite { writer: SqlitePool, reader: SqlitePool },
    /// The pool, and the circuit that fails its operations fast while the server is away.
    Postgres(PgPool, Arc<crate::circuit::Circuit>),
}

/// The store: cheap to clone, shared by every request.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: Db,
    pub(crate) blobs: Blobs,
    pub(crate) acquire_timeout: Duration,
    config: Arc<StoreConfig>,
}

/// A running turn whose run has no row after this many seconds was left by a crash: a live run
/// gets its row within half a second.
const ORPHANED_TURN_AGE: i64 = 10;

/// Runs `$body` with `$pool` bound to a connection pool for reads. On PostgreSQL it runs under
/// the circuit (see [`crate::circuit`]): while the server is away, the enclosing function
/// returns [`StoreError::Unavailable`] at once.
macro_rules! read {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::db::Db::Sqlite { reader: $pool, .. } => $body,
            $crate::db::Db::Postgres($pool, circuit) => circuit.guard(async { Ok($body) }).await?,
        }
    };
}

/// Runs `$body` with `$pool` bound to the connection pool for writes.
macro_rules! write {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::db::Db::Sqlite { writer: $pool, .. } => $body,
            $crate::db::Db::Postgres($pool, circuit) => circuit.guard(async { Ok($body) }).await?,
        }
    };
}

pub(crate) use {read, write};

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, "packed node log", include_str!("../migrations/sqlite/0002_packed_node_log.sql")),
    (3, "config epoch", include_str!("../migrations/sqlite/0003_config_epoch.sql")),
    (4, "running messages", include_str!("../migrations/sqlite/0004_running_messages.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
    (2, "packed node log", include_str!("../migrations/postgres/0002_packed_node_log.sql")),
    (3, "config epoch", include_str!("../migrations/postgres/0003_config_epoch.sql")),
    (4, "config notify", include_str!("../migrations/postgres/0004_config_notify.sql")),
    (5, "running messages", include_str!("../migrations/postgres/0005_running_messages.sql")),
];

/// Migrations compiled into the binary: (version, description, SQL).
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> futures::future::BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// Runs the embedded migrations that `pool`'s database has not run yet.
async fn migrate<DB: sqlx::Database>(
    migrations: &'static [(i64, &'static str, &'static str)],
    pool: &sqlx::Pool<DB>,
) -> Result<(), StoreError>
where
    DB::Connection: sqlx::migrate::Migrate,
{
    let migrator = Migrator::new(Embedded(migrations)).await.map_err(|error| StoreError::Migration(error.to_string()))?;
    migrator.run(pool).await.map_err(|error| StoreError::Migration(error.to_string()))
}

impl Store {
    /// Connects and brings the schema up to date. Several processes may open the same
    /// database at once: PostgreSQL migrations hold an advisory lock, SQLite ones a file lock.
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        let blobs = Blobs::open(&config).await?;
        let acquire_timeout = config.acquire_timeout;
        let sqlx_error = |error: sqlx::Error| StoreError::from_sqlx(error, acquire_timeout);
        let db = match &config.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                // No ping before each use: it is a round trip per operation, and a dead
                // connection fails the operation anyway (the run log retries it, a request gets
                // 503, and the circuit looks at the server).
                let pool = PgPoolOptions::new()
                    .test_before_acquire(false)
                    .max_connections(config.max_connections.max(1))
                    .acquire_timeout(acquire_timeout)
                    .connect(url)
                    .await
                    .map_err(|error| StoreError::Database(format!("cannot connect to PostgreSQL: {error}")))?;
                migrate(POSTGRES_MIGRATIONS, &pool).await?;
                let circuit = crate::circuit::Circuit::new(pool.connect_options());
                Db::Postgres(pool, circuit)
            }
            Some(url) if url.starts_with("sqlite:") => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                Self::open_sqlite(PathBuf::from(path), &config, &sqlx_error).await?
            }
            Some(other) => {
                return Err(StoreError::Config(format!(
                    "DATABASE_URL must start with postgres:// or sqlite: (got `{}`)",
                    other.split("://").next().unwrap_or(other)
                )));
            }
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(|error| {
                    StoreError::Config(format!("cannot create the data directory {}: {error}", config.data_dir.display()))
                })?;
                Self::open_sqlite(config.data_dir.join("flowgate.db"), &config, &sqlx_error).await?
            }
        };
        Ok(Self { db, blobs, acquire_timeout, config: Arc::new(config) })
    }

    async fn open_sqlite(path: PathBuf, config: &StoreConfig, sqlx_error: &dyn Fn(sqlx::Error) -> StoreError) -> Result<Db, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|error| StoreError::Config(format!("bad SQLite path {}: {error}", path.display())))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("cache_size", "-32768")
            // The writer copies the WAL into the database every 16 MiB of it. (Checkpointing
            // on a connection of its own, so the writer never waits for its fsync, was tried:
            // under constant writes a passive checkpoint never catches up, so the WAL never
            // starts over and grows without bound.)
            .pragma("wal_autocheckpoint", "1000")
            .pragma("journal_size_limit", "67108864");
        let lock_path = path.with_extension("migrate.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| StoreError::Migration(format!("cannot open {}: {error}", lock_path.display())))?;
        let locked = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
            .await
            .map_err(|error| StoreError::Migration(error.to_string()))?
            .map_err(|error| StoreError::Migration(format!("cannot lock {}: {error}", lock_path.display())))?;
        // Connecting creates the file and switches it to WAL, which needs the database to itself:
        // done under the lock, two processes opening a new database at once cannot collide.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(|error| StoreError::Database(format!("cannot open {}: {error}", path.display())))?;
        let migrated = migrate(SQLITE_MIGRATIONS, &writer).await;
        drop(locked);
        migrated?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.read_only(true))
            .await
            .map_err(sqlx_error)?;
        Ok(Db::Sqlite { writer, reader })
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres(..) => Backend::Postgres,
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The SQLite file, for an embedded database.
    pub fn embedded_database(&self) -> Option<PathBuf> {
        match (&self.db, &self.config.database_url) {
            (Db::Postgres(..), _) => None,
            (Db::Sqlite { .. }, Some(url)) => Some(PathBuf::from(url.trim_start_matches("sqlite://").trim_start_matches("sqlite:"))),
            (Db::Sqlite { .. }, None) => Some(self.config.data_dir.join("flowgate.db")),
        }
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    pub(crate) fn error(&self, error: sqlx::Error) -> StoreError {
        StoreError::from_sqlx(error, self.acquire_timeout)
    }

    /// Connections in use and open, for metrics.
    pub fn pool_usage(&self) -> (u32, u32) {
        let usage = |size: u32, idle: usize| (size.saturating_sub(idle as u32), size);
        match &self.db {
            Db::Sqlite { writer, reader } => {
                let (writer_used, writer_size) = usage(writer.size(), writer.num_idle());
                let (reader_used, reader_size) = usage(reader.size(), reader.num_idle());
                (writer_used + reader_used, writer_size + reader_size)
            }
            Db::Postgres(pool, _) => usage(pool.size(), pool.num_idle()),
        }
    }

    /// Whether the database answers (`/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        read!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(|error| self.error(error)))
    }

    /// Registers this process as live; see [`Store::fail_orphaned_runs`].
    pub async fn register_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        let now = crate::now();
        write!(self, |pool| sqlx::query("INSERT INTO instances (id, started_at, heartbeat_at) VALUES ($1, $2, $2)")
            .bind(instance_id)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|error| self.error(error)))
    }

    /// Says this process is alive; its row comes back if another process removed it (after an
    /// outage that outlasted the instance timeout everyone looked dead to everyone).
    pub async fn heartbeat(&self, instance_id: &str) -> Result<(), StoreError> {
        write!(self, |pool| sqlx::query(
            "INSERT INTO instances (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
        )
        .bind(instance_id)
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|error| self.error(error)))
    }

    pub async fn unregister_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        write!(self, |pool| sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(instance_id)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|error| self.error(error)))
    }

    /// Marks failed the runs left `running` by processes that stopped heart-beating more than
    /// `stale_after` ago (a crash or a kill), and forgets those processes. Returns how many runs.
    pub async fn fail_orphaned_runs(&self, current_instance: &str, stale_after: Duration) -> Result<u64, StoreError> {
        self.fail_runs_of_others(current_instance, crate::now() - stale_after.as_secs() as i64).await
    }

    /// Marks failed every run and turn another process left unfinished: for an embedded
    /// database, which only one server may use at a time (see `flowgate serve`), the previous
    /// process cannot be alive.
    pub async fn fail_runs_of_previous_processes(&self, current_instance: &str) -> Result<u64, StoreError> {
        self.fail_runs_of_others(current_instance, i64::MAX).await
    }

    /// Fails the runs left `running` by instances silent since `cutoff`, and the turns left
    /// `running` since then whose run was never written (a crash before its row).
    async fn fail_runs_of_others(&self, current_instance: &str, cutoff: i64) -> Result<u64, StoreError> {
        let now = crate::now();
        let reason = "The server running this workflow stopped before it finished (crash or forced shutdown).";
        write!(self, |pool| {
            let mut tx = pool.begin().await.map_err(|error| self.error(error))?;
            let failed = sqlx::query(
                "UPDATE workflow_runs SET status = 'failed', error = $1, finished_at = $2 \
                 WHERE status = 'running' AND instance_id <> $3 \
                 AND instance_id NOT IN (SELECT id FROM instances WHERE heartbeat_at >= $4)",
            )
            .bind(reason)
            .bind(now)
            .bind(current_instance)
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(|error| self.error(error))?
            .rows_affected();
            sqlx::query(
                "UPDATE messages SET status = 'error', error = $1 WHERE status = 'running'  \
                 AND workflow_run_id IN (SELECT id FROM workflow_runs WHERE status = 'failed' AND error = $1)",
            )
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(|error| self.error(error))?;
            // A turn whose run has no row at all is older than any live run's first row.
            sqlx::query(
                "UPDATE messages SET status = 'error', error = $1 WHERE status = 'running' AND created_at < $2 \
                 AND (workflow_run_id IS NULL OR workflow_run_id NOT IN (SELECT id FROM workflow_runs))",
            )
            .bind(reason)
            .bind(cutoff.min(now - ORPHANED_TURN_AGE))
            .execute(&mut *tx)
            .await
            .map_err(|error| self.error(error))?;
            sqlx::query("DELETE FROM instances WHERE heartbeat_at < $1 AND id <> $2")
                .bind(cutoff)
                .bind(current_instance)
                .execute(&mut *tx)
                .await
                .map_err(|error| self.error(error))?;
            tx.commit().await.map_err(|error| self.error(error))?;
            Ok(failed)
        })
    }
}
