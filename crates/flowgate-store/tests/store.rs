//! The store against both databases it supports: an SQLite file in a temporary folder and the
//! machine's PostgreSQL (`FLOWGATE_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`),
//! in a database of its own created for the test and dropped after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use flowgate_engine::RunStatus;
use flowgate_engine::event::RunSummary;
use flowgate_engine::value::{Map, Value, map_of};
use flowgate_store::recorder::{NodeRecord, Recorder, RunStart};
use flowgate_store::{LogDetail, LogQuery, NewApp, Store, StoreConfig, StoreError};
use sqlx::Connection;

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowgate-store-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn sqlite_store() -> Store {
    Store::open(StoreConfig::embedded(temp_dir())).await.unwrap()
}

/// A fresh PostgreSQL database for one test.
async fn postgres_store() -> (Store, String) {
    let admin_url = std::env::var("FLOWGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("flowgate_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("PostgreSQL must be running for the cluster-mode tests");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("FLOWGATE_TEST_POSTGRES needs a database path"),
    };
    let config = StoreConfig { database_url: Some(url), ..StoreConfig::embedded(temp_dir()) };
    (Store::open(config).await.unwrap(), name)
}

async fn drop_postgres(name: &str) {
    let admin_url = std::env::var("FLOWGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
}

fn new_app(name: &str) -> NewApp {
    NewApp {
        name: name.into(),
        mode: "workflow".into(),
        description: String::new(),
        icon_type: None,
        icon: None,
        icon_background: None,
        dsl: "app: {name: x, mode: workflow}".into(),
    }
}

async fn apps_keys_and_versions(store: &Store) {
    let (app, first) = store.create_app(new_app("one")).await.unwrap();
    assert_eq!(app.current_version_id.as_deref(), Some(first.id.as_str()));
    let (key, token) = store.create_key(&app.id).await.unwrap();
    assert_eq!(store.app_for_token(&token).await.unwrap().as_deref(), Some(app.id.as_str()));
    assert_eq!(store.app_for_token("app-wrong").await.unwrap(), None);
    let (app, second) = store.publish_version(&app.id, new_app("one, again")).await.unwrap();
    assert_eq!(app.current_version_id.as_deref(), Some(second.id.as_str()));
    assert_eq!(app.name, "one, again");
    assert_eq!(store.version(&first.id).await.unwrap().app_id, app.id, "the previous version stays addressable");
    let chat = NewApp { mode: "advanced-chat".into(), ..new_app("chat") };
    assert!(matches!(store.publish_version(&app.id, chat).await, Err(StoreError::Conflict(_))));
    store.revoke_key(&key.id).await.unwrap();
    assert_eq!(store.app_for_token(&token).await.unwrap(), None);
    let user = store.end_user(&app.id, "alice").await.unwrap();
    assert_eq!(store.end_user(&app.id, "alice").await.unwrap(), user);
    store.delete_app(&app.id).await.unwrap();
    assert!(matches!(store.app(&app.id).await, Err(StoreError::NotFound(_))));
}

fn start(run_id: &str, app_id: &str, version_id: &str, inputs: Map, detail: LogDetail) -> RunStart {
    RunStart {
        id: run_id.into(),
        app_id: app_id.into(),
        version_id: version_id.into(),
        task_id: format!("task-{run_id}"),
        end_user_id: None,
        conversation_id: None,
        message_id: None,
        created_from: "service-api".into(),
        detail,
        retention_days: 30,
        inputs: Arc::new(inputs),
        instance_id: "test-instance".into(),
        created_at: flowgate_store::now(),
    }
}

fn node(id: &str, index: u64, outputs: Map) -> NodeRecord {
    NodeRecord {
        id: Arc::from(id),
        index,
        node_id: Arc::from(format!("node{index}")),
        node_type: Arc::from("template-transform"),
        title: Arc::from("T"),
        status: "succeeded",
        error: None,
        elapsed: 0.001,
        inputs: None,
        process_data: None,
        outputs: Some(Arc::new(outputs)),
        metadata: None,
        created_at: flowgate_store::now(),
        finished_at: flowgate_store::now(),
    }
}

fn summary(run_id: &str, outputs: Map) -> RunSummary {
    RunSummary {
        run_id: Arc::from(run_id),
        workflow_id: Arc::from("w"),
        status: RunStatus::Succeeded,
        outputs: Arc::new(outputs),
        error: None,
        elapsed: 0.01,
        usage: Default::default(),
        total_steps: 2,
        exceptions_count: 0,
        created_at: flowgate_store::now(),
        finished_at: flowgate_store::now(),
        answer: String::new(),
        conversation_variables: Arc::new(Map::default()),
    }
}

async fn run_log_is_small_and_complete(store: &Store) {
    let (app, version) = store.create_app(new_app("logged")).await.unwrap();
    let recorder = Recorder::start(store.clone()).unwrap();
    let table = Value::str("SKU00001,widget,9.99\n".repeat(20_000));
    for run in 0..3 {
        let run_id = format!("00000000-0000-0000-0000-00000000000{run}");
        let mut recording =
            recorder.run_started(start(&run_id, &app.id, &version.id, map_of([("master", table.clone())]), LogDetail::Full)).unwrap();
        for index in 1..=5 {
            recording.node_finished(node(&format!("{run_id}-{index}"), index, map_of([("output", table.clone())])));
        }
        recording.run_finished(&summary(&run_id, map_of([("rows", Value::Int(20_000))])));
    }
    recorder.flush().await;
    let run = store.run(&app.id, "00000000-0000-0000-0000-000000000001").await.unwrap();
    assert_eq!(run.status, "succeeded");
    assert_eq!(run.inputs.as_ref().and_then(|inputs| inputs["master"].as_str()).map(str::len), Some(420_000));
    assert_eq!(run.outputs, Some(serde_json::json!({"rows": 20000})));
    let nodes = store.node_executions(&run.id).await.unwrap();
    assert_eq!(nodes.len(), 5);
    assert_eq!(nodes[4].outputs.as_ref().and_then(|outputs| outputs["output"].as_str()).map(str::len), Some(420_000));
    // 15 node executions and 3 runs carry the 420 KB table; it is stored once, compressed.
    let (payloads, bytes) = store.payload_bytes().await.unwrap();
    assert!(payloads <= 5, "{payloads} payloads");
    assert!(bytes < 100_000, "{bytes} bytes");
    let page = store.runs(&app.id, &LogQuery { page: 1, limit: 2, ..LogQuery::default() }).await.unwrap();
    assert_eq!((page.total, page.data.len(), page.has_more), (3, 2, true));
    // Retention: nothing expires today; everything does in 31 days.
    assert_eq!(store.purge_expired(flowgate_store::now()).await.unwrap().runs, 0);
    let purged = store.purge_expired(flowgate_store::now() + 31 * 86_400).await.unwrap();
    assert_eq!((purged.runs, purged.node_executions), (3, 15));
    assert_eq!(store.payload_bytes().await.unwrap().0, 0);
}

async fn crashed_runs_are_failed(store: &Store) {
    let (app, version) = store.create_app(new_app("crashy")).await.unwrap();
    store.register_instance("dead").await.unwrap();
    let recorder = Recorder::start(store.clone()).unwrap();
    let mut orphan = start("11111111-1111-1111-1111-111111111111", &app.id, &version.id, Map::default(), LogDetail::Metadata);
    orphan.instance_id = "dead".into();
    let recording = recorder.run_started(orphan);
    // A run still going after half a second is written as `running`, without waiting for
    // anything else to be recorded.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.run(&app.id, "11111111-1111-1111-1111-111111111111").await.unwrap().status, "running");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.register_instance("alive").await.unwrap();
    let failed = store.fail_orphaned_runs("alive", Duration::ZERO).await.unwrap();
    assert_eq!(failed, 1);
    let run = store.run(&app.id, "11111111-1111-1111-1111-111111111111").await.unwrap();
    assert_eq!(run.status, "failed");
    assert!(run.error.unwrap().contains("stopped before it finished"));
    drop(recording);
}

/// Each log detail keeps what it promises: `full` everything, `metadata` rows without
/// payloads, `errors` payloads only of failed runs, `none` nothing.
async fn log_detail_decides_what_is_kept(store: &Store) {
    let (app, version) = store.create_app(new_app("detailed")).await.unwrap();
    let recorder = Recorder::start(store.clone()).unwrap();
    let cases = [
        ("full", LogDetail::Full, RunStatus::Succeeded),
        ("metadata", LogDetail::Metadata, RunStatus::Failed),
        ("errors-ok", LogDetail::Errors, RunStatus::Succeeded),
        ("errors-failed", LogDetail::Errors, RunStatus::Failed),
        ("none", LogDetail::None, RunStatus::Failed),
    ];
    for (name, detail, status) in cases {
        let run_id = format!("run-{name}");
        let Some(mut recording) = recorder.run_started(start(&run_id, &app.id, &version.id, map_of([("q", Value::str(name))]), detail))
        else {
            assert_eq!(detail, LogDetail::None);
            continue;
        };
        recording.node_finished(node(&format!("{run_id}-1"), 1, map_of([("answer", Value::str("forty-two"))])));
        recording.run_finished(&RunSummary { status, ..summary(&run_id, map_of([("out", Value::Int(42))])) });
    }
    recorder.flush().await;
    for (name, detail, status) in cases {
        let run_id = format!("run-{name}");
        if detail == LogDetail::None {
            assert!(matches!(store.run(&app.id, &run_id).await, Err(StoreError::NotFound(_))), "{name}");
            continue;
        }
        let run = store.run(&app.id, &run_id).await.unwrap();
        assert_eq!(run.status, status.as_str(), "{name}");
        let kept = detail == LogDetail::Full || (detail == LogDetail::Errors && status == RunStatus::Failed);
        assert_eq!(run.inputs.is_some(), kept, "{name}: inputs");
        assert_eq!(run.outputs, kept.then(|| serde_json::json!({"out": 42})), "{name}: outputs");
        let nodes = store.node_executions(&run_id).await.unwrap();
        assert_eq!(nodes.len(), 1, "{name}: the node is listed at every detail but none");
        assert_eq!(nodes[0].outputs, kept.then(|| serde_json::json!({"answer": "forty-two"})), "{name}: node outputs");
    }
}

#[tokio::test]
async fn sqlite_log_detail() {
    log_detail_decides_what_is_kept(&sqlite_store().await).await;
}

#[tokio::test]
async fn postgres_log_detail() {
    let (store, name) = postgres_store().await;
    log_detail_decides_what_is_kept(&store).await;
    drop_postgres(&name).await;
}

#[tokio::test]
async fn sqlite_apps_keys_and_versions() {
    apps_keys_and_versions(&sqlite_store().await).await;
}

#[tokio::test]
async fn postgres_apps_keys_and_versions() {
    let (store, name) = postgres_store().await;
    apps_keys_and_versions(&store).await;
    drop_postgres(&name).await;
}

#[tokio::test]
async fn sqlite_run_log() {
    run_log_is_small_and_complete(&sqlite_store().await).await;
}

#[tokio::test]
async fn postgres_run_log() {
    let (store, name) = postgres_store().await;
    run_log_is_small_and_complete(&store).await;
    drop_postgres(&name).await;
}

#[tokio::test]
async fn sqlite_crash_recovery() {
    crashed_runs_are_failed(&sqlite_store().await).await;
}

#[tokio::test]
async fn postgres_crash_recovery() {
    let (store, name) = postgres_store().await;
    crashed_runs_are_failed(&store).await;
    drop_postgres(&name).await;
}

#[tokio::test]
async fn two_processes_migrating_one_database_at_once_both_succeed() {
    let dir = temp_dir();
    let (a, b) = tokio::join!(Store::open(StoreConfig::embedded(&dir)), Store::open(StoreConfig::embedded(&dir)));
    a.unwrap();
    b.unwrap();
}

/// A database made by a build before the packed node log (migration 1 only), holding one run
/// with two node executions.
async fn node_rows_of_the_first_schema<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, first_migration: &'static str)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Connection: sqlx::migrate::Migrate,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrator = Migrator {
        migrations: vec![Migration::new(1, "initial".into(), MigrationType::Simple, first_migration.into(), false)].into(),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    migrator.run(pool).await.unwrap();
    for sql in [
        "INSERT INTO apps (id, name, mode, current_version_id, created_at, updated_at) VALUES ('app-1', 'old', 'workflow', 'v-1', 1, 1)",
        "INSERT INTO app_versions (id, app_id, version, dsl, created_at) VALUES ('v-1', 'app-1', '2026-11-01 00:00:00.000000', 'app: {}', 1)",
        "INSERT INTO workflow_runs (id, app_id, version_id, task_id, status, detail, instance_id, created_at, finished_at, expires_at) \
         VALUES ('run-1', 'app-1', 'v-1', 't-1', 'failed', 'metadata', 'i', 100, 101, 4000000000)",
        "INSERT INTO node_executions (id, run_id, position, node_id, node_type, title, status, error, elapsed_time, created_at, finished_at) \
         VALUES ('exec-2', 'run-1', 2, 'code', 'code', 'Code', 'failed', 'division by zero', 0.5, 100, 101)",
        "INSERT INTO node_executions (id, run_id, position, node_id, node_type, title, status, elapsed_time, created_at, finished_at) \
         VALUES ('exec-1', 'run-1', 1, 'start', 'start', 'Start', 'succeeded', 0.001, 100, 100)",
    ] {
        sqlx::raw_sql(sql).execute(pool).await.unwrap();
    }
}

async fn node_rows_survive_the_packed_log_migration(store: &Store) {
    let nodes = store.node_executions("run-1").await.unwrap();
    let summary: Vec<(&str, i64, &str, Option<&str>)> =
        nodes.iter().map(|node| (node.id.as_str(), node.index, node.status.as_str(), node.error.as_deref())).collect();
    assert_eq!(summary, [("exec-1", 1, "succeeded", None), ("exec-2", 2, "failed", Some("division by zero"))]);
    assert_eq!((nodes[1].title.as_str(), nodes[1].elapsed_time, nodes[1].finished_at), ("Code", 0.5, Some(101)));
    assert_eq!(store.run_log_size().await.unwrap().1, 2);
    let purged = store.purge_expired(4_000_000_001).await.unwrap();
    assert_eq!((purged.runs, purged.node_executions), (1, 2));
}

#[tokio::test]
async fn sqlite_node_rows_survive_the_packed_log_migration() {
    let dir = temp_dir();
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join("flowgate.db")).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    node_rows_of_the_first_schema(&pool, include_str!("../migrations/sqlite/0001_initial.sql")).await;
    pool.close().await;
    node_rows_survive_the_packed_log_migration(&Store::open(StoreConfig::embedded(&dir)).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_node_rows_survive_the_packed_log_migration() {
    let admin_url = std::env::var("FLOWGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("flowgate_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    node_rows_of_the_first_schema(&pool, include_str!("../migrations/postgres/0001_initial.sql")).await;
    pool.close().await;
    let store = Store::open(StoreConfig { database_url: Some(url), ..StoreConfig::embedded(temp_dir()) }).await.unwrap();
    node_rows_survive_the_packed_log_migration(&store).await;
    drop(store);
    drop_postgres(&name).await;
}
