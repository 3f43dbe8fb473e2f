//! The node's topic interest and history reads, on their way from the
//! workers to the shards, bounded and coalesced.
//!
//! - Interest: the workers report a topic's first subscriber on a worker
//!   and its last one gone ([`Interest::update`], on the worker's thread).
//!   A topic is held by the node while any worker holds it. Each shard
//!   keeps the set of topics whose node-level state changed since it last
//!   looked (at most `--broker-interest-queue` topics): a topic that flips
//!   many times is one entry, and the shard applies only the state it
//!   finds. Past the bound the set is dropped and the shard reconnects
//!   and subscribes again to everything the node holds (a resync), so a
//!   stalled Redis never makes the set grow.
//! - Reads: a queue per shard of at most `--broker-read-queue` requests;
//!   one that does not fit is answered at once with no position (the
//!   client then starts from the live stream, `recovered:false`).
//!
//! A read goes to its shard after the interest changes reported before
//! it: the shard applies its changed set before it starts a read.

use super::metrics::Metrics;
use super::{lock, shards};
use ringcast_engine::upstream::{PresenceChange, Recover};
use ringcast_engine::Handle;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, Notify};

/// The bounds, from the flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Topics with a pending interest change per shard, at most
    /// (`--broker-interest-queue`).
    pub changes: usize,
    /// History reads waiting per shard, at most (`--broker-read-queue`).
    pub reads: usize,
}

/// What a shard finds when it looks at its interest.
pub enum Changes {
    /// Topics and whether the node holds each now.
    Topics(Vec<(String, bool)>),
    /// The set overflowed: subscribe again to everything.
    Resync,
}

struct State {
    /// Workers holding each topic (each reports 0->1 and 1->0 only).
    workers: HashMap<String, u32>,
    /// Per shard: topics whose node-level state may have changed.
    changed: Vec<HashSet<String>>,
    /// Per shard: the set overflowed since the shard last resynced.
    overflowed: Vec<bool>,
}

/// The interest and read queues of every shard.
pub struct Interest {
    limits: Limits,
    state: Mutex<State>,
    /// Per shard: woken when its changed set gains a topic.
    pub(super) wake: Vec<Notify>,
    reads: Vec<mpsc::Sender<Recover>>,
    /// The receiving ends, until the shards start.
    receivers: Mutex<Vec<Option<mpsc::Receiver<Recover>>>>,
    /// The engine, to answer a read that did not fit (set at start).
    handle: OnceLock<Handle>,
    metrics: Arc<Metrics>,
    /// The node's presence changes on their way to Redis.
    pub(super) presence: super::presence::Queue,
}

impl Interest {
    /// Empty interest for `shards` instances within `limits`.
    pub fn new(shards: usize, limits: Limits) -> Arc<Self> {
        let (reads, receivers) = (0..shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel(limits.reads.max(1));
                (tx, Some(rx))
            })
            .unzip();
        Arc::new(Self {
            limits,
            state: Mutex::new(State {
                workers: HashMap::new(),
                changed: vec![HashSet::new(); shards],
                overflowed: vec![false; shards],
            }),
            wake: (0..shards).map(|_| Notify::new()).collect(),
            reads,
            receivers: Mutex::new(receivers),
            handle: OnceLock::new(),
            metrics: Arc::new(Metrics::new(shards)),
            presence: super::presence::Queue::default(),
        })
    }

    /// The broker's series.
    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Sets the engine handle (once, when the broker starts).
    pub(super) fn set_handle(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    /// Shard `index`'s read queue, once.
    pub(super) fn take_reads(&self, index: usize) -> Option<mpsc::Receiver<Recover>> {
        lock(&self.receivers)[index].take()
    }

    /// Takes shard `index`'s changed topics with the state the node holds
    /// them in now, or [`Changes::Resync`] after an overflow.
    pub(super) fn changes(&self, index: usize) -> Changes {
        let mut state = lock(&self.state);
        if state.overflowed[index] {
            return Changes::Resync;
        }
        let changed = std::mem::take(&mut state.changed[index]);
        let topics = changed
            .into_iter()
            .map(|topic| {
                let held = state.workers.contains_key(&topic);
                (topic, held)
            })
            .collect();
        Changes::Topics(topics)
    }

    /// Every topic the node holds on shard `index`, for a (re)subscribe;
    /// clears that shard's changed set and overflow.
    pub(super) fn held(&self, index: usize) -> HashSet<String> {
        let shard_count = self.wake.len();
        let mut state = lock(&self.state);
        state.changed[index].clear();
        state.overflowed[index] = false;
        state
            .workers
            .keys()
            .filter(|t| shards::shard_of(t, shard_count) == index)
            .cloned()
            .collect()
    }
}

impl crate::broker::Demand for Interest {
    /// A worker's topic got its first subscriber (`held`) or lost its
    /// last.
    fn update(&self, topic: &str, held: bool) {
        let shard_count = self.wake.len();
        let mut state = lock(&self.state);
        let count = state.workers.entry(topic.to_owned()).or_insert(0);
        let was = *count > 0;
        *count = if held {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
        let now = *count > 0;
        if !now {
            state.workers.remove(topic);
        }
        if was == now {
            return;
        }
        let shard = shards::shard_of(topic, shard_count);
        if state.overflowed[shard] {
            return;
        }
        if state.changed[shard].len() >= self.limits.changes {
            state.changed[shard] = HashSet::new();
            state.overflowed[shard] = true;
            self.metrics.refused.with_label_values(&["interest"]).inc();
        } else {
            state.changed[shard].insert(topic.to_owned());
        }
        drop(state);
        self.wake[shard].notify_one();
    }

    /// Queues a presence change for Redis; one that does not fit is
    /// counted, and the node registers its members again later.
    fn presence(&self, change: PresenceChange) {
        if !self.presence.push(super::presence::Work::Change(change)) {
            self.metrics.presence_dropped.inc();
        }
    }

    /// Queued with the presence changes, in order; one that does not fit
    /// is counted (its event is lost).
    fn channel(&self, topic: &str, occupied: bool) {
        let work = super::presence::Work::Channel {
            topic: topic.to_owned(),
            occupied,
        };
        if !self.presence.push(work) {
            self.metrics.presence_dropped.inc();
        }
    }

    /// Queues a history read for its shard; one that does not fit is
    /// answered at once with no position, and counted.
    fn recover(&self, read: Recover) {
        let shard = shards::shard_of(&read.topic, self.reads.len());
        if let Err(e) = self.reads[shard].try_send(read) {
            self.metrics.refused.with_label_values(&["read"]).inc();
            let read = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            if let Some(handle) = self.handle.get() {
                handle.recovered(read.origin, read.topic, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Demand;

    #[test]
    fn changes_coalesce_and_overflow_asks_for_a_resync() {
        let interest = Interest::new(
            1,
            Limits {
                changes: 2,
                reads: 1,
            },
        );
        for _ in 0..100 {
            interest.update("a", true);
            interest.update("a", false);
        }
        interest.update("b", true);
        interest.update("b", true);
        let Changes::Topics(mut topics) = interest.changes(0) else {
            panic!("no overflow yet")
        };
        topics.sort();
        assert_eq!(topics, [("a".into(), false), ("b".into(), true)]);
        for topic in ["c", "d", "e"] {
            interest.update(topic, true);
        }
        assert!(matches!(interest.changes(0), Changes::Resync));
        let mut held: Vec<_> = interest.held(0).into_iter().collect();
        held.sort();
        assert_eq!(held, ["b", "c", "d", "e"]);
        assert!(matches!(interest.changes(0), Changes::Topics(t) if t.is_empty()));
    }
}
