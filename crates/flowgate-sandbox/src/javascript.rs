//! JavaScript code nodes in QuickJS, in-process: a fresh runtime per execution with a memory
//! limit, a stack limit and an interrupt deadline; no file, network or process APIs exist in
//! it. `main(inputs)` is called as Dify's Node.js wrapper calls it, with one object argument.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rquickjs::{Context, Ctx, Function, Runtime, Value};
use tokio::sync::Semaphore;

use flowgate_engine::ports::{PortError, PortErrorKind};
use flowgate_engine::value::{Map, MapRef};

/// Most JavaScript a code node needs fits well inside this; deep recursion ends in an error.
const STACK_BYTES: usize = 1024 * 1024;

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

pub struct JavaScript {
    free: Semaphore,
    timeout: Duration,
    memory_bytes: usize,
}

impl JavaScript {
    pub fn new(workers: usize, timeout: Duration, memory_bytes: u64) -> Self {
        Self { free: Semaphore::new(workers.max(1)), timeout, memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX) }
    }

    pub async fn execute(self: &Arc<Self>, code: &str, inputs: &Map) -> Result<Map, PortError> {
        let _permit = self.free.acquire().await.map_err(|_| PortError::new(PortErrorKind::Other, "the sandbox is shutting down"))?;
        let inputs =
            serde_json::to_string(&MapRef(inputs)).map_err(|error| PortError::new(PortErrorKind::InvalidRequest, error.to_string()))?;
        let source = script(code);
        let (timeout, memory) = (self.timeout, self.memory_bytes);
        let text = tokio::task::spawn_blocking(move || run(&source, &inputs, timeout, memory))
            .await
            .map_err(|error| PortError::new(PortErrorKind::Other, format!("the JavaScript runtime failed: {error}")))??;
        crate::result::outputs(&text).map_err(|message| PortError::new(PortErrorKind::Other, message))
    }
}

impl JavaScript {
    /// Runs a whole program as dify-sandbox's Node runner does: what it printed, and exit
    /// status 1 with the error on stderr when it throws.
    pub async fn run_script(self: &Arc<Self>, code: &str, preload: &str) -> Result<crate::ScriptOutput, PortError> {
        let _permit = self.free.acquire().await.map_err(|_| PortError::new(PortErrorKind::Other, "the sandbox is shutting down"))?;
        let source = format!("{preload}\n{code}");
        let (timeout, memory) = (self.timeout, self.memory_bytes);
        tokio::task::spawn_blocking(move || run_program(&source, timeout, memory))
            .await
            .map_err(|error| PortError::new(PortErrorKind::Other, format!("the JavaScript runtime failed: {error}")))?
    }
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
