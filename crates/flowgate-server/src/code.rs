//! The code port behind `serve` and `run`: the local sandbox (Python and JavaScript), configured
//! from flags and the environment with the protections it got logged at start, or an existing
//! dify-sandbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use flowgate_engine::ports::{CodeCall, CodePort, PortError, PortErrorKind};
use flowgate_engine::value::Map;
use flowgate_sandbox::{DifySandbox, IsolationPolicy, Sandbox, SandboxConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct CodeArgs {
    /// The Python 3 interpreter code nodes run in.
    #[arg(long = "code-python", env = "FLOWGATE_CODE_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// `required`: code nodes refuse to run unless namespaces, seccomp and landlock are all
    /// active; `best-effort`: they run with what the machine offers (logged at start).
    #[arg(long = "code-isolation", env = "FLOWGATE_CODE_ISOLATION", default_value = "best-effort", value_parser = ["best-effort", "required"])]
    pub isolation: String,
    /// Code executions at once (default: the number of cores).
    #[arg(long = "code-workers", env = "FLOWGATE_CODE_WORKERS")]
    pub workers: Option<usize>,
    /// Seconds one execution may take (wall clock; CPU time is limited the same).
    #[arg(long = "code-timeout", env = "FLOWGATE_CODE_TIMEOUT", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Memory (address space) one execution may use, in MiB.
    #[arg(long = "code-memory-mb", env = "FLOWGATE_CODE_MEMORY_MB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(64..))]
    pub memory_mb: u64,
    /// Let code open network connections (`true`). They bypass the SSRF guard HTTP nodes use.
    #[arg(long = "code-network", env = "FLOWGATE_CODE_NETWORK", default_value_t = false, action = clap::ArgAction::Set)]
    pub network: bool,
    /// Modules every Python execution starts with already imported (comma-separated, e.g.
    /// `pandas,numpy`): the sandbox imports them once instead of on every execution.
    #[arg(long = "code-preload", env = "FLOWGATE_CODE_PRELOAD", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// Host folders code may read but not write (comma-separated), like a folder mounted into
    /// dify-sandbox (`/upload_files`).
    #[arg(long = "code-read-path", env = "FLOWGATE_CODE_READ_PATHS", value_delimiter = ',')]
    pub read_paths: Vec<PathBuf>,
    /// A cgroup v2 folder delegated to flowgate (e.g. systemd `Delegate=yes`), in which each code
    /// worker gets a group with the execution's limits; on cgroup v1 the server's own groups are
    /// used without it.
    #[arg(long = "code-cgroup", env = "FLOWGATE_CODE_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// Send code nodes to an existing dify-sandbox (e.g. `http://sandbox:8194`) instead of
    /// running them here; its key comes from `CODE_EXECUTION_API_KEY` (Dify's default:
    /// `dify-sandbox`).
    #[arg(long = "code-endpoint", env = "CODE_EXECUTION_ENDPOINT")]
    pub endpoint: Option<String>,
}

/// The code port, and the local sandbox behind it when code runs here.
pub struct CodeSetup {
    pub port: Arc<dyn CodePort>,
    pub local: Option<Sandbox>,
}

/// Code nodes fail with this port's reason when the sandbox could not start.
struct Unavailable(String);

impl CodePort for Unavailable {
    fn execute(&self, _call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        let message = self.0.clone();
        Box::pin(async move { Err(PortError::new(PortErrorKind::Refused, message)) })
    }
}

/// The code port: a remote dify-sandbox when `--code-endpoint` names one, else the local
/// sandbox (also when `serve_api` needs it to serve dify-sandbox's API).
pub async fn code_setup(args: &CodeArgs, serve_api: bool) -> CodeSetup {
    let remote = match args.endpoint.as_deref().filter(|endpoint| !endpoint.trim().is_empty()) {
        None => None,
        Some(endpoint) => {
            // Only from the environment, as Dify reads it.
            let key = std::env::var("CODE_EXECUTION_API_KEY").unwrap_or_else(|_| "dify-sandbox".into());
            match DifySandbox::new(endpoint, &key) {
                Ok(remote) => {
                    tracing::info!(endpoint, "code nodes run on the dify-sandbox at CODE_EXECUTION_ENDPOINT");
                    Some(Arc::new(remote) as Arc<dyn CodePort>)
                }
                Err(error) => Some(Arc::new(Unavailable(format!("not available: code nodes: {error}"))) as Arc<dyn CodePort>),
            }
        }
    };
    if let (Some(port), false) = (&remote, serve_api) {
        return CodeSetup { port: port.clone(), local: None };
    }
    let (local_port, local) = local_sandbox(args).await;
    CodeSetup { port: remote.unwrap_or(local_port), local }
}

/// Starts the sandbox; when it cannot start, code nodes fail saying why and the rest serves on.
pub async fn code_port(args: &CodeArgs) -> Arc<dyn CodePort> {
    code_setup(args, false).await.port
}

async fn local_sandbox(args: &CodeArgs) -> (Arc<dyn CodePort>, Option<Sandbox>) {
    // Unique even when pids repeat (each container starts its server as pid 1); holds nothing
    // while the sandbox runs (every execution writes into a tmpfs of its own) and is removed
    // with the sandbox.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    let scratch = std::env::temp_dir().join(format!("flowgate-code-{}-{nonce:x}", std::process::id()));
    let mut config = SandboxConfig::new(scratch);
    config.python = args.python.clone();
    if let Some(workers) = args.workers {
        config.workers = workers.max(1);
    }
    config.timeout = Duration::from_secs(args.timeout);
    config.memory_bytes = args.memory_mb * 1024 * 1024;
    config.network = args.network;
    config.cgroup_parent = args.cgroup.clone();
    config.preload = args.preload.iter().map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()).collect();
    config.read_paths = args.read_paths.iter().map(|path| std::path::absolute(path).unwrap_or_else(|_| path.clone())).collect();
    for path in &config.read_paths {
        if !path.exists() {
            tracing::warn!(path = %path.display(), "FLOWGATE_CODE_READ_PATHS names a path that does not exist (yet); code sees it once it does");
        }
    }
    config.isolation = if args.isolation == "required" { IsolationPolicy::Required } else { IsolationPolicy::BestEffort };
    match Sandbox::start(config).await {
        Ok(sandbox) => {
            let protections = sandbox.protections();
            let missing = protections.missing();
            if missing.is_empty() {
                tracing::info!(protections = %protections.describe(), "code sandbox on");
            } else {
                tracing::warn!(
                    protections = %protections.describe(),
                    "code sandbox on WITHOUT {}: set FLOWGATE_CODE_ISOLATION=required to refuse code nodes instead",
                    missing.join(" and ")
                );
            }
            match sandbox.javascript_protections() {
                Ok(javascript) if javascript.seccomp && javascript.off.is_empty() => {
                    tracing::info!(protections = %javascript.describe(), "JavaScript sandbox on");
                }
                Ok(javascript) => tracing::warn!(protections = %javascript.describe(), "JavaScript sandbox on with protections off"),
                Err(reason) => tracing::warn!(%reason, "JavaScript code nodes will fail"),
            }
            for failure in &protections.preload_failures {
                tracing::warn!(module = %failure, "FLOWGATE_CODE_PRELOAD: cannot import; code importing it fails the same way");
            }
            if args.network {
                tracing::warn!("code nodes may open network connections (FLOWGATE_CODE_NETWORK); they bypass the SSRF guard");
            }
            (Arc::new(sandbox.clone()), Some(sandbox))
        }
        Err(error) => {
            tracing::warn!(%error, "code nodes will fail");
            (Arc::new(Unavailable(format!("not available: Python code nodes: {error}"))), None)
        }
    }
}
