//! What a token allows: topic patterns to subscribe to (`topics`) and to
//! publish to (`publish`), the optional `info`, and user-limited topics.
//!
//! - A pattern is an exact topic name (`news`) or a prefix ending in `*`
//!   (`chat.room.*`; `*` alone matches every topic).
//! - A claims set without `topics` allows every topic; with it, only the
//!   topics some pattern matches.
//! - A user-limited topic, `base#u1,u2` (`dialog#42,43`,
//!   `notifications#42`), may be subscribed only by the users listed after
//!   `#`, whatever `topics` says; a connection without a user id never
//!   may, and neither may any connection while auth is off. A `topics`
//!   claim may list such a topic (a backend that names every topic a user
//!   sees): it is accepted and grants nothing beyond the list after `#`.

use crate::topics;

/// Largest `info` claim, in bytes of JSON.
pub const MAX_INFO: usize = 1024;

/// One topic pattern: an exact name, or a prefix ending in `*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// Parses a pattern: a valid topic name, or a prefix of one followed
    /// by `*`. `None` for anything else, user-limited names included
    /// (patterns do not apply to those).
    pub fn parse(text: &str) -> Option<Self> {
        if text.contains('#') {
            return None;
        }
        let valid = match text.strip_suffix('*') {
            Some("") => true,
            // A prefix is valid if it could start a topic name.
            Some(prefix) => topics::is_valid_name(&format!("{prefix}x")),
            None => topics::is_valid_name(text),
        };
        valid.then(|| Self(text.into()))
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => *topic == *self.0,
        }
    }
}

/// A token's permissions and info, shared by every connection of a worker
/// that presents the same claims (see [`super::Sessions`]).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Grant {
    /// `topics`: patterns the connection may subscribe to; `None`: any.
    topics: Option<Box<[Pattern]>>,
    /// `publish`: patterns the connection may publish to from the client
    /// (kept for client publishing); `None`: none.
    publish: Option<Box<[Pattern]>>,
    /// `info`: JSON, at most [`MAX_INFO`] bytes (kept for presence).
    info: Option<Box<str>>,
}

impl Grant {
    /// Builds a grant from the claims.
    ///
    /// # Errors
    /// A reason naming the claim: a pattern that is not a topic name or
    /// prefix, or an `info` over [`MAX_INFO`] bytes.
    pub fn new(
        topics: Option<Vec<String>>,
        publish: Option<Vec<String>>,
        info: Option<&str>,
    ) -> Result<Self, &'static str> {
        let patterns = |list: Option<Vec<String>>, why| {
            list.map(|l| l.iter().map(|p| Pattern::parse(p).ok_or(why)).collect())
                .transpose()
        };
        if info.is_some_and(|i| i.len() > MAX_INFO) {
            return Err("info claim over 1 KiB");
        }
        // A valid user-limited topic in `topics` is left out: its own user
        // list decides (`may_subscribe`), whatever the claim says.
        let topics = topics.map(|list| {
            list.into_iter()
                .filter(|t| !(t.contains('#') && topics::is_valid_name(t)))
                .collect()
        });
        Ok(Self {
            topics: patterns(topics, "bad pattern in the topics claim")?,
            publish: patterns(publish, "bad pattern in the publish claim")?,
            info: info.map(Into::into),
        })
    }

    /// Whether the `publish` claim allows publishing to `topic` (for
    /// client publishing; no pattern, no publishing).
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish
            .as_deref()
            .is_some_and(|ps| ps.iter().any(|p| p.matches(topic)))
    }

    /// The `info` claim, as JSON text.
    pub fn info(&self) -> Option<&str> {
        self.info.as_deref()
    }
}

/// Whether `user` is listed after the `#` of a user-limited `topic`
/// (`dialog#42,43`); `None` when `topic` is not user-limited.
fn listed(user: Option<&str>, topic: &str) -> Option<bool> {
    let (_, users) = topic.split_once('#')?;
    Some(user.is_some_and(|u| users.split(',').any(|listed| listed == u)))
}

/// Whether a connection of `user` with `grant` may subscribe to `topic`.
/// `grant` is `None` for a connection without a token (auth off, or
/// `--allow-anonymous`): every topic but the user-limited ones.
pub fn may_subscribe(user: Option<&str>, grant: Option<&Grant>, topic: &str) -> bool {
    if let Some(listed) = listed(user, topic) {
        return listed;
    }
    grant
        .and_then(|g| g.topics.as_deref())
        .is_none_or(|patterns| patterns.iter().any(|p| p.matches(topic)))
}

/// Whether a client connection of `user` with `grant` may publish to
/// `topic`: its `publish` claim (or a connect hook's grant) or one of the
/// server's `--client-publish` patterns (`server`) matches, and, for a
/// user-limited topic (`dialog#42,43`), `user` is listed after `#`
/// whatever the patterns say (so an anonymous client never may). The
/// HTTP API is not a client and is not asked.
pub fn may_publish(
    user: Option<&str>,
    grant: Option<&Grant>,
    server: &[Pattern],
    topic: &str,
) -> bool {
    listed(user, topic) != Some(false)
        && (grant.is_some_and(|g| g.may_publish(topic)) || server.iter().any(|p| p.matches(topic)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(topics: &[&str]) -> Grant {
        let topics = topics.iter().map(|t| t.to_string()).collect();
        Grant::new(Some(topics), None, None).unwrap()
    }

    #[test]
    fn patterns_are_exact_or_prefixes() {
        let g = grant(&["news", "chat.room.*"]);
        for (topic, allowed) in [
            ("news", true),
            ("news2", false),
            ("chat.room.1", true),
            ("chat.room.", true),
            ("chat.roomx", false),
            ("chat", false),
        ] {
            assert_eq!(
                may_subscribe(Some("u"), Some(&g), topic),
                allowed,
                "{topic}"
            );
        }
        assert!(may_subscribe(None, Some(&grant(&["*"])), "anything"));
        assert!(may_subscribe(None, Some(&Grant::default()), "anything"));
        assert!(!may_subscribe(None, Some(&grant(&[])), "anything"));
        for bad in ["a b", "a*b", "**", "a#*", ""] {
            assert!(Pattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn user_limited_topics_admit_only_their_users() {
        let g = grant(&["other"]);
        assert!(may_subscribe(Some("42"), Some(&g), "dialog#42,43"));
        assert!(may_subscribe(Some("43"), None, "dialog#42,43"));
        assert!(!may_subscribe(
            Some("44"),
            Some(&Grant::default()),
            "dialog#42,43"
        ));
        assert!(!may_subscribe(Some("4"), None, "notifications#42"));
        assert!(!may_subscribe(None, None, "notifications#42"));
    }

    #[test]
    fn a_topics_claim_may_list_user_limited_topics() {
        let g = grant(&["dialog#42,43", "t.*"]);
        assert!(may_subscribe(Some("42"), Some(&g), "dialog#42,43"));
        assert!(!may_subscribe(Some("44"), Some(&g), "dialog#42,43"));
        assert!(may_subscribe(Some("44"), Some(&g), "t.1"));
        assert!(!may_subscribe(Some("44"), Some(&g), "u"));
        for bad in ["dialog#*", "dialog#42,", "#42"] {
            let claim = Some(vec![bad.to_owned()]);
            assert!(Grant::new(claim, None, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_patterns_and_info_are_kept() {
        let g = Grant::new(None, Some(vec!["chat.*".into()]), Some(r#"{"n":"Ann"}"#)).unwrap();
        assert!(g.may_publish("chat.1") && !g.may_publish("news"));
        assert!(!Grant::default().may_publish("news"));
        assert_eq!(g.info(), Some(r#"{"n":"Ann"}"#));
        let big = format!("\"{}\"", "x".repeat(MAX_INFO));
        assert!(Grant::new(None, None, Some(&big)).is_err());
        assert!(Grant::new(Some(vec!["a b".into()]), None, None).is_err());
    }

    #[test]
    fn publish_patterns_never_open_user_limited_topics_to_others() {
        let g = Grant::new(None, Some(vec!["chat.*".into()]), None).unwrap();
        let server = [Pattern::parse("chat.*").unwrap()];
        assert!(may_publish(Some("66"), Some(&g), &[], "chat.room"));
        assert!(!may_publish(Some("66"), Some(&g), &[], "chat.dm#43,44"));
        assert!(!may_publish(Some("66"), None, &server, "chat.dm#43"));
        assert!(!may_publish(None, None, &server, "chat.dm#43"));
        assert!(may_publish(Some("43"), Some(&g), &[], "chat.dm#43,44"));
        assert!(may_publish(Some("43"), None, &server, "chat.dm#43"));
        assert!(!may_publish(Some("43"), None, &[], "chat.dm#43"));
    }
}
