//! A worker's connection table and everything that reacts to a
//! connection's bytes: the opening handshake, decoded messages, control
//! messages, fan-out, timers and the close handshake.
//!
//! This layer never touches the ring. It records what the ring must do in
//! two lists, [`Io::flush`] (connections with bytes to send or a shutdown
//! due) and [`Io::release`] (connections to tear down), which the worker
//! turns into SQEs once per loop iteration.

use crate::admission::{Admission, Forwarding, PeerId};
use crate::config::Config;
use crate::conn::{Conn, Endpoint, Phase};
use crate::control;
use crate::protocol::close::{self, code};
use crate::protocol::decoder::{Message, ProtocolError};
use crate::protocol::frame::{self, OpCode};
use crate::protocol::handshake::{self, Reject, Request};
use crate::protocol::proxy;
use crate::spread::Spread;
use crate::stats::{close_code_index, WorkerStats};
use crate::timers::{Entry, Tick, Wheel};
use crate::topics::{self, Member, Topics};
use bytes::Bytes;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a closing connection may take to finish the close handshake
/// before its socket is closed regardless.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits and endpoint settings, in the units the hot path uses.
struct Limits {
    path: String,
    echo: bool,
    subprotocols: Vec<String>,
    max_message: usize,
    max_outbound: usize,
    idle: Tick,
    ping: Tick,
    handshake: Tick,
    close: Tick,
    proxy_protocol: bool,
}

/// State shared by every connection of the worker, apart from the table
/// and the topics (so both can be borrowed beside it).
pub struct Io {
    /// Slots with frames to send, or a shutdown due, this iteration.
    pub flush: Vec<u32>,
    /// Slots to tear down this iteration.
    pub release: Vec<u32>,
    wheel: Wheel,
    stats: Arc<[WorkerStats]>,
    worker: usize,
    limits: Limits,
    ping: Bytes,
    admission: Arc<Admission>,
    /// Set by a drain: handshakes that complete now are answered 503.
    draining: bool,
}

/// A handshake that passed every check.
struct Accepted {
    endpoint: Endpoint,
    topics: Vec<String>,
    response: Vec<u8>,
    peer: PeerId,
    client: IpAddr,
}

/// What a decoded message asks for, applied once decoding is done.
enum Action {
    Send(Bytes),
    Control(control::Request),
    CloseEcho(Option<u16>),
    Fail(ProtocolError),
}

/// The connection table of one worker, indexed by fixed-file slot.
pub struct Connections {
    table: Vec<Option<Conn>>,
    len: usize,
    topics: Topics,
    /// Ring-facing lists, timers and counters.
    pub io: Io,
    next_gen: u32,
    delivery: u32,
    actions: Vec<Action>,
    due: Vec<(Entry, Tick)>,
    spread: Option<Spread>,
}

impl Io {
    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats[self.worker]
    }

    fn mark_flush(&mut self, conn: &mut Conn, slot: u32) {
        if !conn.flush_queued {
            conn.flush_queued = true;
            self.flush.push(slot);
        }
    }

    fn schedule(&mut self, conn: &mut Conn, slot: u32, at: Tick) {
        conn.timer_at = self.wheel.schedule(
            Entry {
                slot,
                gen: conn.gen,
            },
            at,
        );
    }

    /// Queues `frame` on an open connection. A queue over its limit makes
    /// the connection a slow consumer: it is closed with 1008. Returns
    /// whether the frame was queued.
    fn queue(&mut self, conn: &mut Conn, slot: u32, frame: Bytes) -> bool {
        if conn.phase != Phase::Open {
            return false;
        }
        let len = frame.len() as u64;
        if conn.out.push(frame, self.limits.max_outbound).is_err() {
            let stats = self.stats();
            WorkerStats::add(&stats.slow_consumer_closes, 1);
            WorkerStats::sub(&stats.outbound_bytes, conn.out.drop_unsent() as u64);
            tracing::debug!(slot, "slow consumer: outbound queue over its limit");
            self.close(conn, slot, Some(code::POLICY_VIOLATION), "slow consumer");
            return false;
        }
        WorkerStats::add(&self.stats().outbound_bytes, len);
        self.mark_flush(conn, slot);
        true
    }

    /// Queues `frame` whatever the limit (responses, close frames).
    fn enqueue(&mut self, conn: &mut Conn, frame: Bytes) {
        WorkerStats::add(&self.stats().outbound_bytes, frame.len() as u64);
        conn.out.push_unbounded(frame);
    }

    /// Starts the close handshake: queues a close frame (after anything
    /// already queued) and shuts the write side once it is written.
    fn close(&mut self, conn: &mut Conn, slot: u32, status: Option<u16>, reason: &str) {
        if conn.phase != Phase::Open {
            return;
        }
        if conn.close_code == 0 {
            conn.close_code = status.unwrap_or(code::NO_STATUS);
        }
        self.enqueue(conn, close::encode(status, reason));
        self.closing(conn, slot);
    }

    /// Refuses a handshake with an HTTP error response.
    fn reject(&mut self, conn: &mut Conn, slot: u32, reason: Reject) {
        self.stats().reject(reason);
        let peer = self.admission.ip(conn.peer);
        let peer = peer.map_or_else(String::new, |ip| ip.to_string());
        tracing::debug!(slot, peer, reason = reason.label(), "handshake rejected");
        conn.head = None;
        self.enqueue(conn, Bytes::from(reason.response()));
        self.closing(conn, slot);
    }

    /// Parses what a handshaking connection sent so far: the PROXY header
    /// (with `--proxy-protocol`), then the upgrade request; routes it and
    /// applies the admission rules. `Ok(None)` while incomplete; else the
    /// verdict and the bytes after the request (the first frames).
    fn handshake(&self, buf: &[u8], peer: PeerId) -> Result<Option<(Accepted, Vec<u8>)>, Reject> {
        let (proxied, buf) = if self.limits.proxy_protocol {
            match proxy::parse(buf) {
                Ok(None) => return Ok(None),
                Ok(Some((source, used))) => match source {
                    proxy::Source::Client(addr) => (Some(addr.ip()), &buf[used..]),
                    proxy::Source::Local => (None, &buf[used..]),
                },
                Err(proxy::Malformed(why)) => {
                    tracing::debug!(peer = ?self.admission.ip(peer), why, "bad PROXY header");
                    return Err(Reject::BadProxyHeader);
                }
            }
        } else {
            (None, buf)
        };
        let Some((req, used)) = handshake::parse(buf)? else {
            return Ok(None);
        };
        let (endpoint, topics, response) = route(&req, &self.limits)?;
        if !self.admission.origin_allowed(req.origin) {
            return Err(Reject::OriginNotAllowed);
        }
        let socket = self.admission.ip(peer);
        let fwd = Forwarding {
            proxied,
            forwarded_for: req.forwarded_for,
            real_ip: req.real_ip,
        };
        let client = match socket.or(proxied) {
            Some(ip) => self.admission.client_ip(ip, fwd)?,
            None => return Err(Reject::Malformed),
        };
        if self.draining {
            return Err(Reject::Draining);
        }
        let peer = self.admission.admit(peer, client)?;
        let accepted = Accepted {
            endpoint,
            topics,
            response,
            peer,
            client,
        };
        Ok(Some((accepted, buf[used..].to_vec())))
    }

    fn closing(&mut self, conn: &mut Conn, slot: u32) {
        let now = self.wheel.now();
        conn.enter(Phase::Closing, now);
        self.mark_flush(conn, slot);
        self.schedule(conn, slot, now + self.limits.close);
    }

    /// Tears the connection down: cancel its operations, close its slot.
    pub fn release(&mut self, conn: &mut Conn, slot: u32) {
        if conn.phase != Phase::Releasing {
            conn.enter(Phase::Releasing, self.wheel.now());
            self.release.push(slot);
        }
    }
}

/// The connection a CQE for (`slot`, `gen`) belongs to.
///
/// # Panics
/// If the slot holds no connection or another generation: a CQE outlived
/// its connection, which the release protocol rules out.
fn tenant(table: &mut [Option<Conn>], slot: u32, gen: u32) -> &mut Conn {
    let conn = table[slot as usize]
        .as_mut()
        .expect("CQE for an empty slot");
    assert_eq!(conn.gen, gen, "CQE for a previous tenant of slot {slot}");
    conn
}

/// Decides what a complete upgrade request gets: the endpoint, the topics
/// to subscribe, and the 101 response.
fn route(req: &Request<'_>, limits: &Limits) -> Result<(Endpoint, Vec<String>, Vec<u8>), Reject> {
    let endpoint = if req.path == limits.path {
        Endpoint::PubSub
    } else if limits.echo && req.path == "/echo" {
        Endpoint::Echo
    } else {
        return Err(Reject::NotFound);
    };
    let mut topics = Vec::new();
    if endpoint == Endpoint::PubSub {
        let query = req.query.unwrap_or("").as_bytes();
        for (key, value) in form_urlencoded::parse(query) {
            if key == "topic" {
                if !topics::is_valid_name(&value)
                    || topics.len() == topics::MAX_TOPICS_PER_CONNECTION
                {
                    return Err(Reject::BadTopic);
                }
                topics.push(value.into_owned());
            }
        }
    }
    let upgrade = req.upgrade(&limits.subprotocols)?;
    Ok((endpoint, topics, handshake::accept_response(&upgrade)))
}

/// Turns one decoded message into actions (no access to the table here).
fn on_message(endpoint: Endpoint, message: Message<'_>, actions: &mut Vec<Action>) {
    let text_reply = |s: String| Action::Send(frame::encode(OpCode::Text, s.as_bytes()));
    actions.push(match (endpoint, message) {
        (Endpoint::Echo, Message::Text(t)) => {
            Action::Send(frame::encode(OpCode::Text, t.as_bytes()))
        }
        (Endpoint::Echo, Message::Binary(b)) => Action::Send(frame::encode(OpCode::Binary, b)),
        (Endpoint::PubSub, Message::Text(t)) => match control::parse(t) {
            Ok(request) => Action::Control(request),
            Err(reason) => text_reply(control::error(&reason)),
        },
        (Endpoint::PubSub, Message::Binary(_)) => {
            text_reply(control::error("binary messages are not control messages"))
        }
        (_, Message::Ping(p)) => Action::Send(frame::encode(OpCode::Pong, p)),
        (_, Message::Pong(_)) => return,
        (_, Message::Close(status)) => Action::CloseEcho(status),
    });
}

impl Connections {
    /// An empty table of `capacity` slots for worker number `worker`.
    pub fn new(
        config: &Config,
        capacity: usize,
        stats: Arc<[WorkerStats]>,
        worker: usize,
        admission: &Arc<Admission>,
    ) -> Self {
        let ticks = Wheel::ticks;
        let admission = admission.clone();
        let mut table = Vec::new();
        table.resize_with(capacity, || None);
        Self {
            table,
            len: 0,
            topics: Topics::default(),
            io: Io {
                flush: Vec::new(),
                release: Vec::new(),
                wheel: Wheel::new(),
                stats,
                worker,
                limits: Limits {
                    path: config.path.clone(),
                    echo: config.echo,
                    subprotocols: config.subprotocols.clone(),
                    max_message: config.max_message_size,
                    max_outbound: config.max_outbound_bytes,
                    idle: ticks(config.idle_timeout),
                    ping: ticks(config.ping_interval),
                    handshake: ticks(config.handshake_timeout),
                    close: ticks(CLOSE_TIMEOUT),
                    proxy_protocol: config.proxy_protocol,
                },
                ping: frame::encode(OpCode::Ping, b""),
                admission,
                draining: false,
            },
            next_gen: 0,
            delivery: 0,
            actions: Vec::new(),
            due: Vec::new(),
            spread: None,
        }
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The connection in `slot`, checking the CQE's generation.
    ///
    /// # Panics
    /// See [`tenant`].
    pub fn get(&mut self, slot: u32, gen: u32) -> &mut Conn {
        tenant(&mut self.table, slot, gen)
    }

    /// The connection in `slot`, if any (for lists built this iteration).
    pub fn slot(&mut self, slot: u32) -> Option<&mut Conn> {
        self.table[slot as usize].as_mut()
    }

    /// Registers a connection the kernel accepted into `slot` from `ip`
    /// (`None` when the accept reported no address). Returns its
    /// generation.
    pub fn accept(&mut self, slot: u32, ip: Option<IpAddr>) -> u32 {
        assert!(
            self.table[slot as usize].is_none(),
            "accept into an occupied slot {slot}"
        );
        self.next_gen = (self.next_gen + 1) & crate::ring::token::GEN_MASK;
        let now = self.io.wheel.now();
        let peer = ip.map_or(PeerId::NONE, |ip| self.io.admission.accepted(ip));
        let mut conn = Conn::new(self.next_gen, now, peer);
        let at = now + self.io.limits.handshake;
        self.io.schedule(&mut conn, slot, at);
        self.table[slot as usize] = Some(conn);
        self.len += 1;
        let stats = self.io.stats();
        WorkerStats::add(&stats.accepted, 1);
        WorkerStats::add(&stats.connections, 1);
        self.next_gen
    }

    /// Bytes received on `slot`. `data` is the kernel's buffer, unmasked
    /// and parsed in place.
    pub fn on_data(&mut self, slot: u32, gen: u32, data: &mut [u8]) {
        WorkerStats::add(&self.io.stats().bytes_in, data.len() as u64);
        let now = self.io.wheel.now();
        let conn = self.get(slot, gen);
        conn.last_active = now;
        match conn.phase {
            Phase::Handshake => self.on_handshake_bytes(slot, data),
            Phase::Open => self.on_frames(slot, data),
            // Input after our close frame or during teardown is discarded.
            Phase::Closing | Phase::ShutDown | Phase::Releasing => {}
        }
    }

    fn on_handshake_bytes(&mut self, slot: u32, data: &mut [u8]) {
        let conn = self.table[slot as usize].as_mut().expect("live slot");
        if let Some(head) = conn.head.as_mut() {
            head.extend_from_slice(data);
        }
        let buf: &[u8] = conn.head.as_deref().map_or(&*data, |h| &h[..]);
        let (accepted, mut rest) = match self.io.handshake(buf, conn.peer) {
            Ok(None) => {
                if conn.head.is_none() {
                    conn.head = Some(Box::new(data.to_vec()));
                }
                return;
            }
            Err(reason) => return self.io.reject(conn, slot, reason),
            Ok(Some(verdict)) => verdict,
        };
        conn.head = None;
        let Accepted {
            endpoint,
            topics,
            response,
            peer,
            client,
        } = accepted;
        conn.peer = peer;
        conn.admitted = true;
        tracing::debug!(slot, peer = %client, ?endpoint, "connection open");
        self.io.enqueue(conn, Bytes::from(response));
        conn.endpoint = endpoint;
        conn.enter(Phase::Open, self.io.wheel.now());
        conn.last_ping = conn.phase_since;
        let at = conn.phase_since + self.io.limits.ping.min(self.io.limits.idle);
        self.io.schedule(conn, slot, at);
        self.io.mark_flush(conn, slot);
        for topic in topics {
            self.subscribe(slot, &topic);
        }
        if !rest.is_empty() {
            self.on_frames(slot, &mut rest);
        }
    }

    fn on_frames(&mut self, slot: u32, data: &mut [u8]) {
        let conn = self.table[slot as usize].as_mut().expect("live slot");
        let mut decoder = std::mem::take(&mut conn.decoder);
        let mut actions = std::mem::take(&mut self.actions);
        let (endpoint, max) = (conn.endpoint, self.io.limits.max_message);
        let mut messages = 0u64;
        let fed = decoder.feed(data, max, &mut |m| {
            messages += u64::from(matches!(m, Message::Text(_) | Message::Binary(_)));
            on_message(endpoint, m, &mut actions);
            ControlFlow::Continue(())
        });
        conn.decoder = decoder;
        WorkerStats::add(&self.io.stats().messages_in, messages);
        if let Err(e) = fed {
            tracing::debug!(slot, code = e.code, reason = e.reason, "protocol error");
            actions.push(Action::Fail(e));
        }
        for action in actions.drain(..) {
            self.apply(slot, action);
        }
        self.actions = actions;
    }

    fn apply(&mut self, slot: u32, action: Action) {
        let conn = self.table[slot as usize].as_mut().expect("live slot");
        match action {
            Action::Send(frame) => {
                self.io.queue(conn, slot, frame);
            }
            Action::CloseEcho(status) => self.io.close(conn, slot, status, ""),
            Action::Fail(e) => self.io.close(conn, slot, Some(e.code), e.reason),
            Action::Control(control::Request::Subscribe { topic }) => {
                let reply = self.subscribe(slot, &topic);
                self.reply(slot, reply);
            }
            Action::Control(control::Request::Unsubscribe { topic }) => {
                let member = self.topics.id(&topic).and_then(|id| conn.topics.remove(id));
                if let Some(member) = member {
                    self.leave(slot, member);
                }
                self.reply(slot, control::ack("unsubscribed", &topic));
            }
        }
    }

    fn reply(&mut self, slot: u32, text: String) {
        let conn = self.table[slot as usize].as_mut().expect("live slot");
        self.io
            .queue(conn, slot, frame::encode(OpCode::Text, text.as_bytes()));
    }

    /// Subscribes `slot` to `topic`; returns the reply to send.
    fn subscribe(&mut self, slot: u32, topic: &str) -> String {
        let conn = self.table[slot as usize].as_mut().expect("live slot");
        if !topics::is_valid_name(topic) {
            return control::error(topics::NAME_RULE);
        }
        if self
            .topics
            .id(topic)
            .is_none_or(|id| conn.topics.find(id).is_none())
        {
            if conn.topics.as_slice().len() >= topics::MAX_TOPICS_PER_CONNECTION {
                return control::error("too many topics on this connection");
            }
            conn.topics.push(self.topics.subscribe(topic, slot));
            self.update_topic_gauge();
        }
        control::ack("subscribed", topic)
    }

    /// Takes `slot` out of `member`'s topic, and updates the connection
    /// whose slot took its place in the member list.
    fn leave(&mut self, slot: u32, member: Member) {
        if let Some(moved) = self.topics.unsubscribe(member, slot) {
            let conn = self.table[moved as usize]
                .as_mut()
                .expect("subscriber slot is live");
            conn.topics.moved(member.topic, member.index);
        }
        self.update_topic_gauge();
    }

    fn update_topic_gauge(&self) {
        let gauge = &self.io.stats().topics;
        gauge.store(
            self.topics.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The peer closed its side (receive returned 0), or the socket failed.
    pub fn on_eof(&mut self, slot: u32, gen: u32) {
        let conn = tenant(&mut self.table, slot, gen);
        self.io.release(conn, slot);
    }

    /// A send wrote `result` bytes (or failed with `-errno`).
    pub fn on_sent(&mut self, slot: u32, gen: u32, result: i32) {
        let conn = tenant(&mut self.table, slot, gen);
        conn.send_in_flight = false;
        if result < 0 {
            return self.io.release(conn, slot);
        }
        conn.out.written(result as usize);
        let stats = self.io.stats();
        WorkerStats::add(&stats.bytes_out, result as u64);
        WorkerStats::sub(&stats.outbound_bytes, result as u64);
        if !conn.out.is_empty() || conn.phase == Phase::Closing {
            self.io.mark_flush(conn, slot);
        }
    }

    /// `shutdown(SHUT_WR)` completed: wait for the peer's EOF.
    pub fn on_shutdown(&mut self, slot: u32, gen: u32, result: i32) {
        let now = self.io.wheel.now();
        let conn = tenant(&mut self.table, slot, gen);
        conn.shutdown_in_flight = false;
        if conn.phase == Phase::Closing {
            conn.enter(Phase::ShutDown, now);
        }
        if result < 0 || !conn.recv_armed {
            self.io.release(conn, slot);
        }
    }

    /// Removes a connection whose operations have all completed, and
    /// unsubscribes it. The caller closes the slot.
    pub fn remove(&mut self, slot: u32) -> Conn {
        let conn = self.table[slot as usize]
            .take()
            .expect("remove of an empty slot");
        debug_assert!(!conn.busy());
        for &member in conn.topics.as_slice() {
            self.leave(slot, member);
        }
        self.len -= 1;
        self.io.admission.closed(conn.peer, conn.admitted);
        let stats = self.io.stats();
        WorkerStats::sub(&stats.connections, 1);
        WorkerStats::sub(&stats.outbound_bytes, conn.out.pending() as u64);
        WorkerStats::add(&stats.closed, 1);
        if conn.admitted {
            let code = match conn.close_code {
                0 => code::ABNORMAL,
                c => c,
            };
            WorkerStats::add(&stats.closed_by_code[close_code_index(code)], 1);
        }
        conn
    }

    /// Queues `frame` to every open subscriber of any of `topics`, once per
    /// connection. Returns how many connections it was queued to.
    pub fn publish(&mut self, topics: &[String], frame: &Bytes) -> usize {
        self.delivery = self.delivery.wrapping_add(1).max(1);
        let mut queued = 0;
        for name in topics {
            let Some(id) = self.topics.id(name) else {
                continue;
            };
            for slot in self.topics.members(id) {
                let conn = self.table[slot as usize]
                    .as_mut()
                    .expect("subscriber slot is live");
                if conn.last_delivery != self.delivery {
                    conn.last_delivery = self.delivery;
                    queued += usize::from(self.io.queue(conn, slot, frame.clone()));
                }
            }
        }
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Queues `frame` to every open connection on the topics endpoint.
    pub fn broadcast(&mut self, frame: &Bytes) -> usize {
        let mut queued = 0;
        for (slot, conn) in self.table.iter_mut().enumerate() {
            if let Some(conn) = conn.as_mut().filter(|c| c.endpoint == Endpoint::PubSub) {
                queued += usize::from(self.io.queue(conn, slot as u32, frame.clone()));
            }
        }
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Starts closing `fraction` of the open connections with 1001 and
    /// `reason`, chosen at random and spread evenly over `over` (see
    /// [`Spread`]); replaces any plan under way. With `drain`, handshakes
    /// that complete from now on are refused with 503.
    pub fn close_spread(
        &mut self,
        fraction: f64,
        over: Duration,
        reason: &'static str,
        drain: bool,
    ) {
        self.io.draining |= drain;
        let open = self
            .table
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                c.as_ref()
                    .filter(|c| c.phase == Phase::Open)
                    .map(|c| (slot as u32, c.gen))
            })
            .collect();
        self.spread = Some(Spread::new(open, fraction, over, reason));
    }

    /// Closes the connections whose turn in the spread has come.
    fn step_spread(&mut self) {
        let Some(spread) = self.spread.as_mut() else {
            return;
        };
        let reason = spread.reason;
        for &(slot, gen) in spread.due(Instant::now()) {
            if let Some(conn) = self.table[slot as usize].as_mut().filter(|c| c.gen == gen) {
                self.io.close(conn, slot, Some(code::GOING_AWAY), reason);
            }
        }
        if spread.is_done() {
            self.spread = None;
        }
    }

    /// Closes every connection for shutdown: open ones with 1001, the rest
    /// at once.
    pub fn shutdown(&mut self) {
        self.io.draining = true;
        self.spread = None;
        for (slot, conn) in self.table.iter_mut().enumerate() {
            let Some(conn) = conn.as_mut() else { continue };
            match conn.phase {
                Phase::Open => self.io.close(
                    conn,
                    slot as u32,
                    Some(code::GOING_AWAY),
                    "server shutting down",
                ),
                Phase::Handshake => self.io.release(conn, slot as u32),
                Phase::Closing | Phase::ShutDown | Phase::Releasing => {}
            }
        }
    }

    /// Time until the next timer tick.
    pub fn until_next_tick(&self) -> Duration {
        self.io.wheel.until_next_tick()
    }

    /// Runs every due deadline: handshake timeouts (408), pings, idle
    /// timeouts (1001), close handshakes that took too long, and the
    /// closes of a drain or rebalance whose turn has come.
    pub fn fire_timers(&mut self) {
        self.step_spread();
        let mut due = std::mem::take(&mut self.due);
        self.io.wheel.expire(&mut due);
        let now = self.io.wheel.now();
        for (entry, tick) in due.drain(..) {
            let Some(conn) = self.table[entry.slot as usize].as_mut() else {
                continue;
            };
            if conn.gen != entry.gen || conn.timer_at != tick {
                continue; // stale entry
            }
            let (slot, limits) = (entry.slot, &self.io.limits);
            match conn.phase {
                Phase::Handshake => {
                    let deadline = conn.phase_since + limits.handshake;
                    if now >= deadline {
                        self.io.reject(conn, slot, Reject::Timeout);
                    } else {
                        self.io.schedule(conn, slot, deadline);
                    }
                }
                Phase::Open => {
                    let idle_at = conn.last_active + limits.idle;
                    if now >= idle_at {
                        self.io
                            .close(conn, slot, Some(code::GOING_AWAY), "idle timeout");
                        continue;
                    }
                    if now >= conn.last_ping + limits.ping {
                        conn.last_ping = now;
                        let ping = self.io.ping.clone();
                        self.io.queue(conn, slot, ping);
                    }
                    let next = idle_at.min(conn.last_ping + self.io.limits.ping);
                    self.io.schedule(conn, slot, next);
                }
                Phase::Closing | Phase::ShutDown => {
                    let deadline = conn.phase_since + limits.close;
                    if now >= deadline {
                        self.io.release(conn, slot);
                    } else {
                        self.io.schedule(conn, slot, deadline);
                    }
                }
                Phase::Releasing => {}
            }
        }
        self.due = due;
    }
}
