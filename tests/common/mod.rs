//! Shared harness for the black-box tests: start the built `ringcast`
//! binary on free loopback ports, and talk to it as independent clients do.
//!
//! - [`server`]: the server under test, its API, logs and metrics;
//! - [`front`]: haproxy in front of several nodes, and clients through it;
//! - [`hooks`]: a receiver for the presence and channels webhooks;
//! - [`ws`]: WebSocket clients, raw and `ringcast.v1`;
//! - [`raw`]: a byte-level client for input no library sends;
//! - [`tools`]: the Python venv and scripts, tokens, scratch files, ports.
// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

mod front;
mod hooks;
pub mod load;
mod raw;
pub mod redis_ha;
mod server;
mod tools;
mod ws;

pub use front::*;
pub use hooks::*;
pub use raw::*;
pub use server::*;
pub use tools::*;
pub use ws::*;

use std::time::Duration;
use tokio::net::TcpStream;

/// Upper bound for any single awaited event in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
