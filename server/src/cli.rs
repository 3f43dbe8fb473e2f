//! Command line: `ringcast serve [FLAGS]`.

use clap::{Parser, Subcommand};
use ringcast_engine::Config;
use std::net::SocketAddr;
use std::time::Duration;

/// WebSocket push server: clients subscribe to topics, backends publish
/// over HTTP.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Serve),
    /// Check this host's limits for a target number of connections.
    Doctor(crate::doctor::Doctor),
}

/// Flags of `ringcast serve`.
#[derive(Parser, Debug, Clone)]
pub struct Serve {
    /// Address for WebSocket clients; every worker listens on it
    /// (SO_REUSEPORT). Port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of the HTTP publish API (publish, broadcast, healthz, stats).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub api_listen: SocketAddr,
    /// Worker threads, one io_uring each [default: available cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Path of the WebSocket topics endpoint.
    #[arg(long, default_value = "/ws")]
    pub path: String,
    /// Also serve /echo, which echoes every message back (conformance runs,
    /// benchmarks).
    #[arg(long)]
    pub echo: bool,
    /// Subprotocol to accept when a client offers it (repeatable).
    #[arg(long = "subprotocol")]
    pub subprotocols: Vec<String>,
    /// Close a connection that sent nothing, not even a pong, for this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Ping every connection this often.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// Close a connection that has not completed its opening handshake in
    /// this time (slowloris), with 408.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Largest message, from a client (else close 1009) or a publisher
    /// (else 413), in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_message_size: usize,
    /// Most bytes queued to one connection; a connection over it is a slow
    /// consumer and is closed with 1008.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_outbound_bytes: usize,
    /// Connections to size for, in total. Each worker's fixed-file table
    /// holds min(RLIMIT_NOFILE, this / workers) [default: the host's
    /// ceiling, workers x RLIMIT_NOFILE].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Receive buffers per worker (a power of two up to 32768), shared by
    /// all its connections.
    #[arg(long, default_value_t = 1024)]
    pub read_buffers: u16,
    /// Size of each receive buffer, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub read_buffer_size: u32,
}

impl Default for Serve {
    fn default() -> Self {
        Self::parse_from(["serve"])
    }
}

impl Serve {
    /// The engine configuration these flags describe.
    pub fn engine_config(&self) -> Config {
        let defaults = Config::default();
        Config {
            listen: self.listen,
            workers: self.workers.unwrap_or(defaults.workers),
            path: self.path.clone(),
            echo: self.echo,
            subprotocols: self.subprotocols.clone(),
            idle_timeout: self.idle_timeout,
            ping_interval: self.ping_interval,
            handshake_timeout: self.handshake_timeout,
            max_message_size: self.max_message_size,
            max_outbound_bytes: self.max_outbound_bytes,
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            read_buffers: self.read_buffers,
            read_buffer_size: self.read_buffer_size,
        }
    }

    /// Checks values clap cannot.
    ///
    /// # Errors
    /// A message naming the flag and what it needs.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.contains('?') {
            return Err(format!(
                "--path must start with / and have no query: {:?}",
                self.path
            ));
        }
        if self.echo && self.path == "/echo" {
            return Err("--path /echo clashes with --echo".into());
        }
        if self.workers == Some(0) {
            return Err("--workers must be at least 1".into());
        }
        if !self.read_buffers.is_power_of_two() || self.read_buffers > 32768 {
            return Err("--read-buffers must be a power of two up to 32768".into());
        }
        if self.read_buffer_size < 512 {
            return Err("--read-buffer-size must be at least 512 bytes".into());
        }
        for (flag, d) in [
            ("--idle-timeout", self.idle_timeout),
            ("--ping-interval", self.ping_interval),
            ("--handshake-timeout", self.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be above zero"));
            }
        }
        if self.max_message_size == 0
            || self.max_outbound_bytes == 0
            || self.max_connections == Some(0)
        {
            return Err(
                "--max-message-size, --max-outbound-bytes and --max-connections must be above zero"
                    .into(),
            );
        }
        Ok(())
    }
}
