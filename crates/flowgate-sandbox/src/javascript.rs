//! JavaScript code nodes in QuickJS, each in a worker process of its own: a built-in that runs
//! long (`new Array(1e9).join('')`) cannot be interrupted from inside, so the server kills the
//! worker at the deadline and starts another; no JavaScript ever runs in the server's process.
//! Inside a worker each execution gets a fresh runtime with a memory limit, a stack limit and an
//! interrupt deadline; no file, network or process APIs exist in it, and the worker itself is
//! locked down (`worker.rs`). `main(inputs)` is called as Dify's Node.js wrapper calls it, with one
//! object argument.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rquickjs::{Context, Ctx, Function, Runtime, Value};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, Semaphore};

use flowgate_engine::ports::{PortError, PortErrorKind};
use flowgate_engine::value::{Map, MapRef};

/// Most JavaScript a code node needs fits well inside this; deep recursion ends in an error.
const STACK_BYTES: usize = 1024 * 1024;
/// How long past its deadline a worker may take to answer before it is killed: the interrupt
/// handler answers at the deadline itself unless a built-in holds it.
const KILL_GRACE: Duration = Duration::from_millis(250);
/// A frame larger than this is a broken worker (results are limited by the memory limit).
const MAX_FRAME_BYTES: usize = 160 * 1024 * 1024;
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker's greeting is a few hundred bytes; anything longer is not a worker talking.
const HELLO_MAX_BYTES: usize = 64 * 1024;

/// How a worker process is started: the `flowgate` binary with its hidden worker command, or
/// any program that calls [`crate::javascript_worker_main`].
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// This executable, run with `args` (the server passes its hidden worker subcommand).
    pub fn current_exe(args: &[&str]) -> Self {
        let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("flowgate"));
        Self { program, args: args.iter().map(OsString::from).collect() }
    }
}

/// What a JavaScript worker could lock down, as it reported at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JavaScriptProtections {
    pub seccomp: bool,
    pub namespaces: Vec<String>,
    pub privileges: String,
    pub off: Vec<(String, String)>,
}

impl JavaScriptProtections {
    pub fn describe(&self) -> String {
        let namespaces = if self.namespaces.is_empty() { "OFF".to_owned() } else { self.namespaces.join(",") };
        let mut text = format!(
            "JavaScript: QuickJS in worker processes killed at the deadline, namespaces {namespaces}, {}, seccomp {}, rlimits on, no_new_privs on",
            self.privileges,
            if self.seccomp { "allow-list" } else { "OFF" }
        );
        for (what, why) in &self.off {
            text.push_str(&format!("; {what} off: {why}"));
        }
        text
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Worker {
    async fn spawn(command: &WorkerCommand, timeout: Duration, memory_bytes: u64) -> Result<(Self, JavaScriptProtections), String> {
        let mut child = Command::new(&command.program)
            .args(&command.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot start the JavaScript worker {}: {error}", command.program.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the JavaScript worker".into());
        };
        let mut worker = Self { child, stdin, stdout };
        let config = json!({"timeout_ms": timeout.as_millis() as u64, "memory_bytes": memory_bytes});
        let not_a_worker = |error: std::io::Error| {
            format!("the JavaScript worker did not start: {} did not answer as a worker ({error})", command.program.display())
        };
        let hello = tokio::time::timeout(START_TIMEOUT, async {
            worker.write_frame(&config).await?;
            worker.read_frame_of_at_most(HELLO_MAX_BYTES).await
        })
        .await
        .map_err(|_| "the JavaScript worker did not start in 10 s".to_owned())?
        .map_err(not_a_worker)?;
        if hello.get("ready") != Some(&Json::Bool(true)) {
            return Err(format!("the JavaScript worker did not start: {hello}"));
        }
        let texts = |name: &str| -> Vec<String> {
            hello
                .get(name)
                .and_then(Json::as_array)
                .map(|items| items.iter().filter_map(Json::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let protections = JavaScriptProtections {
            seccomp: hello.get("seccomp").and_then(Json::as_bool).unwrap_or(false),
            namespaces: texts("namespaces"),
            privileges: hello.get("privileges").and_then(Json::as_str).unwrap_or_default().to_owned(),
            off: hello
                .get("off")
                .and_then(Json::as_object)
                .map(|off| off.iter().map(|(what, why)| (what.clone(), why.as_str().unwrap_or_default().to_owned())).collect())
                .unwrap_or_default(),
        };
        Ok((worker, protections))
    }

    async fn write_frame(&mut self, value: &Json) -> std::io::Result<()> {
        let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        let length = u32::try_from(body.len()).map_err(|_| std::io::Error::other("request too large"))?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(&body);
        self.stdin.write_all(&frame).await?;
        self.stdin.flush().await
    }

    async fn read_frame(&mut self) -> std::io::Result<Json> {
        self.read_frame_of_at_most(MAX_FRAME_BYTES).await
    }

    async fn read_frame_of_at_most(&mut self, limit: usize) -> std::io::Result<Json> {
        let mut header = [0u8; 4];
        self.stdout.read_exact(&mut header).await?;
        let length = u32::from_be_bytes(header) as usize;
        if length > limit {
            return Err(std::io::Error::other(format!("a {length}-byte frame")));
        }
        let mut body = vec![0u8; length];
        self.stdout.read_exact(&mut body).await?;
        serde_json::from_slice(&body).map_err(std::io::Error::other)
    }
}

/// Worker processes, each running one execution at a time; one that misses its deadline (or
/// breaks) is killed and replaced on next use.
pub struct JavaScript {
    command: WorkerCommand,
    slots: Vec<Mutex<Option<Worker>>>,
    free: Semaphore,
    timeout: Duration,
    memory_bytes: u64,
    protections: JavaScriptProtections,
}

impl JavaScript {
    /// Starts the first worker, so its protections are known before any run.
    pub async fn start(command: WorkerCommand, workers: usize, timeout: Duration, memory_bytes: u64) -> Result<Self, String> {
        let (first, protections) = Worker::spawn(&command, timeout, memory_bytes).await?;
        let workers = workers.max(1);
        let mut slots = Vec::with_capacity(workers);
        slots.push(Mutex::new(Some(first)));
        slots.extend((1..workers).map(|_| Mutex::new(None)));
        Ok(Self { command, slots, free: Semaphore::new(workers), timeout, memory_bytes, protections })
    }

    pub fn protections(&self) -> &JavaScriptProtections {
        &self.protections
    }

    pub async fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for slot in &self.slots {
            if let Some(pid) = slot.lock().await.as_ref().and_then(|worker| worker.child.id()) {
                pids.push(pid);
            }
        }
        pids
    }

    pub async fn execute(&self, code: &str, inputs: &Map) -> Result<Map, PortError> {
        let inputs =
            serde_json::to_string(&MapRef(inputs)).map_err(|error| PortError::new(PortErrorKind::InvalidRequest, error.to_string()))?;
        let answer = self.exchange(&json!({"mode": "execute", "source": script(code), "inputs": inputs})).await?;
        let text = answer.get("ok").and_then(Json::as_str).ok_or_else(|| failure_of(&answer))?;
        crate::result::outputs(text).map_err(|message| PortError::new(PortErrorKind::Other, message))
    }

    /// Runs a whole program as dify-sandbox's Node runner does: what it printed, and exit
    /// status 1 with the error on stderr when it throws.
    pub async fn run_script(&self, code: &str, preload: &str) -> Result<crate::ScriptOutput, PortError> {
        let answer = self.exchange(&json!({"mode": "script", "source": format!("{preload}\n{code}")})).await?;
        let report = answer.get("script").ok_or_else(|| failure_of(&answer))?;
        let field = |name: &str| report.get(name).and_then(Json::as_str).unwrap_or_default().to_owned();
        Ok(crate::ScriptOutput {
            stdout: field("stdout"),
            stderr: field("stderr"),
            exit_code: report.get("exit_code").and_then(Json::as_i64).unwrap_or(1),
        })
    }

    async fn exchange(&self, request: &Json) -> Result<Json, PortError> {
        let _permit = self.free.acquire().await.map_err(|_| PortError::new(PortErrorKind::Other, "the sandbox is shutting down"))?;
        // The permit guarantees a free slot.
        let Some(mut slot) = self.slots.iter().find_map(|candidate| candidate.try_lock().ok()) else {
            return Err(PortError::new(PortErrorKind::Other, "no free JavaScript worker"));
        };
        if slot.as_mut().is_some_and(|worker| !matches!(worker.child.try_wait(), Ok(None))) {
            *slot = None;
        }
        if slot.is_none() {
            let (worker, _) = Worker::spawn(&self.command, self.timeout, self.memory_bytes)
                .await
                .map_err(|message| PortError::new(PortErrorKind::Other, message))?;
            *slot = Some(worker);
        }
        let Some(worker) = slot.as_mut() else {
            return Err(PortError::new(PortErrorKind::Other, "no JavaScript worker"));
        };
        let answer = tokio::time::timeout(self.timeout + KILL_GRACE, async {
            worker.write_frame(request).await?;
            worker.read_frame().await
        })
        .await;
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                discard(&mut slot).await;
                Err(PortError::new(PortErrorKind::Other, format!("the JavaScript worker stopped: {error}")))
            }
            Err(_) => {
                // Held by a built-in past the deadline: only ending the process stops it.
                discard(&mut slot).await;
                Err(timeout_error(self.timeout))
            }
        }
    }
}

async fn discard(slot: &mut Option<Worker>) {
    if let Some(mut worker) = slot.take() {
        let _ = worker.child.kill().await;
    }
}

fn failure_of(answer: &Json) -> PortError {
    let error = answer.get("error");
    let message = error.and_then(|error| error.get("message")).and_then(Json::as_str).unwrap_or("the JavaScript worker failed");
    let kind = match error.and_then(|error| error.get("kind")).and_then(Json::as_str) {
        Some("timeout") => PortErrorKind::Timeout,
        Some("memory") => PortErrorKind::TooLarge,
        _ => PortErrorKind::Other,
    };
    PortError::new(kind, message)
}

/// Dify's wrapper, with `console` quiet (Dify reads the result from stdout; prints are dropped).
/// The stub shares the user's first line, so error line numbers are the user's own.
fn script(code: &str) -> String {
    format!(
        "globalThis.console = {{log() {{}}, info() {{}}, warn() {{}}, error() {{}}, debug() {{}}}};{code}\n;\
         globalThis.__flowgate_result = JSON.stringify(main(JSON.parse(globalThis.__flowgate_inputs)));"
    )
}

/// For dify-sandbox's protocol: `console` writes are kept, and `Buffer.from(text, 'base64')`
/// exists, which Dify's Node wrapper uses to decode its inputs.
const SCRIPT_PRELUDE: &str = "globalThis.__flowgate_out = []; globalThis.__flowgate_err = [];\
const __flowgate_print = (sink) => (...parts) => { sink.push(parts.map(part => typeof part === 'string' ? part : JSON.stringify(part)).join(' ') + '\\n'); };\
globalThis.console = {log: __flowgate_print(__flowgate_out), info: __flowgate_print(__flowgate_out), debug: __flowgate_print(__flowgate_out), warn: __flowgate_print(__flowgate_err), error: __flowgate_print(__flowgate_err)};\
globalThis.Buffer = {from(text, encoding) { if (encoding !== 'base64') { throw new TypeError('only base64 Buffer.from is available'); } const decoded = __flowgate_base64(String(text)); return {toString() { return decoded; }}; }};";

/// One request in the worker: the answer frame.
pub(crate) fn answer(request: &Json, timeout: Duration, memory: usize) -> Json {
    let source = request.get("source").and_then(Json::as_str).unwrap_or_default();
    let result = match request.get("mode").and_then(Json::as_str) {
        Some("script") => run_program(source, timeout, memory)
            .map(|output| json!({"script": {"stdout": output.stdout, "stderr": output.stderr, "exit_code": output.exit_code}})),
        _ => {
            let inputs = request.get("inputs").and_then(Json::as_str).unwrap_or("{}");
            run(source, inputs, timeout, memory).map(|text| json!({"ok": text}))
        }
    };
    result.unwrap_or_else(|error| {
        let kind = match error.kind {
            PortErrorKind::Timeout => "timeout",
            PortErrorKind::TooLarge => "memory",
            _ => "other",
        };
        json!({"error": {"kind": kind, "message": error.message}})
    })
}

fn failed(error: rquickjs::Error) -> PortError {
    PortError::new(PortErrorKind::Other, format!("the JavaScript runtime failed: {error}"))
}

/// A runtime bounded in memory, stack and time; the flag tells a timeout from other errors.
fn bounded_runtime(timeout: Duration, memory: usize) -> Result<(Runtime, Arc<AtomicBool>), PortError> {
    let runtime = Runtime::new().map_err(failed)?;
    runtime.set_memory_limit(memory);
    runtime.set_max_stack_size(STACK_BYTES);
    let deadline = Instant::now() + timeout;
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    runtime.set_interrupt_handler(Some(Box::new(move || {
        let late = Instant::now() >= deadline;
        if late {
            flag.store(true, Ordering::Relaxed);
        }
        late
    })));
    Ok((runtime, timed_out))
}

fn timeout_error(timeout: Duration) -> PortError {
    PortError::new(PortErrorKind::Timeout, format!("Code execution timed out after {} s and was stopped.", timeout.as_secs_f64()))
}

fn run_program(source: &str, timeout: Duration, memory: usize) -> Result<crate::ScriptOutput, PortError> {
    let (runtime, timed_out) = bounded_runtime(timeout, memory)?;
    let context = Context::full(&runtime).map_err(failed)?;
    context.with(|ctx| {
        let decode = Function::new(ctx.clone(), |text: String| -> String {
            let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .map_err(failed)?;
        ctx.globals().set("__flowgate_base64", decode).map_err(failed)?;
        ctx.eval::<(), _>(SCRIPT_PRELUDE).map_err(failed)?;
        let mut stderr = String::new();
        let mut exit_code = 0;
        if ctx.eval::<(), _>(source).is_err() {
            let thrown = ctx.catch();
            if timed_out.load(Ordering::Relaxed) {
                return Err(timeout_error(timeout));
            }
            stderr = format!("{}\n", describe(&ctx, &thrown));
            exit_code = 1;
        }
        let printed = |name: &str| -> String { ctx.globals().get::<_, Vec<String>>(name).map(|parts| parts.concat()).unwrap_or_default() };
        let mut errors = printed("__flowgate_err");
        errors.push_str(&stderr);
        Ok(crate::ScriptOutput { stdout: printed("__flowgate_out"), stderr: errors, exit_code })
    })
}

fn run(source: &str, inputs: &str, timeout: Duration, memory: usize) -> Result<String, PortError> {
    let (runtime, timed_out) = bounded_runtime(timeout, memory)?;
    let context = Context::full(&runtime).map_err(failed)?;
    context.with(|ctx| {
        ctx.globals().set("__flowgate_inputs", inputs).map_err(failed)?;
        if ctx.eval::<(), _>(source).is_err() {
            let thrown = ctx.catch();
            if timed_out.load(Ordering::Relaxed) {
                return Err(timeout_error(timeout));
            }
            let message = describe(&ctx, &thrown);
            let kind = if message.contains("out of memory") { PortErrorKind::TooLarge } else { PortErrorKind::Other };
            return Err(PortError::new(kind, message));
        }
        match ctx.globals().get::<_, Option<String>>("__flowgate_result") {
            Ok(Some(text)) => Ok(text),
            Ok(None) => Err(PortError::new(PortErrorKind::Other, "Result must be a dict, got undefined")),
            Err(error) => Err(failed(error)),
        }
    })
}

/// `Name: message` and the stack, as Node prints an uncaught error.
fn describe<'js>(ctx: &Ctx<'js>, thrown: &Value<'js>) -> String {
    if let Some(object) = thrown.as_object() {
        let text = |key: &str| object.get::<_, Option<rquickjs::Coerced<String>>>(key).ok().flatten().map(|text| text.0);
        if let Some(message) = text("message") {
            let name = text("name").unwrap_or_else(|| "Error".into());
            let stack = text("stack").unwrap_or_default();
            let stack = stack.trim_end();
            return if stack.is_empty() { format!("{name}: {message}") } else { format!("{name}: {message}\n{stack}") };
        }
    }
    if thrown.is_null() {
        // QuickJS throws null when an allocation fails past the memory limit.
        return "out of memory".into();
    }
    let shown = ctx.json_stringify(thrown.clone()).ok().flatten().and_then(|text| text.to_string().ok());
    format!("Uncaught {}", shown.unwrap_or_else(|| "exception".into()))
}
