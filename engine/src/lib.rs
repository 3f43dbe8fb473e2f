//! ringcast engine: a thread-per-core WebSocket push server on io_uring.
//!
//! Read top-down, the way a byte travels:
//!
//! - [`ring`]: the kernel interface (ring setup, provided buffer ring,
//!   CQE tokens, SO_REUSEPORT listener);
//! - [`worker`]: one thread's ring loop, turning CQEs into calls on
//! - [`connections`]: the connection table, handshake and message handling,
//!   fan-out, timers, and the lists of sends and teardowns for the ring;
//! - [`conn`] and [`outbound`]: one connection's record and send queue;
//! - [`session`]: who a connection is (its token, user id and
//!   permissions), and each worker's index of users;
//! - [`protocol`]: RFC 6455 and permessage-deflate (RFC 7692) as pure
//!   state machines over byte slices;
//! - [`admission`]: client addresses, Origin, and connection limits;
//! - [`topics`], [`control`]: subscriptions and the JSON control messages;
//! - [`hub`]: per-topic history, offsets and epochs, shared by publishers
//!   and workers (the `ringcast.v1` subprotocol's recovery);
//! - [`timers`]: the timer wheel; [`spread`]: closes spread over a period
//!   (drain, rebalance);
//! - [`runtime`] and [`command`]: starting workers, and publishing to them
//!   from other threads; [`upstream`]: what workers hand to the
//!   embedding program's async side (client publishes, hooks);
//!   [`capacity`]: the host's connection ceiling.
//!
//! See `engine/README.md` for the design note.

pub mod admission;
pub mod broker;
pub mod capacity;
pub mod command;
pub mod config;
pub mod conn;
pub mod connections;
pub mod control;
pub mod hub;
pub mod outbound;
pub mod protocol;
pub mod ring;
pub mod runtime;
pub mod session;
pub mod spread;
pub mod stats;
pub mod timers;
pub mod topics;
pub mod upstream;
pub mod worker;

pub use config::{Config, StaticFile};
pub use protocol::frame::OpCode;
pub use protocol::v1::Content;
pub use runtime::{Handle, Runtime, Sender};
pub use stats::Snapshot;
