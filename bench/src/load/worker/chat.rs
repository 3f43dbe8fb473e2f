//! Chat: during the run, each open connection sends its share of
//! messages into its room, and every message received from the room
//! records its latency.

use super::Clients;
use crate::load::wire::{client_frame, random_bytes};
use crate::load::{fanout_payload, now_ns, parse_fanout_payload, Filler, Mode, Phase};
use io_uring::IoUring;
use ringcast_engine::OpCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Clients {
    /// Chat: sends the messages owed for `dt`, walking the slots so that
    /// each open connection sends `rate` per second.
    pub(super) fn chat_due(&mut self, ring: &mut IoUring, dt: Duration) {
        let Mode::Chat { rate, size } = self.mode else {
            return;
        };
        if self.phase != Phase::Run
            || self.conns.is_empty()
            || self.shared().quiet.load(Ordering::Relaxed)
        {
            return;
        }
        let owed = dt.as_secs_f64() * rate * self.conns.len() as f64;
        let slots = self.chats.due(owed, &self.conns);
        for &slot in &slots {
            let payload = fanout_payload(self.chat_seq, size, Filler::Spaces);
            self.chat_seq = self.chat_seq.wrapping_add(1);
            let frame = client_frame(OpCode::Text, &payload, random_bytes::<4>());
            self.send_owned(ring, slot, frame);
        }
        let sent = slots.len() as u64;
        self.shared().sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// A message from the room: records its latency from the sender's
    /// stamp (a payload that does not parse counts as bad).
    pub(super) fn on_chat(&mut self, payload: &[u8]) {
        match parse_fanout_payload(payload) {
            Some((_, sent_ns)) => {
                let latency_us = now_ns().saturating_sub(sent_ns) / 1000;
                self.report.latency_us.saturating_record(latency_us.max(1));
            }
            None => self.report.bad_messages += 1,
        }
    }
}
