//! What an open connection receives, by mode: fan-out deliveries (raw
//! payloads, or `ringcast.v1` JSON around them: `data` for a text
//! publish, `b64data` for a binary one), echoes, and recovery replays.

use super::Clients;
use crate::load::conn::now_us;
use crate::load::{
    now_ns, parse_fanout_payload, per_message_histogram, Mode, Phase, PER_MESSAGE_LIMIT,
};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use io_uring::IoUring;
use serde::Deserialize;
use std::borrow::Cow;

/// A `ringcast.v1` server message, as far as the generator reads it
/// (docs/protocol.md).
#[derive(Deserialize)]
struct V1<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    b64data: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
}

impl Clients {
    /// One data message on `slot`. Returns whether it counts as a
    /// delivery: `ringcast.v1` replies (`subscribed`) do not.
    pub(super) fn on_message(&mut self, ring: &mut IoUring, slot: u32, payload: &[u8]) -> bool {
        match self.mode {
            Mode::Soak { .. } => true,
            Mode::Fanout { v1: false } => {
                self.on_delivery(slot, payload);
                true
            }
            Mode::Fanout { v1: true } => match serde_json::from_slice::<V1>(payload) {
                Ok(m) if m.op == "message" => {
                    match (m.data, m.b64data.map(|b| BASE64.decode(b.as_bytes()))) {
                        (Some(text), _) => self.on_delivery(slot, text.as_bytes()),
                        (None, Some(Ok(bytes))) => self.on_delivery(slot, &bytes),
                        _ => self.report.bad_messages += 1,
                    }
                    true
                }
                Ok(m) if m.op == "subscribed" => false,
                _ => {
                    self.report.bad_messages += 1;
                    false
                }
            },
            Mode::Echo { size } => {
                let rtt = now_us().wrapping_sub(self.conns[slot as usize].stamp_us);
                self.report
                    .latency_us
                    .saturating_record(u64::from(rtt.max(1)));
                if payload.len() != size {
                    self.report.bad_messages += 1;
                }
                if self.phase == Phase::Run {
                    self.send_echo(ring, slot);
                }
                true
            }
            Mode::Recover { replay, .. } => self.on_replay(slot, payload, replay),
            Mode::Chat { .. } => {
                match parse_fanout_payload(payload) {
                    Some((_, sent_ns)) => {
                        let latency_us = now_ns().saturating_sub(sent_ns) / 1000;
                        self.report.latency_us.saturating_record(latency_us.max(1));
                    }
                    None => self.report.bad_messages += 1,
                }
                true
            }
        }
    }

    /// A fan-out payload (`"SEQ SENT_NS ..."`): latency, overall and per
    /// message, and order.
    fn on_delivery(&mut self, slot: u32, payload: &[u8]) {
        let Some((seq, sent_ns)) = parse_fanout_payload(payload) else {
            self.report.bad_messages += 1;
            return;
        };
        let latency_us = now_ns().saturating_sub(sent_ns) / 1000;
        self.report.latency_us.saturating_record(latency_us.max(1));
        if seq < PER_MESSAGE_LIMIT {
            let per = &mut self.report.per_message_us;
            if per.len() <= seq as usize {
                per.resize_with(seq as usize + 1, per_message_histogram);
            }
            per[seq as usize].saturating_record(latency_us.max(1));
        }
        let conn = &mut self.conns[slot as usize];
        if seq < conn.next_seq {
            self.report.out_of_order += 1;
        } else {
            conn.next_seq = seq + 1;
        }
    }

    /// Recover: `subscribed` must say `recovered:true` (else the message
    /// counts as bad); the `replay`-th message records the time since the
    /// connect started. Returns whether it was a delivery.
    fn on_replay(&mut self, slot: u32, payload: &[u8], replay: u32) -> bool {
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
