//! What presence reads from Redis, checked: stored members, and the join
//! and leave events published on a topic's channel.

use super::scripts::{MAX_CLIENT, MAX_INFO};
use super::Redis;
use ringcast_engine::auth::MAX_USER_ID;
use ringcast_engine::presence::{Change, Member};
use ringcast_engine::upstream::Origin;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A hash field and its value, as HSCAN answers them.
pub(super) type Pair = (Vec<u8>, Vec<u8>);

/// A member as it is stored and published.
#[derive(Deserialize)]
struct Stored {
    client: String,
    user: Option<String>,
    info: Option<Box<RawValue>>,
}

/// Where client id `NODE.SEQ` sorts: by node, then sequence as a number.
pub(super) fn order(client: &str) -> (&str, u64) {
    match client.rsplit_once('.') {
        Some((node, seq)) => (node, seq.parse().unwrap_or(u64::MAX)),
        None => (client, u64::MAX),
    }
}

/// A member read from Redis, if it is within the limits.
pub(super) fn member(json: &[u8]) -> Option<Member> {
    let m: Stored = serde_json::from_slice(json).ok()?;
    let info = m.info.filter(|i| i.get() != "null");
    let fits = m.client.len() <= MAX_CLIENT
        && m.user.as_ref().is_none_or(|u| u.len() <= MAX_USER_ID)
        && info.as_ref().is_none_or(|i| i.get().len() <= MAX_INFO);
    fits.then(|| Member {
        client: m.client,
        user: m.user.map(Into::into),
        info: info.map(|i| i.get().into()),
    })
}

/// A presence event published on a topic's channel.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    presence: String,
    node: String,
    /// The joining connection (worker, slot, generation), on its node.
    #[serde(default)]
    o: Option<(u32, u32, u32)>,
    client: String,
    user: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    edge: bool,
    members: usize,
}

impl Redis {
    /// Pushes a presence event from `topic`'s channel to this node's
    /// `join_leave` subscribers.
    ///
    /// # Errors
    /// Why the event is malformed or out of bounds.
    pub(in crate::broker::redis) fn presence_event(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), &'static str> {
        let e: Event = serde_json::from_slice(payload).map_err(|_| "malformed presence event")?;
        let joined = match e.presence.as_str() {
            "join" => true,
            "leave" => false,
            _ => return Err("unknown presence event"),
        };
        let info = e.info.filter(|i| i.get() != "null");
        if e.client.len() > MAX_CLIENT
            || e.user.as_ref().is_some_and(|u| u.len() > MAX_USER_ID)
            || info.as_ref().is_some_and(|i| i.get().len() > MAX_INFO)
            || e.members > self.settings.presence_max
        {
            return Err("presence event out of bounds");
        }
        let skip =
            e.o.filter(|_| e.node == self.handle.presence_node())
                .map(|(worker, slot, gen)| Origin { worker, slot, gen });
        let change = Change {
            topic: topic.into(),
            member: Member {
                client: e.client,
                user: e.user.map(Into::into),
                info: info.map(|i| i.get().into()),
            },
            joined,
            edge: e.edge,
            members: e.members,
        };
        self.handle.presence_event(&change, skip);
        Ok(())
    }
}
