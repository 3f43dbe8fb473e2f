//! The permessage-deflate codec (RFC 7692 §7.2), without context
//! takeover in either direction: every message is compressed, and
//! inflated, on its own. Built on `flate2` with the `zlib-rs` backend.
//!
//! - [`Deflater::compress`]: raw DEFLATE with a sync flush, the final
//!   empty block's `00 00 ff ff` trimmed (§7.2.1);
//! - [`Inflater::inflate`]: the reverse, with the trailer put back
//!   (§7.2.2), bounded: it stops as soon as the output passes a limit, so
//!   a small frame that would inflate to gigabytes costs at most the limit.

use super::frame::{self, OpCode};
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a sync flush ends with, and what senders trim (§7.2.1).
pub const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The window the server's compressors use when the client allowed the
/// full one (bits, i.e. 32 KiB).
pub const FULL_WINDOW_BITS: u8 = 15;

/// The window used for clients that asked for a smaller one
/// (`server_max_window_bits` 8–14). zlib never emits a distance beyond
/// `window - 262` bytes, so a 512-byte window's output (distances of at
/// most 250 bytes) is valid for a client window of 256 bytes or more;
/// zlib cannot compress with a 256-byte window itself.
pub const NARROW_WINDOW_BITS: u8 = 9;

/// Largest output produced per inflate call, in bytes: the most a message
/// can overshoot the size limit before the inflater stops.
const INFLATE_CHUNK: usize = 16 * 1024;

/// A [`Deflater`]'s buffer is freed after a message that grew it past
/// this many bytes, so one large message does not pin its size.
const KEEP_BUFFER: usize = 64 * 1024;

/// A compressor that forgets everything between messages.
pub struct Deflater {
    inner: Compress,
    /// The compressed bytes of the message being framed.
    buffer: Vec<u8>,
}

impl Deflater {
    /// A compressor with a window of `2^window_bits` bytes (9–15), at
    /// zlib's default level (6).
    ///
    /// # Panics
    /// If `window_bits` is outside 9–15.
    pub fn new(window_bits: u8) -> Self {
        Self {
            inner: Compress::new_with_window_bits(Compression::default(), false, window_bits),
            buffer: Vec::new(),
        }
    }

    /// Compresses one message `payload` into `out` (cleared first): the
    /// payload of a frame with RSV1 set (§7.2.1).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.inner.reset();
        out.clear();
        out.reserve(payload.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            let before = self.inner.total_in();
            self.inner
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("deflate accepts any input");
            consumed += (self.inner.total_in() - before) as usize;
            // Done once every byte went in and the flush did not fill the
            // output (a full output may hide more to come).
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        debug_assert!(
            out.ends_with(&TRAILER),
            "a sync flush ends with 00 00 ff ff"
        );
        out.truncate(out.len() - TRAILER.len());
    }

    /// The whole frame for one data message compressed (RSV1 set, RFC
    /// 7692 §6.1); `None` when the payload is under `min_size` bytes or
    /// does not shrink, so that it goes uncompressed (RSV1 clear).
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8], min_size: usize) -> Option<Bytes> {
        if payload.len() < min_size {
            return None;
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        self.compress(payload, &mut buffer);
        let frame =
            (buffer.len() < payload.len()).then(|| frame::encode_compressed(opcode, &buffer));
        if buffer.capacity() <= KEEP_BUFFER {
            self.buffer = buffer;
        }
        frame
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The output passed the size limit (close 1009).
    TooBig,
    /// Not a valid DEFLATE stream, or one that refers to data before the
    /// message (context takeover the server did not agree to) (close 1007).
    Corrupt,
}

/// A decompressor that forgets everything between messages. Its 32 KiB
/// window is allocated by zlib on first use.
pub struct Inflater {
    inner: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Self {
            inner: Decompress::new_with_window_bits(false, FULL_WINDOW_BITS),
        }
    }
}

impl Inflater {
    /// Inflates one message's `compressed` payload (RSV1 frames, trailer
    /// trimmed) into `out` (cleared first).
    ///
    /// # Errors
    /// [`InflateError::TooBig`] as soon as the output passes `max` bytes
    /// (at most [`INFLATE_CHUNK`] bytes beyond it are ever written);
    /// [`InflateError::Corrupt`] for invalid data.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        self.inner.reset(false);
        out.clear();
        let mut input = compressed;
        let mut trailer_fed = false;
        let mut len = 0;
        loop {
            if input.is_empty() && !trailer_fed {
                input = &TRAILER;
                trailer_fed = true;
            }
            // Room for one byte past the limit, to see it passed.
            let room = INFLATE_CHUNK.min(max + 1 - len);
            out.resize(len + room, 0);
            let (in_before, out_before) = (self.inner.total_in(), self.inner.total_out());
            let status = self
                .inner
                .decompress(input, &mut out[len..], FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt);
            let consumed = (self.inner.total_in() - in_before) as usize;
            let produced = (self.inner.total_out() - out_before) as usize;
            len += produced;
            out.truncate(len);
            input = &input[consumed..];
            if len > max {
                return Err(InflateError::TooBig);
            }
            match status? {
                Status::StreamEnd => return Ok(()),
                _ if produced < room && input.is_empty() && trailer_fed => return Ok(()),
                _ if produced == 0 && consumed == 0 => return Err(InflateError::Corrupt),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..n {
            s.push_str(&format!(
                r#"{{"id":{i},"symbol":"BTC-USD","price":{}.{},"side":"buy"}},"#,
                60000 + i * 7 % 13,
                i % 100
            ));
        }
        s.push(']');
        s.into_bytes()
    }

    #[test]
    fn round_trips_at_every_window_and_size() {
        let mut inflater = Inflater::default();
        for bits in [NARROW_WINDOW_BITS, FULL_WINDOW_BITS] {
            let mut deflater = Deflater::new(bits);
            for payload in [Vec::new(), b"a".to_vec(), json(20), json(3000)] {
                let mut packed = Vec::new();
                deflater.compress(&payload, &mut packed);
                assert!(!packed.ends_with(&TRAILER));
                let mut out = Vec::new();
                inflater.inflate(&packed, 1 << 20, &mut out).unwrap();
                assert_eq!(out, payload, "bits {bits}, {} bytes", payload.len());
            }
        }
    }

    #[test]
    fn json_shrinks() {
        let payload = json(15); // about 1 KiB
        let mut packed = Vec::new();
        Deflater::new(FULL_WINDOW_BITS).compress(&payload, &mut packed);
        assert!(
            packed.len() * 3 < payload.len(),
            "{} -> {}",
            payload.len(),
            packed.len()
        );
    }

    #[test]
    fn frames_are_compressed_from_the_minimum_size_when_they_shrink() {
        let mut deflater = Deflater::new(FULL_WINDOW_BITS);
        let payload = json(15);
        let f = deflater.frame(OpCode::Text, &payload, 256).unwrap();
        assert_eq!(f[0], 0x80 | frame::RSV1 | 0x1);
        assert!(deflater.frame(OpCode::Text, &payload[..255], 256).is_none());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(deflater.frame(OpCode::Binary, &noise, 0).is_none());
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let mut packed = Vec::new();
        Deflater::new(FULL_WINDOW_BITS).compress(&zeros, &mut packed);
        assert!(
            packed.len() < 10_000,
            "8 MiB of zeros is {} bytes",
            packed.len()
        );
        let mut out = Vec::new();
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&packed, 1 << 20, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.len() <= (1 << 20) + INFLATE_CHUNK);
        // Exactly at the limit passes.
        inflater.inflate(&packed[..], 8 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 8 << 20);
    }

    #[test]
    fn garbage_is_corrupt_and_the_inflater_recovers() {
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        assert_eq!(
            inflater.inflate(&[0xff; 32], 1024, &mut out),
            Err(InflateError::Corrupt)
        );
        let mut packed = Vec::new();
        Deflater::new(FULL_WINDOW_BITS).compress(b"hello hello hello", &mut packed);
        inflater.inflate(&packed, 1024, &mut out).unwrap();
        assert_eq!(out, b"hello hello hello");
    }

    #[test]
    fn a_final_block_from_the_client_is_accepted() {
        // A client may end a message with BFINAL set (§7.2.3.x): the
        // trailer after the stream's end is then ignored.
        let mut c = Compress::new(Compression::default(), false);
        let mut packed = Vec::with_capacity(256);
        c.compress_vec(b"final block", &mut packed, FlushCompress::Finish)
            .unwrap();
        let mut out = Vec::new();
        Inflater::default()
            .inflate(&packed, 1024, &mut out)
            .unwrap();
        assert_eq!(out, b"final block");
    }
}
