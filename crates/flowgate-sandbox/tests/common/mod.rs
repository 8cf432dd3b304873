//! What the sandbox tests share: a sandbox for a given interpreter, calls as the engine makes
//! them, and the interpreter layouts the escape suite runs with.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowgate_engine::ports::{CodeCall, CodePort, PortContext, PortErrorKind};
use flowgate_engine::value::{Map, Value};
use flowgate_sandbox::{Sandbox, SandboxConfig, WorkerCommand};

pub fn worker() -> WorkerCommand {
    WorkerCommand { program: env!("CARGO_BIN_EXE_flowgate-js-worker").into(), args: Vec::new() }
}

pub fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flowgate-sandbox-test-{tag}-{}", std::process::id()))
}

pub fn config(tag: &str) -> SandboxConfig {
    let mut config = SandboxConfig::new(scratch(tag));
    config.javascript_worker = worker();
    config.timeout = Duration::from_secs(2);
    config.memory_bytes = 768 * 1024 * 1024;
    config
}

pub async fn sandbox(tag: &str) -> Sandbox {
    Sandbox::start(config(tag)).await.unwrap()
}

pub fn call_as(app: &str, language: &str, code: &str, inputs: &[(&str, Value)]) -> CodeCall {
    let mut map = Map::default();
    for (name, value) in inputs {
        map.insert(Arc::from(*name), value.clone());
    }
    let context = PortContext {
        node_id: Arc::from("code"),
        node_type: Arc::from("code"),
        title: Arc::from("Code"),
        run_id: Arc::from("run"),
        app_id: Arc::from(app),
        user_id: Arc::from("user"),
    };
    CodeCall { context, language: language.into(), code: code.into(), inputs: map }
}

pub fn call(code: &str, inputs: &[(&str, Value)]) -> CodeCall {
    call_as("app", "python3", code, inputs)
}

pub async fn run(sandbox: &Sandbox, code: &str) -> Result<Map, (PortErrorKind, String)> {
    sandbox.execute(call(code, &[])).await.map_err(|error| (error.kind, error.message))
}

pub async fn output(sandbox: &Sandbox, code: &str) -> Value {
    let outputs = run(sandbox, code).await.unwrap_or_else(|error| panic!("{code}\nfailed: {error:?}"));
    outputs.get("result").cloned().unwrap_or(Value::None)
}

/// Another app's ordinary code node, which must work after whatever came before.
pub async fn still_healthy(sandbox: &Sandbox) {
    let outputs = sandbox
        .execute(call_as("another-app", "python3", "import json\ndef main():\n    return {'result': json.loads('[6, 7]')}", &[]))
        .await
        .unwrap_or_else(|error| panic!("another app's code node failed: {error:?}"));
    assert_eq!(outputs.get("result"), Some(&Value::array(vec![Value::Int(6), Value::Int(7)])));
}

/// An interpreter installed in one of the ways teams install it.
pub struct Layout {
    pub name: &'static str,
    pub python: PathBuf,
}

/// The interpreter on PATH when it lives under a folder only root may enter (pyenv under /root,
/// as on this machine), else a copy of the system's Python in such a folder.
pub fn root_only_python() -> PathBuf {
    let on_path = PathBuf::from(python_output(Path::new("python3"), "import sys; print(sys.executable)"));
    if !readable_by_others(&on_path) && supported(&on_path) {
        return on_path;
    }
    // A copy of the system Python (binary and standard library) in a 0700 folder.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("root-only-python");
    let python = root.join("bin/python3");
    if !python.exists() {
        let version = python_output(Path::new("/usr/bin/python3"), "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(format!("/usr/bin/python{version}"), &python).unwrap();
        let copied = std::process::Command::new("cp").arg("-a").arg(format!("/usr/lib/python{version}")).arg(root.join("lib")).status();
        assert!(copied.unwrap().success());
    }
    python
}

/// Whether every folder on the way to `path` lets other users through.
fn readable_by_others(path: &Path) -> bool {
    path.ancestors().skip(1).all(|folder| std::fs::metadata(folder).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

fn supported(python: &Path) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import sys; sys.exit(sys.version_info < (3, 9))"])
        .status()
        .is_ok_and(|status| status.success())
}

fn python_output(python: &Path, code: &str) -> String {
    let output = std::process::Command::new(python).args(["-c", code]).output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Debian's own Python.
pub fn system_python() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    assert!(python.exists(), "the escape suite needs the system's Python at /usr/bin/python3 (Debian: apt-get install python3)");
    python
}

/// A virtualenv (of the interpreter on PATH) inside a folder only its owner may enter.
pub fn private_virtualenv() -> PathBuf {
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("private-venv-{}", std::process::id()));
    let python = folder.join("venv/bin/python3");
    if !python.exists() {
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
        let made = std::process::Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(folder.join("venv")).status();
        assert!(made.unwrap().success(), "python3 -m venv failed");
    }
    python
}

pub fn layouts() -> Vec<Layout> {
    vec![
        Layout { name: "root-only pyenv", python: root_only_python() },
        Layout { name: "system Python", python: system_python() },
        Layout { name: "virtualenv in a 0700 folder", python: private_virtualenv() },
    ]
}

/// The limits of a process as /proc shows them.
pub fn limits_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default()
}

/// Processes whose parent is one of `parents`.
pub fn children_of(parents: &[u32]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The fields after the command name (which may hold spaces) start after its `)`.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        let parent = rest.split_whitespace().nth(1).and_then(|field| field.parse::<u32>().ok());
        if parent.is_some_and(|parent| parents.contains(&parent)) {
            found.push(pid);
        }
    }
    found
}

/// The `Uid:` line of a process's status: real, effective, saved, filesystem uid.
pub fn uids_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|line| line.strip_prefix("Uid:")).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ")
}
