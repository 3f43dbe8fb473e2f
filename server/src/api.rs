//! The HTTP API, on its own tokio thread, off the workers' path.
//!
//! - `POST /publish?topic=a[&topic=b]`: body delivered verbatim as one
//!   message to every subscriber of any listed topic.
//! - `POST /broadcast`: to every connection on the topics endpoint.
//! - `POST /drain[?period=30s]`: start a graceful drain (as SIGTERM does).
//! - `POST /rebalance?fraction=0.2[&period=30s]`: close that share of the
//!   connections with 1001, spread over the period.
//! - `GET /healthz`: liveness, 200 while the process runs (also draining).
//! - `GET /readyz`: readiness, 200 until a drain starts, then 503.
//! - `GET /stats`: counters as JSON; `GET /metrics`: Prometheus text.

use crate::cli::Serve;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::HistogramVec;
use ringcast_engine::topics::{is_valid_name, NAME_RULE};
use ringcast_engine::{Handle, OpCode};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the handlers share.
pub struct State {
    handle: Handle,
    draining: AtomicBool,
    drain_started: Notify,
    drain_period: Duration,
    /// Seconds from a publish request to every worker having queued it,
    /// by kind (`publish`, `broadcast`).
    publish_latency: HistogramVec,
}

impl State {
    /// State for a server started with `serve`'s flags.
    pub fn new(handle: Handle, serve: &Serve) -> Self {
        Self {
            handle,
            draining: AtomicBool::new(false),
            drain_started: Notify::new(),
            drain_period: serve.drain_period,
            publish_latency: crate::metrics::publish_latency(),
        }
    }

    /// Starts the drain once (later calls do nothing): `/readyz` turns
    /// 503 at once, then the workers close their listeners and spread
    /// 1001 closes over `period` (default `--drain-period`).
    pub fn begin_drain(&self, period: Option<Duration>) -> bool {
        if self.draining.swap(true, Ordering::AcqRel) {
            return false;
        }
        let period = period.unwrap_or(self.drain_period);
        tracing::info!(
            period = %humantime::format_duration(period),
            "draining: readyz is 503, listeners closed, connections closing with 1001"
        );
        self.handle.drain(period);
        self.drain_started.notify_one();
        true
    }

    /// Resolves once a drain was started through the API.
    pub async fn drain_requested(&self) {
        self.drain_started.notified().await;
    }
}

type Shared = Extract<Arc<State>>;

fn error(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

/// The API's routes; bodies over `max_message_size` bytes get 413.
pub fn router(state: Arc<State>, max_message_size: usize) -> Router {
    let router = Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/drain", post(drain))
        .route("/rebalance", post(rebalance))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics));
    #[cfg(feature = "fault-injection")]
    let router = router.route("/debug/panic", post(inject_panic));
    router
        .layer(DefaultBodyLimit::max(max_message_size))
        .with_state(state)
}

/// `POST /debug/panic?worker=N`: makes worker N panic (fault-injection
/// builds only, for the test of the panic policy).
#[cfg(feature = "fault-injection")]
async fn inject_panic(Extract(state): Shared, RawQuery(query): RawQuery) -> Response {
    let worker = query_values(query.as_deref(), "worker")
        .first()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    state.handle.inject_panic(worker);
    StatusCode::ACCEPTED.into_response()
}

/// Text for `text/*` and `application/json` (then the body must be UTF-8),
/// binary otherwise.
fn opcode_for(headers: &HeaderMap, body: &[u8]) -> Result<OpCode, &'static str> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if content_type.starts_with("text/") || content_type == "application/json" {
        std::str::from_utf8(body).map_err(|_| "body is not valid UTF-8 for a text content type")?;
        Ok(OpCode::Text)
    } else {
        Ok(OpCode::Binary)
    }
}

/// Picks the frame type, hands the message to the workers with `send`, and
/// answers `{"subscribers":N}` once every worker has queued it; the time
/// that took goes into the publish latency histogram under `kind`.
async fn deliver(
    state: &State,
    kind: &str,
    headers: &HeaderMap,
    body: &[u8],
    send: impl FnOnce(OpCode, Box<dyn FnOnce(usize) + Send>),
) -> Response {
    let started = Instant::now();
    let opcode = match opcode_for(headers, body) {
        Ok(op) => op,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    send(
        opcode,
        Box::new(move |n| {
            let _ = tx.send(n);
        }),
    );
    match rx.await {
        Ok(n) => {
            state
                .publish_latency
                .with_label_values(&[kind])
                .observe(started.elapsed().as_secs_f64());
            Json(json!({ "subscribers": n })).into_response()
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"),
    }
}

/// The values of `name` in a query string.
fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

async fn publish(
    Extract(state): Shared,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let topics = query_values(query.as_deref(), "topic");
    if topics.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "at least one topic=NAME is required",
        );
    }
    if let Some(bad) = topics.iter().find(|t| !is_valid_name(t)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("invalid topic {bad:?}: {NAME_RULE}"),
        );
    }
    let handle = state.handle.clone();
    deliver(&state, "publish", &headers, &body, |op, done| {
        handle.publish(topics, op, &body, done)
    })
    .await
}

async fn broadcast(Extract(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let handle = state.handle.clone();
    deliver(&state, "broadcast", &headers, &body, |op, done| {
        handle.broadcast(op, &body, done)
    })
    .await
}

/// `period=` from the query (humantime, e.g. `10s`), if given.
///
/// # Errors
/// A message for a value that is not a duration.
fn period(query: Option<&str>) -> Result<Option<Duration>, String> {
    match query_values(query, "period").first() {
        None => Ok(None),
        Some(text) => humantime::parse_duration(text)
            .map(Some)
            .map_err(|e| format!("period={text:?}: {e} (e.g. 30s)")),
    }
}

async fn drain(Extract(state): Shared, RawQuery(query): RawQuery) -> Response {
    let period = match period(query.as_deref()) {
        Ok(p) => p,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let started = state.begin_drain(period);
    let period = period.unwrap_or(state.drain_period);
    let body =
        json!({ "draining": true, "started": started, "period_ms": period.as_millis() as u64 });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn rebalance(Extract(state): Shared, RawQuery(query): RawQuery) -> Response {
    let fraction = query_values(query.as_deref(), "fraction")
        .first()
        .and_then(|f| f.parse::<f64>().ok())
        .filter(|f| *f > 0.0 && *f <= 1.0);
    let Some(fraction) = fraction else {
        return error(
            StatusCode::BAD_REQUEST,
            "fraction=F is required, with 0 < F <= 1",
        );
    };
    let period = match period(query.as_deref()) {
        Ok(p) => p.unwrap_or(state.drain_period),
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    if state.draining.load(Ordering::Acquire) {
        return error(StatusCode::CONFLICT, "the server is draining");
    }
    state.handle.rebalance(fraction, period);
    let body = json!({ "fraction": fraction, "period_ms": period.as_millis() as u64 });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn readyz(Extract(state): Shared) -> Response {
    if state.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn stats(Extract(state): Shared) -> Response {
    Json(state.handle.stats()).into_response()
}

async fn metrics(Extract(state): Shared) -> Response {
    let text = crate::metrics::render(
        &state.handle.stats(),
        state.draining.load(Ordering::Acquire),
        &state.publish_latency,
    );
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
}
