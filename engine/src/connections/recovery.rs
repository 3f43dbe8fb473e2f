//! The one resume path: a subscription of any transport that keeps
//! positions (`ringcast.v1`, SSE, long-poll) reads where its topic stands
//! and what the client missed through [`Connections::resume`], from the
//! local hub or, with a broker, from the broker; the transport then makes
//! its bytes of the answer (`subscribed` and the replay, SSE events with
//! their ids, a poll's answer). So SSE's `Last-Event-ID` and a poll's
//! `since` recover on another node of a cluster exactly as a
//! `ringcast.v1` resume does.
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
use crate::hub::epoch::Epoch;
use crate::hub::Recovery;
use crate::protocol::v1::Since;
use crate::topics::TopicId;
use crate::upstream::{Event, Origin, Recover};
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

/// A live delivery held while the broker reads: its position and its
/// `ringcast.v1` frame.
pub(super) type Live = (Option<(u64, Epoch)>, Bytes);

/// What the one resume operation ([`Connections::resume`]) gave.
pub(super) enum Read {
    /// The topic keeps no history: no position, live messages only.
    NoHistory,
    /// Read from this node's hub, at once.
    Now(Recovery),
    /// Asked the broker: its answer reaches the transport through
    /// [`Connections::recovered`].
    Asked,
}

impl Held {
    /// The broker answered `slot`'s read of `topic` with `position`
    /// (`None`: it could not be read). Returns whether the client gave a
    /// position, and the live deliveries held meanwhile that the answer
    /// does not cover, in order; from now on a delivery the answer covers
    /// is dropped (see [`Hold::Floor`]). `None` when nothing waited (the
    /// connection left the topic).
    pub fn answered(
        &mut self,
        topic: TopicId,
        slot: u32,
        position: Option<&Recovery>,
    ) -> Option<(bool, Vec<Live>)> {
        let Some(Hold::Waiting { resumes, frames }) = self.0.remove(&(topic, slot)) else {
            return None;
        };
        let covered = position.map(|p| (p.top, p.epoch));
        if let Some((top, epoch)) = covered.filter(|&(top, _)| top > 0) {
            self.0.insert((topic, slot), Hold::Floor { top, epoch });
        }
        let live = frames.into_iter().filter(|(at, _)| {
            !matches!((at, covered), (Some((o, e)), Some((top, epoch))) if *e == epoch && *o <= top)
        });
        Some((resumes, live.collect()))
    }
}

impl Connections {
    /// The one resume operation, for every transport that keeps
    /// positions: where `slot`'s new subscription to `topic` (id `id`)
    /// stands and, with `since`, what it missed, within `room` bytes of
    /// replay (`resumes`: the client came with a position, for the
    /// transport's answer). Without a broker the hub answers at once, and live
    /// deliveries the read covers are then skipped ([`Skips`]). With one,
    /// the broker is asked ([`crate::upstream::Event::Recover`]) and the
    /// subscription's live deliveries are held ([`Held`]) until its
    /// answer, which [`Connections::recovered`] hands to the transport.
    pub(super) fn resume(
        &mut self,
        slot: u32,
        id: TopicId,
        topic: &str,
        since: Option<&Since>,
        resumes: bool,
        room: usize,
    ) -> Read {
        if !self.broker {
            let Some(recovery) = self.hub.recover(topic, since, room) else {
                return Read::NoHistory;
            };
            if recovery.top > 0 {
                self.resumes
                    .skips
                    .insert(id, slot, recovery.top, recovery.epoch);
            }
            return Read::Now(recovery);
        }
        if self.hub.rule(topic).is_none() {
            return Read::NoHistory;
        }
        self.resumes.held.wait(id, slot, resumes);
        let gen = self.table.get_mut(slot).expect("live slot").gen;
        let origin = Origin {
            worker: self.io.worker as u32,
            slot,
            gen,
        };
        self.send_to_broker(Event::Recover(Recover {
            origin,
            topic: topic.to_owned(),
            since: since.cloned(),
            room,
        }));
        Read::Asked
    }

    /// Bytes a replay may take in `slot`'s send queue: what the queue can
    /// still take, less `reserved` (replays already planned) and room for
    /// the reply about `topic` that precedes it.
    pub(super) fn replay_room(&mut self, slot: u32, topic: &str, reserved: usize) -> usize {
        let pending = self.table.get_mut(slot).expect("live slot").out.pending();
        self.io
            .limits
            .max_outbound
            .saturating_sub(pending + reserved + REPLY_ROOM + topic.len())
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
