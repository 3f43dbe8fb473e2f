//! Presence on the wire (docs/protocol.md, "Presence"), as pure functions
//! over text: the member object, the `join` and `leave` events, the
//! answers to the `presence` and `presence_stats` ops, and the HTTP API's
//! bodies.
//!
//! A member is `{"client":"<id>","user":"42"|null,"info":<JSON>|null}`.
//! `info` is embedded as the JSON value it is; text that is not one JSON
//! value is written as `null`.

use serde_json::value::RawValue;
use serde_json::Value;

/// One member, as the functions here take it.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    /// Client id.
    pub client: &'a str,
    /// User id, if any.
    pub user: Option<&'a str>,
    /// `info`, JSON text, if any.
    pub info: Option<&'a str>,
}

fn push_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str serializes"));
}

fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

fn push_info(out: &mut String, info: Option<&str>) {
    match info.and_then(|i| serde_json::from_str::<&RawValue>(i).ok()) {
        Some(raw) => out.push_str(raw.get()),
        None => out.push_str("null"),
    }
}

/// `"client":…,"user":…` and, with `info`, `,"info":…` (no braces).
fn push_fields(out: &mut String, who: Who<'_>, info: bool) {
    out.push_str(r#""client":"#);
    push_str(out, who.client);
    out.push_str(r#","user":"#);
    push_opt(out, who.user);
    if info {
        out.push_str(r#","info":"#);
        push_info(out, who.info);
    }
}

/// The member object.
pub fn member(who: Who<'_>) -> String {
    let mut out = String::from("{");
    push_fields(&mut out, who, true);
    out.push('}');
    out
}

/// `{"op":"join","topic":…,"client":…,"user":…,"info":…,"first":…}` or
/// `{"op":"leave","topic":…,"client":…,"user":…,"last":…}`: the event a
/// `join_leave` subscriber gets (SSE: the data of `event: join` /
/// `event: leave`).
pub fn event(joined: bool, topic: &str, who: Who<'_>, edge: bool) -> String {
    let mut out = String::from(if joined {
        r#"{"op":"join","topic":"#
    } else {
        r#"{"op":"leave","topic":"#
    });
    push_str(&mut out, topic);
    out.push(',');
    push_fields(&mut out, who, joined);
    out.push_str(if joined {
        r#","first":"#
    } else {
        r#","last":"#
    });
    out.push_str(if edge { "true}" } else { "false}" });
    out
}

/// The SSE event name of [`event`].
pub fn event_name(joined: bool) -> &'static str {
    if joined {
        "join"
    } else {
        "leave"
    }
}

/// `{"op":"presence","topic":…,"clients":[…]}`, with `"truncated":true`
/// when the topic has more members than listed.
pub fn answer<'a>(
    topic: &str,
    members: impl IntoIterator<Item = Who<'a>>,
    truncated: bool,
) -> String {
    let mut out = String::from(r#"{"op":"presence","topic":"#);
    push_str(&mut out, topic);
    out.push_str(r#","clients":"#);
    push_list(&mut out, members);
    if truncated {
        out.push_str(r#","truncated":true"#);
    }
    out.push('}');
    out
}

/// `{"op":"presence_stats","topic":…,"clients":N,"users":M}`.
pub fn stats_answer(topic: &str, clients: usize, users: usize) -> String {
    serde_json::json!({
        "op": "presence_stats", "topic": topic, "clients": clients, "users": users,
    })
    .to_string()
}

fn push_list<'a>(out: &mut String, members: impl IntoIterator<Item = Who<'a>>) {
    out.push('[');
    for (i, who) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        push_fields(out, who, true);
        out.push('}');
    }
    out.push(']');
}

/// `GET /presence`'s body: `{"clients":[…],"next":"…"|null}`.
pub fn page<'a>(members: impl IntoIterator<Item = Who<'a>>, next: Option<&str>) -> String {
    let mut out = String::from(r#"{"clients":"#);
    push_list(&mut out, members);
    out.push_str(r#","next":"#);
    push_opt(&mut out, next);
    out.push('}');
    out
}

/// `GET /presence_stats`'s body: `{"clients":N,"users":M}`.
pub fn stats(clients: usize, users: usize) -> String {
    serde_json::json!({ "clients": clients, "users": users }).to_string()
}

/// One event of the presence webhook's batch:
/// `{"event":"join"|"leave","topic":…,"client":…,"user":…,"info":…}`.
pub fn hook_event(joined: bool, topic: &str, who: Who<'_>) -> Value {
    let info = who
        .info
        .and_then(|i| serde_json::from_str::<Value>(i).ok())
        .unwrap_or(Value::Null);
    serde_json::json!({
        "event": event_name(joined), "topic": topic, "client": who.client,
        "user": who.user, "info": info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHO: Who<'static> = Who {
        client: "ab.1",
        user: Some("42"),
        info: Some(r#"{"name":"Ann"}"#),
    };

    #[test]
    fn events_and_answers_are_the_documented_objects() {
        assert_eq!(
            event(true, "room.1", WHO, true),
            r#"{"op":"join","topic":"room.1","client":"ab.1","user":"42","info":{"name":"Ann"},"first":true}"#
        );
        assert_eq!(
            event(false, "room.1", WHO, false),
            r#"{"op":"leave","topic":"room.1","client":"ab.1","user":"42","last":false}"#
        );
        let anon = Who {
            client: "ab.2",
            user: None,
            info: Some("not json"),
        };
        assert_eq!(
            answer("r", [WHO, anon], true),
            r#"{"op":"presence","topic":"r","clients":[{"client":"ab.1","user":"42","info":{"name":"Ann"}},{"client":"ab.2","user":null,"info":null}],"truncated":true}"#
        );
        assert_eq!(
            page([anon], Some("9")),
            r#"{"clients":[{"client":"ab.2","user":null,"info":null}],"next":"9"}"#
        );
        let v: Value = serde_json::from_str(&stats_answer("r", 3, 2)).unwrap();
        assert_eq!(v["clients"], 3);
        assert_eq!(v["users"], 2);
        assert_eq!(hook_event(false, "r", WHO)["info"]["name"], "Ann");
        assert_eq!(
            member(WHO),
            r#"{"client":"ab.1","user":"42","info":{"name":"Ann"}}"#
        );
    }
}
