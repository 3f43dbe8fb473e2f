//! What every connection of a worker shares beside the table: the lists
//! the ring turns into SQEs, the timer wheel, the send-queue pool, limits,
//! counters and admission; and the per-connection steps built on them
//! (queue a frame, start a close, reject a handshake, tear down).

use super::compression::Codec;
use super::opening::Handshaking;
use crate::admission::{Admission, PeerId};
use crate::config::Config;
use crate::conn::{Conn, Flag, Phase};
use crate::outbound::QueuePool;
use crate::protocol::close::code;
use crate::protocol::frame::{self, OpCode};
use crate::protocol::handshake::Reject;
use crate::session::Auth;
use crate::stats::WorkerStats;
use crate::timers::{Entry, Tick, Wheel, NEVER, TICK};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a closing connection may take to finish the close handshake
/// before its socket is closed regardless.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits and endpoint settings, in the units the hot path uses.
pub(super) struct Limits {
    pub path: String,
    pub echo: bool,
    pub subprotocols: Vec<String>,
    /// `subprotocols` and `ringcast.v1`: what the topics endpoint accepts.
    pub topic_subprotocols: Vec<String>,
    pub max_message: usize,
    pub max_outbound: usize,
    /// Inflated bytes per connection per second; 0: no budget.
    pub max_inflate_per_sec: u64,
    pub idle: Tick,
    pub ping: Tick,
    pub handshake: Tick,
    pub close: Tick,
    pub proxy_protocol: bool,
    pub compression: bool,
    /// Path of the SSE transport, if on.
    pub sse_path: Option<String>,
    /// Path of the long-poll transport, if on.
    pub poll_path: Option<String>,
    /// How long a poll waits for a message.
    pub poll_timeout: Tick,
    /// Static files by path, each with its whole response.
    pub statics: Vec<(String, Bytes)>,
    /// Admission waits for the connect hook.
    pub connect_hook: bool,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        let ticks = Wheel::ticks;
        Self {
            path: config.path.clone(),
            echo: config.echo,
            subprotocols: config.subprotocols.clone(),
            topic_subprotocols: crate::protocol::v1::subprotocols(&config.subprotocols),
            max_message: config.max_message_size,
            max_outbound: config.max_outbound_bytes,
            max_inflate_per_sec: config.max_inflate_bytes_per_sec,
            idle: ticks(config.idle_timeout),
            ping: ticks(config.ping_interval),
            handshake: ticks(config.handshake_timeout),
            close: ticks(CLOSE_TIMEOUT),
            proxy_protocol: config.proxy_protocol,
            compression: config.compression,
            sse_path: config.sse_path.clone(),
            poll_path: config.poll_path.clone(),
            poll_timeout: ticks(config.poll_timeout),
            statics: config
                .static_files
                .iter()
                .map(|f| (f.path.clone(), f.response()))
                .collect(),
            connect_hook: config.hooks.connect,
        }
    }
}

/// State shared by every connection of the worker, apart from the table
/// and the topics (so both can be borrowed beside it).
pub struct Io {
    /// Slots with frames to send, or a shutdown due, this iteration.
    pub flush: Vec<u32>,
    /// Slots to tear down this iteration.
    pub release: Vec<u32>,
    /// Storage for send queues.
    pub pool: QueuePool,
    pub(super) wheel: Wheel,
    stats: Arc<[WorkerStats]>,
    pub(super) worker: usize,
    pub(super) limits: Limits,
    pub(super) ping: Bytes,
    pub(super) admission: Arc<Admission>,
    /// Set by a drain: handshakes that complete now are answered 503.
    pub(super) draining: bool,
    /// What connections still in their opening handshake hold, by slot.
    /// Dropped once the handshake ends, so an open connection keeps none
    /// of it.
    pub(super) handshaking: HashMap<u32, Handshaking>,
    /// Each admitted connection's place in the per-address count, by slot
    /// (see [`Admission::admit`]). Kept only with
    /// `--max-connections-per-ip` (9 to 20 bytes a connection); without it
    /// every place is `PeerId::NONE` and the map stays empty, so the record
    /// has no field for it.
    pub(super) peers: HashMap<u32, PeerId>,
    /// Token verification; `None` while auth is off.
    pub(super) auth: Option<Arc<Auth>>,
    /// permessage-deflate state shared by the worker's connections.
    pub(super) codec: Codec,
}

impl Io {
    pub(super) fn new(
        config: &Config,
        stats: Arc<[WorkerStats]>,
        worker: usize,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            flush: Vec::new(),
            release: Vec::new(),
            pool: QueuePool::default(),
            wheel: Wheel::new(),
            stats,
            worker,
            limits: Limits::new(config),
            ping: frame::encode(OpCode::Ping, b""),
            admission,
            draining: false,
            handshaking: HashMap::new(),
            peers: HashMap::new(),
            auth: config.auth.clone(),
            codec: Codec::new(config.compression_min_size),
        }
    }

    /// The tick at which a token that expires at `expires` (Unix seconds)
    /// does; [`NEVER`] for `None` or beyond the tick range.
    pub(super) fn expiry_tick(&self, expires: Option<u64>) -> Tick {
        let Some(at) = expires else {
            return NEVER;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(at).saturating_sub(now);
        let ticks = left.as_millis().div_ceil(TICK.as_millis());
        let ticks = Tick::try_from(ticks).unwrap_or(NEVER);
        self.wheel.now().saturating_add(ticks).min(NEVER - 1)
    }

    /// Notes that the connection in `slot` was admitted with `peer` (its
    /// place in the per-address count).
    pub(super) fn admitted(&mut self, slot: u32, peer: PeerId) {
        if peer != PeerId::NONE {
            self.peers.insert(slot, peer);
        }
    }

    /// Gives back the place the admitted connection in `slot` holds in the
    /// admission counts: the total, and its address's.
    pub(super) fn admission_closed(&mut self, slot: u32) {
        let peer = self.peers.remove(&slot).unwrap_or(PeerId::NONE);
        self.admission.closed(peer);
    }

    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats[self.worker]
    }

    pub(super) fn mark_flush(&mut self, conn: &mut Conn, slot: u32) {
        if !conn.has(Flag::FlushQueued) {
            conn.set(Flag::FlushQueued, true);
            self.flush.push(slot);
        }
    }

    pub(super) fn schedule(&mut self, conn: &mut Conn, slot: u32, at: Tick) {
        conn.timer_at = self.wheel.schedule(
            Entry {
                slot,
                gen: conn.gen,
            },
            at,
        );
    }

    /// Queues `frame` on an open connection. A queue over its limit makes
    /// the connection a slow consumer: the frames not yet handed to the
    /// kernel are dropped and it is closed with 1008. Returns whether the
    /// frame was queued.
    pub(super) fn queue(&mut self, conn: &mut Conn, slot: u32, frame: Bytes) -> bool {
        if conn.phase() != Phase::Open {
            return false;
        }
        let len = frame.len() as u64;
        if conn
            .out
            .push(frame, self.limits.max_outbound, &mut self.pool)
            .is_err()
        {
            let dropped = conn.out.drop_unsent(&mut self.pool) as u64;
            let stats = self.stats();
            WorkerStats::add(&stats.slow_consumer_closes, 1);
            WorkerStats::sub(&stats.outbound_bytes, dropped);
            tracing::debug!(slot, "slow consumer: outbound queue over its limit");
            self.close(conn, slot, Some(code::POLICY_VIOLATION), "slow consumer");
            return false;
        }
        WorkerStats::add(&self.stats().outbound_bytes, len);
        self.mark_flush(conn, slot);
        true
    }

    /// Queues `frame` whatever the limit (responses, close frames).
    pub(super) fn enqueue(&mut self, conn: &mut Conn, frame: Bytes) {
        WorkerStats::add(&self.stats().outbound_bytes, frame.len() as u64);
        conn.out.push_unbounded(frame, &mut self.pool);
    }

    /// Starts the close handshake: queues a close frame (after anything
    /// already queued; on SSE, an `event: close` naming the code; on a
    /// long-poll connection, which speaks plain HTTP, nothing: a waiting
    /// poll ends with the connection) and shuts the write side once it is
    /// written.
    pub(super) fn close(&mut self, conn: &mut Conn, slot: u32, status: Option<u16>, reason: &str) {
        if conn.phase() != Phase::Open {
            return;
        }
        if conn.close_code == 0 {
            conn.close_code = status.unwrap_or(code::NO_STATUS);
        }
        let last = super::transport::close::close_bytes(conn.endpoint(), status, reason);
        if let Some(last) = last {
            self.enqueue(conn, last);
        }
        self.closing(conn, slot);
    }

    /// Refuses a handshake with an HTTP error response.
    pub(super) fn reject(&mut self, conn: &mut Conn, slot: u32, reason: Reject) {
        self.stats().reject(reason);
        let peer = self.end_handshake(slot).and_then(|h| h.peer);
        let peer = peer.map_or_else(String::new, |ip| ip.to_string());
        tracing::debug!(slot, peer, reason = reason.label(), "handshake rejected");
        self.respond(conn, slot, Bytes::from(reason.response()));
    }

    /// Answers a request that opens no connection (a refusal, a static
    /// file) with `response`, then closes.
    pub(super) fn respond(&mut self, conn: &mut Conn, slot: u32, response: Bytes) {
        self.handshaking.remove(&slot);
        self.enqueue(conn, response);
        self.closing(conn, slot);
    }

    /// Drops what a handshaking connection holds; a handshake parked for
    /// the connect hook gives back its place in the admission counts.
    pub(super) fn end_handshake(&mut self, slot: u32) -> Option<Handshaking> {
        let mut handshaking = self.handshaking.remove(&slot)?;
        if let Some(parked) = handshaking.parked.take() {
            self.admission.closed(parked.accepted.peer);
        }
        Some(handshaking)
    }

    fn closing(&mut self, conn: &mut Conn, slot: u32) {
        let now = self.wheel.now();
        conn.enter(Phase::Closing, now);
        self.mark_flush(conn, slot);
        self.schedule(conn, slot, now + self.limits.close);
    }

    /// Tears the connection down: cancel its operations, close its slot.
    pub fn release(&mut self, conn: &mut Conn, slot: u32) {
        if conn.phase() != Phase::Releasing {
            conn.enter(Phase::Releasing, self.wheel.now());
            self.release.push(slot);
        }
    }
}
