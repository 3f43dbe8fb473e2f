//! Long-poll responses (`GET /poll?topic=a&since=POSITIONS`), as pure
//! functions over bytes. The positions are the SSE `id:` text
//! ([`super::sse::format_positions`]); docs/protocol.md is the reference.

use super::sse;
use bytes::Bytes;

/// The answer to one poll: `200` with
/// `{"messages":[DELIVERY,…],"next":"POSITIONS"}`, where each DELIVERY is
/// a `ringcast.v1` delivery JSON and `next` the `since` of the next poll,
/// plus `"reset":[TOPIC,…]` naming topics whose `since` could not be
/// resumed (the client reloads them) when there are any;
/// keep-alive (HTTP/1.1's default, with `Content-Length`), never cached,
/// with CORS headers for an allowed `origin`; with `close`, also
/// `Connection: close` (the server closes after it and reads no further
/// request, RFC 9112 §9.6).
pub fn response(
    origin: Option<&str>,
    messages: &[&[u8]],
    next: &str,
    reset: &[String],
    close: bool,
) -> Bytes {
    let mut body =
        Vec::with_capacity(32 + next.len() + messages.iter().map(|m| m.len() + 1).sum::<usize>());
    body.extend_from_slice(br#"{"messages":["#);
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(message);
    }
    body.extend_from_slice(br#"],"next":"#);
    body.extend_from_slice(
        serde_json::to_string(next)
            .expect("a str serializes")
            .as_bytes(),
    );
    if !reset.is_empty() {
        body.extend_from_slice(br#","reset":"#);
        body.extend_from_slice(
            serde_json::to_string(reset)
                .expect("strs serialize")
                .as_bytes(),
        );
    }
    body.push(b'}');
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{}{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
        sse::cors(origin)
    );
    [head.as_bytes(), &body].concat().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_answer_is_json_with_the_next_position() {
        let r = response(
            None,
            &[br#"{"op":"message","topic":"a","offset":3}"#],
            "a:3:E",
            &[],
            false,
        );
        let text = std::str::from_utf8(&r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["messages"][0]["offset"], 3);
        assert_eq!(json["next"], "a:3:E");
        let empty = response(Some("http://x"), &[], "", &["b".into()], true);
        let text = std::str::from_utf8(&empty).unwrap();
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with(r#"{"messages":[],"next":"","reset":["b"]}"#));
        assert!(text.contains("Access-Control-Allow-Origin: http://x\r\n"));
    }
}
