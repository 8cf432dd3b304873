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

use flowgate_egress::{EgressClient, IpPolicy};
use flowgate_engine::Ports;
use flowgate_store::{LogQuery, Store, StoreConfig};

use crate::manage::{self, ManageError, PolicyChange};

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
    /// Import a DSL as a new app (prints `{"app_id", "api_key", …}`), or with `--app` as the new
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
    /// Show an app with its published versions.
    Get {
        app_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the DSL of an app's current version (or of `--workflow-id`).
    Export {
        app_id: String,
        #[arg(long)]
        workflow_id: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete an app, its versions and keys; its run log goes with the next purge.
    Delete {
        app_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set an app's run-log detail, retention and limits; prints the app's policy. A running
    /// server applies it within a second.
    Policy {
        app_id: String,
        /// full | metadata | errors | none
        #[arg(long)]
        log_detail: Option<String>,
        #[arg(long)]
        retention_days: Option<i64>,
        /// JSON: {"requests_per_second"|"requests_per_minute"|"requests_per_hour": N,
        /// "per_key": {same rates, per API key}, "max_concurrent_runs": N, "queue_timeout_ms": N}
        #[arg(long)]
        limits: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Issue an API key for an app (prints `{"id", "api_key", …}`; the key is shown only once).
    Create {
        app_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List an app's keys (hints only), one JSON object per line.
    List {
        app_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key; a running server refuses it within a second.
    Revoke {
        app_id: String,
        key_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// An app's runs, newest first, one JSON object per line.
    List {
        app_id: String,
        #[arg(long, value_parser = ["succeeded", "failed", "stopped", "partial-succeeded", "running"])]
        status: Option<String>,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100))]
        limit: i64,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
        page: i64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A run with its node executions.
    Get {
        app_id: String,
        run_id: String,
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
    execute(&store, |store| async move { Ok(Output::Json(json!({"migrated": true, "database": store.backend().as_str()}))) })
}

/// What a command prints on success.
enum Output {
    Json(serde_json::Value),
    /// One JSON object per line.
    Lines(Vec<serde_json::Value>),
    Text(String),
    Nothing,
}

/// Opens the store, does the work, prints its output; bad input exits 2, other failures 1.
fn execute<F, Fut>(args: &StoreArgs, work: F) -> ExitCode
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<Output, ManageError>>,
{
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let store = match open(args).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        match work(store).await {
            Ok(output) => {
                match output {
                    Output::Json(value) => print(&value),
                    Output::Lines(values) => values.iter().for_each(print),
                    Output::Text(text) => {
                        let _ = std::io::stdout().lock().write_all(text.as_bytes());
                    }
                    Output::Nothing => {}
                }
                ExitCode::SUCCESS
            }
            Err(ManageError::InvalidDsl(errors)) => {
                errors.iter().for_each(|error| eprintln!("error: {error}"));
                ExitCode::from(USAGE)
            }
            Err(error @ ManageError::InvalidPolicy(_)) => {
                eprintln!("error: {error}");
                ExitCode::from(USAGE)
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(FAILURE)
            }
        }
    })
}

pub fn apps(command: AppsCommand) -> ExitCode {
    match command {
        AppsCommand::Import { file, name, app, store } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(error) => {
                    eprintln!("error: cannot read {}: {error}", file.display());
                    return ExitCode::from(USAGE);
                }
            };
            execute(&store, |store| async move {
                let imported = manage::import(&store, &text, name, app.as_deref()).await.map_err(|error| match error {
                    ManageError::InvalidDsl(errors) => {
                        ManageError::InvalidDsl(errors.into_iter().map(|error| format!("{}: {error}", file.display())).collect())
                    }
                    other => other,
                })?;
                Ok(Output::Json(imported.to_json()))
            })
        }
        AppsCommand::List { store } => execute(&store, |store| async move {
            let apps = store.apps().await?;
            Ok(Output::Lines(apps.iter().map(manage::app_json).collect()))
        }),
        AppsCommand::Get { app_id, store } => {
            execute(&store, |store| async move { Ok(Output::Json(manage::app_details(&store, &app_id).await?)) })
        }
        AppsCommand::Export { app_id, workflow_id, store } => {
            execute(&store, |store| async move { Ok(Output::Text(manage::export(&store, &app_id, workflow_id.as_deref()).await?)) })
        }
        AppsCommand::Delete { app_id, store } => execute(&store, |store| async move {
            store.delete_app(&app_id).await?;
            Ok(Output::Nothing)
        }),
        AppsCommand::Policy { app_id, log_detail, retention_days, limits, store } => {
            let limits = match limits.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose() {
                Ok(limits) => limits,
                Err(error) => {
                    eprintln!("error: --limits is not JSON: {error}");
                    return ExitCode::from(USAGE);
                }
            };
            let change = PolicyChange { log_detail, retention_days, limits };
            execute(&store, |store| async move {
                let app = manage::set_policy(&store, &app_id, change).await?;
                Ok(Output::Json(manage::policy_json(&app)))
            })
        }
    }
}

pub fn keys(command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Create { app_id, store } => execute(&store, |store| async move {
            let (key, token) = store.create_key(&app_id).await?;
            let mut value = manage::key_json(&key);
            value["api_key"] = token.into();
            Ok(Output::Json(value))
        }),
        KeysCommand::List { app_id, store } => execute(&store, |store| async move {
            store.app(&app_id).await?;
            Ok(Output::Lines(store.keys(&app_id).await?.iter().map(manage::key_json).collect()))
        }),
        KeysCommand::Revoke { app_id, key_id, store } => execute(&store, |store| async move {
            manage::revoke_key(&store, &app_id, &key_id).await?;
            Ok(Output::Nothing)
        }),
    }
}

pub fn runs(command: RunsCommand) -> ExitCode {
    match command {
        RunsCommand::List { app_id, status, limit, page, store } => execute(&store, |store| async move {
            store.app(&app_id).await?;
            let query = LogQuery { status, limit, page, ..LogQuery::default() };
            let page = store.runs(&app_id, &query).await?;
            Ok(Output::Lines(page.data.iter().map(manage::run_summary_json).collect()))
        }),
        RunsCommand::Get { app_id, run_id, store } => {
            execute(&store, |store| async move { Ok(Output::Json(manage::run_details(&store, &app_id, &run_id).await?)) })
        }
    }
}

async fn fail_orphaned_runs(store: &Store, instance_id: &str, instance_timeout: Duration) {
    match store.fail_orphaned_runs(instance_id, instance_timeout).await {
        Ok(0) => {}
        Ok(count) => tracing::warn!(count, "runs left running by a stopped server were marked failed"),
        Err(error) => tracing::error!(%error, "could not check for runs left by a stopped server"),
    }
}

/// Takes the embedded database's serve lock for this process's life.
fn lock_embedded(database: &std::path::Path) -> Result<std::fs::File, String> {
    let path = database.with_extension("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another `flowgate serve` uses the embedded database {}: stop it, or give each server its own --data-dir \
             (servers that share data need PostgreSQL: DATABASE_URL=postgres://…)",
            database.display()
        )),
        Err(std::fs::TryLockError::Error(error)) => Err(format!("cannot lock {}: {error}", path.display())),
    }
}

pub struct ServeOptions {
    pub max_body_bytes: usize,
    /// How long a shutdown waits for runs in progress.
    pub grace: Duration,
    pub allow_network: String,
    /// How long a silent server is presumed alive.
    pub instance_timeout: Duration,
    pub models: Option<std::path::PathBuf>,
    pub code: crate::code::CodeArgs,
    pub connections: crate::connections::ConnectionArgs,
}

pub fn serve(listen: std::net::SocketAddr, store: StoreArgs, options: ServeOptions) -> ExitCode {
    let ServeOptions { max_body_bytes, grace, allow_network, instance_timeout, models, code, connections } = options;
    let gateway = match models.as_deref().map(crate::models::load) {
        None => None,
        Some(Ok(gateway)) => Some(gateway),
        Some(Err(error)) => {
            eprintln!("error: {error}");
            return ExitCode::from(USAGE);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours).try_init();
    // Only from the environment: a command-line argument would show in every process listing.
    let admin_token = std::env::var("FLOWGATE_ADMIN_TOKEN").ok().map(|token| token.trim().to_owned()).filter(|token| !token.is_empty());
    if let Some(token) = &admin_token
        && token.chars().count() < crate::service::MIN_ADMIN_TOKEN_CHARS
    {
        eprintln!("error: FLOWGATE_ADMIN_TOKEN must be at least {} characters", crate::service::MIN_ADMIN_TOKEN_CHARS);
        return ExitCode::from(USAGE);
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let store = match open(&store).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        if admin_token.is_none() {
            tracing::info!("management API off: set FLOWGATE_ADMIN_TOKEN to enable /admin/v1");
        }
        // An embedded database serves one server at a time: the lock says so, and lets this
        // server fail every run its previous life left unfinished at once.
        let embedded_lock = match store.embedded_database() {
            Some(path) => match lock_embedded(&path) {
                Ok(lock) => Some(lock),
                Err(message) => {
                    eprintln!("error: {message}");
                    return ExitCode::from(FAILURE);
                }
            },
            None => None,
        };
        let instance_id = uuid::Uuid::new_v4().to_string();
        if let Err(error) = store.register_instance(&instance_id).await {
            eprintln!("error: {error}");
            return ExitCode::from(FAILURE);
        }
        if embedded_lock.is_some() {
            match store.fail_runs_of_previous_processes(&instance_id).await {
                Ok(0) => {}
                Ok(count) => tracing::warn!(count, "runs the previous server left unfinished were marked failed"),
                Err(error) => tracing::error!(%error, "could not check for runs the previous server left"),
            }
        }
        let policy = match IpPolicy::from_allow_list(&allow_network) {
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
        let files = crate::service::StoreFiles::new(store.clone(), egress.clone());
        let scraper =
            gateway.as_ref().and_then(|gateway| flowgate_models::http_client().ok().and_then(|client| gateway.start_scraper(client)));
        match &gateway {
            Some(gateway) => {
                tracing::info!(models = gateway.config().models.len(), "model gateway on")
            }
            None => tracing::info!("no models file (--models / FLOWGATE_MODELS): model nodes will fail until one is given"),
        }
        // Only from the environment: it is a secret.
        let sandbox_api_key = std::env::var("FLOWGATE_SANDBOX_API_KEY").ok().filter(|key| !key.trim().is_empty());
        let code_setup = crate::code::code_setup(&code, sandbox_api_key.is_some()).await;
        if sandbox_api_key.is_some() {
            tracing::info!("serving dify-sandbox's API at /v1/sandbox/run (FLOWGATE_SANDBOX_API_KEY)");
        }
        let ports = Ports {
            http: Some(Arc::new(egress)),
            model: gateway.clone().map(|gateway| {
                Arc::new(flowgate_models::GatewayPort::new(gateway, Some(files.clone() as Arc<dyn flowgate_engine::ports::FilePort>)))
                    as Arc<dyn flowgate_engine::ports::ModelPort>
            }),
            files: Some(files),
            code: Some(code_setup.port.clone()),
            ..Ports::default()
        };
        let state = match crate::service::ServerState::new(store.clone(), ports, instance_id.clone(), admin_token.as_deref()) {
            Ok(state) => Arc::new(state.with_gateway(gateway).with_sandbox_api(code_setup.local.clone(), sandbox_api_key.as_deref())),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(FAILURE);
            }
        };
        let heartbeat_store = store.clone();
        let heartbeat_id = instance_id.clone();
        // Every beat also looks for servers that stopped beating (killed replicas) and fails the
        // runs they left behind; but only once this server's own beats have reached the
        // database for a whole instance timeout: after an outage every server looks dead to
        // every other, and a live one gets this long to beat again before it is judged.
        let heartbeat = tokio::spawn(async move {
            let mut beating_since = Some(tokio::time::Instant::now());
            loop {
                tokio::time::sleep(instance_timeout / 3).await;
                match heartbeat_store.heartbeat(&heartbeat_id).await {
                    Ok(()) => {
                        let since = *beating_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= instance_timeout {
                            fail_orphaned_runs(&heartbeat_store, &heartbeat_id, instance_timeout).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "heartbeat failed");
                        beating_since = None;
                    }
                }
            }
        });
        let watched = state.clone();
        let config_watch = tokio::spawn(async move { watched.follow_config_changes().await });
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
        let result = crate::service::serve(state, listen, max_body_bytes, connections.limits(), grace).await;
        heartbeat.abort();
        config_watch.abort();
        if let Some(scraper) = scraper {
            scraper.abort();
        }
        purge.abort();
        let _ = store.unregister_instance(&instance_id).await;
        drop(embedded_lock);
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(FAILURE)
            }
        }
    })
}
