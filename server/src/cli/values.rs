//! How single flag values are read (listen addresses, counts) and
//! printed by `config print` (durations, broker URLs without passwords,
//! `--history` as a table).

use ringcast_engine::history::Rule;
use serde::Serializer;
use std::net::SocketAddr;
use std::time::Duration;

/// Broker URLs with any password replaced by `***` (`config print`).
pub(super) fn urls_without_passwords<S: Serializer>(
    urls: &[String],
    s: S,
) -> Result<S::Ok, S::Error> {
    let redact = |url: &String| match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.clone(),
        },
        None => "***".to_owned(),
    };
    s.collect_seq(urls.iter().map(redact))
}

/// A duration as `config print` writes it (`2m`, `1h 30m`).
pub(super) fn humantime_str<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// A listen address: `IP:PORT` (`[::1]:8080` for IPv6), `:PORT` for every
/// IPv4 address (`0.0.0.0:PORT`, as nginx reads `listen 8080`; Go's
/// `:8080` also takes IPv6, which needs `[::]:PORT` here), or
/// `localhost:PORT` for 127.0.0.1 (not resolved: always that address).
///
/// # Errors
/// A message with the accepted forms, for anything else.
pub(super) fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    let any = |port: &str| format!("0.0.0.0:{port}");
    let loopback = |port: &str| format!("127.0.0.1:{port}");
    let spelled = match text.rsplit_once(':') {
        Some(("", port)) => any(port),
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => loopback(port),
        _ => text.to_owned(),
    };
    spelled.parse().map_err(|_| {
        "expected IP:PORT, :PORT (every IPv4 address) or localhost:PORT, \
         e.g. 0.0.0.0:8080, :8080 or localhost:8081"
            .to_owned()
    })
}

/// A count flag's value (`usize`, `u64`, `u32`, `u16`), with the reason
/// in words when it is not one: clap's own parser says "invalid digit
/// found in string" for `-5`.
///
/// # Errors
/// A negative number, a number over the type's range, or not a number.
pub(super) fn count<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err(format!(
            "{n} is negative; expected a whole number, 0 or more"
        )),
        Ok(n) => u64::try_from(n)
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("{n} is too large for this setting")),
        Err(_) => Err("expected a whole number, e.g. 1000".into()),
    }
}

/// `--history` rules as the config file's table: `"PATTERN" = "SIZE/TTL"`.
pub(super) fn rules_table<S: Serializer>(rules: &[Rule], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(rules.iter().map(|r| (&r.pattern, r.limits())))
}
