//! The HTTP/1.1 listener: what a connection may cost the server. Headers must arrive within a
//! deadline (which also closes idle keep-alive connections), a request body within another, a
//! connection serves a bounded number of requests, and the server holds at most so many
//! connections, below its open-file limit. At that cap the connection idle longest makes room
//! for a new one, so a flood of slow or idle clients is cut off instead of taking every file
//! descriptor and locking everyone else out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// File descriptors kept for everything but client connections: database pools, the sandbox's
/// pipes, blob files, outbound HTTP.
const RESERVED_FILES: u64 = 1024;
/// How often the "connection cap reached" line may be logged.
const CAP_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long = "http-header-timeout", env = "FLOWGATE_HTTP_HEADER_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's whole body.
    #[arg(long = "http-body-timeout", env = "FLOWGATE_HTTP_BODY_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,
    /// Client connections held at once; more are closed as they arrive. At most the open-file
    /// limit less 1,024.
    #[arg(long = "http-max-connections", env = "FLOWGATE_HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_cap: u64,
    /// Requests one keep-alive connection serves before it is closed (the client reconnects,
    /// which lets a load balancer spread clients again).
    #[arg(long = "http-max-requests-per-connection", env = "FLOWGATE_HTTP_MAX_REQUESTS_PER_CONNECTION", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests_per_connection: u64,
}

/// The limits in force, after the connection cap is fitted under the open-file limit.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_requests_per_connection: u64,
}

impl ConnectionArgs {
    pub fn limits(&self) -> ConnectionLimits {
        let open_files = open_file_limit();
        let fitting = open_files.map_or(self.connection_cap, |limit| self.connection_cap.min(limit.saturating_sub(RESERVED_FILES).max(1)));
        if fitting < self.connection_cap {
            tracing::warn!(
                requested = self.connection_cap,
                max_connections = fitting,
                open_file_limit = open_files,
                "the connection cap is lowered to fit the open-file limit (raise it with `ulimit -n`)"
            );
        }
        ConnectionLimits {
            header_timeout: Duration::from_secs(self.header_timeout),
            body_timeout: Duration::from_secs(self.body_timeout),
            max_connections: usize::try_from(fitting).unwrap_or(usize::MAX),
            max_requests_per_connection: self.max_requests_per_connection,
        }
    }
}

/// The soft limit on open files (`RLIMIT_NOFILE`), from `/proc/self/limits`.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Connections open now, for `/metrics`.
pub static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// Connections closed on arrival because the cap was reached and none was idle, for `/metrics`.
pub static REFUSED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Idle connections closed to make room for a new one, for `/metrics`.
pub static EVICTED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// How many open connections are looked at to find the one idle longest (sampling, as an
/// exact order would cost a scan of all of them per arrival during a flood).
const EVICTION_SAMPLE: usize = 64;

/// One open connection, as the accept loop sees it.
struct Tracked {
    /// Requests whose response has not been sent in full (a streamed one counts until its end).
    in_flight: AtomicUsize,
    /// When the connection last became idle (milliseconds since the listener started).
    idle_since: AtomicU64,
    /// Closes the connection (only ever asked of an idle one).
    evict: tokio::sync::Notify,
}

/// The open connections: at the cap, the one idle longest gives way to a new arrival, as
/// nginx reuses idle keep-alive connections, so a flood of idle or slow clients cannot lock
/// out clients that send requests.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn len(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }

    /// Closes the connection idle longest among a sample; false when none is idle.
    fn evict_one(&self) -> bool {
        let Ok(mut open) = self.open.lock() else { return false };
        let chosen = open
            .iter()
            .filter(|(_, tracked)| tracked.in_flight.load(Ordering::Acquire) == 0)
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, tracked)| tracked.idle_since.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        let Some(tracked) = chosen.and_then(|id| open.remove(&id)) else { return false };
        tracked.evict.notify_one();
        EVICTED_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// their requests in progress for up to `grace`.
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits, shutdown: impl Future<Output = ()>, grace: Duration) {
    let registry = Arc::new(Registry::default());
    let epoch = Instant::now();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let mut last_cap_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors or similar: wait a little instead of spinning.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if registry.len() >= limits.max_connections && !registry.evict_one() {
            // Every connection is busy: this one is closed at once, so the client learns now
            // and the descriptor is free again.
            REFUSED_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            if last_cap_log.is_none_or(|logged| logged.elapsed() >= CAP_LOG_EVERY) {
                last_cap_log = Some(Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused = REFUSED_CONNECTIONS.load(Ordering::Relaxed),
                    "connection cap reached with every connection busy: new connections are closed until others end (see --http-max-connections)"
                );
            }
            drop(stream);
            continue;
        }
        // Without TCP_NODELAY a streamed event can sit in the kernel until the client's delayed
        // ACK (40 ms) releases it: every SSE frame must leave at once.
        let _ = stream.set_nodelay(true);
        let now = elapsed_ms(epoch);
        let tracked =
            Arc::new(Tracked { in_flight: AtomicUsize::new(0), idle_since: AtomicU64::new(now), evict: tokio::sync::Notify::new() });
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = registry.open.lock() {
            open.insert(id, tracked.clone());
        }
        let service = ConnectionService {
            app: app.clone(),
            served: Arc::new(AtomicU64::new(0)),
            limits: limits.clone(),
            tracked: tracked.clone(),
            epoch,
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let registry = registry.clone();
        tokio::spawn(async move {
            OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            // Errors here are the client's (a reset, a header timeout): nothing to report.
            // An evicted connection is idle: dropping it just closes the socket.
            tokio::select! {
                _ = connection => {}
                () = tracked.evict.notified() => {}
            }
            if let Ok(mut open) = registry.open.lock() {
                open.remove(&id);
            }
            OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period are dropped");
    }
}

fn elapsed_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One connection's requests: the body deadline, `Connection: close` on its last response,
/// and whether a request is in progress (an idle connection may be evicted).
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    served: Arc<AtomicU64>,
    limits: ConnectionLimits,
    tracked: Arc<Tracked>,
    epoch: Instant,
}

/// Counts a request as in progress until its response is sent in full (or given up).
struct InFlight {
    tracked: Arc<Tracked>,
    epoch: Instant,
}

impl InFlight {
    fn new(tracked: Arc<Tracked>, epoch: Instant) -> Self {
        tracked.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { tracked, epoch }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tracked.idle_since.store(elapsed_ms(self.epoch), Ordering::Relaxed);
        self.tracked.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = InFlight::new(self.tracked.clone(), self.epoch);
        let last = self.served.fetch_add(1, Ordering::Relaxed) + 1 >= self.limits.max_requests_per_connection;
        let deadline = tokio::time::Instant::now() + self.limits.body_timeout;
        let request = request.map(|body| Body::new(BodyDeadline { body, deadline, timer: None }));
        let mut app = self.app.clone();
        Box::pin(async move {
            // A router is always ready: no `poll_ready` needed.
            let mut response = tower::Service::call(&mut app, request).await?;
            if last {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Body::new(ResponseBody { body, _in_flight: in_flight })))
        })
    }
}

/// A response body that keeps its request counted as in progress until it is sent or dropped.
struct ResponseBody {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once its deadline passes (however slowly it trickles in).
struct BodyDeadline {
    body: hyper::body::Incoming,
    deadline: tokio::time::Instant,
    /// Set the first time the body is not ready (most bodies are there at once, and need none).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The error a late body gives its reader (axum answers it as a bad request).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTooSlow;

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = self.deadline;
        match self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline))).as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
