//! `echo`: C connections in a closed loop, each sending one S-byte binary
//! message and waiting for its echo before the next; messages per second
//! and round-trip latency.

use crate::load::{Mode, Shared, Transport};
use crate::report::{Latency, Meta};
use crate::session::{write_outputs, Common, Outcome, Run, Session};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Flags of `ringcast-bench echo`.
#[derive(clap::Args, Clone, Debug)]
pub struct Echo {
    /// WebSocket URL of an echo endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/echo")]
    pub url: String,
    /// Connections, each with one message in flight.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// How long to run once every connection is open.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// results.json of an echo run.
#[derive(Clone, Debug, Serialize)]
pub struct EchoResult {
    #[serde(flatten)]
    pub run: Run,
    pub url: String,
    pub size: usize,
    pub duration_seconds: f64,
    /// Echoes received during the timed window.
    pub messages: u64,
    pub messages_per_s: f64,
    /// Echoes of the wrong size.
    pub bad_messages: u64,
    pub round_trip: Latency,
}

impl Outcome for EchoResult {
    const TITLE: &'static str = "echo";

    fn run(&self) -> &Run {
        &self.run
    }

    /// Every echo was the message sent, and some came back.
    fn complete(&self) -> bool {
        self.bad_messages == 0 && self.messages > 0
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("url", self.url.clone()),
            self.run.opened_row("connections"),
            ("message size", format!("{} B", self.size)),
            ("messages/s", format!("{:.0}", self.messages_per_s)),
            ("round trip", self.round_trip.describe()),
            self.run.dropped_row(),
            ("bad echoes", self.bad_messages.to_string()),
        ]
    }
}

/// Runs an echo measurement.
///
/// # Errors
/// A message when the fleet cannot start or a worker fails.
pub fn run(args: &Echo) -> Result<EchoResult, String> {
    let meta = Meta::now("echo");
    let mode = Mode::Echo { size: args.size };
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
    session.run_for(args.duration, "echo");
    let messages = Shared::get(&shared.messages) - first;
    let seconds = start.elapsed().as_secs_f64();
    let done = session.finish()?;
    let report = &done.report;
    let result = EchoResult {
        run: Run::new(meta, ramp, &done),
        url: args.url.clone(),
        size: args.size,
        duration_seconds: seconds,
        messages,
        messages_per_s: messages as f64 / seconds,
        bad_messages: report.bad_messages,
        round_trip: Latency::of(&report.latency_us),
    };
    if let Some(dir) = &args.common.out {
        let title = "Echo round trip";
        write_outputs(dir, &result, title, &report.latency_us)?;
    }
    Ok(result)
}
