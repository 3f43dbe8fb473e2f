//! Several nodes over Redis (`--broker`): Debian's redis-server on free
//! loopback ports (`--save '' --appendonly no`), started by each test,
//! and real WebSocket clients on every node.

mod common;

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server of our own; killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    /// For one that speaks only TLS: the directory of its certificates
    /// (`ca.pem` signs `server.pem`, for 127.0.0.1).
    tls: Option<std::path::PathBuf>,
}

impl Redis {
    /// Starts one on a free loopback port and waits until it answers.
    async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (again, after [`Redis::kill`]).
    async fn start_on(port: u16) -> Self {
        Self::spawn(port, None).await
    }

    /// Starts one that takes only TLS connections, on a free port, with a
    /// CA and a server certificate for 127.0.0.1 made here by `openssl`.
    async fn start_tls() -> Self {
        let dir = scratch_dir("redis-tls");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=ringcast test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        Self::spawn(free_port(), Some(dir)).await
    }

    async fn spawn(port: u16, tls: Option<std::path::PathBuf>) -> Self {
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &tls {
            None => command.args(["--port", &port.to_string()]),
            Some(dir) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem")),
        };
        let child = command
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/install-test-deps.sh");
        let redis = Self {
            child: Some(child),
            port,
            tls,
        };
        let deadline = Instant::now() + WAIT;
        while redis.try_command(&["PING"]).await.as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis-cli` output for `args`, or `None` when it fails.
    async fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut command = tokio::process::Command::new("redis-cli");
        if let Some(dir) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(dir.join("ca.pem"));
        }
        let output = command
            .args(["-p", &self.port.to_string(), "--no-raw"])
            .args(args)
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success() && !text.starts_with("Could not connect"))
            .then(|| text.trim_matches('"').to_owned())
    }

    /// Subscribers (nodes) of a channel, from `PUBSUB NUMSUB`.
    async fn subscribers(&self, channel: &str) -> u64 {
        let text = self.try_command(&["PUBSUB", "NUMSUB", channel]).await;
        let text = text.expect("PUBSUB NUMSUB");
        text.lines()
            .last()
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits until `nodes` nodes subscribe to topic `topic`'s channel.
    async fn wait_nodes(&self, topic: &str, nodes: u64) {
        let channel = format!("ringcast:topic:{topic}");
        let deadline = Instant::now() + WAIT;
        while self.subscribers(&channel).await != nodes {
            assert!(
                Instant::now() < deadline,
                "{channel} never had {nodes} nodes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Channels matching `pattern` that some node subscribes to.
    async fn channels(&self, pattern: &str) -> usize {
        let text = self
            .try_command(&["--raw", "PUBSUB", "CHANNELS", pattern])
            .await;
        text.unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node over `brokers`, with 2 workers and history on `h.*`.
fn node(brokers: &[&Redis], extra: &[&str]) -> Server {
    let mut args = vec!["--workers", "2", "--history", "h.*=1000/10m"];
    let urls: Vec<String> = brokers.iter().map(|r| r.url()).collect();
    for url in &urls {
        args.extend(["--broker", url]);
    }
    args.extend(extra);
    Server::start(&args)
}

/// Publishes text; returns the status and the JSON reply.
async fn publish(server: &Server, query: &str, text: &str) -> (u16, Value) {
    let (status, body) = server
        .post(&format!("/publish?{query}"), "text/plain", text.to_owned())
        .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn healthz(server: &Server) -> Value {
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

async fn wait_broker_state(server: &Server, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(server).await["broker"]["state"] != state {
        assert!(Instant::now() < deadline, "broker never {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_one_node_reaches_every_node_once_in_order() {
    let redis = Redis::start().await;
    let nodes = [
        node(&[&redis], &[]),
        node(&[&redis], &[]),
        node(&[&redis], &[]),
    ];
    // On each node: 4 raw subscribers of `news` and 4 ringcast.v1
    // subscribers of `h.feed`, spread over its 2 workers.
    let mut raw = Vec::new();
    let mut v1 = Vec::new();
    for server in &nodes {
        for _ in 0..4 {
            raw.push(connect(&server.url("/ws?topic=news")).await);
            let mut ws = connect_v1(&server.url("/ws")).await;
            let at = subscribe_v1(&mut ws, "h.feed", None).await;
            assert_eq!(at["offset"], 0, "{at}");
            v1.push((ws, at["epoch"].as_str().unwrap().to_owned()));
        }
        let per_worker = server.stats().await["worker_connections"].clone();
        assert!(per_worker
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() > Some(0)));
    }
    assert!(
        v1.iter().all(|(_, e)| *e == v1[0].1),
        "one epoch on every node"
    );
    redis.wait_nodes("news", 3).await;
    redis.wait_nodes("h.feed", 3).await;
    for i in 1..=20 {
        let (status, reply) = publish(&nodes[0], "topic=news&topic=h.feed", &format!("m{i}")).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply, json!({"nodes": 3, "offsets": {"h.feed": i}}));
    }
    // Straight into Redis, in the documented channel format.
    let published = redis
        .try_command(&[
            "PUBLISH",
            "ringcast:topic:news",
            "{\"content\":\"text\"}\nfrom redis-cli",
        ])
        .await;
    assert_eq!(published.as_deref(), Some("(integer) 3"));
    for ws in &mut raw {
        for i in 1..=20 {
            assert_eq!(next_text(ws).await, format!("m{i}"));
        }
        assert_eq!(next_text(ws).await, "from redis-cli");
    }
    for (ws, epoch) in &mut v1 {
        for i in 1..=20 {
            let m = next_json(ws).await;
            let want = json!({"op": "message", "topic": "h.feed", "offset": i, "epoch": epoch, "data": format!("m{i}")});
            assert_eq!(m, want);
        }
    }
    // A publish no node subscribes to still gets its offset.
    let (status, reply) = publish(&nodes[1], "topic=h.nobody", "x").await;
    assert_eq!(
        (status, reply),
        (200, json!({"nodes": 0, "offsets": {"h.nobody": 1}}))
    );
    // GET /history on any node reads the stream.
    let (status, body) = nodes[2].get("/history?topic=h.feed&since=18").await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["offset"], 20);
    assert_eq!(page["first"], 1);
    assert_eq!(
        page["messages"],
        json!([{"offset": 19, "data": "m19"}, {"offset": 20, "data": "m20"}])
    );
    // Each node received each message once from Redis.
    let scrape = nodes[1].metrics().await;
    assert_eq!(
        metric(&scrape, "ringcast_broker_messages_received_total", &[]),
        41.0
    );
    assert_eq!(
        metric(&scrape, "ringcast_broker_up", &[("shard", "0")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moved_to_another_node_recovers_exactly_what_it_missed() {
    let redis = Redis::start().await;
    let (a, b, c) = (
        node(&[&redis], &[]),
        node(&[&redis], &[]),
        node(&[&redis], &[]),
    );
    let mut ws = connect_v1(&a.url("/ws")).await;
    let epoch = subscribe_v1(&mut ws, "h.chat", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=5 {
        assert_eq!(publish(&b, "topic=h.chat", &format!("m{i}")).await.0, 200);
    }
    for i in 1..=5 {
        assert_eq!(next_json(&mut ws).await["offset"], i);
    }
    drop(ws);
    for i in 6..=15 {
        assert_eq!(publish(&b, "topic=h.chat", &format!("m{i}")).await.0, 200);
    }
    // Resume on node C, while publishes keep coming through node B.
    let mut ws = connect_v1(&c.url("/ws")).await;
    let publisher = tokio::spawn(async move {
        for i in 16..=40 {
            assert_eq!(publish(&b, "topic=h.chat", &format!("m{i}")).await.0, 200);
        }
        b
    });
    let reply = subscribe_v1(&mut ws, "h.chat", Some((5, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch.as_str());
    for i in 6..=40 {
        let m = next_json(&mut ws).await;
        assert_eq!(
            (&m["offset"], &m["data"]),
            (&json!(i), &json!(format!("m{i}"))),
            "gap or duplicate"
        );
    }
    publisher.await.unwrap();
    // Too old (trimmed) or another epoch: recovered false.
    let mut other = connect_v1(&a.url("/ws")).await;
    let reply = subscribe_v1(&mut other, "h.chat", Some((3, "XXXXXXXX"))).await;
    assert_eq!(
        (&reply["recovered"], &reply["offset"]),
        (&json!(false), &json!(40))
    );
}

/// `rediss://`: two nodes reach a TLS-only Redis, trusting its CA from
/// `--broker-ca-file`, and a publish on one reaches a subscriber on the
/// other; a node that does not trust the CA cannot reach it (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_tls_redis_with_rediss_urls() {
    let redis = Redis::start_tls().await;
    let ca = redis.tls.as_ref().unwrap().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let a = node(&[&redis], &["--broker-ca-file", ca]);
    let b = node(&[&redis], &["--broker-ca-file", ca]);
    wait_broker_state(&a, "up").await;
    let mut ws = connect_v1(&b.url("/ws")).await;
    subscribe_v1(&mut ws, "h.tls", None).await;
    let (status, reply) = publish(&a, "topic=h.tls", "over tls").await;
    assert_eq!(
        (status, &reply["offsets"]["h.tls"]),
        (200, &json!(1)),
        "{reply}"
    );
    let m = next_json(&mut ws).await;
    assert_eq!((&m["data"], &m["offset"]), (&json!("over tls"), &json!(1)));
    // Without the CA, the system's store does not know it: never up.
    let untrusting = node(&[&redis], &[]);
    assert_eq!(publish(&untrusting, "topic=h.tls", "refused").await.0, 503);
    assert_eq!(healthz(&untrusting).await["broker"]["state"], "down");
}

/// A `ringcast.v1` client publish on node A takes the broker's path like
/// `POST /publish`: a subscriber on node B gets it with the stream's
/// offset, and the sender's `published` carries the same offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publish_on_one_node_reaches_subscribers_on_another() {
    let redis = Redis::start().await;
    let a = node(&[&redis], &["--client-publish", "h.*"]);
    let b = node(&[&redis], &[]);
    let mut subscriber = connect_v1(&b.url("/ws")).await;
    subscribe_v1(&mut subscriber, "h.room", None).await;
    let mut sender = connect_v1(&a.url("/ws")).await;
    for i in 1..=3 {
        let op = json!({"op": "publish", "topic": "h.room", "data": {"n": i}, "id": i});
        send_json(&mut sender, op).await;
        assert_eq!(
            next_json(&mut sender).await,
            json!({"op": "published", "id": i, "offset": i})
        );
    }
    for i in 1..=3 {
        let m = next_json(&mut subscriber).await;
        assert_eq!(
            (&m["op"], &m["topic"], &m["offset"], &m["data"]),
            (
                &json!("message"),
                &json!("h.room"),
                &json!(i),
                &json!({"n": i})
            ),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_publishes_and_disconnects_reach_a_user_on_two_nodes() {
    let dir = scratch_dir("cluster-auth");
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let redis = Redis::start().await;
    let auth = ["--jwt-hmac-secret-file", secret.to_str().unwrap()];
    let (a, b) = (node(&[&redis], &auth), node(&[&redis], &auth));
    let claims = |sub: &str| json!({"sub": sub, "exp": unix_now() + 600});
    let specs: Vec<Value> = ["42", "7"]
        .iter()
        .map(|s| json!({"alg": "HS256", "key": secret.to_str().unwrap(), "claims": claims(s)}))
        .collect();
    let tokens = mint(&json!(specs));
    let mut on_a = connect_bearer(&a.url("/ws"), &tokens[0]).await;
    let mut on_b = connect_bearer(&b.url("/ws"), &tokens[0]).await;
    let mut other = connect_bearer(&b.url("/ws"), &tokens[1]).await;
    let (status, reply) = publish(&a, "user=42", "for 42").await;
    assert_eq!((status, &reply["nodes"]), (200, &json!(2)), "{reply}");
    assert_eq!(next_text(&mut on_a).await, "for 42");
    assert_eq!(next_text(&mut on_b).await, "for 42");
    let (status, body) = b
        .post("/disconnect?user=42&code=4000", "text/plain", "")
        .await;
    assert_eq!(status, 200, "{body}");
    expect_close(&mut on_a, 4000).await;
    expect_close(&mut on_b, 4000).await;
    // The other user saw nothing and is still connected.
    publish(&a, "user=7", "for 7").await;
    assert_eq!(next_text(&mut other).await, "for 7");
    let (status, _) = a.post("/broadcast", "text/plain", "to all").await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut other).await, "to all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_gives_503_then_resync_and_a_new_epoch() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let (a, b) = (node(&[&redis], &[]), node(&[&redis], &[]));
    wait_broker_state(&a, "up").await;
    let mut ws = connect_v1(&b.url("/ws")).await;
    let epoch = subscribe_v1(&mut ws, "h.live", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut raw = connect(&b.url("/ws?topic=plain")).await;
    redis.wait_nodes("plain", 1).await;
    for i in 1..=3 {
        assert_eq!(publish(&a, "topic=h.live", &format!("m{i}")).await.0, 200);
    }
    for i in 1..=3 {
        assert_eq!(next_json(&mut ws).await["offset"], i);
    }

    redis.kill();
    wait_broker_state(&a, "down").await;
    let (status, reply) = publish(&a, "topic=h.live", "lost").await;
    assert_eq!(status, 503, "{reply}");
    let scrape = a.metrics().await;
    assert_eq!(
        metric(&scrape, "ringcast_broker_up", &[("shard", "0")]),
        0.0
    );
    assert_eq!(
        a.get("/readyz").await.0,
        200,
        "connections are still served"
    );
    // Established connections stay: they still answer control ops.
    send_json(&mut raw, json!({"op": "subscribe", "topic": "other"})).await;
    assert_eq!(
        next_text(&mut raw).await,
        r#"{"op":"subscribed","topic":"other"}"#
    );

    let redis = Redis::start_on(port).await;
    wait_broker_state(&b, "up").await;
    // The stream data was lost with Redis: the node tells its client to
    // resume, and the resume finds a new epoch.
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "resync", "topic": "h.live"})
    );
    send_json(&mut ws, json!({"op": "unsubscribe", "topic": "h.live"})).await;
    assert_eq!(next_json(&mut ws).await["op"], "unsubscribed");
    let reply = subscribe_v1(&mut ws, "h.live", Some((3, &epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 0);
    let new_epoch = reply["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch);
    let scrape = b.metrics().await;
    assert!(metric(&scrape, "ringcast_broker_resubscribed_total", &[]) >= 2.0);
    redis.wait_nodes("plain", 1).await;
    wait_broker_state(&a, "up").await;
    let (status, reply) = publish(&a, "topic=h.live&topic=plain", "back").await;
    assert_eq!(
        (status, &reply["offsets"]["h.live"]),
        (200, &json!(1)),
        "{reply}"
    );
    let m = next_json(&mut ws).await;
    assert_eq!(
        (&m["offset"], &m["epoch"], &m["data"]),
        (&json!(1), &json!(new_epoch), &json!("back"))
    );
    assert_eq!(next_text(&mut raw).await, "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_topics_shard_over_two_instances_and_all_deliver() {
    let (r1, r2) = (Redis::start().await, Redis::start().await);
    let (a, b) = (node(&[&r1, &r2], &[]), node(&[&r1, &r2], &[]));
    let topics: Vec<String> = (0..1000).map(|i| format!("s.{i}")).collect();
    // 16 clients on node B, each on up to 63 topics.
    let mut clients = Vec::new();
    for chunk in topics.chunks(63) {
        let mut ws = connect(&b.url("/ws")).await;
        for topic in chunk {
            subscribe(&mut ws, topic).await;
        }
        clients.push((ws, chunk.to_vec()));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let (n1, n2) = (
            r1.channels("ringcast:topic:*").await,
            r2.channels("ringcast:topic:*").await,
        );
        if n1 + n2 == 1000 {
            assert!(
                n1 > 300 && n2 > 300,
                "both instances carry topics: {n1} + {n2}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n1} + {n2} channels subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for topic in &topics {
        let (status, reply) = publish(&a, &format!("topic={topic}"), topic).await;
        assert_eq!(
            (status, &reply["nodes"]),
            (200, &json!(1)),
            "{topic}: {reply}"
        );
    }
    // Order holds per topic; topics on different instances arrive
    // through different connections.
    let checks = clients.into_iter().map(|(mut ws, chunk)| async move {
        let mut got = Vec::with_capacity(chunk.len());
        for _ in &chunk {
            got.push(next_text(&mut ws).await);
        }
        got.sort();
        let mut want = chunk;
        want.sort();
        assert_eq!(got, want, "every topic delivered once");
    });
    join_all(checks).await;
    let health = healthz(&a).await;
    assert_eq!(health["broker"]["state"], "up");
    assert_eq!(health["broker"]["brokers"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn hostile_messages_on_the_channels_are_dropped() {
    let redis = Redis::start().await;
    let server = node(&[&redis], &[]);
    let mut ws = connect(&server.url("/ws?topic=t")).await;
    redis.wait_nodes("t", 1).await;
    for bad in [
        "no header",
        "{\"content\":\"json\"}\nnot json",
        "{\"content\":\"x\"}\n1",
    ] {
        redis
            .try_command(&["PUBLISH", "ringcast:topic:t", bad])
            .await
            .unwrap();
    }
    redis
        .try_command(&[
            "PUBLISH",
            "ringcast:node",
            "{\"op\":\"disconnect\",\"users\":[\"\"],\"code\":1,\"reason\":\"\"}\n",
        ])
        .await
        .unwrap();
    redis
        .try_command(&["PUBLISH", "ringcast:topic:t", "{\"content\":\"text\"}\nok"])
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "ok");
    let scrape = server.metrics().await;
    assert_eq!(
        metric(&scrape, "ringcast_broker_messages_invalid_total", &[]),
        4.0
    );
}

/// A node behind haproxy (see [`node_at`]) over `redis`, that drains
/// within 2 s.
fn drained_node_at(redis: &Redis, ports: (u16, u16)) -> Server {
    node_at(&redis.url(), ports, &["--drain-period", "2s"])
}

/// One `ringcast.v1` client behind haproxy: subscribes to `h.roll`, and
/// after every close reconnects and resubscribes with `since` (which must
/// recover). Returns every `(offset, data)` received, until `end`.
async fn rolling_client(
    front: String,
    subscribed: std::sync::Arc<tokio::sync::Semaphore>,
) -> Vec<(u64, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut got: Vec<(u64, String)> = Vec::new();
    let mut position: Option<(u64, String)> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut ws = connect_front(&front, deadline).await;
        let since = position.as_ref().map(|(o, e)| (*o, e.as_str()));
        let mut op = json!({"op": "subscribe", "topic": "h.roll"});
        if let Some((offset, epoch)) = since {
            op["since"] = json!({"offset": offset, "epoch": epoch});
        }
        if futures_util::SinkExt::send(&mut ws, Message::Text(op.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        loop {
            let message = match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap(),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    assert_eq!(code, Some(1001), "closed other than by a drain");
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                // The drain's close handshake may end in a reset.
                Ok(Some(Err(_)) | None) => break,
                Err(_) => panic!("no message for {WAIT:?}"),
            };
            match message["op"].as_str() {
                Some("subscribed") => {
                    let epoch = message["epoch"].as_str().unwrap().to_owned();
                    match &position {
                        None => {
                            position = Some((message["offset"].as_u64().unwrap(), epoch));
                            subscribed.add_permits(1);
                        }
                        Some((_, e)) => {
                            assert_eq!(message["recovered"], true, "{message}");
                            assert_eq!(*e, epoch);
                        }
                    }
                }
                Some("message") => {
                    let offset = message["offset"].as_u64().unwrap();
                    let data = message["data"].as_str().unwrap().to_owned();
                    position.as_mut().unwrap().0 = offset;
                    got.push((offset, data.clone()));
                    if data == "end" {
                        return got;
                    }
                }
                _ => panic!("unexpected {message}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_under_publishes_loses_and_doubles_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 300;
    let redis = Redis::start().await;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut nodes: Vec<Option<Server>> = ports
        .iter()
        .map(|&p| Some(drained_node_at(&redis, p)))
        .collect();
    let front_port = free_port();
    let _haproxy = haproxy(front_port, &ports);
    let front = format!("ws://127.0.0.1:{front_port}/ws");
    let subscribed = Arc::new(tokio::sync::Semaphore::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(rolling_client(front.clone(), subscribed.clone())))
        .collect();
    let all = tokio::time::timeout(
        Duration::from_secs(60),
        subscribed.acquire_many(CLIENTS as u32),
    );
    all.await.expect("clients subscribed").unwrap().forget();

    // The publisher: a numbered message every 10 ms, to the nodes in turn
    // (the next one when a node is down), until told to stop.
    let apis: Vec<String> = ports
        .iter()
        .map(|(_, api)| format!("http://127.0.0.1:{api}"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (apis, stop) = (apis.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut accepted: Vec<(u64, String)> = Vec::new();
            let (mut refused, mut n) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut next_node = 0;
            loop {
                tick.tick().await;
                let last = stop.load(Ordering::Acquire);
                let text = if last {
                    "end".to_owned()
                } else {
                    format!("n{n}")
                };
                n += 1;
                let mut answered = None;
                for _ in 0..apis.len() {
                    next_node = (next_node + 1) % apis.len();
                    let url = format!("{}/publish?topic=h.roll", apis[next_node]);
                    let request = http
                        .post(url)
                        .header("content-type", "text/plain")
                        .body(text.clone());
                    if let Ok(response) = request.send().await {
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        answered = Some((status, body));
                        break;
                    }
                }
                match answered {
                    Some((200, body)) => {
                        accepted.push((body["offsets"]["h.roll"].as_u64().unwrap(), text));
                        if last {
                            return (accepted, refused);
                        }
                    }
                    Some((503, _)) | None => refused += 1,
                    Some((status, body)) => panic!("publish got {status}: {body}"),
                }
            }
        })
    };

    for (i, &(_, api)) in ports.iter().enumerate() {
        let server = nodes[i].take().unwrap();
        let (status, _) = server.post("/drain", "text/plain", "").await;
        assert_eq!(status, 202);
        assert!(server.exit_within(Duration::from_secs(15)).await.success());
        let restarted = drained_node_at(&redis, ports[i]);
        wait_broker_state(&restarted, "up").await;
        assert_eq!(restarted.api.port(), api);
        nodes[i] = Some(restarted);
    }
    // Every node serves again; one more second of publishes, then the end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let (accepted, refused) = publisher.await.unwrap();
    let last = accepted.last().unwrap().0;
    let mut by_offset = std::collections::BTreeMap::new();
    for (offset, text) in &accepted {
        assert!(
            by_offset.insert(*offset, text.clone()).is_none(),
            "offset {offset} twice"
        );
    }
    let mut received = 0;
    for client in clients {
        let got = client.await.unwrap();
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (1..=last).collect::<Vec<_>>(),
            "lost, doubled or out of order"
        );
        for (offset, data) in &got {
            if let Some(text) = by_offset.get(offset) {
                assert_eq!(text, data, "offset {offset}");
            }
        }
        received += got.len();
    }
    eprintln!(
        "rolling restart: {} publishes accepted, {refused} refused (503 or no node), {received} deliveries checked",
        accepted.len()
    );
}

/// An SSE stream read event by event.
struct Sse {
    raw: Raw,
    buf: String,
    /// The last `id:` the stream gave (what a browser sends back as
    /// `Last-Event-ID`).
    last_id: Option<String>,
    /// Names of the named events seen (`subscribed`, `reset`, …).
    named: Vec<String>,
    /// Messages read while waiting for the first `id:`.
    early: std::collections::VecDeque<Value>,
}

impl Sse {
    /// Opens `GET target` (with `Last-Event-ID` when given) and reads until
    /// the stream gave its first `id:`, which comes once the topic's
    /// position is read.
    async fn open(server: &Server, target: &str, last_event_id: Option<&str>) -> Self {
        let mut raw = Raw::connect(server).await;
        let header = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\n{header}\r\n");
        raw.send(request.as_bytes()).await;
        let head = raw.response_head().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let mut sse = Self {
            raw,
            buf: String::new(),
            last_id: None,
            named: Vec::new(),
            early: Default::default(),
        };
        while sse.last_id.is_none() {
            if let Some(message) = sse.event().await {
                sse.early.push_back(message);
            }
        }
        sse
    }

    /// Reads the next event; returns its data when it is a message.
    async fn event(&mut self) -> Option<Value> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        while !self.buf.contains("\n\n") {
            let n = tokio::time::timeout(WAIT, self.raw.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no event after {:?}", self.buf))
                .unwrap();
            assert!(n > 0, "the stream ended: {:?}", self.buf);
            self.buf.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
        let end = self.buf.find("\n\n").unwrap();
        let event: String = self.buf.drain(..end + 2).collect();
        let mut data = None;
        let mut name = None;
        for line in event.lines() {
            if let Some(id) = line.strip_prefix("id: ") {
                self.last_id = Some(id.to_owned());
            } else if let Some(json) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(json).unwrap());
            } else if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_owned());
            }
        }
        match name {
            Some(name) => {
                self.named.push(name);
                None
            }
            None => data.filter(|d| d["op"] == "message"),
        }
    }

    /// The next message event's data.
    async fn next_message(&mut self) -> Value {
        if let Some(message) = self.early.pop_front() {
            return message;
        }
        loop {
            if let Some(message) = self.event().await {
                return message;
            }
        }
    }
}

/// One long-poll request on a connection of its own: the answer's JSON.
async fn poll_once(server: &Server, query: &str) -> Value {
    let mut raw = Raw::connect(server).await;
    raw.send(poll_request(query).as_bytes()).await;
    poll_answer(&mut raw).await
}

/// A long-poll request for `query`.
fn poll_request(query: &str) -> String {
    format!("GET /poll?{query} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// The next long-poll answer on `raw`: its JSON.
async fn poll_answer(raw: &mut Raw) -> Value {
    use tokio::io::AsyncReadExt;
    let head = raw.response_head().await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    tokio::time::timeout(WAIT, raw.stream.read_exact(&mut body))
        .await
        .expect("the answer's body")
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Polls `server` for `h.p` from `next` (updated to each answer's) until
/// `count` messages came; returns them. A `reset` fails.
async fn poll_until(server: &Server, next: &mut String, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let answer = poll_once(server, &format!("topic=h.p&since={}", urlencode(next))).await;
        assert!(answer.get("reset").is_none(), "{answer}");
        got.extend(answer["messages"].as_array().unwrap().clone());
        *next = answer["next"].as_str().unwrap().to_owned();
    }
    got
}

/// Asserts `m` is message `i` (`m{i}` at offset `i`).
fn assert_message(m: &Value, i: u64) {
    assert_eq!(
        (&m["offset"], &m["data"]),
        (&json!(i), &json!(format!("m{i}"))),
        "gap, duplicate or disorder: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_on_another_node_with_last_event_id() {
    let redis = Redis::start().await;
    let (a, b) = (node(&[&redis], &[]), node(&[&redis], &[]));
    wait_broker_state(&a, "up").await;
    wait_broker_state(&b, "up").await;
    let mut sse = Sse::open(&a, "/sse?topic=h.s", None).await;
    for i in 1..=5 {
        assert_eq!(publish(&b, "topic=h.s", &format!("m{i}")).await.0, 200);
    }
    for i in 1..=5 {
        assert_message(&sse.next_message().await, i);
    }
    let id = sse.last_id.clone().unwrap();
    assert!(id.starts_with("h.s:5:"), "{id}");
    a.signal(libc::SIGKILL);
    for i in 6..=10 {
        assert_eq!(publish(&b, "topic=h.s", &format!("m{i}")).await.0, 200);
    }
    let mut sse = Sse::open(&b, "/sse?topic=h.s", Some(&id)).await;
    for i in 6..=10 {
        assert_message(&sse.next_message().await, i);
    }
    assert_eq!(publish(&b, "topic=h.s", "m11").await.0, 200);
    assert_message(&sse.next_message().await, 11);
    assert_eq!(sse.named, ["subscribed"], "no reset");
    assert!(sse.last_id.unwrap().starts_with("h.s:11:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_client_resumes_on_another_node_with_since() {
    let redis = Redis::start().await;
    let (a, b) = (node(&[&redis], &[]), node(&[&redis], &[]));
    wait_broker_state(&a, "up").await;
    wait_broker_state(&b, "up").await;
    // A first poll learns the topic's position at once.
    let first = poll_once(&a, "topic=h.p").await;
    assert_eq!(first["messages"], json!([]), "{first}");
    let mut next = first["next"].as_str().unwrap().to_owned();
    assert!(next.starts_with("h.p:0:"), "{next}");
    for i in 1..=5 {
        assert_eq!(publish(&b, "topic=h.p", &format!("m{i}")).await.0, 200);
    }
    // Node A reads them from the broker, not from its own hub.
    let got = poll_until(&a, &mut next, 5).await;
    for (i, m) in (1..).zip(&got) {
        assert_message(m, i);
    }
    a.signal(libc::SIGKILL);
    for i in 6..=10 {
        assert_eq!(publish(&b, "topic=h.p", &format!("m{i}")).await.0, 200);
    }
    let mut got = poll_until(&b, &mut next, 5).await;
    // A waiting poll, answered by the next publish.
    let waiting = {
        let query = format!("topic=h.p&since={}", urlencode(&next));
        let b = &b;
        async move { poll_once(b, &query).await }
    };
    let publisher = async {
        redis.wait_nodes("h.p", 1).await;
        assert_eq!(publish(&b, "topic=h.p", "m11").await.0, 200);
    };
    let (answer, ()) = tokio::join!(waiting, publisher);
    got.extend(answer["messages"].as_array().unwrap().clone());
    assert_eq!(got.len(), 6, "{got:?}");
    for (i, m) in (6..).zip(&got) {
        assert_message(m, i);
    }
    assert!(answer["next"].as_str().unwrap().starts_with("h.p:11:"));
}

/// Pipelined polls whose positions the broker reads: the second request
/// waits for the first poll's reads and answer, and both are answered in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_polls_read_from_the_broker_are_answered_in_order() {
    let redis = Redis::start().await;
    let a = node(&[&redis], &[]);
    wait_broker_state(&a, "up").await;
    let mut raw = Raw::connect(&a).await;
    let three = ["h.q1", "h.q2", "h.q3"].map(|t| poll_request(&format!("topic={t}")));
    raw.send(three.concat().as_bytes()).await;
    for topic in ["h.q1", "h.q2", "h.q3"] {
        let answer = poll_answer(&mut raw).await;
        assert_eq!(answer["messages"], json!([]), "{answer}");
        let next = answer["next"].as_str().unwrap();
        assert!(next.starts_with(&format!("{topic}:0:")), "{next}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_resumes_on_another_node_after_its_node_is_killed() {
    let redis = Redis::start().await;
    let (a, b) = (node(&[&redis], &[]), node(&[&redis], &[]));
    wait_broker_state(&a, "up").await;
    wait_broker_state(&b, "up").await;
    let mut ws = connect_v1(&a.url("/ws")).await;
    let epoch = subscribe_v1(&mut ws, "h.v", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=5 {
        assert_eq!(publish(&b, "topic=h.v", &format!("m{i}")).await.0, 200);
    }
    for i in 1..=5 {
        assert_message(&next_json(&mut ws).await, i);
    }
    a.signal(libc::SIGKILL);
    for i in 6..=10 {
        assert_eq!(publish(&b, "topic=h.v", &format!("m{i}")).await.0, 200);
    }
    let mut ws = connect_v1(&b.url("/ws")).await;
    let reply = subscribe_v1(&mut ws, "h.v", Some((5, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for i in 6..=10 {
        assert_message(&next_json(&mut ws).await, i);
    }
    assert_eq!(publish(&b, "topic=h.v", "m11").await.0, 200);
    assert_message(&next_json(&mut ws).await, 11);
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace(';', "%3B")
}
