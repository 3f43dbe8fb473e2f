//! `fanout`: N subscribers on a topic; M messages published over HTTP, each
//! carrying its sequence number and send time; delivery latency from
//! publish to receipt, and every lost or reordered message counted.

use crate::load::{fanout_payload, now_ns, Filler, Mode, Shared, Transport};
use crate::plot;
use crate::report::{progress, Latency, Meta};
use crate::session::{write_outputs, Common, Outcome, Run, Session};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Flags of `ringcast-bench fanout`.
#[derive(clap::Args, Clone, Debug)]
pub struct Fanout {
    /// WebSocket URL the subscribers connect to. Repeatable (the nodes
    /// of a cluster): the load generator's workers take them in turn, so
    /// use as many workers as URLs or a multiple.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws?topic=t")]
    pub url: Vec<String>,
    /// HTTP URL each message is POSTed to, the body being the message
    /// (ringcast: /publish?topic=…; the peers: /broadcast).
    #[arg(long, default_value = "http://127.0.0.1:8081/publish?topic=t")]
    pub publish_url: String,
    /// Subscribers to connect.
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Messages to publish.
    #[arg(long, default_value_t = 100)]
    pub messages: u32,
    /// Time between two publishes.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Message payload size in bytes (at least the 30 bytes of sequence
    /// number and timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// What fills the payload after the sequence number and timestamp.
    #[arg(long, value_enum, default_value = "spaces")]
    pub payload: Filler,
    /// After the last publish, how long to wait at most for deliveries
    /// still missing; they are then counted as lost.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Subprotocol the subscribers offer. `ringcast.v1`: every delivery is
    /// JSON, and each subscriber reads the payload (sequence number and
    /// send time) from its `data` [default: none, raw payloads].
    #[arg(long, value_parser = [ringcast_engine::protocol::v1::NAME])]
    pub subprotocol: Option<String>,
    /// How subscribers connect: `sse` opens Server-Sent Events streams
    /// (give `--url ws://HOST:PORT/sse?topic=t`) and reads each delivery's
    /// `ringcast.v1` JSON.
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    #[command(flatten)]
    pub common: Common,
}

/// Delivery of one message over all subscribers.
#[derive(Clone, Debug, Serialize)]
pub struct PerMessage {
    pub seq: u32,
    #[serde(flatten)]
    pub latency: Latency,
}

/// results.json of a fan-out run.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutResult {
    #[serde(flatten)]
    pub run: Run,
    pub url: Vec<String>,
    pub publish_url: String,
    /// The subprotocol the subscribers offered, if any.
    pub subprotocol: Option<String>,
    pub transport: Transport,
    /// Subscribers open when publishing started.
    pub subscribers: u64,
    /// Publishes the server accepted (2xx).
    pub published: u64,
    /// Publishes refused or failed, by reason.
    pub publish_errors: BTreeMap<String, u64>,
    /// The smallest receiver count a publish response reported, if the
    /// server reports one (`{"subscribers":N}`).
    pub min_reached: Option<u64>,
    /// subscribers × published.
    pub expected: u64,
    pub delivered: u64,
    /// expected − delivered: messages the server accepted and some open
    /// subscriber never received.
    pub lost: u64,
    pub out_of_order: u64,
    /// Payloads that were not a message of this run.
    pub bad_messages: u64,
    pub latency: Latency,
    /// Deliveries per second from the first publish to the last receipt.
    pub delivered_per_s: f64,
    /// permessage-deflate was negotiated by every subscriber.
    pub compression: bool,
    pub payload: Filler,
    /// Bytes the subscribers received from the first publish to the end
    /// (frames: TCP payload, no TCP/IP headers), per delivery.
    pub wire_bytes_per_delivery: f64,
    /// The server's CPU time (utime + stime) from the first publish to
    /// the end, in µs per delivery (with `--server-pid`).
    pub server_cpu_us_per_delivery: Option<f64>,
    pub per_message: Vec<PerMessage>,
}

impl Outcome for FanoutResult {
    const TITLE: &'static str = "fanout";

    fn run(&self) -> &Run {
        &self.run
    }

    /// Every publish was accepted and reached every subscriber once, in
    /// order (a subscriber lost during the run loses its missing
    /// messages).
    fn complete(&self) -> bool {
        self.publish_errors.is_empty()
            && self.lost == 0
            && self.out_of_order == 0
            && self.bad_messages == 0
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let worst = self.per_message.iter().max_by_key(|m| m.latency.p99_us);
        vec![
            ("url", self.url.join(" ")),
            ("transport", format!("{:?}", self.transport).to_lowercase()),
            (
                "subprotocol",
                match self.transport {
                    Transport::Sse => "ringcast.v1 JSON in SSE events".into(),
                    Transport::Websocket => self
                        .subprotocol
                        .clone()
                        .unwrap_or_else(|| "none (raw)".into()),
                },
            ),
            (
                "subscribers",
                format!("{} (failed {})", self.subscribers, self.run.ramp.failed),
            ),
            (
                "published",
                format!("{} {:?}", self.published, self.publish_errors),
            ),
            (
                "delivered",
                format!("{} of {}", self.delivered, self.expected),
            ),
            ("lost", self.lost.to_string()),
            ("out of order", self.out_of_order.to_string()),
            self.run.dropped_row(),
            ("delivery latency", self.latency.describe()),
            (
                "worst message p99",
                worst.map_or("-".into(), |m| {
                    format!("#{}: {}", m.seq, m.latency.describe())
                }),
            ),
            ("delivered/s", format!("{:.0}", self.delivered_per_s)),
            (
                "bytes per delivery",
                format!(
                    "{:.1} ({:?} payload, compression {})",
                    self.wire_bytes_per_delivery, self.payload, self.compression
                ),
            ),
            (
                "server CPU per delivery",
                self.server_cpu_us_per_delivery
                    .map_or("- (no --server-pid)".into(), |us| format!("{us:.3} µs")),
            ),
        ]
    }
}

/// Publishes one message; returns the receiver count the server reports.
fn publish(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<Option<u64>, String> {
    let mut response = agent.post(url).send(body).map_err(|e| e.to_string())?;
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let reached = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("subscribers")?.as_u64());
    Ok(reached)
}

/// Runs a fan-out measurement.
///
/// # Errors
/// A message for a payload size below 30 bytes, a fleet that cannot start
/// or a worker that fails.
pub fn run(args: &Fanout) -> Result<FanoutResult, String> {
    if args.size < 30 {
        return Err("--size must be at least 30 bytes".into());
    }
    let meta = Meta::now("fanout");
    let mode = Mode::Fanout {
        v1: args.subprotocol.is_some() || args.transport == Transport::Sse,
    };
    let session = Session::start(
        &args.common,
        &args.url,
        args.subscribers,
        mode,
        args.transport,
    )?;
    let ramp = session.ramp(args.subscribers, args.common.rate);
    let shared = session.shared().clone();
    let subscribers = Shared::get(&shared.open);
    let agent = ureq::Agent::new_with_defaults();
    let bar = progress(u64::from(args.messages), args.common.quiet, "publish");
    let (mut published, mut publish_errors, mut min_reached) = (0u64, BTreeMap::new(), None);
    let bytes_before = Shared::get(&shared.bytes_in);
    let cpu = || args.common.server_pid.and_then(crate::probe::cpu_seconds);
    let cpu_before = cpu();
    let first_ns = now_ns();
    let start = Instant::now();
    for seq in 0..args.messages {
        let due = start + args.interval * seq;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let payload = fanout_payload(seq, args.size, args.payload);
        match publish(&agent, &args.publish_url, &payload) {
            Ok(reached) => {
                published += 1;
                if let Some(n) = reached {
                    min_reached = Some(min_reached.map_or(n, |m: u64| m.min(n)));
                }
            }
            Err(e) => *publish_errors.entry(e).or_insert(0u64) += 1,
        }
        bar.set_position(u64::from(seq) + 1);
        bar.set_message(session.status());
    }
    bar.finish();
    let expected = subscribers * published;
    let deadline = Instant::now() + args.drain_timeout;
    while Shared::get(&shared.messages) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let last_ns = Shared::get(&shared.last_message_ns);
    let wire_bytes = Shared::get(&shared.bytes_in) - bytes_before;
    let cpu_used = cpu().zip(cpu_before).map(|(after, before)| after - before);
    let done = session.finish()?;
    let report = &done.report;
    let delivered = Shared::get(&shared.messages).saturating_sub(report.bad_messages);
    let span_s = last_ns.saturating_sub(first_ns) as f64 / 1e9;
    let result = FanoutResult {
        run: Run::new(meta, ramp, &done),
        url: args.url.clone(),
        publish_url: args.publish_url.clone(),
        subprotocol: args.subprotocol.clone(),
        transport: args.transport,
        subscribers,
        published,
        publish_errors,
        min_reached,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        out_of_order: report.out_of_order,
        bad_messages: report.bad_messages,
        latency: Latency::of(&report.latency_us),
        delivered_per_s: if span_s > 0.0 {
            delivered as f64 / span_s
        } else {
            0.0
        },
        compression: args.common.compression,
        payload: args.payload,
        wire_bytes_per_delivery: wire_bytes as f64 / delivered.max(1) as f64,
        server_cpu_us_per_delivery: cpu_used.map(|s| s * 1e6 / delivered.max(1) as f64),
        per_message: report
            .per_message_us
            .iter()
            .enumerate()
            .map(|(seq, h)| PerMessage {
                seq: seq as u32,
                latency: Latency::of(h),
            })
            .collect(),
    };
    if let Some(dir) = &args.common.out {
        let title = "Publish-to-receipt latency";
        write_outputs(dir, &result, title, &report.latency_us)?;
        let p99 = |m: &PerMessage| m.latency.p99_us as f64 / 1e3;
        let max = |m: &PerMessage| m.latency.max_us as f64 / 1e3;
        let points = |f: &dyn Fn(&PerMessage) -> f64| {
            result
                .per_message
                .iter()
                .map(|m| (f64::from(m.seq), f(m)))
                .collect()
        };
        plot::lines(
            &dir.join("per_message.svg"),
            "Delivery latency per message",
            "message",
            "latency (ms)",
            &[("p99".into(), points(&p99)), ("max".into(), points(&max))],
        )?;
    }
    Ok(result)
}
