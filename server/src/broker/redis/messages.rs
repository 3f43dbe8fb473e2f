//! Messages from the broker's channels, handed to the workers through the
//! same fan-out as a local publish. Every payload is hostile until
//! checked: a malformed one is counted (`ringcast_broker_messages_invalid_total`),
//! logged at debug level and dropped; a body over `--max-message-size` or
//! an offset that cannot follow the topic's last one is refused the same
//! way and counted by reason (`ringcast_broker_messages_refused_total`).

use super::script::{self, NodeHeader};
use super::Redis;
use ringcast_engine::auth::MAX_USER_ID;
use ringcast_engine::history::Epoch;
use ringcast_engine::protocol::names::is_valid_name;
use std::collections::{HashMap, HashSet};

/// The largest offset taken from Redis: 2^53 - 1, the largest integer a
/// JavaScript client reads exactly (a topic publishing a million
/// messages a second reaches it in 285 years).
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// The last offset delivered per topic (with its epoch), for topics with
/// history this instance has the node subscribed to.
#[derive(Default)]
pub struct Offsets(HashMap<String, (Epoch, u64)>);

impl Offsets {
    /// Forgets the topics not in `topics`.
    pub fn keep(&mut self, topics: &HashSet<String>) {
        self.0.retain(|topic, _| topics.contains(topic));
    }

    /// Forgets `topic` (the node left it).
    pub fn forget(&mut self, topic: &str) {
        self.0.remove(topic);
    }

    /// Whether `offset` in `epoch` can follow the topic's last delivered
    /// one: within [`MAX_OFFSET`], and past the last one of the same
    /// epoch. Records it when it can.
    fn follows(&mut self, topic: &str, epoch: Epoch, offset: u64) -> bool {
        if offset > MAX_OFFSET {
            return false;
        }
        match self.0.get_mut(topic) {
            Some((last_epoch, last)) if *last_epoch == epoch => {
                if offset <= *last {
                    return false;
                }
                *last = offset;
            }
            Some(entry) => *entry = (epoch, offset),
            None => {
                self.0.insert(topic.to_owned(), (epoch, offset));
            }
        }
        true
    }
}

/// Why a message was not delivered.
enum Refusal {
    /// Malformed.
    Invalid(String),
    /// Well-formed but refused by a check (`size`, `offset`).
    Refused(&'static str),
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Refusal::Invalid(why)
    }
}

impl From<&str> for Refusal {
    fn from(why: &str) -> Self {
        Refusal::Invalid(why.to_owned())
    }
}

impl Redis {
    /// Hands one message from a subscribed channel to the workers.
    pub(super) fn on_message(&self, message: &redis::Msg, offsets: &mut Offsets) {
        self.on_payload(
            message.get_channel_name(),
            message.get_payload_bytes(),
            offsets,
        );
    }

    /// Hands `payload`, received on `channel`, to the workers.
    pub(super) fn on_payload(&self, channel: &str, payload: &[u8], offsets: &mut Offsets) {
        self.metrics.received.inc();
        match self.deliver(channel, payload, offsets) {
            Ok(()) => {}
            Err(Refusal::Invalid(why)) => {
                self.metrics.invalid.inc();
                tracing::debug!(channel, "message from the broker dropped: {why}");
            }
            Err(Refusal::Refused(reason)) => {
                self.metrics
                    .messages_refused
                    .with_label_values(&[reason])
                    .inc();
                tracing::debug!(channel, reason, "message from the broker refused");
            }
        }
    }

    fn deliver(&self, channel: &str, payload: &[u8], offsets: &mut Offsets) -> Result<(), Refusal> {
        // The header is one short line: a payload past the body limit by
        // more than that is refused before it is parsed.
        if payload.len() > self.settings.max_message + 4096 {
            return Err(Refusal::Refused("size"));
        }
        if let Some(topic) = self.layout.topic_of(channel) {
            if !is_valid_name(topic) {
                return Err("invalid topic".into());
            }
            if payload.starts_with(br#"{"presence":"#) {
                return self.presence_event(topic, payload).map_err(Refusal::from);
            }
            let (content, body, position) = script::topic_message(payload)?;
            if body.len() > self.settings.max_message {
                return Err(Refusal::Refused("size"));
            }
            if let Some((offset, epoch)) = position {
                if !offsets.follows(topic, epoch, offset) {
                    return Err(Refusal::Refused("offset"));
                }
            }
            self.handle.deliver(topic, position, content, body, |_| {});
            return Ok(());
        }
        if channel != script::NODE_CHANNEL {
            return Err("unknown channel".into());
        }
        let (header, body) = script::split::<NodeHeader>(payload)?;
        if body.len() > self.settings.max_message {
            return Err(Refusal::Refused("size"));
        }
        let valid_users = |users: &[String]| {
            users
                .iter()
                .all(|u| !u.is_empty() && u.len() <= MAX_USER_ID)
        };
        let content = |name: &str| {
            let content = script::content_named(name).ok_or("unknown content")?;
            content.check(body).map(|()| content)
        };
        match header {
            NodeHeader::Publish { users, content: c } if valid_users(&users) => {
                let content = content(&c)?;
                self.handle
                    .publish(Vec::new(), users, content, body, |_| {});
            }
            NodeHeader::Broadcast { content: c } => {
                let content = content(&c)?;
                self.handle.broadcast(content, body, |_| {});
            }
            NodeHeader::Disconnect {
                users,
                code,
                reason,
            } if valid_users(&users)
                && (code == 1000 || (3000..=4999).contains(&code))
                && reason.len() <= 123 =>
            {
                self.handle.disconnect(users, code, &reason, |_| {});
            }
            _ => return Err("invalid users, code or reason".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_must_follow() {
        let (a, b) = (
            Epoch::parse("AAAAAAAA").unwrap(),
            Epoch::parse("BBBBBBBB").unwrap(),
        );
        let mut offsets = Offsets::default();
        assert!(offsets.follows("t", a, 5));
        assert!(!offsets.follows("t", a, 5), "a repeat");
        assert!(!offsets.follows("t", a, 4), "backwards");
        assert!(offsets.follows("t", a, 6));
        assert!(!offsets.follows("t", a, u64::MAX));
        assert!(!offsets.follows("u", a, MAX_OFFSET + 1));
        assert!(offsets.follows("t", b, 1), "a new epoch starts again");
        offsets.forget("t");
        assert!(offsets.follows("t", b, 1));
    }
}
