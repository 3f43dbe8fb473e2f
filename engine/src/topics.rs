//! A worker's topic registry: topic name → subscribed connection slots.

use slab::Slab;
use std::collections::HashMap;

pub use crate::protocol::names::{is_valid_name, NAME_RULE};

/// Most topics one connection may subscribe to.
pub const MAX_TOPICS_PER_CONNECTION: usize = 64;

/// Identifies a topic within one worker while it has subscribers.
pub type TopicId = u32;

/// One connection's membership of one topic: the topic, and where the
/// connection's slot sits in the topic's member list (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The topic.
    pub topic: TopicId,
    /// Index of the connection's slot in the topic's member list.
    pub index: u32,
}

/// The topics one connection subscribes to: 16 bytes inline, and no
/// allocation for the usual single topic.
#[derive(Debug, Default)]
pub enum Subscriptions {
    /// No topic.
    #[default]
    None,
    /// Exactly one topic.
    One(Member),
    /// Two or more, up to [`MAX_TOPICS_PER_CONNECTION`]. Boxed so that the
    /// record stays 16 bytes instead of a `Vec`'s 24.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Member>>),
}

impl Subscriptions {
    /// The memberships, in no particular order.
    pub fn as_slice(&self) -> &[Member] {
        match self {
            Self::None => &[],
            Self::One(member) => std::slice::from_ref(member),
            Self::Many(members) => members,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Member] {
        match self {
            Self::None => &mut [],
            Self::One(member) => std::slice::from_mut(member),
            Self::Many(members) => members,
        }
    }

    /// The membership of `topic`, if subscribed.
    pub fn find(&self, topic: TopicId) -> Option<Member> {
        self.as_slice().iter().copied().find(|m| m.topic == topic)
    }

    /// Adds `member`; the caller checks the topic is not present and the
    /// limit.
    pub fn push(&mut self, member: Member) {
        *self = match std::mem::take(self) {
            Self::None => Self::One(member),
            Self::One(first) => Self::Many(Box::new(vec![first, member])),
            Self::Many(mut members) => {
                members.push(member);
                Self::Many(members)
            }
        };
    }

    /// Removes and returns the membership of `topic`, if subscribed.
    pub fn remove(&mut self, topic: TopicId) -> Option<Member> {
        let i = self.as_slice().iter().position(|m| m.topic == topic)?;
        let removed = self.as_slice()[i];
        match self {
            Self::Many(members) => {
                members.swap_remove(i);
                if let [last] = members[..] {
                    *self = Self::One(last);
                }
            }
            _ => *self = Self::None,
        }
        Some(removed)
    }

    /// Records that this connection's slot moved to `index` in `topic`'s
    /// member list (see [`Topics::unsubscribe`]).
    pub fn moved(&mut self, topic: TopicId, index: u32) {
        let member = self
            .as_mut_slice()
            .iter_mut()
            .find(|m| m.topic == topic)
            .expect("moved member is subscribed");
        member.index = index;
    }
}

/// Slots per [`Members`] chunk: 4 KiB.
const CHUNK: usize = 1024;

/// A topic's subscribed slots, dense, in fixed 4 KiB chunks: fan-out walks
/// contiguous arrays, a member costs 4 bytes, and growing never
/// reallocates. (A `Vec` doubling to 16k members left about 4 MiB of
/// allocator pages per worker behind, some 250 bytes per subscriber.)
#[derive(Default)]
struct Members {
    chunks: Vec<Box<[u32; CHUNK]>>,
    len: usize,
}

impl Members {
    /// Appends `slot`; returns its index.
    fn push(&mut self, slot: u32) -> u32 {
        if self.len == self.chunks.len() * CHUNK {
            self.chunks.push(Box::new([0; CHUNK]));
        }
        self.chunks[self.len / CHUNK][self.len % CHUNK] = slot;
        self.len += 1;
        (self.len - 1) as u32
    }

    fn get(&self, index: usize) -> u32 {
        assert!(index < self.len, "member index {index} out of range");
        self.chunks[index / CHUNK][index % CHUNK]
    }

    /// Removes the member at `index`, moving the last member into its
    /// place; returns the moved slot, if any.
    fn swap_remove(&mut self, index: usize) -> Option<u32> {
        let last = self.get(self.len - 1);
        self.len -= 1;
        if self.len == (self.chunks.len() - 1) * CHUNK {
            self.chunks.pop();
        }
        (index < self.len).then(|| {
            self.chunks[index / CHUNK][index % CHUNK] = last;
            last
        })
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().copied())
            .take(self.len)
    }
}

struct Topic {
    name: Box<str>,
    members: Members,
}

/// Topics with at least one subscriber on this worker. A topic is removed
/// when its last subscriber leaves.
#[derive(Default)]
pub struct Topics {
    by_name: HashMap<Box<str>, TopicId>,
    topics: Slab<Topic>,
}

impl Topics {
    /// Adds connection `slot` to topic `name`, creating the topic. The
    /// caller checks that the connection is not yet subscribed (see
    /// [`Subscriptions::find`]) and keeps the returned membership.
    pub fn subscribe(&mut self, name: &str, slot: u32) -> Member {
        let topic = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let id = self.topics.insert(Topic {
                    name: name.into(),
                    members: Members::default(),
                }) as TopicId;
                self.by_name.insert(name.into(), id);
                id
            }
        };
        let index = self.topics[topic as usize].members.push(slot);
        Member { topic, index }
    }

    /// Removes connection `slot`'s `member`ship; drops the topic once empty.
    /// The last member takes the freed place: returns its slot, whose
    /// [`Subscriptions::moved`] the caller must then call.
    pub fn unsubscribe(&mut self, member: Member, slot: u32) -> Option<u32> {
        let topic = &mut self.topics[member.topic as usize];
        let index = member.index as usize;
        assert_eq!(
            topic.members.get(index),
            slot,
            "membership index out of date"
        );
        let moved = topic.members.swap_remove(index);
        if topic.members.len == 0 {
            let topic = self.topics.remove(member.topic as usize);
            self.by_name.remove(&topic.name);
        }
        moved
    }

    /// The name of topic `id`.
    pub fn name(&self, id: TopicId) -> &str {
        &self.topics[id as usize].name
    }

    /// The id of topic `name`, if it has subscribers here.
    pub fn id(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// Slots subscribed to topic `id`.
    pub fn members(&self, id: TopicId) -> impl Iterator<Item = u32> + '_ {
        self.topics[id as usize].members.iter()
    }

    /// Subscribers of topic `id` on this worker.
    pub fn member_count(&self, id: TopicId) -> usize {
        self.topics[id as usize].members.len
    }

    /// Topics with subscribers.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no topic has subscribers.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_grow_and_shrink() {
        assert_eq!(std::mem::size_of::<Subscriptions>(), 16);
        let member = |topic| Member { topic, index: 0 };
        let mut subs = Subscriptions::default();
        for topic in [3, 5, 8] {
            subs.push(member(topic));
        }
        assert_eq!(subs.as_slice().len(), 3);
        subs.moved(5, 7);
        assert_eq!(subs.find(5), Some(Member { topic: 5, index: 7 }));
        assert!(subs.remove(3).is_some() && subs.remove(3).is_none());
        assert!(subs.remove(8).is_some());
        assert!(matches!(subs, Subscriptions::One(Member { topic: 5, .. })));
        assert!(subs.remove(5).is_some());
        assert!(subs.as_slice().is_empty());
    }

    #[test]
    fn names() {
        assert!(is_valid_name("chat.room-1:a_b"));
        assert!(is_valid_name(&"a".repeat(128)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(129)));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("é"));
        assert!(is_valid_name("dialog#42,43") && is_valid_name("notifications#42"));
        for bad in ["#42", "a#", "a#42,", "a#4#2", "a,b", "a#,42"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn topic_lives_while_it_has_subscribers() {
        let mut t = Topics::default();
        let m1 = t.subscribe("a", 1);
        let m2 = t.subscribe("a", 2);
        let m3 = t.subscribe("a", 3);
        assert_eq!(t.members(m1.topic).collect::<Vec<_>>(), [1, 2, 3]);
        // Slot 3 moves into slot 1's place.
        assert_eq!(t.unsubscribe(m1, 1), Some(3));
        assert_eq!(t.members(m1.topic).collect::<Vec<_>>(), [3, 2]);
        let m3 = Member {
            index: m1.index,
            ..m3
        };
        assert_eq!(t.unsubscribe(m2, 2), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.unsubscribe(m3, 3), None);
        assert!(t.is_empty());
        assert_eq!(t.id("a"), None);
    }

    #[test]
    fn members_span_chunks() {
        let mut m = Members::default();
        let n = CHUNK as u32 * 2 + 5;
        for slot in 0..n {
            assert_eq!(m.push(slot), slot);
        }
        assert_eq!(m.chunks.len(), 3);
        assert_eq!(m.swap_remove(3), Some(n - 1));
        assert_eq!(m.get(3), n - 1);
        for _ in 0..5 {
            m.swap_remove(m.len - 1);
        }
        assert_eq!((m.len, m.chunks.len()), (CHUNK * 2 - 1, 2));
        assert_eq!(m.iter().count(), CHUNK * 2 - 1);
    }
}
