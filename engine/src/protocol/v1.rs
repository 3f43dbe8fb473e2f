//! The `ringcast.v1` subprotocol's messages, as pure functions over bytes
//! and text (no I/O). Every server message is one JSON text frame with an
//! `op`; docs/protocol.md is the reference for clients.
//!
//! - Deliveries: `{"op":"message","topic":"a","offset":12,"epoch":"Jx3k","data":...}`,
//!   built by [`message`] from a [`Data`] member encoded once per publish;
//!   `offset` and `epoch` only for a topic that keeps history.
//! - Broadcasts: `{"op":"broadcast","data":...}` ([`broadcast`]).
//! - Subscribe replies with a position ([`subscribed`]).
//! - Client ops ([`parse`]): the control messages of [`super::control`],
//!   plus `subscribe` with `"since":{"offset":N,"epoch":"E"}`.

use super::control;
use crate::protocol::frame::{self, OpCode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The subprotocol name a client offers in `Sec-WebSocket-Protocol`.
pub const NAME: &str = "ringcast.v1";

/// The subprotocols the topics endpoint accepts: `configured` and
/// `ringcast.v1`.
pub fn subprotocols(configured: &[String]) -> Vec<String> {
    let mut all = configured.to_vec();
    if !all.iter().any(|p| p == NAME) {
        all.push(NAME.to_owned());
    }
    all
}

/// What a published body is, from its `Content-Type`; it decides the
/// frame type in raw mode and the `data` member in `ringcast.v1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// `application/json`: a JSON document, delivered as the `data` value.
    Json,
    /// `text/*`: UTF-8 text, delivered as a `data` string.
    Text,
    /// Anything else: bytes, delivered as a base64 `b64data` string.
    Binary,
}

impl Content {
    /// The kind for a `Content-Type` header value (parameters such as
    /// `charset` ignored, case-insensitive); `Binary` for anything but
    /// `text/*` and `application/json`.
    pub fn from_content_type(value: &str) -> Self {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.len() >= 5 && media[..5].eq_ignore_ascii_case("text/") {
            Self::Text
        } else if media.eq_ignore_ascii_case("application/json") {
            Self::Json
        } else {
            Self::Binary
        }
    }

    /// Checks that `body` is what this kind promises.
    ///
    /// # Errors
    /// A reason for a `Text` body that is not UTF-8, or a `Json` body that
    /// is not one JSON value (RFC 8259).
    pub fn check(self, body: &[u8]) -> Result<(), &'static str> {
        match self {
            Self::Binary => Ok(()),
            Self::Text => std::str::from_utf8(body)
                .map(drop)
                .map_err(|_| "body is not valid UTF-8 for a text content type"),
            Self::Json => serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .map(drop)
                .map_err(|_| "body is not valid JSON for application/json"),
        }
    }

    /// The raw-mode frame type: text for `Text` and `Json`, else binary.
    pub fn opcode(self) -> OpCode {
        match self {
            Self::Json | Self::Text => OpCode::Text,
            Self::Binary => OpCode::Binary,
        }
    }
}

/// The `"data":…` (or `"b64data":"…"`) member of a delivery, encoded once
/// per publish and copied into each topic's frame.
#[derive(Clone, Debug)]
pub struct Data(Vec<u8>);

impl Data {
    /// Encodes `body` of kind `content`. The body must pass
    /// [`Content::check`]; a `Json` body is copied verbatim.
    pub fn new(content: Content, body: &[u8]) -> Self {
        debug_assert!(content.check(body).is_ok());
        let mut out = Vec::with_capacity(body.len() * 4 / 3 + 16);
        match content {
            Content::Json => {
                out.extend_from_slice(b"\"data\":");
                out.extend_from_slice(body);
            }
            Content::Text => {
                out.extend_from_slice(b"\"data\":");
                let text = String::from_utf8_lossy(body);
                serde_json::to_writer(&mut out, &text).expect("writing to a Vec");
            }
            Content::Binary => {
                out.extend_from_slice(b"\"b64data\":\"");
                let start = out.len();
                out.resize(
                    start + base64::encoded_len(body.len(), true).unwrap_or(0),
                    0,
                );
                let n = BASE64
                    .encode_slice(body, &mut out[start..])
                    .expect("sized for the encoding");
                out.truncate(start + n);
                out.push(b'"');
            }
        }
        Self(out)
    }

    /// Encodes `body` as [`Data::new`] does, preceded by
    /// `"from":"<user>",`: a client publish's sender.
    pub fn from_user(user: &str, content: Content, body: &[u8]) -> Self {
        let mut out = Vec::with_capacity(body.len() * 4 / 3 + 24 + user.len());
        out.extend_from_slice(b"\"from\":");
        serde_json::to_writer(&mut out, user).expect("writing to a Vec");
        out.push(b',');
        out.extend_from_slice(&Self::new(content, body).0);
        Self(out)
    }

    /// The member's JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `{"op":"published","id":…,"offset":…}`: a client publish was handed
/// to the subscribers; `offset` when the topic keeps history.
pub fn published(id: Option<u64>, offset: Option<u64>) -> Bytes {
    let mut reply = serde_json::json!({ "op": "published" });
    if let Some(id) = id {
        reply["id"] = id.into();
    }
    if let Some(offset) = offset {
        reply["offset"] = offset.into();
    }
    frame::encode(OpCode::Text, reply.to_string().as_bytes())
}

/// `{"op":"error","id":…,"reason":…}`: the op with this `id` was refused.
pub fn error(id: Option<u64>, reason: &str) -> Bytes {
    let mut reply = serde_json::json!({ "op": "error", "reason": reason });
    if let Some(id) = id {
        reply["id"] = id.into();
    }
    frame::encode(OpCode::Text, reply.to_string().as_bytes())
}

/// `{"op":"rpc_result","id":…,"data":…}`: the rpc hook's answer; `data`
/// is one JSON value (a [`RawValue`], so it was checked).
pub fn rpc_result(id: Option<u64>, data: &RawValue) -> Bytes {
    let mut head = String::from(r#"{"op":"rpc_result","#);
    if let Some(id) = id {
        head.push_str(&format!(r#""id":{id},"#));
    }
    head.push_str(r#""data":"#);
    frame::encode_parts(
        OpCode::Text,
        &[head.as_bytes(), data.get().as_bytes(), b"}"],
    )
}

/// A topic's position: the offset of its last message, in an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position<'a> {
    /// Offset of the last message (0: none yet).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: &'a str,
}

/// The delivery frame of one publish on `topic`: a text frame holding
/// `{"op":"message","topic":…[,"offset":…,"epoch":…],DATA}`. Returns the
/// frame and where `data`'s member starts in it (see [`data_member`]).
pub fn message(topic: &str, position: Option<Position<'_>>, data: &Data) -> (Bytes, usize) {
    let mut head = String::with_capacity(64 + topic.len());
    head.push_str(r#"{"op":"message","topic":"#);
    push_json_str(&mut head, topic);
    if let Some(p) = position {
        head.push_str(&format!(r#","offset":{},"epoch":"#, p.offset));
        push_json_str(&mut head, p.epoch);
    }
    head.push(',');
    let frame = frame::encode_parts(OpCode::Text, &[head.as_bytes(), data.as_bytes(), b"}"]);
    let at = frame.len() - 1 - data.as_bytes().len();
    (frame, at)
}

/// The `"data":…` member inside a frame made by [`message`], given the
/// start it returned.
pub fn data_member(frame: &[u8], at: usize) -> &[u8] {
    &frame[at..frame.len() - 1]
}

/// The frame of a broadcast: `{"op":"broadcast",DATA}`.
pub fn broadcast(data: &Data) -> Bytes {
    frame::encode_parts(
        OpCode::Text,
        &[br#"{"op":"broadcast","#, data.as_bytes(), b"}"],
    )
}

/// The frame of a message published to the connection's user
/// (`POST /publish?user=`): `{"op":"message",DATA}`, with no topic.
pub fn to_user(data: &Data) -> Bytes {
    frame::encode_parts(
        OpCode::Text,
        &[br#"{"op":"message","#, data.as_bytes(), b"}"],
    )
}

/// The hint `{"op":"resync","topic":…}`: this node may have missed
/// deliveries of `topic` (its broker was out of reach); the client should
/// subscribe again with `since` to recover them.
pub fn resync(topic: &str) -> Bytes {
    let mut text = String::from(r#"{"op":"resync","topic":"#);
    push_json_str(&mut text, topic);
    text.push('}');
    frame::encode(OpCode::Text, text.as_bytes())
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str serializes"));
}

/// `{"op":"subscribed","topic":…}`, with the topic's current `offset` and
/// `epoch` when it keeps history, and `recovered` when the subscribe
/// asked to resume.
pub fn subscribed(topic: &str, position: Option<Position<'_>>, recovered: Option<bool>) -> String {
    #[derive(Serialize)]
    struct Reply<'a> {
        op: &'static str,
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    }
    serde_json::to_string(&Reply {
        op: "subscribed",
        topic,
        offset: position.map(|p| p.offset),
        epoch: position.map(|p| p.epoch),
        recovered,
    })
    .expect("the reply serializes")
}

/// `since` in a subscribe: the position of the last message the client
/// holds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// Offset of the last message received.
    pub offset: u64,
    /// The epoch it was received in.
    pub epoch: String,
}

/// A client op on a `ringcast.v1` connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `{"op":"subscribe","topic":"a"}`, with
    /// `"since":{"offset":12,"epoch":"Jx3k"}` to replay what came after
    /// it, and `"join_leave":true` to get the topic's presence joins and
    /// leaves.
    Subscribe {
        /// Topic name (not yet validated).
        topic: String,
        /// The client's position, to resume from.
        since: Option<Since>,
        /// Push the topic's `join` and `leave` events.
        join_leave: bool,
    },
    /// `{"op":"presence","topic":"room.1"}`: the topic's members.
    Presence {
        /// Topic name (not yet validated).
        topic: String,
    },
    /// `{"op":"presence_stats","topic":"room.1"}`: the topic's counts.
    PresenceStats {
        /// Topic name (not yet validated).
        topic: String,
    },
    /// A control message raw mode also takes but `subscribe`
    /// (`unsubscribe`, `refresh`).
    Control(control::Request),
    /// `{"op":"publish","topic":"room.1","data":…,"id":7}`: a client
    /// publish (see docs/protocol.md).
    Publish {
        /// Topic name (not yet validated).
        topic: String,
        /// The message, one JSON value (checked).
        data: Box<str>,
        /// Echoed in the `published` or `error` reply.
        id: Option<u64>,
    },
    /// `{"op":"rpc","id":9,"method":"getHistory","data":…}`: a call to the
    /// backend's rpc hook.
    Rpc {
        /// Echoed in the `rpc_result` or `error` reply.
        id: Option<u64>,
        /// The method name, 1 to [`MAX_METHOD`] bytes.
        method: String,
        /// The argument, one JSON value (checked; `null` when absent).
        data: Box<str>,
    },
}

/// Longest rpc `method`, in bytes.
pub const MAX_METHOD: usize = 128;

/// The ops of a full-duplex client (`publish`, `rpc`), as one struct:
/// serde's internally tagged enums cannot hold a [`RawValue`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Duplex {
    op: String,
    topic: Option<String>,
    method: Option<String>,
    data: Option<Box<RawValue>>,
    id: Option<u64>,
}

impl Duplex {
    fn request(self) -> Result<Request, String> {
        let missing = |field: &str| format!("invalid control message: missing field `{field}`");
        match self.op.as_str() {
            "publish" if self.method.is_some() => Err("publish takes no method".into()),
            "publish" => Ok(Request::Publish {
                topic: self.topic.ok_or_else(|| missing("topic"))?,
                data: self.data.ok_or_else(|| missing("data"))?.into(),
                id: self.id,
            }),
            "rpc" if self.topic.is_some() => Err("rpc takes no topic".into()),
            "rpc" => {
                let method = self.method.ok_or_else(|| missing("method"))?;
                if method.is_empty() || method.len() > MAX_METHOD {
                    return Err(format!("method must be 1-{MAX_METHOD} bytes"));
                }
                Ok(Request::Rpc {
                    id: self.id,
                    method,
                    data: self.data.map_or_else(|| "null".into(), Into::into),
                })
            }
            _ => Err(String::new()),
        }
    }
}

/// The ops only `ringcast.v1` takes: subscribe with its options, and the
/// presence queries.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Own {
    Subscribe {
        topic: String,
        #[serde(default)]
        since: Option<Since>,
        #[serde(default)]
        join_leave: bool,
    },
    Presence {
        topic: String,
    },
    PresenceStats {
        topic: String,
    },
}

/// Parses a text message from a `ringcast.v1` client.
///
/// # Errors
/// A human-readable reason for the error reply, as [`control::parse`]
/// gives, or about the fields of `subscribe`, `presence` or
/// `presence_stats`.
pub fn parse(text: &str) -> Result<Request, String> {
    match serde_json::from_str::<Own>(text) {
        Ok(Own::Subscribe {
            topic,
            since,
            join_leave,
        }) => {
            return Ok(Request::Subscribe {
                topic,
                since,
                join_leave,
            })
        }
        Ok(Own::Presence { topic }) => return Ok(Request::Presence { topic }),
        Ok(Own::PresenceStats { topic }) => return Ok(Request::PresenceStats { topic }),
        // One of these ops, malformed: say what is wrong with it.
        Err(e) if is_own(text) => return Err(format!("invalid control message: {e}")),
        Err(_) => {}
    }
    let plain = match control::parse(text) {
        Ok(request) => return Ok(Request::Control(request)),
        Err(reason) => reason,
    };
    if let Ok(op) = serde_json::from_str::<Duplex>(text) {
        match op.request() {
            Ok(request) => return Ok(request),
            Err(reason) if !reason.is_empty() => return Err(reason),
            Err(_) => {}
        }
    }
    Err(plain)
}

/// Whether `text` is a JSON object whose `op` is one of [`Own`]'s (the
/// error path only).
fn is_own(text: &str) -> bool {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) else {
        return false;
    };
    matches!(
        map.get("op").and_then(|op| op.as_str()),
        Some("subscribe" | "presence" | "presence_stats")
    )
}

#[cfg(test)]
#[path = "v1_tests.rs"]
mod tests;
