//! WebSocket clients (tokio-tungstenite): connect with headers, tokens,
//! source addresses or `ringcast.v1`, and read and send messages.

use super::{Ws, WAIT};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection to `to` from source address `from` (any 127.0.0.0/8
/// address on loopback).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.expect("TCP connect")
}

/// A WebSocket client connecting to `url` (on `to`) from address `from`.
pub async fn connect_from(from: IpAddr, to: SocketAddr, url: &str) -> Ws {
    let stream = tcp_from(from, to).await;
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("connect timed out")
        .expect("connect")
        .0
}

/// An IP address from its text.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `n` clients connected to `url`, opened 100 at a time.
pub async fn connect_many(url: &str, n: usize) -> Vec<Ws> {
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = (n - clients.len()).min(100);
        clients.extend(futures_util::future::join_all((0..batch).map(|_| connect(url))).await);
    }
    clients
}

/// A WebSocket client for `url`.
pub async fn connect(url: &str) -> Ws {
    connect_with(url, &[]).await
}

/// Opens a WebSocket to `url` with extra request headers, within
/// [`WAIT`]; returns the client and the server's 101 response.
async fn open(url: &str, headers: &[(&str, &str)]) -> (Ws, Response) {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// The next text message, skipping pings; panics on anything else.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message timed out")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

pub async fn send_json(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Subscribes over the connection and waits for the ack.
pub async fn subscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, serde_json::json!({"op": "subscribe", "topic": topic})).await;
    let ack: serde_json::Value = serde_json::from_str(&next_text(ws).await).unwrap();
    assert_eq!(ack, serde_json::json!({"op": "subscribed", "topic": topic}));
}

/// Expects a close frame with `code`, then the end of the stream.
pub async fn expect_close(ws: &mut Ws, code: u16) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close timed out")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    u16::from(frame.code),
                    code,
                    "close reason {:?}",
                    frame.reason
                );
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

/// A WebSocket client for `url` with `token` as `Authorization: Bearer`.
pub async fn connect_bearer(url: &str, token: &str) -> Ws {
    connect_with(url, &[("authorization", &format!("Bearer {token}"))]).await
}

/// A client for `url` with extra request headers (e.g.
/// `("sec-websocket-protocol", "ringcast.v1")`, `("cookie", "...")`).
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Ws {
    open(url, headers).await.0
}

/// The next text message as JSON.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// A client that offers `ringcast.v1` and gets it.
pub async fn connect_v1(url: &str) -> Ws {
    let (ws, response) = open(url, &[("sec-websocket-protocol", "ringcast.v1")]).await;
    assert_eq!(response.headers()["sec-websocket-protocol"], "ringcast.v1");
    ws
}

/// Subscribes a `ringcast.v1` connection, with `since` (offset, epoch)
/// when given; returns the `subscribed` reply.
pub async fn subscribe_v1(
    ws: &mut Ws,
    topic: &str,
    since: Option<(u64, &str)>,
) -> serde_json::Value {
    let mut op = serde_json::json!({"op": "subscribe", "topic": topic});
    if let Some((offset, epoch)) = since {
        op["since"] = serde_json::json!({"offset": offset, "epoch": epoch});
    }
    send_json(ws, op).await;
    let reply = next_json(ws).await;
    assert_eq!(
        (&reply["op"], &reply["topic"]),
        (&serde_json::json!("subscribed"), &serde_json::json!(topic)),
        "{reply}"
    );
    reply
}
