//! The broker's Prometheus series, appended to `GET /metrics`.

use prometheus::{
    exponential_buckets, Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
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
    /// Work refused by a full bound, by queue (`interest`: the changed
    /// set overflowed and the shard resynced; `read`: a history read
    /// answered with no position; `commands`: a publish or read past
    /// `--broker-queue`/`--broker-queue-bytes`, answered 503; `pushes`: a
    /// Redis Cluster push past its queue, its link made again).
    pub refused: IntCounterVec,
    /// Messages from the broker's channels refused by a check, by reason
    /// (`size`: over `--max-message-size`; `offset`: an offset that cannot
    /// follow the topic's last one, or past 2^53-1).
    pub messages_refused: IntCounterVec,
    /// Commands that got no answer within `--broker-timeout`, and pings
    /// that failed: each marked its instance down and reconnected it.
    pub timeouts: IntCounter,
    /// Redis Cluster: masters seen replaced in the slot map (a failover,
    /// or slots moved by a reshard), one per old and new master pair in
    /// each change of the map read;
    /// Sentinel: `+switch-master` of our master, once per new master.
    pub failovers: IntCounter,
    /// Redis Cluster: `MOVED`/`ASK` answers to the node's `SSUBSCRIBE`s,
    /// and shard channels Redis unsubscribed because their slot moved,
    /// each followed (the cluster client follows its commands' redirects
    /// itself and does not count them).
    pub redirects: IntCounter,
    /// Redis Cluster: seconds some wanted channel had no master to be
    /// subscribed on (from its loss to its resubscription); Sentinel:
    /// seconds from the master's lost connection to the next master's.
    pub without_master: Counter,
    /// Presence changes of this node Redis did not take (queue full or
    /// Redis down); the node registers its members again after each.
    pub presence_dropped: IntCounter,
    /// Members of dead nodes this node removed (each with its leave).
    pub presence_reaped: IntCounter,
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
        let timeouts = counter(
            "ringcast_broker_timeouts_total",
            "Broker commands or pings without an answer within --broker-timeout (each reconnects the instance)",
        );
        let presence_dropped = counter(
            "ringcast_broker_presence_dropped_total",
            "Presence joins and leaves Redis did not take (queue full or Redis down); the node registers its members again",
        );
        let presence_reaped = counter(
            "ringcast_broker_presence_reaped_total",
            "Members of nodes that stopped refreshing their presence, removed by this node (a leave each)",
        );
        let refused = IntCounterVec::new(
            Opts::new(
                "ringcast_broker_refused_total",
                "Work refused by a full broker bound, by queue (interest, read, commands)",
            ),
            &["queue"],
        )
        .expect("valid counter");
        let messages_refused = IntCounterVec::new(
            Opts::new(
                "ringcast_broker_messages_refused_total",
                "Messages from the broker's channels refused by a check, by reason (size, offset)",
            ),
            &["reason"],
        )
        .expect("valid counter");
        let failovers = counter(
            "ringcast_broker_failovers_total",
            "Masters seen replaced: in the Redis Cluster slot map (failover or reshard), or by Sentinel's +switch-master",
        );
        let redirects = counter(
            "ringcast_broker_redirects_total",
            "Redis Cluster MOVED/ASK answers and slot moves followed by the sharded subscriber",
        );
        let without_master = Counter::with_opts(Opts::new(
            "ringcast_broker_without_master_seconds_total",
            "Seconds without a master: a Redis Cluster channel with none to subscribe on, or the Sentinel master unreachable",
        ))
        .expect("valid counter");
        registry
            .register(Box::new(without_master.clone()))
            .expect("unique");
        for queue in ["interest", "read", "commands", "pushes"] {
            refused.with_label_values(&[queue]);
        }
        for reason in ["size", "offset"] {
            messages_refused.with_label_values(&[reason]);
        }
        registry
            .register(Box::new(refused.clone()))
            .expect("unique");
        registry
            .register(Box::new(messages_refused.clone()))
            .expect("unique");
        for c in [
            &received,
            &invalid,
            &resubscribed,
            &timeouts,
            &failovers,
            &redirects,
            &presence_dropped,
            &presence_reaped,
        ] {
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
            refused,
            messages_refused,
            timeouts,
            failovers,
            redirects,
            without_master,
            presence_dropped,
            presence_reaped,
        }
    }

    /// The series as Prometheus text.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("metrics encode")
    }
}
