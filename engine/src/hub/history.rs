//! The retained messages of every topic that keeps history, under one
//! memory bound. Not synchronised: [`super::Hub`] holds it behind its lock.
//!
//! A topic's *stream* holds its epoch, the offset of its last message
//! (`top`) and its last messages, oldest first, each as the encoded
//! `ringcast.v1` delivery frame that live subscribers got (a replay is a
//! reference-count increment). Offsets are contiguous, so a message's
//! offset is implied by its place.
//!
//! Two ordered indexes make every bound cost `O(log streams)` per message:
//! - `by_age`: each stream under the time of its oldest message (or of
//!   its last publish when it holds none). Over the memory bound, the
//!   oldest entry goes first: a message, or an empty stream, which is then
//!   forgotten (its continuity is lost: the topic's next stream has another
//!   epoch).
//! - `by_expiry`: each non-empty stream under the time its oldest message
//!   expires. [`History::expire`] pops what is due.

use super::epoch::{Epoch, EpochSource};
use bytes::Bytes;
use slab::Slab;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// Bytes counted for a retained message besides its frame: its entry here
/// (48 bytes), the frame's shared reference count and the allocator's
/// rounding. Measured: see the README's "History" section.
pub const MESSAGE_OVERHEAD: usize = 96;

/// Bytes counted for a stream besides its name (held twice: in the stream
/// and as the index key, behind one `Arc`): the stream, its slab slot,
/// its index entries.
pub const STREAM_OVERHEAD: usize = 256;

/// One retained message.
pub struct Retained {
    /// The `ringcast.v1` delivery frame, as sent to live subscribers.
    pub frame: Bytes,
    /// Where the `data` member starts in `frame`
    /// ([`crate::protocol::v1::data_member`]).
    pub data_at: u32,
    /// Publish time, in ms on the hub's clock.
    at_ms: u64,
}

/// One topic's history.
pub struct Stream {
    name: Arc<str>,
    /// Changes whenever continuity is lost.
    pub epoch: Epoch,
    /// Offset of the last message published (0: none yet).
    pub top: u64,
    size: usize,
    ttl_ms: u64,
    messages: VecDeque<Retained>,
    /// Time of the last publish, or of creation.
    touched_ms: u64,
}

impl Stream {
    /// Offset of the oldest message retained; `top + 1` when none is.
    pub fn first(&self) -> u64 {
        self.top + 1 - self.messages.len() as u64
    }

    /// The messages after `offset` (which must be at least `first() - 1`),
    /// oldest first, with their offsets.
    pub fn after(&self, offset: u64) -> impl Iterator<Item = (u64, &Retained)> {
        let skip = (offset + 1).saturating_sub(self.first()) as usize;
        (offset.max(self.first() - 1) + 1..).zip(self.messages.iter().skip(skip))
    }

    fn age(&self) -> u64 {
        self.messages.front().map_or(self.touched_ms, |m| m.at_ms)
    }

    fn expiry(&self) -> Option<u64> {
        self.messages.front().map(|m| m.at_ms + self.ttl_ms)
    }

    fn cost(&self) -> usize {
        STREAM_OVERHEAD + self.name.len()
    }
}

fn message_cost(frame: &Bytes) -> usize {
    frame.len() + MESSAGE_OVERHEAD
}

/// Counters for `/stats` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HistoryStats {
    /// Topics with a stream.
    pub streams: u64,
    /// Messages retained.
    pub messages: u64,
    /// Bytes counted against `--history-max-bytes`: frames plus the
    /// per-message and per-stream overheads.
    pub bytes: u64,
    /// The bound (`--history-max-bytes`).
    pub max_bytes: u64,
    /// Messages dropped to stay under the bound (TTL and per-topic size
    /// drops are not counted).
    pub evicted: u64,
}

/// Every stream, under a memory bound.
pub struct History {
    streams: Slab<Stream>,
    by_name: HashMap<Arc<str>, usize>,
    by_age: BTreeSet<(u64, usize)>,
    by_expiry: BTreeSet<(u64, usize)>,
    epochs: EpochSource,
    bytes: usize,
    max_bytes: usize,
    messages: usize,
    evicted: u64,
}

impl History {
    /// An empty store bounded at `max_bytes` (see [`HistoryStats::bytes`]).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            streams: Slab::new(),
            by_name: HashMap::new(),
            by_age: BTreeSet::new(),
            by_expiry: BTreeSet::new(),
            epochs: EpochSource::default(),
            bytes: 0,
            max_bytes,
            messages: 0,
            evicted: 0,
        }
    }

    /// The stream of `name`, if it has one.
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.by_name.get(name).map(|&id| &self.streams[id])
    }

    /// The epoch `name`'s stream will have if it is created before any
    /// stream is forgotten: what a subscribe to a topic without a stream
    /// is told, so that a client holding it recovers from offset 0.
    pub fn next_epoch(&self, name: &str) -> Epoch {
        self.epochs.epoch(name)
    }

    /// Appends a message to `name`'s stream, creating it (keeping `size`
    /// messages for `ttl_ms`) if needed. `encode` makes the frame from the
    /// new offset and the epoch and says where its data starts. Returns
    /// the offset, the epoch and the frame. The memory bound is enforced
    /// by [`Self::enforce_bound`], once per publish.
    pub fn append(
        &mut self,
        name: &str,
        size: usize,
        ttl_ms: u64,
        now_ms: u64,
        encode: impl FnOnce(u64, Epoch) -> (Bytes, usize),
    ) -> (u64, Epoch, Bytes) {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => self.create(name, size, ttl_ms, now_ms),
        };
        let before = self.keys(id);
        let stream = &mut self.streams[id];
        stream.top += 1;
        stream.touched_ms = now_ms;
        let (offset, epoch) = (stream.top, stream.epoch);
        let (frame, data_at) = encode(offset, epoch);
        stream.messages.push_back(Retained {
            frame: frame.clone(),
            data_at: data_at as u32,
            at_ms: now_ms,
        });
        self.bytes += message_cost(&frame);
        self.messages += 1;
        while self.streams[id].messages.len() > self.streams[id].size {
            self.drop_front(id);
        }
        self.rekey(id, before);
        (offset, epoch, frame)
    }

    fn create(&mut self, name: &str, size: usize, ttl_ms: u64, now_ms: u64) -> usize {
        let name: Arc<str> = name.into();
        let epoch = self.epochs.epoch(&name);
        let stream = Stream {
            name: name.clone(),
            epoch,
            top: 0,
            size,
            ttl_ms,
            messages: VecDeque::new(),
            touched_ms: now_ms,
        };
        self.bytes += stream.cost();
        let id = self.streams.insert(stream);
        self.by_name.insert(name, id);
        self.by_age.insert((now_ms, id));
        id
    }

    /// Drops every message whose TTL has passed at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.by_expiry.first() {
            if at > now_ms {
                break;
            }
            let before = self.keys(id);
            while self.streams[id].expiry().is_some_and(|t| t <= now_ms) {
                self.drop_front(id);
            }
            let messages = &mut self.streams[id].messages;
            if messages.capacity() > 4 * messages.len().max(4) {
                messages.shrink_to_fit();
            }
            self.rekey(id, before);
        }
    }

    /// Drops the oldest messages, and streams left without any, until the
    /// bytes counted are within the bound.
    pub fn enforce_bound(&mut self) {
        while self.bytes > self.max_bytes {
            let Some(&(_, id)) = self.by_age.first() else {
                break;
            };
            if self.streams[id].messages.is_empty() {
                self.forget_stream(id);
                continue;
            }
            let before = self.keys(id);
            self.drop_front(id);
            self.evicted += 1;
            self.rekey(id, before);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            streams: self.streams.len() as u64,
            messages: self.messages as u64,
            bytes: self.bytes as u64,
            max_bytes: self.max_bytes as u64,
            evicted: self.evicted,
        }
    }

    /// Drops stream `id`'s oldest message (the caller rekeys the stream).
    fn drop_front(&mut self, id: usize) {
        let message = self.streams[id].messages.pop_front();
        let message = message.expect("a message to drop");
        self.messages -= 1;
        self.bytes -= message_cost(&message.frame);
    }

    /// Forgets an empty stream: its topic's next stream gets a new epoch.
    fn forget_stream(&mut self, id: usize) {
        let (age, expiry) = self.keys(id);
        debug_assert!(expiry.is_none(), "only empty streams are forgotten");
        self.by_age.remove(&(age, id));
        let stream = self.streams.remove(id);
        self.by_name.remove(&stream.name);
        self.bytes -= stream.cost();
        self.epochs.continuity_lost();
    }

    fn keys(&self, id: usize) -> (u64, Option<u64>) {
        let stream = &self.streams[id];
        (stream.age(), stream.expiry())
    }

    /// Moves stream `id` in the indexes from its keys `before` a change to
    /// its current ones.
    fn rekey(&mut self, id: usize, before: (u64, Option<u64>)) {
        let after = self.keys(id);
        if after.0 != before.0 {
            self.by_age.remove(&(before.0, id));
            self.by_age.insert((after.0, id));
        }
        if after.1 != before.1 {
            if let Some(at) = before.1 {
                self.by_expiry.remove(&(at, id));
            }
            if let Some(at) = after.1 {
                self.by_expiry.insert((at, id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(h: &mut History, name: &str, size: usize, now: u64, len: usize) -> (u64, Epoch) {
        let (offset, epoch, _) = h.append(name, size, 1000, now, |offset, _| {
            (Bytes::from(vec![offset as u8; len]), 0)
        });
        h.enforce_bound();
        (offset, epoch)
    }

    fn offsets(h: &History, name: &str, after: u64) -> Vec<u64> {
        let stream = h.stream(name).unwrap();
        stream
            .after(after)
            .map(|(offset, m)| {
                assert_eq!(m.frame[0], offset as u8, "offset matches the frame");
                offset
            })
            .collect()
    }

    #[test]
    fn offsets_grow_by_one_and_size_bounds_a_stream() {
        let mut h = History::new(1 << 20);
        for i in 1..=5 {
            assert_eq!(publish(&mut h, "a", 3, i, 10).0, i);
        }
        assert_eq!(offsets(&h, "a", 0), [3, 4, 5]);
        assert_eq!(offsets(&h, "a", 3), [4, 5]);
        assert_eq!(offsets(&h, "a", 5), Vec::<u64>::new());
        assert_eq!(h.stream("a").unwrap().first(), 3);
        assert_eq!(h.stats().messages, 3);
        let cost = STREAM_OVERHEAD + 1 + 3 * (10 + MESSAGE_OVERHEAD);
        assert_eq!(h.stats().bytes, cost as u64);
    }

    #[test]
    fn ttl_drops_messages_but_keeps_the_position() {
        let mut h = History::new(1 << 20);
        let (_, epoch) = publish(&mut h, "a", 10, 0, 1);
        publish(&mut h, "a", 10, 500, 1);
        h.expire(999);
        assert_eq!(offsets(&h, "a", 0), [1, 2]);
        h.expire(1000);
        assert_eq!(offsets(&h, "a", 1), [2]);
        h.expire(1500);
        let stream = h.stream("a").unwrap();
        assert_eq!((stream.top, stream.first(), stream.epoch), (2, 3, epoch));
        assert_eq!(h.stats().messages, 0);
    }

    #[test]
    fn the_bound_evicts_the_oldest_message_of_any_topic_then_empty_streams() {
        let per = 100 + MESSAGE_OVERHEAD;
        let max = 2 * (STREAM_OVERHEAD + 1) + 4 * per;
        let mut h = History::new(max);
        publish(&mut h, "a", 10, 1, 100);
        publish(&mut h, "b", 10, 2, 100);
        publish(&mut h, "a", 10, 3, 100);
        publish(&mut h, "b", 10, 4, 100);
        assert_eq!(h.stats().evicted, 0);
        publish(&mut h, "b", 10, 5, 100);
        assert_eq!(offsets(&h, "a", 1), [2], "a's first message went first");
        assert_eq!(offsets(&h, "b", 0), [1, 2, 3]);
        assert!(h.stats().bytes <= max as u64);
        // A message as big as the bound pushes everything else out, then
        // itself, and the streams left empty are forgotten.
        let epoch_a = h.stream("a").unwrap().epoch;
        publish(&mut h, "c", 10, 6, max);
        assert_eq!(h.stats().messages, 0);
        assert!(h.stream("a").is_none() && h.stream("b").is_none());
        assert!(h.stats().bytes <= max as u64);
        let (offset, epoch) = publish(&mut h, "a", 10, 7, 1);
        assert_eq!(offset, 1, "a new stream starts at 1");
        assert_ne!(epoch, epoch_a, "with a new epoch");
    }

    #[test]
    fn a_stream_created_before_any_loss_has_the_epoch_announced() {
        let mut h = History::new(1 << 20);
        let announced = h.next_epoch("a");
        assert_eq!(publish(&mut h, "a", 1, 0, 1).1, announced);
        assert_ne!(h.next_epoch("b"), announced);
    }
}
