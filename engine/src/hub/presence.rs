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
//! Memory (measured in the README): per member, 16 bytes in its room
//! (sequence and connection key; a B-tree past 32 members); per
//! connection that is a member anywhere, one 32-byte client record (its
//! sequence number, room count, and its user and info in one
//! allocation); per distinct user of a room, one count.

use crate::session::permissions::Pattern;
use std::collections::{BTreeMap, HashMap};
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
    /// The cursor of the next page (the last client id listed), if there
    /// are more.
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

/// [`Client::user_len`] of a member without a user.
const NO_USER: u32 = u32::MAX;

/// One connection that is a member of at least one topic (32 bytes).
struct Client {
    seq: u64,
    rooms: u32,
    /// Length of the user id at the start of `who`, or [`NO_USER`].
    user_len: u32,
    /// The user id then the `info` JSON, in one allocation; `None` when
    /// both are absent.
    who: Option<Arc<str>>,
}

impl Client {
    fn new(seq: u64, user: Option<&str>, info: Option<&str>) -> Self {
        let text = [user.unwrap_or(""), info.unwrap_or("")].concat();
        Self {
            seq,
            rooms: 0,
            user_len: user.map_or(NO_USER, |u| u.len() as u32),
            who: (!text.is_empty() || user.is_some()).then(|| text.into()),
        }
    }

    fn user(&self) -> Option<&str> {
        let who = self.who.as_deref()?;
        (self.user_len != NO_USER).then(|| &who[..self.user_len as usize])
    }

    fn info(&self) -> Option<&str> {
        let who = self.who.as_deref()?;
        let at = if self.user_len == NO_USER {
            0
        } else {
            self.user_len as usize
        };
        (who.len() > at).then(|| &who[at..])
    }
}

/// Rooms up to this many members keep them in a sorted vector.
const SMALL: usize = 32;

/// A room's members, (client sequence, connection key), in sequence order:
/// a sorted vector while small (16 bytes a member, one allocation), a
/// B-tree past [`SMALL`] (a page costs its own size, not the room's).
enum Members {
    Small(Vec<(u64, u64)>),
    Large(BTreeMap<u64, u64>),
}

impl Members {
    fn len(&self) -> usize {
        match self {
            Members::Small(v) => v.len(),
            Members::Large(m) => m.len(),
        }
    }

    /// Adds `seq`; false when it was there.
    fn insert(&mut self, seq: u64, key: u64) -> bool {
        match self {
            Members::Small(v) => match v.binary_search_by_key(&seq, |&(s, _)| s) {
                Ok(_) => false,
                Err(at) if v.len() < SMALL => {
                    v.insert(at, (seq, key));
                    true
                }
                Err(_) => {
                    let mut m: BTreeMap<u64, u64> = v.drain(..).collect();
                    m.insert(seq, key);
                    *self = Members::Large(m);
                    true
                }
            },
            Members::Large(m) => m.insert(seq, key).is_none(),
        }
    }

    /// Removes `seq`; false when it was not there.
    fn remove(&mut self, seq: u64) -> bool {
        match self {
            Members::Small(v) => match v.binary_search_by_key(&seq, |&(s, _)| s) {
                Ok(at) => {
                    v.remove(at);
                    true
                }
                Err(_) => false,
            },
            Members::Large(m) => m.remove(&seq).is_some(),
        }
    }

    /// The connection keys of the members after `after`, in order.
    fn after(&self, after: u64) -> Box<dyn Iterator<Item = u64> + '_> {
        match self {
            Members::Small(v) => {
                let at = v.partition_point(|&(s, _)| s <= after);
                Box::new(v[at..].iter().map(|&(_, k)| k))
            }
            Members::Large(m) => Box::new(m.range(after + 1..).map(|(_, &k)| k)),
        }
    }
}

struct Room {
    members: Members,
    /// Connections per user (non-null users only).
    users: HashMap<Box<str>, u32>,
}

impl Default for Room {
    fn default() -> Self {
        Self {
            members: Members::Small(Vec::new()),
            users: HashMap::new(),
        }
    }
}

/// Gives back the spare capacity of a map that emptied to a quarter.
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
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
            for key in room.members.after(0) {
                let client = &registry.clients[&key];
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
            Client::new(*seq, user, info)
        });
        client.rooms += 1;
        let room = registry.rooms.entry(topic.into()).or_default();
        assert!(
            room.members.insert(client.seq, key.packed()),
            "joined {topic} twice"
        );
        let edge = match client.user() {
            Some(user) => {
                let n = room.users.entry(user.into()).or_insert(0);
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
        let client = registry.clients.get_mut(&key.packed())?;
        let room = registry.rooms.get_mut(topic)?;
        if !room.members.remove(client.seq) {
            return None;
        }
        let members = room.members.len() + 1;
        let edge = match client.user() {
            Some(user) => {
                let n = room
                    .users
                    .get_mut(user)
                    .expect("a member's user is counted");
                *n -= 1;
                let last = *n == 0;
                if last {
                    room.users.remove(user);
                    shrink(&mut room.users);
                }
                last
            }
            None => true,
        };
        if room.members.len() == 0 {
            registry.rooms.remove(topic);
            shrink(&mut registry.rooms);
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
            shrink(&mut registry.clients);
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
    /// `cursor` (a previous page's `next`), in sequence order. Costs the
    /// page's size, not the room's.
    pub fn page(&self, topic: &str, cursor: Option<u64>, limit: usize) -> Page {
        let registry = self.lock();
        let Some(room) = registry.rooms.get(topic) else {
            return Page::default();
        };
        let mut keys = room.members.after(cursor.unwrap_or(0));
        let clients: Vec<&Client> = keys
            .by_ref()
            .take(limit)
            .map(|k| &registry.clients[&k])
            .collect();
        let more = keys.next().is_some();
        Page {
            next: more
                .then(|| clients.last().map(|c| format!("{}.{}", self.node, c.seq)))
                .flatten(),
            members: clients.iter().map(|c| member(&self.node, c)).collect(),
        }
    }
}

fn member(node: &str, client: &Client) -> Member {
    Member {
        client: format!("{node}.{}", client.seq),
        user: client.user().map(Into::into),
        info: client.info().map(Into::into),
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
    fn a_client_keeps_user_and_info_apart_in_one_allocation() {
        let c = Client::new(1, Some("42"), Some("{}"));
        assert_eq!((c.user(), c.info()), (Some("42"), Some("{}")));
        let c = Client::new(1, None, Some("{}"));
        assert_eq!((c.user(), c.info()), (None, Some("{}")));
        let c = Client::new(1, Some("42"), None);
        assert_eq!((c.user(), c.info()), (Some("42"), None));
        let c = Client::new(1, None, None);
        assert!(c.who.is_none() && c.user().is_none() && c.info().is_none());
        assert_eq!(std::mem::size_of::<Client>(), 32);
    }

    #[test]
    fn pages_follow_the_cursor_in_order() {
        let p = presence();
        // Past the small room's 32, with sequences out of join order.
        for slot in 0..40 {
            p.join("room.2", key(slot), None, None);
        }
        for slot in (0..40).rev() {
            p.join("room.1", key(slot), None, None);
        }
        p.leave("room.1", key(7));
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = p.page("room.1", cursor, 10);
            seen.extend(page.members.into_iter().map(|m| m.client));
            match page.next {
                Some(next) => cursor = Some(next.rsplit('.').next().unwrap().parse().unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 39);
        let seqs: Vec<u64> = seen
            .iter()
            .map(|c| c.rsplit('.').next().unwrap().parse().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }
}
