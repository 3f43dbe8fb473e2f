//! A worker's topic registry: topic name → subscribed connection slots.

use slab::Slab;
use std::collections::{HashMap, HashSet};

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// The naming rule, as stated in error replies.
pub const NAME_RULE: &str = "a topic is 1-128 bytes of A-Z a-z 0-9 _ . : -";

/// Most topics one connection may subscribe to.
pub const MAX_TOPICS_PER_CONNECTION: usize = 64;

/// Whether `name` is a valid topic: 1–128 bytes of `[A-Za-z0-9_.:-]`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Identifies a topic within one worker while it has subscribers.
pub type TopicId = u32;

struct Topic {
    name: Box<str>,
    members: HashSet<u32>,
}

/// Topics with at least one subscriber on this worker. A topic is removed
/// when its last subscriber leaves.
#[derive(Default)]
pub struct Topics {
    by_name: HashMap<Box<str>, TopicId>,
    topics: Slab<Topic>,
}

impl Topics {
    /// Adds connection `slot` to topic `name`, creating the topic. Returns
    /// its id, and whether the connection was newly added.
    pub fn subscribe(&mut self, name: &str, slot: u32) -> (TopicId, bool) {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let id = self.topics.insert(Topic {
                    name: name.into(),
                    members: HashSet::new(),
                }) as TopicId;
                self.by_name.insert(name.into(), id);
                id
            }
        };
        let added = self.topics[id as usize].members.insert(slot);
        (id, added)
    }

    /// Removes connection `slot` from topic `id`; drops the topic once empty.
    pub fn unsubscribe(&mut self, id: TopicId, slot: u32) {
        let topic = &mut self.topics[id as usize];
        topic.members.remove(&slot);
        if topic.members.is_empty() {
            let topic = self.topics.remove(id as usize);
            self.by_name.remove(&topic.name);
        }
    }

    /// The id of topic `name`, if it has subscribers here.
    pub fn id(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// Slots subscribed to topic `id`.
    pub fn members(&self, id: TopicId) -> impl Iterator<Item = u32> + '_ {
        self.topics[id as usize].members.iter().copied()
    }

    /// Topics with subscribers.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no topic has subscribers.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("chat.room-1:a_b"));
        assert!(is_valid_name(&"a".repeat(128)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(129)));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("é"));
    }

    #[test]
    fn topic_lives_while_it_has_subscribers() {
        let mut t = Topics::default();
        let (a, added) = t.subscribe("a", 1);
        assert!(added);
        assert_eq!(t.subscribe("a", 1), (a, false));
        t.subscribe("a", 2);
        assert_eq!(t.members(a).count(), 2);
        t.unsubscribe(a, 1);
        assert_eq!(t.len(), 1);
        t.unsubscribe(a, 2);
        assert!(t.is_empty());
        assert_eq!(t.id("a"), None);
    }
}
