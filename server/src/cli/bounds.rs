//! The flags that bound the work queued between the workers, the server's
//! async side, the backend hooks and Redis (README, "Security: every queue
//! bounded"), flattened into `ringcast serve`, and what they make.

use super::humantime_str;
use clap::{ArgAction, Args};
use serde::Serialize;
use std::time::Duration;

/// Queue bounds and broker timing.
#[derive(Args, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Bounds {
    /// Events from the workers (client publishes, rpc calls, connect and
    /// disconnect hook events) admitted and not yet done, at most; past it
    /// a client publish or rpc is answered "server busy" and a handshake
    /// waiting for the connect hook gets 503.
    #[arg(long, env = "RINGCAST_UPSTREAM_QUEUE", value_parser = super::count::<usize>, default_value_t = 65_536)]
    pub upstream_queue: usize,
    /// Bytes of those events (payloads, topics, headers) at most, as
    /// above.
    #[arg(long, env = "RINGCAST_UPSTREAM_QUEUE_BYTES", value_parser = super::count::<usize>, default_value_t = 64 << 20)]
    pub upstream_queue_bytes: usize,
    /// One connection's client publishes, room messages and rpc calls
    /// admitted and not yet done (waiting for the server, the publish
    /// hook, the rpc hook or the broker), at most; past it the client gets
    /// an error op "server busy". The default is above a full
    /// --client-messages-per-sec bucket (100), so a burst within the rate
    /// limits is not refused while the server keeps up. Work of a
    /// connection that closed is dropped, not done.
    #[arg(long, env = "RINGCAST_CLIENT_PUBLISH_QUEUE", value_parser = super::count::<usize>, default_value_t = 128)]
    pub client_publish_queue: usize,
    /// Bytes of one connection's waiting publishes and rpc calls at most,
    /// as above. Each byte bound is raised to --max-message-size when
    /// below it.
    #[arg(long, env = "RINGCAST_CLIENT_PUBLISH_QUEUE_BYTES", value_parser = super::count::<usize>, default_value_t = 4 << 20)]
    pub client_publish_queue_bytes: usize,
    /// Send the client's `token` query parameter to the connect hook too
    /// (by default it is stripped from the forwarded query).
    #[arg(long, env = "RINGCAST_HOOK_FORWARD_TOKEN", action = ArgAction::SetTrue)]
    pub hook_forward_token: bool,
    /// Longest wait for one Redis command's answer; past it the command
    /// fails (a publish gets 503), the instance is marked down in
    /// /healthz and its connections are made again.
    #[arg(long, env = "RINGCAST_BROKER_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub broker_timeout: Duration,
    /// Time between PINGs of each Redis instance, so that an idle node
    /// notices a stalled Redis within this plus --broker-timeout.
    #[arg(long, env = "RINGCAST_BROKER_PING_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "humantime_str")]
    pub broker_ping_interval: Duration,
    /// Redis commands in flight (publishes, broadcasts, disconnects,
    /// history reads through the API or client publishes) at most; past
    /// it the API answers 503.
    #[arg(long, env = "RINGCAST_BROKER_QUEUE", value_parser = super::count::<usize>, default_value_t = 1024)]
    pub broker_queue: usize,
    /// Message bytes of those commands at most, as above.
    #[arg(long, env = "RINGCAST_BROKER_QUEUE_BYTES", value_parser = super::count::<usize>, default_value_t = 64 << 20)]
    pub broker_queue_bytes: usize,
    /// Topics with a subscription change waiting per Redis instance, at
    /// most (changes to one topic coalesce); past it the instance is
    /// reconnected and subscribed again to what the node holds.
    #[arg(long, env = "RINGCAST_BROKER_INTEREST_QUEUE", value_parser = super::count::<usize>, default_value_t = 65_536)]
    pub broker_interest_queue: usize,
    /// History reads of resuming subscribers waiting per Redis instance,
    /// at most; past it a read is answered with no position (the client
    /// gets `recovered:false`).
    #[arg(long, env = "RINGCAST_BROKER_READ_QUEUE", value_parser = super::count::<usize>, default_value_t = 4096)]
    pub broker_read_queue: usize,
}

impl Bounds {
    /// The checks clap cannot do.
    ///
    /// # Errors
    /// A message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("--upstream-queue", self.upstream_queue),
            ("--upstream-queue-bytes", self.upstream_queue_bytes),
            ("--client-publish-queue", self.client_publish_queue),
            ("--broker-queue", self.broker_queue),
            ("--broker-interest-queue", self.broker_interest_queue),
            ("--broker-read-queue", self.broker_read_queue),
        ];
        if let Some((flag, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{flag} must be above zero"));
        }
        if self.broker_timeout.is_zero() || self.broker_ping_interval.is_zero() {
            return Err("--broker-timeout and --broker-ping-interval must be above zero".into());
        }
        Ok(())
    }

    /// The upstream bounds. A byte bound below `max_message`
    /// (`--max-message-size`) is raised to it: a queue must take at least
    /// one message.
    pub fn upstream(&self, max_message: usize) -> crate::upstream::bounds::Limits {
        crate::upstream::bounds::Limits {
            events: self.upstream_queue,
            bytes: self.upstream_queue_bytes.max(max_message),
            per_connection: self.client_publish_queue,
            per_connection_bytes: self.client_publish_queue_bytes.max(max_message),
        }
    }

    /// The broker's timing and command bounds; `--broker-queue-bytes` is
    /// raised to `max_message` as in [`Bounds::upstream`].
    pub fn broker(
        &self,
        max_message: usize,
        presence: &super::Presence,
    ) -> crate::broker::Settings {
        crate::broker::Settings {
            timeout: self.broker_timeout,
            ping_interval: self.broker_ping_interval,
            max_message,
            queue: self.broker_queue,
            queue_bytes: self.broker_queue_bytes.max(max_message),
            presence_ttl: presence.presence_ttl,
            presence_max: presence.presence_join_leave_max,
        }
    }

    /// The broker's interest and read queue bounds.
    pub fn interest(&self) -> crate::broker::InterestLimits {
        crate::broker::InterestLimits {
            changes: self.broker_interest_queue,
            reads: self.broker_read_queue,
        }
    }
}
