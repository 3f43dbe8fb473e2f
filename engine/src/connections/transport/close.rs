//! The close interface of the transports, apart from the rest of the
//! interface (`mod.rs`) because the shared close step (`Io::close`) uses
//! it, while the transports use `Io`.

use crate::conn::Endpoint;
use crate::protocol::close::{self, code};
use bytes::Bytes;

/// The last bytes of a connection the server closes with `status` and
/// `reason`: a close frame (RFC 6455 §5.5.1), an SSE `event: close`, or
/// nothing on a long-poll connection (plain HTTP: a waiting poll ends with
/// the connection).
pub(in crate::connections) fn close_bytes(
    endpoint: Option<Endpoint>,
    status: Option<u16>,
    reason: &str,
) -> Option<Bytes> {
    match endpoint {
        Some(Endpoint::Sse) => Some(crate::protocol::sse::close_event(
            status.unwrap_or(code::GOING_AWAY),
            reason,
        )),
        Some(Endpoint::Poll) => None,
        _ => Some(close::encode(status, reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transport_ends_in_its_own_bytes() {
        let ws = close_bytes(Some(Endpoint::PubSubV1), Some(1001), "bye").unwrap();
        assert_eq!(&ws[..], b"\x88\x05\x03\xe9bye");
        let sse = close_bytes(Some(Endpoint::Sse), None, "").unwrap();
        assert!(sse.starts_with(b"event: close\ndata: {\"code\":1001"));
        assert!(close_bytes(Some(Endpoint::Poll), Some(1001), "").is_none());
    }
}
