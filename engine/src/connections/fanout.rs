//! Publish and broadcast: one shared frame queued to many connections,
//! or its compressed twin to those that negotiated permessage-deflate.

use super::Connections;
use crate::command::Frames;
use crate::conn::Endpoint;
use crate::stats::WorkerStats;

impl Connections {
    /// Queues `frames` to every open subscriber of any of `topics`, once
    /// per connection. Returns how many connections it was queued to.
    pub fn publish(&mut self, topics: &[String], frames: &Frames) -> usize {
        self.delivery += 1;
        let mut queued = 0;
        for name in topics {
            let Some(id) = self.topics.id(name) else {
                continue;
            };
            for slot in self.topics.members(id) {
                let conn = self.table.get_mut(slot).expect("subscriber slot is live");
                if conn.last_delivery != self.delivery {
                    conn.last_delivery = self.delivery;
                    let frame = frames.for_route(conn.route).clone();
                    queued += usize::from(self.io.queue(conn, slot, frame));
                }
            }
        }
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Queues `frames` to every open connection on the topics endpoint.
    pub fn broadcast(&mut self, frames: &Frames) -> usize {
        let mut queued = 0;
        let io = &mut self.io;
        self.table.for_each(|slot, conn| {
            if conn.route.is_some_and(|r| r.endpoint() == Endpoint::PubSub) {
                let frame = frames.for_route(conn.route).clone();
                queued += usize::from(io.queue(conn, slot, frame));
            }
        });
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }
}
