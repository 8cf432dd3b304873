//! `flowgate serve`: Dify's Service API over the store and the engine.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value as Json_, json};
use tokio::sync::mpsc;

use flowgate_dsl::Document;
use flowgate_engine::inputs::prepare_inputs;
use flowgate_engine::{Engine, Plan, Ports, RunControl, RunEvent, RunRequest};
use flowgate_store::recorder::{NodeRecord, Recorder, RunStart};
use flowgate_store::{App, Store};

use crate::api_error::ApiError;
use crate::wire::{Envelope, WireContext};

/// A published app version, compiled once.
struct Compiled {
    plan: Arc<Plan>,
}

pub struct ServerState {
    store: Store,
    recorder: Recorder,
    engine: Engine,
    instance_id: String,
    plans: RwLock<HashMap<String, Arc<Compiled>>>,
    /// Token → app id, briefly, so a request does not always hit the database; a revoked key
    /// stops working within [`KEY_CACHE`].
    keys: Mutex<HashMap<String, (String, Instant)>>,
    /// Runs in progress by task id, for `stop`.
    tasks: Mutex<HashMap<String, (String, RunControl)>>,
}

const KEY_CACHE: Duration = Duration::from_secs(1);
const PING_EVERY: Duration = Duration::from_secs(10);

type Shared = Arc<ServerState>;

impl ServerState {
    pub fn new(store: Store, ports: Ports, instance_id: String) -> Self {
        let recorder = Recorder::start(store.clone());
        Self {
            store,
            recorder,
            engine: Engine::new(ports),
            instance_id,
            plans: RwLock::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    async fn app_for_key(&self, headers: &HeaderMap) -> Result<App, ApiError> {
        let header = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).unwrap_or_default();
        if header.is_empty() {
            return Err(ApiError::unauthorized("Authorization header must be provided and start with 'Bearer'"));
        }
        let Some((scheme, token)) = header.split_once(' ') else {
            return Err(ApiError::unauthorized("Authorization header must be provided and start with 'Bearer'"));
        };
        if scheme != "Bearer" {
            return Err(ApiError::unauthorized("Authorization scheme must be 'Bearer'"));
        }
        let token = token.trim();
        let cached = self
            .keys
            .lock()
            .ok()
            .and_then(|keys| keys.get(token).filter(|(_, at)| at.elapsed() < KEY_CACHE).map(|(app_id, _)| app_id.clone()));
        let app_id = match cached {
            Some(app_id) => app_id,
            None => {
                let app_id = self.store.app_for_token(token).await?.ok_or_else(|| ApiError::unauthorized("Access token is invalid"))?;
                if let Ok(mut keys) = self.keys.lock() {
                    if keys.len() > 10_000 {
                        keys.clear();
                    }
                    keys.insert(token.to_owned(), (app_id.clone(), Instant::now()));
                }
                app_id
            }
        };
        match self.store.app(&app_id).await {
            Ok(app) => Ok(app),
            Err(flowgate_store::StoreError::NotFound(_)) => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "app_unavailable", "App unavailable, please check your app configurations."))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn compiled(&self, version_id: &str) -> Result<Arc<Compiled>, ApiError> {
        if let Some(compiled) = self.plans.read().ok().and_then(|plans| plans.get(version_id).cloned()) {
            return Ok(compiled);
        }
        let version = self.store.version(version_id).await?;
        let document =
            Document::load(&version.dsl).map_err(|error| ApiError::invalid_param(format!("the app's DSL cannot be read: {error}")))?;
        let plan = Plan::compile(&document).map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "app_unavailable",
                format!("App unavailable, please check your app configurations: {error}"),
            )
        })?;
        let compiled = Arc::new(Compiled { plan: Arc::new(plan) });
        if let Ok(mut plans) = self.plans.write() {
            plans.insert(version_id.to_owned(), compiled.clone());
        }
        Ok(compiled)
    }
}

/// A JSON body, with Dify's errors for bodies that are not JSON objects.
struct Body(serde_json::Map<String, Json_>);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(|error| {
            if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_entity_too_large", "The request body is too large.")
            } else {
                ApiError::invalid_param(error.body_text())
            }
        })?;
        match serde_json::from_slice::<Json_>(&bytes) {
            Ok(Json_::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::invalid_param("The request body must be a JSON object.")),
            Err(error) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("The browser (or proxy) sent a request that this server could not understand: {error}"),
            )),
        }
    }
}

fn required_user(body: &serde_json::Map<String, Json_>) -> Result<String, ApiError> {
    match body.get("user") {
        Some(Json_::String(user)) if !user.is_empty() => Ok(user.clone()),
        _ => Err(ApiError::invalid_param("user is required").with_param("user")),
    }
}

pub fn router(state: Shared, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/v1/", get(welcome))
        .route("/v1", get(welcome))
        .route("/v1/workflows/run", post(run_workflow))
        .route("/v1/workflows/{workflow_id}/run", post(run_workflow_version))
        .route("/v1/workflows/run/{run_id}", get(get_run))
        .route("/v1/workflows/tasks/{task_id}/stop", post(stop_task))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn ready(State(state): State<Shared>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ready", "database": state.store.backend().as_str()})).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "error": error.to_string()}))).into_response(),
    }
}

async fn welcome() -> Json<Json_> {
    Json(json!({"welcome": "Dify OpenAPI", "api_version": "v1", "server_version": env!("CARGO_PKG_VERSION")}))
}

async fn run_workflow(State(state): State<Shared>, headers: HeaderMap, Body(body): Body) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let version_id = app.current_version_id.clone().ok_or_else(|| ApiError::not_found("Workflow not found."))?;
    start_workflow(state, app, &version_id, body).await
}

async fn run_workflow_version(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(workflow_id): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let app = state.app_for_key(&headers).await?;
    if uuid::Uuid::parse_str(&workflow_id).is_err() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "workflow_id_format_error", "Invalid workflow_id format."));
    }
    let version = state.store.version(&workflow_id).await.map_err(|_| ApiError::not_found("Workflow not found."))?;
    if version.app_id != app.id {
        return Err(ApiError::not_found("Workflow not found."));
    }
    start_workflow(state, app, &workflow_id, body).await
}

async fn start_workflow(state: Shared, app: App, version_id: &str, body: serde_json::Map<String, Json_>) -> Result<Response, ApiError> {
    if app.mode != "workflow" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_workflow_app",
            "Please check if your Workflow app mode matches the right API route.",
        ));
    }
    let inputs = match body.get("inputs") {
        Some(Json_::Object(inputs)) => flowgate_engine::value::map_from_json(inputs),
        _ => return Err(ApiError::invalid_param("inputs is required and must be an object").with_param("inputs")),
    };
    let user = required_user(&body)?;
    let streaming = match body.get("response_mode") {
        None | Some(Json_::Null) => false,
        Some(Json_::String(mode)) if mode == "blocking" => false,
        Some(Json_::String(mode)) if mode == "streaming" => true,
        Some(_) => return Err(ApiError::invalid_param("response_mode must be blocking or streaming").with_param("response_mode")),
    };
    let compiled = state.compiled(version_id).await?;
    let prepared = prepare_inputs(&compiled.plan.start_variables, &inputs, None).map_err(|error| ApiError::invalid_param(error.message))?;
    let end_user_id = state.store.end_user(&app.id, &user).await?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let task_id = uuid::Uuid::new_v4().to_string();
    let wire = WireContext {
        task_id: task_id.clone(),
        run_id: run_id.clone(),
        user: user.clone(),
        end_user_id: end_user_id.clone(),
        envelope: Envelope::Workflow,
    };
    let request = RunRequest {
        user_id: user.clone(),
        app_id: app.id.clone(),
        workflow_id: version_id.to_owned(),
        run_id: Some(run_id.clone()),
        ..RunRequest::default()
    };
    state.recorder.run_started(RunStart {
        id: run_id.clone(),
        app_id: app.id.clone(),
        version_id: version_id.to_owned(),
        task_id: task_id.clone(),
        end_user_id: Some(end_user_id),
        conversation_id: None,
        message_id: None,
        created_from: "service-api".into(),
        detail: app.log_detail,
        retention_days: app.retention_days,
        inputs: Arc::new(prepared.clone()),
        instance_id: state.instance_id.clone(),
        created_at: flowgate_store::now(),
    });
    let control = RunControl::new();
    if let Ok(mut tasks) = state.tasks.lock() {
        tasks.insert(task_id.clone(), (app.id.clone(), control.clone()));
    }
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Json_>();
    let run_state = state.clone();
    let run_wire = wire.clone();
    let plan = compiled.plan.clone();
    let run = tokio::spawn(async move {
        let recorder = run_state.recorder.clone();
        let run_key: Arc<str> = Arc::from(run_wire.run_id.as_str());
        let mut sink = |event: RunEvent| {
            match &event {
                RunEvent::NodeFinished(finished) => recorder.node_finished(run_key.clone(), NodeRecord::from_finished(finished)),
                RunEvent::IterationCompleted(completed) | RunEvent::LoopCompleted(completed) => {
                    recorder.node_finished(run_key.clone(), NodeRecord::from_container(completed, flowgate_store::now()));
                }
                _ => {}
            }
            if streaming {
                for payload in run_wire.encode(&event) {
                    let _ = events_tx.send(payload);
                }
            }
        };
        let summary = run_state.engine.run_prepared(&plan, prepared, &request, &mut sink, Some(&control)).await;
        recorder.run_finished(run_key, summary.clone());
        if let Ok(mut tasks) = run_state.tasks.lock() {
            tasks.remove(&run_wire.task_id);
        }
        summary
    });
    if streaming {
        return Ok(sse_response(events_rx));
    }
    let summary = run.await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "unknown", "Internal Server Error"))?;
    let mut data = wire.workflow_finished(&summary);
    if let Json_::Object(object) = &mut data {
        object.remove("created_by");
        object.remove("exceptions_count");
        object.remove("files");
    }
    Ok(Json(json!({"task_id": task_id, "workflow_run_id": run_id, "data": data})).into_response())
}

/// Dify's SSE framing: `data: {json}\n\n` per event and `event: ping\n\n` every ten seconds.
/// The run goes on if the client goes away.
fn sse_response(events: mpsc::UnboundedReceiver<Json_>) -> Response {
    let data = tokio_stream_from(events).map(|payload| Ok::<_, Infallible>(Event::default().data(payload.to_string())));
    let pings = futures::stream::unfold((), |()| async {
        tokio::time::sleep(PING_EVERY).await;
        Some((Ok::<_, Infallible>(Event::default().event("ping")), ()))
    });
    let stream = futures::stream::select(data.map(Some).chain(futures::stream::once(async { None })), pings.map(Some))
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready);
    let mut response = Sse::new(stream).into_response();
    response.headers_mut().insert("X-Accel-Buffering", axum::http::HeaderValue::from_static("no"));
    response.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-cache"));
    response
}

fn tokio_stream_from<T: Send + 'static>(mut receiver: mpsc::UnboundedReceiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |context| receiver.poll_recv(context))
}

async fn get_run(State(state): State<Shared>, headers: HeaderMap, Path(run_id): Path<String>) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    let run = state.store.run(&app.id, &run_id).await.map_err(|error| match error {
        flowgate_store::StoreError::NotFound(_) => ApiError::not_found("Workflow run not found."),
        other => other.into(),
    })?;
    Ok(Json(json!({
        "id": run.id,
        "workflow_id": run.version_id,
        "status": run.status,
        "inputs": run.inputs.map_or_else(|| "{}".to_owned(), |inputs| inputs.to_string()),
        "outputs": run.outputs.unwrap_or_else(|| json!({})),
        "error": run.error,
        "total_steps": run.total_steps,
        "total_tokens": run.total_tokens,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "elapsed_time": run.elapsed_time,
    })))
}

async fn stop_task(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    Body(body): Body,
) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    required_user(&body)?;
    if let Ok(tasks) = state.tasks.lock()
        && let Some((task_app, control)) = tasks.get(&task_id)
        && *task_app == app.id
    {
        control.stop();
    }
    Ok(Json(json!({"result": "success"})))
}

/// Runs the server until Ctrl-C / SIGTERM, then lets in-flight runs finish (up to `grace`).
pub async fn serve(state: Shared, listen: SocketAddr, max_body_bytes: usize, grace: Duration) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| format!("cannot listen on {listen}: {error}"))?;
    tracing::info!(%listen, database = state.store.backend().as_str(), blobs = state.store.blobs().describe(), "flowgate serving");
    let app = router(state.clone(), max_body_bytes);
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(|error| error.to_string())?;
    let deadline = Instant::now() + grace;
    while state.tasks.lock().map(|tasks| !tasks.is_empty()).unwrap_or(false) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state.recorder.flush().await;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
