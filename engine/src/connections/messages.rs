//! An open connection's messages: decoded frames, compressed messages
//! inflated, echo, control messages (subscribe, unsubscribe, refresh) and
//! the close handshake's first step.

use super::Connections;
use crate::protocol::control;
use crate::protocol::decoder::ProtocolError;
use crate::protocol::frame::{self, OpCode};
use crate::protocol::v1;
use crate::session::jwt::MAX_TOKEN;
use crate::topics::{self, Member};
use crate::upstream::{Event, Interest};
use crate::Content;
use bytes::Bytes;

/// What a decoded message asks for, applied once decoding is done.
pub(super) enum Action {
    Send(Bytes),
    /// A control message (raw mode); counts against the rate limits.
    Control(control::Request),
    /// The error reply to a text or binary message that is no valid
    /// control message; counts against the rate limits too.
    Invalid(String),
    V1(v1::Request),
    /// A raw-mode text or binary message while `--room` is set.
    Room(Content, Bytes),
    CloseEcho(Option<u16>),
    Fail(ProtocolError),
}

impl Connections {
    pub(super) fn apply(&mut self, slot: u32, action: Action) {
        let conn = self.table.get_mut(slot).expect("live slot");
        match action {
            Action::Send(frame) => {
                self.io.queue(conn, slot, frame);
            }
            Action::CloseEcho(status) => self.io.close(conn, slot, status, ""),
            Action::Fail(e) => self.io.close(conn, slot, Some(e.code), e.reason),
            Action::Control(request) => {
                if self.within_rate(slot, 0, false, None) {
                    self.control(slot, request);
                }
            }
            Action::Invalid(reply) => {
                if self.within_rate(slot, 0, false, None) {
                    self.reply(slot, reply);
                }
            }
            Action::V1(request) => self.apply_v1(slot, request),
            Action::Room(content, payload) => {
                if !self.room_message(slot, content, payload.clone()) {
                    let action = match std::str::from_utf8(&payload) {
                        Ok(text) if content == Content::Text => match control::parse(text) {
                            Ok(request) => Action::Control(request),
                            Err(reason) => Action::Invalid(control::error(&reason)),
                        },
                        _ => Action::Invalid(control::error(
                            "binary messages are not control messages",
                        )),
                    };
                    self.apply(slot, action);
                }
            }
        }
    }

    /// A control message (subscribe, unsubscribe, refresh), already
    /// counted against the rate limits.
    pub(super) fn control(&mut self, slot: u32, request: control::Request) {
        match request {
            control::Request::Subscribe { topic } => {
                let reply = self.subscribe(slot, &topic);
                self.reply(slot, reply);
            }
            control::Request::Unsubscribe { topic } => {
                let conn = self.table.get_mut(slot).expect("live slot");
                let member = self.topics.id(&topic).and_then(|id| conn.topics.remove(id));
                if let Some(member) = member {
                    self.leave(slot, member);
                }
                self.reply(slot, control::ack("unsubscribed", &topic));
            }
            control::Request::Refresh { token } => {
                let reply = self.refresh(slot, &token);
                self.reply(slot, reply);
            }
        }
    }

    /// Replaces `slot`'s token with `token` if it is valid and names the
    /// same user (`sub`): its permissions and expiry become the new
    /// token's, and topics those no longer allow are left (each reported).
    /// Returns the reply; on refusal the old token stays.
    fn refresh(&mut self, slot: u32, token: &str) -> String {
        let Some(auth) = self.io.auth.clone() else {
            return control::error("auth is off: there is no token to refresh");
        };
        if token.len() > MAX_TOKEN {
            return control::error("invalid token: over 8 KiB");
        }
        let identity = match auth.verify(token) {
            Ok(identity) => identity,
            Err(why) => {
                tracing::debug!(slot, why, "refresh refused");
                return control::error(&format!("invalid token: {why}"));
            }
        };
        let conn = self.table.get_mut(slot).expect("live slot");
        if identity.user.as_deref() != self.sessions.user(conn.session) {
            return control::error("a refresh must keep the same sub");
        }
        let old = conn.session;
        conn.session = self
            .sessions
            .attach(identity.user.as_deref(), identity.grant, slot);
        self.sessions.detach(old, slot);
        conn.expires = self.io.expiry_tick(identity.expires);
        if conn.expires < conn.timer_at {
            let at = conn.expires;
            self.io.schedule(conn, slot, at);
        }
        let session = conn.session;
        let revoked: Vec<Member> = conn
            .topics
            .as_slice()
            .iter()
            .copied()
            .filter(|m| {
                !self
                    .sessions
                    .may_subscribe(session, self.topics.name(m.topic))
            })
            .collect();
        for member in revoked {
            let reply = control::revoked(self.topics.name(member.topic));
            let conn = self.table.get_mut(slot).expect("live slot");
            conn.topics.remove(member.topic);
            self.leave(slot, member);
            self.reply(slot, reply);
        }
        control::refreshed()
    }

    pub(super) fn reply(&mut self, slot: u32, text: String) {
        let conn = self.table.get_mut(slot).expect("live slot");
        self.io
            .queue(conn, slot, frame::encode(OpCode::Text, text.as_bytes()));
    }

    /// Subscribes `slot` to `topic`; returns the reply to send.
    pub(super) fn subscribe(&mut self, slot: u32, topic: &str) -> String {
        let conn = self.table.get_mut(slot).expect("live slot");
        if !topics::is_valid_name(topic) {
            return control::error(topics::NAME_RULE);
        }
        if !self.sessions.may_subscribe(conn.session, topic) {
            return control::topic_error(topic, "forbidden");
        }
        if self
            .topics
            .id(topic)
            .is_none_or(|id| conn.topics.find(id).is_none())
        {
            if conn.topics.as_slice().len() >= topics::MAX_TOPICS_PER_CONNECTION {
                return control::error("too many topics on this connection");
            }
            let first = self.topics.id(topic).is_none();
            conn.topics.push(self.topics.subscribe(topic, slot));
            self.update_topic_gauge();
            if first {
                self.interest(topic, true);
            }
            self.presence_join(slot, topic);
        }
        control::ack("subscribed", topic)
    }

    /// Takes `slot` out of `member`'s topic, and updates the connection
    /// whose slot took its place in the member list.
    pub(super) fn leave(&mut self, slot: u32, member: Member) {
        self.resumes.forget(member.topic, slot);
        self.presence_leave(slot, member.topic);
        let last = (self.interest_up && self.topics.member_count(member.topic) == 1)
            .then(|| self.topics.name(member.topic).to_owned());
        if let Some(moved) = self.topics.unsubscribe(member, slot) {
            let conn = self.table.get_mut(moved).expect("subscriber slot is live");
            conn.topics.moved(member.topic, member.index);
        }
        self.update_topic_gauge();
        if let Some(topic) = last {
            self.interest(&topic, false);
        }
    }

    /// Tells the broker client, if any, and the channels hook, if on,
    /// that `topic` got its first subscriber on this worker (`held`) or
    /// lost its last.
    fn interest(&mut self, topic: &str, held: bool) {
        if self.interest_up {
            self.send_to_broker(Event::Interest(Interest {
                worker: self.io.worker as u32,
                topic: topic.to_owned(),
                held,
            }));
        }
    }

    /// Sends a broker event upstream, after any the sink could not take
    /// before; keeps it (and what follows) for later when it cannot take
    /// it now: a lost interest event would leave a topic unsubscribed.
    pub(super) fn send_to_broker(&mut self, event: Event) {
        self.unsent.push(event);
        self.send_unsent();
    }

    /// Sends the broker events kept back, in order, while the sink takes
    /// them.
    pub(super) fn send_unsent(&mut self) {
        let Some(upstream) = &self.duplex.settings.upstream else {
            return self.unsent.clear();
        };
        let mut pending = std::mem::take(&mut self.unsent).into_iter();
        while let Some(event) = pending.next() {
            if let Err(event) = upstream.send(event) {
                self.unsent.push(event);
                self.unsent.extend(pending);
                break;
            }
        }
    }

    fn update_topic_gauge(&self) {
        let gauge = &self.io.stats().topics;
        gauge.store(
            self.topics.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
