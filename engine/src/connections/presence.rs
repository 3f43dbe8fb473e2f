//! A worker's side of presence (see [`crate::hub::presence`]): its
//! connections' joins and leaves reported to the node's registry as they
//! subscribe and leave, the `join_leave` subscribers' events, and the
//! `ringcast.v1` `presence` and `presence_stats` ops.
//!
//! Without a broker the worker pushes each join and leave to every
//! worker itself ([`crate::Handle::presence_event`]); with one, the
//! broker computes `first` and `last` across the cluster and pushes them
//! (the change is handed up as [`Event::Presence`], as it is for the
//! presence webhook).

use super::Connections;
use crate::conn::Endpoint;
use crate::hub::presence::{Change, Key, MAX_ANSWER};
use crate::protocol::frame::{self, OpCode};
use crate::protocol::presence::{self as wire, Who};
use crate::protocol::{control, sse};
use crate::topics::TopicId;
use crate::upstream::{Event, Origin, PresenceChange, PresenceQuery};
use bytes::Bytes;
use std::collections::HashSet;

/// The `join_leave` subscriptions of a worker's connections: (topic,
/// slot). Empty unless a client asked for joins and leaves.
pub(super) type Listeners = HashSet<(TopicId, u32)>;

impl Connections {
    fn key(&self, slot: u32) -> Key {
        Key {
            worker: self.io.worker as u32,
            slot,
        }
    }

    /// `slot` just subscribed to `topic`: a member when the topic has
    /// presence and the connection is not a long-poll.
    pub(super) fn presence_join(&mut self, slot: u32, topic: &str) {
        let hub = self.hub.clone();
        let presence = &hub.presence;
        if !presence.enabled(topic) {
            return;
        }
        let conn = self.table.get_mut(slot).expect("live slot");
        if conn.endpoint() == Some(Endpoint::Poll) {
            return;
        }
        let (session, gen) = (conn.session, conn.gen);
        let key = self.key(slot);
        let user = self.sessions.user(session);
        let info = self.sessions.grant(session).and_then(|g| g.info());
        let change = presence.join(topic, key, user, info);
        let origin = Origin {
            worker: key.worker,
            slot,
            gen,
        };
        self.presence_changed(change, Some(origin));
    }

    /// `slot` is leaving the topic `id` (still subscribed).
    pub(super) fn presence_leave(&mut self, slot: u32, id: TopicId) {
        self.join_leave.remove(&(id, slot));
        let topic = self.topics.name(id);
        if !self.hub.presence.enabled(topic) {
            return;
        }
        if let Some(change) = self.hub.presence.leave(topic, self.key(slot)) {
            self.presence_changed(change, None);
        }
    }

    /// Pushes `change` (without a broker) and hands it up (for the
    /// webhook, or the broker).
    fn presence_changed(&mut self, change: Change, skip: Option<Origin>) {
        if !self.broker && self.hub.presence.pushed(&change) {
            if let Some(handle) = self.duplex.handle.get() {
                handle.presence_event(&change, skip);
            }
        }
        if self.broker || self.presence_hook {
            // Taken by the sink at once (never refused), see
            // `send_to_broker`.
            self.send_to_broker(Event::Presence(PresenceChange {
                change,
                joiner: skip,
            }));
        }
    }

    /// Marks `slot`'s subscription to `topic` (held) as getting joins and
    /// leaves.
    pub(super) fn listen_join_leave(&mut self, slot: u32, topic: &str) {
        if let Some(id) = self.held(slot, topic) {
            self.join_leave.insert((id, slot));
        }
    }

    /// Queues a presence event (`json`, a join when `joined`) to the
    /// `join_leave` subscribers of `topic` on this worker but `skip`.
    /// Returns how many got it.
    pub fn presence_event(
        &mut self,
        topic: &str,
        joined: bool,
        json: &str,
        skip: Option<Origin>,
    ) -> usize {
        let Some(id) = self.topics.id(topic) else {
            return 0;
        };
        let mut v1: Option<Bytes> = None;
        let mut sse: Option<Bytes> = None;
        let mut queued = 0;
        let worker = self.io.worker as u32;
        let skip = skip.filter(|o| o.worker == worker);
        let slots: Vec<u32> = self
            .topics
            .members(id)
            .filter(|&s| self.join_leave.contains(&(id, s)))
            .collect();
        for slot in slots {
            let conn = self.table.get_mut(slot).expect("subscriber slot is live");
            if skip.is_some_and(|o| o.slot == slot && o.gen == conn.gen) {
                continue;
            }
            let bytes = match conn.endpoint() {
                Some(Endpoint::PubSubV1) => v1
                    .get_or_insert_with(|| frame::encode(OpCode::Text, json.as_bytes()))
                    .clone(),
                Some(Endpoint::Sse) => sse
                    .get_or_insert_with(|| sse::named(wire::event_name(joined), json.as_bytes()))
                    .clone(),
                _ => continue,
            };
            queued += usize::from(self.io.queue(conn, slot, bytes));
        }
        queued
    }

    /// Answers a `presence` (or, with `stats`, `presence_stats`) op for
    /// `topic`: only a topic with presence that the connection is
    /// subscribed to.
    pub(super) fn presence_query(&mut self, slot: u32, topic: &str, stats: bool) {
        let hub = self.hub.clone();
        let presence = &hub.presence;
        let reply = if !presence.enabled(topic) {
            control::topic_error(topic, "presence is off for this topic")
        } else if self.held(slot, topic).is_none() {
            control::topic_error(topic, "forbidden")
        } else if self.broker {
            let conn = self.table.get_mut(slot).expect("live slot");
            let origin = Origin {
                worker: self.io.worker as u32,
                slot,
                gen: conn.gen,
            };
            let query = Event::PresenceQuery(PresenceQuery {
                origin,
                topic: topic.to_owned(),
                stats,
            });
            match self
                .duplex
                .settings
                .upstream
                .as_ref()
                .map(|u| u.send(query))
            {
                Some(Ok(())) => return, // answered by the server
                _ => control::topic_error(topic, "server busy"),
            }
        } else if stats {
            let s = presence.stats(topic);
            wire::stats_answer(topic, s.clients, s.users)
        } else {
            let page = presence.page(topic, None, MAX_ANSWER);
            let members = page.members.iter().map(|m| Who {
                client: &m.client,
                user: m.user.as_deref(),
                info: m.info.as_deref(),
            });
            wire::answer(topic, members, page.next.is_some())
        };
        self.reply(slot, reply);
    }
}
