//! The Redis Cluster broker (`--broker redis+cluster://HOST:PORT[,…]`):
//! commands through the `redis` crate's cluster client (it routes a
//! script by its keys' slot and follows `MOVED`/`ASK`), deliveries by
//! sharded pub/sub (Redis docs, "Sharded Pub/Sub"): the publish script
//! `SPUBLISH`es on the topic's shard channel, and the node holds one RESP3
//! connection per master for its `SSUBSCRIBE`s ([`links`]), placed by the
//! slot map (`CLUSTER SLOTS`) and moved when a slot's master changes
//! (failover, reshard).
//!
//! - [`slotmap`]: the slot map, read from `CLUSTER SLOTS` and checked;
//! - [`links`]: the subscriber task: interest, links, pushes, reads.

mod links;
mod slotmap;

pub use links::run;

use super::{lock, Access, Settings, Unavailable};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use serde_json::json;
use slotmap::SlotMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Retries of one command by the cluster client (a redirect or a
/// reconnect is one), all within `--broker-timeout`.
const RETRIES: u32 = 4;

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
    client: ClusterClient,
    conn: Mutex<Option<ClusterConnection>>,
    /// For the subscriber links (password, CA).
    access: Access,
    /// `rediss` to every node.
    tls: bool,
    settings: Settings,
    view: Mutex<View>,
    /// Woken when a command failed: the slot map may have changed.
    refresh: Notify,
    /// History reads in flight.
    reads: Arc<Semaphore>,
}

impl Cluster {
    /// The cluster found from `seeds` (`redis://HOST:PORT`, `rediss://`
    /// with `tls`), with `access`'s password and CA certificates; nothing
    /// is connected until [`run`] starts.
    ///
    /// # Errors
    /// Seeds or CA certificates the client does not take.
    pub fn new(
        seeds: &[String],
        tls: bool,
        access: &Access,
        settings: Settings,
    ) -> Result<Self, String> {
        let mut builder = ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(settings.timeout)
            .response_timeout(settings.timeout)
            .retries(RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(settings.timeout.as_millis() as u64 / 4);
        if let Some(password) = &access.password {
            builder = builder.password(password);
        }
        if tls {
            builder = builder.tls(redis::TlsMode::Secure);
            if let Some(ca) = &access.ca {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                });
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("--broker redis+cluster: {e}"))?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
            access: access.clone(),
            tls,
            settings,
            view: Mutex::new(View::default()),
            refresh: Notify::new(),
            reads: Arc::new(Semaphore::new(64)),
        })
    }

    /// The cluster client's connection, once made.
    ///
    /// # Errors
    /// No seed has answered yet.
    pub fn connection(&self) -> Result<ClusterConnection, Unavailable> {
        lock(&self.conn)
            .clone()
            .ok_or_else(|| Unavailable("broker cluster is unreachable".into()))
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

    /// `{"state", "mode": "cluster", "shards": [{"slots", "master",
    /// "subscribed"}], "pending"}` for `/healthz`: `up` with every wanted
    /// channel subscribed on its master, `degraded` while some wait for
    /// a master (failover, reshard), `down` before the cluster answered.
    pub fn health(&self) -> serde_json::Value {
        let connected = lock(&self.conn).is_some();
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
        let state = match (connected && !shards.is_empty(), view.pending) {
            (false, _) => "down",
            (true, 0) => "up",
            _ => "degraded",
        };
        json!({"state": state, "mode": "cluster", "shards": shards, "pending": view.pending})
    }
}
