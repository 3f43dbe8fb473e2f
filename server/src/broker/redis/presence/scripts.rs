//! The Redis side of presence: key names, the Lua scripts (each one atomic
//! step of a join, leave, refresh, reap or channel edge) and the join
//! script's invocation.

use ringcast_engine::presence::{Member, Who};
use ringcast_engine::upstream::Origin;
use std::sync::LazyLock;

/// Longest client id taken from Redis, in bytes.
pub(super) const MAX_CLIENT: usize = 64;
/// Longest `info` taken from Redis, in bytes (the claim's limit).
pub(super) const MAX_INFO: usize = 1024;

pub(super) const NODES: &str = "ringcast:presence-nodes";

pub(super) fn members_key(topic: &str) -> String {
    format!("ringcast:presence:{topic}")
}

pub(super) fn users_key(topic: &str) -> String {
    format!("ringcast:presence-users:{topic}")
}

pub(super) fn channel_key(topic: &str) -> String {
    format!("ringcast:channel:{topic}")
}

pub(super) fn channel_node_key(node: &str) -> String {
    format!("ringcast:channel-node:{node}")
}

pub(super) fn node_key(node: &str) -> String {
    format!("ringcast:presence-node:{node}")
}

/// The Lua function both a leave and a reap use: removes member
/// `client` of `topic` (of `node`), counts its user down, and PUBLISHes
/// its leave while the topic had at most `max` members. Returns nil when
/// it was not a member, else `{edge, members, member json}`.
const REMOVE: &str = r#"
local function remove(topic, client, node, max)
  local mkey = 'ringcast:presence:' .. topic
  local json = redis.call('HGET', mkey, client)
  if not json then return nil end
  redis.call('HDEL', mkey, client)
  redis.call('SREM', 'ringcast:presence-node:' .. node, topic .. '\n' .. client)
  local ok, m = pcall(cjson.decode, json)
  local user = 'null'
  local edge = 1
  if ok and type(m) == 'table' and type(m.user) == 'string' then
    user = cjson.encode(m.user)
    local ukey = 'ringcast:presence-users:' .. topic
    if redis.call('HINCRBY', ukey, m.user, -1) > 0 then
      edge = 0
    else
      redis.call('HDEL', ukey, m.user)
    end
  end
  local members = redis.call('HLEN', mkey) + 1
  if members <= max then
    redis.call('PUBLISH', 'ringcast:topic:' .. topic,
      '{"presence":"leave","node":' .. cjson.encode(node) .. ',"client":' .. cjson.encode(client) ..
      ',"user":' .. user .. ',"edge":' .. (edge == 1 and 'true' or 'false') ..
      ',"members":' .. members .. '}')
  end
  return {edge, members, json}
end
"#;

/// Registers member `ARGV[1]` (JSON `ARGV[2]`, user `ARGV[3]` or "") of
/// topic `ARGV[4]`; with `ARGV[6]` = "1" PUBLISHes `ARGV[7]` completed
/// with `edge` and `members` while the topic has at most `ARGV[5]`
/// members; registers node `ARGV[8]` as alive for `ARGV[9]` ms unless it
/// is (so a node killed before its first refresh is reaped too). Returns
/// `{edge, members}`, or `{-1, 0}` when it was already registered.
/// KEYS: members, users, node set, the nodes' sorted set.
const JOIN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[4], 'NX', now + tonumber(ARGV[9]), ARGV[8])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return {-1, 0} end
redis.call('SADD', KEYS[3], ARGV[4] .. '\n' .. ARGV[1])
local edge = 1
if ARGV[3] ~= '' and redis.call('HINCRBY', KEYS[2], ARGV[3], 1) > 1 then edge = 0 end
local members = redis.call('HLEN', KEYS[1])
if ARGV[6] == '1' and members <= tonumber(ARGV[5]) then
  redis.call('PUBLISH', 'ringcast:topic:' .. ARGV[4],
    ARGV[7] .. (edge == 1 and 'true' or 'false') .. ',"members":' .. members .. '}')
end
return {edge, members}
"#;

/// Removes member `ARGV[2]` of topic `ARGV[1]` of node `ARGV[3]`
/// (`REMOVE`, `max` `ARGV[4]`). Returns `{edge, members}`, or `{-1, 0}`.
/// KEYS: members, users, node set (declared; the function names them).
fn leave_script() -> String {
    format!(
        "{REMOVE}\nlocal r = remove(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))\n\
         if not r then return {{-1, 0}} end\nreturn {{r[1], r[2]}}"
    )
}

/// Node `ARGV[1]` holds topic `ARGV[2]` (`ARGV[3]` = "1") or let go of
/// it: returns 1 when that makes the topic occupied across the cluster
/// (its first node) or vacated (its last), else 0. KEYS: the topic's
/// node set, the node's topic set.
const CHANNEL: &str = r#"
if ARGV[3] == '1' then
  if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
  redis.call('SADD', KEYS[2], ARGV[2])
  return redis.call('SCARD', KEYS[1]) == 1 and 1 or 0
end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[2])
return redis.call('SCARD', KEYS[1]) == 0 and 1 or 0
"#;

/// Pushes node `ARGV[1]`'s expiry to Redis's now + `ARGV[2]` ms and
/// lists the nodes whose expiry passed. Returns `{added, now, dead…}`
/// (`added` 1: the node was not registered, e.g. it was reaped).
/// KEYS: the nodes' sorted set.
const REFRESH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local out = {added, now}
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
  table.insert(out, dead)
end
return out
"#;

/// Reaps node `ARGV[1]` if its expiry is before `ARGV[2]` (or at once
/// with `ARGV[4]` = "1": the node itself leaving): the one caller whose
/// `ZREM` takes it removes each of its members (`REMOVE`, `max`
/// `ARGV[3]`), and lets go of its topics (the channels webhook). Returns
/// `{topic, member json, edge, members, …}`, with `{topic, "", 0, 0}`
/// for each topic that became vacated. KEYS: the nodes' sorted set, the
/// node's set.
fn reap_script() -> String {
    format!(
        r#"{REMOVE}
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[4] ~= '1' and (not score or tonumber(score) >= tonumber(ARGV[2])) then return {{}} end
if ARGV[4] ~= '1' and redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return {{}} end
if ARGV[4] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local out = {{}}
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local nl = string.find(entry, '\n', 1, true)
  if nl then
    local topic = string.sub(entry, 1, nl - 1)
    local r = remove(topic, string.sub(entry, nl + 1), ARGV[1], tonumber(ARGV[3]))
    if r then
      table.insert(out, topic)
      table.insert(out, r[3])
      table.insert(out, r[1])
      table.insert(out, r[2])
    end
  end
end
redis.call('DEL', KEYS[2])
local topics = 'ringcast:channel-node:' .. ARGV[1]
for _, topic in ipairs(redis.call('SMEMBERS', topics)) do
  local nodes = 'ringcast:channel:' .. topic
  if redis.call('SREM', nodes, ARGV[1]) == 1 and redis.call('SCARD', nodes) == 0 then
    table.insert(out, topic)
    table.insert(out, '')
    table.insert(out, 0)
    table.insert(out, 0)
  end
end
redis.call('DEL', topics)
return out
"#
    )
}

pub(super) static JOIN_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(JOIN));
static LEAVE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&leave_script()));
pub(super) static REAP_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&reap_script()));
pub(super) static CHANNEL_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(CHANNEL));
pub(super) static REFRESH_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(REFRESH));

/// The leave script's invocation: member `client` of `topic`, of this
/// node `node`, its leave published while the topic had at most `max`
/// members.
pub(super) fn leave_invocation(
    topic: &str,
    client: &str,
    node: &str,
    max: usize,
) -> redis::ScriptInvocation<'static> {
    let mut invocation = LEAVE_SCRIPT.prepare_invoke();
    invocation
        .key(members_key(topic))
        .key(users_key(topic))
        .key(node_key(node))
        .arg(topic)
        .arg(client)
        .arg(node)
        .arg(max);
    invocation
}

/// The join script's invocation for `member` of `topic`, publishing the
/// join (with the joining connection `joiner` named for its node) when
/// `publish`.
pub(super) fn join_invocation(
    topic: &str,
    member: &Member,
    node: &str,
    max: usize,
    joiner: Option<Origin>,
    publish: bool,
    ttl: std::time::Duration,
) -> redis::ScriptInvocation<'static> {
    let who = Who {
        client: &member.client,
        user: member.user.as_deref(),
        info: member.info.as_deref(),
    };
    let stored = ringcast_engine::presence::member(who);
    // `{"presence":` first: that is how a topic's channel tells presence
    // events from messages.
    let json = |s: &str| serde_json::to_string(s).expect("a str serializes");
    let mut head = format!(
        r#"{{"presence":"join","node":{},"client":{},"user":{}"#,
        json(node),
        json(&member.client),
        member
            .user
            .as_deref()
            .map_or_else(|| "null".to_owned(), json),
    );
    if let Some(o) = joiner {
        head.push_str(&format!(r#","o":[{},{},{}]"#, o.worker, o.slot, o.gen));
    }
    let info_at = stored.find(r#","info":"#).expect("a member has info");
    head.push_str(&stored[info_at..stored.len() - 1]);
    head.push_str(r#","edge":"#);
    let mut invocation = JOIN_SCRIPT.prepare_invoke();
    invocation
        .key(members_key(topic))
        .key(users_key(topic))
        .key(node_key(node))
        .key(NODES)
        .arg(&member.client)
        .arg(stored)
        .arg(member.user.as_deref().unwrap_or(""))
        .arg(topic)
        .arg(max)
        .arg(if publish { "1" } else { "0" })
        .arg(head)
        .arg(node)
        .arg(ttl.as_millis() as u64);
    invocation
}
