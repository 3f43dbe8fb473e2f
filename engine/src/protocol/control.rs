//! Control messages on the topics endpoint: JSON text frames from the
//! client, and the JSON replies.
//!
//! `{"op":"subscribe","topic":"a"}` → `{"op":"subscribed","topic":"a"}`,
//! `{"op":"unsubscribe","topic":"a"}` → `{"op":"unsubscribed","topic":"a"}`,
//! `{"op":"refresh","token":"..."}` → `{"op":"refreshed"}` (a newer token
//! for the same user, before the current one expires),
//! a subscribe the token does not allow →
//! `{"op":"error","topic":"a","reason":"forbidden"}`,
//! anything else → `{"op":"error","reason":"..."}`.

use serde::Deserialize;

/// A parsed control message.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Subscribe the connection to a topic.
    Subscribe {
        /// Topic name.
        topic: String,
    },
    /// Unsubscribe the connection from a topic.
    Unsubscribe {
        /// Topic name.
        topic: String,
    },
    /// Replace the connection's token with a newer one for the same user.
    Refresh {
        /// The new token (never logged).
        token: String,
    },
}

/// Parses a text message.
///
/// # Errors
/// A human-readable reason for the error reply when the text is not one of
/// the control messages.
pub fn parse(text: &str) -> Result<Request, String> {
    serde_json::from_str(text).map_err(|e| format!("invalid control message: {e}"))
}

/// `{"op":"subscribed","topic":...}` or `unsubscribed`.
pub fn ack(op: &str, topic: &str) -> String {
    serde_json::json!({ "op": op, "topic": topic }).to_string()
}

/// `{"op":"error","reason":...}`.
pub fn error(reason: &str) -> String {
    serde_json::json!({ "op": "error", "reason": reason }).to_string()
}

/// `{"op":"refreshed"}`: the connection now holds the new token.
pub fn refreshed() -> String {
    serde_json::json!({ "op": "refreshed" }).to_string()
}

/// `{"op":"unsubscribed","topic":...,"reason":"forbidden"}`: a refreshed
/// token no longer allows a topic the connection was subscribed to.
pub fn revoked(topic: &str) -> String {
    serde_json::json!({ "op": "unsubscribed", "topic": topic, "reason": "forbidden" }).to_string()
}

/// `{"op":"error","topic":...,"reason":...}`: a request about `topic` was
/// refused.
pub fn topic_error(topic: &str, reason: &str) -> String {
    serde_json::json!({ "op": "error", "topic": topic, "reason": reason }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_ops_and_rejects_the_rest() {
        assert_eq!(
            parse(r#"{"op":"subscribe","topic":"a"}"#),
            Ok(Request::Subscribe { topic: "a".into() })
        );
        assert_eq!(
            parse(r#"{"topic":"a","op":"unsubscribe"}"#),
            Ok(Request::Unsubscribe { topic: "a".into() })
        );
        assert_eq!(
            parse(r#"{"op":"refresh","token":"a.b.c"}"#),
            Ok(Request::Refresh {
                token: "a.b.c".into()
            })
        );
        let refused: serde_json::Value =
            serde_json::from_str(&topic_error("x", "forbidden")).unwrap();
        assert_eq!(
            refused,
            serde_json::json!({"op": "error", "topic": "x", "reason": "forbidden"})
        );
        for bad in ["", "{", r#"{"op":"dance"}"#, r#"{"op":"subscribe"}"#, "[1]"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ack("subscribed", "a"), r#"{"op":"subscribed","topic":"a"}"#);
    }
}
