//! Nothing answered is ever lost: `kill -9` under load (SQLite, and two replicas on
//! PostgreSQL), a PostgreSQL outage, a full disk, and floods of slow and idle connections. An
//! acknowledged run is one whose client got `succeeded`; afterwards each must be in the run log
//! as `succeeded`, no run may stay `running`, and no answered chat turn may lack its run.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::harness::{Deployment, Server, conformance_case, free_port};

/// What the load generators saw.
#[derive(Default)]
struct Tally {
    /// Runs answered `succeeded`.
    runs: Vec<String>,
    /// Chat turns answered, with the conversation they belong to.
    turns: Vec<String>,
    /// Answers by status (0: no answer).
    statuses: std::collections::BTreeMap<u16, usize>,
    /// The slowest 503.
    slowest_refusal: Duration,
}

/// One request on its own connection; `None` when the server did not answer.
fn post(address: &str, path: &str, key: &str, body: &str) -> Option<(u16, Json)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    Some((status, serde_json::from_str(body).unwrap_or(Json::Null)))
}

struct Apps {
    workflow: String,
    chat: String,
    inputs: Json,
}

fn import_apps(deployment: &Deployment) -> Apps {
    let key = |dsl: &str| deployment.import(dsl)["api_key"].as_str().unwrap().to_owned();
    Apps {
        workflow: key("bench/workloads/bench10-noio.yml"),
        chat: key("tests/service/chatflow.yml"),
        inputs: conformance_case("bench10-noio-long-path").0,
    }
}

/// Sends workflow runs (and every fourth, a chat turn) on `threads` connections until `stop`.
fn load(addresses: Arc<Mutex<Vec<String>>>, apps: &Apps, threads: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Tally>> {
    (0..threads)
        .map(|thread| {
            let addresses = addresses.clone();
            let stop = stop.clone();
            let workflow = apps.workflow.clone();
            let chat = apps.chat.clone();
            let run = json!({"inputs": apps.inputs, "user": format!("load-{thread}"), "response_mode": "blocking"}).to_string();
            let turn =
                json!({"inputs": {"topic": "t"}, "query": "q", "user": format!("chat-{thread}"), "response_mode": "blocking"}).to_string();
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    let current = addresses.lock().unwrap().clone();
                    let address = &current[sent % current.len()];
                    let chat_turn = sent.is_multiple_of(4);
                    let started = Instant::now();
                    let answer = if chat_turn {
                        post(address, "/v1/chat-messages", &chat, &turn)
                    } else {
                        post(address, "/v1/workflows/run", &workflow, &run)
                    };
                    let Some((status, body)) = answer else {
                        *tally.statuses.entry(0).or_default() += 1;
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    *tally.statuses.entry(status).or_default() += 1;
                    if status == 503 {
                        tally.slowest_refusal = tally.slowest_refusal.max(started.elapsed());
                    }
                    if status == 200 && chat_turn {
                        tally.turns.push(body["message_id"].as_str().unwrap().to_owned());
                    } else if status == 200 && body["data"]["status"] == "succeeded" {
                        tally.runs.push(body["workflow_run_id"].as_str().unwrap().to_owned());
                    }
                }
                tally
            })
        })
        .collect()
}

fn gather(handles: Vec<std::thread::JoinHandle<Tally>>, into: &mut Tally) {
    for handle in handles {
        let tally = handle.join().unwrap();
        into.runs.extend(tally.runs);
        into.turns.extend(tally.turns);
        for (status, count) in tally.statuses {
            *into.statuses.entry(status).or_default() += count;
        }
        into.slowest_refusal = into.slowest_refusal.max(tally.slowest_refusal);
    }
}

/// The run log as the database holds it, read straight from it.
struct Logged {
    statuses: std::collections::HashMap<String, String>,
    /// Messages answered (`normal`) whose run is not there.
    messages_without_run: Vec<String>,
    messages: HashSet<String>,
}

fn read_database(deployment: &Deployment) -> Logged {
    const RUNS: &str = "SELECT id, status FROM workflow_runs";
    const ORPHANS: &str = "SELECT m.id FROM messages m LEFT JOIN workflow_runs r ON r.id = m.workflow_run_id \
                           WHERE m.status = 'normal' AND r.id IS NULL";
    const MESSAGES: &str = "SELECT id FROM messages WHERE status = 'normal'";
    // The same three queries on either database.
    macro_rules! read_with {
        ($pool:expr) => {{
            let pool = $pool;
            let runs: Vec<(String, String)> = sqlx::query_as(RUNS).fetch_all(&pool).await.unwrap();
            let orphans: Vec<(String,)> = sqlx::query_as(ORPHANS).fetch_all(&pool).await.unwrap();
            let messages: Vec<(String,)> = sqlx::query_as(MESSAGES).fetch_all(&pool).await.unwrap();
            pool.close().await;
            Logged {
                statuses: runs.into_iter().collect(),
                messages_without_run: orphans.into_iter().map(|(id,)| id).collect(),
                messages: messages.into_iter().map(|(id,)| id).collect(),
            }
        }};
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        match &deployment.database_url {
            Some(url) => read_with!(sqlx::PgPool::connect(url).await.unwrap()),
            None => {
                let url = format!("sqlite://{}?mode=ro", deployment.data_dir.join("flowgate.db").display());
                read_with!(sqlx::SqlitePool::connect(&url).await.unwrap())
            }
        }
    })
}

/// Every acknowledged run and turn is there and finished; nothing is left `running`.
fn assert_nothing_lost(deployment: &Deployment, tally: &Tally) {
    let logged = read_database(deployment);
    eprintln!("acknowledged: {} runs, {} chat turns; answers by status: {:?}", tally.runs.len(), tally.turns.len(), tally.statuses);
    let lost: Vec<&String> = tally.runs.iter().filter(|id| logged.statuses.get(*id).map(String::as_str) != Some("succeeded")).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged runs are missing or not succeeded: {:?}",
        lost.len(),
        tally.runs.len(),
        &lost[..lost.len().min(5)]
    );
    let lost_turns: Vec<&String> = tally.turns.iter().filter(|id| !logged.messages.contains(*id)).collect();
    assert!(lost_turns.is_empty(), "{} of {} answered chat turns are missing", lost_turns.len(), tally.turns.len());
    assert!(logged.messages_without_run.is_empty(), "answered messages without their run: {:?}", logged.messages_without_run);
    let running: Vec<&String> = logged.statuses.iter().filter(|(_, status)| *status == "running").map(|(id, _)| id).collect();
    assert!(running.is_empty(), "runs left running: {running:?}");
}

fn kill_9(server: &mut Server) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// A pseudo-random pause between `low` and `high` milliseconds (no RNG crate needed for this).
fn pause(round: u64, low: u64, high: u64) -> Duration {
    let mixed = round.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xA5A5_A5A5;
    Duration::from_millis(low + mixed % (high - low))
}

#[test]
fn kill_9_under_load_on_sqlite_loses_no_acknowledged_run() {
    let deployment = Deployment::sqlite("kill-loop");
    let apps = import_apps(&deployment);
    let mut tally = Tally::default();
    for round in 0..20 {
        let mut server = deployment.serve(&[]);
        let addresses = Arc::new(Mutex::new(vec![server.address.clone()]));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = load(addresses, &apps, 8, stop.clone());
        std::thread::sleep(pause(round, 300, 1200));
        kill_9(&mut server);
        stop.store(true, Ordering::Relaxed);
        gather(handles, &mut tally);
    }
    // The next start fails whatever the last process left running before it serves.
    let _server = deployment.serve(&[]);
    assert!(tally.runs.len() > 1000, "the load made too few runs to tell: {}", tally.runs.len());
    assert_nothing_lost(&deployment, &tally);
}

#[test]
fn kill_9_of_a_replica_on_postgres_loses_no_acknowledged_run() {
    let deployment = Deployment::postgres("kill-replicas");
    let apps = import_apps(&deployment);
    let options = ["--instance-timeout", "3"];
    let survivor = deployment.serve(&options);
    let mut tally = Tally::default();
    for round in 0..5 {
        let mut victim = deployment.serve(&options);
        let addresses = Arc::new(Mutex::new(vec![survivor.address.clone(), victim.address.clone()]));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = load(addresses.clone(), &apps, 8, stop.clone());
        std::thread::sleep(pause(round, 500, 1500));
        kill_9(&mut victim);
        // The survivor keeps serving; clients move to it.
        addresses.lock().unwrap().retain(|address| *address == survivor.address);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        gather(handles, &mut tally);
    }
    assert!(tally.runs.len() > 500, "the load made too few runs to tell: {}", tally.runs.len());
    // The survivor fails the dead replicas' runs once they missed their heartbeats.
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_database(&deployment).statuses.values().any(|status| status == "running") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_nothing_lost(&deployment, &tally);
}

/// A PostgreSQL of the test's own, on a port of its own, to stop and start.
struct OwnPostgres {
    dir: PathBuf,
    port: u16,
}

fn postgres_bin(name: &str) -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL's binaries in /usr/lib/postgresql");
    let mut found: Vec<PathBuf> = versions.filter_map(Result::ok).map(|entry| entry.path().join("bin").join(name)).collect();
    found.sort();
    found.pop().unwrap()
}

/// Runs a PostgreSQL tool as the `postgres` user (it refuses to run as root).
fn as_postgres(tool: &str, args: &[&str]) -> std::process::Output {
    let binary = postgres_bin(tool);
    let mut command = if nix_is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    };
    command.args(args).output().unwrap()
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find(|line| line.starts_with("Uid:")).map(|line| line.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

impl OwnPostgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("flowgate-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if nix_is_root() {
            assert!(Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap().success());
        }
        let data = dir.join("data");
        let initialised = as_postgres("initdb", &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres"]);
        assert!(initialised.status.success(), "initdb: {}", String::from_utf8_lossy(&initialised.stderr));
        let postgres = Self { dir, port: free_port() };
        postgres.up();
        postgres
    }

    fn up(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let log = self.dir.join("log");
        let started = as_postgres(
            "pg_ctl",
            &["-D", self.dir.join("data").to_str().unwrap(), "-o", &options, "-l", log.to_str().unwrap(), "-w", "start"],
        );
        assert!(started.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&started.stderr));
    }

    fn down(&self) {
        let stopped = as_postgres("pg_ctl", &["-D", self.dir.join("data").to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        assert!(stopped.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&stopped.stderr));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl", &["-D", self.dir.join("data").to_str().unwrap(), "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_postgres_outage_fails_fast_and_recovers_without_a_restart() {
    let postgres = OwnPostgres::start();
    let deployment = Deployment::on_database("outage", &postgres.url());
    let apps = import_apps(&deployment);
    let server = deployment.serve(&[]);
    let addresses = Arc::new(Mutex::new(vec![server.address.clone()]));
    let mut before = Tally::default();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(addresses.clone(), &apps, 4, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    postgres.down();
    // The outage, under the same load.
    std::thread::sleep(Duration::from_secs(20));
    postgres.up();
    stop.store(true, Ordering::Relaxed);
    gather(handles, &mut before);
    eprintln!("during the outage: answers by status {:?}, slowest 503 {:?}", before.statuses, before.slowest_refusal);
    assert_eq!(before.statuses.get(&500), None, "no 500 in an outage: {:?}", before.statuses);
    assert!(before.statuses.get(&503).copied().unwrap_or(0) > 100, "the outage was answered 503: {:?}", before.statuses);
    assert!(before.slowest_refusal < Duration::from_millis(100), "the slowest 503 took {:?}", before.slowest_refusal);

    // Back without a restart: runs succeed again (a client retries after Retry-After).
    let run = json!({"inputs": apps.inputs, "user": "after", "response_mode": "blocking"}).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = post(&server.address, "/v1/workflows/run", &apps.workflow, &run).unwrap();
        if status == 200 {
            before.runs.push(body["workflow_run_id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "runs still refused 10 s after PostgreSQL came back: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // And every request after that: no connection the outage broke is used again.
    for _ in 0..40 {
        let (status, body) = post(&server.address, "/v1/workflows/run", &apps.workflow, &run).unwrap();
        assert_eq!(status, 200, "{body}");
        let run_id = body["workflow_run_id"].as_str().unwrap().to_owned();
        let (status, read) =
            crate::harness::http(&server.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&apps.workflow), None);
        assert_eq!(status, 200, "{read}");
        before.runs.push(run_id);
    }
    assert_nothing_lost(&deployment, &before);
}

/// A folder on a tmpfs of `megabytes`, removed at the end.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("flowgate-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"]).arg(&dir).status();
        if mounted.is_ok_and(|status| status.success()) {
            Some(Self(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }

    /// Fills what is left with one file.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 1 << 16];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_refuses_runs_and_recovers_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount(24) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let deployment = Deployment::sqlite_in(disk.0.join("data"));
    let apps = import_apps(&deployment);
    let server = deployment.serve(&[]);
    let run = json!({"inputs": apps.inputs, "user": "disk", "response_mode": "blocking"}).to_string();
    let mut tally = Tally::default();
    let record = |status: u16, body: &Json, tally: &mut Tally| {
        *tally.statuses.entry(status).or_default() += 1;
        if status == 200 {
            assert_eq!(body["data"]["status"], "succeeded", "{body}");
            tally.runs.push(body["workflow_run_id"].as_str().unwrap().to_owned());
        }
    };
    for _ in 0..50 {
        let (status, body) = post(&server.address, "/v1/workflows/run", &apps.workflow, &run).unwrap();
        assert_eq!(status, 200, "{body}");
        record(status, &body, &mut tally);
    }
    disk.fill();
    // Full: every run is refused (never 200 for a run that is not stored), and /ready says so.
    let mut refused = 0;
    for _ in 0..300 {
        let (status, body) = post(&server.address, "/v1/workflows/run", &apps.workflow, &run).unwrap();
        assert!(status == 200 || status == 503, "{status}: {body}");
        if status == 503 {
            refused += 1;
            assert!(body["message"].as_str().unwrap_or_default().contains("full"), "a full disk is named as such: {body}");
        }
        record(status, &body, &mut tally);
    }
    assert!(refused > 250, "runs on a full disk were refused: {refused} of 300");
    let (ready, _) = crate::harness::http(&server.address, "GET", "/ready", None, None);
    assert_eq!(ready, 503, "/ready fails while the run log cannot be written");

    disk.free();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = post(&server.address, "/v1/workflows/run", &apps.workflow, &run).unwrap();
        record(status, &body, &mut tally);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused 10 s after space was freed: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..50 {
        let (status, body) = post(&server.address, "/v1/workflows/run", &apps.workflow, &run).unwrap();
        assert_eq!(status, 200, "{body}");
        record(status, &body, &mut tally);
    }
    assert_eq!(crate::harness::http(&server.address, "GET", "/ready", None, None).0, 200);
    drop(server);
    assert_nothing_lost(&deployment, &tally);
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn slow_and_idle_connections_are_cut_off_and_normal_clients_go_on() {
    let deployment = Deployment::sqlite("hostile-connections");
    let apps = import_apps(&deployment);
    let cap = 600;
    let server = deployment.serve(&["--http-max-connections", &cap.to_string(), "--http-header-timeout", "2", "--http-body-timeout", "3"]);
    let address = server.address.clone();
    let pid = server.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    // 1,500 idle connections and 500 sending their headers a byte a second, opened again as
    // they are closed: more than the cap, all the time.
    let attackers: Vec<_> = (0..4)
        .map(|kind| {
            let address = address.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                let mut closed_by_server = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    while held.len() < 500 {
                        match TcpStream::connect(&address) {
                            Ok(stream) => {
                                stream.set_nonblocking(true).unwrap();
                                held.push(stream);
                            }
                            Err(_) => break,
                        }
                    }
                    held.retain_mut(|stream| {
                        let mut byte = [0u8; 1];
                        let ended = matches!(stream.read(&mut byte), Ok(0)) || stream.take_error().ok().flatten().is_some();
                        if ended {
                            closed_by_server += 1;
                            return false;
                        }
                        // Kind 0 trickles a request's headers; kind 3 a body; the others idle.
                        if kind == 0 {
                            let _ = stream.write(b"X");
                        } else if kind == 3 {
                            let _ = stream.write(b"POST /v1/workflows/run HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{");
                        }
                        true
                    });
                    std::thread::sleep(Duration::from_millis(500));
                }
                closed_by_server
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let run = json!({"inputs": apps.inputs, "user": "normal", "response_mode": "blocking"}).to_string();
    let mut latencies = Vec::new();
    let mut most_files = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let sent = Instant::now();
        // A normal client retries a connection the full server closed at once.
        let answer = (0..20).find_map(|_| post(&address, "/v1/workflows/run", &apps.workflow, &run));
        let (status, body) = answer.expect("a normal client got no answer in 20 tries");
        latencies.push(sent.elapsed());
        assert_eq!(status, 200, "{body}");
        most_files = most_files.max(open_files(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let cut_off: usize = attackers.into_iter().map(|attacker| attacker.join().unwrap()).sum();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "normal client: {} requests, p99 {p99:?}; server files at most {most_files}; attackers cut off {cut_off} times",
        latencies.len()
    );
    assert!(p99 < Duration::from_millis(50), "normal clients' p99 was {p99:?} ({} requests)", latencies.len());
    assert!(most_files < cap + 200, "the server held {most_files} files with a cap of {cap} connections");
    assert!(cut_off > 500, "slow and idle connections were cut off: {cut_off}");
}

#[test]
fn a_postgres_outage_longer_than_the_instance_timeout_fails_no_live_run() {
    use crate::operations::{read_to_end, slow_endpoint, start_streaming};
    let postgres = OwnPostgres::start();
    let deployment = Deployment::on_database("long-outage", &postgres.url());
    let slow = deployment.import("tests/service/slow-workflow.yml")["api_key"].as_str().unwrap().to_owned();
    let options = ["--allow-network", "127.0.0.1/32", "--instance-timeout", "3"];
    let replicas = [deployment.serve(&options), deployment.serve(&options)];
    let body = json!({"inputs": {"url": slow_endpoint(Duration::from_secs(16))}, "user": "long", "response_mode": "streaming"});
    let (stream, run_id) = start_streaming(&replicas[1].address, &slow, &body);
    // Longer than two instance timeouts: every replica's heartbeat is that old when it returns.
    postgres.down();
    std::thread::sleep(Duration::from_secs(7));
    postgres.up();
    let back = Instant::now();
    // For more than two instance timeouts of healthy heartbeats, the live run stays running.
    while back.elapsed() < Duration::from_secs(7) {
        for replica in &replicas {
            let (status, read) = crate::harness::http(&replica.address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&slow), None);
            if status == 503 && back.elapsed() < Duration::from_secs(1) {
                continue; // the circuit closes at the next probe
            }
            assert_eq!(status, 200, "{read}");
            let run: Json = serde_json::from_str(&read).unwrap();
            assert_eq!(run["status"], "running", "a live run was failed after the outage: {run}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let events = read_to_end(stream, String::new());
    assert!(events.contains("\"workflow_finished\"") && events.contains("\"succeeded\""), "{events}");
    let (status, read) = crate::harness::http(&replicas[0].address, "GET", &format!("/v1/workflows/run/{run_id}"), Some(&slow), None);
    assert_eq!(status, 200, "{read}");
    assert_eq!(serde_json::from_str::<Json>(&read).unwrap()["status"], "succeeded", "{read}");
}
