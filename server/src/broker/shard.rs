//! One Redis instance: a command connection (multiplexed, for scripts and
//! PUBLISH) and a subscriber connection, supervised by one task that
//! reconnects with backoff, subscribes again to every channel the node
//! holds, hands each message to the workers, and applies the subscription
//! changes and history reads queued for it, in order.

use super::{lock, script, Broker, TIMEOUT};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};
use ringcast_engine::upstream::Recover;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;
/// First and longest wait between reconnects.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Work for a shard's task, applied in order.
pub enum Op {
    /// The node now holds these topics.
    Subscribe(Vec<String>),
    /// The node no longer holds these topics.
    Unsubscribe(Vec<String>),
    /// Read a topic's position (after the subscriptions before it).
    Recover(Recover),
    /// A command failed on a broken connection: reconnect.
    Broken,
}

/// One instance, as the publishers see it.
pub struct Shard {
    /// Index among the `--broker` flags.
    pub index: usize,
    /// `HOST:PORT/DB`, for logs and `/healthz` (never the password).
    pub name: String,
    client: Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    ops: mpsc::UnboundedSender<Op>,
}

impl Shard {
    /// The shard for `url` (`redis://[:PASSWORD@]HOST:PORT[/DB]`, or
    /// `rediss://` for TLS), with `access`'s password and, over TLS, its
    /// CA certificates when given; and the receiving end of its queue.
    ///
    /// # Errors
    /// A URL the client does not take, or CA certificates it cannot read.
    pub fn new(
        index: usize,
        url: &str,
        access: &super::Access,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Op>), String> {
        let mut info = url
            .into_connection_info()
            .map_err(|e| format!("--broker {index}: {e}"))?;
        if let Some(password) = &access.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
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
        .map_err(|e| format!("--broker {name}: {e}"))?;
        let (ops, rx) = mpsc::unbounded_channel();
        let shard = Self {
            index,
            name,
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            ops,
        };
        Ok((shard, rx))
    }

    /// The command connection, while connected.
    pub fn connection(&self) -> Option<MultiplexedConnection> {
        lock(&self.conn).clone()
    }

    /// Whether the instance is connected.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Queues `op` for the shard's task.
    pub fn send(&self, op: Op) {
        let _ = self.ops.send(op);
    }

    /// A command found the connection broken: stop using it, reconnect.
    pub fn broken(&self) {
        if lock(&self.conn).take().is_some() {
            self.send(Op::Broken);
        }
    }

    fn set_up(&self, broker: &Broker, conn: Option<MultiplexedConnection>) {
        let up = conn.is_some();
        *lock(&self.conn) = conn;
        self.up.store(up, Ordering::Release);
        broker
            .metrics
            .up
            .with_label_values(&[self.index.to_string()])
            .set(i64::from(up));
    }

    async fn connect(&self) -> redis::RedisResult<(redis::aio::PubSub, MultiplexedConnection)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = tokio::time::timeout(TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        Ok((pubsub, conn))
    }
}

/// What the task keeps across reconnects.
struct Held {
    /// Topics the node holds on this instance.
    topics: HashSet<String>,
    /// Whether the instance was ever reached (then a reconnect resyncs).
    reached: bool,
}

/// The shard's task: connect, subscribe, serve, and start again after a
/// failure, until the server exits.
pub async fn run(broker: Arc<Broker>, shard: Arc<Shard>, mut ops: mpsc::UnboundedReceiver<Op>) {
    let mut held = Held {
        topics: HashSet::new(),
        reached: false,
    };
    let (mut backoff, mut warned) = (BACKOFF.0, false);
    loop {
        let failure = match shard.connect().await {
            Ok((pubsub, conn)) => {
                (backoff, warned) = (BACKOFF.0, false);
                serve(&broker, &shard, pubsub, conn, &mut held, &mut ops).await
            }
            Err(e) => e.to_string(),
        };
        // Once per outage, not once per retry.
        if !warned {
            tracing::warn!(broker = %shard.name, "broker unreachable, retrying with backoff: {failure}");
            warned = true;
        }
        shard.set_up(&broker, None);
        // Wait out the backoff, still taking subscription changes and
        // answering reads (with no position) meanwhile.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                op = ops.recv() => match op {
                    None => return,
                    Some(op) => apply_offline(&broker, &mut held, op),
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

fn apply_offline(broker: &Broker, held: &mut Held, op: Op) {
    match op {
        Op::Subscribe(topics) => held.topics.extend(topics),
        Op::Unsubscribe(topics) => {
            for topic in &topics {
                held.topics.remove(topic);
            }
        }
        Op::Recover(r) => broker.handle.recovered(r.origin, r.topic, None),
        Op::Broken => {}
    }
}

/// Subscribes to what the node holds, then serves messages and queued
/// work until the connection fails; returns why.
async fn serve(
    broker: &Arc<Broker>,
    shard: &Arc<Shard>,
    pubsub: redis::aio::PubSub,
    conn: MultiplexedConnection,
    held: &mut Held,
    ops: &mut mpsc::UnboundedReceiver<Op>,
) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let mut channels: Vec<String> = held.topics.iter().map(|t| script::channel(t)).collect();
    if shard.index == 0 {
        channels.push(script::NODE_CHANNEL.to_owned());
    }
    for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
        if let Err(e) = sink.subscribe(chunk).await {
            return format!("SUBSCRIBE: {e}");
        }
    }
    shard.set_up(broker, Some(conn));
    tracing::info!(broker = %shard.name, channels = channels.len(), "broker connected");
    if held.reached && !held.topics.is_empty() {
        broker.metrics.resubscribed.inc_by(held.topics.len() as u64);
        // Messages published meanwhile through other nodes never reached
        // this one: tell its ringcast.v1 subscribers to resume.
        broker
            .handle
            .resync(held.topics.iter().cloned().collect(), |_| {});
    }
    held.reached = true;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => broker.on_message(&message),
                None => return "connection closed".to_owned(),
            },
            n = ops.recv_many(&mut batch, 4096) => {
                if n == 0 {
                    return "server stopping".to_owned();
                }
                if let Err(why) = apply(broker, shard, &mut sink, held, &mut batch).await {
                    return why;
                }
            }
        }
    }
}

/// Applies queued work in order: runs of subscription changes become one
/// command per [`CHANNELS_PER_COMMAND`] channels, each awaited before a
/// read that follows it is started.
async fn apply(
    broker: &Arc<Broker>,
    shard: &Arc<Shard>,
    sink: &mut redis::aio::PubSubSink,
    held: &mut Held,
    batch: &mut Vec<Op>,
) -> Result<(), String> {
    let mut subscribe: Vec<String> = Vec::new();
    let mut unsubscribe: Vec<String> = Vec::new();
    for op in batch.drain(..) {
        match op {
            Op::Subscribe(topics) => {
                flush(sink, &mut unsubscribe, false).await?;
                subscribe.extend(topics.iter().map(|t| script::channel(t)));
                held.topics.extend(topics);
            }
            Op::Unsubscribe(topics) => {
                flush(sink, &mut subscribe, true).await?;
                unsubscribe.extend(topics.iter().map(|t| script::channel(t)));
                for topic in &topics {
                    held.topics.remove(topic);
                }
            }
            Op::Recover(request) => {
                flush(sink, &mut subscribe, true).await?;
                flush(sink, &mut unsubscribe, false).await?;
                let (broker, shard) = (broker.clone(), shard.clone());
                tokio::spawn(async move { super::reads::recover(&broker, &shard, request).await });
            }
            Op::Broken => return Err("a command found the connection broken".to_owned()),
        }
    }
    flush(sink, &mut subscribe, true).await?;
    flush(sink, &mut unsubscribe, false).await
}

async fn flush(
    sink: &mut redis::aio::PubSubSink,
    channels: &mut Vec<String>,
    subscribe: bool,
) -> Result<(), String> {
    for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
        let done = match subscribe {
            true => sink.subscribe(chunk).await,
            false => sink.unsubscribe(chunk).await,
        };
        done.map_err(|e| format!("SUBSCRIBE/UNSUBSCRIBE: {e}"))?;
    }
    channels.clear();
    Ok(())
}
