//! The broker's Prometheus series, appended to `GET /metrics`.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Series kept for the process's life.
pub struct Metrics {
    registry: Registry,
    /// Seconds from the first command of a publish to Redis's last reply.
    pub publish_latency: Histogram,
    /// Messages received from the broker's channels.
    pub received: IntCounter,
    /// Messages from the broker dropped as malformed.
    pub invalid: IntCounter,
    /// Channels subscribed again after a reconnect.
    pub resubscribed: IntCounter,
    /// 1 while an instance is connected, by shard.
    pub up: IntGaugeVec,
}

impl Metrics {
    /// Series for `shards` instances, all down.
    pub fn new(shards: usize) -> Self {
        let registry = Registry::new();
        let publish_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ringcast_broker_publish_duration_seconds",
                "Time a publish spends in the broker (scripts and PUBLISH), in seconds",
            )
            .buckets(exponential_buckets(50e-6, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid histogram");
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help)).expect("valid counter")
        };
        let received = counter(
            "ringcast_broker_messages_received_total",
            "Messages received from the broker's channels",
        );
        let invalid = counter(
            "ringcast_broker_messages_invalid_total",
            "Messages from the broker's channels dropped as malformed",
        );
        let resubscribed = counter(
            "ringcast_broker_resubscribed_total",
            "Channels subscribed again after a reconnect to the broker",
        );
        let up = IntGaugeVec::new(
            Opts::new(
                "ringcast_broker_up",
                "1 while the broker instance is connected",
            ),
            &["shard"],
        )
        .expect("valid gauge");
        for shard in 0..shards {
            up.with_label_values(&[shard.to_string()]).set(0);
        }
        for c in [&received, &invalid, &resubscribed] {
            registry.register(Box::new(c.clone())).expect("unique");
        }
        registry
            .register(Box::new(publish_latency.clone()))
            .expect("unique");
        registry.register(Box::new(up.clone())).expect("unique");
        Self {
            registry,
            publish_latency,
            received,
            invalid,
            resubscribed,
            up,
        }
    }

    /// The series as Prometheus text.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("metrics encode")
    }
}
