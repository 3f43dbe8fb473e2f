//! Reference server on tokio-tungstenite, written the way its docs show:
//! a tokio task per connection, `accept_hdr_async`, and the stream split
//! into sink and stream. `/ws` forwards every broadcast and is one chat
//! room: each text or binary message a client sends is broadcast to every
//! `/ws` connection, the sender included (as `ringcast --room`); `/echo`
//! echoes.

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use peer_common::{Args, Peer};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let peer = Peer::start(&Args::parse()).await?;
    loop {
        let (stream, _) = peer.ws.accept().await?;
        // Subscribed before the handshake completes, so that a client that
        // has its 101 receives every later broadcast.
        let rx = peer.broadcast.subscribe();
        tokio::spawn(connection(stream, peer.broadcast.clone(), rx));
    }
}

// The callback's error type is tungstenite's `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn connection(
    stream: TcpStream,
    room: broadcast::Sender<Bytes>,
    rx: broadcast::Receiver<Bytes>,
) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    match path.as_str() {
        "/echo" => echo(ws).await,
        _ => subscriber(ws, room, rx).await,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn subscriber(ws: Ws, room: broadcast::Sender<Bytes>, mut rx: broadcast::Receiver<Bytes>) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Ok(payload) => {
                    // Shares the broadcast buffer (no copy per subscriber).
                    let message = match Utf8Bytes::try_from(payload.clone()) {
                        Ok(text) => Message::Text(text),
                        Err(_) => Message::Binary(payload),
                    };
                    if sink.send(message).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(Message::Text(text))) => {
                    let _ = room.send(Bytes::from(text));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let _ = room.send(bytes);
                }
                Some(Ok(_)) => {}
            },
        }
    }
}
