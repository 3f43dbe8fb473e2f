//! The opening handshake (RFC 6455 §4.2): parse the client's HTTP/1.1
//! upgrade request, compute `Sec-WebSocket-Accept`, and write the 101 or
//! error response.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

pub use super::extension::MAX_EXTENSION_HEADERS;
pub use super::reject::{Reject, SERVER};

/// Largest request head (request line and headers) accepted, in bytes.
/// A larger one is answered with 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most request headers accepted; more are answered with 431.
const MAX_HEADERS: usize = 64;

/// Most `Sec-WebSocket-Protocol` header lines considered.
const MAX_PROTOCOL_HEADERS: usize = 4;

/// RFC 6455 §1.3: appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A complete upgrade request. The WebSocket headers are checked by
/// [`Request::upgrade`], so that a caller can route on the path first.
#[derive(Debug)]
pub struct Request<'a> {
    /// Request path, without the query (e.g. `/ws`).
    pub path: &'a str,
    /// Query string after `?`, if any, undecoded.
    pub query: Option<&'a str>,
    /// The `Origin` header (RFC 6455 §4.1, sent by browsers), if any.
    pub origin: Option<&'a str>,
    /// `X-Forwarded-For`, if any (several lines are refused as malformed).
    pub forwarded_for: Option<&'a str>,
    /// `X-Real-IP`, if any.
    pub real_ip: Option<&'a str>,
    /// `Authorization`, if any (several lines are refused as malformed).
    pub authorization: Option<&'a str>,
    /// The first `Cookie` header, if any.
    pub cookie: Option<&'a str>,
    /// `Last-Event-ID` (HTML §9.2.4), sent by an `EventSource` that
    /// reconnects to an SSE stream, if any.
    pub last_event_id: Option<&'a str>,
    /// The first `User-Agent` header, if any (for the connect hook).
    pub user_agent: Option<&'a str>,
    /// The head announces a body: `Transfer-Encoding` (any), or a
    /// `Content-Length` other than 0 (RFC 9112 §6.3). Refused by every
    /// endpoint ([`Reject::BodyNotAllowed`]).
    pub body: bool,
    upgrade: Result<&'a str, Reject>,
    protocols: [&'a str; MAX_PROTOCOL_HEADERS],
    /// `Sec-WebSocket-Extensions` lines (RFC 6455 §9.1), the first
    /// [`MAX_EXTENSION_HEADERS`]; empty strings beyond those received.
    pub extensions: [&'a str; MAX_EXTENSION_HEADERS],
}

/// A verified upgrade: what the 101 response needs.
#[derive(Debug)]
pub struct Upgrade<'a> {
    /// The client's `Sec-WebSocket-Key`.
    pub key: &'a str,
    /// The subprotocol chosen, if any.
    pub protocol: Option<&'a str>,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses the request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, else the request and the
/// number of bytes it took (bytes after it are the first frames).
///
/// # Errors
/// [`Reject::HeadersTooLarge`] once the head passes [`MAX_REQUEST_HEAD`]
/// bytes or 64 headers; [`Reject::Malformed`] for bad HTTP or a version
/// other than 1.1; [`Reject::NotGet`] for another method.
pub fn parse<'a>(buf: &'a [u8]) -> Result<Option<(Request<'a>, usize)>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_REQUEST_HEAD => n,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return Err(Reject::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Reject::Malformed),
    };
    if req.version != Some(1) {
        return Err(Reject::Malformed);
    }
    if req.method != Some("GET") {
        return Err(Reject::NotGet);
    }
    let target = req.path.ok_or(Reject::Malformed)?;
    if !target.starts_with('/') {
        return Err(Reject::Malformed);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    let (mut host, mut upgrade, mut connection, mut version) = (false, false, false, None);
    let mut key: Option<&[u8]> = None;
    let mut key_count = 0;
    let mut protocols = [""; MAX_PROTOCOL_HEADERS];
    let mut protocol_count = 0;
    let mut extensions = [""; MAX_EXTENSION_HEADERS];
    let mut extension_count = 0;
    let (mut origin, mut forwarded_for, mut real_ip) = (None, None, None);
    let (mut authorization, mut cookie, mut user_agent) = (None, None, None);
    let mut last_event_id = None;
    let (mut body, mut content_length) = (false, None);
    let text = |value: &'a [u8]| std::str::from_utf8(value).map_err(|_| Reject::Malformed);
    // One value per header: a repeated one would let a client hide behind
    // a proxy's line.
    let once = |slot: &mut Option<&'a str>, value: &'a [u8]| -> Result<(), Reject> {
        match slot.replace(text(value)?.trim()) {
            None => Ok(()),
            Some(_) => Err(Reject::Malformed),
        }
    };
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("origin") {
            once(&mut origin, h.value)?;
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            once(&mut forwarded_for, h.value)?;
        } else if name.eq_ignore_ascii_case("x-real-ip") {
            once(&mut real_ip, h.value)?;
        } else if name.eq_ignore_ascii_case("authorization") {
            once(&mut authorization, h.value)?;
        } else if name.eq_ignore_ascii_case("last-event-id") {
            once(&mut last_event_id, h.value)?;
        } else if name.eq_ignore_ascii_case("cookie") {
            if cookie.is_none() {
                cookie = Some(text(h.value)?.trim());
            }
        } else if name.eq_ignore_ascii_case("user-agent") {
            if user_agent.is_none() {
                user_agent = std::str::from_utf8(h.value).ok().map(str::trim);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 §6.3: a repeated or invalid length is an error.
            let value = h.value.trim_ascii();
            if content_length.is_some() || value.is_empty() || !value.iter().all(u8::is_ascii_digit)
            {
                return Err(Reject::Malformed);
            }
            content_length = Some(value);
            body |= value.iter().any(|&b| b != b'0');
        } else if name.eq_ignore_ascii_case("host") {
            host = !h.value.trim_ascii().is_empty();
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(h.value.trim_ascii());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(h.value.trim_ascii());
            key_count += 1;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions")
            && extension_count < MAX_EXTENSION_HEADERS
        {
            if let Ok(value) = std::str::from_utf8(h.value) {
                extensions[extension_count] = value;
                extension_count += 1;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol")
            && protocol_count < MAX_PROTOCOL_HEADERS
        {
            if let Ok(value) = std::str::from_utf8(h.value) {
                protocols[protocol_count] = value;
                protocol_count += 1;
            }
        }
    }
    let upgrade = if !host {
        Err(Reject::MissingHost)
    } else if !upgrade || !connection {
        Err(Reject::NotUpgrade)
    } else if version != Some(b"13") {
        Err(Reject::UnsupportedVersion)
    } else {
        match key {
            Some(k) if key_count == 1 && is_valid_key(k) => {
                Ok(std::str::from_utf8(k).expect("base64 is ASCII"))
            }
            _ => Err(Reject::BadKey),
        }
    };
    Ok(Some((
        Request {
            path,
            query,
            origin,
            forwarded_for,
            real_ip,
            authorization,
            cookie,
            last_event_id,
            user_agent,
            body,
            upgrade,
            protocols,
            extensions,
        },
        head_len,
    )))
}

fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    matches!(BASE64.decode_slice(key, &mut decoded), Ok(16))
}

impl<'a> Request<'a> {
    /// Checks the WebSocket headers (RFC 6455 §4.2.1) and picks the first
    /// subprotocol the client offers that is in `supported`.
    ///
    /// # Errors
    /// [`Reject::MissingHost`], [`Reject::NotUpgrade`],
    /// [`Reject::UnsupportedVersion`] or [`Reject::BadKey`].
    pub fn upgrade(&self, supported: &[String]) -> Result<Upgrade<'a>, Reject> {
        let key = self.upgrade?;
        let protocol = self
            .protocols
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .find(|offered| supported.iter().any(|s| s == offered));
        Ok(Upgrade { key, protocol })
    }
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2): base64 of the
/// SHA-1 of the key and the GUID; always 28 bytes.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

/// The 101 Switching Protocols response for a verified upgrade, with the
/// `Sec-WebSocket-Extensions` value `extensions` if one was agreed (see
/// [`super::extension::Agreed::response`]).
pub fn accept_response(upgrade: &Upgrade<'_>, extensions: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(upgrade.key)
    );
    if let Some(protocol) = upgrade.protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(protocol);
        out.push_str("\r\n");
    }
    if let Some(extensions) = extensions {
        out.push_str("Sec-WebSocket-Extensions: ");
        out.push_str(extensions);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n";

    #[test]
    fn rfc_accept_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_a_good_request_and_picks_a_protocol() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80]); // a frame right behind the head
        let (req, used) = parse(&bytes).unwrap().unwrap();
        assert_eq!(used, GOOD.len());
        assert_eq!((req.path, req.query), ("/ws", Some("topic=a")));
        assert_eq!((req.authorization, req.cookie), (None, None));
        let up = req.upgrade(&["superchat".into()]).unwrap();
        assert_eq!(up.protocol, Some("superchat"));
        assert!(req.upgrade(&[]).unwrap().protocol.is_none());
        let response = String::from_utf8(accept_response(&up, None)).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 "));
        assert!(response.contains("Sec-WebSocket-Protocol: superchat\r\n"));
        assert!(!response.contains("Extensions"));
    }

    #[test]
    fn extension_offers_are_kept_for_negotiation_and_answered() {
        let request = GOOD.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: x-foo\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        );
        let (req, _) = parse(request.as_bytes()).unwrap().unwrap();
        assert_eq!(
            req.extensions,
            [
                "x-foo",
                "permessage-deflate; client_max_window_bits",
                "",
                ""
            ]
        );
        let up = req.upgrade(&[]).unwrap();
        let response = String::from_utf8(accept_response(&up, Some("permessage-deflate"))).unwrap();
        assert!(response.ends_with("\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert!(parse(&GOOD.as_bytes()[..GOOD.len() - 1]).unwrap().is_none());
    }

    fn verdict(request: &str) -> Reject {
        match parse(request.as_bytes()) {
            Err(r) => r,
            Ok(Some((req, _))) => req.upgrade(&[]).unwrap_err(),
            Ok(None) => panic!("incomplete"),
        }
    }

    #[test]
    fn each_bad_header_gets_its_reason() {
        let cases = [
            ("GET", "POST", Reject::NotGet),
            ("HTTP/1.1", "HTTP/1.0", Reject::Malformed),
            ("Host: x\r\n", "", Reject::MissingHost),
            ("WebSocket", "h2c", Reject::NotUpgrade),
            ("keep-alive, Upgrade", "close", Reject::NotUpgrade),
            ("Version: 13", "Version: 8", Reject::UnsupportedVersion),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", Reject::BadKey),
            ("Sec-WebSocket-Key", "X-Key", Reject::BadKey),
        ];
        for (from, to, reason) in cases {
            assert_eq!(verdict(&GOOD.replace(from, to)), reason, "{from} -> {to}");
        }
        assert_eq!(verdict("GARBAGE\r\n\r\n"), Reject::Malformed);
    }

    #[test]
    fn oversized_head_is_refused_even_before_it_ends() {
        let big = format!(
            "GET /ws HTTP/1.1\r\nX-Big: {}\r\n",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        assert_eq!(parse(big.as_bytes()).unwrap_err(), Reject::HeadersTooLarge);
        let response = String::from_utf8(Reject::UnsupportedVersion.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(response.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn a_body_is_noticed_and_a_bad_length_refused() {
        let with = |header: &str| GOOD.replace("Host: x\r\n", &format!("Host: x\r\n{header}"));
        let body = |header: &str| parse(with(header).as_bytes()).map(|r| r.unwrap().0.body);
        assert_eq!(body(""), Ok(false));
        assert_eq!(body("Content-Length: 0\r\n"), Ok(false));
        assert_eq!(body("Content-Length: 12\r\n"), Ok(true));
        assert_eq!(body("Transfer-Encoding: chunked\r\n"), Ok(true));
        assert_eq!(body("Content-Length: -1\r\n"), Err(Reject::Malformed));
        let twice = "Content-Length: 0\r\nContent-Length: 0\r\n";
        assert_eq!(body(twice), Err(Reject::Malformed));
        let response = String::from_utf8(Reject::BodyNotAllowed.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\nServer: ringcast\r\n"));
    }

    #[test]
    fn exposes_the_credential_headers() {
        let request = GOOD.replace(
            "Host: x\r\n",
            "Host: x\r\nAuthorization: Bearer a.b.c\r\nCookie: x=1; ringcast_token=t\r\n",
        );
        let (req, _) = parse(request.as_bytes()).unwrap().unwrap();
        assert_eq!(req.authorization, Some("Bearer a.b.c"));
        assert_eq!(req.cookie, Some("x=1; ringcast_token=t"));
        let twice = request.replace("Cookie", "Authorization: Basic x\r\nCookie");
        assert_eq!(parse(twice.as_bytes()).unwrap_err(), Reject::Malformed);
        let response = String::from_utf8(Reject::Unauthorized.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(response.contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"));
    }
}
