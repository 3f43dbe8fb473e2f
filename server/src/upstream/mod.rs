//! The server's end of the workers' upstream channel (see
//! `ringcast_engine::upstream`): a bounded tokio channel the workers
//! `try_send` into, and the loop on the server's runtime that handles each
//! event and answers the connection through the engine's [`Handle`].
//!
//! - Every event is admitted within [`bounds`] first (events and bytes,
//!   overall and per connection); past a bound the worker answers the
//!   client itself.
//! - Client publishes take the path `POST /publish` takes: the broker
//!   ([`crate::broker::Broker`]). Each connection's publishes pass the
//!   publish hook (when on) and the broker one at a time, in the order
//!   sent; other connections' run beside them. A connection's queue holds
//!   at most `--client-publish-queue` of them.
//! - RPCs and connect requests each run as their own task, bounded by the
//!   hook client's timeout and concurrency.
//! - Closed connections mark their waiting work dead (dropped, not done)
//!   and feed the disconnect hook's batches.
//! - Topic interest and history reads go straight to the broker's
//!   [`crate::broker::Demand`], on the workers' threads; presence changes
//!   and topic interest to the webhooks' queues ([`Webhooks`]).

pub mod bounds;
mod hooked;

use crate::broker::{Broker, Demand, Message};
use crate::hooks::Hooks;
use crate::webhooks::Webhooks;
use bounds::{Bounds, Limits, Ticket};
use ringcast_engine::protocol::v1;
use ringcast_engine::upstream::{Event, Origin, PresenceQuery, Publish, Sink, Upstream};
use ringcast_engine::{Content, Handle, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;

/// An admitted event and its share of the bounds.
pub type Work = (Event, Ticket);

struct Channel {
    tx: mpsc::Sender<Work>,
    bounds: Arc<Bounds>,
    demand: Arc<dyn Demand>,
    webhooks: Arc<Webhooks>,
    /// Whether the disconnect hook is on (else a Closed event only marks
    /// the connection's waiting work dead).
    disconnect: bool,
}

impl Sink for Channel {
    fn send(&self, event: Event) -> Result<(), Event> {
        match event {
            Event::Interest(interest) => {
                self.demand.update(&interest.topic, interest.held);
                let topic = &interest.topic;
                if let Some(occupied) = self.webhooks.node_edge(topic, interest.held) {
                    self.demand.channel(topic, occupied);
                }
                Ok(())
            }
            Event::Presence(change) => {
                self.webhooks.presence(&change.change);
                self.demand.presence(change);
                Ok(())
            }
            Event::Recover(read) => {
                self.demand.recover(read);
                Ok(())
            }
            Event::Closed(closed) => {
                self.bounds.closed(closed.origin);
                if self.disconnect {
                    // Best effort: past a bound the event is dropped.
                    let event = Event::Closed(closed);
                    if let Ok(ticket) = self.bounds.admit(&event) {
                        let _ = self.tx.try_send((event, ticket));
                    }
                }
                Ok(())
            }
            event => {
                let ticket = match self.bounds.admit(&event) {
                    Ok(ticket) => ticket,
                    Err(_) => return Err(event),
                };
                self.tx.try_send((event, ticket)).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(work)
                    | mpsc::error::TrySendError::Closed(work) => work.0,
                })
            }
        }
    }
}

/// A sink for [`ringcast_engine::Config::upstream`] within `limits`, the
/// receiver the loop reads, and the bounds (for their metrics). Interest
/// and reads go to `demand`, presence changes and interest to `webhooks`
/// too; `disconnect` says whether the disconnect hook is on.
pub fn channel(
    limits: Limits,
    demand: Arc<dyn Demand>,
    webhooks: Arc<Webhooks>,
    disconnect: bool,
) -> (Upstream, mpsc::Receiver<Work>, Arc<Bounds>) {
    let (tx, rx) = mpsc::channel(limits.events.max(1));
    let bounds = Bounds::new(limits);
    let sink = Channel {
        tx,
        bounds: bounds.clone(),
        demand,
        webhooks,
        disconnect,
    };
    (Upstream(Arc::new(sink)), rx, bounds)
}

/// What the loop's tasks share.
pub struct Context {
    /// The engine.
    pub handle: Handle,
    /// The hook client, with `--hook-url`.
    pub hooks: Option<Arc<Hooks>>,
    /// Which hooks are on.
    pub on: ringcast_engine::upstream::Hooks,
    /// `--max-message-size`: the largest payload a publish hook may
    /// return.
    pub max_message: usize,
    /// `--hook-forward-token`: the connect hook gets the `token` query
    /// parameter too.
    pub forward_token: bool,
    /// The broker: client publishes go through it, like `POST /publish`.
    pub broker: Arc<dyn Broker>,
    /// The bounds every event was admitted within.
    pub bounds: Arc<Bounds>,
}

/// Handles every event until the workers are gone (the channel closes
/// when the runtime's config, which holds the sink, is dropped).
pub async fn run(mut events: mpsc::Receiver<Work>, ctx: Context) {
    let ctx = Arc::new(ctx);
    // Finished serial publishes. Unbounded in type, bounded by
    // construction: a connection has at most one serial task running (the
    // rest wait in `serial`, within `--client-publish-queue`), and each
    // task sends once, so it never holds more than one message per open
    // connection. A send cannot fail while the loop runs; nothing is
    // refused, so there is nothing to count.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Origin>();
    // Connections with a publish at the publish hook or the broker, and
    // their next ones (at most `--client-publish-queue` each, by the
    // bounds).
    let mut serial: HashMap<Origin, VecDeque<(Publish, Ticket)>> = HashMap::new();
    let disconnects = match (&ctx.hooks, ctx.on.disconnect) {
        (Some(hooks), true) => {
            let (tx, rx) = mpsc::channel(hooked::DISCONNECT_QUEUE);
            tokio::spawn(hooked::disconnect_batches(hooks.clone(), rx));
            Some(tx)
        }
        _ => None,
    };
    loop {
        let (event, ticket) = tokio::select! {
            work = events.recv() => match work {
                Some(work) => work,
                None => break,
            },
            Some(origin) = done_rx.recv() => {
                let Some(waiting) = serial.get_mut(&origin) else { continue };
                if ctx.bounds.is_dead(origin) {
                    ctx.bounds.dropped(waiting.len());
                    waiting.clear();
                }
                match waiting.pop_front() {
                    Some(next) => spawn_serial(&ctx, &done_tx, next),
                    None => {
                        serial.remove(&origin);
                    }
                }
                continue;
            }
        };
        match event {
            Event::Publish(publish) => match serial.get_mut(&publish.origin) {
                Some(waiting) => waiting.push_back((publish, ticket)),
                None => {
                    serial.insert(publish.origin, VecDeque::new());
                    spawn_serial(&ctx, &done_tx, (publish, ticket));
                }
            },
            Event::Rpc(rpc) => {
                tokio::spawn(hooked::call_rpc(ctx.clone(), rpc, ticket));
            }
            Event::PresenceQuery(query) => {
                tokio::spawn(answer_presence(ctx.clone(), query, ticket));
            }
            Event::Connect(connect) => {
                tokio::spawn(hooked::call_connect(ctx.clone(), connect, ticket));
            }
            Event::Closed(closed) => {
                if let Some(tx) = &disconnects {
                    // Best effort: a full queue drops the event.
                    let _ = tx.try_send(hooked::disconnect_event(&closed));
                }
            }
            other @ (Event::Interest(_) | Event::Recover(_) | Event::Presence(_)) => {
                tracing::error!(?other, "a broker event reached the upstream loop");
            }
        }
    }
}

/// Answers a `ringcast.v1` `presence` or `presence_stats` op from the
/// broker (across the cluster); `broker unavailable` when it cannot be
/// read. Dropped when the connection closed meanwhile.
async fn answer_presence(ctx: Arc<Context>, query: PresenceQuery, ticket: Ticket) {
    use ringcast_engine::presence::{Who, MAX_ANSWER};
    use ringcast_engine::protocol::{control, presence};
    let topic = &query.topic;
    let text = if query.stats {
        match ctx.broker.presence_stats(topic).await {
            Ok(s) => presence::stats_answer(topic, s.clients, s.users),
            Err(_) => control::topic_error(topic, "broker unavailable"),
        }
    } else {
        match ctx.broker.presence(topic, None, MAX_ANSWER).await {
            Ok(page) => {
                let members = page.members.iter().take(MAX_ANSWER).map(|m| Who {
                    client: &m.client,
                    user: m.user.as_deref(),
                    info: m.info.as_deref(),
                });
                let truncated = page.next.is_some() || page.members.len() > MAX_ANSWER;
                presence::answer(topic, members, truncated)
            }
            Err(_) => control::topic_error(topic, "broker unavailable"),
        }
    };
    if !ctx.bounds.is_dead(query.origin) {
        let frame = ringcast_engine::protocol::frame::encode(
            ringcast_engine::OpCode::Text,
            text.as_bytes(),
        );
        ctx.handle.reply(query.origin, frame);
    }
    drop(ticket);
}

impl Context {
    /// Whether client publishes pass the publish hook.
    fn hooked(&self) -> bool {
        self.on.publish && self.hooks.is_some()
    }
}

/// Runs one publish through the hook and the broker (whichever are on),
/// then tells the loop it is done, so the connection's next one starts.
/// A publish whose connection closed meanwhile is dropped.
fn spawn_serial(
    ctx: &Arc<Context>,
    done: &mpsc::UnboundedSender<Origin>,
    (publish, ticket): (Publish, Ticket),
) {
    let (ctx, done) = (ctx.clone(), done.clone());
    tokio::spawn(async move {
        let origin = publish.origin;
        if ctx.bounds.is_dead(origin) {
            ctx.bounds.dropped(1);
        } else if ctx.hooked() {
            hooked::publish_hooked(&ctx, publish).await;
        } else {
            let content = publish.content;
            let payload = publish.payload.clone();
            deliver(&ctx, &publish, content, &payload).await;
        }
        drop(ticket);
        let _ = done.send(origin);
    });
}

/// Publishes a client's message through the broker, as `POST /publish`
/// does, and answers a `ringcast.v1` sender `published` (with the topic's
/// offset when it keeps history), or `broker unavailable` when the broker
/// refused it.
async fn deliver(ctx: &Context, publish: &Publish, content: Content, payload: &[u8]) {
    let message = Message {
        topics: publish.topics.clone(),
        users: Vec::new(),
        content,
        body: payload,
        sender: Sender {
            user: publish.user.clone(),
            skip: (!publish.echo).then_some(publish.origin),
        },
    };
    let reply = match ctx.broker.publish(message).await {
        Ok(published) => {
            let first = publish.topics.first();
            let offset = published
                .offsets
                .iter()
                .find(|(topic, _)| Some(topic) == first)
                .map(|(_, offset)| *offset);
            v1::published(publish.id, offset)
        }
        Err(_) => v1::error(publish.id, "broker unavailable"),
    };
    if publish.reply {
        ctx.handle.reply(publish.origin, reply);
    }
}
