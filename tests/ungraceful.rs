//! Ungraceful failures of a cluster (issue 24): a ringcast node killed
//! with SIGKILL (not drained) under a publish every 10 ms, behind haproxy
//! configured as deploy/haproxy.cfg, with `ringcast.v1` clients that
//! resume with `since` as ringcast.js does (docs/protocol.md, "Topics,
//! offsets and epochs"). Real processes: Debian's haproxy and
//! redis-server, three `ringcast serve` nodes over one standalone Redis,
//! a Redis Cluster (3 masters, 3 replicas) or a master under Sentinel.

mod common;

use common::redis_ha::{free_ports, RedisCluster, RedisSentinel, RedisStandalone};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 300;
const TOPICS: usize = 5;
/// How long the publisher runs (a publish every 10 ms, to the nodes in
/// turn): about 800 publishes.
const PUBLISHING: Duration = Duration::from_secs(8);
/// Accepted publishes before the kill: about 2 s into the run.
const KILL_AFTER: u32 = 200;
/// Upper bound for slow phases (connecting 300 clients, catching up) on a
/// loaded 2-core host.
const SLOW: Duration = Duration::from_secs(60);

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Per topic: its offset when first subscribed, then every
    /// `(offset, data)` received, in order of arrival.
    topics: BTreeMap<String, (u64, Vec<(u64, String)>)>,
    /// From noticing a lost connection to every topic answered
    /// `recovered:true` on the next one.
    recoveries: Vec<Duration>,
    /// Messages that came as a resume's replay (offset up to the
    /// `subscribed` reply's).
    replayed: usize,
}

/// One `ringcast.v1` client through haproxy at `front`, on `topics`.
/// After every lost connection it reconnects and resubscribes with
/// `since` (its last offset and epoch), which must answer
/// `recovered:true`; a `resync` fails the test. Runs until it has every
/// topic's offset in `end`.
async fn client(
    front: String,
    topics: Vec<String>,
    subscribed: Arc<Semaphore>,
    recovered: Arc<Semaphore>,
    mut end: watch::Receiver<Option<BTreeMap<String, u64>>>,
) -> Seen {
    let mut seen = Seen::default();
    // Per topic: (last offset, epoch).
    let mut position: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut lost_at: Option<Instant> = None;
    let deadline = Instant::now() + 3 * SLOW;
    loop {
        let mut ws = connect_front(&front, deadline).await;
        let mut ops = Vec::new();
        for topic in &topics {
            let mut op = json!({"op": "subscribe", "topic": topic});
            if let Some((offset, epoch)) = position.get(topic) {
                op["since"] = json!({"offset": offset, "epoch": epoch});
            }
            ops.push(Ok(Message::Text(op.to_string().into())));
        }
        if ws
            .send_all(&mut futures_util::stream::iter(ops))
            .await
            .is_err()
        {
            lost_at.get_or_insert_with(Instant::now);
            continue;
        }
        let mut pending = topics.len();
        // Per topic, the replay's last offset on this connection.
        let mut replay_to: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let done = end.borrow().as_ref().is_some_and(|end| {
                end.iter()
                    .filter(|(t, _)| topics.contains(t))
                    .all(|(t, top)| position.get(t).is_some_and(|(o, _)| o >= top))
            });
            if done {
                return seen;
            }
            let next = tokio::select! {
                next = ws.next() => next,
                _ = end.changed() => continue,
                _ = tokio::time::sleep(SLOW) => panic!("client silent for {SLOW:?}"),
            };
            let message: Value = match next {
                Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    lost_at.get_or_insert_with(Instant::now);
                    break;
                }
                Some(Ok(_)) => continue,
            };
            let topic = message["topic"].as_str().unwrap_or_default().to_owned();
            match message["op"].as_str() {
                Some("subscribed") => {
                    let offset = message["offset"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("an offset: {message}"));
                    let epoch = message["epoch"]
                        .as_str()
                        .unwrap_or_else(|| panic!("an epoch: {message}"))
                        .to_owned();
                    match position.get(&topic) {
                        None => {
                            seen.topics.insert(topic.clone(), (offset, Vec::new()));
                            position.insert(topic, (offset, epoch));
                        }
                        Some((_, was)) => {
                            assert_eq!(message["recovered"], true, "resume: {message}");
                            assert_eq!(*was, epoch, "resume: {message}");
                            replay_to.insert(topic, offset);
                        }
                    }
                    pending -= 1;
                    if pending == 0 {
                        match lost_at.take() {
                            None => subscribed.add_permits(1),
                            Some(at) => {
                                seen.recoveries.push(at.elapsed());
                                recovered.add_permits(1);
                            }
                        }
                    }
                }
                Some("message") => {
                    let offset = message["offset"].as_u64().expect("an offset");
                    let epoch = message["epoch"].as_str().expect("an epoch");
                    let (last, was) = position.get_mut(&topic).expect("a subscribed topic");
                    assert_eq!(was, epoch, "{message}");
                    *last = offset;
                    if replay_to.get(&topic).is_some_and(|&to| offset <= to) {
                        seen.replayed += 1;
                    }
                    let data = message["data"].as_str().unwrap_or_default().to_owned();
                    seen.topics.get_mut(&topic).unwrap().1.push((offset, data));
                }
                _ => panic!("unexpected (a resync must not happen here): {message}"),
            }
        }
    }
}

/// What the publisher got back.
#[derive(Default)]
struct Published {
    /// Per topic: offset → data of every publish answered 200.
    accepted: BTreeMap<String, BTreeMap<u64, String>>,
    refused: u64,
    unanswered: u64,
}

/// Publishes every 10 ms for [`PUBLISHING`] to `apis` in turn, to the
/// topics in turn; a permit on `progress` per 200.
async fn publisher(apis: Vec<String>, topics: Vec<String>, progress: Arc<Semaphore>) -> Published {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut out = Published::default();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < PUBLISHING {
        tick.tick().await;
        let topic = &topics[n % topics.len()];
        let data = format!("p{n}");
        let url = format!("{}/publish?topic={topic}", apis[n % apis.len()]);
        n += 1;
        let request = http.post(url).header("content-type", "text/plain");
        let answer = match request.body(data.clone()).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response
                    .json::<Value>()
                    .await
                    .ok()
                    .map(|body| (status, body))
            }
            Err(_) => None,
        };
        let Some((status, body)) = answer else {
            // The killed node, mid-request or refusing: the publish may
            // or may not have been taken.
            out.unanswered += 1;
            continue;
        };
        match status {
            200 => {
                let offset = body["offsets"][topic].as_u64().expect("an offset");
                let fresh = out
                    .accepted
                    .entry(topic.clone())
                    .or_default()
                    .insert(offset, data);
                assert!(fresh.is_none(), "{topic} offset {offset} given twice");
                progress.add_permits(1);
            }
            503 => out.refused += 1,
            status => panic!("publish answered {status}: {body}"),
        }
    }
    out
}

/// Takes `permits` from `semaphore` (within [`SLOW`]); fails at once if a
/// client ends first (one of its checks failed).
async fn until(
    semaphore: &Semaphore,
    permits: usize,
    clients: &mut [JoinHandle<Seen>],
    what: &str,
) {
    let ended = futures_util::future::select_all(clients.iter_mut());
    tokio::select! {
        got = tokio::time::timeout(SLOW, semaphore.acquire_many(permits as u32)) => {
            got.unwrap_or_else(|_| panic!("{what}: not within {SLOW:?}")).unwrap().forget();
        }
        (result, i, _) = ended => panic!("{what}: client {i} ended first: {:?}", result.err()),
    }
}

/// Waits (up to [`SLOW`]) until `/healthz` says the node's broker is up.
async fn wait_broker_up(node: &Server) {
    let deadline = Instant::now() + SLOW;
    loop {
        let (status, body) = node.get("/healthz").await;
        let health: Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && health["broker"]["state"] == "up" {
            return;
        }
        assert!(Instant::now() < deadline, "broker never up: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When the killed node starts again.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Restart {
    /// Once its clients have resumed on the other nodes.
    AfterTheResumes,
    /// At once: haproxy may not notice it was gone (one health check a
    /// second), and sends the reconnects to the fresh process.
    AtOnce,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_loses_nothing_its_clients_resume_on_the_others() {
    let redis = RedisStandalone::start().await;
    node_killed_with_sigkill(Restart::AfterTheResumes, &redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_and_restarted_at_once_loses_nothing() {
    let redis = RedisStandalone::start().await;
    node_killed_with_sigkill(Restart::AtOnce, &redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_redis_cluster_a_node_killed_with_sigkill_loses_nothing() {
    let cluster = RedisCluster::start().await;
    let broker = format!("redis+cluster://{}", cluster.seeds());
    node_killed_with_sigkill(Restart::AfterTheResumes, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sentinel_a_node_killed_with_sigkill_loses_nothing() {
    let setup = RedisSentinel::start().await;
    let broker = format!(
        "redis+sentinel://{}/{}",
        setup.sentinel_addrs(),
        RedisSentinel::NAME
    );
    node_killed_with_sigkill(Restart::AfterTheResumes, &broker).await;
}

/// 300 `ringcast.v1` clients through haproxy, each on 2 of 5 topics, over
/// 3 nodes and the Redis at `broker` (standalone, cluster or Sentinel); a publish every 10 ms to the nodes in turn; the
/// node with the most clients is SIGKILLed mid-run and started again
/// (`restart`). Every client gets every message exactly once, in order,
/// resuming with `since`.
async fn node_killed_with_sigkill(restart: Restart, broker: &str) {
    let ports = free_ports(7);
    let addrs: Vec<(u16, u16)> = ports[..6].chunks(2).map(|p| (p[0], p[1])).collect();
    let mut nodes: Vec<Server> = addrs.iter().map(|&a| node_at(broker, a, &[])).collect();
    let _haproxy = haproxy(ports[6], &addrs);
    let front = format!("ws://127.0.0.1:{}/ws", ports[6]);
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("h.t{t}")).collect();

    // Each client on 2 of the 5 topics: 120 subscribers per topic.
    let (subscribed, recovered) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let (end_tx, end_rx) = watch::channel(None);
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mine = vec![topics[i % TOPICS].clone(), topics[(i + 1) % TOPICS].clone()];
            tokio::spawn(client(
                front.clone(),
                mine,
                subscribed.clone(),
                recovered.clone(),
                end_rx.clone(),
            ))
        })
        .collect();
    until(
        &subscribed,
        CLIENTS,
        &mut clients,
        "every client subscribed",
    )
    .await;
    let per_node: Vec<u64> = {
        let mut counts = Vec::new();
        for node in &nodes {
            counts.push(node.stats().await["connections"].as_u64().unwrap());
        }
        counts
    };
    assert_eq!(per_node.iter().sum::<u64>(), CLIENTS as u64, "{per_node:?}");

    let apis: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.api)).collect();
    let progress = Arc::new(Semaphore::new(0));
    let publishing = tokio::spawn(publisher(apis, topics.clone(), progress.clone()));
    let mid_run = tokio::time::timeout(SLOW, progress.acquire_many(KILL_AFTER));
    mid_run.await.expect("publishes accepted").unwrap().forget();

    // SIGKILL the node with the most clients; they come back through
    // haproxy. Then (or at once) start it again on the same ports: the
    // publisher's turns on it are answered again once it is up.
    let victim = (0..nodes.len()).max_by_key(|&i| per_node[i]).unwrap();
    let cut_off = per_node[victim];
    let killed = nodes.remove(victim);
    killed.signal(libc::SIGKILL);
    let status = killed.exit_within(WAIT).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let killed_at = Instant::now();
    if restart == Restart::AtOnce {
        nodes.insert(victim, node_at(broker, addrs[victim], &[]));
    }
    let what = "the cut-off clients resumed";
    until(&recovered, cut_off as usize, &mut clients, what).await;
    let all_back = killed_at.elapsed();
    if restart == Restart::AfterTheResumes {
        nodes.insert(victim, node_at(broker, addrs[victim], &[]));
    }
    let mut after = Vec::new();
    for node in &nodes {
        after.push(node.stats().await["connections"].as_u64().unwrap());
    }
    assert_eq!(after.iter().sum::<u64>(), CLIENTS as u64, "{after:?}");
    if restart == Restart::AfterTheResumes {
        assert_eq!(after[victim], 0, "the clients resumed on the others");
    }
    wait_broker_up(&nodes[victim]).await;

    let published = publishing.await.unwrap();
    // The top offset of each topic, once nothing is published any more.
    let mut tops = BTreeMap::new();
    for topic in &topics {
        let (status, body) = nodes[(victim + 1) % 3]
            .get(&format!("/history?topic={topic}&limit=1"))
            .await;
        assert_eq!(status, 200, "{body}");
        let top = serde_json::from_str::<Value>(&body).unwrap()["offset"]
            .as_u64()
            .unwrap();
        let accepted = &published.accepted[topic];
        assert!(top >= *accepted.keys().last().unwrap());
        tops.insert(topic.clone(), top);
    }
    end_tx.send(Some(tops.clone())).unwrap();

    let (mut deliveries, mut replayed, mut faults) = (0usize, 0usize, Vec::new());
    let mut recoveries = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let seen = tokio::time::timeout(SLOW, client)
            .await
            .expect("every client caught up")
            .expect("client task");
        replayed += seen.replayed;
        recoveries.extend(seen.recoveries);
        for (topic, (start, got)) in &seen.topics {
            deliveries += got.len();
            let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
            let want: Vec<u64> = (start + 1..=tops[topic]).collect();
            if offsets != want {
                let distinct: std::collections::BTreeSet<u64> = offsets.iter().copied().collect();
                let lost = want.iter().filter(|o| !distinct.contains(o)).count();
                let doubled = offsets.len() - distinct.len();
                let ordered = offsets.windows(2).all(|w| w[0] < w[1]);
                faults.push(format!(
                    "client {i} {topic} after offset {start}: {lost} lost, {doubled} doubled, in order: {ordered}"
                ));
            }
            for (offset, data) in got {
                if let Some(sent) = published.accepted[topic].get(offset) {
                    if sent != data {
                        faults.push(format!("client {i} {topic}@{offset}: {data} for {sent}"));
                    }
                }
            }
        }
    }
    assert_eq!(
        recoveries.len() as u64,
        cut_off,
        "only the cut-off clients reconnected"
    );
    assert!(cut_off > 0);
    recoveries.sort();
    let p99 = recoveries[(recoveries.len() * 99).div_ceil(100) - 1];
    let accepted: usize = published.accepted.values().map(BTreeMap::len).sum();
    eprintln!(
        "node SIGKILL over {}, restart {restart:?}: clients per node {per_node:?}, then {after:?}; publishes {accepted} answered 200, {} 503, {} unanswered; \
         {cut_off} clients cut off, all recovered {all_back:?} after the kill; \
         reconnect-to-recovered p50 {:?} p99 {p99:?} max {:?} over {} resumes; \
         {deliveries} deliveries checked, {replayed} of them replayed",
        broker.split("://").next().unwrap_or_default(),
        published.refused,
        published.unanswered,
        recoveries[recoveries.len() / 2],
        recoveries.last().unwrap(),
        recoveries.len(),
    );
    assert!(
        faults.is_empty(),
        "{} faults: {:#?}",
        faults.len(),
        &faults[..faults.len().min(20)]
    );
    assert!(replayed > 0, "the resumes replayed what was missed");
    assert!(accepted >= KILL_AFTER as usize);
}
