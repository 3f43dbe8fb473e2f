//! Publish and broadcast: one shared frame queued to many connections.

use super::Connections;
use crate::conn::Endpoint;
use crate::hub::TopicFrame;
use crate::stats::WorkerStats;
use bytes::Bytes;

impl Connections {
    /// Queues `frame` to every open raw-mode subscriber of any of `topics`,
    /// once per connection, and each topic's `ringcast.v1` delivery (`v1`,
    /// in the order of `topics`) to its `ringcast.v1` subscribers, once per
    /// topic, except those a recovering subscription already covers. A v1
    /// frame is passed through `local` (this worker's copy) at its first
    /// subscriber here. Returns how many deliveries were queued.
    pub fn publish(
        &mut self,
        topics: &[String],
        frame: &Bytes,
        v1: &[TopicFrame],
        local: impl Fn(&Bytes) -> Bytes,
    ) -> usize {
        self.delivery += 1;
        let mut queued = 0;
        for (name, delivery) in topics.iter().zip(v1) {
            let Some(id) = self.topics.id(name) else {
                continue;
            };
            let mut v1_frame = None;
            for slot in self.topics.members(id) {
                let conn = self.table.get_mut(slot).expect("subscriber slot is live");
                if conn.endpoint == Some(Endpoint::PubSubV1) {
                    if !self.skips.covers(id, slot, delivery.position) {
                        let f = v1_frame.get_or_insert_with(|| local(&delivery.frame));
                        queued += usize::from(self.io.queue(conn, slot, f.clone()));
                    }
                } else if conn.last_delivery != self.delivery {
                    conn.last_delivery = self.delivery;
                    queued += usize::from(self.io.queue(conn, slot, frame.clone()));
                }
            }
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
}
