//! What the serve flags make: the engine's [`Config`], the hooks, auth
//! and broker access read from their files, and the checks clap cannot
//! do (`Serve::validate`).

use super::{HookKind, Serve, Switch};
use ringcast_engine::auth::Pattern;
use ringcast_engine::auth::{Auth, KeySource, Settings};
use ringcast_engine::upstream::Hooks;
use ringcast_engine::Config;
use std::path::PathBuf;
use std::sync::Arc;

/// Topic patterns from a flag's values.
fn patterns(flag: &str, values: &[String]) -> Result<Vec<Pattern>, String> {
    values
        .iter()
        .map(|v| {
            Pattern::parse(v).ok_or_else(|| {
                format!("{flag} {v:?}: expected a topic name or a prefix ending in *")
            })
        })
        .collect()
}

impl Serve {
    /// The engine configuration these flags describe, with the JWT keys
    /// loaded.
    ///
    /// # Errors
    /// A message naming a key file that cannot be read or used.
    pub fn engine_config(&self) -> Result<Config, String> {
        let defaults = Config::default();
        Ok(Config {
            listen: self.listen,
            workers: self.workers.unwrap_or(defaults.workers),
            path: self.path.clone(),
            echo: self.echo,
            subprotocols: self.subprotocols.clone(),
            idle_timeout: self.idle_timeout,
            ping_interval: self.ping_interval,
            handshake_timeout: self.handshake_timeout,
            max_message_size: self.max_message_size,
            max_outbound_bytes: self.max_outbound_bytes,
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_ip: self.max_connections_per_ip,
            max_handshakes_per_sec: self.max_handshakes_per_sec,
            proxy_protocol: self.proxy_protocol,
            trusted_proxies: self.trusted_proxies.clone(),
            allowed_origins: self.allowed_origins.clone(),
            history: crate::statics::history(self.demo, &self.history),
            history_max_bytes: self.history_max_bytes,
            compression: self.compression == Switch::On,
            compression_min_size: self.compression_min_size,
            read_buffers: self.read_buffers,
            read_buffer_size: self.read_buffer_size,
            sse_path: (!self.no_sse).then(|| self.sse_path.clone()),
            poll_path: (!self.no_poll).then(|| self.poll_path.clone()),
            poll_timeout: self.poll_timeout,
            static_files: crate::statics::files(self.demo),
            auth: self.auth()?,
            // Both set by the server once its channels exist.
            upstream: None,
            client_publish: patterns(
                "--client-publish",
                &crate::statics::client_publish(self.demo, &self.client_publish),
            )?,
            client_publish_echo: self.client_publish_echo,
            rooms: patterns("--room", &self.rooms)?,
            client_messages_per_sec: self.client_messages_per_sec,
            client_bytes_per_sec: self.client_bytes_per_sec as f64,
            max_inflate_bytes_per_sec: self.max_inflate_bytes_per_sec,
            hooks: self.engine_hooks(),
            broker: false,
            presence: patterns(
                "--presence",
                &crate::statics::presence(self.demo, &self.presence.patterns),
            )?,
            presence_join_leave_max: self.presence.presence_join_leave_max,
        })
    }

    /// The hooks flags as the engine sees them.
    pub fn engine_hooks(&self) -> Hooks {
        let on = |kind| self.hook_url.is_some() && self.hooks.contains(&kind);
        Hooks {
            connect: on(HookKind::Connect),
            publish: on(HookKind::Publish),
            rpc: on(HookKind::Rpc),
            disconnect: on(HookKind::Disconnect),
            presence: on(HookKind::Presence),
            channels: on(HookKind::Channels),
        }
    }

    /// Token verification, if a --jwt key flag is set.
    fn auth(&self) -> Result<Option<Arc<Auth>>, String> {
        let keys = match (
            &self.jwt_hmac_secret_file,
            &self.jwt_public_key,
            &self.jwt_jwks,
        ) {
            (Some(path), _, _) => KeySource::HmacSecret(path.clone()),
            (_, Some(path), _) => KeySource::PublicKey(path.clone()),
            (_, _, Some(path)) => KeySource::Jwks(path.clone()),
            (None, None, None) => return Ok(None),
        };
        let auth = Auth::new(Settings {
            keys,
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            leeway: self.jwt_leeway,
            allow_anonymous: self.allow_anonymous,
        })?;
        Ok(Some(Arc::new(auth)))
    }

    /// The API token from --api-token-file, if set.
    ///
    /// # Errors
    /// A message for a file that cannot be read or holds only whitespace.
    pub fn api_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.api_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--api-token-file {}: {e}", path.display()))?;
        match text.trim() {
            "" => Err(format!("--api-token-file {}: empty", path.display())),
            token => Ok(Some(token.to_owned())),
        }
    }

    /// The password from --broker-password-file and the CA certificates
    /// from --broker-ca-file, if set.
    ///
    /// # Errors
    /// An unreadable or empty file.
    pub fn broker_access(&self) -> Result<crate::broker::Access, String> {
        let read = |flag: &str, path: &Option<PathBuf>| -> Result<Option<String>, String> {
            let Some(path) = path else {
                return Ok(None);
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
            match text.trim_end() {
                "" => Err(format!("{flag} {}: empty", path.display())),
                text => Ok(Some(text.to_owned())),
            }
        };
        Ok(crate::broker::Access {
            password: read("--broker-password-file", &self.broker_password_file)?,
            ca: read("--broker-ca-file", &self.broker_ca_file)?.map(String::into_bytes),
        })
    }

    /// Checks values clap cannot.
    ///
    /// # Errors
    /// A message naming the flag and what it needs.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.contains('?') {
            return Err(format!(
                "--path must start with / and have no query: {:?}",
                self.path
            ));
        }
        for (flag, path) in [
            ("--sse-path", &self.sse_path),
            ("--poll-path", &self.poll_path),
        ] {
            if !path.starts_with('/') || path.contains('?') {
                return Err(format!(
                    "{flag} must start with / and have no query: {path:?}"
                ));
            }
        }
        let mut paths = vec![self.path.as_str()];
        paths.extend((!self.no_sse).then_some(self.sse_path.as_str()));
        paths.extend((!self.no_poll).then_some(self.poll_path.as_str()));
        paths.sort_unstable();
        if paths.windows(2).any(|w| w[0] == w[1]) {
            return Err("--path, --sse-path and --poll-path must differ".into());
        }
        if self.echo && self.path == "/echo" {
            return Err("--path /echo clashes with --echo".into());
        }
        if self.workers == Some(0) {
            return Err("--workers must be at least 1".into());
        }
        if !self.brokers.is_empty() {
            let topology = crate::broker::Topology::parse(&self.brokers)?;
            if self.broker_ca_file.is_some() && !topology.tls() {
                return Err("--broker-ca-file needs a TLS (rediss) --broker".into());
            }
        } else if self.broker_ca_file.is_some() {
            return Err("--broker-ca-file needs a TLS (rediss) --broker".into());
        }
        if !self.read_buffers.is_power_of_two() || self.read_buffers > 32768 {
            return Err("--read-buffers must be a power of two up to 32768".into());
        }
        if self.read_buffer_size < 512 {
            return Err("--read-buffer-size must be at least 512 bytes".into());
        }
        for (flag, d) in [
            ("--poll-timeout", self.poll_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--ping-interval", self.ping_interval),
            ("--handshake-timeout", self.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be above zero"));
            }
        }
        if self.max_message_size == 0
            || self.max_outbound_bytes == 0
            || self.max_connections == Some(0)
        {
            return Err(
                "--max-message-size, --max-outbound-bytes and --max-connections must be above zero"
                    .into(),
            );
        }
        if self
            .max_handshakes_per_sec
            .is_some_and(|r| !r.is_finite() || r <= 0.0)
        {
            return Err("--max-handshakes-per-sec must be a number above zero".into());
        }
        patterns("--client-publish", &self.client_publish)?;
        patterns("--room", &self.rooms)?;
        if !self.client_messages_per_sec.is_finite()
            || self.client_messages_per_sec < 1.0
            || self.client_bytes_per_sec == 0
        {
            return Err(
                "--client-messages-per-sec must be at least 1 and --client-bytes-per-sec above zero"
                    .into(),
            );
        }
        if let Some(url) = &self.hook_url {
            if !url.starts_with("http://") {
                return Err(format!("--hook-url {url:?}: expected an http:// URL"));
            }
        }
        if !self.hooks.is_empty() && self.hook_url.is_none() {
            return Err("--hooks needs --hook-url".into());
        }
        if self.hook_timeout.is_zero() || self.hook_concurrency == 0 {
            return Err("--hook-timeout and --hook-concurrency must be above zero".into());
        }
        self.bounds.validate()?;
        let auth_on = self.jwt_hmac_secret_file.is_some()
            || self.jwt_public_key.is_some()
            || self.jwt_jwks.is_some();
        if !auth_on
            && (self.allow_anonymous
                || !self.jwt_audience.is_empty()
                || !self.jwt_issuer.is_empty())
        {
            return Err(
                "--allow-anonymous, --jwt-audience and --jwt-issuer need a key: \
                 --jwt-hmac-secret-file, --jwt-public-key or --jwt-jwks"
                    .into(),
            );
        }
        Ok(())
    }
}
