//! Presence across the cluster, kept in Redis (README, "Presence").
//!
//! Keys, on the instance that holds the topic (as its other keys):
//! - `ringcast:presence:TOPIC`: hash client id → member JSON
//!   (`{"client","user","info"}`);
//! - `ringcast:presence-users:TOPIC`: hash user → its connections there;
//! - `ringcast:presence-node:NODE`: set of `TOPIC\nCLIENT`, the node's
//!   memberships on this instance (what a dead node leaves behind);
//! - `ringcast:presence-nodes`: sorted set node → the time (ms, Redis's
//!   clock) its memberships expire unless it refreshes them;
//! - with `--hooks channels`, `ringcast:channel:TOPIC`: set of the nodes
//!   with subscribers of TOPIC, and `ringcast:channel-node:NODE`: the
//!   node's topics, so that `occupied` and `vacated` fire once per
//!   cluster (a dead node's topics are let go of when it is reaped).
//!
//! A node's changes run one at a time, in the order its workers made
//! them, each as one script that updates the keys, computes `first` or
//! `last` across the cluster and PUBLISHes the event on the topic's
//! channel (while the topic has at most `--presence-join-leave-max`
//! members), so every node pushes it to its `join_leave` subscribers in
//! the order it happened. Every `--presence-ttl`/3 each node pushes its
//! expiry forward and reaps the nodes whose expiry passed: removing a
//! dead node from the sorted set is what makes one survivor (the one
//! whose `ZREM` took it) publish a `leave` for each of its members.
//!
//! Redis down: the node's workers keep tracking their members, the
//! changes meanwhile are dropped, and the node registers its members
//! again (the set difference) once Redis answers.

mod scripts;
mod wire;

use super::conn::{Backend, On};
use super::shard::Shard;
use super::{shards, Redis};
use crate::broker::Unavailable;
use ringcast_engine::presence::{Change, Member, Page, Stats};
use ringcast_engine::upstream::PresenceChange;
use scripts::{
    channel_key, channel_node_key, join_invocation, leave_invocation, members_key, node_key,
    users_key, CHANNEL_SCRIPT, MAX_CLIENT, NODES, REAP_SCRIPT, REFRESH_SCRIPT,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use wire::{member, order, Pair};

/// A node's changes waiting for Redis at most; past it they are dropped
/// (counted) and the node registers its members again.
pub const QUEUE: usize = 65_536;

/// What the node hands its presence task, in order.
pub enum Work {
    /// A member of this node joined or left.
    Change(PresenceChange),
    /// A topic got its first subscriber on this node (`occupied`) or
    /// lost its last (the channels webhook, once per cluster).
    Channel {
        /// The topic.
        topic: String,
        /// First subscriber (else last gone).
        occupied: bool,
    },
}

/// The node's presence changes on their way to Redis, and whether the
/// node must register its members again.
pub struct Queue {
    tx: mpsc::Sender<Work>,
    rx: Mutex<Option<mpsc::Receiver<Work>>>,
    /// Set when a change was dropped or an instance came back: the next
    /// refresh registers the node's members again.
    resync: AtomicBool,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            resync: AtomicBool::new(false),
        }
    }
}

impl Queue {
    /// Queues a change of this node (never blocks); a full queue drops it
    /// and asks for a resync.
    pub fn push(&self, work: Work) -> bool {
        let taken = self.tx.try_send(work).is_ok();
        if !taken {
            self.resync.store(true, Ordering::Release);
        }
        taken
    }

    /// The node's members must be registered again (an instance was
    /// lost and is back).
    pub fn resync(&self) {
        self.resync.store(true, Ordering::Release);
    }

    pub(super) fn take(&self) -> Option<mpsc::Receiver<Work>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A command connection to `shard`.
///
/// # Errors
/// The instance is not connected.
fn connection(shard: &Shard) -> Result<redis::aio::MultiplexedConnection, Unavailable> {
    shard
        .connection()
        .ok_or_else(|| Unavailable(format!("broker {} is unreachable", shard.name)))
}

impl Redis {
    /// The instances presence is kept on: the standalone ones (Sentinel's
    /// master included); none over a Redis Cluster, where presence is not
    /// kept yet (README, "Presence").
    fn presence_shards(&self) -> &[Arc<Shard>] {
        match &self.backend {
            Backend::Instances(shards) => shards,
            Backend::Cluster(_) => &[],
        }
    }

    /// Whether `topic`'s presence lives on `shard`.
    fn on_shard(&self, topic: &str, shard: &Shard) -> bool {
        let shards = self.presence_shards();
        std::ptr::eq(
            shards[shards::shard_of(topic, shards.len())].as_ref(),
            shard,
        )
    }

    /// `topic`'s instance and a command connection to it.
    ///
    /// # Errors
    /// Over a Redis Cluster, or the instance is not connected.
    fn presence_shard(
        &self,
        topic: &str,
    ) -> Result<(&Arc<Shard>, redis::aio::MultiplexedConnection), Unavailable> {
        let shards = self.presence_shards();
        if shards.is_empty() {
            return Err(Unavailable(
                "presence is not kept over a Redis Cluster yet".into(),
            ));
        }
        let shard = &shards[shards::shard_of(topic, shards.len())];
        Ok((shard, connection(shard)?))
    }

    /// Up to `limit` members of `topic` after the client id `cursor`, in
    /// client id order (node, then sequence). Reads the topic's whole
    /// hash (HSCAN, 1000 fields a call), so a page costs the topic's size
    /// in Redis and on this node.
    pub(super) async fn read_presence(
        &self,
        topic: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, Unavailable> {
        let (shard, mut conn) = self.presence_shard(topic)?;
        let mut all = Vec::new();
        let mut at = 0u64;
        loop {
            let mut scan = redis::cmd("HSCAN");
            scan.arg(members_key(topic)).arg(at).arg("COUNT").arg(1000);
            let (next, pairs): (u64, Vec<Pair>) = self
                .run(&On::Shard(shard), scan.query_async(&mut conn))
                .await?;
            all.extend(pairs.into_iter().filter_map(|(_, json)| member(&json)));
            if next == 0 {
                break;
            }
            at = next;
        }
        all.sort_unstable_by(|a, b| order(&a.client).cmp(&order(&b.client)));
        all.dedup_by(|a, b| a.client == b.client);
        let after = cursor.map(order);
        let mut rest = all
            .into_iter()
            .filter(|m| after.as_ref().is_none_or(|c| order(&m.client) > *c));
        let members: Vec<Member> = rest.by_ref().take(limit).collect();
        let more = rest.next().is_some();
        Ok(Page {
            next: more
                .then(|| members.last().map(|m| m.client.clone()))
                .flatten(),
            members,
        })
    }

    /// `topic`'s counts across the cluster.
    pub(super) async fn read_presence_stats(&self, topic: &str) -> Result<Stats, Unavailable> {
        let (shard, mut conn) = self.presence_shard(topic)?;
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN")
            .arg(members_key(topic))
            .cmd("HLEN")
            .arg(users_key(topic));
        let (clients, users): (usize, usize) = self
            .run(&On::Shard(shard), pipe.query_async(&mut conn))
            .await?;
        Ok(Stats { clients, users })
    }

    /// Registers one change of this node (a join or a leave) on its
    /// topic's instance.
    async fn apply_change(&self, pc: &PresenceChange) -> Result<(), Unavailable> {
        let change = &pc.change;
        let topic: &str = &change.topic;
        let (shard, mut conn) = self.presence_shard(topic)?;
        let node = self.handle.presence_node();
        let max = self.settings.presence_max;
        if change.joined {
            let invocation = join_invocation(
                topic,
                &change.member,
                node,
                max,
                pc.joiner,
                true,
                self.settings.presence_ttl,
            );
            let _: (i64, i64) = self
                .run(&On::Shard(shard), invocation.invoke_async(&mut conn))
                .await?;
        } else {
            let invocation = leave_invocation(topic, &change.member.client, node, max);
            let _: (i64, i64) = self
                .run(&On::Shard(shard), invocation.invoke_async(&mut conn))
                .await?;
        }
        Ok(())
    }

    /// Records that this node holds `topic` (`occupied`) or let go of it;
    /// the node that made it occupied or vacated across the cluster sends
    /// the channels webhook's event.
    async fn apply_channel(&self, topic: &str, occupied: bool) -> Result<(), Unavailable> {
        let (shard, mut conn) = self.presence_shard(topic)?;
        let node = self.handle.presence_node();
        let mut invocation = CHANNEL_SCRIPT.prepare_invoke();
        invocation
            .key(channel_key(topic))
            .key(channel_node_key(node))
            .arg(node)
            .arg(topic)
            .arg(if occupied { "1" } else { "0" });
        let edge: i64 = self
            .run(&On::Shard(shard), invocation.invoke_async(&mut conn))
            .await?;
        if edge == 1 {
            self.webhooks.channel(topic, occupied);
        }
        Ok(())
    }

    /// Pushes this node's expiry forward on `shard`, registers its members
    /// again when asked to (or when it found itself gone), and reaps the
    /// nodes that stopped refreshing, each leave handed to the webhook.
    async fn refresh(&self, shard: &Arc<Shard>, resync: bool) -> Result<(), Unavailable> {
        let mut conn = connection(shard)?;
        let node = self.handle.presence_node().to_owned();
        let ttl = self.settings.presence_ttl.as_millis() as u64;
        let mut invocation = REFRESH_SCRIPT.prepare_invoke();
        invocation.key(NODES).arg(&node).arg(ttl);
        let out: Vec<redis::Value> = self
            .run(&On::Shard(shard), invocation.invoke_async(&mut conn))
            .await?;
        let number = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        };
        let (Some(added), Some(now)) = (number(out.first()), number(out.get(1))) else {
            return Err(Unavailable("unexpected refresh answer".into()));
        };
        if resync || added == 1 {
            self.register_again(shard, &node).await?;
        }
        for dead in out.iter().skip(2) {
            if let redis::Value::BulkString(name) = dead {
                let name = String::from_utf8_lossy(name).into_owned();
                if name != node && name.len() <= MAX_CLIENT {
                    self.reap(shard, &name, now, false).await?;
                }
            }
        }
        Ok(())
    }

    /// Removes node `dead`'s members on `shard` (all of them at once with
    /// `now_too`: this node leaving), if this call is the one that reaps
    /// it; hands each leave to the presence webhook.
    async fn reap(
        &self,
        shard: &Arc<Shard>,
        dead: &str,
        now: i64,
        now_too: bool,
    ) -> Result<usize, Unavailable> {
        let mut conn = connection(shard)?;
        let mut invocation = REAP_SCRIPT.prepare_invoke();
        invocation
            .key(NODES)
            .key(node_key(dead))
            .arg(dead)
            .arg(now)
            .arg(self.settings.presence_max)
            .arg(if now_too { "1" } else { "0" });
        let out: Vec<redis::Value> = self
            .run(&On::Shard(shard), invocation.invoke_async(&mut conn))
            .await?;
        let mut reaped = 0;
        for item in out.chunks(4) {
            let [redis::Value::BulkString(topic), redis::Value::BulkString(json), redis::Value::Int(edge), redis::Value::Int(members)] =
                item
            else {
                continue;
            };
            let Ok(topic) = std::str::from_utf8(topic) else {
                continue;
            };
            if json.is_empty() {
                self.webhooks.channel(topic, false);
                continue;
            }
            let Some(member) = member(json) else {
                continue;
            };
            reaped += 1;
            let change = Change {
                topic: topic.into(),
                member,
                joined: false,
                edge: *edge == 1,
                members: usize::try_from(*members).unwrap_or(usize::MAX),
            };
            self.webhooks.presence(&change);
        }
        if reaped > 0 {
            self.metrics.presence_reaped.inc_by(reaped as u64);
            tracing::info!(
                node = dead,
                reaped,
                "presence: a node stopped refreshing; its members left"
            );
        }
        Ok(reaped)
    }

    /// Makes `shard`'s record of this node's members what its workers
    /// hold: registers the missing ones (no join is published: the
    /// cluster knew them before), removes the extra ones (each with its
    /// leave); and records the topics it holds (for the channels
    /// webhook), without an event.
    async fn register_again(&self, shard: &Arc<Shard>, node: &str) -> Result<(), Unavailable> {
        let mut conn = connection(shard)?;
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(node_key(node));
        let stored: Vec<String> = self
            .run(&On::Shard(shard), smembers.query_async(&mut conn))
            .await?;
        let mut stored: HashSet<String> = stored.into_iter().collect();
        let max = self.settings.presence_max;
        for (topic, member) in self.handle.presence_members() {
            if !self.on_shard(&topic, shard) {
                continue;
            }
            if stored.remove(&format!("{topic}\n{}", member.client)) {
                continue;
            }
            let invocation = join_invocation(
                &topic,
                &member,
                node,
                max,
                None,
                false,
                self.settings.presence_ttl,
            );
            let _: (i64, i64) = self
                .run(&On::Shard(shard), invocation.invoke_async(&mut conn))
                .await?;
        }
        let mut pipe = redis::pipe();
        let mut held = 0;
        for topic in self.webhooks.held_topics() {
            if self.on_shard(&topic, shard) {
                held += 1;
                pipe.cmd("SADD").arg(channel_key(&topic)).arg(node).ignore();
                pipe.cmd("SADD")
                    .arg(channel_node_key(node))
                    .arg(topic)
                    .ignore();
            }
        }
        if held > 0 {
            let _: () = self
                .run(&On::Shard(shard), pipe.query_async(&mut conn))
                .await?;
        }
        for entry in stored {
            let Some((topic, client)) = entry.split_once('\n') else {
                continue;
            };
            let invocation = leave_invocation(topic, client, node, max);
            let _: (i64, i64) = self
                .run(&On::Shard(shard), invocation.invoke_async(&mut conn))
                .await?;
        }
        Ok(())
    }

    /// This node leaves the cluster (a graceful drain): its members are
    /// removed at once, with a leave each.
    pub async fn presence_depart(&self) {
        let node = self.handle.presence_node().to_owned();
        for shard in self.presence_shards() {
            let _ = self.reap(shard, &node, 0, true).await;
        }
    }
}

/// The presence task: applies the node's changes in order, and refreshes
/// every `--presence-ttl`/3 (registering the members again after a loss).
pub(super) async fn run(broker: Arc<Redis>, mut changes: mpsc::Receiver<Work>) {
    let every = broker.settings.presence_ttl / 3;
    let mut refresh = tokio::time::interval(every);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            work = changes.recv() => {
                let Some(work) = work else { return };
                let applied = match &work {
                    Work::Change(change) => broker.apply_change(change).await,
                    Work::Channel { topic, occupied } => broker.apply_channel(topic, *occupied).await,
                };
                if applied.is_err() {
                    broker.metrics.presence_dropped.inc();
                    broker.interest.presence.resync();
                }
            }
            _ = refresh.tick() => {
                let resync = broker.interest.presence.resync.swap(false, Ordering::AcqRel);
                for shard in broker.presence_shards() {
                    if let Err(Unavailable(why)) = broker.refresh(shard, resync).await {
                        tracing::debug!(broker = %shard.name, "presence refresh failed: {why}");
                        broker.interest.presence.resync();
                    }
                }
            }
        }
    }
}
