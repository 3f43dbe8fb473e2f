//! Publish and broadcast: one shared frame queued to many connections.

use super::Connections;
use crate::conn::Endpoint;
use crate::stats::WorkerStats;
use bytes::Bytes;

impl Connections {
    /// Queues `frame` to every open subscriber of any of `topics`, once per
    /// connection. Returns how many connections it was queued to.
    pub fn publish(&mut self, topics: &[String], frame: &Bytes) -> usize {
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
                    queued += usize::from(self.io.queue(conn, slot, frame.clone()));
                }
            }
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
}
