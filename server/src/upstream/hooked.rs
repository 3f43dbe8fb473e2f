//! The backend hooks' side of the upstream loop: a client publish
//! through the publish hook (passed, rewritten or refused), an rpc call,
//! a parked handshake's admission, and the disconnect batches. Work for a
//! connection that closed meanwhile is dropped before its hook is called.

use super::bounds::Ticket;
use super::{deliver, Context};
use crate::hooks::{Answer, Hooks};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ringcast_engine::auth::Grant;
use ringcast_engine::auth::MAX_USER_ID;
use ringcast_engine::protocol::names::is_valid_name;
use ringcast_engine::protocol::v1;
use ringcast_engine::upstream::{Closed, Connect, Publish, Rpc, Verdict};
use ringcast_engine::Content;
use ringcast_engine::MAX_TOPICS_PER_CONNECTION;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Disconnect events per request at most.
const DISCONNECT_BATCH: usize = 100;

/// Longest a disconnect event waits for its batch to fill.
const DISCONNECT_WAIT: Duration = Duration::from_millis(100);

/// Disconnect events waiting for their batch at most (each at most about
/// 200 bytes: a client id, a user id of at most 128 bytes, a code); past
/// it an event is dropped (the disconnect hook is best effort).
pub const DISCONNECT_QUEUE: usize = 65_536;

/// The publish hook's request: `{"client","user","topic","topics","data"}`
/// (`b64data` instead of `data` for a binary room message).
fn publish_request(publish: &Publish) -> Value {
    let mut body = json!({
        "client": publish.origin.client_id(),
        "user": publish.user,
        "topic": publish.topics.first(),
        "topics": publish.topics,
    });
    match publish.content {
        Content::Json => {
            body["data"] = serde_json::from_slice(&publish.payload).unwrap_or(Value::Null);
        }
        Content::Text => {
            body["data"] = String::from_utf8_lossy(&publish.payload).into();
        }
        Content::Binary => body["b64data"] = BASE64.encode(&publish.payload).into(),
    }
    body
}

/// What a publish hook's `result` makes of the message: `None` to pass it
/// as it is, or the new content and payload.
///
/// # Errors
/// A reason for a `b64data` that is not base64.
fn replacement(
    original: Content,
    result: &Map<String, Value>,
) -> Result<Option<(Content, Vec<u8>)>, &'static str> {
    match (result.get("data"), result.get("b64data")) {
        (Some(_), Some(_)) => Err("both data and b64data"),
        (Some(Value::String(text)), None) if original == Content::Text => {
            Ok(Some((Content::Text, text.clone().into_bytes())))
        }
        (Some(value), None) => Ok(Some((Content::Json, value.to_string().into_bytes()))),
        (None, Some(Value::String(b64))) => BASE64
            .decode(b64)
            .map(|bytes| Some((Content::Binary, bytes)))
            .map_err(|_| "b64data is not base64"),
        (None, Some(_)) => Err("b64data is not a string"),
        (None, None) => Ok(None),
    }
}

/// Runs a client publish through the publish hook: passed, rewritten or
/// refused (the refusal's reason goes back as an error op).
pub(super) async fn publish_hooked(ctx: &Context, publish: Publish) {
    let hooks = ctx.hooks.as_ref().expect("the publish hook has a client");
    let refuse = |reason: &str| {
        ctx.handle
            .reply(publish.origin, v1::error(publish.id, reason))
    };
    let alive = || !ctx.bounds.is_dead(publish.origin);
    let body = publish_request(&publish);
    match hooks.call_while("publish", &body, &alive).await {
        Ok(Answer::Result(result)) => match replacement(publish.content, &result) {
            Ok(None) => deliver(ctx, &publish, publish.content, &publish.payload).await,
            Ok(Some((_, payload))) if payload.len() > ctx.max_message => {
                refuse("the publish hook's data is over --max-message-size");
            }
            Ok(Some((content, payload))) => deliver(ctx, &publish, content, &payload).await,
            Err(why) => {
                tracing::debug!(why, "publish hook answer refused");
                refuse("publish hook answer invalid");
            }
        },
        Ok(Answer::Error { reason, .. }) => refuse(&reason),
        Err(crate::hooks::Failure::Unwanted) => ctx.bounds.dropped(1),
        Err(_) => refuse("publish hook unavailable"),
    }
}

/// Calls the rpc hook and answers `rpc_result` or `error`; drops the
/// call (and gives back its `_ticket`) if the connection closes first.
pub(super) async fn call_rpc(ctx: Arc<Context>, rpc: Rpc, _ticket: Ticket) {
    let Some(hooks) = &ctx.hooks else {
        return ctx
            .handle
            .reply(rpc.origin, v1::error(rpc.id, "rpc is not enabled"));
    };
    let data: Value = serde_json::from_str(&rpc.data).unwrap_or(Value::Null);
    let body = json!({
        "client": rpc.origin.client_id(),
        "user": rpc.user,
        "method": rpc.method,
        "data": data,
    });
    let alive = || !ctx.bounds.is_dead(rpc.origin);
    let frame = match hooks.call_while("rpc", &body, &alive).await {
        Ok(Answer::Result(result)) => {
            let data = result.get("data").unwrap_or(&Value::Null).to_string();
            let raw = RawValue::from_string(data).expect("a Value serializes to JSON");
            v1::rpc_result(rpc.id, &raw)
        }
        Ok(Answer::Error { reason, .. }) => v1::error(rpc.id, &reason),
        Err(crate::hooks::Failure::Unwanted) => return ctx.bounds.dropped(1),
        Err(_) => v1::error(rpc.id, "rpc unavailable"),
    };
    ctx.handle.reply(rpc.origin, frame);
}

/// The connect hook's `result`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Admitted {
    user: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    publish: Option<Vec<String>>,
    info: Option<Value>,
}

/// Checks a connect hook's `result` as a token's claims are checked.
///
/// # Errors
/// A reason naming the field.
fn admission(result: Map<String, Value>) -> Result<Verdict, String> {
    let admitted: Admitted =
        serde_json::from_value(Value::Object(result)).map_err(|e| e.to_string())?;
    if let Some(user) = &admitted.user {
        if user.is_empty() || user.len() > MAX_USER_ID {
            return Err(format!("user must be 1-{MAX_USER_ID} bytes"));
        }
    }
    if admitted.topics.len() > MAX_TOPICS_PER_CONNECTION {
        return Err(format!("over {MAX_TOPICS_PER_CONNECTION} topics"));
    }
    if let Some(bad) = admitted.topics.iter().find(|t| !is_valid_name(t)) {
        return Err(format!("invalid topic {bad:?}"));
    }
    let info = admitted.info.map(|v| v.to_string());
    let grant = Grant::new(None, admitted.publish, info.as_deref())?;
    Ok(Verdict::Admit {
        user: admitted.user,
        grant,
        topics: admitted.topics,
    })
}

/// The query string forwarded to the connect hook: `query` without its
/// `token` parameters (the client's JWT, which the server checks itself),
/// unless `forward_token` (`--hook-forward-token`). Kept undecoded.
fn forwarded_query(query: &str, forward_token: bool) -> String {
    if forward_token {
        return query.to_owned();
    }
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let decoded: String = form_urlencoded::parse(name.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect();
            !pair.is_empty() && decoded != "token"
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Calls the connect hook for a parked handshake and finishes it: 101,
/// 403 (refused), or 503 (timeout, failure, 5xx, a bad answer). The hook
/// gets the `cookie`, `origin`, `user-agent` and `authorization` headers
/// the client sent, and the query without `token` (see
/// [`forwarded_query`]).
pub(super) async fn call_connect(ctx: Arc<Context>, connect: Connect, _ticket: Ticket) {
    let Some(hooks) = &ctx.hooks else {
        return ctx.handle.admit(connect.origin, Verdict::Unavailable);
    };
    let headers: Map<String, Value> = connect
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Value::String(value)))
        .collect();
    let body = json!({
        "client": connect.origin.client_id(),
        "ip": connect.ip.to_string(),
        "headers": headers,
        "query": forwarded_query(&connect.query, ctx.forward_token),
        "user": connect.user,
    });
    let verdict = match hooks.call("connect", &body).await {
        Ok(Answer::Result(result)) => admission(result).unwrap_or_else(|why| {
            tracing::warn!(why, "connect hook answer refused; answering 503");
            Verdict::Unavailable
        }),
        Ok(Answer::Error { status, reason }) => {
            tracing::debug!(?status, reason, "connect hook refused a connection");
            match status {
                Some(500..) => Verdict::Unavailable,
                _ => Verdict::Refuse,
            }
        }
        Err(_) => Verdict::Unavailable,
    };
    ctx.handle.admit(connect.origin, verdict);
}

pub(super) fn disconnect_event(closed: &Closed) -> Value {
    json!({
        "client": closed.origin.client_id(),
        "user": closed.user,
        "code": closed.code,
    })
}

/// Sends disconnect events in batches of up to [`DISCONNECT_BATCH`], each
/// sent within [`DISCONNECT_WAIT`] of its first event, one request at a
/// time. Each event is sent at most once; a failed request loses its
/// batch (best effort).
pub(super) async fn disconnect_batches(hooks: Arc<Hooks>, mut events: mpsc::Receiver<Value>) {
    let mut batch = Vec::with_capacity(DISCONNECT_BATCH);
    while let Some(first) = events.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + DISCONNECT_WAIT;
        while batch.len() < DISCONNECT_BATCH {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        let body = json!({ "events": std::mem::take(&mut batch) });
        let _ = hooks.call("disconnect", &body).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn publish_hook_replacements() {
        let text = |v| replacement(Content::Text, &map(v));
        assert!(matches!(text(json!({})), Ok(None)));
        assert_eq!(
            text(json!({"data":"HI"})).unwrap(),
            Some((Content::Text, b"HI".to_vec()))
        );
        assert_eq!(
            replacement(Content::Json, &map(json!({"data":"HI"}))).unwrap(),
            Some((Content::Json, br#""HI""#.to_vec()))
        );
        assert_eq!(
            text(json!({"b64data":"AP8="})).unwrap(),
            Some((Content::Binary, vec![0, 255]))
        );
        assert!(text(json!({"b64data":"%%"})).is_err());
        assert!(text(json!({"data":1,"b64data":"AA=="})).is_err());
    }

    #[test]
    fn the_token_is_not_forwarded_unless_asked() {
        assert_eq!(forwarded_query("a=1&token=x.y.z&b=2", false), "a=1&b=2");
        assert_eq!(forwarded_query("to%6Ben=x&topic=t", false), "topic=t");
        assert_eq!(forwarded_query("token", false), "");
        assert_eq!(forwarded_query("a=1&token=x", true), "a=1&token=x");
        assert_eq!(forwarded_query("", false), "");
    }

    #[test]
    fn connect_answers_are_checked_like_claims() {
        let ok = admission(map(
            json!({"user":"42","topics":["room.1"],"publish":["room.*"]}),
        ));
        assert!(matches!(ok, Ok(Verdict::Admit { user: Some(u), .. }) if u == "42"));
        for bad in [
            json!({"user":""}),
            json!({"topics":["a b"]}),
            json!({"publish":["a*b"]}),
            json!({"user":1}),
            json!({"extra":true}),
        ] {
            assert!(admission(map(bad.clone())).is_err(), "{bad}");
        }
    }
}
