//! Work a worker hands UPSTREAM to the embedding program's async side:
//! what needs I/O the worker must never wait for (a publish through the
//! shared publish path, an HTTP hook, a broker).
//!
//! The worker builds an [`Event`] and gives it to the [`Upstream`] sink
//! from [`crate::Config::upstream`]. The sink must not block: it queues
//! the event (the `ringcast` server uses a bounded tokio channel with
//! `try_send`) or hands it back, and the worker then answers the client
//! itself (an error op, or 503 for a parked handshake). The answer comes
//! back DOWN as a worker [`crate::command::Command`] through
//! [`crate::Handle`], addressed by the event's [`Origin`].
//!
//! Events of one connection reach the sink in the order the client sent
//! them. Add a variant for each new kind of event; the server's receiving
//! loop matches them all.

use std::fmt;
use std::sync::Arc;

/// The connection an event came from: its worker, fixed-file slot and
/// generation (a slot's later tenant has another generation, so a late
/// answer never reaches the wrong connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Worker index (0-based).
    pub worker: u32,
    /// Fixed-file slot on that worker.
    pub slot: u32,
    /// The slot tenant's generation (24 bits, see `ring::token`).
    pub gen: u32,
}

impl Origin {
    /// The connection's client id as hooks see it: `W.S.G` (worker, slot,
    /// generation in decimal). Unique among the connections open at one
    /// time on one node; a later connection may reuse it after about
    /// 16.7 million connections on the same worker.
    pub fn client_id(&self) -> String {
        format!("{}.{}.{}", self.worker, self.slot, self.gen)
    }
}

/// Which backend hooks are on; the workers need to know for the connect
/// hook (the handshake is parked), rpc (else refused) and disconnect
/// (every admitted connection's removal is sent as [`Event::Closed`]).
/// The publish hook is the embedding program's own business.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Admission waits for the connect hook ([`Event::Connect`]).
    pub connect: bool,
    /// Client publishes pass the publish hook.
    pub publish: bool,
    /// `rpc` ops are sent as [`Event::Rpc`].
    pub rpc: bool,
    /// Every admitted connection's removal is sent as [`Event::Closed`].
    pub disconnect: bool,
    /// Every presence join and leave is sent as [`Event::Presence`].
    pub presence: bool,
    /// A topic's first subscriber and last on each worker are sent as
    /// [`Event::Interest`] (as with a broker), for the channels hook.
    pub channels: bool,
}

/// The connect hook's answer, handed to [`crate::Handle::admit`].
#[derive(Debug)]
pub enum Verdict {
    /// Admit the connection as `user` with `grant` (replacing a token's
    /// claims), and subscribe it to `topics` at once.
    Admit {
        /// User id (`sub`), at most 128 bytes.
        user: Option<String>,
        /// Permissions, as a token's claims give them.
        grant: crate::session::Grant,
        /// Topic names (valid), subscribed at once as if named in the URL.
        topics: Vec<String>,
    },
    /// Refuse with 403 (the hook said no).
    Refuse,
    /// Refuse with 503 (the hook timed out, failed, or answered nonsense).
    Unavailable,
}

/// One event from a worker.
#[derive(Debug)]
pub enum Event {
    /// A connection's admission is parked until the connect hook answers.
    Connect(Connect),
    /// A client published (a `ringcast.v1` `publish` op, or a raw room
    /// message) while the publish hook or a broker is on: without either,
    /// the worker publishes it itself (see [`crate::Handle::publish_as`])
    /// and no event is sent.
    Publish(Publish),
    /// A `ringcast.v1` `rpc` op.
    Rpc(Rpc),
    /// An admitted connection was removed (sent while the disconnect hook
    /// is on).
    Closed(Closed),
    /// With a broker: a topic got its first subscriber on a worker, or
    /// lost its last (see [`crate::broker`]).
    Interest(Interest),
    /// With a broker: a `ringcast.v1` subscribe to a topic with history
    /// waits for the topic's position (see [`crate::broker`]).
    Recover(Recover),
    /// A connection joined or left a presence topic (sent while the
    /// presence hook or a broker is on). With a broker, the broker pushes
    /// it to the `join_leave` subscribers of every node, with `first` or
    /// `last` computed across them.
    Presence(PresenceChange),
    /// With a broker: a `ringcast.v1` `presence` or `presence_stats` op,
    /// answered across the cluster with [`crate::Handle::reply`].
    PresenceQuery(PresenceQuery),
}

/// A presence join or leave of a connection of this node.
#[derive(Debug)]
pub struct PresenceChange {
    /// What changed, with this node's counts.
    pub change: crate::hub::presence::Change,
    /// The joining connection (it does not get its own join); `None` for
    /// a leave.
    pub joiner: Option<Origin>,
}

/// A `presence` or `presence_stats` op on a topic with presence the
/// connection is subscribed to.
#[derive(Debug)]
pub struct PresenceQuery {
    /// The connection.
    pub origin: Origin,
    /// The topic.
    pub topic: String,
    /// `presence_stats` (else `presence`).
    pub stats: bool,
}

/// A topic's first subscriber on a worker, or its last one gone.
#[derive(Debug)]
pub struct Interest {
    /// Worker index (0-based).
    pub worker: u32,
    /// Topic name, valid.
    pub topic: String,
    /// First subscriber (`true`) or last one gone (`false`).
    pub held: bool,
}

/// A history read for one subscription, answered with
/// [`crate::Handle::recovered`].
#[derive(Debug)]
pub struct Recover {
    /// The subscribing connection.
    pub origin: Origin,
    /// Topic name, valid; it keeps history.
    pub topic: String,
    /// The client's position, if it resumes.
    pub since: Option<crate::protocol::v1::Since>,
    /// Bytes the replay may take in the connection's send queue.
    pub room: usize,
}

/// A parked handshake, for the connect hook.
#[derive(Debug)]
pub struct Connect {
    /// The connection.
    pub origin: Origin,
    /// The client's address (after PROXY and trusted forwarding headers).
    pub ip: std::net::IpAddr,
    /// `Cookie`, `Origin`, `User-Agent` and `Authorization`, when sent,
    /// as (lower-case name, value).
    pub headers: Vec<(&'static str, String)>,
    /// The request's query string, undecoded ("" without one).
    pub query: String,
    /// The user id of a token verified before the hook (`sub`), if any.
    pub user: Option<String>,
}

/// A client publish, allowed by the connection's permissions and rate
/// limits.
#[derive(Debug)]
pub struct Publish {
    /// The connection.
    pub origin: Origin,
    /// The op's `id`, echoed in the reply; `None` for a raw room message
    /// (which gets no reply) or an op without one.
    pub id: Option<u64>,
    /// Whether the client gets a `published` or `error` reply
    /// (`ringcast.v1`).
    pub reply: bool,
    /// Topics, valid names (one for an op; a raw room message goes to
    /// each of its connection's room topics).
    pub topics: Vec<String>,
    /// The sender's user id (`sub`), delivered as `from`.
    pub user: Option<String>,
    /// Whether the sender receives its own message.
    pub echo: bool,
    /// What the payload is.
    pub content: crate::Content,
    /// The message: a JSON value (`data` of an op), or a raw room
    /// message's text or bytes. At most `--max-message-size` bytes.
    pub payload: bytes::Bytes,
}

/// A client's remote procedure call, for the rpc hook.
#[derive(Debug)]
pub struct Rpc {
    /// The connection.
    pub origin: Origin,
    /// The op's `id`, echoed in the `rpc_result` or `error` reply.
    pub id: Option<u64>,
    /// The caller's user id (`sub`), if any.
    pub user: Option<String>,
    /// `method`, 1 to 128 bytes.
    pub method: String,
    /// `data`: one JSON value, as text (checked; `null` when absent).
    pub data: Box<str>,
}

/// A removed connection.
#[derive(Debug)]
pub struct Closed {
    /// The connection.
    pub origin: Origin,
    /// Its user id (`sub`), if any.
    pub user: Option<String>,
    /// The close code sent or received first (RFC 6455 §7.1.5); 1006 when
    /// the connection ended without a close frame.
    pub code: u16,
}

/// Where workers send events. Implementations must return at once: queue
/// the event, or hand it back when they cannot take it (full, shut down).
pub trait Sink: Send + Sync {
    /// Queues `event`.
    ///
    /// # Errors
    /// The event back, when it cannot be queued now.
    fn send(&self, event: Event) -> Result<(), Event>;
}

/// A shared sink, as [`crate::Config`] holds it.
#[derive(Clone)]
pub struct Upstream(pub Arc<dyn Sink>);

impl Upstream {
    /// Queues `event` (see [`Sink::send`]).
    ///
    /// # Errors
    /// The event back, when the sink cannot take it now.
    pub fn send(&self, event: Event) -> Result<(), Event> {
        self.0.send(event)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Upstream(..)")
    }
}
