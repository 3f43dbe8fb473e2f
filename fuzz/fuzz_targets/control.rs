//! `control::parse` (the JSON control messages) on arbitrary UTF-8.
//!
//! Invariants: no panic; a parsed request survives a round trip through
//! the acknowledgement the server would send (same op and topic); an
//! error reason makes a well-formed JSON error reply.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_engine::control::{ack, error, parse, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(request) => {
            let (op, topic) = match &request {
                Request::Subscribe { topic } => ("subscribe", topic),
                Request::Unsubscribe { topic } => ("unsubscribe", topic),
            };
            assert_eq!(parse(&ack(op, topic)), Ok(request));
        }
        Err(reason) => {
            let reply: serde_json::Value = serde_json::from_str(&error(&reason)).expect("JSON");
            assert_eq!(reply["op"], "error");
            assert_eq!(reply["reason"], reason.as_str());
        }
    }
});
