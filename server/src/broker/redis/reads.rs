//! Reads of a topic's stream: its position and the entries after a
//! position, in one atomic script ([`script::POSITION`]), on the topic's
//! instance, for a resuming subscribe and for `GET /history`.

use super::{script, Redis, Unavailable};
use bytes::Bytes;
use redis::Value;
use ringcast_engine::history::Epoch;
use ringcast_engine::history::Page;
use ringcast_engine::history::Position as Answer;
use ringcast_engine::protocol::v1::{self, Data, Position};
use ringcast_engine::upstream::Recover;
use std::time::Duration;

/// Most entries one resume replays.
const MAX_REPLAY: usize = 10_000;

/// A topic's position and the entries read after `after`.
pub struct Read {
    epoch: Epoch,
    top: u64,
    first: u64,
    after: u64,
    /// Entries from `after + 1`, contiguous, each checked.
    entries: Vec<Data>,
}

impl Read {
    /// `(offset, frame, data start)` of each entry, as delivered.
    fn frames<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = (u64, Bytes, usize)> + 'a {
        (self.after + 1..)
            .zip(&self.entries)
            .map(move |(offset, data)| {
                let at = Position {
                    offset,
                    epoch: self.epoch.as_str(),
                };
                let (frame, start) = v1::message(topic, Some(at), data);
                (offset, frame, start)
            })
    }

    /// The page `GET /history` answers with.
    pub fn page(&self, topic: &str) -> Page {
        Page::new(
            self.epoch,
            self.top,
            self.first,
            self.frames(topic).collect(),
        )
    }
}

/// Reads `topic`'s position (creating it with a fresh epoch, kept `ttl`,
/// when missing) and, with `after`, up to `count` entries after it.
///
/// # Errors
/// The instance down, failing or slow; a reply or an entry that is not
/// what it says.
pub async fn read(
    broker: &Redis,
    topic: &str,
    ttl: Duration,
    after: Option<u64>,
    count: usize,
) -> Result<Read, Unavailable> {
    let layout = broker.layout;
    let mut target = broker.target(Some(topic))?;
    let script = redis::Script::new(script::POSITION);
    let mut invocation = script.key(layout.meta_key(topic));
    invocation
        .key(layout.stream_key(topic))
        .arg(Epoch::random().as_str())
        .arg((ttl.as_millis() as u64).max(1))
        .arg(if after.is_some() { "1" } else { "0" })
        .arg(after.unwrap_or(0))
        .arg(count)
        .arg(layout.guard());
    let reply: Vec<Value> = broker
        .run(&target.on, invocation.invoke_async(&mut target.conn))
        .await?;
    parse(&reply, after.unwrap_or(0), broker.settings.max_message).map_err(|why| {
        Unavailable(format!(
            "broker {}: bad reply for {topic:?}: {why}",
            target.on.name()
        ))
    })
}

/// Checks a position script's reply: offsets within
/// [`super::messages::MAX_OFFSET`], entries of at most `max_message` bytes
/// that are what their content says.
fn parse(reply: &[Value], after: u64, max_message: usize) -> Result<Read, &'static str> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        _ => Err("not a string"),
    };
    let number = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| "negative"),
        _ => Err("not a number"),
    };
    let [epoch, top, first, entries @ ..] = reply else {
        return Err("short reply");
    };
    let epoch = String::from_utf8(text(epoch)?).map_err(|_| "epoch")?;
    let epoch = Epoch::parse(&epoch).ok_or("epoch")?;
    let entries = entries
        .chunks(2)
        .map(|pair| {
            let [c, d] = pair else {
                return Err("odd entries");
            };
            let content = String::from_utf8(text(c)?).map_err(|_| "content")?;
            let content = script::content_named(&content).ok_or("content")?;
            let body = text(d)?;
            if body.len() > max_message {
                return Err("an entry over --max-message-size");
            }
            content.check(&body)?;
            Ok(Data::new(content, &body))
        })
        .collect::<Result<Vec<Data>, &'static str>>()?;
    let (top, first) = (number(top)?, number(first)?);
    if top > super::messages::MAX_OFFSET || first > top + 1 {
        return Err("offsets out of range");
    }
    Ok(Read {
        epoch,
        top,
        first,
        after,
        entries,
    })
}

/// Answers a worker's read request: the position, and with `since` the
/// replay when the stream still holds every message after it (same
/// epoch, not past the top, nothing trimmed) and it fits `room` bytes.
/// A failed read is answered with no position.
pub async fn recover(broker: &Redis, request: Recover) {
    let ttl = broker.handle.history_rule(&request.topic).map(|r| r.ttl);
    let answer = match ttl {
        None => None,
        Some(ttl) => {
            let after = request.since.as_ref().map(|s| s.offset);
            match read(broker, &request.topic, ttl, after, MAX_REPLAY).await {
                Ok(read) => Some(answer(&request, &read)),
                Err(Unavailable(why)) => {
                    tracing::debug!(topic = request.topic, "history read failed: {why}");
                    None
                }
            }
        }
    };
    broker
        .handle
        .recovered(request.origin, request.topic, answer);
}

fn answer(request: &Recover, read: &Read) -> Answer {
    // The hub's rule, plus: Redis returned every entry after `since`.
    let replay = request.since.as_ref().and_then(|since| {
        let recoverable = Answer::recoverable(since, read.epoch, read.top, read.first)
            && read.entries.len() as u64 == read.top - since.offset;
        let frames = read.frames(&request.topic).map(|(_, frame, _)| frame);
        recoverable.then(|| Answer::within(frames, request.room))?
    });
    Answer {
        epoch: read.epoch,
        top: read.top,
        replay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let ok = [
            s("AAAAAAAA"),
            Value::Int(3),
            Value::Int(2),
            s("text"),
            s("m3"),
        ];
        let read = parse(&ok, 2, 1024).unwrap();
        let frames: Vec<_> = read.frames("a").collect();
        assert_eq!(
            (read.top, read.first, frames.len(), frames[0].0),
            (3, 2, 1, 3)
        );
        assert!(parse(&ok[..2], 0, 1024).is_err(), "short");
        assert!(parse(&[s("bad"), Value::Int(3), Value::Int(2)], 0, 1024).is_err());
        assert!(parse(&[s("AAAAAAAA"), Value::Int(-1), Value::Int(2)], 0, 1024).is_err());
        let bad_json = [
            s("AAAAAAAA"),
            Value::Int(3),
            Value::Int(3),
            s("json"),
            s("{"),
        ];
        assert!(parse(&bad_json, 2, 1024).is_err());
        assert!(parse(&ok, 2, 1).is_err(), "an entry over the size limit");
        let huge = [s("AAAAAAAA"), Value::Int(i64::MAX), Value::Int(1)];
        assert!(parse(&huge, 0, 1024).is_err(), "an offset past 2^53-1");
    }
}
