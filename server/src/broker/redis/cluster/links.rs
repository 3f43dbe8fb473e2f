//! The cluster's subscriber task: it reads the slot map (from a known
//! master, else a seed), and holds one RESP3 connection (a link) per master that
//! serves a channel the node wants, `SSUBSCRIBE`d to those channels
//! (each alone: a command's channels must share a slot). It hands the
//! `smessage` pushes to the workers, applies the node's interest changes,
//! starts the history reads, and PINGs every link each
//! `--broker-ping-interval`.
//!
//! Continuity: a channel is *lost* when its link breaks (master killed,
//! stalled past `--broker-timeout`, pushes past the bounded queue), when
//! Redis unsubscribes it (`sunsubscribe` push: its slot moved away), or
//! when the slot map names another master for it. A lost channel waits
//! for a master, retried every [`RETRY`] with the slot map read again;
//! once subscribed on the new master its topic's `ringcast.v1`
//! subscribers are told to resync (they resume from the stream, exactly
//! or with `recovered:false`). Channels whose master did not change are
//! not touched.

use super::super::interest::Changes;
use super::super::messages::Offsets;
use super::super::{lock, reads, script, slots, Redis};
use super::slotmap::SlotMap;
use super::Cluster;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use ringcast_engine::upstream::Recover;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// Pushes (messages, subscription notices) waiting for the task, from
/// every link; past it a link's pushes are refused (counted under
/// `ringcast_broker_refused_total{queue="pushes"}`) and the link is made
/// again, its channels lost.
const PUSHES: usize = 65_536;
/// How often channels without a master are retried.
const RETRY: Duration = Duration::from_millis(100);

/// One master's subscriber connection.
struct Link {
    /// Tells its pushes from those of an earlier link to the same master.
    id: u64,
    conn: MultiplexedConnection,
    /// Set when a push did not fit the queue.
    overflowed: Arc<AtomicBool>,
    channels: HashSet<String>,
}

/// The task's state.
struct Subs {
    broker: Arc<Redis>,
    cluster: Arc<Cluster>,
    /// Whether "unreachable" was logged since the cluster last answered.
    warned: bool,
    links: HashMap<String, Link>,
    /// Each subscribed channel's master.
    placed: HashMap<String, String>,
    /// Wanted channels on no master yet.
    pending: HashSet<String>,
    /// Channels whose continuity was lost: their topics resync once
    /// subscribed again.
    lost: HashSet<String>,
    offsets: Offsets,
    map: SlotMap,
    /// The slot map may be stale (a redirect, an unsubscribe by Redis).
    stale: bool,
    next_id: u64,
    pushes: mpsc::Sender<(u64, PushInfo)>,
    /// Since when some channel has been lost.
    lost_since: Option<Instant>,
}

/// The task: serve until the server exits.
pub async fn run(broker: Arc<Redis>, cluster: Arc<Cluster>, mut reads: mpsc::Receiver<Recover>) {
    let (pushes, mut incoming) = mpsc::channel(PUSHES);
    let mut subs = Subs {
        broker: broker.clone(),
        cluster: cluster.clone(),
        warned: false,
        links: HashMap::new(),
        placed: HashMap::new(),
        pending: HashSet::new(),
        lost: HashSet::new(),
        offsets: Offsets::default(),
        map: SlotMap::default(),
        stale: true,
        next_id: 0,
        pushes,
        lost_since: None,
    };
    subs.resync_interest();
    subs.lost.clear();
    let mut ping = tokio::time::interval(broker.settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some((id, push)) = incoming.recv() => subs.on_push(id, push),
            () = broker.interest.wake[0].notified() => {
                subs.apply().await;
                subs.place().await;
            }
            read = next_read(&cluster, &mut reads) => match read {
                None => return,
                Some((permit, read)) => {
                    subs.apply().await;
                    subs.place().await;
                    let broker = broker.clone();
                    tokio::spawn(async move {
                        reads::recover(&broker, read).await;
                        drop(permit);
                    });
                }
            },
            () = cluster.refresh.notified() => {
                subs.stale = true;
                subs.place().await;
            }
            _ = ping.tick() => {
                subs.ping().await;
                subs.stale = true;
                subs.place().await;
            }
            _ = retry.tick(), if !subs.pending.is_empty() || subs.stale => subs.place().await,
        }
        subs.check_overflow();
        subs.show();
    }
}

/// `command` within `--broker-timeout`, its failure as text.
async fn timed<T>(
    cluster: &Cluster,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, redis::RedisError> {
    match tokio::time::timeout(cluster.timeout(), command).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer within --broker-timeout",
        ))),
    }
}

/// The next queued history read, once a permit is free (cancel-safe).
async fn next_read(
    cluster: &Cluster,
    reads: &mut mpsc::Receiver<Recover>,
) -> Option<(OwnedSemaphorePermit, Recover)> {
    let permit = cluster.reads.clone().acquire_owned().await.ok()?;
    Some((permit, reads.recv().await?))
}

impl Subs {
    fn layout(&self) -> script::Layout {
        self.broker.layout
    }

    /// Wants every channel the node holds (and the node-wide one), each
    /// lost: after an overflowed interest queue nothing is known of them.
    fn resync_interest(&mut self) {
        let layout = self.layout();
        let mut wanted: HashSet<String> = self
            .broker
            .interest
            .held(0)
            .iter()
            .map(|t| layout.channel(t))
            .collect();
        wanted.insert(script::NODE_CHANNEL.to_owned());
        let gone: Vec<String> = self
            .placed
            .keys()
            .chain(&self.pending)
            .filter(|c| !wanted.contains(*c))
            .cloned()
            .collect();
        for channel in gone {
            self.forget(&channel);
        }
        for channel in wanted {
            if !self.placed.contains_key(&channel) {
                self.pending.insert(channel.clone());
            }
            self.lost.insert(channel);
        }
    }

    /// Stops wanting `channel` (its link keeps the subscription until
    /// made again; a message on it is then dropped as unknown by
    /// nobody: the workers hold no subscriber).
    fn forget(&mut self, channel: &str) {
        if let Some(addr) = self.placed.remove(channel) {
            if let Some(link) = self.links.get_mut(&addr) {
                link.channels.remove(channel);
                let mut conn = link.conn.clone();
                let mut off = redis::cmd("SUNSUBSCRIBE");
                off.arg(channel);
                // Fire and forget: a failure shows on the link's PING.
                tokio::spawn(async move {
                    let _: redis::RedisResult<Value> = off.query_async(&mut conn).await;
                });
            }
        }
        self.pending.remove(channel);
        self.lost.remove(channel);
        if let Some(topic) = self.layout().topic_of(channel) {
            self.offsets.forget(topic);
        }
    }

    /// Applies the node's interest changes.
    async fn apply(&mut self) {
        let layout = self.layout();
        match self.broker.interest.changes(0) {
            Changes::Resync => self.resync_interest(),
            Changes::Topics(changes) => {
                for (topic, want) in changes {
                    let channel = layout.channel(&topic);
                    let known =
                        self.placed.contains_key(&channel) || self.pending.contains(&channel);
                    match (want, known) {
                        (true, false) => {
                            self.pending.insert(channel);
                        }
                        (false, true) => self.forget(&channel),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Handles one push from link `id`.
    fn on_push(&mut self, id: u64, push: PushInfo) {
        let addr = self
            .links
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(a, _)| a.clone());
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage => match (text(push.data.first()), push.data.get(1)) {
                (Some(channel), Some(Value::BulkString(payload))) => {
                    self.broker.on_payload(&channel, payload, &mut self.offsets);
                }
                _ => self.broker.metrics.invalid.inc(),
            },
            // Redis unsubscribes a shard channel whose slot left the
            // master (Redis docs, SSUBSCRIBE); ours are forgotten first.
            PushKind::SUnsubscribe => {
                let Some(channel) = text(push.data.first()) else {
                    return;
                };
                if addr.is_some() && self.placed.get(&channel) == addr.as_ref() {
                    self.broker.metrics.redirects.inc();
                    self.lose(&channel);
                    self.stale = true;
                }
            }
            PushKind::Disconnection => {
                if let Some(addr) = addr {
                    tracing::warn!(master = %addr, "broker cluster master link lost");
                    self.drop_link(&addr);
                    self.stale = true;
                }
            }
            _ => {}
        }
    }

    /// `channel`'s subscription is gone: wait for its master again.
    fn lose(&mut self, channel: &str) {
        if let Some(addr) = self.placed.remove(channel) {
            if let Some(link) = self.links.get_mut(&addr) {
                link.channels.remove(channel);
            }
        }
        self.pending.insert(channel.to_owned());
        self.lost.insert(channel.to_owned());
        self.lost_since.get_or_insert_with(Instant::now);
    }

    /// Drops the link to `addr`: its channels are lost.
    fn drop_link(&mut self, addr: &str) {
        if let Some(link) = self.links.remove(addr) {
            for channel in link.channels {
                self.lose(&channel);
            }
        }
    }

    /// Makes again every link whose pushes overflowed the queue.
    fn check_overflow(&mut self) {
        let over: Vec<String> = self
            .links
            .iter()
            .filter(|(_, l)| l.overflowed.load(Ordering::Relaxed))
            .map(|(a, _)| a.clone())
            .collect();
        for addr in over {
            tracing::warn!(master = %addr, "broker cluster pushes past the queue: resubscribing");
            self.drop_link(&addr);
        }
    }

    /// PINGs every link; one that fails is dropped.
    async fn ping(&mut self) {
        let mut failed = Vec::new();
        for (addr, link) in &self.links {
            let mut conn = link.conn.clone();
            let ping = redis::cmd("PING");
            if timed(&self.cluster, ping.query_async::<Value>(&mut conn))
                .await
                .is_err()
            {
                self.broker.metrics.timeouts.inc();
                failed.push(addr.clone());
            }
        }
        for addr in failed {
            tracing::warn!(master = %addr, "broker cluster master link failed its PING");
            self.drop_link(&addr);
        }
    }

    /// Reads the slot map (when stale); channels whose master changed
    /// are lost.
    async fn refresh(&mut self) {
        let Some(map) = self.read_map().await else {
            if !self.warned {
                tracing::warn!(
                    "broker cluster unreachable: no node answered CLUSTER SLOTS; retrying"
                );
                self.warned = true;
            }
            return;
        };
        self.warned = false;
        self.stale = false;
        if map == self.map {
            return;
        }
        if !self.map.is_empty() {
            let changed = self.map.changed_masters(&map);
            self.broker.metrics.failovers.inc_by(changed as u64);
            tracing::info!(changed, "broker cluster slot map changed");
        }
        let moved: Vec<String> = self
            .placed
            .iter()
            .filter(|(channel, addr)| map.owner(slots::slot(channel.as_bytes())) != Some(addr))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in moved {
            self.lose(&channel);
        }
        self.map = map;
    }

    /// The slot map as the first node to answer sees it: the known
    /// masters first, then the seeds.
    async fn read_map(&self) -> Option<SlotMap> {
        let mut ask: Vec<String> = self.map.masters().into_iter().map(|(a, _)| a).collect();
        ask.extend(self.cluster.seeds.iter().cloned());
        ask.dedup();
        for addr in ask {
            let mut slots = redis::cmd("CLUSTER");
            slots.arg("SLOTS");
            let reply = timed(&self.cluster, async {
                let mut conn = self.cluster.conn_to(&addr).await?;
                slots.query_async::<Value>(&mut conn).await
            })
            .await;
            match reply.map(|r| SlotMap::parse(&r)) {
                Ok(Ok(map)) if !map.is_empty() => return Some(map),
                Ok(Ok(_)) => {}
                Ok(Err(why)) => {
                    self.broker.metrics.invalid.inc();
                    tracing::debug!(node = %addr, "CLUSTER SLOTS reply refused: {why}");
                }
                Err(e) => {
                    self.cluster.forget(&addr);
                    tracing::debug!(node = %addr, "CLUSTER SLOTS failed: {e}");
                }
            }
        }
        None
    }

    /// Subscribes the pending channels on their masters, then tells the
    /// subscribers of the lost ones that are back to resync.
    async fn place(&mut self) {
        if self.stale || (!self.pending.is_empty() && !self.lost.is_empty()) {
            self.refresh().await;
        }
        let mut by_master: HashMap<String, Vec<String>> = HashMap::new();
        for channel in &self.pending {
            if let Some(addr) = self.map.owner(slots::slot(channel.as_bytes())) {
                by_master
                    .entry(addr.to_owned())
                    .or_default()
                    .push(channel.clone());
            }
        }
        let mut back = Vec::new();
        for (addr, channels) in by_master {
            if !self.links.contains_key(&addr) {
                match self.connect(&addr).await {
                    Ok(link) => {
                        self.links.insert(addr.clone(), link);
                    }
                    Err(e) => {
                        tracing::debug!(master = %addr, "broker cluster master unreachable: {e}");
                        continue;
                    }
                }
            }
            for channel in channels {
                let Some(link) = self.links.get_mut(&addr) else {
                    break;
                };
                let mut conn = link.conn.clone();
                let mut on = redis::cmd("SSUBSCRIBE");
                on.arg(&channel);
                match timed(&self.cluster, on.query_async::<Value>(&mut conn)).await {
                    Ok(_) => {
                        link.channels.insert(channel.clone());
                        self.pending.remove(&channel);
                        self.placed.insert(channel.clone(), addr.clone());
                        if self.lost.remove(&channel) {
                            back.push(channel);
                        }
                    }
                    Err(e) if e.redirect_node().is_some() => {
                        self.broker.metrics.redirects.inc();
                        self.stale = true;
                    }
                    Err(e) => {
                        tracing::debug!(master = %addr, "SSUBSCRIBE failed: {e}");
                        self.drop_link(&addr);
                        break;
                    }
                }
            }
        }
        self.resync(back);
    }

    /// Tells the subscribers of the topics of `channels` (subscribed
    /// again after a loss) to resume from the stream.
    fn resync(&mut self, channels: Vec<String>) {
        if self.pending.is_empty() {
            if let Some(since) = self.lost_since.take() {
                let seconds = since.elapsed().as_secs_f64();
                self.broker.metrics.without_master.inc_by(seconds);
                tracing::info!(
                    seconds,
                    "broker cluster: every channel has its master again"
                );
            }
        }
        let layout = self.layout();
        let topics: Vec<String> = channels
            .iter()
            .filter_map(|c| layout.topic_of(c))
            .map(str::to_owned)
            .collect();
        if topics.is_empty() {
            return;
        }
        self.broker.metrics.resubscribed.inc_by(topics.len() as u64);
        self.broker.handle.resync(topics, |_| {});
    }

    /// A RESP3 link to `addr` whose pushes go to the task's queue.
    async fn connect(&mut self, addr: &str) -> Result<Link, String> {
        let client = self.cluster.client(addr, true).map_err(|e| e.to_string())?;
        self.next_id += 1;
        let (id, pushes) = (self.next_id, self.pushes.clone());
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let refused = self.broker.metrics.refused.with_label_values(&["pushes"]);
        let sender = move |push: PushInfo| -> Result<(), ()> {
            if pushes.try_send((id, push)).is_err() {
                refused.inc();
                flag.store(true, Ordering::Relaxed);
            }
            Ok(())
        };
        let timeout = self.cluster.timeout();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(sender);
        let conn = timed(
            &self.cluster,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Link {
            id,
            conn,
            overflowed,
            channels: HashSet::new(),
        })
    }

    /// Shows the state on `/healthz`.
    fn show(&self) {
        let mut view = lock(&self.cluster.view);
        if view.map != self.map {
            view.map = self.map.clone();
        }
        view.subscribed = self
            .links
            .iter()
            .map(|(a, l)| (a.clone(), l.channels.len()))
            .collect();
        view.pending = self.pending.len();
    }
}
