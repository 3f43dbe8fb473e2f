//! A worker's identities: each connection's session (its user id and its
//! token's [`Grant`]), interned so that a connection record holds one
//! `u32`, and the index from a user id to its connections.
//!
//! - A grant is interned by value: every connection whose token carries
//!   the same `topics`, `publish` and `info` shares one.
//! - A session is one (user, grant) pair. It lives while a connection
//!   refers to it; a user id is dropped with its last connection.
//! - A session with a user lists its connections' slots (usually one),
//!   which is how `POST /publish?user=` and `/disconnect` find them. An
//!   anonymous session only counts its connections.

use super::permissions::{may_subscribe, Grant};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// A connection's session in its worker's [`Sessions`]: 4 bytes in the
/// connection record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionId(u32);

impl SessionId {
    /// No token: auth is off, or `--allow-anonymous` let it in without
    /// one. Every topic but the user-limited ones.
    pub const NONE: SessionId = SessionId(u32::MAX);
}

/// A short list of ids with no allocation for the usual single one.
#[derive(Debug, Default)]
enum Ids {
    #[default]
    None,
    One(u32),
    /// Boxed to keep the list 16 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u32>>),
}

impl Ids {
    fn as_slice(&self) -> &[u32] {
        match self {
            Ids::None => &[],
            Ids::One(id) => std::slice::from_ref(id),
            Ids::Many(ids) => ids,
        }
    }

    fn push(&mut self, id: u32) {
        *self = match std::mem::take(self) {
            Ids::None => Ids::One(id),
            Ids::One(first) => Ids::Many(Box::new(vec![first, id])),
            Ids::Many(mut ids) => {
                ids.push(id);
                Ids::Many(ids)
            }
        };
    }

    /// Removes `id`; returns whether the list is now empty.
    ///
    /// # Panics
    /// If `id` is not in the list.
    fn remove(&mut self, id: u32) -> bool {
        match self {
            Ids::Many(ids) => {
                let i = ids.iter().position(|&x| x == id).expect("id is listed");
                ids.swap_remove(i);
                if let [last] = ids[..] {
                    *self = Ids::One(last);
                }
            }
            Ids::One(only) => {
                assert_eq!(*only, id, "id is listed");
                *self = Ids::None;
            }
            Ids::None => panic!("removing {id} from an empty list"),
        }
        matches!(self, Ids::None)
    }
}

struct Session {
    user: Option<Rc<str>>,
    grant: Rc<Grant>,
    /// Connections referring to this session.
    refs: u32,
    /// Their slots, for a session with a user.
    slots: Ids,
}

/// One worker's sessions, users and grants.
#[derive(Default)]
pub struct Sessions {
    entries: Slab<Session>,
    /// User id → its sessions (one per distinct grant).
    by_user: HashMap<Rc<str>, Ids>,
    /// Grant (by address) → its anonymous session.
    anonymous: HashMap<usize, u32>,
    grants: HashSet<Rc<Grant>>,
}

impl Sessions {
    /// Registers connection `slot` of `user` with `grant`; returns the
    /// session to keep in its record and give back to [`Self::detach`].
    pub fn attach(&mut self, user: Option<&str>, grant: Grant, slot: u32) -> SessionId {
        let grant = match self.grants.get(&grant) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Rc::new(grant);
                self.grants.insert(shared.clone());
                shared
            }
        };
        let existing = match user {
            Some(name) => self.by_user.get(name).and_then(|ids| {
                ids.as_slice()
                    .iter()
                    .copied()
                    .find(|&id| Rc::ptr_eq(&self.entries[id as usize].grant, &grant))
            }),
            None => self.anonymous.get(&(Rc::as_ptr(&grant) as usize)).copied(),
        };
        let id = existing.unwrap_or_else(|| self.create(user, grant));
        let session = &mut self.entries[id as usize];
        session.refs += 1;
        if session.user.is_some() {
            session.slots.push(slot);
        }
        SessionId(id)
    }

    fn create(&mut self, user: Option<&str>, grant: Rc<Grant>) -> u32 {
        let user = user.map(|name| match self.by_user.get_key_value(name) {
            Some((shared, _)) => shared.clone(),
            None => Rc::from(name),
        });
        let key = Rc::as_ptr(&grant) as usize;
        let id = self.entries.insert(Session {
            user: user.clone(),
            grant,
            refs: 0,
            slots: Ids::None,
        }) as u32;
        match user {
            Some(name) => self.by_user.entry(name).or_default().push(id),
            None => {
                self.anonymous.insert(key, id);
            }
        }
        id
    }

    /// Connection `slot` no longer refers to session `id` (closed, or
    /// refreshed into another). Drops the session with its last
    /// connection, the user id with its last session, and the grant with
    /// its last session.
    pub fn detach(&mut self, id: SessionId, slot: u32) {
        if id == SessionId::NONE {
            return;
        }
        let session = &mut self.entries[id.0 as usize];
        if session.user.is_some() {
            session.slots.remove(slot);
        }
        session.refs -= 1;
        if session.refs > 0 {
            return;
        }
        let session = self.entries.remove(id.0 as usize);
        match &session.user {
            Some(name) => {
                let ids = self.by_user.get_mut(name).expect("user is indexed");
                if ids.remove(id.0) {
                    self.by_user.remove(name);
                }
            }
            None => {
                self.anonymous
                    .remove(&(Rc::as_ptr(&session.grant) as usize));
            }
        }
        // The set and this session held the last references.
        if Rc::strong_count(&session.grant) == 2 {
            self.grants.remove(&*session.grant);
        }
    }

    /// The user id of session `id`, if it has one.
    pub fn user(&self, id: SessionId) -> Option<&str> {
        self.entry(id).and_then(|s| s.user.as_deref())
    }

    /// The grant of session `id`; `None` for [`SessionId::NONE`].
    pub fn grant(&self, id: SessionId) -> Option<&Grant> {
        self.entry(id).map(|s| &*s.grant)
    }

    fn entry(&self, id: SessionId) -> Option<&Session> {
        (id != SessionId::NONE).then(|| &self.entries[id.0 as usize])
    }

    /// Whether a connection of session `id` may subscribe to `topic`.
    pub fn may_subscribe(&self, id: SessionId, topic: &str) -> bool {
        may_subscribe(self.user(id), self.grant(id), topic)
    }

    /// The slots of `user`'s connections on this worker.
    pub fn user_slots(&self, user: &str) -> impl Iterator<Item = u32> + '_ {
        let sessions = self.by_user.get(user).map_or(&[][..], Ids::as_slice);
        sessions
            .iter()
            .flat_map(|&id| self.entries[id as usize].slots.as_slice().iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[&str]) -> Grant {
        Grant::new(
            Some(list.iter().map(|t| t.to_string()).collect()),
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn users_and_grants_are_shared_and_dropped_with_their_last_connection() {
        let mut s = Sessions::default();
        let a1 = s.attach(Some("42"), topics(&["a"]), 1);
        let a2 = s.attach(Some("42"), topics(&["a"]), 2);
        let b = s.attach(Some("42"), topics(&["b"]), 3);
        let anon1 = s.attach(None, topics(&["a"]), 4);
        let anon2 = s.attach(None, topics(&["a"]), 5);
        assert_eq!((a1, anon1), (a2, anon2));
        assert_ne!(a1, b);
        assert_eq!(
            (s.entries.len(), s.grants.len(), s.by_user.len()),
            (3, 2, 1)
        );
        let mut slots: Vec<_> = s.user_slots("42").collect();
        slots.sort_unstable();
        assert_eq!(slots, [1, 2, 3]);
        assert!(s.may_subscribe(a1, "a") && !s.may_subscribe(a1, "b"));
        assert!(s.may_subscribe(b, "notifications#42"));
        assert!(!s.may_subscribe(anon1, "notifications#42"));
        assert!(s.may_subscribe(SessionId::NONE, "anything"));
        assert_eq!(s.user(anon1), None);
        s.detach(a1, 1);
        s.detach(b, 3);
        assert_eq!(s.user_slots("42").collect::<Vec<_>>(), [2]);
        s.detach(a2, 2);
        assert_eq!((s.by_user.len(), s.user_slots("42").count()), (0, 0));
        s.detach(anon1, 4);
        s.detach(anon2, 5);
        s.detach(SessionId::NONE, 6);
        assert!(s.entries.is_empty() && s.grants.is_empty() && s.anonymous.is_empty());
    }
}
