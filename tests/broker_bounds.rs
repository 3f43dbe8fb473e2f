//! A node over a hostile or stalled Redis (`--broker`): a redis-server of
//! the test's own, stopped with SIGSTOP (it keeps its sockets open and
//! answers nothing) and continued, and messages PUBLISHed into it with
//! redis-cli that no node would send.

mod common;

use common::redis_ha::{redis_cli, wait_until, RedisStandalone};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const V1: (&str, &str) = ("sec-websocket-protocol", "ringcast.v1");

/// A node over `redis` that notices a stall within 1.5 s, with client
/// rate limits out of the way of the churn below.
fn node(redis: &RedisStandalone, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec![
        "--workers",
        "2",
        "--broker",
        &url,
        "--broker-timeout",
        "1s",
        "--broker-ping-interval",
        "500ms",
        "--client-messages-per-sec",
        "1000000",
        "--client-bytes-per-sec",
        "1000000000",
    ];
    args.extend(extra);
    Server::start(&args)
}

async fn broker_state(server: &Server) -> String {
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    health["broker"]["state"].as_str().unwrap().to_owned()
}

/// Polls `/healthz` until the broker is in `state`; returns how long that
/// took.
async fn wait_state(server: &Server, state: &str, within: Duration) -> Duration {
    let what = format!("the broker {state}");
    wait_until(within, &what, || async {
        broker_state(server).await == state
    })
    .await
}

/// Waits until `nodes` nodes subscribe to `topic`'s channel.
async fn wait_nodes(redis: &RedisStandalone, topic: &str, nodes: u64) {
    let channel = format!("ringcast:topic:{topic}");
    let count = || async {
        let reply = redis_cli(redis.redis.port, &["PUBSUB", "NUMSUB", &channel]).await;
        let last = reply
            .as_deref()
            .and_then(|r| r.lines().last())
            .unwrap_or("");
        last.trim().parse::<u64>().ok() == Some(nodes)
    };
    wait_until(WAIT, &format!("{nodes} nodes on {channel}"), count).await;
}

async fn publish(server: &Server, topic: &str, text: &str) -> u16 {
    let path = format!("/publish?topic={topic}");
    server.post(&path, "text/plain", text.to_owned()).await.0
}

/// A `ringcast.v1` client that subscribes to topics of 120 bytes one after
/// another for `period`, keeping its last 32 (so every subscribe and
/// every unsubscribe changes the node's interest), with at most 1,024
/// replies outstanding (it reads them meanwhile).
async fn churn(url: String, n: usize, period: Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let ws = connect_with(&url, &[V1]).await;
    let (mut tx, mut rx) = ws.split();
    let replies = std::sync::Arc::new(AtomicU64::new(0));
    let counted = replies.clone();
    let reader = tokio::spawn(async move {
        // The writer fails if the server closes before it does.
        while let Some(Ok(_)) = rx.next().await {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let topic = |i: u64| format!("churn.{n}.{i:0>100}");
    let started = Instant::now();
    let (mut i, mut sent) = (0u64, 0u64);
    while started.elapsed() < period && i < 2_000_000 {
        if sent - replies.load(Ordering::Relaxed) > 1024 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for _ in 0..64 {
            let sub = json!({"op": "subscribe", "topic": topic(i)});
            tx.feed(Message::Text(sub.to_string().into()))
                .await
                .unwrap();
            sent += 1;
            if i >= 32 {
                let unsub = json!({"op": "unsubscribe", "topic": topic(i - 32)});
                tx.feed(Message::Text(unsub.to_string().into()))
                    .await
                    .unwrap();
                sent += 1;
            }
            i += 1;
        }
        tx.flush().await.unwrap();
    }
    tx.send(Message::Close(None)).await.unwrap();
    tokio::time::timeout(WAIT, reader)
        .await
        .expect("the server closed")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_noticed_costs_bounded_memory_and_is_recovered_from() {
    let redis = RedisStandalone::start().await;
    let server = node(&redis, &[]);
    let mut raw = connect(&server.url("/ws?topic=t")).await;
    let mut v1 = connect_with(&server.url("/ws"), &[V1]).await;
    send_json(&mut v1, json!({"op": "subscribe", "topic": "t"})).await;
    assert_eq!(next_json(&mut v1).await["op"], "subscribed");
    wait_nodes(&redis, "t", 1).await;
    assert_eq!(publish(&server, "t", "before").await, 200);
    assert_eq!(next_text(&mut raw).await, "before");
    assert_eq!(next_json(&mut v1).await["data"], "before");
    let baseline = server.rss();

    redis.redis.signal(libc::SIGSTOP);
    // Noticed within --broker-ping-interval + --broker-timeout (1.5 s),
    // with room for a slow test host.
    let noticed = wait_state(&server, "down", Duration::from_secs(10)).await;
    assert!(
        noticed < Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    assert_eq!(publish(&server, "t", "during").await, 503);

    // Subscribe and unsubscribe churn meanwhile: the node's interest
    // coalesces and stays bounded.
    let churners: Vec<_> = (0..4)
        .map(|n| tokio::spawn(churn(server.url("/ws"), n, Duration::from_secs(8))))
        .collect();
    common::load::bounded_rss_while(&server, baseline, churners).await;

    redis.redis.signal(libc::SIGCONT);
    wait_state(&server, "up", Duration::from_secs(20)).await;
    // The ringcast.v1 subscriber is told to resume: it may have missed
    // messages.
    assert_eq!(
        next_json(&mut v1).await,
        json!({"op": "resync", "topic": "t"})
    );
    let deadline = Instant::now() + WAIT;
    while publish(&server, "t", "after").await != 200 {
        assert!(Instant::now() < deadline, "publishes never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The publish refused during the stall was never delivered.
    assert_eq!(next_text(&mut raw).await, "after");
    assert_eq!(next_json(&mut v1).await["data"], "after");
    let scrape = server.metrics().await;
    assert!(metric(&scrape, "ringcast_broker_timeouts_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_impossible_messages_from_redis_are_refused_and_counted() {
    let redis = RedisStandalone::start().await;
    let server = node(
        &redis,
        &["--max-message-size", "1024", "--history", "h.*=100/10m"],
    );
    let mut ws = connect(&server.url("/ws?topic=h.t")).await;
    wait_nodes(&redis, "h.t", 1).await;
    let channel = "ringcast:topic:h.t";
    let big = format!("{{\"content\":\"text\"}}\n{}", "x".repeat(8 << 10));
    let at = |offset: u64| {
        format!("{{\"content\":\"text\",\"offset\":{offset},\"epoch\":\"AAAAAAAA\"}}\nat {offset}")
    };
    for payload in [big, at(u64::MAX), at(5), at(5), at(4), at(6)] {
        let published = redis_cli(redis.redis.port, &["PUBLISH", channel, &payload]).await;
        assert_eq!(published.as_deref(), Some("1"));
    }
    assert_eq!(next_text(&mut ws).await, "at 5");
    assert_eq!(next_text(&mut ws).await, "at 6");
    let scrape = server.metrics().await;
    let refused = |reason| {
        metric(
            &scrape,
            "ringcast_broker_messages_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((refused("size"), refused("offset")), (1.0, 3.0));
}
