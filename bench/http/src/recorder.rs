//! The run log's ceiling without HTTP: bench10-noio run in-process as the server runs it (plan
//! compiled once, every node handed to the recorder), as fast as the recorder keeps up, on a
//! fresh SQLite file. What each thread spends per run shows where logging's cost lies.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flowgate_dsl::Document;
use flowgate_engine::inputs::prepare_inputs;
use flowgate_engine::{Engine, Plan, Ports, RunEvent, RunRequest};
use flowgate_store::recorder::{NodeRecord, Recorder, RunStart};
use flowgate_store::{LogDetail, Store, StoreConfig};

/// As the server: past this many unwritten operations new runs wait for the log.
const BACKLOG_SOFT: usize = 16_384;

/// CPU seconds of each thread of this process: (thread id, name, seconds).
fn thread_cpu() -> Vec<(String, String, f64)> {
    let ticks = super::clock_ticks_per_second();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_owned();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
            let field = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
            (task.file_name().to_string_lossy().into_owned(), name, (field(11) + field(12)) / ticks)
        })
        .collect()
}

/// CPU seconds threads whose name starts with `prefix` spent between two readings.
fn spent(before: &[(String, String, f64)], after: &[(String, String, f64)], prefix: &str) -> f64 {
    after
        .iter()
        .filter(|(_, name, _)| name.starts_with(prefix))
        .map(|(id, _, cpu)| cpu - before.iter().find(|(earlier, _, _)| earlier == id).map_or(0.0, |(_, _, cpu)| *cpu))
        .sum()
}

pub async fn ceiling(seconds: u64) -> Result<(), String> {
    let dsl = std::fs::read_to_string(super::workload("bench10-noio.yml")).map_err(|error| error.to_string())?;
    let document = Document::load(&dsl).map_err(|error| error.to_string())?;
    let plan = Arc::new(Plan::compile(&document).map_err(|error| error.to_string())?);
    let engine = Engine::new(Ports::default());
    let inputs: flowgate_engine::Map =
        serde_json::from_str(r#"{"text": "urgent: check order", "n": 50}"#).map_err(|error| error.to_string())?;
    println!("run log without HTTP: bench10-noio in-process, one engine thread, SQLite, {seconds} s per log detail\n");
    println!("| log detail | runs/s | engine thread µs/run | recorder µs/run | SQLite µs/run | total µs/run |");
    println!("|---|---|---|---|---|---|");
    for detail in [LogDetail::None, LogDetail::Metadata, LogDetail::Full] {
        let dir = std::env::temp_dir().join(format!("flowgate-bench-recorder-{}", uuid::Uuid::new_v4().simple()));
        let store = Store::open(StoreConfig::embedded(&dir)).await.map_err(|error| error.to_string())?;
        let recorder = Recorder::start(store.clone()).map_err(|error| error.to_string())?;
        let before = thread_cpu();
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < Duration::from_secs(seconds) {
            while recorder.stats().backlog.load(Ordering::Relaxed) > BACKLOG_SOFT {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let run_id = flowgate_store::new_id();
            let prepared = prepare_inputs(&plan.start_variables, &inputs, None).map_err(|error| error.to_string())?;
            let request = RunRequest {
                user_id: "bench".into(),
                app_id: "app".into(),
                workflow_id: "version".into(),
                run_id: Some(run_id.clone()),
                ..RunRequest::default()
            };
            let mut recording = recorder.run_started(RunStart {
                id: run_id.clone(),
                app_id: "app".into(),
                version_id: "version".into(),
                task_id: run_id.clone(),
                end_user_id: Some("user".into()),
                conversation_id: None,
                message_id: None,
                created_from: "service-api".into(),
                detail,
                retention_days: 30,
                inputs: Arc::new(prepared.clone()),
                instance_id: "bench".into(),
                created_at: flowgate_store::now(),
            });
            let mut sink = |event: RunEvent| {
                if let RunEvent::NodeFinished(finished) = &event
                    && let Some(recording) = &mut recording
                {
                    recording.node_finished(NodeRecord::from_finished(finished));
                }
            };
            let summary = engine.run_prepared(&plan, prepared, &request, &mut sink, None).await;
            if let Some(recording) = recording {
                recording.run_finished(&summary);
            }
            runs += 1;
        }
        recorder.flush().await;
        let elapsed = started.elapsed().as_secs_f64();
        let after = thread_cpu();
        let per_run = |prefix: &str| spent(&before, &after, prefix) * 1e6 / runs.max(1) as f64;
        let (engine_us, recorder_us, sqlite_us) = (per_run("flowgate-bench"), per_run("flowgate-record"), per_run("sqlx-sqlite"));
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            detail.as_str(),
            runs as f64 / elapsed,
            engine_us,
            recorder_us,
            sqlite_us,
            engine_us + recorder_us + sqlite_us
        );
        drop(recorder);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
