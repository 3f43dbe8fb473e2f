//! Counters. Each worker writes only its own [`WorkerStats`] (one cache
//! line group apiece, relaxed atomics); readers sum them.

use crate::protocol::handshake::Reject;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Close codes counted on their own (RFC 6455 §7.4.1, and ringcast's
/// 4001 token expired and 4003 disconnected); others count as "other".
/// 1006 stands for a connection that ended without a close frame.
pub const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 4001, 4003,
];

/// Index of `code` in the per-code counters.
pub fn close_code_index(code: u16) -> usize {
    CLOSE_CODES
        .iter()
        .position(|&c| c == code)
        .unwrap_or(CLOSE_CODES.len())
}

/// One worker's counters. Gauges go up and down; the rest only grow.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Fixed-file slots in this worker's table: its connection capacity.
    pub capacity: AtomicU64,
    /// Gauge: connections in the table (handshaking, open or closing).
    pub connections: AtomicU64,
    /// Gauge: fixed-file slots holding a socket.
    pub slots_in_use: AtomicU64,
    /// Gauge: bytes queued to clients and not yet written.
    pub outbound_bytes: AtomicU64,
    /// Gauge: topics with at least one subscriber on this worker.
    pub topics: AtomicU64,
    /// Gauge: open connections that negotiated permessage-deflate.
    pub compressed_connections: AtomicU64,
    /// Gauge: bytes of zlib state the worker's shared compressors and
    /// inflater hold (zlib-rs's allocation sizes; 0 once idle a second).
    pub compression_state_bytes: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections whose slot was released.
    pub closed: AtomicU64,
    /// Admitted connections closed, by close code (indexed by
    /// [`close_code_index`]; the last is "other").
    pub closed_by_code: [AtomicU64; CLOSE_CODES.len() + 1],
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
    /// Client publishes (ops and room messages) handed upstream.
    pub client_publishes: AtomicU64,
    /// `rpc` ops handed upstream.
    pub client_rpcs: AtomicU64,
    /// Client publishes refused for want of permission.
    pub client_forbidden: AtomicU64,
    /// Client messages dropped over the per-connection rate limits.
    pub client_rate_limited: AtomicU64,
    /// Connections closed with 1008 past ten times the rate limits.
    pub client_rate_limit_closes: AtomicU64,
    /// Connections closed with 1008 past `--max-inflate-bytes-per-sec`.
    pub inflate_budget_closes: AtomicU64,
    /// Upstream events the server could not take (queue full).
    pub upstream_refused: AtomicU64,
    /// Handshakes refused, indexed by `Reject as usize`.
    pub rejects: [AtomicU64; Reject::ALL.len()],
    /// Gauge: io_uring operations submitted whose last CQE has not
    /// arrived (receives, sends, accepts, ...). 0 once the worker exited.
    pub operations_in_flight: AtomicU64,
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
    /// Admitted connections (handshake done, not yet closed): what
    /// `--max-connections` limits.
    pub open: u64,
    /// Total connection capacity (sum of fixed-file tables).
    pub capacity: u64,
    /// Fixed-file slots holding a socket.
    pub slots_in_use: u64,
    /// Bytes queued to clients and not yet written.
    pub outbound_bytes: u64,
    /// Sum over workers of topics with subscribers there (a topic with
    /// subscribers on two workers counts twice).
    pub topics: u64,
    /// Open connections that negotiated permessage-deflate.
    pub compressed_connections: u64,
    /// Bytes of zlib state held by the workers' shared compressors and
    /// inflaters.
    pub compression_state_bytes: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections closed since start.
    pub closed: u64,
    /// Admitted connections closed, by close code ("1006": no close frame).
    pub closed_by_code: std::collections::BTreeMap<String, u64>,
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
    /// Client publishes handed upstream.
    pub client_publishes: u64,
    /// `rpc` ops handed upstream.
    pub client_rpcs: u64,
    /// Client publishes refused for want of permission.
    pub client_forbidden: u64,
    /// Client messages dropped over the rate limits.
    pub client_rate_limited: u64,
    /// Connections closed with 1008 past ten times the rate limits.
    pub client_rate_limit_closes: u64,
    /// Connections closed with 1008 past the inflate budget.
    pub inflate_budget_closes: u64,
    /// Upstream events the server could not take.
    pub upstream_refused: u64,
    /// Handshake rejects by reason label.
    pub handshake_rejects: std::collections::BTreeMap<&'static str, u64>,
    /// io_uring operations in flight (0 after every worker exited: each
    /// cancels and reaps its operations before it frees their memory).
    pub operations_in_flight: u64,
    /// Per worker: connections in its table.
    pub worker_connections: Vec<u64>,
    /// Per worker: fixed-file slots holding a socket.
    pub worker_slots_in_use: Vec<u64>,
    /// Per worker: fixed-file table size.
    pub worker_capacity: Vec<u64>,
    /// Retained history (all topics).
    pub history: crate::hub::history::HistoryStats,
}

/// Sums the workers' counters.
pub fn snapshot(workers: &[WorkerStats]) -> Snapshot {
    let mut s = Snapshot::default();
    for w in workers {
        let get = |c: &AtomicU64| c.load(Relaxed);
        s.connections += get(&w.connections);
        s.capacity += get(&w.capacity);
        s.slots_in_use += get(&w.slots_in_use);
        s.outbound_bytes += get(&w.outbound_bytes);
        s.topics += get(&w.topics);
        s.compressed_connections += get(&w.compressed_connections);
        s.compression_state_bytes += get(&w.compression_state_bytes);
        s.accepted += get(&w.accepted);
        s.closed += get(&w.closed);
        s.messages_in += get(&w.messages_in);
        s.bytes_in += get(&w.bytes_in);
        s.messages_out += get(&w.messages_out);
        s.bytes_out += get(&w.bytes_out);
        s.slow_consumer_closes += get(&w.slow_consumer_closes);
        s.buffer_ring_empty += get(&w.buffer_ring_empty);
        s.operations_in_flight += get(&w.operations_in_flight);
        s.client_publishes += get(&w.client_publishes);
        s.client_rpcs += get(&w.client_rpcs);
        s.client_forbidden += get(&w.client_forbidden);
        s.client_rate_limited += get(&w.client_rate_limited);
        s.client_rate_limit_closes += get(&w.client_rate_limit_closes);
        s.inflate_budget_closes += get(&w.inflate_budget_closes);
        s.upstream_refused += get(&w.upstream_refused);
        s.worker_connections.push(get(&w.connections));
        s.worker_slots_in_use.push(get(&w.slots_in_use));
        s.worker_capacity.push(get(&w.capacity));
        for (i, counter) in w.closed_by_code.iter().enumerate() {
            let label = CLOSE_CODES
                .get(i)
                .map_or_else(|| "other".to_owned(), u16::to_string);
            *s.closed_by_code.entry(label).or_default() += get(counter);
        }
        for reason in Reject::ALL {
            *s.handshake_rejects.entry(reason.label()).or_default() +=
                get(&w.rejects[reason as usize]);
        }
    }
    s
}
