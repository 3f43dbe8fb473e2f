//! Fan-out: each delivery (a raw payload, or `ringcast.v1` JSON around it:
//! `data` for a text publish, `b64data` for a binary one) records its
//! publish-to-receipt latency, overall and per message, and its order.

use super::messages::V1;
use super::Clients;
use crate::load::{now_ns, parse_fanout_payload, per_message_histogram, PER_MESSAGE_LIMIT};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

impl Clients {
    /// A `ringcast.v1` message: a delivery's payload is read from `data`
    /// or `b64data`. Returns whether it was a delivery (`subscribed` is
    /// not; anything else counts as bad).
    pub(super) fn on_v1_delivery(&mut self, slot: u32, payload: &[u8]) -> bool {
        match serde_json::from_slice::<V1>(payload) {
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
        }
    }

    /// A fan-out payload (`"SEQ SENT_NS ..."`): latency, overall and per
    /// message, and order.
    pub(super) fn on_delivery(&mut self, slot: u32, payload: &[u8]) {
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
}
