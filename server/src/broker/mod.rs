//! The broker seam: where publishes get their positions and reach the
//! subscribers. One interface, [`Broker`], with two implementations:
//!
//! - [`local`]: this node alone. The engine's hub assigns offsets and
//!   keeps history; `Handle::publish_as` fans the message out.
//! - [`redis`]: a cluster over Redis (`--broker`): standalone instances,
//!   a Redis Cluster (sharded pub/sub) or a Sentinel-managed master. A
//!   Lua script assigns the offsets and keeps history in streams; each
//!   message comes back on its topic's channel and `Handle::deliver` fans
//!   it out.
//!
//! Either way the positions are assigned once, by the broker in use, and
//! the fan-out to the workers is the engine's one path. The API and the
//! upstream loop call [`Broker`] and never ask which one it is; the
//! workers' topic interest and history reads reach it through [`Demand`].
//!
//! Adding a broker (Redis Cluster, Sentinel, NATS) is one new module that
//! implements both traits, and one more arm in [`Plan::new`].

pub mod local;
pub mod redis;

pub use self::redis::{Access, InterestLimits, Settings, Topology};

use crate::webhooks::Webhooks;
use futures_util::future::BoxFuture;
use ringcast_engine::history::Page;
use ringcast_engine::presence;
use ringcast_engine::upstream::{PresenceChange, Recover};
use ringcast_engine::{Content, Handle, Sender};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Why a broker operation failed: the API answers 503, a client publish
/// `broker unavailable`.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// One message to publish.
pub struct Message<'a> {
    /// Topic names (valid).
    pub topics: Vec<String>,
    /// User ids whose every connection gets it.
    pub users: Vec<String>,
    /// What the body is.
    pub content: Content,
    /// The body, at most `--max-message-size` bytes.
    pub body: &'a [u8],
    /// The client that sent it (`from`, and no echo to it when echo is
    /// off), or the default for the API. Only the local broker carries it
    /// so far.
    pub sender: Sender,
}

/// How far a publish, broadcast or disconnect reached.
pub enum Reach {
    /// This node's connections, counted once every worker has queued the
    /// message (`key`: what they are, e.g. `subscribers`).
    Local {
        /// The JSON key of the count in the API's answer.
        key: &'static str,
        /// The count, when every worker has answered.
        count: oneshot::Receiver<usize>,
    },
    /// Nodes that got it from the broker (PUBLISH's receiver count).
    Nodes(u64),
}

impl Reach {
    /// A local reach and the callback the workers complete it with.
    pub fn local(key: &'static str) -> (Self, Box<dyn FnOnce(usize) + Send>) {
        let (tx, count) = oneshot::channel();
        let done = Box::new(move |n| {
            let _ = tx.send(n);
        });
        (Reach::Local { key, count }, done)
    }

    /// The API's `(key, count)`.
    ///
    /// # Errors
    /// The workers exited before they counted.
    pub async fn counted(self) -> Result<(&'static str, u64), Unavailable> {
        match self {
            Reach::Nodes(n) => Ok(("nodes", n)),
            Reach::Local { key, count } => count
                .await
                .map(|n| (key, n as u64))
                .map_err(|_| Unavailable("server is shutting down".into())),
        }
    }
}

/// What a publish got.
pub struct Published {
    /// Offsets of the topics that keep history.
    pub offsets: Vec<(String, u64)>,
    /// How far it reached.
    pub reach: Reach,
}

/// Where messages get their positions and reach every subscriber. Every
/// operation is bounded in time and queue by its implementation.
pub trait Broker: Send + Sync {
    /// Publishes `message`: positions assigned, history kept, then fanned
    /// out.
    ///
    /// # Errors
    /// The broker could not take it (nothing was delivered, or see the
    /// README for multi-topic publishes over Redis).
    fn publish<'a>(&'a self, message: Message<'a>)
        -> BoxFuture<'a, Result<Published, Unavailable>>;

    /// Sends `body` to every connection on the topics endpoint.
    ///
    /// # Errors
    /// As [`Broker::publish`].
    fn broadcast<'a>(
        &'a self,
        content: Content,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<Reach, Unavailable>>;

    /// Closes every connection of `users` with `code` and `reason`.
    ///
    /// # Errors
    /// As [`Broker::publish`].
    fn disconnect<'a>(
        &'a self,
        users: Vec<String>,
        code: u16,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Reach, Unavailable>>;

    /// Up to `limit` retained messages of `topic` after `since`; `None`
    /// for a topic without history.
    ///
    /// # Errors
    /// The broker could not be read.
    fn history<'a>(
        &'a self,
        topic: &'a str,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Page>, Unavailable>>;

    /// Up to `limit` members of the presence topic `topic` after
    /// `cursor` (a previous page's `next`: the last client id it listed),
    /// in client id order, across every node the broker joins.
    ///
    /// # Errors
    /// The broker could not be read.
    fn presence<'a>(
        &'a self,
        topic: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<presence::Page, Unavailable>>;

    /// The counts of `topic`'s members across every node.
    ///
    /// # Errors
    /// The broker could not be read.
    fn presence_stats<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<presence::Stats, Unavailable>>;

    /// This node leaves (its drain is over): its presence members are
    /// removed at once, with a leave each. Bounded by the broker's
    /// timeouts.
    fn depart(&self) -> BoxFuture<'_, ()>;

    /// The broker's state for `/healthz`, if it has one beyond the
    /// process's.
    fn health(&self) -> Option<serde_json::Value>;

    /// The broker's own series in the Prometheus text format.
    fn metrics_text(&self) -> String;
}

/// What the workers ask of the broker, on their own threads (through the
/// upstream sink): topic interest and history reads. Never blocks.
pub trait Demand: Send + Sync {
    /// A worker's topic got its first subscriber (`held`) or lost its
    /// last.
    fn update(&self, topic: &str, held: bool);

    /// A resuming subscriber's history read, answered with
    /// `Handle::recovered`.
    fn recover(&self, read: Recover);

    /// A presence join or leave of this node: registered where the
    /// cluster's members are kept, and pushed to every node's `join_leave`
    /// subscribers with `first` or `last` across the cluster.
    fn presence(&self, change: PresenceChange);

    /// A topic got its first subscriber on this node (`occupied`) or lost
    /// its last, for the channels webhook: sent once the broker judged it
    /// the cluster's first or last.
    fn channel(&self, topic: &str, occupied: bool);
}

/// The broker chosen by the flags, before the engine runs (the workers'
/// sink needs its [`Demand`]); [`Plan::start`] makes the [`Broker`]. The
/// webhooks get the events the broker judges (channels, reaped members).
pub struct Plan(Kind, Arc<Webhooks>);

enum Kind {
    Local,
    Redis {
        topology: Topology,
        access: Access,
        settings: Settings,
        interest: Arc<redis::Interest>,
    },
}

impl Plan {
    /// The in-process hub without `urls`, else Redis over them.
    ///
    /// # Errors
    /// `urls` that are no [`Topology`].
    pub fn new(
        urls: &[String],
        access: Access,
        settings: Settings,
        limits: InterestLimits,
        webhooks: Arc<Webhooks>,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Ok(Plan(Kind::Local, webhooks));
        }
        let topology = Topology::parse(urls)?;
        let interest = redis::Interest::new(topology.queues(), limits);
        let kind = Kind::Redis {
            topology,
            access,
            settings,
            interest,
        };
        Ok(Plan(kind, webhooks))
    }

    /// Whether positions come from outside the node, so that the workers
    /// hand topic interest and history reads up (the engine's
    /// `Config::broker`).
    pub fn positions_from_outside(&self) -> bool {
        matches!(self.0, Kind::Redis { .. })
    }

    /// Where the workers' interest and reads go.
    pub fn demand(&self) -> Arc<dyn Demand> {
        match &self.0 {
            Kind::Local => Arc::new(local::Direct(self.1.clone())),
            Kind::Redis { interest, .. } => interest.clone(),
        }
    }

    /// Starts the broker over the engine `handle`.
    ///
    /// # Errors
    /// A broker URL that does not parse, or a `redis://` URL at a Redis
    /// Cluster node.
    pub async fn start(self, handle: Handle) -> Result<Arc<dyn Broker>, String> {
        let webhooks = self.1;
        Ok(match self.0 {
            Kind::Local => Arc::new(local::Local::new(handle)),
            Kind::Redis {
                topology,
                access,
                settings,
                interest,
            } => {
                redis::Redis::start(&topology, &access, settings, handle, interest, webhooks)
                    .await?
            }
        })
    }
}
