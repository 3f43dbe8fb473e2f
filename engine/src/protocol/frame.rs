//! Frame headers (RFC 6455 §5.2): parse from a byte slice; encode
//! server-to-client frames, and masked client-to-server frames for the load
//! generator and tests.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest frame header: 2 bytes, 8 bytes of extended payload length and a
/// 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry, in bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes defined by RFC 6455 §5.2; the others are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// A further fragment of a data message.
    Continuation = 0x0,
    /// First frame of a UTF-8 text message.
    Text = 0x1,
    /// First frame of a binary message.
    Binary = 0x2,
    /// Close control frame (§5.5.1).
    Close = 0x8,
    /// Ping control frame (§5.5.2).
    Ping = 0x9,
    /// Pong control frame (§5.5.3).
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for the low 4 bits of `bits`, or `None` for a reserved
    /// opcode (0x3–0x7, 0xB–0xF).
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits & 0x0f {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Control frames have the high opcode bit set (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header. It is not yet checked against the protocol rules
/// for client frames; see [`crate::protocol::decoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of a message.
    pub fin: bool,
    /// RSV1, RSV2 and RSV3 as the low 3 bits.
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Length of the header itself in bytes (2 to 14).
    pub header_len: usize,
}

/// A header that no valid frame can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Opcode 0x3–0x7 or 0xB–0xF.
    ReservedOpcode,
    /// A 64-bit payload length with the most significant bit set.
    LengthOverflow,
}

/// Parses the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is too short to hold the whole header
/// (at most [`MAX_HEADER_LEN`] bytes are needed).
///
/// # Errors
/// [`HeaderError`] for a reserved opcode or a payload length with its most
/// significant bit set (RFC 6455 §5.2).
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, HeaderError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let opcode = OpCode::from_bits(b0).ok_or(HeaderError::ReservedOpcode)?;
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut header_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(HeaderError::LengthOverflow);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let mask = if masked {
        let Some(key) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x07,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Writes a header: first byte `b0` (FIN, RSV, opcode), then the MASK bit
/// `mask` (0x80 or 0) with the payload length in its shortest form.
fn put_header(out: &mut impl BufMut, b0: u8, mask: u8, payload_len: usize) {
    out.put_u8(b0);
    if payload_len < 126 {
        out.put_u8(mask | payload_len as u8);
    } else if let Ok(len) = u16::try_from(payload_len) {
        out.put_u8(mask | 126);
        out.put_u16(len);
    } else {
        out.put_u8(mask | 127);
        out.put_u64(payload_len as u64);
    }
}

/// Encodes one complete, unfragmented server frame (header plus payload) in
/// one buffer. The result is reference-counted: a broadcast encodes once and
/// every subscriber's send shares it.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_parts(opcode, &[payload])
}

/// As [`encode`], for a payload that is the concatenation of `parts`: one
/// copy of each part, with no intermediate buffer.
pub fn encode_parts(opcode: OpCode, parts: &[&[u8]]) -> Bytes {
    encode_with(0x80 | opcode as u8, parts)
}

/// RSV1: the message is compressed (permessage-deflate, RFC 7692 §6).
pub const RSV1: u8 = 0x40;

/// As [`encode`], for a data message compressed with permessage-deflate:
/// RSV1 is set, and `compressed` is the payload [`super::deflate`] made
/// (RFC 7692 §6.1).
pub fn encode_compressed(opcode: OpCode, compressed: &[u8]) -> Bytes {
    debug_assert!(!opcode.is_control(), "control frames are never compressed");
    encode_with(0x80 | RSV1 | opcode as u8, &[compressed])
}

fn encode_with(b0: u8, parts: &[&[u8]]) -> Bytes {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut out = BytesMut::with_capacity(10 + len);
    put_header(&mut out, b0, 0, len);
    for part in parts {
        out.put_slice(part);
    }
    out.freeze()
}

/// The payload of a whole unmasked frame made by [`encode`] (RFC 6455
/// §5.2: a 2-, 4- or 10-byte header, no masking key).
///
/// # Panics
/// If `frame` is shorter than its header says.
pub fn server_payload(frame: &[u8]) -> &[u8] {
    let header = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[header..]
}

/// Encodes one masked frame as clients send it (RFC 6455 §5.3): first byte
/// `b0` exactly as given (FIN, RSV, opcode: tests set invalid ones on
/// purpose), masking key `key`, then the payload masked with it.
pub fn encode_masked(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    put_header(&mut out, b0, 0x80, payload.len());
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    crate::protocol::mask::apply_mask(&mut out[start..], key, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_payload_skips_each_header_length() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let frame = encode(OpCode::Text, &payload);
            assert_eq!(server_payload(&frame), &payload[..], "{len} bytes");
        }
    }

    #[test]
    fn parses_rfc_examples() {
        // RFC 6455 §5.7: a masked "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = parse_header(&frame).unwrap().unwrap();
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.header_len, 6);
        // 256 bytes binary in a single unmasked frame.
        let h = parse_header(&[0x82, 0x7e, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len), (256, 4));
        let h = parse_header(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, h.header_len), (65536, 10));
    }

    #[test]
    fn short_input_needs_more() {
        let frame = [0x81, 0xfe, 0x01, 0x00, 1, 2, 3, 4];
        for len in 0..frame.len() {
            assert_eq!(parse_header(&frame[..len]), Ok(None), "len {len}");
        }
        assert!(parse_header(&frame).unwrap().is_some());
    }

    #[test]
    fn rejects_reserved_opcodes_and_huge_lengths() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                parse_header(&[0x80 | op, 0x80]),
                Err(HeaderError::ReservedOpcode)
            );
        }
        let huge = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_header(&huge), Err(HeaderError::LengthOverflow));
    }

    #[test]
    fn masked_frames_unmask_to_their_payload() {
        let key = [1, 2, 3, 4];
        for len in [0usize, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut frame = encode_masked(0x82, &payload, key);
            let h = parse_header(&frame).unwrap().unwrap();
            assert_eq!(
                (h.opcode, h.payload_len, h.mask),
                (OpCode::Binary, len as u64, Some(key))
            );
            crate::protocol::mask::apply_mask(&mut frame[h.header_len..], key, 0);
            assert_eq!(&frame[h.header_len..], &payload[..]);
        }
    }

    #[test]
    fn encode_round_trips_through_parse() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let payload = vec![7u8; len];
            let frame = encode(OpCode::Binary, &payload);
            let h = parse_header(&frame).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.mask, None);
            assert!(h.fin);
            assert_eq!(frame.len(), h.header_len + len);
        }
    }
}
