//! The server's end of the workers' upstream channel (see
//! `ringcast_engine::upstream`): a bounded tokio channel the workers
//! `try_send` into, and the loop on the server's runtime that handles each
//! event and answers the connection through the engine's [`Handle`].
//!
//! - Client publishes take the path `POST /publish` takes: the broker with
//!   `--broker`, else `Handle::publish_as`. With the publish hook, each connection's
//!   publishes pass the hook one at a time, in the order sent; other
//!   connections' run beside them.
//! - RPCs and connect requests each run as their own task, bounded by the
//!   hook client's timeout and concurrency.
//! - Closed connections feed the disconnect hook's batches.

use crate::hooks::{Answer, Hooks};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ringcast_engine::auth::Grant;
use ringcast_engine::auth::MAX_USER_ID;
use ringcast_engine::protocol::names::is_valid_name;
use ringcast_engine::protocol::v1;
use ringcast_engine::upstream::{
    Closed, Connect, Event, Origin, Publish, Rpc, Sink, Upstream, Verdict,
};
use ringcast_engine::MAX_TOPICS_PER_CONNECTION;
use ringcast_engine::{Content, Handle, Sender};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events waiting for the loop at most; past it a worker answers the
/// client itself (an error op, or 503 for a parked handshake).
pub const QUEUE: usize = 65_536;

/// Disconnect events per request at most.
const DISCONNECT_BATCH: usize = 100;

/// Longest a disconnect event waits for its batch to fill.
const DISCONNECT_WAIT: Duration = Duration::from_millis(100);

struct Channel(mpsc::Sender<Event>);

impl Sink for Channel {
    fn send(&self, event: Event) -> Result<(), Event> {
        self.0.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event) => {
                event
            }
        })
    }
}

/// A sink for [`ringcast_engine::Config::upstream`] and the receiver the
/// loop reads.
pub fn channel() -> (Upstream, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Upstream(Arc::new(Channel(tx))), rx)
}

/// What the loop's tasks share.
pub struct Context {
    /// The engine.
    pub handle: Handle,
    /// The hook client, with `--hook-url`.
    pub hooks: Option<Arc<Hooks>>,
    /// Which hooks are on.
    pub on: ringcast_engine::upstream::Hooks,
    /// `--max-message-size`: the largest payload a publish hook may
    /// return.
    pub max_message: usize,
    /// Where topic interest and history reads go, with `--broker`.
    pub to_broker: Option<crate::broker::Sender>,
    /// The cluster's broker, with `--broker`: client publishes go through
    /// it, like `POST /publish`.
    pub broker: Option<Arc<crate::broker::Broker>>,
}

/// Handles every event until the workers are gone (the channel closes
/// when the runtime's config, which holds the sink, is dropped).
pub async fn run(mut events: mpsc::Receiver<Event>, ctx: Context) {
    let ctx = Arc::new(ctx);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Origin>();
    // Connections with a publish at the publish hook or the broker, and
    // their next ones.
    let mut serial: HashMap<Origin, VecDeque<Publish>> = HashMap::new();
    let disconnects = match (&ctx.hooks, ctx.on.disconnect) {
        (Some(hooks), true) => {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(disconnect_batches(hooks.clone(), rx));
            Some(tx)
        }
        _ => None,
    };
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
            Some(origin) = done_rx.recv() => {
                let next = serial.get_mut(&origin).and_then(VecDeque::pop_front);
                match next {
                    Some(publish) => spawn_serial(&ctx, &done_tx, publish),
                    None => {
                        serial.remove(&origin);
                    }
                }
                continue;
            }
        };
        match event {
            Event::Publish(publish) if ctx.hooked() || ctx.broker.is_some() => {
                match serial.get_mut(&publish.origin) {
                    Some(waiting) => waiting.push_back(publish),
                    None => {
                        serial.insert(publish.origin, VecDeque::new());
                        spawn_serial(&ctx, &done_tx, publish);
                    }
                }
            }
            Event::Publish(publish) => {
                let content = publish.content;
                let payload = publish.payload.clone();
                deliver(&ctx, &publish, content, &payload).await;
            }
            Event::Interest(_) | Event::Recover(_) => {
                if let Some(broker) = &ctx.to_broker {
                    let _ = broker.send(event);
                }
            }
            Event::Rpc(rpc) => {
                tokio::spawn(call_rpc(ctx.clone(), rpc));
            }
            Event::Connect(connect) => {
                tokio::spawn(call_connect(ctx.clone(), connect));
            }
            Event::Closed(closed) => {
                if let Some(tx) = &disconnects {
                    // Best effort: a full queue drops the event.
                    let _ = tx.try_send(disconnect_event(&closed));
                }
            }
        }
    }
}

impl Context {
    /// Whether client publishes pass the publish hook.
    fn hooked(&self) -> bool {
        self.on.publish && self.hooks.is_some()
    }
}

/// Runs one publish through the hook and the broker (whichever are on),
/// then tells the loop it is done, so the connection's next one starts.
fn spawn_serial(ctx: &Arc<Context>, done: &mpsc::UnboundedSender<Origin>, publish: Publish) {
    let (ctx, done) = (ctx.clone(), done.clone());
    tokio::spawn(async move {
        let origin = publish.origin;
        if ctx.hooked() {
            publish_hooked(&ctx, publish).await;
        } else {
            let content = publish.content;
            let payload = publish.payload.clone();
            deliver(&ctx, &publish, content, &payload).await;
        }
        let _ = done.send(origin);
    });
}

/// Fans a client publish out through the path `POST /publish` takes (the
/// broker with `--broker`, else this node), and answers a `ringcast.v1`
/// sender `published` (with the topic's offset when it keeps history), or
/// `broker unavailable` when the broker refused it.
async fn deliver(ctx: &Context, publish: &Publish, content: Content, payload: &[u8]) {
    let handle = &ctx.handle;
    let offsets = match &ctx.broker {
        // The broker's payload carries no sender yet: across a cluster a
        // client publish has no `from`, and its sender gets it back.
        Some(broker) => match broker.publish(&publish.topics, &[], content, payload).await {
            Ok(published) => published.offsets,
            Err(_) => {
                if publish.reply {
                    handle.reply(publish.origin, v1::error(publish.id, "broker unavailable"));
                }
                return;
            }
        },
        None => {
            let sender = Sender {
                user: publish.user.clone(),
                skip: (!publish.echo).then_some(publish.origin),
            };
            handle.publish_as(
                publish.topics.clone(),
                Vec::new(),
                content,
                payload,
                &sender,
                |_| {},
            )
        }
    };
    if publish.reply {
        let first = publish.topics.first();
        let offset = offsets
            .iter()
            .find(|(topic, _)| Some(topic) == first)
            .map(|(_, offset)| *offset);
        handle.reply(publish.origin, v1::published(publish.id, offset));
    }
}

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
async fn publish_hooked(ctx: &Context, publish: Publish) {
    let hooks = ctx.hooks.as_ref().expect("the publish hook has a client");
    let refuse = |reason: &str| {
        ctx.handle
            .reply(publish.origin, v1::error(publish.id, reason))
    };
    match hooks.call("publish", &publish_request(&publish)).await {
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
        Err(_) => refuse("publish hook unavailable"),
    }
}

/// Calls the rpc hook and answers `rpc_result` or `error`.
async fn call_rpc(ctx: Arc<Context>, rpc: Rpc) {
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
    let frame = match hooks.call("rpc", &body).await {
        Ok(Answer::Result(result)) => {
            let data = result.get("data").unwrap_or(&Value::Null).to_string();
            let raw = RawValue::from_string(data).expect("a Value serializes to JSON");
            v1::rpc_result(rpc.id, &raw)
        }
        Ok(Answer::Error { reason, .. }) => v1::error(rpc.id, &reason),
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

/// Calls the connect hook for a parked handshake and finishes it: 101,
/// 403 (refused), or 503 (timeout, failure, 5xx, a bad answer).
async fn call_connect(ctx: Arc<Context>, connect: Connect) {
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
        "query": connect.query,
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

fn disconnect_event(closed: &Closed) -> Value {
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
async fn disconnect_batches(hooks: Arc<Hooks>, mut events: mpsc::Receiver<Value>) {
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
