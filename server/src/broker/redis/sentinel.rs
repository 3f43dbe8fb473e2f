//! Sentinel discovery (`--broker redis+sentinel://HOST:PORT[,…]/NAME`):
//! the master is asked of the sentinels with the `redis` crate's
//! `SentinelClient` (it asks `SENTINEL GET-MASTER-ADDR-BY-NAME` and checks
//! the answer with `ROLE`), each time the instance connects; every
//! sentinel is subscribed to `+switch-master` (Redis docs, "High
//! availability with Redis Sentinel", Pub/Sub messages), and a switch of
//! our master has the instance connect again at once, to the new master.
//! Until then the instance is down: publishes answer 503.

use super::{lock, Access};
use futures_util::StreamExt;
use prometheus::IntCounter;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, IntoConnectionInfo};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// First and longest wait between attempts to subscribe to a sentinel.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The sentinels of one master.
pub struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    /// `redis://HOST:PORT` of each sentinel.
    sentinels: Vec<String>,
    /// The monitored master's name.
    pub master: String,
    /// `HOST:PORT` of the master last found, for `/healthz`.
    current: Mutex<Option<String>>,
    /// Woken on a `+switch-master` of our master.
    pub switched: Notify,
    /// The new master of the last switch seen (each sentinel announces
    /// it: counted once).
    last_switch: Mutex<Option<String>>,
    /// `ringcast_broker_failovers_total`.
    failovers: IntCounter,
}

impl Sentinel {
    /// The sentinels at `sentinels` (`redis://HOST:PORT`) of `master`,
    /// whose data nodes take `access`'s password (TLS to them with
    /// `tls`, trusting the system's store).
    ///
    /// # Errors
    /// Addresses the client does not take.
    pub fn new(
        sentinels: &[String],
        master: &str,
        tls: bool,
        access: &Access,
        failovers: IntCounter,
    ) -> Result<Self, String> {
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(password) = &access.password {
            settings = settings.set_password(password);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(settings);
        if tls {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        let infos = sentinels
            .iter()
            .map(|s| s.as_str().into_connection_info())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--broker redis+sentinel: {e}"))?;
        let client = SentinelClient::build(infos, master, Some(node), SentinelServerType::Master)
            .map_err(|e| format!("--broker redis+sentinel: {e}"))?;
        Ok(Self {
            client: tokio::sync::Mutex::new(client),
            sentinels: sentinels.to_vec(),
            master: master.to_owned(),
            current: Mutex::new(None),
            switched: Notify::new(),
            last_switch: Mutex::new(None),
            failovers,
        })
    }

    /// A client for the master the sentinels name now, within `timeout`.
    ///
    /// # Errors
    /// No sentinel answered with a master that says it is one.
    pub async fn master_client(&self, timeout: Duration) -> Result<Client, String> {
        let find = async { self.client.lock().await.async_get_client().await };
        let client = match tokio::time::timeout(timeout, find).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("sentinels: {e}")),
            Err(_) => return Err("sentinels: no master within --broker-timeout".into()),
        };
        let addr = client.get_connection_info().addr().to_string();
        *lock(&self.current) = Some(addr);
        Ok(client)
    }

    /// `HOST:PORT` of the master last found.
    pub fn current(&self) -> Option<String> {
        lock(&self.current).clone()
    }

    /// Subscribes to `+switch-master` on every sentinel (each retried
    /// with backoff while unreachable), until the server exits.
    pub fn watch(self: &Arc<Self>) {
        for url in &self.sentinels {
            tokio::spawn(watch_one(self.clone(), url.clone()));
        }
    }
}

impl Sentinel {
    /// The sentinels switched our master to `to`: counted and told to the
    /// instance once per new master.
    fn switch(&self, to: String) {
        let mut last = lock(&self.last_switch);
        if last.as_deref() != Some(to.as_str()) {
            tracing::info!(master = %self.master, to = %to, "sentinel: +switch-master");
            self.failovers.inc();
            *last = Some(to);
            // One waiter (the instance's task); a permit is kept if it
            // is busy connecting, so the switch is never missed.
            self.switched.notify_one();
        }
    }
}

/// One sentinel's `+switch-master` messages: `NAME OLD_IP OLD_PORT NEW_IP
/// NEW_PORT`; one of our master wakes [`Sentinel::switched`].
async fn watch_one(sentinel: Arc<Sentinel>, url: String) {
    let mut backoff = BACKOFF.0;
    loop {
        if let Ok(client) = Client::open(url.as_str()) {
            if let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(BACKOFF.1, client.get_async_pubsub()).await
            {
                if pubsub.subscribe("+switch-master").await.is_ok() {
                    backoff = BACKOFF.0;
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let payload = message.get_payload_bytes();
                        let text = std::str::from_utf8(payload).unwrap_or_default();
                        let fields: Vec<&str> = text.split(' ').collect();
                        if let [name, _, _, ip, port] = fields[..] {
                            if name == sentinel.master {
                                sentinel.switch(format!("{ip}:{port}"));
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}
