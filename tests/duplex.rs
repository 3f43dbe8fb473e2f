//! Full duplex without hooks: raw rooms (a chat of Python `websockets`
//! clients), the `ringcast.v1` publish op with its permissions (a PyJWT
//! token's `publish` claim, `--client-publish`), `from`, echo, and the
//! per-connection rate limits.

mod common;

use common::*;
use serde_json::{json, Value};

const V1: (&str, &str) = ("sec-websocket-protocol", "ringcast.v1");

fn rate_metric(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    metric(scrape, name, &[])
}

/// The path of a fresh file holding an HS256 secret.
fn hmac_secret(name: &str) -> String {
    let secret = scratch_dir(name).join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    secret.to_str().unwrap().to_owned()
}

#[test]
fn three_python_clients_chat_in_a_raw_room_in_each_senders_order() {
    let server = Server::start(&["--room", "room.*", "--workers", "2"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/chat_client.py"
    );
    let output = std::process::Command::new(venv_tool("RINGCAST_PYTHON", "python"))
        .arg(script)
        .arg(server.ws.to_string())
        .arg(server.api.to_string())
        .args(["3", "50"])
        .output()
        .expect("run the python chat clients");
    assert!(
        output.status.success(),
        "python chat failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn raw_connections_outside_rooms_keep_control_messages() {
    let server = Server::start(&["--room", "room.*"]);
    let mut plain = connect(&server.url("/ws?topic=news")).await;
    // Not a room member: text is a control message.
    subscribe(&mut plain, "other").await;
    send_json(&mut plain, json!({"op": "dance"})).await;
    assert_eq!(next_json(&mut plain).await["op"], "error");
}

#[tokio::test]
async fn v1_publish_needs_a_publish_claim_or_client_publish_and_carries_from() {
    let secret = hmac_secret("duplex");
    let secret = secret.as_str();
    let server = Server::start(&[
        "--jwt-hmac-secret-file",
        secret,
        "--allow-anonymous",
        "--client-publish",
        "open.*",
        "--history",
        "room.*=10/1m",
        "--workers",
        "2",
    ]);
    let token = mint(&json!([{"alg": "HS256", "key": secret, "claims": {
        "sub": "42", "exp": unix_now() + 300, "publish": ["room.*"]
    }}]))
    .remove(0);
    let bearer = format!("Bearer {token}");
    let mut alice = connect_with(
        &server.url("/ws?topic=room.1"),
        &[V1, ("authorization", &bearer)],
    )
    .await;
    let mut anon = connect_with(&server.url("/ws?topic=room.1&topic=open.1"), &[V1]).await;
    for ws in [&mut alice, &mut anon] {
        assert_eq!(next_json(ws).await["op"], "subscribed");
    }
    assert_eq!(next_json(&mut anon).await["op"], "subscribed");

    // Allowed by the claim: every subscriber, the sender too (echo on),
    // gets it with `from` and the offset; the sender then `published`.
    send_json(
        &mut alice,
        json!({"op": "publish", "topic": "room.1", "data": {"t": "hi"}, "id": 7}),
    )
    .await;
    let mut delivered = next_json(&mut anon).await;
    assert!(delivered["epoch"].is_string());
    delivered.as_object_mut().unwrap().remove("epoch");
    assert_eq!(
        delivered,
        json!({"op": "message", "topic": "room.1", "offset": 1, "from": "42", "data": {"t": "hi"}})
    );
    let echo = next_json(&mut alice).await;
    assert_eq!(
        (echo["from"].clone(), echo["offset"].clone()),
        (json!("42"), json!(1))
    );
    assert_eq!(
        next_json(&mut alice).await,
        json!({"op": "published", "id": 7, "offset": 1})
    );

    // Anonymous: no claim, and room.* is not --client-publish.
    send_json(
        &mut anon,
        json!({"op": "publish", "topic": "room.1", "data": 1, "id": 8}),
    )
    .await;
    assert_eq!(
        next_json(&mut anon).await,
        json!({"op": "error", "id": 8, "reason": "forbidden"})
    );
    // --client-publish open.* lets anyone publish there; no sub, no from;
    // no history, no offset.
    send_json(
        &mut anon,
        json!({"op": "publish", "topic": "open.1", "data": "x", "id": 9}),
    )
    .await;
    assert_eq!(
        next_json(&mut anon).await,
        json!({"op": "message", "topic": "open.1", "data": "x"})
    );
    assert_eq!(
        next_json(&mut anon).await,
        json!({"op": "published", "id": 9})
    );
    // The claim is room.* only.
    send_json(
        &mut alice,
        json!({"op": "publish", "topic": "news", "data": 1, "id": 10}),
    )
    .await;
    assert_eq!(
        next_json(&mut alice).await,
        json!({"op": "error", "id": 10, "reason": "forbidden"})
    );
    // Malformed ops get an error, not a close.
    send_json(&mut alice, json!({"op": "publish", "topic": "room.1"})).await;
    assert!(next_json(&mut alice).await["reason"]
        .as_str()
        .unwrap()
        .contains("missing field `data`"));
    send_json(&mut alice, json!({"op": "rpc", "method": "m", "id": 11})).await;
    assert_eq!(
        next_json(&mut alice).await,
        json!({"op": "error", "id": 11, "reason": "rpc is not enabled"})
    );
    let scrape = server.metrics().await;
    assert_eq!(rate_metric(&scrape, "ringcast_client_publishes_total"), 2.0);
    assert_eq!(rate_metric(&scrape, "ringcast_client_forbidden_total"), 2.0);
}

#[tokio::test]
async fn with_echo_off_the_sender_gets_only_its_reply() {
    let server = Server::start(&["--client-publish", "*", "--client-publish-echo", "false"]);
    let mut a = connect_with(&server.url("/ws?topic=t"), &[V1]).await;
    let mut b = connect_with(&server.url("/ws?topic=t"), &[V1]).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(next_json(ws).await["op"], "subscribed");
    }
    send_json(
        &mut a,
        json!({"op": "publish", "topic": "t", "data": 1, "id": 1}),
    )
    .await;
    assert_eq!(
        next_json(&mut b).await,
        json!({"op": "message", "topic": "t", "data": 1})
    );
    // An echo would have been queued before the reply.
    assert_eq!(next_json(&mut a).await, json!({"op": "published", "id": 1}));
    // The sender still gets other publishes.
    server.publish("topic=t", "api").await;
    assert_eq!(next_json(&mut a).await["data"], "api");
}

#[tokio::test]
async fn over_the_rate_the_message_is_dropped_and_past_ten_times_the_connection_closes_1008() {
    let server = Server::start(&["--client-publish", "*", "--client-messages-per-sec", "5"]);
    let mut ws = connect_with(&server.url("/ws"), &[V1]).await;
    // Eight at once against a bucket of five.
    for id in 0..8 {
        send_json(
            &mut ws,
            json!({"op": "publish", "topic": "t", "data": id, "id": id}),
        )
        .await;
    }
    let mut replies: Vec<Value> = Vec::new();
    for _ in 0..8 {
        replies.push(next_json(&mut ws).await);
    }
    let published = replies.iter().filter(|r| r["op"] == "published").count();
    let limited: Vec<&Value> = replies.iter().filter(|r| r["op"] == "error").collect();
    assert!((5..=6).contains(&published), "{replies:?}");
    assert_eq!(published + limited.len(), 8);
    assert!(limited.iter().all(|r| r["reason"] == "rate limited"));
    // Fifty more within the same second: past ten times five.
    for id in 8..60 {
        send_json(
            &mut ws,
            json!({"op": "publish", "topic": "t", "data": id, "id": id}),
        )
        .await;
    }
    expect_close_after_texts(&mut ws, 1008).await;
    let scrape = server.metrics().await;
    assert!(rate_metric(&scrape, "ringcast_client_rate_limited_total") >= 3.0);
    assert_eq!(
        rate_metric(&scrape, "ringcast_client_rate_limit_closes_total"),
        1.0
    );
}

/// Skips the replies still queued, then expects a close with `code`.
async fn expect_close_after_texts(ws: &mut Ws, code: u16) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    for _ in 0..1000 {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close timed out")
        {
            Some(Ok(Message::Text(_) | Message::Ping(_))) => continue,
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), code, "{:?}", frame.reason);
                return;
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
    panic!("no close");
}

/// Issue 20, finding 4: a publish pattern (`publish` claim,
/// `--client-publish`) never opens a user-limited topic to a client whose
/// user is not listed after `#`, nor to an anonymous one.
#[tokio::test]
async fn only_listed_users_publish_into_a_user_limited_topic() {
    let secret = hmac_secret("duplex-dm");
    let secret = secret.as_str();
    let server = Server::start(&[
        "--jwt-hmac-secret-file",
        secret,
        "--allow-anonymous",
        "--client-publish",
        "chat.*",
    ]);
    let claims = |sub: &str| {
        json!({"alg": "HS256", "key": secret, "claims": {
            "sub": sub, "exp": unix_now() + 300, "publish": ["chat.*"]
        }})
    };
    let tokens = mint(&json!([claims("43"), claims("66")]));
    let (t43, t66) = (
        format!("Bearer {}", tokens[0]),
        format!("Bearer {}", tokens[1]),
    );
    let url = server.url("/ws?topic=chat.dm%2343");
    let mut u43 = connect_with(&url, &[V1, ("authorization", &t43)]).await;
    assert_eq!(next_json(&mut u43).await["op"], "subscribed");
    let mut u66 = connect_with(&server.url("/ws"), &[V1, ("authorization", &t66)]).await;
    let mut anon = connect_with(&server.url("/ws"), &[V1]).await;
    for (ws, id) in [(&mut u66, 1), (&mut anon, 2)] {
        send_json(
            ws,
            json!({"op": "publish", "topic": "chat.dm#43", "data": "intruder", "id": id}),
        )
        .await;
        assert_eq!(
            next_json(ws).await,
            json!({"op": "error", "id": id, "reason": "forbidden"})
        );
    }
    send_json(
        &mut u43,
        json!({"op": "publish", "topic": "chat.dm#43", "data": "mine", "id": 3}),
    )
    .await;
    // The first message user 43 gets is its own: nothing of the others'.
    let first = next_json(&mut u43).await;
    assert_eq!(
        (&first["data"], &first["from"]),
        (&json!("mine"), &json!("43"))
    );
    assert_eq!(
        next_json(&mut u43).await,
        json!({"op": "published", "id": 3})
    );
    let scrape = server.metrics().await;
    assert_eq!(rate_metric(&scrape, "ringcast_client_forbidden_total"), 2.0);
}

/// Issue 20, findings 5 and 9: every client message counts against the
/// message rate, control ops and refused publishes alike.
#[tokio::test]
async fn control_ops_and_forbidden_publishes_hit_the_rate_limit() {
    let server = Server::start(&["--client-messages-per-sec", "5"]);
    // Raw mode: subscribes, unsubscribes and unparseable messages.
    let mut raw = connect(&server.url("/ws")).await;
    for i in 0..8 {
        let op = match i % 3 {
            0 => json!({"op": "subscribe", "topic": format!("t{i}")}),
            1 => json!({"op": "unsubscribe", "topic": "t0"}),
            _ => json!({"op": "dance"}),
        };
        send_json(&mut raw, op).await;
    }
    let mut limited = 0;
    for _ in 0..8 {
        let reply = next_json(&mut raw).await;
        limited += usize::from(reply["reason"] == "rate limited");
    }
    assert!((2..=3).contains(&limited), "{limited} of 8 refused");
    // ringcast.v1: publishes nothing allows, answered `forbidden` until
    // the bucket is empty, then `rate limited`.
    let mut v1 = connect_with(&server.url("/ws"), &[V1]).await;
    for id in 0..8 {
        send_json(
            &mut v1,
            json!({"op": "publish", "topic": "t", "data": id, "id": id}),
        )
        .await;
    }
    let mut reasons = Vec::new();
    for _ in 0..8 {
        reasons.push(next_json(&mut v1).await["reason"].clone());
    }
    let forbidden = reasons.iter().filter(|r| **r == "forbidden").count();
    let limited = reasons.iter().filter(|r| **r == "rate limited").count();
    assert!((5..=6).contains(&forbidden), "{reasons:?}");
    assert_eq!(forbidden + limited, 8, "{reasons:?}");
    // Past ten times the rate within a second: 1008, as for publishes.
    for _ in 0..60 {
        send_json(&mut v1, json!({"op": "unsubscribe", "topic": "t"})).await;
    }
    expect_close_after_texts(&mut v1, 1008).await;
    let scrape = server.metrics().await;
    assert!(rate_metric(&scrape, "ringcast_client_rate_limited_total") >= 4.0);
}
