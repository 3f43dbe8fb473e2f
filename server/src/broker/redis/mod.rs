//! The Redis broker: N nodes as one service, behind [`super::Broker`],
//! over standalone instances (`--broker redis://HOST:PORT[/DB]`,
//! repeatable), a Redis Cluster (`redis+cluster://`) or a master under
//! Sentinel (`redis+sentinel://`); [`Topology`] reads the flag. See the
//! README's "Cluster over Redis" section. Redis assigns the positions
//! (the publish script); each message comes back on its topic's channel
//! and is handed to the workers with `Handle::deliver`.
//!
//! - `urls`: the `--broker` values as a [`Topology`];
//! - [`shards`]: which instance holds a topic (jump hash over FNV-1a);
//! - [`slots`]: a key's Redis Cluster slot (CRC16, hash tags);
//! - [`script`]: key and channel names per layout, payloads, the Lua
//!   scripts;
//! - `conn`: where a command goes (an instance, or a slot's master);
//! - `shard`: one instance's connections, subscriptions and messages,
//!   reconnected with backoff (behind Sentinel: to the master found
//!   anew, see `sentinel`);
//! - `cluster`: the Redis Cluster's routing, slot map and sharded
//!   subscriptions;
//! - `interest`: the workers' topic interest, counted per topic and
//!   coalesced into SUBSCRIBE / UNSUBSCRIBE per instance, and the bounded
//!   history read queues;
//! - `reads`: positions, replays and history pages read from streams;
//! - `metrics`: the broker's Prometheus series.
//!
//! Everything here runs on the server's tokio runtime; the workers' sink
//! (`crate::upstream`) hands their interest and read events to
//! [`Interest`] on the workers' threads.
//!
//! Bounds: a command gets no answer within `--broker-timeout`: the
//! instance is marked down (`/healthz`), its connections are dropped and
//! made again (the subscriptions resynced); each instance is PINGed every
//! `--broker-ping-interval` so an idle node notices a stalled Redis too.
//! Commands in flight (publishes, reads) are at most `--broker-queue`, of
//! at most `--broker-queue-bytes` bytes; past them the API answers 503.

mod cluster;
mod conn;
mod interest;
mod messages;
mod metrics;
mod presence;
mod reads;
pub mod script;
mod sentinel;
mod shard;
pub mod shards;
pub mod slots;
mod urls;

pub use interest::{Interest, Limits as InterestLimits};
pub use urls::Topology;

use super::{Message, Published, Reach, Unavailable};
use conn::{Backend, Conn, On, Target};
use futures_util::future::BoxFuture;
use ringcast_engine::history::Epoch;
use ringcast_engine::history::Page;
use ringcast_engine::{Content, Handle};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The broker's timing and bounds, from the flags.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Longest wait for one Redis command's answer (`--broker-timeout`);
    /// past it the command fails (503) and the instance reconnects.
    pub timeout: Duration,
    /// Time between PINGs of each instance (`--broker-ping-interval`).
    pub ping_interval: Duration,
    /// Largest message body taken from Redis (`--max-message-size`), in
    /// bytes.
    pub max_message: usize,
    /// Commands in flight at most (`--broker-queue`).
    pub queue: usize,
    /// Their message bytes at most (`--broker-queue-bytes`).
    pub queue_bytes: usize,
    /// How long Redis keeps a node's presence members without a refresh
    /// (`--presence-ttl`); refreshed every third of it.
    pub presence_ttl: Duration,
    /// `--presence-join-leave-max`: joins and leaves are published while
    /// a topic has at most this many members.
    pub presence_max: usize,
}

/// What the node needs to reach its brokers besides their URLs (no
/// `Debug`: it holds a secret).
#[derive(Default, Clone)]
pub struct Access {
    /// The AUTH password for every broker (`--broker-password-file`).
    pub password: Option<String>,
    /// PEM CA certificates trusted for `rediss://` brokers instead of the
    /// system's store (`--broker-ca-file`).
    pub ca: Option<Vec<u8>>,
}

/// The broker client: the Redis instances and what the node shares with
/// them.
pub struct Redis {
    backend: Backend,
    /// The names and commands used on this topology.
    layout: script::Layout,
    /// Where the presence leaves of reaped nodes go.
    webhooks: Arc<crate::webhooks::Webhooks>,
    handle: Handle,
    metrics: Arc<metrics::Metrics>,
    interest: Arc<Interest>,
    settings: Settings,
    /// Commands in flight and their bytes.
    inflight: Mutex<(usize, usize)>,
}

/// A command's share of `--broker-queue`, given back when dropped.
struct Slot<'a> {
    broker: &'a Redis,
    bytes: usize,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut inflight = lock(&self.broker.inflight);
        inflight.0 -= 1;
        inflight.1 -= self.bytes;
    }
}

impl Redis {
    /// Starts the broker over `topology`, with `access`'s password and
    /// CA certificates when given, taking its interest and reads from
    /// `interest` (made for [`Topology::queues`] queues). Standalone
    /// instances are first asked whether they are cluster nodes (within
    /// `--broker-timeout`; one that does not answer is taken as it is and
    /// retried in the background with backoff).
    ///
    /// # Errors
    /// A URL the client does not take, CA certificates it cannot read, or
    /// a `redis://` URL at a Redis Cluster node (one line naming the
    /// scheme to use).
    pub async fn start(
        topology: &Topology,
        access: &Access,
        settings: Settings,
        handle: Handle,
        interest: Arc<Interest>,
        webhooks: Arc<crate::webhooks::Webhooks>,
    ) -> Result<Arc<Self>, String> {
        if topology.tls() {
            // rustls needs one process-wide crypto provider; a second call
            // (already installed) changes nothing.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let metrics = interest.metrics().clone();
        let (backend, layout) = match topology {
            Topology::Instances(urls) => {
                let mut shards = Vec::with_capacity(urls.len());
                for (index, url) in urls.iter().enumerate() {
                    let up = metrics.up.with_label_values(&[index.to_string()]);
                    let shard = shard::Shard::new(index, url, access, settings.timeout, up)?;
                    shard.refuse_cluster_node().await?;
                    shards.push(Arc::new(shard));
                }
                (Backend::Instances(shards), script::Layout::Instances)
            }
            Topology::Cluster { seeds, tls } => {
                let cluster = cluster::Cluster::new(seeds, *tls, access, settings, &metrics);
                (Backend::Cluster(Arc::new(cluster)), script::Layout::Cluster)
            }
            Topology::Sentinel {
                sentinels,
                master,
                tls,
            } => {
                let failovers = metrics.failovers.clone();
                let sentinel = sentinel::Sentinel::new(sentinels, master, *tls, access, failovers)?;
                let sentinel = Arc::new(sentinel);
                sentinel.watch();
                let up = metrics.up.with_label_values(&["0"]);
                let shard = shard::Shard::behind(sentinel, access, settings.timeout, up)?;
                (
                    Backend::Instances(vec![Arc::new(shard)]),
                    script::Layout::Sentinel,
                )
            }
        };
        interest.set_handle(handle.clone());
        let broker = Arc::new(Self {
            backend,
            layout,
            webhooks,
            handle,
            metrics,
            interest,
            settings,
            inflight: Mutex::new((0, 0)),
        });
        match &broker.backend {
            Backend::Instances(shards) => {
                for shard in shards {
                    let reads = broker
                        .interest
                        .take_reads(shard.index)
                        .ok_or("the broker was started twice")?;
                    tokio::spawn(shard::run(broker.clone(), shard.clone(), reads));
                }
            }
            Backend::Cluster(cluster) => {
                let reads = broker
                    .interest
                    .take_reads(0)
                    .ok_or("the broker was started twice")?;
                tokio::spawn(cluster::run(broker.clone(), cluster.clone(), reads));
            }
        }
        let changes = broker
            .interest
            .presence
            .take()
            .ok_or("the broker was started twice")?;
        tokio::spawn(presence::run(broker.clone(), changes));
        Ok(broker)
    }

    /// A slot for one command of `bytes` within `--broker-queue` and
    /// `--broker-queue-bytes`.
    ///
    /// # Errors
    /// Past either bound (counted).
    fn slot(&self, bytes: usize) -> Result<Slot<'_>, Unavailable> {
        let mut inflight = lock(&self.inflight);
        if inflight.0 >= self.settings.queue || inflight.1 + bytes > self.settings.queue_bytes {
            drop(inflight);
            self.metrics.refused.with_label_values(&["commands"]).inc();
            return Err(Unavailable(
                "broker overloaded: --broker-queue is full".into(),
            ));
        }
        inflight.0 += 1;
        inflight.1 += bytes;
        Ok(Slot {
            broker: self,
            bytes,
        })
    }

    /// Where the commands of `topic` go (the node-wide channel's without
    /// one): its instance's connection, or the cluster client.
    ///
    /// # Errors
    /// That instance, or the cluster, is not connected.
    fn target(&self, topic: Option<&str>) -> Result<Target<'_>, Unavailable> {
        match &self.backend {
            Backend::Instances(shards) => {
                let shard = &shards[topic.map_or(0, |t| shards::shard_of(t, shards.len()))];
                let conn = shard
                    .connection()
                    .ok_or_else(|| Unavailable(format!("broker {} is unreachable", shard.name)))?;
                Ok(Target {
                    on: On::Shard(shard),
                    conn: Conn::Plain(conn),
                })
            }
            Backend::Cluster(cluster) => {
                let key = match topic {
                    Some(topic) => self.layout.meta_key(topic),
                    None => script::NODE_CHANNEL.to_owned(),
                };
                Ok(Target {
                    on: On::Cluster(cluster),
                    conn: Conn::Cluster(cluster::Routed::new(cluster, &key)),
                })
            }
        }
    }

    /// Runs `command` within `--broker-timeout`; a timeout or a broken
    /// connection marks an instance down and reconnects it, or has the
    /// cluster's slot map read again.
    async fn run<T>(
        &self,
        on: &On<'_>,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(self.settings.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if !e.is_timeout() => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    on.broken();
                }
                Err(Unavailable(format!("broker {}: {e}", on.name())))
            }
            _ => {
                self.metrics.timeouts.inc();
                on.broken();
                Err(Unavailable(format!("broker {} timed out", on.name())))
            }
        }
    }

    /// Publishes one message: one atomic script per topic on the topic's
    /// instance (offset, stream, TTL, PUBLISH), then one PUBLISH on the
    /// node-wide channel for `users`. Every instance involved must be up
    /// before anything is sent.
    ///
    /// # Errors
    /// An instance down, failing or slower than `--broker-timeout`, or
    /// `--broker-queue` full.
    async fn send_publish(
        &self,
        topics: &[String],
        users: &[String],
        content: Content,
        body: &[u8],
    ) -> Result<Published, Unavailable> {
        let _slot = self.slot(body.len())?;
        let started = Instant::now();
        let mut targets = Vec::with_capacity(topics.len());
        for topic in topics {
            targets.push(self.target(Some(topic))?);
        }
        let node = match users.is_empty() {
            true => None,
            false => Some(self.target(None)?),
        };
        let script = redis::Script::new(script::PUBLISH);
        let name = script::content_name(content);
        let layout = self.layout;
        let (mut offsets, mut reached) = (Vec::new(), 0);
        for (topic, mut target) in topics.iter().zip(targets) {
            let (size, ttl) = self
                .handle
                .history_rule(topic)
                .map_or((0, 0), |r| (r.size, r.ttl.as_millis() as u64));
            let mut invocation = script.key(layout.meta_key(topic));
            invocation
                .key(layout.stream_key(topic))
                .arg(layout.channel(topic))
                .arg(name)
                .arg(body)
                .arg(size)
                .arg(ttl.max(1))
                .arg(Epoch::random().as_str())
                .arg(layout.publish_command())
                .arg(layout.guard());
            let (offset, _epoch, nodes): (u64, String, u64) = self
                .run(&target.on, invocation.invoke_async(&mut target.conn))
                .await?;
            if size > 0 {
                offsets.push((topic.clone(), offset));
            }
            reached = reached.max(nodes);
        }
        if let Some(target) = node {
            let header = json!({"op": "publish", "users": users, "content": name});
            let nodes = self.node_message(target, header, body).await?;
            reached = reached.max(nodes);
        }
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        // Nodes subscribed to the busiest of the channels (PUBLISH's
        // receiver count).
        Ok(Published {
            offsets,
            reach: Reach::Nodes(reached),
        })
    }

    /// Sends `header` and `body` on the node-wide channel (through
    /// `target`, from [`Redis::target`] without a topic); returns how
    /// many nodes got it.
    async fn node_message(
        &self,
        mut target: Target<'_>,
        header: serde_json::Value,
        body: &[u8],
    ) -> Result<u64, Unavailable> {
        let payload = script::node_payload(header, body);
        let mut publish = redis::cmd(self.layout.publish_command());
        publish.arg(script::NODE_CHANNEL).arg(payload);
        self.run(&target.on, publish.query_async(&mut target.conn))
            .await
    }

    /// Sends a broadcast to every node; returns how many got it.
    ///
    /// # Errors
    /// The first instance down, failing or slow.
    async fn send_broadcast(&self, content: Content, body: &[u8]) -> Result<u64, Unavailable> {
        let _slot = self.slot(body.len())?;
        let target = self.target(None)?;
        let header = json!({"op": "broadcast", "content": script::content_name(content)});
        self.node_message(target, header, body).await
    }

    /// Closes the users' connections on every node; returns how many
    /// nodes got the request.
    ///
    /// # Errors
    /// The first instance down, failing or slow.
    async fn send_disconnect(
        &self,
        users: &[String],
        code: u16,
        reason: &str,
    ) -> Result<u64, Unavailable> {
        let _slot = self.slot(0)?;
        let target = self.target(None)?;
        let header = json!({"op": "disconnect", "users": users, "code": code, "reason": reason});
        self.node_message(target, header, b"").await
    }

    /// Up to `limit` messages of `topic` after `since`, from its stream.
    ///
    /// # Errors
    /// The topic's instance down, failing or slow, or an entry that is
    /// not what it says.
    async fn read_history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Option<Page>, Unavailable> {
        let Some(ttl) = self.handle.history_rule(topic).map(|r| r.ttl) else {
            return Ok(None);
        };
        let _slot = self.slot(0)?;
        let read = reads::read(self, topic, ttl, Some(since.unwrap_or(0)), limit).await?;
        Ok(Some(read.page(topic)))
    }

    /// `{"state":"up"|"down"|"degraded","brokers":[{"name":…,"up":…}]}`
    /// for `/healthz`.
    fn health_json(&self) -> serde_json::Value {
        let shards = match &self.backend {
            Backend::Instances(shards) => shards,
            Backend::Cluster(cluster) => return cluster.health(),
        };
        let brokers: Vec<_> = shards
            .iter()
            .map(|s| match &s.sentinel {
                Some(sentinel) => json!({
                    "name": s.name, "up": s.is_up(), "mode": "sentinel",
                    "master": sentinel.current(),
                }),
                None => json!({"name": s.name, "up": s.is_up()}),
            })
            .collect();
        let up = shards.iter().filter(|s| s.is_up()).count();
        let state = match up {
            n if n == shards.len() => "up",
            0 => "down",
            _ => "degraded",
        };
        json!({"state": state, "brokers": brokers})
    }
}

impl super::Broker for Redis {
    fn publish<'a>(
        &'a self,
        message: Message<'a>,
    ) -> BoxFuture<'a, Result<Published, Unavailable>> {
        // The broker's payload carries no sender yet: across a cluster a
        // client publish has no `from`, and its sender gets it back.
        Box::pin(async move {
            let Message {
                topics,
                users,
                content,
                body,
                ..
            } = message;
            self.send_publish(&topics, &users, content, body).await
        })
    }

    fn broadcast<'a>(
        &'a self,
        content: Content,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<Reach, Unavailable>> {
        Box::pin(async move { self.send_broadcast(content, body).await.map(Reach::Nodes) })
    }

    fn disconnect<'a>(
        &'a self,
        users: Vec<String>,
        code: u16,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Reach, Unavailable>> {
        Box::pin(async move {
            let nodes = self.send_disconnect(&users, code, reason).await?;
            Ok(Reach::Nodes(nodes))
        })
    }

    fn history<'a>(
        &'a self,
        topic: &'a str,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Page>, Unavailable>> {
        Box::pin(self.read_history(topic, since, limit))
    }

    fn presence<'a>(
        &'a self,
        topic: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ringcast_engine::presence::Page, Unavailable>> {
        Box::pin(self.read_presence(topic, cursor, limit))
    }

    fn presence_stats<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<ringcast_engine::presence::Stats, Unavailable>> {
        Box::pin(self.read_presence_stats(topic))
    }

    fn depart(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.presence_depart())
    }

    fn health(&self) -> Option<serde_json::Value> {
        Some(self.health_json())
    }

    fn metrics_text(&self) -> String {
        self.metrics.render()
    }
}

/// Keeps `Mutex` poisoning out of the way: a panic aborts the process.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
