//! Conversations, their variables and messages, feedback, and uploaded files.

use serde::Serialize;
use serde_json::Value as Json;
use sqlx::Row;

use crate::db::{Store, read, write};
use crate::error::StoreError;
use crate::{new_id, now};

#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub id: String,
    pub app_id: String,
    pub end_user_id: String,
    pub name: String,
    pub inputs: Json,
    pub status: String,
    pub dialogue_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationVariable {
    pub id: String,
    pub name: String,
    pub value_type: String,
    /// The value as JSON.
    pub value: Json,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: String,
    pub app_id: String,
    pub conversation_id: String,
    pub end_user_id: String,
    pub workflow_run_id: Option<String>,
    pub parent_message_id: Option<String>,
    pub inputs: Json,
    pub query: String,
    pub answer: String,
    pub status: String,
    pub error: Option<String>,
    pub files: Json,
    pub metadata: Json,
    pub feedback_rating: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A message as a chat turn starts.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub app_id: String,
    pub conversation_id: String,
    pub end_user_id: String,
    pub workflow_run_id: Option<String>,
    pub inputs: Json,
    pub query: String,
    pub files: Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct Feedback {
    pub id: String,
    pub app_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub rating: String,
    pub content: Option<String>,
    pub end_user_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UploadFile {
    pub id: String,
    pub app_id: String,
    pub end_user_id: String,
    pub name: String,
    pub size: i64,
    pub extension: String,
    pub mime_type: String,
    pub blob_key: String,
    pub created_at: i64,
}

fn json_column(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or(Json::Null)
}

const CONVERSATION_COLUMNS: &str = "id, app_id, end_user_id, name, inputs, status, dialogue_count, created_at, updated_at";

fn conversation_from_row<R: Row>(row: &R) -> Result<Conversation, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Conversation {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        end_user_id: row.try_get("end_user_id")?,
        name: row.try_get("name")?,
        inputs: json_column(&row.try_get::<String, _>("inputs")?),
        status: row.try_get("status")?,
        dialogue_count: row.try_get("dialogue_count")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const MESSAGE_COLUMNS: &str = "m.id, m.app_id, m.conversation_id, m.end_user_id, m.workflow_run_id, m.parent_message_id, m.inputs, m.query, \
    m.answer, m.status, m.error, m.files, m.metadata, f.rating AS feedback_rating, m.created_at, m.updated_at";

fn message_from_row<R: Row>(row: &R) -> Result<Message, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Message {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        conversation_id: row.try_get("conversation_id")?,
        end_user_id: row.try_get("end_user_id")?,
        workflow_run_id: row.try_get("workflow_run_id")?,
        parent_message_id: row.try_get("parent_message_id")?,
        inputs: json_column(&row.try_get::<String, _>("inputs")?),
        query: row.try_get("query")?,
        answer: row.try_get("answer")?,
        status: row.try_get("status")?,
        error: row.try_get("error")?,
        files: json_column(&row.try_get::<String, _>("files")?),
        metadata: json_column(&row.try_get::<String, _>("metadata")?),
        feedback_rating: row.try_get("feedback_rating")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn variable_from_row<R: Row>(row: &R) -> Result<ConversationVariable, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ConversationVariable {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        value_type: row.try_get("value_type")?,
        value: json_column(&row.try_get::<String, _>("value")?),
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// How conversations are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationOrder {
    CreatedAsc,
    CreatedDesc,
    UpdatedAsc,
    UpdatedDesc,
}

impl ConversationOrder {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "created_at" => Self::CreatedAsc,
            "-created_at" => Self::CreatedDesc,
            "updated_at" => Self::UpdatedAsc,
            "-updated_at" => Self::UpdatedDesc,
            _ => return None,
        })
    }

    fn sql(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::CreatedAsc => ("created_at", "ASC", ">"),
            Self::CreatedDesc => ("created_at", "DESC", "<"),
            Self::UpdatedAsc => ("updated_at", "ASC", ">"),
            Self::UpdatedDesc => ("updated_at", "DESC", "<"),
        }
    }
}

impl Store {
    pub async fn create_conversation(
        &self,
        app_id: &str,
        end_user_id: &str,
        name: &str,
        inputs: &Json,
    ) -> Result<Conversation, StoreError> {
        let id = new_id();
        let now = now();
        write!(self, |pool| sqlx::query(
            "INSERT INTO conversations (id, app_id, end_user_id, name, inputs, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)"
        )
        .bind(&id)
        .bind(app_id)
        .bind(end_user_id)
        .bind(name)
        .bind(inputs.to_string())
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|error| self.error(error)))?;
        Ok(Conversation {
            id,
            app_id: app_id.to_owned(),
            end_user_id: end_user_id.to_owned(),
            name: name.to_owned(),
            inputs: inputs.clone(),
            status: "normal".into(),
            dialogue_count: 0,
            created_at: now,
            updated_at: now,
        })
    }

    /// A live conversation of an end user.
    pub async fn conversation(&self, app_id: &str, end_user_id: &str, id: &str) -> Result<Conversation, StoreError> {
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1 AND app_id = $2 AND end_user_id = $3 AND deleted_at IS NULL"
        );
        read!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(id)
                .bind(app_id)
                .bind(end_user_id)
                .fetch_optional(pool)
                .await
                .map_err(|error| self.error(error))?
                .ok_or(StoreError::NotFound("conversation"))?;
            conversation_from_row(&row).map_err(|error| self.error(error))
        })
    }

    /// An end user's conversations after `last_id` (exclusive), in `order`; one more than
    /// `limit` is fetched to tell whether there are more.
    pub async fn conversations(
        &self,
        app_id: &str,
        end_user_id: &str,
        last_id: Option<&str>,
        limit: i64,
        order: ConversationOrder,
    ) -> Result<(Vec<Conversation>, bool), StoreError> {
        let (column, direction, beyond) = order.sql();
        let after = match last_id {
            Some(last_id) => Some(self.conversation(app_id, end_user_id, last_id).await?),
            None => None,
        };
        let cursor = after.as_ref().map(|last| if column == "created_at" { last.created_at } else { last.updated_at });
        let cursor_sql =
            if cursor.is_some() { format!(" AND ({column} {beyond} $4 OR ({column} = $4 AND id {beyond} $5))") } else { String::new() };
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = $1 AND end_user_id = $2 AND deleted_at IS NULL{cursor_sql} \
             ORDER BY {column} {direction}, id {direction} LIMIT $3"
        );
        let mut rows = read!(self, |pool| {
            let mut query = sqlx::query(&sql).bind(app_id).bind(end_user_id).bind(limit + 1);
            if let (Some(cursor), Some(last)) = (cursor, &after) {
                query = query.bind(cursor).bind(last.id.clone());
            }
            query
                .fetch_all(pool)
                .await
                .map_err(|error| self.error(error))?
                .iter()
                .map(conversation_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| self.error(error))?
        });
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        Ok((rows, has_more))
    }

    pub async fn rename_conversation(&self, conversation: &Conversation, name: &str) -> Result<Conversation, StoreError> {
        let now = now();
        write!(self, |pool| sqlx::query("UPDATE conversations SET name = $2, updated_at = $3 WHERE id = $1")
            .bind(&conversation.id)
            .bind(name)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|error| self.error(error)))?;
        Ok(Conversation { name: name.to_owned(), updated_at: now, ..conversation.clone() })
    }

    pub async fn delete_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        write!(self, |pool| sqlx::query("UPDATE conversations SET deleted_at = $2 WHERE id = $1")
            .bind(&conversation.id)
            .bind(now())
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|error| self.error(error)))
    }

    /// Starts a turn: counts it and records the message. Returns the turn's
    /// `sys.dialogue_count` (this conversation's turns including the current one).
    pub async fn begin_turn(&self, message: &NewMessage) -> Result<i64, StoreError> {
        let now = now();
        write!(self, |pool| {
            let mut tx = pool.begin().await.map_err(|error| self.error(error))?;
            sqlx::query("UPDATE conversations SET dialogue_count = dialogue_count + 1, updated_at = $2 WHERE id = $1")
                .bind(&message.conversation_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|error| self.error(error))?;
            let count: i64 = sqlx::query("SELECT dialogue_count FROM conversations WHERE id = $1")
                .bind(&message.conversation_id)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get("dialogue_count"))
                .map_err(|error| self.error(error))?;
            let parent: Option<String> =
                sqlx::query("SELECT id FROM messages WHERE conversation_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1")
                    .bind(&message.conversation_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|error| self.error(error))?
                    .map(|row| row.try_get("id"))
                    .transpose()
                    .map_err(|error| self.error(error))?;
            sqlx::query(
                "INSERT INTO messages (id, app_id, conversation_id, end_user_id, workflow_run_id, parent_message_id, inputs, query, status, \
                 files, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, $10, $10)",
            )
            .bind(&message.id)
            .bind(&message.app_id)
            .bind(&message.conversation_id)
            .bind(&message.end_user_id)
            .bind(&message.workflow_run_id)
            .bind(parent)
            .bind(message.inputs.to_string())
            .bind(&message.query)
            .bind(message.files.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|error| self.error(error))?;
            tx.commit().await.map_err(|error| self.error(error))?;
            Ok(count)
        })
    }

    /// Ends a turn: the answer, and the conversation variables as the run left them.
    pub async fn end_turn(
        &self,
        message_id: &str,
        answer: &str,
        error: Option<&str>,
        metadata: &Json,
        conversation_id: &str,
        variables: &[ConversationVariable],
    ) -> Result<(), StoreError> {
        write!(self, |pool| sqlx::query(
            "UPDATE messages SET answer = $2, status = $3, error = $4, metadata = $5, updated_at = $6 WHERE id = $1"
        )
        .bind(message_id)
        .bind(answer)
        .bind(if error.is_some() { "error" } else { "normal" })
        .bind(error)
        .bind(metadata.to_string())
        .bind(now())
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|error| self.error(error)))?;
        self.save_conversation_variables(conversation_id, variables).await
    }

    pub async fn conversation_variables(&self, conversation_id: &str) -> Result<Vec<ConversationVariable>, StoreError> {
        read!(self, |pool| {
            sqlx::query(
                "SELECT id, name, value_type, value, description, created_at, updated_at FROM conversation_variables \
                 WHERE conversation_id = $1 ORDER BY created_at, name",
            )
            .bind(conversation_id)
            .fetch_all(pool)
            .await
            .map_err(|error| self.error(error))?
            .iter()
            .map(variable_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.error(error))
        })
    }

    pub async fn save_conversation_variables(&self, conversation_id: &str, variables: &[ConversationVariable]) -> Result<(), StoreError> {
        let now = now();
        write!(self, |pool| {
            let mut tx = pool.begin().await.map_err(|error| self.error(error))?;
            for variable in variables {
                sqlx::query(
                    "INSERT INTO conversation_variables (id, conversation_id, name, value_type, value, description, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                     ON CONFLICT (conversation_id, id) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(&variable.id)
                .bind(conversation_id)
                .bind(&variable.name)
                .bind(&variable.value_type)
                .bind(variable.value.to_string())
                .bind(&variable.description)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|error| self.error(error))?;
            }
            tx.commit().await.map_err(|error| self.error(error))
        })
    }

    /// Messages of a conversation before `first_id` (exclusive), newest `limit` of them, in
    /// chronological order; and whether older ones remain.
    pub async fn messages(&self, conversation_id: &str, first_id: Option<&str>, limit: i64) -> Result<(Vec<Message>, bool), StoreError> {
        let cursor = match first_id {
            Some(first_id) => Some(read!(self, |pool| {
                let row = sqlx::query("SELECT created_at FROM messages WHERE id = $1 AND conversation_id = $2")
                    .bind(first_id)
                    .bind(conversation_id)
                    .fetch_optional(pool)
                    .await
                    .map_err(|error| self.error(error))?
                    .ok_or(StoreError::NotFound("first message"))?;
                (row.try_get::<i64, _>("created_at").map_err(|error| self.error(error))?, first_id.to_owned())
            })),
            None => None,
        };
        let cursor_sql = if cursor.is_some() { " AND (m.created_at < $3 OR (m.created_at = $3 AND m.id < $4))" } else { "" };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN message_feedbacks f ON f.message_id = m.id \
             WHERE m.conversation_id = $1{cursor_sql} ORDER BY m.created_at DESC, m.id DESC LIMIT $2"
        );
        let mut rows = read!(self, |pool| {
            let mut query = sqlx::query(&sql).bind(conversation_id).bind(limit + 1);
            if let Some((created_at, id)) = &cursor {
                query = query.bind(*created_at).bind(id.clone());
            }
            query
                .fetch_all(pool)
                .await
                .map_err(|error| self.error(error))?
                .iter()
                .map(message_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| self.error(error))?
        });
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        rows.reverse();
        Ok((rows, has_more))
    }

    pub async fn message(&self, app_id: &str, message_id: &str) -> Result<Message, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN message_feedbacks f ON f.message_id = m.id WHERE m.id = $1 AND m.app_id = $2"
        );
        read!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(message_id)
                .bind(app_id)
                .fetch_optional(pool)
                .await
                .map_err(|error| self.error(error))?
                .ok_or(StoreError::NotFound("message"))?;
            message_from_row(&row).map_err(|error| self.error(error))
        })
    }

    /// Sets (or with `None` clears) an end user's rating of a message.
    pub async fn set_feedback(
        &self,
        message: &Message,
        end_user_id: &str,
        rating: Option<&str>,
        content: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now();
        write!(self, |pool| {
            match rating {
            Some(rating) => sqlx::query(
                "INSERT INTO message_feedbacks (id, app_id, conversation_id, message_id, rating, content, end_user_id, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                 ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating, content = excluded.content, updated_at = excluded.updated_at",
            )
            .bind(new_id())
            .bind(&message.app_id)
            .bind(&message.conversation_id)
            .bind(&message.id)
            .bind(rating)
            .bind(content)
            .bind(end_user_id)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|error| self.error(error)),
            None => sqlx::query("DELETE FROM message_feedbacks WHERE message_id = $1")
                .bind(&message.id)
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(|error| self.error(error)),
        }
        })
    }

    pub async fn feedbacks(&self, app_id: &str, page: i64, limit: i64) -> Result<Vec<Feedback>, StoreError> {
        read!(self, |pool| {
            sqlx::query(
                "SELECT id, app_id, conversation_id, message_id, rating, content, end_user_id, created_at, updated_at \
                 FROM message_feedbacks WHERE app_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
            )
            .bind(app_id)
            .bind(limit)
            .bind((page.max(1) - 1) * limit)
            .fetch_all(pool)
            .await
            .map_err(|error| self.error(error))?
            .iter()
            .map(|row| -> Result<Feedback, sqlx::Error> {
                Ok(Feedback {
                    id: row.try_get("id")?,
                    app_id: row.try_get("app_id")?,
                    conversation_id: row.try_get("conversation_id")?,
                    message_id: row.try_get("message_id")?,
                    rating: row.try_get("rating")?,
                    content: row.try_get("content")?,
                    end_user_id: row.try_get("end_user_id")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.error(error))
        })
    }

    /// Stores an uploaded file's content and its record.
    pub async fn add_upload(&self, file: &UploadFile, content: bytes::Bytes) -> Result<(), StoreError> {
        self.blobs.put(&file.blob_key, content).await?;
        write!(self, |pool| sqlx::query(
            "INSERT INTO upload_files (id, app_id, end_user_id, name, size, extension, mime_type, blob_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )
        .bind(&file.id)
        .bind(&file.app_id)
        .bind(&file.end_user_id)
        .bind(&file.name)
        .bind(file.size)
        .bind(&file.extension)
        .bind(&file.mime_type)
        .bind(&file.blob_key)
        .bind(file.created_at)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|error| self.error(error)))
    }

    pub async fn upload(&self, app_id: &str, file_id: &str) -> Result<UploadFile, StoreError> {
        read!(self, |pool| {
            let row = sqlx::query(
                "SELECT id, app_id, end_user_id, name, size, extension, mime_type, blob_key, created_at FROM upload_files WHERE id = $1 AND app_id = $2",
            )
            .bind(file_id)
            .bind(app_id)
            .fetch_optional(pool)
            .await
            .map_err(|error| self.error(error))?
            .ok_or(StoreError::NotFound("file"))?;
            (|| -> Result<UploadFile, sqlx::Error> {
                Ok(UploadFile {
                    id: row.try_get("id")?,
                    app_id: row.try_get("app_id")?,
                    end_user_id: row.try_get("end_user_id")?,
                    name: row.try_get("name")?,
                    size: row.try_get("size")?,
                    extension: row.try_get("extension")?,
                    mime_type: row.try_get("mime_type")?,
                    blob_key: row.try_get("blob_key")?,
                    created_at: row.try_get("created_at")?,
                })
            })()
            .map_err(|error| self.error(error))
        })
    }
}
