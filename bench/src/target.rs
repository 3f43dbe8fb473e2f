//! Where the load goes: a `ws://` URL resolved to one socket address, and
//! the source addresses connections are spread over.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

/// A WebSocket endpoint: `ws://host[:port][/path][?query]` (RFC 6455 §3;
/// `wss://` is not supported: the bench measures the server, not TLS).
#[derive(Clone, Debug)]
pub struct Target {
    /// The first address `host:port` resolves to.
    pub addr: SocketAddr,
    /// The `Host` header value (`host[:port]` as written in the URL).
    pub host: String,
    /// Request target: path and query, e.g. `/ws?topic=t`.
    pub resource: String,
}

impl Target {
    /// Parses and resolves `url`.
    ///
    /// # Errors
    /// A message naming the problem: another scheme, an empty host, a bad
    /// port, or a host that does not resolve.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url:?}: only ws:// URLs are supported"))?;
        let (authority, resource) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let has_port = match authority.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => authority.contains(':'),
        };
        let with_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url:?}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: {with_port} resolves to no address"))?;
        Ok(Self {
            addr,
            host: authority.to_string(),
            resource,
        })
    }
}

/// The default `--source-ips`: every address of 127.1.0.0/16 to
/// 127.255.0.0/16, so that each of up to 16.6M connections comes from its
/// own client address, as on the internet. A server's memory per
/// connection depends on how many distinct peers it tracks, so a load
/// from a handful of addresses measures a different server.
pub const DISTINCT_SOURCES: &str = "127.1.0.1-127.255.255.254";

/// Source addresses to bind, as inclusive IPv4 ranges; connection `n` of
/// a run binds address `n` modulo their count.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    ranges: Vec<(u32, u32)>,
    count: u64,
}

impl Sources {
    /// No source address: the kernel picks one (127.0.0.1 on loopback).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Address number `n`, modulo the number of addresses.
    ///
    /// # Panics
    /// If there is none.
    pub fn nth(&self, n: u64) -> Ipv4Addr {
        let mut n = n % self.count;
        for &(first, last) in &self.ranges {
            let size = u64::from(last - first) + 1;
            if n < size {
                return Ipv4Addr::from(first + n as u32);
            }
            n -= size;
        }
        unreachable!("n is below the count")
    }
}

/// Parses `--source-ips`: `kernel` (let the kernel pick), or a
/// comma-separated list of IPv4 addresses and inclusive ranges, e.g.
/// `127.0.0.2-127.0.0.60,127.0.1.1`. Each source address gives about 28k
/// ephemeral ports per destination.
///
/// # Errors
/// A message naming the piece that is not an address or an ascending range.
pub fn parse_source_ips(spec: &str) -> Result<Sources, String> {
    let mut out = Sources::default();
    if spec.trim() == "kernel" {
        return Ok(out);
    }
    for piece in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map(u32::from)
                .map_err(|_| format!("--source-ips: {s:?} is not an IPv4 address"))
        };
        let (first, last) = match piece.split_once('-') {
            Some((first, last)) => (parse(first)?, parse(last)?),
            None => (parse(piece)?, parse(piece)?),
        };
        if first > last {
            return Err(format!("--source-ips: {piece:?} is not ascending"));
        }
        out.ranges.push((first, last));
        out.count += u64::from(last - first) + 1;
    }
    if out.is_empty() {
        return Err("--source-ips: no address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/ws?topic=t").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.resource.as_str()),
            ("127.0.0.1:8080", "/ws?topic=t")
        );
        let t = Target::parse("ws://127.0.0.1?x=1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.resource, "/?x=1");
        let t = Target::parse("ws://[::1]:9000/echo").unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert!(Target::parse("wss://127.0.0.1/").is_err());
        assert!(Target::parse("ws:///x").is_err());
    }

    #[test]
    fn parses_source_ranges() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        assert_eq!(ips.count, 4);
        assert_eq!(ips.nth(3), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(ips.nth(4), Ipv4Addr::new(127, 0, 0, 2));
        assert!(parse_source_ips("kernel").unwrap().is_empty());
        assert_eq!(
            parse_source_ips(DISTINCT_SOURCES).unwrap().count,
            16_711_678
        );
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_ips("localhost").is_err());
    }
}
