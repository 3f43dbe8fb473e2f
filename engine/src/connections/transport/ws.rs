//! The raw WebSocket transport (the topics endpoint without a
//! subprotocol): text messages are JSON control messages (subscribe,
//! unsubscribe, refresh), or with `--room` a room member's messages are
//! published to its rooms; a publish arrives as its payload alone, once
//! per publish whatever the number of the connection's topics.

use super::super::io::Io;
use super::super::messages::Action;
use super::super::Connections;
use super::Delivery;
use crate::conn::{Conn, Route};
use crate::protocol::control;
use crate::protocol::decoder::Message;
use crate::Content;
use bytes::Bytes;

/// What a text or binary message asks for.
pub(super) fn on_message(rooms: bool, message: Message<'_>) -> Action {
    match message {
        Message::Text(t) if rooms => {
            Action::Room(Content::Text, Bytes::copy_from_slice(t.as_bytes()))
        }
        Message::Binary(b) if rooms => Action::Room(Content::Binary, Bytes::copy_from_slice(b)),
        Message::Text(t) => match control::parse(t) {
            Ok(request) => Action::Control(request),
            Err(reason) => Action::Invalid(control::error(&reason)),
        },
        _ => Action::Invalid(control::error("binary messages are not control messages")),
    }
}

/// The bytes of `d` for a connection with `route`: the raw frame, or its
/// compressed twin for permessage-deflate with the full window.
pub(super) fn encode(d: &Delivery<'_>, route: Option<Route>) -> Bytes {
    d.raw.for_route(route).clone()
}

/// Queues `d` on `conn`. Returns whether it was queued.
pub(super) fn deliver(io: &mut Io, conn: &mut Conn, slot: u32, d: &Delivery<'_>) -> bool {
    io.queue(conn, slot, encode(d, conn.route))
}

impl Connections {
    /// Subscribes to the topics named in the upgrade request, silently.
    pub(super) fn open_ws(&mut self, slot: u32, topics: &[String]) {
        for topic in topics {
            self.subscribe(slot, topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Deflate, Endpoint};
    use crate::delivery::Frames;
    use crate::protocol::frame::{self, OpCode};

    #[test]
    fn a_delivery_is_the_raw_frame_or_its_compressed_twin() {
        let raw = Frames {
            plain: frame::encode(OpCode::Text, b"hello"),
            deflated: Some(Bytes::from_static(b"\xc1\x03abc")),
        };
        let v1 = Frames::default();
        let d = Delivery {
            topic: Some(1),
            position: None,
            raw: &raw,
            v1: &v1,
        };
        let plain = encode(&d, Some(Route::new(Endpoint::PubSub, Deflate::Off)));
        assert_eq!(&plain[..], b"\x81\x05hello");
        let narrow = encode(&d, Some(Route::new(Endpoint::PubSub, Deflate::Narrow)));
        assert_eq!(narrow, plain, "a narrow window gets the plain frame");
        let full = encode(&d, Some(Route::new(Endpoint::PubSub, Deflate::Full)));
        assert_eq!(&full[..], b"\xc1\x03abc");
    }

    #[test]
    fn text_is_control_binary_is_refused_unless_rooms() {
        let subscribe = on_message(false, Message::Text(r#"{"op":"subscribe","topic":"a"}"#));
        assert!(matches!(
            subscribe,
            Action::Control(control::Request::Subscribe { .. })
        ));
        assert!(matches!(
            on_message(false, Message::Binary(b"x")),
            Action::Invalid(_)
        ));
        assert!(matches!(
            on_message(true, Message::Binary(b"x")),
            Action::Room(Content::Binary, _)
        ));
    }
}
