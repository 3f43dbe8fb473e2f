//! What every subcommand does around its own traffic: start a fleet and a
//! sampler, ramp connections up with a progress bar, and at the end stop
//! the fleet, wait for the sockets to go, and draw the time-series plots;
//! and the shape every result shares ([`Run`], [`Outcome`]).

use crate::load::wire::Tokens;
use crate::load::{now_ns, Fleet, Mode, Phase, Plan, Report, Shared, Transport};
use crate::plot;
use crate::probe::{Probe, Sample, Sampler};
use crate::report::{bytes, print_table, progress, write_json, Meta};
use crate::target::{parse_source_ips, Target, DISTINCT_SOURCES};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags every load subcommand takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// New connections per second, in total.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u32,
    /// Source addresses to spread connections over, round robin: IPv4
    /// addresses and ranges (e.g. 127.0.0.2-127.0.0.60; about 28k
    /// ephemeral ports each per destination), or `kernel` to let the
    /// kernel pick. The default gives every connection its own client
    /// address, as on the internet.
    #[arg(long, default_value = DISTINCT_SOURCES)]
    pub source_ips: String,
    /// Load-generator threads, one io_uring each [default: cores, raised
    /// so that each ring's share of connections fits RLIMIT_NOFILE].
    #[arg(long)]
    pub workers: Option<usize>,
    /// The server's HMAC secret (`ringcast serve --jwt-hmac-secret-file`):
    /// each connection then sends its own HS256 token, for its own user
    /// (`sub`), as `Authorization: Bearer`.
    #[arg(long)]
    pub jwt_hmac_secret_file: Option<PathBuf>,
    /// PID of the server, to sample its resident memory (VmRSS).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Directory for results.json and SVG plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Offer permessage-deflate (RFC 7692) on every connection and
    /// inflate what arrives compressed; a server that declines it fails
    /// every connection.
    #[arg(long)]
    pub compression: bool,
}

/// How the ramp-up went.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Ramp {
    /// Seconds from the first SOCKET to the last completed handshake.
    pub seconds: f64,
    /// Handshakes completed.
    pub opened: u64,
    /// Connections that failed before opening.
    pub failed: u64,
    /// Connections neither open nor failed when the ramp ended (timed out).
    pub pending: u64,
    /// Completed connect + handshake per second.
    pub connect_rate_per_s: f64,
}

/// A fleet plus the sampler watching it.
pub struct Session {
    pub fleet: Fleet,
    sampler: Sampler,
    /// Host figures before the first connection.
    pub before: Probe,
    server_pid: Option<u32>,
    start_ns: u64,
    quiet: bool,
}

/// What a session leaves once stopped.
pub struct Finished {
    /// Load-generator threads the fleet ran on.
    pub workers: usize,
    pub report: Report,
    pub series: Vec<Sample>,
    /// Host figures once the sockets are gone (or after 30 s).
    pub after: Probe,
}

impl Session {
    /// Starts `connections` connections to `urls` doing `mode` (fleet
    /// worker `i` connects to `urls[i % urls.len()]`).
    ///
    /// # Errors
    /// A message for a bad URL or `--source-ips`, an unreadable
    /// `--jwt-hmac-secret-file`, or a fleet that cannot start.
    pub fn start(
        common: &Common,
        urls: &[String],
        connections: usize,
        mode: Mode,
        transport: Transport,
    ) -> Result<Self, String> {
        let targets = urls
            .iter()
            .map(|url| Target::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err("no URL to connect to".into());
        }
        let sources = parse_source_ips(&common.source_ips)?;
        let tokens = common
            .jwt_hmac_secret_file
            .as_deref()
            .map(Tokens::from_secret_file)
            .transpose()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let before = Probe::read(common.server_pid);
        let start_ns = now_ns();
        let fleet = Fleet::start(Plan {
            targets,
            sources,
            connections,
            rate: common.rate,
            workers: common.workers.unwrap_or(cores),
            mode,
            transport,
            tokens,
            compression: common.compression,
        })?;
        let sampler = Sampler::start(common.server_pid, fleet.shared().clone());
        Ok(Self {
            fleet,
            sampler,
            before,
            server_pid: common.server_pid,
            start_ns,
            quiet: common.quiet,
        })
    }

    /// The live counters.
    pub fn shared(&self) -> &Arc<Shared> {
        self.fleet.shared()
    }

    /// A progress-bar message: open, failed, dropped and server RSS.
    pub fn status(&self) -> String {
        let s = self.shared();
        let mut msg = format!(
            "open {} failed {} dropped {}",
            Shared::get(&s.open),
            Shared::get(&s.failed),
            Shared::get(&s.dropped)
        );
        if let Some(rss) = self.sampler.latest().and_then(|x| x.probe.server_rss) {
            msg += &format!(" server RSS {}", bytes(rss));
        }
        msg
    }

    /// Waits until every connection has opened or failed, or the time the
    /// planned rate needs plus 30 s has passed.
    pub fn ramp(&self, total: usize, rate: u32) -> Ramp {
        let bar = progress(total as u64, self.quiet, "connect");
        let deadline =
            Instant::now() + Duration::from_secs_f64(total as f64 / f64::from(rate.max(1)) + 30.0);
        let s = self.shared();
        loop {
            let done = Shared::get(&s.opened) + Shared::get(&s.failed);
            bar.set_position(done);
            bar.set_message(self.status());
            if done >= total as u64 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bar.finish();
        let (opened, failed) = (Shared::get(&s.opened), Shared::get(&s.failed));
        let seconds = Shared::get(&s.last_opened_ns).saturating_sub(self.start_ns) as f64 / 1e9;
        Ramp {
            seconds,
            opened,
            failed,
            pending: (total as u64).saturating_sub(opened + failed),
            connect_rate_per_s: if seconds > 0.0 {
                opened as f64 / seconds
            } else {
                0.0
            },
        }
    }

    /// Runs the fleet's traffic phase for `duration` behind a progress bar.
    pub fn run_for(&self, duration: Duration, what: &str) {
        self.fleet.set_phase(Phase::Run);
        let bar = progress(duration.as_secs().max(1), self.quiet, what);
        let start = Instant::now();
        while start.elapsed() < duration {
            bar.set_position(start.elapsed().as_secs());
            bar.set_message(self.status());
            std::thread::sleep(
                Duration::from_millis(100).min(duration.saturating_sub(start.elapsed())),
            );
        }
        bar.finish();
    }

    /// Stops the fleet (closing every connection), waits up to 30 s for
    /// the host's TCP socket count to return to where it was, and returns
    /// the merged report and the series.
    ///
    /// # Errors
    /// A worker's error.
    pub fn finish(self) -> Result<Finished, String> {
        let workers = self.fleet.workers;
        let report = self.fleet.stop()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let after = loop {
            let probe = Probe::read(self.server_pid);
            let settled = probe.tcp_sockets <= self.before.tcp_sockets + 16;
            if settled || Instant::now() >= deadline {
                break probe;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(Finished {
            workers,
            report,
            series: self.sampler.finish(),
            after,
        })
    }
}

/// What every subcommand's results.json holds, flattened into it: the
/// run's metadata, the generator's threads, the ramp, the connections
/// that failed to open and those lost once open, and the sampled series.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    #[serde(flatten)]
    pub meta: Meta,
    pub workers: usize,
    pub ramp: Ramp,
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Connections lost after they opened.
    pub dropped: u64,
    pub dropped_by_reason: BTreeMap<String, u64>,
    pub series: Vec<Sample>,
}

impl Run {
    /// The shared part of a result, from the session's end.
    pub fn new(meta: Meta, ramp: Ramp, done: &Finished) -> Self {
        Self {
            meta,
            workers: done.workers,
            ramp,
            failed_by_reason: done.report.failures.clone(),
            dropped: done.report.drops.values().sum(),
            dropped_by_reason: done.report.drops.clone(),
            series: done.series.clone(),
        }
    }

    /// Every connection opened and none was lost.
    pub fn held(&self) -> bool {
        self.ramp.failed == 0 && self.ramp.pending == 0 && self.dropped == 0
    }

    /// `(what, "opened (failed N)")`, a summary row.
    pub fn opened_row(&self, what: &'static str) -> (&'static str, String) {
        let ramp = &self.ramp;
        (what, format!("{} (failed {})", ramp.opened, ramp.failed))
    }

    /// `("dropped", "N {reason: count}")`, a summary row.
    pub fn dropped_row(&self) -> (&'static str, String) {
        let text = format!("{} {:?}", self.dropped, self.dropped_by_reason);
        ("dropped", text)
    }
}

/// A subcommand's result: the shared [`Run`], its own checks, and its
/// summary table.
pub trait Outcome: Serialize {
    /// The summary table's title: the subcommand.
    const TITLE: &'static str;

    /// The part every result has.
    fn run(&self) -> &Run;

    /// This kind of run's own checks, beyond every connection opening and
    /// staying: nothing lost, every payload as sent.
    fn complete(&self) -> bool;

    /// The summary table's rows.
    fn rows(&self) -> Vec<(&'static str, String)>;

    /// True when every connection opened and stayed and [`Self::complete`].
    fn ok(&self) -> bool {
        self.run().held() && self.complete()
    }

    /// Prints the summary table.
    fn print(&self) {
        print_table(Self::TITLE, &self.rows());
    }
}

/// Writes a run's outputs into `dir`: results.json, the time-series plots
/// (see [`plot_series`]) and latency.svg, the CDF of `latency` (µs).
///
/// # Errors
/// A message naming the file that cannot be written or drawn.
pub fn write_outputs(
    dir: &Path,
    result: &impl Outcome,
    latency_title: &str,
    latency: &Histogram<u64>,
) -> Result<(), String> {
    write_json(dir, "results.json", result)?;
    plot_series(dir, &result.run().series)?;
    plot::cdf(&dir.join("latency.svg"), latency_title, latency)
}

/// Draws connections.svg and, with a server PID, rss.svg from `series`.
///
/// # Errors
/// As [`plot::lines`].
fn plot_series(dir: &Path, series: &[Sample]) -> Result<(), String> {
    let open = series.iter().map(|s| (s.t, s.open as f64)).collect();
    plot::lines(
        &dir.join("connections.svg"),
        "Open connections",
        "time (s)",
        "connections",
        &[("open".into(), open)],
    )?;
    let rss: Vec<(f64, f64)> = series
        .iter()
        .filter_map(|s| Some((s.t, s.probe.server_rss? as f64 / 1_048_576.0)))
        .collect();
    if !rss.is_empty() {
        plot::lines(
            &dir.join("rss.svg"),
            "Server resident memory",
            "time (s)",
            "RSS (MiB)",
            &[("server RSS".into(), rss)],
        )?;
    }
    Ok(())
}
