//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).

use super::utf8::Utf8Validator;
use bytes::Bytes;

/// Status codes the server sends, and the two that only name what
/// happened (1005, 1006: never sent on the wire) (RFC 6455 §7.4.1).
pub mod code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown, drain).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A message of a type this endpoint does not accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A close frame arrived without a status code.
    pub const NO_STATUS: u16 = 1005;
    /// The connection ended without a close frame.
    pub const ABNORMAL: u16 = 1006;
    /// Text that is not UTF-8, or another inconsistent payload.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy was violated (e.g. the peer reads too slowly).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over the configured size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// Whether a peer may send `code` in a close frame: 1000–1003 and
/// 1007–1014 (registered with IANA), and 3000–4999 (libraries and
/// applications). 1004–1006 and 1015 must never be sent on the wire.
pub fn is_valid_wire_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks the payload of a close frame received from the peer and returns
/// the status code to echo back, `None` if the frame carried no status.
///
/// # Errors
/// The close code to fail the connection with: 1002 for a 1-byte payload or
/// a code that must not be sent; 1007 for a reason that is not UTF-8.
pub fn parse_payload(payload: &[u8]) -> Result<Option<u16>, u16> {
    match payload {
        [] => Ok(None),
        [_] => Err(code::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let status = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_wire_code(status) {
                return Err(code::PROTOCOL_ERROR);
            }
            let mut utf8 = Utf8Validator::default();
            utf8.feed(reason)
                .and_then(|()| utf8.finish())
                .map_err(|_| code::INVALID_PAYLOAD)?;
            Ok(Some(status))
        }
    }
}

/// Encodes a close frame with `status` and a `reason` (truncated to fit the
/// 125-byte control payload). `None` sends an empty close payload.
pub fn encode(status: Option<u16>, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    if let Some(status) = status {
        payload.extend_from_slice(&status.to_be_bytes());
        let mut end = reason.len().min(super::frame::MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
    }
    super::frame::encode(super::frame::OpCode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_ranges() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_wire_code(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_wire_code(bad), "{bad}");
        }
    }

    #[test]
    fn payload_rules() {
        assert_eq!(parse_payload(&[]), Ok(None));
        assert_eq!(parse_payload(&[3]), Err(code::PROTOCOL_ERROR));
        assert_eq!(parse_payload(&[0x03, 0xe8, b'o', b'k']), Ok(Some(1000)));
        assert_eq!(parse_payload(&[0x03, 0xed]), Err(code::PROTOCOL_ERROR)); // 1005
        assert_eq!(
            parse_payload(&[0x03, 0xe8, 0xff]),
            Err(code::INVALID_PAYLOAD)
        );
    }

    #[test]
    fn long_reason_is_truncated_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = encode(Some(1008), &reason);
        let payload = &frame[2..];
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
