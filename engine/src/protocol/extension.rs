//! permessage-deflate negotiation (RFC 7692 §5–§7): parse the client's
//! `Sec-WebSocket-Extensions` offers, pick the first one the server can
//! satisfy, and build the response. Pure: no I/O, no zlib state.
//!
//! The server's answer is always the same shape:
//! - `server_no_context_takeover` (§7.1.1.1): every server message is
//!   compressed alone, which is what lets one compressed publish frame be
//!   valid for every subscriber;
//! - `client_no_context_takeover` (§7.1.1.2, which lets a server include
//!   it whether or not the offer did): the client compresses every message
//!   alone too, so the server inflates with one shared, reset-per-message
//!   inflater and holds no window per connection;
//! - `server_max_window_bits=N` only when the offer asked for it (§7.1.2.1:
//!   accepting such an offer means repeating the parameter);
//! - never `client_max_window_bits`: the server inflates with a 15-bit
//!   window, which decodes any smaller one, so it has nothing to ask.

/// The extension's registered name (RFC 7692 §7).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// Most `Sec-WebSocket-Extensions` header lines considered.
pub const MAX_EXTENSION_HEADERS: usize = 4;

/// Most offers (comma-separated elements) considered, over all lines.
const MAX_OFFERS: usize = 16;

/// A permessage-deflate offer the server accepted (RFC 7692 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// Largest LZ77 window the server may use for its own messages, as a
    /// base-2 logarithm of bytes (8–15). 15 when the offer set no limit.
    pub server_max_window_bits: u8,
    /// The offer carried `server_max_window_bits`, so the response must
    /// name it (§7.1.2.1).
    server_window_named: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` response value (§7.1).
    pub fn response(&self) -> String {
        let mut out =
            format!("{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover");
        if self.server_window_named {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        out
    }
}

/// Picks the first permessage-deflate offer in `headers` (the values of
/// every `Sec-WebSocket-Extensions` line, in order) that the server can
/// accept. An offer with an unknown parameter, a repeated one, or a value
/// out of range is declined (§7.1), and the next offer is tried. `None`
/// when no offer is acceptable: the connection then runs uncompressed.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    headers
        .into_iter()
        .flat_map(|line| split_outside_quotes(line, b','))
        .take(MAX_OFFERS)
        .find_map(accept_offer)
}

/// One offer (`name; param[=value]; ...`) if it is an acceptable
/// permessage-deflate offer.
fn accept_offer(offer: &str) -> Option<Agreed> {
    let mut parts = split_outside_quotes(offer, b';');
    if !parts.next()?.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
        return None;
    }
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        server_max_window_bits: 15,
        server_window_named: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let index = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ]
        .iter()
        .position(|known| name.eq_ignore_ascii_case(known))?;
        if std::mem::replace(&mut seen[index], true) {
            return None; // a parameter named twice (§7.1)
        }
        match (index, value) {
            (0 | 1, None) => {}
            (2, Some(v)) => {
                agreed.server_max_window_bits = window_bits(v)?;
                agreed.server_window_named = true;
            }
            // Any window the client keeps to, the server inflates.
            (3, None) => {}
            (3, Some(v)) => {
                window_bits(v)?;
            }
            _ => return None, // a value where none belongs, or none where one must be
        }
    }
    Some(agreed)
}

/// A window size parameter: a decimal integer without leading zeros from
/// 8 to 15 (§7.1.2.1, §7.1.2.2).
fn window_bits(value: &str) -> Option<u8> {
    match value.as_bytes() {
        [b'8' | b'9'] | [b'1', b'0'..=b'5'] => value.parse().ok(),
        _ => None,
    }
}

/// A token or quoted-string value (RFC 6455 §9.1) without its quotes;
/// `None` for an unterminated quote.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// The trimmed, non-empty pieces of `s` between `sep` bytes that are not
/// inside a quoted string.
fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || loop {
        let s = rest?;
        let mut quoted = false;
        let end = s
            .bytes()
            .position(|b| {
                if b == b'"' {
                    quoted = !quoted;
                }
                b == sep && !quoted
            })
            .unwrap_or(s.len());
        rest = s.get(end + 1..);
        let piece = s[..end].trim();
        if !piece.is_empty() {
            return Some(piece);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(lines: &[&str]) -> Option<String> {
        negotiate(lines.iter().copied()).map(|a| a.response())
    }

    const PLAIN: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn browsers_offer_is_accepted_with_both_no_context_takeovers() {
        // What Chromium and Firefox send.
        let got = agree(&["permessage-deflate; client_max_window_bits"]);
        assert_eq!(got.as_deref(), Some(PLAIN));
        assert_eq!(agree(&["permessage-deflate"]).as_deref(), Some(PLAIN));
    }

    #[test]
    fn server_window_is_repeated_when_asked_for() {
        let a = negotiate(["permessage-deflate; server_max_window_bits=9"]).unwrap();
        assert_eq!(a.server_max_window_bits, 9);
        assert_eq!(a.response(), format!("{PLAIN}; server_max_window_bits=9"));
        let a = negotiate(["permessage-deflate; server_max_window_bits=\"12\""]).unwrap();
        assert_eq!(a.server_max_window_bits, 12);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown_param",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        ] {
            assert_eq!(agree(&[bad]), None, "{bad}");
            let with_fallback = format!("{bad}, permessage-deflate; server_max_window_bits=10");
            assert_eq!(
                negotiate([with_fallback.as_str()]).map(|a| a.server_max_window_bits),
                Some(10),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_unterminated_quote_spoils_the_rest_of_its_line_only() {
        let line = "permessage-deflate; server_max_window_bits=\"9, permessage-deflate";
        assert_eq!(agree(&[line]), None);
        assert_eq!(agree(&[line, "permessage-deflate"]).as_deref(), Some(PLAIN));
    }

    #[test]
    fn other_extensions_and_lines_are_skipped() {
        let got = agree(&[
            "x-webkit-deflate-frame, foo; bar=\"a,b;c\"",
            "permessage-deflate; client_max_window_bits=10",
        ]);
        assert_eq!(got.as_deref(), Some(PLAIN));
        assert_eq!(agree(&["x-webkit-deflate-frame"]), None);
        assert_eq!(agree(&[]), None);
        assert_eq!(agree(&[" , ;"]), None);
    }

    #[test]
    fn autobahn_offers() {
        // Case 13.7: three offers, in the client's order of preference.
        let a = negotiate([
            "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
             server_no_context_takeover; server_max_window_bits=9, \
             permessage-deflate; client_no_context_takeover; client_max_window_bits; \
             server_no_context_takeover, \
             permessage-deflate; client_no_context_takeover; client_max_window_bits",
        ])
        .unwrap();
        assert_eq!(a.server_max_window_bits, 9);
    }
}
