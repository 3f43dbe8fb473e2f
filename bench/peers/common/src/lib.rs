//! What both peer servers share, so that `ringcast-bench` drives them
//! exactly like ringcast: the same flags, the same `listening ws=… api=…`
//! line on stdout, and the same `POST /broadcast` answering
//! `{"subscribers":N}`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use clap::Parser;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// Messages a slow subscriber may fall behind by before it misses some
/// (tokio's broadcast channel then reports `Lagged`).
pub const CHANNEL_CAPACITY: usize = 1024;

/// Flags of a peer server.
#[derive(Parser, Debug)]
pub struct Args {
    /// Address for WebSocket clients (/ws subscribes to broadcasts, /echo
    /// echoes). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Address of the HTTP API (POST /broadcast).
    #[arg(long, default_value = "127.0.0.1:9002")]
    pub api_listen: SocketAddr,
}

/// A peer's WebSocket listener and broadcast channel; the API is running.
pub struct Peer {
    pub ws: TcpListener,
    pub broadcast: broadcast::Sender<Bytes>,
}

impl Peer {
    /// Binds both listeners, starts serving the API and prints
    /// `listening ws=ADDR api=ADDR` on stdout.
    ///
    /// # Errors
    /// Binding either address.
    pub async fn start(args: &Args) -> std::io::Result<Self> {
        let ws = TcpListener::bind(args.listen).await?;
        let api = TcpListener::bind(args.api_listen).await?;
        println!(
            "listening ws={} api={}",
            ws.local_addr()?,
            api.local_addr()?
        );
        let (broadcast, _) = broadcast::channel(CHANNEL_CAPACITY);
        let router = Router::new()
            .route("/broadcast", post(publish))
            .with_state(broadcast.clone());
        tokio::spawn(async move { axum::serve(api, router).await });
        Ok(Self { ws, broadcast })
    }
}

async fn publish(
    State(tx): State<broadcast::Sender<Bytes>>,
    body: Bytes,
) -> Json<serde_json::Value> {
    let subscribers = tx.send(body).unwrap_or(0);
    Json(serde_json::json!({ "subscribers": subscribers }))
}
