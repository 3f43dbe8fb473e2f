//! Engine configuration. The server's CLI fills this in; every field has a
//! default in [`Config::default`].

use crate::session::permissions::Pattern;
use crate::session::Auth;
use crate::upstream::{Hooks, Upstream};
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
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it
    /// (default on).
    pub compression: bool,
    /// Messages shorter than this many bytes are sent uncompressed, even
    /// to connections that negotiated compression (default 256).
    pub compression_min_size: usize,
    /// Receive buffers per worker (power of two, default 1024).
    pub read_buffers: u16,
    /// Size of each receive buffer in bytes (default 4096).
    pub read_buffer_size: u32,
    /// Path of the SSE transport (default `/sse`; `None`: SSE is off).
    pub sse_path: Option<String>,
    /// Path of the long-poll transport (default `/poll`; `None`: off).
    pub poll_path: Option<String>,
    /// How long a poll waits for a message before it is answered with
    /// none (default 25 s).
    pub poll_timeout: Duration,
    /// Files served as they are to a `GET` of their path on the WebSocket
    /// listener (the JavaScript client, the demo page), each answered with
    /// `Connection: close`.
    pub static_files: Vec<StaticFile>,
    /// Token verification (`None`: auth is off; every connection is
    /// anonymous and may subscribe to any topic that is not user-limited).
    pub auth: Option<Arc<Auth>>,
    /// Where workers send what needs the embedding program's async side
    /// (client publishes, RPCs, connect hooks; see [`crate::upstream`]).
    /// `None` (default): client publishes and RPCs are answered with an
    /// error op.
    pub upstream: Option<Upstream>,
    /// Topics any connection may publish to from the client
    /// (`--client-publish`), beside those its token's `publish` claim
    /// allows (default none).
    pub client_publish: Vec<Pattern>,
    /// Whether the sender of a client publish receives it too, when
    /// subscribed (default true).
    pub client_publish_echo: bool,
    /// Room topics (`--room`): a raw-mode connection subscribed to one
    /// publishes every message it sends to each of its room topics
    /// (default none).
    pub rooms: Vec<Pattern>,
    /// Client publishes, RPCs and room messages one connection may send
    /// per second (token bucket holding one second's worth; default 100).
    /// Past ten times this within a second, the connection is closed with
    /// 1008.
    pub client_messages_per_sec: f64,
    /// Bytes of those messages per connection per second, as above
    /// (default 1 MiB).
    pub client_bytes_per_sec: f64,
    /// Bytes one connection's compressed messages may inflate to per
    /// second (a token bucket holding one second's worth; default
    /// 16 MiB); past it the connection is closed with 1008. 0: no budget.
    pub max_inflate_bytes_per_sec: u64,
    /// Which backend hooks are on (default none).
    pub hooks: Hooks,
    /// Whether topic deliveries come from a broker (the server's
    /// `--broker`): then the local hub assigns no offsets, and workers
    /// report topic interest and history reads through
    /// [`Self::upstream`] (see [`crate::broker`]).
    pub broker: bool,
    /// Topics with presence (`--presence`; default none): a connection
    /// subscribed to one is a member (see [`crate::presence`]).
    pub presence: Vec<Pattern>,
    /// Joins and leaves of a topic are pushed to its `join_leave`
    /// subscribers only while it has at most this many members (default
    /// 1000).
    pub presence_join_leave_max: usize,
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
            presence: Vec::new(),
            presence_join_leave_max: 1000,
            compression: true,
            compression_min_size: 256,
            read_buffers: 1024,
            read_buffer_size: 4096,
            sse_path: Some("/sse".to_owned()),
            poll_path: Some("/poll".to_owned()),
            poll_timeout: Duration::from_secs(25),
            static_files: Vec::new(),
            auth: None,
            upstream: None,
            client_publish: Vec::new(),
            client_publish_echo: true,
            rooms: Vec::new(),
            client_messages_per_sec: 100.0,
            client_bytes_per_sec: (1 << 20) as f64,
            max_inflate_bytes_per_sec: 16 << 20,
            hooks: Hooks::default(),
            broker: false,
        }
    }
}

/// A file the workers serve on the WebSocket listener.
#[derive(Clone, Debug)]
pub struct StaticFile {
    /// Request path, without query (e.g. `/ringcast.js`).
    pub path: String,
    /// `Content-Type` sent with it.
    pub content_type: &'static str,
    /// The body.
    pub body: bytes::Bytes,
}

impl StaticFile {
    /// The complete response: 200 with the body, `Cache-Control:
    /// no-cache`, readable from any origin (`Access-Control-Allow-Origin:
    /// *`, so a page elsewhere may import the client), `Connection: close`.
    pub fn response(&self) -> bytes::Bytes {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
            self.content_type,
            self.body.len()
        );
        [head.as_bytes(), &self.body].concat().into()
    }
}
