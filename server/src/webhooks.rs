//! The event webhooks, POSTed through the hook client (`--hook-url`):
//!
//! - `presence` (`--hooks presence`): `{"presence":[{"event":"join"|"leave",
//!   "topic","client","user","info"},…]}`;
//! - `channels` (`--hooks channels`): `{"channels":[{"event":"occupied"|
//!   "vacated","topic"}]}`, when a topic gets its first subscriber or
//!   loses its last.
//!
//! Events are batched (up to [`BATCH`] events, sent within [`WAIT`] of the
//! first) and sent one request at a time per hook, so in order. Delivery
//! is at least once: a batch the backend did not answer 2xx is sent again
//! up to [`ATTEMPTS`] times in all, [`BACKOFF`] apart and doubling. Each
//! hook's queue holds at most [`QUEUE`] events; events past it, and those
//! of a batch that failed every attempt, are counted in
//! `ringcast_hook_events_dropped_total{hook}`.

use crate::hooks::{Failure, Hooks};
use ringcast_engine::presence::{hook_event, Change, Who};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Most events in one request.
pub const BATCH: usize = 100;
/// Longest an event waits for its batch to fill.
pub const WAIT: Duration = Duration::from_millis(100);
/// Events waiting per hook at most.
pub const QUEUE: usize = 65_536;
/// Tries per batch, the first included.
pub const ATTEMPTS: u32 = 5;
/// Wait before the first retry; doubled before each next one.
pub const BACKOFF: Duration = Duration::from_millis(200);

/// One hook's queue.
struct Queue {
    hook: &'static str,
    tx: mpsc::Sender<Value>,
}

/// Where the workers' presence changes and topic interest become webhook
/// events (on their threads: never blocks).
pub struct Webhooks {
    hooks: Option<Arc<Hooks>>,
    presence: Option<Queue>,
    channels: Option<Queue>,
    /// Workers holding each topic (for `channels`).
    occupied: Mutex<HashMap<String, u32>>,
}

/// The senders' tasks, to start on the server's runtime.
pub struct Senders(Vec<(&'static str, mpsc::Receiver<Value>)>);

impl Webhooks {
    /// Queues for the hooks that are on (`presence`, `channels`) when
    /// there is a hook client.
    pub fn new(hooks: Option<Arc<Hooks>>, presence: bool, channels: bool) -> (Arc<Self>, Senders) {
        let mut senders = Vec::new();
        let mut queue = |on: bool, hook: &'static str| {
            (on && hooks.is_some()).then(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                senders.push((hook, rx));
                Queue { hook, tx }
            })
        };
        let presence = queue(presence, "presence");
        let channels = queue(channels, "channels");
        let webhooks = Arc::new(Self {
            hooks,
            presence,
            channels,
            occupied: Mutex::default(),
        });
        (webhooks, Senders(senders))
    }

    fn send(&self, queue: &Queue, event: Value) {
        if queue.tx.try_send(event).is_err() {
            if let Some(hooks) = &self.hooks {
                hooks.events_dropped(queue.hook, 1);
            }
        }
    }

    /// A presence join or leave.
    pub fn presence(&self, change: &Change) {
        if let Some(queue) = &self.presence {
            let m = &change.member;
            let who = Who {
                client: &m.client,
                user: m.user.as_deref(),
                info: m.info.as_deref(),
            };
            self.send(queue, hook_event(change.joined, &change.topic, who));
        }
    }

    /// A worker's topic got its first subscriber (`held`) or lost its
    /// last. Returns, while the channels hook is on, `Some(true)` when
    /// that made the topic occupied on this node (its first worker) and
    /// `Some(false)` when vacated (its last): the event to send, alone, or
    /// for the broker to judge across the cluster.
    pub fn node_edge(&self, topic: &str, held: bool) -> Option<bool> {
        self.channels.as_ref()?;
        let mut occupied = self.occupied.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            let n = occupied.entry(topic.to_owned()).or_insert(0);
            *n += 1;
            (*n == 1).then_some(true)
        } else {
            match occupied.get_mut(topic) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => {
                    occupied.remove(topic);
                    Some(false)
                }
                None => None,
            }
        }
    }

    /// The topics this node holds, while the channels hook is on.
    pub fn held_topics(&self) -> Vec<String> {
        let occupied = self.occupied.lock().unwrap_or_else(|p| p.into_inner());
        occupied.keys().cloned().collect()
    }

    /// Sends `occupied` (else `vacated`) for `topic`.
    pub fn channel(&self, topic: &str, occupied: bool) {
        if let Some(queue) = &self.channels {
            let event = if occupied { "occupied" } else { "vacated" };
            self.send(queue, json!({ "event": event, "topic": topic }));
        }
    }
}

impl Senders {
    /// Starts one sender task per hook on the current runtime.
    pub fn spawn(self, hooks: Option<Arc<Hooks>>) {
        let Some(hooks) = hooks else {
            return;
        };
        for (hook, rx) in self.0 {
            tokio::spawn(send_batches(hooks.clone(), hook, rx));
        }
    }
}

/// Sends `hook`'s events in batches, one request at a time, each batch
/// retried until the backend takes it or [`ATTEMPTS`] are spent.
async fn send_batches(hooks: Arc<Hooks>, hook: &'static str, mut events: mpsc::Receiver<Value>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = events.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + WAIT;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len();
        let body = json!({ hook: std::mem::take(&mut batch) });
        let mut backoff = BACKOFF;
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            // A 2xx answer is delivery, whatever its body says.
            match hooks.call(hook, &body).await {
                Ok(_) | Err(Failure::Invalid(_)) => {
                    delivered = true;
                    break;
                }
                Err(_) if attempt < ATTEMPTS => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(_) => {}
            }
        }
        if !delivered {
            tracing::warn!(
                hook,
                count,
                "webhook batch dropped after {ATTEMPTS} attempts"
            );
            hooks.events_dropped(hook, count as u64);
        }
    }
}
