//! The Redis side of a cluster: key and channel names, the payload format
//! of a message on a channel, and the two Lua scripts (publish, position).
//! The names and the payload are a public interface (README, "Cluster").
//!
//! - `ringcast:topic:NAME`: the channel of topic NAME;
//! - `ringcast:node`: the node-wide channel (user publishes, disconnects,
//!   broadcasts), on the first `--broker`;
//! - `ringcast:meta:NAME`: hash `epoch`, `top` of a topic with history;
//! - `ringcast:stream:NAME`: its stream, entry ids `OFFSET-0`, fields `c`
//!   (content) and `d` (the body).
//!
//! On a Redis Cluster ([`Layout::Cluster`]) the topic's part of each name
//! is a hash tag, `{NAME}` (`ringcast:meta:{NAME}`, `ringcast:stream:{NAME}`,
//! `ringcast:topic:{NAME}`): the three live in one slot, so the publish
//! script runs on that slot's master and `SPUBLISH`es on the topic's shard
//! channel (Redis docs, "Cluster specification", hash tags; "Sharded
//! Pub/Sub"). The node-wide channel is the shard channel `ringcast:node`.
//! Topic names never hold braces (`is_valid_name`), so the tag is the
//! whole name.
//!
//! A payload is one line of JSON (the header), `\n`, then the body bytes.

use ringcast_engine::history::Epoch;
use ringcast_engine::Content;
use serde::Deserialize;

/// Prefix of a topic's channel.
pub const TOPIC_CHANNEL: &str = "ringcast:topic:";
/// The node-wide channel.
pub const NODE_CHANNEL: &str = "ringcast:node";

/// How the names are laid out over Redis: standalone instances (the
/// names as they were), or a Redis Cluster (hash-tagged names, sharded
/// pub/sub, epochs bound to the master that wrote them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `--broker redis://…`: plain names, `PUBLISH`/`SUBSCRIBE`.
    Instances,
    /// `--broker redis+cluster://…`: `{NAME}` hash tags,
    /// `SPUBLISH`/`SSUBSCRIBE`.
    Cluster,
    /// `--broker redis+sentinel://…`: plain names and `PUBLISH`, epochs
    /// bound to the master that wrote them (a promoted replica may lack
    /// the last writes).
    Sentinel,
}

impl Layout {
    /// The name part of `topic`: itself, or its hash tag on a cluster.
    fn part(self, topic: &str) -> String {
        match self {
            Layout::Cluster => format!("{{{topic}}}"),
            _ => topic.to_owned(),
        }
    }

    /// The channel of `topic`.
    pub fn channel(self, topic: &str) -> String {
        format!("{TOPIC_CHANNEL}{}", self.part(topic))
    }

    /// The metadata hash of `topic`.
    pub fn meta_key(self, topic: &str) -> String {
        format!("ringcast:meta:{}", self.part(topic))
    }

    /// The stream of `topic`.
    pub fn stream_key(self, topic: &str) -> String {
        format!("ringcast:stream:{}", self.part(topic))
    }

    /// The topic whose channel is `channel`, if it is a topic channel.
    pub fn topic_of(self, channel: &str) -> Option<&str> {
        let rest = channel.strip_prefix(TOPIC_CHANNEL)?;
        match self {
            Layout::Cluster => rest.strip_prefix('{')?.strip_suffix('}'),
            _ => Some(rest),
        }
    }

    /// The command that sends on a channel: `SPUBLISH` on a cluster (the
    /// message stays on the channel's shard), else `PUBLISH`.
    pub fn publish_command(self) -> &'static str {
        match self {
            Layout::Cluster => "SPUBLISH",
            _ => "PUBLISH",
        }
    }

    /// `"1"` when a topic's epoch is bound to the master's replication id
    /// (the scripts' last argument): after a failover the new master's
    /// first write or read of the topic starts a new epoch, since a
    /// replica promoted after a SIGKILL may lack writes its master
    /// acknowledged (replication is asynchronous), and reusing their
    /// offsets would be a silent gap. Standalone instances keep `"0"`.
    pub fn guard(self) -> &'static str {
        match self {
            Layout::Instances => "0",
            _ => "1",
        }
    }
}

/// The channel of `topic` on standalone instances.
pub fn channel(topic: &str) -> String {
    Layout::Instances.channel(topic)
}

/// The name of a content kind in payloads and stream entries.
pub fn content_name(content: Content) -> &'static str {
    match content {
        Content::Text => "text",
        Content::Json => "json",
        Content::Binary => "binary",
    }
}

/// The content kind named `name`.
pub fn content_named(name: &str) -> Option<Content> {
    match name {
        "text" => Some(Content::Text),
        "json" => Some(Content::Json),
        "binary" => Some(Content::Binary),
        _ => None,
    }
}

/// Publishes one message on one topic, atomically: for a topic with
/// history (`ARGV[4]` > 0) it creates the metadata with the candidate
/// epoch `ARGV[6]` when it is missing (and drops a stream left without
/// it), increments `top`, appends the entry `top-0` to the stream capped
/// near `ARGV[4]` entries (`MAXLEN ~`), sets both keys' TTL to `ARGV[5]`
/// ms, and sends with `ARGV[7]` (`PUBLISH` or `SPUBLISH`) with offset and
/// epoch. With `ARGV[8]` = "1" the metadata also records the master's
/// `master_replid` (`INFO replication`) and metadata written under
/// another one is started again (see [`Layout::guard`]). Returns
/// `{offset, epoch, receivers}` (offset 0 and epoch "" without history).
///
/// KEYS: meta, stream. ARGV: channel, content, body, size, ttl ms, epoch,
/// publish command, guard.
pub const PUBLISH: &str = r#"
local size = tonumber(ARGV[4])
if size == 0 then
  local n = redis.call(ARGV[7], ARGV[1], '{"content":"' .. ARGV[2] .. '"}\n' .. ARGV[3])
  return {0, '', n}
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local replid = nil
if ARGV[8] == '1' then
  replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '?'
  if epoch and redis.call('HGET', KEYS[1], 'replid') ~= replid then
    epoch = nil
  end
end
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  if replid then
    redis.call('HSET', KEYS[1], 'replid', replid)
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, offset .. '-0', 'c', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local head = '{"content":"' .. ARGV[2] .. '","offset":' .. offset .. ',"epoch":"' .. epoch .. '"}\n'
local n = redis.call(ARGV[7], ARGV[1], head .. ARGV[3])
return {offset, epoch, n}
"#;

/// A topic's position, and the entries after a position, atomically: it
/// creates the metadata with the candidate epoch `ARGV[1]` and `top` 0
/// when it is missing (so the epoch announced is the one the first
/// publish uses), with TTL `ARGV[2]` ms. With `ARGV[3]` = "1", returns up
/// to `ARGV[5]` entries after offset `ARGV[4]`. Returns `{epoch, top,
/// first, c1, d1, c2, d2, …}`, `first` being the oldest retained offset
/// (`top + 1` when none is). `ARGV[6]` is the guard of [`PUBLISH`].
///
/// KEYS: meta, stream. ARGV: epoch, ttl ms, read ("0"/"1"), after, count,
/// guard.
pub const POSITION: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local replid = nil
if ARGV[6] == '1' then
  replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '?'
  if epoch and redis.call('HGET', KEYS[1], 'replid') ~= replid then
    epoch = nil
  end
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  if replid then
    redis.call('HSET', KEYS[1], 'replid', replid)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
local first = top + 1
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #oldest > 0 then
  first = tonumber(string.match(oldest[1][1], '^(%d+)'))
end
local out = {epoch, top, first}
if ARGV[3] == '1' then
  local from = (tonumber(ARGV[4]) + 1) .. '-0'
  local entries = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', ARGV[5])
  for _, e in ipairs(entries) do
    local c, d = '', ''
    for i = 1, #e[2], 2 do
      if e[2][i] == 'c' then c = e[2][i + 1] elseif e[2][i] == 'd' then d = e[2][i + 1] end
    end
    table.insert(out, c)
    table.insert(out, d)
  end
end
return out
"#;

/// The header of a message on a topic's channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicHeader {
    /// `text`, `json` or `binary`.
    pub content: String,
    /// Offset, for a topic with history.
    pub offset: Option<u64>,
    /// Epoch, with `offset`.
    pub epoch: Option<String>,
}

/// A message on the node-wide channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum NodeHeader {
    /// Deliver the body to every connection of `users`.
    Publish { users: Vec<String>, content: String },
    /// Deliver the body to every connection on the topics endpoint.
    Broadcast { content: String },
    /// Close every connection of `users` (no body).
    Disconnect {
        users: Vec<String>,
        code: u16,
        reason: String,
    },
}

/// Splits a payload into its header (parsed as `T`) and body.
///
/// # Errors
/// A reason for a payload without `\n` or with a header that is not a
/// `T`.
pub fn split<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<(T, &[u8]), String> {
    let at = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = serde_json::from_slice(&payload[..at]).map_err(|e| format!("header: {e}"))?;
    Ok((header, &payload[at + 1..]))
}

/// A topic message: its content, body (checked against the content) and
/// position (offset and epoch, for a topic with history).
pub type TopicMessage<'a> = (Content, &'a [u8], Option<(u64, Epoch)>);

/// A topic message's content, checked body and position.
///
/// # Errors
/// A reason for an unknown content kind, a body that is not what it
/// says, an offset without a valid epoch (or the reverse), or offset 0.
pub fn topic_message(payload: &[u8]) -> Result<TopicMessage<'_>, String> {
    let (header, body): (TopicHeader, _) = split(payload)?;
    let content = content_named(&header.content).ok_or("unknown content")?;
    content.check(body)?;
    let position = match (header.offset, header.epoch.as_deref()) {
        (None, None) => None,
        (Some(offset), Some(epoch)) if offset > 0 => {
            Some((offset, Epoch::parse(epoch).ok_or("invalid epoch")?))
        }
        _ => return Err("offset and epoch go together, offset from 1".into()),
    };
    Ok((content, body, position))
}

/// The node-wide payload for `header` (serialized by hand: the node only
/// ever parses headers) and `body`.
pub fn node_payload(header: serde_json::Value, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(&header).expect("a header serializes");
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_payloads_are_checked() {
        let ok = topic_message(b"{\"content\":\"text\"}\nhello").unwrap();
        assert_eq!((ok.0, ok.1, ok.2), (Content::Text, &b"hello"[..], None));
        let at = topic_message(b"{\"content\":\"json\",\"offset\":3,\"epoch\":\"AAAAAAAA\"}\n[1]");
        assert_eq!(at.unwrap().2.unwrap().0, 3);
        for bad in [
            &b"hello"[..],
            b"{\"content\":\"text\"}",
            b"{\"content\":\"json\"}\nnot json",
            b"{\"content\":\"text\"}\n\xff",
            b"{\"content\":\"yaml\"}\n1",
            b"{\"content\":\"text\",\"offset\":3}\nx",
            b"{\"content\":\"text\",\"offset\":0,\"epoch\":\"AAAAAAAA\"}\nx",
            b"{\"content\":\"text\",\"offset\":1,\"epoch\":\"A\"}\nx",
            b"{\"content\":\"text\",\"extra\":1}\nx",
        ] {
            assert!(
                topic_message(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cluster_names_share_one_hash_tag() {
        let c = Layout::Cluster;
        assert_eq!(c.meta_key("a.b"), "ringcast:meta:{a.b}");
        assert_eq!(c.stream_key("a.b"), "ringcast:stream:{a.b}");
        assert_eq!(c.channel("a.b"), "ringcast:topic:{a.b}");
        assert_eq!(c.topic_of("ringcast:topic:{a.b}"), Some("a.b"));
        assert_eq!(c.topic_of("ringcast:topic:a.b"), None);
        let i = Layout::Instances;
        assert_eq!(i.meta_key("a.b"), "ringcast:meta:a.b");
        assert_eq!(i.topic_of("ringcast:topic:a.b"), Some("a.b"));
        assert_eq!(
            (i.publish_command(), c.publish_command()),
            ("PUBLISH", "SPUBLISH")
        );
    }

    #[test]
    fn node_payloads_round_trip() {
        let payload = node_payload(
            serde_json::json!({"op":"publish","users":["42"],"content":"text"}),
            b"hi\nthere",
        );
        let (header, body): (NodeHeader, _) = split(&payload).unwrap();
        assert!(matches!(header, NodeHeader::Publish { users, .. } if users == ["42"]));
        assert_eq!(body, b"hi\nthere");
    }
}
