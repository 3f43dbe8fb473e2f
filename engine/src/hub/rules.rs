//! Which topics keep history: `--history PATTERN=SIZE/TTL` rules.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Most messages one topic may retain.
pub const MAX_SIZE: usize = 1 << 20;

/// One `--history` rule: topics matching `pattern` keep their last `size`
/// messages for at most `ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Topic pattern: `*` matches any run of characters (none included),
    /// anything else itself. `chat.*` matches `chat.room1`; `*` matches
    /// every topic.
    pub pattern: String,
    /// Messages kept per topic, 1 to [`MAX_SIZE`].
    pub size: usize,
    /// How long a message is kept, above zero.
    pub ttl: Duration,
}

impl Rule {
    /// Whether `topic` matches the pattern.
    pub fn matches(&self, topic: &str) -> bool {
        glob(self.pattern.as_bytes(), topic.as_bytes())
    }

    /// `SIZE/TTL`, as in the rule's text and the config file's table.
    pub fn limits(&self) -> String {
        format!("{}/{}", self.size, humantime::format_duration(self.ttl))
    }
}

/// The first rule in `rules` that `topic` matches: rules apply in the
/// order given.
pub fn find<'a>(rules: &'a [Rule], topic: &str) -> Option<&'a Rule> {
    rules.iter().find(|r| r.matches(topic))
}

/// Glob match with `*` only, by the usual greedy scan with one backtrack
/// point (linear for patterns with a single `*`, at worst
/// `pattern.len() * text.len()`).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

impl FromStr for Rule {
    type Err = String;

    /// Parses `PATTERN=SIZE/TTL`, e.g. `chat.*=200/10m`.
    ///
    /// # Errors
    /// A message naming the part that is wrong: an empty or over-long
    /// pattern, a pattern with characters no topic has, a size outside 1 to
    /// [`MAX_SIZE`], or a TTL that is not a duration above zero.
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("{text:?}: expected PATTERN=SIZE/TTL, e.g. chat.*=200/10m");
        let (pattern, limits) = text.rsplit_once('=').ok_or_else(usage)?;
        let (size, ttl) = limits.split_once('/').ok_or_else(usage)?;
        let literal = pattern.replace('*', "x");
        if !crate::topics::is_valid_name(&literal) {
            return Err(format!(
                "{text:?}: the pattern is topic characters and *; {}",
                crate::topics::NAME_RULE
            ));
        }
        let size: usize = size
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=MAX_SIZE).contains(n))
            .ok_or_else(|| {
                format!("{text:?}: SIZE must be a count of messages, 1 to {MAX_SIZE}")
            })?;
        let ttl = ttl.trim();
        if !ttl.is_empty() && ttl.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{text:?}: TTL {ttl} has no unit; write one, e.g. {pattern}={size}/{ttl}s or {pattern}={size}/{ttl}m"
            ));
        }
        let ttl = humantime::parse_duration(ttl)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{text:?}: TTL must be a duration above zero (10m, 1h)"))?;
        Ok(Self {
            pattern: pattern.to_owned(),
            size,
            ttl,
        })
    }
}

impl fmt::Display for Rule {
    /// `PATTERN=SIZE/TTL`, which [`Rule::from_str`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.pattern, self.limits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let rule = |p: &str| Rule {
            pattern: p.into(),
            size: 1,
            ttl: Duration::from_secs(1),
        };
        for (pattern, topic, expected) in [
            ("chat.*", "chat.room1", true),
            ("chat.*", "chat.", true),
            ("chat.*", "chat", false),
            ("chat.*", "news.chat.x", false),
            ("*", "anything", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*.log", "x.y.log", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(rule(pattern).matches(topic), expected, "{pattern} {topic}");
        }
        let rules = [rule("a.*"), rule("*")];
        assert_eq!(find(&rules, "a.b").unwrap().pattern, "a.*");
        assert_eq!(find(&rules, "b").unwrap().pattern, "*");
        assert!(find(&rules[..1], "b").is_none());
    }

    #[test]
    fn parses_and_prints() {
        let rule: Rule = "chat.*=200/10m".parse().unwrap();
        assert_eq!(
            rule,
            Rule {
                pattern: "chat.*".into(),
                size: 200,
                ttl: Duration::from_secs(600)
            }
        );
        assert_eq!(rule.to_string(), "chat.*=200/10m");
        assert_eq!(rule.to_string().parse::<Rule>().unwrap(), rule);
        for bad in [
            "chat.*", "=1/1s", "a b=1/1s", "a=0/1s", "a=x/1s", "a=1/0s", "a=1/soon", "a=1",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }
}
