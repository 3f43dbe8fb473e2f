//! Soak: during the run, ping every open connection once per interval
//! and count the pongs.

use super::Clients;
use crate::load::{Mode, Phase};
use io_uring::IoUring;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Clients {
    /// Soak: sends the pings owed for `dt`, walking the slots so that each
    /// open connection is pinged once per interval.
    pub(super) fn ping_due(&mut self, ring: &mut IoUring, dt: Duration) {
        let Mode::Soak {
            ping_every: Some(every),
        } = self.mode
        else {
            return;
        };
        if self.phase != Phase::Run || self.conns.is_empty() {
            return;
        }
        let owed = dt.as_secs_f64() / every.as_secs_f64() * self.conns.len() as f64;
        let slots = self.pings.due(owed, &self.conns);
        for &slot in &slots {
            let (ptr, len) = (self.ping.as_ptr(), self.ping.len());
            self.send(ring, slot, ptr, len, 0);
        }
        let sent = slots.len() as u64;
        self.shared().pings.fetch_add(sent, Ordering::Relaxed);
    }
}
