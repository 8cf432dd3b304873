//! The operator's commands: `serve`, `migrate`, `apps …`, `keys …`. They act on the same
//! database as a running server (same `--data-dir` / `DATABASE_URL`), which sees their changes
//! at once.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use flowgate_dsl::Document;
use flowgate_egress::{EgressClient, IpPolicy};
use flowgate_engine::Ports;
use flowgate_store::{NewApp, Store, StoreConfig};

use crate::files::LocalFiles;

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Where the embedded database and blobs live.
    #[arg(long, env = "FLOWGATE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL instead of the embedded SQLite file.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// `s3://bucket/prefix` to keep blobs in S3-compatible storage.
    #[arg(long, env = "BLOB_URL")]
    blob_url: Option<String>,
    /// The most database connections open at once.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    max_connections: u32,
    /// How long a request waits for a free database connection before it gets 503, in ms.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 5000)]
    acquire_timeout_ms: u64,
}

impl StoreArgs {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            database_url: self.database_url.clone().filter(|url| !url.is_empty()),
            data_dir: self.data_dir.clone(),
            blob_url: self.blob_url.clone().filter(|url| !url.is_empty()),
            max_connections: self.max_connections,
            acquire_timeout: Duration::from_millis(self.acquire_timeout_ms),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Import a DSL as a new app (prints `{"app_id", "api_key"}`), or with `--app` as the new
    /// published version of an existing one.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Publish as a new version of this app instead of creating one.
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List apps, one JSON object per line.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Issue an API key for an app (prints `{"id", "api_key"}`; the key is shown only once).
    Create {
        app_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

const FAILURE: u8 = 1;
const USAGE: u8 = 2;

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|error| {
        eprintln!("error: cannot start the runtime: {error}");
        ExitCode::from(FAILURE)
    })
}

async fn open(store: &StoreArgs) -> Result<Store, ExitCode> {
    Store::open(store.config()).await.map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(FAILURE)
    })
}

fn print(value: &serde_json::Value) {
    let stdout = std::io::stdout();
    let _ = writeln!(stdout.lock(), "{value}");
}

pub fn migrate(store: StoreArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match open(&store).await {
            Ok(store) => {
                print(&json!({"migrated": true, "database": store.backend().as_str()}));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    })
}

/// A DSL file read and validated as an app to import.
fn read_app(file: &PathBuf, name: Option<String>) -> Result<NewApp, ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|error| {
        eprintln!("error: cannot read {}: {error}", file.display());
        ExitCode::from(USAGE)
    })?;
    let document = Document::load(&text).map_err(|error| {
        eprintln!("error {}: {error}", file.display());
        ExitCode::from(USAGE)
    })?;
    let errors = document.errors();
    if !errors.is_empty() {
        for error in errors {
            eprintln!("error {}: {error}", file.display());
        }
        return Err(ExitCode::from(USAGE));
    }
    let app = &document.app;
    Ok(NewApp {
        name: name.unwrap_or_else(|| app.name.clone()),
        mode: app.mode.as_str().to_owned(),
        description: app.description.clone(),
        icon_type: Some(app.icon_type.clone()).filter(|text| !text.is_empty()),
        icon: Some(app.icon.clone()).filter(|text| !text.is_empty()),
        icon_background: Some(app.icon_background.clone()).filter(|text| !text.is_empty()),
        dsl: document.export_yaml(),
    })
}

pub fn apps(command: AppsCommand) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match command {
            AppsCommand::Import { file, name, app, store } => {
                let new_app = match read_app(&file, name) {
                    Ok(new_app) => new_app,
                    Err(code) => return code,
                };
                let store = match open(&store).await {
                    Ok(store) => store,
                    Err(code) => return code,
                };
                let result = match app {
                    Some(app_id) => store
                        .publish_version(&app_id, new_app)
                        .await
                        .map(|(app, version)| json!({"app_id": app.id, "workflow_id": version.id, "version": version.version})),
                    None => match store.create_app(new_app).await {
                        Ok((app, version)) => store
                            .create_key(&app.id)
                            .await
                            .map(|(_, token)| json!({"app_id": app.id, "api_key": token, "workflow_id": version.id})),
                        Err(error) => Err(error),
                    },
                };
                match result {
                    Ok(value) => {
                        print(&value);
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("error: {error}");
                        ExitCode::from(FAILURE)
                    }
                }
            }
            AppsCommand::List { store } => {
                let store = match open(&store).await {
                    Ok(store) => store,
                    Err(code) => return code,
                };
                match store.apps().await {
                    Ok(apps) => {
                        for app in apps {
                            print(&json!({"id": app.id, "name": app.name, "mode": app.mode, "workflow_id": app.current_version_id}));
                        }
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("error: {error}");
                        ExitCode::from(FAILURE)
                    }
                }
            }
        }
    })
}

pub fn keys(command: KeysCommand) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match command {
            KeysCommand::Create { app_id, store } => {
                let store = match open(&store).await {
                    Ok(store) => store,
                    Err(code) => return code,
                };
                match store.create_key(&app_id).await {
                    Ok((key, token)) => {
                        print(&json!({"id": key.id, "app_id": app_id, "api_key": token}));
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("error: {error}");
                        ExitCode::from(FAILURE)
                    }
                }
            }
        }
    })
}

pub fn serve(listen: std::net::SocketAddr, store: StoreArgs, max_body_bytes: usize, grace: Duration, allow_network: &str) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let store = match open(&store).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        let instance_id = uuid::Uuid::new_v4().to_string();
        if let Err(error) = store.register_instance(&instance_id).await {
            eprintln!("error: {error}");
            return ExitCode::from(FAILURE);
        }
        match store.fail_orphaned_runs(&instance_id, Duration::from_secs(30)).await {
            Ok(0) => {}
            Ok(count) => tracing::warn!(count, "runs left running by a stopped server were marked failed"),
            Err(error) => tracing::error!(%error, "could not check for runs left by a stopped server"),
        }
        let policy = match IpPolicy::from_allow_list(allow_network) {
            Ok(policy) => policy,
            Err(error) => {
                eprintln!("error: --allow-network: {error}");
                return ExitCode::from(USAGE);
            }
        };
        let egress = match EgressClient::new(policy) {
            Ok(egress) => egress,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(FAILURE);
            }
        };
        let ports = Ports {
            http: Some(Arc::new(egress.clone())),
            files: Some(Arc::new(LocalFiles::new(store.config().data_dir.join("files"), egress))),
            ..Ports::default()
        };
        let state = Arc::new(crate::serve::ServerState::new(store.clone(), ports, instance_id.clone()));
        let heartbeat_store = store.clone();
        let heartbeat_id = instance_id.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if let Err(error) = heartbeat_store.heartbeat(&heartbeat_id).await {
                    tracing::warn!(%error, "heartbeat failed");
                }
            }
        });
        let purge_store = store.clone();
        let purge = tokio::spawn(async move {
            loop {
                match purge_store.purge_expired(flowgate_store::now()).await {
                    Ok(report) if report.runs + report.payloads > 0 => tracing::info!(?report, "expired run log purged"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "run log purge failed"),
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        let result = crate::serve::serve(state, listen, max_body_bytes, grace).await;
        heartbeat.abort();
        purge.abort();
        let _ = store.unregister_instance(&instance_id).await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(FAILURE)
            }
        }
    })
}
