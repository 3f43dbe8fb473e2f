//! The `/echo` endpoint: every text or binary message comes back,
//! compressed for a connection that negotiated permessage-deflate. It
//! takes no topic, so no delivery reaches it.

use super::super::compression::Deflating;
use super::super::messages::Action;
use crate::conn::Route;
use crate::protocol::decoder::Message;
use crate::protocol::frame::OpCode;

/// The echo of a text or binary message.
pub(super) fn on_message(route: Route, deflating: &mut Deflating, message: Message<'_>) -> Action {
    let (opcode, payload) = match message {
        Message::Text(t) => (OpCode::Text, t.as_bytes()),
        Message::Binary(b) => (OpCode::Binary, b),
        _ => unreachable!("only data messages reach a transport"),
    };
    Action::Send(deflating.encode(route.deflate(), opcode, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Deflate, Endpoint};
    use crate::connections::compression::Codec;

    #[test]
    fn a_message_comes_back_as_it_came() {
        let mut codec = Codec::new(1024);
        let route = Route::new(Endpoint::Echo, Deflate::Full);
        let Action::Send(text) = on_message(route, &mut codec.deflating, Message::Text("hi"))
        else {
            panic!("an echo is sent");
        };
        assert_eq!(&text[..], b"\x81\x02hi", "under the minimum size: plain");
        let Action::Send(bin) = on_message(route, &mut codec.deflating, Message::Binary(b"\x00"))
        else {
            panic!("an echo is sent");
        };
        assert_eq!(&bin[..], b"\x82\x01\x00");
    }
}
