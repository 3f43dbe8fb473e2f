//! The long-poll transport on a worker: `GET /poll?topic=a&since=…` on a
//! keep-alive connection, answered as soon as a message after `since`
//! exists, or after `--poll-timeout` with none. A sibling of WebSocket and
//! SSE over the same record, admission and drain.
//!
//! Each poll is whole in itself: it subscribes to its topics, reads what
//! the history holds after `since` (as a `ringcast.v1` resume does, so
//! with no gap and no duplicate, see `recovery.rs`), and either answers
//! with those messages at once or waits for the first live delivery. Once
//! answered, the connection leaves its topics until the next request;
//! what is published meanwhile is read from the history by the next poll
//! (`since` = the answer's `next`). Topics without history have no
//! positions: their messages reach only a waiting poll.
//!
//! State lives in [`Polls`], a side map by slot; a poll's cost is this
//! entry, its subscriptions while it waits, and one answer.
//!
//! # Every request checked by itself
//! A connection may be shared by many clients (a proxy's pool of upstream
//! connections), so each request on it goes through the checks of the
//! first (`Io::check`): no body, `Origin`, forwarding headers,
//! drain, the token (its user and grants replace the previous request's;
//! none is anonymous, or 401), each topic's permission, and the
//! per-address admission count when the client's address changed. A
//! request that fails is answered with its refusal and the connection
//! closes. With the connect hook on, whose answer admitted the first
//! request only, every answer carries `Connection: close` and the
//! connection closes after it (RFC 9112 §9.6: requests after it are not
//! read).
//!
//! # Pipelining
//! Bytes after a request head are the next request, never a body (a head
//! that announces one is refused with 400). Requests are answered in
//! order: a complete request (or bytes that cannot be one) behind a
//! waiting poll first ends that poll with an answer without messages, as
//! its timeout would; then it is handled. At most
//! [`handshake::MAX_REQUEST_HEAD`] bytes of an incomplete request are
//! kept (past them: 431 and close). Behind a poll still reading its
//! positions from the broker, the bytes wait unparsed until it answers
//! or waits (at most twice that bound: past it, 431 and close).

use super::super::handshake::{query_topics, Checked};
use super::super::io::Io;
use super::super::recovery::{Live, Read, REPLY_ROOM};
use super::super::Connections;
use super::sse::{id_text, Positions};
use super::Delivery;
use crate::conn::{Conn, Phase};
use crate::hub::Recovery;
use crate::protocol::handshake::{self, Reject};
use crate::protocol::sse::parse_positions;
use crate::protocol::{frame, poll, v1::Since};
use crate::session::SessionId;
use crate::stats::WorkerStats;
use crate::timers::{Tick, NEVER};
use crate::topics::{TopicId, Topics};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::IpAddr;

/// One long-poll connection.
#[derive(Default)]
pub(super) struct Poll {
    /// Bytes of the next requests, while incomplete or behind a poll.
    head: Vec<u8>,
    /// The current request's `Origin`, for CORS headers.
    origin: Option<String>,
    /// The address forwarding headers are judged by (the PROXY header's
    /// source, else the socket's peer), and the client the admission
    /// counts hold the connection for.
    addresses: Option<(IpAddr, IpAddr)>,
    /// Positions of the poll's topics that keep history.
    positions: Positions,
    /// The poll waits for a message (no answer queued yet).
    waiting: bool,
    /// Tick at which a waiting poll is answered with no message.
    deadline: Tick,
    /// The broker's reads the poll waits for before it answers or waits.
    reading: Option<Box<Reading>>,
}

/// A poll waiting for the broker's reads of its topics.
struct Reading {
    /// Reads not answered yet.
    asked: usize,
    /// Frames after the poll's positions, so far.
    frames: Vec<Bytes>,
    /// Topics it could not resume, so far.
    reset: Vec<String>,
    /// A topic with history learned its position.
    unplaced: bool,
}

/// Long-poll connections by slot, and those answered by the publish being
/// applied (they leave their topics once it is done).
#[derive(Default)]
pub(super) struct Polls {
    by_slot: HashMap<u32, Poll>,
    answered: Vec<u32>,
}

impl Polls {
    /// The connection in `slot` is gone.
    pub fn forget(&mut self, slot: u32) {
        if !self.by_slot.is_empty() {
            self.by_slot.remove(&slot);
        }
    }

    /// Answers `slot`'s waiting poll with `d` (a topic's delivery; a
    /// poll gets nothing else). Returns whether an answer was queued.
    pub fn deliver(
        &mut self,
        io: &mut Io,
        conn: &mut Conn,
        slot: u32,
        topics: &Topics,
        d: &Delivery<'_>,
    ) -> bool {
        let Some(topic) = d.topic else {
            return false;
        };
        let Some(p) = self.by_slot.get_mut(&slot).filter(|p| p.waiting) else {
            return false;
        };
        if let Some((offset, epoch)) = d.position {
            if let Some(at) = p.positions.iter_mut().find(|at| at.0 == topic) {
                (at.1, at.2) = (offset, epoch);
            }
        }
        p.waiting = false;
        self.answered.push(slot);
        let next = id_text(topics, &p.positions);
        let close = io.limits.connect_hook;
        io.queue(
            conn,
            slot,
            answer(p.origin.as_deref(), &d.v1.plain, &next, close),
        )
    }
}

/// The answer to a waiting poll that one delivery (`frame`, its
/// `ringcast.v1` frame) ends, with `next` the positions after it (and
/// `Connection: close` with `close`).
fn answer(origin: Option<&str>, frame: &Bytes, next: &str, close: bool) -> Bytes {
    poll::response(origin, &[frame::server_payload(frame)], next, &[], close)
}

impl Connections {
    /// Opens a long-poll connection whose first request passed every
    /// check: starts its poll, then reads what came after the request.
    /// `addresses`: see [`Poll::addresses`].
    pub(super) fn open_poll(
        &mut self,
        slot: u32,
        addresses: (IpAddr, IpAddr),
        topics: &[String],
        since: Option<&str>,
        origin: Option<String>,
        rest: &[u8],
    ) {
        let polls = &mut self.transports.poll.by_slot;
        polls.entry(slot).or_default().addresses = Some(addresses);
        self.start_poll(slot, topics, since, origin);
        if !rest.is_empty() {
            self.on_poll_bytes(slot, rest);
        }
    }

    /// Starts a poll on `slot` for `topics` after `since` (positions text):
    /// answers at once with what the history holds after it, with the
    /// topics it could not resume (`reset`), or when a topic with history
    /// has no position in `since` (the answer's `next` gives it); else
    /// waits.
    pub(in crate::connections) fn start_poll(
        &mut self,
        slot: u32,
        topics: &[String],
        since: Option<&str>,
        origin: Option<String>,
    ) {
        let since = since.map(parse_positions).unwrap_or_default();
        let mut state = self
            .transports
            .poll
            .by_slot
            .remove(&slot)
            .unwrap_or_default();
        state.origin = origin;
        state.positions.clear();
        let (mut frames, mut reset) = (Vec::new(), Vec::new());
        let mut reserved = 0;
        // A topic with history but no `since` learns its position at once.
        let mut unplaced = false;
        let mut asked = 0;
        for topic in topics {
            if self.held(slot, topic).is_some() {
                continue;
            }
            self.subscribe(slot, topic);
            let Some(id) = self.held(slot, topic) else {
                // Not allowed for this connection's token.
                let conn = self.table.get_mut(slot).expect("live slot");
                let refusal = Bytes::from(Reject::Forbidden.response());
                self.transports.poll.by_slot.insert(slot, state);
                self.io.enqueue(conn, refusal);
                return self.io.close(conn, slot, None, "");
            };
            let from = since.iter().find(|p| p.topic == *topic).map(|p| Since {
                offset: p.offset,
                epoch: p.epoch.clone(),
            });
            let room = self
                .io
                .limits
                .max_outbound
                .saturating_sub(reserved + REPLY_ROOM + topic.len());
            let recovery = match self.resume(slot, id, topic, from.as_ref(), from.is_some(), room) {
                Read::NoHistory => continue, // live messages only
                Read::Asked => {
                    asked += 1;
                    continue;
                }
                Read::Now(recovery) => recovery,
            };
            state.positions.push((id, recovery.top, recovery.epoch));
            match recovery.replay {
                Some(replay) => {
                    reserved += replay.iter().map(Bytes::len).sum::<usize>();
                    frames.extend(replay);
                }
                None if from.is_some() => reset.push(topic.clone()),
                None => unplaced = true,
            }
        }
        if asked > 0 {
            state.reading = Some(Box::new(Reading {
                asked,
                frames,
                reset,
                unplaced,
            }));
            self.transports.poll.by_slot.insert(slot, state);
            return; // answered once the broker's reads are (`poll_resumed`)
        }
        self.poll_decide(slot, state, frames, reset, unplaced);
    }

    /// The broker's answer for `slot`'s poll on topic `id` (see
    /// [`Connections::recovered`]): the topic's position, its replay (or
    /// its reset), and the `live` deliveries held meanwhile join the
    /// poll's answer, which is decided once every read is in.
    pub(super) fn poll_resumed(
        &mut self,
        slot: u32,
        id: TopicId,
        resumes: bool,
        at: Option<Recovery>,
        live: Vec<Live>,
    ) {
        let polls = &mut self.transports.poll.by_slot;
        let Some(mut state) = polls.remove(&slot) else {
            return;
        };
        let Some(mut reading) = state.reading.take() else {
            polls.insert(slot, state);
            return;
        };
        let name = self.topics.name(id);
        match at {
            Some(recovery) => {
                state.positions.push((id, recovery.top, recovery.epoch));
                match recovery.replay {
                    Some(replay) => reading.frames.extend(replay),
                    None if resumes => reading.reset.push(name.to_owned()),
                    None => reading.unplaced = true,
                }
            }
            // The broker could not be read: live messages only.
            None if resumes => reading.reset.push(name.to_owned()),
            None => {}
        }
        for (position, frame) in live {
            let at = state.positions.iter_mut().find(|at| at.0 == id);
            if let (Some(at), Some((offset, epoch))) = (at, position) {
                (at.1, at.2) = (offset, epoch);
            }
            reading.frames.push(frame);
        }
        reading.asked -= 1;
        if reading.asked > 0 {
            state.reading = Some(reading);
            self.transports.poll.by_slot.insert(slot, state);
            return;
        }
        let Reading {
            frames,
            reset,
            unplaced,
            ..
        } = *reading;
        self.poll_decide(slot, state, frames, reset, unplaced);
        // Requests that came meanwhile, in order.
        self.next_requests(slot);
    }

    /// A poll whose reads are all in: answers at once with `frames` (the
    /// `ringcast.v1` frames after its positions), `reset` (topics it could
    /// not resume), or for a topic that learns its position (`unplaced`);
    /// else waits for the first live delivery or `--poll-timeout`.
    fn poll_decide(
        &mut self,
        slot: u32,
        mut state: Poll,
        frames: Vec<Bytes>,
        reset: Vec<String>,
        unplaced: bool,
    ) {
        if frames.is_empty() && reset.is_empty() && !unplaced {
            state.waiting = true;
            state.deadline = self.io.wheel.now() + self.io.limits.poll_timeout;
            let at = state.deadline;
            self.transports.poll.by_slot.insert(slot, state);
            let conn = self.table.get_mut(slot).expect("live slot");
            let at = at.min(conn.expires);
            return self.io.schedule(conn, slot, at);
        }
        let json: Vec<&[u8]> = frames.iter().map(|f| frame::server_payload(f)).collect();
        let next = id_text(&self.topics, &state.positions);
        let close = self.io.limits.connect_hook;
        let answer = poll::response(state.origin.as_deref(), &json, &next, &reset, close);
        WorkerStats::add(&self.io.stats().messages_out, frames.len() as u64);
        self.transports.poll.by_slot.insert(slot, state);
        self.poll_answered(slot, answer);
    }

    /// Queues `answer` and leaves the poll's topics until the next request.
    fn poll_answered(&mut self, slot: u32, answer: Bytes) {
        let conn = self.table.get_mut(slot).expect("live slot");
        self.io.queue(conn, slot, answer);
        self.after_answer(slot);
    }

    /// An answer is queued: the connection leaves its topics and waits
    /// for the next request, or closes after the answer with the connect
    /// hook on (the answer said `Connection: close`).
    fn after_answer(&mut self, slot: u32) {
        self.leave_all(slot);
        if self.io.limits.connect_hook {
            let conn = self.table.get_mut(slot).expect("live slot");
            return self.io.close(conn, slot, None, "");
        }
        self.schedule_poll(slot);
    }

    /// Answers `slot`'s waiting poll now, with no message (its timeout's
    /// answer).
    fn end_waiting_poll(&mut self, slot: u32) {
        let polls = &mut self.transports.poll.by_slot;
        let Some(state) = polls.get_mut(&slot).filter(|p| p.waiting) else {
            return;
        };
        state.waiting = false;
        let next = id_text(&self.topics, &state.positions);
        let close = self.io.limits.connect_hook;
        let answer = poll::response(state.origin.as_deref(), &[], &next, &[], close);
        self.poll_answered(slot, answer);
    }

    /// Takes `slot` out of every topic.
    fn leave_all(&mut self, slot: u32) {
        let conn = self.table.get_mut(slot).expect("live slot");
        let members: Vec<_> = conn.topics.as_slice().to_vec();
        for member in members {
            let conn = self.table.get_mut(slot).expect("live slot");
            if let Some(member) = conn.topics.remove(member.topic) {
                self.leave(slot, member);
            }
        }
    }

    /// The polls a publish answered leave their topics (after the publish,
    /// so that no topic's member list changes while it is walked).
    pub(in crate::connections) fn finish_polls(&mut self) {
        while let Some(slot) = self.transports.poll.answered.pop() {
            if self.table.get_mut(slot).is_some() {
                self.after_answer(slot);
            }
        }
    }

    /// Bytes on a long-poll connection: the next requests, each handled
    /// in turn once complete (see the module documentation). With the
    /// connect hook on, no request after the first is read.
    pub(in crate::connections) fn on_poll_bytes(&mut self, slot: u32, data: &[u8]) {
        if self.io.limits.connect_hook {
            return; // the answer says `Connection: close`
        }
        let state = self.transports.poll.by_slot.entry(slot).or_default();
        state.head.extend_from_slice(data);
        if state.reading.is_some() && state.head.len() > 2 * handshake::MAX_REQUEST_HEAD {
            return self.refuse_poll(slot, Reject::HeadersTooLarge);
        }
        self.next_requests(slot);
    }

    /// Handles the complete requests kept for `slot`, in order, up to an
    /// incomplete one or a poll that reads its positions from the broker
    /// (whose answer comes first: see [`Self::poll_resumed`]).
    fn next_requests(&mut self, slot: u32) {
        while self
            .table
            .get_mut(slot)
            .is_some_and(|c| c.phase() == Phase::Open)
        {
            let Some(state) = self.transports.poll.by_slot.get_mut(&slot) else {
                return;
            };
            if state.reading.is_some() || state.head.is_empty() {
                return;
            }
            let head = std::mem::take(&mut state.head);
            let (req, used) = match handshake::parse(&head) {
                Ok(None) => {
                    state.head = head;
                    return;
                }
                Ok(Some((req, used))) => (Ok(req), used),
                Err(reason) => (Err(reason), head.len()),
            };
            // Answers keep the requests' order.
            self.end_waiting_poll(slot);
            if let Err(reason) = req.and_then(|req| self.poll_request(slot, &req)) {
                return self.refuse_poll(slot, reason);
            }
            let rest = &head[used..];
            if rest.is_empty() {
                return;
            }
            if let Some(state) = self.transports.poll.by_slot.get_mut(&slot) {
                state.head = rest.to_vec();
            }
        }
    }

    /// A later request on a long-poll connection: checked as the first
    /// was; its token (or none) becomes the connection's, a new client
    /// address takes the connection's place in the admission counts, and
    /// its poll starts.
    ///
    /// # Errors
    /// The refusal to answer with, before anything changed.
    fn poll_request(&mut self, slot: u32, req: &handshake::Request<'_>) -> Result<(), Reject> {
        if Some(req.path) != self.io.limits.poll_path.as_deref() {
            return Err(Reject::NotFound);
        }
        let mut since = None;
        let topics = query_topics(req.query, "since", &mut since)?;
        let state = self.transports.poll.by_slot.get(&slot);
        let Some((transport, admitted)) = state.and_then(|p| p.addresses) else {
            return Err(Reject::Malformed);
        };
        let Checked { client, identity } = self.io.check(req, &topics, transport)?;
        let conn = self.table.get_mut(slot).expect("live slot");
        if client != admitted {
            let peer = self.io.admission.admit(client)?;
            self.io.admission_closed(slot);
            self.io.admitted(slot, peer);
            if let Some(state) = self.transports.poll.by_slot.get_mut(&slot) {
                state.addresses = Some((transport, client));
            }
        }
        let old = conn.session;
        (conn.session, conn.expires) = match identity {
            Some(id) => (
                self.sessions.attach(id.user.as_deref(), id.grant, slot),
                self.io.expiry_tick(id.expires),
            ),
            None => (SessionId::NONE, NEVER),
        };
        self.sessions.detach(old, slot);
        let origin = req.origin.map(str::to_owned);
        self.start_poll(slot, &topics, since.as_deref(), origin);
        Ok(())
    }

    /// Answers a request on a long-poll connection with `reason`'s
    /// refusal and closes.
    fn refuse_poll(&mut self, slot: u32, reason: Reject) {
        self.io.stats().reject(reason);
        tracing::debug!(slot, reason = reason.label(), "poll request refused");
        let conn = self.table.get_mut(slot).expect("live slot");
        if conn.phase() == Phase::Open {
            self.io.enqueue(conn, Bytes::from(reason.response()));
            self.io.close(conn, slot, None, "");
        }
    }

    /// The timer of a long-poll connection fired: answer a waiting poll
    /// whose time is up with no message; close one idle between polls for
    /// `--idle-timeout`, or whose token expired.
    pub(in crate::connections) fn poll_due(&mut self, slot: u32) {
        let now = self.io.wheel.now();
        let conn = self.table.get_mut(slot).expect("live slot");
        if now >= conn.expires {
            return self
                .io
                .close(conn, slot, Some(crate::session::TOKEN_EXPIRED), "");
        }
        let state = self.transports.poll.by_slot.entry(slot).or_default();
        if state.waiting {
            if now < state.deadline {
                let at = state.deadline.min(conn.expires);
                return self.io.schedule(conn, slot, at);
            }
            return self.end_waiting_poll(slot);
        }
        if now >= conn.last_active + self.io.limits.idle {
            return self.io.close(conn, slot, None, "");
        }
        self.schedule_poll(slot);
    }

    /// Schedules an answered poll's connection for its idle timeout.
    fn schedule_poll(&mut self, slot: u32) {
        let conn = self.table.get_mut(slot).expect("live slot");
        let at = (conn.last_active + self.io.limits.idle).min(conn.expires);
        self.io.schedule(conn, slot, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v1::{self, Content, Data};

    #[test]
    fn a_delivery_answers_a_waiting_poll_with_its_json() {
        let frame = v1::message("x", None, &Data::new(Content::Text, b"now")).0;
        let bytes = answer(Some("http://app"), &frame, "", false);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Access-Control-Allow-Origin: http://app\r\n"));
        assert!(
            text.ends_with(r#"{"messages":[{"op":"message","topic":"x","data":"now"}],"next":""}"#)
        );
    }
}
