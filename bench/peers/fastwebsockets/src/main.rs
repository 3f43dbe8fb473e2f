//! Reference server on fastwebsockets over hyper, written the way its
//! examples show: hyper's HTTP/1 server, `upgrade::upgrade`, a tokio task
//! per connection. `/ws` forwards every broadcast and is one chat room:
//! each text or binary message a client sends is broadcast to every `/ws`
//! connection, the sender included (as `ringcast --room`); `/echo` echoes.

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{upgrade, FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use peer_common::{Args, Peer};
use tokio::sync::broadcast::{self, error::RecvError};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let peer = Peer::start(&Args::parse()).await?;
    loop {
        let (stream, _) = peer.ws.accept().await?;
        let _ = stream.set_nodelay(true);
        let broadcast = peer.broadcast.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| upgrade_request(req, broadcast.clone()));
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

async fn upgrade_request(
    mut req: Request<Incoming>,
    broadcast: broadcast::Sender<Bytes>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    if req.uri().path() == "/echo" {
        tokio::spawn(async move { echo(fut).await });
    } else {
        // Subscribed before the 101 goes out, so that a client that has it
        // receives every later broadcast.
        let rx = broadcast.subscribe();
        tokio::spawn(async move { subscriber(fut, broadcast, rx).await });
    }
    Ok(response)
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn subscriber(
    fut: upgrade::UpgradeFut,
    room: broadcast::Sender<Bytes>,
    mut rx: broadcast::Receiver<Bytes>,
) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Ok(payload) => {
                    let frame = Frame::text(Payload::Borrowed(&payload));
                    ws.write_frame(frame).await?;
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Ok(()),
            },
            // Pings are answered and close is echoed by the library.
            frame = ws.read_frame() => {
                let frame = frame?;
                match frame.opcode {
                    OpCode::Close => return Ok(()),
                    OpCode::Text | OpCode::Binary => {
                        let _ = room.send(Bytes::copy_from_slice(&frame.payload));
                    }
                    _ => {}
                }
            }
        }
    }
}
