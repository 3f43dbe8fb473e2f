//! What a worker tells the server's broker client (`--broker`), and what
//! the broker client hands back: the engine's half of a cluster.
//!
//! With a broker, offsets and epochs come from the broker, not from the
//! local [`crate::hub::Hub`], and a node receives a topic's messages only
//! while it tells the broker it holds the topic. So a worker reports:
//! - [`Event::Interest`]: a topic got its first subscriber on this worker,
//!   or lost its last (only those transitions: one event per topic per
//!   worker, never one per subscriber);
//! - [`Event::Recover`]: a `ringcast.v1` subscribe to a topic that keeps
//!   history needs the topic's position, and with `since` the missed
//!   messages, read from the broker. The worker registers the subscription
//!   at once and holds its live deliveries until the answer
//!   ([`crate::command::Command::Recovered`]) comes back; see
//!   `connections/recovery.rs` for why that is gapless.
//!
//! [`Link::send`] is called on the worker thread and must not block.

use crate::hub::epoch::Epoch;
use crate::protocol::v1::Since;
use bytes::Bytes;
use std::fmt;

/// An event from a worker for the broker client.
#[derive(Debug)]
pub enum Event {
    /// `topic` has subscribers on worker `worker` (`held`), or no longer.
    Interest {
        /// Index of the worker.
        worker: usize,
        /// Topic name, validated.
        topic: String,
        /// First subscriber (`true`) or last one gone (`false`).
        held: bool,
    },
    /// Read `topic`'s position, and with `since` the frames after it, for
    /// the subscription of connection (`slot`, `gen`) on worker `worker`.
    Recover {
        /// Index of the worker to answer.
        worker: usize,
        /// The connection's slot.
        slot: u32,
        /// The connection's generation (a reused slot has another).
        gen: u32,
        /// Topic name, validated; it keeps history.
        topic: String,
        /// The client's position, if it resumes.
        since: Option<Since>,
        /// Bytes the replay may take in the connection's send queue.
        room: usize,
    },
}

/// Where a topic stands in the broker, and what a resuming client missed.
#[derive(Debug)]
pub struct Position {
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Offset of its last message.
    pub top: u64,
    /// With `since`: the `ringcast.v1` delivery frames after it up to
    /// `top`, when every one was still retained and they fit the room;
    /// `None` when not recovered (or without `since`).
    pub replay: Option<Vec<Bytes>>,
}

/// The worker-to-server side of a broker: called on worker threads.
pub trait Link: Send + Sync {
    /// Hands `event` over without blocking.
    fn send(&self, event: Event);
}

impl fmt::Debug for dyn Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("broker::Link")
    }
}
