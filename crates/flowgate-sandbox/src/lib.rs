//! Code nodes' sandbox. Python runs in a pool of warm CPython "zygotes" that fork one child per
//! execution; each child locks itself down (rlimits, dropped privileges, no_new_privs,
//! landlock, seccomp) before the user's code runs, so a fork costs a few milliseconds and no
//! execution sees another's state. The protections a kernel offers are detected when the first
//! zygote starts; [`IsolationPolicy::Required`] refuses to run code without all of them.

mod python;
mod result;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use flowgate_engine::ports::{CodeCall, CodePort, PortError, PortErrorKind};
use flowgate_engine::value::Map;

pub use python::{Protections, PythonPool};

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
    pub isolation: IsolationPolicy,
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
            isolation: IsolationPolicy::BestEffort,
        }
    }
}

/// The code port: Python through the zygote pool; JavaScript is not served yet.
#[derive(Clone)]
pub struct Sandbox {
    python: Arc<PythonPool>,
}

impl Sandbox {
    /// Starts the first zygote, so the protections are known (and logged) before any run.
    pub async fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        let python = Arc::new(PythonPool::start(config).await?);
        Ok(Self { python })
    }

    pub fn protections(&self) -> &Protections {
        self.python.protections()
    }

    /// Process ids of the running Python zygotes.
    pub async fn zygote_pids(&self) -> Vec<u32> {
        self.python.zygote_pids().await
    }
}

impl CodePort for Sandbox {
    fn execute(&self, call: CodeCall) -> BoxFuture<'static, Result<Map, PortError>> {
        let python = self.python.clone();
        Box::pin(async move {
            match call.language.as_str() {
                "python3" => python.execute(&call.code, &call.inputs).await,
                "javascript" => Err(PortError::new(PortErrorKind::InvalidRequest, "not supported yet: JavaScript code nodes")),
                other => Err(PortError::new(PortErrorKind::InvalidRequest, format!("Unsupported code language: {other}"))),
            }
        })
    }
}
