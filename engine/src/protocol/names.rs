//! Topic names, as the wire protocol defines them (docs/protocol.md): the
//! rule every URL, control message, `Last-Event-ID` and API call is
//! checked against.

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// The naming rule, as stated in error replies.
pub const NAME_RULE: &str = "a topic is 1-128 bytes of A-Z a-z 0-9 _ . : -, \
    optionally followed by # and a comma-separated list of user ids of those characters";

/// Whether `name` is a valid topic: 1–128 bytes of `[A-Za-z0-9_.:-]`,
/// optionally followed by `#` and a comma-separated list of user ids of
/// the same characters (a user-limited topic, `dialog#42,43`; see
/// `session::permissions`).
pub fn is_valid_name(name: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    };
    (1..=MAX_TOPIC_LEN).contains(&name.len())
        && match name.split_once('#') {
            None => word(name),
            Some((base, users)) => word(base) && users.split(',').all(word),
        }
}
