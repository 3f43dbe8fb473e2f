//! Where a command goes: one standalone instance's connection, or the
//! master of a slot of a Redis Cluster, following `MOVED` and `ASK`
//! ([`super::cluster::Routed`]). The publish and read code is the same
//! for both: it runs its scripts on a [`Conn`].

use super::cluster::{Cluster, Routed};
use super::shard::Shard;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::Arc;

/// The Redis deployment the broker talks to.
pub enum Backend {
    /// Standalone instances, topics spread by jump hash.
    Instances(Vec<Arc<Shard>>),
    /// One Redis Cluster.
    Cluster(Arc<Cluster>),
}

/// A command connection.
#[derive(Clone)]
pub enum Conn {
    /// To one instance.
    Plain(MultiplexedConnection),
    /// To the master of one slot of the cluster.
    Cluster(Routed),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Plain(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a command runs on: named in errors, told when it broke.
pub enum On<'a> {
    /// A standalone instance.
    Shard(&'a Shard),
    /// The cluster.
    Cluster(&'a Cluster),
}

impl On<'_> {
    /// `HOST:PORT/DB`, or `cluster`, for errors (never a password).
    pub fn name(&self) -> &str {
        match self {
            On::Shard(shard) => &shard.name,
            On::Cluster(_) => "cluster",
        }
    }

    /// A command found the connection broken or slow: an instance is
    /// marked down and reconnected; the cluster refreshes its slot map.
    pub fn broken(&self) {
        match self {
            On::Shard(shard) => shard.broken(),
            On::Cluster(cluster) => cluster.broken(),
        }
    }
}

/// A command's connection and what it runs on.
pub struct Target<'a> {
    /// For errors and failures.
    pub on: On<'a>,
    /// The connection.
    pub conn: Conn,
}
