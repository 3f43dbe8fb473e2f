//! `recover`: a reconnect storm with recovery. Publishes R messages to a
//! topic that keeps history, then opens N `ringcast.v1` connections at the
//! ramp rate; each subscribes with `since` R messages back as soon as its
//! handshake completes and must get `recovered:true` and all R messages.
//! Reports the time from each connect's start (SOCKET) to its R-th
//! replayed message: reconnect-to-recovered.

use crate::load::{fanout_payload, Filler, Mode, Shared, Transport};
use crate::report::{Latency, Meta};
use crate::session::{write_outputs, Common, Outcome, Run, Session};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Flags of `ringcast-bench recover`.
#[derive(clap::Args, Clone, Debug)]
pub struct Recover {
    /// WebSocket URL of ringcast's topics endpoint (clients subscribe with
    /// a control message, not in the URL).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Base URL of ringcast's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub api: String,
    /// Topic to recover; the server needs a `--history` rule for it that
    /// keeps at least `--replay` messages.
    #[arg(long, default_value = "storm")]
    pub topic: String,
    /// Reconnecting clients.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Messages each client recovers.
    #[arg(long, default_value_t = 100)]
    pub replay: u32,
    /// Payload size of each message, in bytes (at least 30).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// After the ramp, how long to wait at most for replays still missing.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// results.json of a recover run.
#[derive(Clone, Debug, Serialize)]
pub struct RecoverResult {
    #[serde(flatten)]
    pub run: Run,
    pub url: String,
    pub topic: String,
    pub replay: u32,
    /// connections × replay.
    pub expected: u64,
    /// Replayed messages received.
    pub delivered: u64,
    /// Replies without `recovered:true`, or messages that were not
    /// `ringcast.v1`.
    pub bad_messages: u64,
    /// Connect start to 101.
    pub handshake_latency: Latency,
    /// Connect start to the last replayed message.
    pub reconnect_to_recovered: Latency,
}

impl Outcome for RecoverResult {
    const TITLE: &'static str = "recover";

    fn run(&self) -> &Run {
        &self.run
    }

    /// Every client recovered every message.
    fn complete(&self) -> bool {
        self.delivered == self.expected && self.bad_messages == 0
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("url", format!("{} topic {}", self.url, self.topic)),
            self.run.opened_row("clients"),
            (
                "recovered",
                format!("{} of {} messages", self.delivered, self.expected),
            ),
            ("bad messages", self.bad_messages.to_string()),
            self.run.dropped_row(),
            (
                "connect rate",
                format!("{:.0}/s", self.run.ramp.connect_rate_per_s),
            ),
            ("handshake", self.handshake_latency.describe()),
            (
                "reconnect-to-recovered",
                self.reconnect_to_recovered.describe(),
            ),
        ]
    }
}

/// Publishes `replay` messages to `topic`; returns the topic's offset and
/// epoch after them.
fn seed(agent: &ureq::Agent, args: &Recover) -> Result<(u64, String), String> {
    let json = |text: &str| -> Result<serde_json::Value, String> {
        serde_json::from_str(text).map_err(|e| format!("the API's answer is not JSON: {e}"))
    };
    let publish = format!("{}/publish?topic={}", args.api, args.topic);
    for seq in 0..args.replay {
        agent
            .post(&publish)
            .header("Content-Type", "text/plain")
            .send(&fanout_payload(seq, args.size, Filler::Spaces)[..])
            .map_err(|e| format!("POST {publish}: {e}"))?;
    }
    let history = format!("{}/history?topic={}&limit=0", args.api, args.topic);
    let mut response = agent
        .get(&history)
        .call()
        .map_err(|e| format!("GET {history}: {e} (does the topic match a --history rule?)"))?;
    let page = json(
        &response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?,
    )?;
    let (Some(top), Some(epoch)) = (page["offset"].as_u64(), page["epoch"].as_str()) else {
        return Err(format!("GET {history}: no offset and epoch in {page}"));
    };
    if page["first"].as_u64() > Some(top + 1 - u64::from(args.replay)) {
        return Err(format!(
            "topic {} keeps fewer than {} messages: {page}",
            args.topic, args.replay
        ));
    }
    Ok((top, epoch.to_owned()))
}

/// Runs a reconnect storm with recovery.
///
/// # Errors
/// A message for a payload size below 30 bytes, a publish or history
/// request that fails, a topic without enough history, or a fleet that
/// cannot start.
pub fn run(args: &Recover) -> Result<RecoverResult, String> {
    if args.size < 30 || args.replay == 0 {
        return Err("--size must be at least 30 bytes and --replay at least 1".into());
    }
    let meta = Meta::now("recover");
    let agent = ureq::Agent::new_with_defaults();
    let (top, epoch) = seed(&agent, args)?;
    let since = serde_json::json!({"offset": top - u64::from(args.replay), "epoch": epoch});
    let subscribe = serde_json::json!({"op": "subscribe", "topic": args.topic, "since": since});
    // The mode is shared by every worker thread for the whole run.
    let subscribe: &'static str = Box::leak(subscribe.to_string().into_boxed_str());
    let mode = Mode::Recover {
        replay: args.replay,
        subscribe,
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
    let expected = ramp.opened * u64::from(args.replay);
    let deadline = Instant::now() + args.drain_timeout;
    while Shared::get(&shared.messages) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let done = session.finish()?;
    let report = &done.report;
    let result = RecoverResult {
        run: Run::new(meta, ramp, &done),
        url: args.url.clone(),
        topic: args.topic.clone(),
        replay: args.replay,
        expected: args.connections as u64 * u64::from(args.replay),
        delivered: Shared::get(&shared.messages),
        bad_messages: report.bad_messages,
        handshake_latency: Latency::of(&report.handshake_us),
        reconnect_to_recovered: Latency::of(&report.latency_us),
    };
    if let Some(dir) = &args.common.out {
        let title = "Reconnect to recovered (connect start to last replayed message)";
        write_outputs(dir, &result, title, &report.latency_us)?;
    }
    Ok(result)
}
