//! `soak`: open N connections at a ramp rate, hold them, and report what
//! held and what it cost the server and the kernel.

use crate::load::{Mode, Shared, Transport};
use crate::probe::{Probe, Sample};
use crate::report::{bytes, Latency, Meta};
use crate::session::{write_outputs, Common, Outcome, Run, Session};
use serde::Serialize;
use std::time::Duration;

/// Flags of `ringcast-bench soak`.
#[derive(clap::Args, Clone, Debug)]
pub struct Soak {
    /// WebSocket URL to connect to.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws?topic=t")]
    pub url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// How long to hold the connections once the ramp ends.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// During the hold, ping every connection this often and count the
    /// pongs [default: no pings].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// How the connections are made: `sse` opens Server-Sent Events streams
    /// (give `--url ws://HOST:PORT/sse?topic=t`); they take no pings.
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    #[command(flatten)]
    pub common: Common,
}

/// Memory figures of a soak, in bytes. Server figures need `--server-pid`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Memory {
    pub server_rss_before: Option<u64>,
    pub server_rss_peak: Option<u64>,
    pub server_rss_at_hold_end: Option<u64>,
    pub server_rss_after: Option<u64>,
    /// (RSS at hold end − RSS before) / connections held.
    pub server_rss_per_connection: Option<f64>,
    /// RSS growth per connection between half and all of the connections
    /// open: the per-connection cost without fixed costs (buffer rings,
    /// allocator arenas) that the average above spreads over them.
    pub server_rss_marginal_per_connection: Option<f64>,
    /// Kernel slab growth per connection held, host-wide: on loopback it
    /// includes the client's socket too.
    pub kernel_slab_per_connection: f64,
    /// TCP socket-buffer memory per connection held, host-wide.
    pub tcp_buffer_per_connection: f64,
}

impl Memory {
    fn compute(
        before: &Probe,
        at_end: &Probe,
        after: &Probe,
        held: u64,
        series: &[Sample],
    ) -> Self {
        let held_f = held.max(1) as f64;
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / held_f;
        let half = series
            .iter()
            .find(|s| s.open >= held / 2 && s.probe.server_rss.is_some());
        let marginal = match (half, at_end.server_rss) {
            (Some(h), Some(end)) if held > h.open => {
                let grew = end as f64 - h.probe.server_rss.unwrap_or(end) as f64;
                Some(grew / (held - h.open) as f64)
            }
            _ => None,
        };
        Self {
            server_rss_before: before.server_rss,
            server_rss_peak: series.iter().filter_map(|s| s.probe.server_rss).max(),
            server_rss_at_hold_end: at_end.server_rss,
            server_rss_after: after.server_rss,
            server_rss_per_connection: before
                .server_rss
                .zip(at_end.server_rss)
                .map(|(a, b)| per(a, b)),
            server_rss_marginal_per_connection: marginal,
            kernel_slab_per_connection: per(before.slab_bytes, at_end.slab_bytes),
            tcp_buffer_per_connection: per(before.tcp_buffer_bytes, at_end.tcp_buffer_bytes),
        }
    }
}

/// results.json of a soak.
#[derive(Clone, Debug, Serialize)]
pub struct SoakResult {
    #[serde(flatten)]
    pub run: Run,
    pub url: String,
    pub transport: Transport,
    pub requested: usize,
    /// Connections open when the hold ended.
    pub held_at_end: u64,
    pub hold_seconds: f64,
    pub handshake_latency: Latency,
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub memory: Memory,
}

impl Outcome for SoakResult {
    const TITLE: &'static str = "soak";

    fn run(&self) -> &Run {
        &self.run
    }

    /// Nothing beyond every connection opening and holding.
    fn complete(&self) -> bool {
        true
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let (m, run) = (&self.memory, &self.run);
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} B"));
        let mut rows = vec![
            ("url", self.url.clone()),
            ("transport", format!("{:?}", self.transport).to_lowercase()),
            (
                "connected",
                format!("{} of {}", run.ramp.opened, self.requested),
            ),
            (
                "failed",
                format!("{} {:?}", run.ramp.failed, run.failed_by_reason),
            ),
            ("pending at ramp end", run.ramp.pending.to_string()),
            run.dropped_row(),
            (
                "held at end",
                format!("{} for {:.0} s", self.held_at_end, self.hold_seconds),
            ),
            (
                "connect rate",
                format!("{:.0}/s", run.ramp.connect_rate_per_s),
            ),
            ("handshake latency", self.handshake_latency.describe()),
            ("server RSS before / peak / after", {
                let f = |v: Option<u64>| v.map_or("-".into(), bytes);
                format!(
                    "{} / {} / {}",
                    f(m.server_rss_before),
                    f(m.server_rss_peak),
                    f(m.server_rss_after)
                )
            }),
            (
                "server RSS per connection",
                opt(m.server_rss_per_connection),
            ),
            ("  marginal", opt(m.server_rss_marginal_per_connection)),
            (
                "kernel slab per connection",
                format!("{:.0} B (both ends)", m.kernel_slab_per_connection),
            ),
        ];
        if self.pings_sent > 0 {
            rows.push((
                "pings / pongs",
                format!("{} / {}", self.pings_sent, self.pongs_received),
            ));
        }
        rows
    }
}

/// Runs a soak.
///
/// # Errors
/// A message when the fleet cannot start or a worker fails.
pub fn run(args: &Soak) -> Result<SoakResult, String> {
    if args.transport == Transport::Sse && args.ping_interval.is_some() {
        return Err(
            "--ping-interval needs --transport websocket (SSE clients send nothing)".into(),
        );
    }
    let meta = Meta::now("soak");
    let mode = Mode::Soak {
        ping_every: args.ping_interval,
    };
    let session = Session::start(
        &args.common,
        std::slice::from_ref(&args.url),
        args.connections,
        mode,
        args.transport,
    )?;
    let ramp = session.ramp(args.connections, args.common.rate);
    session.run_for(args.hold, "hold");
    let held_at_end = Shared::get(&session.shared().open);
    let at_end = Probe::read(args.common.server_pid);
    let (pings_sent, pongs_received) = (
        Shared::get(&session.shared().pings),
        Shared::get(&session.shared().pongs),
    );
    let before = session.before;
    let done = session.finish()?;
    let report = &done.report;
    let result = SoakResult {
        run: Run::new(meta, ramp, &done),
        url: args.url.clone(),
        transport: args.transport,
        requested: args.connections,
        held_at_end,
        hold_seconds: args.hold.as_secs_f64(),
        handshake_latency: Latency::of(&report.handshake_us),
        pings_sent,
        pongs_received,
        memory: Memory::compute(&before, &at_end, &done.after, held_at_end, &done.series),
    };
    if let Some(dir) = &args.common.out {
        let title = "Connect + handshake latency";
        write_outputs(dir, &result, title, &report.handshake_us)?;
    }
    Ok(result)
}
