//! Graceful drain (SIGTERM, POST /drain) and rebalance: 1001 closes spread
//! over the period, readiness, listeners, exit status, nothing lost.

mod common;

use common::*;
use futures_util::future::join_all;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Reads `ws` until its close frame; returns every text message before it
/// and the close code. Pings are skipped.
async fn read_until_close(ws: &mut Ws, limit: Duration) -> (Vec<String>, u16) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(limit, ws.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(Message::Close(frame))) => {
                return (texts, frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected text or close, got {other:?}"),
        }
    }
}

async fn every_client_gets_1001_then_exit_0(server: Server, clients: Vec<Ws>) {
    for mut ws in clients {
        let (_, code) = read_until_close(&mut ws, WAIT).await;
        assert_eq!(code, 1001);
    }
    assert!(server.exit_within(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_1000_clients_with_1001_spread_over_the_period() {
    let period = Duration::from_secs(4);
    let server = Server::start(&["--workers", "2", "--drain-period", "4s"]);
    let clients = connect_many(&server.url("/ws?topic=t"), 1000).await;
    // Accepted before the drain: must reach every client before its close.
    assert_eq!(server.publish("topic=t", "last").await, 1000);

    let api = server.api;
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let closes = join_all(clients.into_iter().map(|mut ws| async move {
        let (texts, code) = read_until_close(&mut ws, period * 2).await;
        let at = start.elapsed();
        // Readiness turned 503 before any connection was closed.
        let ready = reqwest::get(format!("http://{api}/readyz")).await;
        (texts, code, at, ready.map(|r| r.status().as_u16()).ok())
    }))
    .await;

    let mut times = Vec::new();
    for (texts, code, at, ready) in closes {
        assert_eq!(code, 1001);
        assert_eq!(
            texts,
            ["last"],
            "the publish before the drain arrives first"
        );
        if let Some(status) = ready {
            assert_eq!(status, 503, "/readyz after a drain close");
        }
        times.push(at);
    }
    times.sort();
    let (first, last) = (times[0], times[999]);
    assert!(
        last <= period,
        "last close at {last:?}, after the {period:?} period"
    );
    // Spread, not a burst: the closes span most of the 3.6 s window, and
    // no tenth of it holds more than 30% of them.
    assert!(
        last - first >= Duration::from_secs(2),
        "closes span only {:?}",
        last - first
    );
    let window = period.mul_f64(0.9) / 10;
    for i in 0..10u32 {
        let (from, to) = (window * i, window * (i + 1));
        let n = times.iter().filter(|t| **t >= from && **t < to).count();
        assert!(n <= 300, "{n} closes between {from:?} and {to:?}");
    }
    let status = server.exit_within(period + Duration::from_secs(3)).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn post_drain_closes_the_listener_while_healthz_stays_up() {
    let server = Server::start(&["--workers", "2"]);
    let clients = connect_many(&server.url("/ws?topic=t"), 10).await;
    // Connected before the drain, upgrade request sent after it.
    let mut pending = Raw::connect(&server).await;
    server.wait_for_stat("slots_in_use", 11).await;
    let (status, body) = server.post("/drain?period=6s", "text/plain", "").await;
    assert_eq!(status, 202, "{body}");
    // Set before the workers hear of the drain, so true at once.
    assert_eq!(server.get("/readyz").await.0, 503);
    assert_eq!(server.get("/healthz").await.0, 200);

    // Both workers close their listeners: new connections are refused
    // while the drained ones are still open.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(server.ws).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.stats().await["connections"].as_u64().unwrap() > 0,
        "every client was closed before the listeners"
    );
    pending.send(GOOD_HANDSHAKE.as_bytes()).await;
    let head = pending.response_head().await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    every_client_gets_1001_then_exit_0(server, clients).await;
}

#[tokio::test]
async fn a_second_sigterm_closes_every_connection_at_once() {
    let server = Server::start(&["--drain-period", "60s"]);
    let clients = connect_many(&server.url("/ws?topic=t"), 50).await;
    server.signal(libc::SIGTERM);
    server.wait_for_stat("closed", 1).await; // the drain has begun
    server.signal(libc::SIGTERM);
    every_client_gets_1001_then_exit_0(server, clients).await;
}

#[tokio::test]
async fn rebalance_closes_that_fraction_and_keeps_the_rest() {
    let server = Server::start(&["--workers", "2"]);
    let clients = connect_many(&server.url("/ws?topic=t"), 100).await;
    for bad in [
        "",
        "fraction=0",
        "fraction=1.5",
        "fraction=x",
        "fraction=0.2&period=soon",
    ] {
        let (status, _) = server
            .post(&format!("/rebalance?{bad}"), "text/plain", "")
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = server
        .post("/rebalance?fraction=0.2&period=2s", "text/plain", "")
        .await;
    assert_eq!(status, 202);
    // Each worker closes ⌈20%⌉ of its own connections: 20 or 21 in all.
    let outcomes = join_all(clients.into_iter().map(|mut ws| async move {
        let closed = tokio::time::timeout(Duration::from_secs(4), read_until_close(&mut ws, WAIT))
            .await
            .ok();
        (ws, closed)
    }))
    .await;
    let closed = outcomes
        .iter()
        .filter_map(|(_, closed)| closed.as_ref())
        .inspect(|(_, code)| assert_eq!(*code, 1001))
        .count();
    assert!((20..=21).contains(&closed), "{closed} closed");
    assert_eq!(server.publish("topic=t", "stay").await, 100 - closed as u64);
    assert_eq!(
        server.get("/readyz").await.0,
        200,
        "a rebalance is not a drain"
    );
}
