//! Closing many connections over a period rather than at once, so that
//! their clients do not all reconnect in the same instant: drain (every
//! connection, before exit) and rebalance (a fraction, to let the load
//! balancer place them on other nodes).
//!
//! The chosen connections are shuffled, then closed at an even rate over
//! the period: by time `t` of period `T`, `⌈n·t/T⌉` of them are closed. The
//! random order is the jitter: which client goes when is independent of
//! when it connected or which worker holds it.

use std::time::{Duration, Instant};

/// A plan of closes for one worker.
pub struct Spread {
    /// (slot, generation) of each connection to close, in closing order.
    targets: Vec<(u32, u32)>,
    done: usize,
    start: Instant,
    over: Duration,
    /// The close reason sent with 1001 (RFC 6455 §7.4.1).
    pub reason: &'static str,
}

impl Spread {
    /// Plans to close `fraction` (0.0–1.0, rounded up) of `candidates`,
    /// chosen at random, evenly over `over` from now.
    pub fn new(
        mut candidates: Vec<(u32, u32)>,
        fraction: f64,
        over: Duration,
        reason: &'static str,
    ) -> Self {
        debug_assert!((0.0..=1.0).contains(&fraction));
        fastrand::shuffle(&mut candidates);
        let keep = (candidates.len() as f64 * fraction).ceil() as usize;
        candidates.truncate(keep);
        Self {
            targets: candidates,
            done: 0,
            start: Instant::now(),
            over,
            reason,
        }
    }

    /// The connections whose turn came since the last call, at `now`.
    pub fn due(&mut self, now: Instant) -> &[(u32, u32)] {
        let total = self.targets.len();
        let elapsed = now.saturating_duration_since(self.start);
        let upto = if elapsed >= self.over {
            total
        } else {
            let share = elapsed.as_secs_f64() / self.over.as_secs_f64();
            ((total as f64 * share).ceil() as usize).min(total)
        };
        let from = self.done.min(upto);
        self.done = upto.max(self.done);
        &self.targets[from..upto]
    }

    /// Whether every planned close has been handed out.
    pub fn is_done(&self) -> bool {
        self.done == self.targets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_a_fraction_at_an_even_rate_in_random_order() {
        let candidates: Vec<(u32, u32)> = (0..1000).map(|i| (i, 1)).collect();
        let mut spread = Spread::new(candidates, 0.2, Duration::from_secs(10), "rebalancing");
        let start = spread.start;
        let mut seen = Vec::new();
        for second in 1..=10 {
            let due = spread.due(start + Duration::from_secs(second));
            assert_eq!(due.len(), 20, "second {second}");
            seen.extend_from_slice(due);
        }
        assert!(spread.is_done());
        assert!(spread.due(start + Duration::from_secs(11)).is_empty());
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 200, "each chosen connection once");
        assert_ne!(
            seen.iter().map(|t| t.0).collect::<Vec<_>>(),
            (0..200).collect::<Vec<_>>(),
            "chosen at random, not the first 200"
        );
    }

    #[test]
    fn a_zero_period_closes_everything_at_once() {
        let mut spread = Spread::new(vec![(1, 1), (2, 1)], 1.0, Duration::ZERO, "x");
        assert_eq!(spread.due(Instant::now()).len(), 2);
    }
}
