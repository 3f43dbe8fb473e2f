//! What an open connection receives, by mode: each mode's own file reads
//! its messages (`fanout`, `echo`, `recover`, `chat`); a soak counts them.

use super::Clients;
use crate::load::Mode;
use io_uring::IoUring;
use serde::Deserialize;
use std::borrow::Cow;

/// A `ringcast.v1` server message, as far as the generator reads it
/// (docs/protocol.md).
#[derive(Deserialize)]
pub(super) struct V1<'a> {
    #[serde(borrow)]
    pub(super) op: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) b64data: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) recovered: Option<bool>,
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
            Mode::Fanout { v1: true } => self.on_v1_delivery(slot, payload),
            Mode::Echo { size } => {
                self.on_echo(ring, slot, payload.len() == size);
                true
            }
            Mode::Recover { replay, .. } => self.on_replay(slot, payload, replay),
            Mode::Chat { .. } => {
                self.on_chat(payload);
                true
            }
        }
    }
}
