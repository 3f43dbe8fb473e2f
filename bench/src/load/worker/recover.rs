//! Recover: each connection subscribes with `since` once open, expects
//! `recovered:true` and its replay, and records the time from the start
//! of its connect to the last replayed message.

use super::messages::V1;
use super::Clients;
use crate::load::conn::now_us;

impl Clients {
    /// Recover: `subscribed` must say `recovered:true` (else the message
    /// counts as bad); the `replay`-th message records the time since the
    /// connect started. Returns whether it was a delivery.
    pub(super) fn on_replay(&mut self, slot: u32, payload: &[u8], replay: u32) -> bool {
        let message = serde_json::from_slice::<V1>(payload);
        match message.as_ref().map(|m| (&*m.op, m.recovered)) {
            Ok(("subscribed", Some(true))) => false,
            Ok(("message", _)) => {
                let conn = &mut self.conns[slot as usize];
                conn.next_seq += 1;
                if conn.next_seq == replay {
                    let took = now_us().wrapping_sub(conn.stamp_us);
                    self.report
                        .latency_us
                        .saturating_record(u64::from(took.max(1)));
                }
                true
            }
            _ => {
                self.report.bad_messages += 1;
                false
            }
        }
    }
}
