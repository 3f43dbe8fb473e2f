//! Messages from the broker's channels, handed to the workers through the
//! same fan-out as a local publish. Every payload is hostile until
//! checked: a malformed one is counted, logged at debug level and
//! dropped.

use super::script::{self, NodeHeader, TOPIC_CHANNEL};
use super::Broker;
use ringcast_engine::auth::MAX_USER_ID;
use ringcast_engine::protocol::names::is_valid_name;

impl Broker {
    /// Hands one message from a subscribed channel to the workers.
    pub(super) fn on_message(&self, message: &redis::Msg) {
        self.metrics.received.inc();
        if let Err(why) = self.deliver(message.get_channel_name(), message.get_payload_bytes()) {
            self.metrics.invalid.inc();
            tracing::debug!(
                channel = message.get_channel_name(),
                "message from the broker dropped: {why}"
            );
        }
    }

    fn deliver(&self, channel: &str, payload: &[u8]) -> Result<(), String> {
        if let Some(topic) = channel.strip_prefix(TOPIC_CHANNEL) {
            if !is_valid_name(topic) {
                return Err("invalid topic".into());
            }
            let (content, body, position) = script::topic_message(payload)?;
            self.handle.deliver(topic, position, content, body, |_| {});
            return Ok(());
        }
        if channel != script::NODE_CHANNEL {
            return Err("unknown channel".into());
        }
        let (header, body) = script::split::<NodeHeader>(payload)?;
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
