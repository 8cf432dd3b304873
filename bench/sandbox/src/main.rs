//! A typical code node (parse a JSON payload, work over its items, return a dict) executed
//! through flowgate's Python sandbox at concurrency = cores, next to the same code run the way
//! a naive sandbox does it: a cold `python3` process per execution, measured in the same
//! command; the same work in JavaScript (QuickJS). Also the zygote pool's resident memory as
//! executions accumulate.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate_engine::ports::{CodeCall, CodePort, PortContext};
use flowgate_engine::value::{Map, Value};
use flowgate_sandbox::{Sandbox, SandboxConfig};
use tokio::io::AsyncWriteExt;

const CODE: &str = r#"import json

def main(payload: str) -> dict:
    data = json.loads(payload)
    items = [{"id": item["id"], "total": round(item["price"] * item["qty"], 2)} for item in data["items"]]
    by_total = sorted(items, key=lambda item: item["total"], reverse=True)
    return {"count": len(items), "total": round(sum(item["total"] for item in items), 2), "top": [item["id"] for item in by_total[:3]]}
"#;

fn payload() -> String {
    let items: Vec<String> = (0..40)
        .map(|index| format!(r#"{{"id": "sku-{index}", "price": {}.{:02}, "qty": {}}}"#, index % 17 + 1, index * 7 % 100, index % 5 + 1))
        .collect();
    format!(r#"{{"customer": "c-1", "items": [{}]}}"#, items.join(", "))
}

const JAVASCRIPT: &str = r#"function main({payload}) {
    const data = JSON.parse(payload);
    const items = data.items.map(item => ({id: item.id, total: Math.round(item.price * item.qty * 100) / 100}));
    const byTotal = [...items].sort((a, b) => b.total - a.total);
    return {count: items.length, total: Math.round(items.reduce((sum, item) => sum + item.total, 0) * 100) / 100, top: byTotal.slice(0, 3).map(item => item.id)};
}"#;

/// The table preview of the corpus' File_read.yml (pandas), on a 200-row CSV.
const PANDAS: &str = r#"import io
import pandas as pd

def main(payload: str) -> dict:
    df = pd.read_csv(io.StringIO(payload))
    sample_df = df.head()
    markdown = "|" + "|".join(str(col) for col in sample_df.columns) + "|\n"
    for _, row in sample_df.iterrows():
        markdown += "|" + "|".join(str(val) for val in row.values) + "|\n"
    return {"result": markdown, "rows": len(df), "by_city": df.groupby("city")["price"].sum().round(2).to_dict()}
"#;

fn csv() -> String {
    let cities = ["Berlin", "Paris", "Rome", "Madrid"];
    let rows: Vec<String> =
        (0..200).map(|index| format!("{},sku-{index},{}.{:02}", cities[index % 4], index % 17 + 1, index * 7 % 100)).collect();
    format!("city,product,price\n{}\n", rows.join("\n"))
}

fn call_in(language: &str, code: &str, payload: &str) -> CodeCall {
    let mut inputs = Map::default();
    inputs.insert(Arc::from("payload"), Value::str(payload));
    let name: Arc<str> = Arc::from("bench");
    let context = PortContext {
        node_id: name.clone(),
        node_type: Arc::from("code"),
        title: name.clone(),
        run_id: name.clone(),
        app_id: name.clone(),
        user_id: name,
    };
    CodeCall { context, language: language.into(), code: code.into(), inputs }
}

struct Options {
    executions: usize,
    cold: usize,
    concurrency: usize,
    /// A pause after each execution in every loop: a load below saturation.
    pause_ms: u64,
    /// Rounds of the protection-cost table (0: none): the pool with each protection turned off
    /// in turn, alternating, medians of the rounds.
    costs: usize,
    /// An interpreter with pandas (`scripts/sdk-python sandbox-packages`), for the pandas rows.
    packages_python: Option<String>,
    pandas: usize,
}

fn options() -> Result<Options, String> {
    let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
    let mut options =
        Options { executions: 100_000, cold: 300, concurrency: cores, pause_ms: 0, costs: 0, packages_python: None, pandas: 300 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--packages-python" {
            options.packages_python = Some(value);
            continue;
        }
        let number: usize = value.parse().map_err(|_| format!("{flag}: '{value}' is not a number"))?;
        match flag.as_str() {
            "--executions" => options.executions = number.max(1),
            "--cold" => options.cold = number,
            "--concurrency" => options.concurrency = number.max(1),
            "--pause-ms" => options.pause_ms = number as u64,
            "--pandas" => options.pandas = number,
            "--costs" => options.costs = number,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn pool_rss_mib(sandbox: &Sandbox) -> f64 {
    let pids = sandbox.zygote_pids().await;
    pids.iter().map(|pid| rss_kib(*pid)).sum::<u64>() as f64 / 1024.0
}

/// Runs `total` executions from `concurrency` loops; returns each one's latency.
async fn through_pool(sandbox: &Sandbox, payload: &Arc<str>, total: usize, concurrency: usize, pause: Duration) -> Vec<Duration> {
    through(sandbox, "python3", CODE, payload, total, concurrency, pause).await
}

async fn through(
    sandbox: &Sandbox,
    language: &'static str,
    code: &'static str,
    payload: &Arc<str>,
    total: usize,
    concurrency: usize,
    pause: Duration,
) -> Vec<Duration> {
    let per_loop = total.div_ceil(concurrency);
    let loops = (0..concurrency).map(|_| {
        let sandbox = sandbox.clone();
        let payload = payload.clone();
        async move {
            let mut latencies = Vec::with_capacity(per_loop);
            for _ in 0..per_loop {
                let started = Instant::now();
                let result = sandbox.execute(call_in(language, code, &payload)).await;
                latencies.push(started.elapsed());
                if let Err(error) = result {
                    eprintln!("execution failed: {error}");
                    std::process::exit(1);
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            latencies
        }
    });
    futures::future::join_all(loops).await.into_iter().flatten().collect()
}

/// The same code in a fresh `python3` per execution, with Dify's wrapper (`main(**inputs)`, the
/// result printed between `<<RESULT>>` markers).
async fn cold_python(python: &str, code: &str, payload: &str, total: usize, concurrency: usize) -> Vec<Duration> {
    let inputs = serde_json::json!({"payload": payload}).to_string();
    let program = Arc::new(format!(
        "{code}\nimport json as _json\n_out = main(**_json.loads({inputs:?}))\nprint('<<RESULT>>' + _json.dumps(_out) + '<<RESULT>>')\n"
    ));
    let per_loop = total.div_ceil(concurrency);
    let loops = (0..concurrency).map(|_| {
        let program = program.clone();
        let python = python.to_owned();
        async move {
            let mut latencies = Vec::with_capacity(per_loop);
            for _ in 0..per_loop {
                let started = Instant::now();
                let spawned = tokio::process::Command::new(&python)
                    .arg("-")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn();
                let Ok(mut child) = spawned else {
                    eprintln!("cannot start python3");
                    std::process::exit(1);
                };
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(program.as_bytes()).await;
                }
                let output = child.wait_with_output().await;
                latencies.push(started.elapsed());
                if !output.is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("<<RESULT>>")) {
                    eprintln!("a cold python3 execution failed");
                    std::process::exit(1);
                }
            }
            latencies
        }
    });
    futures::future::join_all(loops).await.into_iter().flatten().collect()
}

fn report(name: &str, mut latencies: Vec<Duration>, wall: Duration) {
    latencies.sort();
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.len() as f64 / wall.as_secs_f64(),
    );
}

fn main() {
    // The JavaScript workers of the sandbox under test are this binary too.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == flowgate_sandbox::JAVASCRIPT_WORKER_ARG) {
        std::process::exit(if flowgate_sandbox::javascript_worker_main() == std::process::ExitCode::SUCCESS { 0 } else { 1 });
    }
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        let mut config = SandboxConfig::new(std::env::temp_dir().join(format!("flowgate-bench-sandbox-{}", std::process::id())));
        config.workers = options.concurrency;
        let sandbox = match Sandbox::start(config).await {
            Ok(sandbox) => sandbox,
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        };
        let payload: Arc<str> = Arc::from(payload());
        println!("sandbox: {}", sandbox.protections().describe());
        println!("concurrency {} (cores {})", options.concurrency, std::thread::available_parallelism().map_or(0, |cores| cores.get()));
        // Warm every zygote before measuring.
        let pause = Duration::from_millis(options.pause_ms);
        through_pool(&sandbox, &payload, options.concurrency * 20, options.concurrency, Duration::ZERO).await;

        println!();
        println!("| how | executions | p50 ms | p90 ms | p99 ms | executions/s |");
        println!("|---|---|---|---|---|---|");
        let checkpoints = 10.min(options.executions);
        let mut all = Vec::with_capacity(options.executions);
        let mut memory = vec![(0usize, pool_rss_mib(&sandbox).await)];
        let started = Instant::now();
        for step in 0..checkpoints {
            let chunk = options.executions / checkpoints + usize::from(step < options.executions % checkpoints);
            all.extend(through_pool(&sandbox, &payload, chunk, options.concurrency, pause).await);
            memory.push((all.len(), pool_rss_mib(&sandbox).await));
        }
        report("Python: flowgate zygote pool (fork per execution; namespaces, cgroup, seccomp, landlock)", all, started.elapsed());
        through(&sandbox, "javascript", JAVASCRIPT, &payload, options.concurrency * 20, options.concurrency, Duration::ZERO).await;
        let started = Instant::now();
        let javascript =
            through(&sandbox, "javascript", JAVASCRIPT, &payload, options.executions.min(20_000), options.concurrency, pause).await;
        report("JavaScript: QuickJS, a fresh runtime per execution", javascript, started.elapsed());
        if options.cold > 0 {
            // The interpreter itself, not a launcher script in front of it (pyenv's shim).
            let python = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
                .unwrap_or_else(|_| "python3".into());
            let started = Instant::now();
            let cold = cold_python(&python, CODE, &payload, options.cold, options.concurrency).await;
            report(&format!("Python: cold {python} per execution"), cold, started.elapsed());
        }
        if let (Some(python), true) = (&options.packages_python, options.pandas > 0) {
            pandas_rows(python, &options).await;
        }
        if options.costs > 0 {
            protection_costs(&payload, &options).await;
        }
        println!();
        println!("| executions | pool RSS (all zygotes) |");
        println!("|---|---|");
        for (executions, mib) in memory {
            println!("| {executions} | {mib:.1} MiB |");
        }
    });
}

/// What each protection costs: the pool with one protection off at a time (and all off), in
/// alternating rounds so that a machine's drift hits every variant alike; medians of the rounds.
async fn protection_costs(payload: &Arc<str>, options: &Options) {
    type Switch = fn(&mut SandboxConfig);
    let variants: [(&str, Switch); 6] = [
        ("all protections", |_| {}),
        ("without namespaces (the mount tree, pid, user, IPC, UTS, network)", |config| config.namespaces = false),
        ("without cgroups", |config| config.cgroups = false),
        ("without seccomp", |config| config.seccomp = false),
        ("without landlock", |config| config.landlock = false),
        ("without any of them (fork, rlimits, dropped privileges)", |config| {
            config.namespaces = false;
            config.cgroups = false;
            config.seccomp = false;
            config.landlock = false;
        }),
    ];
    let executions = options.executions.min(3000);
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    for _ in 0..options.costs {
        for (index, (_, switch)) in variants.iter().enumerate() {
            let mut config = SandboxConfig::new(std::env::temp_dir().join(format!("flowgate-bench-costs-{index}-{}", std::process::id())));
            config.workers = options.concurrency;
            switch(&mut config);
            let Ok(sandbox) = Sandbox::start(config).await else {
                eprintln!("error: the sandbox without {} did not start", variants[index].0);
                continue;
            };
            through_pool(&sandbox, payload, options.concurrency * 20, options.concurrency, Duration::ZERO).await;
            let started = Instant::now();
            let mut latencies = through_pool(&sandbox, payload, executions, options.concurrency, Duration::ZERO).await;
            let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
            latencies.sort();
            results[index].push((percentile(&latencies, 0.5), rate));
        }
    }
    println!();
    println!(
        "What each protection costs ({} rounds of {executions} executions at concurrency {}, medians):",
        options.costs, options.concurrency
    );
    println!();
    println!("| Python pool | p50 ms | executions/s |");
    println!("|---|---|---|");
    for ((name, _), rounds) in variants.iter().zip(&mut results) {
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(0.0)
        };
        let (mut p50s, mut rates): (Vec<f64>, Vec<f64>) = rounds.iter().copied().unzip();
        println!("| {name} | {:.2} | {:.0} |", median(&mut p50s), median(&mut rates));
    }
}

/// A pandas code node: imported by each execution, preloaded in the zygotes
/// (`--code-preload pandas`), and in a cold interpreter per execution.
async fn pandas_rows(python: &str, options: &Options) {
    let csv: Arc<str> = Arc::from(csv());
    for preload in [false, true] {
        let mut config = SandboxConfig::new(std::env::temp_dir().join(format!("flowgate-bench-pandas-{preload}-{}", std::process::id())));
        config.workers = options.concurrency;
        config.python = python.into();
        if preload {
            config.preload = vec!["pandas".into()];
        }
        let sandbox = match Sandbox::start(config).await {
            Ok(sandbox) => sandbox,
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        };
        through(&sandbox, "python3", PANDAS, &csv, options.concurrency * 4, options.concurrency, Duration::ZERO).await;
        let started = Instant::now();
        let latencies = through(&sandbox, "python3", PANDAS, &csv, options.pandas, options.concurrency, Duration::ZERO).await;
        let how = if preload { "pandas: zygote pool, `--code-preload pandas`" } else { "pandas: zygote pool, imported by the code" };
        report(how, latencies, started.elapsed());
    }
    let started = Instant::now();
    let cold = cold_python(python, PANDAS, &csv, options.pandas.min(options.cold.max(1)), options.concurrency).await;
    report("pandas: cold python3 per execution", cold, started.elapsed());
}
