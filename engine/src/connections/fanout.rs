//! Publish and broadcast: one shared frame queued to many connections, by
//! topic, by user, or to all; and closing every connection of some users.

use super::Connections;
use crate::conn::{Endpoint, Phase};
use crate::stats::WorkerStats;
use bytes::Bytes;

impl Connections {
    /// Queues `frame` to every open subscriber of any of `topics` and
    /// every open connection of any of `users`, once per connection.
    /// Returns how many connections it was queued to.
    pub fn publish(&mut self, topics: &[String], users: &[String], frame: &Bytes) -> usize {
        self.delivery += 1;
        let (table, io, delivery) = (&mut self.table, &mut self.io, self.delivery);
        let mut queued = 0;
        let mut deliver = |slot: u32| {
            let conn = table.get_mut(slot).expect("subscriber slot is live");
            if conn.last_delivery != delivery {
                conn.last_delivery = delivery;
                queued += usize::from(io.queue(conn, slot, frame.clone()));
            }
        };
        for name in topics {
            if let Some(id) = self.topics.id(name) {
                self.topics.members(id).for_each(&mut deliver);
            }
        }
        for user in users {
            self.sessions.user_slots(user).for_each(&mut deliver);
        }
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Queues `frame` to every open connection on the topics endpoint.
    pub fn broadcast(&mut self, frame: &Bytes) -> usize {
        let mut queued = 0;
        let io = &mut self.io;
        self.table.for_each(|slot, conn| {
            if conn.endpoint == Some(Endpoint::PubSub) {
                queued += usize::from(io.queue(conn, slot, frame.clone()));
            }
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

    /// Open connections of `user` on this worker.
    pub fn user_connections(&mut self, user: &str) -> usize {
        let table = &mut self.table;
        self.sessions
            .user_slots(user)
            .filter(|&slot| table.get_mut(slot).is_some_and(|c| c.phase == Phase::Open))
            .count()
    }
}
