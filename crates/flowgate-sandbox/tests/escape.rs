//! The escape and abuse suite: user code trying what hostile code tries. Each attempt must be
//! refused or stopped with a clear error, the pool must stay healthy and the next execution
//! must run normally and see nothing of the one before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use flowgate_engine::ports::{CodePort, PortErrorKind};
use flowgate_engine::value::Value;
use flowgate_sandbox::Sandbox;

use common::{call, config, output, run, sandbox, still_healthy};

#[tokio::test]
async fn main_gets_its_inputs_and_returns_its_outputs() {
    let sandbox = sandbox("main").await;
    let code = "import json\ndef main(count: int, text: str) -> dict:\n    data = json.loads(text)\n    return {'total': count + sum(data['xs']), 'keys': sorted(data)}";
    let outputs =
        sandbox.execute(call(code, &[("count", Value::Int(1)), ("text", Value::str(r#"{"xs": [1, 2], "b": 0}"#))])).await.unwrap();
    assert_eq!(outputs.get("total"), Some(&Value::Int(4)));
    assert_eq!(outputs.get("keys"), Some(&Value::array(vec![Value::str("b"), Value::str("xs")])));
}

#[tokio::test]
async fn user_exceptions_come_back_as_the_traceback_of_the_users_code() {
    let sandbox = sandbox("traceback").await;
    let (_, message) = run(&sandbox, "def main():\n    return {'x': 1 / 0}").await.unwrap_err();
    assert!(message.starts_with("Traceback (most recent call last):"), "{message}");
    assert!(message.contains("File \"<code>\", line 2, in main"), "{message}");
    assert!(message.ends_with("ZeroDivisionError: division by zero"), "{message}");
    assert!(!message.contains("zygote"), "{message}");
    let (_, message) = run(&sandbox, "x = 1").await.unwrap_err();
    assert!(message.ends_with("NameError: name 'main' is not defined"), "{message}");
    let (_, message) = run(&sandbox, "def main():\n    return [1]").await.unwrap_err();
    assert_eq!(message, "Result must be a dict, got list");
}

#[tokio::test]
async fn memory_bombs_and_endless_loops_end_in_clear_errors_and_threads_work() {
    let sandbox = sandbox("bombs").await;
    // Past the 768 MiB limit: one block at once, then blocks that pile up. `bytes(n)` maps zeroed
    // memory without touching it, so the limit is reached in a few steps even on a loaded machine
    // (filling 768 MiB took longer than the 2 s timeout there).
    let (kind, message) = run(&sandbox, "def main():\n    return {'result': len(bytearray(2 * 1024 * 1024 * 1024))}").await.unwrap_err();
    assert_eq!(kind, PortErrorKind::TooLarge, "{message}");
    assert_eq!(message, "Code ran out of memory (limit 768 MiB).");
    let (kind, message) =
        run(&sandbox, "def main():\n    blocks = []\n    while True:\n        blocks.append(bytes(256 * 1024 * 1024))").await.unwrap_err();
    assert_eq!(kind, PortErrorKind::TooLarge, "{message}");
    let started = std::time::Instant::now();
    let (kind, message) = run(&sandbox, "def main():\n    while True:\n        pass").await.unwrap_err();
    assert_eq!(kind, PortErrorKind::Timeout, "{message}");
    assert_eq!(message, "Code execution timed out after 2 s and was stopped.");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped after {:?}", started.elapsed());
    let code = "import threading\ndef main():\n    seen = []\n    threads = [threading.Thread(target=seen.append, args=(n,)) for n in range(8)]\n    [t.start() for t in threads]\n    [t.join() for t in threads]\n    return {'result': sorted(seen)}";
    assert_eq!(output(&sandbox, code).await, Value::array((0..8).map(Value::Int).collect()), "threads are allowed");
    still_healthy(&sandbox).await;
}

#[tokio::test]
async fn executions_never_see_each_others_state() {
    let sandbox = sandbox("state").await;
    // The zygote compiles a code node's code after its first run, so from the second run on a
    // child starts from that compiled code: its globals must still start empty every time.
    let code = "import json\nSEEN = []\ndef main():\n    json.leak = 'secret'\n    SEEN.append(1)\n    main.__code__ = (lambda: {'result': 'tampered'}).__code__\n    return {'result': len(SEEN)}";
    for _ in 0..4 {
        assert_eq!(output(&sandbox, code).await, Value::Int(1));
    }
    let code = "import json\ndef main():\n    return {'result': hasattr(json, 'leak')}";
    for _ in 0..4 {
        assert_eq!(output(&sandbox, code).await, Value::Bool(false));
    }
}

#[tokio::test]
async fn compiled_code_is_only_ever_the_exact_code_that_was_sent() {
    let sandbox = sandbox("compiled").await;
    let code = |answer: &str| format!("def main():\n    return {{'result': {answer}}}");
    for _ in 0..3 {
        assert_eq!(output(&sandbox, &code("41")).await, Value::Int(41));
    }
    // One byte changed, the same length: the new code runs.
    assert_eq!(output(&sandbox, &code("42")).await, Value::Int(42));
    assert_eq!(output(&sandbox, &code("41")).await, Value::Int(41));
    // Code that does not compile is compiled by each child and reported each time.
    for _ in 0..2 {
        let (_, message) = run(&sandbox, "def main(:\n    return {}").await.unwrap_err();
        assert!(message.contains("SyntaxError"), "{message}");
    }
    // Source the parser cannot handle leaves the zygote working.
    let (kind, _) = run(&sandbox, &format!("def main():\n    return {{'result': {}1}}", "-".repeat(60_000))).await.unwrap_err();
    assert_eq!(kind, PortErrorKind::TooLarge);
    still_healthy(&sandbox).await;
}

#[tokio::test]
async fn five_hundred_concurrent_executions_all_succeed() {
    let sandbox = sandbox("concurrency").await;
    let code = "import json\ndef main(n: int) -> dict:\n    data = json.loads(json.dumps({'n': n, 'xs': list(range(50))}))\n    return {'result': data['n'] * 2 + sum(data['xs'])}";
    let runs = (0..500).map(|n| {
        let sandbox = sandbox.clone();
        async move { (n, sandbox.execute(call(code, &[("n", Value::Int(n))])).await) }
    });
    let results = futures::future::join_all(runs).await;
    for (n, result) in results {
        let outputs = result.unwrap_or_else(|error| panic!("execution {n} failed: {error:?}"));
        assert_eq!(outputs.get("result"), Some(&Value::Int(n * 2 + 1225)));
    }
}

#[tokio::test]
async fn the_active_protections_are_reported() {
    let sandbox = sandbox("protections").await;
    let protections = sandbox.protections();
    // This machine (root, Linux 6) gives all of them; a machine that does not is reported, not hidden.
    let described = protections.describe();
    assert!(protections.seccomp, "{described}");
    assert!(protections.landlock_abi > 0, "{described}");
    assert_eq!(protections.namespaces, ["user", "pid", "mount", "ipc", "uts", "net"], "{described}");
    assert!(protections.cgroups.contains("memory") && protections.cgroups.contains("pids"), "{described}");
    assert!(protections.missing().is_empty(), "{described}");
    assert!(described.contains("uid 65534 (nobody) in its own user namespace"), "{described}");
    // The read paths are exact: the standard library and the loader's folders, never /etc or /usr.
    for path in &protections.read_paths {
        assert!(!["/", "/etc", "/usr", "/usr/lib", "/root", "/lib"].contains(&path.as_str()), "{path} in {:?}", protections.read_paths);
        assert!(!path.starts_with("/etc/") || ["/etc/ld.so.cache", "/etc/localtime"].contains(&path.as_str()), "{path}");
    }
    let javascript = sandbox.javascript_protections().unwrap();
    assert!(javascript.seccomp, "{}", javascript.describe());
    assert_eq!(javascript.namespaces, ["user", "mount", "ipc", "uts", "net"], "{}", javascript.describe());
}

#[tokio::test]
async fn a_zygote_that_dies_takes_its_running_child_with_it_and_is_replaced() {
    let mut config = config("replace");
    config.workers = 1;
    config.timeout = Duration::from_secs(30);
    let sandbox = Sandbox::start(config).await.unwrap();
    still_healthy(&sandbox).await;
    let pids = sandbox.zygote_pids().await;
    assert_eq!(pids.len(), 1);
    let running = tokio::spawn({
        let sandbox = sandbox.clone();
        async move { sandbox.execute(call("import time\ndef main():\n    time.sleep(25)\n    return {}", &[])).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let children = common::children_of(&pids);
    assert!(!children.is_empty());
    let killed = std::process::Command::new("kill").args(["-9", &pids[0].to_string()]).status().unwrap();
    assert!(killed.success());
    let error = running.await.unwrap().unwrap_err();
    assert!(error.message.contains("stopped answering: its worker process was killed by signal 9"), "{error:?}");
    // Its children die with it (they would otherwise sleep on, orphaned).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for child in &children {
        // Gone, or dead and waiting for the host's init to reap it.
        let state = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let state = state.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()).unwrap_or_default();
        assert!(matches!(state, None | Some('Z' | 'X')), "child {child} outlived its zygote ({state:?})");
    }
    for _ in 0..4 {
        still_healthy(&sandbox).await;
    }
    let replaced = sandbox.zygote_pids().await;
    assert!(replaced.iter().all(|pid| !pids.contains(pid)), "{pids:?} -> {replaced:?}");
}

#[tokio::test]
async fn required_isolation_refuses_a_sandbox_without_seccomp_landlock_or_namespaces() {
    let mut required = config("required");
    required.seccomp = false;
    required.isolation = flowgate_sandbox::IsolationPolicy::Required;
    let error = Sandbox::start(required).await.err().expect("refused");
    assert_eq!(error.to_string(), "not running code: the sandbox lacks seccomp, and FLOWGATE_CODE_ISOLATION=required");
    let mut required = config("required-namespaces");
    required.namespaces = false;
    required.isolation = flowgate_sandbox::IsolationPolicy::Required;
    let error = Sandbox::start(required).await.err().expect("refused");
    assert_eq!(error.to_string(), "not running code: the sandbox lacks namespaces, and FLOWGATE_CODE_ISOLATION=required");

    // Best effort runs without them and says so.
    let mut config = config("best-effort");
    config.landlock = false;
    config.namespaces = false;
    let sandbox = Sandbox::start(config).await.unwrap();
    assert_eq!(sandbox.protections().missing(), vec!["landlock", "namespaces"]);
    let described = sandbox.protections().describe();
    assert!(described.contains("landlock OFF") && described.contains("namespaces OFF"), "{described}");
    let code = "def main():\n    return {'result': open('/etc/hostname').read() is not None}";
    assert_eq!(output(&sandbox, code).await, Value::Bool(true), "without landlock or a mount namespace the file is readable");
    let guarded = self::sandbox("guarded").await;
    assert!(run(&guarded, code).await.is_err(), "with them it is not");
}

/// Without namespaces (a container that refuses them, a server not started as root) a child
/// still gets landlock, seccomp, rlimits and a scratch folder of its own, removed after it.
#[tokio::test]
async fn without_namespaces_landlock_and_seccomp_still_hold() {
    let mut config = config("no-namespaces");
    config.namespaces = false;
    config.cgroups = false;
    let scratch = config.scratch.clone();
    let sandbox = Sandbox::start(config).await.unwrap();
    let code = "import os\ndef main():\n    open('note.txt', 'w').write('private')\n    results = [os.listdir('.')]\n    for path in ('/etc/shadow', '/proc/1/environ', '/root/.bashrc'):\n        try:\n            open(path).read()\n            results.append('read ' + path)\n        except OSError as error:\n            results.append(type(error).__name__)\n    return {'result': results}";
    let expected = Value::array(vec![
        Value::array(vec![Value::str("note.txt")]),
        Value::str("PermissionError"),
        Value::str("PermissionError"),
        Value::str("PermissionError"),
    ]);
    assert_eq!(output(&sandbox, code).await, expected);
    let (_, message) = run(&sandbox, "import socket\ndef main():\n    socket.socket()").await.unwrap_err();
    assert!(message.contains("sandbox refused the system call socket"), "{message}");
    let (_, message) = run(&sandbox, "import os\ndef main():\n    os.kill(os.getppid(), 9)").await.unwrap_err();
    assert!(message.contains("sandbox refused the system call kill"), "{message}");
    still_healthy(&sandbox).await;
    // Only the folders of the two children ready for the next requests are there, empty (a
    // child's folder goes when it is reaped, a moment after its answer).
    let folders = || -> Vec<_> { std::fs::read_dir(&scratch).unwrap().filter_map(Result::ok).map(|entry| entry.path()).collect() };
    let mut left = folders();
    for _ in 0..50 {
        if left.len() <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = folders();
    }
    assert_eq!(left.len(), 2, "scratch folders left: {left:?}");
    assert!(left.iter().all(|folder| std::fs::read_dir(folder).unwrap().count() == 0), "{left:?}");
    drop(sandbox);
    assert!(!scratch.exists(), "{} outlives the sandbox", scratch.display());
}

#[tokio::test]
async fn a_shared_read_path_can_be_read_but_not_written_and_nothing_beside_it_opens() {
    let root = std::env::temp_dir().join(format!("flowgate-sandbox-test-shared-{}", std::process::id()));
    let (shared, private) = (root.join("upload_files"), root.join("private"));
    std::fs::create_dir_all(shared.join("2026")).unwrap();
    std::fs::create_dir_all(&private).unwrap();
    std::fs::write(shared.join("2026/sales.csv"), "city,total\nBerlin,3\n").unwrap();
    std::fs::write(private.join("secret.txt"), "not for code").unwrap();
    let mut config = config("shared");
    config.scratch = root.join("scratch");
    config.read_paths = vec![shared.clone()];
    let sandbox = Sandbox::start(config).await.unwrap();

    // The corpus' File_read.yml walks its mounted folder like this. The folder lies under /tmp,
    // and /tmp is still the execution's own scratch folder.
    let code = format!(
        "import os\ndef main():\n    open('/tmp/note.txt', 'w').write('mine')\n    found = [os.path.join(r, f) for r, _, fs in os.walk({shared:?}) for f in fs]\n    return {{'result': [found, open(found[0]).read()]}}"
    );
    let listed = output(&sandbox, &code).await;
    let csv = shared.join("2026/sales.csv").display().to_string();
    assert_eq!(listed, Value::array(vec![Value::array(vec![Value::str(csv.as_str())]), Value::str("city,total\nBerlin,3\n")]));
    for attempt in [
        format!("open({:?}, 'a').write('x')", csv),
        format!("open({:?}, 'w').write('x')", shared.join("new.txt").display().to_string()),
        format!("__import__('os').remove({csv:?})"),
        format!("open({:?}).read()", private.join("secret.txt").display().to_string()),
    ] {
        let code = format!("def main():\n    {attempt}\n    return {{}}");
        let (_, message) = run(&sandbox, &code).await.unwrap_err();
        assert!(
            ["PermissionError", "Read-only file system", "FileNotFoundError"].iter().any(|error| message.contains(error)),
            "{attempt}: {message}"
        );
    }
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "city,total\nBerlin,3\n");
    assert!(!shared.join("new.txt").exists());
}

/// The interpreter of `scripts/sdk-python sandbox-packages`: pandas, numpy and json_repair.
fn python_with_packages() -> std::path::PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sdk-python");
    let output = std::process::Command::new(script).arg("sandbox-packages").output().unwrap();
    assert!(output.status.success(), "cannot set up the sandbox packages: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().into()
}

#[tokio::test]
async fn preloaded_packages_are_imported_before_the_code_runs_and_work_in_every_execution() {
    let python = python_with_packages();
    let imported = "import sys\ndef main():\n    return {'result': ['pandas' in sys.modules, 'json_repair' in sys.modules]}";

    let mut config = common::config("no-preload");
    config.python = python.clone();
    let plain = Sandbox::start(config).await.unwrap();
    assert_eq!(output(&plain, imported).await, Value::array(vec![Value::Bool(false), Value::Bool(false)]));
    assert!(plain.protections().preload_failures.is_empty());

    let mut config = common::config("preload");
    config.python = python;
    config.workers = 1;
    config.preload = vec!["pandas".into(), "json_repair".into(), "pandsa".into()];
    let sandbox = Sandbox::start(config).await.unwrap();
    assert_eq!(sandbox.protections().preload_failures, vec!["pandsa: ModuleNotFoundError: No module named 'pandsa'".to_owned()]);
    assert!(sandbox.protections().missing().is_empty(), "{}", sandbox.protections().describe());
    assert_eq!(output(&sandbox, imported).await, Value::array(vec![Value::Bool(true), Value::Bool(true)]));
    // Forked children of one zygote each get a working pandas and numpy (no thread pool
    // left broken by the fork), and none sees what the one before changed.
    let code = "import io\nimport pandas as pd\ndef main():\n    df = pd.read_csv(io.StringIO('city,price\\nBerlin,3.5\\nParis,4.25\\nBerlin,5\\n'))\n    seen = getattr(pd, 'touched', False)\n    pd.touched = True\n    sums = df.groupby('city')['price'].sum().to_dict()\n    return {'result': [seen, sums, float((df['price'].to_numpy() @ df['price'].to_numpy()))]}";
    let expected = Value::array(vec![
        Value::Bool(false),
        Value::from(&serde_json::json!({"Berlin": 8.5, "Paris": 4.25})),
        Value::Float(3.5 * 3.5 + 4.25 * 4.25 + 25.0),
    ]);
    for _ in 0..3 {
        assert_eq!(output(&sandbox, code).await, expected);
    }
    still_healthy(&sandbox).await;
}
