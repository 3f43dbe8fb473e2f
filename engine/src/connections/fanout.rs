//! Publish and broadcast: one shared frame queued to many connections, by
//! topic, by user, or to all; and closing every connection of some users.

use super::Connections;
use crate::conn::{Endpoint, Phase};
use crate::hub::TopicFrame;
use crate::stats::WorkerStats;
use bytes::Bytes;

impl Connections {
    /// Queues one publish on this worker. Raw-mode connections get `frame`
    /// once per connection, whether they subscribe to any of `topics` or
    /// belong to any of `users`. `ringcast.v1` subscribers get each
    /// topic's delivery from `v1` (in the order of `topics`), once per
    /// topic, except where a recovering subscription already covers it;
    /// `ringcast.v1` connections of `users` that got no topic delivery get
    /// `direct`. Frames shared by the workers are passed through `local`
    /// (this worker's copy) at their first use here. Returns how many
    /// deliveries were queued.
    pub fn publish(
        &mut self,
        topics: &[String],
        users: &[String],
        frame: &Bytes,
        v1: &[TopicFrame],
        direct: &Bytes,
        local: impl Fn(&Bytes) -> Bytes,
    ) -> usize {
        self.delivery += 1;
        let delivery = self.delivery;
        let mut queued = 0;
        for (name, topic_frame) in topics.iter().zip(v1) {
            let Some(id) = self.topics.id(name) else {
                continue;
            };
            let mut v1_frame = None;
            for slot in self.topics.members(id) {
                let conn = self.table.get_mut(slot).expect("subscriber slot is live");
                if conn.endpoint == Some(Endpoint::PubSubV1) {
                    conn.last_delivery = delivery;
                    let position = topic_frame.position;
                    let held = self.held.hold(id, slot, position, || {
                        v1_frame
                            .get_or_insert_with(|| local(&topic_frame.frame))
                            .clone()
                    });
                    if !held && !self.skips.covers(id, slot, position) {
                        let f = v1_frame.get_or_insert_with(|| local(&topic_frame.frame));
                        queued += usize::from(self.io.queue(conn, slot, f.clone()));
                    }
                } else if conn.last_delivery != delivery {
                    conn.last_delivery = delivery;
                    queued += usize::from(self.io.queue(conn, slot, frame.clone()));
                }
            }
        }
        let mut direct_frame = None;
        for slot in users.iter().flat_map(|user| self.sessions.user_slots(user)) {
            let conn = self.table.get_mut(slot).expect("user slot is live");
            if conn.last_delivery == delivery {
                continue;
            }
            conn.last_delivery = delivery;
            let f = if conn.endpoint == Some(Endpoint::PubSubV1) {
                direct_frame.get_or_insert_with(|| local(direct)).clone()
            } else {
                frame.clone()
            };
            queued += usize::from(self.io.queue(conn, slot, f));
        }
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Queues `frame` to every open connection on the topics endpoint, and
    /// `v1` (passed through `local` once) to those speaking `ringcast.v1`.
    pub fn broadcast(
        &mut self,
        frame: &Bytes,
        v1: &Bytes,
        local: impl Fn(&Bytes) -> Bytes,
    ) -> usize {
        let mut queued = 0;
        let mut v1_frame = None;
        let io = &mut self.io;
        self.table.for_each(|slot, conn| {
            let f = match conn.endpoint {
                Some(Endpoint::PubSub) => frame.clone(),
                Some(Endpoint::PubSubV1) => v1_frame.get_or_insert_with(|| local(v1)).clone(),
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
            if conn.phase == Phase::Open {
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
            .filter(|&slot| table.get_mut(slot).is_some_and(|c| c.phase == Phase::Open))
            .count()
    }
}
