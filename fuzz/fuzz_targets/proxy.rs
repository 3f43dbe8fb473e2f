//! `proxy::parse` (PROXY protocol v1 and v2) on arbitrary bytes.
//!
//! Invariants: no panic; a parsed header is no longer than the input nor
//! the version's limit; every shorter prefix of it is incomplete
//! (`Ok(None)`), and every longer prefix of the input parses to the same
//! source and length, so bytes arriving one at a time give the same answer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_engine::protocol::proxy::{parse, MAX_V1, MAX_V2};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((source, used))) = parse(data) else {
        return;
    };
    assert!(used <= data.len(), "used {used} of {} bytes", data.len());
    let limit = if data.starts_with(b"PROXY ") {
        MAX_V1
    } else {
        MAX_V2
    };
    assert!(used <= limit, "{used}-byte header, limit {limit}");
    for end in 0..used {
        assert_eq!(parse(&data[..end]), Ok(None), "{end}-byte prefix");
    }
    for end in used..data.len() {
        assert_eq!(
            parse(&data[..end]),
            Ok(Some((source, used))),
            "{end}-byte prefix"
        );
    }
});
