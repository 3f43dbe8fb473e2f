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
use super::super::recovery::{Live, Read};
use super::super::Connections;
use super::Delivery;
use crate::conn::Conn;
use crate::hub::epoch::Epoch;
use crate::hub::Recovery;
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

/// One topic's read, as a stream's events are made of it.
struct TopicRead {
    id: TopicId,
    /// The topic keeps history.
    history: bool,
    /// Where it stands (`None`: no history, or the broker could not be
    /// read).
    at: Option<Recovery>,
    /// Live deliveries held while the broker read.
    live: Vec<Live>,
}

impl Connections {
    /// Opens an SSE stream on `slot` (its head already queued): subscribes
    /// to `topics` (allowed at the handshake) and resumes each from
    /// `last_event_id` through the one resume operation. What the local
    /// history answers is queued at once, in order: an `event: reset`
    /// naming the topics a resume did not recover; one `event: subscribed`
    /// per topic (the `ringcast.v1` reply); the replays, each with its
    /// `id:`; and an `id:` line with every topic's position, so the client
    /// holds one before any message arrives. What the broker answers comes
    /// the same way, topic by topic ([`Connections::sse_resumed`]).
    pub(in crate::connections) fn open_sse(
        &mut self,
        slot: u32,
        topics: &[String],
        last_event_id: Option<&str>,
    ) {
        let resume = last_event_id.map(sse::parse_positions);
        let resumes = resume.is_some();
        let mut reads = Vec::new();
        let mut reserved = 0;
        let mut asked = 0;
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
            let room = self.replay_room(slot, topic, reserved);
            let at = match self.resume(slot, id, topic, since.as_ref(), resumes, room) {
                Read::Asked => {
                    asked += 1;
                    continue;
                }
                Read::NoHistory => None,
                Read::Now(mut recovery) => {
                    if since.is_none() {
                        recovery.replay = None;
                    }
                    let replay = recovery.replay.iter().flatten();
                    reserved += replay.map(Bytes::len).sum::<usize>();
                    Some(recovery)
                }
            };
            let history = at.is_some();
            reads.push(TopicRead {
                id,
                history,
                at,
                live: Vec::new(),
            });
        }
        let mut positions = Positions::new();
        self.sse_events(slot, resumes, reads, &mut positions);
        let known = positions.len();
        if known + asked > 1 {
            self.transports.sse.0.insert(slot, positions);
        }
    }

    /// The broker's answer for `slot`'s stream on `topic` (id `id`; see
    /// [`Connections::recovered`]): its events, as [`Self::open_sse`]
    /// queues them, then the `live` deliveries held meanwhile.
    pub(super) fn sse_resumed(
        &mut self,
        slot: u32,
        id: TopicId,
        resumes: bool,
        at: Option<Recovery>,
        live: Vec<Live>,
    ) {
        let mut positions = self.transports.sse.0.remove(&slot);
        let read = TopicRead {
            id,
            history: true,
            at,
            live,
        };
        let mut own = Positions::new();
        self.sse_events(
            slot,
            resumes,
            vec![read],
            positions.as_mut().unwrap_or(&mut own),
        );
        if let Some(positions) = positions {
            self.transports.sse.0.insert(slot, positions);
        }
    }

    /// Queues the events of `reads` on `slot`'s stream (`resumes`: it
    /// came with a `Last-Event-ID`), adding each topic's position to
    /// `positions`: `reset`, `subscribed`, the replays and the held live
    /// deliveries with their `id:`, then an `id:` line.
    fn sse_events(
        &mut self,
        slot: u32,
        resumes: bool,
        reads: Vec<TopicRead>,
        positions: &mut Positions,
    ) {
        let recovered = |r: &TopicRead| r.at.as_ref().is_some_and(|at| at.replay.is_some());
        let lost: Vec<String> = reads
            .iter()
            .filter(|r| resumes && !recovered(r))
            .map(|r| self.topics.name(r.id).to_owned())
            .collect();
        let conn = self.table.get_mut(slot).expect("live slot");
        if !lost.is_empty() {
            self.io.queue(conn, slot, sse::reset_event(&lost));
        }
        let mut replays = Vec::new();
        for r in &reads {
            let name = self.topics.name(r.id);
            let reply = match &r.at {
                Some(at) => {
                    let position = Position {
                        offset: at.top,
                        epoch: at.epoch.as_str(),
                    };
                    v1::subscribed(name, Some(position), resumes.then_some(recovered(r)))
                }
                None if r.history => v1::subscribed(name, None, resumes.then_some(false)),
                None => v1::subscribed(name, None, None),
            };
            self.io
                .queue(conn, slot, sse::named("subscribed", reply.as_bytes()));
            let Some(at) = &r.at else {
                continue;
            };
            let replay = at.replay.as_deref().unwrap_or_default();
            // A replay runs from the client's position up to the top.
            positions.push((r.id, at.top - replay.len() as u64, at.epoch));
            replays.push((positions.len() - 1, replay, &r.live));
        }
        let mut replayed = 0;
        for (at, replay, live) in replays {
            let live = live.iter().map(|(p, f)| (*p, f));
            for (position, frame) in replay.iter().map(|f| (None, f)).chain(live) {
                match position {
                    Some((offset, epoch)) => (positions[at].1, positions[at].2) = (offset, epoch),
                    None => positions[at].1 += 1,
                }
                let id = id_text(&self.topics, positions);
                let event = sse::with_id(&id, frame::server_payload(frame));
                replayed += u64::from(self.io.queue(conn, slot, event));
            }
        }
        WorkerStats::add(&self.io.stats().messages_out, replayed);
        if !positions.is_empty() {
            let id = id_text(&self.topics, positions);
            self.io.queue(conn, slot, sse::id_line(&id, true));
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
