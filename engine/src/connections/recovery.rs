//! `ringcast.v1` connections on a worker: a subscribe answered with the
//! topic's position, the replay of what a resuming client missed, and the
//! skip of live frames the subscription already covers.
//!
//! # No gap, no duplicate
//! The worker reads the topic's history ([`crate::hub::Hub::recover`])
//! under the lock that publishers hold while they assign offsets and send
//! to the workers' channels. At that moment every publish of the topic up
//! to the `top` it reads is in this worker's channel or already applied,
//! and none after it is. The worker registers the subscription, queues the
//! `subscribed` reply and the replay (`since + 1 ..= top`), and remembers
//! `(top, epoch)` for the subscription in [`Skips`]: a live delivery of
//! that topic and epoch at or below `top` is skipped. Every command sent
//! before the read is applied by the next full pass over the channel, so
//! the worker forgets the skips after each pass
//! ([`Connections::commands_applied`]); the idle connection record keeps
//! nothing.

use super::messages::Action;
use super::Connections;
use crate::conn::Endpoint;
use crate::control;
use crate::hub::epoch::Epoch;
use crate::protocol::v1::{self, Position, Since};
use crate::stats::WorkerStats;
use crate::topics::TopicId;
use std::collections::HashMap;

/// Room kept in a connection's send queue for the `subscribed` reply that
/// precedes a replay, in bytes.
pub(super) const REPLY_ROOM: usize = 512;

/// The subprotocols the topics endpoint accepts: `configured` and
/// `ringcast.v1`.
pub fn subprotocols(configured: &[String]) -> Vec<String> {
    let mut all = configured.to_vec();
    if !all.iter().any(|p| p == v1::NAME) {
        all.push(v1::NAME.to_owned());
    }
    all
}

/// Subscriptions made since the worker last emptied its command channel,
/// by (topic, slot): the top offset and epoch read from the history when
/// they were made.
#[derive(Default)]
pub(super) struct Skips(HashMap<(TopicId, u32), (u64, Epoch)>);

impl Skips {
    /// Whether `slot`'s subscription to `topic` already covers a delivery
    /// at `position` (replayed, or before the position it was told).
    pub fn covers(&self, topic: TopicId, slot: u32, position: Option<(u64, Epoch)>) -> bool {
        let Some((offset, epoch)) = position else {
            return false;
        };
        !self.0.is_empty()
            && self
                .0
                .get(&(topic, slot))
                .is_some_and(|&(top, e)| e == epoch && offset <= top)
    }

    /// Records that `slot`'s new subscription to `topic` covers every
    /// offset up to `top` in `epoch`.
    pub fn insert(&mut self, topic: TopicId, slot: u32, top: u64, epoch: Epoch) {
        self.0.insert((topic, slot), (top, epoch));
    }

    /// `slot` left `topic` (whose id may then be reused).
    pub fn forget(&mut self, topic: TopicId, slot: u32) {
        if !self.0.is_empty() {
            self.0.remove(&(topic, slot));
        }
    }
}

impl Connections {
    /// Applies a client op of a `ringcast.v1` connection.
    pub(super) fn apply_v1(&mut self, slot: u32, request: v1::Request) {
        match request {
            v1::Request::Resume { topic, since } => self.subscribe_v1(slot, &topic, Some(&since)),
            v1::Request::Control(control::Request::Subscribe { topic }) => {
                self.subscribe_v1(slot, &topic, None);
            }
            v1::Request::Control(other) => self.apply(slot, Action::Control(other)),
            v1::Request::Publish { topic, data, id } => self.client_publish(slot, topic, data, id),
            v1::Request::Rpc { id, method, data } => self.client_rpc(slot, id, method, data),
        }
    }

    /// Subscribes to a topic named in the upgrade request: a raw-mode
    /// connection silently, as ever; a `ringcast.v1` one as a subscribe
    /// without `since`, answered with the topic's position.
    pub(super) fn subscribe_at_open(&mut self, slot: u32, topic: &str) {
        let conn = self.table.get_mut(slot).expect("live slot");
        if conn.endpoint() == Some(Endpoint::PubSubV1) {
            self.subscribe_v1(slot, topic, None);
        } else {
            self.subscribe(slot, topic);
        }
    }

    /// Subscribes `slot` to `topic`, answers with the topic's position
    /// when it keeps history, and with `since`, replays what came after it
    /// or answers `recovered:false`. A topic the connection already holds
    /// is acknowledged without a position and changes nothing.
    fn subscribe_v1(&mut self, slot: u32, topic: &str, since: Option<&Since>) {
        let before = self.held(slot, topic);
        let reply = self.subscribe(slot, topic);
        let id = match self.held(slot, topic) {
            Some(id) if before.is_none() => id,
            _ => return self.reply(slot, reply), // refused, or already held
        };
        let pending = self.table.get_mut(slot).expect("live slot").out.pending();
        let room = self
            .io
            .limits
            .max_outbound
            .saturating_sub(pending + REPLY_ROOM + topic.len());
        let Some(recovery) = self.hub.recover(topic, since, room) else {
            return self.reply(slot, v1::subscribed(topic, None, since.map(|_| false)));
        };
        if recovery.top > 0 {
            self.skips.insert(id, slot, recovery.top, recovery.epoch);
        }
        let at = Position {
            offset: recovery.top,
            epoch: recovery.epoch.as_str(),
        };
        let recovered = since.map(|_| recovery.replay.is_some());
        self.reply(slot, v1::subscribed(topic, Some(at), recovered));
        let conn = self.table.get_mut(slot).expect("live slot");
        let mut queued = 0;
        for frame in recovery.replay.into_iter().flatten() {
            queued += u64::from(self.io.queue(conn, slot, frame));
        }
        WorkerStats::add(&self.io.stats().messages_out, queued);
    }

    /// The id of `topic` if `slot` is subscribed to it.
    pub(super) fn held(&mut self, slot: u32, topic: &str) -> Option<TopicId> {
        let conn = self.table.get_mut(slot).expect("live slot");
        let id = self.topics.id(topic)?;
        conn.topics.find(id).map(|_| id)
    }

    /// The worker has applied every command sent to it before now: no
    /// publish a subscription's read of the history saw is still to come.
    pub fn commands_applied(&mut self) {
        self.skips.0.clear();
    }
}
