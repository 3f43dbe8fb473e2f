//! `echo`: C connections in a closed loop, each sending one S-byte binary
//! message and waiting for its echo before the next; messages per second
//! and round-trip latency.

use crate::load::{Mode, Shared, Transport};
use crate::report::{print_table, Latency, Meta};
use crate::session::{write_outputs, Common, Ramp, Session};
use serde::Serialize;
use std::collections::BTreeMap;
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
    pub meta: Meta,
    pub url: String,
    pub workers: usize,
    pub size: usize,
    pub ramp: Ramp,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub duration_seconds: f64,
    /// Echoes received during the timed window.
    pub messages: u64,
    pub messages_per_s: f64,
    /// Echoes of the wrong size.
    pub bad_messages: u64,
    pub dropped: u64,
    pub dropped_by_reason: BTreeMap<String, u64>,
    pub round_trip: Latency,
    pub series: Vec<crate::probe::Sample>,
}

impl EchoResult {
    /// True when every connection opened, none dropped and every echo was
    /// the message sent.
    pub fn ok(&self) -> bool {
        self.ramp.failed == 0
            && self.ramp.pending == 0
            && self.dropped == 0
            && self.bad_messages == 0
            && self.messages > 0
    }

    /// Prints the summary table.
    pub fn print(&self) {
        let rows = vec![
            ("url", self.url.clone()),
            (
                "connections",
                format!("{} (failed {})", self.ramp.opened, self.ramp.failed),
            ),
            ("message size", format!("{} B", self.size)),
            ("messages/s", format!("{:.0}", self.messages_per_s)),
            ("round trip", self.round_trip.describe()),
            (
                "dropped",
                format!("{} {:?}", self.dropped, self.dropped_by_reason),
            ),
            ("bad echoes", self.bad_messages.to_string()),
        ];
        print_table("echo", &rows);
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
    let workers = session.fleet.workers;
    let done = session.finish()?;
    let report = &done.report;
    let result = EchoResult {
        meta,
        url: args.url.clone(),
        workers,
        size: args.size,
        ramp,
        failed_by_reason: report.failures.clone(),
        duration_seconds: seconds,
        messages,
        messages_per_s: messages as f64 / seconds,
        bad_messages: report.bad_messages,
        dropped: report.drops.values().sum(),
        dropped_by_reason: report.drops.clone(),
        round_trip: Latency::of(&report.latency_us),
        series: done.series.clone(),
    };
    if let Some(dir) = &args.common.out {
        let title = "Echo round trip";
        write_outputs(dir, &result, &result.series, title, &report.latency_us)?;
    }
    Ok(result)
}
