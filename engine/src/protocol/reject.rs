//! Why a request on the WebSocket listener was refused: one HTTP status,
//! one stats label and one complete response per reason (RFC 9110 §15).

/// The `Server` header of refusals (RFC 9110 §10.2.4).
pub const SERVER: &str = "ringcast";

/// Why an opening handshake was refused; each maps to one HTTP status and
/// one stats label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    /// Not a parseable HTTP/1.1 request (400).
    Malformed,
    /// A method other than GET (400).
    NotGet,
    /// No `Host` header (400).
    MissingHost,
    /// No `Upgrade: websocket`, or `Connection` without `Upgrade` (400).
    NotUpgrade,
    /// `Sec-WebSocket-Key` missing, repeated, or not 16 bytes of base64 (400).
    BadKey,
    /// `Sec-WebSocket-Version` other than 13 (426).
    UnsupportedVersion,
    /// Request head over [`super::handshake::MAX_REQUEST_HEAD`] bytes or too many headers (431).
    HeadersTooLarge,
    /// A path that is not a WebSocket endpoint (404).
    NotFound,
    /// A `topic` query parameter that is not a valid topic name (400).
    BadTopic,
    /// The handshake did not complete in time (408).
    Timeout,
    /// `--proxy-protocol` is on and the connection did not start with a
    /// valid PROXY v1 or v2 header (400).
    BadProxyHeader,
    /// `X-Forwarded-For` or `X-Real-IP` from a peer outside
    /// `--trusted-proxies` (403).
    UntrustedForwarded,
    /// `X-Forwarded-For` or `X-Real-IP` that is not a list of IP addresses,
    /// from a trusted proxy (400).
    BadForwarded,
    /// An `Origin` outside `--allowed-origins` (403).
    OriginNotAllowed,
    /// The server holds `--max-connections` open connections (503).
    OverCapacity,
    /// The client address holds `--max-connections-per-ip` (429).
    PerIpLimit,
    /// The server is draining: it takes no new connections (503).
    Draining,
    /// Auth is configured and the token is missing (without
    /// `--allow-anonymous`), malformed, badly signed, expired, not yet
    /// valid, or for another audience or issuer (401, with
    /// `WWW-Authenticate: Bearer error="invalid_token"`).
    Unauthorized,
    /// A topic in the URL that the connection's claims do not allow (403).
    Forbidden,
    /// The connect hook refused the connection (403).
    HookRefused,
    /// The connect hook timed out, failed or could not be reached, or the
    /// server could not take the request (503).
    HookUnavailable,
    /// The request announces a body (`Transfer-Encoding`, or a
    /// `Content-Length` other than 0): no endpoint here takes one, and
    /// its bytes are never read as a request (400).
    BodyNotAllowed,
}

impl Reject {
    /// Every reason, in `repr` order (for per-reason counters).
    pub const ALL: [Reject; 22] = [
        Reject::Malformed,
        Reject::NotGet,
        Reject::MissingHost,
        Reject::NotUpgrade,
        Reject::BadKey,
        Reject::UnsupportedVersion,
        Reject::HeadersTooLarge,
        Reject::NotFound,
        Reject::BadTopic,
        Reject::Timeout,
        Reject::BadProxyHeader,
        Reject::UntrustedForwarded,
        Reject::BadForwarded,
        Reject::OriginNotAllowed,
        Reject::OverCapacity,
        Reject::PerIpLimit,
        Reject::Draining,
        Reject::Unauthorized,
        Reject::Forbidden,
        Reject::HookRefused,
        Reject::HookUnavailable,
        Reject::BodyNotAllowed,
    ];

    /// The HTTP status code sent.
    pub fn status(self) -> u16 {
        match self {
            Reject::UnsupportedVersion => 426,
            Reject::HeadersTooLarge => 431,
            Reject::NotFound => 404,
            Reject::Timeout => 408,
            Reject::UntrustedForwarded
            | Reject::OriginNotAllowed
            | Reject::Forbidden
            | Reject::HookRefused => 403,
            Reject::Unauthorized => 401,
            Reject::OverCapacity | Reject::Draining | Reject::HookUnavailable => 503,
            Reject::PerIpLimit => 429,
            _ => 400,
        }
    }

    /// Stable snake_case name, used in stats and logs.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::NotGet => "not_get",
            Reject::MissingHost => "missing_host",
            Reject::NotUpgrade => "not_upgrade",
            Reject::BadKey => "bad_key",
            Reject::UnsupportedVersion => "unsupported_version",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::NotFound => "not_found",
            Reject::BadTopic => "bad_topic",
            Reject::Timeout => "timeout",
            Reject::BadProxyHeader => "bad_proxy_header",
            Reject::UntrustedForwarded => "untrusted_forwarded",
            Reject::BadForwarded => "bad_forwarded",
            Reject::OriginNotAllowed => "origin_not_allowed",
            Reject::OverCapacity => "over_capacity",
            Reject::PerIpLimit => "per_ip_limit",
            Reject::Draining => "draining",
            Reject::Unauthorized => "unauthorized",
            Reject::Forbidden => "forbidden",
            Reject::HookRefused => "hook_refused",
            Reject::HookUnavailable => "hook_unavailable",
            Reject::BodyNotAllowed => "body_not_allowed",
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Reject::Malformed => "not a valid HTTP/1.1 request",
            Reject::NotGet => "a WebSocket handshake must use GET",
            Reject::MissingHost => "missing Host header",
            Reject::NotUpgrade => "expected Upgrade: websocket and Connection: Upgrade",
            Reject::BadKey => "Sec-WebSocket-Key must be 16 bytes in base64",
            Reject::UnsupportedVersion => "only Sec-WebSocket-Version 13 is supported",
            Reject::HeadersTooLarge => "request headers too large",
            Reject::NotFound => "no WebSocket endpoint at this path",
            Reject::BadTopic => super::names::NAME_RULE,
            Reject::Timeout => "handshake not completed in time",
            Reject::BadProxyHeader => "expected a valid PROXY protocol v1 or v2 header",
            Reject::UntrustedForwarded => "forwarding headers from an untrusted peer",
            Reject::BadForwarded => "X-Forwarded-For or X-Real-IP is not a list of IP addresses",
            Reject::OriginNotAllowed => "origin not allowed",
            Reject::OverCapacity => "server at its connection limit, retry later",
            Reject::PerIpLimit => "too many connections from this address, retry later",
            Reject::Draining => "server is draining, connect again",
            Reject::Unauthorized => "a valid token is required",
            Reject::Forbidden => "the token does not allow this topic",
            Reject::HookRefused => "refused by the application",
            Reject::HookUnavailable => "the application did not answer, retry later",
            Reject::BodyNotAllowed => "a request here carries no body",
        }
    }

    /// Seconds a client is asked to wait before retrying (`Retry-After`,
    /// RFC 9110 §10.2.3), for refusals that are about load, not the request.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Reject::OverCapacity | Reject::Draining | Reject::HookUnavailable => Some(5),
            Reject::PerIpLimit => Some(10),
            _ => None,
        }
    }

    /// The complete HTTP response, ending with `Connection: close`, with
    /// `Server: ringcast` (so that a second server started on the same
    /// address can tell who answers there; no version is given away).
    pub fn response(self) -> Vec<u8> {
        let status = self.status();
        let phrase = match status {
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            408 => "Request Timeout",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Bad Request",
        };
        let extra = match (self, self.retry_after()) {
            (Reject::UnsupportedVersion, _) => "Sec-WebSocket-Version: 13\r\n".to_owned(),
            (Reject::Unauthorized, _) => {
                "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n".to_owned()
            }
            (_, Some(seconds)) => format!("Retry-After: {seconds}\r\n"),
            _ => String::new(),
        };
        let body = self.explanation();
        format!(
            "HTTP/1.1 {status} {phrase}\r\nServer: {SERVER}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}\n",
            body.len() + 1
        )
        .into_bytes()
    }
}
