//! The load generator: a fleet of client connections spread over worker
//! threads, each owning one io_uring, like the server it measures.
//!
//! A connection is a chain of SQEs on a direct descriptor (a fixed-file
//! slot, never a process fd): SOCKET into the slot, BIND to a source
//! address, CONNECT, then SEND of the upgrade request and a multishot RECV
//! over the worker's provided buffer ring. The process's fd table is not
//! used, so one process holds `workers × RLIMIT_NOFILE` connections, and an
//! idle connection costs its 24-byte record and no read buffer.
//!
//! The controller (a subcommand) starts a [`Fleet`], watches [`Shared`]
//! counters while connections ramp up, switches the fleet to [`Phase::Run`]
//! (echo traffic, pings), and finally stops it and merges each worker's
//! [`Report`].

pub(crate) mod conn;
pub mod wire;
mod worker;

use crate::target::{Sources, Target};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wire::Tokens;

/// Per-message latency detail is kept for at most this many fan-out
/// messages; later ones count in the overall figures only.
pub const PER_MESSAGE_LIMIT: u32 = 1000;

/// Nanoseconds since the first call in this process (`CLOCK_MONOTONIC`).
/// Fan-out payloads carry it, so publisher and receivers share one clock.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What each connection does once open.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Stay connected; during [`Phase::Run`], ping every connection once
    /// per `ping_every` and count the pongs.
    Soak { ping_every: Option<Duration> },
    /// Receive published messages (payload `"SEQ SENT_NS ..."`, see
    /// [`fanout_payload`]) and record publish-to-receipt latency. With
    /// `v1`, offer `ringcast.v1` and read the payload from each JSON
    /// delivery's `data`.
    Fanout { v1: bool },
    /// During [`Phase::Run`], send a `size`-byte binary message, wait for
    /// its echo, repeat; record round-trip latency.
    Echo { size: usize },
    /// Offer `ringcast.v1`, send `subscribe` (a subscribe with `since`)
    /// once open, expect `recovered:true` and `replay` messages, and
    /// record the time from the start of the connect to the last one.
    Recover {
        replay: u32,
        subscribe: &'static str,
    },
    /// Raw rooms: during [`Phase::Run`], each connection sends `rate`
    /// `size`-byte text messages per second (payload as
    /// [`fanout_payload`]) into the room its URL names, and records the
    /// latency of every message it receives from the room.
    Chat { rate: f64, size: usize },
}

impl Mode {
    /// The subprotocol the handshake offers.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Self::Fanout { v1: true } | Self::Recover { .. } => {
                Some(ringcast_engine::protocol::v1::NAME)
            }
            _ => None,
        }
    }
}

/// What fills a fan-out payload after its sequence number and send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filler {
    /// Spaces.
    Spaces,
    /// A JSON array of trade-like events with varying values, as a push
    /// server carries (compresses about 3x, not like spaces).
    Json,
}

/// The payload of fan-out message `seq`: sequence number and send time
/// (see [`now_ns`]) in ASCII, then `filler`, padded with spaces to `size`
/// bytes.
pub fn fanout_payload(seq: u32, size: usize, filler: Filler) -> Vec<u8> {
    let mut payload = format!("{seq} {}", now_ns()).into_bytes();
    if filler == Filler::Json {
        payload.extend_from_slice(b" [");
        let mut x = u64::from(seq).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for i in 0.. {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let event = format!(
                r#"{}{{"id":{},"symbol":"{}","price":{}.{:02},"qty":{},"side":"{}","ts":{}}}"#,
                if i == 0 { "" } else { "," },
                u64::from(seq) * 1000 + i,
                ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-EUR"][(x % 4) as usize],
                20_000 + x % 50_000,
                x % 100,
                1 + x % 900,
                if x & 1 == 0 { "buy" } else { "sell" },
                1_764_000_000_000 + x % 1_000_000,
            );
            if payload.len() + event.len() + 1 > size {
                break;
            }
            payload.extend_from_slice(event.as_bytes());
        }
        payload.push(b']');
    }
    if payload.len() < size {
        payload.resize(size, b' ');
    }
    payload
}

/// Parses [`fanout_payload`]: `(seq, sent_ns)`.
fn parse_fanout_payload(payload: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.split_ascii_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// How subscribers connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A WebSocket upgrade.
    #[default]
    Websocket,
    /// A Server-Sent Events stream (`GET /sse?topic=…`): deliveries are the
    /// `ringcast.v1` JSON in each event's `data:` line.
    Sse,
}

/// What the fleet is doing; set by the controller, read by every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Opening connections at the planned rate.
    Ramp = 0,
    /// Connections keep opening if any are left; echo traffic and pings run.
    Run = 1,
    /// Workers return their reports and drop their rings, closing every
    /// connection.
    Stop = 2,
}

/// A load to apply.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where to connect: fleet worker `i` connects to
    /// `targets[i % targets.len()]` (several nodes of a cluster).
    pub targets: Vec<Target>,
    /// Source addresses to bind, round robin; empty: let the kernel pick.
    pub sources: Sources,
    /// Connections to open, in total.
    pub connections: usize,
    /// New connections per second, in total.
    pub rate: u32,
    /// Worker threads (rings) requested; raised if needed so that each
    /// ring's share fits its fixed-file table (RLIMIT_NOFILE).
    pub workers: usize,
    /// What connections do once open.
    pub mode: Mode,
    /// WebSocket or SSE.
    pub transport: Transport,
    /// With connection auth: a distinct token per connection.
    pub tokens: Option<Tokens>,
    /// Offer permessage-deflate (RFC 7692), require the server to accept
    /// it, and inflate the messages that arrive compressed.
    pub compression: bool,
}

/// Live counters, updated by workers and read by the controller.
#[derive(Default)]
pub struct Shared {
    phase: AtomicU8,
    /// Connections open now.
    pub open: AtomicU64,
    /// Handshakes completed so far.
    pub opened: AtomicU64,
    /// Connections that failed before their handshake completed.
    pub failed: AtomicU64,
    /// Open connections lost: closed by the server, reset, or errored.
    pub dropped: AtomicU64,
    /// Data messages received (fan-out deliveries, echoes).
    pub messages: AtomicU64,
    /// Bytes received from the server (handshakes and frames: TCP
    /// payload, without TCP/IP headers).
    pub bytes_in: AtomicU64,
    /// Pings sent (soak).
    pub pings: AtomicU64,
    /// Chat messages sent.
    pub sent: AtomicU64,
    /// Set by the chat controller: clients stop sending (the messages in
    /// flight still arrive).
    pub quiet: std::sync::atomic::AtomicBool,
    /// Pongs received (soak).
    pub pongs: AtomicU64,
    /// [`now_ns`] of the latest completed handshake.
    pub last_opened_ns: AtomicU64,
    /// [`now_ns`] of the latest data message received.
    pub last_message_ns: AtomicU64,
}

impl Shared {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Ramp,
            1 => Phase::Run,
            _ => Phase::Stop,
        }
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What one worker measured, merged over workers by [`Fleet::stop`].
pub struct Report {
    /// Connect + handshake latency, µs, from SOCKET submission to the 101.
    pub handshake_us: Histogram<u64>,
    /// Fan-out delivery latency or echo round trip, µs.
    pub latency_us: Histogram<u64>,
    /// Fan-out delivery latency per message, µs, for the first
    /// [`PER_MESSAGE_LIMIT`] messages.
    pub per_message_us: Vec<Histogram<u64>>,
    /// Failed connections by reason.
    pub failures: BTreeMap<String, u64>,
    /// Dropped connections by reason.
    pub drops: BTreeMap<String, u64>,
    /// Fan-out messages received after a later one on the same connection.
    pub out_of_order: u64,
    /// Messages whose payload was not what was sent (wrong echo size,
    /// unparseable fan-out payload).
    pub bad_messages: u64,
    /// Receives that found the buffer ring empty (ENOBUFS) and re-armed.
    pub buffer_ring_empty: u64,
}

/// Latency histogram: 1 µs to 1 h, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl Report {
    fn new() -> Self {
        Self {
            handshake_us: latency_histogram(),
            latency_us: latency_histogram(),
            per_message_us: Vec::new(),
            failures: BTreeMap::new(),
            drops: BTreeMap::new(),
            out_of_order: 0,
            bad_messages: 0,
            buffer_ring_empty: 0,
        }
    }

    fn merge(&mut self, other: Report) {
        self.handshake_us
            .add(other.handshake_us)
            .expect("same bounds");
        self.latency_us.add(other.latency_us).expect("same bounds");
        if self.per_message_us.len() < other.per_message_us.len() {
            self.per_message_us
                .resize_with(other.per_message_us.len(), per_message_histogram);
        }
        for (mine, theirs) in self.per_message_us.iter_mut().zip(other.per_message_us) {
            mine.add(theirs).expect("same bounds");
        }
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
        for (reason, n) in other.drops {
            *self.drops.entry(reason).or_default() += n;
        }
        self.out_of_order += other.out_of_order;
        self.bad_messages += other.bad_messages;
        self.buffer_ring_empty += other.buffer_ring_empty;
    }
}

/// Per-message histogram: 2 significant digits keeps one at about 20 KiB.
fn per_message_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
}

/// A running fleet of client connections.
pub struct Fleet {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<std::io::Result<Report>>>,
    /// Worker threads (rings) actually started.
    pub workers: usize,
}

impl Fleet {
    /// Starts `plan.workers` workers (more if the connections need more
    /// fixed-file tables) after raising RLIMIT_NOFILE to its hard limit.
    ///
    /// # Errors
    /// A message when the limit cannot be read or raised, or a worker
    /// cannot set up its ring, fixed-file table or buffer ring.
    pub fn start(plan: Plan) -> Result<Self, String> {
        let nofile = ringcast_engine::capacity::raise_nofile_limit()
            .map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
        let connections = plan.connections.max(1);
        let workers = plan
            .workers
            .max(1)
            .max(connections.div_ceil(nofile.max(1) as usize));
        let per_worker = connections.div_ceil(workers);
        let shared = Arc::new(Shared::default());
        let plan = Arc::new(plan);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(workers);
        let mut remaining = connections;
        for index in 0..workers {
            let quota = per_worker.min(remaining);
            remaining -= quota;
            let setup = worker::Setup {
                index,
                workers,
                quota,
                plan: plan.clone(),
                shared: shared.clone(),
            };
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("bench-worker-{index}"))
                .spawn(move || match worker::Worker::new(setup) {
                    Ok(worker) => {
                        let _ = ready.send(Ok(()));
                        worker.run()
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("worker {index}: {e}")));
                        Err(e)
                    }
                })
                .map_err(|e| format!("cannot spawn a worker thread: {e}"))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut fleet = Self {
            shared,
            threads,
            workers,
        };
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    fleet.set_phase(Phase::Stop);
                    fleet.join_all();
                    return Err(e);
                }
                Err(_) => return Err("a worker exited during setup".into()),
            }
        }
        Ok(fleet)
    }

    /// The live counters.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Switches every worker to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.shared.phase.store(phase as u8, Ordering::Release);
    }

    fn join_all(&mut self) -> Vec<Result<Report, String>> {
        self.threads
            .drain(..)
            .map(|t| match t.join() {
                Ok(Ok(report)) => Ok(report),
                Ok(Err(e)) => Err(format!("a worker failed: {e}")),
                Err(_) => Err("a worker panicked".into()),
            })
            .collect()
    }

    /// Stops every worker, which closes all connections, and merges their
    /// reports.
    ///
    /// # Errors
    /// The first worker's error: a ring that failed mid-run, or a panic.
    pub fn stop(mut self) -> Result<Report, String> {
        self.set_phase(Phase::Stop);
        let mut merged = Report::new();
        for report in self.join_all() {
            merged.merge(report?);
        }
        Ok(merged)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.set_phase(Phase::Stop);
        self.join_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_payload_round_trips() {
        for filler in [Filler::Spaces, Filler::Json] {
            for size in [64, 1024] {
                let payload = fanout_payload(42, size, filler);
                assert_eq!(payload.len(), size);
                let (seq, sent) = parse_fanout_payload(&payload).unwrap();
                assert_eq!(seq, 42);
                assert!(sent <= now_ns());
            }
        }
        assert_eq!(parse_fanout_payload(b"x 1"), None);
    }
}
