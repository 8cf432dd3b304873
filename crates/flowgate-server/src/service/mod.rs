//! `flowgate serve`: Dify's Service API over the store and the engine.

mod admin;
mod app_info;
mod chat;
mod conversations;
mod files;
mod launch;
mod openai_api;
mod sandbox_api;
mod workflows;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use axum::{Json, Router};
use serde_json::{Value as Json_, json};
use tokio::sync::OwnedSemaphorePermit;

use flowgate_dsl::Document;
use flowgate_engine::plan::DeclaredVariable;
use flowgate_engine::{Engine, Plan, Ports, RunControl};
use flowgate_store::recorder::Recorder;
use flowgate_store::{App, Store, StoreError};

use crate::api_error::ApiError;
use crate::cache::{Lookup, TtlCache};
use crate::limits::{AppLimits, Limiter};
use crate::metrics::{Gauges, Metrics};

pub use admin::MIN_ADMIN_TOKEN_CHARS;
pub use files::StoreFiles;

/// A published app version, compiled once.
pub struct Compiled {
    plan: Arc<Plan>,
    /// The workflow's `features` block (opening statement, file upload settings, …).
    features: Json_,
    /// The start node's variables as written, for `/parameters`' `user_input_form`.
    start_variables: Json_,
}

impl Compiled {
    fn conversation_variables(&self) -> &[DeclaredVariable] {
        &self.plan.conversation
    }
}

/// An app as requests see it: its row and its parsed limits, shared by every request within
/// twice [`HOT_CACHE`].
pub struct ServedApp {
    pub app: App,
    pub limits: AppLimits,
}

impl std::ops::Deref for ServedApp {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}

impl ServedApp {
    fn new(app: App) -> Self {
        let limits = AppLimits::parse(&app.limits).unwrap_or_else(|error| {
            tracing::warn!(app_id = %app.id, %error, "ignoring an unreadable limits policy");
            AppLimits::default()
        });
        Self { app, limits }
    }
}

/// A run in progress, for the stop endpoints.
struct Task {
    app_id: String,
    control: RunControl,
    /// Set when the run has ended and what it did is stored (or could not be).
    ended: tokio::sync::watch::Sender<bool>,
}

/// The longest a stop acknowledgement waits for the stopped run to end and be stored.
const STOP_WAIT: Duration = Duration::from_secs(15);

pub struct ServerState {
    store: Store,
    recorder: Recorder,
    engine: Engine,
    instance_id: String,
    versions: RwLock<HashMap<String, Arc<Compiled>>>,
    /// Token → app id. A revoked key stops working within twice [`HOT_CACHE`].
    keys: TtlCache<String, String>,
    /// App rows, so a policy change is seen within twice [`HOT_CACHE`].
    apps: TtlCache<String, Arc<ServedApp>>,
    /// (app id, `user`) → end-user id; end users never change once created.
    end_users: TtlCache<(String, String), String>,
    tasks: Mutex<HashMap<String, Task>>,
    limiter: Limiter,
    pub metrics: Metrics,
    /// SHA-256 of `FLOWGATE_ADMIN_TOKEN`; without it the management API is off.
    admin_token_hash: Option<String>,
    /// The model gateway, when a models file is loaded, and the SHA-256 of its keys.
    gateway: Option<Arc<flowgate_models::Gateway>>,
    /// SHA-256 of each gateway key → its name.
    gateway_keys: HashMap<String, String>,
    /// dify-sandbox's API, when `FLOWGATE_SANDBOX_API_KEY` is set.
    sandbox_api: Option<sandbox_api::SandboxApi>,
}

/// Past this many unwritten run-log operations (about 64 MiB of encoded runs) new runs are
/// refused (503) until the database catches up, so a slow database cannot grow memory without
/// bound.
const RECORDER_BACKLOG_LIMIT: usize = 262_144;
/// Past this many unwritten operations (about a second of them at full speed) new runs wait for
/// the run log. It is large enough that a checkpoint, which stops SQLite's writer for up to a
/// tenth of a second, does not hold up requests.
const RECORDER_BACKLOG_SOFT: usize = 65_536;
/// The longest a new run waits for the run log before it gets 503.
const RUN_LOG_WAIT: Duration = Duration::from_secs(10);

/// How long a key → app or app row is used without looking again; for as long again it is
/// used while one request refreshes it. Changes are normally seen sooner, through the
/// store's config watch; this bounds how stale a cache can get if the database stops
/// answering it.
const HOT_CACHE: Duration = Duration::from_millis(500);

type Shared = Arc<ServerState>;

impl ServerState {
    pub fn new(store: Store, ports: Ports, instance_id: String, admin_token: Option<&str>) -> Result<Self, StoreError> {
        let recorder = Recorder::start(store.clone())?;
        Ok(Self {
            store,
            recorder,
            engine: Engine::new(ports),
            instance_id,
            versions: RwLock::new(HashMap::new()),
            keys: TtlCache::new(HOT_CACHE, 10_000),
            apps: TtlCache::new(HOT_CACHE, 10_000),
            end_users: TtlCache::new(Duration::from_secs(3600), 100_000),
            tasks: Mutex::new(HashMap::new()),
            limiter: Limiter::default(),
            metrics: Metrics::default(),
            admin_token_hash: admin_token.map(flowgate_store::token_hash),
            gateway: None,
            gateway_keys: HashMap::new(),
            sandbox_api: None,
        })
    }

    /// Serves dify-sandbox's API from `sandbox` to callers with `key`.
    pub fn with_sandbox_api(mut self, sandbox: Option<flowgate_sandbox::Sandbox>, key: Option<&str>) -> Self {
        self.sandbox_api =
            sandbox.zip(key).map(|(sandbox, key)| sandbox_api::SandboxApi { sandbox, key_hash: flowgate_store::token_hash(key) });
        self
    }

    /// Serves the OpenAI-compatible endpoint through `gateway`, for the models file's keys.
    pub fn with_gateway(mut self, gateway: Option<Arc<flowgate_models::Gateway>>) -> Self {
        self.gateway_keys = gateway
            .iter()
            .flat_map(|gateway| gateway.config().gateway_keys.iter().map(|(name, key)| (flowgate_store::token_hash(key), name.clone())))
            .collect();
        self.gateway = gateway;
        self
    }

    /// Follows changes to apps and keys made by any process (the CLI, another replica, this
    /// server's management API): when the database's change counter moves, every cached key
    /// and app row is dropped, so a revoked key or a new version or policy applies at once.
    pub async fn follow_config_changes(&self) {
        let mut watch = self.store.watch_config().await;
        loop {
            watch.changed().await;
            self.keys.clear();
            self.apps.clear();
        }
    }

    /// Admission for a new run: the run log must keep up, and the app's concurrency limit has a
    /// slot (waiting in line for one). The slot is held until the run ends.
    async fn run_slot(&self, app: &ServedApp) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        self.wait_for_run_log().await?;
        self.limiter.run_slot(&app.id, &app.limits).await
    }

    /// Backpressure: while the run log is more than [`RECORDER_BACKLOG_SOFT`] operations behind,
    /// new runs wait for it (clients slow down instead of failing); past
    /// [`RECORDER_BACKLOG_LIMIT`], or after [`RUN_LOG_WAIT`], they get 503.
    async fn wait_for_run_log(&self) -> Result<(), ApiError> {
        if let Err(error) = self.recorder.health() {
            let retry_after = if error == flowgate_store::recorder::RunLogError::DiskFull { 5 } else { 1 };
            return Err(ApiError::unavailable(format!("{error}; please retry shortly."), retry_after));
        }
        let stats = self.recorder.stats();
        let deadline = tokio::time::Instant::now() + RUN_LOG_WAIT;
        loop {
            let written = stats.batch_done.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let backlog = stats.backlog.load(Ordering::Relaxed);
            if backlog <= RECORDER_BACKLOG_SOFT {
                return Ok(());
            }
            if backlog > RECORDER_BACKLOG_LIMIT || tokio::time::timeout_at(deadline, written).await.is_err() {
                return Err(ApiError::unavailable("The run log is behind; please retry shortly.", 1));
            }
        }
    }

    /// The app a request's `Authorization: Bearer app-...` header names.
    async fn app_for_key(&self, headers: &HeaderMap) -> Result<Arc<ServedApp>, ApiError> {
        let (app, token) = self.authenticate(headers).await?;
        self.limiter.admit(&app.id, token, &app.limits)?;
        Ok(app)
    }

    async fn authenticate<'h>(&self, headers: &'h HeaderMap) -> Result<(Arc<ServedApp>, &'h str), ApiError> {
        let header = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let Some((scheme, token)) = header.split_once(' ') else {
            return Err(ApiError::unauthorized("Authorization header must be provided and start with 'Bearer'"));
        };
        if scheme != "Bearer" {
            return Err(ApiError::unauthorized("Authorization scheme must be 'Bearer'"));
        }
        let token = token.trim();
        let app_id = match self.keys.lookup(token) {
            Lookup::Hit(app_id) => app_id,
            Lookup::Miss(ticket) => match self.store.app_for_token(token).await? {
                Some(app_id) => {
                    self.keys.insert(ticket, token.to_owned(), app_id.clone());
                    app_id
                }
                None => {
                    self.keys.remove(token);
                    return Err(ApiError::unauthorized("Access token is invalid"));
                }
            },
        };
        let ticket = match self.apps.lookup(&app_id) {
            Lookup::Hit(app) => return Ok((app, token)),
            Lookup::Miss(ticket) => ticket,
        };
        match self.store.app(&app_id).await {
            Ok(app) => {
                let app = Arc::new(ServedApp::new(app));
                self.apps.insert(ticket, app_id, app.clone());
                Ok((app, token))
            }
            Err(StoreError::NotFound(_)) => {
                self.apps.remove(&app_id);
                Err(ApiError::new(StatusCode::FORBIDDEN, "app_unavailable", "App unavailable, please check your app configurations."))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn end_user(&self, app_id: &str, user: &str) -> Result<String, ApiError> {
        let key = (app_id.to_owned(), user.to_owned());
        let ticket = match self.end_users.lookup(&key) {
            Lookup::Hit(id) => return Ok(id),
            Lookup::Miss(ticket) => ticket,
        };
        let id = self.store.end_user(app_id, user).await?;
        self.end_users.insert(ticket, key, id.clone());
        Ok(id)
    }

    async fn compiled(&self, version_id: &str) -> Result<Arc<Compiled>, ApiError> {
        if let Some(compiled) = self.versions.read().ok().and_then(|versions| versions.get(version_id).cloned()) {
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
        let features = document.workflow.as_ref().map_or(Json_::Null, |workflow| workflow.features.clone());
        let start_variables = document
            .workflow
            .as_ref()
            .and_then(|workflow| workflow.graph.nodes.iter().find(|node| node.node_type == "start" && node.container.is_none()))
            .and_then(|node| node.raw.get("variables").cloned())
            .unwrap_or_else(|| json!([]));
        let compiled = Arc::new(Compiled { plan: Arc::new(plan), features, start_variables });
        if let Ok(mut versions) = self.versions.write() {
            versions.insert(version_id.to_owned(), compiled.clone());
        }
        Ok(compiled)
    }

    /// The app's published version.
    async fn current(&self, app: &App) -> Result<(String, Arc<Compiled>), ApiError> {
        let version_id = app.current_version_id.clone().ok_or_else(|| ApiError::not_found("Workflow not found."))?;
        let compiled = self.compiled(&version_id).await?;
        Ok((version_id, compiled))
    }
}

/// A JSON body, with Dify's errors for bodies that are not JSON objects.
pub struct Body(pub serde_json::Map<String, Json_>);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(|error| {
            if error.status() == StatusCode::PAYLOAD_TOO_LARGE { too_large() } else { ApiError::invalid_param(error.body_text()) }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(serde_json::Map::new()));
        }
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

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_entity_too_large", "The request body is too large.")
}

/// Query-string parameters.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|query| Self(query.0))
            .map_err(|error| ApiError::invalid_param(error.body_text()))
    }
}

impl Params {
    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|text| !text.is_empty())
    }

    fn user(&self) -> Result<&str, ApiError> {
        self.text("user").ok_or_else(|| ApiError::invalid_param("user is required").with_param("user"))
    }

    /// An integer in `range`, `default` when absent.
    fn int(&self, name: &str, default: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64, ApiError> {
        match self.text(name) {
            None => Ok(default),
            Some(text) => text.parse::<i64>().ok().filter(|value| range.contains(value)).ok_or_else(|| {
                ApiError::invalid_param(format!("{name} must be an integer between {} and {}", range.start(), range.end())).with_param(name)
            }),
        }
    }
}

fn required_user(body: &serde_json::Map<String, Json_>) -> Result<String, ApiError> {
    match body.get("user") {
        Some(Json_::String(user)) if !user.is_empty() => Ok(user.clone()),
        _ => Err(ApiError::invalid_param("user is required").with_param("user")),
    }
}

fn streaming_mode(body: &serde_json::Map<String, Json_>) -> Result<bool, ApiError> {
    match body.get("response_mode") {
        None | Some(Json_::Null) => Ok(false),
        Some(Json_::String(mode)) if mode == "blocking" => Ok(false),
        Some(Json_::String(mode)) if mode == "streaming" => Ok(true),
        Some(_) => Err(ApiError::invalid_param("response_mode must be blocking or streaming").with_param("response_mode")),
    }
}

fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
}

pub fn router(state: Shared, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/v1/", get(welcome))
        .route("/v1", get(welcome))
        .route("/v1/workflows/run", post(workflows::run))
        .route("/v1/workflows/{workflow_id}/run", post(workflows::run_version))
        .route("/v1/workflows/run/{run_id}", get(workflows::get_run))
        .route("/v1/workflows/tasks/{task_id}/stop", post(stop_task))
        .route("/v1/workflows/logs", get(workflows::logs))
        .route("/v1/chat-messages", post(chat::send))
        .route("/v1/chat-messages/{task_id}/stop", post(stop_task))
        .route("/v1/completion-messages", post(chat::send_completion))
        .route("/v1/completion-messages/{task_id}/stop", post(stop_task))
        .route("/v1/messages", get(chat::messages))
        .route("/v1/messages/{message_id}/feedbacks", post(chat::feedback))
        .route("/v1/messages/{message_id}/suggested", get(chat::suggested))
        .route("/v1/app/feedbacks", get(chat::app_feedbacks))
        .route("/v1/conversations", get(conversations::list))
        .route("/v1/conversations/{conversation_id}", delete(conversations::remove))
        .route("/v1/conversations/{conversation_id}/name", post(conversations::rename))
        .route("/v1/conversations/{conversation_id}/variables", get(conversations::variables))
        .route("/v1/conversations/{conversation_id}/variables/{variable_id}", put(conversations::update_variable))
        .route("/v1/files/upload", post(files::upload))
        .route("/v1/parameters", get(app_info::parameters))
        .route("/v1/info", get(app_info::info))
        .route("/v1/site", get(app_info::site))
        .route("/v1/meta", get(app_info::meta))
        .route("/v1/sandbox/run", post(sandbox_api::run))
        .route("/v1/sandbox/dependencies", get(sandbox_api::dependencies))
        .route("/v1/sandbox/dependencies/update", post(sandbox_api::update_dependencies))
        .route("/v1/chat/completions", post(openai_api::chat_completions))
        .route("/v1/completions", post(openai_api::completions))
        .route("/v1/embeddings", post(openai_api::embeddings))
        .route("/v1/models", get(openai_api::models))
        .route("/v1/models/{model}", get(openai_api::model))
        .route("/metrics", get(metrics))
        .route("/v1/audio-to-text", post(unsupported("speech to text (POST /v1/audio-to-text)")))
        .route("/v1/text-to-audio", post(unsupported("text to speech (POST /v1/text-to-audio)")))
        .route("/v1/files/{file_id}/preview", get(unsupported("file previews (GET /v1/files/{id}/preview)")))
        .route("/v1/end-users/{end_user_id}", get(unsupported("end-user lookup (GET /v1/end-users/{id})")))
        .route("/v1/apps/annotations", any(unsupported("annotations (/v1/apps/annotations)")))
        .route("/v1/apps/annotations/{annotation_id}", any(unsupported("annotations (/v1/apps/annotations)")))
        .route("/v1/apps/annotation-reply/{*rest}", any(unsupported("annotation replies (/v1/apps/annotation-reply)")))
        .route("/v1/workflow/{task_id}/events", get(unsupported("human input and paused workflows (/v1/workflow/{task_id}/events)")))
        .route("/v1/form/human_input/{form_token}", any(unsupported("human input forms (/v1/form/human_input)")))
        .route("/v1/datasets", any(unsupported("the knowledge (dataset) API (/v1/datasets)")))
        .route("/v1/datasets/{*rest}", any(unsupported("the knowledge (dataset) API (/v1/datasets)")))
        .merge(admin::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), count_request))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn count_request(State(state): State<Shared>, request: Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<axum::extract::MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("", |path| path.as_str());
    state.metrics.request(method.as_str(), route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<Shared>) -> Response {
    let (pool_in_use, pool_size) = state.store.pool_usage();
    let stats = state.recorder.stats();
    let gauges = Gauges {
        pool_in_use,
        pool_size,
        pool_max: state.store.config().max_connections,
        recorder_backlog: stats.backlog.load(Ordering::Relaxed),
        recorder_batches: stats.batches.load(Ordering::Relaxed),
        recorder_rows: stats.rows_written.load(Ordering::Relaxed),
        recorder_errors: stats.write_errors.load(Ordering::Relaxed),
        runs_in_progress: state.tasks.lock().map(|tasks| tasks.len()).unwrap_or(0),
    };
    let mut text = state.metrics.render(&gauges);
    if let Some(gateway) = &state.gateway {
        gateway.metrics().render(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A Dify Service API route flowgate does not serve yet: a clear 501 naming the feature,
/// rather than the 404 of a path Dify does not have.
fn unsupported(feature: &'static str) -> impl Fn() -> std::future::Ready<ApiError> + Clone + Send + Sync + 'static {
    move || std::future::ready(ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported", format!("not supported yet: {feature}")))
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.",
    )
}

/// A known path asked with a method it does not take: Werkzeug's 405, as Dify answers it.
async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "The method is not allowed for the requested URL.")
}

/// `/ready`: the database answers and the run log takes writes.
async fn ready(State(state): State<Shared>) -> Response {
    let problem = match (state.store.ping().await, state.recorder.health()) {
        (Ok(()), Ok(())) => None,
        (Err(error), _) => Some(error.to_string()),
        (_, Err(error)) => Some(error.to_string()),
    };
    match problem {
        None => Json(json!({"status": "ready", "database": state.store.backend().as_str()})).into_response(),
        Some(error) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "error": error}))).into_response(),
    }
}

async fn welcome() -> Json<Json_> {
    Json(json!({"welcome": "Dify OpenAPI", "api_version": "v1", "server_version": env!("CARGO_PKG_VERSION")}))
}

/// `POST /workflows/tasks/{id}/stop` and `POST /chat-messages/{id}/stop`: Dify answers success
/// whether or not the task is still running. A run stopped here is acknowledged once it has
/// ended and its `stopped` state is stored, so a read right after shows it.
async fn stop_task(
    State(state): State<Shared>,
    headers: HeaderMap,
    axum::extract::Path(task_id): axum::extract::Path<String>,
    Body(body): Body,
) -> Result<Json<Json_>, ApiError> {
    let app = state.app_for_key(&headers).await?;
    required_user(&body)?;
    let mut ended = None;
    if let Ok(tasks) = state.tasks.lock()
        && let Some(task) = tasks.get(&task_id)
        && task.app_id == app.id
    {
        task.control.stop();
        ended = Some(task.ended.subscribe());
    }
    if let Some(mut ended) = ended
        && tokio::time::timeout(STOP_WAIT, ended.wait_for(|ended| *ended)).await.is_err()
    {
        return Err(ApiError::unavailable("The run was asked to stop but has not ended yet; please retry shortly.", 1));
    }
    Ok(Json(json!({"result": "success"})))
}

/// Runs the server until Ctrl-C / SIGTERM, then lets in-flight runs finish (up to `grace`).
pub async fn serve(
    state: Shared,
    listen: SocketAddr,
    max_body_bytes: usize,
    limits: crate::connections::ConnectionLimits,
    grace: Duration,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| format!("cannot listen on {listen}: {error}"))?;
    tracing::info!(
        %listen,
        database = state.store.backend().as_str(),
        blobs = state.store.blobs().describe(),
        max_connections = limits.max_connections,
        header_timeout_s = limits.header_timeout.as_secs(),
        body_timeout_s = limits.body_timeout.as_secs(),
        "flowgate serving"
    );
    let app = router(state.clone(), max_body_bytes);
    crate::connections::serve(listener, app, limits, shutdown_signal(), grace).await;
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
