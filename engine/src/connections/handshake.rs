//! A handshaking connection's bytes: the PROXY header, the upgrade (or
//! SSE) request, routing, admission, and the switch to the transport:
//! WebSocket frames, or an SSE stream; or the answer to a request for a
//! static file.

use super::io::{Io, Limits};
use super::opening::{Accepted, HookRequest, Parked};
use super::transport::Opening;
use super::Connections;
use crate::admission::Forwarding;
use crate::conn::{Deflate, Endpoint, Phase, Route};
use crate::protocol::deflate::FULL_WINDOW_BITS;
use crate::protocol::extension;
use crate::protocol::handshake::{self, Reject, Request};
use crate::protocol::proxy;
use crate::protocol::{sse, v1};
use crate::session::{self, Identity};
use crate::stats::WorkerStats;
use crate::topics;
use crate::upstream::{Connect, Event, Origin, Verdict};
use bytes::Bytes;
use std::net::IpAddr;

/// What a complete request gets.
enum Outcome {
    /// A connection opens.
    Open(Box<Accepted>),
    /// This response (a static file), then the connection closes.
    Respond(Bytes),
}

/// What [`route`] decides for a request to an endpoint.
struct Routed {
    route: Route,
    topics: Vec<String>,
    response: Vec<u8>,
    position: Option<String>,
    join_leave: bool,
}

/// What [`Io::check`] found a request's client to be.
pub(super) struct Checked {
    /// The client's address (after trusted forwarding headers).
    pub client: IpAddr,
    /// The verified token, if auth is on and the client sent one.
    pub identity: Option<Identity>,
}

impl Io {
    /// Parses what a handshaking connection sent so far: the PROXY header
    /// (with `--proxy-protocol`), then the upgrade request; routes it and
    /// applies the admission rules. `Ok(None)` while incomplete; else the
    /// verdict and the bytes after the request (the first frames).
    fn handshake(&self, buf: &[u8], slot: u32) -> Result<Option<(Outcome, Vec<u8>)>, Reject> {
        let socket = self.handshaking.get(&slot).and_then(|h| h.peer);
        let (proxied, buf) = if self.limits.proxy_protocol {
            match proxy::parse(buf) {
                Ok(None) => return Ok(None),
                Ok(Some((source, used))) => match source {
                    proxy::Source::Client(addr) => (Some(addr.ip()), &buf[used..]),
                    proxy::Source::Local => (None, &buf[used..]),
                },
                Err(proxy::Malformed(why)) => {
                    tracing::debug!(peer = ?socket, why, "bad PROXY header");
                    return Err(Reject::BadProxyHeader);
                }
            }
        } else {
            (None, buf)
        };
        let Some((req, used)) = handshake::parse(buf)? else {
            return Ok(None);
        };
        if req.body {
            return Err(Reject::BodyNotAllowed);
        }
        if req.path != self.limits.path {
            if let Some((_, response)) = self.limits.statics.iter().find(|(p, _)| p == req.path) {
                return Ok(Some((Outcome::Respond(response.clone()), Vec::new())));
            }
        }
        let Routed {
            route,
            topics,
            response,
            position,
            join_leave,
        } = route(&req, &self.limits)?;
        let transport = match proxied.or(socket) {
            Some(ip) => ip,
            None => return Err(Reject::Malformed),
        };
        let Checked { client, identity } = self.check(&req, &topics, transport)?;
        let peer = self.admission.admit(client)?;
        let hook = self.limits.connect_hook.then(|| HookRequest {
            headers: [
                ("cookie", req.cookie),
                ("origin", req.origin),
                ("user-agent", req.user_agent),
                ("authorization", req.authorization),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?.to_owned())))
            .collect(),
            query: req.query.unwrap_or("").to_owned(),
        });
        let accepted = Accepted {
            route,
            topics,
            response,
            peer,
            client,
            transport,
            identity,
            position,
            join_leave,
            origin: (route.endpoint() == Endpoint::Poll)
                .then(|| req.origin.map(str::to_owned))
                .flatten(),
            hook,
        };
        Ok(Some((
            Outcome::Open(Box::new(accepted)),
            buf[used..].to_vec(),
        )))
    }
}

impl Io {
    /// The checks every request gets, the first on a connection and each
    /// later one on a keep-alive long-poll connection alike: no body,
    /// `Origin`, forwarding headers (judged by `transport`, the PROXY
    /// header's source or the socket's peer), drain, the token, and each
    /// topic's permission. Admission counts are the caller's.
    ///
    /// # Errors
    /// The [`Reject`] of the first check that failed.
    pub(super) fn check(
        &self,
        req: &Request<'_>,
        topics: &[String],
        transport: IpAddr,
    ) -> Result<Checked, Reject> {
        if req.body {
            return Err(Reject::BodyNotAllowed);
        }
        if !self.admission.origin_allowed(req.origin) {
            return Err(Reject::OriginNotAllowed);
        }
        let fwd = Forwarding {
            proxied: None,
            forwarded_for: req.forwarded_for,
            real_ip: req.real_ip,
        };
        let client = self.admission.client_ip(transport, fwd)?;
        if self.draining {
            return Err(Reject::Draining);
        }
        let identity = self.authenticate(req, client)?;
        let (user, grant) = match &identity {
            Some(id) => (id.user.as_deref(), Some(&id.grant)),
            None => (None, None),
        };
        if !topics
            .iter()
            .all(|t| session::permissions::may_subscribe(user, grant, t))
        {
            return Err(Reject::Forbidden);
        }
        Ok(Checked { client, identity })
    }

    /// Verifies the request's token while auth is on. `Ok(None)`: auth is
    /// off, or no token and `--allow-anonymous`.
    ///
    /// # Errors
    /// [`Reject::Unauthorized`] for a missing or invalid token; why is
    /// logged at debug level, never the token.
    fn authenticate(&self, req: &Request<'_>, client: IpAddr) -> Result<Option<Identity>, Reject> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        match session::token(req) {
            Some(token) => auth.verify(&token).map(Some).map_err(|why| {
                tracing::debug!(peer = %client, why, "token refused");
                Reject::Unauthorized
            }),
            None if auth.allow_anonymous() => Ok(None),
            None => {
                tracing::debug!(peer = %client, "no token");
                Err(Reject::Unauthorized)
            }
        }
    }
}

/// Decides what a complete request gets: the endpoint and
/// permessage-deflate mode, the topics to subscribe, the response that
/// opens it (101, the SSE stream's head, or none for a poll) and where an
/// SSE stream or a poll resumes.
fn route(req: &Request<'_>, limits: &Limits) -> Result<Routed, Reject> {
    let endpoint = if req.path == limits.path {
        Endpoint::PubSub
    } else if limits.echo && req.path == "/echo" {
        Endpoint::Echo
    } else if limits.sse_path.as_deref() == Some(req.path) {
        Endpoint::Sse
    } else if limits.poll_path.as_deref() == Some(req.path) {
        Endpoint::Poll
    } else {
        return Err(Reject::NotFound);
    };
    let mut topics = Vec::new();
    let mut position = None;
    match endpoint {
        Endpoint::PubSub => topics = query_topics(req.query, "", &mut None)?,
        Endpoint::Sse => {
            position = req.last_event_id.map(str::to_owned);
            topics = query_topics(req.query, "last_event_id", &mut position)?;
        }
        Endpoint::Poll => topics = query_topics(req.query, "since", &mut position)?,
        _ => {}
    }
    if endpoint == Endpoint::Poll {
        // The answer comes once messages are there (`poll.rs`).
        return Ok(Routed {
            route: Route::new(endpoint, Deflate::Off),
            topics,
            response: Vec::new(),
            position,
            join_leave: false,
        });
    }
    if endpoint == Endpoint::Sse {
        return Ok(Routed {
            route: Route::new(endpoint, Deflate::Off),
            topics,
            response: sse::response_head(req.origin),
            position,
            join_leave: query_flag(req.query, "join_leave"),
        });
    }
    let upgrade = match endpoint {
        Endpoint::PubSub => req.upgrade(&limits.topic_subprotocols)?,
        _ => req.upgrade(&limits.subprotocols)?,
    };
    let endpoint = match upgrade.protocol {
        Some(v1::NAME) if endpoint == Endpoint::PubSub => Endpoint::PubSubV1,
        _ => endpoint,
    };
    let agreed = limits
        .compression
        .then(|| extension::negotiate(req.extensions))
        .flatten();
    let deflate = match agreed {
        None => Deflate::Off,
        Some(a) if a.server_max_window_bits == FULL_WINDOW_BITS => Deflate::Full,
        Some(_) => Deflate::Narrow,
    };
    let extensions = agreed.map(|a| a.response());
    Ok(Routed {
        route: Route::new(endpoint, deflate),
        topics,
        response: handshake::accept_response(&upgrade, extensions.as_deref()),
        position: None,
        join_leave: false,
    })
}

/// Whether the query sets `name` to `1` or `true`.
fn query_flag(query: Option<&str>, name: &str) -> bool {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(key, value)| key == name && matches!(&*value, "1" | "true"))
}

/// The `topic` parameters of a query (at most
/// [`topics::MAX_TOPICS_PER_CONNECTION`], each a valid name), and the
/// first value of `position` (`last_event_id` or `since`; an empty name
/// reads none) into `found` unless it holds one already.
///
/// # Errors
/// [`Reject::BadTopic`].
pub(super) fn query_topics(
    query: Option<&str>,
    position: &str,
    found: &mut Option<String>,
) -> Result<Vec<String>, Reject> {
    let mut topics = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "topic" {
            if !topics::is_valid_name(&value) || topics.len() == topics::MAX_TOPICS_PER_CONNECTION {
                return Err(Reject::BadTopic);
            }
            topics.push(value.into_owned());
        } else if !position.is_empty() && key == position && found.is_none() {
            *found = Some(value.into_owned());
        }
    }
    Ok(topics)
}

impl Connections {
    pub(super) fn on_handshake_bytes(&mut self, slot: u32, data: &mut [u8]) {
        let conn = self.table.get_mut(slot).expect("live slot");
        if let Some(parked) = self
            .io
            .handshaking
            .get_mut(&slot)
            .and_then(|h| h.parked.as_mut())
        {
            // Frames sent before the 101: kept for when it opens.
            if parked.rest.len() + data.len() > self.io.limits.max_message + 14 {
                return self.io.reject(conn, slot, Reject::Malformed);
            }
            parked.rest.extend_from_slice(data);
            return;
        }
        let mut head = self
            .io
            .handshaking
            .get_mut(&slot)
            .map(|h| std::mem::take(&mut h.head))
            .unwrap_or_default();
        // The usual request arrives whole and is parsed in the kernel's
        // buffer; only one that spans receives is copied.
        let verdict = if head.is_empty() {
            self.io.handshake(data, slot)
        } else {
            head.extend_from_slice(data);
            self.io.handshake(&head, slot)
        };
        let (mut accepted, rest) = match verdict {
            Ok(None) => {
                if head.is_empty() {
                    head = data.to_vec();
                }
                self.io.handshaking.entry(slot).or_default().head = head;
                return;
            }
            Err(reason) => return self.io.reject(conn, slot, reason),
            Ok(Some((Outcome::Respond(response), _))) => {
                return self.io.respond(conn, slot, response)
            }
            Ok(Some((Outcome::Open(accepted), rest))) => (*accepted, rest),
        };
        let Some(hook) = accepted.hook.take() else {
            self.io.handshaking.remove(&slot);
            return self.open(slot, accepted, rest);
        };
        let event = Event::Connect(Connect {
            origin: Origin {
                worker: self.io.worker as u32,
                slot,
                gen: conn.gen,
            },
            ip: accepted.client,
            headers: hook.headers,
            query: hook.query,
            user: accepted
                .identity
                .as_ref()
                .and_then(|id| id.user.as_deref())
                .map(str::to_owned),
        });
        let handshaking = self.io.handshaking.entry(slot).or_default();
        handshaking.parked = Some(Box::new(Parked { accepted, rest }));
        let sent = match &self.duplex.settings.upstream {
            Some(upstream) => upstream.send(event).is_ok(),
            None => false,
        };
        if !sent {
            WorkerStats::add(&self.io.stats().upstream_refused, 1);
            self.io.reject(conn, slot, Reject::HookUnavailable);
        }
    }

    /// The connect hook answered for the handshake parked in `slot` (if it
    /// is still that tenant's, and still parked: a handshake that timed
    /// out meanwhile got its 408).
    pub fn admit(&mut self, slot: u32, gen: u32, verdict: Verdict) {
        let Some(conn) = self.table.get_mut(slot).filter(|c| c.gen == gen) else {
            return;
        };
        let parked = self
            .io
            .handshaking
            .get(&slot)
            .is_some_and(|h| h.parked.is_some());
        if conn.phase() != Phase::Handshake || !parked {
            return;
        }
        let (user, grant, topics) = match verdict {
            Verdict::Admit {
                user,
                grant,
                topics,
            } => (user, grant, topics),
            Verdict::Refuse => return self.io.reject(conn, slot, Reject::HookRefused),
            Verdict::Unavailable => return self.io.reject(conn, slot, Reject::HookUnavailable),
        };
        if self.io.draining {
            return self.io.reject(conn, slot, Reject::Draining);
        }
        let mut handshaking = self.io.handshaking.remove(&slot).expect("parked");
        let Parked { mut accepted, rest } = *handshaking.parked.take().expect("parked");
        let expires = accepted.identity.as_ref().and_then(|id| id.expires);
        accepted.identity = Some(Identity {
            user: user.map(Into::into),
            grant,
            expires,
        });
        for topic in topics {
            if !accepted.topics.contains(&topic)
                && accepted.topics.len() < topics::MAX_TOPICS_PER_CONNECTION
            {
                accepted.topics.push(topic);
            }
        }
        self.open(slot, accepted, rest);
    }

    /// Sends the 101 and opens the connection: session, timers, the
    /// topics named in the request (or by the connect hook), then the
    /// frames that came with the request.
    fn open(&mut self, slot: u32, accepted: Accepted, rest: Vec<u8>) {
        let conn = self.table.get_mut(slot).expect("live slot");
        let Accepted {
            route,
            topics,
            response,
            peer,
            client,
            transport,
            identity,
            position,
            join_leave,
            origin,
            hook: _,
        } = accepted;
        self.io.admitted(slot, peer);
        if let Some(identity) = identity {
            conn.expires = self.io.expiry_tick(identity.expires);
            conn.session = self
                .sessions
                .attach(identity.user.as_deref(), identity.grant, slot);
        }
        let (endpoint, deflate) = (route.endpoint(), route.deflate());
        tracing::debug!(slot, peer = %client, ?endpoint, ?deflate, "connection open");
        if !response.is_empty() {
            self.io.enqueue(conn, Bytes::from(response));
        }
        conn.route = Some(route);
        if deflate != Deflate::Off {
            WorkerStats::add(&self.io.stats().compressed_connections, 1);
        }
        conn.enter(Phase::Open, self.io.wheel.now());
        let at =
            (conn.phase_since + self.io.limits.ping.min(self.io.limits.idle)).min(conn.expires);
        // The handshake's entry, if due first, stays the live one: it fires
        // in the open phase and the transport schedules what is due next.
        // One entry per connection instead of two until it fires.
        if at < conn.timer_at {
            self.io.schedule(conn, slot, at);
        }
        self.io.mark_flush(conn, slot);
        let opening = Opening {
            topics,
            position,
            join_leave,
            origin,
            addresses: (transport, client),
            rest,
        };
        self.open_transport(slot, endpoint, opening);
    }
}
