//! The engine's half of a cluster (the server's `--broker`).
//!
//! With [`crate::Config::broker`] set, offsets and epochs come from the
//! broker, not from the local [`crate::hub::Hub`], and a node receives a
//! topic's messages only while it tells the broker it holds the topic. So
//! a worker sends through [`crate::Config::upstream`]:
//! - [`crate::upstream::Event::Interest`]: a topic got its first
//!   subscriber on this worker, or lost its last (only those transitions:
//!   one event per topic per worker, never one per subscriber);
//! - [`crate::upstream::Event::Recover`]: a `ringcast.v1` subscribe to a
//!   topic that keeps history needs the topic's position, and with
//!   `since` the missed messages, read from the broker. The worker
//!   registers the subscription at once and holds its live deliveries
//!   until the answer ([`crate::command::Command::Recovered`], through
//!   [`crate::Handle::recovered`]) comes back; see
//!   `connections/recovery.rs` for why that is gapless.
//!
//! Deliveries come back through [`crate::Handle::deliver`]. The broker's
//! answer is a [`crate::hub::Recovery`], the same position type the hub
//! reads, judged by the same rule ([`crate::hub::Recovery::recoverable`]).
//! Every transport that resumes (`ringcast.v1`, SSE, long-poll) reads
//! through the one resume operation in `connections/recovery.rs`, so all
//! of them recover on another node of a cluster.
