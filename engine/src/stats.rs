//! Counters. Each worker writes only its own [`WorkerStats`] (one cache
//! line group apiece, relaxed atomics); readers sum them.

use crate::protocol::handshake::Reject;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's counters. Gauges go up and down; the rest only grow.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Fixed-file slots in this worker's table: its connection capacity.
    pub capacity: AtomicU64,
    /// Gauge: connections in the table (handshaking, open or closing).
    pub connections: AtomicU64,
    /// Gauge: topics with at least one subscriber on this worker.
    pub topics: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections whose slot was released.
    pub closed: AtomicU64,
    /// Data messages received from clients.
    pub messages_in: AtomicU64,
    /// Bytes received from clients, all frames and handshakes included.
    pub bytes_in: AtomicU64,
    /// Data messages queued to clients.
    pub messages_out: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// Connections closed with 1008 for an outbound queue over its limit.
    pub slow_consumer_closes: AtomicU64,
    /// Multishot receives stopped by an empty buffer ring (ENOBUFS).
    pub buffer_ring_empty: AtomicU64,
    /// Handshakes refused, indexed by `Reject as usize`.
    pub rejects: [AtomicU64; Reject::ALL.len()],
}

impl WorkerStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Subtracts `n` from a gauge.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// Counts one handshake refused for `reason`.
    pub fn reject(&self, reason: Reject) {
        Self::add(&self.rejects[reason as usize], 1);
    }
}

/// A point-in-time copy of the counters, summed over workers.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    /// Connections in all tables.
    pub connections: u64,
    /// Total connection capacity (sum of fixed-file tables).
    pub capacity: u64,
    /// Sum over workers of topics with subscribers there (a topic with
    /// subscribers on two workers counts twice).
    pub topics: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections closed since start.
    pub closed: u64,
    /// Data messages received from clients.
    pub messages_in: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Data messages queued to clients.
    pub messages_out: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Slow-consumer closes (1008).
    pub slow_consumer_closes: u64,
    /// Times a multishot receive found the buffer ring empty.
    pub buffer_ring_empty: u64,
    /// Handshake rejects by reason label.
    pub handshake_rejects: std::collections::BTreeMap<&'static str, u64>,
    /// Per worker: connections in its table.
    pub worker_connections: Vec<u64>,
}

/// Sums the workers' counters.
pub fn snapshot(workers: &[WorkerStats]) -> Snapshot {
    let mut s = Snapshot::default();
    for w in workers {
        let get = |c: &AtomicU64| c.load(Relaxed);
        s.connections += get(&w.connections);
        s.capacity += get(&w.capacity);
        s.topics += get(&w.topics);
        s.accepted += get(&w.accepted);
        s.closed += get(&w.closed);
        s.messages_in += get(&w.messages_in);
        s.bytes_in += get(&w.bytes_in);
        s.messages_out += get(&w.messages_out);
        s.bytes_out += get(&w.bytes_out);
        s.slow_consumer_closes += get(&w.slow_consumer_closes);
        s.buffer_ring_empty += get(&w.buffer_ring_empty);
        s.worker_connections.push(get(&w.connections));
        for reason in Reject::ALL {
            *s.handshake_rejects.entry(reason.label()).or_default() +=
                get(&w.rejects[reason as usize]);
        }
    }
    s
}
