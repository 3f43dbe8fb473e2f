//! Who gets in: the client's real address (PROXY header, or forwarding
//! headers from a trusted proxy), the Origin allowlist, the process-wide
//! connection limit, the per-address limit, and each worker's accept rate.
//!
//! One [`Admission`] is shared by every worker. Its state is touched once
//! when a handshake completes and once when the connection is removed;
//! never on the frame path. Client addresses are kept (interned, counted)
//! only while `--max-connections-per-ip` is set, and only for admitted
//! connections: without that limit, a connection costs the table nothing,
//! however many distinct addresses the clients come from.

use crate::protocol::handshake::Reject;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A client address interned in [`Admission`]'s table: the admitted
/// connections from one address share one entry and count against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerId(u32);

impl PeerId {
    /// No address kept (the per-address limit is off, or not admitted).
    pub const NONE: PeerId = PeerId(u32::MAX);
}

/// One address and its admitted connections.
#[derive(Clone, Copy)]
struct Entry {
    ip: IpAddr,
    open: u32,
}

/// Addresses with at least one admitted connection.
#[derive(Default)]
struct Peers {
    ids: HashMap<IpAddr, u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
}

impl Peers {
    /// The id of `ip`, interning it with no connection counted.
    fn intern(&mut self, ip: IpAddr) -> u32 {
        if let Some(&id) = self.ids.get(&ip) {
            return id;
        }
        let entry = Entry { ip, open: 0 };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(ip, id);
        id
    }

    /// Forgets `id` if no connection counts against it.
    fn forget_if_unused(&mut self, id: u32) {
        let entry = self.entries[id as usize];
        if entry.open == 0 {
            self.ids.remove(&entry.ip);
            self.free.push(id);
        }
    }

    /// One admitted connection of `peer` is gone.
    fn release(&mut self, peer: PeerId) {
        let entry = &mut self.entries[peer.0 as usize];
        assert!(entry.open > 0, "peer id {} is not in use", peer.0);
        entry.open -= 1;
        self.forget_if_unused(peer.0);
    }
}

/// An `--allowed-origins` pattern: `*`, or `[scheme://]host[:port]` where
/// the host may start with `*.` to match any subdomain (not the domain
/// itself). Matching ignores ASCII case.
#[derive(Clone, Debug)]
struct OriginPattern {
    scheme: Option<String>,
    host: String,
}

impl OriginPattern {
    fn parse(pattern: &str) -> Self {
        let pattern = pattern.trim().to_ascii_lowercase();
        match pattern.split_once("://") {
            Some((scheme, host)) => Self {
                scheme: Some(scheme.to_owned()),
                host: host.trim_end_matches('/').to_owned(),
            },
            None => Self {
                scheme: None,
                host: pattern.trim_end_matches('/').to_owned(),
            },
        }
    }

    fn matches(&self, origin: &str) -> bool {
        if self.host == "*" && self.scheme.is_none() {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        let Some((scheme, host)) = origin.split_once("://") else {
            return false; // includes the opaque origin "null"
        };
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.host,
        }
    }
}

/// The admission rules (from [`crate::Config`]) and the shared counts.
pub struct Admission {
    peers: Mutex<Peers>,
    open: AtomicUsize,
    max_open: usize,
    max_per_ip: usize,
    trusted: Vec<IpNet>,
    origins: Vec<OriginPattern>,
}

/// What the handshake tells about where a connection comes from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forwarding<'a> {
    /// The address from a PROXY header, if one named a client.
    pub proxied: Option<IpAddr>,
    /// The `X-Forwarded-For` header.
    pub forwarded_for: Option<&'a str>,
    /// The `X-Real-IP` header.
    pub real_ip: Option<&'a str>,
}

impl Admission {
    /// Rules: at most `max_open` open connections in the process and
    /// `max_per_ip` per client address (0: no limit), forwarding headers
    /// believed only from `trusted` networks, and `origins` patterns
    /// (empty: any origin).
    pub fn new(
        max_open: usize,
        max_per_ip: usize,
        trusted: Vec<IpNet>,
        origins: &[String],
    ) -> Self {
        Self {
            peers: Mutex::default(),
            open: AtomicUsize::new(0),
            max_open,
            max_per_ip: if max_per_ip == 0 {
                usize::MAX
            } else {
                max_per_ip
            },
            trusted,
            origins: origins.iter().map(|p| OriginPattern::parse(p)).collect(),
        }
    }

    /// The peer table. A panic elsewhere while it was held (each update is
    /// a few counter and map steps, so none is left half done in a way
    /// later calls trip on) does not make every other worker panic in turn.
    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip` is in `--trusted-proxies`.
    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the PROXY header's, else the socket's; then,
    /// if that is a trusted proxy, `X-Real-IP` or the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    ///
    /// # Errors
    /// [`Reject::UntrustedForwarded`] for forwarding headers from an
    /// untrusted peer while `--trusted-proxies` is set (without it the
    /// headers are ignored); [`Reject::BadForwarded`] for a header from a
    /// trusted proxy that does not parse.
    pub fn client_ip(&self, socket: IpAddr, fwd: Forwarding<'_>) -> Result<IpAddr, Reject> {
        let peer = fwd.proxied.unwrap_or(socket);
        if (fwd.forwarded_for.is_none() && fwd.real_ip.is_none()) || self.trusted.is_empty() {
            return Ok(peer);
        }
        if !self.is_trusted(peer) {
            return Err(Reject::UntrustedForwarded);
        }
        let parse = |s: &str| s.trim().parse::<IpAddr>().map_err(|_| Reject::BadForwarded);
        if let Some(real) = fwd.real_ip {
            return parse(real);
        }
        let chain = fwd.forwarded_for.unwrap_or_default();
        let mut client = peer;
        for hop in chain.rsplit(',') {
            client = parse(hop)?;
            if !self.is_trusted(client) {
                break;
            }
        }
        Ok(client)
    }

    /// Whether an `Origin` header passes `--allowed-origins`. Requests
    /// without one (non-browser clients) pass.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            Some(origin) if !self.origins.is_empty() => {
                self.origins.iter().any(|p| p.matches(origin))
            }
            _ => true,
        }
    }

    /// Admits a completed handshake from `client`: counts it as an open
    /// connection of the process and, with a per-address limit, of
    /// `client`. Returns the id to keep for [`Self::closed`]
    /// ([`PeerId::NONE`] without a per-address limit).
    ///
    /// # Errors
    /// [`Reject::PerIpLimit`] or [`Reject::OverCapacity`]; nothing is
    /// counted then.
    pub fn admit(&self, client: IpAddr) -> Result<PeerId, Reject> {
        let mut peers = (self.max_per_ip != usize::MAX).then(|| self.peers());
        let id = peers.as_mut().map(|p| p.intern(client));
        if let (Some(peers), Some(id)) = (peers.as_mut(), id) {
            if peers.entries[id as usize].open as usize >= self.max_per_ip {
                return Err(Reject::PerIpLimit);
            }
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_open {
            self.open.fetch_sub(1, Ordering::AcqRel);
            if let (Some(peers), Some(id)) = (peers.as_mut(), id) {
                peers.forget_if_unused(id);
            }
            return Err(Reject::OverCapacity);
        }
        Ok(match (peers.as_mut(), id) {
            (Some(peers), Some(id)) => {
                peers.entries[id as usize].open += 1;
                PeerId(id)
            }
            _ => PeerId::NONE,
        })
    }

    /// An admitted connection is gone; `peer` is what [`Self::admit`]
    /// returned.
    pub fn closed(&self, peer: PeerId) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if peer != PeerId::NONE {
            self.peers().release(peer);
        }
    }

    /// Admitted connections open now, in the whole process.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A token bucket over one worker's accepts (`--max-handshakes-per-sec`
/// divided among workers). Connections beyond it wait in the listen
/// backlog: the worker arms no accept while the bucket is empty.
pub struct AcceptRate {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl AcceptRate {
    /// `per_sec` accepts a second, and bursts of up to `per_sec` (at least
    /// one). `None`: unlimited.
    pub fn new(per_sec: Option<f64>) -> Self {
        let per_sec = per_sec.unwrap_or(f64::INFINITY);
        Self {
            per_sec,
            burst: per_sec.max(1.0),
            tokens: per_sec.max(1.0),
            at: Instant::now(),
        }
    }

    /// Whole accepts allowed now, after refilling.
    pub fn available(&mut self) -> u32 {
        if self.per_sec.is_infinite() {
            return u32::MAX;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        self.tokens as u32
    }

    /// Spends one accept.
    pub fn take(&mut self) {
        if self.per_sec.is_finite() {
            self.tokens -= 1.0;
        }
    }

    /// How long until the next accept is allowed (for the loop's wait).
    pub fn next_in(&self) -> Option<Duration> {
        (self.per_sec.is_finite() && self.tokens < 1.0)
            .then(|| Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admission(trusted: &[&str]) -> Admission {
        let trusted = trusted.iter().map(|n| n.parse().unwrap()).collect();
        Admission::new(3, 2, trusted, &[])
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let a = admission(&["10.0.0.0/8"]);
        let xff = |v| Forwarding {
            forwarded_for: Some(v),
            ..Forwarding::default()
        };
        let lb = ip("10.1.1.1");
        assert_eq!(a.client_ip(lb, xff("198.51.100.7")), Ok(ip("198.51.100.7")));
        // Right to left, skipping trusted hops; a spoofed left part is ignored.
        assert_eq!(
            a.client_ip(lb, xff("1.1.1.1, 198.51.100.7, 10.2.2.2")),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(a.client_ip(lb, xff("not-an-ip")), Err(Reject::BadForwarded));
        let stranger = ip("203.0.113.5");
        assert_eq!(
            a.client_ip(stranger, xff("1.2.3.4")),
            Err(Reject::UntrustedForwarded)
        );
        assert_eq!(a.client_ip(stranger, Forwarding::default()), Ok(stranger));
        let real = Forwarding {
            real_ip: Some("192.0.2.1"),
            ..Forwarding::default()
        };
        assert_eq!(a.client_ip(lb, real), Ok(ip("192.0.2.1")));
        // A PROXY header's address is the peer the headers are judged by.
        let proxied = Forwarding {
            proxied: Some(stranger),
            ..xff("1.2.3.4")
        };
        assert_eq!(a.client_ip(lb, proxied), Err(Reject::UntrustedForwarded));
        // With no trusted proxies configured, the headers are ignored.
        assert_eq!(
            admission(&[]).client_ip(stranger, xff("1.2.3.4")),
            Ok(stranger)
        );
    }

    #[test]
    fn origin_patterns() {
        let origins = [
            "https://app.example.com".to_owned(),
            "*.example.org".to_owned(),
        ];
        let a = Admission::new(1, 0, Vec::new(), &origins);
        assert!(a.origin_allowed(None));
        assert!(a.origin_allowed(Some("https://APP.example.com")));
        assert!(!a.origin_allowed(Some("http://app.example.com")));
        assert!(!a.origin_allowed(Some("https://app.example.com.evil.net")));
        assert!(a.origin_allowed(Some("http://a.b.example.org")));
        assert!(!a.origin_allowed(Some("https://example.org")));
        assert!(!a.origin_allowed(Some("https://badexample.org")));
        assert!(!a.origin_allowed(Some("null")));
        assert!(Admission::new(1, 0, Vec::new(), &[]).origin_allowed(Some("null")));
    }

    #[test]
    fn per_ip_and_total_limits_and_release() {
        let a = admission(&[]);
        let admitted: Vec<_> = (0..2).map(|_| a.admit(ip("192.0.2.1")).unwrap()).collect();
        assert_eq!(a.admit(ip("192.0.2.1")), Err(Reject::PerIpLimit));
        let other = a.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(a.open(), 3);
        assert_eq!(a.admit(ip("192.0.2.3")), Err(Reject::OverCapacity));
        assert_eq!(a.peers().ids.len(), 2, "a refused address is not kept");
        for peer in admitted.into_iter().chain([other]) {
            a.closed(peer);
        }
        assert_eq!(a.open(), 0);
        assert!(a.peers().ids.is_empty(), "every address released");
    }

    #[test]
    fn without_a_per_ip_limit_no_address_is_kept() {
        let a = Admission::new(10, 0, Vec::new(), &[]);
        let peers: Vec<_> = (1..=5)
            .map(|i| a.admit(IpAddr::from([192, 0, 2, i])).unwrap())
            .collect();
        assert!(peers.iter().all(|&p| p == PeerId::NONE));
        assert!(a.peers().ids.is_empty());
        assert_eq!(a.open(), 5);
        peers.into_iter().for_each(|p| a.closed(p));
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn accept_rate_refills_over_time() {
        let mut rate = AcceptRate::new(Some(10.0));
        assert_eq!(rate.available(), 10);
        for _ in 0..10 {
            rate.take();
        }
        assert_eq!(rate.available(), 0);
        assert!(rate.next_in().unwrap() <= Duration::from_millis(100));
        assert_eq!(AcceptRate::new(None).available(), u32::MAX);
    }
}
