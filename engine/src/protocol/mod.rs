//! RFC 6455 wire protocol: pure functions and state machines over byte
//! slices, with no I/O. Everything here can be unit-tested, fuzzed and
//! benched alone.
//!
//! - [`handshake`]: the HTTP/1.1 opening handshake (RFC 6455 §4).
//! - [`reject`]: refusals of a request, each with its HTTP status.
//! - [`frame`]: frame header parse and encode (RFC 6455 §5.2).
//! - [`mask`]: client-to-server payload unmasking (RFC 6455 §5.3).
//! - [`utf8`]: incremental, fail-fast UTF-8 validation (RFC 6455 §8.1).
//! - [`close`]: close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).
//! - [`decoder`]: a connection's read side: frames to messages, with
//!   fragment reassembly and interleaved control frames (RFC 6455 §5.4).
//! - [`proxy`]: the PROXY protocol v1/v2 header in front of a connection.
//! - [`control`]: the JSON control messages of the topics endpoint.
//! - [`names`]: the topic name rule.
//! - [`v1`]: the `ringcast.v1` subprotocol's JSON messages.
//! - [`extension`]: permessage-deflate negotiation (RFC 7692 §5–§7).
//! - [`deflate`]: the permessage-deflate codec (RFC 7692 §7.2).
//! - [`poll`]: long-poll answers.
//! - [`sse`]: Server-Sent Events: the SSE transport's head, events and
//!   positions.

pub mod close;
pub mod control;
pub mod decoder;
pub mod deflate;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod names;
pub mod poll;
pub mod presence;
pub mod proxy;
pub mod reject;
pub mod sse;
pub mod utf8;
pub mod v1;
