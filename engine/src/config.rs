//! Engine configuration. The server's CLI fills this in; every field has a
//! default in [`Config::default`].

use crate::session::Auth;
use crate::upstream::Upstream;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything a [`crate::Runtime`] needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address every worker's SO_REUSEPORT listener binds (default
    /// 0.0.0.0:8080). Port 0 picks a free port, shared by all workers.
    pub listen: SocketAddr,
    /// Worker threads, one io_uring each (default: available cores).
    pub workers: usize,
    /// Path of the publish/subscribe endpoint (default `/ws`).
    pub path: String,
    /// Also serve `/echo`, which echoes every message (conformance runs and
    /// benchmarks).
    pub echo: bool,
    /// Subprotocols the server accepts, in no order; the client's first
    /// offered match is chosen (RFC 6455 §4.2.2).
    pub subprotocols: Vec<String>,
    /// Close a connection that sent nothing (not even a pong) for this long
    /// (default 120 s).
    pub idle_timeout: Duration,
    /// Send a ping to each connection this often (default 30 s).
    pub ping_interval: Duration,
    /// Close a connection whose opening handshake is not complete after this
    /// long, with 408 (default 10 s).
    pub handshake_timeout: Duration,
    /// Largest message accepted from a client, and largest publish, in bytes
    /// (default 1 MiB). Larger client messages are closed with 1009.
    pub max_message_size: usize,
    /// Most bytes queued for one connection, in bytes (default 4 MiB). A
    /// connection over it is a slow consumer and is closed with 1008.
    pub max_outbound_bytes: usize,
    /// Open connections allowed in total (default `usize::MAX`: as many as
    /// the host holds). A handshake beyond it is answered 503. Each
    /// worker's fixed-file table is sized for its share plus headroom to
    /// answer those 503s (see [`crate::capacity::table_size`]).
    pub max_connections: usize,
    /// Open connections allowed per client address (0: no limit); beyond
    /// it a handshake is answered 429.
    pub max_connections_per_ip: usize,
    /// Accepts per second for the whole process (`None`: unlimited),
    /// shared evenly by the workers. Connections beyond the rate wait in
    /// the listen backlog.
    pub max_handshakes_per_sec: Option<f64>,
    /// Expect a PROXY protocol v1 or v2 header at the start of every
    /// connection; connections without a valid one are refused with 400.
    pub proxy_protocol: bool,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed (empty:
    /// the headers are ignored).
    pub trusted_proxies: Vec<IpNet>,
    /// `Origin` patterns allowed (empty: any); see
    /// [`crate::admission::Admission`].
    pub allowed_origins: Vec<String>,
    /// Topics that keep history, and how much (default none); the first
    /// rule a topic matches applies.
    pub history: Vec<crate::hub::rules::Rule>,
    /// Bytes all history may take, overheads included (default 256 MiB);
    /// past it the oldest messages are evicted first.
    pub history_max_bytes: usize,
    /// Receive buffers per worker (power of two, default 1024).
    pub read_buffers: u16,
    /// Size of each receive buffer in bytes (default 4096).
    pub read_buffer_size: u32,
    /// Token verification (`None`: auth is off; every connection is
    /// anonymous and may subscribe to any topic that is not user-limited).
    pub auth: Option<Arc<Auth>>,
    /// Where workers send what needs the embedding program's async side
    /// (client publishes, RPCs, connect hooks; see [`crate::upstream`]).
    /// `None` (default): client publishes and RPCs are answered with an
    /// error op.
    pub upstream: Option<Upstream>,
    /// Whether topic deliveries come from a broker (the server's
    /// `--broker`): then the local hub assigns no offsets, and workers
    /// report topic interest and history reads through
    /// [`Self::upstream`] (see [`crate::broker`]).
    pub broker: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            path: "/ws".to_owned(),
            echo: false,
            subprotocols: Vec::new(),
            idle_timeout: Duration::from_secs(120),
            ping_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 1 << 20,
            max_outbound_bytes: 4 << 20,
            max_connections: usize::MAX,
            max_connections_per_ip: 0,
            max_handshakes_per_sec: None,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            history: Vec::new(),
            history_max_bytes: 256 << 20,
            read_buffers: 1024,
            read_buffer_size: 4096,
            auth: None,
            upstream: None,
            broker: false,
        }
    }
}
