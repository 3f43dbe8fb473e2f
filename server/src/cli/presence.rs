//! The presence flags (README, "Presence"), flattened into `ringcast
//! serve`.

use super::humantime_str;
use clap::Args;
use serde::Serialize;
use std::time::Duration;

/// Which topics have presence, and its bounds.
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Presence {
    /// Topics with presence: a connection subscribed to one over raw
    /// WebSocket, ringcast.v1 or SSE is a member, listed by the presence
    /// op and GET /presence. A name, or a prefix ending in * (repeatable,
    /// or comma-separated; in the config file an array) [default: none].
    #[arg(long = "presence", env = "RINGCAST_PRESENCE", value_delimiter = ',')]
    #[serde(rename = "presence")]
    pub patterns: Vec<String>,
    /// While a topic has more members than this (across the cluster), its
    /// joins and leaves are not pushed to join_leave subscribers (each is
    /// N deliveries); queries and stats stay exact.
    #[arg(long, env = "RINGCAST_PRESENCE_JOIN_LEAVE_MAX", value_parser = super::count::<usize>, default_value_t = 1000)]
    pub presence_join_leave_max: usize,
    /// With --broker: each node keeps its members in Redis for this long
    /// and refreshes them every third of it; the members of a node that
    /// stops refreshing (killed) are gone within it, and a leave is sent
    /// for each.
    #[arg(long, env = "RINGCAST_PRESENCE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub presence_ttl: Duration,
}
