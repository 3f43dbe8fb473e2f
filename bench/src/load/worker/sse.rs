//! Server-Sent Events: a connection made with `--transport sse` reads
//! events, not frames.

use super::Clients;
use io_uring::IoUring;

impl Clients {
    /// Server-Sent Events from `buf[at..]`: each unnamed event's `data:`
    /// line is a message; named events (`subscribed`) and heartbeats are
    /// not; `event: close` ends the stream.
    pub(super) fn on_events(&mut self, ring: &mut IoUring, slot: u32, buf: &[u8], mut at: usize) {
        while let Some(len) = buf[at..].windows(2).position(|w| w == b"\n\n") {
            let event = &buf[at..at + len];
            at += len + 2;
            let mut name: &[u8] = b"";
            let mut data = None;
            for line in event.split(|&b| b == b'\n') {
                if let Some(value) = line.strip_prefix(b"event: ") {
                    name = value;
                } else if let Some(value) = line.strip_prefix(b"data: ") {
                    data = Some(value);
                }
            }
            match (name, data) {
                (b"close", _) => {
                    let why = String::from_utf8_lossy(data.unwrap_or_default());
                    return self.lose(ring, slot, format!("server sent event: close {why}"));
                }
                (b"", Some(payload)) if self.on_message(ring, slot, payload) => {
                    self.count_message();
                }
                _ => {}
            }
        }
        if at < buf.len() {
            self.keep_partial(ring, slot, buf, at);
        }
    }
}
