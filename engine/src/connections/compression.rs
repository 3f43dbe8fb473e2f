//! A worker's permessage-deflate state, shared by all its connections:
//! one inflater for client messages and, for `/echo`, up to two
//! compressors (full and narrow window). Neither direction keeps context
//! between messages (the handshake agreed `server_no_context_takeover`
//! and `client_no_context_takeover`), so every message starts from a
//! reset state and a connection holds nothing between messages. Each
//! piece is allocated on first use and freed by the once-a-second trim
//! when it went unused for a whole period.
//!
//! Publishes do not come through here: they are compressed once, on the
//! publishing thread (see [`crate::runtime::Handle::publish`]).

use crate::conn::Deflate;
use crate::protocol::close::code;
use crate::protocol::decoder::{Message, ProtocolError};
use crate::protocol::deflate::{
    Deflater, InflateError, Inflater, FULL_WINDOW_BITS, NARROW_WINDOW_BITS,
};
use crate::protocol::frame::{self, OpCode};
use bytes::Bytes;
use std::time::Instant;

/// The inflater's output buffer is freed before a message once a previous
/// one grew it past this many bytes.
const KEEP_INFLATED: usize = 64 * 1024;

/// One piece of zlib state, allocated on first use and dropped when a
/// trim finds it unused since the previous one.
struct Lazy<T> {
    value: Option<T>,
    used: bool,
}

impl<T> Lazy<T> {
    const fn new() -> Self {
        Self {
            value: None,
            used: false,
        }
    }

    fn get(&mut self, make: impl FnOnce() -> T) -> &mut T {
        self.used = true;
        self.value.get_or_insert_with(make)
    }

    /// Frees the value if unused since the last call; returns whether
    /// it is still held.
    fn trim(&mut self) -> bool {
        if !std::mem::take(&mut self.used) {
            self.value = None;
        }
        self.value.is_some()
    }
}

/// The inflating side: client messages with RSV1 set.
pub(super) struct Inflating {
    inflater: Lazy<Inflater>,
    out: Vec<u8>,
}

impl Inflating {
    /// Inflates one compressed message (at most `max` bytes of output) and
    /// returns it as a plain text or binary message.
    ///
    /// # Errors
    /// 1009 as soon as the output passes `max`; 1007 for invalid DEFLATE
    /// data or text that is not UTF-8.
    pub fn message(
        &mut self,
        text: bool,
        compressed: &[u8],
        max: usize,
    ) -> Result<Message<'_>, ProtocolError> {
        if self.out.capacity() > KEEP_INFLATED {
            self.out = Vec::new();
        }
        let inflater = self.inflater.get(Inflater::default);
        inflater
            .inflate(compressed, max, &mut self.out)
            .map_err(|e| match e {
                InflateError::TooBig => ProtocolError {
                    code: code::MESSAGE_TOO_BIG,
                    reason: "message too big",
                },
                InflateError::Corrupt => ProtocolError {
                    code: code::INVALID_PAYLOAD,
                    reason: "invalid compressed data",
                },
            })?;
        if !text {
            return Ok(Message::Binary(&self.out));
        }
        std::str::from_utf8(&self.out)
            .map(Message::Text)
            .map_err(|_| ProtocolError {
                code: code::INVALID_PAYLOAD,
                reason: "text is not valid UTF-8",
            })
    }
}

/// One connection's inflate budget (`--max-inflate-bytes-per-sec`): a
/// token bucket of inflated bytes holding one second's worth. Inflating
/// costs CPU in proportion to its output (about 2 ms per MiB), so a
/// client sending small frames that inflate big could otherwise pin a
/// worker and stall every other connection on it. Kept in a side map by
/// slot, made on a connection's first compressed message.
pub(super) struct InflateBudget {
    left: f64,
    refilled: Instant,
}

impl InflateBudget {
    /// A full bucket of `per_sec` bytes.
    pub fn new(per_sec: u64, now: Instant) -> Self {
        Self {
            left: per_sec as f64,
            refilled: now,
        }
    }

    /// Charges `bytes` inflated at `now`, refilling at `per_sec` bytes a
    /// second up to one second's worth. Returns `false` once the bucket
    /// went below empty: the connection is then closed with 1008.
    pub fn charge(&mut self, per_sec: u64, bytes: usize, now: Instant) -> bool {
        let per_sec = per_sec as f64;
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.left = (self.left + elapsed * per_sec).min(per_sec) - bytes as f64;
        self.left >= 0.0
    }
}

/// The compressing side, for echoes (publishes are compressed once,
/// elsewhere).
pub(super) struct Deflating {
    min_size: usize,
    full: Lazy<Deflater>,
    narrow: Lazy<Deflater>,
}

impl Deflating {
    /// The frame for a data message to a connection in `mode`: compressed
    /// (RSV1) when it negotiated permessage-deflate and the payload is at
    /// least `--compression-min-size` bytes and shrinks, plain otherwise.
    pub fn encode(&mut self, mode: Deflate, opcode: OpCode, payload: &[u8]) -> Bytes {
        let deflater = match mode {
            Deflate::Off => None,
            _ if payload.len() < self.min_size => None,
            Deflate::Full => Some(self.full.get(|| Deflater::new(FULL_WINDOW_BITS))),
            Deflate::Narrow => Some(self.narrow.get(|| Deflater::new(NARROW_WINDOW_BITS))),
        };
        deflater
            .and_then(|d| d.frame(opcode, payload, self.min_size))
            .unwrap_or_else(|| frame::encode(opcode, payload))
    }
}

/// Both sides; see the module documentation.
pub(super) struct Codec {
    pub inflating: Inflating,
    pub deflating: Deflating,
}

impl Codec {
    /// Nothing allocated yet; echoes shorter than `min_size` bytes go
    /// uncompressed.
    pub fn new(min_size: usize) -> Self {
        Self {
            inflating: Inflating {
                inflater: Lazy::new(),
                out: Vec::new(),
            },
            deflating: Deflating {
                min_size,
                full: Lazy::new(),
                narrow: Lazy::new(),
            },
        }
    }

    /// Frees what went unused since the last trim. Returns the bytes of
    /// zlib buffers still held (as zlib-rs sizes them; its state structs,
    /// a few KiB each, are not counted).
    pub fn trim(&mut self) -> u64 {
        let deflater = |bits: u32| -> u64 {
            // window (two), hash chain, hash heads, pending and symbol buffers
            4 * (1 << bits) + (128 << 10) + (64 << 10) + (48 << 10)
        };
        let mut held = 0;
        if self.inflating.inflater.trim() {
            held += 32 << 10;
        }
        if self.deflating.full.trim() {
            held += deflater(FULL_WINDOW_BITS.into());
        }
        if self.deflating.narrow.trim() {
            held += deflater(NARROW_WINDOW_BITS.into());
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_compressed_per_mode_and_state_goes_after_an_idle_second() {
        let mut codec = Codec::new(16);
        let text = "a message long enough to be worth compressing, compressing".repeat(4);
        let plain = codec
            .deflating
            .encode(Deflate::Off, OpCode::Text, text.as_bytes());
        assert_eq!(plain[0], 0x81);
        for mode in [Deflate::Full, Deflate::Narrow] {
            let frame = codec.deflating.encode(mode, OpCode::Text, text.as_bytes());
            assert_eq!(frame[0], 0xC1, "{mode:?}");
            let header = 2 + usize::from(frame[1] == 126) * 2;
            let back = codec
                .inflating
                .message(true, &frame[header..], 1024)
                .unwrap();
            assert_eq!(back, Message::Text(&text));
        }
        let short = codec.deflating.encode(Deflate::Full, OpCode::Text, b"tiny");
        assert_eq!(short[0], 0x81, "under the minimum size");
        assert!(codec.trim() > 600 << 10, "all three were used");
        assert_eq!(codec.trim(), 0, "an idle period frees them");
    }

    #[test]
    fn the_inflate_budget_refills_up_to_one_second() {
        let t0 = Instant::now();
        let mut b = InflateBudget::new(1000, t0);
        assert!(b.charge(1000, 600, t0));
        assert!(b.charge(1000, 400, t0));
        assert!(!b.charge(1000, 1, t0), "past one second's worth");
        let later = t0 + std::time::Duration::from_secs(10);
        assert!(b.charge(1000, 1000, later), "refilled, but only to full");
        assert!(!b.charge(1000, 1, later));
    }

    #[test]
    fn inflate_failures_map_to_close_codes() {
        let mut codec = Codec::new(0);
        let bomb = {
            let mut d = Deflater::new(FULL_WINDOW_BITS);
            let mut out = Vec::new();
            d.compress(&vec![b'a'; 100_000], &mut out);
            out
        };
        let code = |r: Result<Message<'_>, ProtocolError>| r.unwrap_err().code;
        assert_eq!(code(codec.inflating.message(false, &bomb, 99_999)), 1009);
        assert_eq!(code(codec.inflating.message(false, &[0xff; 8], 100)), 1007);
        let mut latin1 = Vec::new();
        Deflater::new(FULL_WINDOW_BITS).compress(b"caf\xe9", &mut latin1);
        assert_eq!(code(codec.inflating.message(true, &latin1, 100)), 1007);
        assert!(codec.inflating.message(false, &bomb, 100_000).is_ok());
    }
}
