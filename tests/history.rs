//! History, offsets and recovery with the `ringcast.v1` subprotocol,
//! driven by tokio-tungstenite and Python `websockets` clients against the
//! real binary.

mod common;

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Publishes `text` to `topic`; returns the offset from the reply.
async fn publish_at(server: &Server, topic: &str, text: &str) -> u64 {
    let (status, body) = server
        .post(
            &format!("/publish?topic={topic}"),
            "text/plain",
            text.to_owned(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    reply["offsets"][topic].as_u64().expect("an offset")
}

/// Expects a delivery of `text` on `topic` at `offset` in `epoch`.
async fn expect_message(ws: &mut Ws, topic: &str, offset: u64, epoch: &str, text: &str) {
    let m = next_json(ws).await;
    let want =
        json!({"op": "message", "topic": topic, "offset": offset, "epoch": epoch, "data": text});
    assert_eq!(m, want);
}

/// `GET /history` as JSON.
async fn history(server: &Server, query: &str) -> (u16, Value) {
    let (status, body) = server.get(&format!("/history?{query}")).await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn a_client_reconnects_and_recovers_6_to_15_then_gets_16_live() {
    let server = Server::start(&["--workers", "2", "--history", "chat.*=100/10m"]);
    let mut ws = connect_v1(&server.url("/ws")).await;
    let at = subscribe_v1(&mut ws, "chat.a", None).await;
    assert_eq!(at["offset"], 0);
    let epoch = at["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        assert_eq!(publish_at(&server, "chat.a", &format!("m{i}")).await, i);
    }
    for i in 1..=5 {
        expect_message(&mut ws, "chat.a", i, &epoch, &format!("m{i}")).await;
    }
    drop(ws);
    for i in 6..=15 {
        publish_at(&server, "chat.a", &format!("m{i}")).await;
    }
    let mut ws = connect_v1(&server.url("/ws")).await;
    let reply = subscribe_v1(&mut ws, "chat.a", Some((5, &epoch))).await;
    assert_eq!(
        reply,
        json!({"op": "subscribed", "topic": "chat.a", "offset": 15, "epoch": epoch, "recovered": true})
    );
    for i in 6..=15 {
        expect_message(&mut ws, "chat.a", i, &epoch, &format!("m{i}")).await;
    }
    assert_eq!(publish_at(&server, "chat.a", "m16").await, 16);
    expect_message(&mut ws, "chat.a", 16, &epoch, "m16").await;
}

#[tokio::test]
async fn fifty_clients_resume_while_twenty_publishers_race_without_gap_or_duplicate() {
    let server = Arc::new(Server::start(&[
        "--workers",
        "2",
        "--history",
        "race=1000000/10m",
    ]));
    for i in 0..10 {
        publish_at(&server, "race", &format!("seed{i}")).await;
    }
    let all_subscribed = Arc::new(AtomicBool::new(false));
    let top = Arc::new(AtomicU64::new(10));
    let publishers: Vec<_> = (0..20)
        .map(|p| {
            let (server, all_subscribed, top) =
                (server.clone(), all_subscribed.clone(), top.clone());
            tokio::spawn(async move {
                // Publish while clients subscribe, then 20 more each.
                let (mut sent, mut after) = (0u64, 0);
                while after < 20 {
                    let offset = publish_at(&server, "race", &format!("p{p}-{sent}")).await;
                    top.fetch_max(offset, Ordering::AcqRel);
                    sent += 1;
                    after += u32::from(all_subscribed.load(Ordering::Acquire));
                }
                sent
            })
        })
        .collect();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let batch = (0..5).map(|_| async {
            let mut ws = connect_v1(&server.url("/ws")).await;
            let (_, position) = history(&server, "topic=race&limit=0").await;
            let epoch = position["epoch"].as_str().unwrap().to_owned();
            let since = position["offset"].as_u64().unwrap() - 3;
            let reply = subscribe_v1(&mut ws, "race", Some((since, &epoch))).await;
            assert_eq!(reply["recovered"], true, "{reply}");
            assert_eq!(reply["epoch"], epoch.as_str());
            (ws, since, epoch)
        });
        clients.extend(join_all(batch).await);
    }
    let per_worker = server.stats().await["worker_connections"].clone();
    assert!(
        per_worker
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() > Some(0)),
        "both workers hold clients: {per_worker}"
    );
    all_subscribed.store(true, Ordering::Release);
    let published: u64 = join_all(publishers)
        .await
        .into_iter()
        .map(|n| n.unwrap())
        .sum();
    let last = top.load(Ordering::Acquire);
    assert_eq!(last, 10 + published, "offsets are dense across publishers");
    let checks = clients
        .into_iter()
        .map(|(mut ws, since, epoch)| async move {
            let mut expected = since + 1;
            while expected <= last {
                let m = next_json(&mut ws).await;
                assert_eq!(m["epoch"], epoch.as_str());
                assert_eq!(
                    m["offset"].as_u64(),
                    Some(expected),
                    "gap or duplicate after since {since}"
                );
                expected += 1;
            }
            expected - since - 1
        });
    let received: u64 = join_all(checks).await.into_iter().sum();
    eprintln!("race: {published} concurrent publishes, {received} deliveries checked");
}

#[tokio::test]
async fn since_older_than_the_window_or_in_another_epoch_is_not_recovered() {
    let server = Server::start(&["--history", "h.*=3/10m"]);
    for i in 1..=10 {
        publish_at(&server, "h.a", &format!("m{i}")).await;
    }
    let (_, page) = history(&server, "topic=h.a").await;
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        (page["first"].as_u64(), page["offset"].as_u64()),
        (Some(8), Some(10))
    );

    // Offset 7 is the oldest position the window (8..=10) still continues.
    let mut ok = connect_v1(&server.url("/ws")).await;
    let reply = subscribe_v1(&mut ok, "h.a", Some((7, &epoch))).await;
    assert_eq!(reply["recovered"], true);
    for i in 8..=10 {
        expect_message(&mut ok, "h.a", i, &epoch, &format!("m{i}")).await;
    }

    let mut old = connect_v1(&server.url("/ws")).await;
    let reply = subscribe_v1(&mut old, "h.a", Some((6, &epoch))).await;
    assert_eq!(
        reply,
        json!({"op": "subscribed", "topic": "h.a", "offset": 10, "epoch": epoch, "recovered": false})
    );
    let mut other = connect_v1(&server.url("/ws")).await;
    let reply = subscribe_v1(&mut other, "h.a", Some((9, "XXXXXXXX"))).await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["epoch"], epoch.as_str());
    let mut ahead = connect_v1(&server.url("/ws")).await;
    let reply = subscribe_v1(&mut ahead, "h.a", Some((11, &epoch))).await;
    assert_eq!(reply["recovered"], false);
    let mut no_history = connect_v1(&server.url("/ws")).await;
    let reply = subscribe_v1(&mut no_history, "plain", Some((1, &epoch))).await;
    assert_eq!(
        reply,
        json!({"op": "subscribed", "topic": "plain", "recovered": false})
    );

    // Nothing was replayed: the next message each gets is the live 11.
    assert_eq!(publish_at(&server, "h.a", "m11").await, 11);
    for ws in [&mut ok, &mut old, &mut other, &mut ahead] {
        expect_message(ws, "h.a", 11, &epoch, "m11").await;
    }
}

#[tokio::test]
async fn a_restart_changes_the_epoch() {
    let args = ["--history", "h.*=10/10m"];
    let first = Server::start(&args);
    for i in 1..=3 {
        publish_at(&first, "h.a", &format!("m{i}")).await;
    }
    let (_, before) = history(&first, "topic=h.a").await;
    drop(first);
    let second = Server::start(&args);
    assert_eq!(publish_at(&second, "h.a", "again").await, 1);
    let (_, after) = history(&second, "topic=h.a").await;
    assert_ne!(after["epoch"], before["epoch"]);
    let mut ws = connect_v1(&second.url("/ws")).await;
    let old_epoch = before["epoch"].as_str().unwrap();
    let reply = subscribe_v1(&mut ws, "h.a", Some((3, old_epoch))).await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(
        (&reply["offset"], &reply["epoch"]),
        (&json!(1), &after["epoch"])
    );
}

/// Resident set size of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test]
async fn history_max_bytes_bounds_memory_by_evicting_the_oldest() {
    const MAX: u64 = 32 << 20;
    // What the process may hold beyond the bound: allocator pages kept
    // after the transient per-publish frames were freed (measured: see
    // the README's "History" section).
    const SLACK: u64 = 24 << 20;
    let max = MAX.to_string();
    let server = Arc::new(Server::start(&[
        "--workers",
        "2",
        "--history",
        "big.*=100000/10m",
        "--history-max-bytes",
        &max,
    ]));
    let body = vec![7u8; 64 << 10];
    let publish = |topic: String| {
        let (server, body) = (server.clone(), body.clone());
        async move {
            let (status, _) = server
                .post(
                    &format!("/publish?topic={topic}"),
                    "application/octet-stream",
                    body,
                )
                .await;
            assert_eq!(status, 200);
        }
    };
    publish("big.warmup".into()).await;
    let baseline = rss(server.pid());
    let (_, warm) = history(&server, "topic=big.warmup").await;
    // 4 publishers, 2048 messages of 64 KiB over 16 topics: 128 MiB of
    // payload, 4x the bound.
    let tasks = (0..4).map(|p| {
        let publish = &publish;
        async move {
            for n in 0..512 {
                publish(format!("big.{}", (p * 512 + n) % 16)).await;
            }
        }
    });
    join_all(tasks).await;
    let stats = server.stats().await;
    let h = &stats["history"];
    assert!(h["bytes"].as_u64().unwrap() <= MAX, "{h}");
    assert!(h["evicted"].as_u64().unwrap() > 1000, "{h}");
    let grown = rss(server.pid()).saturating_sub(baseline);
    eprintln!(
        "history bound: {} MiB counted, RSS grew {} MiB (bound {} MiB + slack {} MiB); {h}",
        h["bytes"].as_u64().unwrap() >> 20,
        grown >> 20,
        MAX >> 20,
        SLACK >> 20
    );
    assert!(grown <= MAX + SLACK, "RSS grew {grown} bytes");

    // The evicted warm-up stream is gone: its position does not recover.
    let mut ws = connect_v1(&server.url("/ws")).await;
    let epoch = warm["epoch"].as_str().unwrap();
    let reply = subscribe_v1(&mut ws, "big.warmup", Some((0, epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
}

#[tokio::test]
async fn raw_clients_see_no_positions_and_v1_clients_get_one_delivery_per_topic() {
    let server = Server::start(&["--history", "h.*=10/10m"]);
    let mut raw = connect(&server.url("/ws?topic=h.a&topic=b")).await;
    let mut raw_by_msg = connect(&server.url("/ws")).await;
    subscribe(&mut raw_by_msg, "h.a").await;
    let mut v1 = connect_v1(&server.url("/ws?topic=h.a&topic=b")).await;
    let a = next_json(&mut v1).await;
    let epoch = a["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        a,
        json!({"op": "subscribed", "topic": "h.a", "offset": 0, "epoch": epoch})
    );
    assert_eq!(
        next_json(&mut v1).await,
        json!({"op": "subscribed", "topic": "b"})
    );

    let (status, body) = server
        .post("/publish?topic=h.a&topic=b&topic=h.a", "text/plain", "both")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"subscribers": 4, "offsets": {"h.a": 1}})
    );
    assert_eq!(next_text(&mut raw).await, "both");
    assert_eq!(next_text(&mut raw_by_msg).await, "both");
    let mut got = vec![next_json(&mut v1).await, next_json(&mut v1).await];
    got.sort_by_key(|m| m["topic"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        [
            json!({"op": "message", "topic": "b", "data": "both"}),
            json!({"op": "message", "topic": "h.a", "offset": 1, "epoch": epoch, "data": "both"}),
        ]
    );

    let (status, _) = server.post("/broadcast", "text/plain", "all").await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut raw).await, "all");
    assert_eq!(next_text(&mut raw_by_msg).await, "all");
    assert_eq!(
        next_json(&mut v1).await,
        json!({"op": "broadcast", "data": "all"})
    );
    // Raw mode has no recovery: `since` is not a raw control message.
    send_json(
        &mut raw_by_msg,
        json!({"op": "subscribe", "topic": "h.a", "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    assert_eq!(next_json(&mut raw_by_msg).await["op"], "error");
}

#[tokio::test]
async fn binary_text_and_json_publishes_arrive_as_documented() {
    let server = Server::start(&["--history", "h=10/10m"]);
    let mut ws = connect_v1(&server.url("/ws?topic=h")).await;
    let epoch = next_json(&mut ws).await["epoch"].clone();
    for (content_type, body) in [
        (
            "application/json; charset=utf-8",
            br#"{"k":[1,"x"]}"#.to_vec(),
        ),
        ("text/plain", "é \"quoted\"\n".as_bytes().to_vec()),
        ("application/octet-stream", vec![0, 255, 1]),
    ] {
        let (status, reply) = server.post("/publish?topic=h", content_type, body).await;
        assert_eq!(status, 200, "{reply}");
    }
    let base =
        |offset: u64| json!({"op": "message", "topic": "h", "offset": offset, "epoch": epoch});
    let with = |mut m: Value, key: &str, value: Value| {
        m[key] = value;
        m
    };
    assert_eq!(
        next_json(&mut ws).await,
        with(base(1), "data", json!({"k": [1, "x"]}))
    );
    assert_eq!(
        next_json(&mut ws).await,
        with(base(2), "data", json!("é \"quoted\"\n"))
    );
    assert_eq!(
        next_json(&mut ws).await,
        with(base(3), "b64data", json!("AP8B"))
    );
    let (status, _) = server
        .post("/publish?topic=h", "application/json", "{")
        .await;
    assert_eq!(status, 400, "application/json must be JSON");

    let (_, page) = history(&server, "topic=h&since=1&limit=1").await;
    assert_eq!(
        page,
        json!({"epoch": epoch, "offset": 3, "first": 1,
               "messages": [{"offset": 2, "data": "é \"quoted\"\n"}]})
    );
    assert_eq!(history(&server, "topic=other").await.0, 404);
    assert_eq!(history(&server, "since=1").await.0, 400);
    assert_eq!(history(&server, "topic=h&limit=x").await.0, 400);
}

#[test]
fn python_websockets_client_reconnects_and_recovers() {
    let server = Server::start(&["--history", "py.*=100/10m"]);
    run_python_client("recovery_client.py", &server, &[]);
}
