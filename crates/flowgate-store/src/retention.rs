//! Retention: deletes expired runs, their node executions and payloads nothing live refers to.
//!
//! Every run carries the expiry its app's retention gave it, and every payload the latest
//! expiry of the runs that use it, so the purge never has to count references. It deletes in
//! small batches, each its own short transaction, so it never holds the tables for long.

use serde::Serialize;
use sqlx::Row;

use crate::db::{Store, read, write};
use crate::error::StoreError;

#[derive(Debug, Default, Clone, Serialize)]
pub struct PurgeReport {
    pub runs: u64,
    pub node_executions: u64,
    pub payloads: u64,
}

/// Rows per purge transaction.
const PURGE_BATCH: i64 = 500;

impl Store {
    /// Deletes everything that expired before `now` (Unix seconds), and the runs of deleted
    /// apps. Safe to run while the server serves requests, and from several replicas at once.
    pub async fn purge_expired(&self, now: i64) -> Result<PurgeReport, StoreError> {
        let mut report = PurgeReport::default();
        loop {
            let ids: Vec<String> = read!(self, |pool| {
                sqlx::query(
                    "SELECT id FROM workflow_runs WHERE expires_at < $1 OR app_id NOT IN (SELECT id FROM apps) ORDER BY expires_at LIMIT $2",
                )
                .bind(now)
                .bind(PURGE_BATCH)
                .fetch_all(pool)
                .await
                .map_err(|error| self.error(error))?
                .iter()
                .map(|row| row.try_get::<String, _>("id"))
                .collect::<Result<_, _>>()
                .map_err(|error| self.error(error))?
            });
            if ids.is_empty() {
                break;
            }
            let (nodes, runs) = write!(self, |pool| {
                let mut tx = pool.begin().await.map_err(|error| self.error(error))?;
                let mut nodes = sqlx::QueryBuilder::new("DELETE FROM run_nodes WHERE run_id IN (");
                let mut separated = nodes.separated(", ");
                for id in &ids {
                    separated.push_bind(id.clone());
                }
                nodes.push(") RETURNING nodes");
                let nodes: i64 = nodes
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|error| self.error(error))?
                    .iter()
                    .map(|row| row.try_get::<i64, _>("nodes"))
                    .sum::<Result<i64, _>>()
                    .map_err(|error| self.error(error))?;
                let mut runs = sqlx::QueryBuilder::new("DELETE FROM workflow_runs WHERE id IN (");
                let mut separated = runs.separated(", ");
                for id in &ids {
                    separated.push_bind(id.clone());
                }
                runs.push(")");
                let runs = runs.build().execute(&mut *tx).await.map_err(|error| self.error(error))?.rows_affected();
                tx.commit().await.map_err(|error| self.error(error))?;
                (nodes, runs)
            });
            report.node_executions += nodes as u64;
            report.runs += runs;
            tokio::task::yield_now().await;
        }
        loop {
            let expired: Vec<(String, Option<String>)> = read!(self, |pool| {
                sqlx::query("SELECT hash, blob_key FROM payloads WHERE expires_at < $1 LIMIT $2")
                    .bind(now)
                    .bind(PURGE_BATCH)
                    .fetch_all(pool)
                    .await
                    .map_err(|error| self.error(error))?
                    .iter()
                    .map(|row| Ok((row.try_get::<String, _>("hash")?, row.try_get::<Option<String>, _>("blob_key")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(|error| self.error(error))?
            });
            if expired.is_empty() {
                break;
            }
            for (_, key) in &expired {
                if let Some(key) = key {
                    self.blobs.delete(key).await?;
                }
            }
            let deleted = write!(self, |pool| {
                let mut query = sqlx::QueryBuilder::new("DELETE FROM payloads WHERE expires_at < ");
                query.push_bind(now);
                query.push(" AND hash IN (");
                let mut separated = query.separated(", ");
                for (hash, _) in &expired {
                    separated.push_bind(hash.clone());
                }
                query.push(")");
                query.build().execute(pool).await.map_err(|error| self.error(error))?.rows_affected()
            });
            report.payloads += deleted;
            tokio::task::yield_now().await;
        }
        Ok(report)
    }

    /// Rows in the run log, for the management API and benchmarks: (runs, node executions,
    /// payloads).
    pub async fn run_log_size(&self) -> Result<(i64, i64, i64), StoreError> {
        read!(self, |pool| {
            let count = |sql: &'static str| async move {
                sqlx::query(sql).fetch_one(pool).await.and_then(|row| row.try_get::<i64, _>("n")).map_err(|error| self.error(error))
            };
            Ok((
                count("SELECT COUNT(*) AS n FROM workflow_runs").await?,
                count("SELECT CAST(COALESCE(SUM(nodes), 0) AS BIGINT) AS n FROM run_nodes").await?,
                count("SELECT COUNT(*) AS n FROM payloads").await?,
            ))
        })
    }

    /// The database's size on disk in bytes (SQLite: its pages; PostgreSQL: the database), for
    /// benchmarks that measure what the run log costs.
    pub async fn database_bytes(&self) -> Result<i64, StoreError> {
        let sql = match self.backend() {
            crate::Backend::Sqlite => "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()",
            crate::Backend::Postgres => "SELECT pg_database_size(current_database()) AS n",
        };
        read!(self, |pool| {
            sqlx::query(sql).fetch_one(pool).await.and_then(|row| row.try_get::<i64, _>("n")).map_err(|error| self.error(error))
        })
    }
}
