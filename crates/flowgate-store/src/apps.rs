//! Apps, their published versions, API keys and end users.

use serde::Serialize;
use sqlx::Row;

use crate::db::{Store, read, write};
use crate::error::StoreError;
use crate::{new_id, now};

/// How much of each run the run log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogDetail {
    /// Runs and every node execution with inputs, process data and outputs.
    Full,
    /// Runs and node executions without payloads.
    Metadata,
    /// Like `metadata`, plus full payloads of failed runs.
    Errors,
    /// No run log at all.
    None,
}

impl LogDetail {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "full" => Self::Full,
            "metadata" => Self::Metadata,
            "errors" => Self::Errors,
            "none" => Self::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Metadata => "metadata",
            Self::Errors => "errors",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct App {
    pub id: String,
    pub name: String,
    pub mode: String,
    pub description: String,
    pub icon_type: Option<String>,
    pub icon: Option<String>,
    pub icon_background: Option<String>,
    pub current_version_id: Option<String>,
    pub log_detail: LogDetail,
    pub retention_days: i64,
    /// Rate and concurrency limits, as the management API set them (JSON object).
    pub limits: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppVersion {
    /// Dify's `workflow_id`: what `POST /v1/workflows/{workflow_id}/run` names.
    pub id: String,
    pub app_id: String,
    /// Dify's version label: the publish time, `2026-11-22 09:30:00.123456`.
    pub version: String,
    #[serde(skip)]
    pub dsl: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub app_id: String,
    /// The first and last characters of the token, to tell keys apart; the token itself is
    /// only shown once, when it is created.
    pub token_hint: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What importing a DSL as a new app needs.
#[derive(Debug, Clone)]
pub struct NewApp {
    pub name: String,
    pub mode: String,
    pub description: String,
    pub icon_type: Option<String>,
    pub icon: Option<String>,
    pub icon_background: Option<String>,
    pub dsl: String,
}

const APP_COLUMNS: &str = "id, name, mode, description, icon_type, icon, icon_background, current_version_id, log_detail, \
                           retention_days, limits, created_at, updated_at";

fn app_from_row<R: Row>(row: &R) -> Result<App, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let limits: String = row.try_get("limits")?;
    Ok(App {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        mode: row.try_get("mode")?,
        description: row.try_get("description")?,
        icon_type: row.try_get("icon_type")?,
        icon: row.try_get("icon")?,
        icon_background: row.try_get("icon_background")?,
        current_version_id: row.try_get("current_version_id")?,
        log_detail: LogDetail::parse(&row.try_get::<String, _>("log_detail")?).unwrap_or(LogDetail::Full),
        retention_days: row.try_get("retention_days")?,
        limits: serde_json::from_str(&limits).unwrap_or_else(|_| serde_json::json!({})),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn version_from_row<R: Row>(row: &R) -> Result<AppVersion, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AppVersion {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        version: row.try_get("version")?,
        dsl: row.try_get("dsl")?,
        created_at: row.try_get("created_at")?,
    })
}

fn key_from_row<R: Row>(row: &R) -> Result<ApiKey, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ApiKey {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        token_hint: row.try_get("token_hint")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Dify's publish-time version label.
fn version_label(now_nanos: u128) -> String {
    let seconds = (now_nanos / 1_000_000_000) as i64;
    let micros = (now_nanos / 1_000 % 1_000_000) as u32;
    let (year, month, day, hour, minute, second) = civil_time(seconds);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{micros:06}")
}

/// UTC calendar fields of a Unix time (days-from-civil, inverted).
fn civil_time(seconds: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rest / 3600) as u32, (rest % 3600 / 60) as u32, (rest % 60) as u32)
}

/// `2026-11-22T09:30:00Z` for a Unix time.
pub fn iso8601(seconds: i64) -> String {
    let (year, month, day, hour, minute, second) = civil_time(seconds);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// A new API key: `app-` and 24 random letters and digits, as Dify issues them.
fn new_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut random = [0u8; 32];
    random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    random[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let body: String = random.iter().take(24).map(|byte| ALPHABET[usize::from(*byte) % ALPHABET.len()] as char).collect();
    format!("app-{body}")
}

pub fn token_hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

fn token_hint(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() <= 10 {
        return "app-…".into();
    }
    let head: String = chars[..7].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}…{tail}")
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos())
}

impl Store {
    /// Creates an app with its DSL as the first published version.
    pub async fn create_app(&self, app: NewApp) -> Result<(App, AppVersion), StoreError> {
        let now = now();
        let app_id = new_id();
        let version =
            AppVersion { id: new_id(), app_id: app_id.clone(), version: version_label(nanos_now()), dsl: app.dsl, created_at: now };
        write!(self, |pool| {
            let mut tx = pool.begin().await.map_err(|error| self.error(error))?;
            sqlx::query(
                "INSERT INTO apps (id, name, mode, description, icon_type, icon, icon_background, current_version_id, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            )
            .bind(&app_id)
            .bind(&app.name)
            .bind(&app.mode)
            .bind(&app.description)
            .bind(&app.icon_type)
            .bind(&app.icon)
            .bind(&app.icon_background)
            .bind(&version.id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|error| self.error(error))?;
            sqlx::query("INSERT INTO app_versions (id, app_id, version, dsl, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&version.id)
                .bind(&app_id)
                .bind(&version.version)
                .bind(&version.dsl)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|error| self.error(error))?;
            tx.commit().await.map_err(|error| self.error(error))
        })?;
        let app = self.app(&app_id).await?;
        Ok((app, version))
    }

    /// Publishes a DSL as the app's new current version; earlier versions stay addressable.
    pub async fn publish_version(&self, app_id: &str, app: NewApp) -> Result<(App, AppVersion), StoreError> {
        let existing = self.app(app_id).await?;
        if existing.mode != app.mode {
            return Err(StoreError::Conflict(format!(
                "app {app_id} is a {} app; a {} DSL cannot become its new version",
                existing.mode, app.mode
            )));
        }
        let now = now();
        let version =
            AppVersion { id: new_id(), app_id: app_id.to_owned(), version: version_label(nanos_now()), dsl: app.dsl, created_at: now };
        write!(self, |pool| {
            let mut tx = pool.begin().await.map_err(|error| self.error(error))?;
            sqlx::query("INSERT INTO app_versions (id, app_id, version, dsl, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&version.id)
                .bind(app_id)
                .bind(&version.version)
                .bind(&version.dsl)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|error| self.error(error))?;
            sqlx::query(
                "UPDATE apps SET current_version_id = $2, name = $3, description = $4, icon_type = $5, icon = $6, \
                 icon_background = $7, updated_at = $8 WHERE id = $1",
            )
            .bind(app_id)
            .bind(&version.id)
            .bind(&app.name)
            .bind(&app.description)
            .bind(&app.icon_type)
            .bind(&app.icon)
            .bind(&app.icon_background)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|error| self.error(error))?;
            tx.commit().await.map_err(|error| self.error(error))
        })?;
        Ok((self.app(app_id).await?, version))
    }

    pub async fn app(&self, app_id: &str) -> Result<App, StoreError> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1");
        read!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(app_id)
                .fetch_optional(pool)
                .await
                .map_err(|error| self.error(error))?
                .ok_or(StoreError::NotFound("app"))?;
            app_from_row(&row).map_err(|error| self.error(error))
        })
    }

    pub async fn apps(&self) -> Result<Vec<App>, StoreError> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, id");
        read!(self, |pool| {
            let rows = sqlx::query(&sql).fetch_all(pool).await.map_err(|error| self.error(error))?;
            rows.iter().map(|row| app_from_row(row).map_err(|error| self.error(error))).collect()
        })
    }

    /// Deletes an app with its versions, keys and end users; its runs and conversations go
    /// with the next purge.
    pub async fn delete_app(&self, app_id: &str) -> Result<(), StoreError> {
        let deleted = write!(self, |pool| sqlx::query("DELETE FROM apps WHERE id = $1")
            .bind(app_id)
            .execute(pool)
            .await
            .map_err(|error| self.error(error))?
            .rows_affected());
        if deleted == 0 { Err(StoreError::NotFound("app")) } else { Ok(()) }
    }

    /// Sets what the run log keeps for an app and for how long.
    pub async fn set_app_policy(
        &self,
        app_id: &str,
        log_detail: LogDetail,
        retention_days: i64,
        limits: &serde_json::Value,
    ) -> Result<App, StoreError> {
        let updated = write!(self, |pool| sqlx::query(
            "UPDATE apps SET log_detail = $2, retention_days = $3, limits = $4, updated_at = $5 WHERE id = $1"
        )
        .bind(app_id)
        .bind(log_detail.as_str())
        .bind(retention_days)
        .bind(limits.to_string())
        .bind(now())
        .execute(pool)
        .await
        .map_err(|error| self.error(error))?
        .rows_affected());
        if updated == 0 {
            return Err(StoreError::NotFound("app"));
        }
        self.app(app_id).await
    }

    pub async fn version(&self, version_id: &str) -> Result<AppVersion, StoreError> {
        read!(self, |pool| {
            let row = sqlx::query("SELECT id, app_id, version, dsl, created_at FROM app_versions WHERE id = $1")
                .bind(version_id)
                .fetch_optional(pool)
                .await
                .map_err(|error| self.error(error))?
                .ok_or(StoreError::NotFound("workflow"))?;
            version_from_row(&row).map_err(|error| self.error(error))
        })
    }

    pub async fn versions(&self, app_id: &str) -> Result<Vec<AppVersion>, StoreError> {
        read!(self, |pool| {
            let rows =
                sqlx::query("SELECT id, app_id, version, dsl, created_at FROM app_versions WHERE app_id = $1 ORDER BY created_at, id")
                    .bind(app_id)
                    .fetch_all(pool)
                    .await
                    .map_err(|error| self.error(error))?;
            rows.iter().map(|row| version_from_row(row).map_err(|error| self.error(error))).collect()
        })
    }

    /// Issues an API key for an app; the returned token is not stored and cannot be shown again.
    pub async fn create_key(&self, app_id: &str) -> Result<(ApiKey, String), StoreError> {
        self.app(app_id).await?;
        let token = new_token();
        let key = ApiKey { id: new_id(), app_id: app_id.to_owned(), token_hint: token_hint(&token), created_at: now(), revoked_at: None };
        write!(self, |pool| sqlx::query(
            "INSERT INTO api_keys (id, app_id, token_hash, token_hint, created_at) VALUES ($1, $2, $3, $4, $5)"
        )
        .bind(&key.id)
        .bind(app_id)
        .bind(token_hash(&token))
        .bind(&key.token_hint)
        .bind(key.created_at)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|error| self.error(error)))?;
        Ok((key, token))
    }

    pub async fn keys(&self, app_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, app_id, token_hint, created_at, revoked_at FROM api_keys WHERE app_id = $1 ORDER BY created_at, id",
            )
            .bind(app_id)
            .fetch_all(pool)
            .await
            .map_err(|error| self.error(error))?;
            rows.iter().map(|row| key_from_row(row).map_err(|error| self.error(error))).collect()
        })
    }

    pub async fn revoke_key(&self, key_id: &str) -> Result<(), StoreError> {
        let updated = write!(self, |pool| sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(key_id)
            .bind(now())
            .execute(pool)
            .await
            .map_err(|error| self.error(error))?
            .rows_affected());
        if updated == 0 { Err(StoreError::NotFound("api key")) } else { Ok(()) }
    }

    /// A counter that moves whenever an app or an API key changes (by any process): a server
    /// that sees it move drops what it cached of them.
    pub async fn config_epoch(&self) -> Result<i64, StoreError> {
        read!(self, |pool| sqlx::query_scalar::<_, i64>("SELECT epoch FROM config_epoch WHERE id = 1")
            .fetch_one(pool)
            .await
            .map_err(|error| self.error(error)))
    }

    /// The app a live (not revoked) token belongs to.
    pub async fn app_for_token(&self, token: &str) -> Result<Option<String>, StoreError> {
        read!(self, |pool| {
            let row = sqlx::query("SELECT app_id FROM api_keys WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(token_hash(token))
                .fetch_optional(pool)
                .await
                .map_err(|error| self.error(error))?;
            row.map(|row| row.try_get::<String, _>("app_id")).transpose().map_err(|error| self.error(error))
        })
    }

    /// The id of the end user a Service API `user` string names in an app, created on first use.
    pub async fn end_user(&self, app_id: &str, session_id: &str) -> Result<String, StoreError> {
        let lookup = || async {
            read!(self, |pool| {
                let row = sqlx::query("SELECT id FROM end_users WHERE app_id = $1 AND session_id = $2")
                    .bind(app_id)
                    .bind(session_id)
                    .fetch_optional(pool)
                    .await
                    .map_err(|error| self.error(error))?;
                row.map(|row| row.try_get::<String, _>("id")).transpose().map_err(|error| self.error(error))
            })
        };
        if let Some(id) = lookup().await? {
            return Ok(id);
        }
        write!(self, |pool| sqlx::query(
            "INSERT INTO end_users (id, app_id, session_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (app_id, session_id) DO NOTHING"
        )
        .bind(new_id())
        .bind(app_id)
        .bind(session_id)
        .bind(now())
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|error| self.error(error)))?;
        lookup().await?.ok_or(StoreError::NotFound("end user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_labels_look_like_dify_s() {
        // 2026-11-22 09:30:00.123456 UTC
        assert_eq!(version_label(1_795_339_800_123_456_000), "2026-11-22 09:30:00.123456");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn tokens_are_dify_shaped_and_hashed() {
        let token = new_token();
        assert!(token.starts_with("app-") && token.len() == 28, "{token}");
        assert!(token[4..].chars().all(|ch| ch.is_ascii_alphanumeric()));
        assert_ne!(new_token(), token);
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
