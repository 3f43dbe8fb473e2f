//! The Redis Cluster broker (issue 24, `--broker redis+cluster://`), with
//! real processes: a Redis Cluster of 3 masters and 3 replicas
//! (`tests/common/redis_ha.rs`), or 1 master, 1 replica and 3 sentinels,
//! and 2 `ringcast serve` nodes, with `ringcast.v1` subscribers over 200
//! topics: cross-node delivery over shard channels only, a master
//! SIGKILLed (cluster and Sentinel) and slots resharded under a publish
//! every 10 ms. Each test prints what it measured (run with
//! `--nocapture`).

mod common;

use common::redis_ha::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

const TOPICS: usize = 200;
/// Connections per node, each on [`PER_CLIENT`] topics: every topic has
/// one subscriber on each node.
const CLIENTS_PER_NODE: usize = 20;
const PER_CLIENT: usize = TOPICS / CLIENTS_PER_NODE;
/// Upper bound for slow phases on a loaded 2-core host.
const SLOW: Duration = Duration::from_secs(60);

fn topics() -> Vec<String> {
    (0..TOPICS).map(|t| format!("h.c{t}")).collect()
}

/// A node over the cluster at `seeds`, history on `h.*`.
fn node(seeds: &str) -> Server {
    node_over(&format!("redis+cluster://{seeds}"))
}

/// A node over the `--broker` URL `broker`, history on `h.*`.
fn node_over(broker: &str) -> Server {
    Server::start(&[
        "--workers",
        "2",
        "--history",
        "h.*=1000/10m",
        "--broker",
        broker,
        "--broker-timeout",
        "1s",
    ])
}

/// Waits (up to [`SLOW`]) until `/healthz` says the broker is up.
async fn broker_up(node: &Server) -> Value {
    let deadline = Instant::now() + SLOW;
    loop {
        let (status, body) = node.get("/healthz").await;
        let health: Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && health["broker"]["state"] == "up" {
            return health["broker"].clone();
        }
        assert!(Instant::now() < deadline, "broker never up: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one subscriber saw, per topic.
#[derive(Default, Debug)]
struct Seen {
    /// The data of every message, in order of arrival.
    got: BTreeMap<String, Vec<String>>,
    /// `resync` hints and `recovered:false` answers.
    told: BTreeMap<String, usize>,
    /// Resumes answered `recovered:true`.
    recovered: usize,
}

/// One `ringcast.v1` connection to `url` on `topics`: it answers a
/// `resync` by resubscribing with `since` (docs/protocol.md), and ends
/// once each topic's fence (from `fences`: data and offset) came, or a
/// subscribe answered at or past the fence's offset.
async fn subscriber(
    url: String,
    topics: Vec<String>,
    ready: Arc<Semaphore>,
    mut fences: watch::Receiver<Option<BTreeMap<String, (String, u64)>>>,
) -> Seen {
    let mut ws = connect_v1(&url).await;
    let mut seen = Seen::default();
    let mut position: HashMap<String, (u64, String)> = HashMap::new();
    let mut fenced: BTreeSet<String> = BTreeSet::new();
    for topic in &topics {
        send_json(&mut ws, json!({"op": "subscribe", "topic": topic})).await;
    }
    loop {
        if let Some(fences) = fences.borrow().as_ref() {
            for topic in &topics {
                let (data, offset) = &fences[topic];
                let got = seen.got.get(topic).is_some_and(|g| g.contains(data));
                let past = position.get(topic).is_some_and(|(o, _)| o >= offset);
                if got || (past && seen.told.contains_key(topic)) {
                    fenced.insert(topic.clone());
                }
            }
        }
        if fenced.len() == topics.len() {
            return seen;
        }
        let next = tokio::select! {
            next = ws.next() => next,
            _ = fences.changed() => continue,
            _ = tokio::time::sleep(SLOW) => panic!("subscriber silent for {SLOW:?}: {seen:?}"),
        };
        let message: Value = match next {
            Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection lost: {other:?}"),
        };
        let topic = message["topic"].as_str().unwrap_or_default().to_owned();
        match message["op"].as_str() {
            Some("subscribed") => {
                let at = (
                    message["offset"].as_u64().unwrap_or(0),
                    message["epoch"].as_str().unwrap_or_default().to_owned(),
                );
                match message["recovered"].as_bool() {
                    None if !position.contains_key(&topic) => {
                        seen.got.insert(topic.clone(), Vec::new());
                        if seen.got.len() == topics.len() {
                            ready.add_permits(1);
                        }
                    }
                    Some(true) => seen.recovered += 1,
                    _ => *seen.told.entry(topic.clone()).or_default() += 1,
                }
                position.insert(topic, at);
            }
            Some("message") => {
                let offset = message["offset"].as_u64().expect("an offset");
                let epoch = message["epoch"].as_str().expect("an epoch").to_owned();
                position.insert(topic.clone(), (offset, epoch));
                let data = message["data"].as_str().unwrap_or_default().to_owned();
                seen.got.get_mut(&topic).expect("subscribed").push(data);
            }
            Some("resync") => {
                *seen.told.entry(topic.clone()).or_default() += 1;
                let mut again = json!({"op": "subscribe", "topic": topic});
                if let Some((offset, epoch)) = position.get(&topic).filter(|(_, e)| !e.is_empty()) {
                    again["since"] = json!({"offset": offset, "epoch": epoch});
                }
                let ops = [json!({"op": "unsubscribe", "topic": topic}), again]
                    .map(|op| Ok(Message::Text(op.to_string().into())));
                ws.send_all(&mut futures_util::stream::iter(ops))
                    .await
                    .expect("resubscribe");
            }
            Some("unsubscribed") => {}
            _ => panic!("unexpected: {message}"),
        }
    }
}

/// The subscribers: [`CLIENTS_PER_NODE`] per node, every topic once on
/// each node; returns them once all are subscribed, and the fence
/// sender.
#[allow(clippy::type_complexity)]
async fn subscribers(
    nodes: &[Server],
) -> (
    Vec<(usize, tokio::task::JoinHandle<Seen>)>,
    watch::Sender<Option<BTreeMap<String, (String, u64)>>>,
) {
    let all = topics();
    let ready = Arc::new(Semaphore::new(0));
    let (fence_tx, fence_rx) = watch::channel(None);
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for chunk in all.chunks(PER_CLIENT) {
            let task = tokio::spawn(subscriber(
                node.url("/ws"),
                chunk.to_vec(),
                ready.clone(),
                fence_rx.clone(),
            ));
            tasks.push((n, task));
        }
    }
    let want = (nodes.len() * CLIENTS_PER_NODE) as u32;
    let got = tokio::time::timeout(SLOW, ready.acquire_many(want)).await;
    got.expect("every subscriber subscribed").unwrap().forget();
    (tasks, fence_tx)
}

/// Publishes `data` to `topic` through `node`; the status and offset.
async fn publish(http: &reqwest::Client, node: &Server, topic: &str, data: &str) -> (u16, u64) {
    let url = format!("http://{}/publish?topic={topic}", node.api);
    let request = http.post(url).header("content-type", "text/plain");
    match request.body(data.to_owned()).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body["offsets"][topic].as_u64().unwrap_or(0))
        }
        Err(_) => (0, 0),
    }
}

/// Publishes a fence on every topic (retrying a 503 every 20 ms, within
/// [`SLOW`]) and hands them to the subscribers.
async fn fences(
    nodes: &[Server],
    send: &watch::Sender<Option<BTreeMap<String, (String, u64)>>>,
) -> BTreeMap<String, (String, u64)> {
    let http = reqwest::Client::new();
    let mut fences = BTreeMap::new();
    let deadline = Instant::now() + SLOW;
    for (i, topic) in topics().iter().enumerate() {
        let data = format!("fence{i}");
        loop {
            match publish(&http, &nodes[i % nodes.len()], topic, &data).await {
                (200, offset) => {
                    fences.insert(topic.clone(), (data.clone(), offset));
                    break;
                }
                (503, _) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => panic!("fence on {topic}: {other:?}"),
            };
        }
    }
    send.send(Some(fences.clone())).unwrap();
    fences
}

/// The slot of `topic`'s names (`CLUSTER KEYSLOT` of its hash tag).
async fn slot_of(cluster: &RedisCluster, topic: &str) -> u16 {
    cluster.keyslot(&format!("{{{topic}}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_across_nodes_over_shard_channels_only() {
    let cluster = RedisCluster::start().await;
    // A plain redis:// URL at a cluster node: a one-line startup error.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--broker", &format!("redis://{}", cluster.nodes[0].addr())])
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(SLOW, refused).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("redis+cluster://"), "{stderr}");

    let nodes = [node(&cluster.seeds()), node(&cluster.seeds())];
    for n in &nodes {
        let health = broker_up(n).await;
        assert_eq!(health["mode"], "cluster", "{health}");
        assert_eq!(health["shards"].as_array().unwrap().len(), 3, "{health}");
    }
    let (subs, fence_tx) = subscribers(&nodes).await;
    // Sharding is real: each master holds only its own slots' channels,
    // together every topic's; no plain PUBLISH or SUBSCRIBE was used.
    let view = cluster.topology().await;
    let mut channels = BTreeSet::new();
    for master in view.iter().filter(|n| n.master && !n.slots.is_empty()) {
        let listed = redis_cli(master.port, &["PUBSUB", "SHARDCHANNELS", "ringcast:*"]).await;
        let listed = listed.unwrap_or_default();
        for channel in listed.lines() {
            let slot = cluster.keyslot(channel).await;
            assert!(
                master.owns(slot),
                ":{} lists {channel} (slot {slot})",
                master.port
            );
            channels.insert(channel.to_owned());
        }
        let plain = redis_cli(master.port, &["PUBSUB", "CHANNELS"]).await;
        assert_eq!(plain, None, ":{} has plain channels", master.port);
    }
    let want: BTreeSet<String> = topics()
        .iter()
        .map(|t| format!("ringcast:topic:{{{t}}}"))
        .chain(["ringcast:node".to_owned()])
        .collect();
    assert_eq!(channels, want);
    // Every topic through node A, then a fence on each: every subscriber
    // on both nodes gets both, the data once each.
    let http = reqwest::Client::new();
    for (i, topic) in topics().iter().enumerate() {
        let answer = publish(&http, &nodes[0], topic, &format!("p{i}")).await;
        assert_eq!(answer, (200, 1), "{topic}");
    }
    let fenced = fences(&nodes, &fence_tx).await;
    for (n, task) in subs {
        let seen = tokio::time::timeout(SLOW, task).await.unwrap().unwrap();
        assert!(seen.told.is_empty(), "node {n}: {:?}", seen.told);
        for (topic, got) in &seen.got {
            let i: usize = topic.trim_start_matches("h.c").parse().unwrap();
            assert_eq!(got, &[format!("p{i}"), fenced[topic].0.clone()], "node {n}");
        }
    }

    for master in view.iter().filter(|n| n.master && !n.slots.is_empty()) {
        let stats = redis_cli(master.port, &["INFO", "commandstats"])
            .await
            .unwrap();
        assert!(
            !stats.contains("cmdstat_publish:"),
            ":{}: {stats}",
            master.port
        );
        assert!(
            stats.contains("cmdstat_spublish:"),
            ":{}: {stats}",
            master.port
        );
    }
    eprintln!(
        "redis cluster: {TOPICS} topics x 2 nodes delivered over {} shard channels on 3 masters",
        channels.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_with_sigkill_under_load_loses_nothing_silently() {
    let mut cluster = RedisCluster::start().await;
    let nodes = [node(&cluster.seeds()), node(&cluster.seeds())];
    for n in &nodes {
        broker_up(n).await;
    }
    let (subs, fence_tx) = subscribers(&nodes).await;
    let all = topics();
    // The victim: the master of the first topic's slot.
    let view = cluster.topology().await;
    let slot = slot_of(&cluster, &all[0]).await;
    let victim = view
        .iter()
        .find(|n| n.master && n.owns(slot))
        .unwrap()
        .clone();
    let mut on_victim = BTreeSet::new();
    for topic in &all {
        if victim.owns(slot_of(&cluster, topic).await) {
            on_victim.insert(topic.clone());
        }
    }

    let kill = || cluster.node(victim.port).sigkill();
    let (report, _) = kill_under_load(&nodes, subs, fence_tx, &on_victim, kill).await;
    eprintln!("redis cluster master SIGKILL under a publish every 10 ms: {report}");
}

/// Publishes every 10 ms to the nodes and topics in turn; after 300
/// answered 200, runs `kill`; stops 500 answered 200 after it, then
/// fences. Checks that every subscriber got every message answered 200
/// exactly once, in order, or was told (`resync`, `recovered:false`),
/// and only on the topics of `on_victim`. Returns what it measured, and
/// the topics some subscriber was told about.
async fn kill_under_load(
    nodes: &[Server],
    subs: Vec<(usize, tokio::task::JoinHandle<Seen>)>,
    fence_tx: watch::Sender<Option<BTreeMap<String, (String, u64)>>>,
    on_victim: &BTreeSet<String>,
    kill: impl FnOnce(),
) -> (String, BTreeSet<String>) {
    let all = topics();
    let mut kill = Some(kill);
    // A publish every 10 ms, to the nodes and topics in turn.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut ok, mut refused, mut unanswered) = (0, 0, 0);
    let (mut killed_at, mut first_refused, mut last_refused) = (None, None, None);
    let mut after_kill_ok = 0;
    for n in 0usize.. {
        tick.tick().await;
        let topic = &all[n % all.len()];
        let data = format!("p{n}");
        match publish(&http, &nodes[n % 2], topic, &data).await {
            (200, _) => {
                ok += 1;
                accepted.entry(topic.clone()).or_default().push(data);
                if killed_at.is_some() {
                    after_kill_ok += 1;
                }
            }
            (503, _) => {
                refused += 1;
                let at = killed_at.map(|k: Instant| k.elapsed());
                first_refused = first_refused.or(at);
                last_refused = at;
            }
            (0, _) => unanswered += 1,
            other => panic!("publish answered {other:?}"),
        }
        if ok == 300 && killed_at.is_none() {
            (kill.take().unwrap())();
            killed_at = Some(Instant::now());
        }
        // Until 500 more were taken after the kill (the failover done).
        if after_kill_ok >= 500 {
            break;
        }
        assert!(n < 20_000, "the publishes never came back after the kill");
    }
    let fenced = fences(nodes, &fence_tx).await;

    let (mut checked, mut told_subs, mut faults) = (0, 0, Vec::new());
    let mut told_topics = BTreeSet::new();
    for (n, task) in subs {
        let seen = tokio::time::timeout(SLOW, task).await.unwrap().unwrap();
        for (topic, got) in &seen.got {
            let told = seen.told.get(topic).copied().unwrap_or(0);
            told_subs += usize::from(told > 0);
            if told > 0 {
                told_topics.insert(topic.clone());
            }
            if told > 0 && !on_victim.contains(topic) {
                faults.push(format!("node {n} {topic}: told, but its master lived"));
            }
            let index = |d: &String| d.trim_start_matches('p').parse::<usize>().ok();
            let numbers: Vec<usize> = got.iter().filter_map(index).collect();
            if numbers.windows(2).any(|w| w[0] >= w[1]) {
                faults.push(format!(
                    "node {n} {topic}: out of order or doubled: {numbers:?}"
                ));
            }
            let received: BTreeSet<&String> = got.iter().collect();
            let missing = accepted
                .get(topic)
                .map_or(0, |a| a.iter().filter(|d| !received.contains(d)).count());
            if missing > 0 && told == 0 {
                faults.push(format!("node {n} {topic}: {missing} silently missing"));
            }
            if !received.contains(&fenced[topic].0) && told == 0 {
                faults.push(format!("node {n} {topic}: no fence"));
            }
            checked += got.len();
        }
    }
    let mut without = Vec::new();
    for n in nodes {
        let scrape = n.metrics().await;
        without.push((
            metric(&scrape, "ringcast_broker_without_master_seconds_total", &[]),
            metric(&scrape, "ringcast_broker_failovers_total", &[]),
        ));
    }
    let report = format!(
        "{ok} answered 200, {refused} 503, \
         {unanswered} unanswered; 503s from {first_refused:?} to {last_refused:?} after the kill; \
         {} of {TOPICS} topics on the killed master; {told_subs} subscriber-topics told resync/recovered:false; \
         {checked} deliveries checked; per node (seconds without a master, failovers seen): {without:?}",
        on_victim.len()
    );
    assert!(
        faults.is_empty(),
        "{} faults: {:#?}",
        faults.len(),
        &faults[..faults.len().min(20)]
    );
    assert!(
        without.iter().all(|(_, failovers)| *failovers >= 1.0),
        "{without:?}"
    );
    (report, told_topics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_master_killed_with_sigkill_under_load_loses_nothing_silently() {
    let mut setup = RedisSentinel::start().await;
    let broker = format!(
        "redis+sentinel://{}/{}",
        setup.sentinel_addrs(),
        RedisSentinel::NAME
    );
    let nodes = [node_over(&broker), node_over(&broker)];
    for n in &nodes {
        let health = broker_up(n).await;
        let master = &health["brokers"][0]["master"];
        assert_eq!(master, &json!(setup.data[0].addr()), "{health}");
    }
    let (subs, fence_tx) = subscribers(&nodes).await;
    let all: BTreeSet<String> = topics().into_iter().collect();
    let victim = &mut setup.data[0];
    let (report, _) = kill_under_load(&nodes, subs, fence_tx, &all, || victim.sigkill()).await;
    for n in &nodes {
        let health = broker_up(n).await;
        let master = &health["brokers"][0]["master"];
        assert_eq!(master, &json!(setup.data[1].addr()), "{health}");
    }
    eprintln!("redis sentinel master SIGKILL under a publish every 10 ms: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_load_lose_nothing_silently() {
    let cluster = RedisCluster::start().await;
    let nodes = [node(&cluster.seeds()), node(&cluster.seeds())];
    for n in &nodes {
        broker_up(n).await;
    }
    let (subs, fence_tx) = subscribers(&nodes).await;
    let all = topics();
    let before = cluster.topology().await;
    let masters: Vec<_> = before
        .iter()
        .filter(|n| n.master && !n.slots.is_empty())
        .cloned()
        .collect();
    let (from, to) = (&masters[0], &masters[1]);
    let mut slot = HashMap::new();
    for topic in &all {
        slot.insert(topic.clone(), slot_of(&cluster, topic).await);
    }
    // 1000 slots of one master move to another (redis-cli migrates their
    // keys with MIGRATE, then CLUSTER SETSLOT … NODE), under the load.
    let mut reshard = tokio::process::Command::new("redis-cli");
    reshard
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", from.port)])
        .args(["--cluster-from", &from.id, "--cluster-to", &to.id])
        .args(["--cluster-slots", "1000", "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut running = None;
    let all_told: BTreeSet<String> = all.iter().cloned().collect();
    let (report, told) = kill_under_load(&nodes, subs, fence_tx, &all_told, || {
        running = Some(tokio::spawn(async move { reshard.status().await }));
    })
    .await;
    let status = tokio::time::timeout(SLOW, running.unwrap()).await;
    assert!(
        status.unwrap().unwrap().unwrap().success(),
        "redis-cli --cluster reshard"
    );
    let after = cluster.topology_from(to.port).await;
    let new_owner = after.iter().find(|n| n.id == to.id).unwrap();
    let moved: BTreeSet<String> = all
        .iter()
        .filter(|t| from.owns(slot[*t]) && new_owner.owns(slot[*t]))
        .cloned()
        .collect();
    eprintln!(
        "redis cluster reshard of 1000 slots under a publish every 10 ms: {} of {TOPICS} topics moved; {report}",
        moved.len()
    );
    assert!(told.is_subset(&moved), "told {told:?}, moved {moved:?}");
}
