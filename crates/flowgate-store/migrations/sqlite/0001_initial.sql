-- flowgate schema, SQLite flavour (embedded mode). Timestamps are Unix seconds; ids are UUID
-- strings; JSON is TEXT; run-log payloads live in `payloads`, addressed by content hash.

CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    icon_type TEXT,
    icon TEXT,
    icon_background TEXT,
    current_version_id TEXT,
    log_detail TEXT NOT NULL DEFAULT 'full',
    retention_days INTEGER NOT NULL DEFAULT 30,
    limits TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE app_versions (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    dsl TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX app_versions_app ON app_versions (app_id, created_at);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    token_hint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_app ON api_keys (app_id);

CREATE TABLE end_users (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    session_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (app_id, session_id)
);

CREATE TABLE workflow_runs (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    end_user_id TEXT,
    conversation_id TEXT,
    message_id TEXT,
    created_from TEXT NOT NULL DEFAULT 'service-api',
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    inputs_hash TEXT,
    outputs_hash TEXT,
    error TEXT,
    elapsed_time REAL NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    exceptions_count INTEGER NOT NULL DEFAULT 0,
    instance_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    expires_at INTEGER NOT NULL
);
CREATE INDEX workflow_runs_app ON workflow_runs (app_id, created_at);
CREATE INDEX workflow_runs_expiry ON workflow_runs (expires_at);
CREATE INDEX workflow_runs_running ON workflow_runs (status) WHERE status = 'running';

CREATE TABLE node_executions (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    node_type TEXT NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    elapsed_time REAL NOT NULL DEFAULT 0,
    inputs_hash TEXT,
    process_data_hash TEXT,
    outputs_hash TEXT,
    metadata_hash TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX node_executions_run ON node_executions (run_id, position);

CREATE TABLE payloads (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    codec TEXT NOT NULL,
    data BLOB,
    blob_key TEXT,
    expires_at INTEGER NOT NULL
);
CREATE INDEX payloads_expiry ON payloads (expires_at);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    end_user_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    inputs TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'normal',
    dialogue_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE INDEX conversations_user ON conversations (app_id, end_user_id, updated_at);

CREATE TABLE conversation_variables (
    id TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value_type TEXT NOT NULL,
    value TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, id)
);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    end_user_id TEXT NOT NULL,
    workflow_run_id TEXT,
    parent_message_id TEXT,
    inputs TEXT NOT NULL DEFAULT '{}',
    query TEXT NOT NULL,
    answer TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'normal',
    error TEXT,
    files TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at);

CREATE TABLE message_feedbacks (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    rating TEXT NOT NULL,
    content TEXT,
    end_user_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX message_feedbacks_app ON message_feedbacks (app_id, created_at);

CREATE TABLE upload_files (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    end_user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    extension TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Live server processes; a run whose instance stopped heart-beating was cut off by a crash.
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
