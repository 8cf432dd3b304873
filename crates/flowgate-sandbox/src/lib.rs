//! Code nodes' sandbox. Python runs in a pool of warm CPython "zygotes" that fork one child per
//! execution; each child locks itself down (rlimits, dropped privileges, no_new_privs,
//! landlock, seccomp) before the user's code runs, so a fork costs a few milliseconds and no
//! execution sees another's state. The protections a kernel offers are detected when the first
//! zygote starts; [`IsolationPolicy::Required`] refuses to run code without all of them.
//! JavaScript runs in QuickJS in-process, with a memory limit and an interrupt deadline.

mod javascript;
mod python;
mod remote;
mod result;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use flowgate_engine::ports::{CodeCall, CodePort, PortError, PortErrorKind};
use flowgate_engine::value::Map;

pub use python::{Protections, PythonPool, ScriptOutput};
pub use remote::{DifySandbox, javascript_runner, python_runner, result_between_markers};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the Python sandbox with {python}: {reason}")]
    Start { python: String, reason: String },
    #[error("the Python sandbox stopped answering: {0}")]
    Broken(String),
    #[error("not running code: the sandbox lacks {missing}, and FLOWGATE_CODE_ISOLATION=required")]
    IsolationMissing { missing: String },
}

/// The most memory one JavaScript execution may use, whatever `memory_bytes` says.
pub const JAVASCRIPT_MEMORY_CAP: u64 = 128 * 1024 * 1024;

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
    /// Use seccomp / landlock when the kernel offers them. Turning one off is for a kernel whose
    /// implementation misbehaves; [`IsolationPolicy::Required`] then refuses to run code.
    pub seccomp: bool,
    pub landlock: bool,
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
        }
    }
}

/// The code port: Python through the zygote pool, JavaScript in QuickJS.
#[derive(Clone)]
pub struct Sandbox {
    python: Arc<PythonPool>,
    javascript: Arc<javascript::JavaScript>,
}

impl Sandbox {
    /// Starts the first zygote, so the protections are known (and logged) before any run.
    pub async fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        // JavaScript runs inside the server's process, so it gets a tighter memory bound.
        let javascript_memory = config.memory_bytes.min(JAVASCRIPT_MEMORY_CAP);
        let javascript = Arc::new(javascript::JavaScript::new(config.workers, config.timeout, javascript_memory));
        let python = Arc::new(PythonPool::start(config).await?);
        Ok(Self { python, javascript })
    }

    pub fn protections(&self) -> &Protections {
        self.python.protections()
    }

    /// Runs a whole program the way dify-sandbox does (`python3` or `nodejs`): Dify's wrappers
    /// print the result between `<<RESULT>>` markers. Network only when the sandbox allows it.
    pub async fn run_script(&self, language: &str, code: &str, preload: &str, network: bool) -> Result<ScriptOutput, PortError> {
        match language {
            "python3" => self.python.run_script(code, preload, network).await,
            "nodejs" | "javascript" => self.javascript.run_script(code, preload).await,
            other => Err(PortError::new(PortErrorKind::InvalidRequest, format!("unsupported language {other}"))),
        }
    }

    /// Process ids of the running Python zygotes.
    pub async fn zygote_pids(&self) -> Vec<u32> {
        self.python.zygote_pids().await
    }
}

impl CodePort for Sandbox {
    fn execute(&self, call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        let (python, javascript) = (self.python.clone(), self.javascript.clone());
        Box::pin(async move {
            match call.language.as_str() {
                "python3" => python.execute(&call.code, &call.inputs).await,
                "javascript" => javascript.execute(&call.code, &call.inputs).await,
                other => Err(PortError::new(PortErrorKind::InvalidRequest, format!("Unsupported code language: {other}"))),
            }
        })
    }
}
