//! Results: latency summaries, the run's metadata, results.json, the summary
//! table on stdout, and progress bars.

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::Path;
use std::time::SystemTime;

/// Percentiles of a latency histogram, in µs.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    /// Summarises `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// `"p50 1.2 ms, p99 3.4 ms, p99.9 5.0 ms, max 9.1 ms"`.
    pub fn describe(&self) -> String {
        format!(
            "p50 {}, p99 {}, p99.9 {}, max {}",
            us(self.p50_us),
            us(self.p99_us),
            us(self.p999_us),
            us(self.max_us)
        )
    }
}

/// A duration in µs, printed in a fitting unit.
pub fn us(v: u64) -> String {
    match v {
        0..1_000 => format!("{v} µs"),
        1_000..1_000_000 => format!("{:.2} ms", v as f64 / 1e3),
        _ => format!("{:.2} s", v as f64 / 1e6),
    }
}

/// A byte count in a fitting binary unit.
pub fn bytes(v: u64) -> String {
    match v {
        0..1024 => format!("{v} B"),
        1024..1_048_576 => format!("{:.1} KiB", v as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", v as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", v as f64 / 1_073_741_824.0),
    }
}

/// Where and how a run was made.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// `soak`, `fanout`, `echo` or `compare`.
    pub kind: &'static str,
    /// The command line, as run.
    pub command: String,
    /// UTC start time, RFC 3339.
    pub date: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// MemTotal in bytes.
    pub mem_total: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Meta {
    /// Metadata for a run of `kind` starting now.
    pub fn now(kind: &'static str) -> Self {
        let mem_total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or_default()
            * 1024;
        Self {
            kind,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// Writes `value` as pretty JSON to `dir/name`, creating `dir`.
///
/// # Errors
/// A message naming the file when it cannot be written.
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).expect("results serialize");
    std::fs::write(&path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Prints a two-column summary table.
pub fn print_table(title: &str, rows: &[(&str, String)]) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header([title, ""]);
    for (name, value) in rows {
        table.add_row([*name, value.as_str()]);
    }
    println!("{table}");
}

/// A progress bar of `len` steps, hidden with `--quiet` (and by indicatif
/// itself when stderr is not a terminal).
pub fn progress(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
