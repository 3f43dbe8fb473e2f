//! Server-Sent Events (HTML Living Standard §9.2, "Server-sent events"):
//! the response head, events and positions of the SSE transport, as pure
//! functions over bytes (no I/O). docs/protocol.md is the reference for
//! clients.
//!
//! - Each delivery is one event whose `data:` is the `ringcast.v1`
//!   delivery JSON ([`data_event`], [`with_id`]), so it is encoded once
//!   per topic per publish from the WebSocket frame the workers already
//!   share.
//! - The `id:` field is a [`Positions`] text: `TOPIC:OFFSET:EPOCH`, one per
//!   topic with history, joined by `;` (e.g. `a:12:Jx3kAbCd;b:7:Qp0_zz1w`).
//!   A browser sends the last one back as `Last-Event-ID` when it
//!   reconnects; [`parse_positions`] reads it.
//! - Named events: `subscribed` (the `ringcast.v1` reply, with the topic's
//!   position and `recovered`), `reset` (topics a resume could not
//!   recover), `close` (the server ends the stream: `{"code":1001}`).
//! - A comment line (`:`) is the heartbeat.

use super::names as topics;
use bytes::{BufMut, Bytes, BytesMut};

/// `retry:` sent when a stream opens: the reconnect delay a browser's
/// `EventSource` waits after the stream ends, in milliseconds.
pub const RETRY_MS: u32 = 2000;

/// Longest `Last-Event-ID` (header or query) read, in bytes: 64 topics of
/// the longest name with their positions. A longer one resumes nothing.
pub const MAX_LAST_EVENT_ID: usize = 64 * (topics::MAX_TOPIC_LEN + 32);

/// The heartbeat: a comment line and the blank line that ends it.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// The response head that opens a stream (RFC 9110; HTML §9.2.2): 200,
/// `text/event-stream`, no caching, no proxy buffering (`X-Accel-Buffering`
/// for nginx), and, for a browser's cross-origin request (`origin`, already
/// allowed by `--allowed-origins`), CORS headers that let it read the
/// stream with credentials (cookies). The body runs until the server closes
/// the connection (`Connection: close`, no length). The first body line
/// gives `retry:`.
pub fn response_head(origin: Option<&str>) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
         Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n",
    );
    head.push_str(&cors(origin));
    head.push_str(&format!("\r\nretry: {RETRY_MS}\n\n"));
    head.into_bytes()
}

/// CORS response headers (Fetch standard, "CORS protocol") for a request
/// with `origin`: the origin echoed, with credentials allowed and `Vary:
/// Origin`; nothing without one. Only a sanitised origin is echoed
/// (visible ASCII, no CR or LF).
pub fn cors(origin: Option<&str>) -> String {
    match origin.filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_graphic())) {
        Some(origin) => format!(
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\n\
             Vary: Origin\r\n"
        ),
        None => String::new(),
    }
}

/// Appends `json` as one `data:` line. A raw CR or LF can only be
/// insignificant whitespace in valid JSON (inside strings they are
/// escaped), so each becomes a space and the event stays one line.
fn put_data(out: &mut BytesMut, json: &[u8]) {
    out.put_slice(b"data: ");
    let start = out.len();
    out.put_slice(json);
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.put_slice(b"\n\n");
}

/// An unnamed event (`message` in `EventSource`) holding `json`, without
/// an `id:` (the client's last event ID stays as it was).
pub fn data_event(json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 8);
    put_data(&mut out, json);
    out.freeze()
}

/// An unnamed event holding `json` whose `id:` is `id`.
pub fn with_id(id: &str, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + id.len() + 12);
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_u8(b'\n');
    put_data(&mut out, json);
    out.freeze()
}

/// An `id:` line alone, to be followed by a [`data_event`]: together one
/// event. A line with an empty data buffer after it (`id_only`) sets the
/// client's last event ID without firing an event (HTML §9.2.6).
pub fn id_line(id: &str, id_only: bool) -> Bytes {
    let end: &[u8] = if id_only { b"\n\n" } else { b"\n" };
    Bytes::from([b"id: ", id.as_bytes(), end].concat())
}

/// A named event: `event: NAME` and `json` as data.
pub fn named(name: &str, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + name.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
    put_data(&mut out, json);
    out.freeze()
}

/// `event: close` with `{"code":CODE,"reason":"…"}`: the stream ends
/// here. The codes are WebSocket's (RFC 6455 §7.4): 1001 drain, 1008 slow
/// consumer, 4001 token expired, 4003 disconnected.
pub fn close_event(code: u16, reason: &str) -> Bytes {
    let json = serde_json::json!({ "code": code, "reason": reason });
    named("close", json.to_string().as_bytes())
}

/// `event: reset` naming the `topics` a resume did not recover: the
/// client must reload their state.
pub fn reset_event(topics: &[String]) -> Bytes {
    let json = serde_json::json!({ "topics": topics });
    named("reset", json.to_string().as_bytes())
}

/// One topic's place in a [`Positions`] text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPosition {
    /// Topic name.
    pub topic: String,
    /// Offset of the last message received.
    pub offset: u64,
    /// Its epoch.
    pub epoch: String,
}

/// Writes `TOPIC:OFFSET:EPOCH` items joined by `;` (the `id:` format).
pub fn format_positions<'a>(items: impl IntoIterator<Item = (&'a str, u64, &'a str)>) -> String {
    let mut out = String::new();
    for (topic, offset, epoch) in items {
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(&format!("{topic}:{offset}:{epoch}"));
    }
    out
}

/// Reads a `Last-Event-ID`: `TOPIC:OFFSET:EPOCH` items joined by `;`.
/// Topic names may hold `:`, so each item is split from the right.
/// Malformed items, and a text over [`MAX_LAST_EVENT_ID`] bytes, are
/// ignored: those topics are then not recovered.
pub fn parse_positions(text: &str) -> Vec<TopicPosition> {
    if text.len() > MAX_LAST_EVENT_ID {
        return Vec::new();
    }
    text.split(';')
        .filter_map(|item| {
            let mut parts = item.trim().rsplitn(3, ':');
            let epoch = parts.next()?;
            let offset = parts.next()?.parse().ok()?;
            let topic = parts.next()?;
            let epoch_ok = !epoch.is_empty()
                && epoch
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            (topics::is_valid_name(topic) && epoch_ok).then(|| TopicPosition {
                topic: topic.to_owned(),
                offset,
                epoch: epoch.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_single_data_lines() {
        assert_eq!(&data_event(b"{\"a\":\r\n1}")[..], b"data: {\"a\":  1}\n\n");
        assert_eq!(
            &with_id("a:1:E", b"{}")[..],
            b"id: a:1:E\ndata: {}\n\n" as &[u8]
        );
        assert_eq!(
            &close_event(1001, "server draining")[..],
            br#"event: close
data: {"code":1001,"reason":"server draining"}

"# as &[u8]
        );
        assert_eq!(
            &reset_event(&["a".into()])[..],
            b"event: reset\ndata: {\"topics\":[\"a\"]}\n\n" as &[u8]
        );
        assert_eq!(&id_line("x", true)[..], b"id: x\n\n");
    }

    #[test]
    fn the_head_names_the_stream_and_cors() {
        let head = String::from_utf8(response_head(Some("http://a.example"))).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        for line in [
            "Content-Type: text/event-stream\r\n",
            "Cache-Control: no-cache\r\n",
            "X-Accel-Buffering: no\r\n",
            "Access-Control-Allow-Origin: http://a.example\r\n",
        ] {
            assert!(head.contains(line), "{line}");
        }
        assert!(head.ends_with("\r\n\r\nretry: 2000\n\n"));
        assert!(!String::from_utf8(response_head(None))
            .unwrap()
            .contains("Access-Control"));
        assert_eq!(cors(Some("a b")), "", "never echoes what is not a token");
    }

    #[test]
    fn positions_round_trip_and_bad_items_are_ignored() {
        let text = format_positions([("a", 12, "Jx3k"), ("room:1", 7, "Q_-z")]);
        assert_eq!(text, "a:12:Jx3k;room:1:7:Q_-z");
        let parsed = parse_positions(&text);
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[1],
            TopicPosition {
                topic: "room:1".into(),
                offset: 7,
                epoch: "Q_-z".into()
            }
        );
        assert_eq!(parse_positions("a:x:E;b:1:;:1:E").len(), 0);
        assert_eq!(parse_positions("bad;c:2:E").len(), 1);
        assert!(parse_positions(&"a:1:E;".repeat(MAX_LAST_EVENT_ID)).is_empty());
    }
}
