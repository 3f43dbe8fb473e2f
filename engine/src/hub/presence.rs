//! Presence: who is on a topic. The node's members of every topic that
//! matches a `--presence` pattern, shared by the workers (each reports its
//! connections' joins and leaves under one lock, in the order they
//! happen) and by the API (queries, stats).
//!
//! - A member is a connection subscribed to a presence topic over raw
//!   WebSocket, `ringcast.v1` or SSE (long-poll clients are not members:
//!   a poll is a request, not a connection that stays between polls).
//! - Its client id is `NODE.SEQ`: this process's random node id and a
//!   64-bit sequence number given at the connection's first join, so it
//!   is unique across a cluster and never reused while the process runs.
//! - `first` and `last` say whether a join or leave is its user's first
//!   or last connection on the topic; an anonymous member's are always
//!   true.
//!
//! Memory (measured in the README): per member, one entry of its room's
//! member set (the connection's key, 8 bytes plus the table's overhead);
//! per connection that is a member anywhere, one client record (its
//! sequence number, room count, user and info); per distinct user of a
//! room, one count.

use crate::session::permissions::Pattern;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most members one `ringcast.v1` `presence` answer lists; past it the
/// answer says `truncated` and `GET /presence` pages the rest.
pub const MAX_ANSWER: usize = 1000;

/// A connection of this node: its worker and fixed-file slot, unique
/// among the node's open connections (a slot's next tenant joins only
/// after the previous one left).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Worker index.
    pub worker: u32,
    /// Fixed-file slot.
    pub slot: u32,
}

impl Key {
    fn packed(self) -> u64 {
        u64::from(self.worker) << 32 | u64::from(self.slot)
    }
}

/// One member as the API and the ops list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Client id (`NODE.SEQ`).
    pub client: String,
    /// The user id (`sub`, or the connect hook's `user`), if any.
    pub user: Option<Arc<str>>,
    /// The `info` claim (or the connect hook's), one JSON value, if any.
    pub info: Option<Arc<str>>,
}

/// A join or a leave, as the workers push it to `join_leave` subscribers
/// and hand it up for webhooks and brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The topic.
    pub topic: Arc<str>,
    /// Who joined or left.
    pub member: Member,
    /// A join (else a leave).
    pub joined: bool,
    /// For a join, whether it is the user's first connection on the
    /// topic; for a leave, whether it was the last.
    pub edge: bool,
    /// The topic's members counting this one (after a join, before a
    /// leave): joins and leaves are pushed only while it is at most
    /// `--presence-join-leave-max`.
    pub members: usize,
}

/// A topic's counts (`presence_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Members (connections).
    pub clients: usize,
    /// Distinct non-null users among them.
    pub users: usize,
}

/// One page of a topic's members, sorted by client sequence.
#[derive(Debug, Default)]
pub struct Page {
    /// The members.
    pub members: Vec<Member>,
    /// The cursor of the next page, if there are more.
    pub next: Option<String>,
}

/// The presence settings and the node's registry.
pub struct Presence {
    patterns: Vec<Pattern>,
    join_leave_max: usize,
    node: String,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    rooms: HashMap<Box<str>, Room>,
    clients: HashMap<u64, Client>,
    next_seq: u64,
}

/// One connection that is a member of at least one topic.
struct Client {
    seq: u64,
    rooms: u32,
    user: Option<Arc<str>>,
    info: Option<Arc<str>>,
}

#[derive(Default)]
struct Room {
    members: HashSet<u64>,
    /// Connections per user (non-null users only).
    users: HashMap<Arc<str>, u32>,
}

impl Presence {
    /// Presence on the topics `patterns` match (none: off), pushing joins
    /// and leaves while a topic has at most `join_leave_max` members.
    pub fn new(patterns: Vec<Pattern>, join_leave_max: usize) -> Self {
        Self {
            patterns,
            join_leave_max,
            node: format!("{:012x}", fastrand::u64(..) >> 16),
            registry: Mutex::default(),
        }
    }

    /// Whether `topic` has presence.
    pub fn enabled(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    /// Whether `change` is pushed to `join_leave` subscribers.
    pub fn pushed(&self, change: &Change) -> bool {
        change.members <= self.join_leave_max
    }

    /// This process's node id: the first part of its client ids.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Every membership of this node, as (topic, member): what a broker
    /// registers again after it lost them.
    pub fn snapshot(&self) -> Vec<(String, Member)> {
        let registry = self.lock();
        let mut all = Vec::new();
        for (topic, room) in &registry.rooms {
            for key in &room.members {
                let client = &registry.clients[key];
                all.push((topic.to_string(), member(&self.node, client)));
            }
        }
        all
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `key` of `user` with `info` joined `topic` (a presence
    /// topic it was not a member of).
    ///
    /// # Panics
    /// If `key` is already a member of `topic` (the caller's invariant).
    pub fn join(&self, topic: &str, key: Key, user: Option<&str>, info: Option<&str>) -> Change {
        let mut guard = self.lock();
        let registry = &mut *guard;
        let seq = &mut registry.next_seq;
        let client = registry.clients.entry(key.packed()).or_insert_with(|| {
            *seq += 1;
            Client {
                seq: *seq,
                rooms: 0,
                user: user.map(Into::into),
                info: info.map(Into::into),
            }
        });
        client.rooms += 1;
        let room = registry.rooms.entry(topic.into()).or_default();
        assert!(room.members.insert(key.packed()), "joined {topic} twice");
        let edge = match &client.user {
            Some(user) => {
                let n = room.users.entry(user.clone()).or_insert(0);
                *n += 1;
                *n == 1
            }
            None => true,
        };
        Change {
            topic: topic.into(),
            member: member(&self.node, client),
            joined: true,
            edge,
            members: room.members.len(),
        }
    }

    /// Connection `key` left `topic`; `None` when it was not a member.
    pub fn leave(&self, topic: &str, key: Key) -> Option<Change> {
        let mut guard = self.lock();
        let registry = &mut *guard;
        let room = registry.rooms.get_mut(topic)?;
        if !room.members.remove(&key.packed()) {
            return None;
        }
        let members = room.members.len() + 1;
        let client = registry
            .clients
            .get_mut(&key.packed())
            .expect("a member has a client record");
        let edge = match &client.user {
            Some(user) => {
                let n = room
                    .users
                    .get_mut(user)
                    .expect("a member's user is counted");
                *n -= 1;
                let last = *n == 0;
                if last {
                    room.users.remove(user);
                }
                last
            }
            None => true,
        };
        if room.members.is_empty() {
            registry.rooms.remove(topic);
        }
        let change = Change {
            topic: topic.into(),
            member: member(&self.node, client),
            joined: false,
            edge,
            members,
        };
        client.rooms -= 1;
        if client.rooms == 0 {
            registry.clients.remove(&key.packed());
        }
        Some(change)
    }

    /// `topic`'s counts.
    pub fn stats(&self, topic: &str) -> Stats {
        let registry = self.lock();
        registry
            .rooms
            .get(topic)
            .map_or_else(Stats::default, |r| Stats {
                clients: r.members.len(),
                users: r.users.len(),
            })
    }

    /// Up to `limit` members of `topic` whose sequence comes after
    /// `cursor` (a previous page's `next`), in sequence order.
    pub fn page(&self, topic: &str, cursor: Option<u64>, limit: usize) -> Page {
        let registry = self.lock();
        let Some(room) = registry.rooms.get(topic) else {
            return Page::default();
        };
        let after = cursor.unwrap_or(0);
        let mut clients: Vec<&Client> = room
            .members
            .iter()
            .map(|k| &registry.clients[k])
            .filter(|c| c.seq > after)
            .collect();
        let more = clients.len() > limit;
        if more {
            clients.select_nth_unstable_by_key(limit, |c| c.seq);
            clients.truncate(limit);
        }
        clients.sort_unstable_by_key(|c| c.seq);
        Page {
            next: more
                .then(|| clients.last().map(|c| c.seq.to_string()))
                .flatten(),
            members: clients.iter().map(|c| member(&self.node, c)).collect(),
        }
    }
}

fn member(node: &str, client: &Client) -> Member {
    Member {
        client: format!("{node}.{}", client.seq),
        user: client.user.clone(),
        info: client.info.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence() -> Presence {
        Presence::new(vec![Pattern::parse("room.*").unwrap()], 2)
    }

    fn key(slot: u32) -> Key {
        Key { worker: 0, slot }
    }

    #[test]
    fn first_and_last_count_connections_per_user() {
        let p = presence();
        assert!(p.enabled("room.1") && !p.enabled("news"));
        let a = p.join("room.1", key(1), Some("42"), Some(r#"{"n":"a"}"#));
        let b = p.join("room.1", key(2), Some("42"), None);
        let c = p.join("room.1", key(3), Some("7"), None);
        let anon = p.join("room.1", key(4), None, None);
        assert_eq!(
            [a.edge, b.edge, c.edge, anon.edge],
            [true, false, true, true]
        );
        assert_eq!(a.member.info.as_deref(), Some(r#"{"n":"a"}"#));
        assert!(p.pushed(&b) && !p.pushed(&c), "over the bound of 2");
        assert_eq!(
            p.stats("room.1"),
            Stats {
                clients: 4,
                users: 2
            }
        );
        let left: Vec<bool> = [1, 2, 3, 4]
            .iter()
            .map(|&s| p.leave("room.1", key(s)).unwrap().edge)
            .collect();
        assert_eq!(left, [false, true, true, true]);
        assert_eq!(p.stats("room.1"), Stats::default());
        assert!(p.leave("room.1", key(1)).is_none());
        assert!(p.lock().rooms.is_empty() && p.lock().clients.is_empty());
    }

    #[test]
    fn a_connection_keeps_its_client_id_across_topics_and_ids_are_not_reused() {
        let p = presence();
        let a = p.join("room.1", key(1), None, None).member.client;
        let b = p.join("room.2", key(1), None, None).member.client;
        assert_eq!(a, b);
        p.leave("room.1", key(1));
        p.leave("room.2", key(1));
        let again = p.join("room.1", key(1), None, None).member.client;
        assert_ne!(a, again, "a new tenant of the slot is a new client");
        assert!(a.starts_with(p.node()));
        assert_eq!(p.snapshot().len(), 1);
    }

    #[test]
    fn pages_follow_the_cursor_in_order() {
        let p = presence();
        for slot in 0..25 {
            p.join("room.1", key(slot), None, None);
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = p.page("room.1", cursor, 10);
            seen.extend(page.members.into_iter().map(|m| m.client));
            match page.next {
                Some(next) => cursor = Some(next.parse().unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        let seqs: Vec<u64> = seen
            .iter()
            .map(|c| c.rsplit('.').next().unwrap().parse().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }
}
