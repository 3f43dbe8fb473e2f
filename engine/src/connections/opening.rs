//! What a connection holds while in its opening handshake, beside the
//! table: the request bytes while they span receives, and a handshake
//! that passed every check and waits for the connect hook. Dropped once
//! the handshake ends, so an open connection keeps none of it.

use crate::admission::PeerId;
use crate::conn::Route;
use crate::session::Identity;
use std::net::IpAddr;

/// A handshake that passed every check.
pub(super) struct Accepted {
    pub(super) route: Route,
    pub(super) topics: Vec<String>,
    pub(super) response: Vec<u8>,
    pub(super) peer: PeerId,
    pub(super) client: IpAddr,
    /// The address forwarding headers are judged by: the PROXY header's
    /// source, else the socket's peer (kept for a poll's next requests).
    pub(super) transport: IpAddr,
    /// The verified token, if auth is on and the client sent one.
    pub(super) identity: Option<Identity>,
    /// Where the client resumes: an SSE request's `Last-Event-ID` (header,
    /// or `last_event_id` in the query), a poll's `since`.
    pub(super) position: Option<String>,
    /// An SSE request's `join_leave=1`: push the presence joins and
    /// leaves of its topics.
    pub(super) join_leave: bool,
    /// A poll's `Origin`, for the CORS headers of its answers.
    pub(super) origin: Option<String>,
    /// With the connect hook on: what the hook is told of the request.
    pub(super) hook: Option<HookRequest>,
}

/// The parts of an upgrade request the connect hook sees.
pub(super) struct HookRequest {
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) query: String,
}

/// A handshake waiting for the connect hook's answer: its 101 is not sent
/// yet, and its deadline still runs.
pub(super) struct Parked {
    pub(super) accepted: Accepted,
    /// Bytes received after the request (the first frames), kept until
    /// the connection opens; at most the largest message.
    pub(super) rest: Vec<u8>,
}

/// A connection in its opening handshake.
#[derive(Default)]
pub(super) struct Handshaking {
    /// The socket's peer address (`None` if the accept reported none):
    /// what forwarding headers are judged by and what reject logs name.
    pub(super) peer: Option<IpAddr>,
    /// Request bytes received so far, while the request spans receives.
    pub(super) head: Vec<u8>,
    /// A handshake that passed every check and waits for the connect
    /// hook.
    pub(super) parked: Option<Box<Parked>>,
}
