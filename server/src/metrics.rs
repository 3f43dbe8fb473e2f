//! `GET /metrics`: the engine's counters in the Prometheus text format
//! (via the `prometheus` crate). Counters live in the workers as atomics;
//! each scrape copies a [`Snapshot`] into a fresh registry. The publish
//! latency histogram is the one series kept here between scrapes.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use ringcast_engine::Snapshot;

/// Seconds from a publish or broadcast request to every worker having
/// queued it; buckets from 50 µs to about 1.6 s.
pub fn publish_latency() -> HistogramVec {
    let opts = HistogramOpts::new(
        "ringcast_publish_duration_seconds",
        "Time from a publish request to every worker having queued its frame, in seconds",
    )
    .buckets(exponential_buckets(50e-6, 2.0, 16).expect("valid buckets"));
    HistogramVec::new(opts, &["kind"]).expect("valid histogram")
}

/// Adds series to one scrape's registry.
struct Scrape(Registry);

impl Scrape {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: &C) {
        self.0
            .register(Box::new(c.clone()))
            .expect("series names are unique");
    }

    fn counter(&self, name: &str, help: &str, value: u64) {
        let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid counter");
        c.inc_by(value);
        self.add(&c);
    }

    fn gauge(&self, name: &str, help: &str, value: u64) {
        let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid gauge");
        g.set(value as i64);
        self.add(&g);
    }

    fn per_worker(&self, name: &str, help: &str, values: &[u64]) {
        let g = IntGaugeVec::new(Opts::new(name, help), &["worker"]).expect("valid gauge");
        for (worker, value) in values.iter().enumerate() {
            g.with_label_values(&[worker.to_string()])
                .set(*value as i64);
        }
        self.add(&g);
    }

    fn labelled<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl Iterator<Item = (&'a str, u64)>,
    ) {
        let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter");
        for (key, value) in values {
            c.with_label_values(&[key]).inc_by(value);
        }
        self.add(&c);
    }
}

/// The scrape body.
pub fn render(
    s: &Snapshot,
    draining: bool,
    latency: &HistogramVec,
    hooks: Option<&crate::hooks::Hooks>,
) -> String {
    let m = Scrape(Registry::new());
    m.per_worker(
        "ringcast_connections",
        "Connections in the worker's table (handshaking, open or closing)",
        &s.worker_connections,
    );
    m.gauge(
        "ringcast_connections_open",
        "Admitted WebSocket connections, the count --max-connections limits",
        s.open,
    );
    m.per_worker(
        "ringcast_fixed_file_slots_used",
        "Fixed-file table slots holding a socket",
        &s.worker_slots_in_use,
    );
    m.per_worker(
        "ringcast_fixed_file_slots",
        "Fixed-file table size: the worker's connection capacity",
        &s.worker_capacity,
    );
    m.counter(
        "ringcast_connections_accepted_total",
        "TCP connections accepted",
        s.accepted,
    );
    m.labelled(
        "ringcast_connections_closed_total",
        "Admitted connections closed, by the close code sent or received first (1006: no close frame)",
        "code",
        s.closed_by_code.iter().map(|(k, v)| (k.as_str(), *v)),
    );
    m.labelled(
        "ringcast_handshake_rejects_total",
        "Opening handshakes refused, by reason",
        "reason",
        s.handshake_rejects.iter().map(|(k, v)| (*k, *v)),
    );
    m.counter(
        "ringcast_messages_in_total",
        "Data messages received from clients",
        s.messages_in,
    );
    m.counter(
        "ringcast_messages_out_total",
        "Data messages queued to clients",
        s.messages_out,
    );
    m.counter(
        "ringcast_bytes_in_total",
        "Bytes received from clients, handshakes included",
        s.bytes_in,
    );
    m.counter(
        "ringcast_bytes_out_total",
        "Bytes written to clients",
        s.bytes_out,
    );
    m.counter(
        "ringcast_slow_consumer_closes_total",
        "Connections closed with 1008 for an outbound queue over --max-outbound-bytes",
        s.slow_consumer_closes,
    );
    m.gauge(
        "ringcast_outbound_queue_bytes",
        "Bytes queued to clients and not yet written",
        s.outbound_bytes,
    );
    m.counter(
        "ringcast_buffer_ring_empty_total",
        "Multishot receives stopped by an empty provided buffer ring (ENOBUFS)",
        s.buffer_ring_empty,
    );
    m.gauge(
        "ringcast_io_uring_operations_in_flight",
        "io_uring operations submitted whose last completion has not arrived",
        s.operations_in_flight,
    );
    m.gauge(
        "ringcast_topics",
        "Topics with subscribers, summed over workers",
        s.topics,
    );
    m.gauge(
        "ringcast_history_streams",
        "Topics whose history is held (--history)",
        s.history.streams,
    );
    m.gauge(
        "ringcast_history_messages",
        "Messages retained for recovery",
        s.history.messages,
    );
    m.gauge(
        "ringcast_history_bytes",
        "Bytes of history counted against --history-max-bytes (frames plus overheads)",
        s.history.bytes,
    );
    m.counter(
        "ringcast_history_evicted_total",
        "Retained messages evicted to stay under --history-max-bytes",
        s.history.evicted,
    );
    m.gauge(
        "ringcast_compressed_connections",
        "Open connections that negotiated permessage-deflate",
        s.compressed_connections,
    );
    m.gauge(
        "ringcast_compression_state_bytes",
        "Bytes of zlib buffers held by the workers' shared inflaters and echo compressors (as of the last once-a-second trim)",
        s.compression_state_bytes,
    );
    m.gauge(
        "ringcast_draining",
        "1 once a drain has started",
        u64::from(draining),
    );
    m.counter(
        "ringcast_client_publishes_total",
        "Client publishes (ringcast.v1 publish ops and raw room messages) handed to the publish path",
        s.client_publishes,
    );
    m.counter(
        "ringcast_client_rpcs_total",
        "ringcast.v1 rpc ops handed to the rpc hook",
        s.client_rpcs,
    );
    m.counter(
        "ringcast_client_forbidden_total",
        "Client publishes refused: no publish claim or --client-publish pattern matched",
        s.client_forbidden,
    );
    m.counter(
        "ringcast_client_rate_limited_total",
        "Client messages dropped over --client-messages-per-sec or --client-bytes-per-sec",
        s.client_rate_limited,
    );
    m.counter(
        "ringcast_client_rate_limit_closes_total",
        "Connections closed with 1008 past ten times the client rate limits within a second",
        s.client_rate_limit_closes,
    );
    m.counter(
        "ringcast_inflate_budget_closes_total",
        "Connections closed with 1008 for inflating more than --max-inflate-bytes-per-sec",
        s.inflate_budget_closes,
    );
    m.counter(
        "ringcast_upstream_refused_total",
        "Client publishes, rpcs and connect-hook requests refused because the server's queue was full",
        s.upstream_refused,
    );
    if let Some(hooks) = hooks {
        m.add(&hooks.calls);
        m.add(&hooks.dropped);
    }
    m.add(latency);
    TextEncoder::new()
        .encode_to_string(&m.0.gather())
        .expect("text encoding")
}
