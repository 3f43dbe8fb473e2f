//! The HTTP publish API, on its own tokio thread, off the workers' path.
//!
//! - `POST /publish?topic=a[&topic=b]`: body delivered verbatim as one
//!   message to every subscriber of any listed topic.
//! - `POST /broadcast`: to every connection on the topics endpoint.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /stats`: counters as JSON.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ringcast_engine::topics::{is_valid_name, NAME_RULE};
use ringcast_engine::{Handle, OpCode};
use serde_json::json;

fn error(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

/// The API's routes; bodies over `max_message_size` bytes get 413.
pub fn router(handle: Handle, max_message_size: usize) -> Router {
    Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/stats", get(stats))
        .layer(DefaultBodyLimit::max(max_message_size))
        .with_state(handle)
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
/// answers `{"subscribers":N}` once every worker has queued it.
async fn deliver(
    headers: &HeaderMap,
    body: &[u8],
    send: impl FnOnce(OpCode, Box<dyn FnOnce(usize) + Send>),
) -> Response {
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
        Ok(n) => Json(json!({ "subscribers": n })).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"),
    }
}

async fn publish(
    State(handle): State<Handle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let topics: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| v.into_owned())
        .collect();
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
    deliver(&headers, &body, |op, done| {
        handle.publish(topics, op, &body, done)
    })
    .await
}

async fn broadcast(State(handle): State<Handle>, headers: HeaderMap, body: Bytes) -> Response {
    deliver(&headers, &body, |op, done| {
        handle.broadcast(op, &body, done)
    })
    .await
}

async fn stats(State(handle): State<Handle>) -> Response {
    Json(handle.stats()).into_response()
}
