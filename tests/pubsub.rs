//! Subscribing and publishing, driven by tokio-tungstenite clients and the
//! HTTP API against the real binary.

mod common;

use common::*;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subscribe_by_url_and_by_control_message() {
    let server = Server::start(&["--workers", "1"]);
    let mut by_url = connect(&server.url("/ws?topic=news&topic=sport")).await;
    let mut by_msg = connect(&server.url("/ws")).await;
    subscribe(&mut by_msg, "news").await;

    assert_eq!(server.publish("topic=news", "n1").await, 2);
    assert_eq!(next_text(&mut by_url).await, "n1");
    assert_eq!(next_text(&mut by_msg).await, "n1");

    assert_eq!(server.publish("topic=sport", "s1").await, 1);
    assert_eq!(next_text(&mut by_url).await, "s1");

    send_json(&mut by_msg, json!({"op": "unsubscribe", "topic": "news"})).await;
    assert_eq!(
        next_text(&mut by_msg).await,
        r#"{"op":"unsubscribed","topic":"news"}"#
    );
    assert_eq!(server.publish("topic=news", "n2").await, 1);
    assert_eq!(next_text(&mut by_url).await, "n2");
    assert_eq!(server.publish("topic=nobody", "x").await, 0);
}

#[tokio::test]
async fn publish_to_several_topics_arrives_once_per_subscriber() {
    let server = Server::start(&[]);
    let mut both = connect(&server.url("/ws?topic=a&topic=b")).await;
    let mut only_b = connect(&server.url("/ws?topic=b")).await;
    assert_eq!(server.publish("topic=a&topic=b", "one").await, 2);
    assert_eq!(server.publish("topic=a", "two").await, 1);
    assert_eq!(next_text(&mut both).await, "one");
    assert_eq!(next_text(&mut both).await, "two");
    assert_eq!(next_text(&mut only_b).await, "one");
}

#[tokio::test]
async fn content_type_picks_text_or_binary_frames() {
    let server = Server::start(&[]);
    let mut ws = connect(&server.url("/ws?topic=t")).await;
    let (status, _) = server
        .post(
            "/publish?topic=t",
            "application/octet-stream",
            vec![0u8, 255, 1],
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post(
            "/publish?topic=t",
            "application/json; charset=utf-8",
            r#"{"k":1}"#,
        )
        .await;
    assert_eq!(status, 200);
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::Binary(vec![0u8, 255, 1].into()));
    assert_eq!(next_text(&mut ws).await, r#"{"k":1}"#);
}

#[tokio::test]
async fn broadcast_reaches_every_topics_connection() {
    let server = Server::start(&[]);
    let mut a = connect(&server.url("/ws?topic=a")).await;
    let mut none = connect(&server.url("/ws")).await;
    let (status, body) = server.post("/broadcast", "text/plain", "all").await;
    assert_eq!((status, body.as_str()), (200, r#"{"subscribers":2}"#));
    assert_eq!(next_text(&mut a).await, "all");
    assert_eq!(next_text(&mut none).await, "all");
}

#[tokio::test]
async fn one_publishers_messages_arrive_in_publish_order() {
    let server = Server::start(&[]);
    let url = server.url("/ws?topic=seq");
    let mut subscribers = join_all((0..10).map(|_| connect(&url))).await;
    for i in 0..300 {
        assert_eq!(server.publish("topic=seq", &i.to_string()).await, 10);
    }
    for ws in &mut subscribers {
        for i in 0..300 {
            assert_eq!(next_text(ws).await, i.to_string());
        }
    }
}

#[tokio::test]
async fn two_workers_share_200_clients_and_all_receive() {
    let server = Server::start(&["--workers", "2"]);
    let mut clients = Vec::new();
    for chunk in 0..4 {
        let batch = (0..50).map(|i| {
            let url = server.url(&format!("/ws?topic=t{}", (chunk * 50 + i) % 2));
            async move { connect(&url).await }
        });
        clients.extend(join_all(batch).await);
    }
    let stats = server.stats().await;
    let per_worker: Vec<u64> = stats["worker_connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 200, "{stats}");
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "SO_REUSEPORT spread: {per_worker:?}"
    );

    assert_eq!(server.publish("topic=t0&topic=t1", "to all").await, 200);
    for ws in &mut clients {
        assert_eq!(next_text(ws).await, "to all");
    }
    for ws in &mut clients {
        ws.send(Message::Close(None)).await.unwrap();
    }
}

#[tokio::test]
async fn publish_api_rejects_bad_requests() {
    let server = Server::start(&["--max-message-size", "1024"]);
    let mut ws = connect(&server.url("/ws?topic=t")).await;
    let (status, _) = server.post("/publish", "text/plain", "x").await;
    assert_eq!(status, 400, "no topic");
    let (status, _) = server
        .post("/publish?topic=bad%20name", "text/plain", "x")
        .await;
    assert_eq!(status, 400, "invalid topic");
    let (status, _) = server
        .post("/publish?topic=t", "text/plain", vec![0xffu8, 0xfe])
        .await;
    assert_eq!(status, 400, "text that is not UTF-8");
    let (status, _) = server
        .post("/publish?topic=t", "text/plain", "y".repeat(1025))
        .await;
    assert_eq!(status, 413, "body over --max-message-size");
    // None of those reached the subscriber; this one does.
    assert_eq!(server.publish("topic=t", "ok").await, 1);
    assert_eq!(next_text(&mut ws).await, "ok");
    let health = reqwest::get(format!("http://{}/healthz", server.api))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn stats_count_connections_topics_and_messages() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/ws?topic=a&topic=b")).await;
    server.publish("topic=a", "hello").await;
    next_text(&mut ws).await;
    let stats = server.stats().await;
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["topics"], 2);
    assert_eq!(stats["messages_out"], 1);
    assert!(stats["bytes_out"].as_u64().unwrap() >= 5);
    assert_eq!(stats["handshake_rejects"]["not_found"], 0);
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let server = Server::start(&[]);
    let mut ws = connect(&server.url("/ws?topic=t")).await;
    // The subscription is in place once a publish counts it.
    assert_eq!(server.publish("topic=t", "before").await, 1);
    assert_eq!(next_text(&mut ws).await, "before");
    server.signal(libc::SIGTERM);
    expect_close(&mut ws, 1001).await;
    let status = server.exit_within(WAIT).await;
    assert!(status.success(), "exit status {status:?}");
}
