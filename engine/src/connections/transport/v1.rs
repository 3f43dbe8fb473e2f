//! The `ringcast.v1` transport (the topics endpoint with that
//! subprotocol, docs/protocol.md): every server message is JSON, client
//! ops are parsed by [`crate::protocol::v1::parse`], a subscribe is
//! answered with the topic's position and may resume from one, and a
//! publish arrives once per topic, with the topic's offset and epoch when
//! it keeps history. The frame is encoded once per publish on the
//! publishing thread (the hub retains it as is), and copied once per
//! worker on first use ([`super::Encodings::v1`]).

use super::super::messages::Action;
use super::super::recovery::{Live, Read};
use super::super::Connections;
use crate::conn::Endpoint;
use crate::hub::Recovery;
use crate::protocol::control;
use crate::protocol::decoder::Message;
use crate::protocol::v1::{self, Position, Since};
use crate::stats::WorkerStats;

/// What a text or binary message asks for: a text message is an op.
pub(super) fn on_message(message: Message<'_>) -> Action {
    match message {
        Message::Text(t) => match v1::parse(t) {
            Ok(request) => Action::V1(request),
            Err(reason) => Action::Invalid(control::error(&reason)),
        },
        _ => Action::Invalid(control::error("binary messages are not control messages")),
    }
}

impl Connections {
    /// Applies a client op of a `ringcast.v1` connection. Every op counts
    /// against the rate limits: publish and rpc with their bytes (in
    /// `duplex.rs`), the others here.
    pub(in crate::connections) fn apply_v1(&mut self, slot: u32, request: v1::Request) {
        let control = !matches!(
            request,
            v1::Request::Publish { .. } | v1::Request::Rpc { .. }
        );
        if control && !self.within_rate(slot, 0, true, None) {
            return;
        }
        match request {
            v1::Request::Subscribe {
                topic,
                since,
                join_leave,
            } => self.subscribe_v1(slot, &topic, since.as_ref(), join_leave),
            v1::Request::Control(control::Request::Subscribe { topic }) => {
                self.subscribe_v1(slot, &topic, None, false);
            }
            v1::Request::Presence { topic } => self.presence_query(slot, &topic, false),
            v1::Request::PresenceStats { topic } => self.presence_query(slot, &topic, true),
            v1::Request::Control(other) => self.control(slot, other),
            v1::Request::Publish { topic, data, id } => self.client_publish(slot, topic, data, id),
            v1::Request::Rpc { id, method, data } => self.client_rpc(slot, id, method, data),
        }
    }

    /// Subscribes to the topics named in the upgrade request (or by the
    /// connect hook), each as a subscribe without `since`, answered with
    /// the topic's position.
    pub(super) fn open_v1(&mut self, slot: u32, topics: &[String]) {
        for topic in topics {
            self.subscribe_v1(slot, topic, None, false);
        }
    }

    /// Subscribes `slot` to `topic`, answers with the topic's position
    /// when it keeps history, and with `since`, replays what came after it
    /// or answers `recovered:false`. A topic the connection already holds
    /// is acknowledged without a position and changes nothing but
    /// `join_leave` (on: the subscription gets the topic's presence joins
    /// and leaves).
    fn subscribe_v1(&mut self, slot: u32, topic: &str, since: Option<&Since>, join_leave: bool) {
        let before = self.held(slot, topic);
        let reply = self.subscribe(slot, topic);
        if join_leave {
            self.listen_join_leave(slot, topic);
        }
        let id = match self.held(slot, topic) {
            Some(id) if before.is_none() => id,
            _ => return self.reply(slot, reply), // refused, or already held
        };
        let room = self.replay_room(slot, topic, 0);
        match self.resume(slot, id, topic, since, since.is_some(), room) {
            Read::NoHistory => self.reply(slot, v1::subscribed(topic, None, since.map(|_| false))),
            Read::Now(recovery) => {
                self.v1_resumed(slot, topic, since.is_some(), Some(recovery), Vec::new());
            }
            Read::Asked => {} // answered in `v1_resumed`
        }
    }

    /// Answers a subscribe to `topic` (`resumes`: with `since`) read at
    /// `at` (`None`: the broker could not be read): `subscribed` with the
    /// position and, for a resume, `recovered`; then the replay, then
    /// `live` deliveries held while the broker read.
    pub(super) fn v1_resumed(
        &mut self,
        slot: u32,
        topic: &str,
        resumes: bool,
        at: Option<Recovery>,
        live: Vec<Live>,
    ) {
        let (reply, replay) = match at {
            Some(recovery) => {
                let position = Position {
                    offset: recovery.top,
                    epoch: recovery.epoch.as_str(),
                };
                let recovered = resumes.then_some(recovery.replay.is_some());
                let reply = v1::subscribed(topic, Some(position), recovered);
                (reply, recovery.replay.unwrap_or_default())
            }
            None => (
                v1::subscribed(topic, None, resumes.then_some(false)),
                Vec::new(),
            ),
        };
        self.reply(slot, reply);
        let conn = self.table.get_mut(slot).expect("live slot");
        let mut queued = 0;
        for frame in replay.into_iter().chain(live.into_iter().map(|(_, f)| f)) {
            queued += u64::from(self.io.queue(conn, slot, frame));
        }
        WorkerStats::add(&self.io.stats().messages_out, queued);
    }

    /// Sends `{"op":"resync","topic":…}` to every `ringcast.v1`
    /// subscriber of any of `topics` on this worker: deliveries may have
    /// been missed (the broker was out of reach), and the client should
    /// resubscribe with `since`. Returns how many hints were queued.
    pub fn resync(&mut self, topics: &[String]) -> usize {
        let mut queued = 0;
        for topic in topics {
            let Some(id) = self.topics.id(topic) else {
                continue;
            };
            let hint = v1::resync(topic);
            for slot in self.topics.members(id) {
                let conn = self.table.get_mut(slot).expect("subscriber slot is live");
                if conn.endpoint() == Some(Endpoint::PubSubV1) {
                    queued += usize::from(self.io.queue(conn, slot, hint.clone()));
                }
            }
        }
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Delivery, Encodings};
    use crate::conn::{Deflate, Endpoint, Route};
    use crate::delivery::Frames;
    use crate::protocol::v1::{self, Content, Data, Position};
    use bytes::Bytes;
    use std::cell::Cell;

    #[test]
    fn a_delivery_is_the_shared_v1_frame_copied_once_per_worker() {
        let epoch = crate::hub::epoch::Epoch::parse("AAAAAAAA").unwrap();
        let at = Position {
            offset: 7,
            epoch: epoch.as_str(),
        };
        let data = Data::new(Content::Text, b"hi");
        let shared = Frames {
            plain: v1::message("a", Some(at), &data).0,
            deflated: Some(Bytes::from_static(b"\xc1\x01z")),
        };
        let raw = Frames::default();
        let d = Delivery {
            topic: Some(1),
            position: Some((7, epoch)),
            raw: &raw,
            v1: &shared,
        };
        let copies = Cell::new(0);
        let local = |f: &Frames| {
            copies.set(copies.get() + 1);
            f.clone()
        };
        let mut e = Encodings::default();
        let off = Some(Route::new(Endpoint::PubSubV1, Deflate::Off));
        let full = Some(Route::new(Endpoint::PubSubV1, Deflate::Full));
        let plain = e.v1(&d, &local).for_route(off).clone();
        let deflated = e.v1(&d, &local).for_route(full).clone();
        assert_eq!(copies.get(), 1, "one copy per worker per publish");
        let json = crate::protocol::frame::server_payload(&plain);
        assert_eq!(
            std::str::from_utf8(json).unwrap(),
            r#"{"op":"message","topic":"a","offset":7,"epoch":"AAAAAAAA","data":"hi"}"#
        );
        assert_eq!(&deflated[..], b"\xc1\x01z");
    }
}
