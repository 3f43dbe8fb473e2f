//! Who gets in: accept-rate limit, per-address and total limits, PROXY
//! protocol, forwarding headers from trusted proxies only, the Origin
//! allowlist; every refusal answered with its status and counted in
//! /metrics, and the client address in the logs.

mod common;

use common::*;
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// A PROXY protocol v2 header for a TCP over IPv4 client.
fn proxy_v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    out.extend_from_slice(&client);
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&8080u16.to_be_bytes());
    out
}

/// A good upgrade request with `extra` header lines.
fn request(extra: &str) -> String {
    GOOD_HANDSHAKE.replace("Host: test\r\n", &format!("Host: test\r\n{extra}"))
}

/// Sends `bytes` on a new connection from `from`; returns the response head.
async fn answer(server: &Server, from: &str, bytes: &[u8]) -> String {
    let mut raw = Raw {
        stream: tcp_from(ip(from), server.ws).await,
    };
    raw.send(bytes).await;
    raw.response_head().await
}

fn rejects(scrape: &prometheus_parse::Scrape, reason: &str) -> f64 {
    metric(
        scrape,
        "ringcast_handshake_rejects_total",
        &[("reason", reason)],
    )
}

async fn log_peer(server: &Server, peer: &str) {
    server
        .wait_for_log(|l| {
            l["fields"]["message"] == "connection open" && l["fields"]["peer"] == peer
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_waits_in_the_backlog_while_open_clients_are_served() {
    // 20 accepts a second (bursts of 20): 100 connects need about 4 s.
    let server = Server::start(&["--workers", "1", "--max-handshakes-per-sec", "20"]);
    let mut live = connect(&server.url("/ws?topic=live")).await;
    let url = server.url("/ws?topic=flood");
    let start = Instant::now();
    let flood = tokio::spawn(async move {
        join_all((0..100).map(|_| async {
            tokio::time::timeout(
                Duration::from_secs(30),
                tokio_tungstenite::connect_async(&url),
            )
            .await
            .expect("a flood connection waited 30 s")
            .map(|(ws, _)| ws)
        }))
        .await
    });
    // The existing client is served while the flood queues.
    for i in 0..5 {
        assert_eq!(server.publish("topic=live", &format!("m{i}")).await, 1);
        assert_eq!(next_text(&mut live).await, format!("m{i}"));
    }
    let flooded = flood.await.unwrap();
    let elapsed = start.elapsed();
    let admitted = flooded.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 100, "the flood waited rather than failed");
    assert!(
        elapsed >= Duration::from_secs(3),
        "100 connects at 20/s took only {elapsed:?}"
    );
    assert_eq!(server.publish("topic=flood", "in").await, 100);
}

#[tokio::test]
async fn per_address_limit_gets_429_and_other_addresses_still_connect() {
    let server = Server::start(&["--max-connections-per-ip", "3"]);
    let url = server.url("/ws");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(ip("127.0.0.2"), server.ws, &url).await);
    }
    let head = answer(&server, "127.0.0.2", GOOD_HANDSHAKE.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    assert!(head.contains("Retry-After: "), "{head}");
    held.push(connect_from(ip("127.0.0.3"), server.ws, &url).await);
    // A closed connection frees its address's place.
    held.remove(0).close(None).await.unwrap();
    server.wait_for_stat("closed", 2).await; // the 429 and the close
    held.push(connect_from(ip("127.0.0.2"), server.ws, &url).await);
    assert_eq!(rejects(&server.metrics().await, "per_ip_limit"), 1.0);
}

#[tokio::test]
async fn proxy_protocol_gives_the_client_address_and_malformed_headers_are_refused() {
    let server = Server::start_logged(&["--proxy-protocol", "--max-connections-per-ip", "1"]);
    let good = request("");
    // No header at all, a v1 header with a bad address, a v2 header for
    // a UDP datagram.
    let mut udp = proxy_v2([1, 2, 3, 4], 1);
    udp[13] = 0x12;
    let bad: [Vec<u8>; 3] = [
        good.clone().into_bytes(),
        format!("PROXY TCP4 1.2.3.4 nowhere 1 2\r\n{good}").into_bytes(),
        [udp, good.clone().into_bytes()].concat(),
    ];
    for bytes in &bad {
        let head = answer(&server, "127.0.0.1", bytes).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    }
    // v1 and v2 headers carry the client address into logs and limits.
    let v1 = format!("PROXY TCP4 198.51.100.7 127.0.0.1 40000 8080\r\n{good}");
    assert!(answer(&server, "127.0.0.1", v1.as_bytes())
        .await
        .starts_with("HTTP/1.1 101 "));
    log_peer(&server, "198.51.100.7").await;
    let v2 = [proxy_v2([203, 0, 113, 9], 5555), good.clone().into_bytes()].concat();
    let mut first = Raw {
        stream: tcp_from(ip("127.0.0.1"), server.ws).await,
    };
    first.send(&v2).await;
    assert!(first.response_head().await.starts_with("HTTP/1.1 101 "));
    log_peer(&server, "203.0.113.9").await;
    // The limit counts 203.0.113.9, not the proxy's own address.
    assert!(answer(&server, "127.0.0.1", &v2)
        .await
        .starts_with("HTTP/1.1 429 "));
    let scrape = server.metrics().await;
    assert_eq!(rejects(&scrape, "bad_proxy_header"), 3.0);
    assert_eq!(rejects(&scrape, "per_ip_limit"), 1.0);
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies_and_origins_are_checked() {
    let server = Server::start_logged(&[
        "--trusted-proxies",
        "127.0.0.5/32",
        "--allowed-origins",
        "https://app.example.com,https://*.example.org",
    ]);
    // A client spoofing X-Forwarded-For / X-Real-IP directly.
    for header in ["X-Forwarded-For: 192.0.2.1\r\n", "X-Real-IP: 192.0.2.1\r\n"] {
        let head = answer(&server, "127.0.0.1", request(header).as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    }
    // The trusted proxy: the right-most address it did not add is the client.
    let via_proxy = request("X-Forwarded-For: 10.9.9.9, 198.51.100.4\r\n");
    let head = answer(&server, "127.0.0.5", via_proxy.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    log_peer(&server, "198.51.100.4").await;
    let garbled = request("X-Forwarded-For: 198.51.100.4, not-an-address\r\n");
    let head = answer(&server, "127.0.0.5", garbled.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");

    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://eu.example.org", true),
        ("https://evil.example", false),
        ("https://app.example.com.evil.example", false),
        ("null", false),
    ] {
        let head = answer(
            &server,
            "127.0.0.1",
            request(&format!("Origin: {origin}\r\n")).as_bytes(),
        )
        .await;
        let want = if allowed {
            "HTTP/1.1 101 "
        } else {
            "HTTP/1.1 403 "
        };
        assert!(head.starts_with(want), "{origin}: {head}");
    }
    server
        .wait_for_log(|l| {
            l["fields"]["message"] == "handshake rejected"
                && l["fields"]["reason"] == "origin_not_allowed"
                && l["fields"]["peer"] == "127.0.0.1"
        })
        .await;
    let scrape = server.metrics().await;
    assert_eq!(rejects(&scrape, "untrusted_forwarded"), 2.0);
    assert_eq!(rejects(&scrape, "bad_forwarded"), 1.0);
    assert_eq!(rejects(&scrape, "origin_not_allowed"), 3.0);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_track_the_server() {
    let server = Server::start(&["--workers", "2"]);
    let mut ws = connect(&server.url("/ws?topic=m")).await;
    assert_eq!(server.publish("topic=m", "hello").await, 1);
    assert_eq!(next_text(&mut ws).await, "hello");
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.close(Some(normal)).await.unwrap();
    server.wait_for_stat("closed", 1).await;
    let scrape = server.metrics().await;
    let value = |name, labels: &[(&str, &str)]| metric(&scrape, name, labels);
    assert_eq!(value("ringcast_connections_accepted_total", &[]), 1.0);
    assert_eq!(
        value("ringcast_connections_closed_total", &[("code", "1000")]),
        1.0
    );
    assert_eq!(value("ringcast_messages_out_total", &[]), 1.0);
    assert_eq!(value("ringcast_connections_open", &[]), 0.0);
    assert_eq!(value("ringcast_outbound_queue_bytes", &[]), 0.0);
    assert_eq!(value("ringcast_buffer_ring_empty_total", &[]), 0.0);
    assert_eq!(value("ringcast_slow_consumer_closes_total", &[]), 0.0);
    assert_eq!(value("ringcast_draining", &[]), 0.0);
    // Each worker keeps at least its wake-up read and its accepts armed.
    assert!(value("ringcast_io_uring_operations_in_flight", &[]) >= 4.0);
    for worker in ["0", "1"] {
        assert_eq!(value("ringcast_connections", &[("worker", worker)]), 0.0);
        assert_eq!(
            value("ringcast_fixed_file_slots_used", &[("worker", worker)]),
            0.0
        );
        assert!(value("ringcast_fixed_file_slots", &[("worker", worker)]) > 0.0);
    }
    let latency = scrape
        .samples
        .iter()
        .find(|s| s.metric == "ringcast_publish_duration_seconds")
        .expect("publish latency histogram");
    match &latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().unwrap().count, 1.0, "one publish observed");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    for series in [
        "ringcast_bytes_in_total",
        "ringcast_bytes_out_total",
        "ringcast_messages_in_total",
        "ringcast_topics",
    ] {
        value(series, &[]);
    }
}
