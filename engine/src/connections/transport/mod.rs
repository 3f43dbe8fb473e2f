//! The transports: what a connection's bytes mean once it is open, and
//! what bytes a delivery, a deadline or a close becomes on it. One module
//! per endpoint, behind one interface (an enum dispatch on the
//! connection's [`Endpoint`], so the fan-out's per-connection step is a
//! `match`, not a virtual call):
//!
//! | endpoint | module | open | bytes in | deliver | due | close |
//! |---|---|---|---|---|---|---|
//! | raw WebSocket | [`ws`] | subscribe | control messages, rooms | the raw frame | ping, idle | close frame |
//! | `ringcast.v1` | [`v1`] | subscribe with positions | ops | the v1 frame, per topic | ping, idle | close frame |
//! | `/echo` | [`echo`] | — | echoed | — | ping, idle | close frame |
//! | SSE | [`sse`] | subscribe, resume, replay | dropped | an event, per topic | heartbeat | `event: close` |
//! | long-poll | [`poll`] | a poll | the next polls, each checked | the answer | poll timeout, idle | — |
//!
//! The three WebSocket transports share the frame decoder and the
//! keep-alive ([`websocket`]). Each module owns the state it keeps beside
//! the table ([`Transports`]); the record holds none of it.
//!
//! # Adding a transport
//! A new `Endpoint` variant (`conn.rs`, packed in [`crate::conn::Route`]),
//! its route in `handshake.rs` (path, response head), a module here with
//! its `open`, bytes, `deliver` and `due`, and one arm in each function of
//! this file. The fan-out, the send queue, admission, drain and the
//! resume path are shared.

pub(super) mod close;
pub(super) mod echo;
pub(super) mod poll;
pub(super) mod sse;
pub(super) mod v1;
pub(super) mod websocket;
pub(super) mod ws;

use super::io::Io;
use super::Connections;
use crate::conn::{Conn, Endpoint};
use crate::delivery::Frames;
use crate::hub::epoch::Epoch;
use crate::hub::Recovery;
use crate::protocol::close::code;
use crate::timers::Tick;
use crate::topics::{TopicId, Topics};
use bytes::Bytes;
use std::net::IpAddr;

/// What the transports keep beside the table, by slot. An idle WebSocket
/// connection has nothing here.
#[derive(Default)]
pub(super) struct Transports {
    /// Positions of SSE streams with several topics that keep history.
    sse: sse::Streams,
    /// Long-poll connections.
    poll: poll::Polls,
    /// Inflate budgets of WebSocket connections that sent compressed
    /// messages.
    inflate: websocket::Budgets,
}

impl Transports {
    /// The connection in `slot` is gone.
    pub fn forget(&mut self, slot: u32) {
        self.sse.forget(slot);
        self.poll.forget(slot);
        self.inflate.remove(&slot);
    }
}

/// What a transport needs to open a connection, from its request.
pub(super) struct Opening {
    /// Topics named in the request (or by the connect hook), allowed.
    pub topics: Vec<String>,
    /// Where the client resumes: SSE's `Last-Event-ID`, a poll's `since`.
    pub position: Option<String>,
    /// SSE's `join_leave=1`: its topics' presence joins and leaves too.
    pub join_leave: bool,
    /// A poll's `Origin`, for the CORS headers of its answers.
    pub origin: Option<String>,
    /// The address forwarding headers are judged by (the PROXY header's
    /// source, else the socket's peer) and the client's address, which a
    /// poll's later requests are checked against.
    pub addresses: (IpAddr, IpAddr),
    /// Bytes after the request (a WebSocket client's first frames).
    pub rest: Vec<u8>,
}

/// One delivery, as every transport sees it: a publish on one topic, a
/// message to a user, or a broadcast. Each transport makes its bytes from
/// it once per worker ([`Encodings`]), on first use.
pub(super) struct Delivery<'a> {
    /// The topic, for a topic's delivery; `None` for a user's message or a
    /// broadcast.
    pub topic: Option<TopicId>,
    /// Offset and epoch, for a topic that keeps history.
    pub position: Option<(u64, Epoch)>,
    /// The payload as a raw-mode frame (this worker's copy).
    pub raw: &'a Frames,
    /// The payload as a `ringcast.v1` frame (shared by the workers: pass
    /// it through [`Encodings::v1`] for this worker's copy).
    pub v1: &'a Frames,
}

/// This worker's encodings of one [`Delivery`], made on first use and
/// shared by every connection that gets it.
#[derive(Default)]
pub(super) struct Encodings {
    v1: Option<Frames>,
    sse: sse::Encoded,
}

impl Encodings {
    /// This worker's copy of the `ringcast.v1` frames (`local` copies).
    pub fn v1(&mut self, d: &Delivery<'_>, local: &dyn Fn(&Frames) -> Frames) -> &Frames {
        self.v1.get_or_insert_with(|| local(d.v1))
    }
}

/// Whether a transport gets a publish once per topic (with the topic's
/// position) rather than once per publish.
pub(super) fn per_topic(endpoint: Endpoint) -> bool {
    !matches!(endpoint, Endpoint::PubSub | Endpoint::Echo)
}

/// Whether a transport's subscriptions carry positions (a subscribe reads
/// the history; live deliveries the read covered are skipped).
pub(super) fn resumes(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::PubSubV1 | Endpoint::Sse | Endpoint::Poll
    )
}

/// What a transport needs of the worker to deliver.
pub(super) struct Reach<'a> {
    pub io: &'a mut Io,
    pub transports: &'a mut Transports,
    pub topics: &'a Topics,
    pub local: &'a dyn Fn(&Frames) -> Frames,
}

impl Reach<'_> {
    /// Queues `d` on `conn` (in `slot`) as its transport encodes it.
    /// Returns whether a delivery was queued.
    pub fn deliver(
        &mut self,
        conn: &mut Conn,
        slot: u32,
        d: &Delivery<'_>,
        e: &mut Encodings,
    ) -> bool {
        match conn.endpoint() {
            Some(Endpoint::PubSub) => ws::deliver(self.io, conn, slot, d),
            Some(Endpoint::PubSubV1) => {
                let frame = e.v1(d, self.local).for_route(conn.route).clone();
                self.io.queue(conn, slot, frame)
            }
            Some(Endpoint::Sse) => {
                let sse = &mut self.transports.sse;
                sse.deliver(self.io, conn, slot, self.topics, d, &mut e.sse)
            }
            Some(Endpoint::Poll) => {
                let polls = &mut self.transports.poll;
                polls.deliver(self.io, conn, slot, self.topics, d)
            }
            Some(Endpoint::Echo) | None => false,
        }
    }
}

impl Connections {
    /// Opens the transport of a connection whose handshake just completed
    /// (its response, if any, already queued).
    pub(super) fn open_transport(&mut self, slot: u32, endpoint: Endpoint, opening: Opening) {
        let Opening {
            topics,
            position,
            join_leave,
            origin,
            addresses,
            mut rest,
        } = opening;
        match endpoint {
            // The client says nothing more on an SSE stream.
            Endpoint::Sse => {
                self.open_sse(slot, &topics, position.as_deref());
                if join_leave {
                    for topic in &topics {
                        self.listen_join_leave(slot, topic);
                    }
                }
                return;
            }
            Endpoint::Poll => {
                let since = position.as_deref();
                return self.open_poll(slot, addresses, &topics, since, origin, &rest);
            }
            Endpoint::PubSubV1 => self.open_v1(slot, &topics),
            Endpoint::PubSub => self.open_ws(slot, &topics),
            Endpoint::Echo => {}
        }
        if !rest.is_empty() {
            self.on_frames(slot, &mut rest);
        }
    }

    /// Bytes received on an open connection.
    pub(super) fn transport_bytes(
        &mut self,
        slot: u32,
        endpoint: Option<Endpoint>,
        data: &mut [u8],
    ) {
        match endpoint {
            // An SSE client has nothing more to say: its bytes are dropped.
            Some(Endpoint::Sse) => {}
            Some(Endpoint::Poll) => self.on_poll_bytes(slot, data),
            _ => self.on_frames(slot, data),
        }
    }

    /// The timer of an open connection fired at `now`.
    pub(super) fn transport_due(&mut self, slot: u32, endpoint: Option<Endpoint>, now: Tick) {
        match endpoint {
            Some(Endpoint::Poll) => self.poll_due(slot),
            // The server speaks on an SSE stream, so there is no idle
            // timeout: a dead client fails a heartbeat's write.
            Some(Endpoint::Sse) => self.keepalive_due(slot, now, false, sse::heartbeat()),
            _ => {
                let ping = self.io.ping.clone();
                self.keepalive_due(slot, now, true, ping);
            }
        }
    }
}

impl Connections {
    /// The keep-alive of an open WebSocket connection or SSE stream: the
    /// idle timeout (1001, only with `idle`: the server speaks on an SSE
    /// stream, so a dead client fails a heartbeat's write instead), the
    /// token's expiry (4001), and `ping` every `--ping-interval`.
    fn keepalive_due(&mut self, slot: u32, now: Tick, idle: bool, ping: Bytes) {
        let conn = self.table.get_mut(slot).expect("live slot");
        let limits = &self.io.limits;
        let idle_at = if idle {
            conn.last_active + limits.idle
        } else {
            crate::timers::NEVER
        };
        if now >= idle_at {
            return self
                .io
                .close(conn, slot, Some(code::GOING_AWAY), "idle timeout");
        }
        if now >= conn.expires {
            return self.io.close(
                conn,
                slot,
                Some(crate::session::TOKEN_EXPIRED),
                "token expired",
            );
        }
        if now >= conn.last_ping() + limits.ping {
            conn.pinged(now);
            self.io.queue(conn, slot, ping);
        }
        let next = idle_at
            .min(conn.last_ping() + self.io.limits.ping)
            .min(conn.expires);
        self.io.schedule(conn, slot, next);
    }
}

impl Connections {
    /// The broker's answer to [`crate::upstream::Event::Recover`] for
    /// connection (`slot`, `gen`) on `topic`: `None` when the broker could
    /// not be read. Handed, with the live deliveries held meanwhile that
    /// the answer does not cover, to the connection's transport, which
    /// answers as it would a read of the local hub. Ignored when the
    /// connection left the topic or is gone.
    pub fn recovered(&mut self, slot: u32, gen: u32, topic: &str, position: Option<Recovery>) {
        let Some(id) = self.topics.id(topic) else {
            return;
        };
        let Some(conn) = self.table.get_mut(slot).filter(|c| c.gen == gen) else {
            return;
        };
        let endpoint = conn.endpoint();
        let Some((resumes, live)) = self.resumes.held.answered(id, slot, position.as_ref()) else {
            return;
        };
        match endpoint {
            Some(Endpoint::Sse) => self.sse_resumed(slot, id, resumes, position, live),
            Some(Endpoint::Poll) => self.poll_resumed(slot, id, resumes, position, live),
            _ => self.v1_resumed(slot, topic, resumes, position, live),
        }
    }
}
