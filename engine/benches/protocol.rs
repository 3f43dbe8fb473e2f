//! Micro-benchmarks of the protocol layer, which runs alone with no I/O:
//! frame header parse, unmasking, UTF-8 validation, the
//! Sec-WebSocket-Accept computation, encoding one broadcast frame, and
//! compressing and inflating one 1 KiB JSON message (permessage-deflate).
//! Run with `cargo bench -p ringcast-engine`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_engine::protocol::deflate::{Deflater, Inflater, FULL_WINDOW_BITS};
use ringcast_engine::protocol::frame::{encode, parse_header, OpCode};
use ringcast_engine::protocol::handshake::accept_key;
use ringcast_engine::protocol::mask::apply_mask;
use ringcast_engine::protocol::utf8::Utf8Validator;
use std::hint::black_box;

fn header_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header_parse");
    let short = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d];
    let medium = [0x82, 0xfe, 0x04, 0x00, 1, 2, 3, 4];
    let long = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
    for (name, bytes) in [
        ("7-bit", &short[..]),
        ("16-bit", &medium[..]),
        ("64-bit", &long[..]),
    ] {
        group.bench_function(name, |b| b.iter(|| parse_header(black_box(bytes))));
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in [16usize, 1024, 64 * 1024] {
        let mut buf = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 1));
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8_validate");
    let ascii = "a".repeat(64 * 1024);
    let mixed = "κόσμε ✓ 𝄞 mixed text ".repeat(64 * 1024 / 32);
    for (name, text) in [("ascii_64KiB", &ascii), ("mixed_64KiB", &mixed)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut v = Utf8Validator::default();
                // Split like a stream of 4 KiB receive buffers.
                for chunk in black_box(text.as_bytes()).chunks(4096) {
                    v.feed(chunk).unwrap();
                }
                v.finish().unwrap();
            })
        });
    }
    group.finish();
}

fn accept(c: &mut Criterion) {
    c.bench_function("sec_websocket_accept", |b| {
        b.iter(|| accept_key(black_box("dGhlIHNhbXBsZSBub25jZQ==")))
    });
}

fn broadcast_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_broadcast_frame");
    for size in [16usize, 1024, 64 * 1024] {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, p| {
            b.iter(|| encode(OpCode::Text, black_box(p)))
        });
    }
    group.finish();
}

/// A 1 KiB JSON message like a push server's: an array of trade events.
fn json_1k() -> Vec<u8> {
    let mut out = b"[".to_vec();
    for i in 0u64.. {
        let event = format!(
            r#"{{"id":{},"symbol":"BTC-USD","price":{}.{:02},"qty":{},"side":"{}"}},"#,
            1000 + i,
            60_000 + (i * 7919) % 5000,
            (i * 37) % 100,
            1 + (i * 13) % 500,
            if i % 3 == 0 { "sell" } else { "buy" }
        );
        if out.len() + event.len() >= 1024 {
            break;
        }
        out.extend_from_slice(event.as_bytes());
    }
    out.push(b']');
    out
}

/// What compress-once costs the publishing thread, and what inflating a
/// client message costs a worker.
fn deflate(c: &mut Criterion) {
    let json = json_1k();
    let mut deflater = Deflater::new(FULL_WINDOW_BITS);
    c.bench_function("deflate_frame_1KiB_json", |b| {
        b.iter(|| deflater.frame(OpCode::Text, black_box(&json), 256))
    });
    let mut compressed = Vec::new();
    deflater.compress(&json, &mut compressed);
    let mut inflater = Inflater::default();
    let mut out = Vec::new();
    c.bench_function("inflate_1KiB_json", |b| {
        b.iter(|| inflater.inflate(black_box(&compressed), 1 << 20, &mut out))
    });
}

criterion_group!(
    benches,
    header_parse,
    unmask,
    utf8,
    accept,
    broadcast_frame,
    deflate
);
criterion_main!(benches);
