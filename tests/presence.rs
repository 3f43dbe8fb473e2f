//! Presence on one node (issue 22; docs/protocol.md, "Presence") with
//! tokio-tungstenite clients: the presence and channels webhooks against
//! a hook receiver written here (axum), the join-leave bound, the HTTP
//! API's pages and errors, and who is a member (raw WebSocket
//! subscribers are, a waiting long-poll is not).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V1: (&str, &str) = ("sec-websocket-protocol", "ringcast.v1");

/// A counter's value in `/metrics`, 0 when it has no sample yet (a
/// labelled counter appears once first counted).
async fn counter_or_zero(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = server.metrics().await;
    let found = scrape
        .samples
        .iter()
        .any(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    if found {
        metric(&scrape, name, labels)
    } else {
        0.0
    }
}

/// The path of a fresh file holding an HS256 secret.
fn hmac_secret() -> String {
    let secret = scratch_dir("presence").join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    secret.to_str().unwrap().to_owned()
}

/// A `ringcast.v1` client, with a token when given.
async fn v1(server: &Server, token: Option<&str>) -> Ws {
    match token {
        Some(token) => {
            let bearer = format!("Bearer {token}");
            connect_with(&server.url("/ws"), &[V1, ("authorization", &bearer)]).await
        }
        None => connect_v1(&server.url("/ws")).await,
    }
}

/// Subscribes with `join_leave`; the reply is the plain `subscribed`.
async fn subscribe_join_leave(ws: &mut Ws, topic: &str) {
    send_json(
        ws,
        json!({"op": "subscribe", "topic": topic, "join_leave": true}),
    )
    .await;
    assert_eq!(
        next_json(ws).await,
        json!({"op": "subscribed", "topic": topic})
    );
}

async fn unsubscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, json!({"op": "unsubscribe", "topic": topic})).await;
    assert_eq!(
        next_json(ws).await,
        json!({"op": "unsubscribed", "topic": topic})
    );
}

/// The `presence` op's member list of `topic`.
async fn presence_op(ws: &mut Ws, topic: &str) -> Vec<Value> {
    send_json(ws, json!({"op": "presence", "topic": topic})).await;
    let answer = next_json(ws).await;
    assert_eq!(
        (&answer["op"], &answer["topic"], answer.get("truncated")),
        (&json!("presence"), &json!(topic), None),
        "{answer}"
    );
    answer["clients"].as_array().unwrap().clone()
}

/// The client ids of `members`.
fn ids(members: &[Value]) -> BTreeSet<String> {
    members
        .iter()
        .map(|m| m["client"].as_str().unwrap().to_owned())
        .collect()
}

/// A client id's sequence number (`NODE.SEQ`; the API sorts by it).
fn seq(client: &Value) -> u64 {
    client
        .as_str()
        .unwrap()
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = server.get(path).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// The next message on an observer, which must be an anonymous member's
/// join (`first` always true) or leave (`last` always true) on `topic`;
/// returns its client id.
async fn next_anonymous(ws: &mut Ws, op: &str, topic: &str) -> String {
    let event = next_json(ws).await;
    let client = event["client"]
        .as_str()
        .unwrap_or_else(|| panic!("{event}"));
    let want = if op == "join" {
        json!({"op": "join", "topic": topic, "client": client, "user": null, "info": null, "first": true})
    } else {
        json!({"op": "leave", "topic": topic, "client": client, "user": null, "last": true})
    };
    assert_eq!(event, want);
    client.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_webhook_gets_joins_and_leaves_at_least_once() {
    // The first presence POST is answered 500: the batch is sent again.
    let hooks = HookReceiver::start(1).await;
    let secret = hmac_secret();
    let server = Server::start(&[
        "--hook-url",
        &hooks.url,
        "--hooks",
        "presence,channels",
        "--jwt-hmac-secret-file",
        &secret,
        "--presence",
        "room.*",
        "--workers",
        "2",
    ]);
    let claims = json!({"sub": "42", "info": {"name": "Ann"}, "exp": unix_now() + 3600});
    let token = mint(&json!([{"alg": "HS256", "key": secret, "claims": claims}])).remove(0);
    let mut ann = v1(&server, Some(&token)).await;
    subscribe_v1(&mut ann, "room.1", None).await;
    let members = presence_op(&mut ann, "room.1").await;
    assert_eq!(members.len(), 1, "{members:?}");
    let client = members[0]["client"].clone();
    assert_eq!(
        members[0],
        json!({"client": client, "user": "42", "info": {"name": "Ann"}})
    );
    let join = json!({"event": "join", "topic": "room.1", "client": client, "user": "42", "info": {"name": "Ann"}});
    hooks.wait_for("presence", is(join.clone())).await;
    assert!(
        hooks.posts("presence") >= 2,
        "the join arrived without the failed POST first"
    );
    // The topic's first subscriber: occupied.
    let occupied = json!({"event": "occupied", "topic": "room.1"});
    hooks.wait_for("channels", is(occupied.clone())).await;
    ann.close(None).await.unwrap();
    let leave = json!({"event": "leave", "topic": "room.1", "client": client, "user": "42", "info": {"name": "Ann"}});
    let events = hooks.wait_for("presence", is(leave.clone())).await;
    assert_eq!(events, [join, leave]);
    let vacated = json!({"event": "vacated", "topic": "room.1"});
    let events = hooks.wait_for("channels", is(vacated.clone())).await;
    assert_eq!(events, [occupied, vacated]);
    let dropped = "ringcast_hook_events_dropped_total";
    for hook in ["presence", "channels"] {
        assert_eq!(
            counter_or_zero(&server, dropped, &[("hook", hook)]).await,
            0.0,
            "{hook} events dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_batch_refused_every_time_is_dropped_and_counted() {
    let hooks = HookReceiver::start(usize::MAX).await;
    let server = Server::start(&[
        "--hook-url",
        &hooks.url,
        "--hooks",
        "presence",
        "--presence",
        "room.*",
    ]);
    let mut ws = v1(&server, None).await;
    subscribe_v1(&mut ws, "room.1", None).await;
    // Five attempts (200 ms, 400, 800, 1600 apart), then the batch is
    // dropped and counted.
    let dropped = "ringcast_hook_events_dropped_total";
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter_or_zero(&server, dropped, &[("hook", "presence")]).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not counted as dropped after {} POSTs",
            hooks.posts("presence")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(hooks.posts("presence"), 5);
    assert_eq!(
        counter_or_zero(&server, dropped, &[("hook", "presence")]).await,
        1.0
    );
    // The backend is back: the next event arrives.
    hooks.stop_failing();
    unsubscribe(&mut ws, "room.1").await;
    let events = hooks.wait_for("presence", |e| e["event"] == "leave").await;
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_webhook_says_occupied_and_vacated_once_across_workers() {
    let hooks = HookReceiver::start(0).await;
    let server = Server::start(&[
        "--hook-url",
        &hooks.url,
        "--hooks",
        "presence,channels",
        "--presence",
        "room.*",
        "--workers",
        "2",
    ]);
    // Subscribers of `news` (no presence) and `room.5` on both workers,
    // at least two on each.
    let mut clients = Vec::new();
    loop {
        let mut ws = v1(&server, None).await;
        subscribe_v1(&mut ws, "news", None).await;
        subscribe_v1(&mut ws, "room.5", None).await;
        clients.push(ws);
        let stats = server.stats().await;
        let per_worker = stats["worker_connections"].as_array().unwrap().clone();
        assert_eq!(per_worker.len(), 2, "{stats}");
        if per_worker.iter().all(|n| n.as_u64().unwrap() >= 2) {
            break;
        }
        assert!(clients.len() < 40, "connections all land on one worker");
    }
    // A later topic's occupied event: every event of the subscribes above
    // was queued before it (the hook's events are sent in order).
    let mut marker = v1(&server, None).await;
    subscribe_v1(&mut marker, "marker", None).await;
    let occupied = |topic: &str| json!({"event": "occupied", "topic": topic});
    let vacated = |topic: &str| json!({"event": "vacated", "topic": topic});
    let events = hooks.wait_for("channels", is(occupied("marker"))).await;
    assert_eq!(
        events,
        [occupied("news"), occupied("room.5"), occupied("marker")]
    );
    // Every subscriber lets go (half unsubscribe, half close: done once
    // the server counts them closed), then the marker.
    let closed = server.stats().await["closed"].as_u64().unwrap();
    let mut closing = 0;
    for (i, mut ws) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            unsubscribe(&mut ws, "news").await;
            unsubscribe(&mut ws, "room.5").await;
        } else {
            ws.close(None).await.unwrap();
            closing += 1;
        }
    }
    server.wait_for_stat("closed", closed + closing).await;
    unsubscribe(&mut marker, "marker").await;
    let events = hooks.wait_for("channels", is(vacated("marker"))).await;
    assert_eq!(events.len(), 6, "{events:?}");
    let mut vacated_first: Vec<Value> = events[3..5].to_vec();
    vacated_first.sort_by_key(|e| e["topic"].as_str().unwrap().to_owned());
    assert_eq!(vacated_first, [vacated("news"), vacated("room.5")]);
    assert_eq!(events[5], vacated("marker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_are_pushed_only_up_to_the_bound_and_stats_stay_exact() {
    let server = Server::start(&[
        "--presence",
        "room.*",
        "--presence-join-leave-max",
        "2",
        "--workers",
        "2",
    ]);
    // The observer is the topic's first member.
    let mut observer = v1(&server, None).await;
    subscribe_join_leave(&mut observer, "room.1").await;
    let mut second = v1(&server, None).await;
    subscribe_v1(&mut second, "room.1", None).await;
    let second_id = next_anonymous(&mut observer, "join", "room.1").await;
    // The 3rd and 4th members: over the bound, their joins are not pushed.
    let mut over = Vec::new();
    for _ in 0..2 {
        let mut ws = v1(&server, None).await;
        subscribe_v1(&mut ws, "room.1", None).await;
        over.push(ws);
    }
    let (status, stats) = get_json(&server, "/presence_stats?topic=room.1").await;
    assert_eq!((status, stats), (200, json!({"clients": 4, "users": 0})));
    send_json(
        &mut observer,
        json!({"op": "presence_stats", "topic": "room.1"}),
    )
    .await;
    assert_eq!(
        next_json(&mut observer).await,
        json!({"op": "presence_stats", "topic": "room.1", "clients": 4, "users": 0})
    );
    assert_eq!(presence_op(&mut observer, "room.1").await.len(), 4);
    // They leave (4, then 3 members before each leave: not pushed); the
    // second member's leave (2 members) is the next event.
    for mut ws in over.into_iter().rev() {
        unsubscribe(&mut ws, "room.1").await;
    }
    let (_, stats) = get_json(&server, "/presence_stats?topic=room.1").await;
    assert_eq!(stats, json!({"clients": 2, "users": 0}));
    unsubscribe(&mut second, "room.1").await;
    assert_eq!(
        next_anonymous(&mut observer, "leave", "room.1").await,
        second_id
    );
    // Under the bound again, a join is pushed.
    subscribe_v1(&mut second, "room.1", None).await;
    next_anonymous(&mut observer, "join", "room.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_pages_members_and_raw_subscribers_are_members() {
    let server = Server::start(&["--presence", "room.*", "--workers", "2"]);
    let mut observer = v1(&server, None).await;
    subscribe_join_leave(&mut observer, "room.1").await;
    // Raw WebSocket subscribers (topic in the URL, no subprotocol) are
    // members: the observer sees them join.
    let mut raws = Vec::new();
    let mut joined = BTreeSet::new();
    for _ in 0..4 {
        raws.push(connect(&server.url("/ws?topic=room.1")).await);
        joined.insert(next_anonymous(&mut observer, "join", "room.1").await);
    }
    assert_eq!(joined.len(), 4);
    // Subscribing again to a held topic changes nothing, for a topic
    // subscribed in the URL too.
    subscribe_v1(&mut observer, "room.1", None).await;
    let mut url_v1 = connect_v1(&server.url("/ws?topic=room.2")).await;
    assert_eq!(
        next_json(&mut url_v1).await,
        json!({"op": "subscribed", "topic": "room.2"})
    );
    subscribe_v1(&mut url_v1, "room.2", None).await;
    assert_eq!(presence_op(&mut url_v1, "room.2").await.len(), 1);
    unsubscribe(&mut url_v1, "room.2").await;
    let listed = presence_op(&mut observer, "room.1").await;
    let all = ids(&listed);
    assert_eq!(all.len(), 5, "{listed:?}");
    assert!(joined.is_subset(&all), "{joined:?} not in {all:?}");
    for member in &listed {
        assert_eq!(
            (&member["user"], &member["info"]),
            (&Value::Null, &Value::Null)
        );
    }
    // Pages of 2: 2, 2, 1, in client id order, each member once.
    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/presence?topic=room.1&limit=2".to_owned();
    loop {
        let (status, page) = get_json(&server, &path).await;
        assert_eq!(status, 200, "{page}");
        let clients = page["clients"].as_array().unwrap().clone();
        sizes.push(clients.len());
        paged.extend(clients);
        match &page["next"] {
            Value::Null => break,
            Value::String(next) => path = format!("/presence?topic=room.1&limit=2&cursor={next}"),
            other => panic!("next is {other}"),
        }
        assert!(sizes.len() < 5, "pages never end: {sizes:?}");
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert!(
        paged
            .windows(2)
            .all(|w| seq(&w[0]["client"]) < seq(&w[1]["client"])),
        "{paged:?}"
    );
    assert_eq!(ids(&paged), all);
    let mut sorted = listed.clone();
    sorted.sort_by_key(|m| seq(&m["client"]));
    assert_eq!(paged, sorted, "the pages list what the op lists");
    // The default page holds them all.
    let (status, page) = get_json(&server, "/presence?topic=room.1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (page["clients"].clone(), page["next"].clone()),
        (json!(sorted), Value::Null)
    );
    let (status, stats) = get_json(&server, "/presence_stats?topic=room.1").await;
    assert_eq!((status, stats), (200, json!({"clients": 5, "users": 0})));
    // A topic with presence and no members: an empty page.
    let (status, page) = get_json(&server, "/presence?topic=room.2").await;
    assert_eq!((status, page), (200, json!({"clients": [], "next": null})));
    for path in [
        "/presence?topic=news",
        "/presence",
        "/presence?topic=room.1&topic=room.2",
        "/presence?topic=bad%20topic",
        "/presence?topic=room.1&cursor=abc",
        "/presence?topic=room.1&cursor=-1",
        "/presence?topic=room.1&limit=0",
        "/presence?topic=room.1&limit=1001",
        "/presence?topic=room.1&limit=two",
        "/presence_stats?topic=news",
        "/presence_stats",
    ] {
        let (status, body) = get_json(&server, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // A raw member that closes leaves.
    let mut gone = raws.pop().unwrap();
    gone.close(None).await.unwrap();
    let left = next_anonymous(&mut observer, "leave", "room.1").await;
    assert!(joined.contains(&left));
    let (_, stats) = get_json(&server, "/presence_stats?topic=room.1").await;
    assert_eq!(stats, json!({"clients": 4, "users": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_long_poll_is_not_a_member() {
    let server = Server::start(&["--presence", "room.*", "--workers", "2"]);
    let mut observer = v1(&server, None).await;
    subscribe_join_leave(&mut observer, "room.1").await;
    let _raw = connect(&server.url("/ws?topic=room.1")).await;
    next_anonymous(&mut observer, "join", "room.1").await;
    // A poll of room.1 and room.poll (a topic nobody else holds): it waits
    // (neither keeps history) once the server holds room.poll for it.
    let topics = server.stats().await["topics"].as_u64().unwrap();
    let mut poll = tokio::net::TcpStream::connect(server.ws).await.unwrap();
    poll.write_all(b"GET /poll?topic=room.1&topic=room.poll HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    server.wait_for_stat("topics", topics + 1).await;
    for (topic, clients) in [("room.1", 2), ("room.poll", 0)] {
        let path = format!("/presence_stats?topic={topic}");
        let (_, stats) = get_json(&server, &path).await;
        assert_eq!(stats, json!({"clients": clients, "users": 0}), "{topic}");
        let path = format!("/presence?topic={topic}");
        let (_, page) = get_json(&server, &path).await;
        assert_eq!(page["clients"].as_array().unwrap().len(), clients, "{page}");
    }
    // A member that joins after it: its join is the observer's next
    // event (none for the poll).
    let mut later = v1(&server, None).await;
    subscribe_v1(&mut later, "room.1", None).await;
    let later_id = next_anonymous(&mut observer, "join", "room.1").await;
    // The poll was waiting: a publish reaches it and the three members.
    assert_eq!(server.publish("topic=room.1", "now").await, 4);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains(r#""data":"now""#) {
        let n = tokio::time::timeout(WAIT, poll.read(&mut buf))
            .await
            .expect("the poll's answer timed out")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        next_json(&mut observer).await,
        json!({"op": "message", "topic": "room.1", "data": "now"})
    );
    // The answered poll left nothing: the next event is the later
    // member's leave.
    assert_eq!(next_json(&mut later).await["data"], "now");
    unsubscribe(&mut later, "room.1").await;
    assert_eq!(
        next_anonymous(&mut observer, "leave", "room.1").await,
        later_id
    );
}
