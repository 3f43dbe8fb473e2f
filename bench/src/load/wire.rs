//! What a client puts on the wire and checks coming back: the opening
//! handshake (RFC 6455 §4.1), and the keys for it and for masking.
//!
//! A load generator shortcut, stated here once: each worker draws one
//! random `Sec-WebSocket-Key` and one random masking key at start, and all
//! its connections and frames reuse them, so that no request or frame is
//! built per connection. A server cannot tell; it validates and unmasks
//! exactly as it would for fresh keys.

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use ringcast_engine::protocol::frame::encode_masked;
use ringcast_engine::protocol::handshake::accept_key;
use ringcast_engine::OpCode;
use std::path::Path;

/// A masked client frame with FIN set (RFC 6455 §5.2, §5.3).
pub fn client_frame(opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    encode_masked(0x80 | opcode as u8, payload, key)
}

/// `n` random bytes from the kernel (`getrandom(2)`).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into `out[filled..]`.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        assert!(
            n > 0,
            "getrandom failed: {}",
            std::io::Error::last_os_error()
        );
        filled += n as usize;
    }
    out
}

/// One worker's opening handshake: the request bytes and the
/// `Sec-WebSocket-Accept` value a server must answer with.
pub struct Handshake {
    /// The complete HTTP/1.1 upgrade request.
    pub request: Vec<u8>,
    expected_accept: String,
    /// permessage-deflate was offered, and must be accepted.
    deflate: bool,
}

/// The offer a browser sends (RFC 7692 §7.1).
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Why a handshake response was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BadResponse {
    /// Not HTTP, or malformed headers.
    Malformed,
    /// A status other than 101 (200 for SSE), e.g. 503 from a full server.
    Status(u16),
    /// 101 with a missing or wrong `Sec-WebSocket-Accept`.
    AcceptKey,
    /// permessage-deflate was offered and the server declined it.
    NoDeflate,
}

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed handshake response"),
            Self::Status(code) => write!(f, "HTTP {code}"),
            Self::AcceptKey => f.write_str("wrong Sec-WebSocket-Accept"),
            Self::NoDeflate => f.write_str("permessage-deflate declined"),
        }
    }
}

/// Mints a distinct HS256 token for each connection, for a server with
/// connection auth on (`ringcast serve --jwt-hmac-secret-file`): its own
/// user (`sub`), valid for a day.
#[derive(Clone)]
pub struct Tokens {
    key: EncodingKey,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(HS256)")
    }
}

impl Tokens {
    /// Reads the HMAC secret the server verifies with (trailing whitespace
    /// ignored, as the server does).
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or is empty.
    pub fn from_secret_file(path: &Path) -> Result<Self, String> {
        let secret = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let secret = secret.trim_ascii_end();
        if secret.is_empty() {
            return Err(format!("{}: empty", path.display()));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret),
        })
    }

    /// A token for user `sub`.
    pub fn mint(&self, sub: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 24 * 3600;
        let claims = serde_json::json!({ "sub": sub, "exp": exp });
        jsonwebtoken::encode(&Header::default(), &claims, &self.key).expect("HS256 signs")
    }
}

impl Handshake {
    /// A plain `GET` of an SSE stream at `resource` on `host`: the
    /// response must be `200` (no upgrade).
    pub fn sse(host: &str, resource: &str) -> Self {
        let request =
            format!("GET {resource} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
        Self {
            request: request.into_bytes(),
            expected_accept: String::new(),
            deflate: false,
        }
    }

    /// A request for `resource` (path and query) on `host`, with a fresh
    /// random key, offering `protocol` if given and permessage-deflate if
    /// `deflate`.
    pub fn new(host: &str, resource: &str, protocol: Option<&str>, deflate: bool) -> Self {
        let key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>());
        let mut offer =
            protocol.map_or_else(String::new, |p| format!("Sec-WebSocket-Protocol: {p}\r\n"));
        if deflate {
            offer.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"));
        }
        let request = format!(
            "GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\n{offer}\r\n"
        )
        .into_bytes();
        Self {
            request,
            expected_accept: accept_key(&key),
            deflate,
        }
    }

    /// The request with `Authorization: Bearer TOKEN` added.
    pub fn request_with_token(&self, token: &str) -> Vec<u8> {
        let head = &self.request[..self.request.len() - 2];
        let mut request = Vec::with_capacity(self.request.len() + token.len() + 24);
        request.extend_from_slice(head);
        request.extend_from_slice(format!("Authorization: Bearer {token}\r\n\r\n").as_bytes());
        request
    }

    /// Checks a response at the start of `buf`. Returns `Ok(None)` while the
    /// header block is incomplete, else the header length in bytes (frames
    /// may follow in the same buffer).
    ///
    /// # Errors
    /// [`BadResponse`] when the server refused or answered wrongly.
    pub fn check(&self, buf: &[u8]) -> Result<Option<usize>, BadResponse> {
        let mut headers = [httparse::EMPTY_HEADER; 24];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(BadResponse::Malformed),
        };
        let sse = self.expected_accept.is_empty();
        match response.code {
            Some(200) if sse => return Ok(Some(len)),
            Some(101) if !sse => {}
            Some(code) => return Err(BadResponse::Status(code)),
            None => return Err(BadResponse::Malformed),
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        if header("sec-websocket-accept") != Some(self.expected_accept.as_bytes()) {
            return Err(BadResponse::AcceptKey);
        }
        let deflate_accepted = header("sec-websocket-extensions")
            .is_some_and(|v| v.starts_with(b"permessage-deflate"));
        if self.deflate && !deflate_accepted {
            return Err(BadResponse::NoDeflate);
        }
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_responses() {
        let hs = Handshake::new("h", "/ws", None, false);
        let v1 = Handshake::new("h", "/ws", Some("ringcast.v1"), false);
        let text = String::from_utf8(v1.request).unwrap();
        assert!(text.ends_with("Sec-WebSocket-Protocol: ringcast.v1\r\n\r\n"));
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            hs.expected_accept
        );
        let mut good = good.into_bytes();
        let header_len = good.len();
        good.extend_from_slice(&[0x81, 0x00]); // a frame right behind it
        assert_eq!(hs.check(&good), Ok(Some(header_len)));
        assert_eq!(hs.check(&good[..20]), Ok(None));
        let refused = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(hs.check(refused), Err(BadResponse::Status(503)));
        let wrong = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x\r\n\r\n";
        assert_eq!(hs.check(wrong), Err(BadResponse::AcceptKey));
        assert_eq!(hs.check(b"SSH-2.0\r\n\r\n"), Err(BadResponse::Malformed));
        let with = String::from_utf8(hs.request_with_token("a.b.c")).unwrap();
        assert!(with.ends_with("Version: 13\r\nAuthorization: Bearer a.b.c\r\n\r\n"));
        let deflate = Handshake::new("h", "/ws", None, true);
        let request = String::from_utf8(deflate.request.clone()).unwrap();
        assert!(request.ends_with(&format!(
            "Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n\r\n"
        )));
        let plain = format!(
            "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            deflate.expected_accept
        );
        assert_eq!(deflate.check(plain.as_bytes()), Err(BadResponse::NoDeflate));
        let agreed = plain.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
        );
        assert_eq!(deflate.check(agreed.as_bytes()), Ok(Some(agreed.len())));
    }
}
