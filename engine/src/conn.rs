//! One connection's record in a worker's table, keyed by its fixed-file
//! slot.

use crate::admission::PeerId;
use crate::outbound::Outbound;
use crate::protocol::decoder::Decoder;
use crate::session::SessionId;
use crate::timers::{Tick, NEVER};
use crate::topics::Subscriptions;

/// Where a connection is in its life. Transitions only move down the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// WebSocket frames flow both ways.
    Open,
    /// A final response or close frame is queued; once it is written the
    /// write side is shut down (`shutdown(SHUT_WR)`).
    Closing,
    /// Our side is shut down; waiting for the peer's EOF or the close
    /// timeout. Input is discarded.
    ShutDown,
    /// Operations are being cancelled; the slot is closed once none is in
    /// flight.
    Releasing,
}

/// What the endpoint does with client messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Topics endpoint: text messages are JSON control messages.
    PubSub,
    /// Topics endpoint with the `ringcast.v1` subprotocol: every server
    /// message is JSON, deliveries name their topic and position, and a
    /// subscribe may resume (see `connections/recovery.rs`).
    PubSubV1,
    /// `/echo`: every message comes back.
    Echo,
    /// The SSE transport (`GET /sse?topic=a`, see `connections/sse.rs`):
    /// the server writes `ringcast.v1` deliveries as Server-Sent Events;
    /// bytes from the client are ignored.
    Sse,
    /// The long-poll transport (`GET /poll?topic=a&since=…`, see
    /// `connections/poll.rs`): one HTTP/1.1 answer per request, on a
    /// keep-alive connection.
    Poll,
}

/// A connection. 80 bytes while idle; buffers are allocated only
/// while a handshake, frame or send is in progress.
pub struct Conn {
    /// Generation of this slot's tenant (24 bits, see `ring::token`).
    pub gen: u32,
    /// Life-cycle phase.
    pub phase: Phase,
    /// Endpoint, set when the handshake is admitted; `None` before, and for
    /// a connection refused at its handshake. `Some` means the connection
    /// counts as open in [`crate::admission::Admission`].
    pub endpoint: Option<Endpoint>,
    /// A multishot receive is armed.
    pub recv_armed: bool,
    /// A shutdown is in flight.
    pub shutdown_in_flight: bool,
    /// A cancellation has been submitted (Releasing).
    pub cancel_sent: bool,
    /// Queued in the worker's flush list this iteration.
    pub flush_queued: bool,
    /// The close code sent or received first (RFC 6455 §7.1.5), 0 while
    /// none was.
    pub close_code: u16,
    /// The client's address in the per-address count, once admitted (see
    /// [`crate::admission::Admission::admit`]); `PeerId::NONE` otherwise.
    pub peer: PeerId,
    /// Tick of the last byte received.
    pub last_active: Tick,
    /// Tick of the last ping sent (or the handshake).
    pub last_ping: Tick,
    /// Tick the current phase began.
    pub phase_since: Tick,
    /// Tick of this connection's live timer entry.
    pub timer_at: Tick,
    /// Who the connection is: its user and token's permissions, interned
    /// in the worker's [`crate::session::Sessions`].
    pub session: SessionId,
    /// Tick at which its token expires ([`NEVER`] without one).
    pub expires: Tick,
    /// Worker-local sequence number of the last publish queued here, so a
    /// publish to several topics is delivered once. 64 bits, so it never
    /// wraps onto a value a connection still holds.
    pub last_delivery: u64,
    /// Frame decoder (read side).
    pub decoder: Decoder,
    /// Send queue (write side).
    pub out: Outbound,
    /// Topics subscribed.
    pub topics: Subscriptions,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(gen: u32, now: Tick) -> Self {
        Self {
            gen,
            phase: Phase::Handshake,
            endpoint: None,
            recv_armed: false,
            shutdown_in_flight: false,
            cancel_sent: false,
            flush_queued: false,
            close_code: 0,
            peer: PeerId::NONE,
            last_active: now,
            last_ping: now,
            phase_since: now,
            timer_at: 0,
            session: SessionId::NONE,
            expires: NEVER,
            last_delivery: 0,
            decoder: Decoder::default(),
            out: Outbound::default(),
            topics: Subscriptions::None,
        }
    }

    /// Moves to `phase` at tick `now`.
    pub fn enter(&mut self, phase: Phase, now: Tick) {
        debug_assert!(
            phase as u8 >= self.phase as u8,
            "{:?} -> {phase:?}",
            self.phase
        );
        self.phase = phase;
        self.phase_since = now;
    }

    /// Whether an operation on the socket is still in flight. The record
    /// (and its send queue) is removed only once this is false.
    pub fn busy(&self) -> bool {
        self.recv_armed || self.out.in_flight() || self.shutdown_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_record_stays_small() {
        // The table holds one of these per fixed-file slot; user-space memory
        // per idle connection is this plus its topic memberships and, with
        // auth, its share of its user's session. Auth may add 8 bytes to
        // the 80 before it, no more.
        let size = std::mem::size_of::<Option<Conn>>();
        assert!(size <= 80, "Conn grew to {size} bytes");
    }
}
