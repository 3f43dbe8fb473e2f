//! Full duplex on a worker: client publishes (`ringcast.v1` `publish` ops
//! and raw room messages), `rpc` ops, their per-connection rate limits,
//! and their hand-off upstream (see [`crate::upstream`]). The worker never
//! waits: it checks permission and rate, sends the event, and the answer
//! comes back as a [`crate::command::Command::Reply`].
//!
//! Rate-limit state lives in [`Duplex`], a side map keyed by
//! slot and created on a connection's first client message: an idle
//! connection's record holds none of it.

use super::Connections;
use crate::config::Config;
use crate::conn::Phase;
use crate::protocol::close::code;
use crate::protocol::control;
use crate::protocol::frame::{self, OpCode};
use crate::protocol::v1;
use crate::session::permissions::{self, Pattern};
use crate::stats::WorkerStats;
use crate::topics;
use crate::upstream::{Closed, Event, Hooks, Origin, Publish, Rpc, Upstream};
use crate::Content;
use crate::{Handle, Sender};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Full duplex on a worker: the settings, and the rate-limit state of the
/// connections that sent client messages, by slot.
pub(super) struct Duplex {
    pub settings: Settings,
    clients: HashMap<u32, Client>,
    /// The runtime's handle, once set: what a client publish with no
    /// hook and no broker is published through.
    pub(super) handle: Arc<OnceLock<Handle>>,
}

impl Duplex {
    pub fn new(config: &Config, handle: Arc<OnceLock<Handle>>) -> Self {
        Self {
            settings: Settings::new(config),
            clients: HashMap::new(),
            handle,
        }
    }

    /// Gives back the memory a peak of clients left (once a second).
    pub fn trim(&mut self) {
        let clients = self.clients.len();
        self.clients.shrink_to(clients * 2);
    }
}

/// Full-duplex settings, from the config.
pub(super) struct Settings {
    pub upstream: Option<Upstream>,
    pub client_publish: Vec<Pattern>,
    pub echo: bool,
    pub rooms: Vec<Pattern>,
    pub messages_per_sec: f64,
    pub bytes_per_sec: f64,
    pub hooks: Hooks,
}

impl Settings {
    pub fn new(config: &Config) -> Self {
        Self {
            upstream: config.upstream.clone(),
            client_publish: config.client_publish.clone(),
            echo: config.client_publish_echo,
            rooms: config.rooms.clone(),
            messages_per_sec: config.client_messages_per_sec,
            bytes_per_sec: config.client_bytes_per_sec,
            hooks: config.hooks,
        }
    }
}

/// The rate limits' state of one connection that sent client messages:
/// two token buckets (messages, bytes) holding one second's worth each,
/// and the count of the current one-second window for the 1008 close.
pub(super) struct Client {
    messages: f64,
    bytes: f64,
    refilled: Instant,
    window: Instant,
    window_messages: f64,
    window_bytes: f64,
}

/// What the rate limits say about one message.
#[derive(Debug, PartialEq, Eq)]
enum Rate {
    Pass,
    /// Over a bucket: drop it and say so.
    Limited,
    /// Past ten times a limit within the window: close with 1008.
    Abuse,
}

impl Client {
    fn new(settings: &Settings, now: Instant) -> Self {
        Self {
            messages: settings.messages_per_sec,
            bytes: settings.bytes_per_sec,
            refilled: now,
            window: now,
            window_messages: 0.0,
            window_bytes: 0.0,
        }
    }

    fn check(&mut self, settings: &Settings, len: usize, now: Instant) -> Rate {
        let (per_sec, bytes_per_sec) = (settings.messages_per_sec, settings.bytes_per_sec);
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.window_messages = 0.0;
            self.window_bytes = 0.0;
        }
        self.window_messages += 1.0;
        self.window_bytes += len as f64;
        if self.window_messages > 10.0 * per_sec || self.window_bytes > 10.0 * bytes_per_sec {
            return Rate::Abuse;
        }
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.messages = (self.messages + elapsed * per_sec).min(per_sec);
        self.bytes = (self.bytes + elapsed * bytes_per_sec).min(bytes_per_sec);
        if self.messages >= 1.0 && self.bytes >= len as f64 {
            self.messages -= 1.0;
            self.bytes -= len as f64;
            Rate::Pass
        } else {
            Rate::Limited
        }
    }
}

/// How a connection is answered: `ringcast.v1` ops get `{"op":"error",
/// "id":…}`, raw mode the control messages' error.
fn refusal(v1: bool, id: Option<u64>, reason: &str) -> Bytes {
    if v1 {
        v1::error(id, reason)
    } else {
        frame::encode(OpCode::Text, control::error(reason).as_bytes())
    }
}

impl Connections {
    fn origin(&self, slot: u32, gen: u32) -> Origin {
        Origin {
            worker: self.io.worker as u32,
            slot,
            gen,
        }
    }

    /// Applies the rate limits to a client message of `len` bytes.
    /// Returns whether it may go on; else it was answered (`rate
    /// limited`) or the connection is closing (1008).
    pub(super) fn within_rate(&mut self, slot: u32, len: usize, v1: bool, id: Option<u64>) -> bool {
        if self.table.get_mut(slot).expect("live slot").phase() != Phase::Open {
            return false; // closing: what follows the close is dropped
        }
        let now = Instant::now();
        let settings = &self.duplex.settings;
        let client = self
            .duplex
            .clients
            .entry(slot)
            .or_insert_with(|| Client::new(settings, now));
        let rate = client.check(settings, len, now);
        let conn = self.table.get_mut(slot).expect("live slot");
        let stats = self.io.stats();
        match rate {
            Rate::Pass => true,
            Rate::Limited => {
                WorkerStats::add(&stats.client_rate_limited, 1);
                self.io.queue(conn, slot, refusal(v1, id, "rate limited"));
                false
            }
            Rate::Abuse => {
                WorkerStats::add(&stats.client_rate_limit_closes, 1);
                tracing::debug!(slot, "client messages past ten times the rate limit");
                self.io.close(
                    conn,
                    slot,
                    Some(code::POLICY_VIOLATION),
                    "client messages over the rate limit",
                );
                false
            }
        }
    }

    /// Hands `event` upstream; answers `server busy` when the server
    /// cannot take it (or there is no upstream).
    fn send_upstream(&mut self, slot: u32, event: Event, v1: bool, id: Option<u64>) -> bool {
        let refused = match &self.duplex.settings.upstream {
            Some(upstream) => upstream.send(event).is_err(),
            None => true,
        };
        if refused {
            WorkerStats::add(&self.io.stats().upstream_refused, 1);
            let conn = self.table.get_mut(slot).expect("live slot");
            self.io.queue(conn, slot, refusal(v1, id, "server busy"));
        }
        !refused
    }

    /// Sends a client publish on: with no publish hook and no broker it
    /// needs nothing of the embedding program, so this worker publishes
    /// it itself, through the runtime's handle (the path `POST /publish`
    /// takes: one command to every worker), and answers `published` after
    /// it (the reply follows the publish in this worker's channel, so an
    /// echoed copy arrives first); else it goes upstream. Returns whether
    /// it went.
    fn publish_out(&mut self, slot: u32, publish: Publish, v1: bool, id: Option<u64>) -> bool {
        let local = !self.duplex.settings.hooks.publish && !self.broker;
        let Some(handle) = self.duplex.handle.get().filter(|_| local) else {
            return self.send_upstream(slot, Event::Publish(publish), v1, id);
        };
        let sender = Sender {
            user: publish.user,
            skip: (!publish.echo).then_some(publish.origin),
        };
        let (content, payload) = (publish.content, &publish.payload);
        let offsets =
            handle.publish_as(publish.topics, Vec::new(), content, payload, &sender, drop);
        if publish.reply {
            let offset = offsets.first().map(|(_, offset)| *offset);
            handle.reply(publish.origin, v1::published(publish.id, offset));
        }
        true
    }

    /// A `ringcast.v1` `publish` op: counted against the rate limits
    /// first (a refused publish costs its sender as much as a passed
    /// one), then allowed when the token's `publish` claim or
    /// `--client-publish` matches the topic and, for a user-limited topic,
    /// the sender's user is listed in it (see
    /// [`permissions::may_publish`]); then handed upstream, which answers
    /// `published`.
    pub(super) fn client_publish(
        &mut self,
        slot: u32,
        topic: String,
        data: Box<str>,
        id: Option<u64>,
    ) {
        if !self.within_rate(slot, data.len(), true, id) {
            return;
        }
        let session = self.table.get_mut(slot).expect("live slot").session;
        let refuse = |reason: &str| v1::error(id, reason);
        if !topics::is_valid_name(&topic) {
            return self.reply_frame_now(slot, refuse(topics::NAME_RULE));
        }
        let user = self.sessions.user(session);
        let grant = self.sessions.grant(session);
        if !permissions::may_publish(user, grant, &self.duplex.settings.client_publish, &topic) {
            WorkerStats::add(&self.io.stats().client_forbidden, 1);
            return self.reply_frame_now(slot, refuse("forbidden"));
        }
        let gen = self.table.get_mut(slot).expect("live slot").gen;
        let publish = Publish {
            origin: self.origin(slot, gen),
            id,
            reply: true,
            topics: vec![topic],
            user: self.sessions.user(session).map(str::to_owned),
            echo: self.duplex.settings.echo,
            content: Content::Json,
            payload: Bytes::from(data.into_boxed_bytes()),
        };
        if self.publish_out(slot, publish, true, id) {
            WorkerStats::add(&self.io.stats().client_publishes, 1);
        }
    }

    /// A `ringcast.v1` `rpc` op: handed to the rpc hook when it is on.
    pub(super) fn client_rpc(
        &mut self,
        slot: u32,
        id: Option<u64>,
        method: String,
        data: Box<str>,
    ) {
        if !self.duplex.settings.hooks.rpc {
            return self.reply_frame_now(slot, v1::error(id, "rpc is not enabled"));
        }
        if !self.within_rate(slot, data.len() + method.len(), true, id) {
            return;
        }
        let conn = self.table.get_mut(slot).expect("live slot");
        let (gen, session) = (conn.gen, conn.session);
        let event = Event::Rpc(Rpc {
            origin: self.origin(slot, gen),
            id,
            user: self.sessions.user(session).map(str::to_owned),
            method,
            data,
        });
        if self.send_upstream(slot, event, true, id) {
            WorkerStats::add(&self.io.stats().client_rpcs, 1);
        }
    }

    /// Whether raw rooms are on (`--room`): text and binary messages of
    /// raw-mode connections are first offered to [`Self::room_message`].
    pub(super) fn rooms_on(&self) -> bool {
        !self.duplex.settings.rooms.is_empty()
    }

    /// A raw-mode connection's text or binary message: if the connection
    /// holds topics matching `--room`, the message is published verbatim
    /// to each of them (within the rate limits) and `true` is returned;
    /// else `false` (not a room member: a text message is then a control
    /// message).
    pub(super) fn room_message(&mut self, slot: u32, content: Content, payload: Bytes) -> bool {
        let conn = self.table.get_mut(slot).expect("live slot");
        let rooms: Vec<String> = conn
            .topics
            .as_slice()
            .iter()
            .map(|m| self.topics.name(m.topic))
            .filter(|name| self.duplex.settings.rooms.iter().any(|p| p.matches(name)))
            .map(str::to_owned)
            .collect();
        if rooms.is_empty() {
            return false;
        }
        let (gen, session) = (conn.gen, conn.session);
        if !self.within_rate(slot, payload.len(), false, None) {
            return true;
        }
        let publish = Publish {
            origin: self.origin(slot, gen),
            id: None,
            reply: false,
            topics: rooms,
            user: self.sessions.user(session).map(str::to_owned),
            echo: self.duplex.settings.echo,
            content,
            payload,
        };
        if self.publish_out(slot, publish, false, None) {
            WorkerStats::add(&self.io.stats().client_publishes, 1);
        }
        true
    }

    fn reply_frame_now(&mut self, slot: u32, frame: Bytes) {
        let conn = self.table.get_mut(slot).expect("live slot");
        self.io.queue(conn, slot, frame);
    }

    /// A connection is being removed: forgets its rate limits, and tells
    /// upstream while the disconnect hook is on.
    pub(super) fn duplex_closed(&mut self, slot: u32, gen: u32, user: Option<&str>, code: u16) {
        self.duplex.clients.remove(&slot);
        if !self.duplex.settings.hooks.disconnect {
            return;
        }
        let event = Event::Closed(Closed {
            origin: self.origin(slot, gen),
            user: user.map(str::to_owned),
            code,
        });
        if let Some(upstream) = &self.duplex.settings.upstream {
            if upstream.send(event).is_err() {
                WorkerStats::add(&self.io.stats().upstream_refused, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_sec: f64, bytes: f64) -> Settings {
        Settings {
            upstream: None,
            client_publish: Vec::new(),
            echo: true,
            rooms: Vec::new(),
            messages_per_sec: per_sec,
            bytes_per_sec: bytes,
            hooks: Hooks::default(),
        }
    }

    #[test]
    fn buckets_refill_and_abuse_closes() {
        let s = settings(10.0, 1000.0);
        let t0 = Instant::now();
        let mut c = Client::new(&s, t0);
        for _ in 0..10 {
            assert_eq!(c.check(&s, 10, t0), Rate::Pass);
        }
        assert_eq!(c.check(&s, 10, t0), Rate::Limited);
        // 100 ms refills one message.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(c.check(&s, 10, t1), Rate::Pass);
        assert_eq!(c.check(&s, 10, t1), Rate::Limited);
        // A message over the byte bucket never passes.
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!(c.check(&s, 1001, t2), Rate::Limited);
        // Past ten times the rate within one window: abuse.
        let t3 = t0 + Duration::from_secs(10);
        let verdicts: Vec<Rate> = (0..101).map(|_| c.check(&s, 1, t3)).collect();
        assert_eq!(verdicts.iter().filter(|r| **r == Rate::Pass).count(), 10);
        assert_eq!(verdicts.last(), Some(&Rate::Abuse));
    }
}
