//! The Redis Cluster broker (`--broker redis+cluster://HOST:PORT[,…]`).
//! Commands go to the master of their slot, read from the slot map
//! (`CLUSTER SLOTS`), over one multiplexed connection per master; a
//! `MOVED` answer is followed (and the map read again), an `ASK` answer
//! is followed with `ASKING` (Redis docs, "Cluster specification",
//! redirection). Deliveries use sharded pub/sub (Redis docs, "Sharded
//! Pub/Sub"): the publish script `SPUBLISH`es on the topic's shard
//! channel, and the node holds one RESP3 connection per master for its
//! `SSUBSCRIBE`s ([`links`]).
//!
//! The `redis` crate's cluster client (1.2.4) was tried first: after a
//! master was SIGKILLed its connection kept timing out every command for
//! tens of seconds after the replica's promotion, so the routing here is
//! our own, on the slot map the subscriber task keeps anyway.
//!
//! - [`slotmap`]: the slot map, read from `CLUSTER SLOTS` and checked;
//! - [`links`]: the subscriber task: interest, links, pushes, reads.

mod links;
mod slotmap;

pub use links::run;

use super::metrics::Metrics;
use super::{lock, shard, slots, Access, Settings};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, Value};
use serde_json::json;
use slotmap::SlotMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Redirections one command follows at most.
const REDIRECTS: usize = 3;

/// What `/healthz` shows of the cluster, kept by the subscriber task.
#[derive(Default)]
struct View {
    /// The last slot map read.
    map: SlotMap,
    /// Channels subscribed per master address.
    subscribed: HashMap<String, usize>,
    /// Channels the node wants but has on no master yet.
    pending: usize,
}

/// One Redis Cluster, as the publishers and the subscriber task see it.
pub struct Cluster {
    /// `HOST:PORT` of the seed nodes, asked for the slot map when no
    /// known master answers.
    seeds: Vec<String>,
    /// Command connections per master `HOST:PORT`.
    conns: Mutex<HashMap<String, MultiplexedConnection>>,
    /// For every connection (password, CA).
    access: Access,
    /// `rediss` to every node.
    tls: bool,
    settings: Settings,
    view: Mutex<View>,
    /// Woken when a command failed or was redirected: the slot map may
    /// have changed.
    refresh: Notify,
    /// History reads in flight.
    reads: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// The cluster found from `seeds` (`redis://HOST:PORT`, `rediss://`
    /// with `tls`), with `access`'s password and CA certificates; nothing
    /// is connected until [`run`] starts.
    pub fn new(
        seeds: &[String],
        tls: bool,
        access: &Access,
        settings: Settings,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let seeds = seeds
            .iter()
            .map(|s| {
                let rest = s.split_once("://").map_or(s.as_str(), |(_, r)| r);
                rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_owned()
            })
            .collect();
        Self {
            seeds,
            conns: Mutex::new(HashMap::new()),
            access: access.clone(),
            tls,
            settings,
            view: Mutex::new(View::default()),
            refresh: Notify::new(),
            reads: Arc::new(Semaphore::new(shard::READS_IN_FLIGHT)),
            metrics: metrics.clone(),
        }
    }

    /// A command failed on a broken or slow connection: have the
    /// subscriber task read the slot map again now.
    pub fn broken(&self) {
        self.refresh.notify_one();
    }

    /// `--broker-timeout`.
    fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// A client for the node at `addr` (`HOST:PORT`); `resp3` for links.
    fn client(&self, addr: &str, resp3: bool) -> RedisResult<redis::Client> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        shard::client(&format!("{scheme}://{addr}"), &self.access, resp3)
            .map(|(client, _)| client)
            .map_err(|e| RedisError::from((ErrorKind::InvalidClientConfig, "client", e)))
    }

    /// The command connection to `addr`, made when missing.
    async fn conn_to(&self, addr: &str) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = lock(&self.conns).get(addr) {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout()))
            .set_response_timeout(Some(self.timeout()));
        let client = self.client(addr, false)?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        lock(&self.conns).insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Forgets the command connection to `addr` (broken).
    fn forget(&self, addr: &str) {
        lock(&self.conns).remove(addr);
    }

    /// The master serving `slot` in the last map read.
    fn owner(&self, slot: u16) -> Option<String> {
        lock(&self.view).map.owner(slot).map(str::to_owned)
    }

    /// Sends `cmd` to the master of `slot`, following `MOVED` and `ASK`
    /// ([`REDIRECTS`] at most). A broken connection is dropped and the
    /// error returned (not retried: a script may have run).
    async fn send(&self, slot: u16, cmd: &Cmd) -> RedisResult<Value> {
        let mut addr = self.owner(slot).ok_or_else(|| {
            RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master known for the slot",
            ))
        })?;
        let mut asking = false;
        for _ in 0..=REDIRECTS {
            let result = async {
                let mut conn = self.conn_to(&addr).await?;
                if asking {
                    let mut pipe = redis::pipe();
                    pipe.cmd("ASKING").add_command(cmd.clone());
                    let mut values = conn.req_packed_commands(&pipe, 1, 1).await?;
                    values.pop().unwrap_or(Value::Nil).extract_error()
                } else {
                    conn.req_packed_command(cmd).await?.extract_error()
                }
            }
            .await;
            match result {
                Err(e) if e.redirect_node().is_some() => {
                    self.metrics.redirects.inc();
                    asking = e.kind() == ErrorKind::Server(redis::ServerErrorKind::Ask);
                    if !asking {
                        self.refresh.notify_one();
                    }
                    addr = e
                        .redirect_node()
                        .map(|(to, _)| to.to_owned())
                        .unwrap_or(addr);
                }
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                        self.forget(&addr);
                        self.refresh.notify_one();
                    }
                    return Err(e);
                }
                ok => return ok,
            }
        }
        Err(RedisError::from((ErrorKind::Io, "too many redirections")))
    }

    /// `{"state", "mode": "cluster", "shards": [{"slots", "master",
    /// "subscribed"}], "pending"}` for `/healthz`: `up` with every wanted
    /// channel subscribed on its master, `degraded` while some wait for
    /// a master (failover, reshard), `down` before the slot map was read.
    pub fn health(&self) -> serde_json::Value {
        let view = lock(&self.view);
        let shards: Vec<_> = view
            .map
            .masters()
            .into_iter()
            .map(|(master, slots)| {
                let subscribed = view.subscribed.get(&master).copied().unwrap_or(0);
                json!({"master": master, "slots": slots, "subscribed": subscribed})
            })
            .collect();
        let state = match (!shards.is_empty(), view.pending) {
            (false, _) => "down",
            (true, 0) => "up",
            _ => "degraded",
        };
        json!({"state": state, "mode": "cluster", "shards": shards, "pending": view.pending})
    }
}

/// A command connection that sends every command to the master of one
/// slot (the slot of a topic's names, or of the node-wide channel).
#[derive(Clone)]
pub struct Routed {
    cluster: Arc<Cluster>,
    slot: u16,
}

impl Routed {
    /// Commands for `key`'s slot on `cluster`.
    pub fn new(cluster: &Arc<Cluster>, key: &str) -> Self {
        Self {
            cluster: cluster.clone(),
            slot: slots::slot(key.as_bytes()),
        }
    }
}

impl ConnectionLike for Routed {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.cluster.send(self.slot, cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        _: &'a redis::Pipeline,
        _: usize,
        _: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async {
            Err(RedisError::from((
                ErrorKind::Client,
                "pipelines are not routed over the cluster",
            )))
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
