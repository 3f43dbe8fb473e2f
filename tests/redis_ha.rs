//! The Redis high-availability harness (`tests/common/redis_ha.rs`) does
//! what the broker tests of issue 24 rely on: a Redis Cluster and a
//! Sentinel setup form, and a master killed with SIGKILL is replaced by
//! its replica, with the data the replica had acknowledged. Each test
//! prints the window it measured (run with `--nocapture`).

mod common;

use common::redis_ha::*;
use std::time::{Duration, Instant};

/// Upper bound for a failover on a loaded 2-core host (about 2–3 s idle).
const FAILOVER: Duration = Duration::from_secs(30);

/// `redis-cli -c` (follows MOVED) on `port`.
async fn cluster_cli(port: u16, args: &[&str]) -> Option<String> {
    let mut all = vec!["-c"];
    all.extend(args);
    redis_cli(port, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_promotes_the_replica_of_a_master_killed_with_sigkill() {
    let mut cluster = RedisCluster::start().await;
    let before = cluster.topology().await;
    let victim = before
        .iter()
        .find(|n| n.master && n.owns(0))
        .expect("a master serves slot 0")
        .clone();
    let heir = before
        .iter()
        .find(|n| n.master_id.as_deref() == Some(victim.id.as_str()))
        .expect("slot 0's master has a replica")
        .clone();
    // A key on the victim's shard, acknowledged by its replica (WAIT).
    let mut key = String::new();
    for i in 0.. {
        key = format!("key{i}");
        if victim.owns(cluster.keyslot(&key).await) {
            break;
        }
    }
    let set = redis_cli(victim.port, &["SET", &key, "before"]).await;
    assert_eq!(set.as_deref(), Some("OK"));
    let acked = redis_cli(victim.port, &["WAIT", "1", "5000"]).await;
    assert_eq!(acked.as_deref(), Some("1"), "the replica acknowledged");

    cluster.node(victim.port).sigkill();
    let killed = Instant::now();
    let (mut fail_seen, mut promoted) = (None, None);
    while promoted.is_none() {
        assert!(
            killed.elapsed() < FAILOVER,
            "no promotion within {FAILOVER:?}: {:#?}",
            cluster.topology_from(heir.port).await
        );
        let ok = cluster.all_ok().await;
        if !ok && fail_seen.is_none() {
            fail_seen = Some(killed.elapsed());
        }
        let view = cluster.topology_from(heir.port).await;
        let heir_now = view.iter().find(|n| n.port == heir.port);
        if ok && heir_now.is_some_and(|n| n.master && n.owns(0)) {
            promoted = Some(killed.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    let view = cluster.topology_from(heir.port).await;
    let dead = view.iter().find(|n| n.port == victim.port).unwrap();
    assert!(dead.failing, "the killed master is marked failed: {dead:?}");
    assert_eq!(
        view.iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .count(),
        3,
        "3 shards still serve: {view:#?}"
    );
    // The acknowledged write survived; the shard takes writes again,
    // reached through any node.
    let other = view.iter().find(|n| n.master && !n.owns(0)).unwrap();
    let got = cluster_cli(other.port, &["GET", &key]).await;
    assert_eq!(got.as_deref(), Some("before"));
    let set = cluster_cli(other.port, &["SET", &key, "after"]).await;
    assert_eq!(set.as_deref(), Some("OK"));
    assert_eq!(
        redis_cli(heir.port, &["GET", &key]).await.as_deref(),
        Some("after")
    );
    eprintln!(
        "redis cluster failover (cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS} ms): \
         master :{} SIGKILLed; cluster_state not ok first seen after {fail_seen:?}; \
         replica :{} promoted and every node ok after {:?}",
        victim.port,
        heir.port,
        promoted.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_promote_the_replica_when_the_master_is_killed_with_sigkill() {
    let mut setup = RedisSentinel::start().await;
    let (master, replica) = (setup.data[0].port, setup.data[1].port);
    for i in 0..setup.sentinels.len() {
        assert_eq!(setup.master_port(i).await, Some(master));
    }
    let set = redis_cli(master, &["SET", "key", "before"]).await;
    assert_eq!(set.as_deref(), Some("OK"));
    let acked = redis_cli(master, &["WAIT", "1", "5000"]).await;
    assert_eq!(acked.as_deref(), Some("1"), "the replica acknowledged");

    setup.data[0].sigkill();
    let killed = Instant::now();
    let (mut first, mut all) = (None, None);
    while all.is_none() {
        assert!(
            killed.elapsed() < FAILOVER,
            "the sentinels did not switch within {FAILOVER:?}"
        );
        let mut switched = 0;
        for i in 0..setup.sentinels.len() {
            if setup.master_port(i).await == Some(replica) {
                switched += 1;
            }
        }
        if switched > 0 && first.is_none() {
            first = Some(killed.elapsed());
        }
        if switched == setup.sentinels.len() {
            all = Some(killed.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    let role = info_field(replica, &["INFO", "replication"], "role").await;
    assert_eq!(role.as_deref(), Some("master"), "the replica was promoted");
    assert_eq!(
        redis_cli(replica, &["GET", "key"]).await.as_deref(),
        Some("before")
    );
    let set = redis_cli(replica, &["SET", "key", "after"]).await;
    assert_eq!(set.as_deref(), Some("OK"), "the new master takes writes");
    eprintln!(
        "redis sentinel failover (down-after-milliseconds {SENTINEL_DOWN_AFTER_MS}, quorum 2): \
         master :{master} SIGKILLed; first sentinel names :{replica} after {first:?}, all 3 after {:?}",
        all.unwrap()
    );
}
