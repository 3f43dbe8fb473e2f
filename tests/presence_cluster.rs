//! Presence across a cluster (issue 22; docs/protocol.md, "Presence";
//! server/src/broker/redis/presence.rs): two nodes over one real
//! redis-server started here, tokio-tungstenite `ringcast.v1` clients on
//! both, and a hook receiver (axum) for the presence and channels
//! webhooks. Members are listed from either node, join/leave cross nodes
//! with `first`/`last` computed cluster-wide, a SIGKILLed node's members
//! are reaped within `--presence-ttl` plus one refresh (the times are
//! measured and printed), a drained node's members leave at once, and a
//! Redis outage answers "broker unavailable"/503, then the members are
//! registered again.

mod common;

use common::redis_ha::{redis_cli, RedisStandalone};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const V1: (&str, &str) = ("sec-websocket-protocol", "ringcast.v1");
const TOPIC: &str = "room.1";

/// A node over `redis` with presence on `room.*`, 2 workers, and `extra`.
fn node(redis: &RedisStandalone, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--broker", &url, "--presence", "room.*", "--workers", "2"];
    args.extend(extra);
    Server::start(&args)
}

/// The path of a fresh file holding an HS256 secret.
fn hmac_secret() -> String {
    let secret = scratch_dir("presence-cluster").join("secret");
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

/// `n` anonymous `ringcast.v1` members of `topic` on `server`.
async fn members(server: &Server, topic: &str, n: usize) -> Vec<Ws> {
    let mut clients = connect_many_v1(server, n).await;
    for ws in &mut clients {
        subscribe_v1(ws, topic, None).await;
    }
    clients
}

/// `n` `ringcast.v1` clients, opened 50 at a time.
async fn connect_many_v1(server: &Server, n: usize) -> Vec<Ws> {
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = (n - clients.len()).min(50);
        let opened = (0..batch).map(|_| v1(server, None));
        clients.extend(futures_util::future::join_all(opened).await);
    }
    clients
}

/// The `presence` op's answer on `topic` (the whole answer: it may be an
/// error).
async fn presence_op(ws: &mut Ws, topic: &str) -> Value {
    send_json(ws, json!({"op": "presence", "topic": topic})).await;
    next_answer(ws).await
}

/// The `presence_stats` op's answer on `topic`.
async fn presence_stats_op(ws: &mut Ws, topic: &str) -> Value {
    send_json(ws, json!({"op": "presence_stats", "topic": topic})).await;
    next_answer(ws).await
}

/// The next message that is not a `resync` (which a node sends its
/// subscribers once the broker is back: the stream data may be lost).
async fn next_answer(ws: &mut Ws) -> Value {
    loop {
        let message = next_json(ws).await;
        if message["op"] != "resync" {
            return message;
        }
    }
}

async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = server.get(path).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// `GET /presence_stats?topic=TOPIC`'s body (200 expected).
async fn stats(server: &Server, topic: &str) -> Value {
    let (status, body) = get_json(server, &format!("/presence_stats?topic={topic}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `server`'s `/presence_stats` every 20 ms (up to `limit`) until it
/// counts `clients`; returns how long that took.
async fn wait_clients(server: &Server, topic: &str, clients: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = get_json(server, &format!("/presence_stats?topic={topic}")).await;
        if status == 200 && body["clients"] == clients {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{topic}: {clients} clients not within {limit:?}; last {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to [`WAIT`]) until `nodes` nodes subscribe to `topic`'s
/// channel on the Redis on `port` (`PUBSUB NUMSUB`): from then on, a node's
/// join_leave subscribers get the events published there.
async fn wait_channel_nodes(port: u16, topic: &str, nodes: u64) {
    let channel = format!("ringcast:topic:{topic}");
    let start = Instant::now();
    loop {
        let text = redis_cli(port, &["PUBSUB", "NUMSUB", &channel]).await;
        let n = text
            .as_deref()
            .and_then(|t| t.lines().last())
            .and_then(|l| l.trim().parse::<u64>().ok());
        if n == Some(nodes) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{channel}: {nodes} nodes not within {WAIT:?} (last {n:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// All of `topic`'s members through `GET /presence` pages of `limit`,
/// and each page's size.
async fn all_pages(server: &Server, topic: &str, limit: usize) -> (Vec<Value>, Vec<usize>) {
    let mut members = Vec::new();
    let mut sizes = Vec::new();
    let mut path = format!("/presence?topic={topic}&limit={limit}");
    loop {
        let (status, page) = get_json(server, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let clients = page["clients"].as_array().unwrap().clone();
        sizes.push(clients.len());
        members.extend(clients);
        match &page["next"] {
            Value::Null => return (members, sizes),
            Value::String(next) => {
                path = format!("/presence?topic={topic}&limit={limit}&cursor={next}");
            }
            other => panic!("next is {other}"),
        }
        assert!(sizes.len() < 100, "pages never end: {sizes:?}");
    }
}

/// `members` sorted by client id.
fn sorted(mut members: Vec<Value>) -> Vec<Value> {
    members.sort_by_key(|m| m["client"].as_str().unwrap().to_owned());
    members
}

/// The next event on an observer: a join of `user` (with `info`) on
/// [`TOPIC`] with `first`; returns its client id.
async fn expect_join(ws: &mut Ws, user: Value, info: Value, first: bool) -> String {
    let event = next_json(ws).await;
    let client = event["client"]
        .as_str()
        .unwrap_or_else(|| panic!("not a join: {event}"))
        .to_owned();
    assert_eq!(
        event,
        json!({"op": "join", "topic": TOPIC, "client": client, "user": user, "info": info, "first": first})
    );
    client
}

/// The next event on an observer: the leave of `client` (of `user`) on
/// [`TOPIC`] with `last`.
async fn expect_leave(ws: &mut Ws, client: &str, user: Value, last: bool) {
    assert_eq!(
        next_json(ws).await,
        json!({"op": "leave", "topic": TOPIC, "client": client, "user": user, "last": last})
    );
}

/// `n` anonymous leaves of [`TOPIC`] on an observer; returns their client
/// ids in order.
async fn anonymous_leaves(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut left = Vec::with_capacity(n);
    for _ in 0..n {
        let event = next_json(ws).await;
        let client = event["client"]
            .as_str()
            .unwrap_or_else(|| panic!("not a leave: {event}"))
            .to_owned();
        assert_eq!(
            event,
            json!({"op": "leave", "topic": TOPIC, "client": client, "user": null, "last": true})
        );
        left.push(client);
    }
    left
}

/// `n` anonymous joins of [`TOPIC`] on an observer; their client ids.
async fn anonymous_joins(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut joined = Vec::with_capacity(n);
    for _ in 0..n {
        joined.push(expect_join(ws, Value::Null, Value::Null, true).await);
    }
    joined
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_join_leave_cross_nodes_with_first_and_last_cluster_wide() {
    let redis = RedisStandalone::start().await;
    let secret = hmac_secret();
    let jwt = ["--jwt-hmac-secret-file", secret.as_str()];
    let (a, b) = (node(&redis, &jwt), node(&redis, &jwt));
    let ann = json!({"name": "Ann"});
    let bob = json!({"name": "Bob"});
    let spec = |sub: &str, info: &Value| {
        let mut claims = json!({"sub": sub, "exp": unix_now() + 3600});
        if !info.is_null() {
            claims["info"] = info.clone();
        }
        json!({"alg": "HS256", "key": secret, "claims": claims})
    };
    let tokens = mint(&json!([
        spec("oa", &Value::Null),
        spec("ob", &Value::Null),
        spec("42", &ann),
        spec("42", &ann),
        spec("7", &bob),
    ]));

    // Observer A is room.1's first member; once A subscribes to the
    // channel and the member is in Redis, observer B joins: A sees it.
    let mut obs_a = v1(&a, Some(&tokens[0])).await;
    subscribe_join_leave(&mut obs_a, TOPIC).await;
    wait_clients(&a, TOPIC, 1, WAIT).await;
    wait_channel_nodes(redis.redis.port, TOPIC, 1).await;
    let mut obs_b = v1(&b, Some(&tokens[1])).await;
    subscribe_join_leave(&mut obs_b, TOPIC).await;
    let ob = expect_join(&mut obs_a, json!("ob"), Value::Null, true).await;
    wait_channel_nodes(redis.redis.port, TOPIC, 2).await;

    // User 42 on A (first), then on B (not first), user 7 on B: both
    // observers see the three joins, in order, with the same ids.
    let mut ann_a = v1(&a, Some(&tokens[2])).await;
    subscribe_v1(&mut ann_a, TOPIC, None).await;
    let ann_a_id = expect_join(&mut obs_a, json!("42"), ann.clone(), true).await;
    assert_eq!(
        expect_join(&mut obs_b, json!("42"), ann.clone(), true).await,
        ann_a_id,
        "A's join reaches B"
    );
    let mut ann_b = v1(&b, Some(&tokens[3])).await;
    subscribe_v1(&mut ann_b, TOPIC, None).await;
    let ann_b_id = expect_join(&mut obs_b, json!("42"), ann.clone(), false).await;
    assert_eq!(
        expect_join(&mut obs_a, json!("42"), ann.clone(), false).await,
        ann_b_id,
        "B's join reaches A, first:false cluster-wide"
    );
    let mut bob_b = v1(&b, Some(&tokens[4])).await;
    subscribe_v1(&mut bob_b, TOPIC, None).await;
    let bob_id = expect_join(&mut obs_a, json!("7"), bob.clone(), true).await;
    assert_eq!(
        expect_join(&mut obs_b, json!("7"), bob.clone(), true).await,
        bob_id
    );

    // Everyone is listed from either node, by the op and by the API.
    let listed = presence_op(&mut obs_b, TOPIC).await;
    assert_eq!(
        (&listed["op"], &listed["topic"], listed.get("truncated")),
        (&json!("presence"), &json!(TOPIC), None),
        "{listed}"
    );
    let oa = listed["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "oa")
        .unwrap_or_else(|| panic!("observer A is not listed from B: {listed}"))["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let everyone = sorted(vec![
        json!({"client": oa, "user": "oa", "info": null}),
        json!({"client": ob, "user": "ob", "info": null}),
        json!({"client": ann_a_id, "user": "42", "info": ann}),
        json!({"client": ann_b_id, "user": "42", "info": ann}),
        json!({"client": bob_id, "user": "7", "info": bob}),
    ]);
    let ids: BTreeSet<&str> = everyone
        .iter()
        .map(|m| m["client"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "client ids are unique across the cluster");
    for (name, ws) in [("A", &mut obs_a), ("B", &mut obs_b)] {
        let answer = presence_op(ws, TOPIC).await;
        let clients = answer["clients"].as_array().cloned().unwrap_or_default();
        assert_eq!(sorted(clients), everyone, "presence op on {name}: {answer}");
        assert_eq!(
            presence_stats_op(ws, TOPIC).await,
            json!({"op": "presence_stats", "topic": TOPIC, "clients": 5, "users": 4}),
            "presence_stats op on {name}"
        );
    }
    for (name, server) in [("A", &a), ("B", &b)] {
        let (status, page) = get_json(server, &format!("/presence?topic={TOPIC}")).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["next"], Value::Null, "GET /presence on {name}: {page}");
        let clients = page["clients"].as_array().unwrap().clone();
        assert_eq!(sorted(clients), everyone, "GET /presence on {name}");
        assert_eq!(
            stats(server, TOPIC).await,
            json!({"clients": 5, "users": 4}),
            "GET /presence_stats on {name}"
        );
    }

    // User 42's connection on A leaves (not its last: it is on B too),
    // then the one on B (its last); user 7's, its last.
    ann_a.close(None).await.unwrap();
    expect_leave(&mut obs_a, &ann_a_id, json!("42"), false).await;
    expect_leave(&mut obs_b, &ann_a_id, json!("42"), false).await;
    ann_b.close(None).await.unwrap();
    expect_leave(&mut obs_b, &ann_b_id, json!("42"), true).await;
    expect_leave(&mut obs_a, &ann_b_id, json!("42"), true).await;
    bob_b.close(None).await.unwrap();
    expect_leave(&mut obs_a, &bob_id, json!("7"), true).await;
    expect_leave(&mut obs_b, &bob_id, json!("7"), true).await;
    for (name, server) in [("A", &a), ("B", &b)] {
        assert_eq!(
            stats(server, TOPIC).await,
            json!({"clients": 2, "users": 2}),
            "GET /presence_stats on {name} after the leaves"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_pages_a_cluster_topic_within_the_limit_and_loses_no_member() {
    let redis = RedisStandalone::start().await;
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let _on_a = members(&a, TOPIC, 3).await;
    let _on_b = members(&b, TOPIC, 4).await;
    wait_clients(&a, TOPIC, 7, WAIT).await;
    let (status, page) = get_json(&a, &format!("/presence?topic={TOPIC}")).await;
    assert_eq!(status, 200, "{page}");
    let all = sorted(page["clients"].as_array().unwrap().clone());
    assert_eq!(all.len(), 7, "{page}");
    // docs/protocol.md: "limit 1..=1000; members sorted by client id;
    // `next` is the cursor of the next page".
    for limit in [1, 2, 3] {
        for (name, server) in [("A", &a), ("B", &b)] {
            let (paged, sizes) = all_pages(server, TOPIC, limit).await;
            assert!(
                sizes.iter().all(|&n| n <= limit),
                "GET /presence&limit={limit} on {name}: pages of {sizes:?}"
            );
            assert_eq!(
                sorted(paged),
                all,
                "GET /presence&limit={limit} on {name}: pages of {sizes:?} do not list every member once"
            );
        }
    }
}

/// Waits (up to [`WAIT`]) until `nodes` nodes are registered in
/// `ringcast:presence-nodes` (broker/redis/presence.rs: the nodes that
/// refresh their members).
async fn wait_presence_nodes(port: u16, nodes: u64) -> Duration {
    let start = Instant::now();
    loop {
        let n = redis_cli(port, &["ZCARD", "ringcast:presence-nodes"]).await;
        if n.as_deref().and_then(|n| n.parse::<u64>().ok()) == Some(nodes) {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "{nodes} presence nodes: {n:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_nodes_50_members_leave_once_within_the_ttl_and_one_refresh() {
    sigkill_a_node_of_50_members(true).await;
}

/// The same, with the node killed as soon as its 50 members joined
/// (well under a second after it started), without waiting for it to
/// appear in `ringcast:presence-nodes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sigkilled_right_after_start_has_its_members_reaped_too() {
    sigkill_a_node_of_50_members(false).await;
}

async fn sigkill_a_node_of_50_members(registered: bool) {
    const N: usize = 50;
    let ttl = Duration::from_secs(3);
    let redis = RedisStandalone::start().await;
    let hooks = HookReceiver::start(0).await;
    let extra = [
        "--presence-ttl",
        "3s",
        "--hook-url",
        &hooks.url,
        "--hooks",
        "presence",
    ];
    let (a, b) = (node(&redis, &extra), node(&redis, &extra));
    let mut observer = v1(&a, None).await;
    subscribe_join_leave(&mut observer, TOPIC).await;
    wait_clients(&a, TOPIC, 1, WAIT).await;
    wait_channel_nodes(redis.redis.port, TOPIC, 1).await;
    let on_b = members(&b, TOPIC, N).await;
    let joined = anonymous_joins(&mut observer, N).await;
    let joined: BTreeSet<String> = joined.into_iter().collect();
    assert_eq!(joined.len(), N, "each member joined once");
    assert_eq!(
        stats(&a, TOPIC).await,
        json!({"clients": N + 1, "users": 0})
    );
    // B's hook sender has delivered its members' joins (the observer's
    // and the 50): what comes later comes from A.
    let is_join = |e: &Value| e["event"] == "join";
    hooks
        .wait_until("presence", WAIT, |events| {
            events.iter().filter(|e| is_join(e)).count() == N + 1
        })
        .await;

    if registered {
        let took = wait_presence_nodes(redis.redis.port, 2).await;
        eprintln!("both nodes in ringcast:presence-nodes after {took:?} more");
    }
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    let limit = ttl + ttl / 3;
    // Bounded, polled every 20 ms: the expiry, the leaves and the hook
    // are measured at once.
    let counted = async {
        let start = Instant::now();
        loop {
            if stats(&a, TOPIC).await["clients"] == 1 || start.elapsed() > limit + WAIT {
                break start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let pushed = async {
        // Every event until the N leaves, or the bound: asserted below,
        // with the stats and the webhook measured meanwhile.
        let mut events: Vec<Value> = Vec::new();
        let deadline = tokio::time::Instant::now() + limit + WAIT;
        while events.len() < N {
            match tokio::time::timeout_at(deadline, observer.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    events.push(serde_json::from_str(&text).unwrap());
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("the observer got {other:?}"),
                Err(_) => break,
            }
        }
        (events, killed.elapsed())
    };
    let posted = async {
        let events = hooks
            .settle("presence", limit + WAIT, |events| {
                events.iter().filter(|e| e["event"] == "leave").count() >= N
            })
            .await;
        (events, killed.elapsed())
    };
    let (counted, (pushed_events, pushed), (events, posted)) =
        tokio::join!(counted, pushed, posted);
    eprintln!(
        "SIGKILL of a node with {N} members, --presence-ttl 3s: survivor's /presence_stats \
         dropped them after {counted:?}; the {N} leaves reached the observer after {pushed:?}; \
         the presence webhook had them after {posted:?}"
    );
    drop(on_b);
    let port = redis.redis.port;
    eprintln!(
        "after the kill: Redis TIME {:?}; presence-nodes {:?}; keys {:?}",
        redis_cli(port, &["TIME"]).await,
        redis_cli(
            port,
            &["ZRANGE", "ringcast:presence-nodes", "0", "-1", "WITHSCORES"]
        )
        .await,
        redis_cli(port, &["KEYS", "ringcast:presence*"]).await,
    );
    let hooked_leaves = events.iter().filter(|e| e["event"] == "leave").count();
    assert_eq!(
        (pushed_events.len(), hooked_leaves),
        (N, N),
        "leaves after the kill: pushed to the observer {:?} (in {pushed:?}); to the webhook \
         (in {posted:?}) {hooked_leaves}",
        pushed_events
    );
    assert!(
        counted <= limit,
        "the survivor still counted the dead node's members {counted:?} after the kill \
         (ttl {ttl:?} + one refresh = {limit:?})"
    );
    assert_eq!(
        pushed_events.len(),
        N,
        "the observer on the survivor got {} events in {pushed:?}: {pushed_events:?}",
        pushed_events.len()
    );
    let left: Vec<String> = pushed_events
        .iter()
        .map(|event| {
            let client = event["client"].as_str().unwrap_or_default().to_owned();
            assert_eq!(
                *event,
                json!({"op": "leave", "topic": TOPIC, "client": client, "user": null, "last": true})
            );
            client
        })
        .collect();
    let left_set: BTreeSet<String> = left.iter().cloned().collect();
    assert_eq!(left.len(), left_set.len(), "a leave twice: {left:?}");
    assert_eq!(left_set, joined, "the leaves are the dead node's members");
    assert_eq!(stats(&a, TOPIC).await, json!({"clients": 1, "users": 0}));
    let (status, page) = get_json(&a, &format!("/presence?topic={TOPIC}")).await;
    assert_eq!(status, 200);
    assert_eq!(page["clients"].as_array().unwrap().len(), 1, "{page}");

    // A later join on A is the observer's next event (no late duplicate
    // leave), and the webhook's next event after the leaves.
    let mut later = v1(&a, None).await;
    subscribe_v1(&mut later, TOPIC, None).await;
    let later_id = expect_join(&mut observer, Value::Null, Value::Null, true).await;
    let events_now = hooks
        .wait_for(
            "presence",
            is(json!({"event": "join", "topic": TOPIC, "client": later_id, "user": null, "info": null})),
        )
        .await;
    assert!(events.len() <= events_now.len());
    let leaves: Vec<&Value> = events_now
        .iter()
        .filter(|e| e["event"] == "leave")
        .collect();
    let hooked: BTreeSet<String> = leaves
        .iter()
        .map(|e| {
            assert_eq!(
                **e,
                json!({"event": "leave", "topic": TOPIC, "client": e["client"], "user": null, "info": null})
            );
            e["client"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        leaves.len(),
        N,
        "the webhook got {} leaves, not one each",
        leaves.len()
    );
    assert_eq!(
        hooked, joined,
        "the webhook's leaves are the dead node's members"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_removes_its_members_at_once_not_after_the_ttl() {
    const N: usize = 20;
    let redis = RedisStandalone::start().await;
    let extra = ["--presence-ttl", "30s"];
    let (a, b) = (node(&redis, &extra), node(&redis, &extra));
    let mut observer = v1(&a, None).await;
    subscribe_join_leave(&mut observer, TOPIC).await;
    wait_clients(&a, TOPIC, 1, WAIT).await;
    wait_channel_nodes(redis.redis.port, TOPIC, 1).await;
    let mut on_b = members(&b, TOPIC, N).await;
    let joined: BTreeSet<String> = anonymous_joins(&mut observer, N)
        .await
        .into_iter()
        .collect();

    let (status, body) = b.post("/drain?period=1s", "text/plain", "").await;
    assert_eq!(status, 202, "{body}");
    let drained = Instant::now();
    let counted = wait_clients(&a, TOPIC, 1, Duration::from_secs(5)).await;
    let left: BTreeSet<String> = anonymous_leaves(&mut observer, N)
        .await
        .into_iter()
        .collect();
    let pushed = drained.elapsed();
    eprintln!(
        "POST /drain?period=1s of a node with {N} members (--presence-ttl 30s): the other \
         node's stats dropped them after {counted:?}, the observer had the {N} leaves after {pushed:?}"
    );
    assert_eq!(left, joined);
    for ws in &mut on_b {
        expect_close(ws, 1001).await;
    }
    b.exit_within(WAIT).await;
    assert_eq!(stats(&a, TOPIC).await, json!({"clients": 1, "users": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_unavailable_and_members_are_registered_again_after() {
    let ttl = Duration::from_secs(3);
    let mut redis = RedisStandalone::start().await;
    let extra = ["--presence-ttl", "3s"];
    let (a, b) = (node(&redis, &extra), node(&redis, &extra));
    let mut asker = v1(&a, None).await;
    subscribe_v1(&mut asker, TOPIC, None).await;
    let mut on_a = members(&a, TOPIC, 2).await;
    let mut on_b = members(&b, TOPIC, 5).await;
    wait_clients(&a, TOPIC, 8, WAIT).await;
    wait_clients(&b, TOPIC, 8, WAIT).await;

    redis.redis.sigkill();
    let killed = Instant::now();
    assert_eq!(
        presence_op(&mut asker, TOPIC).await,
        json!({"op": "error", "topic": TOPIC, "reason": "broker unavailable"})
    );
    assert_eq!(
        presence_stats_op(&mut asker, TOPIC).await,
        json!({"op": "error", "topic": TOPIC, "reason": "broker unavailable"})
    );
    for (name, server) in [("A", &a), ("B", &b)] {
        for path in ["/presence", "/presence_stats"] {
            let (status, body) = server.get(&format!("{path}?topic={TOPIC}")).await;
            assert_eq!(status, 503, "{path} on {name} with Redis down: {body}");
        }
    }
    let answered = killed.elapsed();
    // Meanwhile membership changes on the nodes: one leaves on B, one
    // joins on A; the nodes keep tracking them.
    let gone = on_b.pop().unwrap();
    drop(gone);
    let mut joiner = v1(&a, None).await;
    subscribe_v1(&mut joiner, TOPIC, None).await;
    on_a.push(joiner);
    // The close is done on B once it counts it closed.
    b.wait_for_stat("closed", 1).await;

    redis.restart().await;
    let restarted = Instant::now();
    let limit = ttl / 3 + Duration::from_secs(5) + Duration::from_secs(5);
    let (back_a, back_b) = tokio::join!(
        wait_clients(&a, TOPIC, 8, limit),
        wait_clients(&b, TOPIC, 8, limit)
    );
    eprintln!(
        "Redis SIGKILLed: the presence op and the API answered unavailable within {answered:?}; \
         after redis-server restarted (outage {:?}), stats were back to 8 on A after {back_a:?}, \
         on B after {back_b:?} (bound {limit:?}: ttl/3 + 5 s reconnect backoff + 5 s)",
        restarted - killed
    );
    // Exactly the members the nodes hold now.
    let (status, page) = get_json(&a, &format!("/presence?topic={TOPIC}")).await;
    assert_eq!(status, 200, "{page}");
    let listed = page["clients"].as_array().unwrap().clone();
    let ids: BTreeSet<String> = listed
        .iter()
        .map(|m| m["client"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 8, "{page}");
    assert_eq!(stats(&b, TOPIC).await, json!({"clients": 8, "users": 0}));
    let answer = presence_op(&mut asker, TOPIC).await;
    assert_eq!(answer["op"], "presence", "{answer}");
    assert_eq!(answer["clients"].as_array().unwrap().len(), 8, "{answer}");
    // And they are live: one more leave on A is counted on B.
    drop(on_a.pop());
    wait_clients(&b, TOPIC, 7, WAIT).await;
}

/// A subscriber of a marker topic `name` on `server`, once the channels
/// hook got its `occupied`: each node sends its hook events in order, so
/// that node's events of the steps before are in.
async fn marker(hooks: &HookReceiver, server: &Server, name: &str) -> Ws {
    let mut ws = v1(server, None).await;
    subscribe_v1(&mut ws, name, None).await;
    let occupied = json!({"event": "occupied", "topic": name});
    hooks.wait_for("channels", is(occupied)).await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_webhook_says_occupied_and_vacated_once_per_cluster() {
    let ttl = Duration::from_secs(3);
    let redis = RedisStandalone::start().await;
    let hooks = HookReceiver::start(0).await;
    let extra = [
        "--presence-ttl",
        "3s",
        "--hook-url",
        &hooks.url,
        "--hooks",
        "channels",
    ];
    let (a, b) = (node(&redis, &extra), node(&redis, &extra));
    let occupied = |topic: &str| json!({"event": "occupied", "topic": topic});
    let vacated = |topic: &str| json!({"event": "vacated", "topic": topic});
    let count = |events: &[Value], event: &Value| events.iter().filter(|e| *e == event).count();
    let mut markers = Vec::new();

    // room.9 (with presence) and news (without): first subscriber on A,
    // then one on B: one occupied each.
    let mut first = Vec::new();
    for topic in ["room.9", "news"] {
        let mut ws = v1(&a, None).await;
        subscribe_v1(&mut ws, topic, None).await;
        hooks.wait_for("channels", is(occupied(topic))).await;
        first.push(ws);
    }
    wait_channel_nodes(redis.redis.port, "news", 1).await;
    let mut second = Vec::new();
    for topic in ["room.9", "news"] {
        let mut ws = v1(&b, None).await;
        subscribe_v1(&mut ws, topic, None).await;
        second.push(ws);
    }
    wait_channel_nodes(redis.redis.port, "news", 2).await;
    wait_clients(&a, "room.9", 2, WAIT).await;
    markers.push(marker(&hooks, &b, "marker.b1").await);
    markers.push(marker(&hooks, &a, "marker.a1").await);
    let events = hooks.events("channels");
    for topic in ["room.9", "news"] {
        assert_eq!(
            count(&events, &occupied(topic)),
            1,
            "{topic}: one occupied per cluster: {events:?}"
        );
        assert_eq!(count(&events, &vacated(topic)), 0, "{events:?}");
    }
    // The first subscribers (on A) let go: the topics are still held on
    // B, nothing is said; then B's let go: one vacated each.
    drop(first);
    wait_clients(&a, "room.9", 1, WAIT).await;
    wait_channel_nodes(redis.redis.port, "news", 1).await;
    markers.push(marker(&hooks, &a, "marker.a2").await);
    let events = hooks.events("channels");
    for topic in ["room.9", "news"] {
        assert_eq!(
            count(&events, &vacated(topic)),
            0,
            "{topic} is still held on B: {events:?}"
        );
    }
    drop(second);
    for topic in ["room.9", "news"] {
        hooks.wait_for("channels", is(vacated(topic))).await;
    }
    markers.push(marker(&hooks, &b, "marker.b2").await);
    markers.push(marker(&hooks, &a, "marker.a3").await);
    let events = hooks.events("channels");
    for topic in ["room.9", "news"] {
        assert_eq!(
            (
                count(&events, &occupied(topic)),
                count(&events, &vacated(topic))
            ),
            (1, 1),
            "{topic}: once per cluster: {events:?}"
        );
    }

    // A topic held only by a node that is SIGKILLed is vacated once, by
    // the survivor, within the ttl and one refresh.
    let mut on_b = Vec::new();
    for _ in 0..3 {
        let mut ws = v1(&b, None).await;
        subscribe_v1(&mut ws, "room.8", None).await;
        on_b.push(ws);
    }
    hooks.wait_for("channels", is(occupied("room.8"))).await;
    wait_clients(&a, "room.8", 3, WAIT).await;
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    let events = hooks
        .wait_until("channels", ttl + ttl / 3 + WAIT, |events| {
            events.contains(&vacated("room.8"))
        })
        .await;
    let after = killed.elapsed();
    eprintln!("room.8, held only by a SIGKILLed node: vacated after {after:?}");
    markers.push(marker(&hooks, &a, "marker.a4").await);
    let events_now = hooks.events("channels");
    assert!(events.len() <= events_now.len());
    assert_eq!(count(&events_now, &vacated("room.8")), 1, "{events_now:?}");
    // Plus the webhook's batching (up to 100 ms) and its request.
    let batching = Duration::from_millis(500);
    assert!(after <= ttl + ttl / 3 + batching, "vacated after {after:?}");
    drop(on_b);
}
