//! `chat`: N clients in one raw room (`ringcast serve --room 'room.*'`,
//! URL `/ws?topic=room.1`), each sending R text messages per second; every
//! message reaches every client (the sender too, with echo on).
//! Deliveries per second and send-to-receipt latency.

use crate::load::{Mode, Shared, Transport};
use crate::report::{Latency, Meta};
use crate::session::{write_outputs, Common, Outcome, Run, Session};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Flags of `ringcast-bench chat`.
#[derive(clap::Args, Clone, Debug)]
pub struct Chat {
    /// WebSocket URL of a room: a raw-mode topic matching the server's
    /// `--room` pattern.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws?topic=room.1")]
    pub url: String,
    /// Clients in the room.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Messages each client sends per second.
    #[arg(long, default_value_t = 1.0)]
    pub send_rate: f64,
    /// Message payload size in bytes (at least the send stamp, ~25 B).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How long clients send once every connection is open.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// results.json of a chat run.
#[derive(Clone, Debug, Serialize)]
pub struct ChatResult {
    #[serde(flatten)]
    pub run: Run,
    pub url: String,
    pub rate_per_client: f64,
    pub size: usize,
    pub duration_seconds: f64,
    /// Messages the clients sent during the timed window.
    pub sent: u64,
    /// Messages received during the window and until the last in flight
    /// arrived (up to 2 s after).
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// `deliveries / (sent × clients)`: 1.0 when every message reached
    /// every client.
    pub delivered_fraction: f64,
    pub bad_messages: u64,
    pub latency: Latency,
}

impl Outcome for ChatResult {
    const TITLE: &'static str = "chat";

    fn run(&self) -> &Run {
        &self.run
    }

    /// Every payload parsed, and some arrived.
    fn complete(&self) -> bool {
        self.bad_messages == 0 && self.deliveries > 0
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("url", self.url.clone()),
            self.run.opened_row("clients"),
            (
                "sending",
                format!("{}/s each, {} B", self.rate_per_client, self.size),
            ),
            ("sent", self.sent.to_string()),
            ("deliveries/s", format!("{:.0}", self.deliveries_per_s)),
            (
                "delivered",
                format!("{:.4} of sent x clients", self.delivered_fraction),
            ),
            ("latency", self.latency.describe()),
            self.run.dropped_row(),
            ("bad messages", self.bad_messages.to_string()),
        ]
    }
}

/// Runs a chat measurement.
///
/// # Errors
/// A message when the fleet cannot start or a worker fails.
pub fn run(args: &Chat) -> Result<ChatResult, String> {
    let meta = Meta::now("chat");
    let mode = Mode::Chat {
        rate: args.send_rate,
        size: args.size,
    };
    let session = Session::start(
        &args.common,
        std::slice::from_ref(&args.url),
        args.connections,
        mode,
        Transport::Websocket,
    )?;
    let ramp = session.ramp(args.connections, args.common.rate);
    let shared = session.shared().clone();
    let first = Shared::get(&shared.messages);
    let start = Instant::now();
    session.run_for(args.duration, "chat");
    shared
        .quiet
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    // Let the messages in flight arrive: stop once none came for 200 ms.
    let settle = Instant::now() + Duration::from_secs(2);
    let mut last = Shared::get(&shared.messages);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
        let now = Shared::get(&shared.messages);
        if now == last {
            break;
        }
        last = now;
    }
    let deliveries = Shared::get(&shared.messages) - first;
    let sent = Shared::get(&shared.sent);
    let done = session.finish()?;
    let report = &done.report;
    let expected = sent as f64 * ramp.opened as f64;
    let result = ChatResult {
        run: Run::new(meta, ramp, &done),
        url: args.url.clone(),
        rate_per_client: args.send_rate,
        size: args.size,
        duration_seconds: seconds,
        sent,
        deliveries,
        // The window's rate: deliveries after it are those in flight.
        deliveries_per_s: deliveries as f64 / seconds,
        delivered_fraction: if expected > 0.0 {
            deliveries as f64 / expected
        } else {
            0.0
        },
        bad_messages: report.bad_messages,
        latency: Latency::of(&report.latency_us),
    };
    if let Some(dir) = &args.common.out {
        write_outputs(dir, &result, "Chat latency", &report.latency_us)?;
    }
    Ok(result)
}
