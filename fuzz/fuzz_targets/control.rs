//! `control::parse` (the JSON control messages) on arbitrary UTF-8.
//!
//! Invariants: no panic; a parsed subscribe or unsubscribe survives a
//! round trip through the acknowledgement the server would send (same op
//! and topic), a refresh through its own JSON; an error reason makes a
//! well-formed JSON error reply.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_engine::protocol::control::{ack, error, parse, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(request) => {
            let echoed = match &request {
                Request::Subscribe { topic } => ack("subscribe", topic),
                Request::Unsubscribe { topic } => ack("unsubscribe", topic),
                Request::Refresh { token } => {
                    serde_json::json!({ "op": "refresh", "token": token }).to_string()
                }
            };
            assert_eq!(parse(&echoed), Ok(request));
        }
        Err(reason) => {
            let reply: serde_json::Value = serde_json::from_str(&error(&reason)).expect("JSON");
            assert_eq!(reply["op"], "error");
            assert_eq!(reply["reason"], reason.as_str());
        }
    }
});
