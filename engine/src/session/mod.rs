//! Who a connection is and what it may do: the token it presents at the
//! handshake (or later, to refresh), the identity and permissions read
//! from it, and the per-worker index from user ids to connections.
//!
//! - [`jwt`]: the keys and the verification of a token ([`Auth`]);
//! - [`permissions`]: topic patterns, user-limited topics, a token's
//!   [`Grant`];
//! - [`users`]: each worker's interned sessions and users ([`Sessions`]).
//!
//! Verification runs on the worker during the handshake: it is CPU work
//! of a few microseconds (HMAC) to some tens (RSA), with no I/O.

pub mod jwt;
pub mod permissions;
pub mod users;

pub use jwt::{Auth, Identity, KeySource, Settings};
pub use permissions::Grant;
pub use users::{SessionId, Sessions};

use crate::protocol::handshake::Request;
use std::borrow::Cow;

/// Close code for a connection whose token expired without a refresh.
pub const TOKEN_EXPIRED: u16 = 4001;

/// Default close code of `POST /disconnect`: the client must not
/// reconnect.
pub const DISCONNECTED: u16 = 4003;

/// Name of the cookie that may carry the token.
pub const COOKIE: &str = "ringcast_token";

/// The token of an upgrade request, from the first source that has one:
/// `Authorization: Bearer`, then the `token` query parameter, then the
/// `ringcast_token` cookie.
pub fn token<'a>(req: &Request<'a>) -> Option<Cow<'a, str>> {
    let bearer = req.authorization.and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| Cow::Borrowed(token.trim()))
    });
    let query = || {
        form_urlencoded::parse(req.query.unwrap_or("").as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, value)| Cow::Owned(value.into_owned()))
    };
    let cookie = || {
        req.cookie?.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(Cow::Borrowed(value))
        })
    };
    bearer.or_else(query).or_else(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::parse;

    fn token_of(target: &str, headers: &str) -> Option<String> {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let (req, _) = parse(request.as_bytes()).unwrap().unwrap();
        token(&req).map(Cow::into_owned)
    }

    #[test]
    fn the_first_source_with_a_token_wins() {
        let all = "Authorization: Bearer h.h.h\r\nCookie: a=1; ringcast_token=c.c.c\r\n";
        assert_eq!(token_of("/ws?token=q.q.q", all).as_deref(), Some("h.h.h"));
        let cookie = "Cookie: a=1; ringcast_token=c.c.c\r\n";
        assert_eq!(
            token_of("/ws?topic=a&token=q%2Eq", cookie).as_deref(),
            Some("q.q")
        );
        assert_eq!(token_of("/ws", cookie).as_deref(), Some("c.c.c"));
        let basic = "Authorization: Basic eDp5\r\n";
        assert_eq!(token_of("/ws?token=q", basic).as_deref(), Some("q"));
        assert_eq!(token_of("/ws", "Cookie: ringcast_tokens=x\r\n"), None);
        assert_eq!(token_of("/ws", ""), None);
    }
}
