//! Code nodes' sandbox. Python runs in a pool of warm CPython "zygotes" that fork one child per
//! execution; each child gets namespaces of its own (pid, user, mount, IPC, UTS, network), a
//! cgroup, rlimits, no capabilities, landlock and a seccomp allow-list before the user's code
//! runs, so a fork costs a few milliseconds and no execution sees another's state, processes or
//! limits. JavaScript runs in QuickJS in locked-down worker processes that are killed at the
//! deadline. The protections a machine offers are detected when the first zygote and worker
//! start; [`IsolationPolicy::Required`] refuses to run code without all of them.

mod javascript;
mod python;
mod remote;
mod result;
pub mod seccomp;
mod syscalls;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use flowgate_engine::ports::{CodeCall, CodePort, PortError, PortErrorKind};
use flowgate_engine::value::Map;

pub use javascript::{JavaScriptProtections, WorkerCommand};
pub use python::{Protections, PythonPool, ScriptOutput};
pub use remote::{DifySandbox, javascript_runner, python_runner, result_between_markers};
pub use worker::javascript_worker_main;

/// The `flowgate` argument that runs a JavaScript worker instead of the command line.
pub const JAVASCRIPT_WORKER_ARG: &str = "__javascript-worker";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the Python sandbox with {python}: {reason}")]
    Start { python: String, reason: String },
    #[error("the Python sandbox stopped answering: {0}")]
    Broken(String),
    #[error("not running code: the sandbox lacks {missing}, and FLOWGATE_CODE_ISOLATION=required")]
    IsolationMissing { missing: String },
}

/// Whether code may run when the kernel cannot give every protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationPolicy {
    /// Run with what is available (and say so at start).
    BestEffort,
    /// Refuse to run code without seccomp, landlock and dropped privileges.
    Required,
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The interpreter; `python3` is looked up on `PATH`.
    pub python: PathBuf,
    /// Zygotes, each running one execution at a time.
    pub workers: usize,
    /// Wall-clock limit per execution (CPU time is limited to the same, rounded up to seconds).
    pub timeout: Duration,
    /// Address-space limit per execution.
    pub memory_bytes: u64,
    /// The largest file an execution may write in its scratch directory.
    pub max_file_bytes: u64,
    /// Whether code may open sockets (outbound requests from code bypass the SSRF guard).
    pub network: bool,
    /// Where executions' private scratch directories are made.
    pub scratch: PathBuf,
    /// Modules each zygote imports before it forks (besides what Dify's sandbox offers), so code
    /// importing a heavy package such as pandas does not pay for the import on every execution.
    pub preload: Vec<String>,
    /// Host folders code may read (not write), like a folder mounted into dify-sandbox.
    pub read_paths: Vec<PathBuf>,
    pub isolation: IsolationPolicy,
    /// Use seccomp / landlock / namespaces / cgroups when the machine offers them. Turning one
    /// off is for a kernel whose implementation misbehaves; [`IsolationPolicy::Required`] then
    /// refuses to run code (cgroups excepted: rlimits bound an execution without them).
    pub seccomp: bool,
    pub landlock: bool,
    pub namespaces: bool,
    pub cgroups: bool,
    /// A cgroup v2 folder delegated to flowgate, where each execution gets a group of its own
    /// (on cgroup v1 the server's own groups are used without it).
    pub cgroup_parent: Option<PathBuf>,
    /// How JavaScript worker processes are started.
    pub javascript_worker: WorkerCommand,
}

impl SandboxConfig {
    pub fn new(scratch: PathBuf) -> Self {
        Self {
            python: PathBuf::from("python3"),
            workers: std::thread::available_parallelism().map_or(2, |cores| cores.get()).max(2),
            timeout: Duration::from_secs(15),
            memory_bytes: 512 * 1024 * 1024,
            max_file_bytes: 16 * 1024 * 1024,
            network: false,
            scratch,
            preload: Vec::new(),
            read_paths: Vec::new(),
            isolation: IsolationPolicy::BestEffort,
            seccomp: true,
            landlock: true,
            namespaces: true,
            cgroups: true,
            cgroup_parent: None,
            javascript_worker: WorkerCommand::current_exe(&[JAVASCRIPT_WORKER_ARG]),
        }
    }
}

/// The code port: Python through the zygote pool, JavaScript in QuickJS workers.
#[derive(Clone)]
pub struct Sandbox {
    python: Arc<PythonPool>,
    /// The worker pool, or why JavaScript cannot run.
    javascript: Result<Arc<javascript::JavaScript>, String>,
}

impl Sandbox {
    /// Starts the first zygote and JavaScript worker, so the protections are known (and logged)
    /// before any run. JavaScript that cannot start fails its nodes with the reason; Python that
    /// cannot start is an error.
    pub async fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        let required = config.isolation == IsolationPolicy::Required;
        let javascript =
            javascript::JavaScript::start(config.javascript_worker.clone(), config.workers, config.timeout, config.memory_bytes)
                .await
                .and_then(|pool| {
                    if required && !pool.protections().seccomp {
                        return Err("not running JavaScript: its worker lacks seccomp, and FLOWGATE_CODE_ISOLATION=required".into());
                    }
                    Ok(Arc::new(pool))
                });
        let python = Arc::new(PythonPool::start(config).await?);
        Ok(Self { python, javascript })
    }

    pub fn protections(&self) -> &Protections {
        self.python.protections()
    }

    /// The JavaScript workers' protections, or why JavaScript cannot run.
    pub fn javascript_protections(&self) -> Result<&JavaScriptProtections, &str> {
        self.javascript.as_ref().map(|pool| pool.protections()).map_err(String::as_str)
    }

    fn javascript(&self) -> Result<Arc<javascript::JavaScript>, PortError> {
        self.javascript
            .clone()
            .map_err(|reason| PortError::new(PortErrorKind::Refused, format!("not available: JavaScript code nodes: {reason}")))
    }

    /// Runs a whole program the way dify-sandbox does (`python3` or `nodejs`): Dify's wrappers
    /// print the result between `<<RESULT>>` markers. Network only when the sandbox allows it.
    pub async fn run_script(&self, language: &str, code: &str, preload: &str, network: bool) -> Result<ScriptOutput, PortError> {
        match language {
            "python3" => self.python.run_script(code, preload, network).await,
            "nodejs" | "javascript" => self.javascript()?.run_script(code, preload).await,
            other => Err(PortError::new(PortErrorKind::InvalidRequest, format!("unsupported language {other}"))),
        }
    }

    /// Process ids of the running Python zygotes.
    pub async fn zygote_pids(&self) -> Vec<u32> {
        self.python.zygote_pids().await
    }

    /// Process ids of the running JavaScript workers.
    pub async fn javascript_pids(&self) -> Vec<u32> {
        match &self.javascript {
            Ok(pool) => pool.pids().await,
            Err(_) => Vec::new(),
        }
    }
}

impl CodePort for Sandbox {
    fn execute(&self, call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        let (python, javascript) = (self.python.clone(), self.javascript());
        Box::pin(async move {
            match call.language.as_str() {
                "python3" => python.execute(&call.code, &call.inputs).await,
                "javascript" => javascript?.execute(&call.code, &call.inputs).await,
                other => Err(PortError::new(PortErrorKind::InvalidRequest, format!("Unsupported code language: {other}"))),
            }
        })
    }
}
