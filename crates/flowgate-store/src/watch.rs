//! Following changes to apps and API keys made by any process (the CLI, another replica, the
//! management API), so a server can drop what it cached of them at once.
//!
//! The database keeps a change counter (`config_epoch`, bumped by triggers). Reading it 100
//! times a second costs an idle server a few percent of a core and a cluster a hundred queries
//! a second per replica, so the counter is read only when something may have changed:
//! PostgreSQL says so with `NOTIFY flowgate_config`; for SQLite, the database files' size or
//! modification time moved (looked at every 25 ms). Either way it is also read once a second, in case a notification
//! was lost (a listener reconnecting, a proxy without `LISTEN`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sqlx::postgres::PgListener;

use crate::db::{Db, Store};

/// The channel the PostgreSQL trigger notifies.
const CHANNEL: &str = "flowgate_config";
/// How often SQLite's files are looked at, and PostgreSQL polled while it cannot listen: a
/// change is seen within this (a key revoked from the CLI stops working at once), and an idle
/// server pays under half a percent of a core for it (10 ms cost about 1%).
const POLL: Duration = Duration::from_millis(25);
/// The counter is read at least this often whatever the signals say.
const SAFETY: Duration = Duration::from_secs(1);

pub struct ConfigWatch {
    store: Store,
    seen: Option<i64>,
    signal: Signal,
}

enum Signal {
    /// SQLite: the main and WAL files' (length, modification time) when last looked at.
    Files { paths: [PathBuf; 2], stamp: Option<Vec<(u64, SystemTime)>> },
    /// PostgreSQL: a listener, reconnected when it drops.
    Listen(Option<PgListener>),
}

impl Store {
    /// Starts following config changes from the counter's current value.
    pub async fn watch_config(&self) -> ConfigWatch {
        let signal = match &self.db {
            Db::Sqlite { .. } => {
                let main = self.config().data_dir.join("flowgate.db");
                let wal = self.config().data_dir.join("flowgate.db-wal");
                Signal::Files { paths: [main, wal], stamp: None }
            }
            Db::Postgres(..) => Signal::Listen(None),
        };
        let mut watch = ConfigWatch { store: self.clone(), seen: None, signal };
        watch.listen().await;
        watch.seen = watch.read_epoch().await.ok();
        watch
    }
}

impl ConfigWatch {
    /// Returns once the counter has moved since the last change seen.
    pub async fn changed(&mut self) {
        let mut last_read = tokio::time::Instant::now();
        loop {
            let signalled = self.wait().await;
            if !signalled && last_read.elapsed() < SAFETY {
                continue;
            }
            last_read = tokio::time::Instant::now();
            match self.read_epoch().await {
                Ok(epoch) if self.seen.is_some_and(|seen| seen != epoch) => {
                    self.seen = Some(epoch);
                    return;
                }
                Ok(epoch) => self.seen = Some(epoch),
                Err(error) => tracing::debug!(%error, "reading the config epoch failed"),
            }
        }
    }

    /// The counter, read on the listener's own connection when there is one, so the watch
    /// never takes a connection a request is waiting for.
    async fn read_epoch(&mut self) -> Result<i64, String> {
        match &mut self.signal {
            Signal::Listen(Some(listener)) => sqlx::query_scalar::<_, i64>("SELECT epoch FROM config_epoch WHERE id = 1")
                .fetch_one(&mut *listener)
                .await
                .map_err(|error| error.to_string()),
            _ => self.store.config_epoch().await.map_err(|error| error.to_string()),
        }
    }

    /// Waits for a sign of change; false when it only waited (the caller reads the counter
    /// once a second anyway).
    async fn wait(&mut self) -> bool {
        match &mut self.signal {
            Signal::Files { paths, stamp } => {
                tokio::time::sleep(POLL).await;
                let now: Vec<(u64, SystemTime)> = paths
                    .iter()
                    .map(|path| std::fs::metadata(path).map(|meta| (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH))))
                    .map(|stamp| stamp.unwrap_or((0, SystemTime::UNIX_EPOCH)))
                    .collect();
                let moved = stamp.as_ref() != Some(&now);
                *stamp = Some(now);
                moved
            }
            Signal::Listen(Some(listener)) => match tokio::time::timeout(SAFETY, listener.recv()).await {
                Ok(Ok(_)) => true,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "the config listener dropped; polling until it is back");
                    self.signal = Signal::Listen(None);
                    true
                }
                Err(_) => false,
            },
            Signal::Listen(None) => {
                tokio::time::sleep(POLL).await;
                // Back to listening when the database lets us; a change made meanwhile is
                // seen by the read that follows.
                self.listen().await;
                true
            }
        }
    }

    /// Listens on a connection of its own: one taken from the pool would be held for good,
    /// and a server allowed one connection would have none left for requests.
    async fn listen(&mut self) {
        let (Signal::Listen(slot @ None), Some(url)) = (&mut self.signal, self.store.config().database_url.as_deref()) else { return };
        match PgListener::connect(url).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => *slot = Some(listener),
                Err(error) => tracing::debug!(%error, "cannot LISTEN for config changes; polling"),
            },
            Err(error) => tracing::debug!(%error, "cannot open a config listener; polling"),
        }
    }
}
