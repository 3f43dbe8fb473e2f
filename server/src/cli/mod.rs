//! Command line: `ringcast serve [FLAGS]`, `ringcast config print [FLAGS]`
//! and `ringcast doctor`.
//!
//! Every serve flag can also come from a `RINGCAST_*` environment variable
//! and from the TOML file named by `--config`, whose keys are the flag
//! names (`idle-timeout = "120s"`). Precedence: flags > environment > file
//! > defaults. See `deploy/ringcast.toml` for an annotated example.
//!
//! This file holds the flags and their parsing; [`values`] how single
//! values are read and printed; [`settings`] what the flags make (the
//! engine's configuration, secrets read from files) and the checks clap
//! cannot do; [`bounds`] the queue bounds; [`presence`] the presence
//! flags.

mod bounds;
mod presence;
mod settings;
mod values;

pub use bounds::Bounds;
pub use presence::Presence;
use values::{count, humantime_str, listen_addr, rules_table, urls_without_passwords};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use ringcast_engine::history::Rule;
use serde::Serialize;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Show the configuration in effect.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check this host's limits for a target number of connections.
    Doctor(crate::doctor::Doctor),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration (flags > RINGCAST_* environment >
    /// --config file > defaults) as TOML, in the config file's format.
    Print(Serve),
}

/// A backend hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// During the handshake: admit (with user, topics, permissions) or
    /// refuse.
    Connect,
    /// Before a client publish fans out: pass, rewrite or refuse.
    Publish,
    /// A client's rpc op.
    Rpc,
    /// After connections close, batched, best effort.
    Disconnect,
    /// Presence joins and leaves, batched, at least once.
    Presence,
    /// A topic's first subscriber (occupied) and last (vacated), batched,
    /// at least once.
    Channels,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// A feature switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Disabled.
    Off,
    /// Enabled.
    On,
}

/// Flags of `ringcast serve`. Serialized with the flag names as keys: the
/// config file's format.
#[derive(Parser, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
// `-5` is a value to name as wrong, not an unknown flag.
#[command(allow_negative_numbers = true)]
pub struct Serve {
    /// TOML file with any of these flags as keys (flag names without the
    /// dashes in front, e.g. `idle-timeout = "120s"`).
    #[arg(long, env = "RINGCAST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address for WebSocket clients; every worker listens on it
    /// (SO_REUSEPORT): IP:PORT, :PORT (every IPv4 address, 0.0.0.0:PORT)
    /// or localhost:PORT (127.0.0.1). Port 0 picks a free port.
    #[arg(long, env = "RINGCAST_LISTEN", default_value = "0.0.0.0:8080", value_parser = listen_addr)]
    pub listen: SocketAddr,
    /// Start even when another server already accepts connections on
    /// --listen; both then share it (SO_REUSEPORT). For a zero-downtime
    /// binary upgrade: start the new process, then drain the old one.
    /// Without it, ringcast refuses to start there.
    #[arg(long, env = "RINGCAST_LISTEN_OVERLAP")]
    pub listen_overlap: bool,
    /// Address of the HTTP API (publish, broadcast, drain, rebalance,
    /// healthz, readyz, stats, metrics). The load balancer's health checks
    /// need to reach /readyz here. Written as --listen.
    #[arg(long, env = "RINGCAST_API_LISTEN", default_value = "127.0.0.1:8081", value_parser = listen_addr)]
    pub api_listen: SocketAddr,
    /// Worker threads, one io_uring each [default: available cores].
    #[arg(long, env = "RINGCAST_WORKERS", value_parser = count::<usize>)]
    pub workers: Option<usize>,
    /// Path of the WebSocket topics endpoint.
    #[arg(long, env = "RINGCAST_PATH", default_value = "/ws")]
    pub path: String,
    /// Also serve /echo, which echoes every message back (conformance runs,
    /// benchmarks).
    #[arg(long, env = "RINGCAST_ECHO")]
    pub echo: bool,
    /// Path of the SSE transport (`GET PATH?topic=a`): ringcast.v1
    /// deliveries as Server-Sent Events, on the WebSocket listener.
    #[arg(long, env = "RINGCAST_SSE_PATH", default_value = "/sse")]
    pub sse_path: String,
    /// Turn the SSE transport off.
    #[arg(long, env = "RINGCAST_NO_SSE")]
    pub no_sse: bool,
    /// Path of the long-poll transport (`GET PATH?topic=a&since=POSITIONS`),
    /// on the WebSocket listener.
    #[arg(long, env = "RINGCAST_POLL_PATH", default_value = "/poll")]
    pub poll_path: String,
    /// Turn the long-poll transport off.
    #[arg(long, env = "RINGCAST_NO_POLL")]
    pub no_poll: bool,
    /// How long a poll waits for a message before it is answered with none.
    #[arg(long, env = "RINGCAST_POLL_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub poll_timeout: Duration,
    /// Serve the demo page at / (a live chat on the topic demo.chat, built
    /// on /ringcast.js); gives demo.* history and lets clients publish to
    /// demo.chat (as --client-publish demo.chat).
    #[arg(long, env = "RINGCAST_DEMO")]
    pub demo: bool,
    /// Subprotocol to accept when a client offers it (repeatable, or a
    /// comma-separated list).
    #[arg(
        long = "subprotocol",
        env = "RINGCAST_SUBPROTOCOL",
        value_delimiter = ','
    )]
    #[serde(rename = "subprotocol")]
    pub subprotocols: Vec<String>,
    /// Close a connection that sent nothing, not even a pong, for this long.
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub idle_timeout: Duration,
    /// Ping every connection this often.
    #[arg(long, env = "RINGCAST_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub ping_interval: Duration,
    /// Close a connection that has not completed its opening handshake in
    /// this time (slowloris), with 408.
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub handshake_timeout: Duration,
    /// Largest message, from a client (else close 1009) or a publisher
    /// (else 413), in bytes.
    #[arg(long, env = "RINGCAST_MAX_MESSAGE_SIZE", default_value_t = 1 << 20, value_parser = count::<usize>)]
    pub max_message_size: usize,
    /// Most bytes queued to one connection; a connection over it is a slow
    /// consumer and is closed with 1008.
    #[arg(long, env = "RINGCAST_MAX_OUTBOUND_BYTES", default_value_t = 4 << 20, value_parser = count::<usize>)]
    pub max_outbound_bytes: usize,
    /// Open connections allowed in total; a handshake beyond it gets 503
    /// with Retry-After. Each worker's fixed-file table is sized for its
    /// share plus headroom, capped by RLIMIT_NOFILE [default: the host's
    /// ceiling, workers x RLIMIT_NOFILE].
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", value_parser = count::<usize>)]
    pub max_connections: Option<usize>,
    /// Open connections allowed per client address (after PROXY protocol
    /// and trusted forwarding headers); beyond it a handshake gets 429 with
    /// Retry-After. 0: no limit.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 0, value_parser = count::<usize>)]
    pub max_connections_per_ip: usize,
    /// New connections accepted per second, for the whole process (a
    /// reconnect storm's brake). Connections beyond the rate wait in the
    /// listen backlog [default: unlimited].
    #[arg(long, env = "RINGCAST_MAX_HANDSHAKES_PER_SEC")]
    pub max_handshakes_per_sec: Option<f64>,
    /// Expect a PROXY protocol v1 or v2 header (haproxy send-proxy /
    /// send-proxy-v2) on every WebSocket connection; others get 400.
    #[arg(long, env = "RINGCAST_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// Networks (CIDR) whose X-Forwarded-For / X-Real-IP are believed
    /// (repeatable, or comma-separated). While set, those headers from any
    /// other peer get 403; while empty they are ignored.
    #[arg(long, env = "RINGCAST_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Origins allowed to open a WebSocket: `https://app.example.com`,
    /// `https://*.example.com` (subdomains), `example.com` (any scheme) or
    /// `*` (repeatable, or comma-separated). Others get 403; requests
    /// without Origin (non-browser clients) pass [default: any].
    #[arg(long, env = "RINGCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// On SIGTERM or POST /drain: time to close every connection (1001,
    /// spread over the first 90%) before exiting. A second SIGTERM closes
    /// the rest at once.
    #[arg(long, env = "RINGCAST_DRAIN_PERIOD", default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub drain_period: Duration,
    /// Topics that keep history, as PATTERN=SIZE/TTL: topics matching
    /// PATTERN (`*` matches any run of characters) keep their last SIZE
    /// messages for at most TTL, for ringcast.v1 clients to recover after
    /// a reconnect (repeatable, or comma-separated; the first match
    /// applies). In the config file, a table: `[history]` then
    /// `"chat.*" = "200/10m"` [default: none].
    #[arg(long = "history", env = "RINGCAST_HISTORY", value_delimiter = ',', value_parser = |s: &str| s.parse::<Rule>())]
    #[serde(serialize_with = "rules_table")]
    pub history: Vec<Rule>,
    /// Bytes all history may take (messages plus a stated overhead each);
    /// past it the oldest messages of any topic are evicted first.
    #[arg(long, env = "RINGCAST_HISTORY_MAX_BYTES", default_value_t = 256 << 20, value_parser = count::<usize>)]
    pub history_max_bytes: usize,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    /// A publish is then compressed once and the same compressed frame
    /// goes to every subscriber that negotiated it.
    #[arg(long, env = "RINGCAST_COMPRESSION", value_enum, default_value = "on")]
    pub compression: Switch,
    /// Messages shorter than this are sent uncompressed (RSV1 clear), in
    /// bytes.
    #[arg(long, env = "RINGCAST_COMPRESSION_MIN_SIZE", default_value_t = 256, value_parser = count::<usize>)]
    pub compression_min_size: usize,
    /// Redis instance to run as a cluster over, `redis://HOST:PORT[/DB]`,
    /// or `rediss://` for TLS (repeatable, or comma-separated): publishes go through Redis and
    /// reach every node, offsets and history live in Redis. With several,
    /// topics are sharded over them by a jump hash of the topic name; the
    /// first also carries the node-wide channel. A Redis Cluster:
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]` (seed nodes; `rediss+cluster://`
    /// for TLS). A master watched by Sentinel:
    /// `redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME`. Keep
    /// passwords out of the URL: use --broker-password-file [default:
    /// none, the node works alone].
    #[arg(long = "broker", env = "RINGCAST_BROKER", value_delimiter = ',')]
    #[serde(rename = "broker", serialize_with = "urls_without_passwords")]
    pub brokers: Vec<String>,
    /// A file holding the password for every --broker (AUTH; trailing
    /// whitespace ignored).
    #[arg(long, env = "RINGCAST_BROKER_PASSWORD_FILE")]
    pub broker_password_file: Option<PathBuf>,
    /// A PEM file of the CA certificates that sign the rediss:// brokers'
    /// certificates, trusted instead of the system's store [default: the
    /// system's trust store].
    #[arg(long, env = "RINGCAST_BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,
    /// Log line format (level from RUST_LOG, default info).
    #[arg(long, env = "RINGCAST_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Connection auth: a file holding the HMAC secret that signs HS256,
    /// HS384 or HS512 tokens (trailing whitespace, such as a final newline,
    /// is ignored). One of the three --jwt key flags turns auth on.
    #[arg(long, env = "RINGCAST_JWT_HMAC_SECRET_FILE", conflicts_with_all = ["jwt_public_key", "jwt_jwks"])]
    pub jwt_hmac_secret_file: Option<PathBuf>,
    /// Connection auth: a PEM file with the public key that verifies RS256,
    /// RS384, RS512 (RSA), ES256, ES384 (EC P-256, P-384) or EdDSA
    /// (Ed25519) tokens. A token's alg must match the key's type.
    #[arg(long, env = "RINGCAST_JWT_PUBLIC_KEY", conflicts_with = "jwt_jwks")]
    pub jwt_public_key: Option<PathBuf>,
    /// Connection auth: a JWKS file (RFC 7517); each token's kid picks its
    /// key. The file is read again on SIGHUP (a bad file keeps the old
    /// keys).
    #[arg(long, env = "RINGCAST_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,
    /// Accepted token audiences (repeatable, or comma-separated); when set,
    /// a token's aud must name one [default: aud not checked].
    #[arg(long, env = "RINGCAST_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Accepted token issuers (repeatable, or comma-separated); when set, a
    /// token's iss must be one [default: iss not checked].
    #[arg(long, env = "RINGCAST_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,
    /// Clock skew allowed when checking a token's exp, nbf and iat, in
    /// whole seconds. A connection is closed with 4001 this long after its
    /// token's exp.
    #[arg(long, env = "RINGCAST_JWT_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub jwt_leeway: Duration,
    /// With auth on, let connections without a token in, anonymous: they
    /// may subscribe to any topic that is not user-limited. A token that is
    /// present must still be valid.
    #[arg(long, env = "RINGCAST_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// A file holding the API token. When set, every API request except
    /// GET /healthz, /readyz and /metrics needs `Authorization: Bearer
    /// TOKEN`, else 401 (trailing whitespace in the file is ignored).
    #[arg(long, env = "RINGCAST_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Topics any client may publish to with the ringcast.v1 publish op,
    /// beside those its token's publish claim allows: a name, or a prefix
    /// ending in * (repeatable, or comma-separated) [default: none].
    #[arg(long, env = "RINGCAST_CLIENT_PUBLISH", value_delimiter = ',')]
    pub client_publish: Vec<String>,
    /// Whether the sender of a client publish or room message receives it
    /// too (when subscribed): true or false.
    #[arg(long, env = "RINGCAST_CLIENT_PUBLISH_ECHO", default_value_t = true, action = ArgAction::Set)]
    pub client_publish_echo: bool,
    /// Raw rooms: topics (a name, or a prefix ending in *) where a
    /// raw-mode connection's every text or binary message is published
    /// verbatim to its topics that match (repeatable, or comma-separated)
    /// [default: none].
    #[arg(long = "room", env = "RINGCAST_ROOM", value_delimiter = ',')]
    #[serde(rename = "room")]
    pub rooms: Vec<String>,
    /// Client messages one connection may send per second: publishes, rpc
    /// calls, room messages and control messages (subscribe, unsubscribe,
    /// refresh, and invalid ones), allowed or not (a token bucket holding
    /// one second's worth); over
    /// it the message is dropped and answered "rate limited", past ten
    /// times it within a second the connection is closed with 1008.
    #[arg(
        long,
        env = "RINGCAST_CLIENT_MESSAGES_PER_SEC",
        default_value_t = 100.0
    )]
    pub client_messages_per_sec: f64,
    /// Bytes of those messages one connection may send per second, as
    /// above.
    #[arg(long, env = "RINGCAST_CLIENT_BYTES_PER_SEC", default_value_t = 1 << 20, value_parser = count::<u64>)]
    pub client_bytes_per_sec: u64,
    /// Bytes one connection's compressed (permessage-deflate) messages may
    /// inflate to per second (a token bucket holding one second's worth);
    /// past it the connection is closed with 1008. 0: no budget.
    #[arg(long, env = "RINGCAST_MAX_INFLATE_BYTES_PER_SEC", default_value_t = 16 << 20, value_parser = count::<u64>)]
    pub max_inflate_bytes_per_sec: u64,
    /// Base URL of the backend's hooks (http://): each is a POST of JSON
    /// to URL/connect, URL/publish, URL/rpc, URL/disconnect, URL/presence
    /// or URL/channels.
    #[arg(long, env = "RINGCAST_HOOK_URL")]
    pub hook_url: Option<String>,
    /// Which hooks are called: connect, publish, rpc, disconnect,
    /// presence, channels (repeatable, or comma-separated) [default:
    /// none].
    #[arg(long, env = "RINGCAST_HOOKS", value_delimiter = ',', value_enum)]
    pub hooks: Vec<HookKind>,
    /// Longest wait for a hook's answer; past it a handshake gets 503, an
    /// rpc or publish an error.
    #[arg(long, env = "RINGCAST_HOOK_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub hook_timeout: Duration,
    /// Hook requests in flight at most; more wait their turn, within
    /// their timeout.
    #[arg(long, env = "RINGCAST_HOOK_CONCURRENCY", default_value_t = 256, value_parser = count::<usize>)]
    pub hook_concurrency: usize,
    /// Receive buffers per worker (a power of two up to 32768), shared by
    /// all its connections.
    #[arg(long, env = "RINGCAST_READ_BUFFERS", default_value_t = 1024, value_parser = count::<u16>)]
    pub read_buffers: u16,
    /// Size of each receive buffer, in bytes.
    #[arg(long, env = "RINGCAST_READ_BUFFER_SIZE", default_value_t = 4096, value_parser = count::<u32>)]
    pub read_buffer_size: u32,
    /// Queue bounds and broker timing (see [`Bounds`]).
    #[command(flatten)]
    #[serde(flatten)]
    pub bounds: Bounds,
    /// Presence topics and bounds (see [`Presence`]).
    #[command(flatten)]
    #[serde(flatten)]
    pub presence: Presence,
}

impl Default for Serve {
    fn default() -> Self {
        Self::parse_from(["serve"])
    }
}

/// Parses the command line, layering the `--config` file under flags and
/// environment variables.
///
/// # Errors
/// A message for an unreadable or invalid file or an unknown key; clap
/// errors (bad flag values, including ones from the file or environment)
/// as `clap::Error` text.
pub fn parse(args: Vec<OsString>) -> Result<Cli, CliError> {
    let first = Cli::command().try_get_matches_from(&args)?;
    let (depth, serve) = match first.subcommand() {
        Some(("serve", m)) => (2, m),
        Some(("config", m)) => match m.subcommand() {
            Some(("print", m)) => (3, m),
            _ => return Ok(Cli::from_arg_matches(&first)?),
        },
        _ => return Ok(Cli::from_arg_matches(&first)?),
    };
    let Some(path) = serve.get_one::<PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&first)?);
    };
    let from_file = file_args(path, |id| serve.value_source(id))?;
    let mut layered = args[..depth.min(args.len())].to_vec();
    layered.extend(from_file);
    layered.extend(args.into_iter().skip(depth));
    Ok(Cli::from_arg_matches(
        &Cli::command().try_get_matches_from(layered)?,
    )?)
}

/// A command-line failure: clap's own (printed as clap formats it) or ours.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags or values; `--help` and `--version` also land here.
    Clap(clap::Error),
    /// A config file problem, with the file named.
    Config(String),
}

impl From<clap::Error> for CliError {
    fn from(e: clap::Error) -> Self {
        CliError::Clap(e)
    }
}

/// The config file's settings as flags, leaving out those the command line
/// or the environment already set (`source` tells, by argument id).
fn file_args(
    path: &Path,
    source: impl Fn(&str) -> Option<ValueSource>,
) -> Result<Vec<OsString>, CliError> {
    let fail = |why: String| CliError::Config(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(e.to_string()))?;
    let command = Serve::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| fail(format!("unknown key {key:?} (keys are serve flag names)")))?;
        if matches!(
            source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{key}");
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(fail(format!("{key}: unexpected {}", other.type_str()))),
        };
        match (&value, arg.get_action()) {
            (toml::Value::Boolean(on), ArgAction::SetTrue) => {
                if *on {
                    out.push(flag.into());
                }
            }
            (toml::Value::Array(items), ArgAction::Append) => {
                for item in items {
                    out.push(format!("{flag}={}", scalar(item)?).into());
                }
            }
            // A table for a repeatable KEY=VALUE flag (`[history]`).
            (toml::Value::Table(items), ArgAction::Append) => {
                for (name, item) in items {
                    out.push(format!("{flag}={name}={}", scalar(item)?).into());
                }
            }
            (_, ArgAction::Set) => out.push(format!("{flag}={}", scalar(&value)?).into()),
            _ => {
                return Err(fail(format!(
                    "{key}: unexpected {} for this key",
                    value.type_str()
                )))
            }
        }
    }
    Ok(out)
}

impl Serve {
    /// The effective configuration as TOML, keys named as flags.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the serve flags serialize to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every serve flag appears in the annotated example config, and the
    /// example parses into a valid configuration.
    #[test]
    fn the_example_config_covers_every_flag() {
        let example = include_str!("../../../deploy/ringcast.toml");
        for arg in Serve::command().get_arguments() {
            let Some(long) = arg.get_long().filter(|l| *l != "config") else {
                continue;
            };
            assert!(
                example.contains(&format!("\n{long} = "))
                    || example.contains(&format!("\n# {long} = ")),
                "deploy/ringcast.toml does not mention {long}"
            );
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/ringcast.toml");
        let cli = parse(vec![
            "ringcast".into(),
            "serve".into(),
            "--config".into(),
            path.into(),
        ])
        .unwrap_or_else(|e| panic!("{e:?}"));
        let Some(Command::Serve(serve)) = cli.command else {
            panic!("not serve")
        };
        serve.validate().unwrap();
    }

    #[test]
    fn printed_config_reads_back_as_a_config_file() {
        let serve =
            Serve::parse_from(["serve", "--workers", "3", "--trusted-proxies", "10.0.0.0/8"]);
        let printed = serve.to_toml();
        let table: toml::Table = printed.parse().unwrap();
        assert_eq!(table["workers"].as_integer(), Some(3));
        assert_eq!(table["idle-timeout"].as_str(), Some("2m"));
        let args = file_args_from(&printed);
        let again = Serve::parse_from(std::iter::once(OsString::from("serve")).chain(args));
        assert_eq!(again.to_toml(), printed);
    }

    #[test]
    fn history_rules_come_from_flags_or_a_table() {
        let serve = Serve::parse_from(["serve", "--history", "chat.*=200/10m,user.*=5/1h"]);
        let printed = serve.to_toml();
        assert!(
            printed.contains("[history]\n\"chat.*\" = \"200/10m\"\n\"user.*\" = \"5/1h\""),
            "{printed}"
        );
        let again = Serve::parse_from(
            std::iter::once(OsString::from("serve")).chain(file_args_from(&printed)),
        );
        assert_eq!(again.history, serve.history);
        assert_eq!(again.engine_config().unwrap().history.len(), 2);
        let bad = Serve::try_parse_from(["serve", "--history", "chat.*=0/10m"]);
        assert!(bad.unwrap_err().to_string().contains("SIZE"));
    }

    fn file_args_from(text: &str) -> Vec<OsString> {
        // One file per call: the tests run in parallel in one process.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ringcast-cli-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::write(&dir, text).unwrap();
        let args = file_args(&dir, |_| None).unwrap();
        std::fs::remove_file(&dir).unwrap();
        args
    }
}
