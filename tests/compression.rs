//! permessage-deflate (RFC 7692): independent clients negotiate it and get
//! the shared compressed frame, plain subscribers get the plain one, and
//! an inflate bomb costs the server nothing.

mod common;

use common::*;
use flate2::{Compress, Compression, FlushCompress};

/// The Python script checks websockets' negotiation, RSV1 on the wire,
/// byte-identical payloads for compressed and plain subscribers, an
/// inflated subscribe request, and a narrow-window echo.
#[test]
fn python_and_raw_clients_get_compressed_and_plain_frames() {
    let server = Server::start(&["--echo"]);
    run_python_client("deflate_client.py", &server, &[]);
}

/// `n` bytes of zeros as a permessage-deflate payload (raw DEFLATE, sync
/// flush, trailer trimmed): about n / 1000 bytes.
fn deflated_zeros(n: usize) -> Vec<u8> {
    let mut c = Compress::new(Compression::best(), false);
    let zeros = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(n / 500 + 1024);
    for _ in 0..n / zeros.len() {
        c.compress_vec(&zeros, &mut out, FlushCompress::None)
            .unwrap();
    }
    c.compress_vec(&[], &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A raw client on `/ws` that negotiated permessage-deflate.
async fn compressing_client(server: &Server) -> Raw {
    let mut raw = Raw::connect(server).await;
    let request = GOOD_HANDSHAKE.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    );
    raw.send(request.as_bytes()).await;
    let head = raw.response_head().await;
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"),
        "{head}"
    );
    raw
}

#[tokio::test]
async fn an_inflate_bomb_gets_1009_and_costs_no_memory() {
    let server = Server::start(&[]);
    let url = server.url("/ws?topic=calm");
    let mut bystander = connect(&url).await;
    // 100 MiB of zeros in about 100 KB: 100 times the 1 MiB limit.
    let bomb = deflated_zeros(100 << 20);
    assert!((90_000..120_000).contains(&bomb.len()), "{}", bomb.len());
    let frame = client_frame(0xC2, &bomb);
    let before = server.rss();
    for _round in 0..3 {
        let mut attackers = Vec::new();
        for _ in 0..8 {
            attackers.push(compressing_client(&server).await);
        }
        for raw in &mut attackers {
            raw.send(&frame).await;
        }
        for raw in &mut attackers {
            assert_eq!(raw.close_code().await, 1009);
        }
    }
    let grown = server.rss().saturating_sub(before);
    eprintln!("server RSS grew {} KiB over 24 bombs", grown >> 10);
    // Each bomb stops at the limit (1 MiB) plus one 16 KiB chunk, in a
    // worker buffer freed after use: 24 of them (2.4 GiB inflated) must
    // not add up. What remains is the allocator keeping freed pages and
    // the 100 KB frames being assembled (9.4 MiB seen on 2 workers);
    // the bound is a third of what one bomb would inflate to.
    assert!(grown < 32 << 20, "RSS grew {} KiB", grown >> 10);
    assert_eq!(server.publish("topic=calm", "still here").await, 1);
    assert_eq!(next_text(&mut bystander).await, "still here");
    // Each attacker's close is counted once its socket is released.
    let deadline = std::time::Instant::now() + WAIT;
    while server.stats().await["closed_by_code"]["1009"] != 24 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.stats().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rsv1_where_it_is_not_allowed_is_a_protocol_error() {
    let server = Server::start(&[]);
    let compressed_ping = {
        let mut raw = compressing_client(&server).await;
        raw.send(&client_frame(0xC9, b"p")).await;
        raw.close_code().await
    };
    let compressed_continuation = {
        let mut raw = compressing_client(&server).await;
        let mut frames = client_frame(0x01, b"{");
        frames.extend(client_frame(0xC0, b"}"));
        raw.send(&frames).await;
        raw.close_code().await
    };
    let not_deflate = {
        let mut raw = compressing_client(&server).await;
        raw.send(&client_frame(0xC1, &[0xff; 16])).await;
        raw.close_code().await
    };
    assert_eq!(
        (compressed_ping, compressed_continuation, not_deflate),
        (1002, 1002, 1007)
    );
}

#[tokio::test]
async fn compression_off_declines_every_offer() {
    let server = Server::start(&["--compression", "off"]);
    let mut raw = Raw::connect(&server).await;
    let request = GOOD_HANDSHAKE.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    );
    raw.send(request.as_bytes()).await;
    let head = raw.response_head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(!head.contains("Extensions"), "{head}");
    raw.send(&client_frame(0xC1, b"x")).await;
    assert_eq!(raw.close_code().await, 1002);
}

/// Issue 20, finding 5: small frames that each inflate to 1 MiB exhaust
/// the connection's inflate budget (`--max-inflate-bytes-per-sec`, here
/// 4 MiB) and get 1008, counted; meanwhile echo round trips of another
/// connection on the same worker stay fast.
#[tokio::test]
async fn small_frames_inflating_big_exhaust_the_inflate_budget() {
    let server = Server::start(&[
        "--echo",
        "--workers",
        "1",
        "--max-inflate-bytes-per-sec",
        "4194304",
    ]);
    let mut echo = connect(&server.url("/echo")).await;
    let inflates_to_1_mib = client_frame(0xC2, &deflated_zeros(1 << 20));
    assert!(
        inflates_to_1_mib.len() < 2048,
        "{}",
        inflates_to_1_mib.len()
    );
    let mut attacker = compressing_client(&server).await;
    let mut frames = Vec::new();
    for _ in 0..200 {
        frames.extend_from_slice(&inflates_to_1_mib);
    }
    let flood = tokio::spawn(async move {
        attacker.send(&frames).await;
        attacker.close_code().await
    });
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..20 {
        use futures_util::SinkExt;
        let started = std::time::Instant::now();
        let text = format!("ping {i}");
        echo.send(text.clone().into()).await.unwrap();
        assert_eq!(next_text(&mut echo).await, text);
        slowest = slowest.max(started.elapsed());
    }
    assert_eq!(flood.await.unwrap(), 1008);
    eprintln!("slowest echo round trip beside the flood: {slowest:?}");
    // 200 inflates of 1 MiB take about half a second of the worker's
    // CPU (more in a debug build): the budget stops the flood after 5.
    assert!(
        slowest < std::time::Duration::from_millis(300),
        "{slowest:?}"
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let closes = metric(
            &server.metrics().await,
            "ringcast_inflate_budget_closes_total",
            &[],
        );
        if closes == 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{closes} closes");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
