//! The handle's presence side (see [`crate::hub::presence`]): pushing
//! joins and leaves to the workers, and reading the node's registry.

use super::Handle;
use crate::command::Command;
use crate::upstream::Origin;
use std::sync::Arc;

impl Handle {
    /// Pushes `change` to the `join_leave` subscribers of its topic on
    /// every worker (a joining connection `skip` does not get its own
    /// join). The caller decides whether it is pushed
    /// ([`Handle::presence_pushed`]); a worker that exited drops it.
    pub fn presence_event(&self, change: &crate::presence::Change, skip: Option<Origin>) {
        let m = &change.member;
        let who = crate::protocol::presence::Who {
            client: &m.client,
            user: m.user.as_deref(),
            info: m.info.as_deref(),
        };
        let json: Arc<str> =
            crate::protocol::presence::event(change.joined, &change.topic, who, change.edge).into();
        self.tell_all(|| Command::Presence {
            topic: change.topic.clone(),
            joined: change.joined,
            json: json.clone(),
            skip,
        });
    }

    /// Whether `change` is pushed to `join_leave` subscribers: its topic
    /// has at most `--presence-join-leave-max` members.
    pub fn presence_pushed(&self, change: &crate::presence::Change) -> bool {
        self.hub.presence.pushed(change)
    }

    /// Whether `topic` has presence (matches `--presence`).
    pub fn presence_enabled(&self, topic: &str) -> bool {
        self.hub.presence.enabled(topic)
    }

    /// Up to `limit` of this node's members of `topic` after `cursor` (a
    /// previous page's `next`), in client id order.
    pub fn presence_page(
        &self,
        topic: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> crate::presence::Page {
        self.hub.presence.page(topic, cursor, limit)
    }

    /// This process's presence node id (the first part of its client
    /// ids).
    pub fn presence_node(&self) -> &str {
        self.hub.presence.node()
    }

    /// Every presence membership of this node, as (topic, member).
    pub fn presence_members(&self) -> Vec<(String, crate::presence::Member)> {
        self.hub.presence.snapshot()
    }

    /// This node's counts of `topic`'s members.
    pub fn presence_stats(&self, topic: &str) -> crate::presence::Stats {
        self.hub.presence.stats(topic)
    }
}
