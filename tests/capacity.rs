//! A full fixed-file table and a fan-out wider than one submission queue.

mod common;

use common::*;
use futures_util::SinkExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Error, Message};

#[tokio::test]
async fn beyond_max_connections_gets_503_and_a_full_table_holds_the_backlog() {
    // --max-connections 80 on one worker: 80 open connections, and a table
    // of 80 + 64 slots so that connection 81 can be answered.
    let server = Server::start(&["--workers", "1", "--max-connections", "80"]);
    assert_eq!(server.stats().await["capacity"], 144);
    let url = server.url("/ws?topic=t");
    let mut admitted = connect_many(&url, 80).await;
    let refused = tokio_tungstenite::connect_async(&url).await;
    match refused {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("connection 81 was not refused with 503: {other:?}"),
    }
    assert_eq!(
        server.stats().await["handshake_rejects"]["over_capacity"],
        1
    );

    // Fill every remaining slot with sockets that never send a request.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(Raw::connect(&server).await);
    }
    server.wait_for_stat("slots_in_use", 144).await;

    // The next TCP connect succeeds (the kernel queues it in the backlog),
    // but no slot takes it, so no handshake answer comes yet.
    let waiting = tokio::spawn({
        let url = url.clone();
        async move { connect(&url).await }
    });
    let held = tokio::time::timeout(Duration::from_millis(500), async {
        while !waiting.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(held.is_err(), "a connection was taken past a full table");
    assert_eq!(server.publish("topic=t", "full").await, 80);

    // A client leaving frees a slot and an open place: the waiting client
    // gets in.
    let mut leaving = admitted.pop().unwrap();
    leaving.send(Message::Close(None)).await.unwrap();
    let mut late = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("never admitted")
        .unwrap();
    assert_eq!(server.publish("topic=t", "after").await, 80);
    assert_eq!(next_text(&mut late).await, "after");
    for ws in &mut admitted {
        assert_eq!(next_text(ws).await, "full");
        assert_eq!(next_text(ws).await, "after");
    }
    drop(silent);
}

#[tokio::test]
async fn fan_out_to_more_subscribers_than_one_submission_queue() {
    // 5000 subscribers on one worker: one publish needs more SENDMSG SQEs
    // than the 4096-entry submission queue holds.
    let server = Server::start(&["--workers", "1"]);
    let url = server.url("/ws?topic=wide");
    let mut subscribers = connect_many(&url, 5000).await;
    for i in 0..3 {
        assert_eq!(server.publish("topic=wide", &format!("m{i}")).await, 5000);
    }
    for ws in &mut subscribers {
        for i in 0..3 {
            assert_eq!(next_text(ws).await, format!("m{i}"));
        }
    }
    assert_eq!(server.stats().await["messages_out"], 15000);
}
