//! HTTP benchmark: `flowgate serve` under load, on SQLite and PostgreSQL, next to a bare axum
//! handler (the machine's ceiling for an HTTP request with a JSON body), in one command.
//!
//! ```text
//! bench/http/run [--seconds N] [--only NAME,NAME] [--soak RUNS] [--no-postgres]
//! ```
//!
//! Every server runs in a process of its own (the hello server is this binary with `--hello`),
//! so its CPU time and RSS are its own; the load generator shares the machine with it. Each
//! flowgate server gets a fresh data directory (and on PostgreSQL a fresh database), imports
//! the workload with `flowgate apps import` and runs with the default policy: full run logs.
//!
//! Scenarios:
//! - `hello`: the bare handler, 64 connections.
//! - `blocking`: bench10-noio, blocking, 64 connections, SQLite then PostgreSQL: as fast as it
//!   goes (closed loop), then at the target rate (open loop; latency from when each request was
//!   due).
//! - `streaming`: bench10-noio, streaming (every event read), 64 connections, SQLite then PostgreSQL.
//! - `bigdata`: bench60-bigdata with the 374 KB table in every request, one connection; run-log
//!   bytes per run (database and blob growth) when runs carry the same table and when every
//!   run's table differs, on PostgreSQL (where Dify's 30.6 MB per run was measured) and SQLite.
//! - `recorder`: no HTTP: bench10-noio run in-process straight into the run log, to show the
//!   log's own ceiling and what each of its threads spends per run.
//! - `soak` (only with `--soak RUNS`): bench10-noio blocking, 64 connections, RUNS runs on
//!   SQLite with retention 1 day; after every tenth a purge as if two days had passed; server
//!   RSS and database size after each tenth.

mod client;
mod gateway;
mod recorder;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use sqlx::Connection;

use client::{MakeRequest, Outcome, Pace, Request, Until, load, load_paced};

const CONNECTIONS: usize = 64;

/// The server's allocator, so the in-process `recorder` scenario measures what the server does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Options {
    flowgate: PathBuf,
    seconds: u64,
    only: Option<Vec<String>>,
    soak: Option<u64>,
    postgres: bool,
    /// The gateway scenario: the mock upstream's binary, LiteLLM's, and the rates.
    mock: PathBuf,
    litellm: Option<PathBuf>,
    rates: Vec<f64>,
    litellm_rates: Vec<f64>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        flowgate: PathBuf::from("target/release/flowgate"),
        seconds: 10,
        only: None,
        soak: None,
        postgres: true,
        mock: PathBuf::from("target/release/flowgate-mock-upstream"),
        litellm: None,
        rates: vec![100.0, 1000.0, 5000.0],
        litellm_rates: vec![100.0],
    };
    let rates = |text: String| {
        text.split(',').map(|rate| rate.trim().parse::<f64>().map_err(|_| format!("bad rate {rate}"))).collect::<Result<Vec<_>, _>>()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--flowgate" => options.flowgate = PathBuf::from(value()?),
            "--seconds" => options.seconds = value()?.parse().map_err(|_| "--seconds needs a number".to_owned())?,
            "--only" => options.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--soak" => options.soak = Some(value()?.parse().map_err(|_| "--soak needs a number of runs".to_owned())?),
            "--no-postgres" => options.postgres = false,
            "--mock" => options.mock = PathBuf::from(value()?),
            "--litellm" => options.litellm = Some(PathBuf::from(value()?)),
            "--rates" => options.rates = rates(value()?)?,
            "--litellm-rates" => options.litellm_rates = rates(value()?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn workload(name: &str) -> PathBuf {
    repo_root().join("bench/workloads").join(name)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--hello") {
        return hello_server(&args.next().unwrap_or_default());
    }
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The reference: axum reading the same JSON body and answering a small JSON object.
fn hello_server(address: &str) -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let app = axum::Router::new().route(
            "/v1/workflows/run",
            axum::routing::post(|axum::Json(body): axum::Json<Json>| async move {
                axum::Json(json!({"hello": "world", "fields": body.as_object().map_or(0, serde_json::Map::len)}))
            }),
        );
        let Ok(listener) = tokio::net::TcpListener::bind(address).await else {
            return ExitCode::FAILURE;
        };
        match axum::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }
    })
}

fn selected(options: &Options, name: &str) -> bool {
    options.only.as_ref().is_none_or(|only| only.iter().any(|wanted| wanted == name))
}

fn free_address() -> Result<String, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
    Ok(listener.local_addr().map_err(|error| error.to_string())?.to_string())
}

/// A server process under test.
struct Server {
    child: Child,
    address: String,
    data_dir: PathBuf,
    database: Option<String>,
    api_key: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(name) = self.database.take() {
            let _ = std::thread::spawn(move || postgres_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).join();
        }
    }
}

fn postgres_base() -> String {
    std::env::var("FLOWGATE_BENCH_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn postgres_admin(sql: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let mut connection =
            sqlx::PgConnection::connect(&format!("{}/test", postgres_base())).await.map_err(|error| format!("PostgreSQL: {error}"))?;
        sqlx::query(sql).execute(&mut connection).await.map_err(|error| error.to_string())?;
        Ok(())
    })
}

async fn wait_for(address: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {address} after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Database {
    Sqlite,
    Postgres,
}

impl Database {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

async fn start_flowgate(options: &Options, database: Database, dsl: &str, policy: &[&str]) -> Result<Server, String> {
    let data_dir = std::env::temp_dir().join(format!("flowgate-bench-{}", uuid::Uuid::new_v4().simple()));
    let database_name = (database == Database::Postgres).then(|| format!("flowgate_bench_{}", uuid::Uuid::new_v4().simple()));
    if let Some(name) = &database_name {
        let sql = format!("CREATE DATABASE {name}");
        std::thread::spawn(move || postgres_admin(&sql)).join().map_err(|_| "CREATE DATABASE panicked".to_owned())??;
    }
    let command = |args: &[&str]| {
        let mut command = Command::new(&options.flowgate);
        command.args(args).env("FLOWGATE_DATA_DIR", &data_dir).env_remove("DATABASE_URL").env("FLOWGATE_LOG", "warn");
        if let Some(name) = &database_name {
            command.env("DATABASE_URL", format!("{}/{name}", postgres_base()));
        }
        command
    };
    let imported = command(&["apps", "import", dsl]).output().map_err(|error| format!("{}: {error}", options.flowgate.display()))?;
    if !imported.status.success() {
        return Err(format!("import failed: {}", String::from_utf8_lossy(&imported.stderr)));
    }
    let imported: Json = serde_json::from_slice(&imported.stdout).map_err(|error| error.to_string())?;
    let app_id = imported["app_id"].as_str().unwrap_or_default().to_owned();
    if !policy.is_empty() {
        let mut args = vec!["apps", "policy", app_id.as_str()];
        args.extend_from_slice(policy);
        let output = command(&args).output().map_err(|error| error.to_string())?;
        if !output.status.success() {
            return Err(format!("policy failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
    }
    let address = free_address()?;
    let child = command(&["serve", "--listen", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| error.to_string())?;
    let server = Server {
        child,
        address: address.clone(),
        data_dir,
        database: database_name,
        api_key: imported["api_key"].as_str().unwrap_or_default().to_owned(),
    };
    wait_for(&address).await?;
    Ok(server)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("VmRSS:").and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

struct Row {
    scenario: String,
    database: &'static str,
    pace: Pace,
    measured: Measured,
    rss_mib: f64,
}

fn print_header() {
    println!(
        "| scenario | database | load (64 connections) | requests/s | p50 ms | p99 ms | server CPU ms/req | PostgreSQL CPU ms/req | load generator CPU ms/req | server RSS MiB | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(row: &Row) {
    let measured = &row.measured;
    let database_cpu = if row.database == "PostgreSQL" { format!("{:.3}", measured.database_cpu_ms) } else { "-".into() };
    let load = match row.pace {
        Pace::AsFastAsPossible => "closed loop".to_owned(),
        Pace::PerSecond(rate) => format!("{rate:.0}/s offered"),
    };
    println!(
        "| {} | {} | {load} | {:.0} | {:.2} | {:.2} | {:.3} | {database_cpu} | {:.3} | {:.1} | {} |",
        row.scenario,
        row.database,
        measured.outcome.per_second(),
        measured.outcome.percentile_ms(50.0),
        measured.outcome.percentile_ms(99.0),
        measured.server_cpu_ms,
        measured.client_cpu_ms,
        row.rss_mib,
        measured.outcome.failed
    );
    if let Some(failure) = &measured.outcome.first_failure {
        println!("|  | first failure: {} |", failure.replace('|', "/").replace('\n', " "));
    }
}

/// A load and what it cost: CPU ms per successful request of the server, of PostgreSQL's
/// processes and of this load generator, over the same window.
#[derive(Clone)]
struct Measured {
    outcome: Outcome,
    server_cpu_ms: f64,
    database_cpu_ms: f64,
    client_cpu_ms: f64,
}

/// CPU seconds of every PostgreSQL process on the machine.
fn postgres_cpu_seconds() -> f64 {
    let Ok(processes) = std::fs::read_dir("/proc") else { return 0.0 };
    processes
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|byte| byte.is_ascii_digit()))
        .filter(|entry| std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|name| name.starts_with("postgres")))
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .map(cpu_seconds)
        .filter(|seconds| seconds.is_finite())
        .sum()
}

/// A warm-up, then a measured load.
async fn measure(pid: u32, address: &str, make: MakeRequest, seconds: u64, pace: Pace) -> Measured {
    load_paced(address, CONNECTIONS, make.clone(), Until::Elapsed(Duration::from_secs(2)), pace, false).await;
    let (server_before, database_before, client_before) = (cpu_seconds(pid), postgres_cpu_seconds(), cpu_seconds(std::process::id()));
    let outcome = load_paced(address, CONNECTIONS, make, Until::Elapsed(Duration::from_secs(seconds)), pace, true).await;
    let per_request = |seconds: f64| seconds * 1000.0 / outcome.ok.max(1) as f64;
    Measured {
        server_cpu_ms: per_request(cpu_seconds(pid) - server_before),
        database_cpu_ms: per_request(postgres_cpu_seconds() - database_before),
        client_cpu_ms: per_request(cpu_seconds(std::process::id()) - client_before),
        outcome,
    }
}

/// CPU seconds of a process and all its descendants (LiteLLM's workers are child processes).
fn tree_cpu_seconds(root: u32) -> f64 {
    let Ok(processes) = std::fs::read_dir("/proc") else { return f64::NAN };
    let parents: Vec<(u32, u32)> = processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut tree = vec![root];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(parents.iter().filter(|(_, of)| *of == parent).map(|(pid, _)| *pid));
        index += 1;
    }
    tree.into_iter().map(cpu_seconds).filter(|seconds| seconds.is_finite()).sum()
}

/// Like [`measure`], with the CPU of the server's whole process tree and no database.
async fn measure_tree(pid: u32, address: &str, make: MakeRequest, seconds: u64, pace: Pace) -> Measured {
    load_paced(address, CONNECTIONS, make.clone(), Until::Elapsed(Duration::from_secs(2)), pace, false).await;
    let (server_before, client_before) = (tree_cpu_seconds(pid), cpu_seconds(std::process::id()));
    let outcome = load_paced(address, CONNECTIONS, make, Until::Elapsed(Duration::from_secs(seconds)), pace, true).await;
    let per_request = |seconds: f64| seconds * 1000.0 / outcome.ok.max(1) as f64;
    Measured {
        server_cpu_ms: per_request(tree_cpu_seconds(pid) - server_before),
        database_cpu_ms: 0.0,
        client_cpu_ms: per_request(cpu_seconds(std::process::id()) - client_before),
        outcome,
    }
}

fn bench10_body(streaming: bool) -> String {
    json!({
        "inputs": {"text": "urgent: check order", "n": 50},
        "response_mode": if streaming { "streaming" } else { "blocking" },
        "user": "bench",
    })
    .to_string()
}

fn fixed(request: Request) -> MakeRequest {
    let request = Arc::new(request);
    Arc::new(move |_| request.clone())
}

async fn run(options: Options) -> Result<(), String> {
    println!("flowgate HTTP benchmark: {} s per scenario after a 2 s warm-up, load generator on this machine\n", options.seconds);
    let databases: Vec<Database> = if options.postgres { vec![Database::Sqlite, Database::Postgres] } else { vec![Database::Sqlite] };
    let mut header_printed = false;
    let mut header = || {
        if !header_printed {
            print_header();
            header_printed = true;
        }
    };

    if selected(&options, "hello") {
        header();
        let address = free_address()?;
        let exe = std::env::current_exe().map_err(|error| error.to_string())?;
        let mut child = Command::new(exe).args(["--hello", &address]).spawn().map_err(|error| error.to_string())?;
        wait_for(&address).await?;
        let make = fixed(Request::post_json(&address, "/v1/workflows/run", "none", &bench10_body(false), vec!["\"hello\""]));
        let measured = measure(child.id(), &address, make, options.seconds, Pace::AsFastAsPossible).await;
        print_row(&Row {
            scenario: "bare axum hello (ceiling)".into(),
            database: "-",
            pace: Pace::AsFastAsPossible,
            rss_mib: rss_mib(child.id()),
            measured,
        });
        let _ = child.kill();
        let _ = child.wait();
    }

    // Each scenario at full speed (closed loop); blocking runs also at their target rate (open
    // loop: 5,000/s on SQLite, 3,000/s on PostgreSQL), where the latency target applies.
    for (scenario, streaming) in [("blocking", false), ("streaming", true)] {
        if !selected(&options, scenario) {
            continue;
        }
        for &database in &databases {
            header();
            let dsl = workload("bench10-noio.yml");
            let server = start_flowgate(&options, database, &dsl.to_string_lossy(), &[]).await?;
            let expect = if streaming { vec!["workflow_finished", "\"succeeded\""] } else { vec!["\"succeeded\""] };
            let make = fixed(Request::post_json(&server.address, "/v1/workflows/run", &server.api_key, &bench10_body(streaming), expect));
            let target_rate = if database == Database::Sqlite { 5_000.0 } else { 3_000.0 };
            let paces = if streaming { vec![Pace::AsFastAsPossible] } else { vec![Pace::AsFastAsPossible, Pace::PerSecond(target_rate)] };
            for pace in paces {
                let measured = measure(server.child.id(), &server.address, make.clone(), options.seconds, pace).await;
                print_row(&Row {
                    scenario: format!("bench10-noio {scenario}"),
                    database: database.name(),
                    pace,
                    rss_mib: rss_mib(server.child.id()),
                    measured,
                });
            }
        }
    }

    if selected(&options, "recorder") {
        println!();
        recorder::ceiling(options.seconds).await?;
    }

    if selected(&options, "bigdata") {
        println!();
        bigdata(&options, &databases).await?;
    }
    if let Some(runs) = options.soak {
        println!();
        soak(&options, runs).await?;
    }
    // Only when asked for: it needs the mock upstream's binary (and LiteLLM for the comparison).
    if options.only.as_ref().is_some_and(|only| only.iter().any(|name| name == "gateway")) {
        println!();
        gateway::run(&options.flowgate, &options.mock, options.litellm.as_deref(), &options.rates, &options.litellm_rates, options.seconds)
            .await?;
    }
    Ok(())
}

/// Bytes the run log occupies: the database and the blob directory.
async fn stored_bytes(server: &Server) -> Result<(i64, i64), String> {
    let mut config = flowgate_store::StoreConfig::embedded(&server.data_dir);
    if let Some(name) = &server.database {
        config.database_url = Some(format!("{}/{name}", postgres_base()));
    }
    let store = flowgate_store::Store::open(config).await.map_err(|error| error.to_string())?;
    let database = store.database_bytes().await.map_err(|error| error.to_string())?;
    Ok((database, directory_bytes(&server.data_dir.join("blobs"))))
}

fn directory_bytes(path: &Path) -> i64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
            Ok(metadata) => i64::try_from(metadata.len()).unwrap_or(i64::MAX),
            Err(_) => 0,
        })
        .sum()
}

/// Dify 1.13 on this machine: Postgres + files per bench60 run.
const DIFY_BYTES_PER_RUN: f64 = 30.6e6;

async fn bigdata(options: &Options, databases: &[Database]) -> Result<(), String> {
    let master = std::fs::read_to_string(workload("master_5000.json")).map_err(|error| error.to_string())?;
    println!(
        "bench60-bigdata: {} KB table in every request, one connection, {} s per case, full run logs\n",
        master.len() / 1000,
        options.seconds
    );
    println!(
        "| tables | database | runs | p50 ms | p99 ms | server CPU ms/run | run-log bytes/run | Dify bytes/run ÷ ours | target | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &database in databases {
        for differing in [false, true] {
            let server = start_flowgate(options, database, &workload("bench60-bigdata.yml").to_string_lossy(), &[]).await?;
            let address = server.address.clone();
            let key = server.api_key.clone();
            let master = master.clone();
            // A differing table: the same rows with the first price changed, so every run's
            // table (and whatever nodes derive from it) hashes differently.
            let make: MakeRequest = Arc::new(move |sequence| {
                let table = if differing {
                    master.replacen("\"price\": 21829", &format!("\"price\": {}", 1_000_000 + sequence), 1)
                } else {
                    master.clone()
                };
                let body =
                    json!({"inputs": {"master": table, "sku": "SKU01234"}, "response_mode": "blocking", "user": "bench"}).to_string();
                Arc::new(Request::post_json(&address, "/v1/workflows/run", &key, &body, vec!["\"succeeded\""]))
            });
            // A few runs first (schema pages, the first payloads), then growth over the measured runs.
            load(&server.address, 1, make.clone(), Until::Requests(5), false).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (database_before, blobs_before) = stored_bytes(&server).await?;
            let cpu_before = cpu_seconds(server.child.id());
            let outcome = load(&server.address, 1, make, Until::Elapsed(Duration::from_secs(options.seconds)), true).await;
            let cpu = (cpu_seconds(server.child.id()) - cpu_before) * 1000.0 / outcome.ok.max(1) as f64;
            // The recorder writes off the request path: let it finish.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (database_after, blobs_after) = stored_bytes(&server).await?;
            let per_run = ((database_after - database_before) + (blobs_after - blobs_before)) as f64 / outcome.ok.max(1) as f64;
            let target = if differing { DIFY_BYTES_PER_RUN / 100.0 } else { DIFY_BYTES_PER_RUN / 1000.0 };
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0}× | ≤ {:.0} | {} |",
                if differing { "every run differs" } else { "same table" },
                database.name(),
                outcome.ok,
                outcome.percentile_ms(50.0),
                outcome.percentile_ms(99.0),
                cpu,
                per_run,
                DIFY_BYTES_PER_RUN / per_run.max(1.0),
                target,
                outcome.failed
            );
        }
    }
    Ok(())
}

/// A million-run soak (or `runs`): RSS and database size must level off. Each tenth of the runs
/// stands for a day: after it, the purge runs as if that day had passed, so with retention set
/// to one day only the latest tenth is kept. RSS is sampled four times a second while the load
/// runs; a tenth's figure is the median of its samples (one reading taken at an instant says
/// more about what was in flight at that instant than about a leak).
async fn soak(options: &Options, runs: u64) -> Result<(), String> {
    let tenth = (runs / 10).max(1);
    let server =
        start_flowgate(options, Database::Sqlite, &workload("bench10-noio.yml").to_string_lossy(), &["--retention-days", "1"]).await?;
    let store =
        flowgate_store::Store::open(flowgate_store::StoreConfig::embedded(&server.data_dir)).await.map_err(|error| error.to_string())?;
    let make =
        fixed(Request::post_json(&server.address, "/v1/workflows/run", &server.api_key, &bench10_body(false), vec!["\"succeeded\""]));
    println!("soak: {runs} runs of bench10-noio, blocking, {CONNECTIONS} connections, SQLite, full run logs, retention 1 day\n");
    println!(
        "| runs so far | runs/s in this tenth | server RSS MiB (median, max) | database MiB | runs kept | node executions kept | purged runs | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let pid = server.child.id();
    let mut medians = Vec::new();
    let mut failed = 0;
    for block in 1..=10 {
        let day_started = flowgate_store::now();
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = tokio::spawn({
            let sampling = sampling.clone();
            async move {
                let mut samples = Vec::new();
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    samples.push(rss_mib(pid));
                }
                samples
            }
        });
        let outcome = load(&server.address, CONNECTIONS, make.clone(), Until::Requests(tenth), false).await;
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut samples = sampler.await.map_err(|error| error.to_string())?;
        samples.retain(|sample| sample.is_finite());
        samples.sort_by(f64::total_cmp);
        let median = samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN);
        let max = samples.last().copied().unwrap_or(f64::NAN);
        medians.push(median);
        failed += outcome.failed;
        // Let the recorder catch up, then let "a day" pass for the purge.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let purged = store.purge_expired(day_started + 86_400).await.map_err(|error| error.to_string())?;
        let (kept_runs, kept_nodes, _) = store.run_log_size().await.map_err(|error| error.to_string())?;
        let database = store.database_bytes().await.map_err(|error| error.to_string())?;
        println!(
            "| {} | {:.0} | {median:.1}, {max:.1} | {:.1} | {} | {} | {} | {} |",
            block * tenth,
            outcome.per_second(),
            database as f64 / 1_048_576.0,
            kept_runs,
            kept_nodes,
            purged.runs,
            outcome.failed
        );
        if let Some(failure) = outcome.first_failure {
            println!("|  | first failure: {} |", failure.replace('|', "/").replace('\n', " "));
        }
    }
    let first = medians.first().copied().unwrap_or(f64::NAN);
    let last = medians.last().copied().unwrap_or(f64::NAN);
    println!(
        "\nmedian RSS in the last tenth is {:+.1}% of the first's (target: within ±5%); {failed} failed requests",
        (last - first) / first * 100.0
    );
    Ok(())
}
