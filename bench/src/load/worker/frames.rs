//! What arrives on an open connection: the handshake response, then
//! WebSocket frames (inflated when compressed) or, over SSE, events.

use super::{Clients, MAX_PARTIAL};
use crate::load::conn::{now_us, State};
use crate::load::wire::{client_frame, random_bytes};
use crate::load::{now_ns, Mode, Phase};
use io_uring::IoUring;
use ringcast_engine::protocol::close;
use ringcast_engine::protocol::frame::parse_header;
use ringcast_engine::OpCode;
use std::sync::atomic::Ordering;

impl Clients {
    /// Bytes received on `slot`.
    pub(super) fn on_data(&mut self, ring: &mut IoUring, slot: u32, data: &[u8]) {
        let bytes_in = &self.setup.shared.bytes_in;
        bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        let conn = &mut self.conns[slot as usize];
        let owned;
        let buf: &[u8] = match conn.partial.take() {
            Some(mut partial) => {
                partial.extend_from_slice(data);
                owned = partial;
                &owned
            }
            None => data,
        };
        let mut at = 0;
        if conn.state == State::Handshaking {
            match self.handshake.check(buf) {
                Ok(None) => return self.keep_partial(ring, slot, buf, 0),
                Ok(Some(len)) => {
                    at = len;
                    let elapsed = now_us().wrapping_sub(conn.stamp_us);
                    conn.state = State::Open;
                    self.report
                        .handshake_us
                        .saturating_record(u64::from(elapsed.max(1)));
                    let shared = &self.setup.shared;
                    shared.opened.fetch_add(1, Ordering::Relaxed);
                    shared.open.fetch_add(1, Ordering::Relaxed);
                    shared.last_opened_ns.store(now_ns(), Ordering::Relaxed);
                    if self.phase == Phase::Run && matches!(self.mode, Mode::Echo { .. }) {
                        self.send_echo(ring, slot);
                    }
                    if !self.subscribe.is_empty() {
                        self.send_owned(ring, slot, self.subscribe.clone());
                    }
                }
                Err(e) => return self.lose(ring, slot, e.to_string()),
            }
        }
        if self.conns[slot as usize].state != State::Open {
            return;
        }
        if self.sse {
            return self.on_events(ring, slot, buf, at);
        }
        while at < buf.len() {
            let header = match parse_header(&buf[at..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return self.lose(ring, slot, format!("bad frame header: {e:?}")),
            };
            if header.mask.is_some() {
                return self.lose(ring, slot, "masked server frame".into());
            }
            let end = (header.payload_len as usize)
                .checked_add(at + header.header_len)
                .filter(|&end| end - at <= MAX_PARTIAL);
            let Some(end) = end else {
                return self.lose(ring, slot, "frame too large".into());
            };
            if end > buf.len() {
                break;
            }
            let payload = &buf[at + header.header_len..end];
            at = end;
            // RSV1: compressed (permessage-deflate; only a message's
            // first frame, and ringcast sends messages unfragmented).
            let open = match (header.rsv & 0b100 != 0, self.inflater.as_mut()) {
                (false, _) => self.on_frame(ring, slot, header.opcode, payload),
                (true, Some(inflater)) => {
                    let mut out = std::mem::take(&mut self.inflated);
                    let open = match inflater.inflate(payload, MAX_PARTIAL, &mut out) {
                        Ok(()) => self.on_frame(ring, slot, header.opcode, &out),
                        Err(e) => {
                            self.lose(ring, slot, format!("bad compressed message: {e:?}"));
                            false
                        }
                    };
                    self.inflated = out;
                    open
                }
                (true, None) => {
                    self.lose(ring, slot, "RSV1 without permessage-deflate".into());
                    false
                }
            };
            if !open {
                return;
            }
        }
        if at < buf.len() {
            self.keep_partial(ring, slot, buf, at);
        }
    }

    /// One complete frame; false when the connection was closed.
    pub(super) fn on_frame(
        &mut self,
        ring: &mut IoUring,
        slot: u32,
        opcode: OpCode,
        payload: &[u8],
    ) -> bool {
        match opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if self.on_message(ring, slot, payload) {
                    self.count_message();
                }
            }
            OpCode::Ping => {
                let pong = client_frame(OpCode::Pong, payload, random_bytes::<4>());
                self.send_owned(ring, slot, pong);
            }
            OpCode::Pong => {
                self.shared().pongs.fetch_add(1, Ordering::Relaxed);
            }
            OpCode::Close => {
                let code = match close::parse_payload(payload) {
                    Ok(Some(code)) => code.to_string(),
                    Ok(None) => "no code".into(),
                    Err(_) => "malformed".into(),
                };
                self.lose(ring, slot, format!("server sent close {code}"));
                return false;
            }
        }
        true
    }

    /// Keeps `buf[at..]` until more bytes arrive.
    pub(super) fn keep_partial(&mut self, ring: &mut IoUring, slot: u32, buf: &[u8], at: usize) {
        if buf.len() - at > MAX_PARTIAL {
            return self.lose(ring, slot, "frame too large".into());
        }
        self.conns[slot as usize].partial = Some(Box::new(buf[at..].to_vec()));
    }

    /// Counts a data message received (fan-out delivery, echo).
    pub(super) fn count_message(&self) {
        self.shared().messages.fetch_add(1, Ordering::Relaxed);
        self.shared()
            .last_message_ns
            .store(now_ns(), Ordering::Relaxed);
    }
}
