//! A full fixed-file table and a fan-out wider than one submission queue.

mod common;

use common::*;
use futures_util::future::join_all;
use futures_util::SinkExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_full_table_holds_new_connections_in_the_backlog_until_a_slot_frees() {
    // 80 slots: multishot accepts first, single-shot once 64 or fewer are free.
    let server = Server::start(&["--workers", "1", "--max-connections", "80"]);
    assert_eq!(server.stats().await["capacity"], 80);
    let url = server.url("/ws?topic=t");
    let mut admitted = join_all((0..80).map(|_| connect(&url))).await;

    // The 81st TCP connect succeeds (the kernel queues it in the backlog),
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
    assert!(
        held.is_err(),
        "an 81st connection was admitted past an 80-slot table"
    );
    assert_eq!(server.publish("topic=t", "full").await, 80);

    // Freeing one slot re-arms the accept; the waiting client gets in.
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
}

#[tokio::test]
async fn fan_out_to_more_subscribers_than_one_submission_queue() {
    // 5000 subscribers on one worker: one publish needs more SENDMSG SQEs
    // than the 4096-entry submission queue holds.
    let server = Server::start(&["--workers", "1"]);
    let url = server.url("/ws?topic=wide");
    let mut subscribers = Vec::new();
    for _ in 0..10 {
        subscribers.extend(join_all((0..500).map(|_| connect(&url))).await);
    }
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
