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
//!
//! # With a broker
//! Offsets come from the broker, so the worker cannot read the position
//! itself. It registers the subscription (so that the node holds the
//! topic's channel: the interest event goes first, and the broker client
//! subscribes before it reads), sends [`crate::upstream::Event::Recover`], and *holds* the
//! subscription's live deliveries in [`Held`] until the answer
//! ([`Connections::recovered`]). The read happens after the node's
//! subscription to the topic's channel took effect, so every message is
//! either at or below the `top` read (in the replay, or before the
//! client's position) or arrives live; the held frames at or below `top`
//! are dropped, the rest follow the replay in order. Live frames at or
//! below `top` can also arrive *after* the answer (messages and the
//! answer travel on different Redis connections): [`Hold::Floor`] drops
//! them until the first frame past `top`.

use super::Connections;
use crate::broker;
use crate::hub::epoch::Epoch;
use crate::protocol::v1::{self, Position};
use crate::stats::WorkerStats;
use crate::topics::TopicId;
use bytes::Bytes;
use std::collections::HashMap;

/// Room kept in a connection's send queue for the `subscribed` reply that
/// precedes a replay, in bytes.
pub(super) const REPLY_ROOM: usize = 512;

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

/// What the worker keeps for subscriptions that read a position: the
/// skips of the local path and the holds of the broker's.
#[derive(Default)]
pub(super) struct Resumes {
    pub skips: Skips,
    pub held: Held,
}

impl Resumes {
    /// `slot` left `topic` (whose id may then be reused).
    pub fn forget(&mut self, topic: TopicId, slot: u32) {
        self.skips.forget(topic, slot);
        self.held.forget(topic, slot);
    }
}

/// Subscriptions whose live deliveries the broker's read decides, by
/// (topic, slot). Empty without a broker.
#[derive(Default)]
pub(super) struct Held(HashMap<(TopicId, u32), Hold>);

pub(super) enum Hold {
    /// Waiting for the answer to [`crate::upstream::Event::Recover`]: whether the client
    /// resumes, and the live deliveries held meanwhile.
    Waiting {
        resumes: bool,
        frames: Vec<(Option<(u64, Epoch)>, Bytes)>,
    },
    /// Answered at `top` in `epoch`: a live delivery at or below it is
    /// covered (it was published between the node's SUBSCRIBE and the
    /// read, and its message reaches the node on another connection than
    /// the read's answer, so possibly after it). Gone at the first live
    /// delivery past it: a topic's deliveries come in offset order.
    Floor { top: u64, epoch: Epoch },
}

impl Held {
    /// Whether `slot`'s delivery of `topic` at `position` is taken care
    /// of here: held while the read is pending (`frame` is then kept), or
    /// covered by the read's answer.
    pub fn hold(
        &mut self,
        topic: TopicId,
        slot: u32,
        position: Option<(u64, Epoch)>,
        frame: impl FnOnce() -> Bytes,
    ) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let key = (topic, slot);
        match self.0.get_mut(&key) {
            Some(Hold::Waiting { frames, .. }) => {
                frames.push((position, frame()));
                true
            }
            Some(Hold::Floor { top, epoch }) => {
                let covered = position.is_some_and(|(o, e)| e == *epoch && o <= *top);
                if !covered {
                    self.0.remove(&key);
                }
                covered
            }
            None => false,
        }
    }

    /// Holds `slot`'s live deliveries of `topic` until the broker answers
    /// its read (`resumes`: the client gave a position).
    pub fn wait(&mut self, topic: TopicId, slot: u32, resumes: bool) {
        let waiting = Hold::Waiting {
            resumes,
            frames: Vec::new(),
        };
        self.0.insert((topic, slot), waiting);
    }

    /// `slot` left `topic`: an answer that comes later is ignored.
    pub fn forget(&mut self, topic: TopicId, slot: u32) {
        if !self.0.is_empty() {
            self.0.remove(&(topic, slot));
        }
    }
}

impl Connections {
    /// The broker's answer to [`crate::upstream::Event::Recover`] for connection (`slot`,
    /// `gen`) on `topic`: `None` when the broker could not be read (the
    /// subscription stays, answered without a position; a resume gets
    /// `recovered:false`). Replies `subscribed`, queues the replay, then
    /// the live deliveries held meanwhile that the replay does not cover.
    /// Ignored when the connection left the topic or is gone.
    pub fn recovered(
        &mut self,
        slot: u32,
        gen: u32,
        topic: &str,
        position: Option<broker::Position>,
    ) {
        let Some(id) = self.topics.id(topic) else {
            return;
        };
        if self.table.get_mut(slot).is_none_or(|c| c.gen != gen) {
            return;
        }
        let Some(Hold::Waiting { resumes, frames }) = self.resumes.held.0.remove(&(id, slot))
        else {
            return;
        };
        let resumed = |recovered: bool| resumes.then_some(recovered);
        let covered = match &position {
            Some(p) => {
                let at = Position {
                    offset: p.top,
                    epoch: p.epoch.as_str(),
                };
                let reply = v1::subscribed(topic, Some(at), resumed(p.replay.is_some()));
                self.reply(slot, reply);
                Some((p.top, p.epoch))
            }
            None => {
                self.reply(slot, v1::subscribed(topic, None, resumed(false)));
                None
            }
        };
        let replay = position.and_then(|p| p.replay).into_iter().flatten();
        if let Some((top, epoch)) = covered.filter(|&(top, _)| top > 0) {
            self.resumes
                .held
                .0
                .insert((id, slot), Hold::Floor { top, epoch });
        }
        let live = frames.into_iter().filter(|(at, _)| {
            !matches!((at, covered), (Some((o, e)), Some((top, epoch))) if *e == epoch && *o <= top)
        });
        let conn = self.table.get_mut(slot).expect("live slot");
        let mut queued = 0;
        for frame in replay.chain(live.map(|(_, f)| f)) {
            queued += u64::from(self.io.queue(conn, slot, frame));
        }
        WorkerStats::add(&self.io.stats().messages_out, queued);
    }

    /// The id of `topic` if `slot` is subscribed to it.
    pub(in crate::connections) fn held(&mut self, slot: u32, topic: &str) -> Option<TopicId> {
        let conn = self.table.get_mut(slot).expect("live slot");
        let id = self.topics.id(topic)?;
        conn.topics.find(id).map(|_| id)
    }

    /// The worker has applied every command sent to it before now: no
    /// publish a subscription's read of the history saw is still to come.
    pub fn commands_applied(&mut self) {
        self.resumes.skips.0.clear();
        if !self.unsent.is_empty() {
            self.send_unsent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_frames_wait_then_a_floor_drops_what_the_read_covered() {
        let epoch = Epoch::parse("AAAAAAAA").unwrap();
        let other = Epoch::parse("BBBBBBBB").unwrap();
        let frame = || Bytes::from_static(b"f");
        let mut held = Held::default();
        assert!(!held.hold(1, 7, Some((1, epoch)), frame), "nothing held");
        let waiting = Hold::Waiting {
            resumes: true,
            frames: Vec::new(),
        };
        held.0.insert((1, 7), waiting);
        assert!(
            held.hold(1, 7, Some((5, epoch)), frame),
            "held while waiting"
        );
        assert!(!held.hold(2, 7, Some((5, epoch)), frame), "another topic");
        assert!(matches!(&held.0[&(1, 7)], Hold::Waiting { frames, .. } if frames.len() == 1));
        held.0.insert((1, 7), Hold::Floor { top: 5, epoch });
        assert!(
            held.hold(1, 7, Some((4, epoch)), frame),
            "covered by the read"
        );
        assert!(
            held.hold(1, 7, Some((5, epoch)), frame),
            "covered by the read"
        );
        assert!(
            !held.hold(1, 7, Some((6, epoch)), frame),
            "past the top: live"
        );
        assert!(
            held.0.is_empty(),
            "the floor is gone after the first live frame"
        );
        held.0.insert((1, 7), Hold::Floor { top: 5, epoch });
        assert!(
            !held.hold(1, 7, Some((2, other)), frame),
            "a new epoch is live"
        );
        held.0.insert((1, 7), Hold::Floor { top: 5, epoch });
        held.forget(1, 7);
        assert!(held.0.is_empty());
    }
}
