//! The pool of Python zygotes and the frames exchanged with them (see `zygote.py`).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;

use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, Semaphore};

use flowgate_engine::ports::{PortError, PortErrorKind};
use flowgate_engine::value::{Map, MapRef};

use crate::{IsolationPolicy, SandboxConfig, SandboxError, seccomp};

const ZYGOTE_SOURCE: &str = include_str!("zygote.py");
/// A frame larger than this is a broken zygote (results are capped at 64 MiB inside).
const MAX_FRAME_BYTES: usize = 160 * 1024 * 1024;
/// How long a zygote may take to import its modules and answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed beyond an execution's own limit for the zygote to report it.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// What the kernel and the interpreter allow the sandbox to do, reported by a zygote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protections {
    pub python_version: String,
    /// 0 when landlock is not available.
    pub landlock_abi: u32,
    /// Whether the seccomp allow-list is installed in every child.
    pub seccomp: bool,
    /// Who the code runs as: `uid 65534 (nobody) in its own user namespace`, or without
    /// namespaces `uid 65534`, `capabilities` (root kept its uid but lost every capability) or
    /// `not root`.
    pub privileges: String,
    /// The namespaces each execution gets of its own (`user`, `pid`, `mount`, `ipc`, `uts`, and
    /// `net` unless code may use the network); empty when the kernel or the user refuses them.
    pub namespaces: Vec<String>,
    /// How executions without network get their (empty) network namespace: `a new one per
    /// execution`, or one per worker that the seccomp filter keeps every execution from changing.
    pub network_namespace: String,
    /// `v1 cpu,memory,pids` or `v2 …` when each execution has a cgroup of its own; empty when
    /// rlimits alone bound it.
    pub cgroups: String,
    /// What is off, and why (`namespaces`: `not root`, …).
    pub off: Vec<(String, String)>,
    /// The paths code may read (the rest of the host's file system does not exist for it).
    pub read_paths: Vec<String>,
    /// Whether code may open sockets.
    pub network: bool,
    /// The configured preload modules that failed to import, each with why.
    pub preload_failures: Vec<String>,
}

impl Protections {
    /// The protections `FLOWGATE_CODE_ISOLATION=required` needs that are missing, by name;
    /// empty when all are active.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.seccomp {
            missing.push("seccomp");
        }
        if self.landlock_abi == 0 {
            missing.push("landlock");
        }
        let mut wanted = vec!["user", "pid", "mount", "ipc"];
        if !self.network {
            wanted.push("net");
        }
        if !wanted.iter().all(|name| self.namespaces.iter().any(|have| have == name)) {
            missing.push("namespaces");
        }
        missing
    }

    pub fn describe(&self) -> String {
        let mut namespaces = if self.namespaces.is_empty() { "OFF".to_owned() } else { self.namespaces.join(",") };
        if !self.network_namespace.is_empty() {
            namespaces.push_str(&format!(" (net: {})", self.network_namespace));
        }
        let cgroups = if self.cgroups.is_empty() { "OFF (rlimits only)".to_owned() } else { self.cgroups.clone() };
        let mut text = format!(
            "Python {}: namespaces {namespaces}, {}, seccomp {}, landlock {}, cgroups {cgroups}, rlimits on, no_new_privs on, {} read paths, network {}",
            self.python_version,
            self.privileges,
            if self.seccomp { "allow-list" } else { "OFF" },
            if self.landlock_abi > 0 { format!("on (ABI {})", self.landlock_abi) } else { "OFF".into() },
            self.read_paths.len(),
            if self.network { "ON" } else { "off" },
        );
        for (what, why) in &self.off {
            text.push_str(&format!("; {what} off: {why}"));
        }
        text
    }
}

/// The parts of a zygote's configuration that are the same for every zygote of a pool: the
/// seccomp programs, and the numbers of the calls the zygote makes itself.
fn zygote_setup(config: &SandboxConfig) -> Json {
    let encode = |program: &seccomp::Program| json!({"program": base64::engine::general_purpose::STANDARD.encode(&program.bytes), "own_pid_slots": program.own_pid_slots});
    let compiled = |network: bool| -> Option<Json> {
        let policy = seccomp::python_policy(network);
        Some(json!({
            "errno": encode(&seccomp::compile(&policy, seccomp::Refusal::Errno)?),
            "notify": encode(&seccomp::compile(&policy, seccomp::Refusal::Notify)?),
        }))
    };
    let seccomp = match (config.seccomp, compiled(false), compiled(true)) {
        (true, Some(offline), Some(online)) => json!({
            "offline": offline,
            "online": online,
            "names": seccomp::names().map(|(number, name)| (number.to_string(), Json::from(name))).collect::<serde_json::Map<_, _>>(),
        }),
        _ => Json::Null,
    };
    let syscalls: serde_json::Map<String, Json> = [
        "pivot_root",
        "capset",
        "seccomp",
        "pidfd_getfd",
        "open_tree",
        "move_mount",
        "ptrace",
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ]
    .into_iter()
    .filter_map(|name| Some((name.to_owned(), Json::from(seccomp::number_of(name)?))))
    .collect();
    json!({
        "scratch": config.scratch,
        "max_file_bytes": config.max_file_bytes,
        "network": config.network,
        "timeout_ms": config.timeout.as_millis() as u64,
        "memory_bytes": config.memory_bytes,
        "seccomp": seccomp,
        "landlock": config.landlock && seccomp::number_of("landlock_create_ruleset").is_some(),
        "namespaces": config.namespaces,
        "cgroups": config.cgroups,
        "cgroup_parent": config.cgroup_parent,
        "preload": config.preload,
        "read_paths": config.read_paths,
        "syscalls": syscalls,
    })
}

struct Zygote {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Zygote {
    async fn spawn(config: &SandboxConfig, setup: &Json, interpreter: &Path) -> Result<(Self, Protections), SandboxError> {
        let start_error = |reason: String| SandboxError::Start { python: interpreter.display().to_string(), reason };
        // An empty environment: nothing of the server's (keys, database URLs) reaches user code.
        let mut child = Command::new(interpreter)
            .args(["-I", "-c", ZYGOTE_SOURCE])
            .env_clear()
            .env("LANG", "C.UTF-8")
            // Numeric libraries start a thread pool at import; a zygote must not have threads
            // when it forks, and each execution has one core's worth of CPU time anyway.
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            // Each thread's malloc arena reserves 64 MiB of address space, which the memory
            // limit counts: a code node with a few threads would run out of it without using any.
            .env("MALLOC_ARENA_MAX", "2")
            .current_dir(&config.scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| start_error(error.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(start_error("no pipes to the zygote".into()));
        };
        let mut zygote = Self { child, stdin, stdout };
        let hello = tokio::time::timeout(START_TIMEOUT, async {
            zygote.write_json_frame(setup).await?;
            zygote.read_json_frame().await
        })
        .await
        .map_err(|_| start_error("it did not become ready in 30 s".into()))?
        .map_err(|error| start_error(error.to_string()))?;
        if hello.get("ready") != Some(&Json::Bool(true)) {
            let failure = hello.get("failure").and_then(Json::as_str).map_or_else(|| format!("unexpected greeting {hello}"), str::to_owned);
            return Err(start_error(failure));
        }
        let text = |name: &str| hello.get(name).and_then(Json::as_str).unwrap_or_default().to_owned();
        let texts = |name: &str| -> Vec<String> {
            hello
                .get(name)
                .and_then(Json::as_array)
                .map(|items| items.iter().filter_map(Json::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let protections = Protections {
            python_version: text("python"),
            landlock_abi: hello.get("landlock_abi").and_then(Json::as_u64).unwrap_or(0) as u32,
            seccomp: hello.get("seccomp").and_then(Json::as_bool).unwrap_or(false),
            privileges: text("privileges"),
            namespaces: texts("namespaces"),
            network_namespace: text("network_namespace"),
            cgroups: text("cgroups"),
            off: hello
                .get("off")
                .and_then(Json::as_object)
                .map(|off| off.iter().map(|(what, why)| (what.clone(), why.as_str().unwrap_or_default().to_owned())).collect())
                .unwrap_or_default(),
            read_paths: texts("read_paths"),
            network: config.network,
            preload_failures: texts("preload_failures"),
        };
        Ok((zygote, protections))
    }

    /// Writes `parts` as consecutive frames, in one write.
    async fn write_frames(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut frames = Vec::with_capacity(parts.iter().map(|part| part.len() + 4).sum());
        for part in parts {
            let length = u32::try_from(part.len()).map_err(|_| std::io::Error::other("request too large"))?;
            frames.extend_from_slice(&length.to_be_bytes());
            frames.extend_from_slice(part);
        }
        self.stdin.write_all(&frames).await?;
        self.stdin.flush().await
    }

    async fn write_json_frame(&mut self, value: &Json) -> std::io::Result<()> {
        let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        self.write_frames(&[&body]).await
    }

    async fn read_frame(&mut self) -> std::io::Result<Vec<u8>> {
        let mut header = [0u8; 4];
        self.stdout.read_exact(&mut header).await?;
        let length = u32::from_be_bytes(header) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(std::io::Error::other(format!("a {length}-byte frame")));
        }
        let mut body = vec![0u8; length];
        self.stdout.read_exact(&mut body).await?;
        Ok(body)
    }

    async fn read_json_frame(&mut self) -> std::io::Result<Json> {
        serde_json::from_slice(&self.read_frame().await?).map_err(std::io::Error::other)
    }

    /// One request (its limits with its id, the code node's code, the rest) and its answer:
    /// what happened, and the text that goes with it. An answer for another request means the
    /// zygote is out of step, and is an error.
    async fn exchange(&mut self, id: u64, limits: &[u8], code: &str, rest: &[u8]) -> std::io::Result<Answer> {
        self.write_frames(&[limits, code.as_bytes(), rest]).await?;
        let outcome = self.read_json_frame().await?;
        let text = String::from_utf8_lossy(&self.read_frame().await?).into_owned();
        if outcome.get("id").and_then(Json::as_u64) != Some(id) {
            return Err(std::io::Error::other(format!("an answer for another request ({})", outcome.get("id").unwrap_or(&Json::Null))));
        }
        Ok(Answer { outcome, text })
    }
}

/// A zygote's answer: `{"ok"|"script": true}` or `{"error": kind}` (with `elapsed_ms`), and the
/// text: the result's JSON, the program's report, the traceback, or why there is none.
struct Answer {
    outcome: Json,
    text: String,
}

impl Answer {
    fn is(&self, key: &str) -> bool {
        self.outcome.get(key).and_then(Json::as_bool) == Some(true)
    }

    fn failure(self) -> PortError {
        let kind = match self.outcome.get("error").and_then(Json::as_str) {
            Some("timeout") => PortErrorKind::Timeout,
            Some("memory" | "output") => PortErrorKind::TooLarge,
            _ => PortErrorKind::Other,
        };
        let message = if self.text.is_empty() { "the code failed".to_owned() } else { self.text };
        PortError::new(kind, message)
    }
}

/// Zygotes, each serving one execution at a time; a broken one is replaced on next use.
pub struct PythonPool {
    config: SandboxConfig,
    /// The zygotes' configuration frame.
    setup: Json,
    interpreter: std::path::PathBuf,
    protections: Protections,
    slots: Vec<Mutex<Option<Zygote>>>,
    free: Semaphore,
    requests: AtomicU64,
}

impl PythonPool {
    pub async fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        std::fs::create_dir_all(&config.scratch).map_err(|error| SandboxError::Start {
            python: config.python.display().to_string(),
            reason: format!("cannot create the scratch directory {}: {error}", config.scratch.display()),
        })?;
        let interpreter = resolve_interpreter(&config.python).await?;
        let setup = zygote_setup(&config);
        let (first, protections) = Zygote::spawn(&config, &setup, &interpreter).await?;
        if config.isolation == IsolationPolicy::Required && !protections.missing().is_empty() {
            return Err(SandboxError::IsolationMissing { missing: protections.missing().join(" and ") });
        }
        let workers = config.workers.max(1);
        let mut slots = Vec::with_capacity(workers);
        slots.push(Mutex::new(Some(first)));
        slots.extend((1..workers).map(|_| Mutex::new(None)));
        Ok(Self { free: Semaphore::new(workers), slots, setup, interpreter, protections, config, requests: AtomicU64::new(1) })
    }

    pub fn protections(&self) -> &Protections {
        &self.protections
    }

    /// Process ids of the zygotes that are running now (for memory accounting).
    pub async fn zygote_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for slot in &self.slots {
            if let Some(pid) = slot.lock().await.as_ref().and_then(|zygote| zygote.child.id()) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Runs `main(**inputs)` in a fresh child of a free zygote.
    pub async fn execute(&self, code: &str, inputs: &Map) -> Result<Map, PortError> {
        let rest = json!({ "inputs": MapRef(inputs) });
        let answer = self.exchange(self.config.network, code, &rest).await?;
        if answer.is("ok") {
            return crate::result::outputs(&answer.text).map_err(|message| PortError::new(PortErrorKind::Other, message));
        }
        Err(answer.failure())
    }

    /// Runs a whole program, as dify-sandbox does, and reports what it printed and its exit
    /// status. `network` is granted only when the sandbox allows code network at all.
    pub async fn run_script(&self, code: &str, preload: &str, network: bool) -> Result<ScriptOutput, PortError> {
        // A program's code travels in the rest: only a code node's code is compiled ahead.
        let rest = json!({ "mode": "script", "code": code, "preload": preload });
        let answer = self.exchange(network && self.config.network, "", &rest).await?;
        if !answer.is("script") {
            return Err(answer.failure());
        }
        let report: Json = serde_json::from_str(&answer.text).map_err(|error| PortError::new(PortErrorKind::Other, error.to_string()))?;
        let field = |name: &str| report.get(name).and_then(Json::as_str).unwrap_or_default().to_owned();
        Ok(ScriptOutput {
            stdout: field("stdout"),
            stderr: field("stderr"),
            exit_code: report.get("exit_code").and_then(Json::as_i64).unwrap_or(1),
        })
    }

    /// One request to a free zygote, started first if its slot is empty; a zygote that fails to
    /// answer is discarded.
    async fn exchange(&self, network: bool, code: &str, rest: &Json) -> Result<Answer, PortError> {
        let id = self.requests.fetch_add(1, Ordering::Relaxed);
        let limits = json!({
            "id": id,
            "timeout_ms": self.config.timeout.as_millis() as u64,
            "memory_bytes": self.config.memory_bytes,
            "network": network,
        });
        let (limits, rest) = match (serde_json::to_vec(&limits), serde_json::to_vec(rest)) {
            (Ok(limits), Ok(rest)) => (limits, rest),
            (Err(error), _) | (_, Err(error)) => return Err(PortError::new(PortErrorKind::Other, error.to_string())),
        };
        let _permit = self.free.acquire().await.map_err(|_| PortError::new(PortErrorKind::Other, "the sandbox is shutting down"))?;
        // The permit guarantees a free slot.
        let mut slot = None;
        for candidate in &self.slots {
            if let Ok(guard) = candidate.try_lock() {
                slot = Some(guard);
                break;
            }
        }
        let Some(mut slot) = slot else {
            return Err(PortError::new(PortErrorKind::Other, "no free sandbox worker"));
        };
        // A zygote that died while idle (killed, out of memory) is replaced before it is used.
        if slot.as_mut().is_some_and(|zygote| !matches!(zygote.child.try_wait(), Ok(None))) {
            discard(&mut slot).await;
        }
        if slot.is_none() {
            let (zygote, _) = Zygote::spawn(&self.config, &self.setup, &self.interpreter)
                .await
                .map_err(|error| PortError::new(PortErrorKind::Other, error.to_string()))?;
            *slot = Some(zygote);
        }
        let answer = match slot.as_mut() {
            Some(zygote) => tokio::time::timeout(self.config.timeout + REPORT_GRACE, zygote.exchange(id, &limits, code, &rest)).await,
            None => return Err(PortError::new(PortErrorKind::Other, "no sandbox worker")),
        };
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                let reason = match slot.as_mut() {
                    Some(zygote) => why_it_stopped(zygote, &error).await,
                    None => error.to_string(),
                };
                discard(&mut slot).await;
                Err(PortError::new(PortErrorKind::Other, SandboxError::Broken(reason).to_string()))
            }
            Err(_) => {
                discard(&mut slot).await;
                Err(PortError::new(
                    PortErrorKind::Timeout,
                    format!(
                        "Code execution timed out after {} s; its worker did not answer in time and was replaced.",
                        self.config.timeout.as_secs_f64()
                    ),
                ))
            }
        }
    }
}

impl Drop for PythonPool {
    /// The pool's scratch folder holds nothing once its zygotes are gone (each child's files
    /// live in a tmpfs of its own, or in a folder removed after it); the folder goes too.
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(zygote) = slot.get_mut() {
                let _ = zygote.child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.config.scratch);
    }
}

/// What a program run printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
}

/// Why a zygote stopped answering: how it ended if it did (killed from outside, crashed), else
/// what went wrong on its pipes. The worker is replaced either way.
async fn why_it_stopped(zygote: &mut Zygote, error: &std::io::Error) -> String {
    use std::os::unix::process::ExitStatusExt;

    let status = tokio::time::timeout(Duration::from_millis(200), zygote.child.wait()).await;
    match status {
        Ok(Ok(status)) => match (status.signal(), status.code()) {
            (Some(signal), _) => format!("its worker process was killed by signal {signal}; it is replaced"),
            (None, Some(code)) => format!("its worker process exited with status {code}; it is replaced"),
            (None, None) => format!("its worker process ended; it is replaced ({error})"),
        },
        _ => format!("{error}; its worker is replaced"),
    }
}

async fn discard(slot: &mut Option<Zygote>) {
    if let Some(mut zygote) = slot.take() {
        let _ = zygote.child.kill().await;
    }
}

/// The interpreter's real path (`python3` may be a shim script that needs the environment the
/// zygote will not have).
async fn resolve_interpreter(python: &Path) -> Result<std::path::PathBuf, SandboxError> {
    let output = Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|error| SandboxError::Start { python: python.display().to_string(), reason: error.to_string() })?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || path.is_empty() {
        return Err(SandboxError::Start {
            python: python.display().to_string(),
            reason: format!("it did not run: {}", String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(path.into())
}
