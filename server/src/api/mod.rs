//! The HTTP API, on its own tokio thread, off the workers' path.
//!
//! - `POST /publish?topic=a[&topic=b][&user=42]`: body delivered verbatim
//!   as one message to every subscriber of any listed topic and every
//!   connection of any listed user. The reply gives each topic's offset
//!   when it keeps history.
//! - `POST /broadcast`: to every connection on the topics endpoint.
//! - `POST /disconnect?user=42[&code=4003][&reason=...]`: close every
//!   connection of the users.
//! - `GET /users/42`: the user's open connections.
//! - `GET /history?topic=a[&since=12][&limit=100]`: a topic's retained
//!   messages.
//! - `GET /presence?topic=a[&limit=1000][&cursor=C]` and
//!   `GET /presence_stats?topic=a`: a presence topic's members and counts
//!   ([`presence`]).
//! - `POST /drain[?period=30s]`: start a graceful drain (as SIGTERM does).
//! - `POST /rebalance?fraction=0.2[&period=30s]`: close that share of the
//!   connections with 1001, spread over the period.
//! - `GET /healthz`: liveness, 200 while the process runs (also draining).
//! - `GET /readyz`: readiness, 200 until a drain starts, then 503.
//! - `GET /stats`: counters as JSON; `GET /metrics`: Prometheus text.
//!
//! With `--api-token-file`, every route but `GET /healthz`, `/readyz` and
//! `/metrics` needs `Authorization: Bearer TOKEN` (compared in constant
//! time), else 401.
//!
//! `/publish`, `/broadcast`, `/disconnect`, `/history` and presence go through the
//! broker ([`crate::broker::Broker`]). Alone, the counts are this node's
//! (`{"subscribers":N}`, `{"disconnected":N}`), once every worker has
//! queued the message. Over Redis (`--broker`): 200 once Redis accepted
//! (`{"nodes":N[,"offsets":{...}]}`), 503 when it is unreachable or
//! slower than `--broker-timeout`, or when `--broker-queue` is full;
//! `/healthz` adds the broker's state as JSON.

mod presence;

use crate::broker::{Broker, Message, Reach, Unavailable};
use crate::cli::Serve;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::HistogramVec;
use ringcast_engine::auth::DISCONNECTED;
use ringcast_engine::auth::MAX_USER_ID;
use ringcast_engine::protocol::names::{is_valid_name, NAME_RULE};
use ringcast_engine::{Content, Handle};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
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
    /// `--api-token-file`'s token, if set.
    api_token: Option<String>,
    /// The hook client, for its call counters.
    hooks: Option<Arc<crate::hooks::Hooks>>,
    /// The broker: publishes, broadcasts, disconnects and history go
    /// through it.
    broker: Arc<dyn Broker>,
    /// The upstream bounds, for their metrics.
    bounds: Arc<crate::upstream::bounds::Bounds>,
}

impl State {
    /// State for a server started with `serve`'s flags; `api_token` guards
    /// every route but the health checks and metrics.
    pub fn new(
        handle: Handle,
        serve: &Serve,
        api_token: Option<String>,
        hooks: Option<Arc<crate::hooks::Hooks>>,
        broker: Arc<dyn Broker>,
        bounds: Arc<crate::upstream::bounds::Bounds>,
    ) -> Self {
        Self {
            handle,
            bounds,
            hooks,
            api_token,
            broker,
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

/// 503 for a broker that could not take a request (nothing was sent, or
/// see the README for multi-topic publishes).
fn unavailable(Unavailable(why): Unavailable) -> Response {
    tracing::warn!("broker request refused: {why}");
    error(StatusCode::SERVICE_UNAVAILABLE, &why)
}

/// The API's routes; bodies over `max_message_size` bytes get 413.
pub fn router(state: Arc<State>, max_message_size: usize) -> Router {
    let guarded = Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/disconnect", post(disconnect))
        .route("/users/{user}", get(user_connections))
        .route("/history", get(history))
        .route("/presence", get(presence::presence))
        .route("/presence_stats", get(presence::presence_stats))
        .route("/drain", post(drain))
        .route("/rebalance", post(rebalance))
        .route("/stats", get(stats));
    #[cfg(feature = "fault-injection")]
    let guarded = guarded.route("/debug/panic", post(inject_panic));
    let guarded = guarded.route_layer(middleware::from_fn_with_state(state.clone(), api_token));
    Router::new()
        .merge(guarded)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_message_size))
        .with_state(state)
}

/// With `--api-token-file`: lets the request through only with
/// `Authorization: Bearer TOKEN`, compared in constant time; else 401.
async fn api_token(Extract(state): Shared, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.api_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "API token required (Authorization: Bearer)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
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

/// The answer to a publish or broadcast that `reach`ed so far, with the
/// topics' `offsets`: `{"subscribers":N}` (or `{"nodes":N}` over Redis),
/// with `"offsets":{...}` when any topic keeps history. The time from
/// `started` goes into the publish latency histogram under `kind`.
async fn reached(
    state: &State,
    kind: &str,
    started: Instant,
    reach: Reach,
    offsets: Vec<(String, u64)>,
) -> Response {
    let (key, n) = match reach.counted().await {
        Ok(counted) => counted,
        Err(e) => return unavailable(e),
    };
    state
        .publish_latency
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    let mut reply = json!({ key: n });
    if !offsets.is_empty() {
        let offsets = offsets.into_iter().map(|(topic, o)| (topic, json!(o)));
        reply["offsets"] = offsets.collect::<serde_json::Map<_, _>>().into();
    }
    Json(reply).into_response()
}

/// Hands the workers a command with `send` (whose result goes to `reply`),
/// waits for the sum of their counts, and answers `reply(result, sum)`;
/// 503 when the workers have exited.
async fn count<T>(
    send: impl FnOnce(Box<dyn FnOnce(usize) + Send>) -> T,
    reply: impl FnOnce(T, usize) -> serde_json::Value,
) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = send(Box::new(move |n| {
        let _ = tx.send(n);
    }));
    match rx.await {
        Ok(n) => Json(reply(sent, n)).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"),
    }
}

/// A 400 for the first user id from a query that is empty or over
/// [`MAX_USER_ID`] bytes, if any.
fn bad_user(users: &[String]) -> Option<Response> {
    let bad = users
        .iter()
        .find(|u| u.is_empty() || u.len() > MAX_USER_ID)?;
    Some(error(
        StatusCode::BAD_REQUEST,
        &format!("invalid user {bad:?}: 1-{MAX_USER_ID} bytes"),
    ))
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
    let users = query_values(query.as_deref(), "user");
    if topics.is_empty() && users.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "at least one topic=NAME or user=ID is required",
        );
    }
    if let Some(bad) = topics.iter().find(|t| !is_valid_name(t)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("invalid topic {bad:?}: {NAME_RULE}"),
        );
    }
    if let Some(response) = bad_user(&users) {
        return response;
    }
    let started = Instant::now();
    let content = match content_for(&headers, &body) {
        Ok(content) => content,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let message = Message {
        topics,
        users,
        content,
        body: &body,
        sender: ringcast_engine::Sender::default(),
    };
    match state.broker.publish(message).await {
        Ok(published) => {
            let offsets = published.offsets;
            reached(&state, "publish", started, published.reach, offsets).await
        }
        Err(e) => unavailable(e),
    }
}

/// `POST /disconnect?user=42[&user=43][&code=4003][&reason=...]`: closes
/// every connection of the users on this node; `{"disconnected":N}`.
async fn disconnect(Extract(state): Shared, RawQuery(query): RawQuery) -> Response {
    let query = query.as_deref();
    let users = query_values(query, "user");
    if users.is_empty() {
        return error(StatusCode::BAD_REQUEST, "at least one user=ID is required");
    }
    if let Some(response) = bad_user(&users) {
        return response;
    }
    let code = match query_values(query, "code").first() {
        None => DISCONNECTED,
        Some(text) => match text.parse::<u16>() {
            Ok(code) if code == 1000 || (3000..=4999).contains(&code) => code,
            _ => return error(StatusCode::BAD_REQUEST, "code must be 1000 or 3000-4999"),
        },
    };
    let reason = query_values(query, "reason")
        .pop()
        .unwrap_or_else(|| "disconnected".to_owned());
    if reason.len() > 123 {
        return error(StatusCode::BAD_REQUEST, "reason must be at most 123 bytes");
    }
    let reach = match state.broker.disconnect(users, code, &reason).await {
        Ok(reach) => reach,
        Err(e) => return unavailable(e),
    };
    match reach.counted().await {
        Ok((key, n)) => Json(json!({ key: n })).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `GET /users/42`: `{"connections":N}`, the user's open connections on
/// this node.
async fn user_connections(Extract(state): Shared, Path(user): Path<String>) -> Response {
    if let Some(response) = bad_user(std::slice::from_ref(&user)) {
        return response;
    }
    let handle = state.handle.clone();
    let ask = |done| handle.user_connections(&user, done);
    count(ask, |(), n| json!({ "connections": n })).await
}

async fn broadcast(Extract(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let content = match content_for(&headers, &body) {
        Ok(content) => content,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    match state.broker.broadcast(content, &body).await {
        Ok(reach) => reached(&state, "broadcast", started, reach, Vec::new()).await,
        Err(e) => unavailable(e),
    }
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
    let page = match state.broker.history(topic, since, limit).await {
        Ok(page) => page,
        Err(e) => return unavailable(e),
    };
    match page {
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

/// `GET /healthz`: 200 while the process runs; with a broker that has a
/// state of its own (Redis), a JSON body with it (`up`, `degraded`,
/// `down`), still 200: established connections are served either way.
async fn healthz(Extract(state): Shared) -> Response {
    match state.broker.health() {
        None => "ok\n".into_response(),
        Some(broker) => Json(json!({"status": "ok", "broker": broker})).into_response(),
    }
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
    let mut text = crate::metrics::render(
        &state.handle.stats(),
        state.draining.load(Ordering::Acquire),
        &state.publish_latency,
        state.hooks.as_deref(),
    );
    text.push_str(&state.bounds.render());
    text.push_str(&state.broker.metrics_text());
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
}
