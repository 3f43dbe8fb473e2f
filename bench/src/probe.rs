//! What the bench reads off the host while it runs: the server's resident
//! memory (/proc/PID/status), TCP socket counts and buffer memory
//! (/proc/net/sockstat) and kernel slab (/proc/meminfo), sampled over time.

use crate::load::Shared;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Sampling period of [`Sampler`].
pub const PERIOD: Duration = Duration::from_millis(250);

/// Host memory figures at one moment. Sizes in bytes.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Probe {
    /// The server's resident set (VmRSS), if a server PID is known.
    pub server_rss: Option<u64>,
    /// TCP sockets in use, host-wide (both ends of a loopback connection).
    pub tcp_sockets: u64,
    /// TCP socket buffer memory, host-wide (sockstat `mem`, pages × 4096).
    pub tcp_buffer_bytes: u64,
    /// Kernel slab, host-wide (Slab in /proc/meminfo).
    pub slab_bytes: u64,
}

impl Probe {
    /// Reads every figure now; a figure that cannot be read is 0 (or None).
    pub fn read(server_pid: Option<u32>) -> Self {
        let (tcp_sockets, pages) = sockstat().unwrap_or_default();
        Self {
            server_rss: server_pid.and_then(rss_bytes),
            tcp_sockets,
            tcp_buffer_bytes: pages * 4096,
            slab_bytes: meminfo_kib("Slab:").unwrap_or_default() * 1024,
        }
    }
}

/// VmRSS of process `pid`, in bytes; None if it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time process `pid` has used, user plus system (utime + stime in
/// /proc/PID/stat), in seconds; None if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second.max(1) as f64)
}

/// `(inuse, mem pages)` of the TCP line of /proc/net/sockstat.
fn sockstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let value = |name: &str| -> Option<u64> {
        let i = fields.iter().position(|f| *f == name)?;
        fields.get(i + 1)?.parse().ok()
    };
    Some((value("inuse")?, value("mem")?))
}

/// A /proc/meminfo field, in KiB.
fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One point of the time series in results.json and the plots.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Client connections open.
    pub open: u64,
    #[serde(flatten)]
    pub probe: Probe,
}

/// Samples [`Probe`] and the fleet's open count every [`PERIOD`] on a
/// thread of its own, until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling; `open` reads the fleet's open connection count.
    pub fn start(server_pid: Option<u32>, shared: Arc<Shared>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let sample = Sample {
                        t: start.elapsed().as_secs_f64(),
                        open: Shared::get(&shared.open),
                        probe: Probe::read(server_pid),
                    };
                    samples.lock().expect("sampler lock").push(sample);
                    std::thread::sleep(PERIOD);
                }
            })
        };
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The latest sample, if any.
    pub fn latest(&self) -> Option<Sample> {
        self.samples.lock().expect("sampler lock").last().copied()
    }

    /// Stops sampling and returns the series.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.samples.lock().expect("sampler lock"))
    }
}
