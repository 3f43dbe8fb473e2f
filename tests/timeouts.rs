//! Pings and the idle timeout, with short flag values.

mod common;

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout", "500ms", "--ping-interval", "1h"]);
    let mut silent = Raw::upgrade(&server, "/ws").await;
    let started = std::time::Instant::now();
    assert_eq!(silent.close_code().await, 1001);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "closed before the timeout"
    );
}

#[tokio::test]
async fn pings_arrive_and_pongs_keep_a_connection_alive() {
    // tungstenite answers every ping with a pong; the pongs are the only
    // traffic, and must count as activity across several idle periods.
    let server = Server::start(&["--idle-timeout", "700ms", "--ping-interval", "200ms"]);
    let mut ws = connect(&server.url("/ws?topic=t")).await;
    let mut pings = 0;
    while pings < 10 {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no ping")
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(server.publish("topic=t", "alive").await, 1);
    assert_eq!(next_text(&mut ws).await, "alive");
}

#[tokio::test]
async fn a_client_that_ignores_pings_is_closed() {
    let server = Server::start(&["--idle-timeout", "600ms", "--ping-interval", "200ms"]);
    let mut raw = Raw::upgrade(&server, "/ws").await;
    let mut pings = 0;
    loop {
        let (opcode, payload) = raw.frame().await;
        match opcode {
            0x9 => pings += 1,
            0x8 => {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(pings >= 2, "only {pings} pings before the idle close");
}
