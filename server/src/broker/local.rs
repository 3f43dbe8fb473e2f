//! The in-process broker: this node alone. The engine's hub assigns
//! offsets and keeps history (`--history`), and `Handle::publish_as`
//! fans each message out to the workers; nothing waits on I/O.

use super::{Broker, Demand, Message, Published, Reach, Unavailable};
use crate::webhooks::Webhooks;
use futures_util::future::BoxFuture;
use ringcast_engine::history::Page;
use ringcast_engine::presence;
use ringcast_engine::upstream::{PresenceChange, Recover};
use ringcast_engine::{Content, Handle};
use std::sync::Arc;

/// The node's own hub.
pub struct Local {
    handle: Handle,
}

impl Local {
    /// The broker of the engine behind `handle`.
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }
}

impl Broker for Local {
    fn publish<'a>(
        &'a self,
        message: Message<'a>,
    ) -> BoxFuture<'a, Result<Published, Unavailable>> {
        let (reach, done) = Reach::local("subscribers");
        let offsets = self.handle.publish_as(
            message.topics,
            message.users,
            message.content,
            message.body,
            &message.sender,
            done,
        );
        Box::pin(async move { Ok(Published { offsets, reach }) })
    }

    fn broadcast<'a>(
        &'a self,
        content: Content,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<Reach, Unavailable>> {
        let (reach, done) = Reach::local("subscribers");
        self.handle.broadcast(content, body, done);
        Box::pin(async move { Ok(reach) })
    }

    fn disconnect<'a>(
        &'a self,
        users: Vec<String>,
        code: u16,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Reach, Unavailable>> {
        let (reach, done) = Reach::local("disconnected");
        self.handle.disconnect(users, code, reason, done);
        Box::pin(async move { Ok(reach) })
    }

    fn history<'a>(
        &'a self,
        topic: &'a str,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Page>, Unavailable>> {
        let page = self.handle.history(topic, since, limit);
        Box::pin(async move { Ok(page) })
    }

    fn presence<'a>(
        &'a self,
        topic: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<presence::Page, Unavailable>> {
        // The sequence after the node id: this node's client ids sort by it.
        let seq = cursor.and_then(|c| c.rsplit('.').next()?.parse().ok());
        let page = self.handle.presence_page(topic, seq, limit);
        Box::pin(async move { Ok(page) })
    }

    fn presence_stats<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<presence::Stats, Unavailable>> {
        let stats = self.handle.presence_stats(topic);
        Box::pin(async move { Ok(stats) })
    }

    // The workers' closes removed every member.
    fn depart(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn health(&self) -> Option<serde_json::Value> {
        None
    }

    fn metrics_text(&self) -> String {
        String::new()
    }
}

/// The local broker's [`Demand`]: the workers resolve interest, reads and
/// presence themselves (the engine's `Config::broker` is off); the
/// node's channel edges are the cluster's, sent straight to the webhook.
pub struct Direct(pub Arc<Webhooks>);

impl Demand for Direct {
    fn update(&self, _topic: &str, _held: bool) {}

    // The workers pushed it themselves.
    fn presence(&self, _change: PresenceChange) {}

    fn channel(&self, topic: &str, occupied: bool) {
        self.0.channel(topic, occupied);
    }

    fn recover(&self, read: Recover) {
        tracing::error!(
            topic = read.topic,
            "a history read reached the local broker"
        );
    }
}
