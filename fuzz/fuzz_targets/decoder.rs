//! `Decoder::feed` on a byte stream cut into chunks at fuzzer-chosen points.
//!
//! Input layout:
//! - byte 0: the message size limit: `b * 16` bytes, or no limit for 255;
//! - byte 1: bits 0-3, how many chunk lengths follow; bit 4, structured
//!   mode (below); bits 5-7, stop (return `Break`) after that many messages
//!   (0: never);
//! - then one byte per chunk length (0 feeds an empty chunk); the last chunk
//!   takes the rest;
//! - then the stream. In structured mode the stream is instead built from
//!   frame specs, each `b0, len, payload...` (`len` 255: a big-endian u16
//!   length follows), masked as a client masks them, so that mutations of
//!   the payload reach the UTF-8, close and fragmentation checks.
//!
//! Invariants: no panic; the same messages and the same final result
//! whatever the cuts (compared with the whole stream fed at once, and byte
//! by byte for short streams); text is UTF-8; data messages within the
//! limit; control payloads at most 125 bytes; a close is the last message
//! and stops decoding; errors carry close code 1002, 1007 or 1009.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_engine::protocol::close::is_valid_wire_code;
use ringcast_engine::protocol::decoder::{Decoder, Fed, Message, ProtocolError};
use ringcast_engine::protocol::frame::encode_masked;
use std::ops::ControlFlow;

#[derive(Debug, PartialEq, Eq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
}

type Outcome = (Vec<Got>, Result<Fed, ProtocolError>);

/// Feeds `stream` in chunks of `lens` bytes (the last chunk takes the rest)
/// to one decoder, as a connection would, stopping at the first result that
/// is not `NeedMore`.
fn decode(stream: &[u8], lens: &[usize], max: usize, stop_after: usize) -> Outcome {
    let mut decoder = Decoder::default();
    let mut got = Vec::new();
    let mut result = Ok(Fed::NeedMore);
    let mut start = 0;
    let mut chunk_ends: Vec<usize> = lens
        .iter()
        .scan(0usize, |end, len| {
            *end = (*end + len).min(stream.len());
            Some(*end)
        })
        .collect();
    chunk_ends.push(stream.len());
    for end in chunk_ends {
        // feed unmasks in place: every run gets its own copy.
        let mut chunk = stream[start..end].to_vec();
        start = end;
        // permessage-deflate off: RSV1 is a protocol error here (the
        // compressed path is the inflater's, with its own bound).
        result = decoder.feed(&mut chunk, max, false, &mut |m| {
            got.push(match m {
                Message::Text(t) => Got::Text(t.to_owned()),
                Message::Binary(b) => Got::Binary(b.to_vec()),
                Message::Ping(b) => Got::Ping(b.to_vec()),
                Message::Pong(b) => Got::Pong(b.to_vec()),
                Message::Close(c) => Got::Close(c),
                Message::Compressed { .. } => unreachable!("compressed without deflate"),
            });
            if got.len() == stop_after {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if result != Ok(Fed::NeedMore) {
            break;
        }
    }
    (got, result)
}

/// Builds a stream of masked client frames from `b0, len, payload` specs.
fn structured(mut spec: &[u8]) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut index = 0u8;
    while let [b0, len, rest @ ..] = spec {
        let (len, rest) = match (*len, rest) {
            (255, [hi, lo, rest @ ..]) => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            (len, rest) => (usize::from(len), rest),
        };
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        let key = [0x37 ^ index, 0xfa, 0x21 ^ *b0, 0x3d];
        stream.extend(encode_masked(*b0, payload, key));
        index = index.wrapping_add(1);
        spec = rest;
    }
    stream
}

fn check(outcome: &Outcome, max: usize, stop_after: usize) {
    let (got, result) = outcome;
    for (i, m) in got.iter().enumerate() {
        match m {
            Got::Text(t) => {
                assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                assert!(t.len() <= max, "text over the limit");
            }
            Got::Binary(b) => assert!(b.len() <= max, "binary over the limit"),
            Got::Ping(b) | Got::Pong(b) => assert!(b.len() <= 125, "control over 125 bytes"),
            Got::Close(code) => {
                assert!(code.is_none_or(is_valid_wire_code), "close code {code:?}");
                assert_eq!(i + 1, got.len(), "a message after the close");
                assert_eq!(*result, Ok(Fed::Stopped), "decoding went on after a close");
            }
        }
    }
    match result {
        Ok(Fed::Stopped) => assert!(
            matches!(got.last(), Some(Got::Close(_))) || got.len() == stop_after,
            "stopped with no close and no Break"
        ),
        Ok(Fed::NeedMore) => assert!(got.len() < stop_after || stop_after == 0),
        Err(e) => assert!(matches!(e.code, 1002 | 1007 | 1009), "{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, flags, rest @ ..] = data else {
        return;
    };
    let max = match *limit {
        255 => usize::MAX,
        b => usize::from(b) * 16,
    };
    let cuts = usize::from(flags & 0x0f).min(rest.len());
    let stop_after = usize::from(flags >> 5);
    let (lens, body) = rest.split_at(cuts);
    let lens: Vec<usize> = lens.iter().map(|&b| usize::from(b)).collect();
    let stream = if flags & 0x10 != 0 {
        structured(body)
    } else {
        body.to_vec()
    };

    let whole = decode(&stream, &[], max, stop_after);
    check(&whole, max, stop_after);
    let split = decode(&stream, &lens, max, stop_after);
    assert_eq!(whole, split, "cut into chunks of {lens:?}");
    if stream.len() <= 256 {
        let bytewise = decode(&stream, &vec![1; stream.len()], max, stop_after);
        assert_eq!(whole, bytewise, "fed byte by byte");
    }
});
