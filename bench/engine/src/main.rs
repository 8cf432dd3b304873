//! Engine benchmark: runs bench2, bench10-noio and bench60-bigdata in-process, many times, and
//! prints runs/s, µs per node and peak RSS next to graphon (Dify's engine) running the same
//! files in-process on the same machine.
//!
//! ```text
//! bench/engine/run [--seconds N] [--no-graphon]
//! ```
//!
//! Each workload runs in a child process of its own, so peak RSS belongs to that workload
//! alone. flowgate runs on one thread (a current-thread runtime); the plan is compiled once,
//! as the server does per app version, and every run validates its inputs from JSON and builds
//! its full event stream. graphon builds its engine from the DSL for every run, as Dify does per
//! request; its "run only" time reuses the parsed YAML.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use flowgate_dsl::Document;
use flowgate_engine::{Engine, Plan, RunEvent, RunRequest};

struct Workload {
    name: &'static str,
    file: &'static str,
}

const WORKLOADS: [Workload; 3] = [
    Workload { name: "bench2", file: "bench2.yml" },
    Workload { name: "bench10-noio", file: "bench10-noio.yml" },
    Workload { name: "bench60-bigdata", file: "bench60-bigdata.yml" },
];

fn workloads_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads")
}

/// The inputs the workload README prescribes.
fn inputs_for(name: &str) -> Result<serde_json::Map<String, Json>, String> {
    let value = if name == "bench60-bigdata" {
        let master =
            std::fs::read_to_string(workloads_dir().join("master_5000.json")).map_err(|error| format!("master_5000.json: {error}"))?;
        json!({"master": master, "sku": "SKU01234"})
    } else {
        json!({"text": "urgent: check order", "n": 50})
    };
    match value {
        Json::Object(map) => Ok(map),
        _ => Err("inputs are not an object".into()),
    }
}

struct Options {
    seconds: f64,
    graphon_python: Option<PathBuf>,
    child: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options { seconds: 5.0, graphon_python: None, child: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => options.seconds = value()?.parse().map_err(|_| "--seconds takes a number".to_owned())?,
            "--graphon-python" => options.graphon_python = Some(PathBuf::from(value()?)),
            "--child" => options.child = Some(value()?),
            other => return Err(format!("unknown argument {other}; usage: flowgate-bench-engine [--seconds N] [--graphon-python PATH]")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|options| match &options.child {
        Some(name) => measure_flowgate(name, options.seconds).map(|report| println!("{report}")),
        None => compare(&options),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Peak resident set size of this process, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Child process: measures one workload on flowgate and prints one JSON line.
fn measure_flowgate(name: &str, seconds: f64) -> Result<Json, String> {
    let workload = WORKLOADS.iter().find(|workload| workload.name == name).ok_or_else(|| format!("unknown workload {name}"))?;
    let text = std::fs::read_to_string(workloads_dir().join(workload.file)).map_err(|error| format!("{}: {error}", workload.file))?;
    let inputs = inputs_for(name)?;

    // Import + compile, as on the first request for an app version.
    let compile_rounds = 20;
    let started = Instant::now();
    let mut plan = None;
    for _ in 0..compile_rounds {
        let document = Document::load(&text).map_err(|error| error.to_string())?;
        plan = Some(Plan::compile(&document).map_err(|error| error.to_string())?);
    }
    let compile_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(compile_rounds);
    let plan = Arc::new(plan.ok_or("no plan")?);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|error| error.to_string())?;
    let engine = Engine::default();
    // The request body is parsed once here, as the server parses it once per request.
    let inputs: flowgate_engine::Map = serde_json::from_str(&Json::Object(inputs).to_string()).map_err(|error| error.to_string())?;
    let request = RunRequest { inputs, ..RunRequest::default() };

    let mut nodes_per_run = 0usize;
    let mut run_once = |count_nodes: bool| {
        let mut nodes = 0usize;
        let mut sink = |event: RunEvent| {
            if matches!(event, RunEvent::NodeFinished(_)) {
                nodes += 1;
            }
        };
        let summary = runtime.block_on(engine.run(&plan, request.clone(), &mut sink, None));
        if count_nodes {
            nodes_per_run = nodes;
        }
        summary
    };

    let first = run_once(true).map_err(|error| error.to_string())?;
    let outputs = serde_json::to_value(flowgate_engine::value::MapRef(&first.outputs)).map_err(|error| error.to_string())?;
    let status = first.status.as_str().to_owned();

    // Warm up, then run for the time given, reading the clock every batch.
    let warm_until = Instant::now() + Duration::from_secs_f64((seconds / 10.0).min(1.0));
    while Instant::now() < warm_until {
        let _ = run_once(false);
    }
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget {
        for _ in 0..16 {
            let _ = run_once(false);
        }
        runs += 16;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "runs": runs,
        "seconds": elapsed,
        "nodes_per_run": nodes_per_run,
        "compile_us": compile_us,
        "peak_rss_kib": peak_rss_kib(),
        "status": status,
        "outputs": outputs,
    }))
}

fn run_child(command: &mut Command, what: &str) -> Result<Json, String> {
    let output = command.output().map_err(|error| format!("{what}: {error}"))?;
    if !output.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|line| line.starts_with('{')).ok_or_else(|| format!("{what} printed no result"))?;
    serde_json::from_str(line).map_err(|error| format!("{what}: {error}"))
}

fn measure_graphon(python: &Path, name: &str, file: &Path, seconds: f64) -> Result<Json, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphon_bench.py");
    let inputs = Json::Object(inputs_for(name)?).to_string();
    let inputs_file = std::env::temp_dir().join(format!("flowgate-bench-{name}-inputs.json"));
    std::fs::write(&inputs_file, inputs).map_err(|error| error.to_string())?;
    let result =
        run_child(Command::new(python).arg(script).arg(file).arg(&inputs_file).arg(seconds.to_string()), &format!("graphon on {name}"));
    let _ = std::fs::remove_file(&inputs_file);
    result
}

fn number(value: &Json, key: &str) -> f64 {
    value.get(key).and_then(Json::as_f64).unwrap_or(f64::NAN)
}

fn compare(options: &Options) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|error| error.to_string())?;
    println!(
        "flowgate engine benchmark: {:.0} s per workload, flowgate on one thread (plan compiled once), graphon 0.8 in-process (engine built per run)",
        options.seconds
    );
    if options.graphon_python.is_none() {
        println!("(graphon not run: pass --graphon-python, or use bench/engine/run)");
    }
    println!();
    println!(
        "{:<16} {:>5} | {:>12} {:>9} {:>8} {:>10} {:>9} | {:>11} {:>9} {:>9} {:>10} | {:>8} {:>7}",
        "workload",
        "nodes",
        "fg runs/s",
        "µs/run",
        "µs/node",
        "peak RSS",
        "load µs",
        "graphon r/s",
        "ms/run",
        "run-only",
        "peak RSS",
        "speed-up",
        "same?"
    );
    for workload in &WORKLOADS {
        let flowgate = run_child(
            Command::new(&me).args(["--child", workload.name, "--seconds", &options.seconds.to_string()]),
            &format!("flowgate on {}", workload.name),
        )?;
        let graphon = match &options.graphon_python {
            Some(python) => Some(measure_graphon(python, workload.name, &workloads_dir().join(workload.file), options.seconds)?),
            None => None,
        };
        let runs_per_second = number(&flowgate, "runs") / number(&flowgate, "seconds");
        let us_per_run = 1e6 / runs_per_second;
        let nodes = number(&flowgate, "nodes_per_run");
        let mib = |value: &Json| number(value, "peak_rss_kib") / 1024.0;
        let (graphon_rate, graphon_ms, graphon_run_only, graphon_rss, speedup, same) = match &graphon {
            Some(graphon) => {
                let ms = number(graphon, "ms_per_run");
                let same = graphon.get("outputs") == flowgate.get("outputs") && graphon.get("status") == flowgate.get("status");
                (
                    format!("{:.1}", 1e3 / ms),
                    format!("{ms:.2}"),
                    format!("{:.2}", number(graphon, "run_only_ms")),
                    format!("{:.1} MiB", mib(graphon)),
                    format!("{:.0}×", ms * 1e3 / us_per_run),
                    if same { "yes" } else { "NO" }.to_owned(),
                )
            }
            None => Default::default(),
        };
        println!(
            "{:<16} {:>5} | {:>12.0} {:>9.2} {:>8.3} {:>6.1} MiB {:>9.0} | {:>11} {:>9} {:>9} {:>10} | {:>8} {:>7}",
            workload.name,
            nodes,
            runs_per_second,
            us_per_run,
            us_per_run / nodes,
            mib(&flowgate),
            number(&flowgate, "compile_us"),
            graphon_rate,
            graphon_ms,
            graphon_run_only,
            graphon_rss,
            speedup,
            same
        );
        if let Some(graphon) = &graphon
            && graphon.get("outputs") != flowgate.get("outputs")
        {
            eprintln!("  outputs differ on {}: flowgate {} / graphon {}", workload.name, flowgate["status"], graphon["status"]);
        }
    }
    println!();
    println!(
        "fg runs/s, µs/run: one thread, inputs validated and the event stream built on every run. load µs: DSL import + plan compile, once per app version."
    );
    println!(
        "graphon ms/run: YAML load + graph build + run per run (Dify's per-request path); run-only: the YAML parsed once. speed-up: graphon ms/run ÷ flowgate µs/run."
    );
    println!("same?: final status and outputs identical to graphon's.");
    Ok(())
}
