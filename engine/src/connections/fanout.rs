//! Publish and broadcast: one shared frame queued to many connections, by
//! topic, by user, or to all (or its compressed twin to those that
//! negotiated permessage-deflate); and closing every connection of some
//! users.

use super::sse::Encoded;
use super::Connections;
use crate::conn::{Endpoint, Phase};
use crate::delivery::Frames;
use crate::delivery::TopicFrame;
use crate::stats::WorkerStats;
use bytes::Bytes;

/// One publish as a worker applies it (see [`Connections::publish`]).
#[derive(Clone, Copy)]
pub struct Fanout<'a> {
    /// Topic names.
    pub topics: &'a [String],
    /// User ids.
    pub users: &'a [String],
    /// The raw-mode frames (plain, and compressed for permessage-deflate).
    pub frames: &'a Frames,
    /// Each topic's `ringcast.v1` delivery, in the order of `topics`.
    pub v1: &'a [TopicFrame],
    /// The `ringcast.v1` frames for connections reached as a user's.
    pub direct: &'a Frames,
    /// (slot, generation) of a connection that gets nothing (the sender
    /// of a client publish with echo off).
    pub skip: Option<(u32, u32)>,
}

impl Connections {
    /// Queues one publish on this worker. Raw-mode connections get `frames`
    /// once per connection, whether they subscribe to any of `topics` or
    /// belong to any of `users`. `ringcast.v1` subscribers get each
    /// topic's delivery from `v1` (in the order of `topics`), once per
    /// topic, except where a recovering subscription already covers it;
    /// SSE streams get the same as events (`sse.rs`), encoded once per
    /// topic on this worker;
    /// `ringcast.v1` connections of `users` that got no topic delivery get
    /// `direct`. Frames shared by the workers are passed through `local`
    /// (this worker's copy) at their first use here. The `skip`
    /// connection gets nothing. Returns how many deliveries were queued.
    pub fn publish(&mut self, publish: &Fanout<'_>, local: impl Fn(&Frames) -> Frames) -> usize {
        let Fanout {
            topics,
            users,
            frames,
            v1,
            direct,
            skip,
        } = *publish;
        self.delivery += 1;
        let delivery = self.delivery;
        // The skipped connection counts as delivered already.
        if let Some((slot, gen)) = skip {
            if let Some(conn) = self.table.get_mut(slot).filter(|c| c.gen == gen) {
                conn.last_delivery = delivery;
            }
        }
        let mut queued = 0;
        for (name, topic_frame) in topics.iter().zip(v1) {
            let Some(id) = self.topics.id(name) else {
                continue;
            };
            let mut v1_frame = None;
            let mut sse = Encoded::default();
            for slot in self.topics.members(id) {
                let conn = self.table.get_mut(slot).expect("subscriber slot is live");
                if conn.endpoint() == Some(Endpoint::Poll) {
                    conn.last_delivery = delivery;
                    if !self.skips.covers(id, slot, topic_frame.position) {
                        let (io, topics) = (&mut self.io, &self.topics);
                        let sent = self.polls.deliver(io, conn, slot, topics, topic_frame, id);
                        queued += usize::from(sent);
                    }
                } else if conn.endpoint() == Some(Endpoint::Sse) {
                    conn.last_delivery = delivery;
                    if !self.skips.covers(id, slot, topic_frame.position) {
                        let (io, topics) = (&mut self.io, &self.topics);
                        let sent =
                            self.streams
                                .deliver(io, conn, slot, topics, id, topic_frame, &mut sse);
                        queued += usize::from(sent);
                    }
                } else if conn.endpoint() == Some(Endpoint::PubSubV1) {
                    if skip == Some((slot, conn.gen)) {
                        continue;
                    }
                    conn.last_delivery = delivery;
                    // Held while the broker reads the topic for this
                    // subscription: sent plain, after the replay.
                    let position = topic_frame.position;
                    let held = self.held.hold(id, slot, position, || {
                        v1_frame
                            .get_or_insert_with(|| local(&topic_frame.frames))
                            .plain
                            .clone()
                    });
                    if !held && !self.skips.covers(id, slot, position) {
                        let f = v1_frame.get_or_insert_with(|| local(&topic_frame.frames));
                        let f = f.for_route(conn.route).clone();
                        queued += usize::from(self.io.queue(conn, slot, f));
                    }
                } else if conn.last_delivery != delivery {
                    conn.last_delivery = delivery;
                    let f = frames.for_route(conn.route).clone();
                    queued += usize::from(self.io.queue(conn, slot, f));
                }
            }
        }
        self.finish_polls();
        let mut direct_frame = None;
        let mut direct_sse = Encoded::default();
        for slot in users.iter().flat_map(|user| self.sessions.user_slots(user)) {
            let conn = self.table.get_mut(slot).expect("user slot is live");
            if conn.last_delivery == delivery {
                continue;
            }
            conn.last_delivery = delivery;
            let f = match conn.endpoint() {
                Some(Endpoint::PubSubV1) => direct_frame
                    .get_or_insert_with(|| local(direct))
                    .for_route(conn.route)
                    .clone(),
                Some(Endpoint::Sse) => direct_sse.data(&direct.plain),
                Some(Endpoint::PubSub) => frames.for_route(conn.route).clone(),
                // A long-poll answers only its topics; /echo takes none.
                _ => continue,
            };
            queued += usize::from(self.io.queue(conn, slot, f));
        }
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Queues `frames` to every open connection on the topics endpoint, and
    /// `v1` (passed through `local` once) to those speaking `ringcast.v1`;
    /// SSE streams get `v1`'s JSON as an event.
    pub fn broadcast(
        &mut self,
        frames: &Frames,
        v1: &Frames,
        local: impl Fn(&Frames) -> Frames,
    ) -> usize {
        let mut queued = 0;
        let mut v1_frame = None;
        let mut sse = Encoded::default();
        let io = &mut self.io;
        self.table.for_each(|slot, conn| {
            let f = match conn.endpoint() {
                Some(Endpoint::PubSub) => frames.for_route(conn.route).clone(),
                Some(Endpoint::PubSubV1) => v1_frame
                    .get_or_insert_with(|| local(v1))
                    .for_route(conn.route)
                    .clone(),
                Some(Endpoint::Sse) => sse.data(&v1.plain),
                _ => return,
            };
            queued += usize::from(io.queue(conn, slot, f));
        });
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Starts closing every open connection of any of `users` with `code`
    /// and `reason`. Returns how many it closes.
    pub fn disconnect(&mut self, users: &[String], code: u16, reason: &str) -> usize {
        let (table, io) = (&mut self.table, &mut self.io);
        let mut closed = 0;
        for slot in users.iter().flat_map(|user| self.sessions.user_slots(user)) {
            let conn = table.get_mut(slot).expect("user slot is live");
            if conn.phase() == Phase::Open {
                io.close(conn, slot, Some(code), reason);
                closed += 1;
            }
        }
        closed
    }

    /// Queues `frame` to the open connection in `slot` if its generation
    /// is `gen` (an answer to an upstream event).
    pub fn reply_frame(&mut self, slot: u32, gen: u32, frame: Bytes) {
        if let Some(conn) = self.table.get_mut(slot).filter(|c| c.gen == gen) {
            self.io.queue(conn, slot, frame);
        }
    }

    /// Open connections of `user` on this worker.
    pub fn user_connections(&mut self, user: &str) -> usize {
        let table = &mut self.table;
        self.sessions
            .user_slots(user)
            .filter(|&slot| {
                table
                    .get_mut(slot)
                    .is_some_and(|c| c.phase() == Phase::Open)
            })
            .count()
    }
}
