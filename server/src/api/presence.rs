//! `GET /presence` and `GET /presence_stats`: who is on a presence topic,
//! across the cluster (docs/protocol.md, "Presence").

use super::{error, query_values, unavailable, Shared};
use axum::extract::{RawQuery, State as Extract};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ringcast_engine::presence::{self, Who, MAX_ANSWER};
use ringcast_engine::protocol::names::is_valid_name;

/// The one `topic` of `query`, if it is a valid name with presence.
///
/// # Errors
/// The reason, for a 400.
fn presence_topic(state: &super::State, query: Option<&str>) -> Result<String, String> {
    let [topic] = &query_values(query, "topic")[..] else {
        return Err("exactly one topic=NAME is required".into());
    };
    if !is_valid_name(topic) {
        return Err(format!("topic {topic:?} is not a valid topic name"));
    }
    if !state.handle.presence_enabled(topic) {
        return Err(format!("topic {topic:?} has no presence (see --presence)"));
    }
    Ok(topic.clone())
}

/// Whether `text` looks like a client id, `NODE.SEQ` (hex node id, decimal
/// sequence), as a page's `next` is.
fn is_client_id(text: &str) -> bool {
    match text.rsplit_once('.') {
        Some((node, seq)) => {
            text.len() <= 64
                && !node.is_empty()
                && node.bytes().all(|b| b.is_ascii_hexdigit())
                && !seq.is_empty()
                && seq.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /presence?topic=room.1[&limit=1000][&cursor=C]`:
/// `{"clients":[member,…],"next":C|null}`, at most `limit` (1 to
/// [`MAX_ANSWER`], the default) members a page, in client id order;
/// `next` is the `cursor` of the next page.
pub(super) async fn presence(Extract(state): Shared, RawQuery(query): RawQuery) -> Response {
    let query = query.as_deref();
    let topic = match presence_topic(&state, query) {
        Ok(topic) => topic,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let limit = match query_values(query, "limit").first() {
        None => MAX_ANSWER,
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=MAX_ANSWER) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("limit={v:?}: expected 1 to {MAX_ANSWER}"),
                )
            }
        },
    };
    let cursors = query_values(query, "cursor");
    let cursor = cursors.first().map(String::as_str);
    if let Some(v) = cursor.filter(|c| !is_client_id(c)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("cursor={v:?} is not the next of a previous page"),
        );
    }
    match state.broker.presence(&topic, cursor, limit).await {
        Ok(page) => {
            let members = page.members.iter().map(|m| Who {
                client: &m.client,
                user: m.user.as_deref(),
                info: m.info.as_deref(),
            });
            json(presence::page(members, page.next.as_deref()))
        }
        Err(e) => unavailable(e),
    }
}

/// `GET /presence_stats?topic=room.1`: `{"clients":N,"users":M}`.
pub(super) async fn presence_stats(Extract(state): Shared, RawQuery(query): RawQuery) -> Response {
    let topic = match presence_topic(&state, query.as_deref()) {
        Ok(topic) => topic,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    match state.broker.presence_stats(&topic).await {
        Ok(s) => json(presence::stats(s.clients, s.users)),
        Err(e) => unavailable(e),
    }
}
