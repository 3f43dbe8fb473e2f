//! `handshake::parse` on arbitrary bytes; a parsed request goes on through
//! `Request::upgrade` and `accept_response`, as the server would take it.
//!
//! Invariants: no panic; the head length is within the input and
//! `MAX_REQUEST_HEAD`, and parsing exactly the head gives the same length;
//! a chosen subprotocol is one the client offered and the server supports;
//! the 101 response is well formed; every refusal has a response.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_engine::protocol::handshake::{accept_key, accept_response, parse, MAX_REQUEST_HEAD};

fuzz_target!(|data: &[u8]| {
    let (req, used) = match parse(data) {
        Ok(None) => {
            assert!(data.len() < MAX_REQUEST_HEAD, "incomplete past the limit");
            return;
        }
        Err(reject) => {
            let response = reject.response();
            assert!(response.starts_with(b"HTTP/1.1 "));
            assert!(!reject.label().is_empty());
            return;
        }
        Ok(Some(parsed)) => parsed,
    };
    assert!(
        used <= data.len() && used <= MAX_REQUEST_HEAD,
        "{used} bytes"
    );
    match parse(&data[..used]) {
        Ok(Some((_, again))) => assert_eq!(again, used, "the head alone"),
        other => panic!("the head alone parsed as {other:?}"),
    }
    assert!(req.path.starts_with('/'));

    // Subprotocols the server supports: two fixed names, and any named in
    // the bytes after the head (where the first frames would be).
    let mut supported = vec!["chat".to_owned(), "superchat".to_owned()];
    supported.extend(
        String::from_utf8_lossy(&data[used..])
            .split(',')
            .map(str::to_owned),
    );
    for list in [&supported[..], &[]] {
        let Ok(upgrade) = req.upgrade(list) else {
            continue;
        };
        if let Some(protocol) = upgrade.protocol {
            assert!(
                list.iter().any(|s| s == protocol),
                "{protocol:?} not supported"
            );
        }
        let response = String::from_utf8(accept_response(&upgrade, None)).expect("ASCII response");
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
        assert_eq!(accept_key(upgrade.key).len(), 28);
        assert!(response.contains(&accept_key(upgrade.key)));
    }
});
