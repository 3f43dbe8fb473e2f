//! Epochs: the name of one unbroken run of a topic's offsets.

use std::hash::{BuildHasher, RandomState};

/// URL-safe base64 alphabet: an epoch is safe in JSON, URLs and headers.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A stream's epoch: 8 characters (48 bits) of URL-safe base64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch([u8; 8]);

impl Epoch {
    /// The epoch's text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("the alphabet is ASCII")
    }

    /// The epoch spelled `text`: exactly 8 characters of the URL-safe
    /// base64 alphabet; `None` otherwise (an epoch from a broker is
    /// checked like any input).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 8] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| ALPHABET.contains(b))
            .then_some(Self(bytes))
    }

    /// A fresh random epoch (SipHash of the clock under a random key):
    /// what a broker's stream is created with.
    pub fn random() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self::from_hash(RandomState::new().hash_one(nanos))
    }

    fn from_hash(hash: u64) -> Self {
        Epoch(std::array::from_fn(|i| {
            ALPHABET[(hash >> (6 * i)) as usize & 63]
        }))
    }
}

/// Makes epochs. A topic's epoch is a keyed hash (SipHash, keyed from the
/// OS's randomness at process start) of its name and of the number of
/// streams forgotten so far in this process. So:
/// - a restart gives every topic a new epoch (new key);
/// - a topic whose stream was forgotten (continuity lost) gets a new one;
/// - a topic without a stream yet already has the epoch its stream will
///   be created with, unless a stream is forgotten meanwhile; a client
///   told that epoch at offset 0 recovers the stream's first messages.
///
/// Two epochs of one topic collide with probability 2^-48. `default()`
/// makes a source with a fresh random key.
#[derive(Default)]
pub struct EpochSource {
    key: RandomState,
    generation: u64,
}

impl EpochSource {
    /// The epoch a stream of `topic` created now gets.
    pub fn epoch(&self, topic: &str) -> Epoch {
        Epoch::from_hash(self.key.hash_one((topic, self.generation)))
    }

    /// A stream was forgotten: every epoch handed out from now on differs.
    pub fn continuity_lost(&mut self) {
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_differ_by_topic_generation_and_process() {
        let mut source = EpochSource::default();
        let a = source.epoch("a");
        assert_eq!(a, source.epoch("a"));
        assert_ne!(a, source.epoch("b"));
        assert_eq!(a.as_str().len(), 8);
        assert!(a.as_str().bytes().all(|b| ALPHABET.contains(&b)));
        source.continuity_lost();
        assert_ne!(a, source.epoch("a"));
        assert_ne!(a, EpochSource::default().epoch("a"), "a restart");
        assert_eq!(Epoch::parse(a.as_str()), Some(a));
        assert_ne!(Epoch::random(), Epoch::random());
        for bad in ["", "abcdefg", "abcdefghi", "abcdefg!", "abcdéfg"] {
            assert_eq!(Epoch::parse(bad), None, "{bad}");
        }
    }
}
