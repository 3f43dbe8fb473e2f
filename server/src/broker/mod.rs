//! The Redis broker (`--broker redis://HOST:PORT[/DB]`, repeatable): N
//! nodes as one service. See the README's "Cluster" section.
//!
//! - [`shards`]: which instance holds a topic (jump hash over FNV-1a);
//! - [`script`]: key and channel names, payloads, the Lua scripts;
//! - `shard`: one instance's connections, subscriptions and messages,
//!   reconnected with backoff;
//! - `interest`: the workers' topic interest, counted per topic and
//!   batched into SUBSCRIBE / UNSUBSCRIBE per instance;
//! - `reads`: positions, replays and history pages read from streams;
//! - `metrics`: the broker's Prometheus series.
//!
//! Everything here runs on the server's tokio runtime; the workers send
//! their interest and read events up the upstream channel
//! (`crate::upstream`), which forwards them here ([`Sender`]).

mod interest;
mod messages;
mod metrics;
mod reads;
pub mod script;
mod shard;
pub mod shards;

use redis::aio::MultiplexedConnection;
use ringcast_engine::history::Epoch;
use ringcast_engine::history::Page;
use ringcast_engine::upstream::Event;
use ringcast_engine::{Content, Handle};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long one Redis command may take before the publish gets 503.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the upstream loop forwards the workers' broker events
/// ([`Event::Interest`], [`Event::Recover`]); unbounded, so that the loop
/// never waits on the broker.
pub type Sender = mpsc::UnboundedSender<Event>;

/// The receiving end, until [`Broker::start`] takes it.
pub type Receiver = mpsc::UnboundedReceiver<Event>;

/// The forwarding channel's two ends.
pub fn channel() -> (Sender, Receiver) {
    mpsc::unbounded_channel()
}

/// What the node needs to reach its brokers besides their URLs (no
/// `Debug`: it holds a secret).
#[derive(Default)]
pub struct Access {
    /// The AUTH password for every broker (`--broker-password-file`).
    pub password: Option<String>,
    /// PEM CA certificates trusted for `rediss://` brokers instead of the
    /// system's store (`--broker-ca-file`).
    pub ca: Option<Vec<u8>>,
}

/// Why a broker operation failed: the API answers 503.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// What a publish through the broker got.
pub struct Published {
    /// Offsets of the topics that keep history.
    pub offsets: Vec<(String, u64)>,
    /// Nodes subscribed to the busiest of the topics' channels (PUBLISH's
    /// receiver count).
    pub nodes: u64,
}

/// The broker client: the Redis instances and what the node shares with
/// them.
pub struct Broker {
    shards: Vec<Arc<shard::Shard>>,
    handle: Handle,
    metrics: metrics::Metrics,
}

impl Broker {
    /// Connects to every instance in `urls` (in the background: an
    /// instance down at start is retried with backoff) with `password`
    /// when given, and starts the interest router on `events`.
    ///
    /// # Errors
    /// A URL that does not parse or is not `redis://`.
    pub fn start(
        urls: &[String],
        access: &Access,
        handle: Handle,
        events: Receiver,
    ) -> Result<Arc<Self>, String> {
        if urls.iter().any(|u| u.starts_with("rediss://")) {
            // rustls needs one process-wide crypto provider; a second call
            // (already installed) changes nothing.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut shards = Vec::with_capacity(urls.len());
        let mut receivers = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let (shard, ops) = shard::Shard::new(index, url, access)?;
            shards.push(Arc::new(shard));
            receivers.push(ops);
        }
        let broker = Arc::new(Self {
            shards,
            handle,
            metrics: metrics::Metrics::new(urls.len()),
        });
        for (shard, ops) in broker.shards.iter().zip(receivers) {
            tokio::spawn(shard::run(broker.clone(), shard.clone(), ops));
        }
        tokio::spawn(interest::route(broker.clone(), events));
        Ok(broker)
    }

    fn shard_of(&self, topic: &str) -> &Arc<shard::Shard> {
        &self.shards[shards::shard_of(topic, self.shards.len())]
    }

    /// A command connection to `shard`, if it is up.
    fn connection(&self, shard: &shard::Shard) -> Result<MultiplexedConnection, Unavailable> {
        shard
            .connection()
            .ok_or_else(|| Unavailable(format!("broker {} is unreachable", shard.name)))
    }

    /// Runs `command` on `shard` within [`TIMEOUT`]; a failure tells the
    /// shard to reconnect when the connection broke.
    async fn run<T>(
        &self,
        shard: &shard::Shard,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(TIMEOUT, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    shard.broken();
                }
                Err(Unavailable(format!("broker {}: {e}", shard.name)))
            }
            Err(_) => {
                shard.broken();
                Err(Unavailable(format!("broker {} timed out", shard.name)))
            }
        }
    }

    /// Publishes one message: one atomic script per topic on the topic's
    /// instance (offset, stream, TTL, PUBLISH), then one PUBLISH on the
    /// node-wide channel for `users`. Every instance involved must be up
    /// before anything is sent.
    ///
    /// # Errors
    /// An instance down, failing or slower than [`TIMEOUT`].
    pub async fn publish(
        &self,
        topics: &[String],
        users: &[String],
        content: Content,
        body: &[u8],
    ) -> Result<Published, Unavailable> {
        let started = Instant::now();
        let mut connections = Vec::with_capacity(topics.len());
        for topic in topics {
            let shard = self.shard_of(topic);
            connections.push((shard, self.connection(shard)?));
        }
        let node = match users.is_empty() {
            true => None,
            false => Some(self.connection(&self.shards[0])?),
        };
        let script = redis::Script::new(script::PUBLISH);
        let name = script::content_name(content);
        let mut published = Published {
            offsets: Vec::new(),
            nodes: 0,
        };
        for (topic, (shard, mut conn)) in topics.iter().zip(connections) {
            let (size, ttl) = self
                .handle
                .history_rule(topic)
                .map_or((0, 0), |r| (r.size, r.ttl.as_millis() as u64));
            let mut invocation = script.key(script::meta_key(topic));
            invocation
                .key(script::stream_key(topic))
                .arg(script::channel(topic))
                .arg(name)
                .arg(body)
                .arg(size)
                .arg(ttl.max(1))
                .arg(Epoch::random().as_str());
            let (offset, _epoch, nodes): (u64, String, u64) =
                self.run(shard, invocation.invoke_async(&mut conn)).await?;
            if size > 0 {
                published.offsets.push((topic.clone(), offset));
            }
            published.nodes = published.nodes.max(nodes);
        }
        if let Some(mut conn) = node {
            let header = json!({"op": "publish", "users": users, "content": name});
            let nodes = self.node_message(&mut conn, header, body).await?;
            published.nodes = published.nodes.max(nodes);
        }
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(published)
    }

    /// Sends `header` and `body` on the node-wide channel; returns how
    /// many nodes got it.
    async fn node_message(
        &self,
        conn: &mut MultiplexedConnection,
        header: serde_json::Value,
        body: &[u8],
    ) -> Result<u64, Unavailable> {
        let payload = script::node_payload(header, body);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(script::NODE_CHANNEL).arg(payload);
        self.run(&self.shards[0], publish.query_async(conn)).await
    }

    /// Sends a broadcast to every node; returns how many got it.
    ///
    /// # Errors
    /// The first instance down, failing or slow.
    pub async fn broadcast(&self, content: Content, body: &[u8]) -> Result<u64, Unavailable> {
        let mut conn = self.connection(&self.shards[0])?;
        let header = json!({"op": "broadcast", "content": script::content_name(content)});
        self.node_message(&mut conn, header, body).await
    }

    /// Closes the users' connections on every node; returns how many
    /// nodes got the request.
    ///
    /// # Errors
    /// The first instance down, failing or slow.
    pub async fn disconnect(
        &self,
        users: &[String],
        code: u16,
        reason: &str,
    ) -> Result<u64, Unavailable> {
        let mut conn = self.connection(&self.shards[0])?;
        let header = json!({"op": "disconnect", "users": users, "code": code, "reason": reason});
        self.node_message(&mut conn, header, b"").await
    }

    /// Up to `limit` messages of `topic` after `since`, from its stream.
    ///
    /// # Errors
    /// The topic's instance down, failing or slow, or an entry that is
    /// not what it says.
    pub async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Option<Page>, Unavailable> {
        let Some(ttl) = self.handle.history_rule(topic).map(|r| r.ttl) else {
            return Ok(None);
        };
        let shard = self.shard_of(topic);
        let read = reads::read(self, shard, topic, ttl, Some(since.unwrap_or(0)), limit).await?;
        Ok(Some(read.page(topic)))
    }

    /// `{"state":"up"|"down"|"degraded","brokers":[{"name":…,"up":…}]}`
    /// for `/healthz`.
    pub fn health(&self) -> serde_json::Value {
        let brokers: Vec<_> = self
            .shards
            .iter()
            .map(|s| json!({"name": s.name, "up": s.is_up()}))
            .collect();
        let up = self.shards.iter().filter(|s| s.is_up()).count();
        let state = match up {
            n if n == self.shards.len() => "up",
            0 => "down",
            _ => "degraded",
        };
        json!({"state": state, "brokers": brokers})
    }

    /// The broker's series in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }
}

/// Keeps `Mutex` poisoning out of the way: a panic aborts the process.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
