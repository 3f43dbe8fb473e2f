//! The `ringcast.v1` subprotocol's messages, as pure functions over bytes
//! and text (no I/O). Every server message is one JSON text frame with an
//! `op`; docs/protocol.md is the reference for clients.
//!
//! - Deliveries: `{"op":"message","topic":"a","offset":12,"epoch":"Jx3k","data":...}`,
//!   built by [`message`] from a [`Data`] member encoded once per publish;
//!   `offset` and `epoch` only for a topic that keeps history.
//! - Broadcasts: `{"op":"broadcast","data":...}` ([`broadcast`]).
//! - Subscribe replies with a position ([`subscribed`]).
//! - Client ops ([`parse`]): the control messages of [`crate::control`],
//!   plus `subscribe` with `"since":{"offset":N,"epoch":"E"}`.

use crate::control;
use crate::protocol::frame::{self, OpCode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The subprotocol name a client offers in `Sec-WebSocket-Protocol`.
pub const NAME: &str = "ringcast.v1";

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

    /// The member's JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
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
    /// `{"op":"subscribe","topic":"a","since":{"offset":12,"epoch":"Jx3k"}}`:
    /// subscribe and replay what came after `since`.
    Resume {
        /// Topic name (not yet validated).
        topic: String,
        /// The client's position.
        since: Since,
    },
    /// Any control message raw mode also takes.
    Control(control::Request),
}

/// The one op [`control::parse`] does not take: a subscribe with `since`.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Resume {
    Subscribe { topic: String, since: Since },
}

/// Parses a text message from a `ringcast.v1` client.
///
/// # Errors
/// A human-readable reason for the error reply, as [`control::parse`]
/// gives, or about `since` when the message has one.
pub fn parse(text: &str) -> Result<Request, String> {
    let plain = match control::parse(text) {
        Ok(request) => return Ok(Request::Control(request)),
        Err(reason) => reason,
    };
    match serde_json::from_str::<Resume>(text) {
        Ok(Resume::Subscribe { topic, since }) => Ok(Request::Resume { topic, since }),
        // A subscribe with a malformed `since`: say what is wrong with it.
        Err(e) if is_resume(text) => Err(format!("invalid control message: {e}")),
        Err(_) => Err(plain),
    }
}

/// Whether `text` is a JSON object with `"op":"subscribe"` and a `since`
/// (the error path only).
fn is_resume(text: &str) -> bool {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) else {
        return false;
    };
    map.get("op").and_then(|op| op.as_str()) == Some("subscribe") && map.contains_key("since")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &str {
        assert_eq!(frame[0], 0x81, "a final text frame");
        let (len, at) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => panic!("no test frame is that long"),
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), at + len);
        std::str::from_utf8(&frame[at..]).unwrap()
    }

    fn json(frame: &[u8]) -> serde_json::Value {
        serde_json::from_str(payload(frame)).unwrap()
    }

    #[test]
    fn content_types() {
        use Content::*;
        for (value, kind) in [
            ("text/plain", Text),
            ("Text/HTML; charset=utf-8", Text),
            ("application/json", Json),
            ("application/JSON ; charset=utf-8", Json),
            ("application/octet-stream", Binary),
            ("", Binary),
            ("text", Binary),
        ] {
            assert_eq!(Content::from_content_type(value), kind, "{value}");
        }
        assert!(Json.check(br#" {"a":[1,2]} "#).is_ok());
        assert!(Json.check(b"{").is_err() && Json.check(b"1 2").is_err());
        assert!(Text.check(b"\xff").is_err() && Binary.check(b"\xff").is_ok());
        assert_eq!(Json.opcode(), OpCode::Text);
    }

    #[test]
    fn deliveries_carry_data_as_documented() {
        let at = Some(Position {
            offset: 12,
            epoch: "Jx3k",
        });
        let (frame, start) = message("a", at, &Data::new(Content::Json, br#"{"k":[1]}"#));
        assert_eq!(
            payload(&frame),
            r#"{"op":"message","topic":"a","offset":12,"epoch":"Jx3k","data":{"k":[1]}}"#
        );
        assert_eq!(data_member(&frame, start), br#""data":{"k":[1]}"#);
        let (frame, _) = message("a", None, &Data::new(Content::Text, "é \"q\"\n".as_bytes()));
        assert_eq!(
            json(&frame),
            serde_json::json!({"op":"message","topic":"a","data":"é \"q\"\n"})
        );
        let (frame, start) = message("b", at, &Data::new(Content::Binary, &[0, 255, 1]));
        assert_eq!(json(&frame)["b64data"], "AP8B");
        assert_eq!(data_member(&frame, start), br#""b64data":"AP8B""#);
        assert_eq!(
            payload(&broadcast(&Data::new(Content::Text, b"hi"))),
            r#"{"op":"broadcast","data":"hi"}"#
        );
        // A payload over 125 bytes takes the 16-bit length form.
        let big = "x".repeat(300);
        let (frame, _) = message("a", at, &Data::new(Content::Text, big.as_bytes()));
        assert_eq!(json(&frame)["data"], big.as_str());
    }

    #[test]
    fn subscribed_replies() {
        let at = Position {
            offset: 7,
            epoch: "E",
        };
        assert_eq!(
            subscribed("a", Some(at), Some(true)),
            r#"{"op":"subscribed","topic":"a","offset":7,"epoch":"E","recovered":true}"#
        );
        assert_eq!(
            subscribed("a", None, Some(false)),
            r#"{"op":"subscribed","topic":"a","recovered":false}"#
        );
        assert_eq!(subscribed("a", None, None), control::ack("subscribed", "a"));
    }

    #[test]
    fn parses_resume_and_the_control_messages() {
        assert_eq!(
            parse(r#"{"op":"subscribe","topic":"a","since":{"offset":12,"epoch":"Jx3k"}}"#),
            Ok(Request::Resume {
                topic: "a".into(),
                since: Since {
                    offset: 12,
                    epoch: "Jx3k".into()
                }
            })
        );
        assert_eq!(
            parse(r#"{"op":"unsubscribe","topic":"a"}"#),
            Ok(Request::Control(control::Request::Unsubscribe {
                topic: "a".into()
            }))
        );
        for (bad, why) in [
            (
                r#"{"op":"subscribe","topic":"a","since":{"offset":-1,"epoch":"E"}}"#,
                "expected u64",
            ),
            (
                r#"{"op":"subscribe","topic":"a","since":{"offset":1}}"#,
                "missing field `epoch`",
            ),
            (
                r#"{"op":"unsubscribe","topic":"a","since":{"offset":1,"epoch":"E"}}"#,
                "unknown field `since`",
            ),
        ] {
            let reason = parse(bad).unwrap_err();
            assert!(reason.contains(why), "{bad}: {reason}");
        }
        assert!(parse(r#"{"op":"dance"}"#).is_err());
    }
}
