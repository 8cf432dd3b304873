//! `flowgate`: run Dify apps from the command line.

mod admin_cli;
mod api_error;
mod cache;
mod code;
mod connections;
mod files;
mod limits;
mod manage;
mod metrics;
mod models;
mod service;
mod wire;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value as Json, json};

use flowgate_dsl::{AppMode, Document};
use flowgate_egress::{EgressClient, IpPolicy};
use flowgate_engine::inputs::{RunRequest, prepare_inputs};
use flowgate_engine::mock::MockPorts;
use flowgate_engine::nodes::Capability;
use flowgate_engine::value::MapRef;
use flowgate_engine::{Engine, Limits, Plan, Ports, RunEvent};

use crate::wire::{Envelope, WireContext};

/// Secrets are read from the environment only: a command-line argument is visible to every
/// user of the machine in `ps`.
const SERVE_ENVIRONMENT: &str = "\
Read from the environment only (secrets stay out of the command line, which `ps` shows):
  FLOWGATE_ADMIN_TOKEN      Enables the management API at /admin/v1 (Bearer token, at least 16
                            characters); without it the management API is off
  FLOWGATE_SANDBOX_API_KEY  Serves dify-sandbox's API at /v1/sandbox/run with this X-Api-Key;
                            without it that API is off
  CODE_EXECUTION_API_KEY    The key for a remote dify-sandbox named by --code-endpoint
                            (default: dify-sandbox, as Dify's)
  FLOWGATE_LOG              Log filter in RUST_LOG's syntax, e.g. `info,flowgate_store=debug`
                            (default: info)";

#[derive(Parser)]
#[command(name = "flowgate", version, about = "Run Dify apps: check and run DSL exports")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate DSL files: one line per file, `ok FILE` or `error FILE: MESSAGE`, plus warnings.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Serve the apps in the store over Dify's Service API.
    #[command(after_help = SERVE_ENVIRONMENT)]
    Serve {
        /// The address to listen on; the default 0.0.0.0 accepts connections on every network
        /// interface (127.0.0.1:5001 keeps the server to this machine).
        #[arg(long, env = "FLOWGATE_LISTEN", default_value = "0.0.0.0:5001")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        store: admin_cli::StoreArgs,
        /// The largest request body accepted, in bytes.
        #[arg(long, env = "FLOWGATE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
        max_body_bytes: usize,
        /// How long a shutdown waits for runs in progress, in seconds.
        #[arg(long, env = "FLOWGATE_SHUTDOWN_GRACE", default_value_t = 30)]
        shutdown_grace: u64,
        /// Addresses HTTP nodes may reach although they are not public (CIDRs, comma-separated).
        #[arg(long, env = "FLOWGATE_EGRESS_ALLOW", default_value = "")]
        allow_network: String,
        /// After how many seconds without a heartbeat a server (replica) is presumed dead and
        /// its unfinished runs are marked failed.
        #[arg(long, env = "FLOWGATE_INSTANCE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
        instance_timeout: u64,
        /// The models file: logical models, their targets and the Dify provider mapping (see
        /// docs/gateway.md). Without it, model nodes fail with a clear error.
        #[arg(long, env = "FLOWGATE_MODELS")]
        models: Option<PathBuf>,
        #[command(flatten)]
        code: code::CodeArgs,
        #[command(flatten)]
        connections: connections::ConnectionArgs,
    },
    /// Bring the database schema up to date and exit.
    Migrate {
        #[command(flatten)]
        store: admin_cli::StoreArgs,
    },
    /// Import, list, show, export and delete apps; set their policy.
    Apps {
        #[command(subcommand)]
        command: admin_cli::AppsCommand,
    },
    /// Issue, list and revoke app API keys.
    Keys {
        #[command(subcommand)]
        command: admin_cli::KeysCommand,
    },
    /// Browse an app's runs and their node executions.
    Runs {
        #[command(subcommand)]
        command: admin_cli::RunsCommand,
    },
    /// Run a workflow or chatflow DSL once and print its result as JSON.
    Run {
        file: PathBuf,
        /// The run's inputs as a JSON object.
        #[arg(long, default_value = "{}")]
        inputs: String,
        /// The user's message (chatflows).
        #[arg(long)]
        query: Option<String>,
        /// The end user (`sys.user_id`).
        #[arg(long, default_value = "cli-user")]
        user: String,
        /// Print the event stream first, as NDJSON in the Service API's SSE payload shapes.
        #[arg(long)]
        events: bool,
        /// Answers for model, tool, agent, knowledge and code nodes: JSON `{node_id: value}`, or
        /// `@FILE`.
        #[arg(long)]
        mocks: Option<String>,
        /// Addresses HTTP nodes may reach although they are not public (CIDRs, comma-separated).
        #[arg(long, env = "FLOWGATE_EGRESS_ALLOW", default_value = "")]
        allow_network: String,
        /// Dify's WORKFLOW_MAX_EXECUTION_STEPS.
        #[arg(long, env = "WORKFLOW_MAX_EXECUTION_STEPS", default_value_t = 500)]
        max_steps: u64,
        /// Dify's WORKFLOW_MAX_EXECUTION_TIME, in seconds.
        #[arg(long, env = "WORKFLOW_MAX_EXECUTION_TIME", default_value_t = 1200)]
        max_time: u64,
        /// The models file for model nodes (`--mocks` answers take precedence).
        #[arg(long, env = "FLOWGATE_MODELS")]
        models: Option<PathBuf>,
        #[command(flatten)]
        code: code::CodeArgs,
    },
}

/// glibc's allocator spends a third of a busy server's CPU consolidating and searching free
/// lists (measured in docs/benchmarks.md); mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The sandbox's JavaScript workers are this binary too; they lock down before anything else.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == flowgate_sandbox::JAVASCRIPT_WORKER_ARG) {
        return flowgate_sandbox::javascript_worker_main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Serve { listen, store, max_body_bytes, shutdown_grace, allow_network, instance_timeout, models, code, connections } => {
            admin_cli::serve(
                listen,
                store,
                admin_cli::ServeOptions {
                    max_body_bytes,
                    grace: Duration::from_secs(shutdown_grace),
                    allow_network,
                    instance_timeout: Duration::from_secs(instance_timeout),
                    models,
                    code,
                    connections,
                },
            )
        }
        Command::Migrate { store } => admin_cli::migrate(store),
        Command::Apps { command } => admin_cli::apps(command),
        Command::Keys { command } => admin_cli::keys(command),
        Command::Runs { command } => admin_cli::runs(command),
        Command::Run { file, inputs, query, user, events, mocks, allow_network, max_steps, max_time, models, code } => {
            let options = RunOptions { inputs, query, user, events, mocks, allow_network, max_steps, max_time, models, code };
            run(&file, options)
        }
    }
}

const USAGE_ERROR: u8 = 2;

fn check(files: &[PathBuf]) -> ExitCode {
    let mut all_ok = true;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in files {
        let shown = path.display();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                all_ok = false;
                let _ = writeln!(out, "error {shown}: cannot read the file: {error}");
                continue;
            }
        };
        let document = match Document::load(&text) {
            Ok(document) => document,
            Err(error) => {
                all_ok = false;
                let _ = writeln!(out, "error {shown}: {error}");
                continue;
            }
        };
        let diagnostics = document.diagnostics();
        let errors: Vec<String> = diagnostics.iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
        if errors.is_empty() {
            let _ = writeln!(out, "ok {shown}");
        } else {
            all_ok = false;
            let _ = writeln!(out, "error {shown}: {}", errors.join("; "));
        }
        for warning in diagnostics.iter().filter(|d| !d.is_error()) {
            let _ = writeln!(out, "warning {shown}: {warning}");
        }
        if errors.is_empty()
            && let Ok(plan) = Plan::compile(&document)
        {
            for (node_id, node_type, capability) in plan.required_capabilities() {
                if matches!(capability, Capability::Http | Capability::Files | Capability::Code) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "warning {shown}: node '{node_id}' ({node_type}) needs {}; it fails until one is configured",
                    capability.describe()
                );
            }
        }
    }
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

struct RunOptions {
    inputs: String,
    query: Option<String>,
    user: String,
    events: bool,
    mocks: Option<String>,
    allow_network: String,
    max_steps: u64,
    max_time: u64,
    models: Option<PathBuf>,
    code: code::CodeArgs,
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(USAGE_ERROR)
}

fn read_json_argument(value: &str, what: &str) -> Result<Json, String> {
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|error| format!("cannot read {what} file {path}: {error}"))?,
        None => value.to_owned(),
    };
    serde_json::from_str(&text).map_err(|error| format!("{what} is not valid JSON: {error}"))
}

fn run(path: &PathBuf, options: RunOptions) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return usage_error(format!("cannot read {}: {error}", path.display())),
    };
    let document = match Document::load(&text) {
        Ok(document) => document,
        Err(error) => return usage_error(format!("{}: {error}", path.display())),
    };
    let errors = document.errors();
    if !errors.is_empty() {
        for diagnostic in &errors {
            eprintln!("error {}: {diagnostic}", path.display());
        }
        return ExitCode::from(USAGE_ERROR);
    }
    let inputs = match read_json_argument(&options.inputs, "--inputs") {
        Ok(Json::Object(map)) => flowgate_engine::value::map_from_json(&map),
        Ok(_) => return usage_error("--inputs must be a JSON object"),
        Err(error) => return usage_error(error),
    };
    let mocks = match options.mocks.as_deref().map(|value| read_json_argument(value, "--mocks")) {
        None => None,
        Some(Ok(Json::Object(map))) => Some(map),
        Some(Ok(_)) => return usage_error("--mocks must be a JSON object"),
        Some(Err(error)) => return usage_error(error),
    };
    let policy = match IpPolicy::from_allow_list(&options.allow_network) {
        Ok(policy) => policy,
        Err(error) => return usage_error(format!("--allow-network: {error}")),
    };
    let egress = match EgressClient::new(policy) {
        Ok(egress) => egress,
        Err(error) => return usage_error(error),
    };
    let mode = document.app.mode;
    let plan = match Plan::compile(&document) {
        Ok(plan) => Arc::new(plan),
        Err(error) => {
            print_result(&json!({"status": "failed", "outputs": {}, "error": error.to_string()}));
            return ExitCode::FAILURE;
        }
    };
    let prepared = match prepare_inputs(&plan.start_variables, &inputs, None) {
        Ok(prepared) => prepared,
        Err(error) => return usage_error(format!("input '{}': {}", error.variable, error.message)),
    };
    let gateway = match options.models.as_deref().map(models::load) {
        None => None,
        Some(Ok(gateway)) => Some(gateway),
        Some(Err(error)) => return usage_error(error),
    };
    let files_dir = std::env::temp_dir().join("flowgate-files");
    let files: Arc<dyn flowgate_engine::ports::FilePort> = Arc::new(files::LocalFiles::new(files_dir, egress.clone()));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return usage_error(format!("cannot start the runtime: {error}")),
    };
    // Python starts only for a workflow with code nodes.
    let needs_code = plan.required_capabilities().iter().any(|(_, _, capability)| *capability == Capability::Code);
    let base = Ports {
        http: Some(Arc::new(egress)),
        model: gateway.map(|gateway| {
            Arc::new(flowgate_models::GatewayPort::new(gateway, Some(files.clone()))) as Arc<dyn flowgate_engine::ports::ModelPort>
        }),
        files: Some(files),
        code: if needs_code { Some(runtime.block_on(code::code_port(&options.code))) } else { None },
        ..Ports::default()
    };
    let ports = match mocks {
        Some(mocks) => MockPorts::new(mocks).ports(base),
        None => base,
    };
    let engine = Engine::new(ports).with_limits(Limits { max_steps: options.max_steps, max_time: Duration::from_secs(options.max_time) });
    let run_id = uuid::Uuid::new_v4().to_string();
    let request = RunRequest {
        query: options.query.clone(),
        user_id: options.user.clone(),
        app_id: "cli-app".into(),
        workflow_id: "cli-workflow".into(),
        run_id: Some(run_id.clone()),
        conversation_id: mode.is_chat().then(|| uuid::Uuid::new_v4().to_string()),
        dialogue_count: mode.is_chat().then_some(1),
        ..RunRequest::default()
    };
    let message_id = uuid::Uuid::new_v4().to_string();
    let envelope = match (mode, &request.conversation_id) {
        (AppMode::Workflow, _) => Envelope::Workflow,
        (AppMode::AdvancedChat, Some(conversation_id)) => Envelope::Chat { conversation_id: conversation_id.clone(), message_id },
        (mode, conversation_id) => Envelope::Message {
            conversation_id: conversation_id.clone(),
            message_id,
            agent_thought: (mode == AppMode::AgentChat).then(|| uuid::Uuid::new_v4().to_string()),
        },
    };
    let wire =
        WireContext { task_id: uuid::Uuid::new_v4().to_string(), run_id, user: options.user, end_user_id: "cli-user".into(), envelope };
    let print_events = options.events;
    let mut sink = move |event: RunEvent| {
        if print_events {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for payload in wire.encode(&event) {
                let _ = out.write_all(&payload);
                let _ = out.write_all(b"\n");
            }
        }
    };
    let summary = runtime.block_on(engine.run_prepared(&plan, prepared, &request, &mut sink, None));
    let mut result = serde_json::Map::new();
    result.insert("status".into(), summary.status.as_str().into());
    result.insert("outputs".into(), serde_json::to_value(MapRef(&summary.outputs)).unwrap_or(Json::Null));
    result.insert("error".into(), summary.error.clone().map_or(Json::Null, Json::from));
    if mode.is_chat() {
        result.insert("answer".into(), summary.answer.clone().into());
    }
    print_result(&Json::Object(result));
    if summary.status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn print_result(result: &Json) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "{result}");
}
