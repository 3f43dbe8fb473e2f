//! One connection's record in a worker's table, keyed by its fixed-file
//! slot.

use crate::outbound::Outbound;
use crate::protocol::decoder::Decoder;
use crate::session::SessionId;
use crate::timers::{Tick, NEVER};
use crate::topics::Subscriptions;
use std::num::NonZeroU8;

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
#[repr(u8)]
pub enum Endpoint {
    /// Topics endpoint: text messages are JSON control messages.
    PubSub = 0,
    /// Topics endpoint with the `ringcast.v1` subprotocol: every server
    /// message is JSON, deliveries name their topic and position, and a
    /// subscribe may resume (see `connections/recovery.rs`).
    PubSubV1 = 2,
    /// `/echo`: every message comes back.
    Echo = 1,
    /// The SSE transport (`GET /sse?topic=a`, see `connections/sse.rs`):
    /// the server writes `ringcast.v1` deliveries as Server-Sent Events;
    /// bytes from the client are ignored.
    Sse = 3,
    /// The long-poll transport (`GET /poll?topic=a&since=…`, see
    /// `connections/poll.rs`): one HTTP/1.1 answer per request, on a
    /// keep-alive connection.
    Poll = 4,
}

/// The permessage-deflate mode a connection negotiated (RFC 7692). The
/// record holds no compression state: what compresses and inflates is
/// shared by the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Deflate {
    /// Not negotiated: RSV1 from the client is a protocol error.
    #[default]
    Off = 0,
    /// Negotiated with the full 32 KiB window: publishes reach this
    /// connection as the shared compressed frame.
    Full = 1,
    /// Negotiated with `server_max_window_bits` below 15: the client's
    /// messages are inflated and echoes compressed with a narrow window,
    /// but publishes reach it uncompressed (their one compressed frame
    /// uses the full window).
    Narrow = 2,
}

/// The endpoint a connection was admitted to and its [`Deflate`] mode,
/// packed in one byte (the record has no room for a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route(NonZeroU8);

impl Route {
    const MARKER: u8 = 0x80;

    /// Packs `endpoint` (bits 0-2) and `deflate` (bits 3-4) with a marker
    /// bit (7), so the byte is never 0.
    pub fn new(endpoint: Endpoint, deflate: Deflate) -> Self {
        let bits = Self::MARKER | endpoint as u8 | (deflate as u8) << 3;
        Self(NonZeroU8::new(bits).expect("the marker bit is set"))
    }

    /// The endpoint.
    pub fn endpoint(self) -> Endpoint {
        match self.0.get() & 0b111 {
            0 => Endpoint::PubSub,
            1 => Endpoint::Echo,
            2 => Endpoint::PubSubV1,
            3 => Endpoint::Sse,
            4 => Endpoint::Poll,
            bits => unreachable!("no endpoint is packed as {bits}"),
        }
    }

    /// The permessage-deflate mode.
    pub fn deflate(self) -> Deflate {
        match (self.0.get() >> 3) & 0b11 {
            0 => Deflate::Off,
            1 => Deflate::Full,
            _ => Deflate::Narrow,
        }
    }
}

/// One-bit facts about a connection's operations, packed with its
/// [`Phase`] in one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Flag {
    /// A multishot receive is armed.
    RecvArmed = 1 << 3,
    /// A shutdown is in flight.
    ShutdownInFlight = 1 << 4,
    /// A cancellation has been submitted (Releasing).
    CancelSent = 1 << 5,
    /// Queued in the worker's flush list this iteration.
    FlushQueued = 1 << 6,
}

/// A connection's [`Phase`] (bits 0-2) and [`Flag`]s (bits 3-6), in one
/// byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State(u8);

impl State {
    const PHASE: u8 = 0b111;

    fn new(phase: Phase) -> Self {
        Self(phase as u8)
    }

    fn phase(self) -> Phase {
        match self.0 & Self::PHASE {
            0 => Phase::Handshake,
            1 => Phase::Open,
            2 => Phase::Closing,
            3 => Phase::ShutDown,
            4 => Phase::Releasing,
            bits => unreachable!("no phase is packed as {bits}"),
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.0 = (self.0 & !Self::PHASE) | phase as u8;
    }
}

/// A connection: 64 bytes (asserted below), all an idle WebSocket
/// connection keeps in the table; buffers are allocated
/// only while a handshake, frame or send is in progress. What only some
/// connections need lives beside the table, by slot: a handshake's bytes
/// (`Io::handshaking`), the place in the per-address count (`Io::peers`),
/// transport and rate-limit state.
pub struct Conn {
    /// Generation of this slot's tenant (24 bits, see `ring::token`).
    pub gen: u32,
    /// Life-cycle phase and operation flags (see [`Conn::phase`],
    /// [`Conn::has`]).
    state: State,
    /// Endpoint and permessage-deflate mode, set when the handshake is
    /// admitted; `None` before, and for a connection refused at its
    /// handshake. `Some` means the connection counts as open in
    /// [`crate::admission::Admission`].
    pub route: Option<Route>,
    /// The close code sent or received first (RFC 6455 §7.1.5), 0 while
    /// none was.
    pub close_code: u16,
    /// Tick of the last byte received.
    pub last_active: Tick,
    /// Tick the current phase began; while `Open`, the tick of the last
    /// ping sent (the open phase has no deadline of its own to count
    /// from, so the two share the field).
    pub phase_since: Tick,
    /// Tick of this connection's live timer entry.
    pub timer_at: Tick,
    /// Who the connection is: its user and token's permissions, interned
    /// in the worker's [`crate::session::Sessions`].
    pub session: SessionId,
    /// Tick at which its token expires ([`NEVER`] without one).
    pub expires: Tick,
    /// Worker-local number of the last publish queued here, so a publish
    /// to several topics is delivered once; 0 for none. 32 bits: when the
    /// worker's count wraps, every record is reset to 0 first (see
    /// `connections::table::Table::next_delivery`), so no record holds a
    /// number given out again.
    pub last_delivery: u32,
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
            state: State::new(Phase::Handshake),
            route: None,
            close_code: 0,
            last_active: now,
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

    /// The endpoint it was admitted to, if it was.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.route.map(Route::endpoint)
    }

    /// The permessage-deflate mode it negotiated ([`Deflate::Off`] before
    /// admission).
    pub fn deflate(&self) -> Deflate {
        self.route.map_or(Deflate::Off, Route::deflate)
    }

    /// Where it is in its life.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Moves to `phase` at tick `now`.
    pub fn enter(&mut self, phase: Phase, now: Tick) {
        debug_assert!(
            phase as u8 >= self.phase() as u8,
            "{:?} -> {phase:?}",
            self.phase()
        );
        self.state.set_phase(phase);
        self.phase_since = now;
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: Flag) -> bool {
        self.state.0 & flag as u8 != 0
    }

    /// Sets or clears `flag`.
    pub fn set(&mut self, flag: Flag, on: bool) {
        if on {
            self.state.0 |= flag as u8;
        } else {
            self.state.0 &= !(flag as u8);
        }
    }

    /// Tick of the last ping sent while `Open` (the open phase's start
    /// until the first).
    pub fn last_ping(&self) -> Tick {
        self.phase_since
    }

    /// Notes a ping sent at `now` (only while `Open`).
    pub fn pinged(&mut self, now: Tick) {
        debug_assert_eq!(self.phase(), Phase::Open);
        self.phase_since = now;
    }

    /// Whether an operation on the socket is still in flight. The record
    /// (and its send queue) is removed only once this is false.
    pub fn busy(&self) -> bool {
        self.has(Flag::RecvArmed) || self.out.in_flight() || self.has(Flag::ShutdownInFlight)
    }
}

// One table slot (`Option<Conn>`, occupied or not): 64 bytes. User-space
// memory per idle connection is this, its timer entry (8 bytes), its
// topic memberships (4 bytes each in the topic's member list) and, with
// auth, its share of its user's session. Was 72 until the address's place
// in the per-address count moved beside the table and the publish number
// became 32 bits.
const _: () = assert!(std::mem::size_of::<Option<Conn>>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_and_flags_share_one_byte() {
        let mut conn = Conn::new(1, 5);
        conn.set(Flag::RecvArmed, true);
        conn.set(Flag::FlushQueued, true);
        conn.enter(Phase::Open, 9);
        assert_eq!(conn.phase(), Phase::Open);
        assert!(conn.has(Flag::RecvArmed) && conn.has(Flag::FlushQueued));
        assert!(!conn.has(Flag::ShutdownInFlight) && !conn.has(Flag::CancelSent));
        conn.set(Flag::RecvArmed, false);
        conn.enter(Phase::Releasing, 12);
        assert_eq!((conn.phase(), conn.phase_since), (Phase::Releasing, 12));
        assert!(!conn.has(Flag::RecvArmed) && conn.has(Flag::FlushQueued));
    }

    #[test]
    fn a_route_packs_endpoint_and_deflate_in_one_byte() {
        assert_eq!(std::mem::size_of::<Option<Route>>(), 1);
        for endpoint in [
            Endpoint::PubSub,
            Endpoint::PubSubV1,
            Endpoint::Echo,
            Endpoint::Sse,
            Endpoint::Poll,
        ] {
            for deflate in [Deflate::Off, Deflate::Full, Deflate::Narrow] {
                let route = Route::new(endpoint, deflate);
                assert_eq!((route.endpoint(), route.deflate()), (endpoint, deflate));
            }
        }
    }
}
