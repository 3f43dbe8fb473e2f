//! One Redis instance: a command connection (multiplexed, for scripts and
//! PUBLISH) and a subscriber connection, supervised by one task that
//! reconnects with backoff, subscribes again to every channel the node
//! holds, hands each message to the workers, applies the node's interest
//! changes ([`super::Interest`]) and starts the history reads queued for
//! it, in order. Every command it sends, and a PING every
//! `--broker-ping-interval`, must answer within `--broker-timeout`, else
//! the instance is marked down and both connections are made again.

use super::interest::Changes;
use super::messages::Offsets;
use super::{lock, script, Redis};
use futures_util::StreamExt;
use prometheus::IntGauge;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};
use ringcast_engine::upstream::Recover;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;
/// First and longest wait between reconnects.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// History reads in flight per instance at most; the next one waits in
/// the read queue (`--broker-read-queue`) until one is done.
pub(super) const READS_IN_FLIGHT: usize = 64;

/// One instance, as the publishers see it.
pub struct Shard {
    /// Index among the `--broker` flags.
    pub index: usize,
    /// `HOST:PORT/DB`, for logs and `/healthz` (never the password).
    pub name: String,
    /// The instance's client; behind Sentinel, the master last found.
    client: Mutex<Client>,
    /// The sentinels that name the instance, for `redis+sentinel://`.
    pub sentinel: Option<Arc<super::sentinel::Sentinel>>,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// `ringcast_broker_up` for this shard.
    gauge: IntGauge,
    /// `--broker-timeout`.
    timeout: Duration,
    /// Woken when a command found the connection broken or slow.
    broken: Notify,
    /// History reads in flight.
    reads: Arc<Semaphore>,
}

impl Shard {
    /// The shard for `url` (`redis://[:PASSWORD@]HOST:PORT[/DB]`, or
    /// `rediss://` for TLS), with `access`'s password and, over TLS, its
    /// CA certificates when given; `timeout` bounds every command and
    /// `gauge` shows whether it is up.
    ///
    /// # Errors
    /// A URL the client does not take, or CA certificates it cannot read.
    pub fn new(
        index: usize,
        url: &str,
        access: &super::Access,
        timeout: Duration,
        gauge: IntGauge,
    ) -> Result<Self, String> {
        let (client, name) =
            client(url, access, false).map_err(|e| format!("--broker {index}: {e}"))?;
        gauge.set(0);
        Ok(Self {
            index,
            name,
            client: Mutex::new(client),
            sentinel: None,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            gauge,
            timeout,
            broken: Notify::new(),
            reads: Arc::new(Semaphore::new(READS_IN_FLIGHT)),
        })
    }

    /// The master named by `sentinel`'s sentinels, found again at each
    /// connect (see [`Shard::new`] for the rest).
    ///
    /// # Errors
    /// As [`Shard::new`] (the placeholder client before the first
    /// discovery is never connected).
    pub fn behind(
        sentinel: Arc<super::sentinel::Sentinel>,
        access: &super::Access,
        timeout: Duration,
        gauge: IntGauge,
    ) -> Result<Self, String> {
        let mut shard = Self::new(0, "redis://127.0.0.1:1", access, timeout, gauge)?;
        shard.name = format!("sentinel:{}", sentinel.master);
        shard.sentinel = Some(sentinel);
        Ok(shard)
    }

    /// Woken when the sentinels switch the master (never without them).
    async fn switched(&self) {
        match &self.sentinel {
            Some(sentinel) => sentinel.switched.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Refuses an instance that says it is a Redis Cluster node (`INFO
    /// cluster`, `cluster_enabled:1`): its keys would be refused by slot
    /// and its `PUBLISH`es broadcast to every cluster node. An instance
    /// that cannot be asked within `--broker-timeout` is taken (it is
    /// retried in the background).
    ///
    /// # Errors
    /// One line naming the scheme to use.
    pub async fn refuse_cluster_node(&self) -> Result<(), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let client = lock(&self.client).clone();
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let Ok(mut conn) = self.timed("connect", connect).await else {
            return Ok(());
        };
        let mut info = redis::cmd("INFO");
        info.arg("cluster");
        let text: Result<String, _> = self.timed("INFO", info.query_async(&mut conn)).await;
        match text {
            Ok(text) if text.lines().any(|l| l.trim() == "cluster_enabled:1") => Err(format!(
                "--broker redis://{}: this Redis is a Redis Cluster node; use \
                 --broker redis+cluster://HOST:PORT[,HOST:PORT…] (rediss+cluster:// for TLS)",
                self.name
            )),
            _ => Ok(()),
        }
    }

    /// The command connection, while connected.
    pub fn connection(&self) -> Option<MultiplexedConnection> {
        lock(&self.conn).clone()
    }

    /// Whether the instance is connected.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A command found the connection broken or got no answer in time:
    /// mark the instance down at once, stop using the connection, and
    /// have the task reconnect.
    pub fn broken(&self) {
        if lock(&self.conn).take().is_some() {
            self.set_up(None);
            self.broken.notify_one();
        }
    }

    fn set_up(&self, conn: Option<MultiplexedConnection>) {
        let up = conn.is_some();
        *lock(&self.conn) = conn;
        self.up.store(up, Ordering::Release);
        self.gauge.set(i64::from(up));
    }

    /// `command` within `--broker-timeout`, its failure as text.
    async fn timed<T>(
        &self,
        what: &str,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if !e.is_timeout() => Err(format!("{what}: {e}")),
            _ => Err(format!("{what}: no answer within --broker-timeout")),
        }
    }

    /// PINGs on `conn` within `--broker-timeout`.
    async fn ping(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let ping = redis::cmd("PING");
        self.timed("PING", ping.query_async::<redis::Value>(conn))
            .await
            .map(drop)
    }

    async fn connect(&self) -> Result<(redis::aio::PubSub, MultiplexedConnection), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let client = match &self.sentinel {
            Some(sentinel) => {
                let client = sentinel.master_client(self.timeout).await?;
                *lock(&self.client) = client.clone();
                client
            }
            None => lock(&self.client).clone(),
        };
        let mut conn = self
            .timed(
                "connect",
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
        // A stalled Redis still accepts connections: only an answer says
        // it is up.
        self.ping(&mut conn).await?;
        let pubsub = self.timed("connect", client.get_async_pubsub()).await?;
        Ok((pubsub, conn))
    }
}

/// A client for `url` (`redis://[:PASSWORD@]HOST:PORT[/DB]`, or
/// `rediss://` for TLS) and its name `HOST:PORT/DB` (never the password),
/// with `access`'s password and, over TLS, its CA certificates when
/// given; `resp3` for connections that take push messages (sharded
/// pub/sub on a cluster node).
///
/// # Errors
/// A URL the client does not take, or CA certificates it cannot read.
pub fn client(url: &str, access: &super::Access, resp3: bool) -> Result<(Client, String), String> {
    let mut info = url.into_connection_info().map_err(|e| e.to_string())?;
    let mut settings = info.redis_settings().clone();
    if let Some(password) = &access.password {
        settings = settings.set_password(password);
    }
    if resp3 {
        settings = settings.set_protocol(redis::ProtocolVersion::RESP3);
    }
    info = info.set_redis_settings(settings);
    let name = format!("{}/{}", info.addr(), info.redis_settings().db());
    let client = match (&access.ca, url.starts_with("rediss://")) {
        (Some(ca), true) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        _ => Client::open(info),
    }
    .map_err(|e| format!("{name}: {e}"))?;
    Ok((client, name))
}

/// What the task keeps across reconnects.
struct Held {
    /// Topics this instance has the node subscribed to.
    topics: HashSet<String>,
    /// The last offset delivered per topic with history.
    offsets: Offsets,
    /// Whether the instance was ever reached (then a reconnect resyncs).
    reached: bool,
}

/// The shard's task: connect, subscribe, serve, and start again after a
/// failure, until the server exits.
pub async fn run(broker: Arc<Redis>, shard: Arc<Shard>, mut reads: mpsc::Receiver<Recover>) {
    let mut held = Held {
        topics: HashSet::new(),
        offsets: Offsets::default(),
        reached: false,
    };
    let (mut backoff, mut warned) = (BACKOFF.0, false);
    // Behind Sentinel: since when the master has been out of reach.
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        let failure = match shard.connect().await {
            Ok((pubsub, conn)) => {
                (backoff, warned) = (BACKOFF.0, false);
                if let Some(since) = down_since.take().filter(|_| shard.sentinel.is_some()) {
                    let seconds = since.elapsed().as_secs_f64();
                    broker.metrics.without_master.inc_by(seconds);
                }
                serve(&broker, &shard, pubsub, conn, &mut held, &mut reads).await
            }
            Err(e) => e,
        };
        // Once per outage, not once per retry.
        if !warned {
            tracing::warn!(broker = %shard.name, "broker unreachable, retrying with backoff: {failure}");
            warned = true;
        }
        shard.set_up(None);
        down_since.get_or_insert_with(std::time::Instant::now);
        // Wait out the backoff, answering reads (with no position) and
        // letting interest changes go: the reconnect subscribes to what
        // the node holds then.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                () = shard.switched() => break,
                () = broker.interest.wake[shard.index].notified() => {
                    let _ = broker.interest.changes(shard.index);
                }
                read = reads.recv() => match read {
                    None => return,
                    Some(r) => broker.handle.recovered(r.origin, r.topic, None),
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// Subscribes to what the node holds, then serves messages, interest
/// changes, reads and pings until the connection fails; returns why.
async fn serve(
    broker: &Arc<Redis>,
    shard: &Arc<Shard>,
    pubsub: redis::aio::PubSub,
    conn: MultiplexedConnection,
    held: &mut Held,
    reads: &mut mpsc::Receiver<Recover>,
) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let topics = broker.interest.held(shard.index);
    held.offsets.keep(&topics);
    let mut channels: Vec<String> = topics.iter().map(|t| script::channel(t)).collect();
    if shard.index == 0 {
        channels.push(script::NODE_CHANNEL.to_owned());
    }
    if let Err(e) = flush(shard, &mut sink, &mut channels, true).await {
        return e;
    }
    let mut ping_conn = conn.clone();
    shard.set_up(Some(conn));
    tracing::info!(broker = %shard.name, topics = topics.len(), "broker connected");
    if held.reached && !topics.is_empty() {
        broker.metrics.resubscribed.inc_by(topics.len() as u64);
        // Messages published meanwhile through other nodes never reached
        // this one: tell its ringcast.v1 subscribers to resume.
        broker
            .handle
            .resync(topics.iter().cloned().collect(), |_| {});
    }
    held.topics = topics;
    held.reached = true;
    let mut ping = tokio::time::interval(broker.settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let done = tokio::select! {
            message = stream.next() => match message {
                Some(message) => {
                    broker.on_message(&message, &mut held.offsets);
                    Ok(())
                }
                None => Err("connection closed".to_owned()),
            },
            () = broker.interest.wake[shard.index].notified() => {
                apply(broker, shard, &mut sink, held).await
            }
            read = next_read(shard, reads) => match read {
                None => return "server stopping".to_owned(),
                Some((permit, read)) => match apply(broker, shard, &mut sink, held).await {
                    Ok(()) => {
                        start_read(broker, read, permit);
                        Ok(())
                    }
                    Err(e) => {
                        broker.handle.recovered(read.origin, read.topic, None);
                        Err(e)
                    }
                },
            },
            _ = ping.tick() => {
                match shard.ping(&mut ping_conn).await {
                    Ok(_) => shard.timed("PING (subscriber)", sink.ping::<redis::Value>()).await.map(drop),
                    Err(e) => Err(e),
                }
            }
            () = shard.broken.notified() => Err("a command found the connection broken or slow".to_owned()),
            () = shard.switched() => Err("the sentinels switched the master".to_owned()),
        };
        if let Err(why) = done {
            if why.contains("--broker-timeout") {
                broker.metrics.timeouts.inc();
            }
            return why;
        }
    }
}

/// The next queued history read, once one of the [`READS_IN_FLIGHT`]
/// permits is free: the rest wait in the bounded queue. Cancel-safe (a
/// dropped wait frees its permit; `recv` loses nothing). `None` when the
/// server stops.
async fn next_read(
    shard: &Shard,
    reads: &mut mpsc::Receiver<Recover>,
) -> Option<(OwnedSemaphorePermit, Recover)> {
    // The semaphore is never closed.
    let permit = shard.reads.clone().acquire_owned().await.ok()?;
    Some((permit, reads.recv().await?))
}

/// Runs a history read, holding its in-flight `permit` until done.
fn start_read(broker: &Arc<Redis>, read: Recover, permit: OwnedSemaphorePermit) {
    let broker = broker.clone();
    tokio::spawn(async move {
        super::reads::recover(&broker, read).await;
        drop(permit);
    });
}

/// Applies the node's interest changes on this instance: one command per
/// [`CHANNELS_PER_COMMAND`] channels, each within `--broker-timeout`. An
/// overflowed change set asks for a reconnect and resync.
async fn apply(
    broker: &Arc<Redis>,
    shard: &Arc<Shard>,
    sink: &mut redis::aio::PubSubSink,
    held: &mut Held,
) -> Result<(), String> {
    let changes = match broker.interest.changes(shard.index) {
        Changes::Resync => {
            return Err("interest changes past --broker-interest-queue: resync".into())
        }
        Changes::Topics(changes) => changes,
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for (topic, want) in changes {
        match (want, held.topics.contains(&topic)) {
            (true, false) => {
                on.push(script::channel(&topic));
                held.topics.insert(topic);
            }
            (false, true) => {
                off.push(script::channel(&topic));
                held.offsets.forget(&topic);
                held.topics.remove(&topic);
            }
            _ => {}
        }
    }
    flush(shard, sink, &mut on, true).await?;
    flush(shard, sink, &mut off, false).await
}

async fn flush(
    shard: &Shard,
    sink: &mut redis::aio::PubSubSink,
    channels: &mut Vec<String>,
    subscribe: bool,
) -> Result<(), String> {
    for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
        match subscribe {
            true => shard.timed("SUBSCRIBE", sink.subscribe(chunk)).await?,
            false => shard.timed("UNSUBSCRIBE", sink.unsubscribe(chunk)).await?,
        }
    }
    channels.clear();
    Ok(())
}
