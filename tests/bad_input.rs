//! Bad input gets its RFC answer (an HTTP status or a close code), and the
//! process and other connections carry on.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

/// A subscriber that must keep working while others misbehave.
struct Bystander {
    ws: Ws,
    n: u32,
}

impl Bystander {
    async fn new(server: &Server) -> Self {
        Self {
            ws: connect(&server.url("/ws?topic=bystander")).await,
            n: 0,
        }
    }

    async fn still_served(&mut self, server: &Server) {
        self.n += 1;
        let text = format!("still here {}", self.n);
        assert_eq!(server.publish("topic=bystander", &text).await, 1);
        assert_eq!(next_text(&mut self.ws).await, text);
    }
}

async fn status_for(server: &Server, request: &str) -> String {
    let mut raw = Raw::connect(server).await;
    raw.send(request.as_bytes()).await;
    let head = raw.response_head().await;
    head.lines().next().unwrap().to_owned()
}

#[tokio::test]
async fn bad_handshakes_get_their_status_codes() {
    let server = Server::start(&[]);
    let mut bystander = Bystander::new(&server).await;
    let good = GOOD_HANDSHAKE;
    let cases: Vec<(String, &str)> = vec![
        (good.replace("GET", "POST"), "400"),
        (good.replace("Host: test\r\n", ""), "400"),
        (good.replace("Upgrade: websocket\r\n", ""), "400"),
        (
            good.replace("Connection: Upgrade", "Connection: keep-alive"),
            "400",
        ),
        (
            good.replace("dGhlIHNhbXBsZSBub25jZQ==", "not-base64!"),
            "400",
        ),
        (
            good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            "400",
        ),
        (good.replace("Version: 13", "Version: 8"), "426"),
        (good.replace("/ws", "/nowhere"), "404"),
        (good.replace("/ws", "/ws?topic=has%20space"), "400"),
        (
            good.replace("/ws", &format!("/ws?topic={}", "a".repeat(129))),
            "400",
        ),
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), "400"),
        (
            good.replace(
                "\r\n\r\n",
                &format!("\r\nX-Big: {}\r\n\r\n", "b".repeat(9000)),
            ),
            "431",
        ),
    ];
    for (request, status) in &cases {
        let line = status_for(&server, request).await;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{line} for {request:.60?}"
        );
        bystander.still_served(&server).await;
    }
    let mut raw = Raw::connect(&server).await;
    raw.send(good.replace("Version: 13", "Version: 7").as_bytes())
        .await;
    assert!(raw
        .response_head()
        .await
        .contains("Sec-WebSocket-Version: 13\r\n"));
    let rejects = server.stats().await["handshake_rejects"].clone();
    assert_eq!(rejects["not_found"], 1);
    assert_eq!(rejects["unsupported_version"], 2);
    assert_eq!(rejects["headers_too_large"], 1);
}

#[tokio::test]
async fn protocol_violations_get_their_close_codes() {
    let server = Server::start(&["--max-message-size", "1000"]);
    let mut bystander = Bystander::new(&server).await;
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    let mut interleaved = client_frame(0x01, b"start");
    interleaved.extend(client_frame(0x81, b"new message before the end"));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("RSV1 without extension", client_frame(0xC1, b"x"), 1002),
        ("reserved opcode 0x3", client_frame(0x83, b""), 1002),
        ("reserved control opcode 0xB", client_frame(0x8B, b""), 1002),
        ("ping over 125 bytes", client_frame(0x89, &[0; 126]), 1002),
        ("fragmented ping", client_frame(0x09, b"x"), 1002),
        (
            "continuation with no message",
            client_frame(0x80, b"x"),
            1002,
        ),
        ("data frame inside a fragmented message", interleaved, 1002),
        ("text not UTF-8", client_frame(0x81, b"\xce\xba\xff"), 1007),
        (
            "close code 1005",
            client_frame(0x88, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "message over --max-message-size",
            client_frame(0x82, &[0; 1001]),
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut raw = Raw::upgrade(&server, "/ws").await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, code, "{what}");
        bystander.still_served(&server).await;
    }
}

#[tokio::test]
async fn invalid_utf8_fails_before_the_frame_is_complete() {
    let server = Server::start(&[]);
    let mut raw = Raw::upgrade(&server, "/ws").await;
    let frame = client_frame(0x81, b"ok\xf4\x90\x80\x80 and the rest never comes");
    raw.send(&frame[..12]).await;
    assert_eq!(raw.close_code().await, 1007);
}

#[tokio::test]
async fn malformed_control_messages_get_an_error_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut ws = connect(&server.url("/ws")).await;
    for bad in [
        "not json",
        r#"{"op":"dance"}"#,
        r#"{"op":"subscribe"}"#,
        r#"{"op":"subscribe","topic":"bad topic"}"#,
    ] {
        ws.send(Message::Text(bad.into())).await.unwrap();
        let reply: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(reply["op"], "error", "{bad}");
        assert!(reply["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    ws.send(Message::Binary(vec![1, 2].into())).await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&next_text(&mut ws).await).unwrap()["op"],
        "error"
    );
    subscribe(&mut ws, "fine").await;
    assert_eq!(server.publish("topic=fine", "delivered").await, 1);
    assert_eq!(next_text(&mut ws).await, "delivered");
    send_json(&mut ws, json!({"op": "unsubscribe", "topic": "fine"})).await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"op":"unsubscribed","topic":"fine"}"#
    );
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_1008_and_others_keep_receiving() {
    let server = Server::start(&["--workers", "1", "--max-outbound-bytes", "65536"]);
    let mut bystander = Bystander::new(&server).await;
    // Subscribes, then never reads: its socket buffers fill, then its queue.
    let mut slow = Raw::upgrade(&server, "/ws?topic=flood").await;
    assert_eq!(server.publish("topic=flood", "first").await, 1);
    let mut closed = false;
    let chunk = "z".repeat(60_000);
    for _ in 0..2000 {
        if server.publish("topic=flood", &chunk).await == 0 {
            closed = true; // no longer an open subscriber
            break;
        }
    }
    assert!(closed, "the slow consumer was never cut off");
    assert_eq!(server.stats().await["slow_consumer_closes"], 1);
    bystander.still_served(&server).await;
    // Its stream ends with a close frame carrying 1008 after what was sent.
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, slow.stream.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let tail = &all[all.len() - 4 - "slow consumer".len()..];
    assert_eq!(
        &tail[..4],
        &[0x88, 2 + 13, 0x03, 0xf0],
        "close frame with 1008"
    );
}

#[tokio::test]
async fn an_unfinished_handshake_is_closed_with_408() {
    let server = Server::start(&["--handshake-timeout", "300ms"]);
    let mut bystander = Bystander::new(&server).await;
    let mut slowloris = Raw::connect(&server).await;
    slowloris.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
    let head = slowloris.response_head().await;
    assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
    bystander.still_served(&server).await;
    assert_eq!(server.stats().await["handshake_rejects"]["timeout"], 1);
}

#[tokio::test]
async fn garbage_after_the_handshake_and_abrupt_disconnects_leave_the_server_up() {
    let server = Server::start(&[]);
    let mut bystander = Bystander::new(&server).await;
    for i in 0..20u8 {
        let mut raw = Raw::upgrade(&server, "/ws").await;
        let garbage: Vec<u8> = (0..200u32)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
            .collect();
        raw.send(&garbage).await;
        drop(raw); // reset mid-stream
    }
    bystander.still_served(&server).await;
}
