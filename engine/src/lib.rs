//! ringcast engine: a thread-per-core WebSocket, SSE and long-poll push
//! server on io_uring, as a library.
//!
//! # The facade
//! An embedding program (the `ringcast` server) uses what this file
//! exports, and nothing else:
//!
//! - [`Runtime`] starts the workers from a [`Config`]; its [`Handle`]
//!   publishes ([`Handle::publish`], [`Handle::deliver`] for a broker's
//!   messages), reaches users, reads history, drains and shuts down;
//!   [`Snapshot`] is what [`Handle::stats`] counts.
//! - [`upstream`]: the events workers hand to the program's async side
//!   (client publishes, hooks, a broker's reads) and the [`upstream::Sink`]
//!   they go through; the answers come back through [`Handle`].
//! - [`auth`]: token verification ([`auth::Auth`]) and permissions.
//! - [`history`]: history rules, positions and pages, for a broker that
//!   keeps the history in place of the engine's hub.
//! - [`protocol`]: the wire formats as pure functions over bytes (RFC 6455,
//!   RFC 7692, PROXY, `ringcast.v1`, SSE, long-poll, topic names): fuzzed
//!   alone and used by the bench's clients.
//! - [`capacity`]: the host's connection ceiling (`ringcast doctor`);
//!   [`uring`]: the ring and buffer-ring setup the bench's clients share.
//!
//! # Inside
//! Read top-down, the way a byte travels (`engine/README.md` is the
//! design note): `ring` (the kernel interface), `worker` (one thread's
//! loop), `connections` (the table, handshake, transports, fan-out,
//! timers), `conn` and `outbound` (one connection's record and send
//! queue), `session` (who a connection is), `admission` (addresses,
//! Origin, limits), `topics`, `hub` (per-topic history, offsets and
//! epochs), `delivery` (what a publish carries to the workers),
//! `command` (the workers' mailboxes), `timers`, `spread`, `stats`.
//! None of them is public: the facade above is the contract.

mod admission;
mod broker;
pub mod capacity;
mod command;
mod config;
mod conn;
mod connections;
mod delivery;
mod hub;
mod outbound;
pub mod protocol;
mod ring;
mod runtime;
mod session;
mod spread;
mod stats;
mod timers;
mod topics;
pub mod upstream;
mod worker;

pub use config::{Config, StaticFile};
pub use protocol::frame::OpCode;
pub use protocol::v1::Content;
pub use runtime::{Handle, Runtime, Sender};
pub use stats::Snapshot;
pub use topics::MAX_TOPICS_PER_CONNECTION;

/// Tokens and permissions: what [`Config::auth`] holds, and the grants a
/// connect hook answers with.
pub mod auth {
    pub use crate::session::jwt::MAX_USER_ID;
    pub use crate::session::permissions::Pattern;
    pub use crate::session::{Auth, Grant, KeySource, Settings, DISCONNECTED, TOKEN_EXPIRED};
}

/// History: which topics keep it ([`history::Rule`]), positions
/// ([`history::Epoch`], [`history::Position`]) and pages of it
/// ([`history::Page`]), as the engine's hub keeps them and as a broker
/// answers for them.
pub mod history {
    pub use crate::hub::epoch::Epoch;
    pub use crate::hub::history::HistoryStats;
    pub use crate::hub::rules::Rule;
    /// The name the server's broker gives [`Recovery`]: the same type.
    pub use crate::hub::Recovery as Position;
    pub use crate::hub::{Page, Recovery};
}

/// Presence: who is on the topics `--presence` names (see
/// [`crate::Handle::presence_page`]), and their wire format.
pub mod presence {
    pub use crate::hub::presence::{Change, Member, Page, Stats, MAX_ANSWER};
    pub use crate::protocol::presence::{hook_event, member, page, stats, Who};
}

/// The io_uring setup the workers use, for clients (the bench's load
/// generator) that drive their own ring the same way.
pub mod uring {
    pub use crate::ring::buf_ring::{BufRing, BUFFER_GROUP};
    pub use crate::ring::setup::build_ring;
}
