//! The gateway benchmark (`bench/gateway/run`): the same streaming chat completion sent at fixed
//! rates (open loop) straight to the mock upstream, through flowgate's `/v1/chat/completions`,
//! and through LiteLLM's proxy (pinned, workers = cores), all in front of the same mock. Each
//! runs in a process of its own; added latency is the gateway's percentile minus the mock's at
//! the same rate, CPU is the gateway's process tree per request.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::client::{Pace, Request};
use crate::{CONNECTIONS, Measured, fixed, free_address, measure_tree, wait_for};

/// A process that is killed with its children when dropped.
struct Process {
    child: Child,
    address: String,
    _dir: Option<TempDir>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // LiteLLM's workers are its children: stop the whole group.
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> Result<TempDir, String> {
    let dir = std::env::temp_dir().join(format!("flowgate-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    Ok(TempDir(dir))
}

/// Its own process group, so that stopping it stops its workers too.
fn spawn(command: &mut Command) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    command.process_group(0).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|error| format!("{command:?}: {error}"))
}

const GATEWAY_KEY: &str = "fg-bench-gateway-key-0123456789abcdef";
const LITELLM_KEY: &str = "sk-bench-litellm-master-key-0123456789abcdef";
/// Twenty words: twenty chunks per streamed answer.
const REPLY: &str =
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";

fn body(model: &str) -> String {
    format!(r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "Tell me something short."}}], "stream": true}}"#)
}

async fn start_mock(mock: &Path) -> Result<Process, String> {
    let address = free_address()?;
    let child = spawn(Command::new(mock).args(["--listen", &address, "--reply", REPLY]))?;
    wait_for(&address).await?;
    Ok(Process { child, address, _dir: None })
}

async fn start_flowgate(flowgate: &Path, mock: &str) -> Result<Process, String> {
    let dir = temp_dir("gateway")?;
    let models = dir.0.join("models.yaml");
    std::fs::write(
        &models,
        format!(
            "models:\n  - name: bench\n    targets:\n      - {{provider: openai_compatible, model: bench-up, base_url: 'http://{mock}/v1'}}\n\
             gateway_keys:\n  - {{name: bench, key: '{GATEWAY_KEY}'}}\n"
        ),
    )
    .map_err(|error| error.to_string())?;
    let address = free_address()?;
    let child = spawn(
        Command::new(flowgate)
            .args(["serve", "--listen", &address, "--data-dir"])
            .arg(dir.0.join("data"))
            .arg("--models")
            .arg(&models)
            .env("FLOWGATE_LOG", "warn"),
    )?;
    wait_for(&address).await?;
    Ok(Process { child, address, _dir: Some(dir) })
}

async fn start_litellm(litellm: &Path, mock: &str) -> Result<Process, String> {
    let dir = temp_dir("litellm")?;
    let config = dir.0.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: bench\n    litellm_params: {{model: openai/bench-up, api_base: 'http://{mock}/v1', api_key: sk-mock}}\n\
             litellm_settings: {{telemetry: false}}\ngeneral_settings: {{master_key: {LITELLM_KEY}}}\n"
        ),
    )
    .map_err(|error| error.to_string())?;
    let address = free_address()?;
    let port = address.rsplit(':').next().unwrap_or_default().to_owned();
    let workers = std::thread::available_parallelism().map_or(2, usize::from).to_string();
    let child = spawn(
        Command::new(litellm)
            .args(["--config"])
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port, "--num_workers", &workers, "--telemetry", "False"])
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_LOG", "ERROR"),
    )?;
    // LiteLLM takes tens of seconds to start with several workers.
    for _ in 0..12 {
        if wait_for(&address).await.is_ok() {
            return Ok(Process { child, address, _dir: Some(dir) });
        }
    }
    Err("LiteLLM did not start in two minutes".into())
}

struct Line {
    system: &'static str,
    rate: f64,
    measured: Measured,
}

fn print(line: &Line, direct: Option<&Measured>) {
    let outcome = &line.measured.outcome;
    let (p50, p99) = (outcome.percentile_ms(50.0), outcome.percentile_ms(99.0));
    let added = |mine: f64, theirs: f64| if line.system == "mock directly" { "-".to_owned() } else { format!("{:.2}", mine - theirs) };
    let (added50, added99) = match direct {
        Some(direct) => (added(p50, direct.outcome.percentile_ms(50.0)), added(p99, direct.outcome.percentile_ms(99.0))),
        None => ("?".into(), "?".into()),
    };
    println!(
        "| {} | {:.0} | {:.0} | {p50:.2} | {p99:.2} | {added50} | {added99} | {:.3} | {:.3} | {} |",
        line.system,
        line.rate,
        outcome.per_second(),
        line.measured.server_cpu_ms,
        line.measured.client_cpu_ms,
        outcome.failed
    );
    if let Some(failure) = &outcome.first_failure {
        println!("|  | first failure: {} |", failure.replace('|', "/").replace('\n', " "));
    }
}

pub async fn run(
    flowgate: &Path,
    mock: &Path,
    litellm: Option<&Path>,
    rates: &[f64],
    litellm_rates: &[f64],
    seconds: u64,
) -> Result<(), String> {
    let upstream = start_mock(mock).await?;
    let gateway = start_flowgate(flowgate, &upstream.address).await?;
    let proxy = match litellm {
        Some(path) => Some(start_litellm(path, &upstream.address).await?),
        None => None,
    };
    println!(
        "gateway: streaming chat completions (20 chunks each), open loop on {CONNECTIONS} connections, {seconds} s per row after a 2 s warm-up; \
         added = the gateway's percentile minus the mock's at the same rate; CPU = the gateway's process tree per request\n"
    );
    println!(
        "| system | offered req/s | achieved req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU ms/req | load generator CPU ms/req | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let request =
        |address: &str, path: &str, key: &str, model: &str| fixed(Request::post_json(address, path, key, &body(model), vec!["[DONE]"]));
    for rate in rates {
        let pace = Pace::PerSecond(*rate);
        let direct = measure_tree(
            upstream.child.id(),
            &upstream.address,
            request(&upstream.address, "/v1/chat/completions", "sk-mock", "bench-up"),
            seconds,
            pace,
        )
        .await;
        print(&Line { system: "mock directly", rate: *rate, measured: direct.clone() }, Some(&direct));
        let ours = measure_tree(
            gateway.child.id(),
            &gateway.address,
            request(&gateway.address, "/v1/chat/completions", GATEWAY_KEY, "bench"),
            seconds,
            pace,
        )
        .await;
        print(&Line { system: "flowgate", rate: *rate, measured: ours }, Some(&direct));
        if let Some(proxy) = &proxy
            && litellm_rates.contains(rate)
        {
            let theirs = measure_tree(
                proxy.child.id(),
                &proxy.address,
                request(&proxy.address, "/chat/completions", LITELLM_KEY, "bench"),
                seconds,
                pace,
            )
            .await;
            print(&Line { system: "LiteLLM 1.106.2", rate: *rate, measured: theirs }, Some(&direct));
        }
    }
    Ok(())
}
