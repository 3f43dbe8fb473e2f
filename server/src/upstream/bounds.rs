//! The bounds on work between the workers and the server's async side.
//!
//! Every event a worker hands up is admitted here first, on the worker's
//! thread, and holds a [`Ticket`] until its work is done: answered by the
//! hook or the broker, delivered, or dropped. So the work waiting anywhere
//! in the server (the channel, a connection's publish queue, a hook call
//! waiting for a permit or an answer) is bounded, in events and bytes:
//!
//! - all events: `--upstream-queue` events and `--upstream-queue-bytes`
//!   bytes;
//! - one connection's publishes and rpc calls: `--client-publish-queue`
//!   events and `--client-publish-queue-bytes` bytes.
//!
//! An event past a bound is handed back to the worker, which answers the
//! client itself (an `error` op "server busy", or 503 for a parked
//! handshake); each refusal is counted by bound in
//! `ringcast_upstream_refused_total`.
//!
//! A connection's removal ([`Event::Closed`]) marks its waiting work dead:
//! it is dropped, not done (no hook is called for it), and counted in
//! `ringcast_upstream_dropped_total`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use ringcast_engine::upstream::{Event, Origin};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The bounds, from the flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Events admitted and not yet done, at most (`--upstream-queue`).
    pub events: usize,
    /// Their bytes (payloads, topics, headers), at most
    /// (`--upstream-queue-bytes`).
    pub bytes: usize,
    /// One connection's publishes and rpc calls admitted and not yet
    /// done, at most (`--client-publish-queue`).
    pub per_connection: usize,
    /// Their bytes, at most (`--client-publish-queue-bytes`).
    pub per_connection_bytes: usize,
}

/// One connection's admitted work.
#[derive(Default)]
struct Pending {
    events: usize,
    bytes: usize,
    /// The connection was removed: its work is dropped.
    closed: bool,
}

#[derive(Default)]
struct Counts {
    events: usize,
    bytes: usize,
    /// Connections with admitted publishes or rpc calls (at most
    /// `Limits::events` entries).
    connections: HashMap<Origin, Pending>,
}

/// The shared counts and their metrics.
pub struct Bounds {
    limits: Limits,
    counts: Mutex<Counts>,
    registry: Registry,
    refused: IntCounterVec,
    dropped: IntCounter,
    waiting: IntGauge,
}

/// An admitted event's share of the bounds, given back when dropped.
pub struct Ticket {
    bounds: Arc<Bounds>,
    /// The connection, for publishes and rpc calls.
    origin: Option<Origin>,
    bytes: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = lock(&self.bounds.counts);
        counts.events -= 1;
        counts.bytes -= self.bytes;
        self.bounds.waiting.set(counts.events as i64);
        if let Some(origin) = self.origin {
            if let Some(pending) = counts.connections.get_mut(&origin) {
                pending.events -= 1;
                pending.bytes -= self.bytes;
                if pending.events == 0 {
                    counts.connections.remove(&origin);
                }
            }
        }
    }
}

/// The bytes an event holds, roughly: what grows with the client's input.
fn size(event: &Event) -> usize {
    match event {
        Event::Publish(p) => p.payload.len() + p.topics.iter().map(String::len).sum::<usize>(),
        Event::Rpc(r) => r.data.len() + r.method.len(),
        Event::Connect(c) => c.query.len() + c.headers.iter().map(|(_, v)| v.len()).sum::<usize>(),
        Event::Closed(c) => c.user.as_ref().map_or(0, String::len),
        Event::Interest(i) => i.topic.len(),
        Event::Recover(r) => r.topic.len(),
        Event::Presence(c) => {
            c.change.topic.len() + c.change.member.info.as_ref().map_or(0, |i| i.len())
        }
        Event::PresenceQuery(q) => q.topic.len(),
    }
}

/// The connection whose own queue an event counts against.
fn owner(event: &Event) -> Option<Origin> {
    match event {
        Event::Publish(p) => Some(p.origin),
        Event::Rpc(r) => Some(r.origin),
        Event::PresenceQuery(q) => Some(q.origin),
        _ => None,
    }
}

impl Bounds {
    /// Empty counts under `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        let registry = Registry::new();
        let refused = IntCounterVec::new(
            Opts::new(
                "ringcast_upstream_refused_total",
                "Events from the workers refused by a bound, by bound (upstream_queue, upstream_queue_bytes, client_publish_queue, client_publish_queue_bytes)",
            ),
            &["bound"],
        )
        .expect("valid counter");
        let dropped = IntCounter::new(
            "ringcast_upstream_dropped_total",
            "Publishes and rpc calls dropped undone because their connection closed",
        )
        .expect("valid counter");
        let waiting = IntGauge::new(
            "ringcast_upstream_waiting",
            "Events from the workers admitted and not yet done",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(refused.clone()))
            .expect("unique");
        registry
            .register(Box::new(dropped.clone()))
            .expect("unique");
        registry
            .register(Box::new(waiting.clone()))
            .expect("unique");
        for bound in [
            "upstream_queue",
            "upstream_queue_bytes",
            "client_publish_queue",
            "client_publish_queue_bytes",
        ] {
            refused.with_label_values(&[bound]);
        }
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
            registry,
            refused,
            dropped,
            waiting,
        })
    }

    /// Admits `event` within every bound, or names the bound it is past
    /// (and counts the refusal).
    pub fn admit(self: &Arc<Self>, event: &Event) -> Result<Ticket, &'static str> {
        let bytes = size(event);
        let origin = owner(event);
        let mut counts = lock(&self.counts);
        let refused = if counts.events >= self.limits.events {
            Some("upstream_queue")
        } else if counts.bytes + bytes > self.limits.bytes {
            Some("upstream_queue_bytes")
        } else {
            origin.and_then(|origin| {
                let pending = counts.connections.get(&origin)?;
                if pending.events >= self.limits.per_connection {
                    Some("client_publish_queue")
                } else if pending.bytes + bytes > self.limits.per_connection_bytes {
                    Some("client_publish_queue_bytes")
                } else {
                    None
                }
            })
        };
        if let Some(bound) = refused {
            drop(counts);
            self.refused.with_label_values(&[bound]).inc();
            return Err(bound);
        }
        counts.events += 1;
        counts.bytes += bytes;
        self.waiting.set(counts.events as i64);
        if let Some(origin) = origin {
            let pending = counts.connections.entry(origin).or_default();
            pending.events += 1;
            pending.bytes += bytes;
        }
        Ok(Ticket {
            bounds: self.clone(),
            origin,
            bytes,
        })
    }

    /// The connection `origin` was removed: its waiting work is dead.
    pub fn closed(&self, origin: Origin) {
        if let Some(pending) = lock(&self.counts).connections.get_mut(&origin) {
            pending.closed = true;
        }
    }

    /// Whether `origin`'s work is dead (its connection was removed).
    pub fn is_dead(&self, origin: Origin) -> bool {
        lock(&self.counts)
            .connections
            .get(&origin)
            .is_some_and(|p| p.closed)
    }

    /// Counts `n` events dropped undone for a closed connection.
    pub fn dropped(&self, n: usize) {
        self.dropped.inc_by(n as u64);
    }

    /// The series as Prometheus text.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("metrics encode")
    }
}

/// Keeps `Mutex` poisoning out of the way: a panic aborts the process.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_engine::upstream::Publish;
    use ringcast_engine::Content;

    fn publish(slot: u32, bytes: usize) -> Event {
        Event::Publish(Publish {
            origin: Origin {
                worker: 0,
                slot,
                gen: 1,
            },
            id: None,
            reply: false,
            topics: vec![],
            user: None,
            echo: false,
            content: Content::Binary,
            payload: vec![0; bytes].into(),
        })
    }

    #[test]
    fn every_bound_refuses_and_tickets_give_back() {
        let bounds = Bounds::new(Limits {
            events: 4,
            bytes: 100,
            per_connection: 2,
            per_connection_bytes: 30,
        });
        let a = bounds.admit(&publish(1, 10)).unwrap();
        let _b = bounds.admit(&publish(1, 10)).unwrap();
        assert_eq!(
            bounds.admit(&publish(1, 1)).err(),
            Some("client_publish_queue")
        );
        drop(a);
        assert_eq!(
            bounds.admit(&publish(1, 25)).err(),
            Some("client_publish_queue_bytes")
        );
        assert_eq!(
            bounds.admit(&publish(2, 95)).err(),
            Some("upstream_queue_bytes")
        );
        let _c = bounds.admit(&publish(2, 10)).unwrap();
        let _d = bounds.admit(&publish(3, 10)).unwrap();
        let _e = bounds.admit(&publish(4, 10)).unwrap();
        assert_eq!(bounds.admit(&publish(5, 1)).err(), Some("upstream_queue"));
    }

    #[test]
    fn a_closed_connections_work_is_dead() {
        let bounds = Bounds::new(Limits {
            events: 4,
            bytes: 100,
            per_connection: 2,
            per_connection_bytes: 30,
        });
        let origin = Origin {
            worker: 0,
            slot: 1,
            gen: 1,
        };
        let ticket = bounds.admit(&publish(1, 10)).unwrap();
        assert!(!bounds.is_dead(origin));
        bounds.closed(origin);
        assert!(bounds.is_dead(origin));
        drop(ticket);
        assert!(!bounds.is_dead(origin), "forgotten once its work is gone");
    }
}
