//! The one HTTP server: every route vigil answers (`POST /v1/events`, `/metrics`, `/healthz`, the
//! control API and the gateway check) on one listener, with one accept loop, one set of limits and one
//! drain.
//!
//! The server can run beside any driver: `vigil serve` hosts the event intake and the API on it;
//! `vigil run` (a file or a Kafka member) starts it on `[api] listen`. It knows routes, not pipelines: it
//! calls drivers (the HTTP intake) and the control plane, never the reverse.

pub mod api;
mod events;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, Semaphore};

use crate::config::VigilConfig;
use crate::control::Control;
use crate::pipeline::{StatusLine, Summary};
use crate::run::http::{HttpIntake, IntakeError};
use crate::telemetry::Telemetry;

/// What stopped the server or `vigil serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("starting the HTTP runtime: {0}")]
    Runtime(std::io::Error),
    /// The HTTP intake failed (the archive could not be written, Kafka refused…).
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// The control plane could not start (the control log, a webhook's secret).
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// The API's tokens, or a listen address that would expose it without one.
    #[error("{0}")]
    Auth(String),
}

/// A bound listener and the runtime that serves it.
#[derive(Debug)]
pub struct Server {
    rt: tokio::runtime::Runtime,
    listener: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
    stop: Arc<Notify>,
    stopping: Arc<AtomicBool>,
}

impl Server {
    /// Binds `listen` with a runtime of `workers` threads. Nothing is accepted until [`Server::start`].
    pub fn bind(listen: &str, workers: usize) -> Result<Server, ServeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("vigil-http")
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|source| ServeError::Bind { addr: listen.to_owned(), source })?;
        let addr =
            listener.local_addr().map_err(|source| ServeError::Bind { addr: listen.to_owned(), source })?;
        Ok(Server {
            rt,
            listener: Some(listener),
            addr,
            stop: Arc::new(Notify::new()),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The bound address (the port chosen when `listen` said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Set once the server stops accepting: `/healthz` answers 503 from then on.
    pub fn stopping(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// Starts accepting connections for `router` (plus `/healthz` and `/metrics` from `telemetry`),
    /// each given `header_timeout` to send its request headers.
    pub fn start(&mut self, router: Router, telemetry: Arc<Telemetry>, header_timeout: Duration) {
        let Some(listener) = self.listener.take() else { return };
        let router = router.merge(base_routes(telemetry, self.stopping.clone()));
        let stop = self.stop.clone();
        self.rt.spawn(accept(listener, router, stop, header_timeout));
    }

    /// Runs `f` on the server's runtime (beside the connections).
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.rt.spawn(f);
    }

    /// Blocks the calling thread on `f`, on the server's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Blocks until one of `stops` is set (checked every 100 ms).
    pub fn wait_for(&self, stops: &[&AtomicBool]) {
        while !stops.iter().any(|s| s.load(Ordering::Relaxed)) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops accepting connections; requests in flight go on.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }

    /// Stops everything: idle keep-alive connections are dropped with the runtime.
    pub fn shutdown(self) {
        self.stop_accepting();
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// `[metrics] listen`: `/metrics` and `/healthz` on a listener of their own, for as long as the returned
/// server lives.
pub fn metrics_listener(cfg: &VigilConfig, telemetry: Arc<Telemetry>) -> Result<Option<Server>, ServeError> {
    let Some(listen) = &cfg.metrics.listen else { return Ok(None) };
    let mut s = Server::bind(listen, 1)?;
    s.start(Router::new(), telemetry, Duration::from_secs(10));
    tracing::info!(addr = %s.addr(), "metrics on http://{}/metrics", s.addr());
    Ok(Some(s))
}

/// Accepts connections until told to stop.
async fn accept(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: Arc<Notify>,
    header_timeout: Duration,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.notified() => break,
        };
        let router = router.clone();
        tokio::spawn(async move {
            // The remote address travels with each request, as axum's `ConnectInfo`.
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What every server answers: `/healthz` (503 once stopping) and `/metrics`, and a JSON 404.
fn base_routes(telemetry: Arc<Telemetry>, stopping: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(healthz).with_state(stopping))
        .route("/metrics", get(metrics).with_state(telemetry))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: POST /v1/events, GET /v1/check, /v1/agents, /v1/halts, \
                 POST /v1/{agents/ID,cohorts/FACTOR/VALUE,fleet}/{halt,resume}, GET /metrics, GET /healthz",
            )
        })
}

async fn healthz(State(stopping): State<Arc<AtomicBool>>) -> Response {
    if stopping.load(Ordering::Relaxed) {
        busy(StatusCode::SERVICE_UNAVAILABLE, 1, "stopping")
    } else {
        json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
    }
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> Response {
    let mut r = Response::new(Body::from(telemetry.render()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON error: `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

/// 429 or 503 with `Retry-After`: come back later, nothing was taken.
pub(crate) fn busy(status: StatusCode, retry_after: u64, message: &str) -> Response {
    let mut r = error(status, message);
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

/// `vigil serve`: the server with the event intake, until `stop` is set; then drains requests in flight
/// (up to `drain_seconds`), makes everything taken durable and returns the counts. `ready` is called
/// with the bound address once connections are accepted.
pub fn serve(
    cfg: &VigilConfig,
    stop: &AtomicBool,
    ready: impl FnOnce(SocketAddr),
) -> Result<Summary, ServeError> {
    let started = Instant::now();
    // Who may do what is settled before anything is opened or listens: an exposed listener without
    // tokens is refused without ever having been open.
    let listen: SocketAddr = cfg.http.listen.parse().map_err(|_| {
        ServeError::Auth(format!(
            "http.listen must be an address like 127.0.0.1:8080, got {:?}",
            cfg.http.listen
        ))
    })?;
    let auth = api::Auth::resolve(&cfg.api, listen).map_err(ServeError::Auth)?;
    let senders = events::Senders::resolve(&cfg.http, listen).map_err(ServeError::Auth)?;
    let telemetry = Arc::new(Telemetry::new());
    let control = Control::open(cfg, telemetry.clone())?;
    let mut server = Server::bind(&cfg.http.listen, cfg.http.workers)?;
    // The archive is opened (and recovered) here, before the first request is taken.
    let intake = Arc::new(HttpIntake::open(cfg, telemetry.clone(), control.clone())?);
    let permits = Arc::new(Semaphore::new(cfg.http.max_inflight_requests));
    let state = Arc::new(events::Events {
        http: cfg.http.clone(),
        max_event_bytes: cfg.input.max_event_bytes,
        intake: intake.clone(),
        permits: permits.clone(),
        body_bytes: Arc::new(Semaphore::new(cfg.http.body_bytes_in_flight.min(Semaphore::MAX_PERMITS))),
        stopping: server.stopping(),
        senders,
        telemetry: telemetry.clone(),
    });
    if intake.is_kafka() {
        // The journaled lane's thread writes its own status lines; here the counts live with the handlers.
        let (telemetry, mut status) =
            (telemetry.clone(), StatusLine::new("serve", cfg.output.status_seconds));
        server.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                status.tick(&telemetry, String::new);
            }
        });
    }
    let routes = events::routes(state).merge(api::routes(control.clone(), auth, &cfg.api, telemetry.clone()));
    server.start(routes, telemetry.clone(), Duration::from_secs(cfg.http.request_timeout_seconds));
    ready(server.addr());
    let metrics = metrics_listener(cfg, telemetry)?;
    server.wait_for(&[stop, intake.ended()]);
    server.stop_accepting();
    let all = cfg.http.max_inflight_requests as u32;
    let drain = Duration::from_secs(cfg.http.drain_seconds);
    // The timer is made inside the runtime, which owns the clock.
    if server.block_on(async { tokio::time::timeout(drain, permits.acquire_many(all)).await }).is_err() {
        tracing::warn!(
            drain_seconds = drain.as_secs(),
            "requests still in flight after the drain time; stopping anyway"
        );
    }
    server.shutdown();
    drop(metrics);
    control.close(Duration::from_secs_f64(cfg.control.delivery_grace_seconds))?;
    let mut summary = intake.close()?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
