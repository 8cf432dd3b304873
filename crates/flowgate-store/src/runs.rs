//! Reading the run log: runs, their node executions, the logs listing, and payloads.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::Row;

use crate::db::{Store, read};
use crate::error::StoreError;
use crate::{node_log, payload};

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowRun {
    pub id: String,
    pub app_id: String,
    /// The app version (Dify's `workflow_id`).
    pub version_id: String,
    pub task_id: String,
    pub end_user_id: Option<String>,
    pub end_user_session_id: Option<String>,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub created_from: String,
    pub status: String,
    /// The log detail the run was recorded with.
    pub detail: String,
    pub inputs: Option<Json>,
    pub outputs: Option<Json>,
    pub error: Option<String>,
    pub elapsed_time: f64,
    pub total_tokens: i64,
    pub total_steps: i64,
    pub exceptions_count: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// A node execution. In the packed node log (where it is read from, without `run_id`) the
/// payload fields hold what the log stores; [`Store::node_executions`] puts the payloads there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeExecution {
    pub id: String,
    #[serde(default)]
    pub run_id: String,
    /// Dify's `index`: the order in which nodes started.
    pub index: i64,
    pub node_id: String,
    pub node_type: String,
    pub title: String,
    pub status: String,
    pub error: Option<String>,
    pub elapsed_time: f64,
    pub inputs: Option<Json>,
    pub process_data: Option<Json>,
    pub outputs: Option<Json>,
    pub execution_metadata: Option<Json>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// Filters of `GET /v1/workflows/logs`.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub keyword: Option<String>,
    pub status: Option<String>,
    pub created_before: Option<i64>,
    pub created_after: Option<i64>,
    pub end_user_session_id: Option<String>,
    pub page: i64,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    pub page: i64,
    pub limit: i64,
    pub total: i64,
    pub has_more: bool,
    pub data: Vec<WorkflowRun>,
}

const RUN_COLUMNS: &str = "r.id, r.app_id, r.version_id, r.task_id, r.end_user_id, u.session_id AS end_user_session_id, \
    r.conversation_id, r.message_id, r.created_from, r.status, r.detail, r.inputs_hash, r.outputs_hash, r.error, r.elapsed_time, \
    r.total_tokens, r.total_steps, r.exceptions_count, r.created_at, r.finished_at";

/// A run row with its payload hashes (payloads are read separately).
struct RunRow {
    run: WorkflowRun,
    inputs_hash: Option<String>,
    outputs_hash: Option<String>,
}

fn run_from_row<R: Row>(row: &R) -> Result<RunRow, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RunRow {
        inputs_hash: row.try_get("inputs_hash")?,
        outputs_hash: row.try_get("outputs_hash")?,
        run: WorkflowRun {
            id: row.try_get("id")?,
            app_id: row.try_get("app_id")?,
            version_id: row.try_get("version_id")?,
            task_id: row.try_get("task_id")?,
            end_user_id: row.try_get("end_user_id")?,
            end_user_session_id: row.try_get("end_user_session_id")?,
            conversation_id: row.try_get("conversation_id")?,
            message_id: row.try_get("message_id")?,
            created_from: row.try_get("created_from")?,
            status: row.try_get("status")?,
            detail: row.try_get("detail")?,
            inputs: None,
            outputs: None,
            error: row.try_get("error")?,
            elapsed_time: row.try_get("elapsed_time")?,
            total_tokens: row.try_get("total_tokens")?,
            total_steps: row.try_get("total_steps")?,
            exceptions_count: row.try_get("exceptions_count")?,
            created_at: row.try_get("created_at")?,
            finished_at: row.try_get("finished_at")?,
        },
    })
}

/// The deepest chain of references a payload may have (values nest at most 64 levels).
const MAX_REFERENCE_DEPTH: usize = 70;

impl Store {
    /// A payload by hash, with its shared large values put back in place.
    pub async fn payload(&self, hash: &str) -> Result<Json, StoreError> {
        self.payload_at_depth(hash.to_owned(), 0).await
    }

    fn payload_at_depth(&self, hash: String, depth: usize) -> futures::future::BoxFuture<'_, Result<Json, StoreError>> {
        Box::pin(async move {
            if depth > MAX_REFERENCE_DEPTH {
                return Err(StoreError::Corrupt(format!("payload {hash} references too deeply")));
            }
            let (codec, data, blob_key): (String, Option<Vec<u8>>, Option<String>) = read!(self, |pool| {
                let row = sqlx::query("SELECT codec, data, blob_key FROM payloads WHERE hash = $1")
                    .bind(&hash)
                    .fetch_optional(pool)
                    .await
                    .map_err(|error| self.error(error))?
                    .ok_or(StoreError::NotFound("payload"))?;
                (
                    row.try_get("codec").map_err(|error| self.error(error))?,
                    row.try_get("data").map_err(|error| self.error(error))?,
                    row.try_get("blob_key").map_err(|error| self.error(error))?,
                )
            });
            let stored = match (data, blob_key) {
                (Some(data), _) => data,
                (None, Some(key)) => self.blobs.get(&key).await?.to_vec(),
                (None, None) => return Err(StoreError::Corrupt(format!("payload {hash} has no content"))),
            };
            let (value, refs) = payload::parse_envelope(&payload::open(&codec, &stored)?)?;
            self.fill_references(value, refs, depth).await
        })
    }

    async fn fill_references(&self, mut value: Json, refs: Vec<payload::Reference>, depth: usize) -> Result<Json, StoreError> {
        for (path, reference) in refs {
            let inner = self.payload_at_depth(reference, depth + 1).await?;
            payload::place(&mut value, &path, inner);
        }
        Ok(value)
    }

    /// A node-log payload field: a hash, or a small envelope kept inline.
    async fn node_payload(&self, field: Option<Json>) -> Result<Option<Json>, StoreError> {
        match field {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(hash)) => self.payload(&hash).await.map(Some),
            Some(envelope) => {
                let (value, refs) = payload::split_envelope(envelope)?;
                self.fill_references(value, refs, 0).await.map(Some)
            }
        }
    }

    async fn optional_payload(&self, hash: Option<String>) -> Result<Option<Json>, StoreError> {
        match hash {
            Some(hash) => self.payload(&hash).await.map(Some),
            None => Ok(None),
        }
    }

    /// A run of an app with its inputs and outputs (when the run log kept them).
    pub async fn run(&self, app_id: &str, run_id: &str) -> Result<WorkflowRun, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM workflow_runs r LEFT JOIN end_users u ON u.id = r.end_user_id WHERE r.id = $1 AND r.app_id = $2"
        );
        let row = read!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(run_id)
                .bind(app_id)
                .fetch_optional(pool)
                .await
                .map_err(|error| self.error(error))?
                .ok_or(StoreError::NotFound("workflow run"))?;
            run_from_row(&row).map_err(|error| self.error(error))?
        });
        let mut run = row.run;
        run.inputs = self.optional_payload(row.inputs_hash).await?;
        run.outputs = self.optional_payload(row.outputs_hash).await?;
        Ok(run)
    }

    /// Runs of an app, newest first, as `GET /v1/workflows/logs` filters them.
    pub async fn runs(&self, app_id: &str, query: &LogQuery) -> Result<RunPage, StoreError> {
        let mut conditions = vec!["r.app_id = $1".to_owned()];
        let mut texts: Vec<String> = vec![app_id.to_owned()];
        let mut numbers: Vec<i64> = Vec::new();
        if let Some(status) = &query.status {
            texts.push(status.clone());
            conditions.push(format!("r.status = ${}", texts.len()));
        }
        if let Some(session) = &query.end_user_session_id {
            texts.push(session.clone());
            conditions.push(format!("u.session_id = ${}", texts.len()));
        }
        if let Some(keyword) = query.keyword.as_deref().filter(|keyword| !keyword.is_empty()) {
            texts.push(format!("%{}%", keyword.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
            let n = texts.len();
            conditions.push(format!("(r.id LIKE ${n} ESCAPE '\\' OR r.error LIKE ${n} ESCAPE '\\' OR u.session_id LIKE ${n} ESCAPE '\\')"));
        }
        // Numbers are bound after all texts; their placeholders are numbered once texts are known.
        let mut number_conditions = Vec::new();
        if let Some(before) = query.created_before {
            numbers.push(before);
            number_conditions.push(("r.created_at <= ", numbers.len()));
        }
        if let Some(after) = query.created_after {
            numbers.push(after);
            number_conditions.push(("r.created_at >= ", numbers.len()));
        }
        for (condition, index) in number_conditions {
            conditions.push(format!("{condition}${}", texts.len() + index));
        }
        let filter = conditions.join(" AND ");
        let limit = query.limit.clamp(1, 100);
        let page = query.page.clamp(1, 99_999);
        let count_sql =
            format!("SELECT COUNT(*) AS total FROM workflow_runs r LEFT JOIN end_users u ON u.id = r.end_user_id WHERE {filter}");
        let list_sql = format!(
            "SELECT {RUN_COLUMNS} FROM workflow_runs r LEFT JOIN end_users u ON u.id = r.end_user_id WHERE {filter} \
             ORDER BY r.created_at DESC, r.id DESC LIMIT {limit} OFFSET {}",
            (page - 1) * limit
        );
        let (total, rows) = read!(self, |pool| {
            let mut count = sqlx::query(&count_sql);
            let mut list = sqlx::query(&list_sql);
            for text in &texts {
                count = count.bind(text.clone());
                list = list.bind(text.clone());
            }
            for number in &numbers {
                count = count.bind(*number);
                list = list.bind(*number);
            }
            let total: i64 =
                count.fetch_one(pool).await.map_err(|error| self.error(error))?.try_get("total").map_err(|error| self.error(error))?;
            let rows = list.fetch_all(pool).await.map_err(|error| self.error(error))?;
            let rows = rows.iter().map(run_from_row).collect::<Result<Vec<_>, _>>().map_err(|error| self.error(error))?;
            (total, rows)
        });
        Ok(RunPage { page, limit, total, has_more: page * limit < total, data: rows.into_iter().map(|row| row.run).collect() })
    }

    /// A run's node executions in start order, with their payloads.
    pub async fn node_executions(&self, run_id: &str) -> Result<Vec<NodeExecution>, StoreError> {
        let segments: Vec<(String, Vec<u8>)> = read!(self, |pool| {
            sqlx::query("SELECT codec, data FROM run_nodes WHERE run_id = $1 ORDER BY seq")
                .bind(run_id)
                .fetch_all(pool)
                .await
                .map_err(|error| self.error(error))?
                .iter()
                .map(|row| Ok((row.try_get("codec")?, row.try_get("data")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|error| self.error(error))?
        });
        let mut executions = Vec::new();
        for (codec, data) in segments {
            executions.extend(node_log::decode(&codec, &data)?);
        }
        executions.sort_by_key(|node| (node.index, node.created_at));
        for node in &mut executions {
            node.run_id = run_id.to_owned();
            node.inputs = self.node_payload(node.inputs.take()).await?;
            node.process_data = self.node_payload(node.process_data.take()).await?;
            node.outputs = self.node_payload(node.outputs.take()).await?;
            node.execution_metadata = self.node_payload(node.execution_metadata.take()).await?;
        }
        Ok(executions)
    }

    /// Bytes the run log holds: rows' payload bytes as stored (compressed), for benchmarks
    /// and the management API.
    pub async fn payload_bytes(&self) -> Result<(i64, i64), StoreError> {
        read!(self, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(SUM(COALESCE(LENGTH(data), 0)), 0) AS bytes FROM payloads")
                .fetch_one(pool)
                .await
                .map_err(|error| self.error(error))?;
            Ok((row.try_get("n").map_err(|error| self.error(error))?, row.try_get("bytes").map_err(|error| self.error(error))?))
        })
    }
}
