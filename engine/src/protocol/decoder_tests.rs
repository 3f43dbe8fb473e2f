//! The decoder's tests: frames in every split, protocol violations, and
//! arbitrary input that must never panic.

use super::*;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A masked client frame.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    crate::protocol::frame::encode_masked(b0, payload, KEY)
}

#[derive(Debug, PartialEq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Compressed(bool, Vec<u8>),
}

/// Feeds `bytes` split at `cuts`; returns messages and the final result.
fn decode(bytes: &[u8], cuts: &[usize], max: usize) -> (Vec<Got>, Result<Fed, ProtocolError>) {
    decode_with(bytes, cuts, max, false)
}

/// As [`decode`], with permessage-deflate negotiated or not.
fn decode_with(
    bytes: &[u8],
    cuts: &[usize],
    max: usize,
    deflate: bool,
) -> (Vec<Got>, Result<Fed, ProtocolError>) {
    let mut d = Decoder::default();
    let mut got = Vec::new();
    let mut bounds = cuts.to_vec();
    bounds.push(bytes.len());
    let mut start = 0;
    let mut result = Ok(Fed::NeedMore);
    for end in bounds {
        let mut piece = bytes[start..end].to_vec();
        start = end;
        result = d.feed(&mut piece, max, deflate, &mut |m| {
            got.push(match m {
                Message::Text(t) => Got::Text(t.to_owned()),
                Message::Binary(b) => Got::Binary(b.to_vec()),
                Message::Ping(b) => Got::Ping(b.to_vec()),
                Message::Pong(b) => Got::Pong(b.to_vec()),
                Message::Close(c) => Got::Close(c),
                Message::Compressed { text, payload } => Got::Compressed(text, payload.to_vec()),
            });
            ControlFlow::Continue(())
        });
        if !matches!(result, Ok(Fed::NeedMore)) {
            break;
        }
    }
    (got, result)
}

#[test]
fn single_frames_in_one_chunk() {
    let mut bytes = client_frame(0x81, b"hello");
    bytes.extend(client_frame(0x82, &[1, 2, 3]));
    bytes.extend(client_frame(0x89, b"p"));
    let (got, r) = decode(&bytes, &[], 1024);
    assert_eq!(r, Ok(Fed::NeedMore));
    assert_eq!(
        got,
        [
            Got::Text("hello".into()),
            Got::Binary(vec![1, 2, 3]),
            Got::Ping(b"p".to_vec())
        ]
    );
}

#[test]
fn fragmented_message_with_interleaved_ping_at_every_split() {
    let mut bytes = client_frame(0x01, "frag".as_bytes());
    bytes.extend(client_frame(0x89, b"ping"));
    bytes.extend(client_frame(0x00, "mént".as_bytes()));
    bytes.extend(client_frame(0x8A, b""));
    bytes.extend(client_frame(0x80, b"!"));
    for cut in 0..=bytes.len() {
        let (got, r) = decode(&bytes, &[cut], 1024);
        assert_eq!(r, Ok(Fed::NeedMore), "cut {cut}");
        assert_eq!(
            got,
            [
                Got::Ping(b"ping".to_vec()),
                Got::Pong(vec![]),
                Got::Text("fragmént!".into())
            ],
            "cut {cut}"
        );
    }
    let every: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(decode(&bytes, &every, 1024).0.len(), 3);
}

#[test]
fn idle_decoder_holds_nothing() {
    let mut d = Decoder::default();
    let mut bytes = client_frame(0x82, &[9; 300]);
    let (head, tail) = bytes.split_at_mut(100);
    d.feed(head, 1024, false, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    // 8 header bytes (2 + 16-bit length + mask) then 92 payload bytes.
    let held = d
        .partial
        .as_ref()
        .and_then(|s| s.message.as_ref())
        .map(|m| m.payload.len());
    assert_eq!(held, Some(92));
    d.feed(tail, 1024, false, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(d.partial.is_none());
    assert_eq!(std::mem::size_of::<Decoder>(), 8);
}

#[test]
fn close_stops_decoding() {
    let mut bytes = client_frame(0x88, &[0x03, 0xe8]);
    bytes.extend(client_frame(0x81, b"after"));
    let (got, r) = decode(&bytes, &[], 1024);
    assert_eq!(r, Ok(Fed::Stopped));
    assert_eq!(got, [Got::Close(Some(1000))]);
}

fn error_code(bytes: &[u8], max: usize) -> u16 {
    decode(bytes, &[], max).1.unwrap_err().code
}

#[test]
fn protocol_violations() {
    let unmasked = [0x81, 0x01, b'a'];
    assert_eq!(error_code(&unmasked, 1024), 1002);
    assert_eq!(error_code(&client_frame(0xC1, b"a"), 1024), 1002); // RSV1
    assert_eq!(error_code(&client_frame(0x83, b"a"), 1024), 1002); // opcode 3
    assert_eq!(error_code(&client_frame(0x09, b"a"), 1024), 1002); // fragmented ping
    assert_eq!(error_code(&client_frame(0x89, &[0; 126]), 1024), 1002);
    assert_eq!(error_code(&client_frame(0x80, b"a"), 1024), 1002); // stray continuation
    let mut two_starts = client_frame(0x01, b"a");
    two_starts.extend(client_frame(0x81, b"b"));
    assert_eq!(error_code(&two_starts, 1024), 1002);
    assert_eq!(error_code(&client_frame(0x88, &[0x03]), 1024), 1002);
    assert_eq!(error_code(&client_frame(0x88, &[0x03, 0xed]), 1024), 1002);
    assert_eq!(
        error_code(&client_frame(0x88, &[0x03, 0xe8, 0xff]), 1024),
        1007
    );
    assert_eq!(error_code(&client_frame(0x81, b"\xff"), 1024), 1007);
    assert_eq!(error_code(&client_frame(0x82, &[0; 1025]), 1024), 1009);
    let mut grows = client_frame(0x02, &[0; 1000]);
    grows.extend(client_frame(0x80, &[0; 100]));
    assert_eq!(error_code(&grows, 1024), 1009);
}

#[test]
fn rsv1_marks_a_compressed_message_only_where_negotiated() {
    // Not UTF-8, and not checked: it is compressed data.
    let mut bytes = client_frame(0xC1, b"\xff\xfe");
    bytes.extend(client_frame(0x42, b"ab"));
    bytes.extend(client_frame(0x89, b"p"));
    bytes.extend(client_frame(0x80, b"cd"));
    bytes.extend(client_frame(0x82, b"plain"));
    let every: Vec<usize> = (1..bytes.len()).collect();
    for cuts in [&[][..], &every[..]] {
        let (got, r) = decode_with(&bytes, cuts, 1024, true);
        assert_eq!(r, Ok(Fed::NeedMore));
        assert_eq!(
            got,
            [
                Got::Compressed(true, b"\xff\xfe".to_vec()),
                Got::Ping(b"p".to_vec()),
                Got::Compressed(false, b"abcd".to_vec()),
                Got::Binary(b"plain".to_vec()),
            ]
        );
    }
    let fails = |bytes: &[u8]| decode_with(bytes, &[], 1024, true).1.unwrap_err().code;
    assert_eq!(fails(&client_frame(0xC9, b"p")), 1002, "RSV1 on a ping");
    assert_eq!(fails(&client_frame(0xA1, b"a")), 1002, "RSV2");
    let mut rsv1_continuation = client_frame(0x01, b"a");
    rsv1_continuation.extend(client_frame(0xC0, b"b"));
    assert_eq!(fails(&rsv1_continuation), 1002);
    // Without the extension, RSV1 is a protocol error.
    assert_eq!(error_code(&client_frame(0xC1, b"a"), 1024), 1002);
}

#[test]
fn compressed_messages_get_a_little_slack_over_the_limit() {
    let limit = compressed_limit(1000) as usize;
    let fits = client_frame(0xC2, &vec![0; limit]);
    assert!(decode_with(&fits, &[], 1000, true).1.is_ok());
    let over = client_frame(0xC2, &vec![0; limit + 1]);
    assert_eq!(
        decode_with(&over, &[], 1000, true).1.unwrap_err().code,
        1009
    );
    assert_eq!(
        decode_with(&over[..20], &[], 1000, false)
            .1
            .unwrap_err()
            .code,
        1002
    );
}

#[test]
fn invalid_utf8_fails_before_the_frame_ends() {
    let bytes = client_frame(0x81, b"ok\xf4\x90\x80\x80 and much more text follows");
    // Only the first 12 bytes (header + 6 payload bytes) arrive.
    let mut d = Decoder::default();
    let mut head = bytes[..12].to_vec();
    let r = d.feed(&mut head, 1024, false, &mut |_| ControlFlow::Continue(()));
    assert_eq!(r.unwrap_err().code, 1007);
}

#[test]
fn large_message_split_in_many_chunks() {
    let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let bytes = client_frame(0x82, &payload);
    let cuts: Vec<usize> = (1..bytes.len()).step_by(4096).skip(1).collect();
    let (got, r) = decode(&bytes, &cuts, 1 << 20);
    assert_eq!(r, Ok(Fed::NeedMore));
    assert_eq!(got, [Got::Binary(payload)]);
}

mod random_input {
    use super::*;

    /// xorshift64: deterministic bytes, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn arbitrary_bytes_in_arbitrary_splits_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (rng.next() % 300) as usize;
            // Bias towards plausible headers: masked, short lengths.
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len > 1 && rng.next() % 2 == 0 {
                bytes[1] = 0x80 | (bytes[1] % 130);
            }
            let mut decoder = Decoder::default();
            let mut start = 0;
            while start < bytes.len() {
                let end = (start + 1 + (rng.next() % 40) as usize).min(bytes.len());
                let result = decoder.feed(
                    &mut bytes[start..end],
                    1 << 16,
                    rng.next() % 2 == 0,
                    &mut |_| ControlFlow::Continue(()),
                );
                if !matches!(result, Ok(Fed::NeedMore)) {
                    break;
                }
                start = end;
            }
        }
    }

    #[test]
    fn arbitrary_request_heads_never_panic() {
        let mut rng = Rng(42);
        let good = b"GET /ws?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        for _ in 0..20_000 {
            let mut bytes = good.to_vec();
            for _ in 0..(rng.next() % 6) {
                let i = (rng.next() as usize) % bytes.len();
                bytes[i] = rng.next() as u8;
            }
            let cut = (rng.next() as usize) % (bytes.len() + 1);
            if let Ok(Some((req, _))) = crate::protocol::handshake::parse(&bytes[..cut]) {
                let _ = req.upgrade(&["chat".to_owned()]);
            }
        }
    }
}
