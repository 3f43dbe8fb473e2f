//! The HTTP API, on its own tokio thread, off the workers' path.
//!
//! - `POST /publish?topic=a[&topic=b]`: body delivered verbatim as one
//!   message to every subscriber of any listed topic.
//!   The reply gives each topic's offset when it keeps history.
//! - `POST /broadcast`: to every connection on the topics endpoint.
//! - `GET /history?topic=a[&since=12][&limit=100]`: a topic's retained
//!   messages.
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
use ringcast_engine::{Content, Handle};
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
        .route("/history", get(history))
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

/// What the body is, from `Content-Type`: `text/*` (then it must be
/// UTF-8), `application/json` (then it must be JSON), anything else bytes.
fn content_for(headers: &HeaderMap, body: &[u8]) -> Result<Content, &'static str> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let content = Content::from_content_type(value);
    content.check(body)?;
    Ok(content)
}

/// Checks the body's content type, hands the message to the workers with
/// `send` (which returns the offsets it got), and answers
/// `{"subscribers":N}`, with `"offsets":{...}` when any topic keeps
/// history, once every worker has queued it; the time that took goes into
/// the publish latency histogram under `kind`.
async fn deliver(
    state: &State,
    kind: &str,
    headers: &HeaderMap,
    body: &[u8],
    send: impl FnOnce(Content, Box<dyn FnOnce(usize) + Send>) -> Vec<(String, u64)>,
) -> Response {
    let started = Instant::now();
    let content = match content_for(headers, body) {
        Ok(content) => content,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let offsets = send(
        content,
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
            let mut reply = json!({ "subscribers": n });
            if !offsets.is_empty() {
                let offsets = offsets.into_iter().map(|(topic, o)| (topic, json!(o)));
                reply["offsets"] = offsets.collect::<serde_json::Map<_, _>>().into();
            }
            Json(reply).into_response()
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
    deliver(&state, "publish", &headers, &body, |content, done| {
        handle.publish(topics, content, &body, done)
    })
    .await
}

async fn broadcast(Extract(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let handle = state.handle.clone();
    deliver(&state, "broadcast", &headers, &body, |content, done| {
        handle.broadcast(content, &body, done);
        Vec::new()
    })
    .await
}

/// Most messages one `GET /history` returns, and the default `limit`.
const HISTORY_LIMIT: usize = 1000;

/// `GET /history?topic=a[&since=12][&limit=100]`: the topic's epoch, top
/// offset, oldest retained offset and up to `limit` messages after
/// `since`; 404 for a topic that keeps no history.
async fn history(Extract(state): Shared, RawQuery(query): RawQuery) -> Response {
    let query = query.as_deref();
    let [topic] = &query_values(query, "topic")[..] else {
        return error(
            StatusCode::BAD_REQUEST,
            "exactly one topic=NAME is required",
        );
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        match query_values(query, name).first() {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}={v:?} is not a count")),
        }
    };
    let (since, limit) = match (number("since"), number("limit")) {
        (Ok(since), Ok(limit)) => (since, limit),
        (Err(reason), _) | (_, Err(reason)) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let limit = limit.map_or(HISTORY_LIMIT, |l| (l as usize).min(HISTORY_LIMIT));
    match state.handle.history(topic, since, limit) {
        Some(page) => {
            ([(header::CONTENT_TYPE, "application/json")], page.to_json()).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            &format!("topic {topic:?} keeps no history (see --history)"),
        ),
    }
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
