//! Echo: during the run, each open connection sends a message, waits
//! for its echo, records the round trip and sends the next.

use super::Clients;
use crate::load::conn::{now_us, State};
use crate::load::{Mode, Phase};
use io_uring::IoUring;

impl Clients {
    pub(super) fn send_echo(&mut self, ring: &mut IoUring, slot: u32) {
        self.conns[slot as usize].stamp_us = now_us();
        let (ptr, len) = (self.echo.as_ptr(), self.echo.len());
        self.send(ring, slot, ptr, len, 0);
    }

    /// Entering [`Phase::Run`]: echo connections send their first message.
    pub(super) fn on_run(&mut self, ring: &mut IoUring) {
        if self.phase == Phase::Run && matches!(self.mode, Mode::Echo { .. }) {
            for slot in 0..self.conns.len() as u32 {
                if self.conns[slot as usize].state == State::Open {
                    self.send_echo(ring, slot);
                }
            }
        }
    }

    /// An echo came back (`intact`: the size sent): records the round
    /// trip and, during the run, sends the next message.
    pub(super) fn on_echo(&mut self, ring: &mut IoUring, slot: u32, intact: bool) {
        let rtt = now_us().wrapping_sub(self.conns[slot as usize].stamp_us);
        self.report
            .latency_us
            .saturating_record(u64::from(rtt.max(1)));
        if !intact {
            self.report.bad_messages += 1;
        }
        if self.phase == Phase::Run {
            self.send_echo(ring, slot);
        }
    }
}
