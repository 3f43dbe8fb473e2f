//! Positions of messages: per-topic history, offsets and epochs, shared by
//! the publishing threads and every worker.
//!
//! - [`rules`]: which topics keep history (`--history PATTERN=SIZE/TTL`);
//! - [`history`]: the retained messages under one memory bound;
//! - [`epoch`]: the names of unbroken runs of offsets.
//!
//! # Ordering
//! [`Hub::publish`] takes the history lock once per publish (only when a
//! topic of the publish keeps history), assigns each such topic its next
//! offset, retains the encoded frame, and hands the frames to the workers
//! *while still holding the lock*. So every worker's channel receives a
//! topic's publishes in offset order, and [`Hub::recover`], which reads a
//! topic's history under the same lock, sees exactly the offsets that are
//! already in (or through) the reading worker's channel: the worker skips
//! those when they arrive (see `connections/recovery.rs`) and delivers the
//! rest. Workers take the lock only to subscribe to a topic with history,
//! never per delivery.

pub mod epoch;
pub mod history;
pub mod presence;
pub mod rules;

use crate::delivery::{Frames, TopicFrame};
use crate::protocol::v1::{self, Data, Position, Since};
use bytes::Bytes;
use epoch::Epoch;
use history::{History, HistoryStats};
use rules::Rule;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Where a subscribing client stands on a topic that keeps history, and
/// what it missed: the one position type, whether the engine's hub or a
/// broker read it (a broker answers [`crate::upstream::Event::Recover`]
/// with one, through [`crate::Handle::recovered`]).
#[derive(Debug)]
pub struct Recovery {
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Offset of the topic's last message: the subscription gets every
    /// message after it live.
    pub top: u64,
    /// With `since`: the `ringcast.v1` delivery frames after it up to
    /// `top`, when recovered; `None` when not (or without `since`).
    pub replay: Option<Vec<Bytes>>,
}

impl Recovery {
    /// The one recoverable rule, for the hub and a broker alike: a client
    /// at `since` recovers from a topic at `top` in `epoch`, whose oldest
    /// retained message is `first`, when `since` is in that epoch, not
    /// past the top, and every message after it is still retained.
    pub fn recoverable(since: &Since, epoch: Epoch, top: u64, first: u64) -> bool {
        since.epoch == epoch.as_str()
            && since.offset <= top
            && since.offset.saturating_add(1) >= first
    }

    /// The replay of `frames` (those after the client's position, in
    /// order) when they total at most `room` bytes (what the connection's
    /// send queue can take); `None` otherwise. Never a partial range.
    pub fn within(frames: impl IntoIterator<Item = Bytes>, room: usize) -> Option<Vec<Bytes>> {
        let mut bytes = 0;
        frames
            .into_iter()
            .map(|frame| {
                bytes += frame.len();
                (bytes <= room).then_some(frame)
            })
            .collect()
    }
}

/// A page of a topic's history, for `GET /history`.
pub struct Page {
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Offset of its last message.
    pub top: u64,
    /// Offset of its oldest retained message (`top + 1` when none is).
    pub first: u64,
    /// `(offset, frame, data start)` of each message, oldest first.
    messages: Vec<(u64, Bytes, usize)>,
}

impl Page {
    /// A page read elsewhere (a broker's stream): `messages` are
    /// `(offset, frame, data start)` as [`crate::protocol::v1::message`]
    /// returns them, oldest first.
    pub fn new(epoch: Epoch, top: u64, first: u64, messages: Vec<(u64, Bytes, usize)>) -> Self {
        Self {
            epoch,
            top,
            first,
            messages,
        }
    }

    /// `{"epoch":…,"offset":TOP,"first":…,"messages":[{"offset":13,"data":…},…]}`,
    /// each message's `data` (or `b64data`) member as it was delivered.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&serde_json::json!({
            "epoch": self.epoch.as_str(),
            "offset": self.top,
            "first": self.first,
        }))
        .expect("a page head serializes");
        out.pop(); // the closing brace
        out.extend_from_slice(br#","messages":["#);
        for (i, (offset, frame, at)) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!(r#"{{"offset":{offset},"#).as_bytes());
            out.extend_from_slice(v1::data_member(frame, *at));
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// The history of every topic that keeps one, and the rules that say
/// which do.
pub struct Hub {
    /// Who is on the presence topics.
    pub presence: presence::Presence,
    rules: Vec<Rule>,
    history: Mutex<History>,
    clock: Instant,
}

impl Hub {
    /// A hub for `rules` (first match wins), retaining at most `max_bytes`
    /// (frames plus [`history::MESSAGE_OVERHEAD`] per message and
    /// [`history::STREAM_OVERHEAD`] per topic), with `presence`.
    pub fn new(rules: Vec<Rule>, max_bytes: usize, presence: presence::Presence) -> Self {
        Self {
            presence,
            rules,
            history: Mutex::new(History::new(max_bytes)),
            clock: Instant::now(),
        }
    }

    /// The rule `topic` keeps history by, if any.
    pub fn rule(&self, topic: &str) -> Option<&Rule> {
        rules::find(&self.rules, topic)
    }

    /// Locks the history and drops what has expired.
    fn lock(&self) -> MutexGuard<'_, History> {
        let mut history = self.history.lock().expect("history lock");
        history.expire(self.now_ms());
        history
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Encodes the `ringcast.v1` delivery of `data` for each of `topics`
    /// (distinct names), assigning the next offset to each topic that
    /// keeps history and retaining it, then calls `send` with the frames
    /// in the order of `topics`. When any topic keeps history, `send` runs
    /// under the history lock, so that publishes to one topic reach the
    /// workers in offset order. Returns each topic's offset (`None`: no
    /// history).
    pub fn publish(
        &self,
        topics: &[String],
        data: &Data,
        send: impl FnOnce(Vec<TopicFrame>),
    ) -> Vec<Option<u64>> {
        let plain = |topic: &str| TopicFrame {
            position: None,
            frames: Frames::plain(v1::message(topic, None, data).0),
        };
        let rules: Vec<Option<&Rule>> = topics.iter().map(|t| self.rule(t)).collect();
        if rules.iter().all(Option::is_none) {
            send(topics.iter().map(|t| plain(t)).collect());
            return vec![None; topics.len()];
        }
        let now = self.now_ms();
        let mut history = self.lock();
        let frames: Vec<TopicFrame> = topics
            .iter()
            .zip(rules)
            .map(|(topic, rule)| {
                let Some(rule) = rule else {
                    return plain(topic);
                };
                let ttl = rule.ttl.as_millis() as u64;
                let (offset, epoch, frame) =
                    history.append(topic, rule.size, ttl, now, |offset, epoch| {
                        let at = Position {
                            offset,
                            epoch: epoch.as_str(),
                        };
                        v1::message(topic, Some(at), data)
                    });
                TopicFrame {
                    position: Some((offset, epoch)),
                    frames: Frames::plain(frame),
                }
            })
            .collect();
        history.enforce_bound();
        let offsets = frames.iter().map(|f| f.position.map(|p| p.0)).collect();
        send(frames);
        drop(history);
        offsets
    }

    /// Where a client subscribing to `topic` now stands, and, with
    /// `since`, the frames it missed: recovered only when `since` is in
    /// the topic's epoch, not past its top, history still holds every
    /// message after it, and their frames total at most `room` bytes
    /// (what the connection's send queue can take). Never a partial
    /// range. `None` for a topic without history.
    pub fn recover(&self, topic: &str, since: Option<&Since>, room: usize) -> Option<Recovery> {
        self.rule(topic)?;
        let history = self.lock();
        let (epoch, top, first) = match history.stream(topic) {
            Some(s) => (s.epoch, s.top, s.first()),
            None => (history.next_epoch(topic), 0, 1),
        };
        let replay = since
            .filter(|s| Recovery::recoverable(s, epoch, top, first))
            .and_then(|s| match history.stream(topic) {
                None => Some(Vec::new()),
                Some(stream) => {
                    Recovery::within(stream.after(s.offset).map(|(_, m)| m.frame.clone()), room)
                }
            });
        Some(Recovery { epoch, top, replay })
    }

    /// Up to `limit` retained messages of `topic` after offset `since`
    /// (default: from the oldest retained), oldest first. `None` for a
    /// topic without history.
    pub fn page(&self, topic: &str, since: Option<u64>, limit: usize) -> Option<Page> {
        self.rule(topic)?;
        let history = self.lock();
        let Some(stream) = history.stream(topic) else {
            return Some(Page {
                epoch: history.next_epoch(topic),
                top: 0,
                first: 1,
                messages: Vec::new(),
            });
        };
        let messages = stream
            .after(since.unwrap_or(0))
            .take(limit)
            .map(|(offset, m)| (offset, m.frame.clone(), m.data_at as usize))
            .collect();
        Some(Page {
            epoch: stream.epoch,
            top: stream.top,
            first: stream.first(),
            messages,
        })
    }

    /// Current history counters.
    pub fn stats(&self) -> HistoryStats {
        self.lock().stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v1::Content;
    use std::time::Duration;

    fn hub() -> Hub {
        let rule = Rule {
            pattern: "h.*".into(),
            size: 3,
            ttl: Duration::from_secs(60),
        };
        Hub::new(vec![rule], 1 << 20, presence::Presence::new(Vec::new(), 0))
    }

    fn publish(hub: &Hub, topics: &[&str], text: &str) -> Vec<Option<u64>> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let mut sent = 0;
        let offsets = hub.publish(&topics, &Data::new(Content::Text, text.as_bytes()), |f| {
            sent = f.len();
        });
        assert_eq!(sent, topics.len());
        offsets
    }

    fn since(offset: u64, epoch: Epoch) -> Since {
        Since {
            offset,
            epoch: epoch.as_str().into(),
        }
    }

    #[test]
    fn the_recoverable_rule_takes_any_client_offset() {
        let epoch = Epoch::random();
        let other = Epoch::random();
        let rule =
            |offset, top, first| Recovery::recoverable(&since(offset, epoch), epoch, top, first);
        assert!(rule(5, 7, 6), "6 and 7 retained");
        assert!(rule(7, 7, 8), "at the top, nothing missed");
        assert!(!rule(4, 7, 6), "5 evicted");
        assert!(!rule(8, 7, 1), "past the top");
        assert!(
            rule(u64::MAX, u64::MAX, u64::MAX),
            "the last offset, no overflow"
        );
        assert!(!rule(u64::MAX, 7, 1), "a hostile offset, no overflow");
        assert!(
            !Recovery::recoverable(&since(5, epoch), other, 7, 1),
            "another epoch"
        );
    }

    #[test]
    fn only_topics_with_history_get_offsets() {
        let hub = hub();
        assert_eq!(publish(&hub, &["h.a", "x"], "1"), [Some(1), None]);
        assert_eq!(publish(&hub, &["h.a", "h.b"], "2"), [Some(2), Some(1)]);
        assert!(hub.recover("x", None, 1000).is_none());
        assert!(hub.page("x", None, 10).is_none());
        assert_eq!(hub.stats().streams, 2);
    }

    #[test]
    fn recovery_is_all_or_nothing() {
        let hub = hub();
        let before = hub.recover("h.a", None, 1000).unwrap();
        assert_eq!(before.top, 0);
        for i in 1..=5 {
            publish(&hub, &["h.a"], &i.to_string());
        }
        let now = hub.recover("h.a", None, 1000).unwrap();
        assert_eq!((now.top, now.epoch), (5, before.epoch), "announced epoch");
        assert!(now.replay.is_none());
        let got = |s: &Since, room| hub.recover("h.a", Some(s), room).unwrap().replay;
        // Messages 3..=5 are retained: since 2 reaches back, since 1 does not.
        assert_eq!(got(&since(2, now.epoch), 1000).unwrap().len(), 3);
        assert_eq!(got(&since(5, now.epoch), 1000).unwrap().len(), 0);
        assert!(got(&since(1, now.epoch), 1000).is_none(), "too old");
        assert!(got(&since(6, now.epoch), 1000).is_none(), "ahead of top");
        let other = Since {
            offset: 4,
            epoch: "other".into(),
        };
        assert!(got(&other, 1000).is_none(), "wrong epoch");
        assert!(got(&since(2, now.epoch), 10).is_none(), "no room");
    }

    #[test]
    fn a_client_at_offset_zero_recovers_a_stream_created_later() {
        let hub = hub();
        let at = hub.recover("h.a", None, 1000).unwrap();
        publish(&hub, &["h.a"], "first");
        let r = hub.recover("h.a", Some(&since(0, at.epoch)), 1000).unwrap();
        assert_eq!(r.replay.unwrap().len(), 1);
    }

    #[test]
    fn pages_splice_the_delivered_data() {
        let hub = hub();
        for i in 1..=4 {
            publish(&hub, &["h.a"], &format!("m{i}"));
        }
        let page = hub.page("h.a", Some(2), 1).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&page.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "epoch": page.epoch.as_str(), "offset": 4, "first": 2,
                "messages": [{"offset": 3, "data": "m3"}],
            })
        );
        let all = hub.page("h.a", None, 100).unwrap();
        assert_eq!(all.messages.len(), 3);
        let empty = hub.page("h.new", None, 100).unwrap().to_json();
        let json: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(json["messages"], serde_json::json!([]));
    }
}
