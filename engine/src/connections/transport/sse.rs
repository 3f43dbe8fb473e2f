//! The SSE transport on a worker: a stream's opening (subscriptions,
//! resume from `Last-Event-ID`, replay) and its deliveries. A sibling of
//! WebSocket over the same connection record, send queue, slow-consumer
//! bound, timers and drain; only the bytes differ (`protocol/sse.rs`).
//!
//! # Positions
//! An event's `id:` names the position of every topic of the stream that
//! keeps history. A stream with one such topic needs nothing per
//! connection: its events' ids are the topic's own position, encoded once
//! per topic per publish like the data. A stream with several keeps their
//! positions in [`Streams`], a side map by slot (the 80-byte record stays
//! as it is), and writes a per-connection `id:` line before the shared
//! data.
//!
//! # No gap, no duplicate
//! A resume reads the history as a `ringcast.v1` subscribe does
//! (`recovery.rs`): replayed offsets up to the top read are skipped when
//! their live frames arrive.

use super::super::io::Io;
use super::super::recovery::REPLY_ROOM;
use super::super::Connections;
use super::Delivery;
use crate::conn::Conn;
use crate::hub::epoch::Epoch;
use crate::protocol::v1::{self, Position, Since};
use crate::protocol::{frame, sse};
use crate::stats::WorkerStats;
use crate::topics::{TopicId, Topics};
use bytes::Bytes;
use std::collections::HashMap;

/// A stream's positions: (topic, offset of the last message it was sent,
/// epoch), for each of its topics that keeps history.
pub(super) type Positions = Vec<(TopicId, u64, Epoch)>;

/// Positions of the SSE streams with two or more topics that keep
/// history, by slot.
#[derive(Default)]
pub(super) struct Streams(HashMap<u32, Positions>);

impl Streams {
    /// The connection in `slot` is gone.
    pub fn forget(&mut self, slot: u32) {
        if !self.0.is_empty() {
            self.0.remove(&slot);
        }
    }
}

/// The `id:` text of `positions`.
pub(super) fn id_text(topics: &Topics, positions: &Positions) -> String {
    sse::format_positions(
        positions
            .iter()
            .map(|(id, offset, epoch)| (topics.name(*id), *offset, epoch.as_str())),
    )
}

/// One topic's SSE encodings of one publish on this worker, made on
/// first use and shared by every stream that gets them.
#[derive(Default)]
pub(super) struct Encoded {
    data: Option<Bytes>,
    with_id: Option<Bytes>,
}

impl Encoded {
    /// The event without `id:` (topics without history, users'
    /// messages, broadcasts; or after a per-connection `id:` line).
    pub fn data(&mut self, frame: &Bytes) -> Bytes {
        self.data
            .get_or_insert_with(|| sse::data_event(frame::server_payload(frame)))
            .clone()
    }

    pub fn with_id(&mut self, name: &str, offset: u64, epoch: Epoch, frame: &Bytes) -> Bytes {
        self.with_id
            .get_or_insert_with(|| {
                let id = sse::format_positions([(name, offset, epoch.as_str())]);
                sse::with_id(&id, frame::server_payload(frame))
            })
            .clone()
    }
}

impl Streams {
    /// Queues `slot`'s event for `d`: with the topic's position as its
    /// `id:` when the topic keeps history (the stream's positions when it
    /// has several such topics), else without one. Returns whether it was
    /// queued.
    pub fn deliver(
        &mut self,
        io: &mut Io,
        conn: &mut Conn,
        slot: u32,
        topics: &Topics,
        d: &Delivery<'_>,
        encoded: &mut Encoded,
    ) -> bool {
        let (Some(topic), Some((offset, epoch))) = (d.topic, d.position) else {
            return io.queue(conn, slot, encoded.data(&d.v1.plain));
        };
        let Some(positions) = self.0.get_mut(&slot) else {
            let event = encoded.with_id(topics.name(topic), offset, epoch, &d.v1.plain);
            return io.queue(conn, slot, event);
        };
        if let Some(p) = positions.iter_mut().find(|p| p.0 == topic) {
            (p.1, p.2) = (offset, epoch);
        }
        let id = sse::id_line(&id_text(topics, positions), false);
        io.queue(conn, slot, id) && io.queue(conn, slot, encoded.data(&d.v1.plain))
    }
}

/// The heartbeat: a comment line.
pub(super) fn heartbeat() -> Bytes {
    Bytes::from_static(sse::HEARTBEAT)
}

impl Connections {
    /// Opens an SSE stream on `slot` (its head already queued): subscribes
    /// to `topics` (allowed at the handshake), resumes each from
    /// `last_event_id` where the history allows, and queues, in order: an
    /// `event: reset` naming the topics a resume did not recover; one
    /// `event: subscribed` per topic (the `ringcast.v1` reply); the
    /// replays, each with its `id:`; and an `id:` line with every topic's
    /// position, so the client holds one before any message arrives.
    pub(in crate::connections) fn open_sse(
        &mut self,
        slot: u32,
        topics: &[String],
        last_event_id: Option<&str>,
    ) {
        let resume = last_event_id.map(sse::parse_positions);
        let mut lost = Vec::new();
        let mut positions = Positions::new();
        let mut replays: Vec<(usize, Vec<Bytes>)> = Vec::new();
        let mut events = Vec::new();
        let mut reserved = 0;
        for topic in topics {
            if self.held(slot, topic).is_some() {
                continue; // named twice
            }
            self.subscribe(slot, topic);
            let Some(id) = self.held(slot, topic) else {
                continue; // refused (cannot happen: checked at the handshake)
            };
            let since = resume
                .iter()
                .flatten()
                .find(|p| p.topic == *topic)
                .map(|p| Since {
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                });
            let pending = self.table.get_mut(slot).expect("live slot").out.pending();
            let room = self
                .io
                .limits
                .max_outbound
                .saturating_sub(pending + reserved + REPLY_ROOM + topic.len());
            let Some(recovery) = self.hub.recover(topic, since.as_ref(), room) else {
                if resume.is_some() {
                    lost.push(topic.clone());
                }
                events.push(v1::subscribed(topic, None, None));
                continue;
            };
            if recovery.top > 0 {
                self.resumes
                    .skips
                    .insert(id, slot, recovery.top, recovery.epoch);
            }
            let recovered = match (&since, recovery.replay) {
                (Some(since), Some(frames)) => {
                    reserved += frames.iter().map(Bytes::len).sum::<usize>();
                    positions.push((id, since.offset, recovery.epoch));
                    replays.push((positions.len() - 1, frames));
                    true
                }
                _ => {
                    positions.push((id, recovery.top, recovery.epoch));
                    false
                }
            };
            if resume.is_some() && !recovered {
                lost.push(topic.clone());
            }
            let at = Position {
                offset: recovery.top,
                epoch: recovery.epoch.as_str(),
            };
            events.push(v1::subscribed(
                topic,
                Some(at),
                resume.is_some().then_some(recovered),
            ));
        }
        let conn = self.table.get_mut(slot).expect("live slot");
        if !lost.is_empty() {
            self.io.queue(conn, slot, sse::reset_event(&lost));
        }
        for reply in events {
            self.io
                .queue(conn, slot, sse::named("subscribed", reply.as_bytes()));
        }
        let mut replayed = 0;
        for (at, frames) in replays {
            for frame in frames {
                positions[at].1 += 1;
                let id = id_text(&self.topics, &positions);
                let event = sse::with_id(&id, frame::server_payload(&frame));
                replayed += u64::from(self.io.queue(conn, slot, event));
            }
        }
        WorkerStats::add(&self.io.stats().messages_out, replayed);
        if !positions.is_empty() {
            let id = id_text(&self.topics, &positions);
            self.io.queue(conn, slot, sse::id_line(&id, true));
        }
        if positions.len() > 1 {
            self.transports.sse.0.insert(slot, positions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Frames;
    use crate::protocol::v1::{self, Content, Data, Position};

    #[test]
    fn a_delivery_is_one_event_with_the_topic_position_as_its_id() {
        let epoch = Epoch::parse("AAAAAAAA").unwrap();
        let at = Position {
            offset: 3,
            epoch: epoch.as_str(),
        };
        let v1 = Frames::plain(v1::message("h.a", Some(at), &Data::new(Content::Text, b"hi")).0);
        let mut e = Encoded::default();
        let event = e.with_id("h.a", 3, epoch, &v1.plain);
        assert_eq!(
            std::str::from_utf8(&event).unwrap(),
            "id: h.a:3:AAAAAAAA\ndata: {\"op\":\"message\",\"topic\":\"h.a\",\"offset\":3,\
             \"epoch\":\"AAAAAAAA\",\"data\":\"hi\"}\n\n"
        );
        let again = e.with_id("h.a", 3, epoch, &v1.plain);
        assert_eq!(again.as_ptr(), event.as_ptr(), "encoded once");
        let plain = e.data(&v1.plain);
        assert!(std::str::from_utf8(&plain).unwrap().starts_with("data: {"));
    }
}
