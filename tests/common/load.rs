//! What a server costs under load: its memory while clients run.

use super::Server;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Awaits `tasks`, sampling the server's RSS every 250 ms meanwhile, and
/// asserts the peak stayed under twice `baseline` plus 40 MB (a loose
/// bound: what it catches is growth with the load). Returns the tasks'
/// results.
pub async fn bounded_rss_while<T>(
    server: &Server,
    baseline: u64,
    tasks: Vec<JoinHandle<T>>,
) -> Vec<T> {
    let mut peak = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak = peak.max(server.rss());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("a load task panicked"));
    }
    let (baseline_mb, peak_mb) = (baseline >> 20, peak >> 20);
    eprintln!("RSS: baseline {baseline_mb} MB, peak {peak_mb} MB");
    assert!(
        peak < 2 * baseline + (40 << 20),
        "RSS peaked at {peak_mb} MB (baseline {baseline_mb} MB)"
    );
    results
}
